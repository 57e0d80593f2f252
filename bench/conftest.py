"""Shared set-up for the micro benchmarks: 64-byte frames between 64 stations
on 4 ports, every station already learned (tables and frames in cache)."""
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from fastpath import Dataplane

NPORTS, NSTATIONS, BURST = 4, 64, 256


def mac(n):
    return f"02:00:00:00:{n >> 8:02x}:{n & 0xff:02x}"


def bridge_frames():
    """(frame, in_port) x 256: 60 bytes each (64 on the wire with the FCS)."""
    out = []
    for i in range(BURST):
        s = i % NSTATIONS
        d = (i * 7 + 3) % NSTATIONS
        if d % NPORTS == s % NPORTS:      # keep every frame forwardable
            d = (d + 1) % NSTATIONS
        f = bytes(Ether(src=mac(s), dst=mac(d)) / IP(src="10.0.0.1", dst="10.0.0.2")
                  / UDP(sport=1024 + i, dport=9) / (b"\x00" * 18))
        assert len(f) == 60
        out.append((f, s % NPORTS))
    return out


@pytest.fixture(scope="module")
def frames():
    return bridge_frames()


@pytest.fixture(scope="module")
def loaded_dp(frames):
    dp = Dataplane(nslots=BURST, slot_size=2048)
    for p in range(NPORTS):
        dp.add_port(p)
    for i, (f, p) in enumerate(frames):
        dp.load(i, f, p)
    dp.run_burst(0, BURST)             # learn every station (floods once)
    dp.run_burst(0, BURST)
    assert dp.counters()["bridge"]["flooded"] == 32
    dp.reset_counters()
    return dp
