"""The real node Agent in this process, its ports on socketpairs (SEQPACKET
keeps frame boundaries, as a TAP does) instead of TAPs in namespaces: no
root needed, the clock injected. Used by the capture and control-socket
tests, which add what each drives on top."""
import socket
import threading

from conftest import FakeTap
from dataplane.agent import Agent

GW = {"ip": "10.244.0.1", "mac": "0a:58:0a:f4:00:01", "subnet": "10.244.0.0/24"}


class AgentNode:
    def __init__(self, tmp_path, clock, **cfg):
        cfg = {"node": "n1", "netns": "-", "socket": str(tmp_path / "n1.sock"), "vnet": False, "gateway": GW,
               "pods": [], "burst": 64, "fdb_capacity": 1024, "service_capacity": 1024,
               "conntrack_capacity": 1024, **cfg}
        self.agent = Agent(cfg, clock=clock)
        self.socket = cfg["socket"]
        self.agent.setup()
        self.peer = {}             # port -> the test's end of its socketpair
        self.thread = None
        self.crashed = []

    def attach(self, port, domain=0, pod=None, uplink=False):
        """A port on a socketpair, registered as the agent's own (a pod's TAP,
        or the uplink); returns the test's end."""
        a = self.agent
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        a.dp.add_port(port, domain=domain)
        a.io.attach(port, ours.fileno())
        if uplink:
            a.uplink_tap = FakeTap(ours)
        else:
            a.taps[port] = FakeTap(ours)
            if pod is not None:
                a.pods[port] = pod
        self.peer[port] = theirs
        return theirs

    def serve(self):
        """The agent's own loop in a thread, as `podnet up` runs it; the test
        fails at close() if the loop ever died."""
        def run():
            try:
                self.agent.run()
            except BaseException as e:
                self.crashed.append(e)
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def close(self):
        if self.thread:
            self.agent.stop = True
            self.thread.join(10)
            assert not self.thread.is_alive()
        self.agent.close()
        for s in self.peer.values():
            s.close()
        assert not self.crashed
