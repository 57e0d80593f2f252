"""Bridge forwarding, packets/s: the Cython burst loop at bursts of 1, 32 and
256 beside a dpkt per-packet version of the same learn-and-lookup, same run.
`make bench` turns the pytest-benchmark JSON into bench/results/bridge.json
and bridge.png (bench/report.py)."""
import time

import dpkt
import pytest

from conftest import BURST, NPORTS


@pytest.mark.parametrize("burst", [1, 32, 256])
def test_fastpath_bridge(benchmark, loaded_dp, burst):
    benchmark.group = "bridge"
    benchmark.extra_info.update(stage="bridge", impl="fastpath", burst=burst, frame_bytes=60)
    iters = max(1, 200000 // burst)
    benchmark.pedantic(loaded_dp.run_burst, args=(0, burst), iterations=iters, rounds=20,
                       warmup_rounds=2)
    c = loaded_dp.counters()
    assert c["bridge"]["flooded"] == 0 and sum(c["drops"].values()) == 0


class DpktBridge:
    """What a Python programmer would write without a fast path: parse each
    frame with dpkt, learn the source in a dict, look the destination up."""

    def __init__(self, aging=300.0):
        self.fdb = {}
        self.aging = aging
        self.ports = list(range(NPORTS))

    def process(self, frames):
        now = time.monotonic()
        out = []
        for buf, port in frames:
            try:
                eth = dpkt.ethernet.Ethernet(buf)
            except dpkt.UnpackError:
                continue
            self.fdb[eth.src] = (port, now)
            hit = self.fdb.get(eth.dst)
            if hit is not None and now - hit[1] <= self.aging and not eth.dst[0] & 1:
                if hit[0] != port:
                    out.append((hit[0], buf))
            else:
                out.extend((p, buf) for p in self.ports if p != port)
        return out


def test_dpkt_bridge(benchmark, frames):
    benchmark.group = "bridge"
    benchmark.extra_info.update(stage="bridge", impl="dpkt", burst=BURST, frame_bytes=60)
    b = DpktBridge()
    b.process(frames)
    out = benchmark.pedantic(b.process, args=(frames,), iterations=5, rounds=10, warmup_rounds=1)
    assert len(out) == BURST                         # all known unicast, like the fast path
