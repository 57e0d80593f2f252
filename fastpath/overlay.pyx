"""Control side of the overlay: the backend (vxlan, ipip or direct), the
node's underlay address, routes to other nodes' pod CIDRs, peer nodes
(VTEPs; next hops in direct mode). Route sets are validated whole and
swapped in: a bad request changes nothing."""
import ipaddress

from libc.string cimport memcpy, memset
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from fastpath.defs cimport MAX_PORTS
from fastpath.sync cimport pn_write_lock, pn_write_unlock, ld
from fastpath.underlay cimport ul_template
from fastpath.tunnel cimport tun_overhead
from fastpath.fdb import mac_bytes, mac_str

BACKENDS = {"vxlan": TUN_VXLAN, "ipip": TUN_IPIP, "direct": TUN_DIRECT}
BACKEND_NAMES = {v: k for k, v in BACKENDS.items()}

STATES = {VTEP_FREE: "free", VTEP_INCOMPLETE: "incomplete", VTEP_REACHABLE: "reachable",
          VTEP_STATIC: "static"}


def _mac(value, what):
    try:
        m = mac_bytes(value)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    if m[0] & 1 or m == bytes(6):
        raise ValueError(f"{what}: {value} is not a unicast MAC")
    return m


cdef class Overlay:
    def configure(self, int uplink, ip, mac, int vni=1, int port=4789, int mtu=1500,
                  bint tunnel_gso=False, backend="vxlan", prefixlen=None):
        """The node on the fabric: uplink port, underlay IP and MAC, fabric
        MTU, and the backend: "vxlan" (vni, port: its UDP port), "ipip" or
        "direct". tunnel_gso: TCP super-frames from pods go on whole (vxlan:
        UDP-tunnel GSO on the uplink; direct: TSO on the uplink); ipip, which
        has no GSO type, cuts them into segments in the fast path instead
        (the dataplane needs segment slots: Dataplane(segments=N)).
        prefixlen: the fabric subnet's, so direct routing can refuse next
        hops that are not on it."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if prefixlen is not None and (type(prefixlen) is not int or not 1 <= prefixlen <= 32):
            raise ValueError(f"fabric prefix length must be 1..32, got {prefixlen!r}")
        if not 0 <= uplink < MAX_PORTS:
            raise ValueError(f"uplink port must be 0..{MAX_PORTS - 1}, got {uplink}")
        if not 1 <= vni < (1 << 24):
            raise ValueError(f"VNI must be 1..16777215, got {vni}")
        if not 1 <= port <= 65535:
            raise ValueError(f"VXLAN UDP port must be 1..65535, got {port}")
        if not 576 <= mtu <= 9216:
            raise ValueError(f"fabric MTU must be 576..9216, got {mtu}")
        addr = ipaddress.IPv4Address(str(ip))
        m = _mac(mac, "underlay MAC")
        cdef uint32_t a = int(addr)
        cdef uint64_t mk = int.from_bytes(m + b"\0\0", "big")
        cdef uint32_t k
        fabric = ipaddress.IPv4Network(f"{addr}/{prefixlen}", strict=False) if prefixlen is not None else None
        if backend == "direct" and fabric is not None and self.ov.enabled:
            for r in self.routes():
                if ipaddress.IPv4Address(r["vtep"]) not in fabric:
                    raise ValueError(f"direct: next hop {r['vtep']} of {r['cidr']} is not on the fabric {fabric}")
        pn_write_lock(self.sy)
        self.ov.uplink = uplink
        self.ov.ip = a
        memcpy(self.ov.mac, <const char *>m, 6)
        self.ov.mac_key = mk
        self.ov.vni = vni
        self.ov.port = port
        self.ov.mtu = mtu
        self.ov.tunnel_gso = tunnel_gso
        self.ov.mode = BACKENDS[backend]
        self.ov.overhead = tun_overhead(self.ov.mode)
        self.ov.enabled = 1
        for k in range(self.ov.nvteps):          # a backend changed with routes in place
            if self.ov.vteps[k].state >= VTEP_REACHABLE:
                ul_template(&self.ov, &self.ov.vteps[k])
        pn_write_unlock(self.sy)
        self.fabric = fabric

    @property
    def backend(self):
        """"vxlan", "ipip" or "direct" (None until configured)."""
        return BACKEND_NAMES[self.ov.mode] if self.ov.enabled else None

    @property
    def overhead(self):
        """Bytes the backend adds to each frame on the fabric (50, 20, 0):
        the pod MTU is the fabric MTU less this."""
        return self.ov.overhead

    @property
    def enabled(self):
        return bool(self.ov.enabled)

    @property
    def uplink(self):
        return self.ov.uplink if self.ov.enabled else None

    def _validate(self, routes, local=None):
        """routes: [{"cidr", "vtep", "inner_mac", "vni"?, "vtep_mac"?, "name"?}] -> normalised list."""
        out, nets = [], []
        if local is not None:
            local = ipaddress.IPv4Network(str(local))
        if not isinstance(routes, (list, tuple)):
            raise ValueError("routes must be a list")
        if len(routes) > MAX_ROUTES:
            raise ValueError(f"at most {MAX_ROUTES} routes, got {len(routes)}")
        vteps = {}
        for i, r in enumerate(routes):
            if not isinstance(r, dict):
                raise ValueError(f"route {i}: expected an object")
            for key, example in (("cidr", "10.244.1.0/24"), ("vtep", "172.30.250.2")):
                if key not in r:
                    raise ValueError(f"route {i}: missing {key!r}")
                if not isinstance(r[key], str):
                    raise ValueError(f"route {i}: {key} must be a string such as {example}, got {r[key]!r}")
            try:
                net = ipaddress.IPv4Network(r["cidr"], strict=True)
                vtep = ipaddress.IPv4Address(r["vtep"])
            except ValueError as e:
                raise ValueError(f"route {i}: {e}") from None
            if net.prefixlen == 0:
                raise ValueError(f"route {i}: {net} would send everything to one node")
            for other in nets:
                if net.overlaps(other):
                    raise ValueError(f"route {i}: {net} overlaps {other}")
            if local is not None and net.overlaps(local):
                raise ValueError(f"route {i}: {net} overlaps this node's pod subnet {local}")
            if int(vtep) == self.ov.ip:
                raise ValueError(f"route {i}: VTEP {vtep} is this node's own address")
            if self.ov.mode == TUN_DIRECT and self.fabric is not None and vtep not in self.fabric:
                raise ValueError(f"route {i}: next hop {vtep} is not on the fabric {self.fabric} "
                                 f"(direct routing sends to a neighbour's MAC)")
            if self.ov.mode == TUN_VXLAN or r.get("inner_mac") is not None:
                inner = _mac(r.get("inner_mac", ""), f"route {i} inner_mac")
            else:
                inner = None                 # ipip and direct have no inner Ethernet header
            vni = r.get("vni", self.ov.vni)
            if not isinstance(vni, int) or isinstance(vni, bool):
                raise ValueError(f"route {i}: vni must be an integer, got {vni!r}")
            if vni != self.ov.vni and self.ov.mode == TUN_VXLAN:
                raise ValueError(f"route {i}: VNI {vni}, but this node serves VNI {self.ov.vni}")
            static = _mac(r["vtep_mac"], f"route {i} vtep_mac") if r.get("vtep_mac") else None
            if static is not None and vteps.get(int(vtep), static) != static:
                raise ValueError(f"route {i}: VTEP {vtep} given two MACs")
            vteps.setdefault(int(vtep), static)
            nets.append(net)
            out.append((net, int(vtep), inner, vni, static, r.get("name", "")))
        if len(vteps) > MAX_VTEPS:
            raise ValueError(f"at most {MAX_VTEPS} VTEPs, got {len(vteps)}")
        return out, vteps

    def set_routes(self, routes, local=None):
        """Replace the whole route table (atomically: validated first)."""
        if not self.ov.enabled:
            raise ValueError("overlay not configured on this node")
        norm, vteps = self._validate(routes, local)
        # Built off to the side (Python work, no lock), then merged with what
        # ARP taught us and copied in under the table lock: workers see the
        # old table or the new one, whole.
        cdef vtep_t nv[MAX_VTEPS]
        cdef route_t nr[MAX_ROUTES]
        cdef uint8_t has_static[MAX_VTEPS]
        cdef uint32_t nvteps = len(vteps), nroutes = len(norm), k, j
        memset(nv, 0, sizeof(nv))
        memset(nr, 0, sizeof(nr))
        index = {}
        for k, (ip, static) in enumerate(vteps.items()):
            index[ip] = k
            nv[k].ip = ip
            has_static[k] = static is not None
            if static is not None:
                memcpy(nv[k].mac, <const char *>static, 6)
        norm.sort(key=lambda r: -r[0].prefixlen)
        for k, (net, ip, inner, vni, _, _) in enumerate(norm):
            nr[k].net = int(net.network_address)
            nr[k].mask = int(net.netmask)
            nr[k].plen = net.prefixlen
            if inner is not None:
                memcpy(nr[k].inner_mac, <const char *>inner, 6)
                nr[k].has_inner = 1
            nr[k].vni = vni
            nr[k].vtep = index[ip]
            nv[nr[k].vtep].refs += 1
        pn_write_lock(self.sy)
        for k in range(nvteps):
            for j in range(MAX_VTEPS):         # keep what ARP already taught us
                if self.ov.vteps[j].state >= VTEP_INCOMPLETE and self.ov.vteps[j].ip == nv[k].ip:
                    if not has_static[k]:
                        memcpy(nv[k].mac, self.ov.vteps[j].mac, 6)
                    nv[k].state = self.ov.vteps[j].state
                    nv[k].asked = self.ov.vteps[j].asked
                    break
            if has_static[k]:
                nv[k].state = VTEP_STATIC
            elif nv[k].state == VTEP_STATIC or nv[k].state == VTEP_FREE:
                # to be resolved: an ARP reply for it is now learned
                nv[k].state = VTEP_INCOMPLETE
                nv[k].asked = 0
            if nv[k].state >= VTEP_REACHABLE:
                ul_template(&self.ov, &nv[k])
        memcpy(self.ov.vteps, nv, sizeof(nv))
        memcpy(self.ov.routes, nr, sizeof(nr))
        self.ov.nroutes = nroutes
        self.ov.nvteps = nvteps
        pn_write_unlock(self.sy)
        self.names = {str(n[0]): n[5] for n in norm}
        self.generation += 1

    def routes(self):
        cdef route_t *r
        cdef vtep_t *v
        cdef route_t rs[MAX_ROUTES]
        cdef vtep_t vs[MAX_VTEPS]
        cdef uint32_t n
        out = []
        names = self.names or {}
        pn_write_lock(self.sy)           # a worker may be learning a VTEP: copy, then format
        memcpy(rs, self.ov.routes, sizeof(rs))
        memcpy(vs, self.ov.vteps, sizeof(vs))
        n = self.ov.nroutes
        pn_write_unlock(self.sy)
        for k in range(n):
            r = &rs[k]
            v = &vs[r.vtep]
            cidr = f"{ipaddress.IPv4Address(r.net)}/{r.plen}"
            out.append({"cidr": cidr, "name": names.get(cidr, ""),
                        "vtep": str(ipaddress.IPv4Address(v.ip)),
                        "vtep_mac": mac_str(int.from_bytes((<char *>v.mac)[:6] + b"\0\0", "big"))
                        if v.state >= VTEP_REACHABLE else None,
                        "vtep_state": STATES[v.state],
                        "inner_mac": mac_str(int.from_bytes((<char *>r.inner_mac)[:6] + b"\0\0", "big"))
                        if r.has_inner else None,
                        "vni": r.vni})
        return out

    def learned_vteps(self):
        """[(VTEP IP, MAC)] resolved by ARP, for a snapshot."""
        cdef vtep_t vs[MAX_VTEPS]
        pn_write_lock(self.sy)
        memcpy(vs, self.ov.vteps, sizeof(vs))
        pn_write_unlock(self.sy)
        return [(str(ipaddress.IPv4Address(vs[k].ip)),
                 mac_str(int.from_bytes((<char *>vs[k].mac)[:6] + b"\0\0", "big")))
                for k in range(MAX_VTEPS) if vs[k].state == VTEP_REACHABLE]

    def restore_vteps(self, vteps):
        """Take [(VTEP IP, MAC)] as if ARP had just answered, for VTEPs the
        routes use that are not resolved yet (a static MAC stays). Returns
        how many were set; bad entries are skipped."""
        n = 0
        cdef uint32_t a, k
        cdef bint hit
        for ip, mac in vteps:
            try:
                a = int(ipaddress.IPv4Address(str(ip)))
                m = _mac(mac, "VTEP MAC")
            except ValueError:
                continue
            hit = False
            pn_write_lock(self.sy)
            for k in range(MAX_VTEPS):
                if self.ov.vteps[k].ip == a and (self.ov.vteps[k].state == VTEP_INCOMPLETE
                                                 or self.ov.vteps[k].state == VTEP_REACHABLE):
                    memcpy(self.ov.vteps[k].mac, <const char *>m, 6)
                    self.ov.vteps[k].state = VTEP_REACHABLE
                    ul_template(&self.ov, &self.ov.vteps[k])
                    hit = True
                    break
            pn_write_unlock(self.sy)
            n += hit
        return n

    def solicit(self, now_ms=None):
        """ARP who-has frames (60 bytes) for every VTEP not yet resolved, for
        the agent to send at start-up, after route changes and every second,
        so the first packets to a node are not lost to resolution. With
        now_ms (the fast path's clock), only VTEPs not asked within the last
        second, which then count as asked: the fast path asks on traffic on
        the same timer, so a VTEP is asked at most once a second in all
        (without it, the agent's periodic solicit and traffic each asked
        once a second)."""
        frames = []
        cdef uint32_t ask[MAX_VTEPS]
        cdef uint32_t nask = 0, k
        cdef uint64_t now = now_ms if now_ms is not None else 0
        cdef bint timed = now_ms is not None
        pn_write_lock(self.sy)           # marks VTEPs asked, as a worker's encap does
        for k in range(MAX_VTEPS):
            if self.ov.vteps[k].state == VTEP_INCOMPLETE:
                if timed:
                    if self.ov.vteps[k].asked and now - self.ov.vteps[k].asked < ARP_RETRY_MS:
                        continue
                    self.ov.vteps[k].asked = now if now else 1
                ask[nask] = self.ov.vteps[k].ip
                nask += 1
        pn_write_unlock(self.sy)
        mac = bytes((<char *>self.ov.mac)[:6])
        ip = ipaddress.IPv4Address(self.ov.ip).packed
        for k in range(nask):
            target = ipaddress.IPv4Address(ask[k]).packed
            frames.append(b"\xff" * 6 + mac + b"\x08\x06" + b"\x00\x01\x08\x00\x06\x04\x00\x01"
                          + mac + ip + bytes(6) + target + bytes(18))
        return frames

    def info(self):
        if not self.ov.enabled:
            return None
        gso = {TUN_VXLAN: "udp-tunnel-gso", TUN_IPIP: "segmented", TUN_DIRECT: "tso"}[self.ov.mode]
        return {"backend": self.backend, "overhead": self.ov.overhead,
                "uplink_port": self.ov.uplink, "ip": str(ipaddress.IPv4Address(self.ov.ip)),
                "mac": mac_str(self.ov.mac_key), "vni": self.ov.vni, "udp_port": self.ov.port,
                "mtu": self.ov.mtu, "gso": gso if self.ov.tunnel_gso else "none",
                "fabric": str(self.fabric) if self.fabric is not None else None}

    def counters(self):
        # encapsulated, decapsulated, gso_encapsulated: per worker (the dataplane sums them in)
        return {"arp_requests": ld(&self.ov.arp_requests), "arp_replies": ld(&self.ov.arp_replies),
                "arp_learned": ld(&self.ov.arp_learned), "icmp_replies": ld(&self.ov.icmp_replies)}
