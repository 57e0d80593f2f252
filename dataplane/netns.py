"""Network namespaces: create, delete, list, enter (pyroute2).

pyroute2 is imported where it is used: importing it takes ~185 ms, and the
CNI plugin (a new process for every ADD and DEL) reaches this module through
dataplane.cluster without needing it on its common path."""
import os


def _pyroute2_netns():
    from pyroute2 import netns
    return netns

NETNS_DIR = "/run/netns"


def exists(name):
    return os.path.exists(os.path.join(NETNS_DIR, name))


def create(name):
    if exists(name):
        raise FileExistsError(f"network namespace {name} already exists")
    _pyroute2_netns().create(name)


def remove(name):
    """Delete a namespace if present; returns True if it was there."""
    if not exists(name):
        return False
    _pyroute2_netns().remove(name)
    return True


def pids(name):
    """PIDs of processes living in namespace name (what `ip netns pids` shows)."""
    try:
        st = os.stat(os.path.join(NETNS_DIR, name))
    except FileNotFoundError:
        return []
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ns = os.stat(f"/proc/{entry}/ns/net")
            except OSError:
                continue
            if (ns.st_dev, ns.st_ino) == (st.st_dev, st.st_ino):
                out.append(int(entry))
    return out


def listing():
    return sorted(_pyroute2_netns().listnetns())


def enter(name):
    """Move the calling process into namespace name (for the agent)."""
    _pyroute2_netns().setns(name)
