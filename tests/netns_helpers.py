"""Helpers for netns tests: an isolated run/state directory, a cluster up for
the test and always taken down, and bounded commands inside pods."""
import contextlib
import os
import signal
import subprocess
import sys
import textwrap

from conftest import require_root


@contextlib.contextmanager
def cluster_env(tmp_path):
    """PODNET_RUN_DIR/STATE_DIR in tmp_path so tests never touch a user's cluster."""
    old = {k: os.environ.get(k) for k in ("PODNET_RUN_DIR", "PODNET_STATE_DIR")}
    os.environ["PODNET_RUN_DIR"] = str(tmp_path / "run")
    os.environ["PODNET_STATE_DIR"] = str(tmp_path / "state")
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def running_cluster(tmp_path, spec_text, vnet=True):
    require_root()
    from dataplane import cluster
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text)
    with cluster_env(tmp_path):
        try:
            yield cluster.up(str(spec), vnet=vnet, progress=lambda *_: None)
        finally:
            cluster.down(quiet=True, force=True)


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


@contextlib.contextmanager
def tcpdump(netns, iface, pcap, *args, timeout=10.0):
    """tcpdump -U -w pcap on iface in netns (extra args: -c N, a filter),
    yielded once it says "listening on" (the capture is open), ended on exit
    if it has not finished by itself. The caller waits for it (proc.wait)."""
    import select
    import time
    proc = subprocess.Popen(["ip", "netns", "exec", netns, "tcpdump", "-U", "-i", iface, "-w", str(pcap), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        end, seen = time.monotonic() + timeout, ""
        while "listening on" not in seen:
            left = end - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                raise AssertionError(f"tcpdump did not start listening within {timeout} s: {seen}")
            r, _, _ = select.select([proc.stderr], [], [], left)
            if r:
                seen += proc.stderr.readline()
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()


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
