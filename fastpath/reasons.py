"""The one list of drop reasons and the one list of trace events.

Everything else is made from these: the C enums the fast path uses
(fastpath/drops.pxi, included by defs.pxd; fastpath/events.pxi, included by
trace.pxd), the names counters and traces report (DROP_NAMES, EVENT_NAMES),
and with them the per-reason counters and metrics. A reason is added here
and nowhere else: `python fastpath/reasons.py` writes the .pxi files, and
tests/test_reasons.py fails when they are out of step with this list.

Each entry: (name as reported, C name after DROP_ / EV_, what it means).
The position is the code, so entries are only ever appended."""
import sys
from pathlib import Path

DROPS = (
    ('none', 'NONE', ''),
    ('bad_port', 'BAD_PORT', 'ingress port unknown or down'),
    ('runt', 'RUNT', 'shorter than an Ethernet header'),
    ('too_long', 'TOO_LONG', 'larger than a buffer slot'),
    ('vlan_truncated', 'VLAN_TRUNC', '802.1Q tag cut short'),
    ('vlan_depth', 'VLAN_DEPTH', 'more than two VLAN tags'),
    ('src_mac_multicast', 'SRC_MCAST', 'source MAC is multicast/broadcast'),
    ('arp_truncated', 'ARP_TRUNC', ''),
    ('ip4_truncated', 'IP4_TRUNC', 'fewer bytes than the IPv4 header needs'),
    ('ip4_version', 'IP4_VERSION', 'version field is not 4'),
    ('ip4_ihl', 'IP4_IHL', 'IHL < 5 or options run past the frame'),
    ('ip4_length', 'IP4_LEN', 'total length shorter than the header or longer than the frame'),
    ('ip6_truncated', 'IP6_TRUNC', ''),
    ('ip6_length', 'IP6_LEN', 'payload length runs past the frame'),
    ('l4_truncated', 'L4_TRUNC', 'TCP/UDP/ICMP header cut short'),
    ('tcp_data_offset', 'TCP_DOFF', 'TCP data offset < 5 or past the segment'),
    ('udp_length', 'UDP_LEN', 'UDP length < 8 or past the datagram'),
    ('same_port', 'SAME_PORT', 'destination was learned on the ingress port'),
    ('no_ports', 'NO_PORTS', 'flood with no other port in the domain'),
    ('ttl_exceeded', 'TTL', 'routed frame with TTL <= 1 (answered with ICMP time exceeded)'),
    ('no_neighbor', 'NO_NEIGH', 'routed to a local pod IP with no known MAC'),
    ('no_route', 'NO_ROUTE', 'routed to an address no route covers'),
    ('gateway_unsupported', 'GW_UNSUPPORTED', 'sent to the gateway but nothing it answers (IPv6, non-echo to its IP)'),
    ('too_big', 'TOO_BIG', 'larger than the fabric MTU allows (ICMP frag needed sent when DF)'),
    ('vtep_unresolved', 'VTEP_UNRESOLVED', "peer VTEP's MAC not known yet (an ARP request went out instead)"),
    ('uplink_not_ours', 'UPLINK_NOT_OURS', "on the uplink, not addressed to this node's MAC/IP"),
    ('uplink_unsupported', 'UPLINK_UNSUPPORTED', "to this node's IP but not VXLAN on our port, ARP or ICMP echo"),
    ('vxlan_fragment', 'VXLAN_FRAG', 'a fragmented VXLAN packet'),
    ('vxlan_flags', 'VXLAN_FLAGS', 'VXLAN I flag clear'),
    ('vxlan_vni', 'VXLAN_VNI', 'a VNI this node does not serve'),
    ('vxlan_inner', 'VXLAN_INNER', 'inner frame truncated or malformed'),
    ('vxlan_not_routed', 'VXLAN_NOT_ROUTED', "inner frame not IPv4 to this node's gateway MAC"),
    ('service_unsupported', 'SVC_UNSUPPORTED', 'to a ClusterIP but not TCP/UDP, or a fragment'),
    ('service_rejected', 'SVC_REJECTED', 'no such service port or no endpoints: answered with RST / port unreachable'),
    ('conntrack_invalid', 'CT_INVALID', 'TCP segment other than SYN for a connection conntrack does not know'),
    ('conntrack_full', 'CT_FULL', 'conntrack table full: new flow refused'),
    ('spoof_mac', 'SPOOF_MAC', "guarded pod port: source MAC (or ARP sender MAC) not the pod's"),
    ('spoof_ip', 'SPOOF_IP', "guarded pod port: IPv4 source (or ARP sender IP) not the pod's"),
    ('conntrack_clash', 'CT_CLASH', 'new flow whose reply tuple a live connection holds (client port reused to another ClusterIP, same backend)'),
    ('tunnel_unknown_source', 'TUN_UNKNOWN_SRC', 'IP-in-IP from an address that is no known node, or (direct) routed in from outside every route CIDR'),
    ('ipip_fragment', 'IPIP_FRAG', 'a fragmented IP-in-IP packet'),
    ('ipip_inner', 'IPIP_INNER', 'inner IPv4 packet of an IP-in-IP packet truncated or malformed'),
    ('ecn_ce_not_ect', 'ECN_CE_NOT_ECT', 'outer CE over a Not-ECT inner packet (RFC 6040 sec. 4.2: dropped)'),
    ('segments_full', 'SEG_FULL', "a TCP super-frame to segment (ipip) and too few of the burst's segment slots left"),
)

EVENTS = (
    ('rx', 'RX', 'a=port b=len c=vnet flags | gso_type << 8'),
    ('parse', 'PARSE', 'a=ethertype b=l4 proto c=parse flags'),
    ('drop', 'DROP', 'a=reason'),
    ('learn', 'LEARN', 'a=domain b=port'),
    ('arp', 'ARP', 'a=gateway action on an ARP frame (GW_*)'),
    ('gateway', 'GW', 'a=gateway action on an IPv4 frame (GW_* or -drop) b=destination IP'),
    ('service', 'SERVICE', 'a=ClusterIP b=port c=proto'),
    ('conntrack', 'CT', 'a=CT_EV_* b=connection index c=TCP state'),
    ('pick', 'PICK', 'a=backend IP b=backend port c=backends | lb << 16 | affinity hit << 24'),
    ('dnat', 'DNAT', 'a=new destination IP b=new destination port'),
    ('snat', 'SNAT', 'a=new source IP (hairpin)'),
    ('unnat', 'UNNAT', 'a=ClusterIP b=port c=client IP restored after hairpin SNAT (0: none)'),
    ('reject', 'REJECT', 'a=proto (RST or ICMP port unreachable)'),
    ('fdb', 'FDB', 'a=egress port (0xffffffff: miss) b=domain'),
    ('flood', 'FLOOD', 'a=domain b=ports'),
    ('encap', 'ENCAP', 'a=uplink port'),
    ('vtep_arp', 'VTEP_ARP', "the VTEP's MAC is unknown: the frame became an ARP request"),
    ('decap', 'DECAP', 'a=VNI (vxlan; 0 otherwise) b=backend (0 vxlan, 1 ipip, 2 direct)'),
    ('reply', 'REPLY', 'a=port: the gateway or node answered in place'),
    ('local', 'LOCAL', 'consumed by the gateway/node'),
    ('tx', 'TX', 'a=port b=len'),
)

DROP_NAMES = tuple(name for name, _, _ in DROPS)
EVENT_NAMES = [name for name, _, _ in EVENTS]
HERE = Path(__file__).resolve().parent


def _enum(prefix, entries, count, what):
    lines = [f"# Generated from fastpath/reasons.py ({what}): edit that list, then run",
             "# `python fastpath/reasons.py`. Do not edit here.", "cdef enum:"]
    for i, (_, c, doc) in enumerate(entries):
        code = f"    {prefix}{c}" + (" = 0" if i == 0 else "")
        lines.append(f"{code:<29}# {doc}" if doc else code)
    lines.append(f"    {count}")
    return "\n".join(lines) + "\n"


def pxi():
    """{file name: text} of the generated enums."""
    return {"drops.pxi": _enum("DROP_", DROPS, "N_DROP", "DROPS"),
            "events.pxi": _enum("EV_", EVENTS, "N_EV", "EVENTS")}


def main(argv):
    stale = [name for name, text in pxi().items()
             if not (HERE / name).exists() or (HERE / name).read_text() != text]
    if "--check" in argv:
        for name in stale:
            print(f"fastpath/{name} is out of step with fastpath/reasons.py: run python fastpath/reasons.py")
        return 1 if stale else 0
    for name in stale:
        (HERE / name).write_text(pxi()[name])
        print(f"wrote fastpath/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
