"""One node's fast path in memory (MemoryNode), configured by its agent's
own code from a spec, with its ports as endpoints (MemoryPort, MemoryPod)."""
from __future__ import annotations

import tempfile
from pathlib import Path

from .capture import Capture
from .frames import UPLINK, PodnetTestError, _ether, sized_frames
from .live import NodeInfo, load_spec_input


class Clock:
    """An injected clock (seconds) for the in-memory node (and any
    Dataplane): tests move it, never sleep."""

    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t

    def advance(self, seconds):
        """Move the clock seconds on."""
        self.t += seconds


class _MemoryCapture(Capture):
    def __init__(self, queue, filter=None):
        if isinstance(filter, str):
            raise PodnetTestError("in-memory captures take a callable filter, not BPF")
        super().__init__(filter)
        self.queue, self.start = queue, len(queue)

    def _poll(self, timeout):
        """Everything the fast path put out is there the moment send() returns."""
        for f in self.queue[self.start:]:
            self._take(f)
        self.start = len(self.queue)


class MemoryPort:
    """A port of an in-memory node: send() runs frames into the fast path
    as if they arrived on it (returns the output frames per port, as
    MemoryNode.send); capture()/sniff() see what the fast path put out on it."""

    def __init__(self, node, port, name, mtu):
        self._node, self.port, self.name, self.mtu = node, port, name, mtu

    def __repr__(self):
        return f"<{type(self).__name__} {self.name} (port {self.port})>"

    def check_frames(self, pkts):
        """The frames as bytes, each checked against this port's MTU."""
        return sized_frames(self.name, self.mtu, pkts)

    def send(self, pkts):
        """Run frames into the fast path as if they arrived on this port;
        returns the output frames per port (MemoryNode.send)."""
        return self._node.send(self.name, pkts)

    def _transmit(self, frames):
        self._node._process(self.port, frames)

    def capture(self, filter=None):
        """A Capture of what the fast path puts out on this port from now on
        (filter: a callable; BPF needs a kernel)."""
        return _MemoryCapture(self._node._queue(self.port), filter)

    def sniff(self, count=None, timeout=0.0, filter=None):
        """The frames put out on this port since the last sniff (at most
        count); timeout is accepted for symmetry with live pods and unused:
        nothing arrives later in memory."""
        q = self._node._queue(self.port)
        frames = [f for f in (_ether(b) for b in q) if filter is None or filter(f)]
        q.clear()
        return frames[:count] if count else frames

    def exec(self, cmd, **kw):
        """An in-memory port has no namespace: PodnetTestError."""
        raise PodnetTestError(f"{self.name} is in memory: it has no namespace to run {cmd!r} in")


class MemoryPod(MemoryPort):
    """A pod of an in-memory node, with a live Pod's attributes (ip, mac,
    gateway, gateway_mac, node, mtu, labels). A pod of another node of the
    spec has them too (port None): its frames reach this node over the uplink."""

    def __init__(self, node, rec, gateway_mac, local):
        super().__init__(node, rec.port if local else None, rec.name, rec.mtu)
        self.ip, self.mac, self.gateway, self.gateway_mac = rec.ip, rec.mac, rec.gateway, gateway_mac
        self.node, self.prefixlen, self.labels = rec.node, rec.prefixlen, dict(rec.labels)

    def _local(self):
        if self.port is None:
            raise PodnetTestError(f"pod {self.name} is on node {self.node}, not on this in-memory node "
                                  f"({self._node.name}): its frames reach this node over the {UPLINK!r} port")

    def send(self, pkts):
        self._local()
        return super().send(pkts)

    def _transmit(self, frames):
        self._local()
        return super()._transmit(frames)

    def capture(self, filter=None):
        self._local()
        return super().capture(filter)

    def sniff(self, count=None, timeout=0.0, filter=None):
        self._local()
        return super().sniff(count, timeout, filter)


class MemoryNode:
    """One node of a spec, its fast path in this process, configured as its
    agent configures it (dataplane.agent.Agent.configure: the gateway, each
    pod's port with its anti-spoofing guard and ARP entry, the uplink with
    the cluster's backend and the routes to the other nodes, the spec's
    services with their endpoints): no TAPs, no root, an injected clock.

    Differences from a live agent, all for running without a fabric: frames
    carry no vnet headers (no offloads), the other nodes' underlay MACs are
    known up front (a live agent learns them by ARP), and nothing runs
    between send() calls (advance the clock, then send, to age things).

        node = MemoryNode(spec, "node-a")
        out = node.send("client-a", frame)    # {"uplink": [Ether ...]}"""

    def __init__(self, spec=None, node=None, *, workdir=None, clock=None, fdb_capacity=4096,
                 service_capacity=4096, conntrack_capacity=16384, burst=64):
        from dataplane import cluster
        from dataplane.agent import Agent, UPLINK_PORT
        from dataplane.ipam import Ipam
        from dataplane.manifests import ServiceStore
        self.spec = load_spec_input(spec)
        names = [n.name for n in self.spec.nodes]
        self.name = node or names[0]
        if self.name not in names:
            raise PodnetTestError(f"no node {self.name!r} in the spec; its nodes: {', '.join(names)}")
        tmp = tempfile.TemporaryDirectory(prefix="podnet-memnode-") if workdir is None else None
        wd = Path(workdir) if workdir else Path(tmp.name)
        try:
            plan = Ipam(wd / "ipam.json").plan(self.spec)
            self.state = cluster.plan_state(self.spec, plan, vnet=False, nworkers=0)
            cfg = cluster.agent_config(self.spec, self.state, self.name, wd)
            cfg.update(workers=0, burst=burst, fdb_capacity=fdb_capacity, service_capacity=service_capacity,
                       conntrack_capacity=conntrack_capacity)
            macs = {n.underlay_ip: n.underlay_mac for n in self.state.nodes.values()}
            cfg["routes"] = [{**r, "vtep_mac": macs[r["vtep"]]} for r in cfg["routes"]]
            self.clock = clock or Clock()
            self.agent = Agent(cfg, clock=self.clock)
            self.agent.configure(uplink_vnet_len=0, tunnel_gso=False)
            self.dp = self.agent.dp
            pods = {p.name: (p.ip, dict(p.labels)) for p in self.state.pods.values()}
            store = ServiceStore(pods=pods, service_cidr=str(self.spec.service_cidr))
            store.apply(cluster.spec_services(self.spec, plan))
            self.service_entries = store.resolve()
            if self.service_entries:
                self.agent.services_apply(self.service_entries, [])
        finally:
            if tmp is not None:
                tmp.cleanup()
        self.uplink_port = UPLINK_PORT
        self.backend = self.spec.backend
        self.vni = self.spec.vni
        self._ports = {p.name: p.port for p in self.state.pods_on(self.name)}
        self._names = {**{v: k for k, v in self._ports.items()}, UPLINK_PORT: UPLINK}
        self._queues = {}
        self.uplink = MemoryPort(self, UPLINK_PORT, UPLINK, self.spec.mtu)

    def __repr__(self):
        return f"<MemoryNode {self.name} ({self.backend}, {len(self._ports)} pods)>"

    def _queue(self, port):
        return self._queues.setdefault(port, [])

    def info(self, name=None):
        """NodeInfo of this node, or of another node of the spec."""
        n = self.state.nodes.get(name or self.name)
        if n is None:
            raise PodnetTestError(f"no node {name!r} in the spec; its nodes: {', '.join(self.state.nodes)}")
        return NodeInfo(n.name, n.index, n.subnet, n.gateway_ip, n.gateway_mac, n.underlay_ip, n.underlay_mac)

    @property
    def pods(self):
        """The names of this node's pods."""
        return list(self._ports)

    def pod(self, name):
        """The MemoryPod called name (a pod of this node, or of another node
        of the spec: then only its addresses are of use)."""
        rec = self.state.pods.get(name)
        if rec is None:
            raise PodnetTestError(f"no pod {name!r} in the spec; its pods: {', '.join(self.state.pods) or 'none'}")
        return MemoryPod(self, rec, self.state.nodes[rec.node].gateway_mac, rec.node == self.name)

    def port_of(self, port_or_name):
        """The port number of a pod's name, "uplink" or a port number of
        this node; PodnetTestError naming what there is otherwise."""
        if isinstance(port_or_name, int) and not isinstance(port_or_name, bool):
            if port_or_name not in self._names:
                raise PodnetTestError(f"node {self.name} has no port {port_or_name}; its ports: "
                                      + ", ".join(f"{p} ({n})" for p, n in sorted(self._names.items())))
            return port_or_name
        if port_or_name == UPLINK:
            return self.uplink_port
        port = self._ports.get(port_or_name)
        if port is None:
            where = self.state.pods.get(port_or_name)
            raise PodnetTestError(
                f"pod {port_or_name!r} is on node {where.node}, not {self.name}" if where else
                f"no pod or port {port_or_name!r} on node {self.name}; its pods: {', '.join(self._ports) or 'none'}"
                f", and {UPLINK!r}")
        return port

    def send(self, port_or_name, pkts):
        """Run frames through the fast path as if they arrived on a port (a
        pod's name, "uplink" or a port number). Returns the frames put out,
        per port name ({"web-b": [Ether, ...], "uplink": [...]}, ports with
        none left out); they are also kept for that port's capture/sniff."""
        port = self.port_of(port_or_name)
        mtu = self.spec.mtu if port == self.uplink_port else self.spec.pod_mtu
        frames = sized_frames(port_or_name, mtu, pkts)
        out = {}
        for p, b in self._process(port, frames):
            out.setdefault(self._names.get(p, str(p)), []).append(_ether(b))
        return out

    def _process(self, port, frames):
        res = self.dp.process(frames, port)
        for p, b in res:
            self._queue(p).append(b)
        return res

    def counters(self):
        """The fast path's counters, as the agent's `counters` request gives them."""
        return self.dp.counters()

    def drops(self):
        """The drop counters that are not zero, by reason."""
        return {k: v for k, v in self.dp.counters()["drops"].items() if v}

    def close(self):
        """Stop the in-memory agent's loop object (no threads ran)."""
        self.agent.io.stop()
