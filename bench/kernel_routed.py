"""Kernel baselines for the routed backends, built from Linux's own devices
the way the CNIs the issue names leave a node (the benchmark's side of
tests/kernel_node.py, which has the flannel vxlan node):

  direct   flannel host-gw: no tunnel device, the pods' packets leave by the
           uplink as they are; per remote node
               ip route replace REMOTE_CIDR via REMOTE_NODE_IP dev eth0
           pod MTU = fabric MTU
  ipip     Calico's IPIP: the ipip fallback device tunl0 (no local, no
           remote: it takes protocol-4 packets from any source), per remote node
               ip route replace REMOTE_CIDR via REMOTE_NODE_IP dev tunl0 onlink
           pod MTU = fabric MTU - 20. Only where the kernel has ipip
           (`ipip_available()`); this machine's kernel is built without it.

Either way:

    node netns "<prefix>-<name>"
      eth0       veth uplink, underlay IP; its peer is a port of the fabric bridge
      cni0       Linux bridge, <pod network>.1/24 (the pods' gateway)
      vethN      one per pod, enslaved to cni0
    pod netns "<prefix>-<name>-p<i>"
      eth0       <pod network>.(i+2)/24, default via .1

as KernelNode builds it less flannel.1, so the vxlan and routed baselines
differ only in how a packet crosses between the nodes. ip_forward on,
rp_filter off. Every command time-bounded; __exit__ (or a failing
__enter__) deletes exactly what was made.
"""
import ipaddress
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from kernel_node import _Undo, ifname, link_mac, netns_exists, ns_run, quiet_netns, run  # noqa: E402

MODES = ("direct", "ipip")
OVERHEAD = {"direct": 0, "ipip": 20}
NOT_IN_KERNEL = "kernel ipip: not in this kernel"


def ipip_available(probe_ns="pnbench-ipipchk"):
    """Whether `ip link add ... type ipip` works here: tried in a scratch
    namespace of its own (removed again), so nothing of the host changes.
    Returns (True, "") or (False, the reason)."""
    if netns_exists(probe_ns):
        run("ip", "netns", "del", probe_ns, check=False)
    run("ip", "netns", "add", probe_ns)
    try:
        r = run("ip", "-n", probe_ns, "link", "add", "pnipipchk", "type", "ipip", "local", "192.0.2.1",
                check=False)
        if r.returncode == 0:
            return True, ""
        return False, f"{NOT_IN_KERNEL} (`ip link add type ipip`: {r.stderr.strip() or r.returncode})"
    finally:
        run("ip", "netns", "del", probe_ns, check=False)


class KernelRoutedNode:
    """One node of the direct (host-gw) or ipip (Calico tunl0) baseline."""

    UPLINK_DEV = "eth0"
    BRIDGE_DEV = "cni0"
    TUNNEL_DEV = "tunl0"

    def __init__(self, name, *, mode, fabric_ns, fabric_bridge, underlay_ip, underlay_prefixlen, pod_cidr,
                 fabric_mtu=1500, pods=1, prefix="pnbr"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        net = ipaddress.ip_network(pod_cidr)
        if net.version != 4 or net.num_addresses < pods + 3:
            raise ValueError(f"pod_cidr {pod_cidr} cannot hold {pods} pods")
        self.name, self.mode, self.prefix = name, mode, prefix
        self.fabric_ns, self.fabric_bridge = fabric_ns, fabric_bridge
        self.node_ip = str(ipaddress.ip_address(underlay_ip))
        self.underlay_prefixlen = int(underlay_prefixlen)
        self.pod_cidr = str(net)
        self.fabric_mtu = int(fabric_mtu)
        self.mtu = self.fabric_mtu - OVERHEAD[mode]
        self.netns = f"{prefix}-{name}"
        self.uplink = ifname(prefix, "-", name)          # the uplink's end in the fabric netns
        self.gateway_ip = str(net.network_address + 1)
        self.npods = pods
        self.underlay_mac = self.gateway_mac = None
        self.pods = []
        self.peers = {}
        self._undo = _Undo()

    def __enter__(self):
        try:
            self._build()
        except BaseException:
            self._undo.run()
            raise
        return self

    def __exit__(self, *exc):
        self._undo.run()
        self.peers.clear()
        return False

    def _add_netns(self, ns):
        if netns_exists(ns):
            raise RuntimeError(f"netns {ns} already exists (left from an earlier run? `ip netns del {ns}`)")
        run("ip", "netns", "add", ns)
        self._undo.push("ip", "netns", "del", ns)
        quiet_netns(ns)
        run("ip", "-n", ns, "link", "set", "lo", "up")

    def _build(self):
        ns, fab = self.netns, self.fabric_ns
        if not netns_exists(fab):
            raise RuntimeError(f"fabric netns {fab} does not exist")
        self._add_netns(ns)
        self.node_exec("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        run("ip", "-n", fab, "link", "add", self.uplink, "mtu", self.fabric_mtu, "type", "veth",
            "peer", "name", self.UPLINK_DEV, "netns", ns)
        self._undo.push("ip", "-n", fab, "link", "del", self.uplink)
        run("ip", "-n", fab, "link", "set", self.uplink, "master", self.fabric_bridge, "up")
        run("ip", "-n", ns, "link", "set", self.UPLINK_DEV, "mtu", self.fabric_mtu, "up")
        run("ip", "-n", ns, "addr", "add", f"{self.node_ip}/{self.underlay_prefixlen}", "dev", self.UPLINK_DEV)
        self.underlay_mac = link_mac(ns, self.UPLINK_DEV)
        if self.mode == "ipip":
            # loading ipip gives every namespace a fallback tunl0; make it where it did not
            r = run("ip", "-n", ns, "link", "add", self.TUNNEL_DEV, "type", "ipip", check=False)
            if r.returncode != 0 and "File exists" not in r.stderr:
                raise RuntimeError(f"{NOT_IN_KERNEL}: {r.stderr.strip()}")
            # Calico's settings: MTU fabric - 20, no local/remote (any source), ttl inherit, pmtudisc on
            run("ip", "-n", ns, "link", "set", self.TUNNEL_DEV, "mtu", self.mtu, "up")

        plen = ipaddress.ip_network(self.pod_cidr).prefixlen
        run("ip", "-n", ns, "link", "add", self.BRIDGE_DEV, "mtu", self.mtu, "type", "bridge")
        run("ip", "-n", ns, "addr", "add", f"{self.gateway_ip}/{plen}", "dev", self.BRIDGE_DEV)
        run("ip", "-n", ns, "link", "set", self.BRIDGE_DEV, "up")
        self.gateway_mac = link_mac(ns, self.BRIDGE_DEV)
        base = ipaddress.ip_network(self.pod_cidr).network_address
        for i in range(self.npods):
            pns, ip, host_if = f"{self.netns}-p{i}", str(base + 2 + i), f"veth{i}"
            self._add_netns(pns)
            run("ip", "-n", ns, "link", "add", host_if, "mtu", self.mtu, "type", "veth",
                "peer", "name", "eth0", "netns", pns)
            run("ip", "-n", ns, "link", "set", host_if, "master", self.BRIDGE_DEV, "up")
            run("ip", "-n", pns, "link", "set", "eth0", "mtu", self.mtu, "up")
            run("ip", "-n", pns, "addr", "add", f"{ip}/{plen}", "dev", "eth0")
            run("ip", "-n", pns, "route", "add", "default", "via", self.gateway_ip, "dev", "eth0")
            self.pods.append({"name": f"p{i}", "netns": pns, "ip": ip, "mac": link_mac(pns, "eth0"),
                              "host_if": host_if})
        run("ip", "-n", ns, "link", "set", self.BRIDGE_DEV, "address", self.gateway_mac)

    def add_peer(self, pod_cidr, node_ip):
        """The route a remote node's pods take: via its underlay IP, on the
        uplink (direct) or through tunl0 (ipip, onlink as Calico writes it)."""
        if self.mode == "direct":
            self.node_exec("ip", "route", "replace", pod_cidr, "via", node_ip, "dev", self.UPLINK_DEV)
        else:
            self.node_exec("ip", "route", "replace", pod_cidr, "via", node_ip, "dev", self.TUNNEL_DEV, "onlink")
        self.peers[pod_cidr] = node_ip

    def peer_with(self, other):
        self.add_peer(other.pod_cidr, other.node_ip)

    def node_exec(self, *cmd, timeout=20, check=True):
        return ns_run(self.netns, *cmd, timeout=timeout, check=check)

    def exec(self, i, *cmd, timeout=20, check=True):
        return ns_run(self.pods[i]["netns"], *cmd, timeout=timeout, check=check)

    def describe(self):
        d = {"mode": self.mode, "pod_mtu": self.mtu, "fabric_mtu": self.fabric_mtu,
             "routes": {c: ip for c, ip in self.peers.items()}}
        r = self.node_exec("ip", "-d", "-j", "link", "show", self.UPLINK_DEV, check=False)
        if r.returncode == 0:
            link = json.loads(r.stdout)[0]
            d["uplink_gso_max_size"] = link.get("gso_max_size")
        return d
