"""A flannel-style node built from Linux's own devices: the kernel baseline and
interop peer for podnet's overlay.

What flannel's vxlan backend (plus the bridge CNI plugin) leaves on a node,
typed as iproute2 commands:

    node netns "<prefix>-<name>"
      eth0       veth uplink, underlay IP; its peer is a port of the fabric bridge
      flannel.1  vxlan id VNI local UNDERLAY dev eth0 dstport PORT nolearning,
                 address <pod network>/32, MTU fabric - 50
      cni0       Linux bridge, <pod network>.1/24, MTU fabric - 50
      vethN      one per pod, enslaved to cni0
    pod netns "<prefix>-<name>-p<i>"
      eth0       <pod network>.(i+2)/24, default via .1

and per remote node (add_peer), what flanneld installs:

    ip route replace REMOTE_CIDR via REMOTE_NET dev flannel.1 onlink
    ip neigh replace REMOTE_NET lladdr REMOTE_VTEP_MAC dev flannel.1 nud permanent
    bridge fdb replace REMOTE_VTEP_MAC dev flannel.1 dst REMOTE_VTEP_IP self permanent

KernelDirectNode (no encapsulation: `ip route replace POD_CIDR via NODE_IP`) and
KernelIpipNode (Calico's IPIP mode: tunl0, `POD_CIDR via NODE_IP dev tunl0 onlink`)
are the same node with routes in place of flannel.1.

Everything is made with `ip`/`bridge`/`sysctl` through subprocess, every
command is time-bounded, and __exit__ (or a failing __enter__) deletes exactly
what this object made. Needs root. Importable from tests/ and, with tests/ on
sys.path, from bench/.
"""
import hashlib
import ipaddress
import json
import os
import subprocess

CMD_TIMEOUT = 20
IFNAMSIZ = 15  # usable characters of a Linux interface name


class CommandError(subprocess.CalledProcessError):
    """CalledProcessError whose message carries the command's output."""

    def __str__(self):
        return (f"{' '.join(map(str, self.cmd))} failed ({self.returncode}):\n"
                f"{(self.stdout or '').strip()}\n{(self.stderr or '').strip()}").strip()


def run(*cmd, timeout=CMD_TIMEOUT, check=True, input=None):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise CommandError(r.returncode, r.args, r.stdout, r.stderr)
    return r


def ns_run(ns, *cmd, **kw):
    return run("ip", "netns", "exec", ns, *cmd, **kw)


def netns_exists(ns):
    return ns in netns_list()


def netns_list():
    r = run("ip", "-j", "netns", "list", check=False)
    try:
        return {e["name"] for e in json.loads(r.stdout or "[]")}
    except ValueError:
        return {line.split()[0] for line in r.stdout.splitlines() if line.strip()}


def link_mac(ns, dev):
    r = run("ip", "-n", ns, "-j", "link", "show", "dev", dev)
    return json.loads(r.stdout)[0]["address"]


def quiet_netns(ns):
    """Settings every namespace made here gets: no reverse-path filter, and no
    iptables on bridged frames when br_netfilter is loaded (the files exist
    per namespace then). Missing files are fine."""
    settings = {"net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.default.rp_filter": 0}
    for f in ("iptables", "ip6tables", "arptables"):
        settings[f"net.bridge.bridge-nf-call-{f}"] = 0
    # one process for all of them; `sysctl -e` ignores unknown keys
    ns_run(ns, "sysctl", "-q", "-e", "-w", *(f"{k}={v}" for k, v in settings.items()), check=False)


def ifname(*parts):
    """An interface name of at most 15 characters; long ones get a short hash
    so that two different inputs never truncate to the same name."""
    name = "".join(parts)
    if len(name) <= IFNAMSIZ:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:6]
    return name[:IFNAMSIZ - 7] + "-" + digest


class _Undo:
    """A stack of clean-up commands, run in reverse, never raising."""

    def __init__(self):
        self.steps = []

    def push(self, *cmd):
        self.steps.append(cmd)

    def run(self):
        errors = []
        while self.steps:
            cmd = self.steps.pop()
            try:
                r = run(*cmd, check=False)
                if r.returncode != 0 and "Cannot find" not in r.stderr and "No such" not in r.stderr:
                    errors.append(f"{' '.join(cmd)}: {r.stderr.strip()}")
            except subprocess.TimeoutExpired:
                errors.append(f"{' '.join(cmd)}: timed out")
        return errors


class Fabric:
    """The "datacenter network": a Linux bridge in its own namespace.
    with Fabric("pnkt-fabric") as fab: KernelNode(..., fabric_ns=fab.ns, fabric_bridge=fab.bridge)"""

    def __init__(self, ns, bridge="br-fabric", mtu=1500):
        if len(bridge) > IFNAMSIZ:
            raise ValueError(f"bridge name {bridge!r} longer than {IFNAMSIZ}")
        self.ns, self.bridge, self.mtu = ns, bridge, mtu
        self._undo = _Undo()

    def __enter__(self):
        if netns_exists(self.ns):
            raise RuntimeError(f"netns {self.ns} already exists (left from an earlier run? "
                               f"`ip netns del {self.ns}`)")
        try:
            run("ip", "netns", "add", self.ns)
            self._undo.push("ip", "netns", "del", self.ns)
            quiet_netns(self.ns)
            run("ip", "-n", self.ns, "link", "set", "lo", "up")
            run("ip", "-n", self.ns, "link", "add", self.bridge, "mtu", self.mtu, "type", "bridge")
            run("ip", "-n", self.ns, "link", "set", self.bridge, "up")
        except BaseException:
            self._undo.run()
            raise
        return self

    def __exit__(self, *exc):
        self._undo.run()
        return False


class KernelNode:
    """A node built from Linux's own vxlan device, the way flannel's vxlan backend does it:
    node netns with a veth uplink into a fabric bridge (the fabric bridge lives in its own,
    already existing netns), a vxlan device 'flannel.1' (VNI, UDP dst port, local underlay IP,
    nolearning), a Linux bridge 'cni0' with the node's gateway IP (.1 of its pod /24), veth pods
    each in their own netns with IP .2, .3 ... default route via .1, MTU = fabric MTU - 50."""

    VXLAN_DEV = "flannel.1"
    BRIDGE_DEV = "cni0"
    UPLINK_DEV = "eth0"     # the uplink's name inside the node netns (the node's NIC)
    OVERHEAD = 50           # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8

    def __init__(self, name, *, fabric_ns, fabric_bridge, underlay_ip, underlay_prefixlen, pod_cidr,
                 vni=1, port=4789, fabric_mtu=1500, pods=2, prefix="pnk", udpcsum=None):
        """udpcsum: None leaves the kernel default (outer UDP checksum on, which is also what
        flannel gets: its netlink library only sends the attribute when true); False sends
        zero checksums."""
        net = ipaddress.ip_network(pod_cidr)
        if net.version != 4 or net.num_addresses < pods + 3:
            raise ValueError(f"pod_cidr {pod_cidr} cannot hold {pods} pods")
        self.name = name
        self.prefix = prefix
        self.fabric_ns, self.fabric_bridge = fabric_ns, fabric_bridge
        self.vtep_ip = str(ipaddress.ip_address(underlay_ip))
        self.underlay_prefixlen = int(underlay_prefixlen)
        self.pod_cidr = str(net)
        self.pod_network = str(net.network_address)
        self.vni, self.port = int(vni), int(port)
        self.fabric_mtu = int(fabric_mtu)
        self.mtu = self.fabric_mtu - self.OVERHEAD
        self.netns = f"{prefix}-{name}"
        self.uplink = ifname(prefix, "-", name)        # the uplink's end in the fabric netns
        self.gateway_ip = str(net.network_address + 1)
        self.npods = pods
        self.udpcsum = udpcsum
        # filled in by __enter__
        self.vtep_mac = self.underlay_mac = self.gateway_mac = None
        self.pods = []
        self.peers = {}          # pod_cidr -> (vtep_ip, vtep_mac, underlay_mac)
        self._undo = _Undo()

    # ---- build / tear down -------------------------------------------------

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

    def close(self):
        return self._undo.run()

    def _add_netns(self, ns):
        if netns_exists(ns):
            raise RuntimeError(f"netns {ns} already exists (left from an earlier run? `ip netns del {ns}`)")
        run("ip", "netns", "add", ns)
        self._undo.push("ip", "netns", "del", ns)
        quiet_netns(ns)
        run("ip", "-n", ns, "link", "set", "lo", "up")

    def _build(self):
        ns, fab, mtu = self.netns, self.fabric_ns, self.mtu
        if not netns_exists(fab):
            raise RuntimeError(f"fabric netns {fab} does not exist")
        self._add_netns(ns)
        self.node_exec("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")

        # uplink: a veth whose node end is the node's NIC, the other end a fabric bridge port
        run("ip", "-n", fab, "link", "add", self.uplink, "mtu", self.fabric_mtu, "type", "veth",
            "peer", "name", self.UPLINK_DEV, "netns", ns)
        # deleting the node netns deletes the pair too, but asynchronously; be explicit
        self._undo.push("ip", "-n", fab, "link", "del", self.uplink)
        run("ip", "-n", fab, "link", "set", self.uplink, "master", self.fabric_bridge, "up")
        run("ip", "-n", ns, "link", "set", self.UPLINK_DEV, "mtu", self.fabric_mtu, "up")
        run("ip", "-n", ns, "addr", "add", f"{self.vtep_ip}/{self.underlay_prefixlen}", "dev", self.UPLINK_DEV)
        self.underlay_mac = link_mac(ns, self.UPLINK_DEV)

        # flannel.1, as flanneld makes it (flannel also gives it <pod network>/32)
        run("ip", "-n", ns, "link", "add", self.VXLAN_DEV, "mtu", mtu, "type", "vxlan", "id", self.vni,
            "local", self.vtep_ip, "dev", self.UPLINK_DEV, "dstport", self.port, "nolearning",
            *(() if self.udpcsum is None else ("udpcsum" if self.udpcsum else "noudpcsum",)))
        run("ip", "-n", ns, "addr", "add", f"{self.pod_network}/32", "dev", self.VXLAN_DEV)
        run("ip", "-n", ns, "link", "set", self.VXLAN_DEV, "up")
        self.vtep_mac = link_mac(ns, self.VXLAN_DEV)

        self._build_cni0_and_pods(ns, mtu)

    def _build_cni0_and_pods(self, ns, mtu):
        """cni0 with the pods' gateway, and the veth pods on it (the bridge CNI
        plugin's part of a node, whatever carries traffic between nodes)."""
        plen = ipaddress.ip_network(self.pod_cidr).prefixlen
        run("ip", "-n", ns, "link", "add", self.BRIDGE_DEV, "mtu", mtu, "type", "bridge")
        run("ip", "-n", ns, "addr", "add", f"{self.gateway_ip}/{plen}", "dev", self.BRIDGE_DEV)
        run("ip", "-n", ns, "link", "set", self.BRIDGE_DEV, "up")
        self.gateway_mac = link_mac(ns, self.BRIDGE_DEV)

        base = ipaddress.ip_network(self.pod_cidr).network_address
        for i in range(self.npods):
            pname, pns, ip = f"p{i}", f"{self.netns}-p{i}", str(base + 2 + i)
            self._add_netns(pns)
            host_if = f"veth{i}"
            run("ip", "-n", ns, "link", "add", host_if, "mtu", mtu, "type", "veth",
                "peer", "name", "eth0", "netns", pns)
            run("ip", "-n", ns, "link", "set", host_if, "master", self.BRIDGE_DEV, "up")
            run("ip", "-n", pns, "link", "set", "eth0", "mtu", mtu, "up")
            run("ip", "-n", pns, "addr", "add", f"{ip}/{plen}", "dev", "eth0")
            run("ip", "-n", pns, "route", "add", "default", "via", self.gateway_ip, "dev", "eth0")
            self.pods.append({"name": pname, "netns": pns, "ip": ip, "mac": link_mac(pns, "eth0"),
                              "host_if": host_if})
        # the bridge takes the lowest port MAC unless it has one of its own: pin what we reported
        run("ip", "-n", ns, "link", "set", self.BRIDGE_DEV, "address", self.gateway_mac)

    # ---- peers ---------------------------------------------------------------

    def add_peer(self, pod_cidr, vtep_ip, vtep_mac, underlay_mac=None):
        """What flanneld installs for a remote node: route pod_cidr via <pod_cidr network address>
        dev flannel.1 onlink; a permanent neighbour entry for that network address -> vtep_mac on
        flannel.1; a bridge fdb entry vtep_mac dst vtep_ip on flannel.1; and, if underlay_mac is
        given, a permanent ARP entry vtep_ip -> underlay_mac on the uplink (otherwise the kernel
        ARPs for it)."""
        net = ipaddress.ip_network(pod_cidr)
        gw = str(net.network_address)
        self.node_exec("ip", "neigh", "replace", gw, "lladdr", vtep_mac, "dev", self.VXLAN_DEV, "nud", "permanent")
        self.node_exec("bridge", "fdb", "replace", vtep_mac, "dev", self.VXLAN_DEV, "dst", vtep_ip,
                       "self", "permanent")
        if underlay_mac:
            self.node_exec("ip", "neigh", "replace", vtep_ip, "lladdr", underlay_mac, "dev", self.UPLINK_DEV,
                           "nud", "permanent")
        self.node_exec("ip", "route", "replace", str(net), "via", gw, "dev", self.VXLAN_DEV, "onlink")
        self.peers[str(net)] = (vtep_ip, vtep_mac, underlay_mac)

    def peer_with(self, other, static_arp=False):
        """add_peer with another KernelNode's facts (or anything with the same attributes)."""
        self.add_peer(other.pod_cidr, other.vtep_ip, other.vtep_mac,
                      other.underlay_mac if static_arp else None)

    def remove_peer(self, pod_cidr, vtep_ip, vtep_mac):
        """Undo add_peer: route first (so nothing new is sent), then neighbour and fdb entries."""
        net = ipaddress.ip_network(pod_cidr)
        gw = str(net.network_address)
        self.node_exec("ip", "route", "del", str(net), "via", gw, "dev", self.VXLAN_DEV)
        self.node_exec("ip", "neigh", "del", gw, "dev", self.VXLAN_DEV, check=False)
        self.node_exec("bridge", "fdb", "del", vtep_mac, "dev", self.VXLAN_DEV, "dst", vtep_ip, "self",
                       check=False)
        _, _, underlay_mac = self.peers.pop(str(net), (None, None, None))
        if underlay_mac:
            self.node_exec("ip", "neigh", "del", vtep_ip, "dev", self.UPLINK_DEV, check=False)

    # ---- running things --------------------------------------------------------

    def pod(self, pod_index_or_name):
        if isinstance(pod_index_or_name, int):
            return self.pods[pod_index_or_name]
        for p in self.pods:
            if pod_index_or_name in (p["name"], p["netns"], p["ip"]):
                return p
        raise KeyError(f"{self.name} has no pod {pod_index_or_name!r}")

    def exec(self, pod_index_or_name, *cmd, timeout=CMD_TIMEOUT, check=True, input=None):
        """Run a command in a pod's netns (index, "p0", netns name or IP)."""
        return ns_run(self.pod(pod_index_or_name)["netns"], *cmd, timeout=timeout, check=check, input=input)

    def popen(self, pod_index_or_name, *cmd, **kw):
        """Start a command in a pod's netns; the caller owns (and must reap) the process."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(["ip", "netns", "exec", self.pod(pod_index_or_name)["netns"], *map(str, cmd)], **kw)

    def node_exec(self, *cmd, timeout=CMD_TIMEOUT, check=True, input=None):
        """Run a command in the node netns."""
        return ns_run(self.netns, *cmd, timeout=timeout, check=check, input=input)

    def vxlan_info(self):
        """flannel.1 as the kernel reports it (ip -d -j link): id, local, port, learning, udp_csum,
        df, ... plus mtu and gso_max_size."""
        d = json.loads(self.node_exec("ip", "-d", "-j", "link", "show", self.VXLAN_DEV).stdout)[0]
        return {**d["linkinfo"]["info_data"], "mtu": d["mtu"], "gso_max_size": d.get("gso_max_size")}

    def facts(self):
        return {"name": self.name, "netns": self.netns, "uplink": self.uplink, "pod_cidr": self.pod_cidr,
                "vtep_ip": self.vtep_ip, "vtep_mac": self.vtep_mac, "underlay_mac": self.underlay_mac,
                "gateway_ip": self.gateway_ip, "gateway_mac": self.gateway_mac, "mtu": self.mtu,
                "vni": self.vni, "port": self.port, "pods": [dict(p) for p in self.pods]}

    def __repr__(self):
        return f"KernelNode({self.name!r}, netns={self.netns!r}, vtep={self.vtep_ip}, pods={self.pod_cidr})"


class IpipUnavailable(RuntimeError):
    """This kernel cannot make an ipip device (built without CONFIG_NET_IPIP, or the module
    cannot be loaded): str() says so plainly, with what `ip link add` answered."""


class _RoutedNode:
    """What KernelDirectNode and KernelIpipNode share: a node netns with a veth uplink into the
    fabric bridge (underlay IP, ip_forward=1), a Linux bridge cni0 with the pods' gateway (.1 of
    the pod CIDR), and veth pods behind it, MTU = fabric MTU - OVERHEAD. Peers are plain routes
    (add_peer). The same building blocks, names and clean-up as KernelNode."""

    BRIDGE_DEV = "cni0"
    UPLINK_DEV = "eth0"
    OVERHEAD = 0
    KIND = "routed"

    def __init__(self, name, *, fabric_ns, fabric_bridge, underlay_ip, underlay_prefixlen, pod_cidr,
                 fabric_mtu=1500, pods=1, prefix="pnr"):
        net = ipaddress.ip_network(pod_cidr)
        if net.version != 4 or net.num_addresses < pods + 3:
            raise ValueError(f"pod_cidr {pod_cidr} cannot hold {pods} pods")
        self.name, self.prefix = name, prefix
        self.fabric_ns, self.fabric_bridge = fabric_ns, fabric_bridge
        self.node_ip = self.vtep_ip = str(ipaddress.ip_address(underlay_ip))
        self.underlay_prefixlen = int(underlay_prefixlen)
        self.pod_cidr = str(net)
        self.fabric_mtu = int(fabric_mtu)
        self.mtu = self.fabric_mtu - self.OVERHEAD
        self.netns = f"{prefix}-{name}"
        self.uplink = ifname(prefix, "-", name)        # the uplink's end in the fabric netns
        self.gateway_ip = str(net.network_address + 1)
        self.npods = pods
        self.underlay_mac = self.gateway_mac = None
        self.pods = []
        self.peers = {}          # pod_cidr -> (node_ip, underlay_mac)
        self._undo = _Undo()

    # made, torn down and run in exactly as KernelNode is
    __enter__ = KernelNode.__enter__
    __exit__ = KernelNode.__exit__
    close = KernelNode.close
    _add_netns = KernelNode._add_netns
    _build_cni0_and_pods = KernelNode._build_cni0_and_pods

    def _build(self):
        ns, fab, mtu = self.netns, self.fabric_ns, self.mtu
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
        self._build_tunnel()
        self._build_cni0_and_pods(ns, mtu)

    def _build_tunnel(self):
        pass

    def _route(self, pod_cidr, node_ip):
        raise NotImplementedError

    # ---- peers ---------------------------------------------------------------

    def add_peer(self, pod_cidr, node_ip, underlay_mac=None):
        """The route to a remote node's pods (see _route); with underlay_mac, a permanent ARP
        entry for node_ip on the uplink (otherwise the kernel ARPs for it)."""
        net = str(ipaddress.ip_network(pod_cidr))
        if underlay_mac:
            self.node_exec("ip", "neigh", "replace", node_ip, "lladdr", underlay_mac, "dev", self.UPLINK_DEV,
                           "nud", "permanent")
        self.node_exec("ip", "route", "replace", net, *self._route(node_ip))
        self.peers[net] = (node_ip, underlay_mac)

    def remove_peer(self, pod_cidr):
        net = str(ipaddress.ip_network(pod_cidr))
        node_ip, underlay_mac = self.peers.pop(net, (None, None))
        self.node_exec("ip", "route", "del", net, check=False)
        if underlay_mac:
            self.node_exec("ip", "neigh", "del", node_ip, "dev", self.UPLINK_DEV, check=False)

    def routes(self):
        """The node's IPv4 routes (ip -j route)."""
        return json.loads(self.node_exec("ip", "-j", "route", "show").stdout or "[]")

    pod = KernelNode.pod
    exec = KernelNode.exec
    popen = KernelNode.popen
    node_exec = KernelNode.node_exec

    def facts(self):
        return {"name": self.name, "kind": self.KIND, "netns": self.netns, "uplink": self.uplink,
                "pod_cidr": self.pod_cidr, "node_ip": self.node_ip, "underlay_mac": self.underlay_mac,
                "gateway_ip": self.gateway_ip, "gateway_mac": self.gateway_mac, "mtu": self.mtu,
                "pods": [dict(p) for p in self.pods]}

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r}, netns={self.netns!r}, ip={self.node_ip}, pods={self.pod_cidr})"


class KernelDirectNode(_RoutedNode):
    """A node with no encapsulation at all (flannel's host-gw, Calico in BGP mode on one L2
    segment): its pods' packets leave the uplink as they are, to the next hop's MAC. Per remote
    node: `ip route replace POD_CIDR via NODE_IP` (the next hop must be on the uplink's subnet).
    Pod MTU = fabric MTU."""

    OVERHEAD = 0
    KIND = "direct"

    def __init__(self, name, *, prefix="pnd", **kw):
        super().__init__(name, prefix=prefix, **kw)

    def _route(self, node_ip):
        return ("via", node_ip, "dev", self.UPLINK_DEV)


class KernelIpipNode(_RoutedNode):
    """A node with Linux's own ipip device, the way Calico's IPIP mode sets it up: tunl0
    (`ip link add tunl0 type ipip`: no local, no remote, so it receives protocol-4 packets from
    any source and takes each packet's outer destination from its route's next hop), MTU fabric
    - 20, up; per remote node `ip route replace POD_CIDR via NODE_IP dev tunl0 onlink`.
    Kernel defaults as Calico leaves them: ttl inherit, tos 0 (inherit off), pmtudisc (DF on).
    Raises IpipUnavailable from __enter__ when the kernel cannot make an ipip device (this
    machine's: CONFIG_NET_IPIP is not set)."""

    TUNNEL_DEV = "tunl0"
    OVERHEAD = 20
    KIND = "ipip"

    def __init__(self, name, *, prefix="pni", **kw):
        super().__init__(name, prefix=prefix, **kw)

    @staticmethod
    def probe(ns_prefix="pni-probe"):
        """None if this kernel makes ipip devices, else the reason (a sentence, for pytest.skip).
        Tried in a namespace of its own, removed again."""
        ns = f"{ns_prefix}-{os.getpid()}"
        run("ip", "netns", "add", ns)
        try:
            r = run("ip", "-n", ns, "link", "add", "tunl0", "type", "ipip", check=False)
            if r.returncode == 0 or "File exists" in r.stderr:   # the module's fallback tunl0 is there
                return None
            return f"this kernel has no IPIP (ip link add tunl0 type ipip: {r.stderr.strip() or r.returncode})"
        finally:
            run("ip", "netns", "del", ns, check=False)

    def _build_tunnel(self):
        ns = self.netns
        # Loading the ipip module gives every namespace a fallback tunl0 (any local, any remote):
        # that is the device Calico uses; make it where it is not there yet.
        r = self.node_exec("ip", "link", "add", self.TUNNEL_DEV, "type", "ipip", check=False)
        if r.returncode != 0 and "File exists" not in r.stderr:
            raise IpipUnavailable(f"this kernel has no IPIP (ip link add {self.TUNNEL_DEV} type ipip: "
                                  f"{r.stderr.strip() or r.returncode})")
        info = json.loads(self.node_exec("ip", "-d", "-j", "link", "show", self.TUNNEL_DEV).stdout)[0]
        kind = (info.get("linkinfo") or {}).get("info_kind")
        if kind != "ipip":
            raise RuntimeError(f"{self.TUNNEL_DEV} in {ns} is a {kind!r} device, not ipip")
        self.node_exec("sysctl", "-q", "-e", "-w", f"net.ipv4.conf.{self.TUNNEL_DEV}.rp_filter=0", check=False)
        self.node_exec("ip", "link", "set", self.TUNNEL_DEV, "mtu", self.mtu, "up")

    def tunnel_info(self):
        """tunl0 as the kernel reports it (ip -d -j link): local, remote, ttl, tos, pmtudisc, ...
        plus mtu."""
        d = json.loads(self.node_exec("ip", "-d", "-j", "link", "show", self.TUNNEL_DEV).stdout)[0]
        return {**d["linkinfo"].get("info_data", {}), "mtu": d["mtu"]}

    def _route(self, node_ip):
        return ("via", node_ip, "dev", self.TUNNEL_DEV, "onlink")


def is_root():
    return os.geteuid() == 0
