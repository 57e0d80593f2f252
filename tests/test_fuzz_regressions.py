"""What the fuzzing harness found, with the exact frames it found them with,
and the same edges on the ipip and direct paths (issue 15): answers to
tunnelled frames, ICMP errors too big, GSO metadata on a fragment, inner
headers that claim more than is there, the smallest slots."""
import pytest
from scapy.layers.inet import ICMP, IP, IPerror, TCPerror, IPOption_RR, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether

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


BACKENDS = ["vxlan", "ipip", "direct"]
NODE_IP, NODE_MAC, PEER_IP, PEER_MAC = "172.30.250.1", "0a:5a:ac:1e:fa:01", "172.30.250.2", "0a:5a:ac:1e:fa:02"


def overlay_node(clock, backend="vxlan", **kw):
    """An overlay node as the agent makes it: 24-byte uplink headers with
    the tunnel's GSO, but in ipip mode (no IPIP GSO type: 12 bytes)."""
    dp = node(clock, **dict(dict(nslots=4, slot_size=65536 + 512), **kw))
    gso = backend != "ipip"
    dp.set_vnet_len(12)
    dp.add_port(255, domain=4095)
    dp.set_port_vnet(255, 24 if gso else 12)
    dp.overlay.configure(255, NODE_IP, NODE_MAC, tunnel_gso=gso, backend=backend, prefixlen=24)
    dp.overlay.set_routes([{"cidr": "10.244.1.0/24", "vtep": PEER_IP, "vtep_mac": PEER_MAC,
                            **({"inner_mac": "0a:58:0a:f4:01:01"} if backend == "vxlan" else {})}],
                          local="10.244.0.0/24")
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_too_big_icmp_error_is_counted_once(clock, backend):
    """An ICMP error too big for the tunnel, DF set: dropped without an
    answer (no error about an error), and counted once, not twice."""
    dp = overlay_node(clock, backend)
    err = bytes(Ether(src=A[1], dst=GW_MAC) / IP(src=A[0], dst="10.244.1.2", flags="DF")
                / ICMP(type=3, code=4) / (b"p" * 1500))
    assert dp.process(err, 0) == []
    assert dp.counters()["drops"]["too_big"] == 1
    assert dp.counters()["gateway"]["icmp_errors_sent"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_gso_metadata_on_a_tcp_fragment_reads_nothing_past_the_frame(clock, backend):
    """Encap read the TCP data offset of a 4-byte non-first fragment from
    past its end (whatever the slot held decided too_big or a GSO header).
    Direct mode with uplink TSO too: a fragment has no header to segment by."""
    frag = bytes(Ether(src=A[1], dst=GW_MAC) / IP(src=A[0], dst="10.244.1.2", proto=6, frag=100) / b"abcd")
    gso = bytes.fromhex("0101360076052200100000" "00")        # NEEDS_CSUM, TCPV4, hdr_len 54, gso_size 1398
    for fill in (0x00, 0xa5, 0xff):
        dp = overlay_node(clock, backend)
        dp.load(3, bytes([fill]) * dp.slot_size, 0)
        dp.load(3, frag, 0, vnet=gso)
        dp.run_burst(3, 1)
        assert dp.verdict(3) == ("drop", "too_big")


# ---- the ipip and direct paths ------------------------------------------------------

def ipip_frame(inner):
    return bytes(Ether(src=PEER_MAC, dst=NODE_MAC) / IP(src=PEER_IP, dst=NODE_IP, proto=4, flags="DF", ttl=64) / inner)


# TTL1_FROM_REMOTE's inner IPv4 packet: a remote pod's TCP segment to pod A, TTL 1.
TTL1_INNER = TTL1_FROM_REMOTE[50 + 14:]


def from_fabric(backend, inner_ip):
    """inner_ip (bytes) as node-b sends it in backend's mode."""
    if backend == "direct":
        return bytes(Ether(src=PEER_MAC, dst=NODE_MAC, type=0x0800)) + inner_ip
    return ipip_frame(inner_ip)


def vnet(flags, csum_start, csum_offset, n):
    """An n-byte virtio-net header without GSO."""
    return (bytes([flags, 0]) + bytes(4) + csum_start.to_bytes(2, "little") + csum_offset.to_bytes(2, "little")
            + bytes(n - 10))


@pytest.mark.parametrize("backend", ["ipip", "direct"])
def test_answer_to_a_tunnelled_frame_leaves_without_its_offload_header_ipip_direct(clock, backend):
    """As TTL1_FROM_REMOTE above, the same segment carried by IP in IP or
    routed directly, its header asking for the inner TCP checksum: the time
    exceeded goes back to node-b with a zero vnet header."""
    dp = overlay_node(clock, backend)
    frame = from_fabric(backend, TTL1_INNER)
    start = len(frame) - len(TTL1_INNER) + 20                        # the inner TCP header
    dp.load(3, frame, 255, vnet=vnet(0x01, start, 16, dp.port_vnet(255)))
    dp.run_burst(3, 1)
    assert dp.verdict(3) == (255, None)
    assert dp.vnet_hdr(3) == bytes(dp.port_vnet(255))
    out = dp.frame(3)
    assert (Ether(out).dst, Ether(out).src) == (PEER_MAC, NODE_MAC)
    inner = IP(out[34 if backend == "ipip" else 14:])
    for layer in (IP, ICMP):
        want = inner[layer].chksum
        q = inner.copy()
        del q[layer].chksum
        assert IP(bytes(q))[layer].chksum == want, layer.__name__
    assert (inner.src, inner.dst, inner[ICMP].type) == (GW_IP, "10.244.1.2", 11)
    assert inner[TCPerror].dport == 80


def with_outer_len(frame, n):
    """frame (Ethernet/IPv4) with the outer total length n, its checksum fixed."""
    q = IP(frame[14:34])
    q.len = n
    del q.chksum
    return frame[:14] + bytes(q)[:20] + frame[34:]


UDP_INNER = bytes(IP(src="10.244.1.2", dst=A[0], ttl=63) / UDP(sport=7, dport=9) / (b"u" * 20))


@pytest.mark.parametrize("frame", [
    ipip_frame(b"\x4f" + UDP_INNER[1:]),                      # a 60-byte inner header, 48 bytes there
    ipip_frame(UDP_INNER[:2] + (len(UDP_INNER) + 40).to_bytes(2, "big") + UDP_INNER[4:]),   # inner length past the end
    ipip_frame(UDP_INNER[:13]),                                # the inner header cut short
    # the inner packet whole in the frame, but past the outer packet's end
    with_outer_len(ipip_frame(UDP_INNER), 20 + len(UDP_INNER) - 10),
    with_outer_len(ipip_frame(UDP_INNER), 20 + 19),
], ids=["ihl-past", "len-past", "cut", "past-outer", "outer-19"])
def test_ipip_inner_that_claims_more_than_is_there_reads_nothing_past_it(clock, frame):
    """Whatever the slot held past the frame (and past the outer packet
    inside it), the verdict is ipip_inner."""
    for fill in (0x00, 0x45, 0xa5, 0xff):
        dp = overlay_node(clock, "ipip")
        dp.load(3, bytes([fill]) * dp.slot_size, 0)
        dp.load(3, frame, 255)
        dp.run_burst(3, 1)
        assert dp.verdict(3) == ("drop", "ipip_inner"), fill


def test_ipip_decap_of_a_padded_minimal_packet_leaves_the_padding(clock):
    """A 20-byte inner packet in a 60-byte frame (Ethernet padding after the
    outer packet): the pod gets the inner packet, not the padding."""
    dp = overlay_node(clock, "ipip")
    dp.process(bytes(Ether(src=A[1], dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=A[0], pdst="10.244.0.9")), 0)
    inner = bytes(IP(src="10.244.1.2", dst=A[0], proto=253, ttl=63))
    frame = ipip_frame(inner)
    frame += b"\xee" * (60 - len(frame))
    [(port, out)] = dp.process(frame, 255)
    assert port == 0 and len(out) == 14 + 20
    assert IP(out[14:]).ttl == 62 and IP(out[14:]).proto == 253


@pytest.mark.parametrize("backend", ["ipip", "direct"])
def test_time_exceeded_for_a_tunnelled_frame_fits_the_smallest_slot(clock, backend):
    """The largest quote (a 60-byte inner header) answered back across the
    fabric from 128-byte slots: the ICMP error in the slot, the outer header
    in front of it."""
    dp = overlay_node(clock, backend, nslots=1, slot_size=128)
    inner = bytes(IP(src="10.244.1.2", dst=A[0], ttl=1, options=[IPOption_RR(routers=["1.2.3.4"] * 9)])
                  / UDP(sport=7, dport=9))
    frame = from_fabric(backend, inner)
    assert len(frame) <= 128
    [(port, out)] = dp.process(frame, 255)
    assert port == 255
    e = IP(out[34 if backend == "ipip" else 14:])
    assert (e.src, e.dst, e[ICMP].type) == (GW_IP, "10.244.1.2", 11)
    assert len(bytes(e[IPerror])) == 60 + 8
    for layer in (IP, ICMP):
        want = e[layer].chksum
        q = e.copy()
        del q[layer].chksum
        assert IP(bytes(q))[layer].chksum == want, layer.__name__
    if backend == "ipip":
        o = IP(out[14:34])
        assert (o.proto, o.len, o.ttl) == (4, len(out) - 14, e.ttl)


@pytest.mark.parametrize("backend", BACKENDS)
def test_encap_of_a_frame_filling_the_smallest_slot(clock, backend):
    """A pod's frame of exactly slot_size bytes: the outer header goes in
    front of the slot, the frame stays whole."""
    dp = overlay_node(clock, backend, nslots=1, slot_size=128)
    f = bytes(Ether(src=A[1], dst=GW_MAC) / IP(src=A[0], dst="10.244.1.2") / UDP(sport=1, dport=2) / (b"z" * 86))
    assert len(f) == 128
    [(port, out)] = dp.process(f, 0)
    assert port == 255 and len(out) == 128 + {"vxlan": 50, "ipip": 20, "direct": 0}[backend]
    assert out[-(128 - 14 - 20):] == f[14 + 20:]
    assert IP(out[-(128 - 14):]).ttl == 63
