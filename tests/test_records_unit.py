"""Pure record rules (SPEC §S2) and snapshot building: objects in, records out.

No sockets, no files: hand-made ``clusterdns.objects`` values go into
``clusterdns.records`` and ``clusterdns.snapshot.build``, and the tests look at the
``Record`` values and the snapshot's name index that come out.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from clusterdns import names, records
from clusterdns.config import Config, PodsMode
from clusterdns.objects import (
    Cluster,
    Endpoint,
    EndpointSlice,
    Namespace,
    Pod,
    Port,
    Service,
    ServiceKind,
)
from clusterdns.records import (
    AAAA,
    CNAME,
    NS,
    PTR,
    SOA,
    SRV,
    TXT,
    A,
    Record,
    RRType,
)
from clusterdns.snapshot import Snapshot, build

ZONE = "cluster.local"
TTL = 5
HTTP = Port("http", "tcp", 80)


# ----------------------------------------------------------------------------- helpers


def headless(name: str = "db", ns: str = "default", ports: tuple[Port, ...] = (HTTP,)) -> Service:
    return Service(ns, name, ServiceKind.HEADLESS, ports=ports)


def cluster_ip(name: str = "web", ns: str = "default", ips: tuple[str, ...] = ("10.96.0.50",),
               ports: tuple[Port, ...] = (HTTP,)) -> Service:
    return Service(ns, name, ServiceKind.CLUSTER_IP, cluster_ips=ips, ports=ports)


def ep(*addrs: str, ready: bool = True, hostname: str = "", pod: str = "") -> Endpoint:
    return Endpoint(tuple(addrs), ready, hostname, pod)


def eps(svc: Service, *endpoints: Endpoint, name: str = "", family: str = "IPv4",
        ports: tuple[Port, ...] | None = None) -> EndpointSlice:
    return EndpointSlice(svc.namespace, name or f"{svc.name}-{family.lower()}", svc.name,
                         family, tuple(endpoints), svc.ports if ports is None else ports)


def svc_records(svc: Service, *slices: EndpointSlice, pod_names: bool = False) -> list[Record]:
    return records.service_records(svc, list(slices), ZONE, TTL, pod_names)


def data_of(recs: Iterable[Record], name: str, rtype: RRType) -> list[records.RData]:
    return [r.data for r in recs if r.name == name and r.rtype == rtype]


def addrs_of(recs: Iterable[Record], name: str) -> list[str]:
    return sorted(r.data.address for r in recs
                  if r.name == name and isinstance(r.data, A | AAAA))


def config(**changes: object) -> Config:
    return Config(zones=("cluster.local", "in-addr.arpa", "ip6.arpa")).replace(**changes)


def rrset(snap: Snapshot, name: str, rtype: RRType) -> tuple[Record, ...]:
    return snap.nodes[name].get(rtype, ())


# ------------------------------------------------------------------------- dashed IPs


@pytest.mark.parametrize(("ip", "label"), [
    ("10.244.0.5", "10-244-0-5"),
    ("fd00::1", "fd00--1"),
    ("fd00:10:244::", "fd00-10-244--0"),  # trailing dash gets a 0
    ("::1", "0--1"),  # leading dash gets a 0
    ("::", "0--0"),
    ("fd00:10:244:1::7", "fd00-10-244-1--7"),
])
def test_s2_4_dashed_ip_label(ip: str, label: str) -> None:
    assert names.dashed_ip(ip) == label
    assert names.is_dns_label(label)


def test_s2_4_dashed_ipv6_label_is_used_for_an_endpoint_name() -> None:
    svc = headless("v6")
    recs = svc_records(svc, eps(svc, ep("fd00::1"), ep("fd00:10:244::"), family="IPv6"))
    assert data_of(recs, "fd00--1.v6.default.svc.cluster.local", RRType.AAAA) == [
        AAAA("fd00::1")]
    assert data_of(recs, "fd00-10-244--0.v6.default.svc.cluster.local", RRType.AAAA) == [
        AAAA("fd00:10:244::")]


# ------------------------------------------------------------------------ SRV weights


@pytest.mark.parametrize(("count", "weight"), [
    (1, 100), (2, 50), (3, 33), (4, 25), (6, 16), (7, 14), (100, 1), (101, 0), (120, 0),
])
def test_s2_5_srv_weight_is_floor_of_100_over_n(count: int, weight: int) -> None:
    assert records.srv_weight(count) == weight
    svc = headless("many")
    sl = eps(svc, *(ep(f"10.1.{i // 250}.{i % 250 + 1}") for i in range(count)))
    srv = data_of(svc_records(svc, sl), "_http._tcp.many.default.svc.cluster.local", RRType.SRV)
    assert len(srv) == count
    assert {(d.priority, d.weight, d.port) for d in srv if isinstance(d, SRV)} == {
        (0, weight, 80)}


# ------------------------------------------------------------------- headless services


def test_s2_3_headless_a_records_are_de_duplicated_across_slices() -> None:
    svc = headless()
    recs = svc_records(svc,
                       eps(svc, ep("10.0.0.1"), ep("10.0.0.2"), name="db-a"),
                       eps(svc, ep("10.0.0.2"), ep("10.0.0.3"), name="db-b"))
    base = "db.default.svc.cluster.local"
    a = data_of(recs, base, RRType.A)
    assert sorted(d.address for d in a if isinstance(d, A)) == [
        "10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert len(a) == 3
    assert len(data_of(recs, "10-0-0-2." + base, RRType.A)) == 1
    srv = data_of(recs, "_http._tcp." + base, RRType.SRV)
    assert len(srv) == 3
    assert {d.weight for d in srv if isinstance(d, SRV)} == {33}


def test_s2_3_not_ready_endpoints_are_left_out() -> None:
    svc = headless()
    recs = svc_records(svc, eps(svc, ep("10.0.0.1"), ep("10.0.0.2", ready=False)))
    base = "db.default.svc.cluster.local"
    assert addrs_of(recs, base) == ["10.0.0.1"]
    assert not [r for r in recs if r.name.startswith("10-0-0-2.")]
    srv = data_of(recs, "_http._tcp." + base, RRType.SRV)
    assert srv == [SRV(0, 100, 80, "10-0-0-1." + base)]


def test_s2_3_endpoint_without_addresses_is_left_out() -> None:
    svc = headless()
    recs = svc_records(svc, eps(svc, ep(), ep("10.0.0.1")))
    assert addrs_of(recs, "db.default.svc.cluster.local") == ["10.0.0.1"]


def test_s2_3_fqdn_slices_are_ignored() -> None:
    svc = headless()
    recs = svc_records(svc, eps(svc, ep("example.com"), family="FQDN"),
                       eps(svc, ep("10.0.0.1")))
    assert addrs_of(recs, "db.default.svc.cluster.local") == ["10.0.0.1"]


def test_s2_3_dual_stack_endpoint_with_a_hostname_is_one_name_with_both_families() -> None:
    svc = headless()
    recs = svc_records(svc,
                       eps(svc, ep("10.0.0.1", hostname="db-0"), ep("10.0.0.2"),
                           family="IPv4"),
                       eps(svc, ep("fd00::1", hostname="db-0"), ep("fd00::2"), family="IPv6"))
    base = "db.default.svc.cluster.local"
    assert addrs_of(recs, "db-0." + base) == ["10.0.0.1", "fd00::1"]
    assert addrs_of(recs, "10-0-0-2." + base) == ["10.0.0.2"]
    assert addrs_of(recs, "fd00--2." + base) == ["fd00::2"]
    assert addrs_of(recs, base) == ["10.0.0.1", "10.0.0.2", "fd00::1", "fd00::2"]
    ready = records.ready_endpoints(
        [eps(svc, ep("10.0.0.1", hostname="db-0"), family="IPv4"),
         eps(svc, ep("fd00::1", hostname="db-0"), family="IPv6")], use_pod_name=False)
    assert ready == [records.ReadyEndpoint("db-0", ("10.0.0.1", "fd00::1"))]
    targets = sorted(d.target for d in data_of(recs, "_http._tcp." + base, RRType.SRV)
                     if isinstance(d, SRV))
    assert targets == ["10-0-0-2." + base, "db-0." + base, "fd00--2." + base]


def test_s2_3_headless_srv_port_is_the_endpoint_port() -> None:
    svc = headless("dns", ports=(Port("dns", "udp", 53),))
    sl = eps(svc, ep("10.0.0.1"), ports=(Port("dns", "udp", 5353),))
    srv = data_of(svc_records(svc, sl), "_dns._udp.dns.default.svc.cluster.local", RRType.SRV)
    assert srv == [SRV(0, 100, 5353, "10-0-0-1.dns.default.svc.cluster.local")]


# ------------------------------------------------------------------- endpoint names


def test_s2_4_hostname_wins_over_pod_name_and_ip() -> None:
    assert records.endpoint_label("web-0", "web-0-pod", "10.0.0.1", use_pod_name=True) == "web-0"
    assert records.endpoint_label("", "web-abc", "10.0.0.1", use_pod_name=True) == "web-abc"
    assert records.endpoint_label("", "web-abc", "10.0.0.1", use_pod_name=False) == "10-0-0-1"
    assert records.endpoint_label("", "", "10.0.0.1", use_pod_name=True) == "10-0-0-1"


def test_s2_4_pod_name_that_is_not_a_dns_label_falls_back_to_the_dashed_ip() -> None:
    assert records.endpoint_label("", "x" * 64, "10.0.0.1", use_pod_name=True) == "10-0-0-1"
    assert records.endpoint_label("", "web.abc", "10.0.0.1", use_pod_name=True) == "10-0-0-1"


def test_s2_4_endpoint_pod_names_option_names_endpoints_after_pods() -> None:
    svc = headless()
    sl = eps(svc, ep("10.0.0.1", pod="db-7c9f-abcde"), ep("10.0.0.2", hostname="db-1",
                                                          pod="db-1"))
    base = "db.default.svc.cluster.local"
    with_pods = svc_records(svc, sl, pod_names=True)
    assert addrs_of(with_pods, "db-7c9f-abcde." + base) == ["10.0.0.1"]
    assert addrs_of(with_pods, "10-0-0-1." + base) == []
    assert addrs_of(with_pods, "db-1." + base) == ["10.0.0.2"]
    without = svc_records(svc, sl, pod_names=False)
    assert addrs_of(without, "10-0-0-1." + base) == ["10.0.0.1"]
    assert addrs_of(without, "db-7c9f-abcde." + base) == []


# ------------------------------------------------------------------ ClusterIP services


def test_s2_2_cluster_ip_service_has_every_cluster_ip_even_without_endpoints() -> None:
    svc = cluster_ip("dual", ips=("10.96.1.5", "fd00:96::5"))
    recs = svc_records(svc)
    assert data_of(recs, "dual.default.svc.cluster.local", RRType.A) == [A("10.96.1.5")]
    assert data_of(recs, "dual.default.svc.cluster.local", RRType.AAAA) == [AAAA("fd00:96::5")]


def test_s2_5_cluster_ip_srv_targets_the_service_with_the_service_port() -> None:
    svc = cluster_ip(ports=(Port("https", "tcp", 443),))
    sl = eps(svc, ep("10.0.0.1"), ports=(Port("https", "tcp", 6443),))
    base = "web.default.svc.cluster.local"
    recs = svc_records(svc, sl)
    assert data_of(recs, "_https._tcp." + base, RRType.SRV) == [SRV(0, 100, 443, base)]
    # its endpoints still get names
    assert addrs_of(recs, "10-0-0-1." + base) == ["10.0.0.1"]


def test_s2_5_unnamed_port_has_no_srv() -> None:
    svc = cluster_ip(ports=(Port("", "tcp", 8888),))
    recs = svc_records(svc, eps(svc, ep("10.0.0.1")))
    assert not [r for r in recs if r.rtype == RRType.SRV]


def test_s2_5_bare_service_name_has_srv_for_every_named_port() -> None:
    svc = cluster_ip(ports=(Port("http", "tcp", 80), Port("grpc", "tcp", 9090),
                            Port("", "tcp", 7000)))
    base = "web.default.svc.cluster.local"
    srv = data_of(svc_records(svc), base, RRType.SRV)
    assert sorted(srv, key=lambda d: d.port if isinstance(d, SRV) else 0) == [
        SRV(0, 50, 80, base), SRV(0, 50, 9090, base)]


def test_s2_5_srv_protocol_is_part_of_the_owner_name() -> None:
    svc = cluster_ip("kube-dns", ports=(Port("dns", "udp", 53), Port("dns-tcp", "tcp", 53)))
    recs = svc_records(svc)
    owners = sorted(r.name for r in recs if r.rtype == RRType.SRV and r.name.startswith("_"))
    assert owners == ["_dns-tcp._tcp.kube-dns.default.svc.cluster.local",
                      "_dns._udp.kube-dns.default.svc.cluster.local"]


# ------------------------------------------------------------------ ExternalName, PTR


def test_s2_6_external_name_is_one_cname_and_nothing_else() -> None:
    svc = Service("default", "httpbin", ServiceKind.EXTERNAL_NAME, external_name="httpbin.org",
                  ports=(HTTP,))
    assert svc_records(svc) == [Record("httpbin.default.svc.cluster.local", TTL,
                                       CNAME("httpbin.org"))]
    assert list(records.ptr_records(svc, [], ZONE, TTL, False)) == []


def test_s2_7_ptr_records_for_cluster_ips_and_ready_endpoints() -> None:
    svc = cluster_ip("web", ips=("10.96.0.50", "fd00:96::50"))
    sl = eps(svc, ep("10.0.0.1"), ep("10.0.0.2", ready=False), ep("10.0.0.3", hostname="w-3"))
    ptrs = {(r.name, r.data) for r in records.ptr_records(svc, [sl], ZONE, TTL, False)}
    base = "web.default.svc.cluster.local"
    assert ptrs == {
        ("50.0.96.10.in-addr.arpa", PTR(base)),
        (names.reverse_name("fd00:96::50"), PTR(base)),
        ("1.0.0.10.in-addr.arpa", PTR("10-0-0-1." + base)),
        ("3.0.0.10.in-addr.arpa", PTR("w-3." + base)),
    }


# ------------------------------------------------------------------------- apex, TXT


def test_s2_9_soa_fields_and_s2_1_dns_version() -> None:
    recs = records.apex_records(ZONE, ZONE, 42, TTL)
    assert Record(ZONE, TTL, SOA("ns.dns.cluster.local", "hostmaster.cluster.local",
                                 42, 7200, 1800, 86400, TTL)) in recs
    assert Record(ZONE, TTL, NS("ns.dns.cluster.local")) in recs
    assert Record("dns-version.cluster.local", TTL, TXT(("1.1.0",))) in recs
    reverse = records.apex_records("in-addr.arpa", ZONE, 42, TTL)
    assert not [r for r in reverse if r.rtype == RRType.TXT]


def test_to_text_is_master_file_syntax() -> None:
    srv = Record("a.b", 5, SRV(0, 33, 53, "c.d"))
    assert records.to_text(srv) == "a.b.\t5\tIN\tSRV\t0 33 53 c.d."
    txt = Record("a.b", 5, TXT(('say "hi"',)))
    assert records.to_text(txt) == 'a.b.\t5\tIN\tTXT\t"say \\"hi\\""'


# -------------------------------------------------------------------- snapshot.build


def demo_cluster() -> Cluster:
    db = headless("db")
    web = cluster_ip("web")
    empty_cip = cluster_ip("idle", ips=("10.96.0.60",))
    empty_headless = headless("nobody")
    other = cluster_ip("api", ns="other", ips=("10.96.0.70",))
    return Cluster(
        namespaces=(Namespace("default"), Namespace("other"), Namespace("quiet")),
        services=(db, web, empty_cip, empty_headless, other),
        endpoint_slices=(
            eps(db, ep("10.0.0.1", hostname="db-0"), ep("10.0.0.2"), name="db-a"),
            eps(db, ep("10.0.0.2"), ep("10.0.0.3", ready=False), name="db-b"),
            eps(web, ep("10.0.1.1", pod="web-abc")),
            eps(empty_headless, ep("10.0.2.1", ready=False)),
        ),
        pods=(Pod("default", "web-abc", ("10.0.1.1",)), Pod("other", "x", ("10.0.3.1",))),
    )


def test_snapshot_build_indexes_every_record_and_dedups_across_slices() -> None:
    snap = build(demo_cluster(), config(), serial=7)
    assert snap.serial == 7 and snap.synced
    db = rrset(snap, "db.default.svc.cluster.local", RRType.A)
    assert sorted(r.data.address for r in db if isinstance(r.data, A)) == [
        "10.0.0.1", "10.0.0.2"]
    assert rrset(snap, "db-0.db.default.svc.cluster.local", RRType.A)[0].data == A("10.0.0.1")
    assert rrset(snap, "web.default.svc.cluster.local", RRType.A)[0].data == A("10.96.0.50")
    assert rrset(snap, "idle.default.svc.cluster.local", RRType.A)[0].data == A("10.96.0.60")
    soa = snap.soa("cluster.local")
    assert soa.data == SOA("ns.dns.cluster.local", "hostmaster.cluster.local", 7,
                           7200, 1800, 86400, 5)
    ptr = rrset(snap, "2.0.0.10.in-addr.arpa", RRType.PTR)
    assert [r.data for r in ptr] == [PTR("10-0-0-2.db.default.svc.cluster.local")]


def test_snapshot_build_leaves_out_headless_services_without_ready_endpoints() -> None:
    snap = build(demo_cluster(), config(), serial=1)
    assert "nobody.default.svc.cluster.local" not in snap.nodes
    assert "10-0-2-1.nobody.default.svc.cluster.local" not in snap.nodes
    assert snap.services[("default", "nobody")].ready_endpoints == 0


@pytest.mark.parametrize("name", [
    "cluster.local",
    "svc.cluster.local",
    "pod.cluster.local",
    "default.svc.cluster.local",
    "quiet.svc.cluster.local",  # a namespace with nothing in it
    "default.pod.cluster.local",
    "_tcp.db.default.svc.cluster.local",
    "in-addr.arpa",
    "10.in-addr.arpa",
    "0.0.10.in-addr.arpa",
])
def test_snapshot_build_has_empty_non_terminals(name: str) -> None:
    snap = build(demo_cluster(), config(pods=PodsMode.INSECURE), serial=1)
    assert name in snap.nodes


def test_snapshot_build_empty_non_terminals_hold_no_records() -> None:
    snap = build(demo_cluster(), config(pods=PodsMode.INSECURE), serial=1)
    for name in ("svc.cluster.local", "default.svc.cluster.local",
                 "_tcp.db.default.svc.cluster.local", "pod.cluster.local"):
        assert not snap.nodes[name], name


def test_snapshot_build_pod_namespaces_exist_only_when_pods_are_enabled() -> None:
    disabled = build(demo_cluster(), config(pods=PodsMode.DISABLED), serial=1)
    assert "default.pod.cluster.local" not in disabled.nodes
    verified = build(demo_cluster(), config(pods=PodsMode.VERIFIED), serial=1)
    assert "default.pod.cluster.local" in verified.nodes
    assert verified.pod_ips == frozenset({("default", "10.0.1.1"), ("other", "10.0.3.1")})


def test_snapshot_build_ignore_empty_service_drops_cluster_ip_services_without_endpoints(
) -> None:
    kept = build(demo_cluster(), config(ignore_empty_service=False), serial=1)
    assert "idle.default.svc.cluster.local" in kept.nodes
    assert "50.0.96.10.in-addr.arpa" in kept.nodes
    dropped = build(demo_cluster(), config(ignore_empty_service=True), serial=1)
    assert "idle.default.svc.cluster.local" not in dropped.nodes
    assert "60.0.96.10.in-addr.arpa" not in dropped.nodes
    # services with ready endpoints are untouched
    assert "web.default.svc.cluster.local" in dropped.nodes


def test_snapshot_build_namespaces_filter_exposes_only_those_namespaces() -> None:
    snap = build(demo_cluster(), config(namespaces=frozenset({"other"})), serial=1)
    assert "api.other.svc.cluster.local" in snap.nodes
    assert "other.svc.cluster.local" in snap.nodes
    assert "web.default.svc.cluster.local" not in snap.nodes
    assert "default.svc.cluster.local" not in snap.nodes
    assert "50.0.96.10.in-addr.arpa" not in snap.nodes  # no PTR either
    assert snap.namespaces == frozenset({"other"})
    assert ("default", "web") not in snap.services


def test_snapshot_build_endpoint_pod_names() -> None:
    snap = build(demo_cluster(), config(endpoint_pod_names=True), serial=1)
    assert "web-abc.web.default.svc.cluster.local" in snap.nodes
    assert "10-0-1-1.web.default.svc.cluster.local" not in snap.nodes


def test_snapshot_build_serves_services_under_every_forward_zone() -> None:
    snap = build(demo_cluster(), config(zones=("cluster.local", "corp.example",
                                                "in-addr.arpa")), serial=1)
    for zone in ("cluster.local", "corp.example"):
        assert rrset(snap, f"web.default.svc.{zone}", RRType.A)[0].data == A("10.96.0.50")
        assert rrset(snap, f"dns-version.{zone}", RRType.TXT)[0].data == TXT(("1.1.0",))
    # PTR targets use the cluster domain (the first forward zone)
    ptr = rrset(snap, "50.0.96.10.in-addr.arpa", RRType.PTR)
    assert [r.data for r in ptr] == [PTR("web.default.svc.cluster.local")]
    assert set(snap.forward_zones) == {"cluster.local", "corp.example"}


def test_snapshot_build_ptr_only_under_configured_reverse_zones() -> None:
    svc = cluster_ip("dual", ips=("10.96.1.5", "fd00:96::5"))
    cluster = Cluster(namespaces=(Namespace("default"),), services=(svc,))
    v4only = build(cluster, config(zones=("cluster.local", "in-addr.arpa")), serial=1)
    assert "5.1.96.10.in-addr.arpa" in v4only.nodes
    assert names.reverse_name("fd00:96::5") not in v4only.nodes
    both = build(cluster, config(), serial=1)
    assert names.reverse_name("fd00:96::5") in both.nodes


def test_snapshot_build_record_sets_hold_no_duplicates() -> None:
    snap = build(demo_cluster(), config(), serial=1)
    for name, node in snap.nodes.items():
        for rtype, rs in node.items():
            assert len(set(rs)) == len(rs), (name, rtype)
