"""Table floods in memory: the FDB under a million random source MACs and
conntrack under a SYN flood stay within their bounds, established traffic
keeps its path during and after, the anti-spoofing guard stops a MAC flood
before it reaches the FDB, and a full conntrack table evicts like netfilter's
early_drop (never an established connection). Frames are patched in one
bytearray and run in bursts of 256 through load/run_burst, so a million
frames take seconds."""
import random

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

from fastpath import Dataplane

GW_IP, GW_MAC = "10.244.0.1", "0a:58:0a:f4:00:01"
A = ("10.244.0.2", "0a:58:0a:f4:00:02", 0)      # client pod / flooding pod
B = ("10.244.0.3", "0a:58:0a:f4:00:03", 1)      # backend pod
C = ("10.244.0.4", "0a:58:0a:f4:00:04", 2)      # attacker pod (SYN flood)
VIP = "10.96.0.10"
BURST = 256


def make(clock, **kw):
    dp = Dataplane(nslots=BURST, clock=clock, service_capacity=64, **kw)
    for _, _, p in (A, B, C):
        dp.add_port(p)
    dp.gateway.configure(GW_IP, GW_MAC, "10.244.0.0/24")
    for ip, mac, port in (A, B, C):                 # IPAM neighbours, and the bridge learns each pod
        dp.gateway.add_neighbor(ip, mac)
        dp.process(bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=mac, psrc=ip, pdst=GW_IP)), port)
    dp.services.seed(1)
    dp.services.set(VIP, 80, "TCP", [(B[0], 8080)])
    dp.services.set(VIP, 53, "UDP", [(B[0], 5353)])
    dp.reset_counters()
    return dp


# ---- the FDB under a MAC flood ----------------------------------------------

N_MACS = 1_000_000
FDB_CAPACITY = 4096


def random_macs(n, seed):
    """n unicast source MACs, 6 bytes each, deterministic."""
    raw = bytearray(random.Random(seed).randbytes(6 * n))
    raw[0::6] = bytes((b & 0xFE) | 0x02 for b in raw[0::6])       # unicast, locally administered
    return raw


def mac_flood(dp, macs, legit, check):
    """Flood from port A: every frame a new source MAC, to B. Each burst ends
    with one legitimate frame (frame bytes, in_port) whose verdict `check`
    asserts. Returns the number of flood frames."""
    flood = bytearray(bytes(Ether(src=A[1], dst=B[1]) / IP(src=A[0], dst=B[0]) / UDP(sport=7, dport=9) / (b"x" * 18)))
    n = len(macs) // 6
    sent = 0
    b = 0
    while sent < n:
        k = min(BURST - 1, n - sent)
        for j in range(k):
            o = 6 * (sent + j)
            flood[6:12] = macs[o:o + 6]
            dp.load(j, flood, A[2])
        frame, port = legit[b % len(legit)]
        dp.load(k, frame, port)
        dp.run_burst(0, k + 1)
        check(dp.verdict(k), port)
        sent += k
        b += 1
    return sent


def pod_traffic():
    a_to_b = bytes(Ether(src=A[1], dst=B[1]) / IP(src=A[0], dst=B[0]) / UDP(sport=1000, dport=2000) / b"a")
    b_to_a = bytes(Ether(src=B[1], dst=A[1]) / IP(src=B[0], dst=A[0]) / UDP(sport=2000, dport=1000) / b"b")
    return [(a_to_b, A[2]), (b_to_a, B[2])]


def forwarded(verdict, in_port):
    want = B[2] if in_port == A[2] else A[2]
    assert verdict == (want, None), verdict                # to its port: known, not flooded


def test_mac_flood_keeps_the_fdb_bounded_and_pods_forwarded(clock):
    dp = make(clock, fdb_capacity=FDB_CAPACITY)
    learned = dp.counters()["fdb"]["entries"]               # the three pods
    sent = mac_flood(dp, random_macs(N_MACS, 1), pod_traffic(), forwarded)
    assert sent == N_MACS
    c = dp.counters()
    fdb = c["fdb"]
    assert fdb["capacity"] == FDB_CAPACITY and fdb["entries"] == FDB_CAPACITY
    assert fdb["learned"] == FDB_CAPACITY and fdb["full"] == N_MACS - (FDB_CAPACITY - learned)   # refused, counted
    # after the flood: the pods still reach each other directly, both ways
    for frame, port in pod_traffic():
        [(out, _)] = dp.process(frame, port)
        assert out == (B[2] if port == A[2] else A[2])
    assert {e["mac"] for e in dp.fdb_dump()} >= {A[1], B[1], C[1]}


def test_guard_stops_a_mac_flood_before_the_fdb(clock):
    dp = make(clock, fdb_capacity=FDB_CAPACITY)
    dp.set_port_guard(A[2], A[1], A[0])
    entries = dp.counters()["fdb"]["entries"]
    sent = mac_flood(dp, random_macs(N_MACS, 2), pod_traffic(), forwarded)
    c = dp.counters()
    assert c["drops"]["spoof_mac"] == sent == N_MACS
    assert sum(c["drops"].values()) == N_MACS                                # nothing else dropped
    assert c["fdb"]["entries"] == entries and c["fdb"]["full"] == 0          # the FDB did not grow
    assert c["bridge"]["flooded"] == 0                                       # nor did anything flood


# ---- conntrack: eviction policy and a SYN flood ------------------------------

def tcp(src, sport, flags, dst=VIP, dport=80, eth_src=None, eth_dst=GW_MAC, payload=b""):
    return bytes(Ether(src=eth_src or src[1], dst=eth_dst) / IP(src=src[0], dst=dst)
                 / TCP(sport=sport, dport=dport, flags=flags, seq=1, ack=1 if "A" in flags else 0) / payload)


def establish(dp, sport, client=A):
    """SYN through the ClusterIP, SYN-ACK back from the backend (un-NATed on
    the bridge), ACK: an established connection."""
    [(port, out)] = dp.process(tcp(client, sport, "S"), client[2])
    assert port == B[2] and Ether(out)[TCP].dport == 8080
    [(port, out)] = dp.process(tcp(B, 8080, "SA", dst=client[0], dport=sport, eth_dst=client[1]), B[2])
    assert port == client[2] and (Ether(out)[IP].src, Ether(out)[TCP].sport) == (VIP, 80)
    [(port, out)] = dp.process(tcp(client, sport, "A"), client[2])
    assert port == B[2] and Ether(out)[TCP].dport == 8080


def udp(sport, reply=False):
    if reply:
        return bytes(Ether(src=B[1], dst=A[1]) / IP(src=B[0], dst=A[0]) / UDP(sport=5353, dport=sport) / b"r")
    return bytes(Ether(src=A[1], dst=GW_MAC) / IP(src=A[0], dst=VIP) / UDP(sport=sport, dport=53) / b"q")


def conns(dp):
    return {int(c["client"].split(":")[1]): c["state"] for c in dp.conntrack_dump()}


def test_full_conntrack_evicts_early_never_established(clock):
    """Capacity 16: 4 TCP established + 4 UDP replied fill slots 0-7 (the
    first scan window), then a closing TCP connection, an unreplied UDP flow
    and SYN-only ones. Inserts into the full table evict the evictable entry
    closest to expiry in the window at the hand, or fail if there is none."""
    dp = make(clock, conntrack_capacity=16)
    for sp in range(1000, 1004):
        establish(dp, sp)
    for sp in range(2000, 2004):
        dp.process(udp(sp), A[2])
        dp.process(udp(sp, reply=True), B[2])
    establish(dp, 3000)
    dp.process(tcp(A, 3000, "FA"), A[2])                    # closing: FIN seen, expires in 120 s
    clock.advance(1)
    dp.process(udp(4000), A[2])                             # unreplied UDP: expires in 30 s
    for sp in range(5000, 5006):
        dp.process(tcp(A, sp, "S"), A[2])                   # SYN only: expire in 120 s (1 s later)
    assert len(dp.conntrack) == 16
    established = {sp: s for sp, s in conns(dp).items() if sp < 3000}
    assert set(established.values()) == {"established", "replied"}
    dp.reset_counters()

    def new_syn(sp):
        return dp.process(tcp(A, sp, "S"), A[2])

    assert new_syn(6000) == []                              # window 0-7: all established, refused
    assert dp.counters()["drops"]["conntrack_full"] == 1
    assert [p for p, _ in new_syn(6001)] == [B[2]]          # window 8-15: the unreplied UDP goes first
    assert 4000 not in conns(dp) and conns(dp)[6001] == "new"
    assert new_syn(6002) == []                              # the hand is back at 0-7
    assert [p for p, _ in new_syn(6003)] == [B[2]]          # then the FIN one (expires before the SYNs)
    assert 3000 not in conns(dp)
    ct = dp.counters()["conntrack"]
    assert (ct["evictions"], ct["insert_failed"], ct["entries"]) == (2, 2, 16)
    assert dp.counters()["drops"]["conntrack_full"] == 2
    assert {sp: s for sp, s in conns(dp).items() if sp < 3000} == established     # untouched
    # entries past their timeout may go too, counted as expired
    dp.conntrack.set_timeouts({"tcp_established": 5, "udp_stream": 5})
    for sp in range(1000, 1004):
        dp.process(tcp(A, sp, "A"), A[2])                   # refreshed: expire in 5 s
    for sp in range(2000, 2004):
        dp.process(udp(sp, reply=True), B[2])
    clock.advance(6)
    assert [p for p, _ in new_syn(6004)] == [B[2]]          # window 0-7 again: all expired now
    assert 1000 not in conns(dp)
    ct = dp.counters()["conntrack"]
    assert (ct["evictions"], ct["expired"], ct["entries"]) == (2, 1, 16)


SYN_FLOOD = 100_000


def test_syn_flood_keeps_conntrack_bounded_and_established_flows_dnated(clock):
    cap = 1024
    dp = make(clock, conntrack_capacity=cap)
    establish(dp, 40000)
    rng = random.Random(3)
    syn = bytearray(tcp(C, 1, "S", eth_src=C[1]))
    ack = tcp(A, 40000, "A", payload=b"GET /")
    reply = tcp(B, 8080, "A", dst=A[0], dport=40000, eth_dst=A[1], payload=b"200 OK")
    sent = 0
    while sent < SYN_FLOOD:
        k = min(BURST - 2, SYN_FLOOD - sent)
        for j in range(k):
            syn[26:30] = rng.randbytes(4)                   # random client address
            syn[34:36] = rng.randbytes(2)                   # and port
            dp.load(j, syn, C[2])
        dp.load(k, ack, A[2])                               # the established connection, both ways
        dp.load(k + 1, reply, B[2])
        dp.run_burst(0, k + 2)
        assert dp.verdict(k) == (B[2], None)
        e = Ether(dp.frame(k))
        assert (e[IP].dst, e[TCP].dport, bytes(e[TCP].payload)) == (B[0], 8080, b"GET /")     # DNATed
        assert dp.verdict(k + 1) == (A[2], None)
        e = Ether(dp.frame(k + 1))
        assert (e[IP].src, e[TCP].sport) == (VIP, 80)                                         # un-NATed
        sent += k
    c = dp.counters()
    ct = c["conntrack"]
    assert ct["capacity"] == cap and ct["entries"] <= cap
    assert ct["evictions"] == SYN_FLOOD - (cap - 1)         # every SYN got in by evicting another
    assert c["drops"]["conntrack_full"] == 0
    # after the flood the connection is still there and still DNATed
    assert [c for c in dp.conntrack_dump() if c["client"] == f"{A[0]}:40000"][0]["state"] == "established"
    [(port, out)] = dp.process(ack, A[2])
    assert port == B[2] and Ether(out)[TCP].dport == 8080


def test_eviction_spares_connections_owed_a_reset(clock):
    """Connections whose backend left (marked so their next segment gets a
    RST) may not go, though not established and closest to expiry: a full
    table takes the closed, the unreplied and the closing ones around them,
    and each dead one still gets its RST afterwards."""
    dp = make(clock, conntrack_capacity=16)
    dp.services.set(VIP, 81, "TCP", [(C[0], 8080)])         # its backend will leave
    t0 = clock()
    # slots 0-2, at t0: to VIP:81, two SYN-only and one closing (FIN): expire at t0+120
    for sp in (100, 101):
        assert [p for p, _ in dp.process(tcp(A, sp, "S", dport=81), A[2])] == [C[2]]
    dp.process(tcp(A, 102, "S", dport=81), A[2])
    dp.process(tcp(C, 8080, "SA", dst=A[0], dport=102, eth_dst=A[1]), C[2])
    dp.process(tcp(A, 102, "FA", dport=81), A[2])
    dp.services.set(VIP, 81, "TCP", [])
    assert dp.conntrack.flush(vip=VIP, vport=81, proto=6, mark_tcp_dead=True) == (0, 3)
    # slot 3: closing (FIN), expires t0+220; slot 4: unreplied UDP, t0+130;
    # slot 5: closed by a RST, t0+121 -- each later than the dead ones
    clock.advance(100)
    establish(dp, 3000)
    dp.process(tcp(A, 3000, "FA"), A[2])
    dp.process(udp(4000), A[2])
    clock.advance(11)
    establish(dp, 3001)
    dp.process(tcp(A, 3001, "R"), A[2])
    # slots 6-15: established
    for sp in range(1000, 1010):
        establish(dp, sp)
    assert len(dp.conntrack) == 16
    st = conns(dp)
    assert [st[p] for p in (100, 101, 102, 3000, 4000, 3001)] == ["new", "new", "fin_wait", "fin_wait",
                                                                  "unreplied", "closed"]
    dead = {int(c["client"].split(":")[1]) for c in dp.conntrack_dump() if c["dead"]}
    assert dead == {100, 101, 102}
    clock.advance(1)
    dp.reset_counters()

    def new_syn(sp):
        return [p for p, _ in dp.process(tcp(A, sp, "S"), A[2])]

    assert new_syn(6000) == [B[2]] and 3001 not in conns(dp)        # window 0-7: the RST one, not a dead one
    assert new_syn(6001) == []                                      # window 8-15: all established
    assert new_syn(6002) == [B[2]] and 4000 not in conns(dp)        # then the unreplied UDP flow
    assert new_syn(6003) == []
    assert new_syn(6004) == [B[2]] and 3000 not in conns(dp)        # then the closing one
    ct = dp.counters()["conntrack"]
    assert (ct["evictions"], ct["insert_failed"], ct["expired"], ct["entries"]) == (3, 2, 0, 16)
    assert {int(c["client"].split(":")[1]) for c in dp.conntrack_dump() if c["dead"]} == dead
    # what they are kept for: the next segment of each is answered with a RST from the ClusterIP
    for sp in sorted(dead):
        [(port, out)] = dp.process(tcp(A, sp, "A", dport=81, payload=b"more"), A[2])
        e = Ether(out)
        assert port == A[2] and "R" in e[TCP].flags and (e[IP].src, e[TCP].sport, e[TCP].dport) == (VIP, 81, sp)
    assert not {int(c["client"].split(":")[1]) for c in dp.conntrack_dump()} & dead


# ---- lock striping: conntrack shards ------------------------------------------

def shard_of(cport, nsh):
    """fastpath/conntrack.pxd ct_shard, restated."""
    return (((cport * 0x9E3779B1) & 0xFFFFFFFF) >> 16) & (nsh - 1)


def test_conntrack_shards_split_capacity_and_keep_both_tuples_together(clock):
    """A 1,024-connection table is 4 shards of 256, picked by the client
    port. Connections in every shard are DNATed and their replies un-NATed
    (both tuples found in one shard, also a hairpin's); a shard filled with
    established connections refuses a new one, counted, while a client port
    of another shard still gets in; flush, dump, export and restore see every
    shard."""
    dp = make(clock, conntrack_capacity=1024)
    assert dp.counters()["conntrack"]["shards"] == 4
    by_shard = {s: [p for p in range(1024, 40000) if shard_of(p, 4) == s] for s in range(4)}
    for s in range(4):                               # both directions work in every shard
        establish(dp, by_shard[s][0])
    dp.services.set(VIP, 81, "TCP", [(A[0], 8081)])  # hairpin: A is its own backend
    hp = by_shard[3][1]
    [(port, out)] = dp.process(tcp(A, hp, "S", dport=81), A[2])
    e = Ether(out)
    assert port == A[2] and (e[IP].src, e[IP].dst, e[TCP].dport) == (GW_IP, A[0], 8081)
    [(port, out)] = dp.process(tcp(A, 8081, "SA", dst=GW_IP, dport=hp, eth_dst=GW_MAC), A[2])
    e = Ether(out)
    assert port == A[2] and (e[IP].src, e[IP].dst, e[TCP].sport) == (VIP, A[0], 81)
    # fill shard 0 to its 256 with established connections
    for sp in by_shard[0][1:256]:
        establish(dp, sp)
    assert dp.counters()["conntrack"]["entries"] == 4 + 1 + 255
    dp.reset_counters()
    assert dp.process(tcp(A, by_shard[0][256], "S"), A[2]) == []      # shard 0 full, nothing evictable
    c = dp.counters()
    assert c["drops"]["conntrack_full"] == 1 and c["conntrack"]["insert_failed"] == 1
    establish(dp, by_shard[1][1])                                      # shard 1 has room
    assert len(dp.conntrack_dump()) == 261
    records = dp.conntrack.export()
    fresh = make(clock, conntrack_capacity=1024)
    assert fresh.conntrack.restore(records, 0, 0) == (261, 0)
    assert conns(fresh) == conns(dp)
    [(port, out)] = fresh.process(tcp(B, 8080, "A", dst=A[0], dport=by_shard[2][0], eth_dst=A[1]), B[2])
    assert port == A[2] and Ether(out)[TCP].sport == 80                # restored into the right shard
    assert dp.conntrack.flush(vip=VIP, vport=80) == (260, 0)
    assert list(conns(dp)) == [hp]
    dp.conntrack.clear()
    assert len(dp.conntrack) == 0
    [(port, out)] = dp.process(tcp(B, 8080, "A", dst=A[0], dport=by_shard[1][1], eth_dst=A[1]), B[2])
    assert port == A[2] and Ether(out)[TCP].sport == 8080              # forgotten: not un-NATed
