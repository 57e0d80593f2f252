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
from dataplane import ctdump
from dataplane.control import ControlServer, Stream
from dataplane.metrics import MetricsServer, exposition
from dataplane.snapshot import Snapshotter
from fastpath import Dataplane
from fastpath.ioloop import IOLoop
from tap import POD_OFFLOADS, TUN_F_UDP_TUNNEL_GSO, UPLINK_OFFLOADS, UPLINK_VNET_HDR_LEN
from tap.device import TUN_F_CSUM, TUN_F_TSO4, VNET_HDR_LEN, open_tap

AGE_EVERY = 1.0            # seconds between FDB aging sweeps
UPLINK_PORT = 255          # the fabric port: outside the pods' bridge domain
UPLINK_DOMAIN = 4095
GSO_SLOT = 65536 + 512     # a 64 KB TCP super-frame plus Ethernet/VLAN headers
PLAIN_SLOT = 9216          # one jumbo frame
CAPTURE_IDLE = 5.0         # seconds: a capture nobody reads is stopped


UPSERT_KEYS = ("vip", "port", "protocol", "backends", "load_balancing", "affinity_timeout",
               "key", "service")          # the last two: labels podnet apply sends along
DELETE_KEYS = ("vip", "port", "protocol")
ROUTE_KEYS = ("name", "cidr", "vtep", "inner_mac", "vni", "vtep_mac")
POD_KEYS = ("name", "port", "netns", "ifname", "ip", "mac", "prefixlen", "mtu", "loopback")
BACKENDS = ("vxlan", "ipip", "direct")    # cluster.backend (dataplane/spec.py)
IPIP_SEGMENTS = 1024                       # segment slots per dataplane for ipip's TSO (fastpath/ipip.pxd)


def _known_keys(what, obj, known):
    """A misspelt key must not be ignored (it would silently mean its default)."""
    unknown = sorted(set(obj) - set(known))
    if unknown:
        raise ValueError(f"{what}: unknown key {unknown[0]!r}; expected {', '.join(known)}")


class Agent:
    def __init__(self, cfg, metrics_tcp=None, clock=time.monotonic):
        self.cfg = cfg
        self.clock = clock         # the fast path's (seconds); tests inject one
        self.metrics_tcp = metrics_tcp     # a socket bound in the root namespace, or None
        self.metrics = None
        self.node = cfg["node"]
        self.vnet = bool(cfg.get("vnet", True))
        # ipip cuts pods' TCP super-frames into segments in the fast path (no
        # IPIP GSO type): segment slots for that, ~22 super-frames a burst.
        self.ipip_tso = (cfg.get("uplink") or {}).get("backend") == "ipip" and self.vnet \
            and os.environ.get("PODNET_IPIP_TSO", "1") != "0"
        self.dp = Dataplane(nslots=int(cfg.get("burst", 256)), segments=IPIP_SEGMENTS if self.ipip_tso else 0,
                            slot_size=GSO_SLOT if self.vnet else PLAIN_SLOT,
                            fdb_capacity=int(cfg.get("fdb_capacity", 65536)),
                            aging=float(cfg.get("aging", 300.0)),
                            service_capacity=int(cfg.get("service_capacity", 131072)),
                            conntrack_capacity=int(cfg.get("conntrack_capacity", 262144)),
                            service_cidr=cfg.get("service_cidr", "10.96.0.0/12"), clock=clock)
        # Forwarding threads; 0 forwards inside the control thread's poll()
        # (in-process tests that step the loop themselves), never `podnet up`.
        self.workers = cfg.get("workers", 1)
        if type(self.workers) is not int or not 0 <= self.workers <= 16:
            raise ValueError(f"workers must be 0..16, got {self.workers!r}")
        self.io = IOLoop(self.dp, workers=self.workers)
        self.taps = {}             # port -> Tap
        self.pod_offloads = POD_OFFLOADS
        self.host_netns = None     # (dev, ino) of the namespace main() started in
        self.pods = {}             # port -> pod config
        self.server = None
        self._services = (None, [])   # (service map generation, its list): see handle()
        self.stop = False
        self.started = time.time()
        self.capture_seen = 0.0
        snap = cfg.get("snapshot") or os.path.splitext(cfg["socket"])[0] + ".snapshot"
        self.snapshots = Snapshotter(self.dp, snap, {"cluster": cfg.get("cluster"), "node": self.node}, clock=clock,
                                     log=lambda msg: print(f"agent {self.node}: {msg}", flush=True))
        self.restored = {}         # what the last snapshot gave back at start-up
        self.reattached = 0        # TAPs found in place (a restart after a crash)

    def setup(self):
        gw = self.cfg["gateway"]
        self.configure_gateway()
        self.pod_offloads = self.setup_uplink() if self.cfg.get("uplink") else POD_OFFLOADS
        npods = len(self.cfg["pods"])
        for i, pod in enumerate(self.cfg["pods"]):
            if i and i % 16 == 0:                # `podnet up` follows these lines in the log
                print(f"placed {i}/{npods} pods", flush=True)
            self.reattached += self.add_pod({"port": i, **pod}, live=False)
        if self.cfg.get("uplink"):
            self.dp.overlay.set_routes(self.cfg.get("routes", []), local=gw["subnet"])
        self.restored = self.snapshots.restore(local_subnet=gw["subnet"])
        if self.restored:
            print(f"agent {self.node}: restored from snapshot {self.restored}", flush=True)
            gone = self.forget_departed()
            if gone:
                print(f"agent {self.node}: forgot pods deleted while it was down: {gone}", flush=True)
        if self.cfg.get("uplink"):
            self.solicit()
        self.server = ControlServer(self.cfg["socket"], self.handle, clock=self.clock, interest=self.io.interest)
        for fd in self.server.fds():
            self.io.watch(fd)
        m = self.cfg.get("metrics")
        if m:
            self.metrics = MetricsServer(self.metrics_text, unix_path=m.get("socket"), tcp_sock=self.metrics_tcp,
                                         clock=self.clock, interest=self.io.interest)
            for fd in self.metrics.fds():
                self.io.watch(fd)
        if self.cfg.get("cni"):               # podnet-cni calls, on a thread of their own (cniserver.py)
            from dataplane.cniserver import CniServer
            self.cni_server = CniServer(self.cfg["cni"]["socket"], host_netns=self.host_netns,
                                        log=lambda msg: print(f"agent {self.node}: {msg}", flush=True))
        self.io.start()                       # the workers forward from here on

    def add_pod(self, pod, live=True):
        """Plug one pod in: its TAP (re-attached if an earlier agent left it,
        else created here and placed in the pod's namespace as its eth0 with
        address, MAC, MTU and default route), its port, guard and neighbour,
        then its queues given to the workers. Used by start-up (live=False)
        and by the pod_add request alike. All or nothing: a failure removes
        what this call made. Returns True if the TAP was re-attached."""
        port, gw = pod["port"], self.cfg["gateway"]
        tap, again = open_tap(pod["netns"], pod.get("ifname", "eth0"), vnet_hdr=self.vnet,
                              offloads=self.pod_offloads, queues=max(1, self.workers),
                              mac=pod["mac"], ip=pod["ip"], prefixlen=pod["prefixlen"],
                              mtu=pod["mtu"], gateway=gw["ip"], loopback=pod.get("loopback", True) is not False)
        steps = []
        try:
            self.plug(port, pod, steps)
            self.io.attach(port, tap.filenos())   # the workers read it from their next burst
        except Exception:
            for undo in reversed(steps):
                undo()
            tap.destroy() if live else tap.close()
            raise
        self.taps[port] = tap
        self.pods[port] = pod
        return again

    def plug(self, port, pod, steps):
        """The fast path's side of a pod: its port, its anti-spoofing guard
        (it sends only from its own MAC and IP) and the gateway's neighbour
        entry; each undo is appended to steps. Shared with the in-memory node
        of dataplane.testing, which has no TAPs."""
        self.dp.add_port(port)
        steps.append(lambda: self.dp.remove_port(port))
        self.dp.set_port_guard(port, pod["mac"], pod["ip"])
        self.dp.gateway.add_neighbor(pod["ip"], pod["mac"])
        steps.append(lambda: self.dp.gateway.remove_neighbor(pod["ip"]))

    def configure(self, uplink_vnet_len=0, tunnel_gso=False):
        """The fast path as setup() leaves it, without TAPs, sockets or
        threads (dataplane.testing's in-memory node): gateway, vnet header
        length, every pod's port, the uplink with its overlay and the routes.
        The uplink's vnet header length and tunnel GSO are what the uplink
        TAP would have negotiated."""
        self.configure_gateway()
        if self.cfg.get("uplink"):
            self.configure_uplink(uplink_vnet_len, tunnel_gso)
        for i, pod in enumerate(self.cfg["pods"]):
            pod = {"port": i, **pod}                  # as setup() numbers them
            self.plug(pod["port"], pod, [])
            self.pods[pod["port"]] = pod
        if self.cfg.get("uplink"):
            self.dp.overlay.set_routes(self.cfg.get("routes", []), local=self.cfg["gateway"]["subnet"])

    def configure_gateway(self):
        gw = self.cfg["gateway"]
        self.dp.gateway.configure(gw["ip"], gw["mac"], gw["subnet"])
        if self.vnet:
            self.dp.set_vnet_len(12)

    def configure_uplink(self, vnet_len, tunnel_gso):
        """The uplink port and the overlay on it (cfg uplink), for an uplink
        whose frames carry vnet_len-byte headers."""
        up = self.cfg["uplink"]
        backend = up.get("backend", "vxlan")
        if backend not in BACKENDS:
            raise ValueError(f"uplink.backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.dp.add_port(UPLINK_PORT, domain=UPLINK_DOMAIN)
        self.dp.set_port_vnet(UPLINK_PORT, vnet_len)
        self.dp.overlay.configure(UPLINK_PORT, up["ip"], up["mac"], vni=up["vni"], port=up["port"],
                                  mtu=up["mtu"], tunnel_gso=tunnel_gso, backend=backend,
                                  prefixlen=up.get("prefixlen"))
        self.backend = backend

    def remove_pod(self, name, destroy=True):
        """Unplug a pod: the workers stop reading its TAP first, then its
        port (with every FDB entry on it), guard, neighbour, the connections
        it is an end of and the affinity pins to or from its address go, and
        its TAP is deleted (with it the pod's eth0). Other pods' ports,
        entries and connections are not touched. destroy=False (a pod whose
        namespace goes next) only closes the TAP: the namespace's teardown
        unregisters it with the namespace's other devices, in one batch,
        rather than this thread waiting out a device unregistration (an RCU
        barrier, tens to hundreds of ms here) per pod."""
        port = next((p for p, pod in self.pods.items() if pod["name"] == name), None)
        if port is None:
            raise KeyError(f"no pod {name!r} on node {self.node}")
        pod = self.pods.pop(port)
        self.io.detach(port)
        fdb_before = len(self.dp.fdb_dump())
        self.dp.remove_port(port)
        fdb = fdb_before - len(self.dp.fdb_dump())
        self.dp.gateway.remove_neighbor(pod["ip"])
        deleted, _ = self.dp.conntrack.flush(host=pod["ip"])
        pins = self.dp.services.flush_affinity(pod["ip"])
        tap = self.taps.pop(port)
        tap.destroy() if destroy else tap.close()
        return {"name": name, "port": port, "fdb_flushed": fdb, "conntrack_deleted": deleted,
                "affinity_flushed": pins}

    def forget_departed(self):
        """A pod deleted while this agent was down (`pod delete` works then)
        is not in its config, but the snapshot it restored still holds the
        pod's connections, affinity pins and ARP entry: every address of the
        node's subnet that is neither one of its pods nor the gateway is such
        a pod's, and goes as remove_pod() would have removed it."""
        import ipaddress
        gw = self.cfg["gateway"]
        subnet = ipaddress.IPv4Network(gw["subnet"])
        mine = {p["ip"] for p in self.pods.values()} | {gw["ip"]}
        records = self.dp.conntrack.export()
        seen = {ep.rsplit(":", 1)[0] for r in ctdump.rows(records, 0, limit=len(records))
                for ep in (r["client"], r["backend"])}
        seen |= {ep.rsplit(":", 1)[0] for a in self.dp.services.affinity(0) for ep in (a["client"], a["backend"])}
        seen |= {n["ip"] for n in self.dp.gateway.neighbors()}
        stale = sorted(ip for ip in seen if ipaddress.IPv4Address(ip) in subnet and ip not in mine)
        out = {"addresses": stale, "conntrack_deleted": 0, "affinity_flushed": 0}
        for ip in stale:
            out["conntrack_deleted"] += self.dp.conntrack.flush(host=ip)[0]
            out["affinity_flushed"] += self.dp.services.flush_affinity(ip)
            self.dp.gateway.remove_neighbor(ip)
        return out if stale else None

    def pod_add(self, args):
        _known_keys("pod_add", args, POD_KEYS)
        missing = [k for k in POD_KEYS if k not in ("ifname", "loopback") and k not in args]
        if missing:
            raise ValueError(f"pod_add: missing {', '.join(missing)}")
        port = args["port"]
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port < UPLINK_PORT:
            raise ValueError(f"pod_add: port must be 0..{UPLINK_PORT - 1}, got {port!r}")
        if port in self.pods:
            raise ValueError(f"pod_add: port {port} is pod {self.pods[port]['name']!r}'s")
        if any(p["name"] == args["name"] for p in self.pods.values()):
            raise ValueError(f"pod_add: pod {args['name']!r} is on this node already")
        if not isinstance(args["netns"], str) or not os.path.exists(
                args["netns"] if "/" in args["netns"] else os.path.join(netns.NETNS_DIR, args["netns"])):
            raise ValueError(f"pod_add: network namespace {args['netns']!r} does not exist")
        again = self.add_pod(dict(args))
        return {"port": port, "reattached": again}

    def setup_uplink(self):
        """The node's port on the fabric: a TAP enslaved to the fabric bridge.
        Returns the offloads pods may use, by backend (cfg uplink.backend):
        vxlan: TSO only if encapsulated super-frames can leave whole (UDP-tunnel
        GSO on this TAP); otherwise checksum offload alone, so pods send
        MTU-sized frames (the fallback). ipip: the virtio-net header has no
        IPIP GSO type, so pods' TCP super-frames are cut into segments in the
        fast path (gso_path "segmented"; measured faster than MTU-sized frames
        from the pods, docs/benchmarks.md) unless PODNET_IPIP_TSO=0, which gives pods
        checksum offload alone (they send MTU-sized frames).
        direct: super-frames leave unencapsulated, whole, if the uplink takes
        plain TSO; else checksum offload alone."""
        up = self.cfg["uplink"]
        backend = up.get("backend", "vxlan")
        if backend not in BACKENDS:
            raise ValueError(f"uplink.backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        # Made inside the fabric namespace under its own name (up<index>),
        # as pods' TAPs are made inside theirs (open_tap). Only VXLAN asks for
        # the tunnel bits (and the 24-byte header that carries them).
        vxlan = backend == "vxlan"
        tap, again = open_tap(up["fabric_netns"], up["ifname"], vnet_hdr=self.vnet,
                              offloads=UPLINK_OFFLOADS if vxlan else POD_OFFLOADS,
                              vnet_len=UPLINK_VNET_HDR_LEN if vxlan else VNET_HDR_LEN,
                              queues=max(1, self.workers), mtu=up["mtu"], master=up["bridge"])
        self.reattached += again
        if backend == "vxlan":
            tunnel_gso = self.vnet and bool(tap.offloads & TUN_F_UDP_TUNNEL_GSO)
            path = "udp-tunnel-gso"
        elif backend == "direct":
            tunnel_gso = self.vnet and bool(tap.offloads & TUN_F_TSO4)
            path = "tso"
        else:
            tunnel_gso = self.ipip_tso
            path = "segmented"
        if self.vnet and (not tunnel_gso or backend == "ipip"):   # no super-frames on the uplink: 12-byte headers, CSUM only
            tap.configure(VNET_HDR_LEN, TUN_F_CSUM)
        self.uplink_tap = tap
        self.configure_uplink(tap.vnet_len, tunnel_gso)
        self.io.attach(UPLINK_PORT, tap.filenos())
        self.gso_path = path if tunnel_gso else ("mtu-frames" if self.vnet else "plain")
        return POD_OFFLOADS if tunnel_gso else TUN_F_CSUM

    def solicit(self):
        """ARP for unresolved peer VTEPs now rather than on the first packet."""
        hdr = bytes(self.dp.port_vnet(UPLINK_PORT))
        # on the fast path's clock: with its own ARP on traffic, at most one
        # request per VTEP a second
        for frame in self.dp.overlay.solicit(int(self.clock() * 1000)):
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
            return self.counters()
        if op == "metrics":
            return self.metrics_text()
        if op == "fdb":
            return self.dp.fdb_dump()
        if op == "neighbors":
            return self.dp.gateway.neighbors()
        if op == "services":
            # Building the list takes ~0.25 s at 10k services x 10 endpoints,
            # inside the forwarding loop: once per change of the map, not per
            # request (clients polling `services` would stall forwarding).
            gen = self.dp.services.generation
            if self._services[0] != gen:
                self._services = (gen, self.dp.services.list())
            return self._services[1]
        if op == "services_apply":
            return self.services_apply(args.get("upsert", []), args.get("delete", []))
        if op == "conntrack":             # decoded as the socket drains (dataplane/ctdump.py)
            return Stream(ctdump.rows(self.dp.conntrack.export(), int(self.clock() * 1000)))
        if op == "routes":
            return self.dp.overlay.routes() if self.dp.overlay.enabled else []
        if op == "route_add":
            return self.route_add(args)
        if op == "route_remove":
            return self.route_remove(args)
        if op == "trace":
            return self.trace(args)
        if op == "capture_start":
            return self.capture_start(args)
        if op == "capture_read":
            return self.capture_read()
        if op == "capture_stop":
            return self.capture_stop()
        if op == "port_guard":
            return self.port_guard(args)
        if op == "pod_add":
            return self.pod_add(args)
        if op == "pod_remove":
            _known_keys("pod_remove", args, ("name", "destroy"))
            if not isinstance(args.get("destroy", True), bool):
                raise ValueError(f"pod_remove: destroy must be true or false, got {args['destroy']!r}")
            return self.remove_pod(args.get("name"), args.get("destroy", True))
        raise ValueError("unknown operation; expected one of ping, status, counters, fdb, neighbors, "
                         "routes, route_add, route_remove, services, services_apply, conntrack, trace, "
                         "capture_start, capture_read, capture_stop, port_guard, pod_add, pod_remove")

    def services_apply(self, upsert, delete):
        """Add/replace and remove service ports, all or none: every entry is
        checked before the first is applied. Connections to a backend that
        left are ended: UDP ones deleted (kubernetes#19029), TCP ones marked so
        their next packet is answered with a RST."""
        svcs = self.dp.services
        if not isinstance(upsert, list) or not isinstance(delete, list):
            raise ValueError("upsert and delete must be lists")
        added = set()
        for i, e in enumerate(upsert):
            if not isinstance(e, dict):
                raise ValueError("each upsert entry must be an object")
            _known_keys(f"upsert[{i}]", e, UPSERT_KEYS)
            if not isinstance(e.get("backends", []), list):
                raise ValueError(f"upsert[{i}].backends must be a list of [IPv4 address, port]")
            key, _ = svcs.check(e.get("vip"), e.get("port"), e.get("protocol", "TCP"),
                                [tuple(b) if isinstance(b, list) else b for b in e.get("backends", [])],
                                e.get("load_balancing", "random"), e.get("affinity_timeout", 0))
            if not svcs.has_key(key):
                added.add(key)
        for i, d in enumerate(delete):
            if not isinstance(d, dict):
                raise ValueError("each delete entry must be an object with vip, port, protocol")
            _known_keys(f"delete[{i}]", d, DELETE_KEYS)
            svcs.check(d.get("vip"), d.get("port"), d.get("protocol", "TCP"))
        if len(svcs) + len(added) > svcs.capacity:   # upserts go in before deletes
            raise ValueError(f"{len(added)} new service ports would overflow the service map "
                             f"({len(svcs)} of {svcs.capacity} used); nothing changed")
        # Old backends first (to end connections to those that leave), then
        # the whole change in one swap of the map (Services.apply): a worker
        # sees all of it or none of it.
        old = {}
        if len(svcs):
            for e in upsert:
                proto = e.get("protocol", "TCP")
                old[(e["vip"], e["port"], proto)] = svcs.get(e["vip"], e["port"], proto)
            for d in delete:
                proto = d.get("protocol", "TCP")
                old.setdefault((d["vip"], d["port"], proto), svcs.get(d["vip"], d["port"], proto))
        svcs.apply([(e["vip"], e["port"], e.get("protocol", "TCP"), [tuple(b) for b in e.get("backends", [])],
                     e.get("load_balancing", "random"), e.get("affinity_timeout", 0)) for e in upsert],
                   [(d["vip"], d["port"], d.get("protocol", "TCP")) for d in delete])
        flushed = [0, 0]
        for e in upsert:
            proto = e.get("protocol", "TCP")
            was = old.get((e["vip"], e["port"], proto))
            if was:
                for ip, port in set(was["backends"]) - {tuple(b) for b in e.get("backends", [])}:
                    self._flush(e["vip"], e["port"], proto, ip, port, flushed)
        upserted = {(e["vip"], e["port"], e.get("protocol", "TCP")) for e in upsert}
        for d in delete:
            k = (d["vip"], d["port"], d.get("protocol", "TCP"))
            if old.get(k) is not None or k in upserted:       # it was there when the deletes ran
                self._flush(d["vip"], d["port"], k[2], None, -1, flushed)
        return {"service_ports": len(svcs), "conntrack_deleted": flushed[0], "conntrack_reset": flushed[1]}

    def _flush(self, vip, port, proto, ip, bport, flushed):
        d, m = self.dp.conntrack.flush(vip=vip, vport=port, proto=6 if proto == "TCP" else 17,
                                       backend=ip, bport=bport, mark_tcp_dead=True)
        flushed[0] += d
        flushed[1] += m

    def _route_list(self):
        """The routes in force, as set_routes takes them (inner_mac only where
        one was given: ipip and direct routes have none)."""
        return [{"cidr": r["cidr"], "vtep": r["vtep"], "vni": r["vni"], "name": r["name"],
                 **({"inner_mac": r["inner_mac"]} if r.get("inner_mac") else {}),
                 **({"vtep_mac": r["vtep_mac"]} if r["vtep_state"] == "static" else {})}
                for r in self.dp.overlay.routes()]

    def route_add(self, args):
        """Add (or replace, by name) the route to one node; atomic."""
        if not self.dp.overlay.enabled:
            raise ValueError("this node has no overlay")
        name = args.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError("route_add needs a node name")
        _known_keys("route", args, ROUTE_KEYS)
        routes = [r for r in self._route_list() if r["name"] != name] + [dict(args)]
        try:
            self.dp.overlay.set_routes(routes, local=self.cfg["gateway"]["subnet"])
        except ValueError as e:              # "route 3: ..." means the one being added
            raise ValueError(str(e).replace(f"route {len(routes) - 1}", f"route to {name!r}", 1)) from None
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

    def trace(self, args):
        """Run one frame through the fast path noting each decision; nothing is
        sent, and unless commit the live tables are left as they were."""
        port = args.get("port")
        ports = [p for p, _ in self.dp.ports.list()]
        if not isinstance(port, int) or port not in ports:
            raise ValueError(f"port must be one of this node's ports {ports}, got {port!r}")
        try:
            frame = bytes.fromhex(args.get("frame", ""))
            vnet = bytes.fromhex(args["vnet"]) if args.get("vnet") is not None else None
        except (TypeError, ValueError):
            raise ValueError("frame and vnet must be hex strings") from None
        r = self.dp.trace(frame, port, vnet=vnet, commit=bool(args.get("commit", False)))
        r["outputs"] = [{"port": p, "frame": f.hex(), "vnet": v.hex()} for p, f, v in r["outputs"]]
        return r

    def port_guard(self, args):
        """Turn the anti-spoofing guard of one pod port off ({"port": P,
        "on": false}) or on again ({"port": P, "on": true}: the pod's own MAC
        and IP). For tests and debugging, to see what the guard stops; every
        pod port is guarded at start-up, a restarted agent's too, whatever was
        set here. port: a pod port of this node (status lists them); on: a
        boolean. Returns {"port", "pod", "guarded"}."""
        _known_keys("port_guard", args, ("port", "on"))
        port, on = args.get("port"), args.get("on")
        if not isinstance(port, int) or isinstance(port, bool) or port not in self.pods:
            raise ValueError(f"port must be one of this node's pod ports {sorted(self.pods)}, got {port!r}")
        if not isinstance(on, bool):
            raise ValueError(f"on must be true or false, got {on!r}")
        pod = self.pods[port]
        if on:
            self.dp.set_port_guard(port, pod["mac"], pod["ip"])
        else:
            self.dp.clear_port_guard(port)
        return {"port": port, "pod": pod["name"], "guarded": self.dp.guard.get(port) is not None}

    def counters(self):
        # The control socket's counters sit with the I/O loop's, which serves
        # it (and, like the loop's wakeups, control traffic itself moves them).
        io = self.io.counters()
        if self.server:
            io.update({f"control_{k}": v for k, v in self.server.counters().items()})
            if self.metrics:
                io["metrics_slow_clients_dropped"] = self.metrics.slow_clients_dropped
        return {**self.dp.counters(), "io": io, "capture": self.io.capture_info()}

    def metrics_text(self):
        return exposition(self.node, self.counters(), {p: pod["name"] for p, pod in self.pods.items()})

    def capture_start(self, args):
        """Start copying the frames that cross one port (both directions). One
        capture per node; it stops by itself if nobody reads it for
        CAPTURE_IDLE seconds (a reader that went away)."""
        port = args.get("port")
        attached = sorted(self.taps) + ([UPLINK_PORT] if getattr(self, "uplink_tap", None) else [])
        if not isinstance(port, int) or port not in attached:
            raise ValueError(f"port must be one of {attached}, got {port!r}")
        if self.io.capture_info()["running"]:
            raise ValueError(f"a capture is already running on node {self.node} "
                             f"(ports {self.io.capture_info()['ports']})")
        self.io.capture_start([port], bufsize=args.get("buffer", 4 << 20),
                              snaplen=args.get("snaplen", 65535))
        self.capture_seen = self.clock()
        return self.io.capture_info()

    def capture_read(self):
        info = self.io.capture_info()
        if not info["running"]:
            raise ValueError(f"no capture is running on node {self.node}")
        self.capture_seen = self.clock()
        frames = [{"ts_ns": t, "port": p, "dir": "rx" if d == 0 else "tx", "len": n, "data": b.hex()}
                  for t, p, d, n, b in self.io.capture_read()]
        return {"frames": frames, "lost": info["lost"]}

    def capture_stop(self):
        info = self.io.capture_info()
        self.io.capture_stop()
        self.capture_seen = 0.0
        return info

    def status(self):
        t = next(iter(self.taps.values()), None)
        return {
            "node": self.node, "netns": self.cfg["netns"], "pid": os.getpid(),
            "uptime": round(time.time() - self.started, 1),
            "gateway": self.dp.gateway.info(),
            "overlay": self.dp.overlay.info(), "backend": getattr(self, "backend", None),
            "gso_path": getattr(self, "gso_path", None),
            "vnet_hdr": self.dp.vnet_len, "offloads": t.offloads if t else 0,
            "workers": self.workers, "table_lock": self.dp.lock_stats(),
            "restored": self.restored, "reattached": self.reattached,
            "cni_server": ({"socket": self.cni_server.path, "served": self.cni_server.served,
                            "errors": self.cni_server.errors} if getattr(self, "cni_server", None) else None),
            "ports": [{"port": p, "pod": pod["name"], "netns": pod["netns"], "ip": pod["ip"],
                       "mac": pod["mac"], "tap": f"tap{p}", "guarded": self.dp.guard.get(p) is not None}
                      for p, pod in self.pods.items()],
        }

    # ---- the loop ------------------------------------------------------

    def run(self):
        next_age = self.clock() + AGE_EVERY
        while not self.stop:
            for fd in self.io.poll(200):
                m = self.metrics
                srv = m if m and (fd in m.listeners or fd in m.clients) else self.server
                added, removed = srv.ready(fd)
                for a in added:
                    self.io.watch(a)
                # closed fds left epoll by themselves
            self.server.tick()                   # clients that stopped reading are dropped
            if self.metrics:
                self.metrics.tick()
            now = self.clock()
            if self.capture_seen and now - self.capture_seen > CAPTURE_IDLE:
                self.capture_stop()
            if now >= next_age:
                self.dp.age()
                self.dp.conntrack_gc()
                if self.dp.overlay.enabled:
                    self.solicit()
                next_age = now + AGE_EVERY
            self.snapshots.tick()

    def close(self):
        self.io.stop()                        # each worker ends its burst: no fd is closed under one
        try:
            self.snapshots.save(force=True)          # only once restore() ran: never clobbers an unread one
        except OSError as e:
            print(f"agent {self.node}: snapshot not written: {e}", flush=True)
        if self.server:
            self.server.close()
        if getattr(self, "cni_server", None):
            self.cni_server.close()
        if self.metrics:
            self.metrics.close()
        for tap in self.taps.values():
            tap.close()
        if getattr(self, "uplink_tap", None):
            self.uplink_tap.close()


def main(config_path):
    with open(config_path) as f:
        cfg = json.load(f)
    tcp = None
    port = (cfg.get("metrics") or {}).get("port")
    if port:                                  # bound before leaving the root namespace: 127.0.0.1 there
        import socket
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("127.0.0.1", int(port)))
    st = os.stat("/proc/self/ns/net")             # the host's, before leaving it
    netns.enter(cfg["netns"])
    agent = Agent(cfg, metrics_tcp=tcp)
    agent.host_netns = (st.st_dev, st.st_ino)

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
