"""A real containerd driven by CNI through `ctr run --cni`, for tests:
containerd 1.6 with runc, its CNI dirs, state and sockets kept off the
system's.

ctr loads CNI in its own process with go-cni's fixed defaults: the first
config by name in /etc/cni/net.d, plugins in /opt/cni/bin, libcni's result
cache in /var/lib/cni; no flag or environment moves them. The runc shim puts
its socket in /run/containerd/s/ whatever --state says (1.6's
shim.SocketAddress). So the daemon and every ctr run in one mount namespace
of their own (`unshare --mount --propagation private`, ctr through
`nsenter --mount`) where the test's directories are bind-mounted over
those paths:
  * a path that exists on the host (/etc/cni/net.d here) gets the bind mount;
  * a missing one (/opt/cni/bin, /var/lib/cni, /run/containerd here) is not
    made on the host: its nearest existing parent (/opt, /var/lib, /run) is
    covered by an overlay whose lower layer is the parent itself and whose
    upper layer is on a tmpfs of the namespace's own, the path is made in
    the overlay and bind-mounted. The parent reads as before; mounts under it
    are hidden in the namespace (/run/netns's; ctr uses /proc/PID/ns/net).
  * `mount -n` throughout: plain util-linux mount creates /run/mount (its
    utab) on the host before /run is covered.
  * `set -e`: containerd starts only once every mount is in place, and ctr
    only runs in its namespace, so nothing here reads the system's CNI
    configs (podman's bridge conflist) or plugins dir.
The namespace ends with its last process (containerd, the shims); close()
checks that the host's view of the fixed paths is as it was. /var/lib/cni
is covered but not checked: podman tests create and remove it.

What containerd 1.6.20 needs here, and why:
  * a config file of its own: without -c it reads /etc/containerd/config.toml.
    CRI off (not used by ctr; it would run its own CNI from the system's
    dirs), aufs/btrfs/zfs/devmapper snapshotters off (--rootfs needs no
    snapshotter), and the opt plugin's path moved: it makes /opt/containerd
    at start-up. io.containerd.runtime.v1.linux must stay loaded: without
    it the tasks service does not load (no ctr run at all).
  * --env PATH=/bin: with --rootfs there is no image config, so ctr's spec
    has no PATH and runc cannot find a command by name.
  * --cgroup /<ours>/<id>: the default is /<namespace>/<id>; runc (cgroupfs,
    which works on this hybrid v1 + v2 layout) makes the parent in every
    hierarchy and never removes it; close() does.
  * no rlimit change: ctr's spec asks for nofile 1024:1024 only, under the
    hard limit (podman's 1048576 needs CAP_SYS_RESOURCE, which we lack),
    and sets no nproc limit.
  * --fifo-dir of ours (the default is /run/containerd/fifo).
CNI as ctr drives it: CNI_CONTAINERID is "<namespace>-<id>", CNI_NETNS is
/proc/<pid>/ns/net (no netns file: the namespace ends with the task) and
only `ctr run` without -d ever runs DEL: after the task exits (CNI_NETNS
then empty) and before it removes the container. A detached container's
task kill/delete and container rm never do, so start() runs `ctr run --rm`
in the background and remove() kills its task."""
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import IN_CI, require_root
from runtimes import Podman, _static_elf

TOOLS = ("containerd", "ctr", "containerd-shim-runc-v2", "runc", "busybox", "unshare", "nsenter")
NAMESPACE = "pnt"          # containerd namespace: CNI_CONTAINERID is "pnt-<id>"
# the fixed paths ctr, libcni and the shim use, each covered by a directory of ours
CNI_CONF, CNI_BIN, CNI_CACHE, STATE = (Path("/etc/cni/net.d"), Path("/opt/cni/bin"), Path("/var/lib/cni"),
                                       Path("/run/containerd"))
WATCHED = ("/etc/cni/net.d", "/opt/cni", "/opt/containerd", "/run/containerd", "/var/lib/containerd")


class ContainerdError(AssertionError):
    pass


def _nearest_dir(path):
    return next(p for p in (path, *path.parents) if p.is_dir())


def mount_plan(covers, scratch):
    """Commands (argv lists) that put each (fixed path, our dir) of covers in
    place inside a private mount namespace, creating nothing on the host;
    ValueError if a path has no existing parent to overlay but /."""
    plan = [["mount", "-n", "-t", "tmpfs", "pnt-ctrd", str(scratch)]]
    overlaid = set()
    for target, src in covers:
        parent = _nearest_dir(target)
        if parent != target:
            if parent == Path("/"):
                raise ValueError(f"{target} does not exist and only / could be overlaid to make it")
            if parent not in overlaid:
                n = len(overlaid)
                upper, work = scratch / f"{n}-upper", scratch / f"{n}-work"
                plan += [["mkdir", str(upper), str(work)],
                         ["mount", "-n", "-t", "overlay", "pnt-ovl", "-o",
                          f"lowerdir={parent},upperdir={upper},workdir={work}", str(parent)]]
                overlaid.add(parent)
            plan.append(["mkdir", "-p", str(target)])
        plan.append(["mount", "-n", "--bind", str(src), str(target)])
    return plan


def host_view():
    """What of the fixed paths the host has: a directory's names, else whether it exists."""
    return {p: sorted(os.listdir(p)) if os.path.isdir(p) else os.path.exists(p) for p in WATCHED}


def cover_problem():
    """Why the fixed paths cannot be covered on this host, or None."""
    try:
        plan = mount_plan([(p, p) for p in (CNI_CONF, CNI_BIN, CNI_CACHE, STATE)], Path("/scratch"))
    except ValueError as e:
        return f"cannot cover containerd's fixed paths: {e}"
    if any("overlay" in argv for argv in plan) and "\toverlay\n" not in Path("/proc/filesystems").read_text():
        return "needs overlayfs to cover a fixed path the host does not have"
    return None


def require_containerd():
    """Skip without root, containerd, ctr, the runc shim, runc, a static
    busybox, unshare/nsenter or a way to cover the fixed paths; fail in CI."""
    require_root()
    missing = [t for t in TOOLS if not shutil.which(t)]
    if not missing and not _static_elf(shutil.which("busybox")):
        missing = ["a static busybox (busybox-static)"]
    reason = f"needs {', '.join(missing)} (make deps)" if missing else cover_problem()
    if reason:
        if IN_CI:
            pytest.fail(reason + " (CI=true: runtime tests must run)")
        pytest.skip(reason)


class Containerd:
    """One containerd of the test's own and ctr to drive it, in a private
    mount namespace (module docstring). Everything is under a temp dir or
    inside that namespace; close() removes it all, also after a failed test."""

    # Podman's: they only need base (rootfs under base/rootfs) and cgroup_parent
    rootfs = Podman.rootfs
    _cgroup_dirs = Podman._cgroup_dirs
    _kill_cgroups = Podman._kill_cgroups

    def __init__(self, cni_conf_dir, cni_bin_dir):
        self.base = Path(tempfile.mkdtemp(prefix="pnt-ctrd-"))
        self.cgroup_parent = "/" + self.base.name
        self.cni_conf_dir, self.cni_bin_dir = Path(cni_conf_dir), Path(cni_bin_dir)
        self.sock = self.base / "containerd.sock"
        self.containers = {}        # id -> the background `ctr run --rm` Popen, or None if detached
        self.daemon = None
        self.ns_inode = None
        self.host_before = host_view()
        self._execs = 0
        for d in ("root", "state", "opt", "fifo", "rootfs", "logs", "scratch", "cni-cache", "run", "tmp"):
            (self.base / d).mkdir()
        (self.base / "config.toml").write_text(
            "version = 2\n"
            f'root = "{self.base}/root"\n'
            f'state = "{self.base}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",\n'
            '  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",\n'
            '  "io.containerd.snapshotter.v1.devmapper"]\n'
            f'[grpc]\n  address = "{self.sock}"\n'
            f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{self.base}/opt"\n')
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERD_")}
        self.env["TMPDIR"] = str(self.base / "tmp")

    @property
    def covers(self):
        return [(CNI_CONF, self.cni_conf_dir), (CNI_BIN, self.cni_bin_dir),
                (CNI_CACHE, self.base / "cni-cache"), (STATE, self.base / "run")]

    # ---- the daemon -----------------------------------------------------

    def start_daemon(self, timeout=30):
        script = ["set -e", *(shlex.join(argv) for argv in mount_plan(self.covers, self.base / "scratch")),
                  "exec " + shlex.join(["containerd", "--config", f"{self.base}/config.toml", "--address",
                                        str(self.sock), "--root", f"{self.base}/root",
                                        "--state", f"{self.base}/state"])]
        (self.base / "ns-setup.sh").write_text("\n".join(script) + "\n")
        log = open(self.base / "logs" / "containerd.log", "w")
        # unshare and sh exec: the Popen's pid is containerd's
        self.daemon = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh",
                                        str(self.base / "ns-setup.sh")], stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT, env=self.env)
        log.close()
        end = time.monotonic() + timeout
        while True:
            if self.daemon.poll() is not None:
                raise ContainerdError(f"containerd exited {self.daemon.returncode}: {self.log_tail()}")
            if self.sock.exists() and self("version", check=False, timeout=10).returncode == 0:
                break
            if time.monotonic() > end:
                raise ContainerdError(f"containerd not serving within {timeout} s: {self.log_tail()}")
            time.sleep(0.1)
        self.ns_inode = os.stat(f"/proc/{self.daemon.pid}/ns/mnt").st_ino

    def log_tail(self, lines=15):
        text = (self.base / "logs" / "containerd.log").read_text()
        return " | ".join(text.splitlines()[-lines:])

    @property
    def ctr(self):
        return ["nsenter", f"--mount=/proc/{self.daemon.pid}/ns/mnt", "--", "ctr", "--address", str(self.sock),
                "--namespace", NAMESPACE]

    def __call__(self, *args, check=True, timeout=60):
        """ctr ARGS in the namespace; ContainerdError (stdout, stderr) if check and it fails."""
        if self.daemon is None or self.daemon.poll() is not None:
            raise ContainerdError("containerd is not running")
        try:
            r = subprocess.run([*self.ctr, *args], capture_output=True, text=True, timeout=timeout,
                               env=self.env, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise ContainerdError(f"ctr {shlex.join(args)}: no exit within {timeout} s") from e
        if check and r.returncode != 0:
            raise ContainerdError(f"ctr {shlex.join(args)} exited {r.returncode}: {r.stdout}{r.stderr}")
        return r

    # ---- containers -----------------------------------------------------

    def run_args(self, cid, *command, files=None):
        """`ctr run` options and arguments for command in a fresh busybox
        rootfs of cid's own (plus files: {path in the rootfs: text})."""
        root = self.rootfs(cid)
        for path, text in (files or {}).items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(text)
        return ["--rootfs", "--cni", "--runtime", "io.containerd.runc.v2", "--cgroup", f"{self.cgroup_parent}/{cid}",
                "--fifo-dir", str(self.base / "fifo"), "--env", "PATH=/bin", str(root), cid, *command]

    def run(self, cid, *command, check=True, timeout=60):
        """`ctr run --rm --cni` in the foreground: the command's exit status
        and output; CNI ADD before it starts, DEL after it exits."""
        self._new(cid, None)
        try:
            return self("run", "--rm", *self.run_args(cid, *command), check=check, timeout=timeout)
        finally:
            self.containers.pop(cid, None)

    def start(self, cid, *command, files=None, timeout=30):
        """`ctr run --rm --cni` in the background; returns the task's pid once
        it runs (CNI ADD is done by then: ctr starts the task after it)."""
        self._new(cid, None)
        out = open(self.base / "logs" / f"{cid}.out", "w")
        self.containers[cid] = subprocess.Popen([*self.ctr, "run", "--rm", *self.run_args(cid, *command, files=files)],
                                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                                env=self.env)
        out.close()
        return self._wait_running(cid, timeout)

    def run_detached(self, cid, *command, timeout=30):
        """`ctr run -d --cni`; returns the task's pid. Nothing ever runs DEL for
        it (module docstring)."""
        self._new(cid, None)
        self("run", "-d", *self.run_args(cid, *command), timeout=timeout)
        return self._wait_running(cid, timeout)

    def _new(self, cid, value):
        if cid in self.containers:
            raise ValueError(f"container {cid} exists")
        self.containers[cid] = value        # close() removes it if the run fails half-way

    def tasks(self):
        """{id: (pid, status)} from `ctr task ls`."""
        rows = [line.split() for line in self("task", "ls").stdout.splitlines()[1:]]
        return {r[0]: (int(r[1]), r[2]) for r in rows if len(r) == 3}

    def _wait_running(self, cid, timeout):
        end = time.monotonic() + timeout
        while True:
            proc = self.containers.get(cid)
            if proc is not None and proc.poll() is not None:
                raise ContainerdError(f"ctr run {cid} exited {proc.returncode}: "
                                      f"{(self.base / 'logs' / f'{cid}.out').read_text()}")
            pid, status = self.tasks().get(cid, (0, None))
            if status == "RUNNING":
                return pid
            if time.monotonic() > end:
                raise ContainerdError(f"task {cid} not running within {timeout} s (status {status})")
            time.sleep(0.1)

    def exec(self, cid, *command, check=True, timeout=30):
        self._execs += 1
        return self("task", "exec", "--exec-id", f"pnt-exec-{self._execs}", "--fifo-dir", str(self.base / "fifo"),
                    cid, *command, check=check, timeout=timeout)

    def remove(self, cid, timeout=30):
        """SIGKILL the task; a background `ctr run --rm` then runs CNI DEL and
        removes task and container itself; a detached one is removed here
        (task rm, container rm: no DEL)."""
        proc = self.containers[cid]
        self("task", "kill", "--signal", "SIGKILL", cid, check=False)
        if proc is not None:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise ContainerdError(f"ctr run {cid} still running {timeout} s after its task was killed") from None
            self.containers.pop(cid)
        else:
            self("task", "rm", "--force", cid, check=False)
            self("container", "rm", cid)
            self.containers.pop(cid)

    # ---- teardown -------------------------------------------------------

    def ns_pids(self):
        """Pids of the processes in our mount namespace (containerd, its
        shims, ctr): all started by this harness."""
        pids = []
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.stat(p / "ns" / "mnt").st_ino == self.ns_inode:
                        pids.append(int(p.name))
        return pids

    def close(self):
        """Remove containers, stop the daemon, kill shims and container
        processes left, remove cgroups and the temp dir; returns a list of
        what went wrong, the host's fixed paths changing included."""
        errors = []
        if self.daemon is not None and self.daemon.poll() is None:
            for cid in list(self.containers):
                try:
                    self.remove(cid)
                except ContainerdError as e:
                    errors.append(str(e))
            with contextlib.suppress(ContainerdError):
                left = self("container", "ls", "--quiet").stdout.split()
                if left:
                    errors.append(f"containers left in containerd: {left}")
        for proc in self.containers.values():             # ctr runs a failed remove left
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        if self.daemon is not None:
            if self.daemon.poll() is None:
                self.daemon.terminate()
                try:
                    self.daemon.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.daemon.kill()
                    self.daemon.wait()
            if self.ns_inode is not None:
                end = time.monotonic() + 10
                while (pids := self.ns_pids()) and time.monotonic() < end:
                    for p in pids:                        # shims of tasks that were not removed
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(p, signal.SIGKILL)
                    time.sleep(0.05)
                if pids:
                    errors.append(f"processes left in the mount namespace: {pids}")
        self._kill_cgroups()
        if self._cgroup_dirs():
            errors.append(f"cgroups left: {self._cgroup_dirs()}")
        Podman._unmount_under(self.base)                # nothing is mounted there outside the namespace
        shutil.rmtree(self.base, ignore_errors=True)
        after = host_view()
        if after != self.host_before:
            errors.append(f"host paths changed: {self.host_before} -> {after}")
        return errors


@contextlib.contextmanager
def containerd(cni_conf_dir, cni_bin_dir):
    """A started Containerd using cni_conf_dir and cni_bin_dir as
    /etc/cni/net.d and /opt/cni/bin; its teardown's errors fail the test."""
    require_containerd()
    ct = Containerd(cni_conf_dir, cni_bin_dir)
    try:
        ct.start_daemon()
        yield ct
    finally:
        errors = ct.close()
    if errors:
        raise ContainerdError("teardown: " + "; ".join(errors))
