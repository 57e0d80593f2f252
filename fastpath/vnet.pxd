# virtio-net headers in front of frames (TAP-OFFLOADS.md): read one of 10/12/24
# bytes into a struct, write it back in another size. Encap and decap convert
# between the pods' 12-byte header and the uplink's 24-byte one, moving the
# offsets by the outer header length.
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memset

cdef enum:
    VNET_F_NEEDS_CSUM = 0x01
    VNET_F_DATA_VALID = 0x02
    VNET_F_UDP_TUNNEL_CSUM = 0x08
    VNET_GSO_NONE = 0
    VNET_GSO_TCPV4 = 1
    VNET_GSO_UDP = 3
    VNET_GSO_TCPV6 = 4
    VNET_GSO_UDP_L4 = 5
    VNET_GSO_UDP_TUNNEL_IPV4 = 0x20
    VNET_GSO_UDP_TUNNEL_IPV6 = 0x40
    VNET_GSO_ECN = 0x80

ctypedef struct vnet_t:
    uint8_t flags
    uint8_t gso_type
    uint16_t hdr_len
    uint16_t gso_size
    uint16_t csum_start
    uint16_t csum_offset
    uint16_t outer_th_offset   # 24-byte header only
    uint16_t inner_nh_offset

cdef inline uint16_t le16(const uint8_t *p) noexcept nogil:
    return p[0] | (<uint16_t>p[1] << 8)

cdef inline void put_le16(uint8_t *p, uint16_t v) noexcept nogil:
    p[0] = v & 0xff
    p[1] = v >> 8

cdef inline void vnet_read(const uint8_t *p, uint32_t n, vnet_t *h) noexcept nogil:
    memset(h, 0, sizeof(vnet_t))
    if n < 10:
        return
    h.flags = p[0]
    h.gso_type = p[1]
    h.hdr_len = le16(p + 2)
    h.gso_size = le16(p + 4)
    h.csum_start = le16(p + 6)
    h.csum_offset = le16(p + 8)
    if n >= 24:
        h.outer_th_offset = le16(p + 20)
        h.inner_nh_offset = le16(p + 22)

cdef inline void vnet_write(uint8_t *p, uint32_t n, const vnet_t *h) noexcept nogil:
    if n < 10:
        return
    memset(p, 0, n)
    p[0] = h.flags
    p[1] = h.gso_type
    put_le16(p + 2, h.hdr_len)
    put_le16(p + 4, h.gso_size)
    put_le16(p + 6, h.csum_start)
    put_le16(p + 8, h.csum_offset)
    if n >= 24:
        put_le16(p + 20, h.outer_th_offset)
        put_le16(p + 22, h.inner_nh_offset)

cdef inline void vnet_strip(vnet_t *h, uint32_t start) noexcept nogil:
    """Offload metadata of a frame whose first `start` bytes (outer headers)
    are cut off: offsets move back; a partial checksum that began before
    `start` was an outer one (a kernel VTEP's UDP checksum), so the inner
    checksums are complete."""
    if h.flags & VNET_F_NEEDS_CSUM:
        if h.csum_start >= start:
            h.csum_start -= start
        else:
            h.flags = (h.flags & ~VNET_F_NEEDS_CSUM) | VNET_F_DATA_VALID
            h.csum_start = 0
            h.csum_offset = 0
    h.hdr_len = h.hdr_len - start if h.hdr_len > start else 0
    h.outer_th_offset = 0
    h.inner_nh_offset = 0
