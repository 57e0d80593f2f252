"""Bridge forwarding: the burst loop at bursts of 1, 32 and 256 (frames
copied into the slots each burst, as a TAP read does) beside the dpkt
version of the same learn-and-forward on the same frames."""
import pytest

import stagework as sw


@pytest.mark.parametrize("burst", [1, 32, 256])
def test_fastpath_bridge(benchmark, burst):
    dp, frames, _, snap = sw.stage("bridge")
    sw.load(dp, frames[:burst])
    benchmark.group = "bridge"
    benchmark.extra_info.update(stage="bridge", impl="fastpath", burst=burst)
    iters = max(1, 100000 // burst)
    benchmark.pedantic(dp.bench_stage, args=(burst, iters, snap), rounds=10, warmup_rounds=2)
    c = dp.counters()
    assert c["bridge"]["flooded"] == 0 and sum(c["drops"].values()) == 0


def test_dpkt_bridge(benchmark):
    assert sw.check("bridge") == sw.BURST
    _, frames, py, _ = sw.stage("bridge")
    benchmark.group = "bridge"
    benchmark.extra_info.update(stage="bridge", impl="dpkt", burst=sw.BURST)
    out = benchmark.pedantic(py.process, args=(frames,), iterations=5, rounds=10, warmup_rounds=1)
    assert len(out) == sw.BURST
