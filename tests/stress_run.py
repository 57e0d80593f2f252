"""Workers and the control thread on shared tables at once, every frame's
verdict checked against a single-threaded twin.

    python tests/stress_run.py [--rounds N] [--workers 2] [--seed S]

Two (or more) worker threads each forward their own stream of frames through
their own Dataplane.worker() over one primary's tables, while the control
thread (this one) changes those tables in a loop: services set and removed
one by one and in bulk (Services.apply, checked to be visible whole),
the route table replaced, neighbours and a guard added and removed, the FDB
aged and flushed, conntrack flushed, dumped, exported, swept; counters,
affinity and FDB dumps read. The frames whose outcome the control churn does
not decide (bridged and routed pod traffic, ClusterIP SYNs to a Maglev
service whose conntrack entries fill the table and are evicted, data both
ways on established connections, VXLAN out and in, spoofed frames) run
through a twin Dataplane, alone, in the same order per worker: each worker's
outputs must equal the twin's frame by frame (the outer IPv4 id and
checksum of encapsulated frames aside: each worker counts its own ids).
Other frames (to services with ClientIP affinity that the churn changes)
run too, unchecked, for what they touch. Exit status 0 and "ok" when every
checked frame matched; built with ThreadSanitizer (tests/stress_tsan.py) the
same run must report no race."""
import argparse
import random
import sys
import threading
import time

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from fastpath import Dataplane

GW_IP, GW_MAC = "10.244.0.1", "0a:58:0a:f4:00:01"
NODE_IP, NODE_MAC = "172.30.250.1", "0a:5a:ac:1e:fa:01"
PEER_IP, PEER_MAC = "172.30.250.2", "0a:5a:ac:1e:fa:02"
REMOTE_GW_MAC = "0a:58:0a:f4:01:01"
UPLINK, UPLINK_DOMAIN = 255, 4095
NPODS = 6
PODS = [(f"10.244.0.{10 + p}", f"0a:58:0a:f4:00:{10 + p:02x}") for p in range(NPODS)]
VIP, VIP_AFF, VIP_CHURN = "10.96.0.10", "10.96.0.11", "10.96.0.12"
# Two services that one bulk apply swaps (one added, the other deleted): a
# burst with a frame to each must find exactly one of them, never both or
# neither (Services.apply publishes the whole change at once).
SWAP = ("10.96.0.21", "10.96.0.22")
ROUTE = {"cidr": "10.244.1.0/24", "vtep": PEER_IP, "inner_mac": REMOTE_GW_MAC, "vtep_mac": PEER_MAC,
         "name": "node-b"}
CHURN_ROUTES = [{"cidr": f"10.244.{2 + k}.0/24", "vtep": f"172.30.250.{3 + k}", "inner_mac": REMOTE_GW_MAC,
                 "vtep_mac": f"0a:5a:ac:1e:fa:{3 + k:02x}", "name": f"n{k}"} for k in range(4)]


class Clock:
    """Frozen: no entry expires behind the twin's back."""
    def __call__(self):
        return 1000.0


def configure(dp):
    for p in range(NPODS + 1):           # the last one: a spare port the churn guards
        dp.add_port(p)
    dp.add_port(UPLINK, domain=UPLINK_DOMAIN)
    dp.gateway.configure(GW_IP, GW_MAC, "10.244.0.0/24")
    dp.overlay.configure(UPLINK, NODE_IP, NODE_MAC, vni=1, port=4789, mtu=1500)
    dp.overlay.set_routes([ROUTE], local="10.244.0.0/24")
    for p, (ip, mac) in enumerate(PODS):
        dp.set_port_guard(p, mac, ip)
        dp.gateway.add_neighbor(ip, mac)
    backends = [(PODS[p][0], 8080) for p in range(3, NPODS)]
    dp.services.set(VIP, 80, "TCP", backends, lb="maglev", maglev_size=251)
    dp.services.set(VIP_AFF, 80, "TCP", backends, affinity_timeout=60)
    dp.services.set(SWAP[0], 80, "TCP", backends)
    # every pod known to the bridge before anything is compared
    for p, (ip, mac) in enumerate(PODS):
        dp.process(bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=mac, psrc=ip, pdst=GW_IP)), p)


def streams(nworkers, per_worker, seed):
    """Per worker: [(port, frame bytes, checked)], and the established
    connections each worker's data frames use (made in setup, both sides)."""
    rnd = random.Random(seed)
    out, established = [], []
    for w in range(nworkers):
        # worker w sends from pods w*2 % 3 .. (clients 0..2), backends 3..5 answer
        client = w % 3
        cip, cmac = PODS[client]
        conns = []
        for k in range(8):
            cport = 30000 + w * 1000 + k
            conns.append(cport)
        established.append((client, conns))
        s = []
        for n in range(per_worker):
            kind = rnd.randrange(10)
            if kind == 0:        # bridged: client to another pod's MAC
                dst = rnd.choice([q for q in range(NPODS) if q != client])
                f = Ether(src=cmac, dst=PODS[dst][1]) / IP(src=cip, dst=PODS[dst][0]) / UDP(sport=5000, dport=5001) / b"l2"
                s.append((client, bytes(f), True))
            elif kind == 1:      # routed through the gateway
                dst = rnd.choice([q for q in range(NPODS) if q != client])
                f = Ether(src=cmac, dst=GW_MAC) / IP(src=cip, dst=PODS[dst][0], ttl=9) / UDP(sport=5002, dport=5003) / b"l3"
                s.append((client, bytes(f), True))
            elif kind == 2:      # a new ClusterIP flow (SYN) to the Maglev service: fills conntrack
                sport = 1024 + (w * 20000 + n) % 60000
                f = Ether(src=cmac, dst=GW_MAC) / IP(src=cip, dst=VIP) / TCP(sport=sport, dport=80, flags="S", seq=n)
                s.append((client, bytes(f), True))
            elif kind == 3:      # data on an established connection, client -> service
                cport = rnd.choice(conns)
                f = Ether(src=cmac, dst=GW_MAC) / IP(src=cip, dst=VIP) / TCP(sport=cport, dport=80, flags="A", seq=n) / b"req"
                s.append((client, bytes(f), True))
            elif kind == 4:      # encapsulated toward the other node
                f = Ether(src=cmac, dst=GW_MAC) / IP(src=cip, dst="10.244.1.7") / UDP(sport=5004, dport=5005) / b"vx"
                s.append((client, bytes(f), True))
            elif kind == 5:      # from the other node, for a local pod
                dst = rnd.randrange(NPODS)
                inner = Ether(src=REMOTE_GW_MAC, dst=GW_MAC) / IP(src="10.244.1.7", dst=PODS[dst][0], ttl=20) / UDP(sport=5006, dport=5007) / b"in"
                f = (Ether(src=PEER_MAC, dst=NODE_MAC) / IP(src=PEER_IP, dst=NODE_IP) / UDP(sport=49200, dport=4789)
                     / VXLAN(vni=1) / inner)
                s.append((UPLINK, bytes(f), True))
            elif kind == 6:      # spoofed source IP: dropped and counted
                f = Ether(src=cmac, dst=GW_MAC) / IP(src="10.244.0.99", dst=PODS[3][0]) / UDP() / b"spoof"
                s.append((client, bytes(f), True))
            elif kind == 7:      # affinity service: the churn decides (unchecked)
                sport = 1024 + (w * 20000 + n) % 60000
                f = Ether(src=cmac, dst=GW_MAC) / IP(src=cip, dst=VIP_AFF) / TCP(sport=sport, dport=80, flags="S")
                s.append((client, bytes(f), False))
            elif kind == 9:      # one burst, an ACK to each SWAP service: exactly one RST back
                pair = tuple(bytes(Ether(src=cmac, dst=GW_MAC) / IP(src=cip, dst=v)
                                   / TCP(sport=20000 + w, dport=80, flags="A")) for v in SWAP)
                s.append((client, pair, "pair"))
            else:                # the churned service: present or not (unchecked)
                sport = 1024 + (w * 20000 + n) % 60000
                f = Ether(src=cmac, dst=GW_MAC) / IP(src=cip, dst=VIP_CHURN) / UDP(sport=sport, dport=53) / b"q"
                s.append((client, bytes(f), False))
        out.append(s)
    return out, established


def establish(dp, established):
    """Each worker's connections to VIP, answered (so never evicted), each
    after 40 unanswered ones: spread over the table, no eviction scan of 8
    finds only established entries (it would refuse the new flow)."""
    n = 0
    for client, conns in established:
        cip, cmac = PODS[client]
        for cport in conns:
            for j in range(40):
                n += 1
                dp.process(bytes(Ether(src=cmac, dst=GW_MAC) / IP(src=cip, dst=VIP)
                                 / TCP(sport=45000 + n, dport=80, flags="S")), client)
            syn = Ether(src=cmac, dst=GW_MAC) / IP(src=cip, dst=VIP) / TCP(sport=cport, dport=80, flags="S")
            [(port, fwd)] = dp.process(bytes(syn), client)
            f = Ether(fwd)
            back = (Ether(src=PODS[port][1], dst=GW_MAC) / IP(src=f[IP].dst, dst=cip)
                    / TCP(sport=8080, dport=cport, flags="SA"))
            assert len(dp.process(bytes(back), port)) == 1, "SYN-ACK not reverse-NATed in setup"


def normalize(frames):
    """Outputs with the outer IPv4 id and checksum of VXLAN frames zeroed."""
    out = []
    for port, f in frames:
        if port == UPLINK and len(f) > 50 and f[12:14] == b"\x08\x00" and f[23] == 17:
            f = f[:18] + b"\0\0" + f[20:24] + b"\0\0" + f[26:]
        out.append((port, f))
    return out


def churn(dp, stop, stats):
    """The control thread's side: changes and reads of every shared table."""
    rnd = random.Random(7)
    backends = [(PODS[p][0], 8080) for p in range(3, NPODS)]
    spare_ip, spare_mac = "10.244.0.200", "0a:58:0a:f4:00:c8"
    while not stop.is_set():
        k = stats["rounds"]
        # one bulk change: the SWAP services trade places, with 8 others added and gone
        here, gone = SWAP[k % 2], SWAP[(k + 1) % 2]
        # (8 others: made in place under one lock hold; 70: a new slot array swapped in)
        extra = 70 if k % 4 < 2 else 8
        dp.services.apply([(gone, 80, "TCP", backends)] + [(f"10.96.2.{j}", 80, "UDP", backends, "maglev", 0, 251)
                                                         for j in range(extra) if k % 2],
                          [(here, 80, "TCP")] + [(f"10.96.2.{j}", 80, "UDP") for j in range(70) if not k % 2])
        dp.services.set(VIP_CHURN, 53, "UDP", backends[: 1 + k % 3], lb="random" if k % 2 else "maglev")
        dp.services.set(VIP_AFF, 80, "TCP", backends[k % 3:] or backends, affinity_timeout=60)
        for j in range(5):
            dp.services.set(f"10.96.1.{j}", 80, "TCP", backends, lb="maglev", maglev_size=251)
        if k % 2:
            dp.services.remove(VIP_CHURN, 53, "UDP")
        for j in range(5):
            dp.services.remove(f"10.96.1.{j}", 80, "TCP")
        dp.overlay.set_routes([ROUTE] + CHURN_ROUTES[: k % 5], local="10.244.0.0/24")
        dp.overlay.routes()
        dp.gateway.add_neighbor(spare_ip, spare_mac)
        dp.gateway.neighbors()
        dp.gateway.remove_neighbor(spare_ip)
        dp.set_port_guard(NPODS, spare_mac, spare_ip)
        dp.clear_port_guard(NPODS)
        dp.fdb.add_static("0a:58:0a:f4:00:fe", NPODS, domain=0)
        dp.fdb.delete("0a:58:0a:f4:00:fe")
        dp.fdb.dump()
        dp.fdb.export()
        dp.age()
        dp.conntrack.flush(vip=VIP_CHURN)
        dp.conntrack.flush(vip=VIP_AFF)
        dp.conntrack_dump() if k % 4 == 0 else None
        dp.conntrack.export()
        dp.conntrack_gc()
        dp.services.export_affinity(0)
        dp.services.affinity(0)
        dp.counters()
        stats["rounds"] += 1
        if rnd.random() < 0.3:
            time.sleep(0)              # let the workers' Python parts in


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=3000, help="frames per worker")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--burst", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=20,
                    help="control rounds to run at least (the workers replay their streams meanwhile)")
    ap.add_argument("--time-limit", type=float, default=120.0)
    a = ap.parse_args()
    clock = Clock()
    primary = Dataplane(nslots=64, slot_size=2048, clock=clock, conntrack_capacity=512,
                        service_capacity=256)
    configure(primary)
    workers = [primary.worker() for _ in range(a.workers)]
    plan, established = streams(a.workers, a.frames, a.seed)
    establish(primary, established)
    # the twins: one per worker, so each replays exactly one worker's stream
    twins = []
    for w in range(a.workers):
        t = Dataplane(nslots=64, slot_size=2048, clock=clock, conntrack_capacity=512, service_capacity=256)
        configure(t)
        establish(t, established)
        twins.append(t)
    expected = []
    for w, s in enumerate(plan):
        exp = []
        for i in range(0, len(s), a.burst):
            for port, f, checked in s[i:i + a.burst]:
                got = normalize(twins[w].process(f, port)) if checked is True else None
                exp.append(got)
        expected.append(exp)
    mismatches, done = [], [0] * a.workers
    stop, stats = threading.Event(), {"rounds": 0}

    deadline = time.monotonic() + a.time_limit

    def work(w):
        # Replayed until the control thread has done its rounds: a replayed
        # SYN is a retransmission (the same backend, found or picked again
        # by Maglev after an eviction), everything else is the same frame.
        d = workers[w]
        passes = 0
        while passes == 0 or (stats["rounds"] < a.rounds and time.monotonic() < deadline):
            for n, (port, f, checked) in enumerate(plan[w]):
                if checked == "pair":
                    got = d.process(list(f), port)
                    if len(got) != 1 or got[0][0] != port or not Ether(got[0][1])[TCP].flags.R:
                        mismatches.append((w, n, port, f[0].hex(), got, "one RST (one SWAP service present)"))
                    done[w] += 2
                    continue
                got = normalize(d.process(f, port))
                if checked is True and got != expected[w][n]:
                    mismatches.append((w, n, port, f.hex(), got, expected[w][n]))
                done[w] += 1
            passes += 1
    threads = [threading.Thread(target=work, args=(w,)) for w in range(a.workers)]
    ctl = threading.Thread(target=churn, args=(primary, stop, stats))
    ctl.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    ctl.join()
    c = primary.counters()
    checked = sum(1 for s in plan for _, _, ch in s if ch is True)
    print(f"frames {sum(done)} (per pass {len(plan[0])}/worker, checked {checked}), control rounds {stats['rounds']}, "
          f"conntrack evictions {c['conntrack']['evictions']}, spoof_ip {c['drops']['spoof_ip']}, "
          f"lock {primary.lock_stats()}")
    if mismatches:
        for m in mismatches[:5]:
            print("MISMATCH worker %d frame %d port %d\n  in  %s\n  got %r\n  want %r" % m)
        print(f"{len(mismatches)} mismatches")
        return 1
    if stats["rounds"] < a.rounds:
        print(f"the control thread ran {stats['rounds']} rounds of {a.rounds} in the time limit")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
