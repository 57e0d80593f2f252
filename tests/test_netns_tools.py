"""The tools on a live cluster: `podnet trace` (cross-node ClusterIP flow:
the chosen backend, the encapsulation, the decap on the other node; live
state untouched unless --commit), `podnet capture` (a pcap scapy reads, with
the frames sent), the Prometheus endpoint and `podnet stats`."""
import json
import re
import socket

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.utils import rdpcap

from netns_helpers import agent, pod_ip, podnet, py_in_pod, running_cluster

SPEC = """
cluster: {name: pntools, podCIDR: 10.242.0.0/16, serviceCIDR: 10.91.0.0/16, fabricCIDR: 172.30.245.0/24}
nodes: [{name: n1}, {name: n2}]
pods:
  - {name: c1, node: n1, labels: {app: client}}
  - {name: w2, node: n2, labels: {app: web}}
services:
  - {name: web, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
"""
METRICS_PORT = 19710


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from dataplane import cluster as cl
    tmp = tmp_path_factory.mktemp("tools")
    with running_cluster(tmp, SPEC):
        cl.down(quiet=True)                       # again, with metrics on
        yield cl.up(str(tmp / "spec.yaml"), progress=lambda *_: None, metrics_port=METRICS_PORT)



def test_trace_of_a_cross_node_clusterip_flow(cluster):
    vip = cluster["plan"]["services"]["web"]
    def live():       # what the trace would change (pods' IPv6 chatter moves other counters)
        c = agent(cluster, "n1", "counters")
        return agent(cluster, "n1", "conntrack"), c["conntrack"], c["overlay"]["encapsulated"]
    before = live()
    r = podnet("trace", "c1", f"{vip}:80", "-o", "json")
    hops = json.loads(r.stdout)
    assert [h["node"] for h in hops] == ["n1", "n2"]
    first = [e[0] for e in hops[0]["events"]]
    assert first == ["rx", "parse", "learn", "service", "pick", "conntrack", "dnat", "gateway", "encap", "tx"]
    text = "\n".join(hops[0]["text"])
    assert f"backend {pod_ip(cluster, 'w2')}:8080 chosen" in text
    assert re.search(r"VXLAN: outer .* IP 172\.30\.245\.1 > 172\.30\.245\.2 ttl 64 .*DF, UDP \d+ > 4789, "
                     r"VXLAN VNI 1", text), text
    second = "\n".join(hops[1]["text"])
    assert "VXLAN VNI 1 decapsulated" in second and "sent to pod w2" in second
    assert hops[1]["verdict"][0] == 0                     # delivered to w2's port
    # traced in copies: the live agent has no new connection and no new counts
    assert live() == before
    out = podnet("trace", "c1", f"{vip}:80").stdout      # the table form a person reads
    assert "node n1, in pod c1:" in out and "node n2, in uplink:" in out and "=> out of pod w2" in out


def test_trace_commit_changes_live_state_and_bad_input_is_an_error(cluster):
    vip = cluster["plan"]["services"]["web"]
    podnet("trace", "c1", f"{vip}:80", "--sport", "41000", "--commit")
    conns = agent(cluster, "n1", "conntrack")
    assert any(c["client"].endswith(":41000") for c in conns)
    r = podnet("trace", "c1", "not-an-ip:80", check=False)
    assert r.returncode == 1 and "destination must be IP or IP:PORT" in r.stderr
    r = podnet("trace", "nosuchpod", f"{vip}:80", check=False)
    assert r.returncode == 1 and "no pod 'nosuchpod'" in r.stderr


def test_trace_a_frame_from_a_pcap(cluster, tmp_path):
    import dpkt
    from scapy.layers.l2 import Ether
    p = cluster["plan"]["pods"]["c1"]
    f = Ether(src=p["mac"], dst=cluster["plan"]["nodes"]["n1"]["gateway_mac"]) / \
        IP(src=p["ip"], dst=pod_ip(cluster, "w2")) / UDP(sport=7, dport=7)
    path = tmp_path / "in.pcap"
    with open(path, "wb") as fh:
        dpkt.pcap.Writer(fh).writepkt(bytes(f), ts=0)
    hops = json.loads(podnet("trace", "c1", "--pcap", str(path), "-o", "json").stdout)
    assert [h["node"] for h in hops] == ["n1", "n2"] and hops[1]["verdict"][0] == 0


def test_capture_writes_a_pcap_with_the_frames_sent(cluster, tmp_path):
    path = tmp_path / "c1.pcap"
    target = pod_ip(cluster, "w2")
    cap = __import__("subprocess").Popen(
        [__import__("sys").executable, "-m", "dataplane", "capture", "n1", "c1", "-w", str(path),
         "-c", "1000", "--timeout", "6"], stderr=-1, text=True)
    import time
    time.sleep(1.0)                                       # the capture is running
    py_in_pod(cluster, "c1", """
        import socket, sys, time
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(3):
            s.sendto(b"podnet-capture-%d" % i, (sys.argv[1], 9999)); time.sleep(0.1)
        """, target)
    py_in_pod(cluster, "c1", "import subprocess; subprocess.run(['ping', '-c', '1', '-W', '2', __import__('sys').argv[1]])",
              target, check=False)
    _, err = cap.communicate(timeout=30)
    assert cap.returncode == 0, err
    frames = rdpcap(str(path))
    sent = [f for f in frames if f.haslayer(UDP) and f[UDP].dport == 9999]
    assert [bytes(f[UDP].payload) for f in sent] == [b"podnet-capture-%d" % i for i in range(3)]
    assert all(f[IP].src == pod_ip(cluster, "c1") and f[IP].dst == target for f in sent)
    pings = [f for f in frames if f.haslayer(ICMP) and f[ICMP].type in (0, 8)]
    assert [f[ICMP].type for f in pings] == [8, 0]        # both directions of the port
    assert f"{len(frames)} frames written" in err
    podnet("capture", "n1", "c1", "-w", str(tmp_path / "two.pcap"), "-c", "2", "--timeout", "3")
    assert len(rdpcap(str(tmp_path / "two.pcap"))) <= 2
    assert agent(cluster, "n1", "counters")["capture"]["running"] is False      # stopped after


def test_capture_refuses_a_bad_port(cluster, tmp_path):
    r = podnet("capture", "n1", "w2", "-w", str(tmp_path / "x.pcap"), "-c", "1", check=False)
    assert r.returncode == 1 and "node n1 has no port 'w2'" in r.stderr


def scrape(path=None, port=None):
    s = socket.socket(socket.AF_UNIX if path else socket.AF_INET)
    s.settimeout(5)
    s.connect(path or ("127.0.0.1", port))
    s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
    buf = b""
    while chunk := s.recv(65536):
        buf += chunk
    s.close()
    head, _, body = buf.partition(b"\r\n\r\n")
    return head.decode(), body.decode()


SAMPLE = re.compile(r'^[a-z_]+\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\} \d+(\.\d+)?$')


def test_metrics_endpoint_serves_prometheus_text(cluster):
    py_in_pod(cluster, "c1", "import subprocess,sys; subprocess.run(['ping','-c','2','-i','0.2','-W','2',sys.argv[1]])",
              pod_ip(cluster, "w2"), check=False)
    head, body = scrape(port=METRICS_PORT)                # node n1 on 127.0.0.1:PORT+0
    assert head.startswith("HTTP/1.0 200") and "text/plain; version=0.0.4" in head
    for line in body.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or SAMPLE.match(line), line
    values = {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in body.splitlines() if not ln.startswith("#")}
    assert values['podnet_port_rx_packets_total{node="n1",port="0",pod="c1"}'] >= 2
    assert values['podnet_overlay_encapsulated_total{node="n1"}'] >= 2
    assert 'podnet_drops_total{node="n1",reason="runt"}' in values
    assert values['podnet_conntrack_capacity{node="n1"}'] > 0
    assert values['podnet_services_service_ports{node="n1"}'] == 1
    _, body2 = scrape(path=cluster["nodes"]["n2"]["metrics"]["socket"])
    assert 'podnet_port_tx_packets_total{node="n2",port="0",pod="w2"}' in body2


def test_stats_table_has_every_stage(cluster):
    out = podnet("stats", "n1").stdout
    assert re.search(r"^0\s+c1\s+\d+", out, re.M)
    for section in ("bridge.forwarded", "fdb.entries", "gateway.routed", "overlay.encapsulated",
                    "services.service_ports", "conntrack.entries", "io.bursts"):
        assert section in out


def test_applying_thousands_of_services_shows_progress(cluster, tmp_path):
    items = [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"bulk-{i}"},
              "spec": {"clusterIP": f"10.91.{100 + i // 250}.{1 + i % 250}", "selector": {"app": "web"},
                       "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}} for i in range(1500)]
    path = tmp_path / "bulk.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=2))
    r = podnet("apply", "-f", str(path))
    assert "read 1500 objects" in r.stderr and "validated 1500 objects: 1500 service ports to load" in r.stderr
    assert "node n1: loaded in" in r.stderr and "node n2: loaded in" in r.stderr
    assert len(agent(cluster, "n2", "services")) == 1501
    podnet("delete", "-f", str(path))
    assert len(agent(cluster, "n2", "services")) == 1
