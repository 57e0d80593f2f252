"""`podnet trace`'s packet choices without a cluster: -p tcp|udp|icmp,
--sport, --flags and --pcap FILE --index K each decide the frame handed to
the agent. The command line runs for real (dataplane.cli.main) with the
cluster state and the agent round trip replaced, so what is checked is the
frame itself, dissected with scapy. (test_netns_tools.py runs the same flags
through live agents.)"""
import dpkt
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from dataplane import cli, cluster, trace

def _state():
    from dataplane.state import ClusterState, NodeState, PodRecord
    nodes = {n: NodeState(n, i, f"10.250.{i + 1}.0/24", f"10.250.{i + 1}.1", f"0a:58:0a:fa:0{i + 1}:01",
                          f"x-node-{n}", socket="/nonexistent") for i, n in enumerate(("n1", "n2"))}
    pods = {name: PodRecord(name, node, ip, 24, mac, "", 1450, port, f"x-pod-{name}")
            for name, node, ip, mac, port in (("c1", "n1", "10.250.1.2", "0a:58:0a:fa:01:02", 0),
                                              ("p1", "n1", "10.250.1.3", "0a:58:0a:fa:01:03", 1),
                                              ("w2", "n2", "10.250.2.2", "0a:58:0a:fa:02:02", 0))}
    return ClusterState("x", "<test>", {}, nodes, pods, {}, [], {}, 1, 4789, 1450)


STATE = _state()


@pytest.fixture
def traced(monkeypatch):
    """Run `podnet trace ...`; returns the frame the agent would have been given."""
    sent = []
    monkeypatch.setattr(cluster, "require_state", lambda: STATE)
    monkeypatch.setattr(trace, "run", lambda pod, frame, commit=False: sent.append((pod, frame, commit)) or [])

    def go(*argv):
        assert cli.main(["trace", *argv]) == 0
        [(pod, frame, commit)] = sent
        sent.clear()
        return pod, Ether(frame), commit
    return go


def test_default_is_a_tcp_syn_from_port_40000(traced):
    pod, f, commit = traced("c1", "10.96.0.10:80")
    assert pod == "c1" and commit is False
    assert f[Ether].src == "0a:58:0a:fa:01:02" and f[Ether].dst == "0a:58:0a:fa:01:01"   # off-subnet: the gateway
    assert (f[IP].src, f[IP].dst, f[IP].ttl, f[IP].proto) == ("10.250.1.2", "10.96.0.10", 64, 6)
    assert (f[TCP].sport, f[TCP].dport, str(f[TCP].flags)) == (40000, 80, "S")


def test_p_udp_and_sport(traced):
    _, f, _ = traced("c1", "10.250.2.2:53", "-p", "udp", "--sport", "5353")
    assert f.haslayer(UDP) and not f.haslayer(TCP)
    assert (f[IP].proto, f[UDP].sport, f[UDP].dport) == (17, 5353, 53)


def test_p_icmp_is_an_echo_request_whose_id_is_sport(traced):
    _, f, _ = traced("c1", "10.250.2.2", "-p", "icmp", "--sport", "77")
    assert f[IP].proto == 1 and (f[ICMP].type, f[ICMP].id, f[ICMP].seq) == (8, 77, 1)
    _, f, _ = traced("c1", "10.250.2.2", "-p", "ICMP")         # any case
    assert f.haslayer(ICMP) and f[ICMP].id == 40000


def test_p_tcp_explicit_and_flags(traced):
    _, f, _ = traced("c1", "10.96.0.10:443", "-p", "tcp", "--flags", "A")
    assert str(f[TCP].flags) == "A" and f[TCP].dport == 443
    _, f, _ = traced("c1", "10.96.0.10:443", "--flags", "FA")
    assert str(f[TCP].flags) == "FA"
    _, f, _ = traced("c1", "10.96.0.10:443", "--flags", "R", "--commit")
    assert str(f[TCP].flags) == "R"


def test_a_destination_on_the_pods_own_subnet_goes_to_the_peers_mac(traced):
    _, f, _ = traced("c1", "10.250.1.3:8080")
    assert f[Ether].dst == "0a:58:0a:fa:01:03"
    _, f, _ = traced("c1", "10.250.1.99:8080")                 # no such pod: the gateway, as the kernel would ARP
    assert f[Ether].dst == "0a:58:0a:fa:01:01"


@pytest.mark.parametrize("argv, message", [
    (["c1", "10.96.0.10:80", "-p", "sctp"], "protocol must be tcp, udp or icmp, got 'sctp'"),
    (["c1", "10.96.0.10", "-p", "udp"], "udp needs a destination port 1..65535"),
    (["c1", "10.96.0.10:0"], "tcp needs a destination port 1..65535"),
    (["c1", "10.96.0.10:80", "--sport", "70000"], "source port must be 1..65535, got 70000"),
    (["c1", "10.96.0.10:80", "--flags", "Q"], "TCP flags"),
    (["c1"], "give a destination (IP:PORT) or --pcap FILE"),
])
def test_bad_choices_are_one_clear_error(traced, capsys, argv, message):
    assert cli.main(["trace", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("podnet trace: ") and message in err, err
    assert "Traceback" not in err


def write_pcap(path, frames, linktype=dpkt.pcap.DLT_EN10MB):
    with open(path, "wb") as fh:
        w = dpkt.pcap.Writer(fh, linktype=linktype)
        for k, f in enumerate(frames):
            w.writepkt(bytes(f), ts=k)


def test_pcap_index_picks_that_frame(traced, tmp_path):
    frames = [Ether(src="0a:58:0a:fa:01:02", dst="0a:58:0a:fa:01:01") / IP(src="10.250.1.2", dst="10.250.2.2")
              / UDP(sport=k, dport=7) for k in range(3)]
    path = tmp_path / "three.pcap"
    write_pcap(path, frames)
    for k in range(3):
        _, f, _ = traced("c1", "--pcap", str(path), "--index", str(k))
        assert bytes(f) == bytes(frames[k])
    _, f, _ = traced("c1", "--pcap", str(path))                 # default: the first
    assert bytes(f) == bytes(frames[0])
    # --pcap wins over a destination
    _, f, _ = traced("c1", "10.96.0.10:80", "--pcap", str(path), "--index", "2")
    assert bytes(f) == bytes(frames[2])


def test_pcap_errors(traced, tmp_path, capsys):
    path = tmp_path / "one.pcap"
    write_pcap(path, [Ether() / IP()])
    assert cli.main(["trace", "c1", "--pcap", str(path), "--index", "1"]) == 1
    assert "has no frame 1" in capsys.readouterr().err
    raw = tmp_path / "raw.pcap"
    write_pcap(raw, [bytes(IP())], linktype=dpkt.pcap.DLT_RAW)
    assert cli.main(["trace", "c1", "--pcap", str(raw)]) == 1
    assert "is not Ethernet" in capsys.readouterr().err
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"not a pcap at all")
    assert cli.main(["trace", "c1", "--pcap", str(junk)]) == 1
    assert "not a readable pcap file" in capsys.readouterr().err
