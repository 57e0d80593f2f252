"""The packet-testing toolkit's own cost (issue 16), needs root. Interleaved
rounds (bench/rounds.py, the order rotated each round) of two measurements:

Frames per second pushed and checked through a live pod pair (pods a and b
of one node, a UDP datagram each, the packets built with scapy before the
clock starts), three ways:

  toolkit   send_and_expect(a, packets, b): markers appended, frames built,
            sent from a's eth0 (AF_PACKET in its namespace), captured at b's,
            matched by marker, returned dissected
  scapy     what a test would write with scapy alone: an AsyncSniffer on b's
            eth0 (its socket opened in b's namespace) and sendp() on a's, the
            packets carrying their own payload numbers, waiting until every
            number arrived (lfilter on the UDP port)
  raw       the floor: the same frames as prebuilt bytes through plain
            AF_PACKET sockets, matched by payload bytes, nothing dissected

Set-up and tear-down of a 2-node cluster (the embedded default spec: two
nodes, four pods, a service), two ways:

  fixture   dataplane.testing.Cluster up and down (what podnet_cluster does
            for each test)
  cli       `podnet up` and `podnet down` as processes, in a run directory
            of their own (what a test harness would otherwise script)

Figures are the median and min-max over the rounds; the ratios are taken
within each round. Writes bench/results/toolkit.json and toolkit.png, or
--out FILE; --quick is a smoke run.

    python bench/e2e_toolkit.py [--frames 2000] [--rounds 5] [--quick] [--out FILE]
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
from machine import machine  # noqa: E402
from rounds import fill_defaults, interleave, spread  # noqa: E402

RESULTS = HERE / "results"
SPEC = """cluster: {name: pnbtk, podCIDR: 10.214.0.0/16, serviceCIDR: 10.74.0.0/16, fabricCIDR: 172.30.214.0/24}
nodes: [{name: n1}]
pods: [{name: a, node: n1}, {name: b, node: n1}]
"""
PORT = 4321


def packets(a, b, n):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    return [Ether(src=a.mac, dst=a.gateway_mac) / IP(src=a.ip, dst=b.ip) / UDP(sport=1234, dport=PORT)
            / (b"%08d" % i) for i in range(n)]


def via_toolkit(a, b, n):
    from dataplane.testing import send_and_expect
    pkts = packets(a, b, n)
    t = time.perf_counter()
    got = send_and_expect(a, pkts, b, timeout=30)
    dt = time.perf_counter() - t
    assert len(got) == n
    return n / dt


def via_scapy(a, b, n):
    from scapy.arch.linux import L2ListenSocket, L2Socket
    from scapy.layers.inet import UDP
    from scapy.sendrecv import AsyncSniffer, sendp
    from tap.device import in_netns
    pkts = packets(a, b, n)
    with in_netns(b.netns):
        rx = L2ListenSocket(iface="eth0", promisc=False)
    with in_netns(a.netns):
        tx = L2Socket(iface="eth0", promisc=False)
    seen = set()

    def take(p):
        if UDP in p and p[UDP].dport == PORT:
            seen.add(bytes(p[UDP].payload)[:8])
    try:
        sniffer = AsyncSniffer(opened_socket=rx, store=False, prn=take,
                               stop_filter=lambda p: len(seen) >= n)
        sniffer.start()
        time.sleep(0.2)                       # its thread is reading (not timed)
        t = time.perf_counter()
        sendp(pkts, socket=tx, verbose=False)
        sniffer.join(30)
        dt = time.perf_counter() - t
        if sniffer.running:
            sniffer.stop()
    finally:
        tx.close()
        rx.close()
    assert len(seen) == n, f"scapy saw {len(seen)} of {n}"
    return n / dt


def via_raw(a, b, n):
    from tap.device import in_netns
    frames = [bytes(p) for p in packets(a, b, n)]
    with in_netns(b.netns):
        rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        rx.bind(("eth0", 3))
        rx.setsockopt(263, 23, 1)             # PACKET_IGNORE_OUTGOING
        rx.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)
    with in_netns(a.netns):
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        tx.bind(("eth0", 0))
    want = {f[-8:] for f in frames}
    seen = set()
    try:
        rx.settimeout(30)
        t = time.perf_counter()
        for f in frames:
            tx.send(f)
        while len(seen) < n:
            f = rx.recv(65536)
            if f[-8:] in want:
                seen.add(f[-8:])
        dt = time.perf_counter() - t
    finally:
        tx.close()
        rx.close()
    return n / dt


def setup_fixture(tmp):
    from dataplane.testing import Cluster
    c = Cluster(None, tempfile.mkdtemp(dir=tmp))
    t = time.perf_counter()
    c.up()
    up = time.perf_counter() - t
    t = time.perf_counter()
    c.down()
    return {"up_s": up, "down_s": time.perf_counter() - t}


def setup_cli(tmp):
    d = tempfile.mkdtemp(dir=tmp)
    env = {**os.environ, "PODNET_RUN_DIR": f"{d}/run", "PODNET_STATE_DIR": f"{d}/state"}
    cli = [sys.executable, "-m", "dataplane"]
    t = time.perf_counter()
    subprocess.run(cli + ["up"], env=env, check=True, capture_output=True, timeout=120)
    up = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run(cli + ["down"], env=env, check=True, capture_output=True, timeout=120)
    return {"up_s": up, "down_s": time.perf_counter() - t}


def plot(doc, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    paths = list(doc["sendsniff"])
    med = [doc["sendsniff"][p]["median"] / 1000 for p in paths]
    err = [[m - doc["sendsniff"][p]["min"] / 1000 for p, m in zip(paths, med)],
           [doc["sendsniff"][p]["max"] / 1000 - m for p, m in zip(paths, med)]]
    ax1.bar(paths, med, yerr=err, capsize=4, color=["tab:blue", "tab:orange", "tab:gray"])
    ax1.set_yscale("log")                     # the floor is two orders of magnitude above scapy's
    ax1.set_ylabel("k frames/s, sent and checked (log)")
    ax1.set_title(f"pod a -> pod b, {doc['frames']} frames")
    labels, vals, errs = [], [], [[], []]
    for way in ("fixture", "cli"):
        for step in ("up_s", "down_s"):
            s = doc["setup"][way][step]
            labels.append(f"{way} {step[:-2]}")
            vals.append(s["median"])
            errs[0].append(s["median"] - s["min"])
            errs[1].append(s["max"] - s["median"])
    ax2.bar(labels, vals, yerr=errs, capsize=4, color=["tab:blue", "tab:blue", "tab:orange", "tab:orange"])
    ax2.set_ylabel("seconds")
    ax2.set_title("2-node cluster set-up / tear-down")
    fig.suptitle(f"median, min-max over {doc['rounds']} rounds; {doc['machine']['cores']} vCPU")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--plot-only", action="store_true", help="redraw the PNG from --out's JSON")
    args = fill_defaults(ap.parse_args(argv), {"frames": 200, "rounds": 1}, {"frames": 2000, "rounds": 5},
                         HERE / "build" / "toolkit-quick.json", RESULTS / "toolkit.json")
    if args.plot_only:
        plot(json.loads(Path(args.out).read_text()), Path(args.out).with_suffix(".png"))
        return
    if os.geteuid() != 0:
        sys.exit("e2e_toolkit needs root (network namespaces)")
    from dataplane.testing import Cluster
    ways = {"toolkit": via_toolkit, "scapy": via_scapy, "raw": via_raw}
    with tempfile.TemporaryDirectory(prefix="pnbtk-") as tmp, Cluster(SPEC, Path(tmp) / "pair") as c:
        a, b = c.pod("a"), c.pod("b")
        via_toolkit(a, b, 50)                  # warm: imports, ARP, sockets
        raw = interleave(list(ways), ["sendsniff"], args.rounds, lambda p, _: {"fps": ways[p](a, b, args.frames)},
                         log=lambda m: print(m, file=sys.stderr, flush=True))["sendsniff"]
        setups = {"fixture": setup_fixture, "cli": setup_cli}
        sraw = interleave(list(setups), ["setup"], args.rounds, lambda p, _: setups[p](tmp),
                          log=lambda m: print(m, file=sys.stderr, flush=True))["setup"]
    fps = {p: [r["fps"] for r in v] for p, v in raw.items()}
    doc = {
        "machine": machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "frames": args.frames, "rounds": args.rounds,
        "sendsniff": {p: spread(v) for p, v in fps.items()},
        "ratios": {"toolkit_vs_scapy": spread([x / y for x, y in zip(fps["toolkit"], fps["scapy"])]),
                   "toolkit_vs_raw": spread([x / y for x, y in zip(fps["toolkit"], fps["raw"])])},
        "setup": {w: {k: spread([r[k] for r in v]) for k in ("up_s", "down_s")} for w, v in sraw.items()},
        "setup_total": {w: spread([r["up_s"] + r["down_s"] for r in v]) for w, v in sraw.items()},
        "setup_ratios": {**{k: spread([x[k] / y[k] for x, y in zip(sraw["fixture"], sraw["cli"])])
                            for k in ("up_s", "down_s")},
                         "total": spread([(x["up_s"] + x["down_s"]) / (y["up_s"] + y["down_s"])
                                          for x, y in zip(sraw["fixture"], sraw["cli"])])},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    plot(doc, out.with_suffix(".png"))
    print(json.dumps({p: round(s["median"]) for p, s in doc["sendsniff"].items()}))
    print(json.dumps({w: {k: round(s["median"], 3) for k, s in v.items()} for w, v in doc["setup"].items()}))


if __name__ == "__main__":
    main()
