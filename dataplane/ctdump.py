"""The `conntrack` control reply as a lazy sequence. Conntrack.dump() builds
one dict per connection in a single call: ~1.2 s of the agent's only
thread at 100k connections, all inside one wakeup of the forwarding loop.
Here the table is copied whole by export() (one C pass, 42 bytes a
connection: the same consistent view dump() gives) and the rows are decoded
from that copy only as the control socket takes them, a few at a time.

The rows are exactly dump()'s (tests/test_control_nonblocking.py compares
them on every state, protocol and flag)."""
import struct

from fastpath.conntrack import PROTOS, RECORD_SIZE, STATES

# conntrack.pyx's ct_rec_t: packed, native byte order
_REC = struct.Struct("=IIIIHHHBBBBQQ")
assert _REC.size == RECORD_SIZE, (_REC.size, RECORD_SIZE)
_ESTABLISHED = STATES.index("established")
CT_SNAT, CT_DEAD = 1, 2            # conntrack.pxd's flags
LIMIT = 100000                     # dump()'s default: at most this many rows


def _ip(v):
    return f"{v >> 24}.{v >> 16 & 255}.{v >> 8 & 255}.{v & 255}"


def rows(records, now_ms, limit=LIMIT):
    """dump(now_ms, limit)'s rows, one at a time, from export()'s records."""
    view = memoryview(records)[:limit * RECORD_SIZE]
    for cip, vip, bip, sip, cport, vport, bport, proto, state, flags, _, expires, packets in _REC.iter_unpack(view):
        yield {"proto": PROTOS.get(proto, str(proto)),
               "state": STATES[state] if proto == 6 else ("replied" if state == _ESTABLISHED else "unreplied"),
               "client": f"{_ip(cip)}:{cport}", "service": f"{_ip(vip)}:{vport}",
               "backend": f"{_ip(bip)}:{bport}",
               "snat": _ip(sip) if flags & CT_SNAT else None,
               "dead": bool(flags & CT_DEAD), "packets": packets,
               "expires_in": max(0, expires - now_ms) / 1000.0}
