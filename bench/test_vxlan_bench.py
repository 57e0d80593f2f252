"""VXLAN encap and decap, packets/s per stage on one core, 64- and 1500-byte
inner frames at burst 256 (frames and tables in cache). Each measured burst
runs the whole per-frame path (parse, gateway route, encap; or parse, decap,
parse inner, route, FDB) through Dataplane.run. Headers rewritten in place are
restored between bursts; that restore is timed alone in the same run and
subtracted ("net"), and reported too."""
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from fastpath import Dataplane

BURST, ITERS = 256, 400
GW_MAC, POD_MAC, REMOTE_GW = "0a:58:0a:f4:00:01", "0a:58:0a:f4:00:02", "0a:58:0a:f4:01:01"
NODE, PEER = ("172.30.250.1", "0a:5a:ac:1e:fa:01"), ("172.30.250.2", "0a:5a:ac:1e:fa:02")


def node():
    dp = Dataplane(nslots=BURST, slot_size=2048)
    dp.add_port(0)
    dp.add_port(1)
    dp.add_port(255, domain=4095)
    dp.gateway.configure("10.244.0.1", GW_MAC, "10.244.0.0/24")
    dp.gateway.add_neighbor("10.244.0.2", POD_MAC)
    dp.overlay.configure(255, NODE[0], NODE[1], mtu=1600)   # room for 1500-byte inner frames
    dp.overlay.set_routes([{"cidr": "10.244.1.0/24", "vtep": PEER[0], "inner_mac": REMOTE_GW,
                            "vtep_mac": PEER[1]}])
    dp.process(bytes(Ether(src=POD_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.244.0.2")), 0)
    return dp


def inner(size, src, dst, smac, dmac, i):
    pkt = Ether(src=smac, dst=dmac) / IP(src=src, dst=dst, ttl=64) / UDP(sport=1024 + i, dport=9)
    return bytes(pkt / (b"\0" * (size - len(pkt))))


def measure(benchmark, dp, stage, size, snap):
    for _ in range(3):
        dp.bench_stage(BURST, 50, snap)                       # warm
    restore = min(dp.bench_stage(BURST, ITERS, snap, run=False) for _ in range(5))
    benchmark.extra_info.update(stage=stage, impl="fastpath", burst=BURST, frame_bytes=size,
                                iters=ITERS, restore_s=restore)
    benchmark.pedantic(dp.bench_stage, args=(BURST, ITERS, snap), rounds=15, warmup_rounds=1)


@pytest.mark.parametrize("size", [64, 1500])
def test_encap(benchmark, size):
    dp = node()
    for i in range(BURST):
        dp.load(i, inner(size - 4, "10.244.0.2", "10.244.1.2", POD_MAC, GW_MAC, i), 0)
    dp.run_burst(0, BURST)
    assert dp.verdict(0) == (255, None) and Ether(dp.frame(0))[VXLAN].vni == 1
    dp.reset_counters()
    for i in range(BURST):
        dp.load(i, inner(size - 4, "10.244.0.2", "10.244.1.2", POD_MAC, GW_MAC, i), 0)
    benchmark.group = f"vxlan-{size}"
    measure(benchmark, dp, "vxlan_encap", size, 64)
    c = dp.counters()
    assert sum(c["drops"].values()) == 0 and c["overlay"]["encapsulated"] > 0


@pytest.mark.parametrize("size", [64, 1500])
def test_decap(benchmark, size):
    dp = node()
    def frame(i):
        body = inner(size - 4, "10.244.1.2", "10.244.0.2", REMOTE_GW, GW_MAC, i)
        return bytes(Ether(src=PEER[1], dst=NODE[1]) / IP(src=PEER[0], dst=NODE[0], flags="DF")
                     / UDP(sport=50000 + i, dport=4789) / VXLAN(vni=1) / body)
    for i in range(BURST):
        dp.load(i, frame(i), 255)
    dp.run_burst(0, BURST)
    assert dp.verdict(0) == (0, None)
    dp.reset_counters()
    for i in range(BURST):
        dp.load(i, frame(i), 255)
    benchmark.group = f"vxlan-{size}"
    measure(benchmark, dp, "vxlan_decap", size, 128)
    c = dp.counters()
    assert sum(c["drops"].values()) == 0 and c["overlay"]["decapsulated"] > 0
