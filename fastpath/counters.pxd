# Per-port and per-drop-reason counters, plain C so the burst loop bumps them
# without touching Python. One stats_t per worker (its only writer, with
# fastpath/sync.pxd's inc/add); readers sum them with relaxed loads.
from libc.stdint cimport uint64_t
from fastpath.defs cimport N_DROP, MAX_PORTS

ctypedef struct port_stats_t:
    uint64_t rx_packets
    uint64_t rx_bytes
    uint64_t tx_packets
    uint64_t tx_bytes
    uint64_t rx_dropped

ctypedef struct stats_t:
    uint64_t drops[N_DROP]
    uint64_t flooded       # frames flooded (counted once per frame)
    uint64_t forwarded     # frames sent to one known port
    uint64_t routed        # by the gateway (reported under "gateway")
    uint64_t encapsulated  # VXLAN (reported under "overlay")
    uint64_t gso_encapsulated  # of them, super-frames sent whole with UDP-tunnel GSO
    uint64_t decapsulated
    uint64_t segmented     # TCP super-frames cut into MTU-sized segments (ipip: no GSO type)
    uint64_t segments      # the segments they became
    port_stats_t port[MAX_PORTS]
