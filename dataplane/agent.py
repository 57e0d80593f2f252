"""The node agent: one process per node. Enters the node's namespace, opens
a TAP per pod and places it in the pod's namespace as eth0, loads the fast
path (ports, gateway, neighbours), then runs the C I/O loop and serves the
control socket between bursts.

    python -m dataplane agent CONFIG.json      (started by `podnet up`)
"""
import json
import signal
import sys
import time

from dataplane import netns
from dataplane.control import ControlServer
from fastpath import Dataplane
from fastpath.ioloop import IOLoop
from tap import Tap

AGE_EVERY = 1.0            # seconds between FDB aging sweeps
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
                            aging=float(cfg.get("aging", 300.0)))
        self.io = IOLoop(self.dp)
        self.taps = {}             # port -> Tap
        self.pods = {}             # port -> pod config
        self.server = None
        self.stop = False
        self.started = time.time()

    def setup(self):
        gw = self.cfg["gateway"]
        self.dp.gateway.configure(gw["ip"], gw["mac"], gw["subnet"])
        if self.vnet:
            self.dp.set_vnet_len(12)
        for port, pod in enumerate(self.cfg["pods"]):
            tap = Tap(f"tap{port}", vnet_hdr=self.vnet)
            self.taps[port] = tap
            tap.place(pod["netns"], mac=pod["mac"], ip=pod["ip"], prefixlen=pod["prefixlen"],
                      mtu=pod["mtu"], gateway=gw["ip"])
            self.dp.add_port(port)
            self.dp.gateway.add_neighbor(pod["ip"], pod["mac"])
            self.io.attach(port, tap.fileno())
            self.pods[port] = pod
        self.server = ControlServer(self.cfg["socket"], self.handle)
        for fd in self.server.fds():
            self.io.watch(fd)

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
        raise ValueError(f"unknown operation; expected one of ping, status, counters, fdb, neighbors")

    def status(self):
        t = next(iter(self.taps.values()), None)
        return {
            "node": self.node, "netns": self.cfg["netns"], "pid": __import__("os").getpid(),
            "uptime": round(time.time() - self.started, 1),
            "gateway": self.dp.gateway.info(),
            "vnet_hdr": self.dp.vnet_len, "offloads": t.offloads if t else 0,
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
                next_age = now + AGE_EVERY

    def close(self):
        if self.server:
            self.server.close()
        for tap in self.taps.values():
            tap.close()


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
