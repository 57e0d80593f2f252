"""What `cython -a` shows, as a test: the burst loop and every helper it
inlines compile to C with no Python C-API call and no GIL re-acquisition."""
import re
from pathlib import Path

import pytest

C_FILE = Path(__file__).parent.parent / "fastpath" / "burst.c"
HOT = [
    "__pyx_f_8fastpath_5burst_9Dataplane_run",
    "__pyx_f_8fastpath_5burst_9Dataplane_bridge",
    "__pyx_f_8fastpath_5burst_9Dataplane_enqueue",
    "__pyx_f_8fastpath_5burst_9Dataplane_drop",
    "__pyx_f_8fastpath_3fdb_fdb_learn",
    "__pyx_f_8fastpath_3fdb_fdb_lookup",
    "__pyx_f_8fastpath_5parse_parse_frame",
    "__pyx_f_8fastpath_5parse_parse_ip4",
    "__pyx_f_8fastpath_5parse_parse_ip6",
    "__pyx_f_8fastpath_5parse_parse_l4",
]


@pytest.mark.parametrize("fn", HOT)
def test_no_python_in_hot_function(fn):
    assert C_FILE.exists(), "build in place first (make build keeps the generated C)"
    src = C_FILE.read_text()
    m = re.search(r"^static[^;{]*\b" + fn + r"\([^;{]*\{\n(.*?)^\}", src, re.S | re.M)
    assert m, f"{fn} not found in {C_FILE.name}"
    code = [ln for ln in m.group(1).splitlines() if not ln.strip().startswith(("/*", "*"))]
    leaks = [ln.strip() for ln in code if re.search(r"\bPy[A-Z_]|__Pyx_|PyGILState", ln)]
    assert leaks == [], f"Python leaks into {fn}: {leaks[:3]}"
