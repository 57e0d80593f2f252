"""Packet tests of a podnet cluster, written with dataplane.testing.

Copy this file anywhere and run it with pytest (podnet installed, so its
pytest plugin is loaded): the live tests need root and /dev/net/tun and are
skipped without them; the in-memory ones run anywhere.

    sudo .venv/bin/python -m pytest -q test_podnet_packets.py
"""
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from dataplane.testing import (expect_routed, expect_vxlan, send_and_assert_no_reply,
                               send_and_expect)

SPEC = """
cluster: {name: demo, podCIDR: 10.244.0.0/16, serviceCIDR: 10.96.0.0/12}
nodes: [{name: node-a}, {name: node-b}]
pods:
  - {name: client, node: node-a, labels: {app: client}}
  - {name: web, node: node-b, labels: {app: web}}
services:
  - name: web
    clusterIP: 10.96.0.10
    selector: {app: web}
    ports: [{port: 80, targetPort: 8080, protocol: TCP}]
"""


def udp(src, dst, **ip):
    """A UDP datagram as src's eth0 sends it: to its gateway's MAC."""
    return Ether(src=src.mac, dst=src.gateway_mac) / IP(src=src.ip, dst=dst.ip, **ip) / UDP(sport=4000, dport=5000)


# ---- a live cluster: namespaces, TAPs, agents (root) ---------------------------

def test_frame_to_another_nodes_pod_is_routed(podnet_cluster):
    c = podnet_cluster(SPEC)
    client, web = c.pod("client"), c.pod("web")
    sent = udp(client, web, ttl=64)
    [got] = send_and_expect(client, sent, web)
    # routed by node-a's gateway and by node-b's: TTL 2 lower, MACs those of
    # web's gateway and web, the rest of the packet as sent
    expect_routed(got, sent, src_mac=web.gateway_mac, dst_mac=web.mac, hops=2)
    assert got[IP].ttl == 62


def test_the_frame_crosses_the_fabric_in_vxlan(podnet_cluster):
    c = podnet_cluster(SPEC)
    client, web = c.pod("client"), c.pod("web")
    a, b = c.node("node-a"), c.node("node-b")
    sent = udp(client, web)
    [wire] = send_and_expect(client, sent, a.uplink)       # what node-a puts on the fabric
    inner = expect_vxlan(wire, a, b, vni=1)                 # every outer field checked
    assert (inner.src, inner.dst) == (client.gateway_mac, web.gateway_mac)
    assert inner[IP].ttl == sent[IP].ttl - 1


def test_clusterip_syn_is_dnated_and_its_synack_reverse_nated(podnet_cluster):
    c = podnet_cluster(SPEC)
    client, web = c.pod("client"), c.pod("web")
    vip = c.status()["services"][0]["clusterIP"]
    syn = (Ether(src=client.mac, dst=client.gateway_mac) / IP(src=client.ip, dst=vip)
           / TCP(sport=40000, dport=80, flags="S", seq=1000))
    [at_web] = send_and_expect(client, syn, web)
    assert (at_web[IP].src, at_web[IP].dst) == (client.ip, web.ip)     # DNAT to the one endpoint
    assert (at_web[TCP].sport, at_web[TCP].dport) == (40000, 8080)     # port to targetPort
    synack = (Ether(src=web.mac, dst=web.gateway_mac) / IP(src=web.ip, dst=client.ip)
              / TCP(sport=8080, dport=40000, flags="SA", seq=5000, ack=1001))
    [at_client] = send_and_expect(web, synack, client)
    assert (at_client[IP].src, at_client[TCP].sport) == (vip, 80)      # the reply comes from the VIP
    assert at_client[TCP].flags == "SA"


def test_spoofed_source_is_dropped_and_counted(podnet_cluster):
    c = podnet_cluster(SPEC)
    client, web = c.pod("client"), c.pod("web")
    node = c.node(client.node)
    before = node.counters()["drops"]["spoof_ip"]
    spoofed = (Ether(src=client.mac, dst=client.gateway_mac) / IP(src="10.244.0.200", dst=web.ip)
               / ICMP())
    send_and_assert_no_reply(client, spoofed, web)
    assert node.counters()["drops"]["spoof_ip"] == before + 1


# ---- one node's fast path in memory (no root) -----------------------------------

def test_in_memory_encapsulation_and_routing(podnet_node):
    node = podnet_node(SPEC, "node-a")
    client, web = node.pod("client"), node.pod("web")       # web is node-b's: its frames leave by the uplink
    sent = udp(client, web)
    out = node.send("client", sent)
    assert list(out) == ["uplink"]
    inner = expect_vxlan(out["uplink"][0], node.info(), node.info("node-b"), vni=node.vni)
    expect_routed(inner, sent, src_mac=client.gateway_mac, dst_mac=web.gateway_mac)


def test_in_memory_clusterip(podnet_node):
    node = podnet_node(SPEC, "node-a")
    client = node.pod("client")
    syn = (Ether(src=client.mac, dst=client.gateway_mac) / IP(src=client.ip, dst="10.96.0.10")
           / TCP(sport=40000, dport=80, flags="S"))
    [wire] = send_and_expect(client, syn, node.uplink)
    inner = expect_vxlan(wire, node.info(), node.info("node-b"), vni=node.vni)
    assert (inner[IP].dst, inner[TCP].dport) == (node.pod("web").ip, 8080)


def test_in_memory_spoofing_is_counted(podnet_node):
    node = podnet_node(SPEC, "node-a")
    client = node.pod("client")
    spoofed = Ether(src="02:00:00:00:00:99", dst=client.gateway_mac) / IP(src=client.ip, dst="10.244.1.2") / ICMP()
    send_and_assert_no_reply(client, spoofed, node.uplink)
    assert node.drops() == {"spoof_mac": 1}
