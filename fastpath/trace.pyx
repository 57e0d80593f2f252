"""Names of the trace events the burst loop notes (see trace.pxd)."""

EVENT_NAMES = ["rx", "parse", "drop", "learn", "arp", "gateway", "service", "conntrack", "pick",
               "dnat", "snat", "unnat", "reject", "fdb", "flood", "encap", "vtep_arp", "decap",
               "reply", "local", "tx"]
N_EVENTS = N_EV      # a test checks it matches EVENT_NAMES
