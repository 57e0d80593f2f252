"""Python face of the inline parser, for tests and tools (same code as the burst loop)."""
from libc.stdint cimport uint16_t, uint32_t
from fastpath.defs cimport *
from fastpath.parse cimport parse_frame
from fastpath.counters import DROP_NAMES


def parse(const unsigned char[:] frame):
    """Parse one frame; return its fields, or the drop reason under 'drop'."""
    cdef meta_t m
    cdef uint16_t r
    if frame.shape[0] == 0:
        return {"drop": DROP_NAMES[DROP_RUNT]}
    r = parse_frame(&frame[0], <uint32_t>frame.shape[0], &m)
    if r != DROP_NONE:
        return {"drop": DROP_NAMES[r]}
    out = {
        "ethertype": m.ethertype,
        "vlans": [m.vlan[i] for i in range(m.n_vlan)],
        "l3_off": m.l3_off,
        "multicast_dst": bool(m.flags & F_BCAST),
        "arp": bool(m.flags & F_ARP),
        "ip4": bool(m.flags & F_IP4),
        "ip6": bool(m.flags & F_IP6),
        "fragment": bool(m.flags & F_FRAG),
    }
    if m.flags & (F_IP4 | F_IP6):
        out.update(proto=m.l4_proto, l3_len=m.l3_len, l4_off=m.l4_off,
                   l4_len=m.l4_len, l4=bool(m.flags & F_L4))
    return out
