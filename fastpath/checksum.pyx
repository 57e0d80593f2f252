"""Python face of checksum.pxd, for tests (the same inline code the loop runs)."""
from libc.stdint cimport uint16_t, uint32_t


def checksum(const unsigned char[:] data):
    """RFC 1071 checksum of data (the value a zeroed field would get)."""
    if data.shape[0] == 0:
        return 0xffff
    return csum(&data[0], <uint32_t>data.shape[0])


def update16(uint16_t field, uint16_t old, uint16_t new):
    cdef unsigned char b[2]
    put16(b, field)
    csum_update16(b, old, new)
    return get16(b)


def update32(uint16_t field, uint32_t old, uint32_t new):
    cdef unsigned char b[2]
    put16(b, field)
    csum_update32(b, old, new)
    return get16(b)
