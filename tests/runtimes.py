"""A real container runtime driven by CNI, for tests: podman 4.3 with runc,
kept away from the system's config and storage.

What podman 4.3 needs on this machine, and why:
  * --runtime runc, named: crun (podman's first choice when installed)
    refuses this machine's hybrid cgroup v1 + v2 layout.
  * --cgroup-manager cgroupfs (no systemd), and a cgroup parent of our own:
    podman makes the parent (default libpod_parent) and conmon's cgroup in
    it in every hierarchy and never removes them; close() does.
  * --ulimit nofile=1024:1024 --ulimit nproc=1024:1024: as root podman asks
    runc for 1048576 open files and 4194304 processes; without
    CAP_SYS_RESOURCE runc cannot raise a hard limit ("error setting rlimit
    type 7/6"), and conmon runs with nproc capped at kernel.pid_max (32768
    here), not our own limit, so small fixed values are the safe choice.
  * --rootfs DIR instead of `podman import`: importing writes the image
    blob-info cache to /var/lib/containers/cache whatever --root says.
  * CONTAINERS_CONF of our own: CNI backend, our plugin and config dirs,
    file locks in our tmp dir (the default shm lock is /dev/shm/libpod_lock,
    shared with every other podman), no events log.
  * always an explicit --network: podman's default network is a bridge
    it would create in the root namespace.
What cannot be moved: runc's state (/run/runc/<id>, gone at delete), the
container's netns file (/run/netns/netns-<uuid>, gone at rm) and libcni's
result cache (/var/lib/cni/results/<net>-<id>-<if>, gone at DEL). close()
removes whatever of these, of our containers, is left.

containerd is not driven here: `ctr run --cni` loads CNI with go-cni's
fixed defaults (/etc/cni/net.d, /opt/cni/bin) in the ctr process itself, no
flag or environment moves them, and the containerd config's CNI dirs are
the CRI plugin's, which ctr does not use."""
import contextlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import IN_CI, require_root

TOOLS = ("podman", "runc", "conmon", "busybox")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CNI_CACHE = Path("/var/lib/cni")


def _static_elf(path):
    """True if path is an ELF64 without a PT_INTERP (no dynamic loader):
    the busybox copied into a rootfs must run without the host's /lib."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:5] != b"\x7fELF\x02":
            return False
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def require_podman():
    """Skip without root, podman, runc, conmon or a static busybox; fail in CI."""
    require_root()
    missing = [t for t in TOOLS if not shutil.which(t)]
    if not missing and not _static_elf(shutil.which("busybox")):
        missing = ["a static busybox (busybox-static)"]
    if missing:
        msg = f"needs {', '.join(missing)} (make deps)"
        if IN_CI:
            pytest.fail(msg + " (CI=true: runtime tests must run)")
        pytest.skip(msg)


def write_conflist(conf_dir, name, plugins, version="1.0.0"):
    """conf_dir/name.conflist holding plugins (a list of dicts)."""
    path = Path(conf_dir) / f"{name}.conflist"
    path.write_text(json.dumps({"cniVersion": version, "name": name, "plugins": plugins}, indent=2))
    return path


RECORDER = """#!{python}
# A chained CNI plugin for tests: appends each call (command, CNI_* environment,
# config) as one JSON line to the config's "log" and passes prevResult on.
import json, os, sys
conf = json.load(sys.stdin)
cmd = os.environ.get("CNI_COMMAND")
if "log" in conf:
    with open(conf["log"], "a") as f:
        f.write(json.dumps({{"cmd": cmd, "env": {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}},
                            "conf": conf}}) + "\\n")
if cmd == "VERSION":
    print(json.dumps({{"cniVersion": conf.get("cniVersion", "1.0.0"), "supportedVersions": ["0.4.0", "1.0.0"]}}))
elif cmd == "ADD":
    print(json.dumps(conf.get("prevResult") or {{"cniVersion": conf["cniVersion"]}}))
"""


def write_recorder(bin_dir, name="pnt-record"):
    path = Path(bin_dir) / name
    path.write_text(RECORDER.format(python=sys.executable))
    path.chmod(0o755)
    return path


def read_records(log):
    try:
        return [json.loads(line) for line in Path(log).read_text().splitlines()]
    except FileNotFoundError:
        return []


class PodmanError(AssertionError):
    pass


class Podman:
    """One isolated podman for a test. Everything it writes is under a temp
    dir of its own or listed in the module docstring; close() removes it all,
    also after a failed test."""

    def __init__(self, cni_conf_dir, cni_bin_dirs):
        self.base = Path(tempfile.mkdtemp(prefix="pnt-podman-"))
        self.cgroup_parent = "/" + self.base.name
        self.cni_conf_dir = Path(cni_conf_dir)
        self.containers = {}                 # name -> {"id", "netns"}
        self._cni_cache_existed = CNI_CACHE.exists()
        for d in ("root", "runroot", "tmp", "rootfs"):
            (self.base / d).mkdir()
        conf = self.base / "containers.conf"
        conf.write_text(
            "[engine]\n"
            'events_logger = "none"\n'
            'lock_type = "file"\n'
            f'tmp_dir = "{self.base}/tmp"\n'
            f'volume_path = "{self.base}/root/volumes"\n'
            f'image_copy_tmp_dir = "{self.base}/tmp"\n'
            "[network]\n"
            'network_backend = "cni"\n'
            f"cni_plugin_dirs = {json.dumps([str(d) for d in cni_bin_dirs])}\n"
            f'network_config_dir = "{self.cni_conf_dir}"\n')
        storage = self.base / "storage.conf"
        storage.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{self.base}/root"\n'
                           f'runroot = "{self.base}/runroot"\n')
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("CONTAINER_", "CONTAINERS_", "XDG_"))}
        self.env.update(CONTAINERS_CONF=str(conf), CONTAINERS_STORAGE_CONF=str(storage),
                        CONTAINERS_REGISTRIES_CONF=str(self.base / "registries.conf"),
                        TMPDIR=str(self.base / "tmp"))
        (self.base / "registries.conf").write_text("")
        self.global_args = ["podman", "--root", f"{self.base}/root", "--runroot", f"{self.base}/runroot",
                            "--tmpdir", f"{self.base}/tmp", "--storage-driver", "vfs",
                            "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "none"]
        self.run_args = ["--cgroup-parent", self.cgroup_parent, "--ulimit", "nofile=1024:1024",
                         "--ulimit", "nproc=1024:1024"]

    def __call__(self, *args, check=True, timeout=60):
        try:
            r = subprocess.run([*self.global_args, *args], capture_output=True, text=True,
                               timeout=timeout, env=self.env, cwd=self.base)
        except subprocess.TimeoutExpired as e:
            raise PodmanError(f"podman {' '.join(args)}: no answer within {timeout} s") from e
        if check and r.returncode != 0:
            raise PodmanError(f"podman {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def command_line(self, name, *command, network):
        return [*self.global_args, "run", *self.run_args, "--name", name, "--network", network,
                "--rootfs", str(self.base / "rootfs" / name), *command]

    def rootfs(self, name):
        """A busybox root filesystem of the container's own (--rootfs is
        written into: /etc/hosts, /proc, /dev mount points, httpd's files)."""
        root = self.base / "rootfs" / name
        for d in ("bin", "etc", "tmp", "www"):
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(shutil.which("busybox"), root / "bin" / "busybox")
        applets = subprocess.run([root / "bin" / "busybox", "--list"], capture_output=True, text=True,
                                 check=True).stdout.split()
        for a in applets:
            if a != "busybox":
                os.symlink("busybox", root / "bin" / a)
        (root / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
        (root / "etc" / "group").write_text("root:x:0:\n")
        return root

    def run(self, name, *command, network, detach=False, files=None, check=True, timeout=60):
        """podman run (--rm unless detach) of command in a fresh busybox rootfs
        (plus files: {path in the rootfs: text}) on network; returns the
        CompletedProcess."""
        if name in self.containers:
            raise ValueError(f"container {name} exists")
        root = self.rootfs(name)
        for path, text in (files or {}).items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(text)
        args = self.command_line(name, *command, network=network)[len(self.global_args):]
        args.insert(1, "-d" if detach else "--rm")
        self.containers[name] = {"id": None, "netns": None}     # close() removes it if run fails half-way
        r = self(*args, check=check, timeout=timeout)
        if detach and r.returncode == 0:
            info = self.inspect(name)
            self.containers[name] = {"id": info["Id"], "netns": info["NetworkSettings"]["SandboxKey"] or None}
        elif not detach and r.returncode == 0:
            self.containers.pop(name)
        return r

    def inspect(self, name):
        return json.loads(self("inspect", "--type", "container", name).stdout)[0]

    def pid(self, name):
        return self.inspect(name)["State"]["Pid"]

    def exec(self, name, *command, check=True, timeout=30):
        return self("exec", name, *command, check=check, timeout=timeout)

    def rm(self, name):
        """podman rm -f (SIGKILL at once): the runtime's own teardown, CNI DEL included."""
        self("rm", "-f", "-i", "-t", "0", name, timeout=60)
        self.containers.pop(name, None)

    # ---- teardown -------------------------------------------------------

    def close(self):
        errors = []
        for name in list(self.containers):
            try:
                self.rm(name)
            except PodmanError as e:
                errors.append(str(e))
        self._kill_cgroups()
        for c in self.containers.values():        # what a failed rm left
            self._force_remove(c)
        self._unmount_under(self.base)
        shutil.rmtree(self.base, ignore_errors=True)
        if not self._cni_cache_existed:
            for d in (CNI_CACHE / "results", CNI_CACHE):
                with contextlib.suppress(OSError):
                    d.rmdir()
        return errors

    def _cgroup_dirs(self):
        rel = self.cgroup_parent.lstrip("/")
        roots = [CGROUP_ROOT / rel] + [h / rel for h in CGROUP_ROOT.iterdir() if h.is_dir()]
        return [r for r in roots if r.is_dir()]

    def _kill_cgroups(self):
        """SIGKILL what is still in our cgroup parent (conmon, container
        processes: all started by this podman), then remove the cgroups."""
        for root in self._cgroup_dirs():
            for d, _, _ in sorted(os.walk(root), key=lambda w: -len(w[0])):
                end = time.monotonic() + 10
                while True:
                    pids = [int(p) for p in Path(d, "cgroup.procs").read_text().split()]
                    if not pids or time.monotonic() > end:
                        break
                    for p in pids:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(p, signal.SIGKILL)
                    time.sleep(0.05)
                with contextlib.suppress(OSError):
                    os.rmdir(d)

    def _force_remove(self, c):
        if c["id"] and Path("/run/runc", c["id"]).exists():
            subprocess.run(["runc", "delete", "--force", c["id"]], capture_output=True, timeout=30)
        if c["netns"] and os.path.exists(c["netns"]):
            subprocess.run(["umount", "-l", c["netns"]], capture_output=True, timeout=30)
            with contextlib.suppress(OSError):
                os.unlink(c["netns"])
        if c["id"]:
            for f in (CNI_CACHE / "results").glob(f"*-{c['id']}-*"):
                f.unlink(missing_ok=True)

    @staticmethod
    def _unmount_under(base):
        prefix = str(base) + "/"
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4].encode().decode("unicode_escape") for line in f]
        for p in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
            subprocess.run(["umount", "-l", p], capture_output=True, timeout=30)


@contextlib.contextmanager
def podman(cni_conf_dir, cni_bin_dirs):
    require_podman()
    pm = Podman(cni_conf_dir, cni_bin_dirs)
    try:
        yield pm
    finally:
        pm.close()
