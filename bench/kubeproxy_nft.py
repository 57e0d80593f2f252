"""The ruleset kube-proxy's nftables mode would write for N ClusterIP services,
as one `nft -f` transaction, for the connect-latency benchmark's third path
(bench/e2e_connect.py).

The layout follows kube-proxy's nftables proxier (pkg/proxy/nftables): one
table `ip kube-proxy`; its base chains at the hooks and priorities the proxier
uses; a `services` chain whose first rule dispatches on
`ip daddr . meta l4proto . th dport` through the verdict map `service-ips`
(one element per service port: a hash lookup, whatever N is); a chain per
service port, `service-HASH-ns/name/tcp/port`, that picks an endpoint with
`numgen random mod N vmap { 0 : goto endpoint-..., ... }`; and a chain per
endpoint that marks hairpin traffic for masquerade and does `dnat to IP:PORT`.
The filter-side checks kube-proxy runs on every new connection (the
no-endpoints and firewall verdict maps) and the masquerading chain at
postrouting are here too, empty as they are on a node with only ClusterIP
services, because a real node walks them for each first packet.

Only ClusterIP services with ready endpoints are written (what the benchmark
needs); NodePorts, LoadBalancer IPs, affinity and local traffic policy are
not. Names are made like kube-proxy's (a base32 hash of the service port's
name, then the name) so chain lookups cost what they cost there.
"""
import base64
import hashlib
import ipaddress

TABLE = "kube-proxy"
MASQ_MARK = "0x00004000"   # kube-proxy's default --masquerade-bit 14
# The priorities kube-proxy names as dstnat - 10, dstnat and srcnat, written as
# numbers: Debian 12's nft (1.0.6) accepts the names only at some hooks
# (dstnat at prerouting, not output).
DSTNAT, SRCNAT = -100, 100
FILTER_PRIO = DSTNAT - 10


def _chain_base(name):
    """HASH-name: the hash keeps names unique and distinct at a glance."""
    h = base64.b32encode(hashlib.sha256(name.encode()).digest()).decode()[:8]
    return f"{h}-{name}"


def service_chain(svc_name, proto="tcp", port_name="http"):
    return "service-" + _chain_base(f"{svc_name}/{proto}/{port_name}")


def endpoint_chain(svc_name, ip, port, proto="tcp", port_name="http"):
    return "endpoint-" + _chain_base(f"{svc_name}/{proto}/{port_name}__{ip}/{port}")


def _check(services):
    """Validated (name, vip, port, [(ip, port), ...]) tuples; ValueError on bad input."""
    out = []
    seen = set()
    for s in services:
        try:
            name, vip, port, backends = s
        except (TypeError, ValueError):
            raise ValueError(f"service must be (name, vip, port, backends), got {s!r}") from None
        if not isinstance(name, str) or not name or any(c not in "abcdefghijklmnopqrstuvwxyz0123456789-/"
                                                        for c in name):
            # nft chain names allow [A-Za-z0-9_./-]; Kubernetes names are [a-z0-9-], "/" joins ns/name
            raise ValueError(f"service name {name!r}: lower-case letters, digits, '-' and '/' only")
        vip = str(ipaddress.IPv4Address(vip))
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"service {name}: port {port!r} is not 1-65535")
        if (vip, port) in seen:
            raise ValueError(f"service {name}: {vip}:{port} given twice")
        seen.add((vip, port))
        if not backends:
            raise ValueError(f"service {name}: no endpoints (only services with endpoints are written)")
        eps = []
        for b in backends:
            ip, bport = b
            ip = str(ipaddress.IPv4Address(ip))
            if not isinstance(bport, int) or not 0 < bport < 65536:
                raise ValueError(f"service {name}: endpoint port {bport!r} is not 1-65535")
            eps.append((ip, bport))
        out.append((name, vip, port, eps))
    return out


def _service_chains(services):
    """(service-ips elements, chain bodies) for validated services."""
    elements, chains = [], []
    for name, vip, port, eps in services:
        svc = service_chain(name)
        elements.append(f"{vip} . tcp . {port} : goto {svc}")
        ep_chains = [endpoint_chain(name, ip, p) for ip, p in eps]
        picks = ", ".join(f"{i} : goto {c}" for i, c in enumerate(ep_chains))
        chains.append((svc, [f"numgen random mod {len(eps)} vmap {{ {picks} }}"]))
        for (ip, p), c in zip(eps, ep_chains):
            chains.append((c, [f"ip saddr {ip} jump mark-for-masquerade", f"meta l4proto tcp dnat to {ip}:{p}"]))
    return elements, chains


def add_services(services):
    """nft -f text that adds services to a table ruleset() made, one
    transaction, touching nothing already there: what kube-proxy's partial
    sync sends for new services. Growing the table this way instead of
    rewriting it matters here: on this kernel every chain's anonymous
    `numgen ... vmap` set costs a walk of the table's sets and of the
    transaction, so a full 10k rewrite takes minutes (kubernetes issue 139513)."""
    elements, chains = _service_chains(_check(services))
    out = [f"add chain ip {TABLE} {c}" for c, _ in chains]
    out += [f"add rule ip {TABLE} {c} {r}" for c, rules in chains for r in rules]
    if elements:
        out.append(f"add element ip {TABLE} service-ips {{ " + ", ".join(elements) + " }")
    return "\n".join(out) + "\n"


def ruleset(services):
    """nft -f text for services, an iterable of (name, vip, port, [(ip, port)])
    (TCP). Replaces the whole kube-proxy table in one transaction: `add` makes
    the delete safe when it is absent, and nft -f applies the file atomically,
    so a reload never leaves the table half written."""
    elements, chains = _service_chains(_check(services))
    elems = (" elements = {\n\t\t\t" + ",\n\t\t\t".join(elements) + "\n\t\t}\n") if elements else ""
    vmap_type = "type ipv4_addr . inet_proto . inet_service : verdict"
    head = f"""add table ip {TABLE}
delete table ip {TABLE}
table ip {TABLE} {{
\tcomment "rules for kube-proxy"
\tmap service-ips {{
\t\t{vmap_type}
\t\tcomment "ClusterIP, ExternalIP and LoadBalancer IP traffic"
\t{elems}\t}}
\tmap service-nodeports {{
\t\ttype inet_proto . inet_service : verdict
\t}}
\tmap no-endpoint-services {{
\t\t{vmap_type}
\t}}
\tmap no-endpoint-nodeports {{
\t\ttype inet_proto . inet_service : verdict
\t}}
\tmap firewall-ips {{
\t\t{vmap_type}
\t}}
\tchain filter-prerouting {{
\t\ttype filter hook prerouting priority {FILTER_PRIO}; policy accept;
\t\tct state new jump firewall-check
\t}}
\tchain filter-input {{
\t\ttype filter hook input priority {FILTER_PRIO}; policy accept;
\t\tct state new jump endpoints-check
\t}}
\tchain filter-forward {{
\t\ttype filter hook forward priority {FILTER_PRIO}; policy accept;
\t\tct state new jump endpoints-check
\t}}
\tchain filter-output {{
\t\ttype filter hook output priority {FILTER_PRIO}; policy accept;
\t\tct state new jump endpoints-check
\t\tct state new jump firewall-check
\t}}
\tchain nat-prerouting {{
\t\ttype nat hook prerouting priority {DSTNAT}; policy accept;
\t\tjump services
\t}}
\tchain nat-output {{
\t\ttype nat hook output priority {DSTNAT}; policy accept;
\t\tjump services
\t}}
\tchain nat-postrouting {{
\t\ttype nat hook postrouting priority {SRCNAT}; policy accept;
\t\tjump masquerading
\t}}
\tchain reject-chain {{
\t\treject
\t}}
\tchain endpoints-check {{
\t\tip daddr . meta l4proto . th dport vmap @no-endpoint-services
\t\tfib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports
\t}}
\tchain firewall-check {{
\t\tip daddr . meta l4proto . th dport vmap @firewall-ips
\t}}
\tchain services {{
\t\tip daddr . meta l4proto . th dport vmap @service-ips
\t\tfib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports
\t}}
\tchain mark-for-masquerade {{
\t\tmeta mark set meta mark or {MASQ_MARK}
\t}}
\tchain masquerading {{
\t\tmeta mark & {MASQ_MARK} == 0 return
\t\tmeta mark set meta mark xor {MASQ_MARK}
\t\tmasquerade fully-random
\t}}
"""
    body = "".join(f"\tchain {c} {{\n" + "".join(f"\t\t{r}\n" for r in rules) + "\t}\n" for c, rules in chains)
    return head + body + "}\n"
