"""What the cluster spec (spec.py) and manifests (manifests.py) validate alike: reading the file,
the checkers that collect every problem of a document, the words of each error, and the
ServicePort both describe a service's ports with.

An error reads `{where}: {path}: {what is wrong}; expected {what}`; a checker records it and
returns None, so one pass reports every problem of a file. A key given as null counts as absent
(get), as in Kubernetes.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import yaml

from .textload import problem

LABEL_MAX = 63               # service, namespace and port names: a plain DNS-1123 label
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
MAX_FILE = 64 << 20          # bytes; 10k services x 10 endpoints as manifests is ~10 MB


@dataclass(frozen=True)
class ServicePort:
    # Unnamed (only a service's one port may be): None in a spec, "" in a manifest, as each is written.
    name: str | None
    port: int
    target_port: int | str   # a string (manifests only) names a port of the service's EndpointSlices
    protocol: str = "TCP"


def message(where, path, wrong, expected):
    return f"{where}: {path}: {wrong}; expected {expected}"


def read_text(path, error, what):
    """A UTF-8 file's text, or error([f"{path}: {what} (why); expected ..."]).
    Reads at most MAX_FILE bytes, so /dev/zero or a stray image is refused."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_FILE + 1)
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise error([f"{path}: {what} ({why}); expected a readable YAML file"]) from None
    if len(text) > MAX_FILE:
        raise error([f"{path}: {what} (larger than {MAX_FILE >> 20} MiB); expected a readable YAML file"])
    return text


def load_problem(exc):
    """`{where}: {what}` for what loading YAML raised: a YAMLError, or a ValueError or
    RecursionError (huge numbers, deep nesting), which are not YAMLErrors."""
    if not isinstance(exc, yaml.YAMLError):
        return f"(document): {problem(exc)}"
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(document)"
    # context, problem: "expected a single document in the stream, but found another document"
    what = ", ".join(filter(None, [getattr(exc, "context", None), getattr(exc, "problem", None)]))
    return f"{where}: {what or ' '.join(str(exc).split())}"


def describe(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        return f"{value} (a number)"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    return f"{value} (a {type(value).__name__})"  # e.g. a YAML date


def get(mapping, key, default):
    """mapping[key], or default when it is absent or null."""
    value = mapping.get(key)
    return default if value is None else value


class Checker:
    """Collects the errors of one document, each beginning with source. Each checker returns
    the checked value, or None after recording an error."""

    KEYS = {}  # kind -> the keys a mapping of that kind may have (mapping())

    def __init__(self, source):
        self.source = source
        self.errors = []

    def error(self, path, wrong, expected):
        self.errors.append(message(self.source, path, wrong, expected))

    def bad(self, path, value, expected):
        """Reports a value of the wrong type, or a missing one (None)."""
        self.error(path, "missing" if value is None else f"got {describe(value)}", expected)

    def mapping(self, path, value, kind):
        """True if value is a mapping; reports its unknown keys."""
        keys = self.KEYS[kind]
        if not isinstance(value, dict):
            self.bad(path, value, "a mapping with keys " + ", ".join(keys))
            return False
        for key in value:
            if key not in keys:
                self.error(path, f"unknown key {key!r}", "one of " + ", ".join(keys))
        return True

    def items(self, path, value, what, lo=0, hi=None):
        """(path, item) for each item of a list; reports a wrong length but still yields the items."""
        expected = f"a list of {what}" + (f" ({lo} to {hi})" if hi else f" (at least {lo})" if lo else "")
        if not isinstance(value, list):
            self.bad(path, value, expected)
            return []
        if len(value) < lo or (hi and len(value) > hi):
            self.error(path, f"got {len(value)} {what}", expected)
        return [(f"{path}[{i}]", item) for i, item in enumerate(value)]

    def integer(self, path, value, lo, hi, why=""):
        expected = f"an integer from {lo} to {hi}{why}"
        if type(value) is not int:  # not isinstance: bool is an int
            return self.bad(path, value, expected)
        if not lo <= value <= hi:
            return self.error(path, f"{value} is out of range", expected)
        return value

    def port(self, path, value, why=""):
        return self.integer(path, value, 1, 65535, why)

    def name(self, path, value, maxlen, why=""):
        expected = (f"a DNS-1123 label (a-z, 0-9 and '-', alphanumeric at both ends) "
                    f"of at most {maxlen} characters{why}")
        if not isinstance(value, str):
            return self.bad(path, value, expected)
        if len(value) > maxlen:
            return self.error(path, f"{value!r} is {len(value)} characters long", expected)
        if not DNS_LABEL.fullmatch(value):
            return self.error(path, f"{value!r} is not a DNS-1123 label", expected)
        return value

    def unique(self, seen, key, path, what, expected):
        """Reports key if seen before; seen maps each key to the path that had it first."""
        if key in seen:
            self.error(path, f"duplicate {what} (first at {seen[key]})", expected)
        elif key is not None:
            seen[key] = path

    def choice(self, path, value, choices):
        if value not in choices:
            return self.bad(path, value, " or ".join(map(repr, choices)))
        return value

    def protocol(self, path, m):
        """The protocol of the port mapping m at path: TCP unless given."""
        return self.choice(f"{path}.protocol", get(m, "protocol", "TCP"), ("TCP", "UDP"))

    def labels(self, path, value):
        expected = "a mapping of strings to strings (quote values YAML would read as numbers or booleans)"
        if not isinstance(value, dict):
            return self.bad(path, value, expected)
        for key, val in value.items():
            if not isinstance(key, str):
                self.error(path, f"key {describe(key)} is not a string", expected)
            elif not isinstance(val, str):
                self.bad(f"{path}.{key}", val, "a string")
        return value

    def cidr(self, path, value, expected):
        if not isinstance(value, str):
            return self.bad(path, value, expected)
        try:
            iface = ipaddress.ip_interface(value)
        except ValueError:
            return self.error(path, f"{value!r} is not a CIDR", expected)
        if iface.version != 4:
            return self.error(path, f"{value!r} is IPv6", expected)
        if iface.ip != iface.network.network_address:
            return self.error(path, f"{value!r} has host bits set", f"the network address {iface.network}")
        return iface.network

    def address(self, path, value, expected):
        if not isinstance(value, str):
            return self.bad(path, value, expected)
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            return self.error(path, f"{value!r} is not an IP address", expected)
        if addr.version != 4:
            return self.error(path, f"{value!r} is IPv6", expected)
        return addr

    def service_ports(self, path, value, known, unnamed, target):
        """The ServicePorts of a service's list of ports at path. known(path, m) checks an
        item's keys and is true if it is a mapping; a port without a name gets `unnamed`
        (only a service's one port may); target(path, value) checks a targetPort given,
        which is the port when it is not."""
        items = self.items(path, value, "ports", 1)
        several = len(items) > 1
        ports, names, keys = [], {}, {}
        for p, m in items:
            if not known(p, m):
                continue
            name = get(m, "name", unnamed)
            if name != unnamed or several:
                name = self.name(f"{p}.name", m.get("name"), LABEL_MAX,
                                 ", required when a service has several ports" if several else "")
                self.unique(names, name, f"{p}.name", f"port name {name!r}",
                            "port names unique within the service")
            port = self.port(f"{p}.port", m.get("port"))
            given = m.get("targetPort")
            target_port = port if given is None else target(f"{p}.targetPort", given)
            protocol = self.protocol(p, m)
            if port and protocol:
                self.unique(keys, (port, protocol), f"{p}.port", f"port {port}/{protocol}",
                            "each port and protocol once per service")
            ports.append(ServicePort(name, port, target_port, protocol))
        return tuple(ports)
