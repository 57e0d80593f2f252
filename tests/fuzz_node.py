"""The node the fuzzing harness drives: three pods on the bridge with the
gateway, an uplink with the VXLAN overlay (one peer resolved, one not), and
ClusterIP services (backends local, remote and hairpin; one without
endpoints). What varies per example is in Config."""
from dataclasses import dataclass

from fastpath import Dataplane

GW_IP, GW_MAC = "10.244.0.1", "0a:58:0a:f4:00:01"
SUBNET = "10.244.0.0/24"
PODS = [("10.244.0.2", "0a:58:0a:f4:00:02", 0),
        ("10.244.0.3", "0a:58:0a:f4:00:03", 1),
        ("10.244.0.4", "0a:58:0a:f4:00:04", 2)]
POD_PORTS = [p for _, _, p in PODS]
UPLINK, UPLINK_DOMAIN = 255, 4095
NODE_IP, NODE_MAC = "172.30.250.1", "0a:5a:ac:1e:fa:01"
PEER_IP, PEER_MAC = "172.30.250.2", "0a:5a:ac:1e:fa:02"        # VTEP of 10.244.1.0/24
PEER2_IP, PEER2_MAC = "172.30.250.3", "0a:5a:ac:1e:fa:03"      # VTEP of 10.244.2.0/24, learned by ARP
REMOTE_GW_MAC = "0a:58:0a:f4:01:01"
REMOTE_PODS = ["10.244.1.2", "10.244.1.3", "10.244.2.2"]
VNI = 1
VIPS = ["10.96.0.10", "10.96.0.11", "10.96.0.12"]
# (vip, port, proto, backends, lb, affinity seconds)
SERVICES = [
    (VIPS[0], 80, "TCP", [(PODS[1][0], 8080), (REMOTE_PODS[0], 8080)], "random", 0),
    (VIPS[0], 53, "UDP", [(PODS[1][0], 53), (REMOTE_PODS[0], 53)], "maglev", 0),
    (VIPS[1], 80, "TCP", [], "random", 0),                       # no endpoints: rejected
    (VIPS[2], 443, "TCP", [(PODS[0][0], 443)], "random", 30),    # hairpin for pod 0, affinity
    (VIPS[2], 53, "UDP", [(PODS[2][0], 5353)], "random", 0),
]


@dataclass(frozen=True)
class Config:
    vnet: str = "gso"          # "plain" (no vnet headers), "csum" (12-byte everywhere), "gso" (uplink 24 bytes)
    slot_size: int = 65536 + 512
    nslots: int = 4
    mtu: int = 1500
    vxlan_port: int = 4789
    fdb_capacity: int = 1024
    conntrack_capacity: int = 1024
    prelearn: bool = True      # the pods' MACs are in the FDB before the first frame

    @property
    def pod_vnet(self):
        return 0 if self.vnet == "plain" else 12

    @property
    def uplink_vnet(self):
        return {"plain": 0, "csum": 12, "gso": 24}[self.vnet]

    def vnet_len(self, port):
        return self.uplink_vnet if port == UPLINK else self.pod_vnet


def build(cfg, clock):
    """A Dataplane configured as the agent would for cfg (no frames sent yet)."""
    dp = Dataplane(nslots=cfg.nslots, slot_size=cfg.slot_size, fdb_capacity=cfg.fdb_capacity,
                   conntrack_capacity=cfg.conntrack_capacity, service_capacity=16, clock=clock)
    dp.gateway.configure(GW_IP, GW_MAC, SUBNET)
    if cfg.pod_vnet:
        dp.set_vnet_len(cfg.pod_vnet)
    dp.add_port(UPLINK, domain=UPLINK_DOMAIN)
    dp.set_port_vnet(UPLINK, cfg.uplink_vnet)
    dp.overlay.configure(UPLINK, NODE_IP, NODE_MAC, vni=VNI, port=cfg.vxlan_port, mtu=cfg.mtu,
                         tunnel_gso=cfg.vnet == "gso")
    for ip, mac, port in PODS:
        dp.add_port(port)
        dp.gateway.add_neighbor(ip, mac)
    dp.overlay.set_routes([
        {"cidr": "10.244.1.0/24", "vtep": PEER_IP, "inner_mac": REMOTE_GW_MAC, "vtep_mac": PEER_MAC},
        {"cidr": "10.244.2.0/24", "vtep": PEER2_IP, "inner_mac": REMOTE_GW_MAC},
    ], local=SUBNET)
    for vip, port, proto, backends, lb, aff in SERVICES:
        dp.services.set(vip, port, proto, backends, lb=lb, affinity_timeout=aff,
                        **({"maglev_size": 251} if lb == "maglev" else {}))
    dp.services.seed(7)
    return dp
