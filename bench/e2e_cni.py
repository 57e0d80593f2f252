"""CNI ADD and DEL latency (issue 14), needs root. Three ways in the same run,
measured in interleaved rounds (bench/rounds.py, the order rotated each
round), each round --iterations ADD + DEL pairs:

  podnet     podnet-cni run as a runtime runs a plugin: the launcher
             `cni.install()` writes into a temp bin dir, CNI_* in the
             environment and the network config on stdin, one process per
             command, into a network namespace the benchmark made
             (`ip netns add pncb-...`), against a running 1-node podnet
             cluster
  reference  Debian's reference plugins (containernetworking-plugins in
             /usr/lib/cni): bridge with host-local IPAM doing the same ADD and
             DEL into the same kind of namespace. bridge makes its bridge and
             the host end of each veth in the namespace it runs in, so it runs
             inside a "host" namespace of the benchmark's own
             (`ip netns exec pncb-host-PID /usr/lib/cni/bridge`), never in the
             root namespace (checked once: the bridge and the host veth are in
             pncb-host-PID, neither in the root namespace); host-local's
             dataDir is a temp dir. `ip netns exec` itself costs a few ms that
             a runtime running bridge would not pay: it is timed on its own
             (`ip netns exec pncb-host-PID true`) and "reference, less the
             wrapper" subtracts its median from the reference's figures
  podman     the isolated podman 4.3 of tests/runtimes.py on the podnet
             network; in the podman run's own CNI bin dir, podnet-cni is a
             small C wrapper that records CLOCK_MONOTONIC start and end of
             each command to a file and runs the real launcher, so the
             plugin's own ADD and DEL inside podman are timed, beside the
             whole `podman run -d` and `podman rm -f`

Each round gives the median and p99 (nearest rank: with fewer than 100
samples, the largest) of each path; the figures are the median and min-max
of those over the rounds, and the ratios (podnet / reference) are taken
within a round. The target (issue 14): podnet's ADD p99 no slower than the
reference plugins', judged against the reference less the wrapper (the
harder comparison for podnet).

Where podnet's time goes, measured once after the rounds: the interpreter's
start-up (`python -P -c pass`, and with -S: without site, which loads the
editable install's finder), VERSION through the launcher (start-up and
importing dataplane.cni), `python -X importtime -m dataplane.cni` for
VERSION and for a real ADD (the modules an ADD imports: dataplane.cluster,
pyroute2, yaml, ...), and ADD/DEL run in this process (cni.run, imports
warm) with the agent requests timed (e2e_churn.RequestTimer).

Every namespace, the host namespace's bridge, container, temp dir and CNI
attachment is removed at the end, also on failure. Writes
bench/results/cni.json and cni.png, or --out FILE (and FILE's .png);
--quick is a smoke run (3 iterations, 1 podman container, 1 round) that
writes bench/build/cni-quick.json unless --out says where.

    python bench/e2e_cni.py [--iterations 100] [--podman-iterations 10] [--rounds 3] [--no-podman]
                            [--cpus 0-1] [--quick] [--out FILE]
"""
import argparse
import contextlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
from cpustat import pin  # noqa: E402
from e2e_churn import RequestTimer, cpu_list, latency, positive  # noqa: E402
from podnet_cluster import PodnetCluster  # noqa: E402
from rounds import fill_defaults, interleave, spread, summarize  # noqa: E402

RESULTS = HERE / "results"
REF_PLUGINS = Path("/usr/lib/cni")
SPEC = """cluster: {name: pnbcni, podCIDR: 10.213.0.0/16, serviceCIDR: 10.73.0.0/16, fabricCIDR: 172.30.213.0/24}
nodes: [{name: n1}]
pods: []
"""
REF_SUBNET = "10.214.0.0/16"
REF_BRIDGE = "pncbbr0"
PATHS = ("podnet", "reference", "podman")
LABELS = {"podnet": "podnet-cni (launcher, one process per command)",
          "reference": "bridge + host-local (containernetworking-plugins), run by `ip netns exec`",
          "podman": "podnet-cni inside podman 4.3 (the plugin's own time)"}
LAT = ["add_ms_median", "add_ms_p99", "del_ms_median", "del_ms_p99"]
METRICS = {"cni": LAT + ["wrapper_ms_median", *(f"net_{k}" for k in LAT), "run_ms_median", "run_ms_p99", "rm_ms_median", "rm_ms_p99",
                         "del_calls_per_rm"]}
PLAIN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
_seq = iter(range(10**9))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def sh(*cmd, check=True, timeout=30, **kw):
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout, **kw)


def new_netns():
    """A namespace standing in for a container's, named pncb-PID-N."""
    name = f"pncb-{os.getpid()}-{next(_seq)}"
    sh("ip", "netns", "add", name)
    return name


def del_netns(name):
    sh("ip", "netns", "del", name, check=False)


def new_cid():
    return secrets.token_hex(32)


def cni_env(cmd, cid, netns_path, cni_path, pod_name):
    """What a runtime hands a plugin (podman 4.3's CNI_ARGS included)."""
    return {**PLAIN_ENV, "CNI_COMMAND": cmd, "CNI_CONTAINERID": cid, "CNI_NETNS": netns_path, "CNI_IFNAME": "eth0",
            "CNI_PATH": cni_path, "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAME={pod_name}"}


def exec_plugin(argv, env, config):
    """One plugin command; (seconds, parsed stdout). A failure raises with its output."""
    data = json.dumps(config).encode()
    t = time.perf_counter()
    r = subprocess.run(argv, input=data, env=env, capture_output=True, timeout=60)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{env['CNI_COMMAND']} by {' '.join(map(str, argv))} failed ({r.returncode}): "
                           f"{r.stdout.decode(errors='replace').strip()} {r.stderr.decode(errors='replace').strip()}")
    out = json.loads(r.stdout) if r.stdout.strip() else None
    if env["CNI_COMMAND"] == "ADD" and not (out and out.get("ips")):
        raise RuntimeError(f"ADD by {argv[-1]} gave no address: {out}")
    return dt, out


def add_del_round(path, n):
    """n ADD + DEL pairs through path (its add and delete), each into a
    fresh netns: a round's figures."""
    add_s, del_s = [], []
    for _ in range(n):
        ns, cid = new_netns(), new_cid()
        try:
            add_s.append(path.add(cid, ns, ns)[0])
            del_s.append(path.delete(cid, ns, ns))
        finally:
            del_netns(ns)
    return round_figures(add_s, del_s)


def round_figures(add_s, del_s):
    a, d = latency(add_s), latency(del_s)
    return {"add_ms_median": a["median_ms"], "add_ms_p99": a["p99_ms"], "del_ms_median": d["median_ms"],
            "del_ms_p99": d["p99_ms"], "add_ms": [s * 1e3 for s in add_s], "del_ms": [s * 1e3 for s in del_s]}


# ---- (a) podnet-cni run directly ------------------------------------------------

class Cluster(PodnetCluster):
    """The 1-node cluster; CNI pods a failed run left are deleted before its down."""

    def __exit__(self, *exc):
        from dataplane import cluster
        self._own_env()
        try:
            for p in cluster.pods():
                if p["origin"] == "cni":
                    with contextlib.suppress(cluster.ClusterError):
                        cluster.pod_delete(p["name"])
        except cluster.ClusterError:
            pass
        return super().__exit__(*exc)


class Direct:
    """ADD and DEL pairs of podnet-cni through its launcher. Everything the
    plugin needs comes from the config (runDir, stateDir), so it runs with a
    plain environment, as under a runtime."""
    name = "podnet"

    def __init__(self, tmp):
        self.dir = Path(tmp) / "podnet"
        self.live = []                       # (cid, netns name, pod name) added and not deleted yet

    def __enter__(self):
        from dataplane import cni
        self.conf_path, self.bin_path = cni.install(self.dir / "net.d", self.dir / "bin")
        conflist = json.loads(self.conf_path.read_text())
        # the request config libcni derives for the conflist's one plugin
        self.config = {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **conflist["plugins"][0]}
        self.conflist = conflist
        return self

    def env(self, cmd, cid, ns, pod):
        return cni_env(cmd, cid, f"/run/netns/{ns}", str(self.bin_path.parent), pod)

    def add(self, cid, ns, pod, argv=None):
        self.live.append((cid, ns, pod))
        return exec_plugin(argv or [str(self.bin_path)], self.env("ADD", cid, ns, pod), self.config)

    def delete(self, cid, ns, pod):
        dt, _ = exec_plugin([str(self.bin_path)], self.env("DEL", cid, ns, pod), self.config)
        self.live.remove((cid, ns, pod))
        return dt

    def round(self, n):
        return add_del_round(self, n)

    def __exit__(self, *exc):
        from dataplane import cni
        for cid, ns, pod in list(self.live):
            with contextlib.suppress(Exception):
                self.delete(cid, ns, pod)
            del_netns(ns)
        cni.uninstall(self.dir / "net.d", self.dir / "bin")
        return False


# ---- (b) the reference plugins -----------------------------------------------------

class Reference:
    """bridge + host-local, run inside the benchmark's own host namespace."""
    name = "reference"

    def __init__(self, tmp):
        self.host = f"pncb-host-{os.getpid()}"
        self.data = Path(tmp) / "host-local"
        self.config = {"cniVersion": "1.0.0", "name": "pncbref", "type": "bridge", "bridge": REF_BRIDGE,
                       "isGateway": True, "ipMasq": False,
                       "ipam": {"type": "host-local", "subnet": REF_SUBNET, "dataDir": str(self.data)}}
        self.live = []
        self.made = False
        self.checked = None

    def argv(self):
        return ["ip", "netns", "exec", self.host, str(REF_PLUGINS / "bridge")]

    def env(self, cmd, cid, ns, pod):
        return cni_env(cmd, cid, f"/run/netns/{ns}", str(REF_PLUGINS), pod)

    def __enter__(self):
        for p in ("bridge", "host-local"):
            if not (REF_PLUGINS / p).exists():
                raise RuntimeError(f"{REF_PLUGINS / p} not found (apt-get install containernetworking-plugins)")
        if os.path.exists(f"/run/netns/{self.host}"):
            raise RuntimeError(f"namespace {self.host} exists already")
        sh("ip", "netns", "add", self.host)
        self.made = True
        sh("ip", "-n", self.host, "link", "set", "lo", "up")
        self.checked = self.check_placement()
        return self

    def add(self, cid, ns, pod):
        self.live.append((cid, ns, pod))
        return exec_plugin(self.argv(), self.env("ADD", cid, ns, pod), self.config)

    def delete(self, cid, ns, pod):
        dt, _ = exec_plugin(self.argv(), self.env("DEL", cid, ns, pod), self.config)
        self.live.remove((cid, ns, pod))
        return dt

    def check_placement(self):
        """One ADD: the bridge and the host end of the veth are in the host
        namespace and not in the root one; the container end in the netns."""
        ns, cid = new_netns(), new_cid()
        try:
            _, out = self.add(cid, ns, ns)
            host_ifs = [i["name"] for i in out["interfaces"] if not i.get("sandbox")]
            in_host = set(json_links(self.host))
            in_root = set(json_links(None))
            missing = [i for i in host_ifs if i not in in_host]
            leaked = [i for i in host_ifs if i in in_root]
            if REF_BRIDGE not in host_ifs or missing or leaked or "eth0" not in json_links(ns):
                raise RuntimeError(f"bridge plugin placement wrong: result {host_ifs}, missing from {self.host} "
                                   f"{missing}, in the root namespace {leaked}")
            self.delete(cid, ns, ns)
            return {"host_interfaces": host_ifs, "in_host_namespace": True, "in_root_namespace": False}
        finally:
            del_netns(ns)

    def wrapper_cost(self, n):
        """`ip netns exec HOST true`: what the wrapper adds to each reference command."""
        out = []
        for _ in range(n):
            t = time.perf_counter()
            sh("ip", "netns", "exec", self.host, "true")
            out.append(time.perf_counter() - t)
        return out

    def round(self, n):
        out = add_del_round(self, n)
        out["wrapper_ms"] = [s * 1e3 for s in self.wrapper_cost(max(5, n // 4))]
        out["wrapper_ms_median"] = w = statistics.median(out["wrapper_ms"])
        # what a runtime running bridge itself would see: less the wrapper's median
        out.update({f"net_{k}": out[k] - w for k in LAT})
        return out

    def __exit__(self, *exc):
        for cid, ns, pod in list(self.live):
            with contextlib.suppress(Exception):
                self.delete(cid, ns, pod)
            del_netns(ns)
        if self.made:
            sh("ip", "netns", "del", self.host, check=False)    # the bridge and any veth go with it
        shutil.rmtree(self.data, ignore_errors=True)
        return False


def json_links(ns):
    cmd = ["ip", "-j", "link", "show"] if ns is None else ["ip", "-n", ns, "-j", "link", "show"]
    return [link["ifname"] for link in json.loads(sh(*cmd).stdout or "[]")]


# ---- (c) podman ---------------------------------------------------------------------

WRAPPER_C = r"""
/* podnet-cni as podman's bin dir holds it: times each command with
   CLOCK_MONOTONIC around the real launcher, appends one line to LOG. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>
int main(int argc, char **argv) {
    struct timespec a, b;
    int status = 0;
    (void)argc;
    clock_gettime(CLOCK_MONOTONIC, &a);
    pid_t pid = fork();
    if (pid < 0) return 1;
    if (pid == 0) { execv(REAL, argv); _exit(127); }
    while (waitpid(pid, &status, 0) < 0) {}
    clock_gettime(CLOCK_MONOTONIC, &b);
    FILE *f = fopen(LOG, "a");
    if (f) {
        const char *cmd = getenv("CNI_COMMAND"), *cid = getenv("CNI_CONTAINERID");
        fprintf(f, "%s %s %ld.%09ld %ld.%09ld %d\n", cmd && *cmd ? cmd : "-", cid && *cid ? cid : "-",
                (long)a.tv_sec, a.tv_nsec, (long)b.tv_sec, b.tv_nsec, WIFEXITED(status) ? WEXITSTATUS(status) : 128);
        fclose(f);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
"""


def build_wrapper(exe, real, log_path):
    """Compile the timing wrapper to exe: it runs real, appending to log_path."""
    exe = Path(exe)
    src = exe.with_name(exe.name + ".c")
    src.write_text(WRAPPER_C)
    try:
        sh("gcc", "-O2", f'-DREAL="{real}"', f'-DLOG="{log_path}"', "-o", str(exe), str(src))
    finally:
        src.unlink()
    return exe


def read_wrapper_log(path):
    """The wrapper's lines: [{cmd, cid, s (seconds the command took), rc}]."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        cmd, cid, start, end, rc = line.split()
        out.append({"cmd": cmd, "cid": cid, "s": float(end) - float(start), "rc": int(rc)})
    return out


def podman_missing():
    """Why the podman path cannot run here, or None."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import runtimes
    finally:
        sys.path.remove(str(ROOT / "tests"))
    missing = [t for t in (*runtimes.TOOLS, "gcc") if not shutil.which(t)]
    if not missing and not runtimes._static_elf(shutil.which("busybox")):
        missing = ["a static busybox (busybox-static)"]
    return f"needs {', '.join(missing)} (make deps)" if missing else None


class InPodman:
    """podman run -d / rm -f on the podnet network, the plugin timed by the wrapper."""
    name = "podman"

    def __init__(self, tmp, direct):
        self.dir = Path(tmp) / "podman"
        self.direct = direct
        self.pm = None

    def __enter__(self):
        sys.path.insert(0, str(ROOT / "tests"))
        try:
            from runtimes import Podman
        finally:
            sys.path.remove(str(ROOT / "tests"))
        conf, bin_ = self.dir / "net.d", self.dir / "bin"
        conf.mkdir(parents=True)
        bin_.mkdir()
        self.log_path = self.dir / "plugin-times.log"
        build_wrapper(bin_ / "podnet-cni", self.direct.bin_path, self.log_path)
        # the conflist podnet cni install wrote, found by podman in its own conf dir
        (conf / "podnet.conflist").write_text(json.dumps(self.direct.conflist, indent=2))
        self.network = self.direct.conflist["name"]
        self.pm = Podman(conf, [bin_])
        return self

    def records(self):
        return read_wrapper_log(self.log_path)

    def round(self, n):
        pm = self.pm
        add_s, del_s, run_s, rm_s, dels = [], [], [], [], []
        for _ in range(n):
            name = f"pncb-pm-{os.getpid()}-{next(_seq)}"
            pm.rootfs(name)
            args = pm.command_line(name, "sleep", "600", network=self.network)[len(pm.global_args):]
            args.insert(1, "-d")
            pm.containers[name] = {"id": None, "netns": None}     # pm.close() removes it if run fails
            t = time.perf_counter()
            pm(*args)
            run_s.append(time.perf_counter() - t)
            info = pm.inspect(name)
            cid = info["Id"]
            pm.containers[name] = {"id": cid, "netns": info["NetworkSettings"]["SandboxKey"] or None}
            t = time.perf_counter()
            pm.rm(name)
            rm_s.append(time.perf_counter() - t)
            mine = [r for r in self.records() if r["cid"] == cid]
            adds = [r for r in mine if r["cmd"] == "ADD"]
            d = [r for r in mine if r["cmd"] == "DEL"]
            if len(adds) != 1 or adds[0]["rc"] != 0 or not d or any(r["rc"] != 0 for r in d):
                raise RuntimeError(f"container {name}: the plugin's calls were {mine}")
            add_s.append(adds[0]["s"])
            del_s.append(d[0]["s"])
            dels.append(len(d))
            shutil.rmtree(pm.base / "rootfs" / name, ignore_errors=True)
        out = round_figures(add_s, del_s)
        r, m = latency(run_s), latency(rm_s)
        out.update(run_ms_median=r["median_ms"], run_ms_p99=r["p99_ms"], rm_ms_median=m["median_ms"],
                   rm_ms_p99=m["p99_ms"], run_ms=[s * 1e3 for s in run_s], rm_ms=[s * 1e3 for s in rm_s],
                   del_calls_per_rm=statistics.mean(dels))
        return out

    def __exit__(self, *exc):
        errors = self.pm.close() if self.pm else []
        if errors:
            log("podman teardown: " + "; ".join(errors))
        return False


# ---- where podnet's ADD time goes ------------------------------------------------------

def parse_importtime(stderr):
    """-X importtime's lines -> (total ms of the top-level imports, [(module, cumulative ms)] top-level)."""
    top = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        _, cum, name = line[len("import time:"):].split("|")
        if not name.startswith("  "):                 # nested imports are inside a top-level one's cumulative
            top.append((name.strip(), int(cum) / 1e3))
    return sum(ms for _, ms in top), sorted(top, key=lambda x: -x[1])


def timed_runs(argv, n, env=None, input_=None):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(argv, env=env, input=input_, capture_output=True, timeout=60, check=True)
        out.append(time.perf_counter() - t)
    return latency(out)


def importtime(argv_env, n):
    """Median total over n runs, and the module list of the run nearest it."""
    runs = []
    for _ in range(n):
        argv, env, stdin, after = argv_env()
        r = subprocess.run(argv, env=env, input=stdin, capture_output=True, text=False, timeout=60)
        after()
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {r.stdout.decode(errors='replace')}")
        runs.append(parse_importtime(r.stderr.decode(errors="replace")))
    med = statistics.median(t for t, _ in runs)
    total, top = min(runs, key=lambda x: abs(x[0] - med))
    return {"total_ms": med, "runs_ms": [t for t, _ in runs], "top": [{"module": m, "ms": ms} for m, ms in top[:10]]}


def breakdown(direct, n):
    """Python start-up, imports and the work of an ADD and a DEL."""
    from dataplane import cluster, cni
    py = sys.executable
    launcher_env = {**PLAIN_ENV, "PYTHONPATH": str(ROOT)}
    out = {"runs": n, "python_startup": timed_runs([py, "-P", "-c", "pass"], n),
           "python_startup_no_site": timed_runs([py, "-S", "-P", "-c", "pass"], n),
           "version_via_launcher": timed_runs([str(direct.bin_path)], n, env={**PLAIN_ENV, "CNI_COMMAND": "VERSION"})}

    def version():
        return ([py, "-X", "importtime", "-P", "-m", "dataplane.cni"], {**launcher_env, "CNI_COMMAND": "VERSION"},
                b"", lambda: None)
    out["imports_version"] = importtime(version, n)

    def add():
        ns, cid = new_netns(), new_cid()
        direct.live.append((cid, ns, ns))

        def after():
            direct.delete(cid, ns, ns)
            del_netns(ns)
        return ([py, "-X", "importtime", "-P", "-m", "dataplane.cni"], {**launcher_env, **direct.env("ADD", cid, ns, ns)},
                json.dumps(direct.config).encode(), after)
    out["imports_add"] = importtime(add, n)

    # the work itself: cni.run in this process, every module already imported
    add_s, del_s, agent_add, agent_del, ops = [], [], [], [], {}
    stdin = json.dumps(direct.config).encode()
    for _ in range(n):
        ns, cid = new_netns(), new_cid()
        try:
            def timed(cmd, wall, agent):
                with RequestTimer(cluster) as rt:
                    t = time.perf_counter()
                    rc, res = cni.run(direct.env(cmd, cid, ns, ns), stdin)
                    wall.append(time.perf_counter() - t)
                if rc != 0:
                    raise RuntimeError(f"in-process {cmd} failed: {res}")
                agent.append(rt.seconds())
                return rt
            for op, v in timed("ADD", add_s, agent_add).by_op.items():
                ops.setdefault(op, []).extend(v)
            timed("DEL", del_s, agent_del)
        finally:
            with contextlib.suppress(Exception):
                if cluster.attachment(cid, "eth0"):
                    cni.run(direct.env("DEL", cid, ns, ns), stdin)
            del_netns(ns)
    out["in_process_add"] = latency(add_s)
    out["in_process_del"] = latency(del_s)
    out["agent_per_add"] = latency(agent_add)
    out["agent_per_del"] = latency(agent_del)
    out["agent_ops_per_add"] = {op: latency(v) for op, v in ops.items()}
    return out


# ---- report -----------------------------------------------------------------------------

def pooled(raw):
    """Every round's samples of a path together: {path: {add, del}: latency}."""
    out = {}
    for p, rounds_ in raw["cni"].items():
        out[p] = {k: latency([ms / 1e3 for r in rounds_ for ms in r[f"{k}_ms"]]) for k in ("add", "del")}
        if rounds_ and "run_ms" in rounds_[0]:
            out[p].update({k: latency([ms / 1e3 for r in rounds_ for ms in r[f"{k}_ms"]]) for k in ("run", "rm")})
    return out


def cni_ratios(raw):
    """podnet / reference per round: median and p99 of ADD and DEL, also
    against the reference less its round's wrapper median; podnet's ADD
    inside podman over its direct one."""
    out = {}
    per = raw["cni"]
    if "podnet" in per and "reference" in per:
        for k in LAT:
            out[f"podnet_vs_reference_{k.replace('_ms', '')}"] = spread(
                [a[k] / b[k] for a, b in zip(per["podnet"], per["reference"]) if b[k]])
            out[f"podnet_vs_reference_net_{k.replace('_ms', '')}"] = spread(
                [a[k] / b[f"net_{k}"] for a, b in zip(per["podnet"], per["reference"]) if b[f"net_{k}"] > 0])
    if "podnet" in per and "podman" in per:
        for k in ("add_ms_median", "add_ms_p99"):
            out[f"podman_vs_podnet_{k.replace('_ms', '')}"] = spread(
                [a[k] / b[k] for a, b in zip(per["podman"], per["podnet"]) if b[k]])
    return out


def target(ratios):
    r = ratios.get("podnet_vs_reference_net_add_p99")
    return {"add_p99_no_slower_than_reference": bool(r) and all(v <= 1.0 for v in r["values"])}


def plot(doc, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = doc["summary"]["cni"]
    names = [p for p in PATHS if p in s]
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    w = 0.2
    for i, (k, label) in enumerate((("add_ms_median", "ADD median"), ("add_ms_p99", "ADD p99"),
                                    ("del_ms_median", "DEL median"), ("del_ms_p99", "DEL p99"))):
        vals = [s[n][k] for n in names]
        med = [v["median"] for v in vals]
        err = [[m - v["min"] for m, v in zip(med, vals)], [v["max"] - m for m, v in zip(med, vals)]]
        b = ax.bar([x + (i - 1.5) * w for x in range(len(names))], med, w, yerr=err, capsize=2, label=label)
        ax.bar_label(b, fmt="%.0f", fontsize=6)
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), [doc["labels"][n].split(" (")[0] for n in names], fontsize=7)
    ax.set_ylabel(f"ms (median, min-max of {doc['rounds']} rounds)", fontsize=8)
    ax.set_title("CNI ADD and DEL latency, one process per command", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_summary(doc):
    for p, m in doc["summary"]["cni"].items():
        print(f"{p:10s} " + "  ".join(f"{k} {v['median']:,.1f} ({v['min']:,.1f}-{v['max']:,.1f})"
                                      for k, v in m.items() if v))
    for k, v in doc["ratios"].items():
        if v:
            print(f"{k:40s} {v['median']:.2f} ({v['min']:.2f}-{v['max']:.2f})")
    b = doc.get("breakdown")
    if b:
        print(f"python -P -c pass {b['python_startup']['median_ms']:.1f} ms (-S: "
              f"{b['python_startup_no_site']['median_ms']:.1f}); VERSION via launcher "
              f"{b['version_via_launcher']['median_ms']:.1f} ms; imports: VERSION {b['imports_version']['total_ms']:.1f} ms, "
              f"ADD {b['imports_add']['total_ms']:.1f} ms; in process: ADD {b['in_process_add']['median_ms']:.1f} ms "
              f"(agent {b['agent_per_add']['median_ms']:.1f}), DEL {b['in_process_del']['median_ms']:.1f} ms "
              f"(agent {b['agent_per_del']['median_ms']:.1f})")
        print("  ADD's biggest imports: " + ", ".join(f"{t['module']} {t['ms']:.0f} ms" for t in b["imports_add"]["top"][:5]))
    print("target: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in doc["target"].items()))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="CNI ADD/DEL latency: podnet-cni, bridge + host-local, podman")
    ap.add_argument("--iterations", type=positive(int), default=None, help="ADD + DEL pairs per path per round (100)")
    ap.add_argument("--podman-iterations", type=positive(int), default=None,
                    help="podman run + rm per round (10)")
    ap.add_argument("--rounds", type=positive(int), default=None, help="interleaved rounds (3)")
    ap.add_argument("--breakdown-runs", type=positive(int), default=None,
                    help="repetitions of each start-up/import/in-process measurement (10)")
    ap.add_argument("--no-podman", action="store_true", help="leave out the podman path")
    ap.add_argument("--cpus", type=cpu_list, default=None, help="CPU list this run and all it starts run on")
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 iterations, 1 podman container, 1 round")
    ap.add_argument("--out", help="write the JSON here (and the plot beside it)")
    args = ap.parse_args(argv)
    return fill_defaults(args, {"iterations": 3, "podman_iterations": 1, "rounds": 1, "breakdown_runs": 2},
                         {"iterations": 100, "podman_iterations": 10, "rounds": 3, "breakdown_runs": 10},
                         HERE / "build" / "cni-quick.json", RESULTS / "cni.json")


def main(argv=None):
    args = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces, TAP devices)")
    cpus = pin(args.cpus)
    podman_why = "left out (--no-podman)" if args.no_podman else podman_missing()
    from machine import machine
    doc = {"bench": "cni", "machine": machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "iterations": args.iterations, "podman_iterations": args.podman_iterations, "rounds": args.rounds,
           "cpus": cpus, "quick": args.quick, "reference_plugins": ref_version(),
           "podman": podman_version() if not podman_why else None, "podman_skipped": podman_why,
           "labels": {p: LABELS[p] for p in PATHS if p != "podman" or not podman_why}}
    tmp = tempfile.mkdtemp(prefix="pncb-")
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(Cluster(SPEC))
            direct = stack.enter_context(Direct(tmp))
            ref = stack.enter_context(Reference(tmp))
            paths = {"podnet": direct, "reference": ref}
            if not podman_why:
                paths["podman"] = stack.enter_context(InPodman(tmp, direct))
            doc["reference_placement"] = ref.checked
            n = {"podnet": args.iterations, "reference": args.iterations, "podman": args.podman_iterations}
            raw = interleave(list(paths), ("cni",), args.rounds, lambda p, _k: measure(paths[p], n[p]), log=log)
            doc["breakdown"] = breakdown(direct, args.breakdown_runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    doc["summary"] = summarize(raw, METRICS)
    doc["pooled"] = pooled(raw)
    doc["ratios"] = cni_ratios(raw)
    doc["target"] = target(doc["ratios"])
    doc["raw"] = raw
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    plot(doc, out.with_suffix(".png"))
    print_summary(doc)
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return doc


def measure(path, n):
    r = path.round(n)
    log(f"  {path.name}: ADD {r['add_ms_median']:.1f} ms (p99 {r['add_ms_p99']:.1f}), "
        f"DEL {r['del_ms_median']:.1f} ms (p99 {r['del_ms_p99']:.1f})")
    return r


def ref_version():
    r = sh(str(REF_PLUGINS / "bridge"), check=False)
    pkg = sh("dpkg-query", "-W", "-f", "${Version}", "containernetworking-plugins", check=False)
    return {"bridge": (r.stdout + r.stderr).splitlines()[0] if (r.stdout + r.stderr) else None,
            "package": pkg.stdout.strip() or None}


def podman_version():
    return sh("podman", "--version", check=False).stdout.strip() or None


if __name__ == "__main__":
    main()
