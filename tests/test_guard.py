"""Anti-spoofing on pod ports: a guarded port sends only from its pod's MAC
and IPv4 address (ARP sender included); forged frames are dropped before
learning and counted as spoof_mac / spoof_ip, and nothing they claim is
learned. Unguarded ports (the default) and the uplink are not checked."""
import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN

from fastpath import Dataplane

GW_IP, GW_MAC = "10.244.0.1", "0a:58:0a:f4:00:01"
A = ("10.244.0.2", "0a:58:0a:f4:00:02", 0)      # guarded
B = ("10.244.0.3", "0a:58:0a:f4:00:03", 1)      # guarded
C = ("10.244.0.4", "0a:58:0a:f4:00:04", 2)      # not guarded
NODE_IP, NODE_MAC, PEER_IP, PEER_MAC = "172.30.250.1", "0a:5a:ac:1e:fa:01", "172.30.250.2", "0a:5a:ac:1e:fa:02"
REMOTE_GW_MAC = "0a:58:0a:f4:01:01"
UPLINK = 255
BCAST = "ff:ff:ff:ff:ff:ff"
EVIL_MAC = "0a:58:0a:f4:00:66"


@pytest.fixture
def dp(clock):
    d = Dataplane(nslots=32, clock=clock)
    for _, _, p in (A, B, C):
        d.add_port(p)
    d.add_port(UPLINK, domain=4095)
    d.gateway.configure(GW_IP, GW_MAC, "10.244.0.0/24")
    for ip, mac, port in (A, B, C):
        d.gateway.add_neighbor(ip, mac)
    for ip, mac, port in (A, B):
        d.set_port_guard(port, mac, ip)
    d.overlay.configure(UPLINK, NODE_IP, NODE_MAC, vni=1)
    d.overlay.set_routes([{"cidr": "10.244.1.0/24", "vtep": PEER_IP, "inner_mac": REMOTE_GW_MAC,
                           "vtep_mac": PEER_MAC}], local="10.244.0.0/24")
    for ip, mac, port in (A, B, C):                                        # the bridge knows every pod
        d.process(arp(hwsrc=mac, psrc=ip), port)
    d.reset_counters()
    return d


def udp(src_mac=A[1], src_ip=A[0], dst_mac=B[1], dst_ip=B[0]):
    return bytes(Ether(src=src_mac, dst=dst_mac) / IP(src=src_ip, dst=dst_ip) / UDP(sport=1000, dport=53) / b"q")


def arp(hwsrc=A[1], psrc=A[0], eth_src=None, pdst=GW_IP):
    return bytes(Ether(src=eth_src or hwsrc, dst=BCAST) / ARP(op=1, hwsrc=hwsrc, psrc=psrc, pdst=pdst))


def drops(dp):
    return {k: v for k, v in dp.counters()["drops"].items() if v}


def test_the_pods_own_frames_pass(dp):
    [(port, out)] = dp.process(udp(), A[2])                                 # bridged to B
    assert port == B[2] and Ether(out)[IP].src == A[0]
    [(port, out)] = dp.process(arp(), A[2])                                 # ARP for the gateway
    assert port == A[2] and (Ether(out)[ARP].op, Ether(out)[ARP].pdst) == (2, A[0])
    probe = arp(psrc="0.0.0.0", pdst=A[0])                                  # RFC 5227 probe
    assert sorted(p for p, _ in dp.process(probe, A[2])) == [B[2], C[2]]
    ping = Ether(src=A[1], dst=GW_MAC) / IP(src=A[0], dst=GW_IP) / ICMP(id=1, seq=1)
    [(port, out)] = dp.process(bytes(ping), A[2])
    assert port == A[2] and Ether(out)[ICMP].type == 0
    v6 = Ether(src=A[1], dst="33:33:00:00:00:02") / IPv6(src="fe80::1", dst="ff02::2") / UDP()
    assert len(dp.process(bytes(v6), A[2])) == 2                            # IPv6: MAC checked only
    tagged = Ether(src=A[1], dst=B[1]) / Dot1Q(vlan=5) / IP(src=A[0], dst=B[0]) / UDP()
    assert [p for p, _ in dp.process(bytes(tagged), A[2])] == [B[2]]
    assert drops(dp) == {}


@pytest.mark.parametrize("frame,reason", [
    (udp(src_mac=EVIL_MAC), "spoof_mac"),                                  # another MAC
    (udp(src_mac=B[1]), "spoof_mac"),                                      # a neighbour's MAC
    (udp(src_ip="10.244.0.99"), "spoof_ip"),                               # another IP
    (udp(src_ip=B[0]), "spoof_ip"),                                        # a neighbour's IP
    (udp(src_ip="0.0.0.0"), "spoof_ip"),                                   # no DHCP on pod ports
    (bytes(Ether(src=A[1], dst=GW_MAC) / IP(src="8.8.8.8", dst="10.96.0.10") / UDP(dport=53)), "spoof_ip"),
    (bytes(Ether(src=A[1], dst=B[1]) / Dot1Q(vlan=5) / IP(src=B[0], dst=B[0]) / UDP()), "spoof_ip"),
    (bytes(Ether(src=A[1], dst=B[1]) / IP(src=B[0], dst=B[0], flags="MF", frag=0) / UDP()), "spoof_ip"),
    (arp(psrc=B[0]), "spoof_ip"),                                          # ARP sender IP
    (arp(psrc="10.244.0.77"), "spoof_ip"),
    (arp(hwsrc=EVIL_MAC, eth_src=A[1]), "spoof_mac"),                      # ARP sender MAC
    (arp(hwsrc=EVIL_MAC), "spoof_mac"),
    (bytes(Ether(src=EVIL_MAC, dst="33:33:00:00:00:02") / IPv6(src="fe80::1", dst="ff02::2") / UDP()), "spoof_mac"),
    (bytes(Ether(src=EVIL_MAC, dst=BCAST, type=0x88b5) / (b"x" * 46)), "spoof_mac"),   # any ethertype
])
def test_forged_frames_are_dropped_and_counted(dp, frame, reason):
    fdb_before, neigh_before = dp.fdb_dump(), dp.gateway.neighbors()
    assert dp.process(frame, A[2]) == []
    assert drops(dp) == {reason: 1}
    assert dp.port_counters(A[2])["rx_dropped"] == 1
    assert dp.fdb_dump() == fdb_before                  # nothing learned from it
    assert dp.gateway.neighbors() == neigh_before


def test_forged_arp_does_not_poison_a_learned_neighbour(dp):
    """A pod claiming another's address by gratuitous ARP (the classic
    man-in-the-middle) is refused; the gateway keeps the real owner."""
    d_ip = "10.244.0.5"                                                    # learned by ARP, not from IPAM
    dp.process(arp(hwsrc=C[1], psrc=d_ip, pdst=d_ip), C[2])
    assert {"ip": d_ip, "mac": C[1], "state": "learned"} in dp.gateway.neighbors()
    assert dp.process(arp(hwsrc=A[1], psrc=d_ip, pdst=d_ip), A[2]) == []  # A claims it
    assert {"ip": d_ip, "mac": C[1], "state": "learned"} in dp.gateway.neighbors()
    assert drops(dp) == {"spoof_ip": 1}


def test_unguarded_ports_and_clearing(dp):
    # C is not guarded: anything it sends is bridged as before
    assert [p for p, _ in dp.process(udp(src_mac=EVIL_MAC, src_ip="10.9.9.9", dst_mac=B[1]), C[2])] == [B[2]]
    assert dp.guard.list() == {A[2]: {"mac": A[1], "ip": A[0]}, B[2]: {"mac": B[1], "ip": B[0]}}
    dp.clear_port_guard(A[2])
    assert dp.guard.get(A[2]) is None
    assert [p for p, _ in dp.process(udp(src_ip="10.244.0.99"), A[2])] == [B[2]]
    dp.remove_port(B[2])                                                   # a removed port forgets its guard
    assert dp.guard.get(B[2]) is None
    assert drops(dp) == {}


def test_guard_arguments_are_checked(dp):
    for args, msg in [((256, A[1], A[0]), "port must be 0..255"), ((-1, A[1], A[0]), "port must be"),
                      ((0, "nope", A[0]), "invalid MAC"), ((0, BCAST, A[0]), "multicast"),
                      ((0, A[1], "10.244.0.300"), "IPv4 address"), ((0, A[1], "fe80::1"), "IPv4 address")]:
        with pytest.raises(ValueError, match=msg):
            dp.set_port_guard(*args)
    assert dp.guard.get(0) == {"mac": A[1], "ip": A[0]}                   # unchanged


def vxlan_in(inner, vni=1):
    return bytes(Ether(src=PEER_MAC, dst=NODE_MAC) / IP(src=PEER_IP, dst=NODE_IP)
                 / UDP(sport=50000, dport=4789) / VXLAN(vni=vni) / inner)


def test_uplink_is_not_guarded_and_foreign_vnis_are_counted(dp):
    inner = Ether(src=REMOTE_GW_MAC, dst=GW_MAC) / IP(src="10.244.1.2", dst=A[0], ttl=63) / UDP(dport=53) / b"x"
    [(port, out)] = dp.process(vxlan_in(inner), UPLINK)                   # delivered to guarded A
    assert port == A[2] and Ether(out)[IP].src == "10.244.1.2"
    assert dp.process(vxlan_in(inner, vni=7), UPLINK) == []
    assert drops(dp) == {"vxlan_vni": 1}
