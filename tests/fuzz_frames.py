"""Hypothesis strategies for the fuzzing harness: frames for every entry of
the fast path (pods' ports, the uplink, the gateway, ClusterIPs), built
valid with scapy and then mutated at byte level (cut at any length, bit
flips, IHL / total length / fragment fields that lie, stacked VLAN tags,
trailing garbage), with virtio-net headers that are right or lie, plus
random bytes and 64 KB super-frames.

Two kinds carry an expectation of their own (Frame.expect, checked by the
oracle against the fast path's verdict and counters, not against a twin):
  - "bad:<reason>": a frame malformed on purpose in exactly one way, never
    mutated further: runt, VLAN tag cut short or three deep, ARP / IPv4 /
    L4 header cut short, IPv4 version / IHL / total length wrong, TCP data
    offset and UDP length wrong, IPv6 payload length past the frame, a
    multicast source, an unknown port, TTL 0/1 (answered), no neighbour,
    no route, nothing the gateway serves, ICMP to a ClusterIP, a SYN to a
    service without endpoints (answered), a mid-stream segment of an
    unknown connection; from the fabric: not our MAC or IP, not VXLAN on
    our port, a fragment, I flag clear, a foreign VNI, an inner frame cut
    short, not routed, routed nowhere, TTL 1 (answered into the tunnel);
    in ipip mode: an outer source that is no node's, an outer fragment, an
    inner packet cut short or with a wrong version, IHL or length, outer CE
    over a Not-ECT inner, VXLAN; in direct mode: a source in no route's
    CIDR, a destination not ours, not our MAC, tunnels to the node's IP;
  - "spoof:*": frames from a pod with another MAC, another IPv4 source, an
    ARP sender MAC or IP that is not its own (spoof_mac / spoof_ip when the
    port is guarded), and the RFC 5227 probe (sender 0.0.0.0) that passes."""
import struct

from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_Router_Alert, IPOption_RR
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from fuzz_node import (GW_IP, GW_MAC, NO_NEIGH_IP, NODE_IP, NODE_MAC, PEER2_IP, PEER2_MAC, PEER3_IP, PEER_IP,
                       PEER_MAC, PODS, REMOTE_GW_MAC, REMOTE_PODS, SERVICES, UPLINK, VIPS, Config)
from fuzz_wire import CSUM_FIELD, Ip4, set_partial_csum

BCAST = "ff:ff:ff:ff:ff:ff"
u8 = st.integers(0, 0xff)
u16 = st.integers(0, 0xffff)


class Frame:
    """One input: the bytes, the port they arrive on, the vnet header (None:
    zeros), and how it was made (shown when an example fails)."""

    def __init__(self, port, data, vnet=None, label="", expect=None):
        self.port, self.data, self.vnet, self.label, self.expect = port, bytes(data), vnet, label, expect

    def __repr__(self):
        v = self.vnet.hex() if self.vnet is not None else None
        return (f"Frame(port={self.port}, data=bytes.fromhex({self.data.hex()!r}), vnet={v!r}, "
                f"label={self.label!r}, expect={self.expect!r})")


configs = st.builds(
    Config,
    backend=st.sampled_from(["vxlan", "ipip", "direct", "vxlan", "ipip", "direct", "vxlan"]),
    vnet=st.sampled_from(["gso", "csum", "plain"]),
    slot_size=st.sampled_from([65536 + 512, 65536 + 512, 9216, 2048, 128]),
    nslots=st.sampled_from([4, 1, 2, 8]),
    mtu=st.sampled_from([1500, 576, 9000]),
    vxlan_port=st.sampled_from([4789, 8472]),
    fdb_capacity=st.sampled_from([1024, 1]),
    conntrack_capacity=st.sampled_from([1024, 16]),
    prelearn=st.booleans(),
    guard=st.booleans(),
    io=st.sampled_from([False, False, True]),
)


# ---- valid layers -----------------------------------------------------------

@st.composite
def payload(draw, big=0):
    """Bytes after the L4 header; big: a super-frame's, up to big bytes."""
    if big:
        n = draw(st.integers(1000, big))
        return bytes([draw(u8)]) * n
    # sizes around the fabric MTUs' limits (1500 and 576 less each backend's overhead and headers) too
    sizes = st.one_of(st.integers(0, 1600), st.sampled_from([1422, 1423, 1450, 1451, 1452, 1453, 1472, 1473, 1480,
                                                             1481, 498, 499, 528, 529, 548, 549, 8950, 8980]))
    return draw(st.one_of(st.binary(max_size=48), st.builds(lambda n, b: bytes([b]) * n, sizes, u8)))


ports = st.one_of(st.sampled_from([80, 8080, 53, 443, 5353, 40000, 40001]), u16)


@st.composite
def l4(draw, sport=None, dport=None, proto=None, big=0):
    proto = proto or draw(st.sampled_from(["tcp", "udp", "icmp", "other"]))
    sport = draw(ports) if sport is None else sport
    dport = draw(ports) if dport is None else dport
    data = draw(payload(big))
    if proto == "tcp":
        flags = draw(st.sampled_from(["S", "SA", "A", "PA", "FA", "R", "RA", "", "FSRPAUEC"]))
        opts = [("NOP", None)] * draw(st.sampled_from([0, 0, 3, 12, 40]))
        return TCP(sport=sport, dport=dport, flags=flags, seq=draw(st.integers(0, 2**32 - 1)),
                   ack=draw(st.integers(0, 2**32 - 1)), options=opts) / data
    if proto == "udp":
        return UDP(sport=sport, dport=dport) / data
    if proto == "icmp":
        t = draw(st.sampled_from([8] * 12 + [0, 3, 11, 5, 13, draw(u8)]))
        body = IP(src=draw(st.sampled_from(VIPS + REMOTE_PODS)), dst=PODS[0][0]) / UDP(sport=dport, dport=sport) \
            if t in (3, 11) and draw(st.booleans()) else data
        return ICMP(type=t, code=draw(st.sampled_from([0] * 12 + [3, 4, draw(u8)]))) / body
    return draw(st.sampled_from([47, 50, 132, 255, 0])), data


def ip_options(draw):
    return draw(st.sampled_from([
        [], [], [], [IPOption_NOP()] * 4, [IPOption_Router_Alert()],
        [IPOption_RR(routers=["1.2.3.4"] * 9)],            # 40 bytes of options: IHL 15
    ]))


@st.composite
def ip4(draw, src, dst, l4layer, ttl=None):
    if isinstance(l4layer, tuple):
        proto, data = l4layer
        inner, kw = data, {"proto": proto}
    else:
        inner, kw = l4layer, {}
    flags = draw(st.sampled_from([0, "DF"] * 8 + ["MF", "DF+MF"]))
    frag = draw(st.sampled_from([0] * 12 + [1, 185, 8191]))
    return IP(src=src, dst=dst, ttl=draw(st.sampled_from([64, 64, 2, 1, 0, 255])) if ttl is None else ttl,
              flags=flags, frag=frag, id=draw(u16), options=ip_options(draw), **kw) / inner


def ip6(src_mac, dst_mac):
    return Ether(src=src_mac, dst=dst_mac) / IPv6(src="fd00::2", dst="fd00::1") / UDP(sport=1, dport=2) / b"v6"


# ---- frames from a pod ------------------------------------------------------

@st.composite
def pod_frame(draw, cfg):
    ip, mac, port = draw(st.sampled_from(PODS))
    peer = draw(st.sampled_from([p for p in PODS if p[2] != port]))
    kind = draw(st.sampled_from(["bridged", "arp", "gateway", "routed", "remote", "pmtu", "service", "reply",
                                 "super", "ip6", "random", "bad", "bad", "spoof", "service"]))
    if kind == "bad":
        return draw(bad_pod_frame(ip, mac, port, peer))
    if kind == "spoof":
        return draw(spoof_frame(ip, mac, port, peer))
    big = 65535 - 120 if kind == "super" else 0       # room for IP and TCP options
    if kind == "bridged":
        dst = draw(st.sampled_from([peer[1], BCAST, "0a:58:0a:f4:00:99", "01:00:5e:00:00:01", mac]))
        pkt = Ether(src=mac, dst=dst) / draw(ip4(ip, draw(st.sampled_from([peer[0], "10.244.0.255"])), draw(l4())))
    elif kind == "arp":
        op = draw(st.sampled_from([1, 2, 3]))
        pkt = Ether(src=mac, dst=draw(st.sampled_from([BCAST, GW_MAC, peer[1]]))) / ARP(
            op=op, hwsrc=draw(st.sampled_from([mac, peer[1], "01:00:5e:00:00:01"])),
            psrc=draw(st.sampled_from([ip, peer[0], GW_IP, "10.244.0.250", "10.244.0.255", "10.9.9.9"])),
            pdst=draw(st.sampled_from([GW_IP, peer[0], "10.244.0.77"])), hwdst=GW_MAC)
        if draw(st.booleans()):
            pkt[ARP].hwtype, pkt[ARP].ptype, pkt[ARP].hwlen, pkt[ARP].plen = draw(u16), draw(u16), draw(u8), draw(u8)
    elif kind == "gateway":
        pkt = Ether(src=mac, dst=GW_MAC) / draw(ip4(ip, GW_IP, draw(l4(proto=draw(st.sampled_from(["icmp", "icmp", "udp"]))))))
    elif kind in ("routed", "remote", "super"):
        dst = draw(st.sampled_from([peer[0]] * 4 + ["10.244.0.250", "10.244.0.255", "10.244.0.0"] if kind == "routed"
                                   else REMOTE_PODS + ["10.244.9.9", "8.8.8.8", peer[0], VIPS[0]]))
        pkt = Ether(src=mac, dst=GW_MAC) / draw(ip4(ip, dst, draw(l4(big=big, proto="tcp" if big else None))))
    elif kind == "pmtu":
        # path MTU discovery: DF set, around the tunnel's limit, ICMP errors included
        size = draw(st.sampled_from([1422, 1423, 498, 499, 8922, 8923, cfg.pod_mtu, cfg.pod_mtu + 1])) \
            + draw(st.integers(-2, 2))
        quote = IP(src=draw(st.sampled_from(REMOTE_PODS)), dst=ip) / UDP() if draw(st.booleans()) else b""
        body = draw(st.sampled_from([ICMP(type=3, code=4) / quote, ICMP(type=11) / quote, ICMP(type=8) / b"",
                                     UDP(sport=9, dport=9) / b"", TCP(flags="A") / b""]))
        pkt = Ether(src=mac, dst=GW_MAC) / IP(src=ip, dst=draw(st.sampled_from(REMOTE_PODS)), flags="DF") / body
        pkt = pkt / (b"p" * max(0, size - len(pkt[IP])))
    elif kind == "service":
        vip, vport, proto, *_ = draw(st.sampled_from(SERVICES + [(VIPS[1], 81, "TCP", 0, 0, 0),
                                                                 ("10.96.0.99", 80, "UDP", 0, 0, 0)]))
        sport = draw(st.sampled_from([40000, 40001, 40002]))
        pkt = Ether(src=mac, dst=GW_MAC) / draw(ip4(ip, vip, draw(l4(sport, vport, proto.lower())), ttl=64))
    elif kind == "reply":
        # a backend answering a client: bridged straight to it, or through the gateway
        client = draw(st.sampled_from(PODS))
        pkt = Ether(src=mac, dst=draw(st.sampled_from([client[1], GW_MAC]))) / draw(ip4(
            ip, draw(st.sampled_from([client[0], GW_IP])),
            draw(l4(draw(st.sampled_from([8080, 53, 443, 5353])), draw(st.sampled_from([40000, 40001])),
                    draw(st.sampled_from(["tcp", "udp"])))), ttl=64))
    elif kind == "ip6":
        pkt = ip6(mac, draw(st.sampled_from([GW_MAC, peer[1], BCAST])))
    else:
        return Frame(draw(st.sampled_from([port, port, 7, 300])), draw(random_bytes(mac)), None, "random")
    in_port = port if draw(st.integers(0, 9)) else draw(st.sampled_from([peer[2], 9]))
    return Frame(in_port, bytes(pkt), None, kind)


@st.composite
def random_bytes(draw, mac):
    if draw(st.booleans()):
        return draw(st.binary(max_size=160))
    head = bytes.fromhex(draw(st.sampled_from([GW_MAC, BCAST, PODS[1][1], NODE_MAC])).replace(":", ""))
    head += bytes.fromhex(mac.replace(":", "")) + draw(st.sampled_from([b"\x08\x00", b"\x08\x06", b"\x86\xdd",
                                                                       b"\x81\x00", b"\x88\xa8", b"\x00\x00"]))
    return head + draw(st.binary(max_size=120))


# ---- malformed on purpose, forged -------------------------------------------

def mac_b(mac):
    return bytes.fromhex(mac.replace(":", ""))


@st.composite
def bad_pod_frame(draw, ip, mac, port, peer):
    """A frame from pod (ip, mac) on its port with exactly one defect, and the
    drop reason it must get (the oracle adjusts for state: a removed port,
    a service given endpoints, a guard does not matter as ip/mac are the pod's)."""
    cls = draw(st.sampled_from([
        "runt", "vlan_truncated", "vlan_depth", "arp_truncated", "ip4_truncated", "ip4_version", "ip4_ihl", "ip4_length",
        "l4_truncated", "tcp_data_offset", "udp_length", "ip6_length", "src_mac_multicast", "bad_port", "ttl_exceeded", "no_neighbor",
        "no_route", "gateway_unsupported", "service_unsupported", "service_rejected", "conntrack_invalid"]))
    eth = Ether(src=mac, dst=peer[1])
    udp = IP(src=ip, dst=peer[0], id=draw(u16)) / UDP(sport=draw(ports), dport=53) / draw(st.binary(max_size=24))
    in_port = port
    if cls == "runt":
        data = bytes(eth / udp)[:draw(st.integers(0, 13))]
    elif cls == "vlan_truncated":
        data = bytes(eth)[:12] + b"\x81\x00" + draw(st.binary(max_size=3))
    elif cls == "vlan_depth":
        data = bytes(eth)[:12] + b"".join(b"\x81\x00" + struct.pack("!H", draw(st.integers(0, 4095)))
                                          for _ in range(3)) + b"\x08\x00" + bytes(udp)
    elif cls == "arp_truncated":
        data = bytes(Ether(src=mac, dst=BCAST) / ARP(psrc=ip, pdst=GW_IP))[:14 + draw(st.integers(0, 27))]
    elif cls == "ip4_truncated":
        data = bytes(eth / udp)[:14 + draw(st.integers(0, 19))]
    elif cls == "ip4_version":
        b = bytearray(bytes(eth / udp))
        b[14] = (draw(st.sampled_from([0, 5, 6, 15])) << 4) | 5
        data = bytes(b)
    elif cls == "ip4_ihl":
        b = bytearray(bytes(eth / udp))
        if draw(st.booleans()):
            b[14] = 0x40 | draw(st.integers(0, 4))
        else:                                      # options said to run past the frame
            b = b[:14 + draw(st.integers(20, 59))]
            b[14] = 0x4f
        data = bytes(b)
    elif cls == "ip4_length":
        b = bytearray(bytes(eth / udp))
        ihl = (b[14] & 15) * 4
        b[16:18] = struct.pack("!H", draw(st.sampled_from([0, ihl - 1, len(b) - 14 + 1, 0xffff])))
        data = bytes(b)
    elif cls == "l4_truncated":
        proto, need = draw(st.sampled_from([(6, 20), (17, 8), (1, 4)]))
        n = draw(st.integers(0, need - 1))
        data = bytes(eth / IP(src=ip, dst=peer[0], proto=proto) / draw(st.binary(min_size=n, max_size=n)))
    elif cls == "tcp_data_offset":
        b = bytearray(bytes(eth / IP(src=ip, dst=peer[0]) / TCP(sport=draw(ports), dport=80) / (b"x" * 8)))
        b[14 + 20 + 12] = draw(st.sampled_from([0, 1, 4, 8, 15])) << 4    # 5 words of header + 8 bytes: 8 too big
        data = bytes(b)
    elif cls == "udp_length":
        b = bytearray(bytes(eth / udp))
        ulen = len(b) - 34
        b[38:40] = struct.pack("!H", draw(st.sampled_from([0, 7, ulen + 1, 0xffff])))
        data = bytes(b)
    elif cls == "ip6_length":
        b = bytearray(bytes(ip6(mac, peer[1])))
        b[18:20] = struct.pack("!H", len(b) - 54 + draw(st.integers(1, 300)))
        data = bytes(b)
    elif cls == "src_mac_multicast":
        data = bytes(Ether(src=draw(st.sampled_from(["01:00:5e:00:00:01", BCAST, "33:33:00:00:00:01"])),
                           dst=peer[1]) / udp)
    elif cls == "bad_port":
        data, in_port = bytes(eth / udp), draw(st.sampled_from([7, 9, 200]))
    else:
        gw = Ether(src=mac, dst=GW_MAC)
        if cls == "ttl_exceeded":
            pkt = gw / IP(src=ip, dst=draw(st.sampled_from([peer[0]] + REMOTE_PODS)), ttl=draw(st.sampled_from([0, 1])),
                          id=draw(u16)) / draw(st.sampled_from([UDP(sport=7, dport=9), TCP(flags="S"), ICMP()]))
        elif cls == "no_neighbor":
            pkt = gw / IP(src=ip, dst=NO_NEIGH_IP) / UDP(sport=7, dport=9)
        elif cls == "no_route":
            pkt = gw / IP(src=ip, dst=draw(st.sampled_from(["8.8.8.8", "10.244.9.9", "192.168.1.1"]))) / UDP()
        elif cls == "gateway_unsupported":
            pkt = draw(st.sampled_from([gw / IP(src=ip, dst=GW_IP) / UDP(sport=7, dport=53),
                                        gw / IP(src=ip, dst=GW_IP) / ICMP(type=13),
                                        gw / IP(src=ip, dst=GW_IP) / TCP(dport=22),
                                        ip6(mac, GW_MAC)]))
        elif cls == "service_unsupported":
            pkt = gw / IP(src=ip, dst=draw(st.sampled_from(VIPS))) / draw(st.sampled_from([ICMP(), b"\x00" * 8]))
            if not pkt.haslayer(ICMP):
                pkt[IP].proto = 47
        elif cls == "service_rejected":
            pkt = gw / IP(src=ip, dst=VIPS[1]) / TCP(sport=draw(st.integers(1024, 65535)), dport=80, flags="S")
        else:                                       # conntrack_invalid: not a SYN, no such connection
            pkt = gw / IP(src=ip, dst=VIPS[0]) / TCP(sport=draw(st.integers(1024, 65535)), dport=80,
                                                     flags=draw(st.sampled_from(["A", "PA", "FA", "SA"])))
        data = bytes(pkt)
    return Frame(in_port, data, None, "bad:" + cls, cls)


@st.composite
def spoof_frame(draw, ip, mac, port, peer):
    """A pod forging its identity (or the one probe that is allowed)."""
    evil_mac = draw(st.sampled_from([peer[1], "0a:58:0a:f4:00:66", GW_MAC]))
    evil_ip = draw(st.sampled_from([peer[0], GW_IP, "10.244.0.66", "8.8.8.8", "0.0.0.0"]))
    cls = draw(st.sampled_from(["mac", "ip", "arp_mac", "arp_eth", "arp_ip", "probe"]))
    dst = draw(st.sampled_from([peer[1], GW_MAC, BCAST]))
    if cls == "mac":
        pkt = Ether(src=evil_mac, dst=dst) / draw(st.sampled_from([IP(src=ip, dst=peer[0]) / UDP(),
                                                                   ARP(hwsrc=mac, psrc=ip, pdst=GW_IP)]))
    elif cls == "ip":
        pkt = Ether(src=mac, dst=dst) / IP(src=evil_ip, dst=draw(st.sampled_from([peer[0], GW_IP, VIPS[0]]))) / UDP(
            sport=40000, dport=53)
    elif cls in ("arp_mac", "arp_eth"):          # the ARP sender MAC lies, or the Ethernet source does
        hw, src = (evil_mac, mac) if cls == "arp_mac" else (mac, evil_mac)
        pkt = Ether(src=src, dst=BCAST) / ARP(op=draw(st.sampled_from([1, 2])), hwsrc=hw, psrc=ip, pdst=GW_IP)
    elif cls == "arp_ip":
        pkt = Ether(src=mac, dst=BCAST) / ARP(op=draw(st.sampled_from([1, 2])), hwsrc=mac,
                                              psrc=draw(st.sampled_from([peer[0], GW_IP, "10.244.0.66"])), pdst=GW_IP)
    else:
        pkt = Ether(src=mac, dst=BCAST) / ARP(op=1, hwsrc=mac, psrc="0.0.0.0", pdst=draw(st.sampled_from([ip, GW_IP])))
    return Frame(port, bytes(pkt), None, "spoof:" + cls)


@st.composite
def bad_uplink_frame(draw, cfg):
    """A frame from the fabric with exactly one defect, and its drop reason."""
    if cfg.backend == "ipip":
        return draw(bad_ipip_frame(cfg))
    if cfg.backend == "direct":
        return draw(bad_direct_frame(cfg))
    cls = draw(st.sampled_from(["uplink_not_ours", "uplink_unsupported", "vxlan_fragment", "vxlan_inner", "vxlan_flags",
                                "vxlan_vni", "vxlan_not_routed", "no_route", "ttl_exceeded"]))
    src_pod = draw(st.sampled_from(REMOTE_PODS[:2]))        # behind the resolved VTEP (static MAC)
    inner_eth = Ether(src=REMOTE_GW_MAC, dst=GW_MAC)
    inner_ip = IP(src=src_pod, dst=draw(st.sampled_from(PODS))[0], id=draw(u16), ttl=63)
    inner_l4 = UDP(sport=draw(ports), dport=9) / draw(st.binary(max_size=16))
    eth = Ether(src=PEER_MAC, dst=NODE_MAC)
    outer = IP(src=PEER_IP, dst=NODE_IP, flags="DF", id=draw(u16))
    udp = UDP(sport=draw(st.integers(49152, 65535)), dport=cfg.vxlan_port)
    vx = VXLAN(flags=0x08, vni=1)
    if cls == "uplink_not_ours":
        if draw(st.booleans()):
            eth = Ether(src=PEER_MAC, dst=draw(st.sampled_from([PEER2_MAC, GW_MAC, "0a:5a:ac:1e:fa:99"])))
        else:
            outer = IP(src=PEER_IP, dst=draw(st.sampled_from([PEER2_IP, "172.30.250.99", PODS[0][0]])))
    elif cls == "uplink_unsupported":
        what = draw(st.sampled_from(["tcp", "port", "icmp", "ip6", "ipip"]))
        if what == "ip6":
            return Frame(UPLINK, bytes(ip6(PEER_MAC, NODE_MAC)), None, "bad:" + cls, cls)
        l4 = {"tcp": TCP(dport=cfg.vxlan_port), "port": UDP(sport=50000, dport=cfg.vxlan_port ^ 1) / vx / inner_eth
              / inner_ip / inner_l4, "icmp": ICMP(type=draw(st.sampled_from([0, 13, 3]))),
              "ipip": inner_ip / inner_l4}[what]                 # IP in IP in vxlan mode
        return Frame(UPLINK, bytes(eth / outer / l4), None, "bad:" + cls, cls)
    elif cls == "vxlan_fragment":
        flags, frag = draw(st.sampled_from([("MF", 0), ("MF", 1), (0, 1), (0, 100), ("MF", 8191)]))
        outer = IP(src=PEER_IP, dst=NODE_IP, flags=flags, frag=frag)
    elif cls == "vxlan_inner":
        if draw(st.booleans()):
            inner = bytes(inner_eth / inner_ip / inner_l4)[:draw(st.integers(0, 13))]   # shorter than 30 with VXLAN
        else:                                        # parses as too short inside: IPv4 cut, IHL wrong
            b = bytearray(bytes(inner_eth / inner_ip / inner_l4))
            b[14] = 0x43
            inner = bytes(b) if draw(st.booleans()) else bytes(b[:14 + 10])
        return Frame(UPLINK, bytes(eth / outer / udp / vx / inner), None, "bad:" + cls, cls)
    elif cls == "vxlan_flags":
        vx = VXLAN(flags=draw(st.sampled_from([0x00, 0x80, 0xf7])), vni=1)
    elif cls == "vxlan_vni":
        vx = VXLAN(flags=0x08, vni=draw(st.sampled_from([0, 2, 0xffffff])))
    elif cls == "vxlan_not_routed":
        if draw(st.booleans()):
            inner_eth = Ether(src=REMOTE_GW_MAC, dst=draw(st.sampled_from([PODS[0][1], BCAST])))
        else:
            return Frame(UPLINK, bytes(eth / outer / udp / vx / ip6(REMOTE_GW_MAC, GW_MAC)), None, "bad:" + cls, cls)
    elif cls == "no_route":
        inner_ip = IP(src=src_pod, dst=draw(st.sampled_from(["10.244.9.9", "8.8.8.8", REMOTE_PODS[1]])), ttl=63)
    else:                                            # ttl_exceeded: answered back into the tunnel
        inner_ip = IP(src=src_pod, dst=draw(st.sampled_from(PODS))[0], id=draw(u16), ttl=draw(st.sampled_from([0, 1])))
    return Frame(UPLINK, bytes(eth / outer / udp / vx / inner_eth / inner_ip / inner_l4), None, "bad:" + cls, cls)


ECN_NOT_ECT, ECN_CE = 0, 3
UNKNOWN_NODES = ["172.30.250.9", "172.30.250.99", "10.9.9.9", REMOTE_PODS[0]]   # never a route's VTEP
UNROUTED_SOURCES = ["10.244.9.2", "8.8.8.8", PEER_IP, PODS[1][0], "172.30.250.9"]  # in no route's CIDR, ever


def ipip_wire(draw, inner, src=PEER_IP, tos=0, flags="DF", frag=0, dst_mac=NODE_MAC, dst=NODE_IP):
    return bytes(Ether(src=PEER_MAC, dst=dst_mac) / IP(src=src, dst=dst, proto=4, tos=tos, flags=flags, frag=frag,
                                                       ttl=draw(st.sampled_from([64, 63])), id=draw(u16)) / inner)


@st.composite
def bad_ipip_frame(draw, cfg):
    """ipip mode: an RFC 2003 packet from the fabric with exactly one defect."""
    cls = draw(st.sampled_from(["tunnel_unknown_source", "ipip_fragment", "ipip_inner", "ecn_ce_not_ect", "no_route",
                                "uplink_not_ours", "uplink_unsupported", "ttl_exceeded"]))
    src_pod = draw(st.sampled_from(REMOTE_PODS[:2]))        # behind PEER_IP, in every route table
    dscp = draw(st.sampled_from([0, 0x28, 0xb8]))
    inner_ecn = draw(st.sampled_from([0, 1, 2, 3]))
    outer_ecn = draw(st.sampled_from([0, 2, 1] + [inner_ecn] * 3))
    if inner_ecn == ECN_NOT_ECT and outer_ecn == ECN_CE:
        outer_ecn = 0
    inner = IP(src=src_pod, dst=draw(st.sampled_from(PODS))[0], id=draw(u16), ttl=63, tos=dscp | inner_ecn) \
        / UDP(sport=draw(ports), dport=9) / draw(st.binary(max_size=16))
    kw = {"tos": outer_ecn}
    if cls == "tunnel_unknown_source":
        kw["src"] = draw(st.sampled_from(UNKNOWN_NODES))
    elif cls == "ipip_fragment":
        kw["flags"], kw["frag"] = draw(st.sampled_from([("MF", 0), ("MF", 1), (0, 1), (0, 100), ("DF+MF", 8191)]))
    elif cls == "ipip_inner":
        b = bytearray(bytes(inner))
        how = draw(st.sampled_from(["cut", "version", "ihl", "ihl_past", "len_past", "len_short"]))
        if how == "cut":
            b = b[:draw(st.integers(0, 19))]
        elif how == "version":
            b[0] = (draw(st.sampled_from([0, 5, 6, 15])) << 4) | 5
        elif how == "ihl":
            b[0] = 0x40 | draw(st.integers(0, 4))
        elif how == "ihl_past":                      # options said to run past the packet
            b = b[:draw(st.integers(20, 59))]
            b[0] = 0x4f
        else:
            n = len(b) + draw(st.integers(1, 300)) if how == "len_past" else draw(st.integers(0, 19))
            b[2:4] = struct.pack("!H", n)
        inner = bytes(b)
    elif cls == "ecn_ce_not_ect":
        inner[IP].tos = dscp | ECN_NOT_ECT
        kw["tos"] = draw(st.sampled_from([0, 0x28])) | ECN_CE
    elif cls == "no_route":
        inner[IP].dst = draw(st.sampled_from(["10.244.9.9", "8.8.8.8", REMOTE_PODS[1], "10.244.2.7"]))
    elif cls == "uplink_not_ours":
        if draw(st.booleans()):
            kw["dst_mac"] = draw(st.sampled_from([PEER2_MAC, GW_MAC, "0a:5a:ac:1e:fa:99"]))
        else:
            kw["dst"] = draw(st.sampled_from([PEER2_IP, "172.30.250.99", PODS[0][0]]))
    elif cls == "uplink_unsupported":                # to the node's IP, not IP in IP: VXLAN, other, IPv6
        what = draw(st.sampled_from(["vxlan", "tcp", "icmp", "ip6"]))
        if what == "ip6":
            return Frame(UPLINK, bytes(ip6(PEER_MAC, NODE_MAC)), None, "bad:" + cls, cls)
        l4 = {"vxlan": UDP(sport=50000, dport=cfg.vxlan_port) / VXLAN(flags=0x08, vni=1)
              / Ether(src=REMOTE_GW_MAC, dst=GW_MAC) / inner,
              "tcp": TCP(dport=draw(ports)), "icmp": ICMP(type=draw(st.sampled_from([0, 13, 3])))}[what]
        return Frame(UPLINK, bytes(Ether(src=PEER_MAC, dst=NODE_MAC) / IP(src=PEER_IP, dst=NODE_IP) / l4), None,
                     "bad:" + cls, cls)
    else:                                            # ttl_exceeded: answered back through the tunnel
        inner[IP].ttl = draw(st.sampled_from([0, 1]))
    return Frame(UPLINK, ipip_wire(draw, inner, **kw), None, "bad:" + cls, cls)


@st.composite
def bad_direct_frame(draw, cfg):
    """direct mode: a routed packet from the fabric with exactly one defect."""
    cls = draw(st.sampled_from(["tunnel_unknown_source", "no_route", "uplink_not_ours", "uplink_unsupported",
                                "ttl_exceeded"]))
    src, dst_mac, ttl = draw(st.sampled_from(REMOTE_PODS[:2])), NODE_MAC, 63
    dst = draw(st.sampled_from(PODS))[0]
    l4 = draw(st.sampled_from([UDP(sport=draw(ports), dport=9), TCP(sport=draw(ports), dport=80, flags="S"),
                               ICMP(type=8)])) / draw(st.binary(max_size=16))
    if cls == "tunnel_unknown_source":
        src = draw(st.sampled_from(UNROUTED_SOURCES))
    elif cls == "no_route":
        dst = draw(st.sampled_from(["10.244.9.9", "8.8.8.8", REMOTE_PODS[1], "10.244.2.7", "172.30.250.99"]))
    elif cls == "uplink_not_ours":
        dst_mac = draw(st.sampled_from([PEER2_MAC, GW_MAC, "0a:5a:ac:1e:fa:99"]))
    elif cls == "uplink_unsupported":                # to the node's IP: tunnels, other protocols, IPv6
        what = draw(st.sampled_from(["vxlan", "ipip", "tcp", "icmp", "ip6"]))
        if what == "ip6":
            return Frame(UPLINK, bytes(ip6(PEER_MAC, NODE_MAC)), None, "bad:" + cls, cls)
        inner = IP(src=src, dst=dst, ttl=63) / l4
        body = {"vxlan": UDP(sport=50000, dport=cfg.vxlan_port) / VXLAN(flags=0x08, vni=1)
                / Ether(src=REMOTE_GW_MAC, dst=GW_MAC) / inner, "ipip": inner,
                "tcp": TCP(dport=draw(ports)), "icmp": ICMP(type=draw(st.sampled_from([0, 13, 3])))}[what]
        return Frame(UPLINK, bytes(Ether(src=PEER_MAC, dst=NODE_MAC) / IP(src=PEER_IP, dst=NODE_IP) / body), None,
                     "bad:" + cls, cls)
    else:
        ttl = draw(st.sampled_from([0, 1]))
    pkt = Ether(src=PEER_MAC, dst=dst_mac) / IP(src=src, dst=dst, ttl=ttl, id=draw(u16),
                                                 tos=draw(st.sampled_from([0, 2, 3, 0xb8]))) / l4
    return Frame(UPLINK, bytes(pkt), None, "bad:" + cls, cls)


# ---- frames from the fabric -------------------------------------------------

@st.composite
def inner_frame(draw):
    """What a peer's VTEP wraps: routed IPv4 to this node's gateway, mostly."""
    src = draw(st.sampled_from(REMOTE_PODS))
    kind = draw(st.sampled_from(["pod", "gateway", "reply", "transit", "arp", "random", "super"]))
    if kind in ("pod", "super"):
        pkt = Ether(src=REMOTE_GW_MAC, dst=GW_MAC) / draw(ip4(src, draw(st.sampled_from(PODS))[0],
                                                              draw(l4(big=65535 - 220 if kind == "super" else 0))))
    elif kind == "gateway":
        pkt = Ether(src=REMOTE_GW_MAC, dst=GW_MAC) / draw(ip4(src, GW_IP, draw(l4(proto="icmp"))))
    elif kind == "reply":
        pkt = Ether(src=REMOTE_GW_MAC, dst=GW_MAC) / draw(ip4(
            REMOTE_PODS[0], draw(st.sampled_from(PODS))[0],
            draw(l4(draw(st.sampled_from([8080, 53])), draw(st.sampled_from([40000, 40001])),
                    draw(st.sampled_from(["tcp", "udp"])))), ttl=64))
    elif kind == "transit":
        pkt = Ether(src=REMOTE_GW_MAC, dst=draw(st.sampled_from([GW_MAC, PODS[0][1]]))) / draw(
            ip4(src, draw(st.sampled_from(REMOTE_PODS + ["10.244.9.9"])), draw(l4())))
    elif kind == "arp":
        pkt = Ether(src=REMOTE_GW_MAC, dst=BCAST) / ARP(psrc=src, pdst=GW_IP)
    else:
        return draw(random_bytes(REMOTE_GW_MAC))
    return draw(mutated(bytes(pkt)))


@st.composite
def inner_packet(draw, unrouted=False):
    """What a peer routes to this node in ipip or direct mode: an IPv4 packet
    (no Ethernet header), to a pod mostly, ECN any; unrouted: from sources
    in no route's CIDR too."""
    src = draw(st.sampled_from(REMOTE_PODS + (UNROUTED_SOURCES if unrouted else [])))
    kind = draw(st.sampled_from(["pod", "pod", "gateway", "reply", "transit", "super"]))
    if kind in ("pod", "super"):
        pkt = draw(ip4(src, draw(st.sampled_from(PODS))[0], draw(l4(big=65535 - 220 if kind == "super" else 0))))
    elif kind == "gateway":
        pkt = draw(ip4(src, GW_IP, draw(l4(proto="icmp"))))
    elif kind == "reply":
        pkt = draw(ip4(REMOTE_PODS[0], draw(st.sampled_from(PODS))[0],
                       draw(l4(draw(st.sampled_from([8080, 53])), draw(st.sampled_from([40000, 40001])),
                               draw(st.sampled_from(["tcp", "udp"])))), ttl=64))
    else:
        pkt = draw(ip4(src, draw(st.sampled_from(REMOTE_PODS + ["10.244.9.9", NO_NEIGH_IP])), draw(l4())))
    pkt[IP].tos = draw(st.sampled_from([0, 0, 1, 2, 3, 0x28 | 2, 0xb8 | 3]))
    return pkt


@st.composite
def uplink_frame(draw, cfg):
    tunnel = {"vxlan": "vxlan", "ipip": "ipip", "direct": "direct"}[cfg.backend]
    kind = draw(st.sampled_from([tunnel, tunnel, tunnel, "arp", "ping", "other", "random", "bad",
                                 draw(st.sampled_from(["vxlan", "ipip", "direct"]))]))   # another backend's too
    if kind == "bad":
        return draw(bad_uplink_frame(cfg))
    if kind == "ipip":                # (frames() mutates the whole, inner header included)
        pkt = Ether(src=PEER_MAC, dst=draw(st.sampled_from([NODE_MAC] * 12 + [BCAST, PEER2_MAC]))) / draw(ip4(
            draw(st.sampled_from([PEER_IP] * 6 + [PEER2_IP, PEER3_IP, "172.30.250.9"])),
            draw(st.sampled_from([NODE_IP] * 12 + [PEER2_IP])), (4, bytes(draw(inner_packet()))), ttl=64))
        pkt[IP].tos = draw(st.sampled_from([0, 0, 1, 2, 3, 0x28 | 3]))
        return Frame(UPLINK, bytes(pkt), None, "uplink-ipip")
    if kind == "direct":
        pkt = Ether(src=draw(st.sampled_from([PEER_MAC, PEER2_MAC])),
                    dst=draw(st.sampled_from([NODE_MAC] * 12 + [BCAST, PEER2_MAC]))) / draw(inner_packet(unrouted=True))
        return Frame(UPLINK, bytes(pkt), None, "uplink-direct")
    if kind == "vxlan":
        inner = draw(inner_frame())
        pkt = Ether(src=PEER_MAC, dst=draw(st.sampled_from([NODE_MAC] * 6 + [BCAST, PEER2_MAC]))) / draw(ip4(
            draw(st.sampled_from([PEER_IP, PEER2_IP])), draw(st.sampled_from([NODE_IP] * 6 + [PEER2_IP])),
            UDP(sport=draw(st.integers(49152, 65535)),
                dport=draw(st.sampled_from([cfg.vxlan_port] * 6 + [4789, 8472])))
            / VXLAN(flags=draw(st.sampled_from([0x08] * 6 + [0x00, 0x88, 0xff])),
                    vni=draw(st.sampled_from([1] * 6 + [2, 0, 0xffffff]))) / inner, ttl=64))
    elif kind == "arp":
        who, mac = draw(st.sampled_from([(PEER_IP, PEER_MAC), (PEER2_IP, PEER2_MAC), ("172.30.250.9", PEER_MAC)]))
        pkt = Ether(src=mac, dst=draw(st.sampled_from([BCAST, NODE_MAC]))) / ARP(
            op=draw(st.sampled_from([1, 2])), hwsrc=mac, psrc=who, pdst=draw(st.sampled_from([NODE_IP, PEER_IP])),
            hwdst=NODE_MAC)
    elif kind == "ping":
        pkt = Ether(src=PEER_MAC, dst=NODE_MAC) / draw(ip4(PEER_IP, NODE_IP, draw(l4(proto="icmp"))))
    elif kind == "other":
        pkt = Ether(src=PEER_MAC, dst=draw(st.sampled_from([NODE_MAC, GW_MAC]))) / draw(
            ip4(PEER_IP, draw(st.sampled_from([NODE_IP, PODS[0][0]])), draw(l4())))
    else:
        return Frame(UPLINK, draw(random_bytes(PEER_MAC)), None, "uplink-random")
    return Frame(UPLINK, bytes(pkt), None, "uplink-" + kind)


# ---- mutations --------------------------------------------------------------

def ip_offsets(data):
    """Where IPv4 headers start (through any VLAN tags and one VXLAN or IP-in-IP level)."""
    out, base = [], 0
    for _ in range(2):
        off = base + 12
        while data[off:off + 2] in (b"\x81\x00", b"\x88\xa8"):
            off += 4
        if data[off:off + 2] != b"\x08\x00" or len(data) < off + 22:
            break
        off += 2
        out.append(off)
        ihl = (data[off] & 0x0f) * 4
        if data[off + 9] == 4 and ihl >= 20 and len(data) >= off + ihl + 20:
            out.append(off + ihl)                 # IP in IP: the inner header right behind
            break
        if data[off + 9] != 17 or len(data) < off + ihl + 16 + 14:
            break
        base = off + ihl + 16
    return out


def put16(data, at, v):
    return data[:at] + struct.pack("!H", v & 0xffff) + data[at + 2:] if at + 2 <= len(data) else data


@st.composite
def mutation(draw, data):
    ips = ip_offsets(data)
    kinds = ["cut", "flip", "byte", "pad", "vlan"] + ["ihl", "totlen", "frag", "version"] * bool(ips)
    kind = draw(st.sampled_from(kinds))
    if kind == "cut":
        edges = sorted({0, 6, 12, 13, 14, 17, 18, 22} | {o + d for o in ips for d in (0, 1, 9, 19, 20, 27, 28, 35, 36, 39, 40, 41, 65)}
                       | {len(data) - 1})
        n = draw(st.one_of(st.sampled_from(edges), st.integers(0, len(data))))
        return data[:max(0, n)]
    if kind == "flip" and data:
        pos = draw(st.one_of(st.integers(0, min(len(data), 96) - 1), st.integers(0, len(data) - 1)))
        return data[:pos] + bytes([data[pos] ^ (1 << draw(st.integers(0, 7)))]) + data[pos + 1:]
    if kind == "byte" and data:
        pos = draw(st.integers(0, len(data) - 1))
        return data[:pos] + bytes([draw(u8)]) + data[pos + 1:]
    if kind == "pad":
        return data + draw(st.binary(min_size=1, max_size=64))
    if kind == "vlan" and len(data) >= 12:
        tags = b"".join(draw(st.sampled_from([b"\x81\x00", b"\x88\xa8"])) + struct.pack("!H", draw(u16))
                        for _ in range(draw(st.integers(1, 3))))
        at = draw(st.sampled_from([12] + [o - 2 for o in ips[1:]]))
        return data[:at] + tags + data[at:]
    if not ips:
        return data
    o = draw(st.sampled_from(ips))
    if kind == "ihl":
        return data[:o] + bytes([(data[o] & 0xf0) | draw(st.integers(0, 15))]) + data[o + 1:]
    if kind == "version":
        return data[:o] + bytes([(draw(st.integers(0, 15)) << 4) | (data[o] & 0x0f)]) + data[o + 1:]
    if kind == "frag":
        return put16(data, o + 6, draw(st.sampled_from([0x2000, 0x0001, 0x1fff, 0x4001, 0x6000, draw(u16)])))
    tot, = struct.unpack("!H", data[o + 2:o + 4])
    ihl = (data[o] & 0x0f) * 4
    return put16(data, o + 2, draw(st.sampled_from([0, ihl - 1, ihl, tot - 1, tot + 1, len(data) - o,
                                                    len(data) - o + 1, 0xffff, draw(u16)])))


@st.composite
def mutated(draw, data):
    """data as built (most often), or after one to three mutations."""
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 1, 1, 2, 3]))):
        data = draw(mutation(data))
    return data


# ---- virtio-net headers -----------------------------------------------------

def innermost_ip(data):
    offs = ip_offsets(data)
    for o in reversed(offs):
        ip = Ip4.at(data, o)
        if ip is not None:
            return ip
    return None


@st.composite
def with_vnet(draw, frame, n):
    """frame with an n-byte vnet header: zeros, offload metadata that is right
    (the L4 checksum then holds the partial sum), GSO, or fields that lie."""
    if n == 0:
        return frame
    kind = draw(st.sampled_from(["zero", "zero", "csum", "gso", "valid", "lie"]))
    data = frame.data
    flags = gso = hdr_len = gso_size = start = off = 0
    outer = inner_nh = 0
    ip = innermost_ip(data)
    if kind == "gso" and ip is not None and ip.proto == 6 and ip.fragment:
        gso, gso_size, hdr_len = 1, 1448, ip.l4 + 20      # GSO metadata on a fragment: nothing to segment
    elif kind in ("csum", "gso") and ip is not None and ip.proto in (6, 17) and not ip.fragment \
            and ip.l4_len >= CSUM_FIELD[ip.proto] + 2:
        data = set_partial_csum(data, ip)
        flags, start, off = 1, ip.l4, CSUM_FIELD[ip.proto]
        if kind == "gso":
            gso = (1 if ip.proto == 6 else 5) | draw(st.sampled_from([0, 0, 0x80]))
            doff = (data[ip.l4 + 12] >> 4) * 4 if ip.proto == 6 and ip.l4_len >= 13 else 8
            hdr_len = ip.l4 + doff
            gso_size = draw(st.sampled_from([1398, 1448, 536, 8948, 1, 0, 65535]))
            if n == 24 and ip.off > 14:                    # an encapsulated super-frame
                gso |= 0x20
                outer, inner_nh = 34, ip.off
    elif kind == "valid":
        flags = 2
    elif kind == "lie":
        near = st.sampled_from([v & 0xffff for v in (0, 1, 14, 34, 50, 64, len(data) - 2, len(data), len(data) + 1,
                                                     0xffff)])
        flags = draw(st.sampled_from([1, 3, 8, 9, 0xff]))
        gso = draw(st.sampled_from([0, 1, 3, 4, 5, 0x21, 0x41, 0x81, 0xff]))
        hdr_len, gso_size, start, off = (draw(st.one_of(near, u16)) for _ in range(4))
        outer, inner_nh = draw(st.one_of(near, u16)), draw(st.one_of(near, u16))
    h = struct.pack("<BBHHHH", flags, gso, hdr_len & 0xffff, gso_size, start, off)
    h += bytes(2) if n == 12 else (bytes(10) + struct.pack("<HH", outer, inner_nh) if n == 24 else b"")
    return Frame(frame.port, data, h[:n], f"{frame.label}+vnet-{kind}", frame.expect)


# ---- one input --------------------------------------------------------------

@st.composite
def frames(draw, cfg, vnet=True):
    """One input frame for cfg's node, from a pod or from the fabric."""
    f = draw(st.one_of(pod_frame(cfg), uplink_frame(cfg)))
    if not f.label.endswith("random") and f.expect is None and not f.label.startswith("spoof"):
        f = Frame(f.port, draw(mutated(f.data)), None, f.label)
    return draw(with_vnet(f, cfg.vnet_len(f.port) if vnet and f.port < 256 else 0))
