"""The end-to-end benchmarks' bookkeeping, without running them: the CPU
figures from /proc/stat, the --cpus/--workers/--path arguments, the ratios of
every podnet-wN path, the README tables rendered from a results file with one
podnet path per worker count, and PodnetCluster taking down its own cluster
when several are up. (The committed results files are rendered by
tests/test_readme_figures.py.)"""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import cpustat  # noqa: E402
import e2e_overlay  # noqa: E402
import e2e_pods  # noqa: E402
import tables  # noqa: E402
from podnet_cluster import PodnetCluster  # noqa: E402
from rounds import ratio, summarize  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")


# ---- CPU time ------------------------------------------------------------------

def test_busy_seconds_counts_user_nice_system_irq_softirq_steal(tmp_path):
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat = tmp_path / "stat"
    stat.write_text(f"cpu  {1 * HZ} {2 * HZ} {4 * HZ} {1000 * HZ} {500 * HZ} {8 * HZ} {16 * HZ} {32 * HZ} "
                    f"{64 * HZ} {128 * HZ}\ncpu0 1 1 1 1 1 1 1 1 1 1\n")
    # idle and iowait are not busy; guest time is already inside user
    assert cpustat.busy_seconds(str(stat)) == 1 + 2 + 4 + 8 + 16 + 32


def test_busy_seconds_refuses_a_file_without_the_aggregate_line(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu0 1 2 3 4\n")
    with pytest.raises(RuntimeError, match="aggregate cpu line"):
        cpustat.busy_seconds(str(stat))


def test_busy_seconds_reads_this_machine():
    assert cpustat.busy_seconds() > 0


def test_cpu_figures_per_gb_and_cores_busy():
    c = cpustat.CpuSample()
    c.busy_s, c.wall_s = 3.0, 2.0
    f = c.figures(2_000_000_000)
    assert f["cpu_s_per_gb"] == pytest.approx(1.5)
    assert f["cores_busy"] == pytest.approx(1.5)
    assert f["bytes"] == 2_000_000_000
    # nothing received: no figure rather than a division by zero
    assert c.figures(0)["cpu_s_per_gb"] is None


def test_parse_cpus():
    allowed = sorted(os.sched_getaffinity(0))
    first = allowed[0]
    assert cpustat.parse_cpus(str(first)) == [first]
    assert cpustat.parse_cpus(f"{first}-{first}") == [first]
    assert cpustat.parse_cpus(",".join(map(str, allowed))) == allowed
    for bad, why in (("a", "not N or N-M"), ("1-0", "ascending"), ("", "not N or N-M"), ("0-x", "not N or N-M")):
        with pytest.raises(ValueError, match=why):
            cpustat.parse_cpus(bad)
    with pytest.raises(ValueError, match="not available"):
        cpustat.parse_cpus(str(max(allowed) + 4096))


# ---- arguments -----------------------------------------------------------------

def test_workers_argument():
    assert e2e_pods.parse_workers("1,2") == [1, 2]
    assert e2e_pods.parse_workers("4") == [4]
    for bad in ("0", "1,1", "17", "x", "1,,2"):
        with pytest.raises(Exception, match="--workers"):
            e2e_pods.parse_workers(bad)


def test_overlay_path_argument():
    assert e2e_overlay.path_name("kernel") == "kernel"
    assert e2e_overlay.path_name("podnet-w2") == "podnet-w2"
    for bad in ("podnet", "podnet-w0", "podnet-w17", "tapfwd", "podnet-w1x"):
        with pytest.raises(Exception, match="--path"):
            e2e_overlay.path_name(bad)


def test_podnet_paths_are_distinct_clusters():
    """Paths for several worker counts coexist: names, clusters and CIDRs differ."""
    for cls in (e2e_pods.Podnet, e2e_overlay.PodnetOverlay):
        a, b = cls(1), cls(2)
        assert (a.name, b.name) == ("podnet-w1", "podnet-w2")
        assert (a.workers, b.workers) == (1, 2)
        assert "1 worker" in a.label and "2 workers" in b.label
        la, lb = a.spec_text.splitlines()[0], b.spec_text.splitlines()[0]
        assert la != lb
        from dataplane.spec import parse_spec
        sa, sb = parse_spec(a.spec_text), parse_spec(b.spec_text)
        assert sa.name != sb.name
        assert not sa.pod_cidr.overlaps(sb.pod_cidr) and not sa.fabric_cidr.overlaps(sb.fabric_cidr)


# ---- ratios and tables -----------------------------------------------------------

def fig(gbps=None, rx=None, fwd=None, cpu=None, busy=1.9, share=None):
    out = {"cpu_s_per_gb": cpu, "cores_busy": busy}
    if gbps is not None:
        out["gbps"] = gbps
    if rx is not None:
        out["rx_pps"] = rx
    if fwd is not None:
        out["forwarded_pps"] = fwd
    if share is not None:
        out["agent_user_share"] = share
    return out


def pods_raw():
    """Two rounds; podnet-w2's CPU per GB is 1.4x the kernel's in one round and
    1.6x in the other."""
    return {
        "tcp1": {"kernel": [fig(10, cpu=1.0), fig(12, cpu=1.0)], "tapfwd": [fig(5, cpu=2.0), fig(6, cpu=2.0)],
                 "podnet-w1": [fig(6, cpu=1.2, share=0.05), fig(6, cpu=1.2, share=0.05)],
                 "podnet-w2": [fig(6, cpu=1.4, share=0.04), fig(9, cpu=1.6, share=0.04)]},
        "tcp4": {"kernel": [fig(10, cpu=1.0), fig(10, cpu=1.0)], "tapfwd": [fig(8, cpu=2.0), fig(8, cpu=2.0)],
                 "podnet-w1": [fig(7, cpu=1.1, share=0.04), fig(7, cpu=1.1, share=0.04)],
                 "podnet-w2": [fig(7, cpu=1.1, share=0.04), fig(7, cpu=1.1, share=0.04)]},
        "udp64": {"kernel": [fig(rx=100e3, cpu=600), fig(rx=100e3, cpu=600)],
                  "tapfwd": [fig(rx=50e3, fwd=60e3, cpu=900), fig(rx=50e3, fwd=60e3, cpu=900)],
                  "podnet-w1": [fig(rx=100e3, fwd=150e3, cpu=550, share=0.1)] * 2,
                  "podnet-w2": [fig(rx=80e3, fwd=120e3, cpu=560, share=0.1)] * 2},
    }


def test_e2e_ratios_names_and_values():
    raw = pods_raw()
    r = e2e_pods.e2e_ratios(raw, list(raw["tcp1"]))
    expected = set()
    for p in ("podnet_w1", "podnet_w2"):
        expected |= {f"{p}_vs_{b}_{k}" for b in ("kernel", "tapfwd") for k in ("tcp1", "tcp4", "udp64_rx")}
        expected |= {f"{p}_vs_tapfwd_udp64_forwarded"}
        expected |= {f"{p}_cpu_per_gb_vs_kernel_{k}" for k in ("tcp1", "tcp4", "udp64")}
    expected |= {f"podnet_w2_vs_podnet_w1_{k}" for k in ("tcp1", "tcp4", "udp64_rx")}
    expected |= {f"podnet_w2_cpu_per_gb_vs_podnet_w1_{k}" for k in ("tcp1", "tcp4", "udp64")}
    assert set(r) == expected
    # each ratio is taken within a round
    assert r["podnet_w2_vs_kernel_tcp1"]["values"] == [0.6, 0.75]
    assert r["podnet_w2_cpu_per_gb_vs_kernel_tcp1"]["values"] == pytest.approx([1.4, 1.6])
    assert r["podnet_w2_vs_podnet_w1_tcp1"]["values"] == [1.0, 1.5]
    assert r["podnet_w1_vs_tapfwd_udp64_forwarded"]["values"] == [2.5, 2.5]


def test_overlay_ratios_without_the_forwarder():
    raw = {k: {p: v for p, v in per.items() if p != "tapfwd"} for k, per in pods_raw().items()}
    r = e2e_pods.e2e_ratios(raw, list(raw["tcp1"]))
    assert not any("tapfwd" in k for k in r)
    assert "podnet_w1_vs_kernel_tcp4" in r and "podnet_w2_vs_podnet_w1_udp64_rx" in r
    # a single podnet path and no baseline: nothing to compare
    assert e2e_pods.e2e_ratios({k: {"podnet-w1": v["podnet-w1"]} for k, v in raw.items()}, ["podnet-w1"]) == {}


def doc_for(bench, raw, metrics):
    names = list(raw["tcp1"])
    podnets = [n for n in names if n.startswith("podnet-")]
    return {"bench": bench, "seconds": 5, "rounds": 2, "workers": [1, 2], "cpus": [0, 1],
            "machine": {"cpu": "TestCPU", "cores": 2, "kernel": "6.x", "python": "3.11", "cython": "3"},
            "date": "2026-01-01T00:00:00Z", "labels": {n: n for n in names},
            "summary": summarize(raw, metrics), "ratios": e2e_pods.e2e_ratios(raw, names), "raw": raw,
            "agent": {p: {"workers": int(p[-1]), "frames_per_burst": 7.5, "drops": {}} for p in podnets}}


def test_pods_table_shows_every_worker_path_cpu_and_ratios(monkeypatch):
    doc = doc_for("pods", pods_raw(), e2e_pods.METRICS)
    monkeypatch.setattr(tables, "load", lambda name: doc)
    text = tables.pods()
    lines = text.splitlines()
    assert lines[0].startswith("2 interleaved rounds of 5 s per figure on CPUs 0,1; TestCPU")
    assert "| same node: **podnet**, 1 worker | 6.0 (6.0–6.0) |" in text
    assert "| same node: **podnet**, 2 workers | 7.5 (6.0–9.0) |" in text
    assert "| same node: minimal C TAP forwarder, vnet hdr | 5.5 (5.0–6.0) | 8.0 (8.0–8.0) | 50 (50–50) | 60 (60–60) |" \
        in text
    # CPU-s per GB per kind (UDP without decimals) and cores busy
    assert "| same node: **podnet**, 2 workers | 1.50 (1.40–1.60) | 1.10 (1.10–1.10) | 560 (560–560) " \
           "| 1.90 (1.90–1.90) | 1.90 (1.90–1.90) | 1.90 (1.90–1.90) |" in text
    assert "| same node: Linux bridge + veth | 1.00 (1.00–1.00) | 1.00 (1.00–1.00) | 600 (600–600) |" in text
    # CPU per GB within 1.5x the kernel's: one round of two stays within it
    assert "| podnet-w2 / kernel, CPU-s per GB, TCP 1 stream | 1.50 (1.40–1.60) | ≤ 1.5: **not met** (1 of 2 rounds) |" \
        in text
    assert "| podnet-w1 / kernel, CPU-s per GB, TCP 1 stream | 1.20 (1.20–1.20) | ≤ 1.5: met |" in text
    assert "| podnet-w1 / C forwarder, TCP 1 stream | 1.10 (1.00–1.20) | ≥ 1.0: met |" in text
    assert "| podnet-w2 / kernel, TCP 1 stream | 0.68 (0.60–0.75) | ≥ 0.9: **not met** (0 of 2 rounds) |" in text
    assert "| podnet-w2 / podnet-w1, TCP 1 stream | 1.25 (1.00–1.50) | |" in text
    assert "| podnet-w2 / podnet-w1, UDP received | 0.80 (0.80–0.80) | |" in text
    assert "| podnet-w1 / C forwarder, UDP forwarded | 2.50 (2.50–2.50) | ≥ 1.2: met |" in text
    # one row per ratio in the file
    assert sum(1 for line in lines if line.startswith("| podnet-w")) == len(doc["ratios"])
    assert "**podnet**, 2 workers: 4 (4–4) % under 1-stream TCP" in text and "7.5 frames per wakeup" in text


def test_overlay_table_shows_every_worker_path(monkeypatch):
    raw = {k: {p: v for p, v in per.items() if p != "tapfwd"} for k, per in pods_raw().items()}
    doc = doc_for("overlay", raw, e2e_overlay.METRICS)
    doc["setup"] = {p: {"workers": a["workers"]} for p, a in doc.pop("agent").items()}
    monkeypatch.setattr(tables, "load", lambda name: doc)
    text = tables.overlay()
    assert "| across nodes: **podnet**, 2 workers (UDP-tunnel GSO) | 7.5 (6.0–9.0) | 7.0 (7.0–7.0) | 80 (80–80) |" in text
    assert "| across nodes: Linux vxlan (flannel.1) + bridges | 11.0 (10.0–12.0) |" in text
    assert "| podnet-w2 / kernel, CPU-s per GB, TCP 4 streams | 1.10 (1.10–1.10) | ≤ 1.5: met |" in text
    assert "C forwarder" not in text
    assert sum(1 for line in text.splitlines() if line.startswith("| podnet-w")) == len(doc["ratios"])


def test_old_layout_still_renders(monkeypatch):
    """Files from before the workers (one path named podnet) keep their table."""
    raw = {k: {("podnet" if p == "podnet-w1" else p): v for p, v in per.items() if p != "podnet-w2"}
           for k, per in pods_raw().items()}
    doc = doc_for("pods", raw, e2e_pods.METRICS)
    doc["ratios"] = {f"podnet_vs_{b}_{k}": ratio(raw, kind, m, "podnet", b) for b in ("kernel", "tapfwd")
                     for kind, (m, k) in e2e_pods.THROUGHPUT.items()}
    doc["ratios"]["podnet_vs_tapfwd_udp64_forwarded"] = ratio(raw, "udp64", "forwarded_pps", "podnet", "tapfwd")
    doc["agent"] = {"frames_per_burst": 7.0, "drops": {}}
    monkeypatch.setattr(tables, "load", lambda name: doc)
    text = tables.pods()
    assert "| same node: **podnet** | 6.0 (6.0–6.0) |" in text
    assert "CPU-s per GB" not in text and "worker" not in text


# ---- several clusters up at once -------------------------------------------------

def test_each_cluster_goes_down_with_its_own_state(monkeypatch):
    """PodnetCluster finds its state through PODNET_RUN_DIR; with two up, the
    first one's down must read the first one's directory (it read the second's)."""
    from dataplane import cluster
    ups, downs = [], []
    monkeypatch.setattr(cluster, "up", lambda spec, **kw: ups.append((os.environ["PODNET_RUN_DIR"], kw.get("workers")))
                        or {"cluster": "x", "nodes": {}})
    monkeypatch.setattr(cluster, "down", lambda **kw: downs.append(os.environ["PODNET_RUN_DIR"]))
    monkeypatch.setenv("PODNET_RUN_DIR", "/before")
    monkeypatch.delenv("PODNET_STATE_DIR", raising=False)
    a, b = PodnetCluster("a", workers=1), PodnetCluster("b", workers=2)
    with a:
        with b:
            assert os.environ["PODNET_RUN_DIR"] == f"{b.tmp}/run"     # podnet commands address the last one
        assert downs == [f"{b.tmp}/run"]
        assert os.environ["PODNET_RUN_DIR"] == f"{a.tmp}/run"
    assert downs == [f"{b.tmp}/run", f"{a.tmp}/run"]
    assert ups == [(f"{a.tmp}/run", 1), (f"{b.tmp}/run", 2)]
    # the environment as it was, and the private directories gone
    assert os.environ["PODNET_RUN_DIR"] == "/before" and "PODNET_STATE_DIR" not in os.environ
    assert not Path(a.tmp).exists() and not Path(b.tmp).exists()


def test_a_cluster_that_fails_to_come_up_leaves_nothing(monkeypatch):
    from dataplane import cluster

    def fail(spec, **kw):
        raise cluster.ClusterError("no")
    monkeypatch.setattr(cluster, "up", fail)
    monkeypatch.delenv("PODNET_RUN_DIR", raising=False)
    c = PodnetCluster("a")
    with pytest.raises(cluster.ClusterError):
        c.__enter__()
    assert "PODNET_RUN_DIR" not in os.environ and not Path(c.tmp).exists()
