"""`podnet trace`: one packet through the cluster, decision by decision.

The frame is built (or read from a pcap) as the pod would send it, then handed
to its node's agent, whose fast path runs it with tracing on (in a forked copy
unless --commit, so live tables are untouched). A frame the node encapsulates
toward another podnet node is handed to that node's agent in turn, as its
uplink would receive it, so a cross-node flow shows both halves.
"""
import ipaddress

from dataplane import cluster
from dataplane.agent import UPLINK_PORT
from dataplane.control import request
from fastpath.counters import DROP_NAMES

MAX_HOPS = 4                       # a pod -> node -> node path has 2; more would be a loop
GW_ACTIONS = {0: "not for the gateway: bridged", 1: "answered in place", 2: "routed to a pod on this node",
              3: "consumed", 4: "routed to another node (overlay)",
              5: "TTL expired: answered with ICMP time exceeded"}
ARP_ACTIONS = {0: "not for the gateway: bridged", 1: "gateway answers the ARP request",
               3: "gateway learns from the ARP reply"}
PROTOS = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6"}
ETHERTYPES = {0x0800: "IPv4", 0x0806: "ARP", 0x86DD: "IPv6"}
CT_KINDS = ["existing connection", "new connection", "expired entry deleted",
            "closing connection's tuple reused: new connection", "backend gone: connection ended"]
CT_STATES = ["NEW", "ESTABLISHED", "FIN", "CLOSED"]
TCP_FLAGS = "FSRPAUECN"              # scapy's letters, in bit order


class TraceError(ValueError):
    pass


def ip(n):
    return str(ipaddress.IPv4Address(n & 0xFFFFFFFF))


def build_frame(state, pod, dst, proto="tcp", sport=40000, flags="S", payload=b""):
    """The frame `pod` would send to dst ("IP" or "IP:PORT"): to the peer's
    MAC on its own node's subnet, else to its gateway, as the pod's kernel does."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.l2 import Ether
    pods = {n: p.to_dict() for n, p in state.pods.items()}
    if pod not in pods:
        raise TraceError(f"no pod {pod!r}; pods: {', '.join(pods)}")
    p = pods[pod]
    host, _, port = dst.partition(":")
    try:
        daddr = ipaddress.IPv4Address(host)
    except ValueError:
        raise TraceError(f"destination must be IP or IP:PORT, got {dst!r}") from None
    proto = proto.lower()
    if proto not in ("tcp", "udp", "icmp"):
        raise TraceError(f"protocol must be tcp, udp or icmp, got {proto!r}")
    if proto != "icmp":
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise TraceError(f"{proto} needs a destination port 1..65535: IP:PORT, got {dst!r}")
    if not 1 <= sport <= 65535:
        raise TraceError(f"source port must be 1..65535, got {sport}")
    # checked here: scapy raises a bare ValueError (a traceback) on a letter it lacks
    if proto == "tcp" and any(c not in TCP_FLAGS for c in flags):
        raise TraceError(f"TCP flags are letters of {TCP_FLAGS} (e.g. S, SA, A, FA, R), got {flags!r}")
    subnet = ipaddress.IPv4Network(state.nodes[p["node"]].subnet)
    dmac = state.nodes[p["node"]].gateway_mac
    if daddr in subnet:
        dmac = next((q["mac"] for q in pods.values() if q["ip"] == str(daddr)), dmac)
    l3 = IP(src=p["ip"], dst=str(daddr), ttl=64)
    if proto == "tcp":
        l4 = TCP(sport=sport, dport=int(port), flags=flags, seq=1)
    elif proto == "udp":
        l4 = UDP(sport=sport, dport=int(port))
    else:
        l4 = ICMP(id=sport, seq=1)
    return bytes(Ether(src=p["mac"], dst=dmac) / l3 / l4 / payload)


def pcap_frame(path, index=0):
    """Frame number index (0-based) of an Ethernet pcap, read with dpkt."""
    import dpkt
    try:
        with open(path, "rb") as f:
            reader = dpkt.pcap.Reader(f)
            if reader.datalink() != dpkt.pcap.DLT_EN10MB:
                raise TraceError(f"{path}: link type {reader.datalink()} is not Ethernet")
            for k, (_, buf) in enumerate(reader):
                if k == index:
                    return bytes(buf)
    except (OSError, ValueError, dpkt.dpkt.NeedData) as e:
        raise TraceError(f"{path}: not a readable pcap file ({e})") from None
    raise TraceError(f"{path}: has no frame {index}")


def _ports(state, node):
    st = request(cluster.node_socket(state, node), "status")
    names = {p["port"]: f"pod {p['pod']}" for p in st["ports"]}
    names[UPLINK_PORT] = "uplink"
    return names


def run(pod, frame, commit=False):
    """Trace frame sent by pod; returns the hops, each {node, port, events, ...}."""
    state = cluster.require_state()
    if pod not in state.pods:
        raise TraceError(f"no pod {pod!r}; pods: {', '.join(state.pods)}")
    node = state.pods[pod].node
    names = _ports(state, node)
    port = next((p for p, n in names.items() if n == f"pod {pod}"), None)
    if port is None:
        raise TraceError(f"pod {pod} has no port on node {node}")
    # The next node is the one whose underlay MAC the frame leaves for: in
    # every backend (a direct frame's IP destination is the pod's, not a node's).
    by_mac = {n.underlay_mac.lower(): name for name, n in state.nodes.items()}
    hops, todo = [], [(node, port, frame, names)]
    while todo and len(hops) < MAX_HOPS:
        node, port, frame, names = todo.pop(0)
        r = request(cluster.node_socket(state, node), "trace", port=port, frame=frame.hex(), commit=commit)
        hop = {"node": node, "port": port, "port_name": names.get(port, str(port)), "frame": frame.hex(),
               "names": {str(k): v for k, v in names.items()}, **r}
        hops.append(hop)
        for out in r["outputs"]:
            f = bytes.fromhex(out["frame"])
            peer = by_mac.get(f[:6].hex(":")) if out["port"] == UPLINK_PORT and len(f) >= 14 else None
            if peer is not None and peer != node:
                todo.append((peer, UPLINK_PORT, f, _ports(state, peer)))
    return hops


def _summary(frame):
    from scapy.layers.l2 import Ether
    try:
        return Ether(frame).summary()
    except Exception:                  # scapy may choke on what the fast path drops
        return f"{len(frame)} bytes"


def _ip_summary(packet):
    from scapy.layers.inet import IP
    try:
        return IP(packet).summary()
    except Exception:
        return f"{len(packet)} bytes"


def _outer(frame):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN
    e = Ether(frame)
    if IP in e and e[IP].proto == 4 and isinstance(e[IP].payload, IP):       # IP-in-IP (RFC 2003)
        o = e[IP]
        return (f"IPIP: outer {e.src} > {e.dst}, IP {o.src} > {o.dst} ttl {o.ttl} id {o.id}"
                f"{' DF' if o.flags.DF else ''} tos {o.tos:#x}; inner: {o.payload.summary()}")
    if not e.haslayer(VXLAN):
        return _summary(frame)
    o = e[IP]
    return (f"outer {e.src} > {e.dst}, IP {o.src} > {o.dst} ttl {o.ttl} id {o.id}"
            f"{' DF' if o.flags.DF else ''}, UDP {e[UDP].sport} > {e[UDP].dport}, "
            f"VXLAN VNI {e[VXLAN].vni}; inner: {e[VXLAN].payload.summary()}")


def describe(hop):
    """Text lines for one hop's events."""
    names = {int(k): v for k, v in hop.get("names", {}).items()}
    pname = lambda p: "uplink" if p == UPLINK_PORT else names.get(p, f"port {p}")  # noqa: E731
    frame = bytes.fromhex(hop["frame"])
    outs = {o["port"]: bytes.fromhex(o["frame"]) for o in hop["outputs"]}
    lines = []
    for name, a, b, c in hop["events"]:
        if name == "rx":
            flags = f", vnet flags {c & 0xff:#x} gso type {c >> 8}" if c else ""
            text = f"received on {pname(a)}, {b} bytes{flags}: {_summary(frame)}"
        elif name == "parse":
            text = f"{ETHERTYPES.get(a, hex(a))}" + (f" {PROTOS.get(b, b)}" if a in (0x0800, 0x86DD) else "")
        elif name == "learn":
            text = f"source MAC {frame[6:12].hex(':')} learned on {pname(b)} (bridge domain {a})"
        elif name == "arp":
            text = ARP_ACTIONS.get(a, str(a))
        elif name == "gateway":
            act = a - (1 << 32) if a >= 1 << 31 else a
            text = (f"to {ip(b)}: " + GW_ACTIONS.get(act, "?")) if act >= 0 else \
                f"to {ip(b)}: refused ({DROP_NAMES[-act]})"
        elif name == "service":
            text = f"ClusterIP {ip(a)}:{b}/{PROTOS.get(c, c)}"
        elif name == "conntrack":
            text = f"{CT_KINDS[a] if a < len(CT_KINDS) else a} (#{b}, {CT_STATES[c] if c < 4 else c})"
        elif name == "pick":
            lb = "maglev" if (c >> 16) & 0xff else "random"
            aff = ", pinned by ClientIP affinity" if c >> 24 else ""
            text = f"backend {ip(a)}:{b} chosen ({lb}, {c & 0xffff} backends{aff})"
        elif name == "dnat":
            text = f"destination rewritten to {ip(a)}:{b}"
        elif name == "snat":
            text = f"hairpin: source rewritten to {ip(a)}"
        elif name == "unnat":
            text = f"reply: source rewritten back to {ip(a)}:{b}" + (f", destination to {ip(c)}" if c else "")
        elif name == "reject":
            text = "no endpoints: answered with " + ("TCP RST" if a == 6 else "ICMP port unreachable")
        elif name == "fdb":
            text = "destination MAC unknown" if a == 0xFFFFFFFF else f"destination MAC on {pname(a)}"
        elif name == "flood":
            text = f"flooded to {b} ports of bridge domain {a}"
        elif name == "encap":
            text = _outer(outs[a]) if a in outs else ""
            if not text:
                text = "encapsulated, out of the uplink"
            elif text.startswith("outer"):
                text = "VXLAN: " + text
            elif not text.startswith("IPIP"):
                text = "routed to the next hop, not encapsulated: " + text
        elif name == "vtep_arp":
            text = "the VTEP's MAC is not known yet: sent an ARP request for it instead"
        elif name == "decap":
            if b == 1:
                o = frame[14:] if len(frame) > 14 else b""
                ihl = (o[0] & 15) * 4 if o else 20
                text = f"IPIP from {ip(int.from_bytes(o[12:16], 'big')) if len(o) >= 16 else '?'} decapsulated: " \
                       f"{_ip_summary(o[ihl:])}"
            elif b == 2:
                text = f"routed in from the fabric (direct): {_summary(frame)}"
            else:
                text = f"VXLAN VNI {a} decapsulated: {_summary(frame[50:])}"
        elif name == "reply":
            text = f"answered out of {pname(a)}"
        elif name == "local":
            text = "consumed by the node"
        elif name == "tx":
            text = f"sent to {pname(a)}, {b} bytes"
        elif name == "drop":
            text = f"dropped: {DROP_NAMES[a]}"
        else:
            text = f"{a} {b} {c}"
        lines.append((name, text))
    return lines


def render(hops):
    out = []
    for k, hop in enumerate(hops):
        out.append(f"{'' if k == 0 else chr(10)}node {hop['node']}, in {hop['port_name']}:")
        for n, (name, text) in enumerate(describe(hop), 1):
            out.append(f"  {n:2d}. {name:<9} {text}")
        v, reason = hop["verdict"]
        if v == "drop":
            out.append(f"  => dropped ({reason})")
        elif not hop["outputs"]:
            out.append(f"  => {v}")
        else:
            dest = ", ".join(hop["names"].get(str(o["port"]), str(o["port"])) for o in hop["outputs"])
            out.append(f"  => out of {dest}")
        if hop.get("lost_events"):
            out.append(f"  ({hop['lost_events']} more events not shown)")
    return "\n".join(out)
