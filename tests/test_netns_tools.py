"""The tools on a live cluster: `podnet trace` (cross-node ClusterIP flow:
the chosen backend, the encapsulation, the decap on the other node; live
state untouched unless --commit; -p udp|icmp, --flags, --pcap --index),
`podnet capture` (a pcap scapy reads, with the frames sent; -c, --snaplen,
the uplink port), the Prometheus endpoint and `podnet stats`.
(test_capture.py and test_trace_cli.py cover the same tools in memory.)"""
import json
import re
import signal
import socket
import subprocess
import sys

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import RawPcapReader, rdpcap

from netns_helpers import agent, in_pod, pod_ip, podnet, py_in_pod, running_cluster, wait_until

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
    vip = cluster.services_plan["web"]
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
    vip = cluster.services_plan["web"]
    podnet("trace", "c1", f"{vip}:80", "--sport", "41000", "--commit")
    conns = agent(cluster, "n1", "conntrack")
    assert any(c["client"].endswith(":41000") for c in conns)
    r = podnet("trace", "c1", "not-an-ip:80", check=False)
    assert r.returncode == 1 and "destination must be IP or IP:PORT" in r.stderr
    r = podnet("trace", "nosuchpod", f"{vip}:80", check=False)
    assert r.returncode == 1 and "no pod 'nosuchpod'" in r.stderr


def test_trace_a_frame_from_a_pcap(cluster, tmp_path):
    """--pcap FILE --index K: the K-th frame (0-based) is the one traced."""
    import dpkt
    p = cluster.pods["c1"].to_dict()
    head = Ether(src=p["mac"], dst=cluster.nodes["n1"].gateway_mac) / \
        IP(src=p["ip"], dst=pod_ip(cluster, "w2"))
    frames = [bytes(head / UDP(sport=7, dport=7)), bytes(head / ICMP(id=5, seq=1)), bytes(head / UDP(sport=8, dport=8))]
    path = tmp_path / "in.pcap"
    with open(path, "wb") as fh:
        w = dpkt.pcap.Writer(fh)
        for k, f in enumerate(frames):
            w.writepkt(f, ts=k)
    hops = json.loads(podnet("trace", "c1", "--pcap", str(path), "-o", "json").stdout)
    assert hops[0]["frame"] == frames[0].hex()                  # default: the first
    assert [h["node"] for h in hops] == ["n1", "n2"] and hops[1]["verdict"][0] == 0
    hops = json.loads(podnet("trace", "c1", "--pcap", str(path), "--index", "1", "-o", "json").stdout)
    assert hops[0]["frame"] == frames[1].hex() and hops[0]["text"][1] == "IPv4 ICMP"
    assert [h["node"] for h in hops] == ["n1", "n2"] and hops[1]["verdict"][0] == 0
    r = podnet("trace", "c1", "--pcap", str(path), "--index", "3", check=False)
    assert r.returncode == 1 and "has no frame 3" in r.stderr


def test_trace_protocols_and_tcp_flags_reach_the_fast_path(cluster):
    """-p udp and -p icmp to w2 cross both nodes as those protocols; --flags A
    to the ClusterIP is a mid-stream segment of no connection, dropped as
    conntrack_invalid (the default S opens one: test above)."""
    w2 = pod_ip(cluster, "w2")
    for argv, proto in (([f"{w2}:5353", "-p", "udp"], "UDP"), ([w2, "-p", "icmp"], "ICMP")):
        hops = json.loads(podnet("trace", "c1", *argv, "-o", "json").stdout)
        f = Ether(bytes.fromhex(hops[0]["frame"]))
        assert f[IP].proto == {"UDP": 17, "ICMP": 1}[proto]
        assert [h["node"] for h in hops] == ["n1", "n2"], hops
        assert hops[0]["text"][1] == f"IPv4 {proto}" and hops[1]["text"][-1] == "sent to pod w2, %d bytes" % len(f)
        assert hops[1]["verdict"][0] == 0
    vip = cluster.services_plan["web"]
    [hop] = json.loads(podnet("trace", "c1", f"{vip}:80", "--flags", "A", "-o", "json").stdout)
    assert str(Ether(bytes.fromhex(hop["frame"]))["TCP"].flags) == "A"
    assert hop["verdict"] == ["drop", "conntrack_invalid"]


def start_capture(cluster, node, *args):
    """`podnet capture NODE ...` in the background, returned once the agent
    says its capture runs (so no frame sent afterwards can be missed)."""
    proc = subprocess.Popen([sys.executable, "-m", "dataplane", "capture", node, *args],
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: proc.poll() is not None or agent(cluster, node, "counters")["capture"]["running"],
                   10, f"the capture on {node} to start")
        assert proc.poll() is None, proc.communicate()[1]
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return proc


def stop_capture(proc):
    """Ctrl-C, as a user ends an open-ended capture; returns its stderr."""
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return err


def pcap_has(path, cond, what):
    """Poll the pcap the CLI is writing (it flushes after every read) until cond(frames)."""
    def ok():
        try:
            return cond(rdpcap(str(path)))
        except Exception:                         # not written yet, or a record half flushed
            return False
    wait_until(ok, 15, what)


def udp_from(cluster, pod, target, port, n, size=0):
    py_in_pod(cluster, pod, """
        import socket, sys
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(int(sys.argv[3])):
            s.sendto((b"podnet-capture-%d" % i).ljust(int(sys.argv[4]), b"."), (sys.argv[1], int(sys.argv[2])))
        """, target, port, n, size)


def test_capture_writes_a_pcap_with_the_frames_sent(cluster, tmp_path):
    path = tmp_path / "c1.pcap"
    target = pod_ip(cluster, "w2")
    cap = start_capture(cluster, "n1", "c1", "-w", str(path), "-c", "1000", "--timeout", "30")
    try:
        udp_from(cluster, "c1", target, 9999, 3)
        py_in_pod(cluster, "c1", "import subprocess; subprocess.run(['ping', '-c', '1', '-W', '2', __import__('sys').argv[1]])",
                  target, check=False)
        pcap_has(path, lambda fs: sum(f.haslayer(ICMP) and f[ICMP].type == 0 for f in fs) >= 1,
                 "the echo reply in the pcap")
    finally:
        err = stop_capture(cap)
    frames = rdpcap(str(path))
    sent = [f for f in frames if f.haslayer(UDP) and f[UDP].dport == 9999]
    assert [bytes(f[UDP].payload) for f in sent] == [b"podnet-capture-%d" % i for i in range(3)]
    assert all(f[IP].src == pod_ip(cluster, "c1") and f[IP].dst == target for f in sent)
    pings = [f for f in frames if f.haslayer(ICMP) and f[ICMP].type in (0, 8)]
    assert [f[ICMP].type for f in pings] == [8, 0]        # both directions of the port
    assert f"{len(frames)} frames written" in err
    assert agent(cluster, "n1", "counters")["capture"]["running"] is False      # stopped after


def test_capture_count_stops_after_exactly_that_many_frames(cluster, tmp_path):
    path = tmp_path / "two.pcap"
    cap = start_capture(cluster, "n1", "c1", "-w", str(path), "-c", "2", "--timeout", "30")
    try:
        udp_from(cluster, "c1", pod_ip(cluster, "w2"), 9999, 5)      # more than 2 cross the port
        _, err = cap.communicate(timeout=20)                          # -c 2 ends it by itself
    finally:
        if cap.poll() is None:
            cap.kill()
            cap.communicate()
    assert cap.returncode == 0, err
    frames = rdpcap(str(path))
    assert len(frames) == 2 and f"2 frames written to {path}" in err
    assert agent(cluster, "n1", "counters")["capture"]["running"] is False


def test_capture_snaplen_keeps_that_many_bytes_and_the_wire_length(cluster, tmp_path):
    path = tmp_path / "cut.pcap"
    cap = start_capture(cluster, "n1", "c1", "-w", str(path), "--snaplen", "64")
    try:
        udp_from(cluster, "c1", pod_ip(cluster, "w2"), 9998, 3, size=500)
        pcap_has(path, lambda fs: sum(f.haslayer(UDP) and f[UDP].dport == 9998 for f in fs) == 3,
                 "the 3 datagrams in the pcap")
    finally:
        stop_capture(cap)
    recs = [(Ether(d), m) for d, m in RawPcapReader(str(path))]
    ours = [(e, m) for e, m in recs if e.haslayer(UDP) and e[UDP].dport == 9998]
    assert [(m.caplen, m.wirelen) for _, m in ours] == [(64, 14 + 20 + 8 + 500)] * 3
    assert all(m.caplen <= 64 for _, m in recs)
    assert RawPcapReader(str(path)).snaplen == 64


def test_capture_on_the_uplink_holds_the_vxlan_frames_both_ways(cluster, tmp_path):
    """`podnet capture n1 uplink`: c1's datagrams to w2 leave encapsulated;
    w2's echo reply to c1's ping comes back encapsulated. (Not w2's ICMP port
    unreachable: Linux rate-limits ICMP errors per destination, so one could
    be suppressed after the other tests' errors.)"""
    path = tmp_path / "uplink.pcap"
    c1, w2 = pod_ip(cluster, "c1"), pod_ip(cluster, "w2")

    def inner(f):
        return f[VXLAN].payload if f.haslayer(VXLAN) else None

    def out(fs):
        return [f for f in fs if inner(f) is not None and inner(f).haslayer(UDP) and inner(f)[UDP].dport == 9997
                and not inner(f).haslayer(ICMP)]

    def back(fs):
        return [f for f in fs if inner(f) is not None and inner(f).haslayer(ICMP) and inner(f)[ICMP].type == 0]
    cap = start_capture(cluster, "n1", "uplink", "-w", str(path))
    try:
        udp_from(cluster, "c1", w2, 9997, 3)
        in_pod(cluster, "c1", "ping", "-c", "1", "-W", "5", w2)
        pcap_has(path, lambda fs: len(out(fs)) == 3 and back(fs), "3 encapsulated datagrams and an echo reply")
    finally:
        stop_capture(cap)
    frames = rdpcap(str(path))
    for f in out(frames):
        assert (f[IP].src, f[IP].dst, f[UDP].dport, f[VXLAN].vni) == ("172.30.245.1", "172.30.245.2", 4789, 1)
        assert (inner(f)[IP].src, inner(f)[IP].dst) == (c1, w2)
    assert [bytes(inner(f)[UDP].payload) for f in out(frames)] == [b"podnet-capture-%d" % i for i in range(3)]
    f = back(frames)[0]
    assert (f[IP].src, f[IP].dst) == ("172.30.245.2", "172.30.245.1")
    assert (inner(f)[IP].src, inner(f)[IP].dst) == (w2, c1)


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
    _, body2 = scrape(path=cluster.nodes["n2"].metrics["socket"])
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
