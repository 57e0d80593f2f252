"""The node the fuzzing harness drives: three pods on the bridge with the
gateway, an uplink with the overlay (one peer resolved, one not), and
ClusterIP services (backends local, remote and hairpin; one without
endpoints). What varies per example is in Config: the backend between nodes
(VXLAN, IP-in-IP or direct routing), vnet header sizes, slot sizes, MTU,
table sizes, whether pods 0 and 1 have the anti-spoofing guard (pod 2 never
does at set-up), and whether the scenario may use the I/O loop.

The live changes a scenario makes between bursts (CHANGES: services set and
removed, route tables replaced, pod 2's port removed and added back, guards
set and cleared) are applied by change(), identically to every dataplane of
a twin."""
from dataclasses import dataclass

from fastpath import Dataplane

GW_IP, GW_MAC = "10.244.0.1", "0a:58:0a:f4:00:01"
SUBNET = "10.244.0.0/24"
PODS = [("10.244.0.2", "0a:58:0a:f4:00:02", 0),
        ("10.244.0.3", "0a:58:0a:f4:00:03", 1),
        ("10.244.0.4", "0a:58:0a:f4:00:04", 2)]
POD_PORTS = [p for _, _, p in PODS]
GUARDED = (0, 1)                       # pods guarded at set-up when Config.guard
UPLINK, UPLINK_DOMAIN = 255, 4095
NODE_IP, NODE_MAC = "172.30.250.1", "0a:5a:ac:1e:fa:01"
PEER_IP, PEER_MAC = "172.30.250.2", "0a:5a:ac:1e:fa:02"        # VTEP of 10.244.1.0/24
PEER2_IP, PEER2_MAC = "172.30.250.3", "0a:5a:ac:1e:fa:03"      # VTEP of 10.244.2.0/24, learned by ARP
PEER3_IP, PEER3_MAC = "172.30.250.4", "0a:5a:ac:1e:fa:04"      # VTEP of 10.244.3.0/24 (a route added live)
REMOTE_GW_MAC = "0a:58:0a:f4:01:01"
REMOTE_PODS = ["10.244.1.2", "10.244.1.3", "10.244.2.2"]
NO_NEIGH_IP = "10.244.0.77"            # in the subnet, never a neighbour (nothing ARPs from it)
VNI = 1
BACKENDS = ("vxlan", "ipip", "direct")
OVERHEAD = {"vxlan": 50, "ipip": 20, "direct": 0}
VTEPS = (PEER_IP, PEER2_IP, PEER3_IP)
PROTO = {"TCP": 6, "UDP": 17}
MAGLEV_SIZE = 251                      # the smallest prime table: cheap to build per example
VIPS = ["10.96.0.10", "10.96.0.11", "10.96.0.12"]
# (vip, port, proto, backends, lb, affinity seconds)
SERVICES = [
    (VIPS[0], 80, "TCP", [(PODS[1][0], 8080), (REMOTE_PODS[0], 8080)], "random", 0),
    (VIPS[0], 53, "UDP", [(PODS[1][0], 53), (REMOTE_PODS[0], 53)], "maglev", 0),
    (VIPS[1], 80, "TCP", [], "random", 0),                       # no endpoints: rejected
    (VIPS[2], 443, "TCP", [(PODS[0][0], 443)], "random", 30),    # hairpin for pod 0, affinity
    (VIPS[2], 53, "UDP", [(PODS[2][0], 5353)], "random", 30),    # affinity made by any datagram
]
# Live service changes: (vip, port, proto, backends, lb, affinity). The
# affinity service gets two backends too: a restored snapshot carries its
# affinity entries, so a restored node must pin clients as the original does.
SERVICE_CHANGES = [
    (VIPS[0], 80, "TCP", [(PODS[1][0], 8080)], "random", 0),                           # remote backend gone
    (VIPS[0], 53, "UDP", [(PODS[1][0], 53), (REMOTE_PODS[0], 53), (PODS[2][0], 53)], "maglev", 0),  # one more
    (VIPS[0], 53, "UDP", [(REMOTE_PODS[2], 53)], "maglev", 0),                         # behind the unresolved VTEP
    (VIPS[1], 80, "TCP", [(PODS[2][0], 80), (REMOTE_PODS[1], 80)], "random", 0),      # endpoints at last
    (VIPS[2], 443, "TCP", [(PODS[1][0], 443)], "random", 30),                          # hairpin no longer
    (VIPS[2], 443, "TCP", [(PODS[0][0], 443), (PODS[1][0], 443)], "random", 30),      # affinity picks one of two
    (VIPS[2], 53, "UDP", [(PODS[2][0], 5353), (REMOTE_PODS[1], 5353)], "random", 30),  # likewise
] + SERVICES


def routes(variant, static, backend="vxlan"):
    """Route table variant (0 = the set-up's); static: every VTEP MAC given
    (I/O-loop scenarios run on real time, where ARP retry timing would differ).
    10.244.1.0/24 via PEER_IP is in every variant. ipip and direct routes
    come without inner_mac, as the agent sends them, but for variant 3,
    which gives one (taken, unused)."""
    r1 = {"cidr": "10.244.1.0/24", "vtep": PEER_IP, "inner_mac": REMOTE_GW_MAC, "vtep_mac": PEER_MAC}
    r2 = {"cidr": "10.244.2.0/24", "vtep": PEER2_IP, "inner_mac": REMOTE_GW_MAC}
    r3 = {"cidr": "10.244.3.0/24", "vtep": PEER3_IP, "inner_mac": REMOTE_GW_MAC}
    if static:
        r2, r3 = dict(r2, vtep_mac=PEER2_MAC), dict(r3, vtep_mac=PEER3_MAC)
    table = [[r1, r2], [r1], [r1, r2, r3], [dict(r1, inner_mac="0a:58:0a:f4:01:09"), r3]][variant]
    if backend != "vxlan" and variant != 3:
        table = [{k: v for k, v in r.items() if k != "inner_mac"} for r in table]
    return table


N_ROUTES = 4

# Live changes: ("svc", i) sets SERVICE_CHANGES[i]; ("svc_rm", i) removes
# SERVICES[i]'s port; ("routes", v); ("port_rm", 2) / ("port_add", 2);
# ("guard", port, on).
CHANGES = ([("svc", i) for i in range(len(SERVICE_CHANGES))] + [("svc_rm", i) for i in range(len(SERVICES))]
           + [("routes", v) for v in range(N_ROUTES)] + [("port_rm", 2), ("port_add", 2)]
           + [("guard", p, on) for p in POD_PORTS for on in (True, False)])


@dataclass(frozen=True)
class Config:
    backend: str = "vxlan"     # between nodes: "vxlan", "ipip" or "direct"
    vnet: str = "gso"          # "plain" (no vnet headers), "csum" (12-byte everywhere), "gso" (uplink 24 bytes)
    slot_size: int = 65536 + 512
    nslots: int = 4
    mtu: int = 1500
    vxlan_port: int = 4789
    fdb_capacity: int = 1024
    conntrack_capacity: int = 1024
    prelearn: bool = True      # the pods' MACs are in the FDB before the first frame
    guard: bool = False        # pods 0 and 1 guarded (anti-spoofing) from the start
    io: bool = False           # real clock, static VTEPs: bursts may go through the I/O loop

    @property
    def pod_vnet(self):
        return 0 if self.vnet == "plain" else 12

    @property
    def uplink_vnet(self):
        return {"plain": 0, "csum": 12, "gso": 24}[self.vnet]

    @property
    def tunnel_gso(self):
        """The uplink takes this backend's super-frames whole (never for ipip: no IPIP GSO type)."""
        return self.vnet == "gso" and self.backend != "ipip"

    @property
    def pod_mtu(self):
        return self.mtu - OVERHEAD[self.backend]

    def vnet_len(self, port):
        return self.uplink_vnet if port == UPLINK else self.pod_vnet


def set_service(dp, vip, port, proto, backends, lb, aff):
    dp.services.set(vip, port, proto, backends, lb=lb, affinity_timeout=aff,
                    **({"maglev_size": MAGLEV_SIZE} if lb == "maglev" else {}))


def build(cfg, clock, services=True, route_table=True):
    """A Dataplane configured as the agent would for cfg (no frames sent
    yet); without services / route_table, as a restarted agent before its
    snapshot is restored."""
    dp = Dataplane(nslots=cfg.nslots, slot_size=cfg.slot_size, fdb_capacity=cfg.fdb_capacity,
                   conntrack_capacity=cfg.conntrack_capacity, service_capacity=16, clock=clock)
    dp.gateway.configure(GW_IP, GW_MAC, SUBNET)
    if cfg.pod_vnet:
        dp.set_vnet_len(cfg.pod_vnet)
    dp.add_port(UPLINK, domain=UPLINK_DOMAIN)
    dp.set_port_vnet(UPLINK, cfg.uplink_vnet)
    dp.overlay.configure(UPLINK, NODE_IP, NODE_MAC, vni=VNI, port=cfg.vxlan_port, mtu=cfg.mtu,
                         tunnel_gso=cfg.tunnel_gso, backend=cfg.backend, prefixlen=24)
    for ip, mac, port in PODS:
        dp.add_port(port)
        dp.gateway.add_neighbor(ip, mac)
        if cfg.guard and port in GUARDED:
            dp.set_port_guard(port, mac, ip)
    if route_table:
        dp.overlay.set_routes(routes(0, cfg.io, cfg.backend), local=SUBNET)
    if services:
        for s in SERVICES:
            set_service(dp, *s)
    dp.services.seed(7)
    return dp


def change(dp, op, cfg):
    """Apply one live change; returns the error it raised (type name) or None,
    so that twins can be compared on refusals too."""
    try:
        # as the agent's services_apply: connections to a backend that left
        # are ended (UDP deleted, TCP marked for a RST)
        if op[0] == "svc":
            vip, port, proto, backends = SERVICE_CHANGES[op[1]][:4]
            old = dp.services.get(vip, port, proto)
            set_service(dp, *SERVICE_CHANGES[op[1]])
            for ip, bport in set(old["backends"] if old else []) - set(backends):
                dp.conntrack.flush(vip=vip, vport=port, proto=PROTO[proto], backend=ip, bport=bport,
                                   mark_tcp_dead=True)
        elif op[0] == "svc_rm":
            vip, port, proto = SERVICES[op[1]][:3]
            dp.services.remove(vip, port, proto)
            dp.conntrack.flush(vip=vip, vport=port, proto=PROTO[proto], mark_tcp_dead=True)
        elif op[0] == "routes":
            dp.overlay.set_routes(routes(op[1], cfg.io, cfg.backend), local=SUBNET)
        elif op[0] == "port_rm":
            dp.remove_port(op[1])
        elif op[0] == "port_add":
            dp.add_port(op[1])
        elif op[0] == "guard":
            ip, mac, port = PODS[op[1]]
            if op[2]:
                dp.set_port_guard(port, mac, ip)
            else:
                dp.clear_port_guard(port)
        else:
            raise AssertionError(op)
    except (KeyError, ValueError) as e:
        return type(e).__name__
    return None
