# Generated from fastpath/reasons.py (EVENTS): edit that list, then run
# `python fastpath/reasons.py`. Do not edit here.
cdef enum:
    EV_RX = 0                # a=port b=len c=vnet flags | gso_type << 8
    EV_PARSE                 # a=ethertype b=l4 proto c=parse flags
    EV_DROP                  # a=reason
    EV_LEARN                 # a=domain b=port
    EV_ARP                   # a=gateway action on an ARP frame (GW_*)
    EV_GW                    # a=gateway action on an IPv4 frame (GW_* or -drop) b=destination IP
    EV_SERVICE               # a=ClusterIP b=port c=proto
    EV_CT                    # a=CT_EV_* b=connection index c=TCP state
    EV_PICK                  # a=backend IP b=backend port c=backends | lb << 16 | affinity hit << 24
    EV_DNAT                  # a=new destination IP b=new destination port
    EV_SNAT                  # a=new source IP (hairpin)
    EV_UNNAT                 # a=ClusterIP b=port c=client IP restored after hairpin SNAT (0: none)
    EV_REJECT                # a=proto (RST or ICMP port unreachable)
    EV_FDB                   # a=egress port (0xffffffff: miss) b=domain
    EV_FLOOD                 # a=domain b=ports
    EV_ENCAP                 # a=uplink port
    EV_VTEP_ARP              # the VTEP's MAC is unknown: the frame became an ARP request
    EV_DECAP                 # a=VNI (vxlan; 0 otherwise) b=backend (0 vxlan, 1 ipip, 2 direct)
    EV_REPLY                 # a=port: the gateway or node answered in place
    EV_LOCAL                 # consumed by the gateway/node
    EV_TX                    # a=port b=len
    N_EV
