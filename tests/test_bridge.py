"""L2 learning bridge, checked frame by frame with scapy (Snabb's learning
bridge selftest, in pytest): learning, flooding, aging, moves, capacity,
static entries, flushes, domains, VLAN tags, per-port counters."""
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether

from conftest import dissect, mac, out_ports
from fastpath import Dataplane

BCAST = "ff:ff:ff:ff:ff:ff"


def frame(src, dst, payload=b"data", **ip):
    return bytes(Ether(src=src, dst=dst) / IP(**ip) / UDP(sport=1000, dport=2000) / payload)


def test_unknown_unicast_floods_to_every_other_port(dp):
    f = frame(mac(1), mac(2))
    out = dp.process(f, 0)
    assert out_ports(out) == [1, 2, 3]                    # never back out of port 0
    for p, e in dissect(out):
        assert e.src == mac(1) and e.dst == mac(2) and bytes(e) == f    # unchanged
    assert dp.verdict(0) == ("flood", None)
    assert dp.counters()["bridge"]["flooded"] == 1


def test_learning_then_known_unicast(dp):
    dp.process(frame(mac(1), mac(2)), 0)                  # learn mac1 @ 0
    out = dp.process(frame(mac(2), mac(1)), 2)            # learn mac2 @ 2, mac1 known
    assert out_ports(out) == [0]
    out = dp.process(frame(mac(1), mac(2)), 0)
    assert out_ports(out) == [2]
    e = Ether(out[0][1])
    assert (e.src, e.dst, e[UDP].dport, bytes(e[UDP].payload)) == (mac(1), mac(2), 2000, b"data")
    entries = {(d["mac"], d["port"]) for d in dp.fdb_dump()}
    assert entries == {(mac(1), 0), (mac(2), 2)}
    c = dp.counters()
    assert c["fdb"]["learned"] == 2 and c["bridge"]["forwarded"] == 2


def test_broadcast_and_multicast_flood_even_when_known(dp):
    dp.process(frame(mac(9), mac(1)), 3)
    assert out_ports(dp.process(frame(mac(1), BCAST), 0)) == [1, 2, 3]
    assert out_ports(dp.process(frame(mac(1), "01:00:5e:00:00:fb"), 1)) == [0, 2, 3]
    assert out_ports(dp.process(frame(mac(1), "33:33:00:00:00:01"), 2)) == [0, 1, 3]


def test_destination_on_ingress_port_is_filtered(dp):
    dp.process(frame(mac(1), BCAST), 0)
    dp.process(frame(mac(2), BCAST), 0)                   # both behind port 0
    assert dp.process(frame(mac(2), mac(1)), 0) == []
    assert dp.counters()["drops"]["same_port"] == 1


def test_source_multicast_is_dropped_and_not_learned(dp):
    assert dp.process(frame("01:00:5e:00:00:01", mac(2)), 0) == []
    c = dp.counters()
    assert c["drops"]["src_mac_multicast"] == 1 and c["fdb"]["entries"] == 0


def test_unknown_or_removed_ingress_port(dp):
    assert dp.process(frame(mac(1), mac(2)), 7) == []
    dp.remove_port(3)
    assert dp.process(frame(mac(1), mac(2)), 3) == []
    assert dp.counters()["drops"]["bad_port"] == 2
    assert out_ports(dp.process(frame(mac(1), mac(2)), 0)) == [1, 2]   # 3 left the flood list


def test_aging_with_injected_clock(dp, clock):
    dp.process(frame(mac(1), BCAST), 0)
    clock.advance(299)
    assert out_ports(dp.process(frame(mac(2), mac(1)), 1)) == [0]      # still known
    clock.advance(301)                                                # mac1 not seen for 301 s
    assert out_ports(dp.process(frame(mac(2), mac(1)), 1)) == [0, 2, 3]  # flooded again
    assert dp.age() == 1                                              # the sweep removes it
    assert [d["mac"] for d in dp.fdb_dump()] == [mac(2)]
    assert dp.counters()["fdb"]["aged"] == 1


def test_aging_is_configurable(clock):
    dp = Dataplane(nslots=8, aging=10, clock=clock)
    for p in range(3):
        dp.add_port(p)
    dp.process(frame(mac(1), BCAST), 0)
    clock.advance(11)
    assert dp.age() == 1
    dp.fdb.aging = 0                                                  # 0: never age
    dp.process(frame(mac(1), BCAST), 0)
    clock.advance(10 ** 6)
    assert dp.age() == 0 and len(dp.fdb) == 1
    with pytest.raises(ValueError, match="aging"):
        dp.fdb.aging = -1


def test_station_move(dp):
    dp.process(frame(mac(1), BCAST), 0)
    dp.process(frame(mac(1), BCAST), 2)                   # mac1 moved to port 2
    assert out_ports(dp.process(frame(mac(5), mac(1)), 1)) == [2]
    c = dp.counters()["fdb"]
    assert c["moved"] == 1 and c["entries"] == 2          # mac1 once, plus mac5


def test_static_entry_never_ages_nor_moves(dp, clock):
    dp.fdb.add_static(mac(7), 3)
    dp.process(frame(mac(7), BCAST), 1)                   # spoofed from port 1: no move
    dp.process(frame(mac(8), BCAST), 2)                   # a dynamic entry beside it
    clock.advance(10 ** 6)
    assert dp.age() == 1                                  # only the dynamic one goes
    assert out_ports(dp.process(frame(mac(1), mac(7)), 0)) == [3]
    [e] = [d for d in dp.fdb_dump() if d["mac"] == mac(7)]
    assert e["static"] and e["port"] == 3
    assert dp.counters()["fdb"]["static_conflicts"] == 1


def test_capacity_limit_counts_and_still_forwards(clock):
    dp = Dataplane(nslots=256, fdb_capacity=100, clock=clock)
    for p in range(3):
        dp.add_port(p)
    out = dp.process([frame(mac(i), BCAST) for i in range(150)], 0)
    assert len(out) == 300                                # every frame flooded to 1 and 2
    c = dp.counters()["fdb"]
    assert c["entries"] == 100 and c["learned"] == 100 and c["full"] == 50
    # unlearned stations still get their frames, by flooding
    assert out_ports(dp.process(frame(mac(3), mac(120)), 1)) == [0, 2]
    with pytest.raises(OverflowError, match="FDB full"):
        dp.fdb.add_static(mac(999), 1)


def test_flush_by_port_and_domain(clock):
    dp = Dataplane(nslots=16, clock=clock)
    for p, d in [(0, 0), (1, 0), (2, 5), (3, 5)]:
        dp.add_port(p, domain=d)
    dp.process(frame(mac(1), BCAST), 0)
    dp.process(frame(mac(2), BCAST), 1)
    dp.process(frame(mac(3), BCAST), 2)
    dp.process(frame(mac(4), BCAST), 3)
    dp.fdb.add_static(mac(5), 0)
    assert dp.fdb.flush(port=0) == 1                      # static kept
    assert {d["mac"] for d in dp.fdb_dump()} == {mac(2), mac(3), mac(4), mac(5)}
    assert dp.fdb.flush(domain=5) == 2
    assert {d["mac"] for d in dp.fdb_dump()} == {mac(2), mac(5)}
    assert dp.fdb.flush(include_static=True) == 2 and len(dp.fdb) == 0


def test_bridge_domains_are_isolated(clock):
    dp = Dataplane(nslots=16, clock=clock)
    for p, d in [(0, 1), (1, 1), (2, 2), (3, 2)]:
        dp.add_port(p, domain=d)
    assert out_ports(dp.process(frame(mac(1), BCAST), 0)) == [1]
    # same MAC in another domain is another station
    assert out_ports(dp.process(frame(mac(1), BCAST), 2)) == [3]
    assert {(d["mac"], d["domain"], d["port"]) for d in dp.fdb_dump()} == {
        (mac(1), 1, 0), (mac(1), 2, 2)}
    assert out_ports(dp.process(frame(mac(9), mac(1)), 3)) == [2]


def test_lone_port_flood_is_counted(clock):
    dp = Dataplane(nslots=4, clock=clock)
    dp.add_port(0, domain=3)
    assert dp.process(frame(mac(1), BCAST), 0) == []
    assert dp.counters()["drops"]["no_ports"] == 1


@pytest.mark.parametrize("tags", [Dot1Q(vlan=10), Dot1Q(vlan=100) / Dot1Q(vlan=20)])
def test_vlan_tagged_frames_learned_and_forwarded_intact(dp, tags):
    f = bytes(Ether(src=mac(1), dst=mac(2)) / tags / IP() / UDP() / b"t")
    dp.process(bytes(Ether(src=mac(2), dst=BCAST) / tags / IP() / UDP()), 3)
    [(port, out)] = dp.process(f, 0)
    assert port == 3 and out == f
    e = Ether(out)
    assert e[Dot1Q].vlan == tags.vlan and bytes(e[UDP].payload) == b"t"


def test_port_counters_and_bytes(dp):
    f = frame(mac(1), BCAST, payload=b"x" * 100)
    dp.process([f, f], 0)
    c = dp.counters()["ports"]
    assert c[0]["rx_packets"] == 2 and c[0]["rx_bytes"] == 2 * len(f)
    for p in (1, 2, 3):
        assert c[p]["tx_packets"] == 2 and c[p]["tx_bytes"] == 2 * len(f)
    assert c[0]["tx_packets"] == 0


def test_frame_larger_than_slot_is_counted(clock):
    dp = Dataplane(nslots=4, slot_size=256, clock=clock)
    dp.add_port(0)
    dp.add_port(1)
    big = frame(mac(1), mac(2), payload=b"x" * 300)
    out = dp.process([big, frame(mac(1), mac(2))], 0)
    assert out_ports(out) == [1]
    assert dp.counters()["drops"]["too_long"] == 1


def test_bursts_larger_than_slots_are_split(clock):
    dp = Dataplane(nslots=8, clock=clock)
    for p in range(2):
        dp.add_port(p)
    frames = [frame(mac(1), mac(2), payload=bytes([i])) for i in range(20)]
    out = dp.process(frames, 0)
    assert [b for _, b in out] == frames                  # order kept across bursts


def test_bad_control_requests_are_clear_errors(dp):
    with pytest.raises(ValueError, match="port must be"):
        dp.add_port(256)
    with pytest.raises(ValueError, match="bridge domain"):
        dp.add_port(5, domain=5000)
    with pytest.raises(ValueError, match="invalid MAC"):
        dp.fdb.add_static("zz:00:00:00:00:01", 1)
    with pytest.raises(KeyError):
        dp.remove_port(99)
    with pytest.raises(ValueError, match="nslots"):
        Dataplane(nslots=0)
