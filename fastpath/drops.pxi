# Generated from fastpath/reasons.py (DROPS): edit that list, then run
# `python fastpath/reasons.py`. Do not edit here.
cdef enum:
    DROP_NONE = 0
    DROP_BAD_PORT            # ingress port unknown or down
    DROP_RUNT                # shorter than an Ethernet header
    DROP_TOO_LONG            # larger than a buffer slot
    DROP_VLAN_TRUNC          # 802.1Q tag cut short
    DROP_VLAN_DEPTH          # more than two VLAN tags
    DROP_SRC_MCAST           # source MAC is multicast/broadcast
    DROP_ARP_TRUNC
    DROP_IP4_TRUNC           # fewer bytes than the IPv4 header needs
    DROP_IP4_VERSION         # version field is not 4
    DROP_IP4_IHL             # IHL < 5 or options run past the frame
    DROP_IP4_LEN             # total length shorter than the header or longer than the frame
    DROP_IP6_TRUNC
    DROP_IP6_LEN             # payload length runs past the frame
    DROP_L4_TRUNC            # TCP/UDP/ICMP header cut short
    DROP_TCP_DOFF            # TCP data offset < 5 or past the segment
    DROP_UDP_LEN             # UDP length < 8 or past the datagram
    DROP_SAME_PORT           # destination was learned on the ingress port
    DROP_NO_PORTS            # flood with no other port in the domain
    DROP_TTL                 # routed frame with TTL <= 1 (answered with ICMP time exceeded)
    DROP_NO_NEIGH            # routed to a local pod IP with no known MAC
    DROP_NO_ROUTE            # routed to an address no route covers
    DROP_GW_UNSUPPORTED      # sent to the gateway but nothing it answers (IPv6, non-echo to its IP)
    DROP_TOO_BIG             # larger than the fabric MTU allows (ICMP frag needed sent when DF)
    DROP_VTEP_UNRESOLVED     # peer VTEP's MAC not known yet (an ARP request went out instead)
    DROP_UPLINK_NOT_OURS     # on the uplink, not addressed to this node's MAC/IP
    DROP_UPLINK_UNSUPPORTED  # to this node's IP but not VXLAN on our port, ARP or ICMP echo
    DROP_VXLAN_FRAG          # a fragmented VXLAN packet
    DROP_VXLAN_FLAGS         # VXLAN I flag clear
    DROP_VXLAN_VNI           # a VNI this node does not serve
    DROP_VXLAN_INNER         # inner frame truncated or malformed
    DROP_VXLAN_NOT_ROUTED    # inner frame not IPv4 to this node's gateway MAC
    DROP_SVC_UNSUPPORTED     # to a ClusterIP but not TCP/UDP, or a fragment
    DROP_SVC_REJECTED        # no such service port or no endpoints: answered with RST / port unreachable
    DROP_CT_INVALID          # TCP segment other than SYN for a connection conntrack does not know
    DROP_CT_FULL             # conntrack table full: new flow refused
    DROP_SPOOF_MAC           # guarded pod port: source MAC (or ARP sender MAC) not the pod's
    DROP_SPOOF_IP            # guarded pod port: IPv4 source (or ARP sender IP) not the pod's
    DROP_CT_CLASH            # new flow whose reply tuple a live connection holds (client port reused to another ClusterIP, same backend)
    DROP_TUN_UNKNOWN_SRC     # IP-in-IP from an address that is no known node, or (direct) routed in from outside every route CIDR
    DROP_IPIP_FRAG           # a fragmented IP-in-IP packet
    DROP_IPIP_INNER          # inner IPv4 packet of an IP-in-IP packet truncated or malformed
    DROP_ECN_CE_NOT_ECT      # outer CE over a Not-ECT inner packet (RFC 6040 sec. 4.2: dropped)
    DROP_SEG_FULL            # a TCP super-frame to segment (ipip) and too few of the burst's segment slots left
    N_DROP
