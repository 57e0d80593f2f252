"""Conntrack timeouts on the injected clock, at their edges: each entry is
alive just before its timeout and gone at it (by the sweep, and on lookup
when no sweep ran). netfilter-like defaults: TCP SYN_SENT 120 s,
ESTABLISHED 86400 s, FIN 120 s, CLOSE (RST seen) 10 s; UDP 30 s unreplied,
120 s once replied."""
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

from fastpath import Dataplane

GW_IP, GW_MAC = "10.244.0.1", "0a:58:0a:f4:00:01"
A = ("10.244.0.2", "0a:58:0a:f4:00:02", 0)      # client pod
B = ("10.244.0.3", "0a:58:0a:f4:00:03", 1)      # backend pod
VIP = "10.96.0.10"
EPS = 0.125                                      # exact in binary: the ms clock sees it exactly


@pytest.fixture
def dp(clock):
    d = Dataplane(nslots=16, clock=clock, conntrack_capacity=64, service_capacity=64)
    for _, _, p in (A, B):
        d.add_port(p)
    d.gateway.configure(GW_IP, GW_MAC, "10.244.0.0/24")
    for ip, mac, port in (A, B):
        d.gateway.add_neighbor(ip, mac)
        d.process(bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=mac, psrc=ip, pdst=GW_IP)), port)
    d.services.seed(1)
    d.services.set(VIP, 80, "TCP", [(B[0], 8080)])
    d.services.set(VIP, 53, "UDP", [(B[0], 5353)])
    return d


def to_vip(flags, sport=40000, payload=b""):
    return bytes(Ether(src=A[1], dst=GW_MAC) / IP(src=A[0], dst=VIP)
                 / TCP(sport=sport, dport=80, flags=flags, seq=1, ack=1 if "A" in flags else 0) / payload)


def from_backend(flags, dport=40000):
    return bytes(Ether(src=B[1], dst=A[1]) / IP(src=B[0], dst=A[0])
                 / TCP(sport=8080, dport=dport, flags=flags, seq=1, ack=1))


def udp_to_vip(sport=5000):
    return bytes(Ether(src=A[1], dst=GW_MAC) / IP(src=A[0], dst=VIP) / UDP(sport=sport, dport=53) / b"q")


def udp_reply(dport=5000):
    return bytes(Ether(src=B[1], dst=A[1]) / IP(src=B[0], dst=A[0]) / UDP(sport=5353, dport=dport) / b"r")


def through(dp, frame, port, want_port):
    [(out, f)] = dp.process(frame, port)
    assert out == want_port
    return Ether(f)


def state(dp):
    [c] = dp.conntrack_dump()
    return c["state"]


def alive_until(dp, clock, seconds):
    """The one connection survives the sweep until `seconds` from now, not at it."""
    clock.advance(seconds - EPS)
    assert dp.conntrack_gc() == 0 and len(dp.conntrack) == 1
    assert dp.conntrack_dump()[0]["expires_in"] == EPS
    clock.advance(EPS)
    assert dp.conntrack_gc() == 1 and len(dp.conntrack) == 0


def test_defaults_are_the_documented_ones(dp):
    assert dp.conntrack.timeouts() == {"tcp_new": 120, "tcp_established": 86400, "tcp_fin": 120,
                                       "tcp_closed": 10, "udp": 30, "udp_stream": 120}
    assert Dataplane(nslots=16).counters()["conntrack"]["capacity"] == 262144


def test_tcp_syn_sent_120s(dp, clock):
    through(dp, to_vip("S"), A[2], B[2])
    assert state(dp) == "new"
    alive_until(dp, clock, 120)


def test_tcp_established_86400s(dp, clock):
    through(dp, to_vip("S"), A[2], B[2])
    through(dp, from_backend("SA"), B[2], A[2])
    through(dp, to_vip("A"), A[2], B[2])
    assert state(dp) == "established"
    alive_until(dp, clock, 86400)


def test_tcp_fin_120s(dp, clock):
    through(dp, to_vip("S"), A[2], B[2])
    through(dp, from_backend("SA"), B[2], A[2])
    through(dp, to_vip("FA"), A[2], B[2])
    assert state(dp) == "fin_wait"
    alive_until(dp, clock, 120)


@pytest.mark.parametrize("rst_from", ["client", "backend"])
def test_tcp_closed_10s(dp, clock, rst_from):
    through(dp, to_vip("S"), A[2], B[2])
    through(dp, from_backend("SA"), B[2], A[2])
    through(dp, to_vip("A"), A[2], B[2])
    if rst_from == "client":
        through(dp, to_vip("R"), A[2], B[2])
    else:
        e = through(dp, from_backend("R"), B[2], A[2])
        assert (e[IP].src, e[TCP].sport) == (VIP, 80)          # the RST itself is un-NATed
    assert state(dp) == "closed"
    alive_until(dp, clock, 10)


def test_udp_unreplied_30s_replied_120s(dp, clock):
    through(dp, udp_to_vip(), A[2], B[2])
    assert state(dp) == "unreplied"
    clock.advance(20)
    through(dp, udp_to_vip(), A[2], B[2])                      # another query: 30 s again, not 120
    assert state(dp) == "unreplied" and dp.conntrack_dump()[0]["expires_in"] == 30
    alive_until(dp, clock, 30)
    through(dp, udp_to_vip(5001), A[2], B[2])
    clock.advance(25)
    e = through(dp, udp_reply(5001), B[2], A[2])               # a reply: 120 s from it
    assert (e[IP].src, e[UDP].sport) == (VIP, 53)
    assert state(dp) == "replied"
    clock.advance(100)
    through(dp, udp_to_vip(5001), A[2], B[2])                  # the client's next datagram: 120 s too
    assert dp.conntrack_dump()[0]["expires_in"] == 120
    alive_until(dp, clock, 120)


def test_expired_entries_are_dropped_on_lookup(dp, clock):
    """No sweep ran: the next packet finds the entry expired, deletes it
    (counted `expired`) and is handled as if there was none."""
    through(dp, to_vip("S"), A[2], B[2])
    through(dp, from_backend("SA"), B[2], A[2])
    through(dp, to_vip("A"), A[2], B[2])
    through(dp, to_vip("R"), A[2], B[2])
    clock.advance(10)
    assert dp.process(to_vip("A", payload=b"late"), A[2]) == []      # mid-stream, no connection
    c = dp.counters()
    assert c["drops"]["conntrack_invalid"] == 1 and c["conntrack"]["invalid"] == 1
    assert c["conntrack"]["expired"] == 1 and len(dp.conntrack) == 0
    # a UDP flow past its 30 s: the reply is not un-NATed any more, the entry goes
    through(dp, udp_to_vip(), A[2], B[2])
    clock.advance(30)
    e = through(dp, udp_reply(), B[2], A[2])                   # bridged as it is, from the backend
    assert (e[IP].src, e[UDP].sport) == (B[0], 5353)
    assert dp.counters()["conntrack"]["expired"] == 2 and len(dp.conntrack) == 0
    # and the next datagram is a new flow
    through(dp, udp_to_vip(), A[2], B[2])
    assert state(dp) == "unreplied" and dp.counters()["conntrack"]["inserts"] == 3


def test_the_agent_loop_sweeps_expired_connections(tmp_path, clock):
    """Nothing looks the entry up again: the agent's loop sweeps it (once a
    second) once its clock has passed the timeout. Waits for the loop's
    first round (its first snapshot) and for the sweep itself, bounded."""
    import threading
    import time
    from dataplane.agent import Agent
    agent = Agent({"node": "n1", "netns": "-", "socket": str(tmp_path / "n1.sock"), "vnet": False, "pods": [],
                   "gateway": {"ip": GW_IP, "mac": GW_MAC, "subnet": "10.244.0.0/24"}, "conntrack_capacity": 64},
                  clock=clock)
    agent.setup()
    d = agent.dp
    for ip, mac, port in (A, B):
        d.add_port(port)
        d.gateway.add_neighbor(ip, mac)
        d.process(bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=mac, psrc=ip, pdst=GW_IP)), port)
    agent.services_apply([{"vip": VIP, "port": 53, "protocol": "UDP", "backends": [[B[0], 5353]]}], [])
    through(d, udp_to_vip(), A[2], B[2])
    clock.advance(30 - EPS)                                  # not yet due: the loop's sweeps leave it
    t = threading.Thread(target=agent.run, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 5
        while agent.snapshots.writes == 0 and time.monotonic() < deadline:
            time.sleep(0.01)                                 # the first round of the loop has run
        assert len(d.conntrack) == 1
        clock.advance(EPS + 1)                               # due, and a sweep interval on
        while len(d.conntrack) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(d.conntrack) == 0 and d.counters()["conntrack"]["expired"] == 1
    finally:
        agent.stop = True
        t.join(5)
        agent.close()
