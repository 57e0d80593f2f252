"""validate.py: the checkers spec.py and manifests.py share, on their own."""
import pytest
import yaml

from dataplane import manifests, spec
from dataplane.validate import Checker, ServicePort, describe, get, load_problem


def ports(value, unnamed, target=None):
    c = Checker("f.yaml")
    c.KEYS = {"port": ("name", "port", "targetPort", "protocol")}
    got = c.service_ports("ports", value, lambda at, item: c.mapping(at, item, "port"), unnamed,
                          target or c.port)
    return got, c.errors


def test_spec_and_manifests_share_one_service_port():
    assert spec.ServicePort is manifests.ServicePort is ServicePort


def test_service_ports_defaults_and_unnamed():
    assert ports([{"port": 53, "protocol": "UDP"}], None) == ((ServicePort(None, 53, 53, "UDP"),), [])
    assert ports([{"port": 80, "name": None}], "") == ((ServicePort("", 80, 80, "TCP"),), [])
    got, errors = ports([{"name": "a", "port": 80, "targetPort": "web"}], "", lambda at, v: v)
    assert got == (ServicePort("a", 80, "web", "TCP"),) and errors == []


def test_service_ports_errors():
    _, errors = ports([{"port": 80}, {"name": "b", "port": 80, "targetPort": 0, "tls": 1}], None)
    assert errors == [
        "f.yaml: ports[0].name: missing; expected a DNS-1123 label (a-z, 0-9 and '-', alphanumeric at both "
        "ends) of at most 63 characters, required when a service has several ports",
        "f.yaml: ports[1]: unknown key 'tls'; expected one of name, port, targetPort, protocol",
        "f.yaml: ports[1].targetPort: 0 is out of range; expected an integer from 1 to 65535",
        "f.yaml: ports[1].port: duplicate port 80/TCP (first at ports[0].port); "
        "expected each port and protocol once per service",
    ]
    _, errors = ports([{"name": "", "port": 1}], None)  # a spec has no "" for unnamed
    assert errors == ["f.yaml: ports[0].name: '' is not a DNS-1123 label; expected a DNS-1123 label "
                      "(a-z, 0-9 and '-', alphanumeric at both ends) of at most 63 characters"]
    assert ports("80", None) == ((), ["f.yaml: ports: got '80'; expected a list of ports (at least 1)"])


def test_load_problem_names_where():
    with pytest.raises(yaml.YAMLError) as e:
        yaml.safe_load("a: [1\n")
    assert load_problem(e.value).startswith("line 2, column 1: while parsing a flow sequence")
    assert load_problem(RecursionError()) == "(document): nested too deeply"
    assert load_problem(ValueError("bad")) == "(document): bad"


def test_describe_and_get():
    assert [describe(v) for v in (None, True, 3, "x", {}, [], [1])] == [
        "null", "true (a boolean)", "3 (a number)", "'x'", "a mapping", "an empty list", "a list"]
    assert (get({"a": None}, "a", 1), get({"a": 0}, "a", 1), get({}, "a", 1)) == (1, 0, 1)
