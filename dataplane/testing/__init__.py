"""podnet's packet-testing toolkit: pytest fixtures and scapy send/expect
helpers, for a live cluster of network namespaces and for an in-memory node.

Installing podnet registers this module as a pytest plugin (the `pytest11`
entry point `podnet`), so its fixtures are there in every test:

    def test_routed(podnet_cluster):
        c = podnet_cluster(SPEC)                          # up now, down after the test
        a, b = c.pod("web-a"), c.pod("web-b")
        pkt = Ether(src=a.mac, dst=a.gateway_mac) / IP(src=a.ip, dst=b.ip) / UDP(dport=9) / b"x"
        [got] = send_and_expect(a, pkt, b)
        expect_routed(got, pkt, src_mac=b.gateway_mac, dst_mac=b.mac)

The model is FD.io VPP's test framework: frames are built and dissected with
scapy, sent from one endpoint (a pod's eth0, a node's uplink) and captured at
another, and sent and received frames are matched by a marker in their
payload (`send_and_expect`, `send_and_assert_no_reply`), never by order or
arrival time alone. A failed match shows what was sent, what arrived and the
fields that differ.

Fixtures (factories; what they make is torn down after the test, also when
it fails):
    podnet_cluster(spec)  a live cluster (Cluster): namespaces, TAPs, agents;
                          needs root and /dev/net/tun (skipped without them,
                          outside CI; under CI=true a failure).
    podnet_node(spec)     one node's fast path in this process (MemoryNode),
                          built from the spec as its agent builds it; no root.

docs/testing.md ("Writing packet tests") has a complete example file.

Isolation: a live cluster gets a run and state directory of its own and a
unique name, which prefixes its namespaces, so it never touches the user's
cluster (`podnet down` acts on /run/podnet, not on these) and two test runs
can share a host.

scapy is imported by the functions that need it, so loading the plugin
costs a pytest run that does not use it nothing.
"""
import os

from .capture import Capture
from .checks import diff_ip, expect_ipip, expect_routed, expect_vxlan
from .frames import (FrameTooLong, PodnetTestError, describe, diff, mark, marker, markers_in)
from .live import Cluster, Endpoint, Node, NodeInfo, Pod, _have_root, load_spec_input
from .match import send_and_assert_no_reply, send_and_expect
from .memory import Clock, MemoryNode, MemoryPod, MemoryPort

__all__ = [
    "Cluster", "MemoryNode", "Clock", "Pod", "Node", "NodeInfo", "Endpoint", "MemoryPod", "MemoryPort", "Capture",
    "PodnetTestError", "FrameTooLong", "marker", "mark", "markers_in", "send_and_expect",
    "send_and_assert_no_reply", "expect_vxlan", "expect_ipip", "expect_routed", "diff", "describe",
    "require_root", "podnet_cluster", "podnet_node", "diff_ip", "load_spec_input",
]


def _in_ci():
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")

def require_root():
    """Skip the calling test (outside CI) or fail it (CI=true, where live
    tests must run) unless this process is root with /dev/net/tun."""
    import pytest
    if not _have_root():
        msg = "live podnet clusters need root and /dev/net/tun"
        if _in_ci():
            pytest.fail(msg + " (CI=true: these tests must run)")
        pytest.skip(msg)


# ---- pytest fixtures ------------------------------------------------------------------

try:
    import pytest
except ImportError:                      # the helpers work without pytest; the fixtures need it
    pytest = None

if pytest is not None:
    @pytest.fixture
    def podnet_cluster(tmp_path_factory):
        """Factory: podnet_cluster(spec=None, **kw) brings a live Cluster up
        (spec: dict, YAML text, path; None: the embedded default; kw: vnet,
        workers) and returns it; every cluster made is taken down after the
        test, also when it fails. Skips without root (fails under CI=true)."""
        made = []

        def make(spec=None, **kw):
            require_root()
            c = Cluster(spec, tmp_path_factory.mktemp("podnet"), **kw)     # SpecError: nothing made
            made.append(c)
            return c.up()
        yield make
        errors = []
        for c in reversed(made):
            try:
                c.down()
            except Exception as e:          # every cluster is taken down, the first error reported
                errors.append(e)
        if errors:
            raise errors[0]

    @pytest.fixture
    def podnet_node(tmp_path_factory):
        """Factory: podnet_node(spec=None, node=None, **kw) returns a
        MemoryNode (node: its name, default the spec's first node; kw:
        clock, table capacities, burst). No root needed."""
        made = []

        def make(spec=None, node=None, **kw):
            n = MemoryNode(spec, node, workdir=tmp_path_factory.mktemp("podnet-node"), **kw)
            made.append(n)
            return n
        yield make
        for n in made:
            n.close()
