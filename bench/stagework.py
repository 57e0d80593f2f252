"""The work of each fast-path stage, twice: a Dataplane set up for it, and the
per-packet pure-Python version of the same stage (dpkt parses, Python dicts
hold the tables), for bench/stages.py and the pytest-benchmark files.

Both versions do the same work on the same frames, and `check()` proves it
before anything is timed: each takes the burst's raw frames (the fast path
copies them into its slots, as a TAP read does; the Python version gets the
bytes objects), parses, learns, looks up, rewrites with incremental
checksums, and ends with every frame assigned to its output port (the fast
path's TX queue entry; the Python version's (port, bytes) list). Their
outputs are compared byte for byte, except the two fields the stages may
choose differently: the outer IPv4 id (and with it the outer checksum) and,
for VXLAN, the outer UDP source port, which the fast path takes from its own
flow hash. Tunnels behave as the fast path's backends do: an outer frame
ends with its inner packet (Ethernet padding does not cross the fabric, in
direct mode either), and a decapsulated packet is sent to the pod at its IP
length.

Stages (64-byte frames on the wire, 60 without the FCS, burst 256):
  bridge            learn the source, forward to the known destination port
  vxlan_encap       pod frame to the gateway -> route to a remote pod CIDR,
                    MACs rewritten, TTL decremented -> VXLAN outer headers
  vxlan_decap       outer checks (MAC, IP, UDP port, fragment, flags, VNI)
                    -> inner frame to the gateway -> local pod, MACs, TTL
  ipip_encap        the same route, IP-in-IP (RFC 2003): the inner IPv4
                    packet behind an outer IPv4 header, protocol 4 (outer
                    TTL = inner after the decrement, DF, ECN copied)
  ipip_decap        outer checks (MAC, IP, protocol 4, a known node, no
                    fragment, a well-formed inner packet, RFC 6040 ECN)
                    -> the inner packet routed to a local pod, MACs, TTL
  direct_encap      the same route, no encapsulation: the frame leaves the
                    uplink to the next hop's MAC (the peer node's), TTL - 1
  direct_decap      a pod's packet from another node (its source inside a
                    route's CIDR, to our MAC, not our IP) -> local pod, MACs, TTL
  dnat_established  UDP to a ClusterIP:80 with a connection already tracked
                    -> DNAT to its backend -> local pod, MACs, TTL
  dnat_new_flows    the same with an empty connection table: lookup, pick a
                    backend at random, insert both tuples
"""
import random
import struct

import dpkt
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from fastpath import Dataplane

BURST, NPORTS, NSTATIONS = 256, 4, 64
GW_IP, GW_MAC, POD_CIDR = "10.244.0.1", "0a:58:0a:f4:00:01", "10.244.0.0/24"
POD = ("10.244.0.2", "0a:58:0a:f4:00:02")
REMOTE_GW, REMOTE_CIDR = "0a:58:0a:f4:01:01", "10.244.1.0/24"
NODE, PEER = ("172.30.250.1", "0a:5a:ac:1e:fa:01"), ("172.30.250.2", "0a:5a:ac:1e:fa:02")
UPLINK, VNI, VXLAN_PORT = 255, 1, 4789
TUNNELS = ("vxlan", "ipip", "direct")
IPPROTO_IPIP = 4
BACKENDS = [(f"10.244.0.{h}", 8080) for h in range(3, 13)]     # 10 local backends, ports 1..10


def mac(n):
    return f"02:00:00:00:{n >> 8:02x}:{n & 0xff:02x}"


def mb(text):
    return bytes.fromhex(text.replace(":", ""))


def ip4(text):
    return bytes(int(x) for x in text.split("."))


def pad60(pkt):
    b = bytes(pkt)
    return b + b"\0" * (60 - len(b))


# ---- frames and fast-path set-ups ------------------------------------------

def bridge_frames():
    """(frame, in_port) x 256: 60 bytes each, every one known unicast once learned."""
    out = []
    for i in range(BURST):
        s = i % NSTATIONS
        d = (i * 7 + 3) % NSTATIONS
        if d % NPORTS == s % NPORTS:      # keep every frame forwardable
            d = (d + 1) % NSTATIONS
        f = pad60(Ether(src=mac(s), dst=mac(d)) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1024 + i, dport=9))
        out.append((f, s % NPORTS))
    return out


def bridge_dp():
    dp = Dataplane(nslots=BURST, slot_size=2048)
    for p in range(NPORTS):
        dp.add_port(p)
    # learn every station first (each sends one frame to a MAC nobody has)
    for s in range(NSTATIONS):
        dp.process(pad60(Ether(src=mac(s), dst="02:ff:ff:ff:ff:ff") / IP() / UDP()), s % NPORTS)
    dp.reset_counters()
    return dp


def tunnel_routes(backend="vxlan"):
    """The one remote pod CIDR, behind the peer node (its MAC static, so no
    ARP); only VXLAN has an inner MAC."""
    r = {"cidr": REMOTE_CIDR, "vtep": PEER[0], "vtep_mac": PEER[1]}
    if backend == "vxlan":
        r["inner_mac"] = REMOTE_GW
    return [r]


def overlay_dp(backend="vxlan"):
    dp = Dataplane(nslots=BURST, slot_size=2048)
    dp.add_port(0)
    dp.add_port(1)
    dp.add_port(UPLINK, domain=4095)
    dp.gateway.configure(GW_IP, GW_MAC, POD_CIDR)
    dp.gateway.add_neighbor(*POD)
    if backend == "vxlan":                # as before the backends: the same call, the same counts
        dp.overlay.configure(UPLINK, NODE[0], NODE[1], mtu=1600)
    else:
        dp.overlay.configure(UPLINK, NODE[0], NODE[1], mtu=1600, backend=backend, prefixlen=24)
    dp.overlay.set_routes(tunnel_routes(backend))
    dp.process(bytes(Ether(src=POD[1], dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=POD[0])), 0)
    dp.reset_counters()
    return dp


def encap_frames():
    return [(pad60(Ether(src=POD[1], dst=GW_MAC) / IP(src=POD[0], dst="10.244.1.2", ttl=64)
                   / UDP(sport=1024 + i, dport=9)), 0) for i in range(BURST)]


def decap_frames():
    out = []
    for i in range(BURST):
        inner = pad60(Ether(src=REMOTE_GW, dst=GW_MAC) / IP(src="10.244.1.2", dst=POD[0], ttl=64)
                      / UDP(sport=1024 + i, dport=9))
        out.append((bytes(Ether(src=PEER[1], dst=NODE[1]) / IP(src=PEER[0], dst=NODE[0], flags="DF")
                          / UDP(sport=50000 + i, dport=VXLAN_PORT, chksum=0) / VXLAN(vni=VNI) / inner), UPLINK))
    return out


def ipip_decap_frames():
    """IP-in-IP from the peer node: outer IPv4 (DF, protocol 4) around a
    remote pod's UDP packet to our pod; 62 bytes, no padding."""
    return [(bytes(Ether(src=PEER[1], dst=NODE[1]) / IP(src=PEER[0], dst=NODE[0], flags="DF", ttl=64)
                   / IP(src="10.244.1.2", dst=POD[0], ttl=64) / UDP(sport=1024 + i, dport=9)), UPLINK)
            for i in range(BURST)]


def direct_decap_frames():
    """A remote pod's UDP packet routed here unencapsulated: to our MAC, its
    own addresses; 60 bytes."""
    return [(pad60(Ether(src=PEER[1], dst=NODE[1]) / IP(src="10.244.1.2", dst=POD[0], ttl=64)
                   / UDP(sport=1024 + i, dport=9)), UPLINK) for i in range(BURST)]


def vip(k):
    return f"10.{96 + (k >> 16)}.{(k >> 8) & 0xff}.{k & 0xff}"


def backend_mac(p):
    return "0a:58:0a:f4:00:%02x" % (p + 2)


def services_dp(nservices, conntrack=262144):
    dp = Dataplane(nslots=BURST, slot_size=2048, service_capacity=max(16, nservices),
                   conntrack_capacity=conntrack, service_cidr="10.96.0.0/12")
    dp.add_port(0)
    for p in range(1, 11):
        dp.add_port(p)
    dp.gateway.configure(GW_IP, GW_MAC, POD_CIDR)
    dp.gateway.add_neighbor(*POD)
    for p, (ip, _) in enumerate(BACKENDS, start=1):
        dp.gateway.add_neighbor(ip, backend_mac(p))
        dp.process(bytes(Ether(src=backend_mac(p), dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=ip, pdst="10.244.0.250")), p)
    dp.process(bytes(Ether(src=POD[1], dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=POD[0], pdst="10.244.0.250")), 0)
    for k in range(1, nservices + 1):
        dp.services.set(vip(k), 80, "UDP", BACKENDS)
    dp.reset_counters()
    return dp


def service_frames(nservices):
    """Frames spread over all services, so the table size shows in the cost."""
    rnd = random.Random(nservices)
    out = []
    for i in range(BURST):
        k = rnd.randrange(1, nservices + 1)
        out.append((pad60(Ether(src=POD[1], dst=GW_MAC) / IP(src=POD[0], dst=vip(k))
                          / UDP(sport=1024 + i, dport=80, chksum=0)), 0))
    return out


def load(dp, frames):
    for i, (f, p) in enumerate(frames):
        dp.load(i, f, p)


def fast_outputs(dp, frames):
    """Run frames through dp as the agent does (load, run_burst, TX queues):
    [(port, bytes)] in input order."""
    load(dp, frames)
    dp.run_burst(0, len(frames))
    pairs = sorted((j, p) for p in dp.tx_ports() for j in dp.tx_queue(p))
    return [(p, dp.frame(j)) for j, p in pairs]


# ---- the per-packet Python versions ------------------------------------------

def csum_fold(s):
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return s


def csum_update16(csum, old, new):
    """RFC 1624: HC' = ~(~HC + ~m + m')."""
    return ~csum_fold((~csum & 0xffff) + (~old & 0xffff) + new) & 0xffff


def ttl_dec(buf, l3):
    """TTL - 1 with the IPv4 checksum updated (the TTL/protocol word)."""
    old = (buf[l3 + 8] << 8) | buf[l3 + 9]
    buf[l3 + 8] -= 1
    c = csum_update16((buf[l3 + 10] << 8) | buf[l3 + 11], old, old - 0x100)
    buf[l3 + 10:l3 + 12] = c.to_bytes(2, "big")


class PyBridge:
    """Learn the source MAC in a dict, forward to the destination's port."""

    def __init__(self, nports=NPORTS, aging=300.0, now=lambda: 0.0):
        self.fdb, self.aging, self.now = {}, aging, now
        self.ports = list(range(nports))

    def learn(self, src, port, now):
        self.fdb[src] = (port, now)

    def lookup(self, dst, now):
        hit = self.fdb.get(dst)
        if hit is not None and now - hit[1] <= self.aging and not dst[0] & 1:
            return hit[0]
        return None

    def process(self, frames):
        now = self.now()
        out = []
        for buf, port in frames:
            try:
                eth = dpkt.ethernet.Ethernet(buf)
            except dpkt.UnpackError:
                continue
            if eth.src[0] & 1:
                continue
            self.learn(eth.src, port, now)
            d = self.lookup(eth.dst, now)
            if d is None:
                out.extend((p, buf) for p in self.ports if p != port)
            elif d != port:
                out.append((d, buf))
        return out


class PyGateway(PyBridge):
    """The bridge plus the pod gateway: routing to local pods (neighbour table,
    MAC rewrite, TTL) and, with routes, to remote pod CIDRs over VXLAN."""

    def __init__(self, nports, neighbors, routes=(), uplink=UPLINK, backend="vxlan"):
        super().__init__(nports)
        if backend not in TUNNELS:
            raise ValueError(backend)
        self.backend = backend
        self.gw_mac, self.gw_ip = mb(GW_MAC), ip4(GW_IP)
        self.net, self.mask = struct.unpack("!I", ip4(POD_CIDR.split("/")[0]))[0], 0xffffff00
        self.neigh = {ip4(ip): mb(m) for ip, m in neighbors}
        # (network, mask, vtep ip, vtep mac, inner mac, vni), longest prefix first
        self.routes = []
        for r in routes:
            net, plen = r["cidr"].split("/")
            self.routes.append((struct.unpack("!I", ip4(net))[0], (0xffffffff << (32 - int(plen))) & 0xffffffff,
                                ip4(r["vtep"]), mb(r["vtep_mac"]),
                                mb(r["inner_mac"]) if r.get("inner_mac") else None, r.get("vni", VNI)))
        self.routes.sort(key=lambda r: -bin(r[1]).count("1"))
        self.uplink, self.node_ip, self.node_mac = uplink, ip4(NODE[0]), mb(NODE[1])
        self.ip_id = 0

    def route(self, buf, eth, ip, now, out, local_only=False):
        """Route an IPv4 frame sent to the gateway (buf: a bytearray of it);
        local_only: a packet from the fabric, for local pods or nothing."""
        if ip.ttl <= 1:
            return
        dst = struct.unpack("!I", ip.dst)[0]
        if dst & self.mask == self.net:
            nmac = self.neigh.get(ip.dst)
            if nmac is None:
                return
            buf[0:6], buf[6:12] = nmac, self.gw_mac
            ttl_dec(buf, 14)
            port = self.lookup(nmac, now)
            if port is not None:
                out.append((port, bytes(buf)))
            return
        if local_only:
            return                                 # no_route
        for net, mask, vtep, vtep_mac, inner_mac, vni in self.routes:
            if dst & mask == net:
                ttl_dec(buf, 14)
                del buf[14 + ip.len:]              # Ethernet padding does not cross the overlay
                if self.backend == "vxlan":
                    buf[0:6], buf[6:12] = inner_mac, self.gw_mac
                    out.append((self.uplink, self.encap(buf, ip, vtep, vtep_mac, vni)))
                elif self.backend == "ipip":
                    out.append((self.uplink, self.encap_ipip(buf[14:], vtep, vtep_mac)))
                else:                              # direct: to the next hop as routed
                    buf[0:6], buf[6:12] = vtep_mac, self.node_mac
                    out.append((self.uplink, bytes(buf)))
                return

    def encap(self, inner, ip, vtep, vtep_mac, vni):
        self.ip_id = (self.ip_id + 1) & 0xffff
        sport = 49152 + (hash((ip.src, ip.dst, ip.p, bytes(inner[34:38]))) & 0x3fff)
        total = 20 + 8 + 8 + len(inner)
        hdr = bytearray(vtep_mac + self.node_mac + b"\x08\x00"
                        + struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, self.ip_id, 0x4000, 64, 17, 0,
                                      self.node_ip, vtep)
                        + struct.pack("!HHHH", sport, VXLAN_PORT, total - 20, 0)
                        + struct.pack("!II", 0x08000000, vni << 8))
        hdr[24:26] = dpkt.in_cksum(bytes(hdr[14:34])).to_bytes(2, "big")
        return bytes(hdr) + bytes(inner)

    def encap_ipip(self, inner, vtep, vtep_mac):
        """RFC 2003 as Linux's ipip device writes it by default: DSCP 0 with
        the inner ECN (RFC 6040 normal mode), DF, TTL inherited (the inner
        TTL after the gateway's decrement), protocol 4."""
        self.ip_id = (self.ip_id + 1) & 0xffff
        hdr = bytearray(vtep_mac + self.node_mac + b"\x08\x00"
                        + struct.pack("!BBHHHBBH4s4s", 0x45, inner[1] & 3, 20 + len(inner), self.ip_id, 0x4000,
                                      inner[8], IPPROTO_IPIP, 0, self.node_ip, vtep))
        hdr[24:26] = dpkt.in_cksum(bytes(hdr[14:34])).to_bytes(2, "big")
        return bytes(hdr) + bytes(inner)

    def process(self, frames):
        now = self.now()
        out = []
        for buf, port in frames:
            try:
                eth = dpkt.ethernet.Ethernet(buf)
            except dpkt.UnpackError:
                continue
            if eth.src[0] & 1:
                continue
            self.learn(eth.src, port, now)
            if eth.dst == self.gw_mac and isinstance(eth.data, dpkt.ip.IP):
                self.route(bytearray(buf), eth, eth.data, now, out)
                continue
            d = self.lookup(eth.dst, now)
            if d is None:
                out.extend((p, buf) for p in self.ports if p != port)
            elif d != port:
                out.append((d, buf))
        return out


class PyDecap(PyGateway):
    """The uplink's receive side: outer checks, VNI, then the inner frame is
    routed by the gateway as a pod's would be (VXLAN); for ipip and direct,
    their own checks (ipip_process, direct_process)."""

    def __init__(self, *a, vnis=(VNI,), **kw):
        super().__init__(*a, **kw)
        self.vnis = set(vnis)
        self.vteps = {r[2] for r in self.routes}

    def ipip_process(self, frames):
        now = self.now()
        out = []
        for buf, port in frames:
            try:
                eth = dpkt.ethernet.Ethernet(buf)
            except dpkt.UnpackError:
                continue
            if port != self.uplink:
                continue
            ip = eth.data
            if eth.dst != self.node_mac or not isinstance(ip, dpkt.ip.IP) or ip.dst != self.node_ip:
                continue                                           # uplink_not_ours
            if ip.p != IPPROTO_IPIP:
                continue                                           # uplink_unsupported
            if ip.src not in self.vteps:
                continue                                           # tunnel_unknown_source
            if ip.mf or ip.offset:
                continue                                           # ipip_fragment
            l3 = 14 + ip.hl * 4
            inner = bytearray(buf[l3:14 + ip.len])
            if len(inner) < 20 or inner[0] >> 4 != 4:
                continue                                           # ipip_inner
            ihl, tot = (inner[0] & 0xf) * 4, struct.unpack("!H", inner[2:4])[0]
            if ihl < 20 or ihl > len(inner) or tot < ihl or tot > len(inner):
                continue                                           # ipip_inner
            oecn, iecn = ip.tos & 3, inner[1] & 3
            if oecn == 3 or (oecn == 1 and iecn == 2):             # RFC 6040 sec. 4.2
                if iecn == 0:
                    continue                                       # ecn_ce_not_ect
                if iecn != oecn:
                    old = struct.unpack("!H", inner[0:2])[0]
                    inner[1] = (inner[1] & ~3 & 0xff) | oecn
                    c = csum_update16(struct.unpack("!H", inner[10:12])[0], old, struct.unpack("!H", inner[0:2])[0])
                    inner[10:12] = c.to_bytes(2, "big")
            frame = bytearray(self.gw_mac + eth.src + b"\x08\x00") + inner[:tot]
            ieth = dpkt.ethernet.Ethernet(bytes(frame))
            self.route(frame, ieth, ieth.data, now, out, local_only=True)
        return out

    def direct_process(self, frames):
        now = self.now()
        out = []
        for buf, port in frames:
            try:
                eth = dpkt.ethernet.Ethernet(buf)
            except dpkt.UnpackError:
                continue
            if port != self.uplink:
                continue
            ip = eth.data
            if eth.dst != self.node_mac or not isinstance(ip, dpkt.ip.IP) or ip.dst == self.node_ip:
                continue                                           # not ours / the node's own
            src = struct.unpack("!I", ip.src)[0]
            if not any(src & mask == net for net, mask, *_ in self.routes):
                continue                                           # tunnel_unknown_source
            frame = bytearray(buf[:14 + ip.len])
            frame[0:6] = self.gw_mac
            self.route(frame, eth, ip, now, out, local_only=True)
        return out

    def process(self, frames):
        if self.backend == "ipip":
            return self.ipip_process(frames)
        if self.backend == "direct":
            return self.direct_process(frames)
        now = self.now()
        out = []
        for buf, port in frames:
            try:
                eth = dpkt.ethernet.Ethernet(buf)
            except dpkt.UnpackError:
                continue
            if port != self.uplink:
                continue
            ip = eth.data
            if eth.dst != self.node_mac or not isinstance(ip, dpkt.ip.IP) or ip.dst != self.node_ip:
                continue                                           # uplink_not_ours
            if ip.mf or ip.offset or ip.p != 17:
                continue                                           # fragment / unsupported
            udp = ip.data
            if udp.dport != VXLAN_PORT or len(udp.data) < 8:
                continue
            vx = udp.data
            flags, vni = struct.unpack("!II", vx[:8])
            if not flags & 0x08000000 or (vni >> 8) not in self.vnis:
                continue
            inner = vx[8:]
            try:
                ieth = dpkt.ethernet.Ethernet(inner)
            except dpkt.UnpackError:
                continue
            if ieth.dst != self.gw_mac or not isinstance(ieth.data, dpkt.ip.IP):
                continue                                           # vxlan_not_routed
            self.route(bytearray(inner), ieth, ieth.data, now, out)
        return out


class PyServices(PyGateway):
    """ClusterIP DNAT: (VIP, port, proto) -> backends in a dict, connections
    in a dict by their original tuple (and the reply tuple, for the way back);
    a new flow picks a backend at random. Then the gateway routes."""

    def __init__(self, nports, neighbors, nservices, seed=1):
        super().__init__(nports, neighbors)
        be = [(ip4(ip), port) for ip, port in BACKENDS]
        self.services = {(ip4(vip(k)), 80, 17): be for k in range(1, nservices + 1)}
        self.conns, self.rnd = {}, random.Random(seed)

    def dnat(self, buf, ip, udp):
        key = (ip.src, udp.sport, ip.dst, udp.dport, ip.p)
        c = self.conns.get(key)
        if c is None:
            be = self.services.get((ip.dst, udp.dport, ip.p))
            if be is None:
                return False
            c = be[self.rnd.randrange(len(be))]
            self.conns[key] = c
            self.conns[(c[0], c[1], ip.src, udp.sport, ip.p)] = (ip.dst, udp.dport)     # reply tuple
        bip, bport = c
        old = struct.unpack("!HH", ip.dst)
        buf[30:34] = bip
        new = struct.unpack("!HH", bip)
        c_ip = (buf[24] << 8) | buf[25]
        c_ip = csum_update16(csum_update16(c_ip, old[0], new[0]), old[1], new[1])
        buf[24:26] = c_ip.to_bytes(2, "big")
        l4 = 14 + ip.hl * 4
        buf[l4 + 2:l4 + 4] = bport.to_bytes(2, "big")
        if udp.sum:                                              # checksum 0: none to update
            s = csum_update16(csum_update16(csum_update16(udp.sum, old[0], new[0]), old[1], new[1]),
                              udp.dport, bport)
            buf[l4 + 6:l4 + 8] = (s or 0xffff).to_bytes(2, "big")
        return True

    def process(self, frames):
        now = self.now()
        out = []
        for buf, port in frames:
            try:
                eth = dpkt.ethernet.Ethernet(buf)
            except dpkt.UnpackError:
                continue
            if eth.src[0] & 1:
                continue
            self.learn(eth.src, port, now)
            ip = eth.data
            if eth.dst != self.gw_mac or not isinstance(ip, dpkt.ip.IP):
                continue
            b = bytearray(buf)
            if isinstance(ip.data, dpkt.udp.UDP) and not self.dnat(b, ip, ip.data):
                continue
            eth = dpkt.ethernet.Ethernet(bytes(b))
            self.route(b, eth, eth.data, now, out)
        return out


# ---- stage registry ---------------------------------------------------------

def _learned(py, pairs):
    for m, port in pairs:
        py.learn(mb(m), port, 0.0)
    return py


def stage(name, nservices=None):
    """(dataplane, frames, python version, snap bytes) for one stage; snap
    covers the whole 60-byte frame (and the 110-byte VXLAN one), so the fast
    path's restore between bursts is a full copy-in of each frame."""
    if name == "bridge":
        py = PyBridge()
        for s in range(NSTATIONS):
            py.learn(mb(mac(s)), s % NPORTS, 0.0)
        return bridge_dp(), bridge_frames(), py, 64
    tunnel, _, side = name.partition("_")
    if tunnel in TUNNELS and side in ("encap", "decap"):
        routes = tunnel_routes(tunnel)
        if side == "encap":
            py = _learned(PyGateway(2, [POD], routes, backend=tunnel), [(POD[1], 0)])
            return overlay_dp(tunnel), encap_frames(), py, 64
        py = _learned(PyDecap(2, [POD], routes, backend=tunnel), [(POD[1], 0)])
        frames = {"vxlan": decap_frames, "ipip": ipip_decap_frames, "direct": direct_decap_frames}[tunnel]()
        return overlay_dp(tunnel), frames, py, 128 if tunnel == "vxlan" else 64
    if name in ("dnat_established", "dnat_new_flows"):
        neigh = [POD] + [(ip, backend_mac(p)) for p, (ip, _) in enumerate(BACKENDS, start=1)]
        py = _learned(PyServices(11, neigh, nservices), [(m, p) for p, (_, m) in enumerate(neigh)])
        return services_dp(nservices), service_frames(nservices), py, 64
    raise ValueError(name)


def _masked(port, frame):
    """A frame with the fields the two versions may choose differently zeroed:
    the outer IPv4 id and checksum and the UDP source port of a VXLAN frame,
    the outer id and checksum of an IP-in-IP one."""
    b = bytearray(frame)
    if port == UPLINK and len(b) >= 50 and b[12:14] == b"\x08\x00" and b[23] == 17:
        b[18:20] = b[24:26] = b[34:36] = b"\0\0"
    elif port == UPLINK and len(b) >= 54 and b[12:14] == b"\x08\x00" and b[23] == IPPROTO_IPIP:
        b[18:20] = b[24:26] = b"\0\0"
    return bytes(b)


def check(name, nservices=None):
    """Both versions give the same outputs for the stage's frames (the
    backend choice of a new flow aside, which is random in both: for those
    the Python version is handed the fast path's choices). Raises if not."""
    dp, frames, py, _ = stage(name, nservices)
    fast = fast_outputs(dp, frames)
    if name == "dnat_established":
        fast = fast_outputs(dp, frames)       # the second pass: every flow known
    if name.startswith("dnat"):               # same choices: read them from the fast path's table
        for c in dp.conntrack_dump():
            (cip, cp), (vip_, vp), (bip, bp) = (x.split(":") for x in (c["client"], c["service"], c["backend"]))
            py.conns[(ip4(cip), int(cp), ip4(vip_), int(vp), 17)] = (ip4(bip), int(bp))
    slow = py.process(frames)
    assert len(fast) == len(frames), f"{name}: fast path forwarded {len(fast)} of {len(frames)}"
    a = [(p, _masked(p, f)) for p, f in fast]
    b = [(p, _masked(p, f)) for p, f in slow]
    if a != b:
        bad = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y) if len(a) == len(b) else -1
        raise AssertionError(f"{name}: outputs differ (first at {bad}): fast {a[bad] if bad >= 0 else len(a)} "
                             f"python {b[bad] if bad >= 0 else len(b)}")
    return len(fast)
