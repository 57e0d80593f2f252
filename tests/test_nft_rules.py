"""The kube-proxy nftables ruleset the connect-latency benchmark loads
(bench/kubeproxy_nft.py): its text has kube-proxy's layout, bad input is
refused with a clear error, nft accepts it, and loaded into a router
namespace of its own it DNATs connections to a ClusterIP onto its endpoints,
picking among them with numgen, for services in the first transaction and for
those added after."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import kubeproxy_nft as kp  # noqa: E402
from conftest import IN_CI, require_root  # noqa: E402

SERVICES = [("bench/svc-0", "10.90.0.1", 80, [("10.234.2.2", 8080)]),
            ("bench/svc-1", "10.90.0.2", 80, [("10.234.2.2", 8080), ("10.234.2.3", 9090)]),
            ("ns1/dns", "10.90.0.10", 53, [("10.234.2.4", 5353)])]


def chains(text):
    """{chain name: [rule lines]} of an nft -f table text."""
    out = {}
    for m in re.finditer(r"^\tchain (\S+) \{\n(.*?)^\t\}", text, re.S | re.M):
        out[m.group(1)] = [line.strip() for line in m.group(2).splitlines() if line.strip()]
    return out


def service_ips(text):
    m = re.search(r"map service-ips \{.*?elements = \{(.*?)\}\n", text, re.S)
    return [e.strip() for e in m.group(1).split(",")] if m else []


def test_layout_is_kube_proxys():
    text = kp.ruleset(SERVICES)
    assert text.startswith("add table ip kube-proxy\ndelete table ip kube-proxy\ntable ip kube-proxy {\n")
    ch = chains(text)
    # hooks at kube-proxy's priorities: NAT at dstnat (-100) / srcnat (100), its filter checks 10 before
    assert ch["nat-prerouting"] == ["type nat hook prerouting priority -100; policy accept;", "jump services"]
    assert ch["nat-output"] == ["type nat hook output priority -100; policy accept;", "jump services"]
    assert ch["nat-postrouting"][0] == "type nat hook postrouting priority 100; policy accept;"
    assert ch["filter-forward"][0] == "type filter hook forward priority -110; policy accept;"
    # one dispatch rule: a verdict-map lookup on (daddr, proto, dport), whatever N is
    assert ch["services"][0] == "ip daddr . meta l4proto . th dport vmap @service-ips"
    elems = service_ips(text)
    assert len(elems) == len(SERVICES)
    for (name, vip, port, eps), elem in zip(SERVICES, elems):
        svc = kp.service_chain(name)
        assert elem == f"{vip} . tcp . {port} : goto {svc}"
        assert svc.startswith("service-") and svc.endswith(f"-{name}/tcp/http")
        # the service chain: numgen over its endpoints, one vmap entry per endpoint, in order
        [pick] = ch[svc]
        want = ", ".join(f"{i} : goto {kp.endpoint_chain(name, ip, p)}" for i, (ip, p) in enumerate(eps))
        assert pick == f"numgen random mod {len(eps)} vmap {{ {want} }}"
        for ip, p in eps:
            assert ch[kp.endpoint_chain(name, ip, p)] == [f"ip saddr {ip} jump mark-for-masquerade",
                                                          f"meta l4proto tcp dnat to {ip}:{p}"]
    # names differ per service and per endpoint, so no two services share a chain
    names = [c for c in ch if c.startswith(("service-", "endpoint-"))]
    assert len(names) == len(set(names)) == len(SERVICES) + sum(len(s[3]) for s in SERVICES)


def test_add_services_adds_only_the_new_ones():
    text = kp.add_services(SERVICES[1:2])
    lines = text.splitlines()
    svc = kp.service_chain("bench/svc-1")
    eps = [kp.endpoint_chain("bench/svc-1", "10.234.2.2", 8080), kp.endpoint_chain("bench/svc-1", "10.234.2.3", 9090)]
    assert lines[:3] == [f"add chain ip kube-proxy {c}" for c in [svc] + eps]
    assert f"add rule ip kube-proxy {svc} numgen random mod 2 vmap {{ 0 : goto {eps[0]}, 1 : goto {eps[1]} }}" in lines
    assert f"add rule ip kube-proxy {eps[1]} meta l4proto tcp dnat to 10.234.2.3:9090" in lines
    assert lines[-1] == f"add element ip kube-proxy service-ips {{ 10.90.0.2 . tcp . 80 : goto {svc} }}"
    # nothing else: no table rewrite, no other service touched
    assert all(line.startswith(("add chain ip kube-proxy ", "add rule ip kube-proxy ",
                                "add element ip kube-proxy service-ips ")) for line in lines)
    assert len(lines) == 3 + 1 + 2 * 2 + 1 and "svc-0" not in text


@pytest.mark.parametrize("bad, message", [
    (("svc", "10.90.0.300", 80, [("10.0.0.1", 80)]), "10.90.0.300"),
    (("svc", "10.90.0.1", 0, [("10.0.0.1", 80)]), "port 0"),
    (("svc", "10.90.0.1", 80, [("10.0.0.1", 70000)]), "endpoint port 70000"),
    (("svc", "10.90.0.1", 80, []), "no endpoints"),
    (("Svc; drop", "10.90.0.1", 80, [("10.0.0.1", 80)]), "lower-case"),
    (("svc", "10.90.0.1", 80), "must be (name, vip, port, backends)"),
])
def test_bad_input_is_refused_clearly(bad, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        kp.ruleset([bad])


def test_same_clusterip_port_twice_is_refused():
    with pytest.raises(ValueError, match="given twice"):
        kp.ruleset([SERVICES[0], ("bench/other", "10.90.0.1", 80, [("10.0.0.1", 80)])])


def need_nft():
    require_root()
    if not shutil.which("nft"):
        if IN_CI:
            pytest.fail("nft not found (the Makefile's TOOLS installs nftables)")
        pytest.skip("nft not found (apt-get install nftables)")


def test_nft_accepts_it_in_a_private_namespace():
    need_nft()
    ns = "pntnft-chk"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    try:
        r = subprocess.run(["ip", "netns", "exec", ns, "nft", "-c", "-f", "-"], input=kp.ruleset(SERVICES),
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        # and refuses a broken one, so the check above can fail
        r = subprocess.run(["ip", "netns", "exec", ns, "nft", "-c", "-f", "-"],
                           input=kp.ruleset(SERVICES).replace("numgen random", "numgen bogus"),
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0
    finally:
        subprocess.run(["ip", "netns", "del", ns], timeout=30)


SERVER = """
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in (8080, 8081):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64); sel.register(s, selectors.EVENT_READ, port)
print("ready", flush=True)
while True:
    for key, _ in sel.select(timeout=60):
        c, _ = key.fileobj.accept(); c.sendall(str(key.data).encode()); c.close()
"""
CLIENT = """
import json, socket, sys
got = []
for _ in range(int(sys.argv[2])):
    try:
        c = socket.create_connection((sys.argv[1], 80), timeout=3)
        got.append(c.recv(16).decode()); c.close()
    except OSError as e:
        got.append(type(e).__name__)
print(json.dumps(got))
"""


def test_loaded_ruleset_dnats_to_the_endpoints():
    need_nft()
    import e2e_connect

    class TestRouter(e2e_connect.NftRouter):
        prefix, net = "pntnft", "10.228"

        def services(self, lo, hi):   # two endpoints each: the server's two ports
            return [(f"bench/svc-{k}", e2e_connect.vip(k), 80, [(self.server, 8080), (self.server, 8081)])
                    for k in range(lo, hi)]

    def connect(r, vip, n):
        out = subprocess.run(["ip", "netns", "exec", r.ns["c"], sys.executable, "-c", CLIENT, vip, str(n)],
                             capture_output=True, text=True, timeout=120, check=True)
        return json.loads(out.stdout)

    with TestRouter() as r:
        r.load(0, 3)           # the whole table in one transaction
        r.load(3, 5)           # two more added to it
        assert r.count() == 5
        listed = json.loads(subprocess.run(["ip", "netns", "exec", r.ns["r"], "nft", "-j", "list", "table", "ip",
                                            "kube-proxy"], capture_output=True, text=True, check=True,
                                           timeout=60).stdout)["nftables"]
        assert sum(1 for x in listed if "chain" in x and x["chain"]["name"].startswith("service-")) == 5
        srv = subprocess.Popen(["ip", "netns", "exec", r.ns["s"], sys.executable, "-c", SERVER],
                               stdout=subprocess.PIPE, text=True)
        try:
            assert srv.stdout.readline().strip() == "ready"
            for k in (0, 4):   # one from each transaction
                got = connect(r, e2e_connect.vip(k), 40)
                # every connect reached the server, on the endpoints' ports only, and numgen used both
                # (one port missing from 40 random picks: 2 in 2**40)
                assert set(got) == {"8080", "8081"}, got
            # a ClusterIP with no service is not DNATed: nothing routes it, the connect fails
            [err] = connect(r, e2e_connect.vip(5), 1)
            assert err not in ("8080", "8081"), err
        finally:
            srv.kill()
            srv.wait()
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    assert "pntnft-" not in left
