"""Helpers for netns tests: an isolated run/state directory, a cluster up for
the test and always taken down (dataplane.testing.Cluster), and bounded
commands inside pods."""
import contextlib
import os
import signal
import subprocess
import sys
import textwrap

from conftest import require_root


def cluster_env(tmp_path):
    """PODNET_RUN_DIR/STATE_DIR in tmp_path so tests never touch a user's cluster."""
    from dataplane.testing.live import run_env
    return run_env(tmp_path / "run", tmp_path / "state")


@contextlib.contextmanager
def running_cluster(tmp_path, spec_text, vnet=True):
    """The cluster of spec_text up for the block and always taken down after:
    a dataplane.testing.Cluster under the spec's own cluster.name (its
    namespaces' prefix, as the tests name them), its run and state
    directories under tmp_path and PODNET_RUN_DIR/PODNET_STATE_DIR set to
    them for the block. Yields the cluster's record (ClusterState, read once
    it is up) with the toolkit's Cluster as `st.live` (st.live.pod("a"),
    st.live.node("n1").uplink, ...). spec_text is also left in
    tmp_path/spec.yaml, for tests that run `podnet up -f` on it again.
    Skips without root (fails under CI=true)."""
    require_root()
    from dataplane.spec import parse_spec
    from dataplane.testing import Cluster
    (tmp_path / "spec.yaml").write_text(spec_text)
    name = parse_spec(spec_text, str(tmp_path / "spec.yaml")).name
    c = Cluster(spec_text, tmp_path, vnet=vnet, name=name)
    with c.env(), c:
        st = c.state()
        st.live = c                    # not a field of ClusterState: never written to state.json
        yield st


def live(st):
    """The dataplane.testing.Cluster behind a running_cluster state."""
    return st.live


def pod_ip(state, pod):
    return state.pods[pod].ip


def in_pod(state, pod, *cmd, timeout=20, check=True, input=None):
    ns = state.pods[pod].netns
    r = subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,
                       timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} in {pod} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def py_in_pod(state, pod, code, *args, timeout=20, check=True):
    """Run a Python snippet (with podnet importable) inside a pod's namespace."""
    return in_pod(state, pod, sys.executable, "-c", textwrap.dedent(code), *map(str, args),
                  timeout=timeout, check=check)


def spawn_in_pod(state, pod, code, *args):
    ns = state.pods[pod].netns
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", textwrap.dedent(code),
                             *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def agent(state, node, op, **args):
    """One control request to node's agent; args are the request's fields."""
    from dataplane.control import request
    return request(state.nodes[node].socket, op, **args)


def podnet(*args, check=True):
    """Run the CLI as a user would (in this test's PODNET_RUN_DIR)."""
    r = subprocess.run([sys.executable, "-m", "dataplane", *args], capture_output=True, text=True,
                       timeout=60, env=os.environ)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def wait_until(cond, timeout=10.0, what="condition", every=0.05):
    """Poll cond() until it is true; AssertionError naming what after timeout s."""
    import time
    end = time.monotonic() + timeout
    while True:
        if cond():
            return
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def wait_listening(state, pod, port, proto="tcp", timeout=10.0):
    """Wait (bounded) until a socket in pod listens on port: `ss -ltn` / `ss -lun`."""
    flag = {"tcp": "-ltnH", "udp": "-lunH"}[proto]

    def listening():
        out = in_pod(state, pod, "ss", flag, f"sport = :{port}", check=False).stdout
        return any(line.split()[3].endswith(f":{port}") for line in out.splitlines() if len(line.split()) > 3)
    wait_until(listening, timeout, f"{proto} port {port} listening in pod {pod}")


def read_json_line(proc, timeout=20.0):
    """The next line of proc's stdout (text mode) as JSON, within timeout s."""
    import json
    import select
    r, _, _ = select.select([proc.stdout], [], [], timeout)
    if not r:
        raise AssertionError(f"no line from pid {proc.pid} within {timeout} s")
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=5)
        raise AssertionError(f"pid {proc.pid} exited ({proc.returncode}): {proc.stderr.read() if proc.stderr else ''}")
    return json.loads(line)


def kill_agent(state, node):
    """SIGKILL node's agent and wait until it is gone (reaped when this
    process started it; else until /proc no longer shows it running)."""
    pid = state.nodes[node].pid
    os.kill(pid, signal.SIGKILL)
    try:
        os.waitpid(pid, 0)               # started by this process (cluster.up): reap it
    except ChildProcessError:
        wait_until(lambda: not os.path.exists(f"/proc/{pid}/cmdline") or
                   not open(f"/proc/{pid}/cmdline", "rb").read(), 15, f"agent {pid} to die")
    return pid


def echo_requests(src, dst_ip, n, tos=0, ttl=64, ident=0x7e57, payload=b"podnet"):
    """n ICMP echo requests as pod src (a dataplane.testing Pod) sends them to
    dst_ip through its gateway, seq 1..n (send_and_expect gives each its
    marker; the echo reply carries it back)."""
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import Ether
    return [Ether(src=src.mac, dst=src.gateway_mac) / IP(src=src.ip, dst=dst_ip, tos=tos, ttl=ttl)
            / ICMP(id=ident, seq=k + 1) / payload for k in range(n)]


def wait_marked(cap, sent, count, timeout=5.0):
    """The frames (scapy) a dataplane.testing Capture caught that carry a
    marker of one of the packets sent (marked by send_and_expect or mark()),
    once count of them are in (bounded in time), in arrival order; fails
    unless exactly count arrived."""
    from dataplane.testing import markers_in
    marks = {m for p in sent for m in markers_in(p)}
    assert marks, "the packets carry no marker: send them with send_and_expect or mark() them first"

    def hits(raw):
        return [k for k, r in enumerate(raw) if marks.intersection(markers_in(r))]
    cap.wait(lambda raw: len(hits(raw)) >= count, timeout)
    frames = cap.frames
    got = [frames[k] for k in hits(cap.raw)]
    assert len(got) == count, f"{len(got)} of {count} marked frames arrived within {timeout} s"
    return got
