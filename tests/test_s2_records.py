"""§S2 Records (rows S2.1-S2.9), end to end over UDP and TCP with dnspython.

Expected values are read off the demo data by hand, never from the server:
config/demo-cluster.yaml (namespace default and kube-system) plus
tests/data/extra-cluster.yaml (namespace team-a: 3d-render, big, v6). A few rows need
objects the demo does not have (services with no endpoints, an endpoint listed in two
slices); those tests write a small dump to a temporary file and start their own server.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rdtypes.IN.SRV
import pytest

from clusterdns.config import PodsMode, SourceSpec
from conftest import RunningServer, addresses, raw_exchange, rrset_texts

HTTPENV_PODS = {  # pod name -> IP, from the httpenv Deployment in the demo
    "httpenv-6fdc8554fb-2kqvd": "10.244.1.11",
    "httpenv-6fdc8554fb-7xwlm": "10.244.1.12",
    "httpenv-6fdc8554fb-bz9tr": "10.244.1.13",
    "httpenv-6fdc8554fb-hn5cs": "10.244.2.21",
    "httpenv-6fdc8554fb-w4pgj": "10.244.2.22",
}
HTTPENV_IPS = sorted(HTTPENV_PODS.values())
RABBITMQ = {"rabbitmq-0": "10.244.1.31", "rabbitmq-1": "10.244.2.32", "rabbitmq-2": "10.244.1.33"}
SOA_TAIL = "7200 1800 86400 5"  # refresh retry expire minimum (= negative TTL = ttl 5)

ServerFactory = Callable[..., RunningServer]


# ----------------------------------------------------------------------------- helpers


def is_tcp(proto: str) -> bool:
    return proto == "tcp"


def rdatas(msg: dns.message.Message, rdtype: str, section: str = "answer") -> list[str]:
    t = dns.rdatatype.from_text(rdtype)
    return [rd.to_text() for rrset in getattr(msg, section) if rrset.rdtype == t
            for rd in rrset]


def srvs(msg: dns.message.Message) -> list[dns.rdtypes.IN.SRV.SRV]:
    return [rd for rrset in msg.answer if rrset.rdtype == dns.rdatatype.SRV for rd in rrset]


def additional_addresses(msg: dns.message.Message) -> dict[str, set[str]]:
    """Owner name (lower-case, with the dot) -> addresses in the Additional section."""
    out: dict[str, set[str]] = {}
    for rrset in msg.additional:
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            out.setdefault(rrset.name.to_text().lower(), set()).update(
                rd.to_text() for rd in rrset)
    return out


def assert_positive(reply: dns.message.Message) -> None:
    assert reply.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(reply.rcode())
    assert reply.flags & dns.flags.AA, "positive answers are authoritative"
    assert reply.answer, "expected records in the answer"


def assert_nxdomain(reply: dns.message.Message) -> None:
    assert reply.rcode() == dns.rcode.NXDOMAIN, dns.rcode.to_text(reply.rcode())
    assert reply.answer == []
    assert reply.flags & dns.flags.AA


def assert_nodata(reply: dns.message.Message) -> None:
    assert reply.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(reply.rcode())
    assert reply.answer == []
    assert [rrset.rdtype for rrset in reply.authority] == [dns.rdatatype.SOA]


# A dump with what the demo lacks: services with no (ready) endpoints of every type, and
# a headless service whose endpoints are split over two slices with one in both.
SPARSE_DUMP = """\
apiVersion: v1
kind: Namespace
metadata: {name: sparse}
---
apiVersion: v1
kind: Service
metadata: {name: quiet, namespace: sparse}
spec:
  type: ClusterIP
  clusterIP: 10.96.77.7
  clusterIPs: [10.96.77.7]
  selector: {app: nothing}
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: np, namespace: sparse}
spec:
  type: NodePort
  clusterIP: 10.96.77.8
  clusterIPs: [10.96.77.8]
  ports: [{name: http, port: 80, nodePort: 30080, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: sparse}
spec:
  type: LoadBalancer
  clusterIP: 10.96.77.9
  clusterIPs: [10.96.77.9, "fd00:10:96::77:9"]
  ipFamilies: [IPv4, IPv6]
  ports: [{name: https, port: 443, nodePort: 30443, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: sleepy, namespace: sparse}
spec:
  type: ClusterIP
  clusterIP: 10.96.77.10
  clusterIPs: [10.96.77.10]
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: sleepy-aaaaa
  namespace: sparse
  labels: {kubernetes.io/service-name: sleepy}
addressType: IPv4
endpoints:
- addresses: [10.244.7.50]
  conditions: {ready: false}
ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: sleepy-headless, namespace: sparse}
spec:
  clusterIP: None
  clusterIPs: [None]
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: sleepy-headless-aaaaa
  namespace: sparse
  labels: {kubernetes.io/service-name: sleepy-headless}
addressType: IPv4
endpoints:
- addresses: [10.244.7.50]
  conditions: {ready: false}
ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: split, namespace: sparse}
spec:
  clusterIP: None
  clusterIPs: [None]
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: split-aaaaa
  namespace: sparse
  labels: {kubernetes.io/service-name: split}
addressType: IPv4
endpoints:
- addresses: [10.244.7.1]
  conditions: {ready: true}
- addresses: [10.244.7.2]
  conditions: {ready: true}
ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: split-bbbbb
  namespace: sparse
  labels: {kubernetes.io/service-name: split}
addressType: IPv4
endpoints:
- addresses: [10.244.7.2]
  conditions: {ready: true}
- addresses: [10.244.7.3]
- addresses: [10.244.7.4]
  conditions: {ready: false}
ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: dualh, namespace: sparse}
spec:
  clusterIP: None
  clusterIPs: [None]
  ipFamilies: [IPv4, IPv6]
  ports: [{name: pg, port: 5432, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dualh-ipv4
  namespace: sparse
  labels: {kubernetes.io/service-name: dualh}
addressType: IPv4
endpoints:
- addresses: [10.244.8.1]
  hostname: db-0
  conditions: {ready: true}
- addresses: [10.244.8.2]
  conditions: {ready: true}
ports: [{name: pg, port: 5432, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dualh-ipv6
  namespace: sparse
  labels: {kubernetes.io/service-name: dualh}
addressType: IPv6
endpoints:
- addresses: ["fd00:10:244:8::1"]
  hostname: db-0
  conditions: {ready: true}
- addresses: ["fd00:10:244:8::2"]
  conditions: {ready: true}
ports: [{name: pg, port: 5432, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: dangling, namespace: sparse}
spec:
  type: ExternalName
  externalName: gone.sparse.svc.cluster.local
"""


@pytest.fixture
def sparse(make_server: ServerFactory, tmp_path: Path) -> RunningServer:
    dump = tmp_path / "sparse.yaml"
    dump.write_text(SPARSE_DUMP)
    return make_server(source=SourceSpec("file", (dump,)))


# ------------------------------------------------------------------- S2.1 dns-version


def test_s2_1_dns_version_returns_txt_schema_version(demo: RunningServer, proto: str) -> None:
    reply = demo.ask("dns-version.cluster.local", "TXT", tcp=is_tcp(proto))
    assert_positive(reply)
    assert rdatas(reply, "TXT") == ['"1.1.0"']
    assert [rd.strings for rrset in reply.answer for rd in rrset] == [(b"1.1.0",)]


def test_s2_1_dns_version_has_no_address_records(demo: RunningServer, proto: str) -> None:
    assert_nodata(demo.ask("dns-version.cluster.local", "A", tcp=is_tcp(proto)))


# ------------------------------------------------------------- S2.2 ClusterIP services


@pytest.mark.parametrize(("name", "ip"), [
    ("httpenv.default.svc.cluster.local", "10.108.189.10"),
    ("svc-clusterip-httpd.default.svc.cluster.local", "10.99.76.207"),
    ("kubernetes.default.svc.cluster.local", "10.96.0.1"),
    ("web.default.svc.cluster.local", "10.96.33.33"),
    ("kube-dns.kube-system.svc.cluster.local", "10.96.0.10"),
    ("3d-render.team-a.svc.cluster.local", "10.96.50.3"),
])
def test_s2_2_cluster_ip_service_returns_its_cluster_ip(
        demo: RunningServer, proto: str, name: str, ip: str) -> None:
    reply = demo.ask(name, "A", tcp=is_tcp(proto))
    assert_positive(reply)
    assert rrset_texts(reply) == [f"{name}. 5 IN A {ip}"]


def test_s2_2_cluster_ip_service_resolves_only_under_its_own_namespace(
        demo: RunningServer, proto: str) -> None:
    tcp = is_tcp(proto)
    assert addresses(demo.ask("svc-clusterip-httpd.default.svc.cluster.local", "A",
                              tcp=tcp)) == ["10.99.76.207"]
    for ns in ("kube-system", "prod", "team-a"):
        assert_nxdomain(demo.ask(f"svc-clusterip-httpd.{ns}.svc.cluster.local", "A", tcp=tcp))


def test_s2_2_ipv4_only_cluster_ip_service_has_no_aaaa(demo: RunningServer, proto: str) -> None:
    assert_nodata(demo.ask("httpenv.default.svc.cluster.local", "AAAA", tcp=is_tcp(proto)))


def test_s2_2_dual_stack_service_returns_a_and_aaaa(demo: RunningServer, proto: str) -> None:
    tcp = is_tcp(proto)
    a = demo.ask("dual.default.svc.cluster.local", "A", tcp=tcp)
    aaaa = demo.ask("dual.default.svc.cluster.local", "AAAA", tcp=tcp)
    assert_positive(a)
    assert_positive(aaaa)
    assert addresses(a) == ["10.96.120.5"]
    assert addresses(aaaa, "AAAA") == ["fd00:10:96::7c5"]


def test_s2_2_cluster_ip_is_answered_with_zero_endpoints(
        sparse: RunningServer, proto: str) -> None:
    tcp = is_tcp(proto)
    # quiet: no EndpointSlice at all; sleepy: a slice whose only endpoint is not ready
    assert addresses(sparse.ask("quiet.sparse.svc.cluster.local", "A", tcp=tcp)) == [
        "10.96.77.7"]
    assert addresses(sparse.ask("sleepy.sparse.svc.cluster.local", "A", tcp=tcp)) == [
        "10.96.77.10"]
    srv = sparse.ask("_http._tcp.quiet.sparse.svc.cluster.local", "SRV", tcp=tcp)
    assert rdatas(srv, "SRV") == ["0 100 80 quiet.sparse.svc.cluster.local."]


def test_s2_2_node_port_and_load_balancer_services_return_their_cluster_ips(
        sparse: RunningServer, proto: str) -> None:
    tcp = is_tcp(proto)
    assert addresses(sparse.ask("np.sparse.svc.cluster.local", "A", tcp=tcp)) == ["10.96.77.8"]
    assert addresses(sparse.ask("lb.sparse.svc.cluster.local", "A", tcp=tcp)) == ["10.96.77.9"]
    assert addresses(sparse.ask("lb.sparse.svc.cluster.local", "AAAA", tcp=tcp),
                     "AAAA") == ["fd00:10:96::77:9"]


# -------------------------------------------------------------- S2.3 headless services


def test_s2_3_headless_service_returns_one_a_record_per_ready_endpoint(
        demo: RunningServer, proto: str) -> None:
    reply = demo.ask("httpenv-headless.default.svc.cluster.local", "A", tcp=is_tcp(proto))
    assert_positive(reply)
    assert sorted(addresses(reply)) == HTTPENV_IPS
    assert len(reply.answer) == 1  # one RRset


def test_s2_3_headless_service_leaves_out_not_ready_endpoints(
        demo: RunningServer, proto: str) -> None:
    reply = demo.ask("web-headless.default.svc.cluster.local", "A", tcp=is_tcp(proto))
    assert sorted(addresses(reply)) == ["10.244.1.51", "10.244.2.52"]
    assert "10.244.1.53" not in addresses(reply)


def test_s2_3_headless_endpoint_without_conditions_is_ready(
        demo: RunningServer, proto: str) -> None:
    # team-a/v6: fd00:10:244:: has no conditions at all, fd00:10:244:1::7 is ready: true
    reply = demo.ask("v6.team-a.svc.cluster.local", "AAAA", tcp=is_tcp(proto))
    assert_positive(reply)
    assert sorted(addresses(reply, "AAAA")) == ["fd00:10:244:1::7", "fd00:10:244::"]


def test_s2_3_ipv6_only_headless_service_has_no_a_records(
        demo: RunningServer, proto: str) -> None:
    assert_nodata(demo.ask("v6.team-a.svc.cluster.local", "A", tcp=is_tcp(proto)))


def test_s2_3_headless_endpoints_are_de_duplicated_across_slices(
        sparse: RunningServer, proto: str) -> None:
    # split: 10.244.7.2 is in both slices; 10.244.7.3 has no conditions (ready);
    # 10.244.7.4 is not ready.
    reply = sparse.ask("split.sparse.svc.cluster.local", "A", tcp=is_tcp(proto))
    assert_positive(reply)
    assert sorted(addresses(reply)) == ["10.244.7.1", "10.244.7.2", "10.244.7.3"]
    srv = sparse.ask("_http._tcp.split.sparse.svc.cluster.local", "SRV", tcp=is_tcp(proto))
    assert sorted(rdatas(srv, "SRV")) == [
        f"0 33 80 10-244-7-{i}.split.sparse.svc.cluster.local." for i in (1, 2, 3)]


def test_s2_3_dual_stack_headless_service_returns_a_and_aaaa_per_endpoint(
        sparse: RunningServer, proto: str) -> None:
    tcp = is_tcp(proto)
    a = sparse.ask("dualh.sparse.svc.cluster.local", "A", tcp=tcp)
    aaaa = sparse.ask("dualh.sparse.svc.cluster.local", "AAAA", tcp=tcp)
    assert sorted(addresses(a)) == ["10.244.8.1", "10.244.8.2"]
    assert sorted(addresses(aaaa, "AAAA")) == ["fd00:10:244:8::1", "fd00:10:244:8::2"]


def test_s2_3_headless_service_with_no_ready_endpoints_is_nxdomain(
        demo: RunningServer, proto: str) -> None:
    tcp = is_tcp(proto)
    for rdtype in ("A", "AAAA", "SRV"):
        assert_nxdomain(demo.ask("empty-headless.default.svc.cluster.local", rdtype, tcp=tcp))


def test_s2_3_headless_service_whose_endpoints_are_all_not_ready_is_nxdomain(
        sparse: RunningServer, proto: str) -> None:
    assert_nxdomain(sparse.ask("sleepy-headless.sparse.svc.cluster.local", "A",
                               tcp=is_tcp(proto)))


def test_s2_3_headless_answers_rotate_between_queries(demo: RunningServer, proto: str) -> None:
    orders = [addresses(demo.ask("httpenv-headless.default.svc.cluster.local", "A",
                                 tcp=is_tcp(proto))) for _ in range(6)]
    assert all(sorted(order) == HTTPENV_IPS for order in orders)
    assert len({order[0] for order in orders}) > 1, f"order never changed: {orders}"


def test_s2_3_large_headless_service_returns_every_endpoint_over_tcp(
        demo: RunningServer) -> None:
    reply = demo.ask("big.team-a.svc.cluster.local", "A", tcp=True)
    assert_positive(reply)
    assert sorted(addresses(reply), key=ipaddress.ip_address) == [
        f"10.244.3.{i}" for i in range(1, 121)]


# ---------------------------------------------------------------- S2.4 endpoint names


@pytest.mark.parametrize(("host", "ip"), sorted(RABBITMQ.items()))
def test_s2_4_endpoint_with_hostname_is_named_after_it(
        demo: RunningServer, proto: str, host: str, ip: str) -> None:
    reply = demo.ask(f"{host}.rabbitmq.default.svc.cluster.local", "A", tcp=is_tcp(proto))
    assert_positive(reply)
    assert addresses(reply) == [ip]


def test_s2_4_endpoint_with_hostname_has_no_dashed_ip_name(
        demo: RunningServer, proto: str) -> None:
    assert_nxdomain(demo.ask("10-244-1-31.rabbitmq.default.svc.cluster.local", "A",
                             tcp=is_tcp(proto)))


@pytest.mark.parametrize("ip", HTTPENV_IPS)
def test_s2_4_endpoint_without_hostname_is_named_by_dashed_ip(
        demo: RunningServer, proto: str, ip: str) -> None:
    name = ip.replace(".", "-") + ".httpenv-headless.default.svc.cluster.local"
    reply = demo.ask(name, "A", tcp=is_tcp(proto))
    assert_positive(reply)
    assert addresses(reply) == [ip]


def test_s2_4_not_ready_endpoint_has_no_name(demo: RunningServer, proto: str) -> None:
    assert_nxdomain(demo.ask("10-244-1-53.web-headless.default.svc.cluster.local", "A",
                             tcp=is_tcp(proto)))


@pytest.mark.parametrize(("name", "ip"), [
    ("fd00-10-244--0.v6.team-a.svc.cluster.local", "fd00:10:244::"),  # trailing dash + 0
    ("fd00-10-244-1--7.v6.team-a.svc.cluster.local", "fd00:10:244:1::7"),
    ("fd00-10-244-1--29.dual.default.svc.cluster.local", "fd00:10:244:1::29"),
    ("fd00-10-244-2--2a.dual.default.svc.cluster.local", "fd00:10:244:2::2a"),
])
def test_s2_4_ipv6_endpoint_is_named_by_dashed_ip(
        demo: RunningServer, proto: str, name: str, ip: str) -> None:
    tcp = is_tcp(proto)
    reply = demo.ask(name, "AAAA", tcp=tcp)
    assert_positive(reply)
    assert addresses(reply, "AAAA") == [ip]
    assert_nodata(demo.ask(name, "A", tcp=tcp))


def test_s2_4_ipv6_endpoint_trailing_dash_label_without_zero_is_not_a_name(
        demo: RunningServer, proto: str) -> None:
    # "fd00-10-244--" would end in a dash, which is not a valid label form we serve.
    assert_nxdomain(demo.ask("fd00-10-244--.v6.team-a.svc.cluster.local", "AAAA",
                             tcp=is_tcp(proto)))


def test_s2_4_dual_stack_endpoint_hostname_carries_both_families(
        sparse: RunningServer, proto: str) -> None:
    # db-0 appears in the IPv4 and the IPv6 slice with the same hostname: one name, A+AAAA
    tcp = is_tcp(proto)
    name = "db-0.dualh.sparse.svc.cluster.local"
    assert addresses(sparse.ask(name, "A", tcp=tcp)) == ["10.244.8.1"]
    assert addresses(sparse.ask(name, "AAAA", tcp=tcp), "AAAA") == ["fd00:10:244:8::1"]
    # without a hostname each family gets its own dashed name
    assert addresses(sparse.ask("10-244-8-2.dualh.sparse.svc.cluster.local", "A",
                                tcp=tcp)) == ["10.244.8.2"]
    assert addresses(sparse.ask("fd00-10-244-8--2.dualh.sparse.svc.cluster.local", "AAAA",
                                tcp=tcp), "AAAA") == ["fd00:10:244:8::2"]
    srv = sparse.ask("_pg._tcp.dualh.sparse.svc.cluster.local", "SRV", tcp=tcp)
    assert sorted(rdatas(srv, "SRV")) == [
        "0 33 5432 10-244-8-2.dualh.sparse.svc.cluster.local.",
        "0 33 5432 db-0.dualh.sparse.svc.cluster.local.",
        "0 33 5432 fd00-10-244-8--2.dualh.sparse.svc.cluster.local.",
    ]
    extra = additional_addresses(srv)
    assert extra["db-0.dualh.sparse.svc.cluster.local."] == {"10.244.8.1", "fd00:10:244:8::1"}


def test_s2_4_endpoint_pod_names_name_endpoints_after_their_pods(
        make_server: ServerFactory, proto: str) -> None:
    server = make_server(endpoint_pod_names=True)
    tcp = is_tcp(proto)
    for pod, ip in HTTPENV_PODS.items():
        reply = server.ask(f"{pod}.httpenv-headless.default.svc.cluster.local", "A", tcp=tcp)
        assert_positive(reply)
        assert addresses(reply) == [ip]
    # a hostname still wins over the pod name
    assert addresses(server.ask("rabbitmq-1.rabbitmq.default.svc.cluster.local", "A",
                                tcp=tcp)) == ["10.244.2.32"]
    # SRV targets use the same names
    srv = server.ask("_http._tcp.httpenv-headless.default.svc.cluster.local", "SRV", tcp=tcp)
    assert sorted(rd.target.to_text() for rd in srvs(srv)) == sorted(
        f"{pod}.httpenv-headless.default.svc.cluster.local." for pod in HTTPENV_PODS)


# ------------------------------------------------------------------------- S2.5 SRV


def test_s2_5_headless_srv_returns_one_record_per_ready_endpoint_with_additional(
        demo: RunningServer, proto: str) -> None:
    reply = demo.ask("_amqp._tcp.rabbitmq.default.svc.cluster.local", "SRV", tcp=is_tcp(proto))
    assert_positive(reply)
    records = srvs(reply)
    assert len(records) == 3
    assert {(rd.priority, rd.weight, rd.port) for rd in records} == {(0, 33, 5672)}
    targets = {rd.target.to_text() for rd in records}
    assert targets == {f"{h}.rabbitmq.default.svc.cluster.local." for h in RABBITMQ}
    assert additional_addresses(reply) == {
        f"{h}.rabbitmq.default.svc.cluster.local.": {ip} for h, ip in RABBITMQ.items()}


def test_s2_5_headless_srv_port_is_the_endpoint_port(demo: RunningServer, proto: str) -> None:
    # team-a/v6: the service port is 53, the EndpointSlice port is 5353
    reply = demo.ask("_dns._udp.v6.team-a.svc.cluster.local", "SRV", tcp=is_tcp(proto))
    assert_positive(reply)
    assert sorted(rdatas(reply, "SRV")) == [
        "0 50 5353 fd00-10-244--0.v6.team-a.svc.cluster.local.",
        "0 50 5353 fd00-10-244-1--7.v6.team-a.svc.cluster.local.",
    ]
    assert additional_addresses(reply) == {
        "fd00-10-244--0.v6.team-a.svc.cluster.local.": {"fd00:10:244::"},
        "fd00-10-244-1--7.v6.team-a.svc.cluster.local.": {"fd00:10:244:1::7"},
    }


def test_s2_5_headless_srv_leaves_out_not_ready_endpoints(
        demo: RunningServer, proto: str) -> None:
    reply = demo.ask("_http._tcp.web-headless.default.svc.cluster.local", "SRV",
                     tcp=is_tcp(proto))
    assert sorted(rdatas(reply, "SRV")) == [
        "0 50 8080 10-244-1-51.web-headless.default.svc.cluster.local.",
        "0 50 8080 10-244-2-52.web-headless.default.svc.cluster.local.",
    ]


def test_s2_5_headless_srv_weight_is_floor_of_100_over_count(
        demo: RunningServer, proto: str) -> None:
    reply = demo.ask("_http._tcp.httpenv-headless.default.svc.cluster.local", "SRV",
                     tcp=is_tcp(proto))
    assert sorted(rdatas(reply, "SRV")) == sorted(
        f"0 20 8888 {ip.replace('.', '-')}.httpenv-headless.default.svc.cluster.local."
        for ip in HTTPENV_IPS)


def test_s2_5_srv_weight_is_zero_for_more_than_100_endpoints(demo: RunningServer) -> None:
    reply = demo.ask("_http._tcp.big.team-a.svc.cluster.local", "SRV", tcp=True)
    records = srvs(reply)
    assert len(records) == 120
    assert {(rd.priority, rd.weight, rd.port) for rd in records} == {(0, 0, 80)}


def test_s2_5_cluster_ip_srv_targets_the_service_name(demo: RunningServer, proto: str) -> None:
    reply = demo.ask("_http._tcp.svc-clusterip-httpd.default.svc.cluster.local", "SRV",
                     tcp=is_tcp(proto))
    assert_positive(reply)
    assert rdatas(reply, "SRV") == ["0 100 80 svc-clusterip-httpd.default.svc.cluster.local."]
    assert additional_addresses(reply) == {
        "svc-clusterip-httpd.default.svc.cluster.local.": {"10.99.76.207"}}


def test_s2_5_cluster_ip_srv_port_is_the_service_port_not_the_target_port(
        demo: RunningServer, proto: str) -> None:
    # kubernetes: service port 443, EndpointSlice port 6443
    reply = demo.ask("_https._tcp.kubernetes.default.svc.cluster.local", "SRV",
                     tcp=is_tcp(proto))
    assert rdatas(reply, "SRV") == ["0 100 443 kubernetes.default.svc.cluster.local."]


@pytest.mark.parametrize(("name", "port"), [
    ("_dns._udp.kube-dns.kube-system.svc.cluster.local", 53),
    ("_dns-tcp._tcp.kube-dns.kube-system.svc.cluster.local", 53),
    ("_metrics._tcp.kube-dns.kube-system.svc.cluster.local", 9153),
])
def test_s2_5_srv_per_named_port_and_protocol(
        demo: RunningServer, proto: str, name: str, port: int) -> None:
    reply = demo.ask(name, "SRV", tcp=is_tcp(proto))
    assert_positive(reply)
    assert rdatas(reply, "SRV") == [f"0 100 {port} kube-dns.kube-system.svc.cluster.local."]
    assert additional_addresses(reply) == {
        "kube-dns.kube-system.svc.cluster.local.": {"10.96.0.10"}}


def test_s2_5_srv_with_the_wrong_protocol_is_nxdomain(demo: RunningServer, proto: str) -> None:
    # port "dns" of kube-dns is UDP only
    assert_nxdomain(demo.ask("_dns._tcp.kube-dns.kube-system.svc.cluster.local", "SRV",
                             tcp=is_tcp(proto)))


@pytest.mark.parametrize("name", [
    "_HTTP._TCP.svc-clusterip-httpd.default.svc.cluster.local",
    "_http._Tcp.svc-clusterip-httpd.default.svc.cluster.local",
    "_Dns._UDP.kube-dns.kube-system.svc.cluster.local",
])
def test_s2_5_srv_protocol_label_is_case_insensitive(
        demo: RunningServer, proto: str, name: str) -> None:
    reply = demo.ask(name, "SRV", tcp=is_tcp(proto))
    assert_positive(reply)
    assert len(srvs(reply)) == 1
    assert reply.answer[0].name.to_text() == name + "."


def test_s2_5_bare_service_srv_returns_every_named_port(demo: RunningServer, proto: str) -> None:
    # kube-dns has three named ports: dns 53/UDP, dns-tcp 53/TCP, metrics 9153/TCP. For
    # the bare name the two port-53 records have identical RDATA, and an RRset holds no
    # duplicate records (RFC 2181 §5): two records remain, so N = 2.
    tcp = is_tcp(proto)
    reply = demo.ask("kube-dns.kube-system.svc.cluster.local", "SRV", tcp=tcp)
    assert_positive(reply)
    assert sorted(rdatas(reply, "SRV")) == [
        "0 50 53 kube-dns.kube-system.svc.cluster.local.",
        "0 50 9153 kube-dns.kube-system.svc.cluster.local.",
    ]
    query = dns.message.make_query("kube-dns.kube-system.svc.cluster.local", "SRV")
    raw = raw_exchange(demo, query.to_wire(), tcp=tcp)
    assert struct.unpack("!H", raw[6:8])[0] == 2, "ANCOUNT: no duplicate records on the wire"


def test_s2_5_bare_headless_service_srv_returns_every_named_port_of_every_endpoint(
        demo: RunningServer, proto: str) -> None:
    reply = demo.ask("rabbitmq.default.svc.cluster.local", "SRV", tcp=is_tcp(proto))
    assert_positive(reply)
    # 2 named ports (amqp 5672, epmd 4369) x 3 ready endpoints = 6; floor(100/6) = 16
    assert sorted(rdatas(reply, "SRV")) == sorted(
        f"0 16 {port} {h}.rabbitmq.default.svc.cluster.local."
        for port in (5672, 4369) for h in RABBITMQ)
    assert additional_addresses(reply) == {
        f"{h}.rabbitmq.default.svc.cluster.local.": {ip} for h, ip in RABBITMQ.items()}


def test_s2_5_service_with_only_unnamed_ports_has_no_srv(
        demo: RunningServer, proto: str) -> None:
    tcp = is_tcp(proto)
    assert_nodata(demo.ask("httpenv.default.svc.cluster.local", "SRV", tcp=tcp))
    assert_nxdomain(demo.ask("_http._tcp.httpenv.default.svc.cluster.local", "SRV", tcp=tcp))


# ---------------------------------------------------------------- S2.6 ExternalName


def test_s2_6_external_name_cname_query_returns_exactly_one_cname(
        demo: RunningServer, proto: str) -> None:
    tcp = is_tcp(proto)
    reply = demo.ask("httpbin.default.svc.cluster.local", "CNAME", tcp=tcp)
    assert_positive(reply)
    assert rrset_texts(reply) == ["httpbin.default.svc.cluster.local. 5 IN CNAME httpbin.org."]
    queue = demo.ask("queue.default.svc.cluster.local", "CNAME", tcp=tcp)
    assert rrset_texts(queue) == [
        "queue.default.svc.cluster.local. 5 IN CNAME rabbitmq.default.svc.cluster.local."]


@pytest.mark.parametrize("rdtype", ["A", "AAAA"])
def test_s2_6_external_name_out_of_zone_address_query_returns_only_the_cname(
        demo: RunningServer, proto: str, rdtype: str) -> None:
    reply = demo.ask("httpbin.default.svc.cluster.local", rdtype, tcp=is_tcp(proto))
    assert_positive(reply)
    assert rrset_texts(reply) == ["httpbin.default.svc.cluster.local. 5 IN CNAME httpbin.org."]


def test_s2_6_external_name_in_zone_target_returns_cname_then_its_addresses(
        demo: RunningServer, proto: str) -> None:
    reply = demo.ask("queue.default.svc.cluster.local", "A", tcp=is_tcp(proto))
    assert_positive(reply)
    assert [(r.name.to_text(), dns.rdatatype.to_text(r.rdtype)) for r in reply.answer] == [
        ("queue.default.svc.cluster.local.", "CNAME"),
        ("rabbitmq.default.svc.cluster.local.", "A"),
    ]
    assert rdatas(reply, "CNAME") == ["rabbitmq.default.svc.cluster.local."]
    assert sorted(addresses(reply)) == sorted(RABBITMQ.values())


def test_s2_6_external_name_in_zone_target_without_that_type_is_cname_and_nodata(
        demo: RunningServer, proto: str) -> None:
    reply = demo.ask("queue.default.svc.cluster.local", "AAAA", tcp=is_tcp(proto))
    assert reply.rcode() == dns.rcode.NOERROR
    assert rdatas(reply, "CNAME") == ["rabbitmq.default.svc.cluster.local."]
    assert addresses(reply, "AAAA") == []


def test_s2_6_external_name_to_a_missing_in_zone_name_is_cname_then_nxdomain(
        sparse: RunningServer, proto: str) -> None:
    # RFC 6604: the rcode is that of the last name in the chain
    reply = sparse.ask("dangling.sparse.svc.cluster.local", "A", tcp=is_tcp(proto))
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert rrset_texts(reply) == [
        "dangling.sparse.svc.cluster.local. 5 IN CNAME gone.sparse.svc.cluster.local."]


@pytest.mark.parametrize("name", [
    "x.httpbin.default.svc.cluster.local",
    "_http._tcp.httpbin.default.svc.cluster.local",
    "rabbitmq-0.queue.default.svc.cluster.local",
])
def test_s2_6_names_below_an_external_name_are_nxdomain(
        demo: RunningServer, proto: str, name: str) -> None:
    assert_nxdomain(demo.ask(name, "A", tcp=is_tcp(proto)))


# ------------------------------------------------------------------------- S2.7 PTR


def ptr_targets(reply: dns.message.Message) -> list[str]:
    return sorted(rdatas(reply, "PTR"))


@pytest.mark.parametrize(("ip", "targets"), [
    ("10.108.189.10", ["httpenv.default.svc.cluster.local."]),
    ("10.99.76.207", ["svc-clusterip-httpd.default.svc.cluster.local."]),
    ("10.96.120.5", ["dual.default.svc.cluster.local."]),
    ("fd00:10:96::7c5", ["dual.default.svc.cluster.local."]),
    ("10.96.50.3", ["3d-render.team-a.svc.cluster.local."]),
])
def test_s2_7_ptr_for_a_cluster_ip_is_the_service_name(
        demo: RunningServer, proto: str, ip: str, targets: list[str]) -> None:
    reply = demo.ask(ipaddress.ip_address(ip).reverse_pointer, "PTR", tcp=is_tcp(proto))
    assert_positive(reply)
    assert ptr_targets(reply) == targets


@pytest.mark.parametrize(("ip", "targets"), [
    ("10.244.1.31", ["rabbitmq-0.rabbitmq.default.svc.cluster.local."]),
    ("10.244.1.11", ["10-244-1-11.httpenv-headless.default.svc.cluster.local.",
                     "10-244-1-11.httpenv.default.svc.cluster.local."]),
    ("fd00:10:244:1::29", ["fd00-10-244-1--29.dual.default.svc.cluster.local."]),
    ("fd00:10:244::", ["fd00-10-244--0.v6.team-a.svc.cluster.local."]),
    ("10.244.3.120", ["10-244-3-120.big.team-a.svc.cluster.local."]),
])
def test_s2_7_ptr_for_an_endpoint_ip_is_one_endpoint_name_per_selecting_service(
        demo: RunningServer, proto: str, ip: str, targets: list[str]) -> None:
    reply = demo.ask(ipaddress.ip_address(ip).reverse_pointer, "PTR", tcp=is_tcp(proto))
    assert_positive(reply)
    assert ptr_targets(reply) == targets


def test_s2_7_ptr_name_matching_ignores_nibble_case(demo: RunningServer, proto: str) -> None:
    name = ipaddress.ip_address("fd00:10:96::7c5").reverse_pointer.upper()
    reply = demo.ask(name, "PTR", tcp=is_tcp(proto))
    assert ptr_targets(reply) == ["dual.default.svc.cluster.local."]


@pytest.mark.parametrize("ip", [
    "10.1.2.3",  # nobody's
    "10.244.1.53",  # a not-ready endpoint
    "fd00:10:96::1",
    "192.0.2.7",
])
def test_s2_7_ptr_for_an_unknown_ip_is_nxdomain(demo: RunningServer, proto: str, ip: str) -> None:
    reply = demo.ask(ipaddress.ip_address(ip).reverse_pointer, "PTR", tcp=is_tcp(proto))
    assert_nxdomain(reply)
    assert [rrset.rdtype for rrset in reply.authority] == [dns.rdatatype.SOA]


# ------------------------------------------------------------------------- S2.8 pods


@pytest.mark.parametrize("name", [
    "1-2-3-4.default.pod.cluster.local",
    "10-244-1-11.default.pod.cluster.local",
])
def test_s2_8_pods_disabled_is_nxdomain(
        make_server: ServerFactory, proto: str, name: str) -> None:
    server = make_server(pods=PodsMode.DISABLED)
    assert_nxdomain(server.ask(name, "A", tcp=is_tcp(proto)))


def test_s2_8_pods_insecure_answers_from_the_label_when_the_namespace_exists(
        demo: RunningServer, proto: str) -> None:
    tcp = is_tcp(proto)
    for name, ip in [("1-2-3-4.default.pod.cluster.local", "1.2.3.4"),
                     ("10-244-1-11.default.pod.cluster.local", "10.244.1.11"),
                     ("10-0-0-1.prod.pod.cluster.local", "10.0.0.1"),  # a namespace, no pods
                     ("192-0-2-9.team-a.pod.cluster.local", "192.0.2.9")]:
        reply = demo.ask(name, "A", tcp=tcp)
        assert_positive(reply)
        assert rrset_texts(reply) == [f"{name}. 5 IN A {ip}"]


def test_s2_8_pods_insecure_ipv6_label_answers_aaaa(demo: RunningServer, proto: str) -> None:
    reply = demo.ask("fd00-10-244-1--29.default.pod.cluster.local", "AAAA", tcp=is_tcp(proto))
    assert_positive(reply)
    assert addresses(reply, "AAAA") == ["fd00:10:244:1::29"]


def test_s2_8_pods_insecure_other_family_is_nodata(demo: RunningServer, proto: str) -> None:
    assert_nodata(demo.ask("1-2-3-4.default.pod.cluster.local", "AAAA", tcp=is_tcp(proto)))


@pytest.mark.parametrize("name", [
    "1-2-3-4.nosuch.pod.cluster.local",  # unknown namespace
    "not-an-ip.default.pod.cluster.local",
    "1-2-3-400.default.pod.cluster.local",
    "x.1-2-3-4.default.pod.cluster.local",
])
def test_s2_8_pods_insecure_unknown_namespace_or_bad_label_is_nxdomain(
        demo: RunningServer, proto: str, name: str) -> None:
    assert_nxdomain(demo.ask(name, "A", tcp=is_tcp(proto)))


def test_s2_8_pods_verified_answers_only_for_a_pod_with_that_ip_in_that_namespace(
        make_server: ServerFactory, proto: str) -> None:
    server = make_server(pods=PodsMode.VERIFIED)
    tcp = is_tcp(proto)
    yes = server.ask("10-244-1-11.default.pod.cluster.local", "A", tcp=tcp)
    assert_positive(yes)
    assert addresses(yes) == ["10.244.1.11"]
    coredns = server.ask("10-244-0-2.kube-system.pod.cluster.local", "A", tcp=tcp)
    assert addresses(coredns) == ["10.244.0.2"]
    v6 = server.ask("fd00-10-244-2--2a.default.pod.cluster.local", "AAAA", tcp=tcp)
    assert addresses(v6, "AAAA") == ["fd00:10:244:2::2a"]
    # no such pod anywhere
    assert_nxdomain(server.ask("1-2-3-4.default.pod.cluster.local", "A", tcp=tcp))
    # a real pod IP (coredns, kube-system) asked in the wrong namespace
    assert_nxdomain(server.ask("10-244-0-2.default.pod.cluster.local", "A", tcp=tcp))


# ------------------------------------------------------------------------ S2.9 apex


def test_s2_9_apex_soa_has_the_documented_fields(demo: RunningServer, proto: str) -> None:
    reply = demo.ask("cluster.local", "SOA", tcp=is_tcp(proto))
    assert_positive(reply)
    [rrset] = reply.answer
    [soa] = list(rrset)
    assert rrset.ttl == 5
    assert soa.mname.to_text() == "ns.dns.cluster.local."
    assert soa.rname.to_text() == "hostmaster.cluster.local."
    assert (soa.refresh, soa.retry, soa.expire, soa.minimum) == (7200, 1800, 86400, 5)
    assert soa.serial == demo.app.ref.get().serial >= 1
    assert rrset_texts(reply) == [
        f"cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. "
        f"{soa.serial} {SOA_TAIL}"]


def test_s2_9_apex_ns(demo: RunningServer, proto: str) -> None:
    reply = demo.ask("cluster.local", "NS", tcp=is_tcp(proto))
    assert_positive(reply)
    assert rrset_texts(reply) == ["cluster.local. 5 IN NS ns.dns.cluster.local."]


@pytest.mark.parametrize("zone", ["in-addr.arpa", "ip6.arpa"])
def test_s2_9_reverse_zone_apex_soa_and_ns(demo: RunningServer, proto: str, zone: str) -> None:
    tcp = is_tcp(proto)
    soa = demo.ask(zone, "SOA", tcp=tcp)
    assert_positive(soa)
    [text] = rdatas(soa, "SOA")
    mname, rname, _serial, tail = text.split(" ", 3)
    assert (mname, rname, tail) == (f"ns.dns.{zone}.", f"hostmaster.{zone}.", SOA_TAIL)
    assert rdatas(demo.ask(zone, "NS", tcp=tcp), "NS") == [f"ns.dns.{zone}."]


def test_s2_9_apex_has_no_address_records(demo: RunningServer, proto: str) -> None:
    assert_nodata(demo.ask("cluster.local", "A", tcp=is_tcp(proto)))


# ---------------------------------------------------------------- every positive: AA


POSITIVES = [
    ("dns-version.cluster.local", "TXT"),
    ("httpenv.default.svc.cluster.local", "A"),
    ("dual.default.svc.cluster.local", "AAAA"),
    ("httpenv-headless.default.svc.cluster.local", "A"),
    ("rabbitmq-0.rabbitmq.default.svc.cluster.local", "A"),
    ("_amqp._tcp.rabbitmq.default.svc.cluster.local", "SRV"),
    ("kube-dns.kube-system.svc.cluster.local", "SRV"),
    ("httpbin.default.svc.cluster.local", "CNAME"),
    ("httpbin.default.svc.cluster.local", "A"),
    ("queue.default.svc.cluster.local", "A"),
    ("10.189.108.10.in-addr.arpa", "PTR"),
    ("1-2-3-4.default.pod.cluster.local", "A"),
    ("cluster.local", "SOA"),
    ("cluster.local", "NS"),
]


@pytest.mark.parametrize(("name", "rdtype"), POSITIVES)
def test_s2_every_positive_answer_is_authoritative(
        demo: RunningServer, proto: str, name: str, rdtype: str) -> None:
    reply = demo.ask(name, rdtype, tcp=is_tcp(proto))
    assert_positive(reply)
    assert not reply.flags & dns.flags.TC
    assert reply.answer[0].name == dns.name.from_text(name)


SHARED_POD_DUMP = """\
apiVersion: v1
kind: Namespace
metadata: {name: shared}
""" + "".join(f"""---
apiVersion: v1
kind: Service
metadata: {{name: {svc}, namespace: shared}}
spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {svc}-1
  namespace: shared
  labels: {{kubernetes.io/service-name: {svc}}}
addressType: IPv4
endpoints:
- addresses: [10.244.7.7]
  conditions: {{ready: true}}{hostname}
- addresses: [10.244.7.8]
  conditions: {{ready: true}}
ports: [{{name: http, port: 8080}}]
""" for svc, ip, hostname in [
    ("web", "10.96.7.1", ""), ("web-headless", "None", "\n  hostname: web-0"),
    ("metrics", "10.96.7.3", "")])


def test_s2_7_an_address_behind_three_services_has_three_ptrs_one_per_service(
        make_server: ServerFactory, tmp_path: Path, proto: str) -> None:
    dump = tmp_path / "shared.yaml"
    dump.write_text(SHARED_POD_DUMP)
    server = make_server(source=SourceSpec("file", (dump,)))
    reply = server.ask("7.7.244.10.in-addr.arpa", "PTR", tcp=is_tcp(proto))
    assert_positive(reply)
    assert sorted(ptr_targets(reply)) == [
        "10-244-7-7.metrics.shared.svc.cluster.local.",
        "10-244-7-7.web.shared.svc.cluster.local.",
        "web-0.web-headless.shared.svc.cluster.local."]
    assert sorted(ptr_targets(server.ask("8.7.244.10.in-addr.arpa", "PTR"))) == sorted(
        f"10-244-7-8.{svc}.shared.svc.cluster.local."
        for svc in ("metrics", "web", "web-headless"))
