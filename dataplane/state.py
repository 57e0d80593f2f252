"""The control plane's record of a running cluster (RUN_DIR/state.json), as
typed records: what `up` planned and created, every pod (from the spec,
`podnet pod add`, `kind: Pod` manifests and CNI ADDs alike), the agents, the
external nodes and the services loaded.

Written whole to a temporary file and renamed over (a crash leaves the old
record or the new one) and always *before* what it describes is created, so
`down` can find everything. A pod is recorded with phase "adding" before its
agent is asked to plug it in and becomes "ready" after: a control process
killed in between leaves a record that `pod delete`, CNI DEL, GC and `down`
clean up."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

FORMAT = 2          # 1: the dict of podnet before live pods (pods only in "plan")


class StateError(ValueError):
    pass


@dataclass
class NodeState:
    """One podnet node: its agent process and the files it uses."""
    name: str
    index: int                  # position in the spec: underlay address, uplink name
    subnet: str                 # the node's pod /24
    gateway_ip: str
    gateway_mac: str
    netns: str
    socket: str = ""
    config: str = ""
    log: str = ""
    snapshot: str = ""
    underlay_ip: str = ""
    underlay_mac: str = ""
    pid: int = 0                # 0: the agent was never started (an `up` that stopped half-way)
    metrics: dict | None = None
    restarts: int = 0


@dataclass
class PodRecord:
    """One pod: its address, its port on its node's agent and where its eth0 is."""
    name: str
    node: str
    ip: str
    prefixlen: int
    mac: str
    gateway: str
    mtu: int
    port: int                   # the agent's port number for the pod's TAP
    netns: str                  # a name in /run/netns (owned) or an absolute path (CNI_NETNS)
    owned: bool = True          # podnet created the namespace (and deletes it with the pod)
    ifname: str = "eth0"
    labels: dict = field(default_factory=dict)
    origin: str = "spec"        # spec | cli | manifest | cni
    container_id: str | None = None
    network: str | None = None  # the CNI network (conflist name) that added it: GC is per network
    phase: str = "ready"        # adding: recorded, its agent not yet (or not surely) done
    created: float = 0.0

    def agent_config(self):
        """What the node's agent needs to plug the pod in (its config file's `pods`)."""
        return {"name": self.name, "port": self.port, "netns": self.netns, "ifname": self.ifname,
                "ip": self.ip, "mac": self.mac, "prefixlen": self.prefixlen, "mtu": self.mtu,
                "loopback": self.owned}       # lo in a runtime's netns is its loopback plugin's

    def to_dict(self):
        return {**vars(self), "labels": dict(self.labels)}


@dataclass
class ClusterState:
    cluster: str
    source: str
    spec: dict                              # the spec as loaded (ClusterSpec.to_dict())
    nodes: dict[str, NodeState]
    pods: dict[str, PodRecord]
    services_plan: dict[str, str]           # the spec's services' ClusterIPs
    namespaces: list[str]                   # the namespaces `up` created (pods' owned ones are in pods)
    fabric: dict
    vni: int
    vxlan_port: int
    pod_mtu: int
    vnet: bool = True
    workers: int = 1
    backend: str = "vxlan"                  # vxlan | ipip | direct; a record from before backends is vxlan
    external: dict = field(default_factory=dict)          # name -> {name, pod_cidr, vtep, vtep_mac}
    service_store: dict | None = None
    service_entries: list = field(default_factory=list)
    created: float = 0.0

    # ---- questions every command asks --------------------------------------

    def node(self, name):
        return self.nodes[name]

    def pod(self, name):
        return self.pods[name]

    def pods_on(self, node):
        return [p for p in self.pods.values() if p.node == node]

    def attachments(self):
        """The pods a container runtime made through CNI."""
        return [p for p in self.pods.values() if p.container_id is not None]

    def owned_namespaces(self):
        """Every namespace podnet made for this cluster and deletes at `down`."""
        return self.namespaces + [p.netns for p in self.pods.values() if p.owned and p.netns not in self.namespaces]

    # ---- on disk -------------------------------------------------------------

    def to_dict(self):
        # shallow, not dataclasses.asdict (a deepcopy of everything): written
        # whole on every pod change, this is on the path of every pod add
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["nodes"] = {n: {**vars(v), "metrics": dict(v.metrics) if v.metrics else v.metrics}
                      for n, v in self.nodes.items()}
        d["pods"] = {n: v.to_dict() for n, v in self.pods.items()}
        return {"format": FORMAT, **d}

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise StateError(f"not a podnet state record of format {FORMAT} "
                             f"(format {d.get('format', 1) if isinstance(d, dict) else '?'}): "
                             "written by another podnet version")
        try:
            kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
            kw["nodes"] = {n: NodeState(**v) for n, v in d["nodes"].items()}
            kw["pods"] = {n: PodRecord(**v) for n, v in d["pods"].items()}
            return cls(**kw)
        except (KeyError, TypeError, AttributeError) as e:
            raise StateError(f"a field is missing or wrong ({e})") from None


def load(path):
    """The state at path, or None when there is none."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    try:
        return ClusterState.from_dict(json.loads(text))
    except (ValueError, StateError) as e:
        raise StateError(f"{path} is unreadable ({e}); check `ip netns`, then remove it") from None


def save(path, state):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    # compact: json's C encoder serves only indent=None (indent=2 took ~6 ms
    # a save at 200 pods); `python -m json.tool` shows it indented
    tmp.write_text(json.dumps(state.to_dict(), separators=(",", ":")))
    os.replace(tmp, path)
