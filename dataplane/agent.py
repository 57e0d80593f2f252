"""The node agent: one process per node. Enters the node's namespace, opens
a TAP per pod and places it in the pod's namespace as eth0, loads the fast
path (ports, gateway, neighbours), then runs the C I/O loop and serves the
control socket between bursts.

TAPs are persistent and the fast path's state is snapshotted every second
(dataplane/snapshot.py): an agent started again after a crash re-attaches to
the pods' eth0 and restores its tables before it reads the first frame.

    python -m dataplane agent CONFIG.json      (started by `podnet up`)
"""
import json
import os
import signal
import sys
import time

from dataplane import netns
from dataplane.control import ControlServer
from dataplane.snapshot import Snapshotter
from fastpath import Dataplane
from fastpath.ioloop import IOLoop
from tap import POD_OFFLOADS, TUN_F_UDP_TUNNEL_GSO, UPLINK_OFFLOADS, UPLINK_VNET_HDR_LEN
from tap.device import TUN_F_CSUM, VNET_HDR_LEN, open_tap

AGE_EVERY = 1.0            # seconds between FDB aging sweeps
UPLINK_PORT = 255          # the fabric port: outside the pods' bridge domain
UPLINK_DOMAIN = 4095
GSO_SLOT = 65536 + 512     # a 64 KB TCP super-frame plus Ethernet/VLAN headers
PLAIN_SLOT = 9216          # one jumbo frame


class Agent:
    def __init__(self, cfg):
        self.cfg = cfg
        self.node = cfg["node"]
        self.vnet = bool(cfg.get("vnet", True))
        self.dp = Dataplane(nslots=int(cfg.get("burst", 256)),
                            slot_size=GSO_SLOT if self.vnet else PLAIN_SLOT,
                            fdb_capacity=int(cfg.get("fdb_capacity", 65536)),
                            aging=float(cfg.get("aging", 300.0)),
                            service_cidr=cfg.get("service_cidr", "10.96.0.0/12"))
        self.io = IOLoop(self.dp)
        self.taps = {}             # port -> Tap
        self.pods = {}             # port -> pod config
        self.server = None
        self.stop = False
        self.started = time.time()
        snap = cfg.get("snapshot") or os.path.splitext(cfg["socket"])[0] + ".snapshot"
        self.snapshots = Snapshotter(self.dp, snap, {"cluster": cfg.get("cluster"), "node": self.node},
                                     log=lambda msg: print(f"agent {self.node}: {msg}", flush=True))
        self.restored = {}         # what the last snapshot gave back at start-up
        self.reattached = 0        # TAPs found in place (a restart after a crash)

    def setup(self):
        gw = self.cfg["gateway"]
        self.dp.gateway.configure(gw["ip"], gw["mac"], gw["subnet"])
        if self.vnet:
            self.dp.set_vnet_len(12)
        pod_offloads = self.setup_uplink() if self.cfg.get("uplink") else POD_OFFLOADS
        for port, pod in enumerate(self.cfg["pods"]):
            tap, again = open_tap(pod["netns"], "eth0", f"tap{port}", vnet_hdr=self.vnet, offloads=pod_offloads,
                                  mac=pod["mac"], ip=pod["ip"], prefixlen=pod["prefixlen"],
                                  mtu=pod["mtu"], gateway=gw["ip"])
            self.reattached += again
            self.taps[port] = tap
            self.dp.add_port(port)
            self.dp.gateway.add_neighbor(pod["ip"], pod["mac"])
            self.io.attach(port, tap.fileno())
            self.pods[port] = pod
        if self.cfg.get("uplink"):
            self.dp.overlay.set_routes(self.cfg.get("routes", []), local=gw["subnet"])
        self.restored = self.snapshots.restore(local_subnet=gw["subnet"])
        if self.restored:
            print(f"agent {self.node}: restored from snapshot {self.restored}", flush=True)
        if self.cfg.get("uplink"):
            self.solicit()
        self.server = ControlServer(self.cfg["socket"], self.handle)
        for fd in self.server.fds():
            self.io.watch(fd)

    def setup_uplink(self):
        """The node's port on the fabric: a TAP enslaved to the fabric bridge.
        Returns the offloads pods may use: TSO only if encapsulated super-frames
        can leave whole (UDP-tunnel GSO on this TAP); otherwise checksum
        offload alone, so pods send MTU-sized frames (the fallback)."""
        up = self.cfg["uplink"]
        # Named as it will be in the fabric namespace: agents move their
        # uplinks there concurrently, so a common temporary name would clash.
        tap, again = open_tap(up["fabric_netns"], up["ifname"], up["ifname"], vnet_hdr=self.vnet,
                              offloads=UPLINK_OFFLOADS, vnet_len=UPLINK_VNET_HDR_LEN,
                              mtu=up["mtu"], master=up["bridge"])
        self.reattached += again
        tunnel_gso = self.vnet and bool(tap.offloads & TUN_F_UDP_TUNNEL_GSO)
        if self.vnet and not tunnel_gso:      # kernel without UDP-tunnel GSO: 12-byte headers, CSUM only
            tap.configure(VNET_HDR_LEN, TUN_F_CSUM)
        self.uplink_tap = tap
        self.dp.add_port(UPLINK_PORT, domain=UPLINK_DOMAIN)
        self.dp.set_port_vnet(UPLINK_PORT, tap.vnet_len)
        self.dp.overlay.configure(UPLINK_PORT, up["ip"], up["mac"], vni=up["vni"], port=up["port"],
                                  mtu=up["mtu"], tunnel_gso=tunnel_gso)
        self.io.attach(UPLINK_PORT, tap.fileno())
        self.gso_path = "udp-tunnel-gso" if tunnel_gso else ("mtu-frames" if self.vnet else "plain")
        return POD_OFFLOADS if tunnel_gso else TUN_F_CSUM

    def solicit(self):
        """ARP for unresolved peer VTEPs now rather than on the first packet."""
        hdr = bytes(self.dp.port_vnet(UPLINK_PORT))
        for frame in self.dp.overlay.solicit():
            try:
                os.write(self.uplink_tap.fileno(), hdr + frame)
            except OSError:
                pass                         # the fast path asks again on traffic

    # ---- control requests ------------------------------------------------

    def handle(self, op, args):
        if op == "ping":
            return "pong"
        if op == "status":
            return self.status()
        if op == "counters":
            return {**self.dp.counters(), "io": self.io.counters()}
        if op == "fdb":
            return self.dp.fdb_dump()
        if op == "neighbors":
            return self.dp.gateway.neighbors()
        if op == "services":
            return self.dp.services.list()
        if op == "services_apply":
            return self.services_apply(args.get("upsert", []), args.get("delete", []))
        if op == "conntrack":
            return self.dp.conntrack_dump()
        if op == "routes":
            return self.dp.overlay.routes() if self.dp.overlay.enabled else []
        if op == "route_add":
            return self.route_add(args)
        if op == "route_remove":
            return self.route_remove(args)
        raise ValueError("unknown operation; expected one of ping, status, counters, fdb, neighbors, "
                         "routes, route_add, route_remove, services, services_apply, conntrack")

    def services_apply(self, upsert, delete):
        """Add/replace and remove service ports, all or none: every entry is
        checked before the first is applied. Connections to a backend that
        left are ended: UDP ones deleted (kubernetes#19029), TCP ones marked so
        their next packet is answered with a RST."""
        svcs = self.dp.services
        if not isinstance(upsert, list) or not isinstance(delete, list):
            raise ValueError("upsert and delete must be lists")
        for e in upsert:
            if not isinstance(e, dict):
                raise ValueError("each upsert entry must be an object")
            svcs.check(e.get("vip"), e.get("port"), e.get("protocol", "TCP"),
                       [tuple(b) if isinstance(b, list) else b for b in e.get("backends", [])],
                       e.get("load_balancing", "random"), e.get("affinity_timeout", 0))
        for d in delete:
            if not isinstance(d, dict):
                raise ValueError("each delete entry must be an object with vip, port, protocol")
            svcs.check(d.get("vip"), d.get("port"), d.get("protocol", "TCP"))
        flushed = [0, 0]
        for e in upsert:
            proto = e.get("protocol", "TCP")
            old = svcs.get(e["vip"], e["port"], proto) if len(svcs) else None
            new = [tuple(b) for b in e.get("backends", [])]
            svcs.set(e["vip"], e["port"], proto, new, e.get("load_balancing", "random"), e.get("affinity_timeout", 0))
            if old:
                for ip, port in set(old["backends"]) - set(new):
                    self._flush(e["vip"], e["port"], proto, ip, port, flushed)
        for d in delete:
            proto = d.get("protocol", "TCP")
            if svcs.get(d["vip"], d["port"], proto) is not None:
                svcs.remove(d["vip"], d["port"], proto)
                self._flush(d["vip"], d["port"], proto, None, -1, flushed)
        return {"service_ports": len(svcs), "conntrack_deleted": flushed[0], "conntrack_reset": flushed[1]}

    def _flush(self, vip, port, proto, ip, bport, flushed):
        d, m = self.dp.conntrack.flush(vip=vip, vport=port, proto=6 if proto == "TCP" else 17,
                                       backend=ip, bport=bport, mark_tcp_dead=True)
        flushed[0] += d
        flushed[1] += m

    def _route_list(self):
        return [{"cidr": r["cidr"], "vtep": r["vtep"], "inner_mac": r["inner_mac"], "vni": r["vni"],
                 "name": r["name"], **({"vtep_mac": r["vtep_mac"]} if r["vtep_state"] == "static" else {})}
                for r in self.dp.overlay.routes()]

    def route_add(self, args):
        """Add (or replace, by name) the route to one node; atomic."""
        if not self.dp.overlay.enabled:
            raise ValueError("this node has no overlay")
        name = args.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError("route_add needs a node name")
        routes = [r for r in self._route_list() if r["name"] != name] + [dict(args)]
        self.dp.overlay.set_routes(routes, local=self.cfg["gateway"]["subnet"])
        self.solicit()
        return self.dp.overlay.routes()

    def route_remove(self, args):
        name = args.get("name")
        routes = self._route_list()
        keep = [r for r in routes if r["name"] != name]
        if len(keep) == len(routes):
            raise KeyError(f"no route to a node named {name!r}")
        self.dp.overlay.set_routes(keep, local=self.cfg["gateway"]["subnet"])
        return self.dp.overlay.routes()

    def status(self):
        t = next(iter(self.taps.values()), None)
        return {
            "node": self.node, "netns": self.cfg["netns"], "pid": os.getpid(),
            "uptime": round(time.time() - self.started, 1),
            "gateway": self.dp.gateway.info(),
            "overlay": self.dp.overlay.info(), "gso_path": getattr(self, "gso_path", None),
            "vnet_hdr": self.dp.vnet_len, "offloads": t.offloads if t else 0,
            "restored": self.restored, "reattached": self.reattached,
            "ports": [{"port": p, "pod": pod["name"], "netns": pod["netns"], "ip": pod["ip"],
                       "mac": pod["mac"], "tap": f"tap{p}"} for p, pod in self.pods.items()],
        }

    # ---- the loop ------------------------------------------------------

    def run(self):
        next_age = time.monotonic() + AGE_EVERY
        while not self.stop:
            for fd in self.io.poll(200):
                added, removed = self.server.ready(fd)
                for a in added:
                    self.io.watch(a)
                # closed fds left epoll by themselves
            now = time.monotonic()
            if now >= next_age:
                self.dp.age()
                self.dp.conntrack_gc()
                if self.dp.overlay.enabled:
                    self.solicit()
                next_age = now + AGE_EVERY
            self.snapshots.tick()

    def close(self):
        try:
            self.snapshots.save(force=True)          # only once restore() ran: never clobbers an unread one
        except OSError as e:
            print(f"agent {self.node}: snapshot not written: {e}", flush=True)
        if self.server:
            self.server.close()
        for tap in self.taps.values():
            tap.close()
        if getattr(self, "uplink_tap", None):
            self.uplink_tap.close()


def main(config_path):
    with open(config_path) as f:
        cfg = json.load(f)
    netns.enter(cfg["netns"])
    agent = Agent(cfg)

    def on_signal(signum, frame):
        agent.stop = True
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        agent.setup()
        print(f"agent {agent.node}: {len(agent.taps)} pods, serving {cfg['socket']}", flush=True)
        agent.run()
    finally:
        agent.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
