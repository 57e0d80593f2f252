"""`podnet capture NODE PORT -w FILE.pcap [-c N]`: the frames crossing one
port of a node, both directions, written as a standard pcap (dpkt's writer)
that tcpdump and Wireshark read. The agent copies them in its C loop into a
bounded buffer; this side drains it every POLL seconds."""
import time

from dataplane import cluster
from dataplane.agent import UPLINK_PORT
from dataplane.control import ControlError, request

POLL = 0.1


class CaptureError(ValueError):
    pass


def resolve_port(state, node, port):
    """A port number, a pod name on node, or "uplink"."""
    st = request(cluster.node_socket(state, node), "status")
    by_pod = {p["pod"]: p["port"] for p in st["ports"]}
    if port == "uplink":
        return UPLINK_PORT
    if port in by_pod:
        return by_pod[port]
    if port.isdigit() and (int(port) in by_pod.values() or int(port) == UPLINK_PORT):
        return int(port)
    raise CaptureError(f"node {node} has no port {port!r}; ports: "
                       + ", ".join([f"{p} ({n})" for n, p in by_pod.items()] + ["uplink"]))


def run(node, port, path, count=None, timeout=None, snaplen=65535, progress=None):
    """Capture until count frames, timeout seconds or Ctrl-C; returns (frames, lost)."""
    import dpkt
    if count is not None and count < 1:
        raise CaptureError(f"count must be at least 1, got {count}")
    state = cluster.require_state()
    sock = cluster.node_socket(state, node)
    pnum = resolve_port(state, node, port)
    request(sock, "capture_start", port=pnum, snaplen=snaplen)
    written = lost = 0
    deadline = time.monotonic() + timeout if timeout else None
    try:
        with open(path, "wb") as f:
            w = dpkt.pcap.Writer(f, snaplen=snaplen, linktype=dpkt.pcap.DLT_EN10MB, nano=True)

            def drain():
                nonlocal written, lost
                r = request(sock, "capture_read")
                lost = r["lost"]
                for fr in r["frames"]:
                    if count is not None and written >= count:
                        break
                    data = bytes.fromhex(fr["data"])
                    # Not w.writepkt(): it records the kept length as the wire
                    # length too (a frame cut to snaplen would claim to be
                    # snaplen bytes long) and takes the time as a float, which
                    # cannot hold nanoseconds since 1970. dpkt's own packer.
                    f.write(w._pack_hdr(fr["ts_ns"] // 10**9, fr["ts_ns"] % 10**9, len(data), fr["len"])
                            + data)
                    written += 1
                f.flush()
                if progress and r["frames"]:
                    progress(written)
            try:
                while count is None or written < count:
                    drain()
                    if deadline and time.monotonic() >= deadline:
                        break
                    time.sleep(POLL)
            except KeyboardInterrupt:
                # Ctrl-C: the agent still holds what it captured since the last
                # read (up to POLL s of frames); write that too, as tcpdump does.
                try:
                    if count is None or written < count:
                        drain()
                except (ControlError, KeyboardInterrupt):
                    pass
    finally:
        try:
            lost = request(sock, "capture_stop")["lost"]
        except ControlError:
            pass                         # the agent went away; its capture went with it
    return written, lost
