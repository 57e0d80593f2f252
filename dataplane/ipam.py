"""IPAM in the style of the CNI host-local plugin: a /24 per node, pod addresses .2-.254 (the
gateway is .1), ClusterIPs from the service CIDR.

Allocations are kept in a JSON lease file, so `podnet down` then `up` gives every node, pod and
service the address it had. Whatever holds a still-valid lease keeps it; newcomers take the lowest
free address; leases of things gone from the spec are dropped.

Pods added to a running cluster (allocate_pod) are given addresses as host-local gives them: from
the address after the last one handed out in the node's range (its last_reserved_ip), wrapping at
the end, so an address freed by a pod that went is not handed out again until the range wraps --
a new pod does not inherit a dead pod's connections or affinity pins.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

SERVICE_OFFSET = 10  # auto ClusterIPs start at network+10, leaving the low ones for explicit IPs
_KINDS = {"nodes": IPv4Network, "pods": IPv4Address, "services": IPv4Address}


class IpamError(ValueError):
    pass


def mac_for(ip):
    """The MAC the CNI plugins and ovn-kubernetes derive from an IPv4 address: 0a:58:a:b:c:d."""
    return "0a:58:" + ":".join(f"{b:02x}" for b in IPv4Address(ip).packed)


@dataclass
class NodePlan:
    name: str
    index: int  # position in the spec
    subnet: IPv4Network
    gateway_ip: IPv4Address
    gateway_mac: str


@dataclass
class PodPlan:
    name: str
    node: str
    ip: IPv4Address
    prefixlen: int
    mac: str
    gateway_ip: IPv4Address


@dataclass
class Plan:
    nodes: dict[str, NodePlan]
    pods: dict[str, PodPlan]
    services: dict[str, IPv4Address]

    def to_dict(self):
        def plain(obj):
            return {k: v if isinstance(v, (int, str)) else str(v) for k, v in vars(obj).items()}
        return {"nodes": {n: plain(p) for n, p in self.nodes.items()},
                "pods": {n: plain(p) for n, p in self.pods.items()},
                "services": {n: str(ip) for n, ip in self.services.items()}}


class Ipam:
    def __init__(self, path):
        self.path = Path(path)

    def plan(self, spec):
        """Addresses for every node, pod and service of spec; the lease file then holds exactly
        these. Reads the file on each call, and writes nothing when it raises."""
        leases = self._load()
        nodes = _plan_nodes(spec, leases["nodes"])
        plan = Plan(nodes, _plan_pods(spec, nodes, leases["pods"]),
                    _plan_services(spec, leases["services"]))
        subnets = {str(n.subnet) for n in nodes.values()}
        last = {net: ip for net, ip in leases["last_reserved"].items() if net in subnets}
        self._write({"nodes": {n: str(p.subnet) for n, p in plan.nodes.items()},
                     "pods": {n: str(p.ip) for n, p in plan.pods.items()},
                     "services": {n: str(ip) for n, ip in plan.services.items()},
                     "last_reserved": {net: str(ip) for net, ip in last.items()}})
        return plan

    def allocate_pod(self, name, subnet):
        """An address for a new pod `name` in a node's subnet (a /24: .2-.254), host-local style:
        the first free one after the range's last reserved address, wrapping. Written to the
        lease file before it is returned; IpamError when the subnet is full or name holds one."""
        subnet = IPv4Network(subnet)
        leases = self._load()
        if name in leases["pods"]:
            raise IpamError(f"pod {name!r} already holds {leases['pods'][name]}")
        base = int(subnet.network_address)
        first, last = base + 2, base + 254
        taken = {int(ip) for ip in leases["pods"].values()}
        prev = leases["last_reserved"].get(str(subnet))
        start = int(prev) + 1 if prev is not None and first <= int(prev) <= last else first
        size = last - first + 1
        for i in range(size):
            addr = first + (start - first + i) % size
            if addr not in taken:
                break
        else:
            raise IpamError(f"node subnet {subnet} has no free address left for pod {name!r}")
        leases["pods"][name] = IPv4Address(addr)
        leases["last_reserved"][str(subnet)] = IPv4Address(addr)
        self._write(_plain(leases))
        return IPv4Address(addr)

    def release_pod(self, name):
        """Free a pod's address (last_reserved stays: it is not handed out again until the
        range wraps). True if it held one."""
        leases = self._load()
        if leases["pods"].pop(name, None) is None:
            return False
        self._write(_plain(leases))
        return True

    def pod_leases(self):
        """{pod name: address} as the lease file holds them."""
        return dict(self._load()["pods"])

    def _load(self):
        """The leases in the file, {kind: {name: address}}; none when there is no file."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {kind: {} for kind in (*_KINDS, "last_reserved")}
        except OSError as exc:
            raise IpamError(f"{self.path}: cannot read the lease file: {exc.strerror}") from None
        except ValueError as exc:
            raise IpamError(f"{self.path}: corrupt lease file, not JSON ({exc}); "
                            "remove it to allocate afresh") from None
        try:
            leases = {kind: {name: _parse(kind, value) for name, value in data.get(kind, {}).items()}
                      for kind in _KINDS}
            leases["last_reserved"] = {net: _parse("pods", ip) for net, ip in data.get("last_reserved", {}).items()}
            return leases
        except (AttributeError, ValueError) as exc:  # not an object of objects, or a bad address
            raise IpamError(f"{self.path}: corrupt lease file ({exc}); "
                            "remove it to allocate afresh") from None

    def _write(self, data):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Write a temporary file beside the lease file and rename it over: a crash leaves
            # either the old leases or the new ones, never half a file.
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(data, f, indent=2)
                    f.write("\n")
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            raise IpamError(f"{self.path}: cannot write the lease file: {exc.strerror}") from None


def _plain(leases):
    return {kind: {k: str(v) for k, v in entries.items()} for kind, entries in leases.items()}


def _parse(kind, value):
    if not isinstance(value, str):
        raise ValueError(f"{kind}: {value!r} is not a string")
    return _KINDS[kind](value)


def _plan_nodes(spec, leased):
    explicit = {n.name: int(n.pod_cidr.network_address) for n in spec.nodes if n.pod_cidr}
    first, last = int(spec.pod_cidr.network_address), int(spec.pod_cidr.broadcast_address)
    # The pool holds the network addresses of the /24s, so only /24 leases can be kept.
    leased = {name: int(net.network_address) for name, net in leased.items() if net.prefixlen == 24}
    auto = [n.name for n in spec.nodes if not n.pod_cidr]
    subnets = explicit | _allocate(auto, leased, range(first, last + 1, 256), set(explicit.values()),
                                   f"pod CIDR {spec.pod_cidr} has no free /24 left", "node")
    plans = {}
    for index, node in enumerate(spec.nodes):
        subnet = IPv4Network((subnets[node.name], 24))
        plans[node.name] = NodePlan(node.name, index, subnet, subnet[1], mac_for(subnet[1]))
    return plans


def _plan_pods(spec, nodes, leased):
    leased, ips = _ints(leased), {}
    for node in nodes.values():
        base = int(node.subnet.network_address)
        ips |= _allocate([p.name for p in spec.pods_on(node.name)], leased, range(base + 2, base + 255),
                         set(), f"node {node.name!r} (subnet {node.subnet}) has no free address left", "pod")
    plans = {}
    for pod in spec.pods:
        ip = IPv4Address(ips[pod.name])
        plans[pod.name] = PodPlan(pod.name, pod.node, ip, 24, mac_for(ip), nodes[pod.node].gateway_ip)
    return plans


def _plan_services(spec, leased):
    explicit = {s.name: int(s.cluster_ip) for s in spec.services if s.cluster_ip}
    first, last = int(spec.service_cidr.network_address), int(spec.service_cidr.broadcast_address)
    auto = [s.name for s in spec.services if not s.cluster_ip]
    pool = range(first + SERVICE_OFFSET, last)  # never the broadcast address
    ips = explicit | _allocate(auto, _ints(leased), pool, set(explicit.values()),
                               f"service CIDR {spec.service_cidr} has no free address left "
                               f"(auto ClusterIPs start at network+{SERVICE_OFFSET})", "service")
    return {s.name: IPv4Address(ips[s.name]) for s in spec.services}


def _ints(leases):
    return {name: int(addr) for name, addr in leases.items()}


def _allocate(names, leased, pool, taken, full, kind):
    """{name: address} for names, addresses as ints from pool (a range), none of them in taken.

    A name keeps its lease when it is still in the pool and free; only then do the others take
    the lowest free addresses, so a newcomer never takes an address someone still holds."""
    got = {}
    for name in names:
        addr = leased.get(name)
        if addr is not None and addr in pool and addr not in taken:  # None would scan the pool
            got[name] = addr
            taken.add(addr)
    free = (addr for addr in pool if addr not in taken)
    for name in names:
        if name not in got:
            got[name] = next(free, None)
            if got[name] is None:
                raise IpamError(f"{full} for {kind} {name!r}")
    return got
