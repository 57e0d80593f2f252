"""What `cython -a` shows, as a test: the burst loop and every helper it
inlines compile to C with no Python C-API call and no GIL re-acquisition."""
import re
from pathlib import Path

import pytest

FASTPATH = Path(__file__).parent.parent / "fastpath"
HOT = [
    "__pyx_f_8fastpath_5burst_9Dataplane_run",
    "__pyx_f_8fastpath_5burst_run_mode",
    # the stage graph: the dispatcher and every stage
    "__pyx_f_8fastpath_5burst_dispatch",
    "__pyx_f_8fastpath_5burst_st_input",
    "__pyx_f_8fastpath_5burst_st_l2",
    "__pyx_f_8fastpath_5burst_st_forward",
    "__pyx_f_8fastpath_5burst_gw_next",
    "__pyx_f_8fastpath_5burst_st_service",
    "__pyx_f_8fastpath_5burst_st_reject",
    "__pyx_f_8fastpath_5burst_st_encap",
    "__pyx_f_8fastpath_5burst_segment",
    "__pyx_f_8fastpath_4ipip_ipip_segment",
    "__pyx_f_8fastpath_6tunnel_tun_segment",
    "__pyx_f_8fastpath_5burst_st_uplink",
    "__pyx_f_8fastpath_5burst_st_inner",
    "__pyx_f_8fastpath_5burst_enqueue",
    "__pyx_f_8fastpath_5burst_drop",
    "__pyx_f_8fastpath_5burst_flood",
    "__pyx_f_8fastpath_5burst_reply",
    "__pyx_f_8fastpath_5burst_local",
    "__pyx_f_8fastpath_5burst_gateway_ip4",
    "__pyx_f_8fastpath_5burst_unnat",
    "__pyx_f_8fastpath_9conntrack_ct_orig_update",
    "__pyx_f_8fastpath_9conntrack_ct_shard",
    "__pyx_f_8fastpath_7gateway_gw_ip4",
    "__pyx_f_8fastpath_7gateway_gw_arp",
    # the tunnel interface, its three backends and the underlay
    "__pyx_f_8fastpath_6tunnel_tun_encap",
    "__pyx_f_8fastpath_6tunnel_tun_rx",
    "__pyx_f_8fastpath_5vxlan_vx_encap",
    "__pyx_f_8fastpath_5vxlan_vx_decap",
    "__pyx_f_8fastpath_4ipip_ipip_encap",
    "__pyx_f_8fastpath_4ipip_ipip_decap",
    "__pyx_f_8fastpath_6direct_direct_encap",
    "__pyx_f_8fastpath_6direct_direct_rx",
    "__pyx_f_8fastpath_8underlay_ul_rx",
    "__pyx_f_8fastpath_8underlay_ul_resolve",
    "__pyx_f_8fastpath_8underlay_ul_learn",
    "__pyx_f_8fastpath_8services_svc_pick",
    "__pyx_f_8fastpath_9conntrack_ct_find",
    "__pyx_f_8fastpath_5guard_guard_check",
    "__pyx_f_8fastpath_3fdb_fdb_learn",
    "__pyx_f_8fastpath_3fdb_fdb_lookup",
    "__pyx_f_8fastpath_5parse_parse_frame",
    "__pyx_f_8fastpath_5parse_parse_ip4",
    "__pyx_f_8fastpath_5parse_parse_ip6",
    "__pyx_f_8fastpath_5parse_parse_l4",
    "ioloop:__pyx_f_8fastpath_6ioloop_6Worker_round_burst",
    "ioloop:__pyx_f_8fastpath_6ioloop_6Worker_burst",
    "ioloop:__pyx_f_8fastpath_6ioloop_6Worker_loop",
    "ioloop:__pyx_f_8fastpath_6ioloop_6Worker_flush",
    "ioloop:__pyx_f_8fastpath_6ioloop_6IOLoop_capture",
]


@pytest.mark.parametrize("fn", HOT)
def test_no_python_in_hot_function(fn):
    module, _, fn = fn.rpartition(":")
    c_file = FASTPATH / f"{module or 'burst'}.c"
    assert c_file.exists(), "build in place first (make build keeps the generated C)"
    src = c_file.read_text()
    # The burst loop's functions are fused (fastpath/trace.pxd): check both copies.
    bodies = re.findall(r"^static[^;{]*\b(?:__pyx_fuse_\d+)?" + fn + r"\([^;{]*\{\n(.*?)^\}", src, re.S | re.M)
    assert bodies, f"{fn} not found in {c_file.name}"
    for body in bodies:
        code = [ln for ln in body.splitlines() if not ln.strip().startswith(("/*", "*"))]
        leaks = [ln.strip() for ln in code if re.search(r"\bPy(?!_ssize_t\b)[A-Z_]|__Pyx_|PyGILState", ln)]
        assert leaks == [], f"Python leaks into {fn}: {leaks[:3]}"
