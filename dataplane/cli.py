"""podnet command line (also `python -m dataplane`)."""
import argparse
import sys


def cmd_bridge_demo(args):
    from dataplane import bridge_demo
    bridge_demo.run()
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="podnet", description="Userspace Kubernetes-style pod network")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    d = sub.add_parser("demo", help="run the demo")
    d.set_defaults(func=cmd_bridge_demo)
    b = sub.add_parser("bridge-demo", help="scapy-driven learning-bridge tour (no root needed)")
    b.set_defaults(func=cmd_bridge_demo)
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
