"""What the fuzzing harness found, with the exact frames it found them with."""
import pytest
from scapy.layers.inet import ICMP, IP, IPerror, TCPerror, IPOption_RR, UDP
from scapy.layers.l2 import Dot1Q, Ether

from fastpath import Dataplane

GW_IP, GW_MAC = "10.244.0.1", "0a:58:0a:f4:00:01"
A = ("10.244.0.2", "0a:58:0a:f4:00:02")
B = ("10.244.0.3", "0a:58:0a:f4:00:03")


def node(clock, **kw):
    dp = Dataplane(clock=clock, **kw)
    dp.add_port(0)
    dp.add_port(1)
    dp.gateway.configure(GW_IP, GW_MAC, "10.244.0.0/24")
    dp.gateway.add_neighbor(*A)
    dp.gateway.add_neighbor(*B)
    return dp


def sums_ok(frame):
    e = Ether(frame)
    for layer in (IP, ICMP):
        q = Ether(frame)
        want = q[layer].chksum
        del q[layer].chksum
        assert Ether(bytes(q))[layer].chksum == want, layer.__name__
    return e


# ASan: heap-buffer-overflow writing an ICMP time exceeded (70 bytes) in place
# of this 59-byte TTL-0 segment, in the last slot of 64-byte slots.
TTL0 = bytes.fromhex("0a580af400010a580af4000208004500002d68e5000000063bfa0af400020af40003005000500009fbee"
                     "000095045002b400160c00005c826c9848")


def test_slots_too_small_for_the_gateways_answers_are_refused(clock):
    for size in (64, 127):
        with pytest.raises(ValueError, match="slot_size must be 128"):
            Dataplane(slot_size=size)


@pytest.mark.parametrize("frame", [
    TTL0,
    # the largest ICMP error the gateway writes: two VLAN tags, a 60-byte IP header quoted
    bytes(Ether(src=A[1], dst=GW_MAC) / Dot1Q(vlan=5) / Dot1Q(vlan=6)
          / IP(src=A[0], dst=B[0], ttl=1, options=[IPOption_RR(routers=["1.2.3.4"] * 9)]) / UDP(sport=7, dport=9)),
])
def test_icmp_errors_fit_the_smallest_slot(clock, frame):
    dp = node(clock, nslots=1, slot_size=128)
    [(port, out)] = dp.process(frame, 0)
    e = sums_ok(out)
    assert port == 0 and len(out) <= 128
    assert (e[IP].src, e[IP].dst, e[ICMP].type) == (GW_IP, A[0], 11)
    assert e[IPerror].dst == B[0] and len(bytes(e[IPerror])) == Ether(frame)[IP].ihl * 4 + 8


def test_echo_reply_to_an_all_zero_echo_has_a_valid_checksum(clock):
    """RFC 1624's eqn. 3 turns checksum 0xf7ff (type 8, all else zero) into
    0x0000; only 0xffff verifies for an all-zero reply."""
    ping = bytes.fromhex("0a580af400010a580af4000208004500001c00000000400164f70af400020af400010800f7ff00000000")
    [(port, out)] = node(clock).process(ping, 1)
    e = sums_ok(out)
    assert port == 1 and (e[IP].src, e[ICMP].type, e[ICMP].chksum) == (GW_IP, 0, 0xffff)


# A remote pod's TCP segment arriving with TTL 1, its 24-byte uplink header
# asking for the inner TCP checksum (NEEDS_CSUM, start 84, offset 16). The
# time exceeded went back into the tunnel with that header still in front:
# the uplink TAP would have "completed" a checksum inside the ICMP error.
TTL1_FROM_REMOTE = bytes.fromhex(
    "0a5aac1efa010a5aac1efa0208004500005a0000000040112e52ac1efa02ac1efa01c00012b50046bad60800000000000100"
    "0a580af400010a580af40101080045000028000000000106a2e50af401020af400020050005000000000000000005002200017060000")
NEEDS_CSUM_AT_INNER_TCP = bytes.fromhex("010000000000540010000000000000000000000000000000")


def overlay_node(clock):
    dp = node(clock, nslots=4, slot_size=65536 + 512)
    dp.set_vnet_len(12)
    dp.add_port(255, domain=4095)
    dp.set_port_vnet(255, 24)
    dp.overlay.configure(255, "172.30.250.1", "0a:5a:ac:1e:fa:01", tunnel_gso=True)
    dp.overlay.set_routes([{"cidr": "10.244.1.0/24", "vtep": "172.30.250.2", "inner_mac": "0a:58:0a:f4:01:01",
                            "vtep_mac": "0a:5a:ac:1e:fa:02"}], local="10.244.0.0/24")
    return dp


def test_answer_to_a_tunnelled_frame_leaves_without_its_offload_header(clock):
    from scapy.layers.vxlan import VXLAN
    dp = overlay_node(clock)
    dp.load(3, TTL1_FROM_REMOTE, 255, vnet=NEEDS_CSUM_AT_INNER_TCP)
    dp.run_burst(3, 1)
    assert dp.verdict(3) == (255, None)
    assert dp.vnet_hdr(3) == bytes(24)
    inner = sums_ok(bytes(Ether(dp.frame(3))[VXLAN].payload))
    assert (inner[IP].src, inner[IP].dst, inner[ICMP].type) == (GW_IP, "10.244.1.2", 11)
    assert inner[TCPerror].dport == 80


def test_too_big_icmp_error_is_counted_once(clock):
    """An ICMP error too big for the tunnel, DF set: dropped without an
    answer (no error about an error), and counted once, not twice."""
    dp = overlay_node(clock)
    err = bytes(Ether(src=A[1], dst=GW_MAC) / IP(src=A[0], dst="10.244.1.2", flags="DF")
                / ICMP(type=3, code=4) / (b"p" * 1500))
    assert dp.process(err, 0) == []
    assert dp.counters()["drops"]["too_big"] == 1
    assert dp.counters()["gateway"]["icmp_errors_sent"] == 0


def test_gso_metadata_on_a_tcp_fragment_reads_nothing_past_the_frame(clock):
    """Encap read the TCP data offset of a 4-byte non-first fragment from
    past its end (whatever the slot held decided too_big or a GSO header)."""
    frag = bytes(Ether(src=A[1], dst=GW_MAC) / IP(src=A[0], dst="10.244.1.2", proto=6, frag=100) / b"abcd")
    gso = bytes.fromhex("0101360076052200100000" "00")        # NEEDS_CSUM, TCPV4, hdr_len 54, gso_size 1398
    for fill in (0x00, 0xa5, 0xff):
        dp = overlay_node(clock)
        dp.load(3, bytes([fill]) * dp.slot_size, 0)
        dp.load(3, frag, 0, vnet=gso)
        dp.run_burst(3, 1)
        assert dp.verdict(3) == ("drop", "too_big")
