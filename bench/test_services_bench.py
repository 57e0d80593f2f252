"""Service DNAT at 10 and 100k services, established and new flows: the
burst loop (frames copied in each burst) beside the dpkt version."""
import pytest

import stagework as sw


@pytest.mark.parametrize("nservices", [10, 100000])
def test_dnat_established(benchmark, nservices):
    dp, frames, _, snap = sw.stage("dnat_established", nservices)
    sw.load(dp, frames)
    dp.bench_stage(sw.BURST, 1, snap)            # the flows exist from now on
    benchmark.group = f"dnat-{nservices}"
    benchmark.pedantic(dp.bench_stage, args=(sw.BURST, 400, snap), rounds=10, warmup_rounds=1)
    c = dp.counters()
    assert sum(c["drops"].values()) == 0 and c["conntrack"]["entries"] == sw.BURST


@pytest.mark.parametrize("nservices", [10, 100000])
def test_dnat_new_flows(benchmark, nservices):
    dp, frames, _, snap = sw.stage("dnat_new_flows", nservices)
    sw.load(dp, frames)

    def round_():
        dp.conntrack.clear()                     # every call starts empty: 51,200 new flows
        dp.bench_stage(sw.BURST, 200, snap, sport_off=34)

    benchmark.group = f"dnat-{nservices}"
    benchmark.pedantic(round_, rounds=7, warmup_rounds=1)
    c = dp.counters()
    assert sum(c["drops"].values()) == 0 and c["conntrack"]["entries"] == sw.BURST * 200


@pytest.mark.parametrize("stage", ["dnat_established", "dnat_new_flows"])
def test_dpkt(benchmark, stage):
    assert sw.check(stage, 1000) == sw.BURST
    _, frames, py, _ = sw.stage(stage, 1000)
    py.process(frames)

    def run():
        if stage == "dnat_new_flows":
            py.conns.clear()
        return py.process(frames)

    benchmark.group = "dnat-dpkt"
    out = benchmark.pedantic(run, iterations=5, rounds=10, warmup_rounds=1)
    assert len(out) == sw.BURST
