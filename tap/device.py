"""TAP devices for pods: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, a virtio-net
header size, offloads the running kernel accepts, and placement in a pod's
namespace as eth0. Created with python-pytun; the vnet/offload ioctls it
lacks are issued directly (see ../shared/TAP-OFFLOADS.md for what was measured)."""
import errno
import fcntl
import os
import struct

import pytun
from pyroute2 import IPRoute, NetNS

# linux/if_tun.h; defined here because the system headers are older than the kernel.
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNSETTXFILTER = 0x400454D1
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

    def __init__(self, name, vnet_hdr=True, offloads=POD_OFFLOADS, vnet_len=VNET_HDR_LEN):
        if not 1 <= len(name) <= 15:
            raise ValueError(f"interface name {name!r} must be 1..15 characters")
        flags = pytun.IFF_TAP | pytun.IFF_NO_PI | (pytun.IFF_VNET_HDR if vnet_hdr else 0)
        try:
            self.dev = pytun.TunTapDevice(name=name, flags=flags)
        except pytun.Error as e:
            raise TapError(f"cannot create TAP {name}: {e} (needs root and /dev/net/tun)") from None
        self.name = self.dev.name
        self.vnet_len = 0
        self.offloads = 0
        try:
            if vnet_hdr:
                fcntl.ioctl(self.dev.fileno(), TUNSETVNETHDRSZ, struct.pack("i", vnet_len))
                self.vnet_len = vnet_len
                self.offloads = set_offloads(self.dev.fileno(), offloads)
            os.set_blocking(self.dev.fileno(), False)
        except Exception:
            self.close()
            raise

    def fileno(self):
        return self.dev.fileno()

    def place(self, netns, ifname="eth0", mac=None, ip=None, prefixlen=24, mtu=1500,
              gateway=None, txqueuelen=TXQUEUELEN, master=None):
        """Move the interface into netns (the fd stays ours), rename it, give it
        its MAC, address, MTU and default route, enslave it to a bridge
        (master), and bring it and lo up."""
        with IPRoute() as ipr:
            [idx] = ipr.link_lookup(ifname=self.name) or [None]
            if idx is None:
                raise TapError(f"TAP {self.name} vanished before placement")
            ipr.link("set", index=idx, net_ns_fd=netns)
        with NetNS(netns) as ns:
            [idx] = ns.link_lookup(ifname=self.name)
            attrs = {"ifname": ifname, "mtu": mtu, "txqlen": txqueuelen}
            if mac:
                attrs["address"] = mac
            ns.link("set", index=idx, **attrs)
            if master:
                [br] = ns.link_lookup(ifname=master) or [None]
                if br is None:
                    raise TapError(f"no bridge {master} in {netns}")
                ns.link("set", index=idx, master=br)
            if ip:
                ns.addr("add", index=idx, address=str(ip), prefixlen=prefixlen)
            ns.link("set", index=idx, state="up")
            lo = ns.link_lookup(ifname="lo")
            if lo:
                ns.link("set", index=lo[0], state="up")
            if gateway:
                ns.route("add", dst="0.0.0.0/0", gateway=str(gateway))
        self.name = ifname

    def close(self):
        if self.dev is not None:
            self.dev.close()
            self.dev = None
