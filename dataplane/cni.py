"""podnet-cni: a CNI plugin (spec 1.1.0; configs at cniVersion 0.4.0, 1.0.0
and 1.1.0) that makes a container runtime's network namespace a pod of a
running podnet cluster. The cluster does the work (cluster.pod_add /
pod_delete); this module is the CNI protocol around it: environment and
stdin in, a result or an error as JSON on stdout, exit status 0 or 1.

Commands (CNI_COMMAND) and the environment each needs (as SPEC.md says;
CNI_ARGS is optional everywhere and only read by ADD and CHECK):

    ADD, CHECK   CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME
    DEL          CNI_CONTAINERID, CNI_IFNAME (CNI_NETNS may be missing: the netns is gone)
    GC           CNI_PATH; config cniVersion 1.1.0
    STATUS       nothing; config cniVersion 1.1.0
    VERSION      nothing; stdin is not read

Error codes (JSON {"cniVersion", "code", "msg", "details"} on stdout, exit 1):

    code  meaning                                   when
    1     incompatible CNI version                  config cniVersion missing or not 0.4.0/1.0.0/1.1.0;
                                                    GC or STATUS with a config older than 1.1.0
    3     container unknown or does not exist       ADD/CHECK: CNI_NETNS does not exist (nothing
                                                    was created, so no DEL is needed); cluster "bad_netns"
    4     invalid environment variables             a required CNI_* missing; CNI_COMMAND unknown;
                                                    CNI_CONTAINERID/CNI_IFNAME malformed; CNI_NETNS
                                                    relative, not a network namespace, or the plugin's
                                                    own; CNI_ARGS not K=V;K=V, an unknown key without
                                                    IgnoreUnknown=1, or a pod name podnet cannot use
    5     I/O failure                               reading stdin failed
    6     failed to decode content                  stdin is not a JSON object
    7     invalid network config                    name/type missing or malformed; node, labels,
                                                    runDir, stateDir, prevResult or
                                                    cni.dev/valid-attachments of the wrong type;
                                                    cluster "no_node"; cluster "invalid" (podnet
                                                    refused the pod, details say why)
    11    try again later                           cluster "agent_down", "busy"; "no_cluster" on ADD
                                                    and CHECK (a cluster may be coming up)
    50    plugin not available                      STATUS: no cluster, no such node, or its agent
                                                    is not running or not answering
    100   attachment exists                         ADD of a (CNI_CONTAINERID, CNI_IFNAME) podnet has
    101   pod name taken                            ADD: another pod has that name (cluster "exists")
    102   interface exists in the netns             ADD: CNI_IFNAME is already in CNI_NETNS
    103   pod addresses exhausted                   ADD: the node's pod subnet is full ("ipam_full")
    104   no such attachment                        CHECK: podnet has no record of it ("not_found")
    105   attachment drifted                        CHECK: in the netns the interface is missing or
                                                    down, or its MAC, address or default route is not
                                                    podnet's; or the record is still "adding"
    106   prevResult disagrees                      CHECK: prevResult's interface/MAC/address for
                                                    CNI_IFNAME is not what podnet forwards for
    107   GC incomplete                             GC: some stale attachments could not be removed
    108   plugging in failed                        ADD: the agent could not make or place the TAP
                                                    (cluster "plug_failed"); nothing is left behind
    999   internal error                            a bug: one line on stdout, never a traceback

DEL and GC treat "no_cluster" and "not_found" as success: there is nothing to
remove. A cluster error with a code not listed above is 999. GC keeps the
attachments in cni.dev/valid-attachments (or cni.dev/attachments, the name
libcni also sends); a GC config with neither is refused (7) rather than read
as "keep nothing". VERSION answers {"cniVersion": "1.1.0", "supportedVersions":
["0.4.0", "1.0.0", "1.1.0"]} whatever it is sent, as libcni's skel does.

GC looks only at the attachments its own network (the config's name) added:
a pod another conflist made is that runtime's to list. The pod name comes from
K8S_POD_NAME or the container id, so it must be unique in the cluster
(two Kubernetes namespaces with a pod of one name clash: code 101).
"""
# Every command is a new process, so start-up counts: modules only some
# commands need (socket, copy, ipaddress, fcntl, shlex, pathlib) are imported
# where they are used, not here.
import json
import os
import re
import sys

SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
HOST_NETNS = None          # (st_dev, st_ino) of the host's netns when the CNI server runs us (cniserver.py)
PLUGIN_VERSION = "1.1.0"
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
CONFLIST_VERSION = "1.0.0"   # the newest libcni in podman 4.3 and Debian 12's plugins know
MANAGED_BY = "podnet cni install"
LAUNCHER_MARK = "# managed-by: " + MANAGED_BY

# (code, msg) for each cluster.ClusterError code
CLUSTER_CODES = {
    "no_cluster": (11, "no podnet cluster is up"),
    "no_node": (7, "the configured node is not in the cluster"),
    "exists": (101, "pod name taken"),
    "not_found": (104, "no such attachment"),
    "agent_down": (11, "the node's agent is not running"),
    "bad_netns": (3, "network namespace unusable"),
    "ipam_full": (103, "pod addresses exhausted"),
    "invalid": (7, "invalid network config"),
    "busy": (11, "the cluster is busy"),
    "plug_failed": (108, "the node's agent could not plug the pod in"),
}
KNOWN_ARGS = {"IgnoreUnknown", "K8S_POD_NAME", "K8S_POD_NAMESPACE", "K8S_POD_INFRA_CONTAINER_ID",
              "K8S_POD_UID"}
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")      # container id and network name (SPEC.md)
# cluster.pod_add's rule for a pod in a runtime's netns (its name names no namespace or device)
_POD_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
NS_GET_NSTYPE = 0xB703                                   # linux/nsfs.h
CLONE_NEWNET = 0x40000000


class CniError(Exception):
    def __init__(self, code, msg, details=""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def _cluster():
    from dataplane import cluster
    return cluster


def _cluster_error(e):
    code, msg = CLUSTER_CODES.get(getattr(e, "code", None), (999, "podnet error"))
    return CniError(code, msg, str(e))


# ---- input ---------------------------------------------------------------

def _environment(cmd, env):
    """The CNI_* values cmd needs, validated; one code-4 error naming every missing one."""
    need = {"ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
            "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
            "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
            "GC": ("CNI_PATH",)}.get(cmd, ())
    missing = [k for k in need if not env.get(k)]
    if missing:
        raise CniError(4, f"required environment variables missing: {', '.join(missing)}")
    out = {k: env.get(k, "") for k in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")}
    if cmd in ("ADD", "CHECK", "DEL"):
        cid, ifname, netns = out["CNI_CONTAINERID"], out["CNI_IFNAME"], out["CNI_NETNS"]
        if not _ID.fullmatch(cid):
            raise CniError(4, "CNI_CONTAINERID is malformed",
                           f"{cid!r}: an alphanumeric first, then alphanumerics, '_', '.' or '-'")
        if (len(ifname) > 15 or ifname in (".", "..")
                or any(c in "/:" or c.isspace() for c in ifname)):
            raise CniError(4, "CNI_IFNAME is not a valid interface name",
                           f"{ifname!r}: at most 15 characters, not . or .., no '/', ':' or whitespace")
        if netns and not os.path.isabs(netns):
            raise CniError(4, "CNI_NETNS must be an absolute path", repr(netns))
    return out


def _cni_args(text):
    """CNI_ARGS "K=V;K=V" -> dict, as libcni's LoadArgs reads it (unknown keys
    are an error unless IgnoreUnknown is 1/true)."""
    args = {}
    if not text:
        return args
    for pair in text.split(";"):
        key, sep, value = pair.partition("=")
        if not sep or not key or "=" in value:
            raise CniError(4, "CNI_ARGS is malformed", f"{pair!r} is not K=V (pairs are separated by ';')")
        args[key] = value
    ignore = args.get("IgnoreUnknown", "false").lower()
    if ignore not in ("1", "true", "0", "false"):
        raise CniError(4, "CNI_ARGS is malformed", f"IgnoreUnknown={args['IgnoreUnknown']!r}: 1, true, 0 or false")
    unknown = sorted(set(args) - KNOWN_ARGS)
    if unknown and ignore not in ("1", "true"):
        raise CniError(4, "CNI_ARGS has unknown keys", f"{', '.join(unknown)} (IgnoreUnknown=1 allows them)")
    return args


def _config(cmd, raw):
    try:
        conf = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise CniError(6, "network config on stdin is not JSON", str(e)) from None
    if not isinstance(conf, dict):
        raise CniError(6, "network config on stdin is not a JSON object", type(conf).__name__)
    version = conf.get("cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(1, "incompatible CNI version",
                       f"config cniVersion {version!r}; podnet-cni supports {', '.join(SUPPORTED_VERSIONS)}")
    if cmd in ("GC", "STATUS") and version != "1.1.0":
        raise CniError(1, f"config version {version} does not allow {cmd}", f"{cmd} needs cniVersion 1.1.0")
    name = conf.get("name")
    if not isinstance(name, str) or not _ID.fullmatch(name):
        raise CniError(7, "network name missing or malformed", repr(name))
    if not isinstance(conf.get("type"), str) or not conf["type"]:
        raise CniError(7, "plugin type missing or not a string", repr(conf.get("type")))
    if conf.get("node") is not None and not isinstance(conf["node"], str):
        raise CniError(7, "node must be a string", repr(conf["node"]))
    labels = conf.get("labels")
    if labels is not None and not (isinstance(labels, dict)
                                   and all(isinstance(v, str) for v in labels.values())):
        raise CniError(7, "labels must be a map of strings to strings", json.dumps(labels))
    for key in ("runDir", "stateDir"):
        if conf.get(key) is not None and not (isinstance(conf[key], str) and os.path.isabs(conf[key])):
            raise CniError(7, f"{key} must be an absolute path", repr(conf[key]))
    if conf.get("prevResult") is not None:
        _check_result(conf["prevResult"])
    return conf


def _check_result(r):
    """prevResult must read as a CNI result; what this plugin indexes into is checked."""
    import ipaddress
    def bad(why):
        raise CniError(7, "prevResult is not a CNI result", why)
    if not isinstance(r, dict):
        bad(f"a {type(r).__name__}, not an object")
    for key, item_keys in (("interfaces", ("name",)), ("ips", ("address",)), ("routes", ("dst",))):
        items = r.get(key, [])
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            bad(f"{key} is not a list of objects")
        for i, item in enumerate(items):
            for k in item_keys:
                if not isinstance(item.get(k), str):
                    bad(f"{key}[{i}].{k} is not a string")
    for i, ip in enumerate(r.get("ips", [])):
        try:
            ipaddress.ip_interface(ip["address"])
        except ValueError:
            bad(f"ips[{i}].address {ip['address']!r} is not an address/prefix")
        if "interface" in ip and type(ip["interface"]) is not int:
            bad(f"ips[{i}].interface is not an integer")
    if not isinstance(r.get("dns", {}), dict):
        bad("dns is not an object")


def _pod_name(env, args):
    """The contract's pod name, checked here so the error names its source."""
    if args.get("K8S_POD_NAME"):
        name, source = args["K8S_POD_NAME"], "CNI_ARGS K8S_POD_NAME"
    else:
        name, source = "cni-" + env["CNI_CONTAINERID"][:12], "CNI_CONTAINERID"
    if not _POD_NAME.fullmatch(name):
        raise CniError(4, f"{source} gives pod name {name!r}, which podnet cannot use",
                       "a pod name is 1..63 letters, digits, '-', '_' or '.', alphanumeric at both ends")
    return name


def _check_netns(path):
    """CNI_NETNS must exist (else 3: nothing to clean up), be a network
    namespace and not be the plugin's own (root) one (else 4)."""
    import fcntl
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CniError(3, "CNI_NETNS does not exist", path) from None
    except OSError as e:
        raise CniError(4, "CNI_NETNS cannot be opened", f"{path}: {e.strerror}") from None
    try:
        try:
            kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
        except OSError:
            kind = None
        if kind != CLONE_NEWNET:
            raise CniError(4, "CNI_NETNS is not a network namespace", path)
        # ours, or the host's: served by the CNI server, "ours" is a node's
        # namespace, and the server tells us the one its agent started in
        st, o = os.fstat(fd), os.stat("/proc/self/ns/net")
        if (st.st_dev, st.st_ino) in ((o.st_dev, o.st_ino), HOST_NETNS):
            raise CniError(4, "CNI_NETNS is the plugin's own or the host's network namespace", path)
    finally:
        os.close(fd)


def _interfaces(netns):
    """The interface names in netns, read from /proc/thread-self/net/dev by a
    thread that setns()es into it (a thread's own network namespace; the
    process is not moved). ADD's check that CNI_IFNAME is free costs ~1 ms
    this way, where pyroute2 costs ~200 ms of import and a netlink socket."""
    import ctypes
    import threading
    out = {}

    def look():
        try:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            finally:
                os.close(fd)
            with open("/proc/thread-self/net/dev") as f:
                out["names"] = {line.split(":", 1)[0].strip() for line in f.read().splitlines()[2:]}
        except OSError as e:
            out["error"] = e
    t = threading.Thread(target=look)
    t.start()
    t.join()
    if "error" in out:
        raise CniError(4, "CNI_NETNS cannot be entered", f"{netns}: {out['error'].strerror}")
    return out["names"]


def _inspect(netns, ifname):
    """What CNI_IFNAME looks like inside netns: None if absent, else
    {mac, up, addrs [(ip, prefixlen)], gateways [default-route gateways via it]}.
    Opens the namespace with flags=0 so a vanished one is never re-created."""
    import socket
    from pyroute2 import IPRoute
    from tap.device import in_netns
    # this thread in the namespace, not pyroute2's NetNS: that forks a helper,
    # and the CNI server runs in an agent whose workers are threads
    with in_netns(netns), IPRoute() as ns:
        idx = ns.link_lookup(ifname=ifname)
        if not idx:
            return None
        link = ns.get_links(idx[0])[0]
        addrs = [(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ns.get_addr(index=idx[0], family=socket.AF_INET)]
        gws = [r.get_attr("RTA_GATEWAY") for r in ns.get_routes(family=socket.AF_INET)
               if r["dst_len"] == 0 and r.get_attr("RTA_OIF") == idx[0] and r.get_attr("RTA_TABLE") == 254]
        return {"mac": link.get_attr("IFLA_ADDRESS"), "up": bool(link["flags"] & 1), "addrs": addrs,
                "gateways": gws}


# ---- commands ------------------------------------------------------------

def _result(rec, env, version, prev):
    """ADD's result in the config's version; appended to prevResult when chained."""
    import copy
    out = copy.deepcopy(prev) if prev else {}
    out["cniVersion"] = version
    interfaces = out.setdefault("interfaces", [])
    iface = {"name": env["CNI_IFNAME"], "mac": rec["mac"], "sandbox": env["CNI_NETNS"]}
    if version == "1.1.0" and rec.get("mtu"):
        iface["mtu"] = rec["mtu"]          # the interface mtu field is new in 1.1.0
    interfaces.append(iface)
    out.setdefault("ips", []).append({"address": f"{rec['ip']}/{rec['prefixlen']}", "gateway": rec["gateway"],
                                      "interface": len(interfaces) - 1})
    for ip in out["ips"]:                  # a chained prevResult may be in the other format
        if version == "0.4.0":
            ip.setdefault("version", "6" if ":" in ip["address"] else "4")
        else:
            ip.pop("version", None)        # 1.0.0 removed it
    out.setdefault("routes", []).append({"dst": "0.0.0.0/0", "gw": rec["gateway"]})
    out.setdefault("dns", {})
    return out


def cmd_add(conf, env):
    cluster = _cluster()
    args = _cni_args(env["CNI_ARGS"])
    name = _pod_name(env, args)
    labels = dict(conf.get("labels") or {})
    if args.get("K8S_POD_NAME"):
        labels["io.kubernetes.pod.name"] = args["K8S_POD_NAME"]
    if args.get("K8S_POD_NAMESPACE"):
        labels["io.kubernetes.pod.namespace"] = args["K8S_POD_NAMESPACE"]
    _check_netns(env["CNI_NETNS"])
    cid, ifname = env["CNI_CONTAINERID"], env["CNI_IFNAME"]
    try:
        have = cluster.attachment(cid, ifname)
        if have:
            raise CniError(100, "attachment exists",
                           f"container {cid} interface {ifname} is pod {have['name']} (phase {have.get('phase')}); "
                           f"DEL it first")
        if ifname in _interfaces(env["CNI_NETNS"]):
            raise CniError(102, "interface exists in the network namespace", f"{ifname} in {env['CNI_NETNS']}")
        rec = cluster.pod_add(name, conf.get("node"), labels, netns=env["CNI_NETNS"], ifname=ifname,
                              container_id=cid, origin="cni", network=conf["name"])
    except cluster.ClusterError as e:
        raise _cluster_error(e) from None
    return _result(rec, env, conf["cniVersion"], conf.get("prevResult"))


def cmd_del(conf, env):
    cluster = _cluster()
    try:
        have = cluster.attachment(env["CNI_CONTAINERID"], env["CNI_IFNAME"])
        if have:
            cluster.pod_delete(have["name"])
    except cluster.ClusterError as e:
        if getattr(e, "code", None) not in ("no_cluster", "not_found"):   # nothing to delete
            raise _cluster_error(e) from None


def cmd_check(conf, env):
    cluster = _cluster()
    _cni_args(env["CNI_ARGS"])
    _check_netns(env["CNI_NETNS"])
    cid, ifname, netns = env["CNI_CONTAINERID"], env["CNI_IFNAME"], env["CNI_NETNS"]
    try:
        rec = cluster.attachment(cid, ifname)
        if rec is None:
            raise CniError(104, "no such attachment", f"podnet has no pod for container {cid} interface {ifname}")
        ready, why = cluster.agent_ready(rec["node"])
    except cluster.ClusterError as e:
        raise _cluster_error(e) from None
    if not ready:
        raise CniError(11, "the node's agent cannot serve the pod", why)
    where = f"pod {rec['name']}: {ifname} in {netns}"
    if rec.get("phase") != "ready":
        raise CniError(105, "attachment drifted", f"{where}: record is {rec.get('phase')!r}, not 'ready'")
    if rec.get("netns") != netns:
        raise CniError(105, "attachment drifted", f"{where}: podnet recorded netns {rec.get('netns')}")
    seen = _inspect(netns, ifname)
    addr, gw = (rec["ip"], rec["prefixlen"]), rec["gateway"]
    drift = ("interface is missing" if seen is None else
             "interface is down" if not seen["up"] else
             f"MAC is {seen['mac']}, podnet forwards for {rec['mac']}" if seen["mac"] != rec["mac"] else
             f"address {addr[0]}/{addr[1]} is missing (has {', '.join(f'{a}/{p}' for a, p in seen['addrs']) or 'none'})"
             if addr not in seen["addrs"] else
             f"no default route via {gw}" if gw not in seen["gateways"] else None)
    if drift:
        raise CniError(105, "attachment drifted", f"{where}: {drift}")
    prev = conf.get("prevResult")
    if prev:
        ifaces = prev.get("interfaces", [])
        mine = [i for i, x in enumerate(ifaces) if x["name"] == ifname and x.get("sandbox") in (netns, None, "")]
        if not mine:
            raise CniError(106, "prevResult disagrees", f"{where}: prevResult lists no interface {ifname}")
        i = mine[0]
        if ifaces[i].get("mac", rec["mac"]) != rec["mac"]:
            raise CniError(106, "prevResult disagrees",
                           f"{where}: prevResult MAC {ifaces[i]['mac']}, podnet forwards for {rec['mac']}")
        want = f"{rec['ip']}/{rec['prefixlen']}"
        if not any(ip["address"] == want and ip.get("interface", i) == i for ip in prev.get("ips", [])):
            raise CniError(106, "prevResult disagrees", f"{where}: prevResult has no address {want} on {ifname}")


def cmd_gc(conf, env):
    cluster = _cluster()
    valid = conf.get("cni.dev/valid-attachments", conf.get("cni.dev/attachments", "missing"))
    if valid == "missing":
        # refuse rather than read a missing list as "nothing is valid" and remove every pod
        raise CniError(7, "GC needs cni.dev/valid-attachments", "the list of attachments to keep")
    valid = valid or []
    if not (isinstance(valid, list) and all(isinstance(a, dict) and isinstance(a.get("containerID"), str)
                                            and isinstance(a.get("ifname"), str) for a in valid)):
        raise CniError(7, "cni.dev/valid-attachments must be a list of {containerID, ifname}", json.dumps(valid))
    keep = {(a["containerID"], a["ifname"]) for a in valid}
    try:
        pods = cluster.pods()
    except cluster.ClusterError as e:
        if getattr(e, "code", None) == "no_cluster":
            return
        raise _cluster_error(e) from None
    failed = []
    for rec in pods:
        # only this network's attachments: another conflist's pods are its runtime's to list
        if rec.get("container_id") and rec.get("network") in (conf["name"], None) \
                and (rec["container_id"], rec.get("ifname")) not in keep:
            try:
                cluster.pod_delete(rec["name"])
            except cluster.ClusterError as e:
                if getattr(e, "code", None) != "not_found":
                    failed.append(f"{rec['name']}: {e}")
    if failed:
        raise CniError(107, "GC could not remove every stale attachment", "; ".join(failed))


def cmd_status(conf, env):
    cluster = _cluster()
    try:
        ready, why = cluster.agent_ready(conf.get("node"))
    except cluster.ClusterError as e:
        ready, why = False, str(e)
    if not ready:
        raise CniError(50, "plugin not available", why)


HANDLERS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "GC": cmd_gc, "STATUS": cmd_status}


def run(env, stdin):
    """One plugin invocation: env (a mapping) and stdin (bytes or a file) ->
    (exit status, JSON object to print or None). Never raises for bad input."""
    version = PLUGIN_VERSION
    try:
        cmd = env.get("CNI_COMMAND", "")
        if not cmd:
            raise CniError(4, "required environment variables missing: CNI_COMMAND")
        if cmd not in COMMANDS:
            raise CniError(4, f"unknown CNI_COMMAND {cmd!r}", "one of " + ", ".join(COMMANDS))
        if cmd == "VERSION":
            return 0, {"cniVersion": PLUGIN_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}
        cenv = _environment(cmd, env)
        try:
            raw = stdin if isinstance(stdin, bytes) else stdin.read()
        except OSError as e:
            raise CniError(5, "reading the network config from stdin failed", str(e)) from None
        conf = _config(cmd, raw)
        version = conf["cniVersion"]
        # the config, not the runtime's environment, says which cluster
        for key, var in (("runDir", "PODNET_RUN_DIR"), ("stateDir", "PODNET_STATE_DIR")):
            if conf.get(key):
                os.environ[var] = conf[key]
        out = HANDLERS[cmd](conf, cenv)
        return 0, out
    except CniError as e:
        return 1, {"cniVersion": version, "code": e.code, "msg": e.msg, "details": e.details}
    except Exception as e:     # a bug: still one JSON error, not a traceback
        return 1, {"cniVersion": version, "code": 999, "msg": "internal error",
                   "details": f"{type(e).__name__}: {e}"}


def main():
    """The executable: stdout carries only the JSON answer, so anything else
    written to fd 1 (by podnet or a tool it runs) goes to stderr."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    rc, obj = run(os.environ, sys.stdin.buffer)
    if obj is not None:
        out.write(json.dumps(obj) + "\n")
    out.flush()
    return rc


# ---- install -------------------------------------------------------------

def _ours(path, is_ours):
    """True if podnet wrote path, False if absent; ValueError if someone else's."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return False
    except OSError as e:
        raise ValueError(f"{path} exists and cannot be read ({e}); not touching it") from None
    if not is_ours(data):
        raise ValueError(f"{path} exists and was not written by podnet; move it away first")
    return True


def _conf_is_ours(data):
    try:
        return json.loads(data).get("podnet", {}).get("managedBy") == MANAGED_BY
    except (ValueError, AttributeError):
        return False


def _launcher_is_ours(data):
    """The shell launcher carries the mark on its second line; the compiled
    client (cni_client.c) carries it as a string of its own."""
    if data.startswith(b"\x7fELF"):
        return b"\0" + LAUNCHER_MARK.encode() + b"\0" in data
    return LAUNCHER_MARK.encode() in data.splitlines()[:2]


def _write(path, text, mode):
    tmp = path.with_name(f".{path.name}.podnet-tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def install(conf_dir="/etc/cni/net.d", bin_dir="/opt/cni/bin", node=None):
    """Write conf_dir/podnet.conflist and the launcher bin_dir/podnet-cni;
    returns their paths. The cluster's run/state directories go into the
    config so the plugin finds this cluster whatever the runtime's
    environment. Refuses (ValueError) to overwrite files podnet did not write."""
    if node is not None and not isinstance(node, str):
        raise ValueError(f"node must be a string, got {node!r}")
    import shlex
    from pathlib import Path
    from dataplane import cluster
    conf_path, bin_path = Path(conf_dir) / "podnet.conflist", Path(bin_dir) / "podnet-cni"
    _ours(conf_path, _conf_is_ours)
    _ours(bin_path, _launcher_is_ours)
    plugin = {"type": "podnet-cni"}
    if node:
        plugin["node"] = node
    plugin["runDir"] = str(cluster.run_dir().resolve())
    plugin["stateDir"] = str(cluster.state_dir().resolve())
    conflist = {"cniVersion": CONFLIST_VERSION, "name": "podnet", "podnet": {"managedBy": MANAGED_BY},
                "plugins": [plugin]}
    import sysconfig
    repo = Path(__file__).resolve().parent.parent
    libs = dict.fromkeys([str(repo), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    # -P: the runtime's working directory must not shadow the repo on sys.path.
    # -S: no site.py (its .pth files and the editable install's finder cost
    # ~20 ms of every call); the repo and this venv's packages are put on
    # PYTHONPATH instead.
    launcher = (f"#!/bin/sh\n{LAUNCHER_MARK}\n# podnet-cni, the podnet CNI plugin; `podnet cni uninstall` removes it\n"
                f"PYTHONPATH={shlex.quote(':'.join(libs))}\nexport PYTHONPATH\n"
                f"exec {shlex.quote(sys.executable)} -S -P -m dataplane.cni \"$@\"\n")
    for d in (conf_path.parent, bin_path.parent):
        d.mkdir(parents=True, exist_ok=True)
    _write(conf_path, json.dumps(conflist, indent=2) + "\n", 0o644)
    if not _compile_client(bin_path, cluster.cni_socket(), sys.executable, ":".join(libs)):
        _write(bin_path, launcher, 0o755)         # no C compiler: the Python plugin itself
    # Every CNI command is a new process: compile what it imports now, so no
    # ADD pays for compiling it (a runtime may run plugins with
    # PYTHONDONTWRITEBYTECODE set, and then every call would).
    import compileall
    for pkg in ("dataplane", "tap"):
        compileall.compile_dir(str(repo / pkg), quiet=1, workers=1)
    return conf_path, bin_path


def _compile_client(bin_path, sock, python, pythonpath):
    """bin_path: the C client of the CNI server (cni_client.c) with the
    socket and the Python fallback baked in; False (nothing written) if it
    cannot be built here."""
    import shutil
    import subprocess
    from pathlib import Path
    src = Path(__file__).with_name("cni_client.c")
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None or not src.exists():
        return False
    tmp = bin_path.with_name(f".{bin_path.name}.podnet-tmp")
    lit = lambda s: json.dumps(str(s))                # a C string literal too
    r = subprocess.run([cc, "-O2", "-o", str(tmp), f"-DPODNET_SOCK={lit(sock)}", f"-DPODNET_PYTHON={lit(python)}",
                        f"-DPODNET_PYTHONPATH={lit(pythonpath)}", str(src)], capture_output=True, text=True,
                       timeout=60)
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        return False
    os.chmod(tmp, 0o755)
    os.replace(tmp, bin_path)
    return True


def uninstall(conf_dir="/etc/cni/net.d", bin_dir="/opt/cni/bin"):
    """Remove podnet.conflist and the launcher if podnet wrote them (both are
    checked before either is removed); returns the paths removed."""
    from pathlib import Path
    paths = [(Path(conf_dir) / "podnet.conflist", _conf_is_ours), (Path(bin_dir) / "podnet-cni", _launcher_is_ours)]
    present = [p for p, is_ours in paths if _ours(p, is_ours)]
    for p in present:
        p.unlink()
    return present


if __name__ == "__main__":
    sys.exit(main())
