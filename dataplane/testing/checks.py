"""Checkers of encapsulated and routed frames (VPP's check_encapsulation):
every field looked at, every mismatch listed in one AssertionError."""
from .frames import ETH_HLEN, _ether, describe, diff


class _Checks:
    """Collects every mismatch of a frame, then fails once with all of them."""

    def __init__(self, what, frame):
        self.what, self.frame, self.problems = what, frame, []

    def eq(self, field, got, want):
        if want is not None and got != want:
            self.problems.append(f"{field}: {got!r}, expected {want!r}")

    def true(self, cond, msg):
        if not cond:
            self.problems.append(msg)

    def done(self):
        if self.problems:
            n = len(self.problems)
            raise AssertionError(f"{self.what}: {n} field{'s' if n > 1 else ''} wrong in {describe(self.frame)}\n"
                                 + "\n".join(f"  {p}" for p in self.problems))


def _addr(x, attr_ip="underlay_ip", attr_mac="underlay_mac"):
    """(ip, mac) of a node object (underlay) or an IP string (MAC unknown)."""
    if x is None:
        return None, None
    if isinstance(x, str):
        return x, None
    return getattr(x, attr_ip), getattr(x, attr_mac)


def _ip_checksum_ok(hdr):
    s = sum(int.from_bytes(hdr[k:k + 2], "big") for k in range(0, len(hdr), 2))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return s == 0xffff


def _outer_ip(c, e, raw, src, dst, proto, ttl):
    from scapy.layers.inet import IP
    s_ip, s_mac = _addr(src)
    d_ip, d_mac = _addr(dst)
    c.eq("Ether.src", e.src, s_mac)
    c.eq("Ether.dst", e.dst, d_mac)
    c.eq("Ether.type", e.type, 0x0800)
    if IP not in e:
        c.problems.append("no IPv4 header")
        c.done()
    ip = e[IP]
    c.eq("IP.version", ip.version, 4)
    c.eq("IP.ihl", ip.ihl, 5)
    c.eq("IP.proto", ip.proto, proto)
    c.eq("IP.src", ip.src, s_ip)
    c.eq("IP.dst", ip.dst, d_ip)
    c.eq("IP.flags", int(ip.flags), 2)                       # DF
    c.eq("IP.frag", ip.frag, 0)
    c.eq("IP.ttl", ip.ttl, ttl)
    c.eq("IP.len", ip.len, len(raw) - ETH_HLEN)
    c.true(_ip_checksum_ok(raw[14:34]), f"IP.chksum: {ip.chksum:#06x} is not the header's checksum")
    return ip


def expect_vxlan(frame, src=None, dst=None, *, vni=1, dport=4789, inner=None, ttl=64,
                 sport_range=(49152, 65535)):
    """Check every outer field of a VXLAN frame (RFC 7348) as podnet writes
    it and return the inner Ethernet frame (scapy). src, dst: the sending
    and receiving nodes (NodeInfo / Node: underlay IP and MAC) or their
    underlay IPs. Checked: Ethernet addresses and type; IPv4 version, IHL,
    protocol 17, addresses, DF, no fragment, TTL (ttl, None: any), total
    length, header checksum; UDP destination port, source port within
    sport_range (None: any; Linux's vxlan uses 32768-60999), length,
    checksum 0 (or correct); VXLAN flags (only I) and reserved bits zero, the
    VNI; the inner frame byte for byte when inner (scapy or bytes) is given.
    Every mismatch is listed in one AssertionError."""
    from scapy.layers.inet import UDP
    from scapy.layers.vxlan import VXLAN
    raw = bytes(frame)
    e = _ether(raw)
    c = _Checks("expect_vxlan", e)
    ip = _outer_ip(c, e, raw, src, dst, 17, ttl)
    if UDP not in ip:
        c.problems.append("no UDP header")
        c.done()
    u = ip[UDP]
    c.eq("UDP.dport", u.dport, dport)
    if sport_range:
        c.true(sport_range[0] <= u.sport <= sport_range[1], f"UDP.sport: {u.sport}, expected {sport_range[0]}-{sport_range[1]}")
    c.eq("UDP.len", u.len, ip.len - 20)
    if u.chksum:
        q = ip.copy()
        del q[UDP].chksum
        c.eq("UDP.chksum", u.chksum, q.__class__(bytes(q))[UDP].chksum)
    hdr = raw[42:50]
    c.true(len(hdr) == 8, "no VXLAN header")
    if len(hdr) == 8:
        c.eq("VXLAN.flags", hdr[0], 0x08)
        c.eq("VXLAN.reserved", hdr[1:4] + hdr[7:8], b"\0\0\0\0")
        c.eq("VXLAN.vni", int.from_bytes(hdr[4:7], "big"), vni)
    inner_frame = _ether(raw[50:])
    if inner is not None and raw[50:] != bytes(inner):
        c.problems.append("inner frame differs from the one expected:\n    "
                          + "\n    ".join(diff(inner, inner_frame) or ["(bytes differ beyond the fields)"]))
    c.done()
    return inner_frame


def expect_ipip(frame, src=None, dst=None, *, inner=None, ttl="inherit", ecn="copy"):
    """Check every outer field of an IP-in-IP frame (RFC 2003) as podnet
    writes it and return the inner IPv4 packet (scapy). src, dst as for
    expect_vxlan. Checked: Ethernet addresses and type; IPv4 version, IHL,
    protocol 4, addresses, DF, no fragment, total length, header checksum;
    DSCP 0; ECN copied from the inner header (RFC 6040 normal mode; ecn=None:
    any); TTL that of the inner packet (ttl="inherit", as Linux's ipip
    `ttl inherit`; a number: that; None: any); the inner packet byte for byte
    when inner is given. Every mismatch is listed in one AssertionError."""
    from scapy.layers.inet import IP
    raw = bytes(frame)
    e = _ether(raw)
    c = _Checks("expect_ipip", e)
    inner_raw = raw[34:]
    inner_ip = IP(inner_raw) if len(inner_raw) >= 20 else None
    want_ttl = (inner_ip.ttl if inner_ip is not None else None) if ttl == "inherit" else ttl
    ip = _outer_ip(c, e, raw, src, dst, 4, want_ttl)
    c.true(ip.id != 0, "IP.id: 0, expected a fresh non-zero id (RFC 6864: an atomic datagram's id is free, "
                       "but podnet gives each a new one)")
    c.eq("IP.dscp", ip.tos >> 2, 0)
    if ecn == "copy" and inner_ip is not None:
        c.eq("IP.ecn", ip.tos & 3, inner_ip.tos & 3)
    if inner_ip is None:
        c.problems.append("no inner IPv4 packet")
    elif inner is not None:
        want = bytes(inner[IP] if hasattr(inner, "layers") and IP in inner else inner)
        if inner_raw != want:
            c.problems.append("inner packet differs from the one expected:\n    "
                              + "\n    ".join(diff_ip(want, inner_raw) or ["(bytes differ beyond the fields)"]))
    c.done()
    return inner_ip


def diff_ip(a, b):
    """diff() of two IPv4 packets (bytes or scapy) without Ethernet headers."""
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether
    return diff(Ether() / IP(bytes(a)), Ether() / IP(bytes(b)))


def expect_routed(got, sent, *, src_mac=None, dst_mac=None, hops=1):
    """Check that got is sent's IPv4 packet after hops routers: Ethernet
    addresses rewritten to src_mac/dst_mac (when given), TTL hops lower, the
    header checksum correct for it, every other byte of the IP packet as
    sent. Returns got as a scapy Ether. One AssertionError lists every
    mismatch."""
    from scapy.layers.inet import IP
    g, s = _ether(got), _ether(sent)
    c = _Checks("expect_routed", g)
    c.eq("Ether.src", g.src, src_mac)
    c.eq("Ether.dst", g.dst, dst_mac)
    if IP not in g or IP not in s:
        c.problems.append("not an IPv4 packet")
        c.done()
    gi, si = bytes(g[IP])[:g[IP].len], bytes(s[IP])[:s[IP].len]      # not Ethernet padding
    c.eq("IP.ttl", g[IP].ttl, s[IP].ttl - hops)
    c.true(_ip_checksum_ok(gi[:g[IP].ihl * 4]), f"IP.chksum: {g[IP].chksum:#06x} is not the header's checksum")
    if len(gi) != len(si) or gi[:8] != si[:8] or gi[9:10] != si[9:10] or gi[12:] != si[12:]:
        c.problems.append("the IP packet changed beyond TTL and checksum:\n    "
                          + "\n    ".join(d for d in diff_ip(si, gi) if not d.startswith(("IP.ttl", "IP.chksum")))
                          or "(bytes differ)")
    c.done()
    return g
