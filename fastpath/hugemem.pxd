# Big tables (conntrack, services, FDB) are probed at random: with 4 KB pages
# nearly every probe of a 24 MB table also misses the TLB. Anonymous mmap
# with MADV_HUGEPAGE lets the kernel back them with 2 MB pages where
# transparent huge pages are available (a hint: without them nothing changes).
from libc.stdint cimport uintptr_t

cdef extern from "<sys/mman.h>" nogil:
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void *addr, size_t length)
    int madvise(void *addr, size_t length, int advice)
    enum:
        PROT_READ
        PROT_WRITE
        MAP_PRIVATE
        MAP_ANONYMOUS
        MADV_HUGEPAGE
    void *MAP_FAILED

cdef inline void *huge_calloc(size_t n, size_t size) noexcept nogil:
    """Zeroed memory for n items of size bytes, or NULL; free with huge_free."""
    cdef size_t length = n * size
    cdef void *p
    if length == 0 or length // size != n:
        return NULL
    p = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if p == MAP_FAILED:
        return NULL
    if length >= (2 << 20):
        madvise(p, length, MADV_HUGEPAGE)
    return p

cdef inline void huge_free(void *p, size_t n, size_t size) noexcept nogil:
    if p != NULL:
        munmap(p, n * size)
