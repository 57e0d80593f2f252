"""TAP devices for pods: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, a virtio-net
header size, offloads the running kernel accepts, and placement in a pod's
namespace as eth0. Created with python-pytun; the vnet/offload ioctls it
lacks are issued directly (see ../shared/TAP-OFFLOADS.md for what was measured).

Agents make their TAPs persistent (TUNSETPERSIST): a pod keeps its eth0 when
its agent dies, and the restarted agent re-attaches to it (open_tap).

TAPs are multi-queue (IFF_MULTI_QUEUE): one fd per queue, one queue per
forwarding worker. The kernel picks the queue a frame the pod sends is read
from by its flow hash, so each flow stays on one worker. Every TAP is made
multi-queue even with one worker, so an agent restarted with another worker
count re-attaches to it; a single-queue TAP left by an older agent is
re-attached with one queue."""
import contextlib
import errno
import fcntl
import os
import struct

import pytun
from pyroute2 import IPRoute
from pyroute2 import netns as _netns

# linux/if_tun.h; defined here because the system headers are older than the kernel.
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNSETTXFILTER = 0x400454D1
TUNSETPERSIST = 0x400454CB
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
TUN_F_UDP_TUNNEL_GSO = 0x80
TUN_F_UDP_TUNNEL_GSO_CSUM = 0x100

VNET_HDR_LEN = 12          # struct virtio_net_hdr_mrg_rxbuf (num_buffers included)
POD_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
# The uplink also takes VXLAN-encapsulated super-frames; the tunnel bits are
# refused unless CSUM and a TSO bit come in the same call.
UPLINK_OFFLOADS = POD_OFFLOADS | TUN_F_UDP_TUNNEL_GSO | TUN_F_UDP_TUNNEL_GSO_CSUM
UPLINK_VNET_HDR_LEN = 24   # struct virtio_net_hdr_v1_hash_tunnel
TXQUEUELEN = 10000         # the default 1000 overflowed under load (TAP-OFFLOADS.md)


class TapError(OSError):
    pass


def set_offloads(fd, wanted):
    """Ask for `wanted` offload bits, dropping what the kernel refuses (EINVAL),
    most demanding first. Returns the bits in force."""
    candidates = [wanted, wanted & ~(TUN_F_UDP_TUNNEL_GSO | TUN_F_UDP_TUNNEL_GSO_CSUM),
                  wanted & (TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6), wanted & TUN_F_CSUM, 0]
    for bits in dict.fromkeys(candidates):           # ordered, without repeats
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, bits)
            return bits
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
    return 0


class Tap:
    """One TAP device; the fd is the agent's end, the interface goes to a pod.

    vnet_hdr=False gives the plain mode (one MTU frame per read/write, full
    checksums), kept for comparison."""

    def __init__(self, name, vnet_hdr=True, offloads=POD_OFFLOADS, vnet_len=VNET_HDR_LEN, persist=False,
                 queues=1):
        """Create TAP name, or attach to the existing TAP of that name (in the
        namespace the calling thread is in): TUNSETIFF does either. persist:
        the device outlives this fd (set last, so a failure leaves nothing).
        queues: fds to open (queue 0 is fileno(); filenos() has them all)."""
        if not 1 <= len(name) <= 15:
            raise ValueError(f"interface name {name!r} must be 1..15 characters")
        if type(queues) is not int or not 1 <= queues <= 16:
            raise ValueError(f"TAP queues must be 1..16, got {queues!r}")
        base = pytun.IFF_TAP | pytun.IFF_NO_PI | (pytun.IFF_VNET_HDR if vnet_hdr else 0)
        flags = base | pytun.IFF_MULTI_QUEUE
        self.devs = []
        try:
            self.dev = pytun.TunTapDevice(name=name, flags=flags)
        except pytun.Error as e:
            if "[Errno 22]" in str(e) and queues == 1:
                # a single-queue TAP of that name (an older agent's): attach as it is
                flags = base
                try:
                    self.dev = pytun.TunTapDevice(name=name, flags=flags)
                except pytun.Error as e2:
                    raise TapError(f"cannot create TAP {name}: {e2} (needs root and /dev/net/tun)") from None
            else:
                hint = ("attached to another process: is its agent still running?" if "[Errno 16]" in str(e)
                        else "a single-queue TAP made by an older agent: `podnet down` and up again"
                        if "[Errno 22]" in str(e) else "needs root and /dev/net/tun")
                raise TapError(f"cannot create TAP {name}: {e} ({hint})") from None
        self.devs = [self.dev]
        self.name = self.dev.name
        self.vnet_len = 0
        self.offloads = 0
        self.persistent = False
        try:
            for _ in range(queues - 1):
                try:
                    self.devs.append(pytun.TunTapDevice(name=self.name, flags=flags))
                except pytun.Error as e:
                    raise TapError(f"cannot open queue {len(self.devs)} of TAP {self.name}: {e}") from None
            if vnet_hdr:
                self.configure(vnet_len, offloads)
            for d in self.devs:
                os.set_blocking(d.fileno(), False)
            if persist:
                fcntl.ioctl(self.dev.fileno(), TUNSETPERSIST, 1)
                self.persistent = True
        except Exception:
            self.close()
            raise

    def configure(self, vnet_len, offloads):
        """(Re)apply the virtio-net header size and offloads: they belong to
        the device, but a re-attached one is set again rather than trusted."""
        for d in self.devs:                 # the device's settings; set through every queue alike
            fcntl.ioctl(d.fileno(), TUNSETVNETHDRSZ, struct.pack("i", vnet_len))
        self.vnet_len = vnet_len
        self.offloads = set_offloads(self.dev.fileno(), offloads)
        for d in self.devs[1:]:
            set_offloads(d.fileno(), self.offloads)

    def destroy(self):
        """Close and delete the device even if persistent."""
        if self.dev is not None and self.persistent:
            try:
                fcntl.ioctl(self.dev.fileno(), TUNSETPERSIST, 0)
            except OSError:
                pass
        self.close()

    def fileno(self):
        return self.dev.fileno()

    def filenos(self):
        """One fd per queue, queue 0 first."""
        return [d.fileno() for d in self.devs]

    def ensure(self, ipr, mac=None, ip=None, prefixlen=24, mtu=1500, gateway=None,
               txqueuelen=TXQUEUELEN, master=None, fresh=False, loopback=True):
        """Give the interface (self.name, in the namespace ipr speaks for)
        its MAC, MTU, queue length, bridge (master), address and default
        route, and bring it and lo up, changing only what differs: on a
        re-attached TAP that is normally nothing, so the pod's MAC, addresses
        and routes stay as they were; after a crash in the middle of
        placement it finishes the job. fresh: the TAP was just created (no
        address, no qdisc of its own), so those are set without asking.
        loopback: bring lo up too (a namespace podnet made; in a runtime's,
        lo is the CNI loopback plugin's, as the reference plugins leave it).
        Returns what it changed."""
        fixed = []
        ns = ipr
        [idx] = ns.link_lookup(ifname=self.name) or [None]
        if idx is None:
            raise TapError(f"no {self.name} in its namespace")
        link = ns.get_links(idx)[0]
        attrs = {}
        if mac and link.get_attr("IFLA_ADDRESS") != mac.lower():
            attrs["address"] = mac
        if link.get_attr("IFLA_MTU") != mtu:
            attrs["mtu"] = mtu
        if link.get_attr("IFLA_TXQLEN") != txqueuelen:
            attrs["txqlen"] = txqueuelen
        if attrs:
            ns.link("set", index=idx, **attrs)
            fixed += sorted(attrs)
        if master:
            [br] = ns.link_lookup(ifname=master) or [None]
            if br is None:
                raise TapError(f"no bridge {master} beside {self.name}")
            if link.get_attr("IFLA_MASTER") != br:
                ns.link("set", index=idx, master=br)
                fixed.append("master")
        if ip:
            have = () if fresh else {(a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                                     for a in ns.get_addr(index=idx, family=2)}
            if (str(ip), prefixlen) not in have:
                ns.addr("add", index=idx, address=str(ip), prefixlen=prefixlen)
                fixed.append("address")
        # No qdisc: a TAP never pushes back (tun_net_xmit drops when its ring,
        # txqueuelen long, is full), so a qdisc only adds a lock; and the
        # default one costs dearly here: a multi-queue TAP has 256 TX queues,
        # and mq gives each a pfifo_fast of 3 x txqueuelen pointers, 61 MB
        # of kernel memory at 10000 allocated and zeroed when it comes up
        # (~250 ms of a pod's start, measured). noqueue goes on before up.
        if fresh or _root_qdisc(ns, idx) != "noqueue":
            ns.tc("replace", kind="noqueue", index=idx, handle=0)
            fixed.append("qdisc")
        if not link["flags"] & 1:                       # IFF_UP
            ns.link("set", index=idx, state="up")
            fixed.append("up")
        lo = ns.link_lookup(ifname="lo") if loopback else None
        if lo and not ns.get_links(lo[0])[0]["flags"] & 1:
            ns.link("set", index=lo[0], state="up")
        if gateway:
            routes = ns.get_routes(family=2, dst_len=0, table=254)
            if not any(r.get_attr("RTA_GATEWAY") == str(gateway) for r in routes):
                ns.route("replace", dst="0.0.0.0/0", gateway=str(gateway))
                fixed.append("default route")
        return fixed

    def close(self):
        """Close our fds; a persistent device stays (with its pod's namespace)."""
        for d in self.devs:
            d.close()
        self.devs = []
        self.dev = None


@contextlib.contextmanager
def in_netns(name):
    """Run the block with this thread in namespace name, then come back.
    flags=0: a missing namespace is an error, never created."""
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            _netns.setns(name, flags=0)
        except FileNotFoundError:
            raise TapError(f"no network namespace {name}") from None
        try:
            yield
        finally:
            _netns.setns(back, flags=0)
    finally:
        os.close(back)


def _root_qdisc(ipr, idx):
    """The kind of the interface's root qdisc, or None (none attached yet)."""
    for q in ipr.get_qdiscs(index=idx):
        if q["parent"] == 0xFFFFFFFF:
            return q.get_attr("TCA_KIND")
    return None


def open_tap(netns, ifname, vnet_hdr=True, offloads=POD_OFFLOADS, vnet_len=VNET_HDR_LEN, queues=1, **placement):
    """The persistent TAP that is ifname in netns (a name under /run/netns
    or a path): re-attached if an earlier agent left it there, otherwise
    created there. Either way TUNSETIFF runs from a /dev/net/tun opened
    inside netns, which is where the kernel looks the name up and creates
    the device, so a new TAP never moves between namespaces and needs no
    temporary name; and one netlink socket made in there serves every step
    (pyroute2's NetNS forks a helper process for each use). placement:
    ensure()'s arguments. Returns (tap, reattached)."""
    with in_netns(netns), IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if idx:
            info = ipr.get_links(idx[0])[0].get_attr("IFLA_LINKINFO")
            if info is None or info.get_attr("IFLA_INFO_KIND") != "tun":
                raise TapError(f"{ifname} in {netns} exists but is not a TAP; not touching it")
        tap = Tap(ifname, vnet_hdr=vnet_hdr, offloads=offloads, vnet_len=vnet_len, persist=True, queues=queues)
        try:
            tap.ensure(ipr, fresh=not idx, **placement)
        except Exception:
            tap.close() if idx else tap.destroy()
            raise
    return tap, bool(idx)
