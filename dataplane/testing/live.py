"""A live cluster for tests (Cluster) and its endpoints: pods' eth0 (Pod)
and nodes' ports on the fabric (Node.uplink), reached by AF_PACKET sockets
opened inside their namespaces."""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .capture import _SocketCapture
from .frames import UPLINK, PodnetTestError, _seq, sized_frames


def _have_root():
    return os.geteuid() == 0 and os.path.exists("/dev/net/tun")


# ---- endpoints: where frames are sent and captured -------------------------------

@contextlib.contextmanager
def run_env(run_dir, state_dir):
    """PODNET_RUN_DIR and PODNET_STATE_DIR set to these directories for the
    block, and put back as they were after it."""
    keys = {"PODNET_RUN_DIR": str(run_dir), "PODNET_STATE_DIR": str(state_dir)}
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Endpoint:
    """An interface frames can be sent from and captured at: a pod's eth0
    (Pod), a node's port on the fabric (Node.uplink). send() injects frames
    as the interface itself transmits them (an AF_PACKET socket inside its
    namespace): from a pod's eth0 into its node's fast path, from an uplink
    into the node from the fabric. capture()/sniff() see what arrives at
    the interface from the fast path (not what it sends)."""

    def __init__(self, netns, ifname, mtu, name=None):
        self.netns, self.ifname, self.mtu = netns, ifname, mtu
        self.name = name or f"{netns}:{ifname}"
        self._tx = None

    def __repr__(self):
        return f"<{type(self).__name__} {self.name}>"

    def _socket(self, proto):
        from tap.device import TapError, in_netns
        try:
            with in_netns(self.netns):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
                try:
                    s.bind((self.ifname, proto))
                except OSError as e:
                    s.close()
                    raise PodnetTestError(f"{self.name}: no interface {self.ifname} in namespace "
                                          f"{self.netns} ({e.strerror})") from None
        except TapError as e:
            raise PodnetTestError(f"{self.name}: {e} (is the cluster still up?)") from None
        return s

    def check_frames(self, pkts):
        """The frames as bytes, each checked against this interface's MTU
        (frames.sized_frames)."""
        return sized_frames(self.name, self.mtu, pkts)

    def send(self, pkts):
        """Transmit one frame or several (scapy packets or bytes), in order,
        as this interface sends them. All are checked against its MTU first."""
        return self._transmit(self.check_frames(pkts))

    def _transmit(self, frames):
        if self._tx is None:
            self._tx = self._socket(0)             # protocol 0: sends only, receives nothing
        for f in frames:
            self._tx.send(f)
        return len(frames)

    def capture(self, filter=None):
        """A Capture of what arrives here from now on (use it as a context
        manager; send, then capture.wait(...))."""
        return _SocketCapture(self, filter)

    def sniff(self, count=None, timeout=1.0, filter=None):
        """Frames (scapy Ether) arriving within timeout s, stopping early
        once count have arrived. filter: as Capture's."""
        with self.capture(filter) as cap:
            return cap.wait((lambda f: len(f) >= count) if count else None, timeout)[:count]

    def exec(self, cmd, timeout=30.0, check=True, input=None):
        """Run cmd (a list, or a string split as a shell would) inside this
        endpoint's namespace; returns the CompletedProcess (text). check: a
        non-zero exit raises PodnetTestError with its output."""
        argv = shlex.split(cmd) if isinstance(cmd, str) else [str(a) for a in cmd]
        pre = ["nsenter", f"--net={self.netns}"] if "/" in self.netns else ["ip", "netns", "exec", self.netns]
        r = subprocess.run(pre + argv, capture_output=True, text=True, timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise PodnetTestError(f"{' '.join(argv)} in {self.name} exited with {r.returncode}:\n"
                                  f"{r.stdout}{r.stderr}")
        return r

    def close(self):
        """Close the endpoint's sending socket (Cluster.down does)."""
        if self._tx is not None:
            self._tx.close()
            self._tx = None


class Pod(Endpoint):
    """A pod of a live cluster. ip, mac: its eth0's; gateway, gateway_mac:
    its node's gateway (the default route); node: its node's name; netns,
    ifname, mtu: where its eth0 is. send/capture/sniff/exec as Endpoint's."""

    def __init__(self, rec, gateway_mac):
        super().__init__(rec.netns, rec.ifname, rec.mtu, rec.name)
        self.ip, self.mac, self.gateway, self.gateway_mac = rec.ip, rec.mac, rec.gateway, gateway_mac
        self.node, self.prefixlen, self.labels = rec.node, rec.prefixlen, dict(rec.labels)


@dataclass(frozen=True)
class NodeInfo:
    """A node's addresses: its pod subnet and gateway, and its address on the
    fabric (the VTEP of VXLAN, the tunnel end of IP-in-IP, the next hop of
    direct routing)."""
    name: str
    index: int
    subnet: str
    gateway_ip: str
    gateway_mac: str
    underlay_ip: str
    underlay_mac: str


class Node(NodeInfo):
    """A node of a live cluster: NodeInfo's addresses, uplink (an Endpoint
    on the node's port in the fabric namespace: what the node sends to the
    fabric is captured there, and what is sent there reaches the node from
    the fabric), and its agent's counters."""

    def __init__(self, ns, fabric_ns, fabric_mtu):
        object.__setattr__(self, "_ns", ns)
        for f in ("name", "index", "subnet", "gateway_ip", "gateway_mac", "underlay_ip", "underlay_mac"):
            object.__setattr__(self, f, getattr(ns, f))
        object.__setattr__(self, "netns", ns.netns)
        object.__setattr__(self, "uplink", Endpoint(fabric_ns, f"up{ns.index}", fabric_mtu,
                                                    f"{ns.name}:{UPLINK}"))

    def request(self, op, **args):
        """One control request to the node's agent (dataplane/control.py)."""
        from dataplane.control import request
        return request(self._ns.socket, op, **args)

    def counters(self):
        """The agent's counters (drops by reason, bridge, gateway, overlay,
        services, conntrack, ports)."""
        return self.request("counters")

    def drops(self):
        """The drop counters that are not zero, by reason."""
        return {k: v for k, v in self.counters()["drops"].items() if v}


# ---- specs -------------------------------------------------------------------------

def load_spec_input(spec):
    """A spec given as a dict, YAML text, a path (str or Path) or None (the
    embedded default), parsed and validated: a ClusterSpec (SpecError lists
    every problem)."""
    from dataplane.spec import DEFAULT_SPEC, parse_spec
    if spec is None:
        return parse_spec(DEFAULT_SPEC, "<default spec>")
    if isinstance(spec, dict):
        return parse_spec(json.dumps(spec), "<spec dict>")
    if isinstance(spec, Path) or (isinstance(spec, str) and "\n" not in spec and spec.endswith((".yaml", ".yml", ".json"))):
        path = Path(spec)
        if not path.is_file():
            raise PodnetTestError(f"spec file {path} does not exist")
        return parse_spec(path.read_text(), str(path))
    if isinstance(spec, str):
        return parse_spec(spec, "<spec text>")
    raise PodnetTestError(f"a spec is a dict, YAML text or a path, not {type(spec).__name__}")


def _unique_name():
    """A cluster name no namespace on this host starts with: 'pt', this
    process's PID and a counter (in hex), within the 20 characters a name
    may have."""
    from dataplane import netns
    taken = set(os.listdir(netns.NETNS_DIR)) if os.path.isdir(netns.NETNS_DIR) else set()
    while True:
        name = f"pt{os.getpid():x}x{next(_seq):x}"
        if not any(n.startswith(name + "-") for n in taken):
            return name


# ---- a live cluster ------------------------------------------------------------------

class Cluster:
    """A live podnet cluster for tests: namespaces, TAPs and agents, as
    `podnet up` makes them, in a run and state directory of its own (under
    workdir) and under a unique name (its namespaces' prefix), so the user's
    own cluster is never touched. The spec's cluster.name is replaced by
    that name; everything else is the spec's.

        with Cluster(spec) as c:          # up; down on leaving, also on an error
            c.pod("web-a").send(...)

    up() validates the spec before it creates anything (SpecError) and takes
    down whatever it made if it fails half-way."""

    def __init__(self, spec=None, workdir=None, *, vnet=True, workers=None, name=None):
        parsed = load_spec_input(spec)
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="podnet-test-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name or _unique_name()
        doc = parsed.to_dict()
        doc["cluster"]["name"] = self.name
        self.spec_path = self.workdir / "spec.json"
        self.spec_path.write_text(json.dumps(doc, indent=1))
        self.spec = load_spec_input(self.spec_path)      # the name checked like the rest
        self.run_dir, self.state_dir = self.workdir / "run", self.workdir / "state"
        self.vnet, self.workers = vnet, workers
        self.started = False
        self._endpoints = []
        self._napply = 0
        self.log = []                                    # `podnet up`'s progress lines

    def __repr__(self):
        return f"<Cluster {self.name} ({len(self.spec.nodes)} nodes, {len(self.spec.pods)} pods)>"

    def env(self):
        """This cluster's PODNET_RUN_DIR and PODNET_STATE_DIR in os.environ
        for the block (dataplane.cluster and the CLI read them)."""
        return run_env(self.run_dir, self.state_dir)

    def up(self):
        """Bring the cluster up (namespaces, fabric, agents, the spec's
        services). PodnetTestError without root; a failure leaves nothing."""
        if not _have_root():
            raise PodnetTestError("a live podnet cluster needs root and /dev/net/tun")
        from dataplane import cluster
        with self.env():
            cluster.up(str(self.spec_path), vnet=self.vnet, progress=self.log.append, workers=self.workers)
        self.started = True
        return self

    def down(self):
        """Take the cluster down (agents, namespaces, run files) and check
        that none of the namespaces its record names is left; a second call
        does nothing. A namespace the cluster did not make is never touched."""
        for ep in self._endpoints:
            ep.close()
        self._endpoints.clear()
        from dataplane import cluster, netns
        with self.env():
            try:
                s = cluster.load_state()
            except cluster.ClusterError:
                s = None
            made = [] if s is None else s.owned_namespaces()
            cluster.down(quiet=True, force=True, progress=lambda *_: None)
        left = [n for n in made if netns.exists(n)]
        for n in left:                                   # never expected: removed, then reported
            netns.remove(n)
        self.started = False
        if left:
            raise PodnetTestError(f"cluster {self.name}: namespaces left after down (removed): {', '.join(left)}")

    def __enter__(self):
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *exc):
        self.down()

    def state(self):
        """The cluster's record (dataplane/state.py ClusterState), read now."""
        from dataplane import cluster
        with self.env():
            s = cluster.load_state()
        if s is None:
            raise PodnetTestError(f"cluster {self.name} is not up")
        return s

    def _named(self, what, records, name):
        if name not in records:
            raise PodnetTestError(f"no {what} {name!r} in cluster {self.name}; "
                                  f"its {what}s: {', '.join(records) or 'none'}")
        return records[name]

    def pod(self, name):
        """The Pod called name (from the spec, `apply`, `podnet pod add` or CNI)."""
        s = self.state()
        rec = self._named("pod", s.pods, name)
        pod = Pod(rec, s.nodes[rec.node].gateway_mac)
        self._endpoints.append(pod)
        return pod

    def node(self, name):
        """The Node called name."""
        s = self.state()
        ns = self._named("node", s.nodes, name)
        node = Node(ns, s.fabric["namespace"], s.fabric["mtu"])
        self._endpoints.append(node.uplink)
        return node

    @property
    def pods(self):
        """The names of the cluster's pods."""
        return list(self.state().pods)

    @property
    def nodes(self):
        """The names of the cluster's nodes."""
        return list(self.state().nodes)

    def apply(self, manifests, delete=False):
        """`podnet apply -f` (delete: `podnet delete -f`) of Pods, Services and
        EndpointSlices given as YAML text, a path, a dict or a list of dicts.
        Every object is validated before any is applied (a ManifestError
        changes nothing). Returns what dataplane.cluster.apply_file does."""
        from dataplane import cluster
        if isinstance(manifests, (dict, list)):
            items = manifests if isinstance(manifests, list) else [manifests]
            text = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        elif isinstance(manifests, Path) or (isinstance(manifests, str) and "\n" not in manifests
                                             and os.path.isfile(manifests)):
            text = Path(manifests).read_text()
        elif isinstance(manifests, str):
            text = manifests
        else:
            raise PodnetTestError(f"manifests are YAML text, a path, a dict or a list, not {type(manifests).__name__}")
        self._napply += 1
        path = self.workdir / f"manifests-{self._napply}.yaml"
        path.write_text(text)
        with self.env():
            return cluster.apply_file(str(path), delete=delete)

    def status(self):
        """What `podnet status -o json` reports: nodes (agents, addresses,
        backend, offloads), pods, services."""
        from dataplane import cluster
        with self.env():
            return cluster.status()

    def podnet(self, *args, check=True, timeout=60.0):
        """Run the CLI (`podnet ARGS`) on this cluster; returns the
        CompletedProcess (text). check: a non-zero exit raises."""
        env = {**os.environ, "PODNET_RUN_DIR": str(self.run_dir), "PODNET_STATE_DIR": str(self.state_dir)}
        r = subprocess.run([sys.executable, "-m", "dataplane", *map(str, args)], capture_output=True,
                           text=True, timeout=timeout, env=env)
        if check and r.returncode != 0:
            raise PodnetTestError(f"podnet {' '.join(map(str, args))} exited with {r.returncode}:\n{r.stderr}")
        return r
