"""Cross-node pod-to-pod throughput over a VXLAN overlay:

  kernel     two flannel-style nodes built from Linux's own devices
             (veth pods on cni0, flannel.1 vxlan, veth uplinks into a fabric
             bridge in its own namespace; tests/kernel_node.py)

  podnet-wN  two podnet nodes (agents forwarding on N worker threads each,
             TAPs with vnet headers, encap/decap in the Cython fast path,
             UDP-tunnel GSO on the uplinks), one cluster per count in --workers

The minimal C TAP forwarder of e2e_pods.py has no VXLAN (it copies frames
between two TAPs and nothing more), so it has no cross-node path here.

A path is an object with `name`, `label`, __enter__/__exit__ and
pods() -> (client netns, server netns, server IP). iperf3 from a pod on node
1 to a pod on node 2: TCP with 1 and 4 streams, UDP with 64-byte payloads
(the receiver's packets/s), and the machine's CPU seconds per GB received and
cores busy around each run, measured as in e2e_pods.py (/proc/stat, all
processes; UDP's bytes are the 64-byte payloads received). The paths are up
at once and measured in interleaved rounds (bench/rounds.py): medians and
min-max over the rounds, ratios within a round. --cpus pins the run and all
it starts to a CPU list. Writes bench/results/overlay.json and overlay.png
when every default path ran, or --out FILE (and FILE's .png) instead. Needs
root.

    python bench/e2e_overlay.py [--seconds 5] [--rounds 3] [--workers 1,2] [--cpus 0-1]
                                [--path kernel --path podnet-w2] [--out FILE]
"""
import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from cpustat import pin  # noqa: E402
from e2e_pods import KINDS, cpu_list, e2e_ratios, iperf, parse_workers, plot, print_summary  # noqa: E402
from kernel_node import Fabric, KernelNode  # noqa: E402
from podnet_cluster import PodnetCluster  # noqa: E402
from rounds import all_up, measure_paths, summarize  # noqa: E402

FABRIC_MTU = 1500


class KernelOverlay:
    """Two KernelNodes (one pod each) on a fabric bridge, peered both ways."""
    name = "kernel"
    label = "Linux vxlan (flannel.1) + cni0 bridge + veth"

    def __init__(self, prefix="pnbk", fabric_ns="pnbench-kfab", underlay="172.30.252",
                 pod_cidrs=("10.247.1.0/24", "10.247.2.0/24"), vni=1, port=4789):
        self.fabric = Fabric(fabric_ns, "br-fabric", mtu=FABRIC_MTU)
        self.nodes = [KernelNode(f"n{i + 1}", fabric_ns=fabric_ns, fabric_bridge="br-fabric",
                                 underlay_ip=f"{underlay}.{i + 1}", underlay_prefixlen=24,
                                 pod_cidr=cidr, vni=vni, port=port, fabric_mtu=FABRIC_MTU,
                                 pods=1, prefix=prefix)
                      for i, cidr in enumerate(pod_cidrs)]

    def __enter__(self):
        made = []
        try:
            for part in (self.fabric, *self.nodes):
                part.__enter__()
                made.append(part)
            a, b = self.nodes
            a.peer_with(b)
            b.peer_with(a)
            # the first packet would otherwise wait on ARP for the peer VTEP
            a.exec(0, "ping", "-c", "1", "-W", "2", b.pods[0]["ip"], timeout=10)
        except BaseException:
            for part in reversed(made):
                part.__exit__(None, None, None)
            raise
        return self

    def pods(self):
        a, b = self.nodes
        return a.pods[0]["netns"], b.pods[0]["netns"], b.pods[0]["ip"]

    def describe(self):
        """flannel.1 as built (MTU, outer UDP checksum, DF, GSO size), to read beside the numbers."""
        a = self.nodes[0]
        info = a.vxlan_info()
        return {"pod_mtu": a.mtu, "fabric_mtu": a.fabric_mtu, "vni": info["id"], "port": info["port"],
                "udp_csum": info.get("udp_csum"), "df": info.get("df"),
                "gso_max_size": info.get("gso_max_size")}

    def __exit__(self, *exc):
        for part in reversed((self.fabric, *self.nodes)):
            part.__exit__(None, None, None)
        return False


class PodnetOverlay(PodnetCluster):
    """Two podnet nodes (one pod each) on podnet's own fabric: agents, TAPs
    with vnet headers, encap/decap in the Cython fast path, on `workers`
    threads per agent; a cluster of its own per worker count."""

    def __init__(self, workers=1):
        if not 1 <= workers <= 16:
            raise ValueError(f"workers must be 1..16, got {workers}")
        self.name = f"podnet-w{workers}"
        self.label = (f"podnet agents (Cython VXLAN, UDP-tunnel GSO), "
                      f"{workers} worker{'s' if workers > 1 else ''} each")
        super().__init__(f"cluster: {{name: pnbo-w{workers}, podCIDR: 10.245.{4 * workers}.0/22, "
                         f"fabricCIDR: 172.28.{workers}.0/24}}\n"
                         "nodes: [{name: n1}, {name: n2}]\n"
                         "pods: [{name: a, node: n1}, {name: b, node: n2}]\n", workers=workers)

    def pods(self):
        return self.pod_ns("a"), self.pod_ns("b"), self.state.pods["b"].ip

    def describe(self):
        st, c = self.request("n1", "status"), self.request("n1", "counters")
        if st["workers"] != self.workers:
            raise RuntimeError(f"{self.name}: the agent runs {st['workers']} workers, asked for {self.workers}")
        return {"workers": st["workers"], "gso_path": st["gso_path"], "overlay": c["overlay"],
                "frames_per_burst": c["io"]["frames_per_burst"],
                "drops": {k: v for k, v in c["drops"].items() if v}}


RESULTS = Path(__file__).resolve().parent / "results"

CPU = ["cpu_s_per_gb", "cores_busy"]
METRICS = {"tcp1": ["gbps", *CPU], "tcp4": ["gbps", *CPU], "udp64": ["rx_pps", *CPU]}
PATH_NAME = re.compile(r"kernel|podnet-w(\d+)")


def path_name(text):
    """--path: kernel or podnet-wN (N worker threads per agent, 1..16)."""
    m = PATH_NAME.fullmatch(text)
    if not m or (m.group(1) and not 1 <= int(m.group(1)) <= 16):
        raise argparse.ArgumentTypeError(f"--path takes kernel or podnet-wN (N from 1 to 16), got {text!r}")
    return text


def make_path(name):
    return KernelOverlay() if name == "kernel" else PodnetOverlay(int(name.rsplit("w", 1)[1]))


def measure_kind(path, kind, seconds):
    a, b, ip = path.pods()
    if kind == "udp64":
        return iperf(a, b, ip, seconds, udp=True)
    return iperf(a, b, ip, seconds, streams=4 if kind == "tcp4" else 1)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=parse_workers, default=[1, 2],
                    help="worker counts, one podnet path each (default 1,2)")
    ap.add_argument("--cpus", type=cpu_list, default=None,
                    help="CPU list this run and all it starts are pinned to, e.g. 0-1 (default: all)")
    ap.add_argument("--path", action="append", type=path_name, metavar="{kernel,podnet-wN}",
                    help="paths to measure (repeatable; default: kernel and podnet-wN for each --workers)")
    ap.add_argument("--out", help="write the JSON here (and the plot beside it) instead of bench/results")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    cpus = pin(args.cpus)                 # before any child: they all inherit it
    from machine import machine
    default = ["kernel"] + [f"podnet-w{w}" for w in args.workers]
    names = list(dict.fromkeys(args.path or default))
    paths = {name: make_path(name) for name in names}
    with all_up(paths):
        raw = measure_paths(paths, KINDS, args.rounds, lambda p, kind: measure_kind(p, kind, args.seconds))
        setup = {n: p.describe() for n, p in paths.items()}
    doc = {"bench": "overlay", "seconds": args.seconds, "rounds": args.rounds, "fabric_mtu": FABRIC_MTU,
           "workers": [p.workers for p in paths.values() if isinstance(p, PodnetOverlay)], "cpus": cpus,
           "machine": machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "labels": {n: p.label for n, p in paths.items()}, "setup": setup,
           "summary": summarize(raw, METRICS), "raw": raw}
    ratios = e2e_ratios(raw, names)
    if ratios:
        doc["ratios"] = ratios
    # bench/results holds only complete comparisons (the README's table reads it)
    out = Path(args.out) if args.out else (RESULTS / "overlay.json" if not args.path else None)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        if "kernel" in paths and len(paths) > 1:
            plot(doc, out.with_suffix(".png"), "pod to pod across nodes (VXLAN)")
    print_summary(doc)
    return doc


if __name__ == "__main__":
    main()
