"""Frames for packet tests: the toolkit's errors and constants, payload
markers (how a sent packet is recognised wherever it arrives), and one-line
descriptions and field-by-field diffs of frames for failure reports."""
import itertools
import os
import re

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23        # Linux 4.20: a packet socket skips what its interface sends
ETH_HLEN = 14
VLAN_HLEN = 4
RECV_MAX = 65536 + 1024            # a TCP super-frame the fast path hands a TAP whole
RCVBUF = 8 << 20                   # room for a burst the test has not read yet
UPLINK = "uplink"                  # the name of a node's fabric port
DEFAULT_TIMEOUT = 2.0              # seconds send_and_expect waits for what it expects
NO_REPLY_TIMEOUT = 1.0             # seconds send_and_assert_no_reply watches


class PodnetTestError(RuntimeError):
    """A toolkit call that cannot be carried out as asked: an unknown pod or
    node, a live cluster without root, a frame without a marker where one is
    needed. The message says what was wrong and what would be right."""


class FrameTooLong(PodnetTestError, ValueError):
    """A frame longer than the sending interface's MTU allows (MTU + 14 for
    the Ethernet header, + 4 with an 802.1Q tag). Nothing was sent."""

# ---- markers ------------------------------------------------------------------

_RUN = os.urandom(3).hex()                         # per process: another run's frames never match
_seq = itertools.count(1)
MARKER_RE = re.compile(rb"PNMK[0-9a-f]{6}[0-9]{6}")


def marker():
    """A fresh 16-byte payload marker (b"PNMK" + this process's id + a
    sequence number), unique to this process and call."""
    return b"PNMK%s%06d" % (_RUN.encode(), next(_seq) % 1_000_000)


def markers_in(frame):
    """Every marker a frame (bytes or a scapy packet) carries, in order: a
    frame can carry several (an ICMP error quotes the packet it answers)."""
    return MARKER_RE.findall(bytes(frame))


def mark(pkt):
    """Give pkt a marker; returns (pkt, marker). A packet that holds one
    already keeps it. A scapy packet without one gets a fresh marker
    appended to its innermost payload, in place, so the packet the test
    keeps is the one sent (compare against it). Length and checksum fields
    left unset, as scapy leaves them, are computed with the marker; fields
    the test set are kept as set (a frame dissected from bytes has them all
    set: give it a marker of its own). Raw bytes must carry one already
    (put marker() in the payload)."""
    if isinstance(pkt, (bytes, bytearray, memoryview)):
        found = markers_in(pkt)
        if found:
            return pkt, found[0]
        raise PodnetTestError("a frame given as bytes has no marker: build it with scapy (a marker is "
                              "appended to its payload) or put dataplane.testing.marker() in its payload")
    from scapy.packet import Raw
    for layer in pkt.iterpayloads():            # a marker in a payload given: no build needed to see it
        if isinstance(layer, Raw):
            found = MARKER_RE.findall(bytes(layer.load))
            if found:
                return pkt, found[0]
    m = marker()
    pkt.lastlayer().add_payload(Raw(m))
    for layer in pkt.iterpayloads():            # a dissected packet caches its bytes
        layer.raw_packet_cache = None
    return pkt, m


def _ether(frame):
    from scapy.layers.l2 import Ether
    return frame if isinstance(frame, Ether) else Ether(bytes(frame))


def _packets(pkts):
    """One packet or an iterable of them, as a list."""
    if isinstance(pkts, (bytes, bytearray, memoryview)) or hasattr(pkts, "layers"):
        return [pkts]
    return list(pkts)


# ---- describing and comparing frames -------------------------------------------

_FIELDS = {
    "Ether": ("src", "dst", "type"), "Dot1Q": ("vlan", "type"),
    "ARP": ("op", "hwsrc", "psrc", "hwdst", "pdst"),
    "IP": ("src", "dst", "ttl", "tos", "id", "flags", "frag", "proto", "len", "chksum"),
    "IPv6": ("src", "dst", "hlim", "nh"),
    "TCP": ("sport", "dport", "flags", "seq", "ack", "chksum"), "UDP": ("sport", "dport", "len", "chksum"),
    "ICMP": ("type", "code", "chksum"), "VXLAN": ("flags", "vni"),
}


def describe(frame):
    """One line per frame: each layer with the fields tests usually check."""
    from scapy.layers.l2 import Ether
    from scapy.packet import NoPayload, Raw
    p, parts = Ether(bytes(frame)), []          # dissected again: every field as sent
    while p is not None and not isinstance(p, NoPayload):
        name = p.__class__.__name__
        if isinstance(p, Raw):
            data = bytes(p)
            m = markers_in(data)
            parts.append(f"Raw {len(data)} B" + (f" marker {m[0].decode()}" if m else ""))
            break
        fields = _FIELDS.get(name)
        if fields:
            parts.append(name + " " + " ".join(f"{f}={p.getfieldval(f)}" for f in fields))
        else:
            parts.append(name)
        p = p.payload
    return " / ".join(parts)


def diff(expected, got):
    """The fields in which two frames differ, layer by layer: lines such as
    "IP.ttl: 64 -> 63" (a layer present in one only is named as such)."""
    from scapy.layers.l2 import Ether
    from scapy.packet import NoPayload, Raw
    a, b, out, depth = Ether(bytes(expected)), Ether(bytes(got)), [], 0
    while not isinstance(a, NoPayload) or not isinstance(b, NoPayload):
        if isinstance(a, NoPayload) or isinstance(b, NoPayload) or type(a) is not type(b):
            out.append(f"layer {depth}: {a.__class__.__name__} -> {b.__class__.__name__}")
            break
        name = a.__class__.__name__
        if isinstance(a, Raw):
            x, y = bytes(a), bytes(b)
            if x != y:
                at = next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
                out.append(f"Raw: {len(x)} B -> {len(y)} B, first difference at byte {at}")
            break
        for f in a.fields_desc:
            va, vb = a.getfieldval(f.name), b.getfieldval(f.name)
            if va != vb and not hasattr(va, "layers"):
                out.append(f"{name}.{f.name}: {va!r} -> {vb!r}")
        a, b, depth = a.payload, b.payload, depth + 1
    return out


def _report(title, sent, marks, arrived, by_marker, others, limit=12):
    lines = [title, f"sent ({len(sent)}):"]
    for i, (pkt, m) in enumerate(zip(sent, marks)):
        got = by_marker.get(m, [])
        lines.append(f"  #{i} {m.decode()}  {describe(pkt)}")
        if not got:
            lines.append("      -> did not arrive")
        for g in got[:3]:
            lines.append(f"      -> arrived: {describe(g)}")
            lines.extend(f"         {d}" for d in diff(pkt, g)[:12])
        if len(got) > 3:
            lines.append(f"      -> and {len(got) - 3} more copies")
    if others:
        lines.append(f"also arrived, without a marker of these packets ({len(others)}, first {min(limit, len(others))}):")
        lines.extend(f"  {describe(f)}" for f in others[:limit])
    else:
        lines.append(f"nothing else arrived ({len(arrived)} frame{'' if len(arrived) == 1 else 's'} in all)")
    return "\n".join(lines)


def sized_frames(name, mtu, pkts):
    """pkts as bytes, each checked against an interface's MTU (MTU + 14
    bytes of Ethernet header, + 4 with an 802.1Q tag): FrameTooLong (nothing
    sent) names the first that does not fit, PodnetTestError one shorter
    than an Ethernet header."""
    frames = [bytes(p) for p in _packets(pkts)]
    for i, f in enumerate(frames):
        limit = mtu + ETH_HLEN + (VLAN_HLEN if f[12:14] == b"\x81\x00" else 0)
        if len(f) > limit:
            raise FrameTooLong(f"{name}: frame #{i} is {len(f)} bytes; its MTU of {mtu} "
                               f"carries frames of at most {limit} bytes (nothing was sent)")
        if len(f) < ETH_HLEN:
            raise PodnetTestError(f"{name}: frame #{i} is {len(f)} bytes, shorter than an "
                                  f"Ethernet header (nothing was sent)")
    return frames
