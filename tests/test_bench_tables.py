"""The end-to-end benchmarks' bookkeeping, without running them: the CPU
figures from /proc/stat, the --cpus/--workers/--path arguments, the ratios of
every podnet-wN path, the benchmark tables rendered from a results file with one
podnet path per worker count, and PodnetCluster taking down its own cluster
when several are up; pod churn and CNI latency (e2e_churn, e2e_cni): their
percentiles, ratios within a round, targets, arguments, the CNI launcher and
config they run, podman's timing wrapper, their tables, and a table whose
results file does not exist yet; the backends (issue 15): e2e_overlay's
paths per backend, its ratios within a round (and the ones it could not
take, with why), their table, the fast-path stage table's tunnel rows and
instruction growth; where the tables live (README.md and docs/*.md, each
in one page). (The committed results files are rendered by
tests/test_readme_figures.py.)"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import cpustat  # noqa: E402
import e2e_churn  # noqa: E402
import e2e_cni  # noqa: E402
import e2e_overlay  # noqa: E402
import e2e_pods  # noqa: E402
import tables  # noqa: E402
from podnet_cluster import PodnetCluster  # noqa: E402
from rounds import ratio, spread, summarize  # noqa: E402

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
    # the names from before the backends still run
    assert e2e_overlay.path_name("kernel") == "kernel"
    assert e2e_overlay.path_name("podnet-w2") == "podnet-w2"
    for good in ("kernel-vxlan", "kernel-ipip", "kernel-direct", "podnet-vxlan", "podnet-ipip", "podnet-direct",
                 "podnet-same-node", "podnet-direct-w2", "podnet-same-node-w16"):
        assert e2e_overlay.path_name(good) == good
    for bad in ("podnet", "podnet-w0", "podnet-w17", "tapfwd", "podnet-w1x", "kernel-gre", "podnet-gre",
                "podnet-vxlan-w1", "podnet-ipip-w17", "podnet-direct-w0", "kernel-vxlan-w2", "kernel-same-node"):
        with pytest.raises(Exception, match="--path"):
            e2e_overlay.path_name(bad)
    assert e2e_overlay.parse_path("podnet-direct-w2") == ("podnet", "direct", 2, False)
    assert e2e_overlay.parse_path("podnet-w2") == ("podnet", "vxlan", 2, True)
    assert e2e_overlay.parse_path("kernel-ipip") == ("kernel", "ipip", None, False)
    with pytest.raises(SystemExit):
        e2e_overlay.parse_args(["--backend", "gre"])
    with pytest.raises(SystemExit):
        e2e_overlay.parse_args(["--legacy", "--backend", "ipip"])


def test_overlay_default_paths_per_backend_and_legacy():
    a = e2e_overlay.parse_args([])
    assert a.workers == [1] and not a.legacy
    names, un, probe = e2e_overlay.select(a, lambda: (True, ""))
    assert names == ["kernel-vxlan", "podnet-vxlan", "kernel-ipip", "podnet-ipip", "podnet-ipip-mtu", "kernel-direct",
                     "podnet-direct", "podnet-same-node"] and un == {} and probe == (True, "")
    # where the kernel has no ipip its path is left out, with the reason recorded
    names, un, _ = e2e_overlay.select(a, lambda: (False, "kernel ipip: not in this kernel (Unknown device type)"))
    assert "kernel-ipip" not in names and "podnet-ipip" in names
    assert un == {"kernel-ipip": "kernel ipip: not in this kernel (Unknown device type)"}

    def unasked():
        raise AssertionError("ipip probed though no kernel-ipip path was asked for")
    names, _, probe = e2e_overlay.select(e2e_overlay.parse_args(["--backend", "direct", "--workers", "1,2"]), unasked)
    assert names == ["kernel-direct", "podnet-direct", "podnet-direct-w2", "podnet-same-node", "podnet-same-node-w2"]
    assert probe is None
    names, _, _ = e2e_overlay.select(e2e_overlay.parse_args(["--path", "podnet-ipip", "--backend", "vxlan"]), unasked)
    assert names == ["podnet-ipip", "kernel-vxlan", "podnet-vxlan"]
    # the set from before the backends, as it ran
    leg = e2e_overlay.parse_args(["--legacy"])
    assert leg.workers == [1, 2]
    assert e2e_overlay.select(leg, unasked) == (["kernel", "podnet-w1", "podnet-w2"], {}, None)


def test_overlay_backend_paths_are_distinct_clusters():
    from dataplane.spec import parse_spec
    paths = [e2e_overlay.make_path(n) for n in (
        "podnet-vxlan", "podnet-ipip", "podnet-direct", "podnet-same-node", "podnet-direct-w2", "podnet-same-node-w2",
        "podnet-w1", "podnet-w2")]
    specs = [parse_spec(p.spec_text) for p in paths]
    assert len({p.name for p in paths}) == len(paths)
    assert len({s.name for s in specs}) == len(specs)
    for i, a in enumerate(specs):
        for b in specs[i + 1:]:
            assert not a.pod_cidr.overlaps(b.pod_cidr) and not a.fabric_cidr.overlaps(b.fabric_cidr)
    assert [s.backend for s in specs] == ["vxlan", "ipip", "direct", "direct", "direct", "direct", "vxlan", "vxlan"]
    assert [len(s.nodes) for s in specs] == [2, 2, 2, 1, 2, 1, 2, 2]
    assert [p.workers for p in paths] == [1, 1, 1, 1, 2, 2, 1, 2]
    # the earlier path's spec is the one it had (no backend key: vxlan by default)
    assert "backend" not in paths[-1].spec_text and specs[-1].name == "pnbo-w2"
    # the kernel paths keep their namespaces apart too
    k = [e2e_overlay.make_path(n) for n in ("kernel", "kernel-vxlan", "kernel-direct", "kernel-ipip")]
    assert len({x.fabric.ns for x in k}) == 4
    assert len({n.netns for x in k for n in x.nodes}) == 8
    assert [x.nodes[0].mtu for x in k] == [1450, 1450, 1500, 1480]


def test_podnet_paths_are_distinct_clusters():
    """Paths for several worker counts coexist: names, clusters and CIDRs differ."""
    for cls in (e2e_pods.Podnet, lambda w: e2e_overlay.PodnetOverlay(w, legacy=True)):
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


def backend_raw():
    """Two rounds of every backend path (no kernel ipip); podnet-direct at
    0.9 and 0.8 of the same node, its kernel ratio 1.2 and 0.9 of vxlan's."""
    t = lambda a, b, cpu=1.0: [fig(a, cpu=cpu), fig(b, cpu=cpu)]            # noqa: E731
    u = lambda a, b: [fig(rx=a, cpu=500), fig(rx=b, cpu=500)]               # noqa: E731
    return {
        "tcp1": {"kernel-vxlan": t(10, 10), "podnet-vxlan": t(5, 8, 1.5), "podnet-ipip": t(6, 6, 1.2),
                 "podnet-ipip-mtu": t(3, 2, 2.4),
                 "kernel-direct": t(20, 20), "podnet-direct": t(12, 14.4, 1.1), "podnet-same-node": t(13.333333, 18)},
        "tcp4": {"kernel-vxlan": t(10, 10), "podnet-vxlan": t(6, 6, 1.5), "podnet-ipip": t(6, 6, 1.2),
                 "podnet-ipip-mtu": t(3, 3, 2.4),
                 "kernel-direct": t(20, 20), "podnet-direct": t(12, 12, 1.6), "podnet-same-node": t(12, 12)},
        "udp64": {"kernel-vxlan": u(100e3, 100e3), "podnet-vxlan": u(80e3, 80e3), "podnet-ipip": u(90e3, 90e3),
                  "podnet-ipip-mtu": u(90e3, 90e3),
                  "kernel-direct": u(200e3, 200e3), "podnet-direct": u(180e3, 160e3),
                  "podnet-same-node": u(200e3, 200e3)},
    }


NO_IPIP = "kernel ipip: not in this kernel (`ip link add type ipip`: Error: Unknown device type.)"


def backend_doc():
    raw = backend_raw()
    names = list(raw["tcp1"])
    ratios, none = e2e_overlay.backend_ratios(raw, names, {"kernel-ipip": NO_IPIP})
    backends = {n: ("same-node" if n.endswith("same-node") else n.split("-", 1)[1]) for n in names}
    mtu = {"vxlan": 1450, "ipip": 1480, "ipip-mtu": 1480, "direct": 1500, "same-node": 1500}
    return {"bench": "overlay", "layout": "backends", "seconds": 5, "rounds": 2, "workers": [1], "cpus": [0, 1],
            "machine": {"cpu": "TestCPU", "cores": 2, "kernel": "6.x", "python": "3.11", "cython": "3"},
            "date": "2026-01-01T00:00:00Z", "labels": {n: n for n in names}, "backends": backends,
            "kernel_ipip": NO_IPIP, "unavailable": {"kernel-ipip": NO_IPIP},
            "setup": {n: {"backend": backends[n], "pod_mtu": mtu[backends[n]],
                          **({"workers": 1} if n.startswith("podnet") else {})} for n in names},
            "summary": summarize(raw, e2e_overlay.METRICS), "raw": raw, "ratios": ratios, "ratios_none": none}


def test_backend_ratios_within_each_round():
    raw = backend_raw()
    r, none = e2e_overlay.backend_ratios(raw, list(raw["tcp1"]), {"kernel-ipip": NO_IPIP})
    assert r["podnet_direct_vs_kernel_direct_tcp1"]["values"] == pytest.approx([0.6, 0.72])
    assert r["podnet_vxlan_vs_kernel_vxlan_tcp1"]["values"] == pytest.approx([0.5, 0.8])
    # the direct mode's ratio to its kernel over vxlan's, round by round: 0.6/0.5, 0.72/0.8
    assert r["podnet_direct_kernel_ratio_vs_vxlan_tcp1"]["values"] == pytest.approx([1.2, 0.9])
    assert r["podnet_direct_vs_podnet_same_node_tcp1"]["values"] == pytest.approx([0.9, 0.8], rel=1e-6)
    assert r["podnet_direct_vs_podnet_same_node_udp64_rx"]["values"] == pytest.approx([0.9, 0.8])
    assert r["podnet_direct_cpu_per_gb_vs_kernel_direct_tcp4"]["values"] == pytest.approx([1.6, 1.6])
    assert r["podnet_ipip_vs_podnet_ipip_mtu_tcp1"]["values"] == pytest.approx([2.0, 3.0])
    assert r["podnet_ipip_cpu_per_gb_vs_podnet_ipip_mtu_tcp1"]["values"] == pytest.approx([0.5, 0.5])
    # no kernel ipip: neither the ipip ratio nor its comparison with vxlan's, and why
    assert not any(k.startswith("podnet_ipip_vs_kernel") or k.startswith("podnet_ipip_kernel_ratio") for k in r)
    assert none == {"podnet_ipip_vs_kernel_ipip": NO_IPIP, "podnet_ipip_kernel_ratio_vs_vxlan": NO_IPIP}
    # a run without the same-node path says so instead of a ratio
    raw2 = {k: {p: v for p, v in per.items() if p != "podnet-same-node"} for k, per in raw.items()}
    r2, none2 = e2e_overlay.backend_ratios(raw2, list(raw2["tcp1"]))
    assert not any("same_node" in k for k in r2)
    assert none2["podnet_direct_vs_podnet_same_node"] == "podnet-same-node was not in this run"
    assert none2["podnet_ipip_vs_kernel_ipip"] == "kernel-ipip was not in this run"


def test_backend_ratios_per_worker_count():
    raw = backend_raw()
    for k in raw:
        raw[k]["podnet-direct-w2"] = raw[k]["podnet-direct"]
        raw[k]["podnet-same-node-w2"] = raw[k]["podnet-same-node"]
    r, _ = e2e_overlay.backend_ratios(raw, list(raw["tcp1"]))
    assert r["podnet_direct_w2_vs_podnet_same_node_w2_tcp1"]["values"] == pytest.approx([0.9, 0.8], rel=1e-6)
    assert r["podnet_direct_w2_vs_podnet_direct_tcp1"]["values"] == [1.0, 1.0]
    assert "podnet_direct_w2_kernel_ratio_vs_vxlan_tcp1" not in r        # no podnet-vxlan-w2 in this run


def test_overlay_table_per_backend(monkeypatch):
    doc = backend_doc()
    monkeypatch.setattr(tables, "load", lambda name: doc)
    text = tables.overlay()
    lines = text.splitlines()
    assert lines[0].startswith("2 interleaved rounds of 5 s per figure on CPUs 0,1; TestCPU")
    assert f"No Linux IP-in-IP baseline in this run: {NO_IPIP}\n" in text
    assert "| VXLAN: Linux vxlan (flannel.1) + bridges | 1450 | 10.0 (10.0–10.0) |" in text
    assert "| IP-in-IP: **podnet**, 1 worker (TSO segmented in the fast path) | 1480 | 6.0 (6.0–6.0) | 6.0 (6.0–6.0) " \
        "| 90 (90–90) |" in text
    assert "| IP-in-IP: **podnet**, 1 worker (pods without TSO: MTU-sized frames) | 1480 | 2.5 (2.0–3.0) |" in text
    # ipip's two ways, within each round: 6/3 and 6/2
    assert "| podnet-ipip (segmented here) / podnet-ipip-mtu (MTU-sized frames), TCP 1 stream | 2.50 (2.00–3.00) " \
        "| ≥ 1.0: met |" in text
    assert "| direct routing: Linux routing (host-gw: pod CIDR via node IP) + bridges | 1500 | 20.0 (20.0–20.0) |" in text
    assert "| same node: **podnet**, 1 worker (the direct path's pod MTU) | 1500 |" in text
    assert "| podnet-direct / kernel-direct, TCP 1 stream | 0.66 (0.60–0.72) | ≥ 0.9: **not met** (0 of 2 rounds) |" \
        in text
    assert "| (podnet-direct / kernel-direct) / (podnet-vxlan / kernel-vxlan), TCP 1 stream | 1.05 (0.90–1.20) " \
           "| ≥ 1.0: **not met** (1 of 2 rounds) |" in text
    assert "| podnet-direct / podnet-same-node, TCP 1 stream | 0.85 (0.80–0.90) | ≥ 0.9: **not met** (1 of 2 rounds) |" \
        in text
    assert "| podnet-direct / podnet-same-node, TCP 4 streams | 1.00 (1.00–1.00) | ≥ 0.9: met |" in text
    assert "| podnet-direct / kernel-direct, CPU-s per GB, TCP 4 streams | 1.60 (1.60–1.60) | ≤ 1.5: **not met** " \
           "(0 of 2 rounds) |" in text
    assert f"| podnet-ipip / kernel-ipip | none: {NO_IPIP} | |" in text
    assert f"| (podnet-ipip / kernel-ipip) / (podnet-vxlan / kernel-vxlan) | none: {NO_IPIP} | |" in text
    # every ratio of the file has its row, and each ratio the run could not take one
    ratio_rows = [line for line in lines if line.startswith("| podnet-") or line.startswith("| (podnet-")]
    assert len(ratio_rows) == len(doc["ratios"]) + len(doc["ratios_none"])
    assert "| same node: **podnet**, 1 worker (the direct path's pod MTU) | 1.00 (1.00–1.00) |" in text   # CPU table
    # kernel paths alone: no ratio table, and no word on ipip when it was not asked for
    kernel_only = {n for n in doc["backends"] if n.startswith("kernel")}
    for k in ("tcp1", "tcp4", "udp64"):
        doc["summary"][k] = {p: v for p, v in doc["summary"][k].items() if p in kernel_only}
    doc.update(backends={p: b for p, b in doc["backends"].items() if p in kernel_only}, ratios={}, ratios_none={},
               unavailable={})
    text = tables.overlay()
    assert "ratio (within each round)" not in text and "IP-in-IP baseline" not in text
    assert "| direct routing: Linux routing (host-gw: pod CIDR via node IP) + bridges | 1500 |" in text


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


# ---- pod churn (bench/e2e_churn.py) ----------------------------------------------

def test_p99_is_the_nearest_rank_and_latency_in_ms():
    assert e2e_churn.p99(list(range(1, 101))) == 99
    assert e2e_churn.p99(list(range(1, 201))) == 198
    assert e2e_churn.p99([3, 1, 2]) == 3                   # fewer than 100: the largest
    assert e2e_churn.p99([]) is None
    lat = e2e_churn.latency([0.010, 0.030, 0.020])
    assert lat == {"median_ms": pytest.approx(20.0), "p99_ms": pytest.approx(30.0), "n": 3}
    assert e2e_churn.latency([]) == {"median_ms": None, "p99_ms": None, "n": 0}


def test_bytes_received_sums_every_connection_in_ss_output():
    text = ("0 0 10.212.1.2:5302 10.212.0.2:40000\n\t cubic rto:204 bytes_sent:120 bytes_acked:121 "
            "bytes_received:4096 segs_out:8\n"
            "0 0 10.212.1.2:5302 10.212.0.2:40002\n\t cubic bytes_received:1000000000 notbytes_received:7\n")
    assert e2e_churn.bytes_received(text) == 4096 + 1000000000
    assert e2e_churn.bytes_received("") == 0


def test_churn_arguments():
    a = e2e_churn.parse_args([])
    assert (a.pods, a.rounds, a.seconds, a.cli_calls) == (200, 3, 10.0, 5)
    assert a.out == str(e2e_churn.RESULTS / "churn.json")
    q = e2e_churn.parse_args(["--quick"])
    assert (q.pods, q.rounds, q.seconds, q.cli_calls) == (10, 1, 2.0, 2)
    assert q.out == str(e2e_churn.HERE / "build" / "churn-quick.json")   # a smoke run is no result
    assert e2e_churn.parse_args(["--quick", "--pods", "40", "--out", "/tmp/x.json"]).pods == 40
    assert e2e_churn.parse_args(["--pods", str(e2e_churn.MAX_PODS)]).pods == e2e_churn.MAX_PODS
    for bad in (["--pods", "1"], ["--pods", str(e2e_churn.MAX_PODS + 1)], ["--pods", "x"], ["--rounds", "0"],
                ["--seconds", "-1"], ["--cli-calls", "-1"]):
        with pytest.raises(SystemExit):
            e2e_churn.parse_args(bad)


def test_request_timer_times_agent_requests_by_op_and_restores():
    class FakeCluster:
        calls = []

        @staticmethod
        def request(path, op, timeout=10.0, **args):
            FakeCluster.calls.append((path, op, args))
            if op == "boom":
                raise RuntimeError("agent refused")
            return {"ok": op}
    real = FakeCluster.request
    with e2e_churn.RequestTimer(FakeCluster) as rt:
        assert FakeCluster.request("/s", "pod_add", timeout=30.0, name="x") == {"ok": "pod_add"}
        FakeCluster.request("/s", "services_apply", upsert=[])
        FakeCluster.request("/t", "services_apply", upsert=[])
        with pytest.raises(RuntimeError):
            FakeCluster.request("/s", "boom")               # a failed request is timed too
    assert FakeCluster.request is real
    assert {op: len(v) for op, v in rt.by_op.items()} == {"pod_add": 1, "services_apply": 2, "boom": 1}
    assert rt.count() == 4 and rt.seconds() >= 0
    assert FakeCluster.calls[0] == ("/s", "pod_add", {"name": "x"})


def churn_round(gbps, window, ops=None):
    out = {"gbps": gbps, "window_s": window, "cores_busy": 1.9}
    if ops is not None:
        out.update(ops_per_s=ops, adds_per_s=ops * 0.6, deletes_per_s=ops * 1.5, add_ms_median=30.0,
                   add_ms_p99=90.0, delete_ms_median=12.0, delete_ms_p99=20.0, endpoints_max=200,
                   agent_ms_per_add=20.0, agent_requests_per_add=3, agent_ms_per_delete=8.0,
                   agent_requests_per_delete=3)
    return out


def churn_doc(cli=True):
    """Two rounds: 60 and 40 pod operations a second; the stream at 0.95 and
    0.85 of idle."""
    raw = {"stream": {"idle": [churn_round(4.0, 10.0), churn_round(6.0, 10.0)],
                      "churn": [churn_round(3.8, 7.0, ops=60.0), churn_round(5.1, 9.0, ops=40.0)]}}
    summary = summarize(raw, {"stream": e2e_churn.METRICS})
    ratios = {"churn_vs_idle_gbps": ratio(raw, "stream", "gbps", "churn", "idle")}
    return {"bench": "churn", "rounds": 2, "seconds": 10.0, "pods": 200, "service": "default/churn",
            "machine": {"cpu": "TestCPU", "cores": 2, "kernel": "6.x", "python": "3.11", "cython": "3"},
            "date": "2026-01-01T00:00:00Z", "summary": summary, "ratios": ratios,
            "target": e2e_churn.targets(summary, ratios), "raw": raw,
            "cli": {"calls": 5, "add_ms": spread([450.0, 500.0, 520.0]), "delete_ms": spread([400.0, 420.0])}
            if cli else None}


def test_churn_ratio_and_targets_per_round():
    d = churn_doc()
    assert d["ratios"]["churn_vs_idle_gbps"]["values"] == pytest.approx([0.95, 0.85])
    # one round of two below 50 operations a second, one below 0.9 of idle: neither target met
    assert d["target"] == {"ops_per_s_at_least_50": False, "stream_within_10_percent": False}
    s = d["summary"]
    s["stream"]["churn"]["ops_per_s"] = spread([50.0, 80.0])
    assert e2e_churn.targets(s, {"churn_vs_idle_gbps": spread([0.9, 1.02])}) == {
        "ops_per_s_at_least_50": True, "stream_within_10_percent": True}


def test_churn_table(monkeypatch):
    doc = churn_doc()
    monkeypatch.setattr(tables, "load", lambda name: doc)
    text = tables.churn()
    assert text.startswith("2 interleaved rounds: an idle window of 10 s and a churn pass of 200 pods")
    assert "TestCPU, 2 vCPU" in text
    assert "| idle | 5.00 (4.00–6.00) | 10.0 (10.0–10.0) | 1.90 (1.90–1.90) |" in text
    assert "| during the churn of 200 pods | 4.45 (3.80–5.10) | 8.0 (7.0–9.0) |" in text
    assert "| pod adds + deletes per second (in process) | 50.0 (40.0–60.0) | ≥ 50: **not met** (1 of 2 rounds) |" \
        in text
    assert "| of a pod add, waiting on the agents (3 requests), ms | 20.0 (20.0–20.0) | |" in text
    assert "| `podnet pod add`, ms (the CLI: a process per call; 5 calls) | 500 (450–520) | |" in text
    assert "| stream during churn / idle | 0.90 (0.85–0.95) | ≥ 0.9: **not met** (1 of 2 rounds) |" in text
    doc = churn_doc(cli=False)
    text = tables.churn()
    assert "podnet pod add" not in text and "| stream during churn / idle |" in text


# ---- CNI latency (bench/e2e_cni.py) -------------------------------------------------

def test_importtime_counts_top_level_imports_once():
    stderr = ("import time: self [us] | cumulative | imported package\n"
              "import time:       100 |        100 |   encodings.utf_8\n"
              "import time:       300 |        400 | encodings\n"
              "import time:      1000 |       1000 |     ssl\n"
              "import time:       500 |       1500 |   pyroute2.netlink\n"
              "import time:      2000 |     200000 | dataplane.cluster\n"
              "Traceback-free noise\n")
    total, top = e2e_cni.parse_importtime(stderr)
    assert total == pytest.approx(0.4 + 200.0)               # nested lines are inside their parent's cumulative
    assert top == [("dataplane.cluster", 200.0), ("encodings", 0.4)]


def cni_round(add, add99, dele, dele99, wrapper=None, podman=False):
    r = {"add_ms_median": add, "add_ms_p99": add99, "del_ms_median": dele, "del_ms_p99": dele99,
         "add_ms": [add, add99], "del_ms": [dele, dele99]}
    if wrapper is not None:
        r["wrapper_ms_median"] = wrapper
        r.update({f"net_{k}": r[k] - wrapper for k in e2e_cni.LAT})
    if podman:
        r.update(run_ms_median=900.0, run_ms_p99=1000.0, rm_ms_median=500.0, rm_ms_p99=600.0,
                 run_ms=[900.0, 1000.0], rm_ms=[500.0, 600.0], del_calls_per_rm=1.0)
    return r


def cni_raw():
    return {"cni": {"podnet": [cni_round(300, 400, 200, 250), cni_round(330, 420, 210, 260)],
                    "reference": [cni_round(30, 40, 20, 25, wrapper=4), cni_round(22, 24, 21, 26, wrapper=4)],
                    "podman": [cni_round(450, 500, 300, 320, podman=True), cni_round(330, 500, 300, 320, podman=True)]}}


def test_cni_ratios_within_each_round_and_against_the_reference_less_the_wrapper():
    r = e2e_cni.cni_ratios(cni_raw())
    assert r["podnet_vs_reference_add_p99"]["values"] == pytest.approx([10.0, 17.5])
    assert r["podnet_vs_reference_net_add_p99"]["values"] == pytest.approx([400 / 36, 420 / 20])
    assert r["podnet_vs_reference_net_del_median"]["values"] == pytest.approx([200 / 16, 210 / 17])
    assert r["podman_vs_podnet_add_median"]["values"] == pytest.approx([1.5, 1.0])
    assert e2e_cni.target(r) == {"add_p99_no_slower_than_reference": False}
    fast = {"cni": {"podnet": [cni_round(10, 20, 5, 6)], "reference": [cni_round(20, 30, 20, 25, wrapper=5)]}}
    r = e2e_cni.cni_ratios(fast)
    assert r["podnet_vs_reference_net_add_p99"]["values"] == pytest.approx([0.8])
    assert "podman_vs_podnet_add_median" not in r
    assert e2e_cni.target(r) == {"add_p99_no_slower_than_reference": True}


def test_cni_pooled_latency_over_every_round():
    p = e2e_cni.pooled(cni_raw())
    assert p["podnet"]["add"]["n"] == 4 and p["podnet"]["add"]["p99_ms"] == pytest.approx(420.0)
    assert p["reference"]["del"]["median_ms"] == pytest.approx(23.0)
    assert p["podman"]["run"]["p99_ms"] == pytest.approx(1000.0) and "run" not in p["podnet"]


def cni_doc(podman=True, breakdown=True):
    raw = cni_raw()
    if not podman:
        raw["cni"].pop("podman")
    doc = {"bench": "cni", "rounds": 2, "iterations": 100, "podman_iterations": 10,
           "machine": {"cpu": "TestCPU", "cores": 2, "kernel": "6.x", "python": "3.11", "cython": "3"},
           "date": "2026-01-01T00:00:00Z", "reference_plugins": {"package": "1.1.1+ds1-3+b5"},
           "summary": summarize(raw, e2e_cni.METRICS), "ratios": e2e_cni.cni_ratios(raw), "raw": raw}
    if breakdown:
        lat = lambda ms: {"median_ms": ms, "p99_ms": ms, "n": 10}          # noqa: E731
        doc["breakdown"] = {
            "runs": 10, "python_startup": lat(38.0), "python_startup_no_site": lat(13.0),
            "version_via_launcher": lat(55.0), "imports_version": {"total_ms": 30.0, "top": []},
            "imports_add": {"total_ms": 250.0, "top": [{"module": "dataplane.cluster", "ms": 200.0},
                                                       {"module": "site", "ms": 20.0}]},
            "in_process_add": lat(120.0), "agent_per_add": lat(90.0), "in_process_del": lat(60.0),
            "agent_per_del": lat(20.0)}
    return doc


def test_cni_table(monkeypatch):
    doc = cni_doc()
    monkeypatch.setattr(tables, "load", lambda name: doc)
    text = tables.cni()
    assert text.startswith("2 interleaved rounds of 100 ADD + DEL pairs per path and 10 containers for podman")
    assert "| **podnet-cni**, run as a runtime runs it (its launcher) | 315.0 (300.0–330.0) | 410.0 (400.0–420.0) " \
           "| 205.0 (200.0–210.0) | 255.0 (250.0–260.0) |" in text
    assert "| bridge + host-local (containernetworking-plugins 1.1.1+ds1-3+b5), under `ip netns exec` " \
           "| 26.0 (22.0–30.0) | 32.0 (24.0–40.0) |" in text
    assert "| the same, less `ip netns exec` (4.0 ms, the median of its rounds' medians) | 22.0 (18.0–26.0) " \
           "| 28.0 (20.0–36.0) |" \
        in text
    assert "| podnet-cni inside podman 4.3 (the plugin's own time) | 390.0 (330.0–450.0) |" in text
    assert "| the whole `podman run -d` (ADD columns) and `podman rm -f` (DEL columns) | 900 (900–900) " \
           "| 1,000 (1,000–1,000) | 500 (500–500) | 600 (600–600) |" in text
    assert "| podnet / reference less the wrapper, ADD p99 | 16.06 (11.11–21.00) | ≤ 1.0: **not met** (0 of 2 rounds) |" \
        in text
    assert "| podnet-cni in podman / run directly, ADD median | 1.25 (1.00–1.50) | |" in text
    assert "| imports of an ADD (`-X importtime`; biggest, ms: dataplane.cluster 200, site 20) | 250.0 |" in text
    assert "| of it, waiting on the agent | 90.0 |" in text
    doc = cni_doc(podman=False, breakdown=False)
    text = tables.cni()
    assert "podman" not in text and "Where a podnet-cni ADD's time goes" not in text
    assert text.startswith("2 interleaved rounds of 100 ADD + DEL pairs per path, one process per command")


def test_cni_direct_path_uses_the_installed_launcher_and_config(tmp_path, monkeypatch):
    """What the podnet path runs: the launcher cni.install() wrote, with the
    request config libcni derives from the conflist and a runtime's CNI_*."""
    monkeypatch.setenv("PODNET_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("PODNET_STATE_DIR", str(tmp_path / "state"))
    with e2e_cni.Direct(tmp_path) as d:
        assert d.bin_path == tmp_path / "podnet" / "bin" / "podnet-cni" and os.access(d.bin_path, os.X_OK)
        assert d.config["type"] == "podnet-cni" and d.config["name"] == d.conflist["name"]
        assert d.config["cniVersion"] == d.conflist["cniVersion"]
        assert d.config["runDir"] == str((tmp_path / "run").resolve())
        env = d.env("ADD", "c" * 64, "pncb-1-2", "pncb-1-2")
        assert env["CNI_NETNS"] == "/run/netns/pncb-1-2" and env["CNI_PATH"] == str(d.bin_path.parent)
        assert env["CNI_ARGS"] == "IgnoreUnknown=1;K8S_POD_NAME=pncb-1-2" and env["CNI_IFNAME"] == "eth0"
        assert not any(k.startswith("PODNET_") for k in env)     # the config finds the cluster, not the env
        # VERSION through the launcher, as a runtime would run it
        dt, out = e2e_cni.exec_plugin([str(d.bin_path)], {**e2e_cni.PLAIN_ENV, "CNI_COMMAND": "VERSION"}, {})
        assert "1.1.0" in out["supportedVersions"] and dt > 0
        # a failing command is one clear error with the plugin's answer
        with pytest.raises(RuntimeError, match=r"ADD by .*podnet-cni failed \(1\): .*CNI_NETNS does not exist"):
            e2e_cni.exec_plugin([str(d.bin_path)], env, d.config)
    assert not d.bin_path.exists() and not (tmp_path / "podnet" / "net.d" / "podnet.conflist").exists()


def test_podman_wrapper_times_each_command_and_passes_everything_through(tmp_path):
    """The C wrapper podman's bin dir gets: the real plugin's stdin, stdout,
    arguments and exit status pass through; one line per command is logged."""
    if not shutil.which("gcc"):
        pytest.skip("needs gcc")
    real = tmp_path / "real"
    real.write_text("#!/bin/sh\nread line\necho \"got $line $1 $CNI_COMMAND\"\nsleep 0.05\n"
                    "[ \"$CNI_COMMAND\" = DEL ] && exit 3\nexit 0\n")
    real.chmod(0o755)
    log = tmp_path / "times.log"
    exe = e2e_cni.build_wrapper(tmp_path / "podnet-cni", real, log)
    assert not (tmp_path / "podnet-cni.c").exists()
    env = {**e2e_cni.PLAIN_ENV, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc"}
    r = subprocess.run([str(exe), "arg1"], input="hello\n", env=env, capture_output=True, text=True, timeout=10)
    assert (r.returncode, r.stdout) == (0, "got hello arg1 ADD\n")
    r = subprocess.run([str(exe)], input="x\n", env={**env, "CNI_COMMAND": "DEL", "CNI_CONTAINERID": ""},
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 3
    (add, dele) = e2e_cni.read_wrapper_log(log)
    assert (add["cmd"], add["cid"], add["rc"]) == ("ADD", "abc", 0) and 0.05 <= add["s"] < 5
    assert (dele["cmd"], dele["cid"], dele["rc"]) == ("DEL", "-", 3)
    assert e2e_cni.read_wrapper_log(tmp_path / "none.log") == []


def test_cni_arguments():
    a = e2e_cni.parse_args([])
    assert (a.iterations, a.podman_iterations, a.rounds, a.breakdown_runs) == (100, 10, 3, 10)
    assert a.out == str(e2e_cni.RESULTS / "cni.json") and not a.no_podman
    q = e2e_cni.parse_args(["--quick", "--no-podman"])
    assert (q.iterations, q.podman_iterations, q.rounds, q.breakdown_runs) == (3, 1, 1, 2) and q.no_podman
    assert q.out == str(e2e_cni.HERE / "build" / "cni-quick.json")
    for bad in (["--iterations", "0"], ["--rounds", "x"], ["--podman-iterations", "-2"]):
        with pytest.raises(SystemExit):
            e2e_cni.parse_args(bad)


# ---- tables whose results do not exist yet -----------------------------------------

def test_a_table_without_its_results_file_is_left_out(tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "RESULTS", tmp_path)
    with pytest.raises(tables.MissingResults, match="churn.json"):
        tables.load("churn")
    (tmp_path / "churn.json").write_text(json.dumps(churn_doc()))
    assert set(tables.render()) == {"churn"}                 # the only one with a results file here
    # a block whose results file is missing is an error of --check, in the README or a docs page
    fake = tmp_path / "README.md"
    fake.write_text(f"x\n<!-- bench:churn -->\n{tables.churn()}\n<!-- /bench:churn -->\n"
                    "<!-- bench:cni -->\nold\n<!-- /bench:cni -->\n")
    monkeypatch.setattr(tables, "README", fake)
    monkeypatch.setattr(tables, "DOCS", tmp_path / "docs")
    assert tables.main(["--check"]) == 1
    fake.write_text(f"x\n<!-- bench:churn -->\n{tables.churn()}\n<!-- /bench:churn -->\n")
    assert tables.main(["--check"]) == 0
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "benchmarks.md").write_text("<!-- bench:cni -->\nold\n<!-- /bench:cni -->\n")
    assert tables.main(["--check"]) == 1


# ---- where the blocks live: README.md and docs/*.md, each block in one page ------------

@pytest.fixture
def two_tables(tmp_path, monkeypatch):
    """Pages in tmp_path, and two tables (a, b) rendered from nothing."""
    (tmp_path / "docs").mkdir()
    monkeypatch.setattr(tables, "README", tmp_path / "README.md")
    monkeypatch.setattr(tables, "DOCS", tmp_path / "docs")
    monkeypatch.setattr(tables, "TABLES", {"a": lambda: "| a | 1.0 (0.9–1.1) |", "b": lambda: "| b | 2.0 |"})
    return tmp_path


def block(name, body):
    return f"<!-- bench:{name} -->\n{body}\n<!-- /bench:{name} -->\n"


def test_blocks_live_in_any_page_each_in_exactly_one(two_tables, capsys):
    readme, bench = two_tables / "README.md", two_tables / "docs" / "benchmarks.md"
    readme.write_text("# x\n" + block("a", "| a | 1.0 (0.9–1.1) |"))
    bench.write_text("# b\n" + block("b", "| b | 2.0 |"))
    (two_tables / "docs" / "other.md").write_text("no tables\n")
    assert [tables.page_name(p) for p in tables.pages()] == ["README.md", "docs/benchmarks.md", "docs/other.md"]
    assert tables.main(["--check"]) == 0
    assert {n: [tables.page_name(p) for p, _ in c] for n, c in tables.located().items()} == \
        {"a": ["README.md"], "b": ["docs/benchmarks.md"]}
    # missing: no page holds b
    bench.write_text("# b\n")
    assert tables.main(["--check"]) == 1
    assert "no page has a bench:b block" in capsys.readouterr().out
    # duplicated: in two pages, or twice in one
    bench.write_text(block("b", "| b | 2.0 |") + block("a", "| a | 1.0 (0.9–1.1) |"))
    assert tables.main(["--check"]) == 1
    assert "bench:a is held 2 times, in README.md, docs/benchmarks.md" in capsys.readouterr().out
    bench.write_text(block("b", "| b | 2.0 |") * 2)
    assert tables.main(["--check"]) == 1
    assert "bench:b is held 2 times, in docs/benchmarks.md, docs/benchmarks.md" in capsys.readouterr().out
    # differs, in a docs page
    bench.write_text(block("b", "| b | 2.1 |"))
    assert tables.main(["--check"]) == 1
    assert "docs/benchmarks.md's bench:b table differs" in capsys.readouterr().out
    bench.write_text(block("b", "| b | 2.0 |"))
    assert tables.main(["--check"]) == 0


def test_write_rewrites_each_block_in_the_page_that_holds_it(two_tables):
    readme, bench, other = (two_tables / "README.md", two_tables / "docs" / "benchmarks.md",
                            two_tables / "docs" / "other.md")
    readme.write_text("# x\nprose\n" + block("a", "old a") + "after\n")
    bench.write_text("# b\n" + block("b", "old\nb") + "more prose\n")
    other.write_text("untouched\n")
    before = other.stat().st_mtime_ns
    tables.main(["--write"])
    assert readme.read_text() == "# x\nprose\n" + block("a", "| a | 1.0 (0.9–1.1) |") + "after\n"
    assert bench.read_text() == "# b\n" + block("b", "| b | 2.0 |") + "more prose\n"
    assert other.read_text() == "untouched\n" and other.stat().st_mtime_ns == before
    assert tables.main(["--check"]) == 0


# ---- fast-path stages of every backend (bench/stages.py, bench/instructions.py) -----

def stage_spread(v):
    return spread([v, v])


def stages_docs():
    """The committed stages and instructions files plus the tunnel rows of
    the backends: IP-in-IP at 20 Mpps, direct at 30; instructions with a
    baseline (one stage 6 % over)."""
    st = json.loads((tables.RESULTS / "stages.json").read_text())
    ins = json.loads((tables.RESULTS / "instructions.json").read_text())
    for key, mpps in (("ipip_encap", 20.0), ("ipip_decap", 20.0), ("direct_encap", 30.0), ("direct_decap", 30.0)):
        st["summary"][key] = {"fast_mpps": stage_spread(mpps), "net_mpps": stage_spread(mpps + 2),
                              "python_mpps": stage_spread(0.04), "ratio_vs_python": stage_spread(mpps / 0.04)}
        ins["results"][key] = 300.0
    ins["baseline"] = {"bridge": ins["results"]["bridge"], "vxlan_encap": 400.0}
    ins["results"]["vxlan_encap"] = 424.0
    ins["growth"] = {"bridge": 1.0, "vxlan_encap": 1.06}
    return st, ins


def test_stages_table_has_a_row_per_tunnel_and_instruction_growth(monkeypatch):
    st, ins = stages_docs()
    monkeypatch.setattr(tables, "load", lambda name: {"stages": st, "instructions": ins}[name])
    text = tables.stages()
    assert "| IP-in-IP encap (parse, route, outer IPv4) | 20.0 (20.0–20.0) | 22.0 (22.0–22.0) | 0.040 (0.040–0.040) " \
           "| 500 (500–500)× | 300.0 |  |" in text
    assert "| direct routing in (source check, route) | 30.0 (30.0–30.0) |" in text
    assert "| instructions per packet | before | now | now / before | target: ≤ 1.05 |" in text
    assert "| vxlan encap | 400.0 | 424.0 | 1.060 | **not met** |" in text
    assert f"| bridge | {ins['results']['bridge']:,.1f} | {ins['results']['bridge']:,.1f} | 1.000 | met |" in text


def test_stages_table_of_a_file_from_before_the_backends(monkeypatch):
    st = json.loads((tables.RESULTS / "stages.json").read_text())
    ins = json.loads((tables.RESULTS / "instructions.json").read_text())
    for k in ("ipip_encap", "ipip_decap", "direct_encap", "direct_decap"):
        st["summary"].pop(k, None)
        ins["results"].pop(k, None)
    ins.pop("growth", None)
    monkeypatch.setattr(tables, "load", lambda name: {"stages": st, "instructions": ins}[name])
    text = tables.stages()
    assert "IP-in-IP" not in text and "direct routing" not in text and "now / before" not in text
    assert "| VXLAN encap (parse, route, encap) |" in text


def test_stage_cases_and_subsets():
    import stages
    keys = [c[0] for c in stages.cases()]
    assert keys[:9] == ["bridge", "bridge_burst32", "bridge_burst1", "vxlan_encap", "vxlan_decap",
                        "ipip_encap", "ipip_decap", "direct_encap", "direct_decap"]
    assert [c[0] for c in stages.cases(["ipip_decap", "bridge"])] == ["bridge", "ipip_decap"]
    with pytest.raises(ValueError, match="no such stage: gre_encap"):
        stages.cases(["gre_encap"])
    # a subset's summary has its own keys and no scaling it cannot compute
    one = {"fast_mpps": 1.0, "net_mpps": 2.0, "python_mpps": 0.01, "ratio_vs_python": 100.0,
           "fast_ns_per_packet": 1000.0}
    summary, scaling = stages.summarize([{"ipip_encap": one}, {"ipip_encap": {**one, "fast_mpps": 3.0}}])
    assert set(summary) == {"ipip_encap"} and scaling == {}
    assert summary["ipip_encap"]["fast_mpps"]["median"] == 2.0


def test_instruction_growth():
    import instructions
    assert instructions.growth({"bridge": 231.0, "ipip_encap": 300.0}, {"bridge": 220.0}) == {"bridge": 1.05}
    assert set(instructions.SETUP) >= {f"{t}_{s}" for t in ("vxlan", "ipip", "direct") for s in ("encap", "decap")}
