"""Byte-level views of frames for the fuzzing harness, independent of the
fast path's parser: where the IPv4 layers sit (through VLAN tags and one
VXLAN or IP-in-IP level), Internet checksums (complete, or the partial pseudo-header sum
an offloaded frame carries), virtio-net header fields."""
import struct

VNET_F_NEEDS_CSUM = 0x01
CSUM_FIELD = {6: 16, 17: 6, 1: 2}          # L4 checksum offset by protocol


def csum_sum(b, s=0):
    """Ones'-complement sum of the 16-bit big-endian words of b (odd tail padded)."""
    if len(b) % 2:
        b = bytes(b) + b"\0"
    return s + sum(struct.unpack(f"!{len(b) // 2}H", b))


def fold(s):
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return s


def vnet_fields(h):
    """A 10/12/24-byte virtio-net header as a dict (empty for none)."""
    if len(h) < 10:
        return {}
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = struct.unpack("<BBHHHH", h[:10])
    f = dict(flags=flags, gso_type=gso_type, hdr_len=hdr_len, gso_size=gso_size,
             csum_start=csum_start, csum_offset=csum_offset)
    if len(h) >= 24:
        f["outer_th_offset"], f["inner_nh_offset"] = struct.unpack("<HH", h[20:24])
    return f


class Ip4:
    """One sane IPv4 header in a frame: version 4, IHL >= 5, total length
    covering the header and within the frame."""

    def __init__(self, frame, off):
        b = frame[off:off + 20]
        self.off = off
        self.ihl = (b[0] & 0x0f) * 4
        self.tot, = struct.unpack("!H", b[2:4])
        self.frag, = struct.unpack("!H", b[6:8])
        self.ttl, self.proto = b[8], b[9]
        self.src, self.dst = struct.unpack("!II", b[12:20])
        self.l4 = off + self.ihl

    @classmethod
    def at(cls, frame, off):
        if len(frame) < off + 20 or frame[off] >> 4 != 4:
            return None
        ip = cls(frame, off)
        if ip.ihl < 20 or ip.tot < ip.ihl or off + ip.tot > len(frame):
            return None
        return ip

    @property
    def fragment(self):
        return bool(self.frag & 0x3fff)

    @property
    def l4_len(self):
        return self.tot - self.ihl


def l3_offset(frame):
    """(offset, ethertype) after up to two VLAN tags, or None if cut short."""
    off = 12
    for _ in range(3):
        if len(frame) < off + 2:
            return None
        et, = struct.unpack("!H", frame[off:off + 2])
        if et not in (0x8100, 0x88a8):
            return off + 2, et
        off += 4
    return None


def ip_layers(frame, vxlan_port, backend="vxlan", node_ip=None):
    """The IPv4 layers of a frame, outermost first: the frame's own, and the
    one it carries: in vxlan mode the inner frame's when it is VXLAN to
    vxlan_port; in ipip mode the inner packet of IP in IP (protocol 4, not a
    fragment) to or from node_ip, whole inside the outer one; none in direct
    mode. Each with .eth, the offset of the Ethernet header in front of it
    (None for the inner packet of IP in IP, which has none)."""
    out = []
    l3 = l3_offset(frame)
    if l3 is None or l3[1] != 0x0800:
        return out
    ip = Ip4.at(frame, l3[0])
    if ip is None:
        return out
    ip.eth = 0
    out.append(ip)
    if backend == "ipip":
        if ip.proto == 4 and not ip.fragment and node_ip in (ip.src, ip.dst):
            inner = Ip4.at(frame, ip.l4)
            if inner is not None and inner.off + inner.tot <= ip.off + ip.tot:
                inner.eth = None
                out.append(inner)
        return out
    if backend != "vxlan":
        return out
    if ip.proto == 17 and not ip.fragment and ip.l4_len >= 8 + 8 + 14:
        dport, = struct.unpack("!H", frame[ip.l4 + 2:ip.l4 + 4])
        if dport == vxlan_port:
            start = ip.l4 + 16
            inner = frame[start:ip.off + ip.tot]
            sub = l3_offset(inner)
            if sub is not None and sub[1] == 0x0800 and Ip4.at(inner, sub[0]) is not None:
                out.append(Ip4.at(frame, start + sub[0]))
                out[-1].eth = start               # where its Ethernet header starts
    return out


def ip_header_ok(frame, ip):
    return fold(csum_sum(frame[ip.off:ip.off + ip.ihl])) == 0xffff


def pseudo_sum(ip):
    return csum_sum(struct.pack("!IIHH", ip.src, ip.dst, ip.proto, ip.l4_len))


def partial_applies(ip, vnet):
    """The frame's vnet header says this layer's L4 checksum is a partial one."""
    return (bool(vnet) and vnet["flags"] & VNET_F_NEEDS_CSUM and vnet["csum_start"] == ip.l4
            and ip.proto in (6, 17) and vnet["csum_offset"] == CSUM_FIELD[ip.proto])


def l4_status(frame, ip, vnet, outer=None):
    """'ok' or 'bad' for the L4 checksum of a whole TCP/UDP/ICMP datagram:
    partial where vnet says so, complete otherwise. None where there is
    nothing to judge: a fragment, another protocol, a header cut short, or a
    vnet header whose partial checksum is neither this layer's nor that of
    the outer layer (the VXLAN UDP header) around it."""
    if ip.proto not in CSUM_FIELD or ip.fragment or ip.l4_len < CSUM_FIELD[ip.proto] + 2:
        return None
    field, = struct.unpack("!H", frame[ip.l4 + CSUM_FIELD[ip.proto]:ip.l4 + CSUM_FIELD[ip.proto] + 2])
    if partial_applies(ip, vnet):
        return "ok" if field % 0xffff == fold(pseudo_sum(ip)) % 0xffff else "bad"
    if vnet and vnet["flags"] & VNET_F_NEEDS_CSUM and (outer is None or vnet["csum_start"] != outer.l4):
        return None
    if ip.proto == 17 and field == 0:
        return "ok"                       # UDP without checksum
    s = csum_sum(frame[ip.l4:ip.off + ip.tot], pseudo_sum(ip) if ip.proto != 1 else 0)
    return "ok" if fold(s) == 0xffff else "bad"


def set_partial_csum(frame, ip):
    """frame with ip's TCP/UDP checksum replaced by the partial pseudo-header
    sum, as a sender with checksum offload leaves it."""
    at = ip.l4 + CSUM_FIELD[ip.proto]
    return frame[:at] + struct.pack("!H", fold(pseudo_sum(ip))) + frame[at + 2:]


def arp_at(frame):
    """(offset, 28 bytes) of an Ethernet/any ARP body after up to two VLAN
    tags, or None (not ARP, or cut short)."""
    l3 = l3_offset(frame)
    if l3 is None or l3[1] != 0x0806 or len(frame) < l3[0] + 28:
        return None
    return l3[0], frame[l3[0]:l3[0] + 28]


def ip4_arp_ok(a):
    """An ARP body the gateway and node answer: Ethernet/IPv4, lengths 6 and 4."""
    return a[0:2] == b"\x00\x01" and a[2:4] == b"\x08\x00" and a[4] == 6 and a[5] == 4


def mix64(x):
    """services.pxd's mix64, for the Maglev expectation."""
    m = (1 << 64) - 1
    x &= m
    x ^= x >> 33
    x = (x * 0xff51afd7ed558ccd) & m
    x ^= x >> 33
    x = (x * 0xc4ceb9fe1a85ec53) & m
    x ^= x >> 33
    return x


def ip4n(s):
    return int.from_bytes(bytes(map(int, s.split("."))), "big")


def ip4s(n):
    return ".".join(str(b) for b in n.to_bytes(4, "big"))
