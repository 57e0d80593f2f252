"""Names of the fast path's counters, in the order of the C enums in defs.pxd."""
from fastpath.defs cimport N_DROP

DROP_NAMES = (
    "none",
    "bad_port",
    "runt",
    "too_long",
    "vlan_truncated",
    "vlan_depth",
    "src_mac_multicast",
    "arp_truncated",
    "ip4_truncated",
    "ip4_version",
    "ip4_ihl",
    "ip4_length",
    "ip6_truncated",
    "ip6_length",
    "l4_truncated",
    "tcp_data_offset",
    "udp_length",
    "same_port",
    "no_ports",
    "ttl_exceeded",
    "no_neighbor",
    "no_route",
    "gateway_unsupported",
    "too_big",
    "vtep_unresolved",
    "uplink_not_ours",
    "uplink_unsupported",
    "vxlan_fragment",
    "vxlan_flags",
    "vxlan_vni",
    "vxlan_inner",
    "vxlan_not_routed",
    "service_unsupported",
    "service_rejected",
    "conntrack_invalid",
    "conntrack_full",
)

N_DROP_REASONS = N_DROP
assert len(DROP_NAMES) == N_DROP, "DROP_NAMES out of step with defs.pxd"
