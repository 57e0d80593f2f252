"""Cross-node pod-to-pod throughput for each way podnet carries pod traffic
between nodes (cluster.backend), beside the same mode built from Linux's own
devices, all in one run:

  kernel-vxlan      two flannel-style nodes (veth pods on cni0, flannel.1
                    vxlan, veth uplinks into a fabric bridge in its own
                    namespace; tests/kernel_node.py)
  kernel-direct     flannel host-gw: the same nodes without a tunnel, routes
                    POD_CIDR via the peer's underlay IP (KernelDirectNode)
  kernel-ipip       Calico's IPIP (tunl0, POD_CIDR via NODE_IP dev tunl0
                    onlink; KernelIpipNode), only where `ip link add type ipip` works; this
                    machine's kernel has no ipip, so the JSON says
                    "kernel ipip: not in this kernel" instead
  podnet-vxlan      two podnet nodes, cluster.backend vxlan (agents, TAPs with
                    vnet headers, UDP-tunnel GSO on the uplinks)
  podnet-ipip       the same with cluster.backend ipip (pods' TCP super-frames cut
                    into segments in the fast path: there is no IPIP GSO type)
  podnet-ipip-mtu   the same with PODNET_IPIP_TSO=0 (pods get no TSO and send
                    MTU-sized frames): issue 15's other way, in the same rounds
  podnet-direct     the same with cluster.backend direct (uplink TSO)
  podnet-same-node  one podnet node, both pods on it (backend direct: pod MTU
                    1500, as podnet-direct's): what podnet-direct is measured
                    against ("the encapsulation's whole cost gone")

Each podnet path runs --workers worker threads per agent (default 1); with
several counts each backend gets a path per count, named -wN beyond 1
(podnet-vxlan, podnet-vxlan-w2, ...), each its own cluster.

iperf3 from a pod on node 1 to a pod on node 2: TCP with 1 and 4 streams, UDP
with 64-byte payloads (the receiver's packets/s), and the machine's CPU
seconds per GB received and cores busy around each run, measured as in
e2e_pods.py (/proc/stat, all processes; UDP's bytes are the 64-byte payloads
received). The paths are up at once and measured in interleaved rounds
(bench/rounds.py): medians and min-max over the rounds, ratios within a
round: podnet-X / kernel-X for each mode (and CPU per GB likewise), each
mode's podnet/kernel ratio over vxlan's (the issue's target: at least 1),
podnet-direct / podnet-same-node (target: at least 0.9), and each worker
count over the first. A ratio with no baseline in this run is listed under
"ratios_none" with the reason.

Before the backends (issue 15) this benchmark compared `kernel` with
`podnet-wN` (vxlan, one path per --workers count); those path names still
run the same clusters, and --legacy picks them as the default set, so the
figures from before reproduce with `--legacy --workers 1,2`.

--cpus pins the run and all it starts to a CPU list. Writes
bench/results/overlay.json and overlay.png when the whole default set ran
(no --path/--backend), or --out FILE (and FILE's .png) instead. Needs root.

    python bench/e2e_overlay.py [--seconds 5] [--rounds 3] [--workers 1] [--cpus 0-1]
                                [--backend direct] [--path kernel-vxlan --path podnet-vxlan]
                                [--legacy] [--out FILE]
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
from e2e_pods import KINDS, THROUGHPUT, cpu_list, e2e_ratios, iperf, parse_workers, plot, print_summary  # noqa: E402
from kernel_node import Fabric, KernelDirectNode, KernelIpipNode, KernelNode, ns_run  # noqa: E402
from podnet_cluster import PodnetCluster  # noqa: E402
from rounds import all_up, measure_paths, ratio, spread, summarize  # noqa: E402

FABRIC_MTU = 1500
BACKENDS = ("vxlan", "ipip", "direct")
NOT_IN_KERNEL = "kernel ipip: not in this kernel"


def ipip_available():
    """(True, "") where this kernel makes ipip devices, else (False, why),
    tried in a scratch namespace (KernelIpipNode.probe)."""
    why = KernelIpipNode.probe("pnbench-ipipchk")
    if why is None:
        return True, ""
    # "this kernel has no IPIP (ip link add ...: what it answered)": the answer, after our words
    return False, f"{NOT_IN_KERNEL} ({why.split('(', 1)[1][:-1] if why.endswith(')') else why})"


def pod_mtu(ns):
    """The MTU of the pod's interface (the one that is not lo)."""
    r = ns_run(ns, "ip", "-j", "link", "show", check=False)
    links = [link for link in json.loads(r.stdout or "[]") if link.get("ifname") != "lo"]
    return links[0]["mtu"] if links else None


def warm_up(ns, ip):
    """One ping first, so no measurement waits on ARP for a peer node."""
    ns_run(ns, "ping", "-c", "1", "-W", "2", ip, timeout=10, check=False)


# ---- kernel paths -----------------------------------------------------------------

class KernelOverlay:
    """Two KernelNodes (one pod each) on a fabric bridge, peered both ways:
    Linux's vxlan (flannel.1). name 'kernel' is the path from before the
    backends (its namespaces as they were); 'kernel-vxlan' the same, apart."""
    backend = "vxlan"

    def __init__(self, name="kernel", prefix="pnbk", fabric_ns="pnbench-kfab", underlay="172.30.252",
                 pod_cidrs=("10.247.1.0/24", "10.247.2.0/24"), vni=1, port=4789):
        self.name = name
        self.label = "Linux vxlan (flannel.1) + cni0 bridge + veth"
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
            self.peer(a, b)
            self.peer(b, a)
            # the first packet would otherwise wait on ARP for the peer VTEP
            a.exec(0, "ping", "-c", "1", "-W", "2", b.pods[0]["ip"], timeout=10)
        except BaseException:
            for part in reversed(made):
                part.__exit__(None, None, None)
            raise
        return self

    def peer(self, a, b):
        a.peer_with(b)

    def pods(self):
        a, b = self.nodes
        return a.pods[0]["netns"], b.pods[0]["netns"], b.pods[0]["ip"]

    def describe(self):
        """flannel.1 as built (MTU, outer UDP checksum, DF, GSO size), to read beside the numbers."""
        a = self.nodes[0]
        info = a.vxlan_info()
        return {"backend": "vxlan", "pod_mtu": a.mtu, "fabric_mtu": a.fabric_mtu, "vni": info["id"],
                "port": info["port"], "udp_csum": info.get("udp_csum"), "df": info.get("df"),
                "gso_max_size": info.get("gso_max_size")}

    def __exit__(self, *exc):
        for part in reversed((self.fabric, *self.nodes)):
            part.__exit__(None, None, None)
        return False


class KernelRouted(KernelOverlay):
    """Two routed kernel nodes (tests/kernel_node.py): KernelDirectNode
    (flannel host-gw) or KernelIpipNode (Calico's tunl0)."""

    PLACES = {"direct": ("pnbkd", "pnbench-kdfab", "172.30.253", ("10.247.3.0/24", "10.247.4.0/24")),
              "ipip": ("pnbki", "pnbench-kifab", "172.30.254", ("10.247.5.0/24", "10.247.6.0/24"))}
    LABELS = {"direct": "Linux routing (host-gw: POD_CIDR via node IP) + cni0 bridge + veth",
              "ipip": "Linux ipip (tunl0, Calico style) + cni0 bridge + veth"}

    def __init__(self, mode):
        prefix, fabric_ns, underlay, cidrs = self.PLACES[mode]
        self.name, self.backend, self.label = f"kernel-{mode}", mode, self.LABELS[mode]
        self.fabric = Fabric(fabric_ns, "br-fabric", mtu=FABRIC_MTU)
        cls = KernelDirectNode if mode == "direct" else KernelIpipNode
        self.nodes = [cls(f"n{i + 1}", fabric_ns=fabric_ns, fabric_bridge="br-fabric",
                          underlay_ip=f"{underlay}.{i + 1}", underlay_prefixlen=24, pod_cidr=cidr,
                          fabric_mtu=FABRIC_MTU, pods=1, prefix=prefix)
                      for i, cidr in enumerate(cidrs)]

    def peer(self, a, b):
        a.add_peer(b.pod_cidr, b.node_ip)

    def describe(self):
        a = self.nodes[0]
        out = {"backend": self.backend, "pod_mtu": a.mtu, "fabric_mtu": a.fabric_mtu,
               "routes": {cidr: ip for cidr, (ip, _) in a.peers.items()}}
        if self.backend == "ipip":
            out["tunnel"] = a.tunnel_info()
        return out


# ---- podnet paths -----------------------------------------------------------------

class PodnetOverlay(PodnetCluster):
    """Two podnet nodes (one pod each) on podnet's own fabric: agents, TAPs
    with vnet headers, the fast path's tunnel of `backend`, on `workers`
    threads per agent; a cluster of its own per backend and worker count.
    legacy=True: the vxlan path from before the backends, as it was (name
    podnet-wN, its cluster name and CIDRs, no backend in the spec)."""

    SHORT = {"vxlan": "vx", "ipip": "ip", "direct": "dr"}
    GSO = {"vxlan": "UDP-tunnel GSO", "ipip": "TSO segmented in the fast path", "direct": "uplink TSO"}

    def __init__(self, workers=1, backend="vxlan", legacy=False, mtu_frames=False):
        if not 1 <= workers <= 16:
            raise ValueError(f"workers must be 1..16, got {workers}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if legacy and backend != "vxlan":
            raise ValueError("the legacy podnet-wN paths are vxlan")
        self.backend, self.legacy = backend, legacy
        ws = f"{workers} worker{'s' if workers > 1 else ''} each"
        if legacy:
            self.name = f"podnet-w{workers}"
            self.label = f"podnet agents (Cython VXLAN, UDP-tunnel GSO), {ws}"
            spec = (f"cluster: {{name: pnbo-w{workers}, podCIDR: 10.245.{4 * workers}.0/22, "
                    f"fabricCIDR: 172.28.{workers}.0/24}}\n")
        else:
            self.name = f"podnet-{backend}" + (f"-w{workers}" if workers != 1 else "")
            self.label = f"podnet agents, {backend} ({self.GSO[backend]}), {ws}"
            b = BACKENDS.index(backend)
            spec = (f"cluster: {{name: pnbo-{self.SHORT[backend]}-w{workers}, podCIDR: 10.{240 + b}.{4 * workers}.0/22, "
                    f"fabricCIDR: 172.27.{16 * b + workers}.0/24, backend: {backend}}}\n")
            if mtu_frames:
                if backend != "ipip":
                    raise ValueError("mtu_frames is ipip's other way (PODNET_IPIP_TSO=0)")
                self.name = "podnet-ipip-mtu" + (f"-w{workers}" if workers != 1 else "")
                self.label = f"podnet agents, ipip (pods without TSO: MTU-sized frames), {ws}"
                spec = (f"cluster: {{name: pnbo-im-w{workers}, podCIDR: 10.239.{4 * workers}.0/22, "
                        f"fabricCIDR: 172.27.{64 + workers}.0/24, backend: ipip}}\n")
        self.mtu_frames = mtu_frames
        self.mode = "ipip-mtu" if mtu_frames else backend
        super().__init__(spec + "nodes: [{name: n1}, {name: n2}]\n"
                         "pods: [{name: a, node: n1}, {name: b, node: n2}]\n", workers=workers)

    def __enter__(self):
        # the agents read PODNET_IPIP_TSO when they start (dataplane/agent.py)
        saved = os.environ.get("PODNET_IPIP_TSO")
        if self.mtu_frames:
            os.environ["PODNET_IPIP_TSO"] = "0"
        try:
            super().__enter__()
        finally:
            if saved is None:
                os.environ.pop("PODNET_IPIP_TSO", None)
            else:
                os.environ["PODNET_IPIP_TSO"] = saved
        try:
            warm_up(*self.pods()[0::2])
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def pods(self):
        return self.pod_ns("a"), self.pod_ns("b"), self.state.pods["b"].ip

    def describe(self):
        st, c = self.request("n1", "status"), self.request("n1", "counters")
        if st["workers"] != self.workers:
            raise RuntimeError(f"{self.name}: the agent runs {st['workers']} workers, asked for {self.workers}")
        # the backend the cluster came up with and, when the agent says, the one it runs
        have = getattr(self.state, "backend", "vxlan")
        running = st.get("backend") or (c.get("overlay_info") or {}).get("backend")
        for what in (have, running):
            if what is not None and what != self.backend:
                raise RuntimeError(f"{self.name}: the cluster runs backend {what}, asked for {self.backend}")
        return {"backend": self.backend, "workers": st["workers"], "gso_path": st.get("gso_path"),
                "pod_mtu": pod_mtu(self.pod_ns("a")), "overlay": c["overlay"],
                "frames_per_burst": c["io"]["frames_per_burst"],
                "drops": {k: v for k, v in c["drops"].items() if v}}


class PodnetSameNode(PodnetCluster):
    """One podnet node with both pods (backend direct: pod MTU 1500, as
    podnet-direct's pods have), as e2e_pods.py measures podnet on one node."""
    backend = None

    def __init__(self, workers=1):
        if not 1 <= workers <= 16:
            raise ValueError(f"workers must be 1..16, got {workers}")
        self.name = "podnet-same-node" + (f"-w{workers}" if workers != 1 else "")
        self.label = (f"podnet agent, both pods on one node (backend direct, pod MTU {FABRIC_MTU}), "
                      f"{workers} worker{'s' if workers > 1 else ''}")
        super().__init__(f"cluster: {{name: pnbo-sn-w{workers}, podCIDR: 10.243.{4 * workers}.0/22, "
                         f"fabricCIDR: 172.27.{48 + workers}.0/24, backend: direct}}\n"
                         "nodes: [{name: n1}]\n"
                         "pods: [{name: a, node: n1}, {name: b, node: n1}]\n", workers=workers)

    def pods(self):
        return self.pod_ns("a"), self.pod_ns("b"), self.state.pods["b"].ip

    def describe(self):
        st, c = self.request("n1", "status"), self.request("n1", "counters")
        if st["workers"] != self.workers:
            raise RuntimeError(f"{self.name}: the agent runs {st['workers']} workers, asked for {self.workers}")
        return {"backend": "same-node", "workers": st["workers"], "gso_path": st.get("gso_path"),
                "pod_mtu": pod_mtu(self.pod_ns("a")), "frames_per_burst": c["io"]["frames_per_burst"],
                "drops": {k: v for k, v in c["drops"].items() if v}}


# ---- path names ---------------------------------------------------------------------

RESULTS = Path(__file__).resolve().parent / "results"

CPU = ["cpu_s_per_gb", "cores_busy"]
METRICS = {"tcp1": ["gbps", *CPU], "tcp4": ["gbps", *CPU], "udp64": ["rx_pps", *CPU]}
PATH_NAME = re.compile(r"kernel|podnet-w(?P<legacy>\d+)|kernel-(?P<kmode>vxlan|ipip|direct)"
                       r"|podnet-(?P<pmode>vxlan|ipip-mtu|ipip|direct|same-node)(?:-w(?P<w>\d+))?")


def parse_path(text):
    """A path name -> (kind, backend, workers): ("kernel", mode, None) or
    ("podnet", backend | "same-node", workers, legacy)."""
    m = PATH_NAME.fullmatch(text)
    if not m:
        return None
    if text == "kernel":
        return ("kernel", "vxlan", None, True)
    if m.group("kmode"):
        return ("kernel", m.group("kmode"), None, False)
    if m.group("legacy"):
        return ("podnet", "vxlan", int(m.group("legacy")), True)
    w = int(m.group("w")) if m.group("w") else 1
    if m.group("w") == "1":
        return None                          # podnet-X is the one-worker path: no second name for it
    return ("podnet", m.group("pmode"), w, False)


def path_name(text):
    """--path: kernel-{vxlan,ipip,direct}, podnet-{vxlan,ipip,direct,same-node}[-wN]
    (N from 2 to 16; none is one worker), or the names from before the
    backends: kernel, podnet-wN."""
    p = parse_path(text)
    if p is None or (p[2] is not None and not 1 <= p[2] <= 16):
        raise argparse.ArgumentTypeError(
            "--path takes kernel-{vxlan,ipip,direct}, podnet-{vxlan,ipip,direct,same-node}[-wN] "
            f"(N from 2 to 16), or kernel / podnet-wN (N from 1 to 16), got {text!r}")
    return text


def backend_name(text):
    if text not in BACKENDS:
        raise argparse.ArgumentTypeError(f"--backend takes one of {', '.join(BACKENDS)}, got {text!r}")
    return text


def podnet_name(backend, workers):
    return f"podnet-{backend}" + (f"-w{workers}" if workers != 1 else "")


def default_paths(backends=BACKENDS, workers=(1,), legacy=False):
    """The paths of a run: per backend its kernel path and a podnet path per
    worker count, podnet-same-node beside podnet-direct. legacy: kernel and
    podnet-wN, the set from before the backends."""
    if legacy:
        return ["kernel"] + [f"podnet-w{w}" for w in workers]
    out = []
    for b in BACKENDS:
        if b not in backends:
            continue
        out.append(f"kernel-{b}")
        out += [podnet_name(b, w) for w in workers]
        if b == "ipip":
            out += [podnet_name("ipip-mtu", w) for w in workers]
        if b == "direct":
            out += [podnet_name("same-node", w) for w in workers]
    return out


def make_path(name):
    kind, backend, workers, legacy = parse_path(name)
    if kind == "kernel":
        if legacy:
            return KernelOverlay()
        if backend == "vxlan":
            return KernelOverlay("kernel-vxlan", prefix="pnbkv", fabric_ns="pnbench-kvfab", underlay="172.30.251",
                                 pod_cidrs=("10.247.11.0/24", "10.247.12.0/24"))
        return KernelRouted(backend)
    if backend == "same-node":
        return PodnetSameNode(workers)
    if backend == "ipip-mtu":
        return PodnetOverlay(workers, "ipip", mtu_frames=True)
    return PodnetOverlay(workers, backend, legacy=legacy)


def measure_kind(path, kind, seconds):
    a, b, ip = path.pods()
    if kind == "udp64":
        return iperf(a, b, ip, seconds, udp=True)
    return iperf(a, b, ip, seconds, streams=4 if kind == "tcp4" else 1)


# ---- ratios -------------------------------------------------------------------------

def key(name):
    return name.replace("-", "_")


def ratio_of_ratios(raw, kind, metric, a, b, c, d):
    """(a / b) / (c / d) per round: one mode's podnet/kernel ratio over another's."""
    vals = []
    for w, x, y, z in zip(raw[kind][a], raw[kind][b], raw[kind][c], raw[kind][d]):
        if all(v.get(metric) for v in (w, x, y, z)):
            vals.append((w[metric] / x[metric]) / (y[metric] / z[metric]))
    return spread(vals)


def backend_ratios(raw, names, unavailable=None):
    """Within-round ratios of a backend run -> (ratios, ratios_none):
      podnet-X[-wN] / kernel-X, throughput and CPU per GB        {p}_vs_kernel_X_{suffix|cpu}
      (podnet-X / kernel-X) / (podnet-vxlan / kernel-vxlan)      {p}_kernel_ratio_vs_vxlan_{suffix}
      podnet-direct[-wN] / podnet-same-node[-wN]                 {p}_vs_podnet_same_node[_wN]_{suffix}
      each worker count over the backend's first                 {p}_vs_{first}_{suffix}
    ratios_none: the ratios this run could not take, with why (a kernel path
    that is not in the run: `unavailable` gives its reason if known)."""
    unavailable = unavailable or {}
    out, none = {}, {}
    parsed = {n: parse_path(n) for n in names}
    podnets = [n for n in names if parsed[n][0] == "podnet" and not parsed[n][3]]
    for p in podnets:
        _, b, w, _ = parsed[p]
        if b == "same-node":
            continue
        if b == "ipip-mtu":                  # ipip's other way: against ipip's segmentation, same round
            seg = podnet_name("ipip", w)
            if seg in names:
                for kind, (metric, suffix) in THROUGHPUT.items():
                    out[f"{key(seg)}_vs_{key(p)}_{suffix}"] = ratio(raw, kind, metric, seg, p)
                for kind in KINDS:
                    out[f"{key(seg)}_cpu_per_gb_vs_{key(p)}_{kind}"] = ratio(raw, kind, "cpu_s_per_gb", seg, p)
            continue
        base = f"kernel-{b}"
        if base in names:
            for kind, (metric, suffix) in THROUGHPUT.items():
                out[f"{key(p)}_vs_{key(base)}_{suffix}"] = ratio(raw, kind, metric, p, base)
            for kind in KINDS:
                out[f"{key(p)}_cpu_per_gb_vs_{key(base)}_{kind}"] = ratio(raw, kind, "cpu_s_per_gb", p, base)
        else:
            none[f"{key(p)}_vs_{key(base)}"] = unavailable.get(base, f"{base} was not in this run")
        vx = podnet_name("vxlan", w)
        if b != "vxlan":
            if base in names and vx in names and "kernel-vxlan" in names:
                for kind, (metric, suffix) in THROUGHPUT.items():
                    out[f"{key(p)}_kernel_ratio_vs_vxlan_{suffix}"] = ratio_of_ratios(
                        raw, kind, metric, p, base, vx, "kernel-vxlan")
            else:
                missing = [n for n in (base, vx, "kernel-vxlan") if n not in names]
                none[f"{key(p)}_kernel_ratio_vs_vxlan"] = "; ".join(
                    unavailable.get(n, f"{n} was not in this run") for n in missing)
        if b == "direct":
            same = podnet_name("same-node", w)
            if same in names:
                for kind, (metric, suffix) in THROUGHPUT.items():
                    out[f"{key(p)}_vs_{key(same)}_{suffix}"] = ratio(raw, kind, metric, p, same)
                for kind in KINDS:
                    out[f"{key(p)}_cpu_per_gb_vs_{key(same)}_{kind}"] = ratio(raw, kind, "cpu_s_per_gb", p, same)
            else:
                none[f"{key(p)}_vs_{key(same)}"] = f"{same} was not in this run"
    # each worker count against the first of the same backend
    by_backend = {}
    for p in podnets:
        by_backend.setdefault(parsed[p][1], []).append(p)
    for b, ps in by_backend.items():
        for p in ps[1:]:
            for kind, (metric, suffix) in THROUGHPUT.items():
                out[f"{key(p)}_vs_{key(ps[0])}_{suffix}"] = ratio(raw, kind, metric, p, ps[0])
    return out, none


# ---- the run --------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=parse_workers, default=None,
                    help="worker counts, a podnet path each per backend (default 1; with --legacy 1,2)")
    ap.add_argument("--cpus", type=cpu_list, default=None,
                    help="CPU list this run and all it starts are pinned to, e.g. 0-1 (default: all)")
    ap.add_argument("--backend", action="append", type=backend_name, metavar="{vxlan,ipip,direct}",
                    help="only these backends' paths (repeatable; direct brings podnet-same-node)")
    ap.add_argument("--path", action="append", type=path_name, metavar="NAME",
                    help="paths to measure (repeatable): kernel-{vxlan,ipip,direct}, "
                         "podnet-{vxlan,ipip,direct,same-node}[-wN], or kernel, podnet-wN")
    ap.add_argument("--legacy", action="store_true",
                    help="the default set from before the backends: kernel and podnet-wN per --workers")
    ap.add_argument("--out", help="write the JSON here (and the plot beside it) instead of bench/results")
    args = ap.parse_args(argv)
    if args.workers is None:
        args.workers = [1, 2] if args.legacy else [1]
    if args.legacy and args.backend:
        ap.error("--legacy runs vxlan only: no --backend with it")
    return args


def select(args, ipip_ok):
    """(names to run, {name: why not}, ipip_ok's answer or None) for the
    arguments: kernel-ipip is left out, with its reason, where the kernel has
    no ipip. ipip_ok: () -> (bool, reason), asked only when kernel-ipip is
    among the names."""
    if args.path:
        names = list(args.path)
        if args.backend:
            names += [n for n in default_paths(args.backend, args.workers) if n not in names]
    else:
        names = default_paths(args.backend or BACKENDS, args.workers, legacy=args.legacy)
    names = list(dict.fromkeys(names))
    unavailable, probe = {}, None
    if "kernel-ipip" in names:
        probe = ipip_ok()
        if not probe[0]:
            names.remove("kernel-ipip")
            unavailable["kernel-ipip"] = probe[1]
    return names, unavailable, probe


def main(argv=None):
    args = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    cpus = pin(args.cpus)                 # before any child: they all inherit it
    from machine import machine
    names, unavailable, probe = select(args, ipip_available)
    for n, why in unavailable.items():
        print(f"{n}: left out: {why}", file=sys.stderr)
    if not names:
        sys.exit("no path to measure")
    paths = {name: make_path(name) for name in names}
    with all_up(paths):
        raw = measure_paths(paths, KINDS, args.rounds, lambda p, kind: measure_kind(p, kind, args.seconds))
        setup = {n: p.describe() for n, p in paths.items()}
    doc = {"bench": "overlay", "seconds": args.seconds, "rounds": args.rounds, "fabric_mtu": FABRIC_MTU,
           "workers": [p.workers for p in paths.values() if isinstance(p, PodnetOverlay)], "cpus": cpus,
           "machine": machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "labels": {n: p.label for n, p in paths.items()}, "setup": setup,
           "summary": summarize(raw, METRICS), "raw": raw}
    legacy = [n for n in names if parse_path(n)[3]]
    if len(legacy) < len(names):
        # the layout tables.py renders per backend
        doc["layout"] = "backends"
        doc["workers"] = list(args.workers)
        doc["backends"] = {n: getattr(paths[n], "mode", paths[n].backend) or "same-node" for n in names}
        if probe is not None:
            doc["kernel_ipip"] = "available" if probe[0] else probe[1]
        doc["unavailable"] = unavailable
        ratios, none = backend_ratios(raw, names, unavailable)
        ratios.update(e2e_ratios(raw, legacy) if legacy else {})
        doc["ratios"], doc["ratios_none"] = ratios, none
    else:
        ratios = e2e_ratios(raw, names)
        if ratios:
            doc["ratios"] = ratios
    # bench/results holds only complete comparisons (docs/benchmarks.md's table reads it)
    out = Path(args.out) if args.out else (RESULTS / "overlay.json" if not (args.path or args.backend) else None)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        if any(n.startswith("kernel") for n in paths) and len(paths) > 1:
            plot(doc, out.with_suffix(".png"), "pod to pod across nodes, per backend"
                 if doc.get("layout") == "backends" else "pod to pod across nodes (VXLAN)")
    print_summary(doc)
    for k, why in doc.get("ratios_none", {}).items():
        print(f"{k:44s} none: {why}")
    return doc


if __name__ == "__main__":
    main()
