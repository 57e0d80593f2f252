"""Parser: every header the fast path reads, and every way a header can lie.
Malformed frames go through the Dataplane too, so each is a counted drop."""
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether

from fastpath import DROP_NAMES, parse
from fastpath.burst import Dataplane

E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def test_drop_names_match_enum():
    from fastpath.counters import N_DROP_REASONS
    assert len(DROP_NAMES) == N_DROP_REASONS
    assert len(set(DROP_NAMES)) == len(DROP_NAMES)


def test_ipv4_tcp():
    f = bytes(E / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1234, dport=80) / b"hello")
    m = parse(f)
    assert m["ip4"] and m["l4"] and not m["fragment"]
    assert (m["ethertype"], m["proto"], m["l3_off"], m["l4_off"]) == (0x0800, 6, 14, 34)
    assert m["l3_len"] == 20 + 20 + 5 and m["l4_len"] == 25


def test_ipv4_options_move_l4():
    f = bytes(E / IP(options=b"\x94\x04\x00\x00") / UDP() / b"x")  # router alert
    m = parse(f)
    assert m["l4_off"] == 14 + 24 and m["l4"] and m["proto"] == 17


def test_ethernet_padding_is_not_payload():
    f = bytes(E / IP() / UDP()) + b"\x00" * 20
    m = parse(f)
    assert m["l3_len"] == 28 and m["l4_len"] == 8


def test_ipv6_udp_and_icmp():
    m = parse(bytes(E / IPv6(src="fd00::1", dst="fd00::2") / UDP(dport=53) / b"q"))
    assert m["ip6"] and m["proto"] == 17 and m["l4_off"] == 54 and m["l4_len"] == 9
    m = parse(bytes(E / IPv6(nh=58) / b"\x80\x00\x00\x00\x00\x00\x00\x00"))
    assert m["proto"] == 58 and m["l4"]


def test_arp():
    m = parse(bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="10.0.0.1")))
    assert m["arp"] and m["multicast_dst"] and m["ethertype"] == 0x0806


@pytest.mark.parametrize("tags,vlans", [
    (Dot1Q(vlan=10), [10]),
    (Dot1AD(vlan=100) / Dot1Q(vlan=20), [100, 20]),
    (Dot1Q(vlan=7) / Dot1Q(vlan=4095), [7, 4095]),
])
def test_vlan_tags(tags, vlans):
    m = parse(bytes(E / tags / IP() / ICMP()))
    assert m["vlans"] == vlans and m["ip4"] and m["proto"] == 1
    assert m["l3_off"] == 14 + 4 * len(vlans)


def test_fragments():
    first, second = (bytes(E / f) for f in
                     __import__("scapy.layers.inet", fromlist=["fragment"]).fragment(
                         IP(dst="10.0.0.2") / UDP() / (b"x" * 100), fragsize=64))
    m1, m2 = parse(first), parse(second)
    assert m1["fragment"] and m1["l4"]          # first fragment carries the UDP header
    assert m2["fragment"] and not m2["l4"]      # later ones do not


def _ip(**kw):
    return bytes(E / IP(**kw) / UDP() / b"payload")


# (frame, reason): each one a header that is short or lies about itself.
MALFORMED = [
    (b"", "runt"),
    (bytes(E)[:13], "runt"),
    (bytes(E / Dot1Q(vlan=1))[:16], "vlan_truncated"),
    (bytes(E / Dot1Q() / Dot1Q() / Dot1Q() / IP()), "vlan_depth"),
    (bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP())[:30], "arp_truncated"),
    (_ip()[:14 + 19], "ip4_truncated"),
    (bytes(E / IP(version=5) / UDP()), "ip4_version"),
    (bytes(E / IP(ihl=4) / UDP()), "ip4_ihl"),
    (bytes(E / IP(ihl=15) / UDP()), "ip4_ihl"),        # options would run past the frame
    (bytes(E / IP(len=500) / UDP()), "ip4_length"),
    (bytes(E / IP(len=19) / UDP()), "ip4_length"),
    (bytes(E / IPv6() / UDP())[:14 + 39], "ip6_truncated"),
    (bytes(E / IPv6(plen=400) / UDP()), "ip6_length"),
    (bytes(E / IP(len=20 + 10) / TCP())[:14 + 30], "l4_truncated"),
    (bytes(E / IP() / TCP(dataofs=4)), "tcp_data_offset"),
    (bytes(E / IP() / TCP(dataofs=15)), "tcp_data_offset"),
    (bytes(E / IP() / UDP(len=7)), "udp_length"),
    (bytes(E / IP() / UDP(len=60)), "udp_length"),
    (bytes(E / IP(len=22, proto=1) / b"\x08\x00"), "l4_truncated"),
]


@pytest.mark.parametrize("frame,reason", MALFORMED, ids=[r for _, r in MALFORMED])
def test_malformed_is_a_counted_drop(frame, reason, clock):
    assert parse(frame) == {"drop": reason}
    dp = Dataplane(nslots=8, clock=clock)
    dp.add_port(0)
    dp.add_port(1)
    assert dp.process(frame, 0) == []
    c = dp.counters()
    assert c["drops"][reason] == 1
    assert sum(c["drops"].values()) == 1
    assert c["ports"][0]["rx_dropped"] == 1 and c["ports"][1]["tx_packets"] == 0
    assert c["fdb"]["learned"] == 0        # nothing learned from a bad frame
