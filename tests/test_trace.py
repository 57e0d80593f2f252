"""Dataplane.trace: the live burst loop notes every decision for one frame;
by default in a forked copy, so the live tables and counters stay as they were."""
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from fastpath.trace import EVENT_NAMES, N_EVENTS
from test_services import A, B, GW_MAC, NODE_IP, NODE_MAC, PEER_IP, REMOTE, UPLINK, VIP, dp, syn  # noqa: F401


def names(result):
    return [e[0] for e in result["events"]]


def state(d):
    return d.counters(), d.fdb_dump(), d.conntrack_dump()


def test_event_names_match_the_c_enum():
    assert len(EVENT_NAMES) == N_EVENTS


def test_trace_of_a_bridged_frame(dp):
    f = bytes(Ether(src=A[1], dst=B[1]) / IP(src=A[0], dst=B[0]) / UDP(sport=1, dport=2))
    r = dp.trace(f, A[2])
    assert names(r) == ["rx", "parse", "learn", "fdb", "tx"]
    assert r["events"][3][1] == B[2]                      # the FDB hit names B's port
    assert r["verdict"] == (B[2], None)
    [(port, out, vnet)] = r["outputs"]
    assert port == B[2] and out == f and vnet == b""


def test_trace_of_a_new_service_flow_shows_the_backend_and_the_encapsulation(dp):
    dp.services.set(VIP, 80, "TCP", [(REMOTE, 8080)])
    before = state(dp)
    r = dp.trace(syn(), A[2])
    assert names(r) == ["rx", "parse", "learn", "service", "pick", "conntrack", "dnat", "gateway",
                        "encap", "tx"]
    ev = dict((e[0], e[1:]) for e in r["events"])
    assert ev["pick"][:2] == (int.from_bytes(bytes(map(int, REMOTE.split("."))), "big"), 8080)
    assert ev["pick"][2] & 0xffff == 1                   # one backend
    [(port, out, _)] = r["outputs"]
    assert port == UPLINK
    o = Ether(out)
    assert o[IP].src == NODE_IP and o[IP].dst == PEER_IP and o[VXLAN].vni == 1
    inner = o[VXLAN].payload
    assert inner[IP].dst == REMOTE and inner[TCP].dport == 8080
    assert state(dp) == before                           # the live tables did not see it


def test_commit_changes_the_live_tables(dp):
    dp.services.set(VIP, 80, "TCP", [(B[0], 8080)])
    r = dp.trace(syn(), A[2], commit=True)
    assert "dnat" in names(r)
    [conn] = dp.conntrack_dump()
    assert conn["backend"].startswith(B[0])
    again = dp.trace(syn(flags="A"), A[2])
    assert ("conntrack", 0) == (again["events"][4][0], again["events"][4][1])   # CT_EV_HIT
    assert again["verdict"] == (B[2], None)


def test_trace_of_a_drop_names_the_reason(dp):
    r = dp.trace(b"\x00" * 10, A[2])
    assert names(r) == ["rx", "drop"] and r["verdict"] == ("drop", "runt") and r["outputs"] == []


def test_trace_of_decap_on_the_uplink(dp):
    inner = Ether(src="0a:58:0a:f4:01:01", dst=GW_MAC) / IP(src=REMOTE, dst=A[0], ttl=63) / UDP(sport=9, dport=9)
    f = bytes(Ether(src="0a:5a:ac:1e:fa:02", dst=NODE_MAC) / IP(src=PEER_IP, dst=NODE_IP, flags="DF")
              / UDP(sport=50000, dport=4789, chksum=0) / VXLAN(vni=1, flags=0x08) / inner)
    r = dp.trace(f, UPLINK)
    assert names(r) == ["rx", "parse", "decap", "parse", "gateway", "fdb", "tx"]
    assert r["events"][2][1] == 1                        # the VNI
    assert r["verdict"] == (A[2], None)


def test_bad_arguments_are_clear_errors(dp):
    import pytest
    with pytest.raises(ValueError, match="port must be"):
        dp.trace(b"x" * 60, 9999)
    with pytest.raises(ValueError, match="vnet header"):
        dp.trace(b"x" * 60, A[2], vnet=b"\x00")
