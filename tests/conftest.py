"""Shared helpers: a Dataplane with an injected clock, scapy frame builders."""
import os

import pytest
from scapy.layers.l2 import Ether

from dataplane.testing import Clock  # noqa: F401  the toolkit's injected clock: tests move time, never sleep
from fastpath import Dataplane

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")



@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def dp(clock):
    """Four ports in bridge domain 0."""
    d = Dataplane(nslots=64, clock=clock)
    for p in range(4):
        d.add_port(p)
    return d


def mac(n):
    return f"02:00:00:00:{n >> 8:02x}:{n & 0xff:02x}"


def out_ports(result):
    return sorted(p for p, _ in result)


def dissect(result):
    return [(p, Ether(b)) for p, b in result]


class FakeTap:
    """A TAP stand-in for an Agent's ports: the loop's end of a socketpair
    (SOCK_DGRAM or SEQPACKET keep frame boundaries, as a TAP does)."""
    offloads = 0

    def __init__(self, sock):
        self.sock = sock

    def fileno(self):
        return self.sock.fileno()

    def filenos(self):
        return [self.sock.fileno()]

    def close(self):
        self.sock.close()


def require_root():
    """Netns tests need root and /dev/net/tun: skip on a developer box, fail in CI."""
    ok = os.geteuid() == 0 and os.path.exists("/dev/net/tun")
    if not ok:
        msg = "needs root and /dev/net/tun"
        if IN_CI:
            pytest.fail(msg + " (CI=true: netns tests must run)")
        pytest.skip(msg)
