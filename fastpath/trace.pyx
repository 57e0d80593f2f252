"""Names of the trace events the burst loop notes (see trace.pxd)."""

from fastpath.reasons import EVENT_NAMES    # the one list; the enum is made from it too
N_EVENTS = N_EV      # a test checks it matches EVENT_NAMES
