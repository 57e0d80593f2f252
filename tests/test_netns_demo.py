"""`make demo` end to end: the default cluster comes up, every live check
passes, the counters show traffic, and down removes it."""
from conftest import require_root
from netns_helpers import cluster_env


def test_demo_on_the_default_cluster(tmp_path):
    require_root()
    from dataplane import cluster, demo, netns
    lines = []
    with cluster_env(tmp_path):
        try:
            assert demo.main(out=lines.append) == 0
            text = "\n".join(lines)
            assert "[FAIL]" not in text
            assert text.count("[PASS]") >= 11 and "follows it: a backend, then gone after pod delete" in text and "across nodes, VXLAN" in text and "ClusterIP 10.96.0.10:80" in text
            assert "sha256 verified" in text and "podnet down" in text
            assert "web-a" in text and "10.96.0.10" in text          # pods and the service listed
            # running it again reuses the cluster instead of failing
            assert demo.main(out=lines.append) == 0
            assert any("already up" in ln for ln in lines)
        finally:
            cluster.down(quiet=True)
        assert [n for n in netns.listing() if n.startswith("podnet-")] == []
