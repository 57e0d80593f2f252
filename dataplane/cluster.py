"""Cluster lifecycle: `up` (plan, namespaces, agents), `down` (remove all of
it, also after a crash), status. What `up` creates is recorded under the run
directory before it is created, so `down` can always find it. `up` on a
cluster that is up restarts the agents that died (restart()); they resume
from their snapshots. One `up` or `down` runs at a time (a lock file)."""
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dataplane import netns
from dataplane.control import ControlError, request
from dataplane.ipam import Ipam
from dataplane.spec import MAX_NODES, load_spec

AGENT_READY_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0


class ClusterError(RuntimeError):
    pass


def run_dir():
    return Path(os.environ.get("PODNET_RUN_DIR", "/run/podnet"))


def state_dir():
    return Path(os.environ.get("PODNET_STATE_DIR", "/var/lib/podnet"))


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
        return json.loads(state_path().read_text())
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise ClusterError(f"{state_path()} is corrupt ({e}); remove it after checking `ip netns`") from None


def _save_state(state):
    run_dir().mkdir(parents=True, exist_ok=True)
    tmp = state_path().with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, state_path())


def _pid_is_agent(pid, config):
    """True if pid is still the agent we started (not a recycled PID)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return config.encode() in cmd


_lock_depth = 0


@contextlib.contextmanager
def _exclusive():
    """Hold the run directory's lock (re-entrant within this process): a
    `down` during a restart waits, then sees the new agents' PIDs."""
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
    2-CPU machine (README, "Workers"): a second worker there only takes CPU
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
    if metrics_port is not None and not 1024 <= metrics_port <= 65535 - MAX_NODES:
        raise ClusterError(f"metrics port must be 1024..{65535 - MAX_NODES}, got {metrics_port}")
    if workers is not None:
        workers_for(None, workers)                    # a bad count: refused before anything
    with _exclusive():
        state = load_state()
        if state is not None:
            if workers is not None and workers_for(None, workers) != state.get("workers", 1):
                raise ClusterError(f"cluster {state['cluster']} is up with {state.get('workers', 1)} "
                                   f"workers per node; `podnet down` first to change it")
            return restart(state, spec_path, progress)
        return _up(spec_path, vnet, progress, metrics or metrics_port is not None, metrics_port, workers)


def _up(spec_path, vnet, progress, metrics=False, metrics_port=None, workers=None):
    spec = load_spec(spec_path)                       # SpecError: nothing created
    nworkers = workers_for(spec.workers, workers)
    names = ([fabric_ns(spec.name)] + [node_ns(spec.name, n.name) for n in spec.nodes]
             + [pod_ns(spec.name, p.name) for p in spec.pods])
    clash = [n for n in names if netns.exists(n)]
    if clash:
        raise ClusterError(f"network namespaces already exist: {', '.join(clash)}; "
                           f"remove them (`ip netns del NAME`) or pick another cluster name")
    plan = Ipam(state_dir() / "ipam.json").plan(spec)
    state = {"cluster": spec.name, "source": spec.source, "spec": spec.to_dict(),
             "pod_labels": {p.name: dict(p.labels) for p in spec.pods},
             "plan": plan.to_dict(), "namespaces": names, "nodes": {}, "vnet": vnet, "workers": nworkers,
             "fabric": {"namespace": fabric_ns(spec.name), "bridge": FABRIC_BRIDGE,
                        "subnet": str(spec.fabric_cidr), "mtu": spec.mtu},
             "vni": spec.vni, "vxlan_port": spec.vxlan_port, "external": {}, "created": time.time()}
    _save_state(state)                                # before anything exists
    try:
        for name in names:
            netns.create(name)
        _make_fabric(spec)
        progress(f"created {len(names)} namespaces and the fabric bridge")
        procs = {}
        for node in spec.nodes:
            procs[node.name] = _start_agent(spec, plan, node.name, state, vnet,
                                            metrics, metrics_port)
            _save_state(state)
        for node in spec.nodes:
            _wait_ready(state["nodes"][node.name], procs[node.name],
                        progress if len(spec.pods_on(node.name)) > 16 else None)
            progress(f"node {node.name}: agent pid {state['nodes'][node.name]['pid']} ready, "
                     f"{len(spec.pods_on(node.name))} pods")
        if spec.services:
            _apply_objects(state, _spec_services(spec, plan), delete=False)
            progress(f"loaded {len(spec.services)} services from the spec")
    except BaseException:
        down(quiet=True)
        raise
    return state


def _routes_for(spec, plan, node):
    """flannel's view from node: every other node's pod CIDR behind its VTEP,
    inner frames addressed to that node's gateway MAC."""
    out = []
    for other in spec.nodes:
        if other.name == node:
            continue
        op = plan.nodes[other.name]
        out.append({"name": other.name, "cidr": str(op.subnet), "vtep": str(op_ip(spec, op)),
                    "inner_mac": op.gateway_mac, "vni": spec.vni})
    return out


def op_ip(spec, nodeplan):
    return underlay(spec, nodeplan.index)[0]


def _start_agent(spec, plan, node, state, vnet, metrics=False, metrics_port=None):
    np = plan.nodes[node]
    rd = run_dir()
    uip, umac = underlay(spec, np.index)
    cfg = {
        "cluster": spec.name, "node": node, "netns": node_ns(spec.name, node),
        "socket": str(rd / f"{node}.sock"), "vnet": vnet, "workers": state.get("workers", 1),
        "gateway": {"ip": str(np.gateway_ip), "mac": np.gateway_mac, "subnet": str(np.subnet)},
        "pods": [{"name": p.name, "netns": pod_ns(spec.name, p.name), "ip": str(plan.pods[p.name].ip),
                  "mac": plan.pods[p.name].mac, "prefixlen": plan.pods[p.name].prefixlen,
                  "mtu": spec.pod_mtu} for p in spec.pods_on(node)],
        "uplink": {"ip": str(uip), "mac": umac, "prefixlen": spec.fabric_cidr.prefixlen,
                   "fabric_netns": fabric_ns(spec.name), "bridge": FABRIC_BRIDGE,
                   "ifname": f"up{np.index}", "mtu": spec.mtu, "vni": spec.vni, "port": spec.vxlan_port},
        "routes": _routes_for(spec, plan, node),
        "service_cidr": str(spec.service_cidr),
    }
    if metrics:
        cfg["metrics"] = {"socket": str(rd / f"{node}.metrics.sock"),
                          "port": metrics_port + np.index if metrics_port is not None else None}
    cfg["snapshot"] = str(rd / f"{node}.snapshot")
    _remove_snapshot(cfg["snapshot"])                 # a new cluster starts empty
    cfg_path = rd / f"{node}.json"
    cfg_path.write_text(json.dumps(cfg, indent=2))
    log_path = rd / f"{node}.log"
    proc = _spawn(cfg_path, log_path)
    state["nodes"][node] = {"pid": proc.pid, "config": str(cfg_path), "socket": cfg["socket"],
                            "log": str(log_path), "netns": cfg["netns"], "snapshot": cfg["snapshot"],
                            "underlay_ip": str(uip), "underlay_mac": umac, "metrics": cfg.get("metrics")}
    return proc


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
    if spec_path is not None and load_spec(spec_path).to_dict() != state["spec"]:
        raise ClusterError(f"cluster {state['cluster']} is up with another spec ({state['source']}); "
                           f"run `podnet down` first")
    dead = [node for node, n in state["nodes"].items() if not _pid_is_agent(n["pid"], n["config"])]
    if not dead:
        raise ClusterError(f"a cluster is already up (state in {state_path()}) and all its agents run; "
                           f"run `podnet down` first")
    planned = set(state["plan"]["nodes"])
    if set(state["nodes"]) != planned:
        raise ClusterError(f"the `podnet up` of cluster {state['cluster']} did not finish "
                           f"(agents for {', '.join(sorted(planned - set(state['nodes'])))} never started); "
                           f"run `podnet down` first")
    gone = [name for name in state["namespaces"] if not netns.exists(name)]
    gone += [n["config"] for n in state["nodes"].values() if not Path(n["config"]).exists()]
    if gone:
        raise ClusterError(f"cannot restart agents: {', '.join(gone)} no longer exist; run `podnet down` first")
    procs, started = {}, {}
    for node in dead:
        n = state["nodes"][node]
        _reap(n["pid"])
        started[node] = time.monotonic()
        procs[node] = _spawn(n["config"], n["log"], append=True)
        n["pid"] = procs[node].pid
        n["restarts"] = n.get("restarts", 0) + 1
        _save_state(state)                            # before waiting: `down` must find it
    for node in dead:
        n = state["nodes"][node]
        _wait_ready(n, procs[node])
        ready = time.monotonic() - started[node]
        st = request(n["socket"], "status", timeout=5.0)
        fixed = _resync(state, node)
        restored = {k: v for k, v in (st.get("restored") or {}).items() if k != "snapshot_age_s" and v}
        progress(f"node {node}: agent was dead, restarted: pid {n['pid']} ready in {ready:.2f} s, "
                 f"{st.get('reattached', 0)} TAPs re-attached, restored "
                 f"{', '.join(f'{v} {k}' for k, v in restored.items()) or 'nothing'}"
                 + (f"; {fixed}" if fixed else ""))
    for node, n in state["nodes"].items():
        if node not in dead:
            progress(f"node {node}: agent pid {n['pid']} running, left alone")
    return state


def _resync(state, node):
    """The control plane's records win over a snapshot up to a second old:
    services and external nodes changed since it was written are put right."""
    sock = state["nodes"][node]["socket"]
    done = []
    want = state.get("external", {})
    routes = request(sock, "routes")
    for r in routes:
        if r["name"] and r["name"] not in state["nodes"] and r["name"] not in want:
            request(sock, "route_remove", name=r["name"])
            done.append(f"route to {r['name']} removed")
    have = {r["name"]: (r["cidr"], r["vtep"], r["inner_mac"]) for r in routes}
    for name, e in want.items():
        if have.get(name) != (e["pod_cidr"], e["vtep"], e["vtep_mac"].lower()):
            request(sock, "route_add", name=name, cidr=e["pod_cidr"], vtep=e["vtep"], vni=state["vni"],
                    inner_mac=e["vtep_mac"])
            done.append(f"route to {name} added")
    key = lambda e: (e["vip"], e["port"], e["protocol"])
    running = {key(s): ({tuple(b) for b in s["backends"]}, s["lb"], s["affinity_timeout"])
               for s in request(sock, "services", timeout=60.0)}
    entries = state.get("service_entries", [])
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
            lines = [ln for ln in Path(node["log"]).read_text(errors="replace").splitlines()
                     if ln.startswith("placed ")]
            if lines and lines[-1] != shown:
                shown = lines[-1]
                progress(f"{node['netns']}: {shown}")
        if proc.poll() is not None:
            log = Path(node["log"]).read_text(errors="replace")[-2000:]
            raise ClusterError(f"agent for {node['netns']} exited during start-up:\n{log}")
        try:
            request(node["socket"], "ping", timeout=1.0)
            return
        except ControlError:
            time.sleep(0.05)
    raise ClusterError(f"agent for {node['netns']} not ready after {AGENT_READY_TIMEOUT} s")


def down(quiet=False, progress=print):
    """Stop every agent and delete every namespace and file `up` made.
    Works after agents were SIGKILLed and after a half-finished `up`."""
    with _exclusive():
        return _down(quiet, progress)


def _down(quiet, progress):
    state = load_state()
    if state is None:
        if not quiet:
            progress("no cluster is up")
        return False
    for node, n in state["nodes"].items():
        pid = n["pid"]
        if _pid_is_agent(pid, n["config"]):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while _pid_is_agent(pid, n["config"]) and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.02)
            if _pid_is_agent(pid, n["config"]):
                os.kill(pid, signal.SIGKILL)
        _reap(pid)
    _stop_pod_processes(state)
    removed = [name for name in reversed(state["namespaces"]) if netns.remove(name)]
    for n in state["nodes"].values():
        for f in (n["socket"], n["config"], n["log"], (n.get("metrics") or {}).get("socket")):
            if f:
                Path(f).unlink(missing_ok=True)
        _remove_snapshot(n.get("snapshot") or os.path.splitext(n["socket"])[0] + ".snapshot")
    for node in state["plan"]["nodes"]:               # an `up` killed between writing a config and recording it
        for suffix in (".json", ".sock", ".log", ".snapshot", ".snapshot.tmp", ".metrics.sock"):
            (state_path().parent / f"{node}{suffix}").unlink(missing_ok=True)
    state_path().unlink(missing_ok=True)
    if not quiet:
        progress(f"cluster {state['cluster']} down: {len(state['nodes'])} agents stopped, "
                 f"{len(removed)} namespaces removed")
    return True


def _stop_pod_processes(state):
    """Processes left in the pods (servers started with `podnet exec`) go with
    their pods, as containers do: SIGTERM, then SIGKILL. The namespaces are
    scanned again after each pass, because a process that was between fork and
    setns (an `ip netns exec` just started) is missed by the first scan and
    would outlive its namespace's name."""
    pods = [n for n in state["namespaces"] if n not in {v["netns"] for v in state["nodes"].values()}]
    scan = lambda: {pid for name in pods for pid in netns.pids(name) if pid != os.getpid()}
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
    try:
        os.waitpid(pid, os.WNOHANG)           # our child when up and down share a process
    except ChildProcessError:
        pass


def require_state():
    state = load_state()
    if state is None:
        raise ClusterError("no cluster is up; run `podnet up`")
    return state


def node_socket(state, node):
    try:
        return state["nodes"][node]["socket"]
    except KeyError:
        raise ClusterError(f"no node {node!r}; nodes: {', '.join(state['nodes'])}") from None


def status():
    state = require_state()
    nodes, pods = [], []
    for node, n in state["nodes"].items():
        alive = _pid_is_agent(n["pid"], n["config"])
        entry = {"name": node, "netns": n["netns"], "agent_pid": n["pid"], "agent": "running" if alive else "dead",
                 "socket": n["socket"], "subnet": state["plan"]["nodes"][node]["subnet"],
                 "gateway_ip": state["plan"]["nodes"][node]["gateway_ip"],
                 "gateway_mac": state["plan"]["nodes"][node]["gateway_mac"],
                 "underlay_ip": n.get("underlay_ip"), "underlay_mac": n.get("underlay_mac")}
        if alive:
            try:
                st = request(n["socket"], "status", timeout=3.0)
                entry.update(vnet_hdr=st["vnet_hdr"], offloads=st["offloads"], gso_path=st.get("gso_path"),
                             workers=st.get("workers"))
            except ControlError as e:
                entry["agent"] = f"unreachable: {e}"
        nodes.append(entry)
    for name, p in state["plan"]["pods"].items():
        pods.append({"name": name, "node": p["node"], "namespace": pod_ns(state["cluster"], name),
                     "ip": p["ip"], "mac": p["mac"], "gateway": p["gateway_ip"]})
    return {"cluster": state["cluster"], "source": state["source"], "fabric": state.get("fabric"),
            "vni": state.get("vni"), "vxlan_port": state.get("vxlan_port"),
            "external_nodes": list(state.get("external", {}).values()), "nodes": nodes, "pods": pods,
            "services": [{"name": n, "clusterIP": ip} for n, ip in state["plan"]["services"].items()]}


def pod_namespace(pod):
    state = require_state()
    if pod not in state["plan"]["pods"]:
        raise ClusterError(f"no pod {pod!r}; pods: {', '.join(state['plan']['pods'])}")
    return pod_ns(state["cluster"], pod)


def _agents(state):
    return {node: n["socket"] for node, n in state["nodes"].items()}


def node_add(name, pod_cidr, vtep, vtep_mac=None):
    """Register an external node (Linux's own vxlan, say) with every agent:
    its pod CIDR is reached through VXLAN to vtep, inner frames addressed to
    vtep_mac (flannel's VtepMAC: the remote vxlan device's MAC; by default
    podnet's gateway-MAC convention for that CIDR). All agents or none."""
    import ipaddress
    from dataplane.ipam import mac_for
    state = require_state()
    try:
        net = ipaddress.IPv4Network(pod_cidr)
        ip = ipaddress.IPv4Address(vtep)
    except ValueError as e:
        raise ClusterError(f"node add: {e}") from None
    if name in state["nodes"]:
        raise ClusterError(f"node add: {name!r} is a podnet node of this cluster")
    fabric = ipaddress.IPv4Network(state["fabric"]["subnet"])
    if ip not in fabric:
        raise ClusterError(f"node add: VTEP {ip} is not on the fabric {fabric}")
    route = {"name": name, "cidr": str(net), "vtep": str(ip), "vni": state["vni"],
             "inner_mac": vtep_mac or mac_for(net.network_address + 1)}
    done = []
    try:
        for node, sock in _agents(state).items():
            request(sock, "route_add", **route)
            done.append(sock)
    except ControlError as e:
        for sock in done:                    # all or nothing
            try:
                request(sock, "route_remove", name=name)
            except ControlError:
                pass
        raise ClusterError(f"node add {name}: {e}") from None
    state.setdefault("external", {})[name] = {"name": name, "pod_cidr": str(net), "vtep": str(ip),
                                               "vtep_mac": route["inner_mac"]}
    _save_state(state)
    return route


def node_remove(name):
    state = require_state()
    if name not in state.get("external", {}):
        raise ClusterError(f"node remove: no external node {name!r}; "
                           f"external nodes: {', '.join(state.get('external', {})) or 'none'}")
    for node, sock in _agents(state).items():
        try:
            request(sock, "route_remove", name=name)
        except ControlError as e:
            if "no route" not in str(e):
                raise ClusterError(f"node remove {name}: {e}") from None
    del state["external"][name]
    _save_state(state)


# ---- services ---------------------------------------------------------------

def _spec_services(spec, plan):
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
    from dataplane.manifests import ServiceStore
    pods = {name: (p["ip"], state["pod_labels"].get(name, {})) for name, p in state["plan"]["pods"].items()}
    store = ServiceStore(pods=pods, service_cidr=state["spec"]["cluster"]["serviceCIDR"])
    if state.get("service_store"):
        store.restore(state["service_store"])
    return store


def _fp_key(e):
    return (e["vip"], e["port"], e["protocol"])


def _apply_objects(state, objects, delete, progress=None):
    """Apply (or delete) manifest objects: validate in the store, diff what the
    fast path holds, push the change to every agent (all or none), save."""
    say = progress or (lambda *_: None)
    store = _store(state)
    before = {_fp_key(e): e for e in state.get("service_entries", [])}
    result = store.delete(objects) if delete else store.apply(objects)
    after = {_fp_key(e): e for e in store.resolve()}
    upsert = [e for k, e in after.items() if before.get(k) != e]
    gone = [{"vip": k[0], "port": k[1], "protocol": k[2]} for k in before if k not in after]
    undo_upsert = [before[k] for k in list(before) if k in after and before[k] != after[k]] + \
                  [before[k] for k in before if k not in after]
    undo_delete = [{"vip": k[0], "port": k[1], "protocol": k[2]} for k in after if k not in before]
    say(f"validated {len(objects)} objects: {len(upsert)} service ports to load, {len(gone)} to remove")
    done = []
    if upsert or gone:
        try:
            for node, sock in _agents(state).items():
                t0 = time.monotonic()
                request(sock, "services_apply", timeout=60.0, upsert=upsert, delete=gone)
                done.append(sock)
                say(f"node {node}: loaded in {time.monotonic() - t0:.2f} s")
        except ControlError as e:
            for sock in done:
                try:
                    request(sock, "services_apply", timeout=60.0, upsert=undo_upsert, delete=undo_delete)
                except ControlError:
                    pass
            raise ClusterError(f"services not changed: {e}") from None
    state["service_store"] = store.snapshot()
    state["service_entries"] = list(after.values())
    _save_state(state)
    return result, len(upsert), len(gone)


def apply_file(path, delete=False, progress=None):
    from dataplane.manifests import load_manifests
    state = require_state()
    t0 = time.monotonic()
    objects = load_manifests(path)
    if not objects:
        raise ClusterError(f"{path}: no objects")
    if progress:
        progress(f"read {len(objects)} objects from {path} in {time.monotonic() - t0:.1f} s")
    return _apply_objects(state, objects, delete, progress)


def services():
    state = require_state()
    return state.get("service_entries", [])
