"""podnet command line (also `python -m dataplane`)."""
import argparse
import json
import os
import sys

from dataplane.table import FDB_COLUMNS, PORT_COLUMNS, counters_rows, port_rows, render


def _out(args, rows, columns):
    print(render(rows, columns, "json" if args.output == "json" else "table"))


def _as_json(args, data):
    """-o json: print data as JSON (for scripts) and say so; else print nothing."""
    if args.output != "json":
        return False
    print(json.dumps(data, indent=2))
    return True


def _workers_arg(v):
    if v == "auto":
        return v
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of workers or auto, got {v!r}") from None
    if not 1 <= n <= 16:
        raise argparse.ArgumentTypeError(f"workers must be 1..16 or auto, got {n}")
    return n


def cmd_up(args):
    from dataplane import cluster
    cluster.up(args.file, vnet=not args.plain, metrics=args.metrics, metrics_port=args.metrics_port,
               workers=args.workers)
    return cmd_status(argparse.Namespace(output="table"))


def cmd_down(args):
    from dataplane import cluster
    cluster.down(force=args.force)
    return 0


def _labels_arg(v):
    k, sep, val = v.partition("=")
    if not sep or not k:
        raise argparse.ArgumentTypeError(f"expected a label as key=value, got {v!r}")
    return k, val


POD_COLUMNS = [("pod", "name"), ("node", "node"), ("ip", "ip"), ("mac", "mac"), ("origin", "origin"),
               ("container", "container"), ("labels", "labels_text"), ("namespace", "namespace")]


def _pod_rows(rows):
    return [dict(r, labels_text=",".join(f"{k}={v}" for k, v in sorted(r["labels"].items())) or "<none>",
                 container=(r["container_id"] or "")[:12]) for r in rows]


def cmd_pod(args):
    from dataplane import cluster
    if args.action == "add":
        labels = dict(args.label or [])
        r = cluster.pod_add(args.name, args.node, labels)
        print(f"pod {r['name']}: {r['ip']} on node {r['node']} (namespace {r['netns']}, port {r['port']})")
    else:
        r = cluster.pod_delete(args.name)
        print(f"pod {r['name']} deleted: {r['ip']} freed on node {r['node']}"
              + (f", {r['conntrack_deleted']} connections and {r['fdb_flushed']} FDB entries flushed"
                 if "conntrack_deleted" in r else ""))
    return 0


def cmd_pods(args):
    from dataplane import cluster
    rows = cluster.pods()
    if _as_json(args, rows):
        return 0
    print(render(_pod_rows(rows), POD_COLUMNS))
    return 0


def cmd_cni(args):
    from dataplane import cluster, cni
    try:
        return _cni(args, cni)
    except ValueError as e:
        raise cluster.ClusterError(str(e)) from None


def _cni(args, cni):
    if args.action == "install":
        for path in cni.install(args.conf_dir, args.bin_dir, node=args.node):
            print(f"wrote {path}")
    else:
        for path in cni.uninstall(args.conf_dir, args.bin_dir):
            print(f"removed {path}")
    return 0


def cmd_status(args):
    from dataplane import cluster
    st = cluster.status()
    if _as_json(args, st):
        return 0
    print(f"cluster {st['cluster']} ({st['source']}), backend {st.get('backend', 'vxlan')}\n")
    _out(args, st["nodes"], [("node", "name"), ("agent", "agent"), ("pid", "agent_pid"),
                             ("namespace", "netns"), ("pod subnet", "subnet"),
                             ("gateway", "gateway_ip"), ("gateway mac", "gateway_mac")])
    print()
    _out(args, st["pods"], [("pod", "name"), ("node", "node"), ("namespace", "namespace"),
                            ("ip", "ip"), ("mac", "mac")])
    return 0


def cmd_exec(args):
    from dataplane import cluster
    ns = cluster.pod_namespace(args.pod)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        raise SystemExit("podnet exec: give a command after --, e.g. podnet exec web-a -- ip addr")
    if os.path.isabs(ns):                     # a CNI pod: the runtime's netns, by path
        os.execvp("nsenter", ["nsenter", f"--net={ns}", *cmd])
    os.execvp("ip", ["ip", "netns", "exec", ns, *cmd])


def _agent_request(node, op):
    from dataplane import cluster
    from dataplane.control import request
    return request(cluster.node_socket(cluster.require_state(), node), op)


def cmd_fdb(args):
    _out(args, _agent_request(args.node, "fdb"), FDB_COLUMNS)
    return 0


def cmd_stats(args):
    c = _agent_request(args.node, "counters")
    if _as_json(args, c):
        return 0
    pods = {p["port"]: p["pod"] for p in _agent_request(args.node, "status")["ports"]}
    c["ports"] = {int(k): dict(v, pod=pods.get(int(k), "uplink" if int(k) == 255 else ""))
                  for k, v in c["ports"].items()}
    print(render(port_rows(c), PORT_COLUMNS))
    print()
    rows = counters_rows(c)
    rows += [{"counter": f"io.{k}", "value": round(v, 2) if isinstance(v, float) else v}
             for k, v in c["io"].items() if k != "ports"]
    print(render(rows, [("counter", "counter"), ("value", "value")]))
    return 0


def cmd_metrics(args):
    print(_agent_request(args.node, "metrics"), end="")
    return 0


def cmd_routes(args):
    _out(args, _agent_request(args.node, "routes"),
         [("node", "name"), ("pod cidr", "cidr"), ("vtep", "vtep"), ("vtep state", "vtep_state"),
          ("underlay mac", "vtep_mac"), ("inner mac", "inner_mac"), ("vni", "vni")])
    return 0


def cmd_node(args):
    from dataplane import cluster
    if args.action == "add":
        r = cluster.node_add(args.name, args.pod_cidr, args.vtep, args.vtep_mac)
        via = {"vxlan": f"VTEP {r['vtep']} (inner MAC {r.get('inner_mac')})",
               "ipip": f"IPIP to {r['vtep']}", "direct": f"next hop {r['vtep']}"}[r["backend"]]
        if r["backend"] != "vxlan" and r.get("vtep_mac"):
            via += f" (underlay MAC {r['vtep_mac']})"
        print(f"node {args.name}: {r['cidr']} via {via} on every agent")
    else:
        cluster.node_remove(args.name)
        print(f"node {args.name} removed from every agent")
    return 0


def cmd_apply(args, delete=False):
    from dataplane import cluster
    big = os.path.getsize(args.file) > (256 << 10) if os.path.exists(args.file) else False
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if big else None   # thousands of objects
    result, changed, removed = cluster.apply_file(args.file, delete=delete, progress=say)
    lines = result if delete else [ln for v in result.values() for ln in v]
    for ln in lines:
        print(ln)
    print(f"({changed} service ports loaded, {removed} removed on every agent)", file=sys.stderr)
    return 0


def cmd_delete(args):
    return cmd_apply(args, delete=True)


def cmd_services(args):
    from dataplane import cluster
    rows = [dict(e, backends=" ".join(f"{ip}:{p}" for ip, p in e["backends"]) or "<none>",
                 port=f"{e['port']}/{e['protocol']}") for e in cluster.services()]
    if _as_json(args, cluster.services()):
        return 0
    print(render(rows, [("service", "key"), ("cluster ip", "vip"), ("port", "port"),
                        ("lb", "load_balancing"), ("affinity s", "affinity_timeout"), ("backends", "backends")]))
    return 0


def cmd_conntrack(args):
    _out(args, _agent_request(args.node, "conntrack"),
         [("proto", "proto"), ("state", "state"), ("client", "client"), ("service", "service"),
          ("backend", "backend"), ("snat", "snat"), ("packets", "packets"), ("expires s", "expires_in")])
    return 0


def cmd_trace(args):
    from dataplane import cluster, trace
    if args.pcap:
        frame = trace.pcap_frame(args.pcap, args.index)
    elif args.dest:
        frame = trace.build_frame(cluster.require_state(), args.pod, args.dest, args.proto, args.sport,
                                  args.flags)
    else:
        raise trace.TraceError("give a destination (IP:PORT) or --pcap FILE")
    hops = trace.run(args.pod, frame, commit=args.commit)
    if args.output == "json":
        for hop in hops:
            hop["text"] = [t for _, t in trace.describe(hop)]
        print(json.dumps(hops, indent=2))
    else:
        print(trace.render(hops))
        if not args.commit:
            print("\n(traced in a copy of each agent: no live table or counter changed; --commit to apply)")
    return 0


def cmd_capture(args):
    from dataplane import capture
    tty = sys.stderr.isatty()
    show = (lambda n: print(f"\r{n} frames", end="", file=sys.stderr, flush=True)) if tty else None
    print(f"capturing on {args.node} port {args.port} to {args.write}"
          + (f" ({args.count} frames)" if args.count else " (Ctrl-C to stop)"), file=sys.stderr)
    n, lost = capture.run(args.node, args.port, args.write, count=args.count, timeout=args.timeout,
                          snaplen=args.snaplen, progress=show)
    print(f"{chr(13) if tty else ''}{n} frames written to {args.write}"
          + (f"; {lost} lost to a full capture buffer" if lost else ""), file=sys.stderr)
    return 0


def cmd_agent(args):
    from dataplane import agent
    return agent.main(args.config)


def cmd_bridge_demo(args):
    from dataplane import bridge_demo
    bridge_demo.run()
    return 0


def cmd_demo(args):
    from dataplane import demo
    return demo.main()


def build_parser():
    p = argparse.ArgumentParser(prog="podnet", description="Userspace Kubernetes-style pod network")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    def add(name, func, help, output=False):
        s = sub.add_parser(name, help=help)
        s.set_defaults(func=func)
        if output:
            s.add_argument("-o", "--output", choices=["table", "json"], default="table")
        return s

    s = add("up", cmd_up, "create the cluster (embedded default spec unless -f)")
    s.add_argument("-f", "--file", help="cluster spec (YAML)")
    s.add_argument("--plain", action="store_true", help="TAPs without vnet headers/offloads (comparison mode)")
    s.add_argument("--workers", type=_workers_arg, default=None, metavar="N|auto",
                   help="forwarding threads per node (default: the spec's cluster.workers, else auto)")
    s.add_argument("--metrics", action="store_true",
                   help="serve Prometheus metrics on RUN_DIR/NODE.metrics.sock (HTTP)")
    s.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="also on 127.0.0.1:PORT+i for the i-th node (implies --metrics)")
    s = add("down", cmd_down, "remove every namespace, TAP, socket and agent `up` created")
    s.add_argument("--force", action="store_true",
                   help="also when containers are attached through CNI (they are detached first)")
    add("status", cmd_status, "nodes, agents, pods and addresses", output=True)
    s = add("pod", cmd_pod, "add a pod to the running cluster or delete one")
    psub = s.add_subparsers(dest="action", required=True, metavar="add|delete")
    a = psub.add_parser("add", help="podnet pod add NAME [--node NODE] [--label k=v ...]")
    a.add_argument("name")
    a.add_argument("--node", help="the node to run it on (default: the first)")
    a.add_argument("--label", "-l", action="append", type=_labels_arg, metavar="KEY=VALUE",
                   help="a label (Services select pods by them); repeat for more")
    d = psub.add_parser("delete", help="podnet pod delete NAME")
    d.add_argument("name")
    add("pods", cmd_pods, "every pod: spec, added, from manifests and CNI", output=True)
    s = add("cni", cmd_cni, "install or remove the podnet CNI network for container runtimes")
    csub = s.add_subparsers(dest="action", required=True, metavar="install|uninstall")
    for name, what in (("install", "write the `podnet` conflist and the podnet-cni launcher"),
                       ("uninstall", "remove exactly what install wrote")):
        c = csub.add_parser(name, help=what)
        c.add_argument("--conf-dir", default="/etc/cni/net.d", help="CNI network configs (default /etc/cni/net.d)")
        c.add_argument("--bin-dir", default="/opt/cni/bin", help="CNI plugins (default /opt/cni/bin)")
        if name == "install":
            c.add_argument("--node", help="the node whose agent serves ADDs (default: the first)")
    s = add("exec", cmd_exec, "run a command in a pod's namespace: podnet exec POD -- CMD ...")
    s.add_argument("pod")
    s.add_argument("command", nargs=argparse.REMAINDER)
    s = add("fdb", cmd_fdb, "a node's bridge forwarding database", output=True)
    s.add_argument("node")
    s = add("stats", cmd_stats, "a node's per-port and per-drop-reason counters", output=True)
    s.add_argument("node")
    s = add("metrics", cmd_metrics, "a node's counters in Prometheus text format")
    s.add_argument("node")
    s = add("apply", cmd_apply, "apply Pod / Service / EndpointSlice manifests (multi-document YAML)")
    s.add_argument("-f", "--file", required=True)
    s = add("delete", cmd_delete, "delete the Pods / Services / EndpointSlices named in a file")
    s.add_argument("-f", "--file", required=True)
    add("services", cmd_services, "service ports, cluster IPs and backends", output=True)
    s = add("conntrack", cmd_conntrack, "a node's connection tracking table", output=True)
    s.add_argument("node")
    s = add("routes", cmd_routes, "a node's overlay routes (flannel-style: pod CIDR -> VTEP)", output=True)
    s.add_argument("node")
    s = add("node", cmd_node, "register/remove an external node (Linux's own vxlan, tunl0 or routes) with every agent")
    nsub = s.add_subparsers(dest="action", required=True, metavar="add|remove")
    a = nsub.add_parser("add", help="podnet node add NAME --pod-cidr CIDR --vtep IP [--vtep-mac MAC]")
    a.add_argument("name")
    a.add_argument("--pod-cidr", required=True)
    a.add_argument("--vtep", required=True,
                   help="the node's underlay IP on the fabric (the tunnel's far end; in direct mode the next hop)")
    a.add_argument("--vtep-mac", help="vxlan: its VXLAN device MAC (inner destination; default: podnet's gateway "
                                      "MAC convention); ipip, direct: its underlay MAC (default: found by ARP)")
    r = nsub.add_parser("remove", help="podnet node remove NAME")
    r.add_argument("name")
    s = add("trace", cmd_trace, "show every fast-path decision for one packet from a pod", output=True)
    s.add_argument("pod", help="the pod that sends the packet")
    s.add_argument("dest", nargs="?", help="destination IP:PORT (IP for icmp)")
    s.add_argument("-p", "--proto", default="tcp", help="tcp (default), udp or icmp")
    s.add_argument("--sport", type=int, default=40000, help="source port (ICMP: echo id)")
    s.add_argument("--flags", default="S", help="TCP flags (default S: a new connection)")
    s.add_argument("--pcap", help="trace a frame from this pcap instead, as if the pod sent it")
    s.add_argument("--index", type=int, default=0, help="which frame of the pcap (0-based)")
    s.add_argument("--commit", action="store_true", help="run on the live tables (learning, conntrack)")
    s = add("capture", cmd_capture, "write the frames crossing a port to a pcap (tcpdump/Wireshark)")
    s.add_argument("node")
    s.add_argument("port", help="a pod name, a port number, or uplink")
    s.add_argument("-w", "--write", required=True, metavar="FILE.pcap")
    s.add_argument("-c", "--count", type=int, help="stop after this many frames")
    s.add_argument("--timeout", type=float, help="stop after this many seconds")
    s.add_argument("--snaplen", type=int, default=65535, help="bytes kept per frame (default 65535)")
    add("demo", cmd_demo, "bring up the default cluster, check it, show it")
    add("bridge-demo", cmd_bridge_demo, "scapy-driven learning-bridge tour (no root needed)")
    # No help= at all: argparse lists a subcommand with any help text, SUPPRESS
    # included (as "==SUPPRESS=="); the agent is started by `up`, not by users.
    s = sub.add_parser("agent")
    s.add_argument("config")
    s.set_defaults(func=cmd_agent)
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from dataplane.cluster import ClusterError
    from dataplane.control import ControlError
    from dataplane.manifests import ManifestError
    from dataplane.spec import SpecError
    from dataplane.trace import TraceError
    from dataplane.capture import CaptureError
    try:
        return args.func(args)
    except (ClusterError, ControlError, SpecError, ManifestError, TraceError, CaptureError) as e:
        print(f"podnet {args.cmd}: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:                   # `podnet status | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
