"""A scapy-driven tour of the learning bridge: no kernel, no root.

Four ports in one bridge domain; stations talk, the bridge floods what it does
not know, learns, then forwards; a station moves; time passes and entries age.
Prints what came out of each step, the FDB and the counters."""
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import ARP, Ether

from dataplane.table import FDB_COLUMNS, PORT_COLUMNS, counters_rows, port_rows, render
from fastpath import Dataplane

STATIONS = {"pod-a": ("02:00:0a:f4:00:02", "10.244.0.2", 0),
            "pod-b": ("02:00:0a:f4:00:03", "10.244.0.3", 1),
            "pod-c": ("02:00:0a:f4:00:04", "10.244.0.4", 2),
            "gw": ("02:00:0a:f4:00:01", "10.244.0.1", 3)}


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def run(out=print):
    clock = FakeClock()
    dp = Dataplane(nslots=64, aging=300, clock=clock)
    for _, _, port in STATIONS.values():
        dp.add_port(port)

    def step(title, frame, port):
        res = dp.process(bytes(frame), port)
        where = ", ".join(str(p) for p, _ in res) or "dropped"
        out(f"  {title:58s} in port {port} -> {where}")

    a, b, c = STATIONS["pod-a"], STATIONS["pod-b"], STATIONS["pod-c"]
    out("podnet bridge demo: 4 ports, bridge domain 0, aging 300 s (injected clock)\n")
    step("pod-a ARP who-has 10.244.0.3 (broadcast: flood)",
         Ether(src=a[0], dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=a[1], pdst=b[1], hwsrc=a[0]), a[2])
    step("pod-b ARP reply to pod-a (pod-a learned: unicast)",
         Ether(src=b[0], dst=a[0]) / ARP(op=2, psrc=b[1], pdst=a[1], hwsrc=b[0], hwdst=a[0]), b[2])
    step("pod-a ping pod-b (both learned)",
         Ether(src=a[0], dst=b[0]) / IP(src=a[1], dst=b[1]) / ICMP(), a[2])
    step("pod-c ping unknown MAC (unknown unicast: flood)",
         Ether(src=c[0], dst="02:00:00:00:99:99") / IP(src=c[1], dst="10.244.0.99") / ICMP(), c[2])
    step("pod-b moves to port 2, sends a frame",
         Ether(src=b[0], dst=a[0]) / IP(src=b[1], dst=a[1]) / ICMP(type=0), 2)
    step("pod-a ping pod-b (follows the move)",
         Ether(src=a[0], dst=b[0]) / IP(src=a[1], dst=b[1]) / ICMP(), a[2])
    step("runt frame (10 bytes)", Ether(src=a[0], dst=b[0]).build()[:10], a[2])

    out("\nFDB:")
    out(render(dp.fdb_dump(), FDB_COLUMNS))
    clock.t += 301
    aged = dp.age()
    out(f"\n301 s later the aging sweep removed {aged} entries; FDB has {len(dp.fdb)}.")
    c = dp.counters()
    out("\nPorts:")
    out(render(port_rows(c), PORT_COLUMNS))
    out("\nCounters:")
    out(render(counters_rows(c), [("counter", "counter"), ("value", "value")]))
    return dp
