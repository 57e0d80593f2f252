"""Cluster lifecycle: `up` (plan, namespaces, agents), `down` (remove all of
it, also after a crash), status. What `up` creates is recorded under the run
directory before it is created, so `down` can always find it. `up` on a
cluster that is up restarts the agents that died (restart()); they resume
from their snapshots. One `up` or `down` runs at a time (a lock file)."""
import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from dataplane import netns
from dataplane.control import ControlError, request
from dataplane import state as st
from dataplane.ipam import Ipam, IpamError

AGENT_READY_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
MAX_POD_PORTS = 255      # agent ports 0..254; 255 is the uplink


class ClusterError(RuntimeError):
    """One line for the user; code says what kind of failure it was, for the
    CNI plugin's error codes: no_cluster, no_node, exists, not_found,
    agent_down, bad_netns, ipam_full, invalid, busy, plug_failed (the agent
    could not make or place the pod's TAP)."""

    def __init__(self, msg, code="invalid"):
        super().__init__(msg)
        self.code = code


def run_dir():
    return Path(os.environ.get("PODNET_RUN_DIR", "/run/podnet"))


def state_dir():
    return Path(os.environ.get("PODNET_STATE_DIR", "/var/lib/podnet"))


def cni_socket():
    """Where the first node's agent serves podnet-cni (dataplane/cniserver.py)."""
    return run_dir() / "cni.sock"


def state_path():
    return run_dir() / "state.json"


def node_ns(cluster, node):
    return f"{cluster}-node-{node}"


def pod_ns(cluster, pod):
    return f"{cluster}-pod-{pod}"


def fabric_ns(cluster):
    return f"{cluster}-fabric"


FABRIC_BRIDGE = "br-fabric"


def underlay(spec, index):
    """Node index -> (underlay IP, underlay MAC) on the fabric."""
    ip = spec.fabric_cidr.network_address + 1 + index
    return ip, "0a:5a:" + ":".join(f"{b:02x}" for b in ip.packed)


def _make_fabric(spec):
    """The simulated datacenter network: a Linux bridge in its own namespace."""
    from pyroute2 import NetNS
    ns = fabric_ns(spec.name)
    with NetNS(ns) as ipr:
        ipr.link("add", ifname=FABRIC_BRIDGE, kind="bridge")
        [br] = ipr.link_lookup(ifname=FABRIC_BRIDGE)
        ipr.link("set", index=br, mtu=spec.mtu, state="up")
    # br_netfilter is built in here and on by default in new namespaces: keep
    # iptables out of the fabric.
    # No IPv6 on fabric ports either: their link-local chatter would reach every agent.
    for key in ("bridge.bridge-nf-call-iptables", "bridge.bridge-nf-call-ip6tables",
                "bridge.bridge-nf-call-arptables", "ipv6.conf.all.disable_ipv6",
                "ipv6.conf.default.disable_ipv6"):
        value = "1" if "ipv6" in key else "0"
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"net.{key}={value}"],
                       capture_output=True, timeout=10)


def load_state():
    try:
        return st.load(state_path())
    except st.StateError as e:
        raise ClusterError(str(e)) from None


def _save_state(state):
    st.save(state_path(), state)


def _pid_is_agent(pid, config):
    """True if pid is still the agent we started (not a recycled PID)."""
    if not pid:
        return False
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return config.encode() in cmd


def _alive_agent(node):
    return _pid_is_agent(node.pid, node.config)


_lock_depth = 0


@contextlib.contextmanager
def _exclusive():
    """Hold the run directory's lock (re-entrant within this process): a
    `down` during a restart waits, then sees the new agents' PIDs; CNI ADDs
    from several containers at once take their addresses one at a time."""
    global _lock_depth
    if _lock_depth:
        _lock_depth += 1
        try:
            yield
        finally:
            _lock_depth -= 1
        return
    run_dir().mkdir(parents=True, exist_ok=True)
    lock = run_dir() / "lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _lock_depth = 1
        try:
            yield
        finally:
            _lock_depth = 0
            if not state_path().exists():             # no cluster (down, failed up): no file left
                lock.unlink(missing_ok=True)
    finally:
        os.close(fd)


def workers_for(spec_workers, override=None):
    """Forwarding threads per node: --workers, else the spec's cluster.workers;
    "auto" is one per two CPUs, at least one and at most 8. Measured on a
    2-CPU machine (docs/fast-path.md, "Workers and shared tables"): a second worker there only takes CPU
    from the pods' own stacks (iperf3, the kernel's TAP receive), so "auto"
    means 1 there; on a bigger machine each worker gets a core of its own
    beside the pods'."""
    w = override if override is not None else spec_workers
    if w == "auto" or w is None:
        return max(1, min(8, (os.cpu_count() or 1) // 2))
    if type(w) is not int or not 1 <= w <= 16:
        raise ClusterError(f"workers must be 1..16 or auto, got {w!r}")
    return w


def up(spec_path=None, vnet=True, progress=print, metrics=False, metrics_port=None, workers=None):
    """Bring the cluster up; raises ClusterError (and leaves nothing) on failure.
    If it is up already, restart the agents that died (restart()).
    metrics: each agent serves Prometheus text on {run_dir}/{node}.metrics.sock,
    and on 127.0.0.1:metrics_port+index if metrics_port is given.
    workers: forwarding threads per node (overrides the spec's cluster.workers)."""
    from dataplane.spec import MAX_NODES
    if metrics_port is not None and not 1024 <= metrics_port <= 65535 - MAX_NODES:
        raise ClusterError(f"metrics port must be 1024..{65535 - MAX_NODES}, got {metrics_port}")
    if workers is not None:
        workers_for(None, workers)                    # a bad count: refused before anything
    with _exclusive():
        state = load_state()
        if state is not None:
            if workers is not None and workers_for(None, workers) != state.workers:
                raise ClusterError(f"cluster {state.cluster} is up with {state.workers} "
                                   f"workers per node; `podnet down` first to change it", "busy")
            return restart(state, spec_path, progress)
        return _up(spec_path, vnet, progress, metrics or metrics_port is not None, metrics_port, workers)


def plan_state(spec, plan, vnet, nworkers):
    nodes = {}
    for n in spec.nodes:
        np = plan.nodes[n.name]
        uip, umac = underlay(spec, np.index)
        nodes[n.name] = st.NodeState(n.name, np.index, str(np.subnet), str(np.gateway_ip), np.gateway_mac,
                                     node_ns(spec.name, n.name), underlay_ip=str(uip), underlay_mac=umac)
    pods = {}
    for node in spec.nodes:
        for port, p in enumerate(spec.pods_on(node.name)):
            pp = plan.pods[p.name]
            pods[p.name] = st.PodRecord(p.name, p.node, str(pp.ip), pp.prefixlen, pp.mac, str(pp.gateway_ip),
                                        spec.pod_mtu, port, pod_ns(spec.name, p.name), labels=dict(p.labels),
                                        created=time.time())
    return st.ClusterState(
        cluster=spec.name, source=spec.source, spec=spec.to_dict(), nodes=nodes, pods=pods,
        services_plan={n: str(ip) for n, ip in plan.services.items()},
        namespaces=[fabric_ns(spec.name)] + [node_ns(spec.name, n.name) for n in spec.nodes],
        fabric={"namespace": fabric_ns(spec.name), "bridge": FABRIC_BRIDGE,
                "subnet": str(spec.fabric_cidr), "mtu": spec.mtu},
        vni=spec.vni, vxlan_port=spec.vxlan_port, pod_mtu=spec.pod_mtu, vnet=vnet, workers=nworkers,
        backend=spec.backend, created=time.time())


def _up(spec_path, vnet, progress, metrics=False, metrics_port=None, workers=None):
    from dataplane.spec import load_spec
    spec = load_spec(spec_path)                       # SpecError: nothing created
    nworkers = workers_for(spec.workers, workers)
    names = ([fabric_ns(spec.name)] + [node_ns(spec.name, n.name) for n in spec.nodes]
             + [pod_ns(spec.name, p.name) for p in spec.pods])
    clash = [n for n in names if netns.exists(n)]
    if clash:
        raise ClusterError(f"network namespaces already exist: {', '.join(clash)}; "
                           f"remove them (`ip netns del NAME`) or pick another cluster name", "exists")
    plan = Ipam(state_dir() / "ipam.json").plan(spec)
    state = plan_state(spec, plan, vnet, nworkers)
    _save_state(state)                                # before anything exists
    try:
        for name in names:
            netns.create(name)
        _make_fabric(spec)
        progress(f"created {len(names)} namespaces and the fabric bridge")
        procs = {}
        for node in spec.nodes:
            procs[node.name] = _start_agent(spec, state, node.name, metrics, metrics_port)
            _save_state(state)
        for node in spec.nodes:
            n = state.nodes[node.name]
            _wait_ready(n, procs[node.name], progress if len(state.pods_on(node.name)) > 16 else None)
            progress(f"node {node.name}: agent pid {n.pid} ready, {len(state.pods_on(node.name))} pods")
        if spec.services:
            _apply_objects(state, spec_services(spec, plan), delete=False)
            progress(f"loaded {len(spec.services)} services from the spec")
    except BaseException:
        down(quiet=True, force=True)
        raise
    return state


def _routes_for(state, node):
    """flannel's view from node: every other node's pod CIDR behind its VTEP
    (its underlay IP: the tunnel's far end, or in direct mode the next hop);
    in VXLAN, inner frames addressed to that node's gateway MAC (ipip and
    direct carry no inner Ethernet header)."""
    return [{"name": o.name, "cidr": o.subnet, "vtep": o.underlay_ip, "vni": state.vni,
             **({"inner_mac": o.gateway_mac} if state.backend == "vxlan" else {})}
            for o in state.nodes.values() if o.name != node]


def agent_config(spec, state, node, rd):
    """The config an agent of node is started with (its run files under rd);
    dataplane.testing's in-memory node builds its fast path from the same."""
    n = state.nodes[node]
    return {
        "cluster": spec.name, "node": node, "netns": n.netns,
        "socket": str(rd / f"{node}.sock"), "vnet": state.vnet, "workers": state.workers,
        "gateway": {"ip": n.gateway_ip, "mac": n.gateway_mac, "subnet": n.subnet},
        "pods": [p.agent_config() for p in state.pods_on(node)],
        "uplink": {"ip": n.underlay_ip, "mac": n.underlay_mac, "prefixlen": spec.fabric_cidr.prefixlen,
                   "fabric_netns": fabric_ns(spec.name), "bridge": FABRIC_BRIDGE,
                   "ifname": f"up{n.index}", "mtu": spec.mtu, "vni": spec.vni, "port": spec.vxlan_port,
                   "backend": state.backend},
        "routes": _routes_for(state, node),
        "service_cidr": str(spec.service_cidr),
        "snapshot": str(rd / f"{node}.snapshot"),
    }


def _start_agent(spec, state, node, metrics=False, metrics_port=None):
    n = state.nodes[node]
    rd = run_dir()
    cfg = agent_config(spec, state, node, rd)
    if metrics:
        cfg["metrics"] = {"socket": str(rd / f"{node}.metrics.sock"),
                          "port": metrics_port + n.index if metrics_port is not None else None}
    if n.index == 0:                                  # the first node's agent answers podnet-cni
        cfg["cni"] = {"socket": str(cni_socket())}
    _remove_snapshot(cfg["snapshot"])                 # a new cluster starts empty
    cfg_path = rd / f"{node}.json"
    _write_json(cfg_path, cfg)
    log_path = rd / f"{node}.log"
    n.config, n.socket, n.log, n.snapshot, n.metrics = (str(cfg_path), cfg["socket"], str(log_path),
                                                        cfg["snapshot"], cfg.get("metrics"))
    proc = _spawn(cfg_path, log_path)
    n.pid = proc.pid
    return proc


def _write_json(path, obj):
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(obj, separators=(",", ":")))     # the C encoder: see state.save
    os.replace(tmp, path)


def _write_agent_pods(state, node):
    """The pods a restarted agent of node plugs in again: its config file's
    `pods`, rewritten whole (renamed over) after every pod change."""
    n = state.nodes[node]
    cfg = json.loads(Path(n.config).read_text())
    cfg["pods"] = [p.agent_config() for p in state.pods_on(node) if p.phase == "ready"]
    _write_json(n.config, cfg)


def _spawn(cfg_path, log_path, append=False):
    with open(log_path, "ab" if append else "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "dataplane", "agent", str(cfg_path)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _remove_snapshot(path):
    for f in (Path(path), Path(str(path) + ".tmp")):
        f.unlink(missing_ok=True)


def restart(state, spec_path=None, progress=print):
    """Start again the agents of a running cluster whose process died
    (SIGKILL, crash); leave the live ones alone. A restarted agent re-attaches
    to its pods' TAPs and restores its snapshot, then gets the services and
    external nodes changed since that snapshot. Refuses if every agent runs
    ("already up"), if spec_path names another spec, or if what the agents
    need is gone (a namespace, a half-finished `up`): `podnet down` then."""
    from dataplane.spec import load_spec
    if spec_path is not None and load_spec(spec_path).to_dict() != state.spec:
        raise ClusterError(f"cluster {state.cluster} is up with another spec ({state.source}); "
                           f"run `podnet down` first", "busy")
    dead = [name for name, n in state.nodes.items() if not _alive_agent(n)]
    if not dead:
        raise ClusterError(f"a cluster is already up (state in {state_path()}) and all its agents run; "
                           f"run `podnet down` first", "busy")
    never = [name for name, n in state.nodes.items() if not n.config]
    if never:
        raise ClusterError(f"the `podnet up` of cluster {state.cluster} did not finish "
                           f"(agents for {', '.join(sorted(never))} never started); run `podnet down` first")
    gone = [name for name in state.namespaces if not netns.exists(name)]
    gone += [n.config for n in state.nodes.values() if not Path(n.config).exists()]
    if gone:
        raise ClusterError(f"cannot restart agents: {', '.join(gone)} no longer exist; run `podnet down` first")
    procs, started = {}, {}
    for node in dead:
        n = state.nodes[node]
        _reap(n.pid)
        started[node] = time.monotonic()
        procs[node] = _spawn(n.config, n.log, append=True)
        n.pid = procs[node].pid
        n.restarts += 1
        _save_state(state)                            # before waiting: `down` must find it
    for node in dead:
        n = state.nodes[node]
        _wait_ready(n, procs[node])
        ready = time.monotonic() - started[node]
        status_ = request(n.socket, "status", timeout=5.0)
        fixed = _resync(state, node)
        restored = {k: v for k, v in (status_.get("restored") or {}).items() if k != "snapshot_age_s" and v}
        progress(f"node {node}: agent was dead, restarted: pid {n.pid} ready in {ready:.2f} s, "
                 f"{status_.get('reattached', 0)} TAPs re-attached, restored "
                 f"{', '.join(f'{v} {k}' for k, v in restored.items()) or 'nothing'}"
                 + (f"; {fixed}" if fixed else ""))
    for node, n in state.nodes.items():
        if node not in dead:
            progress(f"node {node}: agent pid {n.pid} running, left alone")
    return state


def _resync(state, node):
    """The control plane's records win over a snapshot up to a second old:
    services and external nodes changed since it was written are put right."""
    sock = state.nodes[node].socket
    done = []
    want = state.external
    routes = request(sock, "routes")
    for r in routes:
        if r["name"] and r["name"] not in state.nodes and r["name"] not in want:
            request(sock, "route_remove", name=r["name"])
            done.append(f"route to {r['name']} removed")
    vxlan = state.backend == "vxlan"
    # the MAC a route was given: VXLAN's inner MAC, else a static underlay MAC (or none)
    have = {r["name"]: (r["cidr"], r["vtep"], r.get("inner_mac") if vxlan else
                        (r.get("vtep_mac") if r.get("vtep_state") == "static" else None)) for r in routes}
    for name, e in want.items():
        if have.get(name) != (e["pod_cidr"], e["vtep"], (e.get("vtep_mac") or "").lower() or None):
            request(sock, "route_add", **_external_route(state, e))
            done.append(f"route to {name} added")
    key = lambda e: (e["vip"], e["port"], e["protocol"])
    running = {key(s): ({tuple(b) for b in s["backends"]}, s["lb"], s["affinity_timeout"])
               for s in request(sock, "services", timeout=60.0)}
    entries = state.service_entries
    upsert = [e for e in entries if running.get(key(e)) != ({tuple(b) for b in e["backends"]},
                                                           e["load_balancing"], e["affinity_timeout"])]
    delete = [{"vip": k[0], "port": k[1], "protocol": k[2]} for k in set(running) - {key(e) for e in entries}]
    if upsert or delete:
        request(sock, "services_apply", timeout=60.0, upsert=upsert, delete=delete)
        done.append(f"{len(upsert)} service ports updated, {len(delete)} removed")
    return ", ".join(done)


def _wait_ready(node, proc, progress=None):
    deadline = time.monotonic() + AGENT_READY_TIMEOUT
    shown = ""
    while time.monotonic() < deadline:
        if progress:                          # the agent logs "placed K/N pods" as it goes
            lines = [ln for ln in Path(node.log).read_text(errors="replace").splitlines()
                     if ln.startswith("placed ")]
            if lines and lines[-1] != shown:
                shown = lines[-1]
                progress(f"{node.netns}: {shown}")
        if proc.poll() is not None:
            log = Path(node.log).read_text(errors="replace")[-2000:]
            raise ClusterError(f"agent for {node.netns} exited during start-up:\n{log}")
        try:
            request(node.socket, "ping", timeout=1.0)
            return
        except ControlError:
            time.sleep(0.05)
    raise ClusterError(f"agent for {node.netns} not ready after {AGENT_READY_TIMEOUT} s")


def down(quiet=False, progress=print, force=False):
    """Stop every agent and delete every namespace and file `up` made.
    Works after agents were SIGKILLed and after a half-finished `up`.
    Refuses while container runtimes have pods attached through CNI (their
    containers would lose their network under them) unless force, which
    detaches them first as CNI DEL would."""
    with _exclusive():
        return _down(quiet, progress, force)


def _down(quiet, progress, force):
    state = load_state()
    if state is None:
        if not quiet:
            progress("no cluster is up")
        return False
    attached = state.attachments()
    if attached and not force:
        raise ClusterError(f"{len(attached)} container{'s are' if len(attached) > 1 else ' is'} attached "
                           f"through CNI ({', '.join(p.container_id[:12] for p in attached[:4])}"
                           f"{', ...' if len(attached) > 4 else ''}); remove them with their runtime "
                           f"(podman rm), or `podnet down --force` to detach them", "busy")
    for p in attached:
        _unplug_foreign(p)                   # the container's netns stays; only our TAP leaves it
        if not quiet:
            progress(f"detached container {p.container_id[:12]} ({p.name})")
    for node, n in state.nodes.items():
        pid = n.pid
        if _alive_agent(n):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while _alive_agent(n) and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.02)
            if _alive_agent(n):
                os.kill(pid, signal.SIGKILL)
        _reap(pid)
    owned = state.owned_namespaces()
    pods = [name for name in owned if name not in state.namespaces]
    _stop_processes(pods)
    removed = [name for name in pods + list(reversed(state.namespaces)) if netns.remove(name)]
    for n in state.nodes.values():
        for f in (n.socket, n.config, n.log, (n.metrics or {}).get("socket")):
            if f:
                Path(f).unlink(missing_ok=True)
        if n.snapshot:
            _remove_snapshot(n.snapshot)
    for node in state.nodes:                          # an `up` killed between writing a config and recording it
        for suffix in (".json", ".json.tmp", ".sock", ".log", ".snapshot", ".snapshot.tmp", ".metrics.sock"):
            (state_path().parent / f"{node}{suffix}").unlink(missing_ok=True)
    cni_socket().unlink(missing_ok=True)
    state_path().unlink(missing_ok=True)
    if not quiet:
        progress(f"cluster {state.cluster} down: {len(state.nodes)} agents stopped, "
                 f"{len(removed)} namespaces removed")
    return True


def _stop_processes(namespaces):
    """Processes left in pods (servers started with `podnet exec`) go with
    their pods, as containers do: SIGTERM, then SIGKILL. The namespaces are
    scanned again after each pass, because a process that was between fork and
    setns (an `ip netns exec` just started) is missed by the first scan and
    would outlive its namespace's name."""
    scan = lambda: {pid for name in namespaces for pid in netns.pids(name) if pid != os.getpid()}
    for _ in range(3):
        victims = scan()
        if not victims:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in victims:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + STOP_TIMEOUT
            while victims and time.monotonic() < deadline:
                for pid in victims:
                    _reap(pid)
                victims = {p for p in victims if _alive(p)}
                time.sleep(0.02)


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _reap(pid):
    if not pid:
        return
    try:
        os.waitpid(pid, os.WNOHANG)           # our child when up and down share a process
    except ChildProcessError:
        pass


def require_state():
    state = load_state()
    if state is None:
        raise ClusterError("no cluster is up; run `podnet up`", "no_cluster")
    return state


def node_socket(state, node):
    try:
        return state.nodes[node].socket
    except KeyError:
        raise ClusterError(f"no node {node!r}; nodes: {', '.join(state.nodes)}", "no_node") from None


def status():
    state = require_state()
    nodes = []
    for node, n in state.nodes.items():
        alive = _alive_agent(n)
        entry = {"name": node, "netns": n.netns, "agent_pid": n.pid, "agent": "running" if alive else "dead",
                 "socket": n.socket, "subnet": n.subnet, "gateway_ip": n.gateway_ip, "gateway_mac": n.gateway_mac,
                 "underlay_ip": n.underlay_ip, "underlay_mac": n.underlay_mac}
        if alive:
            try:
                s = request(n.socket, "status", timeout=3.0)
                entry.update(vnet_hdr=s["vnet_hdr"], offloads=s["offloads"], gso_path=s.get("gso_path"),
                             workers=s.get("workers"), backend=s.get("backend"))
            except ControlError as e:
                entry["agent"] = f"unreachable: {e}"
        nodes.append(entry)
    return {"cluster": state.cluster, "source": state.source, "backend": state.backend, "fabric": state.fabric,
            "vni": state.vni, "vxlan_port": state.vxlan_port,
            "external_nodes": list(state.external.values()), "nodes": nodes, "pods": _pod_rows(state),
            "services": [{"name": n, "clusterIP": ip} for n, ip in state.services_plan.items()]}


def _pod_rows(state):
    return [{"name": p.name, "node": p.node, "namespace": p.netns, "ip": p.ip, "mac": p.mac, "gateway": p.gateway,
             "labels": dict(p.labels), "origin": p.origin, "container_id": p.container_id, "ifname": p.ifname,
             "port": p.port, "phase": p.phase, "prefixlen": p.prefixlen, "mtu": p.mtu, "network": p.network}
            for p in state.pods.values()]


def pod_namespace(pod):
    """The namespace `podnet exec POD` runs in (a CNI pod's netns path too)."""
    state = require_state()
    if pod not in state.pods:
        raise ClusterError(f"no pod {pod!r}; pods: {', '.join(state.pods)}", "not_found")
    return state.pods[pod].netns


# ---- pushing a change to every agent ----------------------------------------

def _push_all(state, op, undo=None, what=None, progress=None, **args):
    """Send one request to every running agent, all or none: if one refuses,
    those that took it get `undo` (op, args) and ClusterError is raised. A
    dead agent is skipped: `up` restarts it from its config and _resync()
    brings it up to date with these records."""
    done = []
    try:
        for node, n in state.nodes.items():
            if not _alive_agent(n):
                continue
            t0 = time.monotonic()
            request(n.socket, op, timeout=60.0, **args)
            done.append(n)
            if progress:
                progress(node, time.monotonic() - t0)
    except ControlError as e:
        for n in done:
            if undo:
                try:
                    request(n.socket, undo[0], timeout=60.0, **undo[1])
                except ControlError:
                    pass
        raise ClusterError(f"{what or op}: {e}") from None
    return len(done)


def _external_route(state, e):
    """The route_add request for an external node's record (state.external):
    in VXLAN, inner frames go to its VXLAN device's MAC (vtep_mac); in ipip
    and direct mode vtep_mac, when given, is its static underlay MAC."""
    route = {"name": e["name"], "cidr": e["pod_cidr"], "vtep": e["vtep"], "vni": state.vni}
    if state.backend == "vxlan":
        route["inner_mac"] = e["vtep_mac"]
    elif e.get("vtep_mac"):
        route["vtep_mac"] = e["vtep_mac"]
    return route


def node_add(name, pod_cidr, vtep, vtep_mac=None):
    """Register an external node with every agent: its pod CIDR is reached
    through vtep, its underlay IP, whatever the backend. VXLAN (Linux's own
    vxlan, say): inner frames addressed to vtep_mac (flannel's VtepMAC: the
    remote vxlan device's MAC; by default podnet's gateway-MAC convention
    for that CIDR). ipip (a kernel tunl0) and direct (plain routes): no
    inner Ethernet header; vtep_mac, if given, is the node's underlay MAC
    (else ARP finds it); in direct mode vtep is the next hop and must be on
    the fabric's subnet. All agents or none. Returns the route sent, with
    the cluster's backend."""
    import ipaddress
    from dataplane.ipam import mac_for
    with _exclusive():
        state = require_state()
        try:
            net = ipaddress.IPv4Network(pod_cidr)
            ip = ipaddress.IPv4Address(vtep)
        except ValueError as e:
            raise ClusterError(f"node add: {e}") from None
        if name in state.nodes:
            raise ClusterError(f"node add: {name!r} is a podnet node of this cluster", "exists")
        fabric = ipaddress.IPv4Network(state.fabric["subnet"])
        if ip not in fabric:
            if state.backend == "direct":
                raise ClusterError(f"node add: next hop {ip} is not on the fabric {fabric} "
                                   f"(direct routing reaches only nodes on the fabric's subnet)")
            raise ClusterError(f"node add: VTEP {ip} is not on the fabric {fabric}")
        if state.backend == "vxlan":
            vtep_mac = vtep_mac or mac_for(net.network_address + 1)
        record = {"name": name, "pod_cidr": str(net), "vtep": str(ip), "vtep_mac": vtep_mac or None}
        route = _external_route(state, record)
        _push_all(state, "route_add", ("route_remove", {"name": name}), f"node add {name}", **route)
        if record["vtep_mac"]:
            record["vtep_mac"] = record["vtep_mac"].lower()
        state.external[name] = record
        _save_state(state)
        return {**route, "backend": state.backend}


def node_remove(name):
    """Remove an external node from every running agent; a dead agent forgets
    it when `up` restarts it (_resync), so this works while one is down."""
    with _exclusive():
        state = require_state()
        if name not in state.external:
            raise ClusterError(f"node remove: no external node {name!r}; "
                               f"external nodes: {', '.join(state.external) or 'none'}", "not_found")
        for node, n in state.nodes.items():
            if not _alive_agent(n):
                continue
            try:
                request(n.socket, "route_remove", name=name)
            except ControlError as e:
                if "no route" not in str(e):
                    raise ClusterError(f"node remove {name}: {e}") from None
        del state.external[name]
        _save_state(state)


# ---- pods that come and go -----------------------------------------------------

_FOREIGN_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_IFNAME = re.compile(r"[A-Za-z0-9_][-A-Za-z0-9_.]{0,14}")
POD_ORIGINS = ("spec", "cli", "manifest", "cni")


def _ipam():
    return Ipam(state_dir() / "ipam.json")


def _check_labels(labels):
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) and k
                                               for k, v in labels.items()):
        raise ClusterError(f"labels must map strings to strings, got {labels!r}")
    bad = [k for k in labels if len(k) > 317 or any(c.isspace() for c in k + labels[k])]
    if bad:
        raise ClusterError(f"label {bad[0]!r}: keys and values take no whitespace (keys at most 317 characters)")
    return dict(labels)


def pod_add(name, node=None, labels=None, *, netns=None, ifname="eth0", container_id=None, origin="cli",
            network=None):
    """Add a pod to the running cluster: an address from its node's range,
    a port on its node's agent, a TAP as its `ifname` with address, MAC, MTU
    and default route, and the Services whose selectors match its labels
    get it as a backend. netns None: podnet makes the namespace
    {cluster}-pod-{name} and owns it; else an existing netns path (CNI_NETNS)
    that stays the runtime's. All or nothing. Returns the pod's record."""
    with _exclusive():
        state = require_state()
        return _pod_add(state, name, node, labels or {}, netns, ifname, container_id, origin, network).to_dict()


def _pod_add(state, name, node, labels, netns_path, ifname, container_id, origin, network=None):
    # spec (and with it yaml) only for podnet's own pods: a CNI ADD is a new process each time
    owned = netns_path is None
    if owned:
        from dataplane.spec import NAME_MAX
        from dataplane.validate import DNS_LABEL
    if not isinstance(name, str) or not (DNS_LABEL if owned else _FOREIGN_NAME).fullmatch(name) \
            or (owned and len(name) > NAME_MAX):
        raise ClusterError(f"pod name {name!r} must be a DNS-1123 label of at most {NAME_MAX} characters "
                           f"(a-z, 0-9, '-'; it names the pod's network namespace)" if owned else
                           f"pod name {name!r} must be 1..63 letters, digits, '-', '_' or '.'")
    if origin not in POD_ORIGINS:
        raise ClusterError(f"origin must be one of {', '.join(POD_ORIGINS)}, got {origin!r}")
    labels = _check_labels(labels)
    if name in state.pods:
        p = state.pods[name]
        raise ClusterError(f"pod {name!r} exists (on node {p.node}, {p.ip}"
                           + (f", container {p.container_id[:12]}" if p.container_id else "") + ")", "exists")
    node = node or next(iter(state.nodes))
    if node not in state.nodes:
        raise ClusterError(f"no node {node!r}; nodes: {', '.join(state.nodes)}", "no_node")
    n = state.nodes[node]
    if not _alive_agent(n):
        raise ClusterError(f"the agent of node {node} is not running; `podnet up` restarts it", "agent_down")
    if not isinstance(ifname, str) or not _IFNAME.fullmatch(ifname):
        raise ClusterError(f"interface name {ifname!r} must be 1..15 letters, digits, '-', '_' or '.'")
    if container_id is not None:
        if not isinstance(container_id, str) or not container_id:
            raise ClusterError("container id must be a non-empty string")
        clash = _attachment(state, container_id, ifname)
        if clash:
            raise ClusterError(f"container {container_id[:12]} already has {ifname} attached "
                               f"(pod {clash.name}, {clash.ip})", "exists")
    if owned:
        ns = pod_ns(state.cluster, name)
        if netns.exists(ns):
            raise ClusterError(f"network namespace {ns} exists already; remove it (`ip netns del {ns}`)", "exists")
    else:
        if not isinstance(netns_path, str) or not os.path.isabs(netns_path) or not os.path.exists(netns_path):
            raise ClusterError(f"network namespace {netns_path!r} does not exist (an absolute path expected)",
                               "bad_netns")
        ns = netns_path
    taken = {p.port for p in state.pods_on(node)}
    port = next((i for i in range(MAX_POD_PORTS) if i not in taken), None)
    if port is None:
        raise ClusterError(f"node {node} has {MAX_POD_PORTS} pods, its most", "ipam_full")
    try:
        ip = _ipam().allocate_pod(name, n.subnet)
    except IpamError as e:
        raise ClusterError(str(e), "ipam_full") from None
    from dataplane.ipam import mac_for
    rec = st.PodRecord(name, node, str(ip), 24, mac_for(ip), n.gateway_ip, state.pod_mtu, port, ns, owned=owned,
                       ifname=ifname, labels=labels, origin=origin, container_id=container_id, network=network,
                       phase="adding",
                       created=time.time())
    state.pods[name] = rec
    _save_state(state)                                # before anything exists: pod delete, GC and down find it
    try:
        if owned:
            netns.create(ns)
        request(n.socket, "pod_add", timeout=30.0, **rec.agent_config())
        rec.phase = "ready"
        _write_agent_pods(state, node)
        _pod_endpoints_changed(state, rec)            # selectors that match it: a new backend
    except (ControlError, ClusterError, OSError) as e:
        _pod_remove(state, rec, sync=False)
        code = "agent_down" if isinstance(e, ControlError) and "not reachable" in str(e) else "plug_failed"
        raise ClusterError(f"pod {name} not added: {e}", code) from None
    return rec


def pod_delete(name):
    """Remove a pod from the running cluster: first from the Services it
    backs (UDP entries to it flushed, TCP ones reset on their next segment),
    then its port on its agent (FDB entries, neighbour, guard, the
    connections it is an end of and its affinity pins go), the processes
    left in its namespace and the namespace if podnet made it, and its
    address lease. Works while its agent is dead or was restarted, and for
    a pod whose add never finished. Returns what was removed."""
    with _exclusive():
        state = require_state()
        rec = state.pods.get(name)
        if rec is None:
            raise ClusterError(f"no pod {name!r}; pods: {', '.join(state.pods) or 'none'}", "not_found")
        return _pod_remove(state, rec)


def _pod_remove(state, rec, sync=True):
    out = {"name": rec.name, "node": rec.node, "ip": rec.ip}
    if sync and rec.phase == "ready":
        rec.phase = "deleting"                        # out of every selector's endpoints first
        _pod_endpoints_changed(state, rec)
    n = state.nodes[rec.node]
    unplugged = False
    if _alive_agent(n):
        try:
            out.update(request(n.socket, "pod_remove", timeout=30.0, name=rec.name, destroy=not rec.owned))
            unplugged = True
        except ControlError as e:
            if "no pod" not in str(e):
                raise ClusterError(f"pod {rec.name} not deleted: {e}") from None
    if not unplugged and not rec.owned:
        _unplug_foreign(rec)                          # a TAP no agent holds (its agent died, or ours did mid-add)
    if rec.owned:
        _stop_processes([rec.netns])
        netns.remove(rec.netns)
    _ipam().release_pod(rec.name)
    del state.pods[rec.name]
    _save_state(state)
    _write_agent_pods(state, rec.node)
    return out


def _unplug_foreign(rec):
    """Delete the pod's TAP from its namespace if one is still there (it
    outlives its agent: TAPs are persistent). Only a TAP is touched, never a
    runtime's other interface that happens to have the name."""
    from pyroute2 import IPRoute
    from tap.device import TapError, in_netns
    path = rec.netns if os.path.isabs(rec.netns) else os.path.join(netns.NETNS_DIR, rec.netns)
    if not os.path.exists(path):
        return
    try:
        with in_netns(path), IPRoute() as ns:
            for ifname in (rec.ifname, f"tap{rec.port}"):
                idx = ns.link_lookup(ifname=ifname)
                if not idx:
                    continue
                info = ns.get_links(idx[0])[0].get_attr("IFLA_LINKINFO")
                if info is not None and info.get_attr("IFLA_INFO_KIND") == "tun" \
                        and ns.get_links(idx[0])[0].get_attr("IFLA_ADDRESS") == rec.mac.lower():
                    ns.link("del", index=idx[0])
    except (OSError, TapError):
        pass                                         # the namespace went meanwhile: the TAP with it


def _attachment(state, container_id, ifname):
    return next((p for p in state.pods.values() if p.container_id == container_id and p.ifname == ifname), None)


def attachment(container_id, ifname):
    """The CNI pod of that container and interface, as a record dict, or None."""
    state = load_state()
    rec = _attachment(state, container_id, ifname) if state else None
    return rec.to_dict() if rec else None


def pods():
    """Every pod of the running cluster (spec, CLI, manifest and CNI ones)."""
    return _pod_rows(require_state())


def agent_ready(node=None):
    """(True, "") if an ADD on node (default the first) can be served now,
    else (False, why): for CNI STATUS."""
    state = load_state()
    if state is None:
        return False, "no podnet cluster is up"
    node = node or next(iter(state.nodes))
    n = state.nodes.get(node)
    if n is None:
        return False, f"no node {node!r} in cluster {state.cluster}"
    if not _alive_agent(n):
        return False, f"the agent of node {node} is not running"
    try:
        request(n.socket, "ping", timeout=2.0)
    except ControlError as e:
        return False, f"the agent of node {node} does not answer: {e}"
    return True, ""
# ---- services ---------------------------------------------------------------

def spec_services(spec, plan):
    """The spec's services as Kubernetes Service manifests (endpoints by selector)."""
    from dataplane.manifests import parse_manifests
    docs = [{"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": s.name, "namespace": "default"},
             "spec": {"clusterIP": str(plan.services[s.name]), "selector": dict(s.selector),
                      "sessionAffinity": s.session_affinity,
                      **({"sessionAffinityConfig": {"clientIP": {"timeoutSeconds": s.affinity_timeout}}}
                         if s.session_affinity == "ClientIP" else {}),
                      "ports": [{**({"name": p.name} if p.name else {}), "port": p.port,
                                 "targetPort": p.target_port, "protocol": p.protocol} for p in s.ports]}}
            for s in spec.services]
    return parse_manifests(json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}), spec.source)


def _store(state):
    """The Services and EndpointSlices applied, with every pod that is ready
    for selectors to match (a pod being deleted is no longer one)."""
    from dataplane.manifests import ServiceStore
    pods = {p.name: (p.ip, dict(p.labels)) for p in state.pods.values() if p.phase == "ready"}
    store = ServiceStore(pods=pods, service_cidr=state.spec["cluster"]["serviceCIDR"])
    if state.service_store:
        store.restore(state.service_store)
    return store


def _pod_endpoints_changed(state, rec):
    """After rec came or went: re-resolve and push the Services if one of
    them selects its labels, else just save. Deciding from the stored
    manifests spares a CNI ADD or DEL (a new process each) the import of the
    manifest machinery (~30 ms) when no selector can be concerned; a
    Service that has EndpointSlices ignores its selector, so asking about
    every selector errs only towards syncing."""
    labels = dict(rec.labels).items()
    for item in (state.service_store or {}).get("items", []):
        selector = (item.get("spec") or {}).get("selector") or {}
        if item.get("kind") == "Service" and selector and selector.items() <= labels:
            _sync_services(state)
            return
    _save_state(state)


def _fp_key(e):
    return (e["vip"], e["port"], e["protocol"])


def _sync_services(state, store=None, progress=None, validated=None):
    """Make every agent's service map what the store resolves to (selectors
    over the pods now ready, EndpointSlices as applied): the difference from
    what was loaded last is pushed to every agent, all or none, and saved.
    Backends that leave have their connections ended by the agents.
    validated: how many objects were just applied, for the progress line.
    Returns (service ports loaded, removed)."""
    say = progress or (lambda *_: None)
    store = store or _store(state)
    before = {_fp_key(e): e for e in state.service_entries}
    after = {_fp_key(e): e for e in store.resolve()}
    upsert = [e for k, e in after.items() if before.get(k) != e]
    gone = [{"vip": k[0], "port": k[1], "protocol": k[2]} for k in before if k not in after]
    undo = {"upsert": [before[k] for k in before if k not in after or before[k] != after[k]],
            "delete": [{"vip": k[0], "port": k[1], "protocol": k[2]} for k in after if k not in before]}
    if validated is not None:
        say(f"validated {validated} objects: {len(upsert)} service ports to load, {len(gone)} to remove")
    if upsert or gone:
        _push_all(state, "services_apply", ("services_apply", undo), "services not changed",
                  progress=lambda node, dt: say(f"node {node}: loaded in {dt:.2f} s"), upsert=upsert, delete=gone)
    state.service_store = store.snapshot()
    state.service_entries = list(after.values())
    _save_state(state)
    return len(upsert), len(gone)


def _apply_objects(state, objects, delete, progress=None):
    """Apply (or delete) Service and EndpointSlice objects: validated in the
    store, then the change pushed to every agent (_sync_services)."""
    store = _store(state)
    result = store.delete(objects) if delete else store.apply(objects)
    loaded, removed = _sync_services(state, store, progress, validated=len(objects))
    return result, loaded, removed


def apply_file(path, delete=False, progress=None):
    """`podnet apply -f` / `delete -f`: Pods, Services and EndpointSlices.
    Pods are made (or deleted) first, so the Services of the same file see
    them; every object is validated before any is applied."""
    from dataplane.manifests import load_manifests, split_pods
    with _exclusive():
        state = require_state()
        t0 = time.monotonic()
        objects = load_manifests(path)
        if not objects:
            raise ClusterError(f"{path}: no objects")
        if progress:
            progress(f"read {len(objects)} objects from {path} in {time.monotonic() - t0:.1f} s")
        pods, others = split_pods(objects)
        lines = _apply_pods(state, pods, delete)
        result, loaded, removed = _apply_objects(state, others, delete, progress) if others else ([], 0, 0)
        if not delete:
            result = {"pods": lines, **(result or {})}
        else:
            result = lines + list(result)
        return result, loaded, removed


def _apply_pods(state, pods, delete):
    """Pods of a manifest: all checked before the first is made or deleted."""
    if delete:
        missing = [p.name for p in pods if p.name not in state.pods]
        if missing:
            raise ClusterError(f"pod/{missing[0]} not found; nothing deleted", "not_found")
        for p in pods:
            _pod_remove(state, state.pods[p.name])
        return [f"pod/{p.name} deleted" for p in pods]
    lines, todo, relabel = [], [], []
    for p in pods:
        node = p.node_name or next(iter(state.nodes))
        if node not in state.nodes:
            raise ClusterError(f"pod/{p.name}: spec.nodeName {node!r} is not a node of this cluster "
                               f"({', '.join(state.nodes)}); nothing applied", "no_node")
        have = state.pods.get(p.name)
        if have is None:
            todo.append((p, node))
        elif have.node != node:
            raise ClusterError(f"pod/{p.name}: spec.nodeName is immutable (the pod runs on {have.node}); "
                               f"delete it first; nothing applied", "exists")
        elif dict(have.labels) != dict(p.labels):
            relabel.append((have, dict(p.labels)))
        else:
            lines.append(f"pod/{p.name} unchanged")
    for have, labels in relabel:                      # labels change live: endpoints follow
        have.labels = labels
        lines.append(f"pod/{have.name} configured")
    if relabel:
        _sync_services(state)
    for p, node in todo:
        _pod_add(state, p.name, node, dict(p.labels), None, "eth0", None, "manifest")
        lines.append(f"pod/{p.name} created")
    return lines


def services():
    return require_state().service_entries
