# Internet checksums (RFC 1071) and incremental updates (RFC 1624), inline
# for the burst loop. Fields are big-endian in the frame; sums run on host
# integers of the big-endian 16-bit words.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef inline uint16_t csum_fold(uint64_t s) noexcept nogil:
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return <uint16_t>s

cdef inline uint64_t csum_partial(const uint8_t *p, uint32_t n, uint64_t s) noexcept nogil:
    """Ones'-complement sum of n bytes (odd tail padded with zero), added to s."""
    cdef uint32_t i = 0
    while i + 1 < n:
        s += (<uint32_t>p[i] << 8) | p[i + 1]
        i += 2
    if i < n:
        s += <uint32_t>p[i] << 8
    return s

cdef inline uint16_t csum(const uint8_t *p, uint32_t n) noexcept nogil:
    """The value to store in a checksum field covering p[0:n] (field zeroed first)."""
    return <uint16_t>(~csum_fold(csum_partial(p, n, 0)) & 0xffff)

cdef extern from *:
    """
    #include <string.h>
    /* Big-endian fields at any alignment: one load/store and a byte swap,
       instead of assembling bytes one by one. */
    static inline uint16_t pn_get16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return __builtin_bswap16(v); }
    static inline uint32_t pn_get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return __builtin_bswap32(v); }
    static inline void pn_put16(uint8_t *p, uint16_t x) { x = __builtin_bswap16(x); memcpy(p, &x, 2); }
    static inline void pn_put32(uint8_t *p, uint32_t x) { x = __builtin_bswap32(x); memcpy(p, &x, 4); }
    """
    uint16_t get16 "pn_get16"(const uint8_t *p) noexcept nogil
    uint32_t get32 "pn_get32"(const uint8_t *p) noexcept nogil
    void put16 "pn_put16"(uint8_t *p, uint16_t v) noexcept nogil
    void put32 "pn_put32"(uint8_t *p, uint32_t v) noexcept nogil

cdef inline void csum_update16(uint8_t *field, uint16_t old, uint16_t new) noexcept nogil:
    """RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') for one 16-bit word changed."""
    cdef uint64_t s = (~get16(field) & 0xffff) + (~old & 0xffff) + new
    put16(field, <uint16_t>(~csum_fold(s) & 0xffff))

cdef inline void csum_update32(uint8_t *field, uint32_t old, uint32_t new) noexcept nogil:
    """As csum_update16 for a 32-bit field (an IPv4 address): two words."""
    cdef uint64_t s = (~get16(field) & 0xffff)
    s += (~(old >> 16) & 0xffff) + (~old & 0xffff) + (new >> 16) + (new & 0xffff)
    put16(field, <uint16_t>(~csum_fold(s) & 0xffff))

