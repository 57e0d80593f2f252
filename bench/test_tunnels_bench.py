"""IP-in-IP and direct routing, each way: the burst loop (frames copied in
each burst) beside the dpkt version of the same stage on the same frames, as
test_vxlan_bench.py does for VXLAN."""
import pytest

import stagework as sw

STAGES = ["ipip_encap", "ipip_decap", "direct_encap", "direct_decap"]


@pytest.mark.parametrize("stage", STAGES)
def test_fastpath(benchmark, stage):
    dp, frames, _, snap = sw.stage(stage)
    sw.load(dp, frames)
    benchmark.group = stage
    benchmark.extra_info.update(stage=stage, impl="fastpath", burst=sw.BURST)
    benchmark.pedantic(dp.bench_stage, args=(sw.BURST, 400, snap), rounds=10, warmup_rounds=1)
    c = dp.counters()
    assert sum(c["drops"].values()) == 0


@pytest.mark.parametrize("stage", STAGES)
def test_dpkt(benchmark, stage):
    assert sw.check(stage) == sw.BURST
    _, frames, py, _ = sw.stage(stage)
    benchmark.group = stage
    benchmark.extra_info.update(stage=stage, impl="dpkt", burst=sw.BURST)
    out = benchmark.pedantic(py.process, args=(frames,), iterations=5, rounds=10, warmup_rounds=1)
    assert len(out) == sw.BURST
