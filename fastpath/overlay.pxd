# The overlay's shared state: this node's underlay identity, routes from
# other nodes' pod CIDRs to the node (VTEP / next hop) that owns them, and
# those nodes' MACs. What is common to every backend lives here; each
# encapsulation is a small module behind one interface (tunnel.pxd):
#   vxlan.pxd   RFC 7348, flannel's vxlan backend (outer Ethernet/IPv4/UDP/VXLAN)
#   ipip.pxd    RFC 2003 IP-in-IP, Calico's default (outer Ethernet/IPv4, protocol 4)
#   direct.pxd  no encapsulation: routed to the next hop's MAC (flannel host-gw, Calico BGP)
# and underlay.pxd answers ARP and ICMP echo for the node IP and resolves
# the peers' MACs, for all three.
# Invariants: routes[0:nroutes] are sorted longest prefix first and each
# names a vtep in vteps[0:nvteps]; a vtep at VTEP_REACHABLE or VTEP_STATIC
# has its MAC and its header template (hdr, hsum) built for the backend in
# force; every change to these tables is made under the table lock
# (fastpath/sync.pxd), a worker's learning by upgrading to it.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from fastpath.defs cimport *
from fastpath.packets cimport IPPROTO_TCP, UDP_HLEN
from fastpath.sync cimport pn_sync_t

cdef enum:
    MAX_ROUTES = 256
    MAX_VTEPS = 256
    MAX_TUNNEL_HDR = 50          # the largest outer header (VXLAN's)
    ARP_RETRY_MS = 1000          # at most one ARP request per VTEP per second
    VTEP_FREE = 0
    VTEP_INCOMPLETE = 1          # asked, no answer yet
    VTEP_REACHABLE = 2           # learned by ARP
    VTEP_STATIC = 3              # from the control plane
    # backends
    TUN_VXLAN = 0
    TUN_IPIP = 1
    TUN_DIRECT = 2
    # what a frame from the fabric is (underlay.pxd, tunnel.pxd)
    OV_REPLY = 1                 # answered in place: back out of the uplink
    OV_LOCAL = 2                 # consumed (ARP)
    OV_INNER = 3                 # decapsulated: pk now describes the inner frame
    OV_TUNNEL = 4                # to the node IP, not ARP/ICMP echo: the tunnel's decap decides
    OV_TRANSIT = 5               # to the node MAC, another IP: routed in (direct) or not ours

ctypedef struct vtep_t:
    uint32_t ip
    uint8_t mac[6]
    uint8_t state
    uint64_t asked               # clock (ms) of the last ARP request
    uint32_t refs                # routes using it
    uint8_t hdr[MAX_TUNNEL_HDR]  # the outer headers toward it, built once its MAC is known
    uint64_t hsum                # sum of that IPv4 header with length, id and checksum zero

ctypedef struct route_t:
    uint32_t net
    uint32_t mask
    uint8_t plen
    uint8_t inner_mac[6]         # vxlan: inner dst MAC (the remote gateway / flannel.1 MAC)
    uint8_t has_inner            # inner_mac was given (vxlan always)
    uint32_t vni
    uint16_t vtep                # index into vteps

ctypedef struct overlay_t:
    uint8_t enabled
    uint8_t mode                 # TUN_VXLAN, TUN_IPIP, TUN_DIRECT
    uint8_t overhead             # bytes the encapsulation adds on the wire (50, 20, 0)
    uint16_t uplink              # port id of the uplink
    uint32_t ip                  # this node's underlay IP
    uint8_t mac[6]               # this node's underlay MAC
    uint64_t mac_key
    uint32_t vni                 # vxlan: the VNI served
    uint16_t port                # vxlan: UDP destination port (4789, or flannel's 8472)
    uint16_t mtu                 # fabric MTU
    uint8_t tunnel_gso           # the uplink takes this backend's super-frames whole
    uint32_t nroutes             # routes[] sorted by prefix length, longest first
    uint32_t nvteps
    route_t routes[MAX_ROUTES]
    vtep_t vteps[MAX_VTEPS]
    # counters (encapsulated, decapsulated, gso_encapsulated: per worker, in stats_t)
    uint64_t arp_requests
    uint64_t arp_replies
    uint64_t arp_learned
    uint64_t icmp_replies


cdef inline uint32_t gso_l4_hdr(const pkt_t *pk) noexcept nogil:
    """Bytes of the L4 header a GSO super-frame's segments each repeat
    (0: a TCP fragment, which has none to segment by)."""
    if pk.m.l4_proto == IPPROTO_TCP:
        if not (pk.m.flags & F_L4):
            return 0
        return (pk.data[pk.m.l4_off + 12] >> 4) * 4u
    return UDP_HLEN

cdef inline route_t *ov_route(const overlay_t *ov, uint32_t dst) noexcept nogil:
    cdef uint32_t k
    for k in range(ov.nroutes):
        if (dst & ov.routes[k].mask) == ov.routes[k].net:
            return <route_t *>&ov.routes[k]
    return NULL

cdef inline bint ov_is_node(const overlay_t *ov, uint32_t ip) noexcept nogil:
    """ip is the underlay address of a node some route leads to (nvteps is
    small: one per node)."""
    cdef uint32_t k
    for k in range(ov.nvteps):
        if ov.vteps[k].ip == ip and ov.vteps[k].state != VTEP_FREE:
            return True
    return False


cdef class Overlay:
    cdef overlay_t ov
    cdef pn_sync_t *sy               # the dataplane's table lock (NULL: alone)
    cdef dict names              # route CIDR -> node name, for display
    cdef readonly uint64_t generation   # bumped by every route change (snapshots)
    cdef object fabric           # IPv4Network of the fabric (direct: next hops must be on it)
