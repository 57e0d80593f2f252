"""Agent snapshots in memory: a fast path with learned and configured state
(FDB, conntrack with NAT/SNAT/dead flags and every state, services with their
Maglev table sizes, ClientIP affinity entries, a run-time route, an
ARP-resolved VTEP, an ARP-learned neighbour) is saved, a fresh one configured
as a restarted agent would be restores it, and then behaves the same:
mid-stream packets of old connections keep their backend, replies are
un-NATed, a dead connection is reset, pinned clients keep their backend,
Maglev flows theirs. Timers lose the time spent down; affinity to a backend
the service lost is dropped; only changes are written; version 1 files (no
affinity section) still restore; foreign, corrupt or partial snapshots are
refused part by part."""
import ipaddress
import json

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

from dataplane.snapshot import MAGIC, SnapshotError, Snapshotter, read, restore
from fastpath import Dataplane
from fastpath.conntrack import RECORD_SIZE as CT_RECORD
from fastpath.services import AFFINITY_RECORD_SIZE as AFF_RECORD

GW_IP, GW_MAC = "10.244.0.1", "0a:58:0a:f4:00:01"
A = ("10.244.0.2", "0a:58:0a:f4:00:02", 0)      # client pod
B = ("10.244.0.3", "0a:58:0a:f4:00:03", 1)      # backend pod
C = ("10.244.0.4", "0a:58:0a:f4:00:04", 2)      # another backend pod
STRAY = ("10.244.0.9", "02:00:00:00:00:09")      # not from IPAM: ARP-learned
VIP, VIP2 = "10.96.0.10", "10.96.0.11"
NODE_IP, NODE_MAC, PEER_IP, PEER_MAC = "172.30.250.1", "0a:5a:ac:1e:fa:01", "172.30.250.2", "0a:5a:ac:1e:fa:02"
EXT_IP, EXT_MAC = "172.30.250.9", "0a:5a:ac:1e:fa:09"
UPLINK = 255
SPEC_ROUTES = [{"name": "n2", "cidr": "10.244.1.0/24", "vtep": PEER_IP, "inner_mac": "0a:58:0a:f4:01:01", "vni": 1}]
EXT_ROUTE = {"name": "ext", "cidr": "10.250.0.0/24", "vtep": EXT_IP, "inner_mac": "0a:58:0a:fa:00:01",
             "vni": 1, "vtep_mac": EXT_MAC}
META = {"cluster": "pnrs", "node": "n1"}


def configured(clock, conntrack_capacity=1024):
    """What an agent sets up from its config, before any traffic."""
    d = Dataplane(nslots=64, clock=clock, conntrack_capacity=conntrack_capacity, service_capacity=1024)
    for _, _, p in (A, B, C):
        d.add_port(p)
    d.add_port(UPLINK, domain=4095)
    d.gateway.configure(GW_IP, GW_MAC, "10.244.0.0/24")
    for ip, mac, _ in (A, B, C):
        d.gateway.add_neighbor(ip, mac)
    d.overlay.configure(UPLINK, NODE_IP, NODE_MAC)
    d.overlay.set_routes(SPEC_ROUTES, local="10.244.0.0/24")
    return d


def tcp(src, dst, sport, dport, flags, payload=b"", smac=None, dmac=GW_MAC):
    return bytes(Ether(src=smac or src[1], dst=dmac) / IP(src=src[0] if isinstance(src, tuple) else src,
                                                        dst=dst) / TCP(sport=sport, dport=dport, flags=flags) / payload)


def busy(clock):
    """A node that has seen traffic and control requests."""
    d = configured(clock)
    for ip, mac, port in (A, B, C):
        d.process(bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=ip, pdst="10.244.0.250")), port)
    d.process(bytes(Ether(src=STRAY[1], dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=STRAY[1], psrc=STRAY[0], pdst=GW_IP)), C[2])
    d.process(bytes(Ether(src=PEER_MAC, dst=NODE_MAC) / ARP(op=2, hwsrc=PEER_MAC, psrc=PEER_IP, hwdst=NODE_MAC,
                                                             pdst=NODE_IP)), UPLINK)
    d.overlay.set_routes(SPEC_ROUTES + [EXT_ROUTE], local="10.244.0.0/24")      # `podnet node add`
    d.services.set(VIP, 80, "TCP", [(B[0], 8080)])
    d.services.set(VIP, 53, "UDP", [(C[0], 5353)])
    d.services.set(VIP2, 80, "TCP", [(A[0], 8080), (B[0], 8080), (C[0], 8080)], lb="maglev", affinity_timeout=30)
    # established TCP A -> VIP:80 -> B
    d.process(tcp(A, VIP, 40000, 80, "S"), A[2])
    d.process(tcp(B, A[0], 8080, 40000, "SA", dmac=A[1]), B[2])
    d.process(tcp(A, VIP, 40000, 80, "A", b"hello"), A[2])
    d.process(tcp(A, VIP, 40001, 80, "S"), A[2])                 # unanswered SYN
    d.process(tcp(A, VIP, 40002, 80, "S"), A[2])                 # will be marked dead
    d.conntrack.flush(vip=VIP, vport=80, proto=6, mark_tcp_dead=True)
    d.process(tcp(A, VIP, 40003, 80, "S"), A[2])                 # closing
    d.process(tcp(A, VIP, 40003, 80, "FA"), A[2])
    d.process(bytes(Ether(src=A[1], dst=GW_MAC) / IP(src=A[0], dst=VIP) / UDP(sport=5000, dport=53) / b"q"), A[2])
    return d


def state(d):
    return {"fdb": d.fdb_dump(), "conntrack": d.conntrack_dump(), "services": d.services.list(),
            "routes": d.overlay.routes(), "neighbors": d.gateway.neighbors()}


def saved(d, path, clock):
    s = Snapshotter(d, path, META, clock=clock, wall=clock)
    assert s.restore() == {}                 # nothing there yet: arms saving
    assert s.save()
    return load(path)


def load(path):
    """The file as Snapshotter.read() gives it to restore()."""
    head, records = read(path)
    return dict(head, records=records)


def test_round_trip_restores_every_table(tmp_path, clock):
    before = busy(clock)
    snap = saved(before, tmp_path / "n1.snapshot", clock)
    assert snap["node"] == "n1" and len(snap["records"]["conntrack"]) == 5 * CT_RECORD
    after = configured(clock)
    got = Snapshotter(after, tmp_path / "n1.snapshot", META, clock=clock, wall=clock).restore(local_subnet="10.244.0.0/24")
    assert {k: got[k] for k in ("fdb", "conntrack", "services", "routes", "vteps", "neighbors")} == \
        {"fdb": 4, "conntrack": 5, "services": 3, "routes": 2, "vteps": 1, "neighbors": 1}
    assert state(after) == state(before)
    states = {(c["client"], c["state"], c["dead"]) for c in after.conntrack_dump()}
    assert (f"{A[0]}:40000", "established", True) in states and (f"{A[0]}:40003", "fin_wait", False) in states
    assert after.counters()["conntrack"]["inserts"] == 0 and after.counters()["fdb"]["learned"] == 0


def test_restored_connections_keep_their_backend_and_nat(tmp_path, clock):
    before = busy(clock)
    before.conntrack.clear()                    # one live connection, not marked dead
    before.process(tcp(A, VIP, 41000, 80, "S"), A[2])
    before.process(tcp(B, A[0], 8080, 41000, "SA", dmac=A[1]), B[2])
    before.services.set(VIP2, 80, "TCP", [(C[0], 8080)])
    before.process(tcp(A, VIP2, 41001, 80, "S"), A[2])          # to C
    saved(before, tmp_path / "s", clock)
    after = configured(clock)
    Snapshotter(after, tmp_path / "s", META, clock=clock, wall=clock).restore("10.244.0.0/24")
    # a mid-stream segment (no SYN: a fresh table would drop it as invalid)
    [(port, out)] = after.process(tcp(A, VIP, 41000, 80, "A", b"more"), A[2])
    e = Ether(out)
    assert port == B[2] and (e.dst, e[IP].src, e[IP].dst, e[TCP].dport) == (B[1], A[0], B[0], 8080)
    assert bytes(e[TCP].payload) == b"more"
    [(port, out)] = after.process(tcp(B, A[0], 8080, 41000, "A", b"echo", dmac=A[1]), B[2])
    e = Ether(out)
    assert port == A[2] and (e[IP].src, e[TCP].sport, e[IP].dst) == (VIP, 80, A[0])
    [(port, out)] = after.process(tcp(A, VIP2, 41001, 80, "A", b"x"), A[2])
    assert port == C[2] and Ether(out)[IP].dst == C[0]
    assert after.counters()["drops"]["conntrack_invalid"] == 0


def test_dead_connection_still_reset_after_restore(tmp_path, clock):
    saved(busy(clock), tmp_path / "s", clock)
    after = configured(clock)
    Snapshotter(after, tmp_path / "s", META, clock=clock, wall=clock).restore("10.244.0.0/24")
    [(port, out)] = after.process(tcp(A, VIP, 40000, 80, "A", b"late"), A[2])
    e = Ether(out)
    assert port == A[2] and e[TCP].flags == "R" and e[IP].src == VIP


def test_timers_lose_the_time_spent_down(tmp_path, clock):
    before = configured(clock)
    before.services.set(VIP, 53, "UDP", [(C[0], 5353)])
    before.services.set(VIP, 80, "TCP", [(B[0], 8080)])
    before.process(bytes(Ether(src=A[1], dst=GW_MAC) / IP(src=A[0], dst=VIP) / UDP(sport=5000, dport=53)), A[2])
    before.process(tcp(A, VIP, 40000, 80, "S"), A[2])             # SYN_SENT: 120 s
    path = tmp_path / "s"
    saved(before, path, clock)

    def down_for(seconds):
        snap = load(path)
        clock.advance(seconds)
        after = configured(clock)
        restore(after, snap, clock, log=lambda m: None, wall=clock)
        left = {c["proto"]: c["expires_in"] for c in after.conntrack_dump()}
        clock.advance(-seconds)
        return left

    assert down_for(20) == {"UDP": pytest.approx(10, abs=0.01), "TCP": pytest.approx(100, abs=0.01)}
    assert down_for(31) == {"TCP": pytest.approx(89, abs=0.01)}       # the UDP flow would have expired
    assert down_for(121) == {}


def test_writes_only_changes(tmp_path, clock):
    d = busy(clock)
    s = Snapshotter(d, tmp_path / "s", META, clock=clock, wall=clock)
    assert not s.save() and not (tmp_path / "s").exists()          # not armed before restore()
    s.restore()
    assert s.save() and not s.save()                               # nothing changed
    clock.advance(5)
    assert not s.save()                                            # time alone changes nothing stored
    d.process(bytes(Ether(src=A[1], dst=GW_MAC) / IP(src=A[0], dst=VIP) / UDP(sport=5000, dport=53)), A[2])
    assert s.save()
    assert s.tick() is False                                       # within the interval
    d.services.set(VIP, 81, "TCP", [(B[0], 8080)])
    assert s.tick() is False                   # services ride on the periodic save, not at once
    assert not s.save()                        # and are re-encoded at most every services_every s
    assert s.save(force=True)                  # a clean stop writes them
    assert (VIP, 81) in {(x["vip"], x["port"]) for x in read(tmp_path / "s")[0]["services"]}
    s.services_every = 0
    d.services.set(VIP, 82, "TCP", [(B[0], 8080)])
    assert s.save()
    assert (VIP, 82) in {(x["vip"], x["port"]) for x in read(tmp_path / "s")[0]["services"]}
    assert [p.name for p in tmp_path.iterdir()] == ["s"]           # no temporary file left


def test_foreign_or_corrupt_snapshots_are_ignored(tmp_path, clock):
    path = tmp_path / "s"
    saved(busy(clock), path, clock)
    logs = []
    for change in ({"node": "n2"}, {"cluster": "other"}, {"boot_id": "elsewhere"}):
        after = configured(clock)
        s = Snapshotter(after, path, META, clock=clock, wall=clock, log=logs.append)
        s.meta.update(change)                   # the file is another node's, boot's
        assert s.restore() == {}
        assert len(after.conntrack) == 0
    data = path.read_bytes()
    future = data.replace(b'"version":2,', b'"version":99,', 1)          # a format this build does not know
    assert future != data
    for broken in (data[:100], data[:-3], b"{}" + data, future):
        path.write_bytes(broken)
        assert Snapshotter(configured(clock), path, META, clock=clock, wall=clock, log=logs.append).restore() == {}
    assert len(logs) == 7 and all("unreadable" in m for m in logs[3:]), logs
    assert "format version 99" in logs[-1], logs


def test_a_bad_part_is_skipped_the_rest_restored(tmp_path, clock):
    path = tmp_path / "s"
    snap = saved(busy(clock), path, clock)
    snap["records"]["conntrack"] = snap["records"]["conntrack"][:-3]
    snap["fdb"]["record"] = 99
    snap["services"].append({"vip": "192.0.2.1", "port": 80, "protocol": "TCP", "lb": "random",
                             "affinity_timeout": 0, "backends": []})        # outside the service CIDR
    logs = []
    after = configured(clock)
    got = restore(after, snap, clock, "10.244.0.0/24", log=logs.append, wall=clock)
    assert "conntrack" not in got and "fdb" not in got and got["services"] == 3 and got["routes"] == 2
    assert len(after.conntrack) == 0 and len(after.fdb) == 0 and len(after.services) == 3
    assert len(logs) == 3


def test_conntrack_restore_skips_malformed_clashing_and_overflow(clock):
    d = configured(clock)
    d.services.set(VIP, 80, "TCP", [(B[0], 8080)])
    for sp in range(40):
        d.process(tcp(A, VIP, 30000 + sp, 80, "S"), A[2])
    recs = bytearray(d.conntrack.export())
    recs[CT_RECORD * 1 + 22] = 99                 # record 1: protocol 99
    now = int(clock() * 1000)
    small = configured(clock, conntrack_capacity=16)
    small.services.set(VIP, 80, "TCP", [(B[0], 8080)])
    small.process(tcp(A, VIP, 30002, 80, "S"), A[2])                # record 2's tuple is taken
    assert small.conntrack.restore(bytes(recs), 0, now) == (15, 25)     # full after 15 more
    assert len(small.conntrack) == 16 and small.counters()["conntrack"]["insert_failed"] == 0
    with pytest.raises(ValueError, match="multiple"):
        small.conntrack.restore(bytes(recs[:-1]), 0, now)


def test_fdb_restore_skips_unknown_ports_and_aged_entries(clock):
    d = configured(clock)
    for n, port in ((1, 0), (2, 1), (3, 2)):
        d.process(bytes(Ether(src=f"02:00:00:00:00:0{n}", dst="ff:ff:ff:ff:ff:ff")), port)
    d.fdb.add_static("02:00:00:00:00:0a", 1, now=int(clock() * 1000))
    recs = d.fdb.export()
    now = int(clock() * 1000)
    e = Dataplane(nslots=8, clock=clock)
    assert e.fdb.restore(recs, 0, now, [0, 1]) == (3, 1)              # port 2 is gone
    assert {x["mac"]: (x["port"], x["static"]) for x in e.fdb_dump()} == \
        {"02:00:00:00:00:01": (0, False), "02:00:00:00:00:02": (1, False), "02:00:00:00:00:0a": (1, True)}
    f = Dataplane(nslots=8, clock=clock, aging=300)
    assert f.fdb.restore(recs, -301_000, now) == (1, 3)               # down longer than the aging time
    assert f.fdb.restore(recs, 0, now) == (3, 1)                      # the static one is there already


def test_saving_is_cheap_when_idle(tmp_path, clock):
    """Services are encoded when they change, not every second."""
    d = configured(clock)
    for i in range(1000):
        d.services.set(f"10.96.{i // 250}.{i % 250 + 1}", 80, "TCP", [(B[0], 8080), (C[0], 8080)])
    s = Snapshotter(d, tmp_path / "s", META, clock=clock, wall=clock)
    s.restore()
    assert s.save()
    gen = s._svc
    assert not s.save() and s._svc is gen


def test_a_route_change_is_written_at_once(tmp_path, clock):
    """tick() writes every `every` seconds if something changed, and at
    once after a route change (here `every` is an hour: only the route
    change can make it write)."""
    d = busy(clock)
    s = Snapshotter(d, tmp_path / "s", META, clock=clock, wall=clock, every=3600)
    s.restore()
    assert s.save()
    d.process(bytes(Ether(src=A[1], dst=GW_MAC) / IP(src=A[0], dst=VIP) / UDP(sport=5001, dport=53)), A[2])
    assert s.tick() is False                                       # a new connection waits for the interval
    d.overlay.set_routes(SPEC_ROUTES, local="10.244.0.0/24")       # `podnet node remove ext`
    assert s.tick() is True
    assert [r["name"] for r in read(tmp_path / "s")[0]["routes"]] == ["n2"]
    assert s.tick() is False


def test_restart_resync_state_json_wins_over_the_snapshot(tmp_path):
    """After a restart `podnet up` puts right what changed since the
    snapshot: services and external nodes as state.json records them win
    (dataplane.cluster._resync against a live agent's control socket)."""
    import os
    import threading
    from dataplane.agent import UPLINK_DOMAIN, UPLINK_PORT, Agent
    from dataplane.cluster import _resync
    gw = {"ip": GW_IP, "mac": GW_MAC, "subnet": "10.244.0.0/24"}
    sock = str(tmp_path / "n1.sock")
    agent = Agent({"node": "n1", "netns": "-", "socket": sock, "vnet": False, "gateway": gw, "pods": []})
    agent.setup()

    class NullUplink:
        fd = os.open(os.devnull, os.O_WRONLY)

        def fileno(self):
            return self.fd

        def close(self):
            os.close(self.fd)
    agent.dp.add_port(UPLINK_PORT, domain=UPLINK_DOMAIN)
    agent.dp.overlay.configure(UPLINK_PORT, NODE_IP, NODE_MAC)
    agent.uplink_tap = NullUplink()
    # what the agent restored from its snapshot, a second old
    gone = {"name": "gone", "cidr": "10.250.1.0/24", "vtep": "172.30.250.8", "inner_mac": "0a:58:0a:fa:01:01"}
    agent.dp.overlay.set_routes(SPEC_ROUTES + [gone], local=gw["subnet"])
    agent.services_apply([{"vip": VIP, "port": 80, "protocol": "TCP", "backends": [[B[0], 8080]]},
                          {"vip": VIP, "port": 81, "protocol": "TCP", "backends": [[B[0], 8080]]}], [])
    # what state.json says now
    entry = lambda port, backends: {"vip": VIP, "port": port, "protocol": "TCP", "backends": backends,
                                    "load_balancing": "random", "affinity_timeout": 0}
    from dataplane.state import ClusterState, NodeState
    nodes = {n: NodeState(n, i, "", "", "", "", socket=s) for i, (n, s) in enumerate((("n1", sock), ("n2", "unused")))}
    state = ClusterState("x", "<test>", {}, nodes, {}, {}, [], {}, 1, 4789, 1450,
                         external={"ext": {"name": "ext", "pod_cidr": EXT_ROUTE["cidr"], "vtep": EXT_IP,
                                           "vtep_mac": EXT_ROUTE["inner_mac"]}},
                         service_entries=[entry(80, [[C[0], 8080]]), entry(82, [[B[0], 8082]])])
    crashed = []

    def run():
        try:
            agent.run()
        except BaseException as e:
            crashed.append(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        done = _resync(state, "n1")
        assert done == "route to gone removed, route to ext added, 2 service ports updated, 1 removed"
        routes = {r["name"]: (r["cidr"], r["vtep"], r["inner_mac"]) for r in agent.dp.overlay.routes()}
        assert routes == {"n2": ("10.244.1.0/24", PEER_IP, "0a:58:0a:f4:01:01"),
                          "ext": (EXT_ROUTE["cidr"], EXT_IP, EXT_ROUTE["inner_mac"])}
        assert {(s["port"], tuple(map(tuple, s["backends"]))) for s in agent.dp.services.list()} == \
            {(80, ((C[0], 8080),)), (82, ((B[0], 8082),))}
        assert _resync(state, "n1") == ""                          # in agreement: nothing to do
        assert not crashed
    finally:
        agent.stop = True
        t.join(5)
        agent.close()


def test_a_clean_stop_writes_the_snapshot(tmp_path, clock):
    """Agent.close() (SIGTERM) saves at once, services included, even with
    nothing due: the next agent starts from the state at the stop."""
    from dataplane.agent import Agent
    gw = {"ip": GW_IP, "mac": GW_MAC, "subnet": "10.244.0.0/24"}
    agent = Agent({"node": "n1", "cluster": "pnrs", "netns": "-", "socket": str(tmp_path / "n1.sock"),
                   "vnet": False, "gateway": gw, "pods": []}, clock=clock)
    agent.setup()
    try:
        d = agent.dp
        for ip, mac, port in (A, B):
            d.add_port(port)
            d.gateway.add_neighbor(ip, mac)
        agent.services_apply([{"vip": VIP, "port": 80, "protocol": "TCP", "backends": [[B[0], 8080]]}], [])
        d.process(tcp(A, VIP, 40000, 80, "S"), A[2])
        assert not (tmp_path / "n1.snapshot").exists()
    finally:
        agent.close()
    head, tables = read(tmp_path / "n1.snapshot")
    assert (head["node"], head["conntrack"]["count"]) == ("n1", 1)
    assert [(s["vip"], s["port"], s["backends"]) for s in head["services"]] == [(VIP, 80, [[B[0], 8080]])]


# ---- ClientIP affinity and Maglev table sizes --------------------------------

CLIENTS = [f"10.244.0.{100 + n}" for n in range(40)]      # sources on pod A's port (no guard)
AFF_PORT = {B[2]: B[0], C[2]: C[0]}                      # output port -> backend


def pick(d, client, sport, vip=VIP2):
    """The backend a new TCP flow from client to vip:80 is sent to (by the
    port the DNATed SYN leaves on and its destination)."""
    [(port, out)] = d.process(tcp((client, A[1]), vip, sport, 80, "S"), A[2])
    assert Ether(out)[IP].dst == AFF_PORT[port]
    return AFF_PORT[port]


def learned(clock):
    """configured(), the pods' MACs learned (so DNATed frames are not flooded)."""
    d = configured(clock)
    for ip, mac, port in (A, B, C):
        d.process(bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=ip, pdst="10.244.0.250")), port)
    return d


def affine(clock, timeout=60):
    """A node with a ClientIP service of two backends and 40 pinned clients."""
    d = learned(clock)
    d.services.set(VIP2, 80, "TCP", [(B[0], 8080), (C[0], 8080)], affinity_timeout=timeout)
    return d, {c: pick(d, c, 20000) for c in CLIENTS}


def now_ms(clock):
    return int(clock() * 1000)


def v1_file(path):
    """The file a build before affinity records wrote for the same state:
    version 1, no affinity section, no Maglev sizes."""
    head, tables = read(path)
    head.pop("affinity")
    head["version"] = 1
    for s in head["services"]:
        s.pop("maglev_size", None)
    path.write_bytes(MAGIC + json.dumps(head).encode() + b"\n" + tables["fdb"] + tables["conntrack"])


def test_affinity_survives_a_restore(tmp_path, clock):
    """40 clients pinned to B or C keep their backend for new connections
    after a save and a restore into a fresh node whose random generator is
    seeded otherwise; without the affinity records the same fresh node
    sends some of them elsewhere (so keeping them is not luck)."""
    before, pinned = affine(clock)
    assert set(pinned.values()) == {B[0], C[0]}
    path = tmp_path / "s"
    snap = saved(before, path, clock)
    assert snap["affinity"] == {"record": AFF_RECORD, "count": 40}

    def restarted(snapshot, seed):
        after = configured(clock)
        after.services.seed(seed)
        got = restore(after, snapshot, clock, "10.244.0.0/24", log=pytest.fail, wall=clock)
        return after, got
    for seed in (1, 2, 3):
        after, got = restarted(load(path), seed)
        assert got["affinity"] == 40
        assert {c: pick(after, c, 20001 + seed) for c in CLIENTS} == pinned
        assert after.counters()["services"]["affinity_hits"] == 40
    # the control: the same restart without affinity records
    bare = load(path)
    bare["records"]["affinity"], bare["affinity"]["count"] = b"", 0
    moved = 0
    for seed in (1, 2, 3):
        after, got = restarted(bare, seed)
        assert got["affinity"] == 0
        moved += sum(pick(after, c, 20001 + seed) != b for c, b in pinned.items())
    assert moved > 0


def test_affinity_timers_lose_the_time_spent_down(tmp_path, clock):
    before = learned(clock)
    before.services.set(VIP2, 80, "TCP", [(B[0], 8080), (C[0], 8080)], affinity_timeout=30)
    early = pick(before, CLIENTS[0], 20000)            # 30 s left now, 15 s at the save
    clock.advance(15)
    late = pick(before, CLIENTS[1], 20000)             # 30 s left at the save
    path = tmp_path / "s"
    saved(before, path, clock)
    snap = load(path)
    clock.advance(20)                                  # down for 20 s
    after = configured(clock)
    got = restore(after, snap, clock, "10.244.0.0/24", log=pytest.fail, wall=clock)
    assert got["affinity"] == 1                        # the early client's entry ran out while down
    assert after.services.affinity(now_ms(clock)) == [
        {"client": CLIENTS[1], "service": f"{VIP2}:80/TCP", "backend": f"{late}:8080",
         "expires_in": pytest.approx(10, abs=0.01)}]
    clock.advance(9.9)
    assert pick(after, CLIENTS[1], 20001) == late
    assert early in (B[0], C[0])


def test_affinity_to_a_backend_the_service_lost_is_not_restored(tmp_path, clock):
    """The service left C (saved with the change, the affinity table still
    holding entries to C): only the entries to B come back. Likewise none
    for a service port that is gone or no longer has affinity."""
    before, pinned = affine(clock)
    before.services.set(VIP2, 80, "TCP", [(B[0], 8080)], affinity_timeout=60)
    before.services.set(VIP, 80, "TCP", [(B[0], 8080), (C[0], 8080)], affinity_timeout=60)
    via_vip = {c: pick(before, c, 21000, vip=VIP) for c in CLIENTS[:10]}
    path = tmp_path / "s"
    s = Snapshotter(before, path, META, clock=clock, wall=clock)
    s.restore()
    assert s.save(force=True)
    snap = load(path)
    assert snap["affinity"]["count"] == 50                    # C's entries are live, only unusable
    to_b = sorted(c for c, b in pinned.items() if b == B[0])
    after = configured(clock)
    got = restore(after, snap, clock, "10.244.0.0/24", log=pytest.fail, wall=clock)
    assert got["affinity"] == len(to_b) + 10
    entries = after.services.affinity(now_ms(clock))
    assert {e["backend"] for e in entries if e["service"] == f"{VIP2}:80/TCP"} == {f"{B[0]}:8080"}
    assert sorted(e["client"] for e in entries if e["service"] == f"{VIP2}:80/TCP") == to_b
    assert {e["client"]: e["backend"] for e in entries if e["service"] == f"{VIP}:80/TCP"} == \
        {c: f"{b}:8080" for c, b in via_vip.items()}
    # VIP:80 gone, VIP2:80 without affinity when the snapshot is restored
    snap = load(path)
    snap["services"] = [dict(x, affinity_timeout=0) if x["vip"] == VIP2 else x
                        for x in snap["services"] if (x["vip"], x["port"]) != (VIP, 80)]
    after = configured(clock)
    assert restore(after, snap, clock, "10.244.0.0/24", log=pytest.fail, wall=clock)["affinity"] == 0
    assert after.services.affinity(now_ms(clock)) == []


def test_a_shortened_affinity_timeout_caps_restored_entries(clock):
    before, pinned = affine(clock, timeout=600)
    recs = before.services.export_affinity(now_ms(clock))
    after = configured(clock)
    after.services.set(VIP2, 80, "TCP", [(B[0], 8080), (C[0], 8080)], affinity_timeout=60)
    assert after.services.restore_affinity(recs, 0, now_ms(clock)) == (40, 0)
    assert {e["expires_in"] for e in after.services.affinity(now_ms(clock))} == {60}
    assert after.services.restore_affinity(recs, 0, now_ms(clock)) == (0, 40)   # pinned already
    with pytest.raises(ValueError, match="multiple"):
        after.services.restore_affinity(recs[:-1], 0, now_ms(clock))


def test_a_version_1_snapshot_restores_as_before(tmp_path, clock):
    """A file written before affinity records (no affinity section, no
    Maglev sizes) restores every table it has; Maglev tables at the default
    size, as they were built then."""
    before = busy(clock)
    before.services.set(VIP2, 80, "TCP", [(A[0], 8080), (B[0], 8080), (C[0], 8080)], lb="maglev",
                        affinity_timeout=30, maglev_size=4099)
    path = tmp_path / "s"
    saved(before, path, clock)
    v1_file(path)
    assert read(path)[1]["affinity"] == b""
    logs = []
    after = configured(clock)
    got = Snapshotter(after, path, META, clock=clock, wall=clock, log=logs.append).restore("10.244.0.0/24")
    assert not logs and "affinity" not in got
    assert {k: got[k] for k in ("fdb", "conntrack", "services", "routes", "vteps", "neighbors")} == \
        {"fdb": 4, "conntrack": 5, "services": 3, "routes": 2, "vteps": 1, "neighbors": 1}
    assert after.conntrack_dump() == before.conntrack_dump() and after.fdb_dump() == before.fdb_dump()
    assert after.services.get(VIP2, 80, "TCP")["maglev_size"] == 16381
    # and the agent's next save writes the current version
    s = Snapshotter(after, path, META, clock=clock, wall=clock)
    s.restore()
    assert s.save(force=True) and read(path)[0]["version"] == 2


def test_a_cut_or_bad_affinity_section_is_refused(tmp_path, clock):
    before, _ = affine(clock)
    path = tmp_path / "s"
    saved(before, path, clock)
    data = path.read_bytes()
    logs = []
    for cut in (1, AFF_RECORD, AFF_RECORD + 3):          # the last bytes are the affinity records
        path.write_bytes(data[:-cut])
        with pytest.raises(SnapshotError, match="affinity records truncated"):
            read(path)
        after = configured(clock)
        assert Snapshotter(after, path, META, clock=clock, wall=clock, log=logs.append).restore() == {}
        assert after.services.affinity(now_ms(clock)) == [] and len(after.services) == 0
    assert len(logs) == 3 and all("unreadable, ignored: affinity records truncated" in m for m in logs), logs
    # a version 2 header without its affinity section
    path.write_bytes(data)
    head, tables = read(path)
    del head["affinity"]
    path.write_bytes(MAGIC + json.dumps(head).encode() + b"\n" + tables["fdb"] + tables["conntrack"])
    with pytest.raises(SnapshotError, match="bad header: 'affinity'"):
        read(path)
    # a record size this build does not use, or records not a whole number of
    # them: that part is skipped, the rest restored
    for bad in ("size", "length"):
        path.write_bytes(data)
        snap = load(path)
        if bad == "size":
            snap["affinity"]["record"] = AFF_RECORD + 4
        else:
            snap["records"]["affinity"] = snap["records"]["affinity"][:-1]
        logs = []
        after = configured(clock)
        got = restore(after, snap, clock, "10.244.0.0/24", log=logs.append, wall=clock)
        assert "affinity" not in got and got["services"] == 1
        assert len(logs) == 1 and logs[0].startswith("snapshot: affinity not restored"), logs
        assert after.services.affinity(now_ms(clock)) == []


def test_maglev_table_size_survives_a_round_trip(tmp_path, clock):
    """A 4099-slot Maglev service comes back at 4099: the same backend for
    the same flows, by the table and by the frames (at 16381 some flows
    would go elsewhere)."""
    backends = [(A[0], 8080), (B[0], 8080), (C[0], 8080)]
    before = learned(clock)
    before.services.set(VIP2, 80, "TCP", backends, lb="maglev", maglev_size=4099)
    before.services.set(VIP, 80, "TCP", [], lb="maglev", maglev_size=251)     # no table yet, size kept
    path = tmp_path / "s"
    snap = saved(before, path, clock)
    assert {(s["vip"], s["maglev_size"]) for s in snap["services"]} == {(VIP2, 4099), (VIP, 251)}
    after = configured(clock)
    restore(after, load(path), clock, "10.244.0.0/24", log=pytest.fail, wall=clock)
    assert after.services.list() == before.services.list()
    assert after.services.get(VIP2, 80, "TCP")["maglev_size"] == 4099
    flows = range(0, 2000 * 0x9E3779B97F4A7C15, 0x9E3779B97F4A7C15)
    assert [after.services.maglev_choice(VIP2, 80, "TCP", f & (2**64 - 1)) for f in flows] == \
        [before.services.maglev_choice(VIP2, 80, "TCP", f & (2**64 - 1)) for f in flows]
    default = learned(clock)
    default.services.set(VIP2, 80, "TCP", backends, lb="maglev")
    assert any(default.services.maglev_choice(VIP2, 80, "TCP", f & (2**64 - 1)) !=
               before.services.maglev_choice(VIP2, 80, "TCP", f & (2**64 - 1)) for f in flows)
    port_of = {A[0]: A[2], B[0]: B[2], C[0]: C[2]}

    def sent(d, client, sport):
        [(port, out)] = d.process(tcp((client, A[1]), VIP2, sport, 80, "S"), A[2])
        assert port == port_of[Ether(out)[IP].dst]
        return Ether(out)[IP].dst
    flows = [(c, sp) for c in CLIENTS for sp in (30000, 30001, 30002)]
    got = [sent(after, c, sp) for c, sp in flows]
    assert got == [sent(before, c, sp) for c, sp in flows]
    assert got != [sent(default, c, sp) for c, sp in flows]
    assert len(set(got)) == 3


def mix64(x):
    m = 2**64 - 1
    x ^= x >> 33
    x = (x * 0xff51afd7ed558ccd) & m
    x ^= x >> 33
    x = (x * 0xc4ceb9fe1a85ec53) & m
    return x ^ (x >> 33)


def test_affinity_is_found_past_an_expired_neighbour(clock):
    """Entries are looked for in their whole probe window, as restore places
    them: a client whose entry sits after another client's that expired
    since keeps its backend (the probe used to stop at the expired one)."""
    def start(client, vip):
        key = (int(ipaddress.IPv4Address(vip)) << 32) | (80 << 16) | (6 << 8) | 1
        k = (int(ipaddress.IPv4Address(client)) << 32) | (mix64(key) & 0xffffffff) | 1
        return mix64(k) & 65535                  # the default table's 65536 slots
    clients = [f"10.244.{n >> 8}.{n & 255}" for n in range(256, 65536)]
    firsts = {start(c, VIP): c for c in clients}
    x, y = next((firsts[start(c, VIP2)], c) for c in clients if start(c, VIP2) in firsts)
    d = learned(clock)
    d.services.set(VIP, 80, "TCP", [(B[0], 8080), (C[0], 8080)], affinity_timeout=10)
    d.services.set(VIP2, 80, "TCP", [(B[0], 8080), (C[0], 8080)], affinity_timeout=600)
    AFF_PORT_VIP = pick(d, x, 20000, vip=VIP)           # x's entry takes the window's first slot
    pinned = pick(d, y, 20000)                          # y's goes to the next
    clock.advance(20)                                   # x's runs out
    hits = d.counters()["services"]["affinity_hits"]
    for sp in range(20001, 20021):
        assert pick(d, y, sp) == pinned
    assert d.counters()["services"]["affinity_hits"] == hits + 20
    assert AFF_PORT_VIP in (B[0], C[0])
