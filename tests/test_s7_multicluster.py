"""§S7 Multicluster: ``clusterset.local`` from ServiceImports, end to end.

The Kubernetes DNS-Based Multicluster Service Discovery spec (KEP-1645, its DNS
specification, schema 1.0.0) row by row, as a pod would see it: clusterdns runs the
Kubernetes source with the real ``kubernetes`` client against the in-repo fake API
server, which holds ServiceImports (``multicluster.x-k8s.io/v1alpha1``) and EndpointSlices
an MCS controller imported from two clusters (``cluster-a`` and ``cluster-b``), beside
ordinary Services and slices of the same names; every question goes over UDP (and some
over TCP) with dnspython. Expected answers are written out from the objects below.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest

from clusterdns.config import SourceSpec
from clusterdns.source.kube import KubeSource, Tuning
from conftest import ROOT, RunningServer, addresses, serving_fake, wait_until
from fakekube import FakeKube

NOERROR, NXDOMAIN, REFUSED = dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.REFUSED
ZONE = "clusterset.local"
TTL = 7  # not the default, so that the records are seen to carry the configured TTL
TUNING = Tuning(page_size=3, watch_timeout=4.0, inactivity_timeout=1.0, request_timeout=5.0,
                backoff_base=0.05, backoff_cap_early=0.5, absent_retry=0.3)
PROPAGATION = 2.0  # a change in the API server shows in DNS within this many seconds

WEB = f"web.test.svc.{ZONE}"  # ClusterSetIP import
DB = f"db.test.svc.{ZONE}"  # headless import
IMPORTS_PATH = "/apis/multicluster.x-k8s.io/v1alpha1/serviceimports"

StartServer = Callable[..., RunningServer]


# ----------------------------------------------------------------------------- objects


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def service(name: str, cluster_ip: str, port: int = 80) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "test"},
            "spec": {"type": "ClusterIP", "clusterIP": cluster_ip,
                     "clusterIPs": [] if cluster_ip == "None" else [cluster_ip],
                     "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}}


def service_import(name: str, type_: str, ips: list[str] | None = None,
                   ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": type_, "ports": ports or []}
    if ips is not None:
        spec["ips"] = ips
    return {"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
            "metadata": {"name": name, "namespace": "test"}, "spec": spec,
            "status": {"clusters": [{"cluster": "cluster-a"}, {"cluster": "cluster-b"}]}}


def endpoint(ip: str, ready: bool = True, hostname: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"addresses": [ip], "conditions": {"ready": ready}}
    if hostname is not None:
        out["hostname"] = hostname
    return out


def imported_slice(name: str, import_name: str, cluster: str, endpoints: list[dict[str, Any]],
                   address_type: str = "IPv4", port: int = 5432,
                   port_name: str = "pg") -> dict[str, Any]:
    """A slice as an MCS controller imports it (KEP-1645, "Using EndpointSlice objects")."""
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "test", "labels": {
                "multicluster.kubernetes.io/service-name": import_name,
                "multicluster.kubernetes.io/source-cluster": cluster,
                "endpointslice.kubernetes.io/managed-by": "mcs-controller.example"}},
            "addressType": address_type, "endpoints": endpoints,
            "ports": [{"name": port_name, "port": port, "protocol": "TCP"}]}


def local_slice(name: str, service_name: str, ips: list[str], port: int = 8080
                ) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "test",
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4", "endpoints": [endpoint(ip) for ip in ips],
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}


WEB_IMPORT = service_import("web", "ClusterSetIP", ["10.42.42.42", "fd00:42::42"], [
    {"name": "https", "protocol": "TCP", "port": 443},
    {"protocol": "TCP", "port": 8443}])  # unnamed: no SRV
DB_IMPORT = service_import("db", "Headless", ports=[{"name": "pg", "protocol": "TCP",
                                                     "port": 5432}])

CLUSTER: list[dict[str, Any]] = [
    namespace("test"), namespace("other"),
    # The cluster's own Services of the same names, with their own endpoints.
    service("web", "10.96.0.50"), local_slice("web-local", "web", ["10.244.0.5"]),
    service("db", "None"), local_slice("db-local", "db", ["10.244.0.9"]),
    WEB_IMPORT, DB_IMPORT,
    imported_slice("web-a", "web", "cluster-a", [endpoint("10.1.1.1")], port=443,
                   port_name="https"),
    imported_slice("db-a", "db", "cluster-a", [
        endpoint("10.1.0.1", hostname="db-0"),
        endpoint("10.1.0.2"),  # no hostname: named by its dashed address
        endpoint("10.1.0.3", ready=False, hostname="db-2")]),
    imported_slice("db-b", "db", "cluster-b", [endpoint("10.2.0.1", hostname="db-0")]),
    imported_slice("db-b-v6", "db", "cluster-b", [endpoint("fd00:b::1", hostname="db-0")],
                   address_type="IPv6"),
]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def mcs_fake() -> Iterator[FakeKube]:
    with serving_fake(CLUSTER) as server:
        yield server


def start(make_server: StartServer, fake: FakeKube, tmp_path: Path,
          **changes: Any) -> RunningServer:
    changes.setdefault("multicluster_zones", (ZONE,))
    running = make_server(source=SourceSpec("kubernetes"), ttl=TTL,
                          kubeconfig=str(fake.write_kubeconfig(tmp_path / "kubeconfig")),
                          kube=lambda cfg: KubeSource(cfg, tuning=TUNING), **changes)
    wait_until(lambda: running.ask("cluster.local", "SOA").rcode() == NOERROR, 10,
               "clusterdns synced with the API server")
    return running


@pytest.fixture
def server(mcs_fake: FakeKube, make_server: StartServer, tmp_path: Path) -> RunningServer:
    return start(make_server, mcs_fake, tmp_path)


def texts(msg: dns.message.Message, section: str = "answer") -> list[str]:
    """The records of a section as ``name ttl TYPE rdata``, sorted (rotation aside)."""
    return sorted(f"{rrset.name} {rrset.ttl} {dns.rdatatype.to_text(rrset.rdtype)} {rd}"
                  for rrset in getattr(msg, section) for rd in rrset)


def soa_zone(msg: dns.message.Message) -> str:
    (soa,) = [r for r in msg.authority if r.rdtype == dns.rdatatype.SOA]
    return str(soa.name)


def ede_text(msg: dns.message.Message) -> str:
    return " ".join(opt.text or "" for opt in msg.extended_errors())


def eventually(server: RunningServer, name: str, rdtype: str,
               ok: Callable[[dns.message.Message], bool], what: str) -> dns.message.Message:
    box: dict[str, dns.message.Message] = {}

    def check() -> bool:
        box["msg"] = server.ask(name, rdtype, timeout=1.0)
        return ok(box["msg"])
    wait_until(check, PROPAGATION, what)
    return box["msg"]


# ------------------------------------------------------------- spec 2.2: dns-version


def test_s7_dns_version_is_the_multicluster_schema_1_0_0(server: RunningServer) -> None:
    msg = server.ask(f"dns-version.{ZONE}", "TXT")
    assert msg.rcode() == NOERROR and msg.flags & dns.flags.AA
    assert texts(msg) == [f'dns-version.{ZONE}. {TTL} TXT "1.0.0"']
    assert server.ask("dns-version.cluster.local", "TXT").answer[0][0].strings == (b"1.1.0",)
    nodata = server.ask(f"dns-version.{ZONE}", "A")
    assert nodata.rcode() == NOERROR and not nodata.answer


def test_s7_the_zone_apex_has_its_own_soa_and_ns(server: RunningServer) -> None:
    soa = server.ask(ZONE, "SOA")
    (record,) = soa.answer[0]
    assert (str(record.mname), str(record.rname)) == (f"ns.dns.{ZONE}.", f"hostmaster.{ZONE}.")
    assert (record.refresh, record.retry, record.expire, record.minimum) == (7200, 1800,
                                                                            86400, TTL)
    assert texts(server.ask(ZONE, "NS")) == [f"{ZONE}. {TTL} NS ns.dns.{ZONE}."]


# ------------------------------------------------------- spec 2.3: ClusterSetIP imports


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_s7_a_clusterset_ip_import_answers_its_clusterset_ips(server: RunningServer,
                                                              tcp: bool) -> None:
    a = server.ask(WEB, "A", tcp=tcp)
    assert a.rcode() == NOERROR and a.flags & dns.flags.AA
    assert texts(a) == [f"{WEB}. {TTL} A 10.42.42.42"]
    assert texts(server.ask(WEB, "AAAA", tcp=tcp)) == [f"{WEB}. {TTL} AAAA fd00:42::42"]
    # The cluster's own Service of that name is untouched.
    assert addresses(server.ask("web.test.svc.cluster.local", "A")) == ["10.96.0.50"]


def test_s7_a_clusterset_ip_import_has_srv_per_named_port_pointing_at_its_own_name(
        server: RunningServer) -> None:
    msg = server.ask(f"_https._tcp.{WEB}", "SRV")
    assert texts(msg) == [f"_https._tcp.{WEB}. {TTL} SRV 0 100 443 {WEB}."]
    assert texts(msg, "additional") == [f"{WEB}. {TTL} A 10.42.42.42",
                                        f"{WEB}. {TTL} AAAA fd00:42::42"]
    assert texts(server.ask(WEB, "SRV")) == [f"{WEB}. {TTL} SRV 0 100 443 {WEB}."]
    # The unnamed port has none; a named port under the wrong protocol is no name.
    assert server.ask(f"_https._udp.{WEB}", "SRV").rcode() == NXDOMAIN


@pytest.mark.parametrize("rdtype", ["A", "AAAA", "SRV", "TXT", "ANY"])
def test_s7_a_clusterset_ip_import_has_no_name_per_cluster_or_endpoint(
        server: RunningServer, rdtype: str) -> None:
    """Spec 2.3.4: no record disambiguating to one cluster's backends; and only
    headless imports have endpoint names (the KEP: "Not allowing cluster-specific
    targeting via DNS"), although the imported slice has an endpoint in cluster-a."""
    for name in (f"cluster-a.{WEB}", f"10-1-1-1.cluster-a.{WEB}"):
        msg = server.ask(name, rdtype)
        assert msg.rcode() == NXDOMAIN and not msg.answer, msg.to_text()
        assert "ClusterSetIP" in ede_text(msg)


# ------------------------------------------------------------ spec 2.4: headless imports


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_s7_a_headless_import_answers_every_ready_endpoint_of_every_cluster(
        server: RunningServer, tcp: bool) -> None:
    a = server.ask(DB, "A", tcp=tcp)
    assert a.rcode() == NOERROR and a.flags & dns.flags.AA
    assert texts(a) == [f"{DB}. {TTL} A 10.1.0.1", f"{DB}. {TTL} A 10.1.0.2",
                        f"{DB}. {TTL} A 10.2.0.1"]  # not 10.1.0.3 (not ready)
    assert texts(server.ask(DB, "AAAA", tcp=tcp)) == [f"{DB}. {TTL} AAAA fd00:b::1"]
    # The cluster's own headless Service of that name keeps its own endpoint only.
    assert addresses(server.ask("db.test.svc.cluster.local", "A")) == ["10.244.0.9"]


def test_s7_each_ready_endpoint_has_a_hostname_clusterid_name(server: RunningServer) -> None:
    assert texts(server.ask(f"db-0.cluster-a.{DB}", "A")) == [
        f"db-0.cluster-a.{DB}. {TTL} A 10.1.0.1"]
    # The same hostname in another cluster is another name; dual-stack is one name.
    assert texts(server.ask(f"db-0.cluster-b.{DB}", "A")) == [
        f"db-0.cluster-b.{DB}. {TTL} A 10.2.0.1"]
    assert texts(server.ask(f"db-0.cluster-b.{DB}", "AAAA")) == [
        f"db-0.cluster-b.{DB}. {TTL} AAAA fd00:b::1"]
    # Without a hostname: the dashed address, as in cluster.local (SPEC S2.4).
    assert texts(server.ask(f"10-1-0-2.cluster-a.{DB}", "A")) == [
        f"10-1-0-2.cluster-a.{DB}. {TTL} A 10.1.0.2"]
    # Not ready, or in the wrong cluster: no name.
    for name in (f"db-2.cluster-a.{DB}", f"10-1-0-2.cluster-b.{DB}", f"db-0.{DB}"):
        msg = server.ask(name, "A")
        assert msg.rcode() == NXDOMAIN and soa_zone(msg) == f"{ZONE}.", name


def test_s7_headless_srv_points_at_every_ready_endpoint_name_in_every_cluster(
        server: RunningServer) -> None:
    msg = server.ask(f"_pg._tcp.{DB}", "SRV")
    targets = [f"db-0.cluster-a.{DB}.", f"10-1-0-2.cluster-a.{DB}.", f"db-0.cluster-b.{DB}."]
    assert texts(msg) == sorted(f"_pg._tcp.{DB}. {TTL} SRV 0 33 5432 {t}" for t in targets)
    assert texts(msg, "additional") == [
        f"10-1-0-2.cluster-a.{DB}. {TTL} A 10.1.0.2", f"db-0.cluster-a.{DB}. {TTL} A 10.1.0.1",
        f"db-0.cluster-b.{DB}. {TTL} A 10.2.0.1", f"db-0.cluster-b.{DB}. {TTL} AAAA fd00:b::1"]
    assert sorted(str(rd.target) for rd in server.ask(DB, "SRV").answer[0]) == sorted(targets)


@pytest.mark.parametrize("rdtype", ["A", "AAAA", "SRV", "TXT", "ANY"])
def test_s7_a_cluster_id_under_a_headless_import_holds_no_record(
        server: RunningServer, rdtype: str) -> None:
    """Spec 2.4.4: ``<clusterid>.<svc>.<ns>.svc.<zone>`` has no record. It is the empty
    non-terminal above that cluster's endpoint names, so NODATA (RFC 8020), not NXDOMAIN."""
    msg = server.ask(f"cluster-a.{DB}", rdtype)
    assert msg.rcode() == NOERROR and not msg.answer, msg.to_text()
    assert soa_zone(msg) == f"{ZONE}."


# ------------------------------------------------------------- PTR and negative answers


def test_s7_a_clusterset_ip_has_a_ptr_to_its_import_and_imported_endpoints_have_none(
        server: RunningServer) -> None:
    """Spec 2.3.3 (as its drafts required; schema 1.0.0 allows it): each clusterset IP
    without a PTR of the cluster's own points at ``<svc>.<ns>.svc.clusterset.local``;
    imported endpoints' addresses belong to other clusters and get none of ours; the
    cluster's own PTRs stay as they are."""
    for ip in ("10.42.42.42", "fd00:42::42"):
        msg = server.ask(dns.reversename.from_address(ip).to_text(), "PTR")
        assert texts(msg) == [f"{dns.reversename.from_address(ip)} {TTL} PTR {WEB}."], ip
    for ip in ("10.1.0.1", "10.2.0.1"):
        msg = server.ask(dns.reversename.from_address(ip).to_text(), "PTR")
        assert msg.rcode() == NXDOMAIN and not msg.answer, ip
    local = server.ask(dns.reversename.from_address("10.96.0.50").to_text(), "PTR")
    assert [str(rd.target) for rd in local.answer[0]] == ["web.test.svc.cluster.local."]


def test_s7_a_clusterset_ip_the_cluster_also_uses_keeps_the_cluster_s_own_ptr(
        mcs_fake: FakeKube, server: RunningServer) -> None:
    """An import whose clusterset IP is a local Service's ClusterIP: the address keeps
    the cluster's PTR; when the local Service goes, the import's PTR takes its place,
    and comes back out of the way when a Service takes the address again."""
    reverse = dns.reversename.from_address("10.96.0.77").to_text()
    mcs_fake.apply(service("mirror", "10.96.0.77"))
    eventually(server, reverse, "PTR", lambda m: bool(m.answer), "local service added")
    mcs_fake.apply(service_import("mirror", "ClusterSetIP", ["10.96.0.77"]))
    eventually(server, f"mirror.test.svc.{ZONE}", "A",
               lambda m: addresses(m) == ["10.96.0.77"], "import added")
    assert texts(server.ask(reverse, "PTR")) == [
        f"{reverse} {TTL} PTR mirror.test.svc.cluster.local."]
    mcs_fake.delete("Service", "test", "mirror")
    eventually(server, reverse, "PTR", lambda m: texts(m) == [
        f"{reverse} {TTL} PTR mirror.test.svc.{ZONE}."], "local service deleted")
    mcs_fake.apply(service("mirror", "10.96.0.77"))
    eventually(server, reverse, "PTR", lambda m: texts(m) == [
        f"{reverse} {TTL} PTR mirror.test.svc.cluster.local."], "local service back")


def test_s7_negative_answers_carry_the_clusterset_soa_and_say_why(
        server: RunningServer) -> None:
    cases = [  # (name, type, rcode, explanation)
        (f"nope.test.svc.{ZONE}", "A", NXDOMAIN, 'no ServiceImport "nope" in namespace "test"'),
        (f"web.nope.svc.{ZONE}", "A", NXDOMAIN, 'namespace "nope" not found'),
        (f"_http._tcp.{DB}", "SRV", NXDOMAIN, "no such named port"),
        (f"1-2-3-4.test.pod.{ZONE}", "A", NXDOMAIN, "pod names are not served"),
        (f"other.svc.{ZONE}", "A", NOERROR, "exists but has no A records"),  # a namespace
        (f"svc.{ZONE}", "A", NOERROR, "exists but has no A records"),
        (f"db-0.cluster-a.{DB}", "AAAA", NOERROR, "exists but has no AAAA records"),
    ]
    for name, rdtype, rcode, why in cases:
        msg = server.ask(name, rdtype)
        assert (msg.rcode(), msg.answer) == (rcode, []), name
        assert msg.flags & dns.flags.AA and soa_zone(msg) == f"{ZONE}.", name
        (soa,) = msg.authority
        assert soa.ttl == TTL, name
        assert why in ede_text(msg), (name, ede_text(msg))


def test_s7_imported_slices_do_not_leak_into_cluster_local_nor_local_ones_into_clusterset(
        server: RunningServer) -> None:
    local_names = server.ask("_http._tcp.db.test.svc.cluster.local", "SRV")
    assert [str(rd.target) for rd in local_names.answer[0]] == [
        "10-244-0-9.db.test.svc.cluster.local."]
    for name in ("db-0.db.test.svc.cluster.local", "10-1-0-2.db.test.svc.cluster.local",
                 "cluster-a.db.test.svc.cluster.local"):
        assert server.ask(name, "A").rcode() == NXDOMAIN, name
    assert server.ask(f"10-244-0-9.cluster-a.{DB}", "A").rcode() == NXDOMAIN
    assert server.ask(f"_http._tcp.{WEB}", "SRV").rcode() == NXDOMAIN  # a local port name


# ------------------------------------------------------------------- watch: changes


def test_s7_imports_added_changed_unreadied_and_deleted_show_through_the_watch(
        mcs_fake: FakeKube, server: RunningServer) -> None:
    api = f"api.test.svc.{ZONE}"
    assert server.ask(api, "A").rcode() == NXDOMAIN
    mcs_fake.apply(service_import("api", "ClusterSetIP", ["10.42.0.7"],
                                  [{"name": "grpc", "protocol": "TCP", "port": 9000}]))
    eventually(server, api, "A", lambda m: addresses(m) == ["10.42.0.7"], "import added")
    # Ports changed: the old SRV name goes, the new one comes.
    mcs_fake.apply(service_import("api", "ClusterSetIP", ["10.42.0.7"],
                                  [{"name": "grpc", "protocol": "TCP", "port": 9443}]))
    eventually(server, f"_grpc._tcp.{api}", "SRV",
               lambda m: [rd.port for rd in m.answer[0]] == [9443] if m.answer else False,
               "port changed")
    # An endpoint of the headless import becomes not ready: it leaves every RRset.
    mcs_fake.apply(imported_slice("db-b", "db", "cluster-b",
                                  [endpoint("10.2.0.1", ready=False, hostname="db-0")]))
    eventually(server, DB, "A", lambda m: sorted(addresses(m)) == ["10.1.0.1", "10.1.0.2"],
               "endpoint unready")
    gone = server.ask(f"db-0.cluster-b.{DB}", "A")  # NODATA: its IPv6 slice is ready
    assert (gone.rcode(), gone.answer) == (NOERROR, [])
    assert addresses(server.ask(f"db-0.cluster-b.{DB}", "AAAA"), "AAAA") == ["fd00:b::1"]
    # Deleting the import takes every name of it; its slices make none on their own.
    mcs_fake.delete("ServiceImport", "test", "db")
    eventually(server, DB, "A", lambda m: m.rcode() == NXDOMAIN, "import deleted")
    for name in (f"db-0.cluster-a.{DB}", f"_pg._tcp.{DB}", f"cluster-a.{DB}"):
        assert server.ask(name, "SRV").rcode() == NXDOMAIN, name
    mcs_fake.delete("ServiceImport", "test", "api")
    eventually(server, api, "A", lambda m: m.rcode() == NXDOMAIN, "api deleted")


def test_s7_a_headless_import_whose_last_endpoint_goes_is_nxdomain(
        mcs_fake: FakeKube, server: RunningServer) -> None:
    for name in ("db-a", "db-b", "db-b-v6"):
        mcs_fake.delete("EndpointSlice", "test", name)
    msg = eventually(server, DB, "A", lambda m: m.rcode() == NXDOMAIN, "no ready endpoint")
    assert 'ServiceImport "db" has 0 ready endpoints' in ede_text(msg)


def held_back(server: RunningServer) -> float | None:
    value: float | None = server.call(lambda: server.app.registry.get_sample_value(
        "clusterdns_objects_held_back", {"kind": "serviceimports"}))
    return value


def test_s7_a_malformed_service_import_keeps_its_last_good_version_with_one_warning(
        mcs_fake: FakeKube, server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clusterdns.source.kube")
    broken = service_import("web", "ClusterSetIP", ["10.42.42.42", "10.42.42.999"])
    mcs_fake.apply(broken)
    wait_until(lambda: held_back(server) == 1, PROPAGATION, "the import held back")
    assert addresses(server.ask(WEB, "A")) == ["10.42.42.42"]
    told = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
            and "test/web is malformed" in r.getMessage()]
    assert len(told) == 1 and 'spec.ips[1]: "10.42.42.999" is not an IP address' in told[0]
    mcs_fake.apply(service_import("web", "Headless"))  # well-formed again, and headless
    # Headless now: its imported endpoint in cluster-a answers instead of the clusterset IP.
    eventually(server, WEB, "A", lambda m: addresses(m) == ["10.1.1.1"], "the new version")
    assert held_back(server) == 0


# ------------------------------------------------------ what is watched, and when


def test_s7_without_a_multicluster_zone_no_service_import_request_reaches_the_api_server(
        mcs_fake: FakeKube, make_server: StartServer, tmp_path: Path) -> None:
    server = start(make_server, mcs_fake, tmp_path, multicluster_zones=())
    assert any(r.path == "/api/v1/services" and r.watch for r in mcs_fake.requests)
    mcs_fake.apply(service_import("late", "ClusterSetIP", ["10.42.0.8"]))
    time.sleep(0.5)  # time enough for any watch to bring it
    assert [r.path for r in mcs_fake.requests if "serviceimports" in r.path] == []
    assert server.ask(WEB, "A").rcode() == REFUSED  # not a zone of ours at all
    # Imported slices still never reach cluster.local.
    assert addresses(server.ask("db.test.svc.cluster.local", "A")) == ["10.244.0.9"]


def test_s7_a_reload_that_sets_or_clears_the_multicluster_zones_starts_or_stops_imports(
        mcs_fake: FakeKube, make_server: StartServer, tmp_path: Path) -> None:
    server = start(make_server, mcs_fake, tmp_path, multicluster_zones=())
    assert server.ask(WEB, "A").rcode() == REFUSED

    def reload(zones: tuple[str, ...]) -> None:
        app = server.app
        asyncio.run_coroutine_threadsafe(
            app.apply_config(app.config.replace(multicluster_zones=zones)),
            server.loop).result(timeout=10)
    reload((ZONE,))
    eventually(server, WEB, "A", lambda m: addresses(m) == ["10.42.42.42"], "zone added")
    assert any(r.path == IMPORTS_PATH for r in mcs_fake.requests)
    reload(())
    eventually(server, WEB, "A", lambda m: m.rcode() == REFUSED, "zone cleared")
    assert addresses(server.ask("web.test.svc.cluster.local", "A")) == ["10.96.0.50"]


def test_s7_with_a_multicluster_zone_service_imports_are_listed_then_watched(
        mcs_fake: FakeKube, server: RunningServer) -> None:
    lists = [r for r in mcs_fake.requests if r.path == IMPORTS_PATH and not r.watch]
    assert lists and all(r.status == 200 for r in lists)
    wait_until(lambda: any(r.path == IMPORTS_PATH and r.watch for r in mcs_fake.requests),
               PROPAGATION, "a watch on serviceimports")


def test_s7_with_namespaces_service_imports_are_watched_inside_those_namespaces_only(
        mcs_fake: FakeKube, make_server: StartServer, tmp_path: Path) -> None:
    server = start(make_server, mcs_fake, tmp_path, namespaces=frozenset({"test"}))
    paths = {r.path for r in mcs_fake.requests if "serviceimports" in r.path}
    assert paths == {"/apis/multicluster.x-k8s.io/v1alpha1/namespaces/test/serviceimports"}
    assert addresses(server.ask(WEB, "A")) == ["10.42.42.42"]


def test_s7_a_missing_service_import_crd_is_one_warning_and_the_rest_is_served(
        mcs_fake: FakeKube, make_server: StartServer, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clusterdns.source.kube")
    mcs_fake.uninstall("serviceimports")
    server = start(make_server, mcs_fake, tmp_path)  # it syncs, and so is ready
    assert addresses(server.ask("web.test.svc.cluster.local", "A")) == ["10.96.0.50"]
    assert server.ask(f"dns-version.{ZONE}", "TXT").rcode() == NOERROR
    assert server.ask(WEB, "A").rcode() == NXDOMAIN  # no imports, as far as we know
    time.sleep(4 * TUNING.absent_retry)  # asked again meanwhile, and told once
    asked = [r for r in mcs_fake.requests if "serviceimports" in r.path]
    assert len(asked) >= 3 and {r.status for r in asked} == {404}
    told = [r.getMessage() for r in caplog.records if "serviceimports" in r.getMessage()
            and r.levelno == logging.WARNING]
    assert len(told) == 1 and "is the CRD installed?" in told[0], told
    mcs_fake.install("serviceimports")
    eventually(server, WEB, "A", lambda m: addresses(m) == ["10.42.42.42"], "CRD installed")
    assert any("serves serviceimports now" in r.getMessage() for r in caplog.records)
    mcs_fake.uninstall("serviceimports")  # removed again: the imports go with it
    eventually(server, WEB, "A", lambda m: m.rcode() == NXDOMAIN, "CRD removed")


def records_command(fake: FakeKube, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``clusterdns records`` (list once, print every record) with a multicluster zone."""
    cfg = tmp_path / "clusterdns.yaml"
    cfg.write_text(f"source: kubernetes\nkubeconfig: {fake.write_kubeconfig(tmp_path / 'kc')}\n"
                   f"multicluster_zones: [{ZONE}]\nzones: [cluster.local]\n", encoding="utf-8")
    return subprocess.run([sys.executable, "-m", "clusterdns", "records", "--config", str(cfg)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


def test_s7_records_prints_the_clusterset_zone_and_a_missing_crd_is_only_a_warning(
        mcs_fake: FakeKube, tmp_path: Path) -> None:
    done = records_command(mcs_fake, tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"{WEB}.\t5\tIN\tA\t10.42.42.42" in lines
    assert f"db-0.cluster-b.{DB}.\t5\tIN\tAAAA\tfd00:b::1" in lines
    mcs_fake.uninstall("serviceimports")
    done = records_command(mcs_fake, tmp_path)
    assert done.returncode == 0, done.stderr
    assert f'dns-version.{ZONE}.\t5\tIN\tTXT\t"1.0.0"' in done.stdout.splitlines()
    assert f"{WEB}." not in done.stdout
    assert "web.test.svc.cluster.local.\t5\tIN\tA\t10.96.0.50" in done.stdout.splitlines()
    warned = [line for line in done.stderr.splitlines() if "WARNING" in line]
    assert len(warned) == 1 and "is the CRD installed?" in warned[0], done.stderr
