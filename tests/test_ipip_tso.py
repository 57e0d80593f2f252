"""ipip's TSO in the fast path: the virtio-net header has no IPIP GSO type,
so a pod's TCP super-frame (GSO TCPV4) is cut into MSS-sized IP-in-IP
segments (fastpath/ipip.pxd, ipip_segment). Each segment is checked field
by field with scapy, and the segments together must carry the super-frame's
payload exactly, as Linux's tcp_gso_segment would have cut it."""
import random

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import ARP, Ether
from scapy.utils import checksum

from fastpath import Dataplane

GW_IP, GW_MAC, SUBNET = "10.244.0.1", "0a:58:0a:f4:00:01", "10.244.0.0/24"
POD = ("10.244.0.2", "0a:58:0a:f4:00:02", 0)
NODE_IP, NODE_MAC = "172.30.250.1", "0a:5a:ac:1e:fa:01"
PEER_IP, PEER_MAC = "172.30.250.2", "0a:5a:ac:1e:fa:02"
REMOTE = "10.244.1.7"
UPLINK = 255


def make(clock, segments=64, mtu=1500, uplink_vnet=12, tso=True):
    dp = Dataplane(nslots=8, slot_size=66000, clock=clock, segments=segments)
    dp.add_port(POD[2])
    dp.add_port(UPLINK, domain=4095)
    dp.gateway.configure(GW_IP, GW_MAC, SUBNET)
    dp.gateway.add_neighbor(POD[0], POD[1])
    dp.set_vnet_len(12)
    dp.set_port_vnet(UPLINK, uplink_vnet)
    dp.overlay.configure(UPLINK, NODE_IP, NODE_MAC, mtu=mtu, tunnel_gso=tso, backend="ipip", prefixlen=24)
    dp.overlay.set_routes([{"cidr": "10.244.1.0/24", "vtep": PEER_IP, "vtep_mac": PEER_MAC}], local=SUBNET)
    dp.process(bytes(Ether(src=POD[1], dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=POD[1], psrc=POD[0], pdst="10.244.0.9")),
               POD[2])
    dp.reset_counters()
    return dp


def vnet12(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset):
    return (bytes([flags, gso_type]) + hdr_len.to_bytes(2, "little") + gso_size.to_bytes(2, "little")
            + csum_start.to_bytes(2, "little") + csum_offset.to_bytes(2, "little") + b"\0\0")


def super_frame(payload, mss, flags="PA", seq=1000, ip_id=7, tos=0, opts=()):
    f = Ether(src=POD[1], dst=GW_MAC) / IP(src=POD[0], dst=REMOTE, ttl=64, id=ip_id, tos=tos, flags="DF") \
        / TCP(sport=40000, dport=5201, seq=seq, ack=99, flags=flags, options=list(opts)) / payload
    raw = bytes(f)
    ihl, thl = 20, len(TCP(bytes(f[TCP]))) - len(payload)
    hdr = vnet12(0x01, 0x01, 14 + ihl + thl, mss, 14 + ihl, 16)      # NEEDS_CSUM, GSO TCPV4
    return raw, hdr, thl


def run(dp, raw, hdr):
    assert dp.load(0, raw, POD[2], vnet=hdr)
    dp.run_burst(0, 1)
    return [j for j in dp.tx_queue(UPLINK)]


def full_tcp_checksum_ok(inner):
    """The segment's TCP checksum is partial (pseudo-header sum, NEEDS_CSUM):
    completed as a device would, it must verify."""
    ip = bytes(inner)
    ihl = (ip[0] & 15) * 4
    seg = bytearray(ip[ihl:])
    c = checksum(bytes(seg))                     # sum over the segment with the partial value in place
    seg[16:18] = c.to_bytes(2, "big")
    pseudo = ip[12:20] + b"\0\x06" + len(seg).to_bytes(2, "big")
    return checksum(pseudo + bytes(seg)) == 0


@pytest.mark.parametrize("plen,mss,flags", [(4000, 1000, "PA"), (4001, 1000, "FPA"), (1440 * 45, 1440, "PA"),
                                            (500, 1440, "PA"), (2880, 1440, "CPA")])
def test_a_super_frame_becomes_mss_sized_ipip_segments(clock, plen, mss, flags):
    dp = make(clock)
    payload = bytes(random.Random(plen).randrange(256) for _ in range(plen))
    raw, hdr, thl = super_frame(payload, mss, flags=flags)
    idx = run(dp, raw, hdr)
    n = (plen + mss - 1) // mss
    assert len(idx) == n and all(j >= dp.nslots for j in idx)      # segment slots; the super-frame is not sent
    assert dp.verdict(0) == (UPLINK, None)
    got, ids = b"", []
    for k, j in enumerate(idx):
        e = Ether(dp.frame(j))
        assert (e.dst, e.src, e.type) == (PEER_MAC, NODE_MAC, 0x0800)
        o = e[IP]
        assert (o.src, o.dst, o.proto, o.ihl, o.ttl, o.flags.DF, o.tos) == (NODE_IP, PEER_IP, 4, 5, 63, True, 0)
        assert checksum(bytes(o)[:20]) == 0 and o.len == len(e) - 14
        ids.append(o.id)
        inner = o.payload
        assert isinstance(inner, IP) and (inner.src, inner.dst, inner.ttl) == (POD[0], REMOTE, 63)
        assert inner.id == (7 + k) & 0xffff and inner.flags.DF
        assert checksum(bytes(inner)[:20]) == 0
        chunk = min(mss, plen - k * mss)
        assert inner.len == 20 + thl + chunk and len(e) == 14 + 20 + inner.len <= 14 + 1500
        t = inner[TCP]
        assert (t.sport, t.dport, t.ack) == (40000, 5201, 99) and t.seq == 1000 + k * mss
        want = set(flags)
        if k + 1 < n:
            want -= {"F", "P"}
        if k > 0:
            want -= {"C"}
        assert set(str(t.flags)) == want, (k, t.flags)
        assert full_tcp_checksum_ok(inner)
        got += bytes(t.payload)
        h = dp.vnet_hdr(j)
        assert len(h) == 12 and h[0] == 0x01 and h[1] == 0                                 # NEEDS_CSUM, no GSO
        assert int.from_bytes(h[6:8], "little") == 34 + 20 and int.from_bytes(h[8:10], "little") == 16
    assert got == payload                                                                  # nothing lost or doubled
    assert len(set(ids)) == n                                                              # a new outer id each
    c = dp.counters()
    assert (c["overlay"]["segmented"], c["overlay"]["segments"], c["overlay"]["encapsulated"]) == (1, n, 1)
    assert c["ports"][UPLINK]["tx_packets"] == n
    assert sum(c["drops"].values()) == 0


def test_without_vnet_headers_on_the_uplink_the_tcp_checksum_is_made_whole(clock):
    dp = make(clock, uplink_vnet=0)
    payload = bytes(range(256)) * 12
    raw, hdr, _ = super_frame(payload, 1000)
    idx = run(dp, raw, hdr)
    assert len(idx) == 4
    for j in idx:
        inner = Ether(dp.frame(j))[IP].payload
        q = inner.copy()
        del q[TCP].chksum
        assert inner[TCP].chksum == IP(bytes(q))[TCP].chksum


def test_ecn_is_copied_out_on_every_segment(clock):
    dp = make(clock)
    raw, hdr, _ = super_frame(b"x" * 3000, 1000, tos=0x02)
    for j in run(dp, raw, hdr):
        assert Ether(dp.frame(j))[IP].tos == 0x02


def test_segments_of_two_super_frames_in_one_burst_and_too_few_slots(clock):
    dp = make(clock, segments=5)
    a, ha, _ = super_frame(b"a" * 3000, 1000)
    b, hb, _ = super_frame(b"b" * 3000, 1000, seq=5000)
    assert dp.load(0, a, POD[2], vnet=ha) and dp.load(1, b, POD[2], vnet=hb)
    dp.run_burst(0, 2)
    assert len(dp.tx_queue(UPLINK)) == 3                   # the first cut in three; two slots left for the second
    assert dp.verdict(1) == ("drop", "segments_full")
    assert dp.counters()["drops"]["segments_full"] == 1
    assert dp.load(0, b, POD[2], vnet=hb)                  # the next burst has every slot again
    dp.run_burst(0, 1)
    assert len(dp.tx_queue(UPLINK)) == 3


def test_an_mss_the_fabric_cannot_carry_is_too_big(clock):
    dp = make(clock)
    raw, hdr, _ = super_frame(b"x" * 6000, 1470)           # 20 + 20 + 20 + 1470 > 1500
    assert run(dp, raw, hdr) == []
    assert dp.verdict(0) == (POD[2], None)                  # DF: answered with fragmentation needed
    from scapy.layers.inet import ICMP
    e = Ether(dp.frame(0))
    assert (e[ICMP].type, e[ICMP].code, e[ICMP].nexthopmtu) == (3, 4, 1480)
    assert dp.counters()["drops"]["too_big"] == 1


def test_segmentation_off_or_no_segment_slots(clock):
    raw, hdr, _ = super_frame(b"x" * 3000, 1000)
    dp = make(clock, tso=False)                  # pods would have had no TSO: too big, answered (DF)
    assert run(dp, raw, hdr) == [] and dp.verdict(0) == (POD[2], None)
    assert dp.counters()["drops"]["too_big"] == 1
    dp = make(clock, segments=0)
    assert run(dp, raw, hdr) == [] and dp.verdict(0) == ("drop", "segments_full")


def test_udp_gso_is_not_segmented(clock):
    from scapy.layers.inet import UDP
    dp = make(clock)
    f = bytes(Ether(src=POD[1], dst=GW_MAC) / IP(src=POD[0], dst=REMOTE) / UDP(sport=1, dport=2) / (b"u" * 3000))
    assert run(dp, f, vnet12(0x01, 0x05, 42, 1000, 34, 6)) == []
    assert dp.verdict(0) == ("drop", "too_big")


def test_random_super_frames_reassemble(clock):
    """A property test: random payload sizes, MSS and TCP options; the
    segments' payloads in sequence order are the super-frame's."""
    rnd = random.Random(15)
    dp = make(clock, segments=128)
    for _ in range(40):
        mss = rnd.randrange(200, 1440)
        plen = rnd.randrange(1, 20000)
        opts = [("NOP", None), ("NOP", None), ("Timestamp", (rnd.randrange(1 << 32), 0))] if rnd.random() < 0.5 else []
        payload = rnd.randbytes(plen)
        raw, hdr, thl = super_frame(payload, mss, seq=rnd.randrange(1 << 32), opts=opts, ip_id=rnd.randrange(1 << 16))
        idx = run(dp, raw, hdr)
        assert len(idx) == (plen + mss - 1) // mss
        segs = [Ether(dp.frame(j))[IP].payload for j in idx]
        assert all(full_tcp_checksum_ok(s) for s in segs)
        assert b"".join(bytes(s[TCP].payload) for s in segs) == payload
