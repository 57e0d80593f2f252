"""podnet's Cython fast path. The control plane uses only what is exported here.

    dp = Dataplane(clock=...)       # slots, FDB, ports, counters
    dp.add_port(0); dp.add_port(1)
    dp.process([frame, ...], in_port=0) -> [(out_port, frame_bytes), ...]
"""
from fastpath.burst import Dataplane
from fastpath.counters import DROP_NAMES
from fastpath.fdb import Fdb, mac_bytes
from fastpath.parse import parse

__all__ = ["Dataplane", "DROP_NAMES", "Fdb", "mac_bytes", "parse"]
