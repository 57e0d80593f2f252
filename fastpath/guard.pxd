# Anti-spoofing per pod port (Neutron/OVN "port security"): a guarded port
# may send only frames from its pod's MAC and, for IPv4 and ARP, from its
# pod's IP. Checked right after parsing, before learning, so a forging pod
# neither fills nor poisons the FDB, the gateway's neighbours or conntrack.
# Off per port until set; the uplink is never guarded (VXLAN has its own
# checks). IPv6 is checked by MAC only (podnet routes IPv4 only).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from fastpath.sync cimport pn_sync_t
from fastpath.defs cimport *
from fastpath.checksum cimport get32
from fastpath.packets cimport *

ctypedef struct guard_t:
    uint8_t on[MAX_PORTS]
    uint64_t mac[MAX_PORTS]  # the pod's MAC in the top 48 bits (as fdb_key packs it)
    uint32_t ip[MAX_PORTS]

cdef inline uint16_t guard_check(const guard_t *g, uint16_t port, const uint8_t *data,
                                 const meta_t *m) noexcept nogil:
    """DROP_NONE, or why the frame from a guarded port is forged. One 8-byte
    compare for the MAC (the Ethernet header has 8 bytes from offset 6), one
    4-byte compare for the address."""
    cdef const uint8_t *l3 = data + m.l3_off
    cdef uint32_t spa
    if mac_key(data + ETH_SRC) != g.mac[port]:
        return DROP_SPOOF_MAC
    if m.flags & F_IP4:
        if get32(l3 + IP4_SRC) != g.ip[port]:
            return DROP_SPOOF_IP
    elif m.flags & F_ARP:
        # Ethernet/IPv4 ARP (parse guarantees 28 bytes): sender MAC at 8, IP at 14.
        if mac_key(l3 + ARP_SHA) != g.mac[port]:
            return DROP_SPOOF_MAC
        spa = get32(l3 + ARP_SPA)
        if spa != g.ip[port] and spa != 0:       # 0.0.0.0: an RFC 5227 probe
            return DROP_SPOOF_IP
    return DROP_NONE

cdef class PortGuard:
    cdef guard_t g
    cdef pn_sync_t *sy               # the dataplane's table lock (NULL: alone)
