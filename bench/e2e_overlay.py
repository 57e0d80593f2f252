"""Cross-node pod-to-pod throughput over a VXLAN overlay:

  kernel   two flannel-style nodes built from Linux's own devices
           (veth pods on cni0, flannel.1 vxlan, veth uplinks into a fabric
           bridge in its own namespace; tests/kernel_node.py)

  podnet   two podnet nodes (agents, TAPs with vnet headers, encap/decap in
           the Cython fast path, UDP-tunnel GSO on the uplinks)

A path is an object with `name`, `label`, __enter__/__exit__ and
pods() -> (client netns, server netns, server IP). iperf3 from a pod on node
1 to a pod on node 2: TCP with 1 and 4 streams, UDP with 64-byte payloads
(the receiver's packets/s). The paths are up at once and measured in
interleaved rounds (bench/rounds.py): medians and min-max over the rounds,
ratios within a round. Writes bench/results/overlay.json and overlay.png
when both paths ran. Needs root.

    python bench/e2e_overlay.py [--seconds 5] [--rounds 3] [--path kernel] [--out FILE]
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from e2e_pods import iperf, plot, print_summary  # noqa: E402
from kernel_node import Fabric, KernelNode  # noqa: E402
from podnet_cluster import PodnetCluster  # noqa: E402
from rounds import all_up, measure_paths, ratio, summarize  # noqa: E402

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
    with vnet headers, encap/decap in the Cython fast path."""
    name = "podnet"
    label = "podnet agents (Cython VXLAN, UDP-tunnel GSO)"

    def __init__(self):
        super().__init__("cluster: {name: pnbo, podCIDR: 10.245.0.0/16, fabricCIDR: 172.30.253.0/24}\n"
                         "nodes: [{name: n1}, {name: n2}]\n"
                         "pods: [{name: a, node: n1}, {name: b, node: n2}]\n")

    def pods(self):
        return self.pod_ns("a"), self.pod_ns("b"), self.state["plan"]["pods"]["b"]["ip"]

    def describe(self):
        st, c = self.request("n1", "status"), self.request("n1", "counters")
        return {"gso_path": st["gso_path"], "overlay": c["overlay"],
                "frames_per_burst": c["io"]["frames_per_burst"],
                "drops": {k: v for k, v in c["drops"].items() if v}}


PATHS = {"kernel": KernelOverlay, "podnet": PodnetOverlay}
RESULTS = Path(__file__).resolve().parent / "results"


KINDS = ("tcp1", "tcp4", "udp64")
METRICS = {"tcp1": ["gbps"], "tcp4": ["gbps"], "udp64": ["rx_pps"]}


def measure_kind(path, kind, seconds):
    a, b, ip = path.pods()
    if kind == "udp64":
        return iperf(a, b, ip, seconds, udp=True)
    return iperf(a, b, ip, seconds, streams=4 if kind == "tcp4" else 1)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--path", action="append", choices=sorted(PATHS),
                    help="paths to measure (repeatable; default: all)")
    ap.add_argument("--out", help="also write the JSON document here")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    from machine import machine
    paths = {name: PATHS[name]() for name in (args.path or list(PATHS))}
    with all_up(paths):
        raw = measure_paths(paths, KINDS, args.rounds, lambda p, kind: measure_kind(p, kind, args.seconds))
        setup = {n: p.describe() for n, p in paths.items()}
    doc = {"bench": "overlay", "seconds": args.seconds, "rounds": args.rounds, "fabric_mtu": FABRIC_MTU,
           "machine": machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "labels": {n: p.label for n, p in paths.items()}, "setup": setup,
           "summary": summarize(raw, METRICS), "raw": raw}
    if "kernel" in paths and "podnet" in paths:
        doc["ratios"] = {"podnet_vs_kernel_tcp1": ratio(raw, "tcp1", "gbps", "podnet", "kernel"),
                         "podnet_vs_kernel_tcp4": ratio(raw, "tcp4", "gbps", "podnet", "kernel"),
                         "podnet_vs_kernel_udp64_rx": ratio(raw, "udp64", "rx_pps", "podnet", "kernel")}
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "overlay.json").write_text(json.dumps(doc, indent=2) + "\n")
        plot(doc, RESULTS / "overlay.png", "pod to pod across nodes (VXLAN)")
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print_summary(doc)
    return doc


if __name__ == "__main__":
    main()
