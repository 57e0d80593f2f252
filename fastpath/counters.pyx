"""Names of the fast path's counters, in the order of the C enums in defs.pxd."""
from fastpath.defs cimport N_DROP

from fastpath.reasons import DROP_NAMES     # the one list; the enum is made from it too

N_DROP_REASONS = N_DROP
assert len(DROP_NAMES) == N_DROP, "DROP_NAMES out of step with defs.pxd"
