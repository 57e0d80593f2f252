"""RFC 1071 sums and RFC 1624 incremental updates against full recomputation."""
import random

from scapy.utils import checksum as scapy_checksum

from fastpath.checksum import checksum, update16, update32


def test_matches_scapy_on_random_data():
    rnd = random.Random(1)
    for n in list(range(0, 40)) + [1499, 1500, 9001]:
        data = bytes(rnd.randrange(256) for _ in range(n))
        assert checksum(data) == (scapy_checksum(data) if n else 0xffff)


def _put(data, off, value, width):
    return data[:off] + value.to_bytes(width, "big") + data[off + width:]


def test_incremental_update_equals_recompute():
    rnd = random.Random(2)
    for _ in range(2000):
        n = rnd.randrange(4, 60) & ~1
        data = bytes(rnd.randrange(256) for _ in range(n))
        field = checksum(data)
        off = rnd.randrange(0, n - 1) & ~1
        old = int.from_bytes(data[off:off + 2], "big")
        new = rnd.randrange(65536)
        assert update16(field, old, new) in _equivalent(checksum(_put(data, off, new, 2)))
        if off + 4 <= n:
            old32 = int.from_bytes(data[off:off + 4], "big")
            new32 = rnd.randrange(1 << 32)
            assert update32(field, old32, new32) in _equivalent(checksum(_put(data, off, new32, 4)))


def _equivalent(c):
    # 0x0000 and 0xffff are the same number in ones' complement (RFC 1624 sec. 3).
    return {c, 0xffff - c if c in (0, 0xffff) else c}
