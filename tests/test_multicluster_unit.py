"""The multicluster pieces one by one (SPEC §S7): converting ServiceImports and imported
EndpointSlices, the record rules of ``clusterdns.multicluster``, the snapshot they make,
and where the YAML config and the Corefile (both of CoreDNS's spellings) put the zones.

``tests/test_s7_multicluster.py`` holds the same rules end to end, over UDP, with the
Kubernetes source against the fake API server.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
from pathlib import Path
from typing import Any

import dns.reversename
import pytest

from clusterdns import cli, config, corefile, multicluster
from clusterdns.config import Config, ConfigError
from clusterdns.convert import ConvertError, convert
from clusterdns.objects import (
    Cluster,
    Endpoint,
    EndpointSlice,
    Namespace,
    Port,
    Service,
    ServiceImport,
    ServiceKind,
)
from clusterdns.records import SRV, A, Record, RRType, to_text
from clusterdns.resolve import Outcome, resolve
from clusterdns.snapshot import Builder, build
from clusterdns.source.dump import load_files
from clusterdns.source.file import FileSource

ZONE = "clusterset.local"
MC = Config(multicluster_zones=(ZONE,))


def raw_import(name: str = "web", type_: str | None = "ClusterSetIP", ips: Any = ("10.42.0.1",),
               ports: Any = ({"name": "HTTP", "protocol": "TCP", "port": 80},)) -> dict[str, Any]:
    spec: dict[str, Any] = {"ips": list(ips), "ports": list(ports)}
    if type_ is not None:
        spec["type"] = type_
    return {"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
            "metadata": {"name": name, "namespace": "Test"}, "spec": spec}


def raw_slice(labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-a-1", "namespace": "test", "labels": labels},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.1.0.1"], "hostname": "Web-0",
                           "conditions": {"ready": True}}],
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]}


def imported(name: str, service: str, cluster: str, *endpoints: Endpoint,
             ports: tuple[Port, ...] = (Port("http", "tcp", 8080),),
             address_type: str = "IPv4") -> EndpointSlice:
    return EndpointSlice("test", name, "", address_type, endpoints, ports, service, cluster)


# ---------------------------------------------------------------------------- convert


def test_a_service_import_converts_to_its_type_clusterset_ips_and_ports() -> None:
    imp = convert("ServiceImport", raw_import(ips=["10.42.0.1", "FD00::0:1", "10.42.0.1"]))
    assert imp == ServiceImport("test", "web", ServiceKind.CLUSTER_IP,
                                ("10.42.0.1", "fd00::1"), (Port("http", "tcp", 80),))


def test_a_service_import_without_a_type_is_clusterset_ip_as_coredns_reads_it() -> None:
    imp = convert("ServiceImport", raw_import(type_=None))
    assert isinstance(imp, ServiceImport) and imp.kind is ServiceKind.CLUSTER_IP


def test_a_headless_import_keeps_its_ports_and_no_ips() -> None:
    imp = convert("ServiceImport", raw_import(type_="Headless"))
    assert imp == ServiceImport("test", "web", ServiceKind.HEADLESS, (),
                                (Port("http", "tcp", 80),))


@pytest.mark.parametrize(("raw", "problem"), [
    (raw_import(type_="LoadBalancer"), 'spec.type: "LoadBalancer" is not ClusterSetIP or '
                                       "Headless"),
    (raw_import(ips=["10.42.0.1", "10.42.0.999"]),
     'spec.ips[1]: "10.42.0.999" is not an IP address'),
    (raw_import(ports=[{"name": "http", "port": 0}]),
     "spec.ports[0].port: 0 is not a port number (1-65535)"),
])
def test_a_malformed_service_import_names_the_field(raw: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConvertError) as err:
        convert("ServiceImport", raw)
    assert str(err.value) == problem


def test_an_imported_slice_names_its_import_and_source_cluster_and_no_service() -> None:
    sl = convert("EndpointSlice", raw_slice({
        "multicluster.kubernetes.io/service-name": "Web",
        "multicluster.kubernetes.io/source-cluster": "Cluster-A"}))
    assert isinstance(sl, EndpointSlice)
    assert (sl.service, sl.import_name, sl.source_cluster) == ("", "web", "cluster-a")


def test_a_slice_with_both_labels_counts_for_its_service_and_for_its_import() -> None:
    sl = convert("EndpointSlice", raw_slice({
        "kubernetes.io/service-name": "derived-web",
        "multicluster.kubernetes.io/service-name": "web",
        "multicluster.kubernetes.io/source-cluster": "a.registry-1"}))
    assert isinstance(sl, EndpointSlice)
    assert (sl.service, sl.import_name, sl.source_cluster) == ("derived-web", "web",
                                                               "a.registry-1")


@pytest.mark.parametrize(("cluster", "problem"), [
    (None, "required"),
    ("a..b", 'is not a cluster id'),
    ("x" * 64, "is not a cluster id"),
])
def test_an_imported_slice_needs_a_source_cluster_that_can_be_a_name(
        cluster: str | None, problem: str) -> None:
    labels = {"multicluster.kubernetes.io/service-name": "web"}
    if cluster is not None:
        labels["multicluster.kubernetes.io/source-cluster"] = cluster
    with pytest.raises(ConvertError) as err:
        convert("EndpointSlice", raw_slice(labels))
    assert err.value.field == 'metadata.labels["multicluster.kubernetes.io/source-cluster"]'
    assert problem in err.value.message


def test_an_imported_slice_comes_through_pickling_whole() -> None:
    sl = imported("web-a", "web", "cluster-a", Endpoint(("10.1.0.1",), True, "web-0"))
    again = pickle.loads(pickle.dumps(sl))
    assert again == sl and (again.import_name, again.source_cluster) == ("web", "cluster-a")
    assert "source_cluster='cluster-a'" in repr(sl)


def test_a_dump_serves_service_imports_and_imported_slices(tmp_path: Path) -> None:
    path = tmp_path / "dump.yaml"
    path.write_text(
        "apiVersion: v1\nkind: List\nitems:\n"
        "- {apiVersion: multicluster.x-k8s.io/v1alpha1, kind: ServiceImport,\n"
        "   metadata: {name: web, namespace: test},\n"
        "   spec: {type: ClusterSetIP, ips: [10.42.0.1]}}\n"
        "- {apiVersion: multicluster.x-k8s.io/v1alpha1, kind: ServiceImport,\n"
        "   metadata: {name: bad, namespace: test}, spec: {type: Nope}}\n", encoding="utf-8")
    result = load_files([path])
    assert result.cluster.service_imports == (
        ServiceImport("test", "web", ServiceKind.CLUSTER_IP, ("10.42.0.1",)),)
    assert result.warnings == (f"{path}: document 1, item 2 (ServiceImport test/bad): "
                               'spec.type: "Nope" is not ClusterSetIP or Headless',)


def test_the_file_source_serves_service_imports_from_its_first_load_and_its_reloads(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "dump.yaml"
    path.write_text(
        "apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceImport\n"
        "metadata: {name: web, namespace: test}\nspec: {ips: [10.42.0.1]}\n",
        encoding="utf-8")
    want = (ServiceImport("test", "web", ServiceKind.CLUSTER_IP, ("10.42.0.1",)),)
    caplog.set_level(logging.INFO, logger="clusterdns.source.file")
    first = FileSource([path])
    assert first.load().service_imports == want  # in this process
    assert "0 pods, 1 service imports from" in caplog.text

    async def reload() -> Cluster:  # in the loader's child process
        source = FileSource([path])
        try:
            return await source.load_async()
        finally:
            await source.close()
    assert asyncio.run(reload()).service_imports == want


# ------------------------------------------------------------------------ the rules


def test_an_endpoint_name_longer_than_253_characters_is_left_out_but_its_address_is_served(
        ) -> None:
    ns, svc = "n" * 60, "s" * 60
    imp = ServiceImport(ns, svc, ServiceKind.HEADLESS)
    long_host = Endpoint(("10.1.0.1",), True, "h" * 63)
    short = Endpoint(("10.1.0.2",), True, "db-0")
    sl = EndpointSlice(ns, "x", "", "IPv4", (long_host, short), (Port("http", "tcp", 80),),
                       svc, "c" * 63)
    made = multicluster.import_records(imp, [sl], ZONE, 5)
    base = f"{svc}.{ns}.svc.{ZONE}"
    assert len(f"{'h' * 63}.{'c' * 63}.{base}") > multicluster.MAX_NAME
    names = {r.name for r in made.records}
    assert f"{'h' * 63}.{'c' * 63}.{base}" not in names
    assert f"db-0.{'c' * 63}.{base}" in names
    assert {r.data for r in made.records if r.name == base and r.rtype == RRType.A} == {
        A("10.1.0.1"), A("10.1.0.2")}
    assert [r.data.target for r in made.records if isinstance(r.data, SRV)
            and r.name.startswith("_http.")] == [f"db-0.{'c' * 63}.{base}"]


def test_the_records_of_imports_are_exactly_the_spec_tables_rows() -> None:
    """Every record of a ClusterSetIP and a headless import over two clusters, as
    master-file text: the spec's tables, row by row (SPEC §S7)."""
    web = ServiceImport("test", "web", ServiceKind.CLUSTER_IP, ("10.42.0.1", "fd00::42"),
                        (Port("https", "tcp", 443), Port("", "tcp", 8443)))
    db = ServiceImport("test", "db", ServiceKind.HEADLESS, (), (Port("pg", "tcp", 5432),))
    slices = (
        imported("db-a", "db", "cluster-a", Endpoint(("10.1.0.1",), True, "db-0"),
                 Endpoint(("10.1.0.2",), True), Endpoint(("10.1.0.3",), False, "db-2"),
                 ports=(Port("pg", "tcp", 5432),)),
        imported("db-b", "db", "cluster-b", Endpoint(("10.2.0.1",), True, "db-0"),
                 ports=(Port("pg", "tcp", 5432),)),
        imported("web-a", "web", "cluster-a", Endpoint(("10.1.1.1",), True)),
    )
    snap = build(Cluster((Namespace("test"),), (), slices, (), (web, db)), MC, 7)
    got = [to_text(r) for r in snap.records() if r.name.endswith(ZONE)]
    assert got == [
        f"{ZONE}.\t5\tIN\tSOA\tns.dns.{ZONE}. hostmaster.{ZONE}. 7 7200 1800 86400 5",
        f"{ZONE}.\t5\tIN\tNS\tns.dns.{ZONE}.",
        f'dns-version.{ZONE}.\t5\tIN\tTXT\t"1.0.0"',
        f"db.test.svc.{ZONE}.\t5\tIN\tA\t10.1.0.1",
        f"db.test.svc.{ZONE}.\t5\tIN\tA\t10.1.0.2",
        f"db.test.svc.{ZONE}.\t5\tIN\tA\t10.2.0.1",
        f"db.test.svc.{ZONE}.\t5\tIN\tSRV\t0 33 5432 db-0.cluster-a.db.test.svc.{ZONE}.",
        f"db.test.svc.{ZONE}.\t5\tIN\tSRV\t0 33 5432 10-1-0-2.cluster-a.db.test.svc.{ZONE}.",
        f"db.test.svc.{ZONE}.\t5\tIN\tSRV\t0 33 5432 db-0.cluster-b.db.test.svc.{ZONE}.",
        f"_pg._tcp.db.test.svc.{ZONE}.\t5\tIN\tSRV\t0 33 5432 "
        f"db-0.cluster-a.db.test.svc.{ZONE}.",
        f"_pg._tcp.db.test.svc.{ZONE}.\t5\tIN\tSRV\t0 33 5432 "
        f"10-1-0-2.cluster-a.db.test.svc.{ZONE}.",
        f"_pg._tcp.db.test.svc.{ZONE}.\t5\tIN\tSRV\t0 33 5432 "
        f"db-0.cluster-b.db.test.svc.{ZONE}.",
        f"10-1-0-2.cluster-a.db.test.svc.{ZONE}.\t5\tIN\tA\t10.1.0.2",
        f"db-0.cluster-a.db.test.svc.{ZONE}.\t5\tIN\tA\t10.1.0.1",
        f"db-0.cluster-b.db.test.svc.{ZONE}.\t5\tIN\tA\t10.2.0.1",
        f"web.test.svc.{ZONE}.\t5\tIN\tA\t10.42.0.1",
        f"web.test.svc.{ZONE}.\t5\tIN\tAAAA\tfd00::42",
        f"web.test.svc.{ZONE}.\t5\tIN\tSRV\t0 100 443 web.test.svc.{ZONE}.",
        f"_https._tcp.web.test.svc.{ZONE}.\t5\tIN\tSRV\t0 100 443 web.test.svc.{ZONE}.",
    ]
    # A PTR for each clusterset IP (no local PTR holds them), none for imported
    # endpoints, and nothing imported in cluster.local.
    ptrs = [to_text(r) for r in snap.records()
            if r.name.endswith(".arpa") and r.rtype == RRType.PTR]
    assert ptrs == [
        f"1.0.42.10.in-addr.arpa.\t5\tIN\tPTR\tweb.test.svc.{ZONE}.",
        f"{dns.reversename.from_address('fd00::42').to_text()}\t5\tIN\tPTR\tweb.test.svc.{ZONE}.",
    ]
    assert resolve(snap, "web.test.svc.cluster.local", RRType.A).outcome is Outcome.NXDOMAIN
    # Empty non-terminals: svc, the namespace, and for the headless import each cluster.
    for name in (f"svc.{ZONE}", f"test.svc.{ZONE}", f"cluster-a.db.test.svc.{ZONE}"):
        assert resolve(snap, name, RRType.A).outcome is Outcome.NODATA, name


def test_ignore_empty_service_makes_a_clusterset_ip_import_without_ready_endpoints_nxdomain(
        ) -> None:
    web = ServiceImport("test", "web", ServiceKind.CLUSTER_IP, ("10.42.0.1",))
    cfg = MC.replace(ignore_empty_service=True)
    empty = build(Cluster((), (), (), (), (web,)), cfg, 1)
    decision = resolve(empty, f"web.test.svc.{ZONE}", RRType.A)
    assert decision.outcome is Outcome.NXDOMAIN
    assert decision.ede is not None and "0 ready endpoints" in decision.ede[1]
    one = imported("web-a", "web", "cluster-a", Endpoint(("10.1.1.1",), True))
    ready = build(Cluster((), (), (one,), (), (web,)), cfg, 1)
    assert resolve(ready, f"web.test.svc.{ZONE}", RRType.A).answer == (
        Record(f"web.test.svc.{ZONE}", 5, A("10.42.0.1")),)


def test_imports_outside_the_served_namespaces_make_no_names() -> None:
    web = ServiceImport("test", "web", ServiceKind.CLUSTER_IP, ("10.42.0.1",))
    snap = build(Cluster((), (), (), (), (web,)),
                 MC.replace(namespaces=frozenset({"other"})), 1)
    decision = resolve(snap, f"web.test.svc.{ZONE}", RRType.A)
    assert decision.outcome is Outcome.NXDOMAIN
    assert decision.ede is not None and "not served" in decision.ede[1]


def test_without_a_multicluster_zone_imports_make_no_names_anywhere() -> None:
    web = ServiceImport("test", "web", ServiceKind.CLUSTER_IP, ("10.42.0.1",))
    with_imports = build(Cluster((Namespace("test"),), (), (), (), (web,)), Config(), 1)
    without = build(Cluster((Namespace("test"),)), Config(), 1)
    assert list(with_imports.records()) == list(without.records())
    assert resolve(with_imports, f"web.test.svc.{ZONE}", RRType.A).outcome is Outcome.REFUSED


# --------------------------------------------------------------- config and Corefile


def test_the_yaml_key_multicluster_zones_takes_a_list_or_one_zone() -> None:
    assert config.from_mapping({"multicluster_zones": ["ClusterSet.Local."]},
                               "c.yaml").multicluster_zones == (ZONE,)
    assert config.from_mapping({"multicluster_zones": ZONE}, "c.yaml").multicluster_zones == (
        ZONE,)
    assert Config().multicluster_zones == ()


@pytest.mark.parametrize(("zones", "problem"), [
    (["cluster.local"], "cluster.local is in zones too"),
    (["a.cluster.local"], "a.cluster.local overlaps cluster.local"),
    (["local"], "local overlaps cluster.local"),
    (["10.in-addr.arpa"], "a reverse zone cannot be a multicluster zone"),
])
def test_a_multicluster_zone_that_is_or_overlaps_another_zone_is_refused_naming_the_key(
        zones: list[str], problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.from_mapping({"multicluster_zones": zones}, "c.yaml")
    assert str(err.value).startswith("c.yaml: multicluster_zones: ")
    assert problem in str(err.value)


def test_the_corefile_multicluster_plugin_line_gives_its_zone_and_fallthrough() -> None:
    cfg, warnings = corefile.parse(
        ".:53 {\n"
        "    kubernetes cluster.local in-addr.arpa ip6.arpa\n"
        "    multicluster clusterset.local {\n"
        "        fallthrough\n"
        "        noendpoints\n"
        "    }\n"
        "}\n", "Corefile")
    assert cfg.zones == ("cluster.local", "in-addr.arpa", "ip6.arpa")
    assert cfg.multicluster_zones == (ZONE,)
    assert cfg.fallthrough == frozenset({ZONE})
    assert warnings == ["Corefile:5: multicluster noendpoints: not supported; endpoint "
                        "records are still served"]


def test_the_corefile_multicluster_plugin_takes_its_zone_from_the_server_block() -> None:
    cfg, _ = corefile.parse("clusterset.local:53 {\n    kubernetes cluster.local\n"
                            "    multicluster\n}\n", "Corefile")
    assert (cfg.zones, cfg.multicluster_zones) == (("cluster.local",), (ZONE,))


def test_the_kubernetes_plugins_multicluster_option_moves_its_zone_out_of_the_cluster_zones(
        ) -> None:
    cfg, warnings = corefile.parse(
        ".:53 {\n"
        "    kubernetes cluster.local clusterset.local in-addr.arpa ip6.arpa {\n"
        "        multicluster clusterset.local\n"
        "        fallthrough in-addr.arpa ip6.arpa\n"
        "    }\n"
        "}\n", "Corefile")
    assert cfg.zones == ("cluster.local", "in-addr.arpa", "ip6.arpa")
    assert cfg.multicluster_zones == (ZONE,)
    assert cfg.fallthrough == frozenset({"in-addr.arpa", "ip6.arpa"})
    assert warnings == []


@pytest.mark.parametrize(("text", "problem"), [
    (".:53 {\n    kubernetes cluster.local {\n        multicluster clusterset.local\n    }\n}\n",
     "Corefile:3: kubernetes multicluster: clusterset.local is not one of the kubernetes "
     "plugin's zones"),
    (".:53 {\n    kubernetes cluster.local\n    multicluster\n}\n",
     "Corefile:3: multicluster: needs the zone it serves"),
    (".:53 {\n    kubernetes cluster.local\n    multicluster cluster.local\n}\n",
     "Corefile:3: multicluster: cluster.local is a zone of the kubernetes plugin too"),
    (".:53 {\n    kubernetes cluster.local\n    multicluster x.cluster.local\n}\n",
     "Corefile:3: multicluster: x.cluster.local overlaps cluster.local"),
])
def test_a_multicluster_zone_the_corefile_cannot_serve_is_an_error_naming_the_line(
        text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        corefile.parse(text, "Corefile")
    assert str(err.value).startswith(problem), str(err.value)


def test_check_config_names_the_multicluster_zones_and_counts_the_service_imports(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "dump.yaml").write_text(
        "apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceImport\n"
        "metadata: {name: web, namespace: test}\nspec: {ips: [10.42.0.1]}\n",
        encoding="utf-8")
    path = tmp_path / "clusterdns.yaml"
    path.write_text("source: file:dump.yaml\nmulticluster_zones: clusterset.local\n",
                    encoding="utf-8")
    assert cli.main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: ok: zones cluster.local, in-addr.arpa, ip6.arpa; multicluster zones " \
        f"clusterset.local; source file:" in out
    assert out.rstrip().endswith("0 pods, 1 service imports")


def test_a_clusterset_ip_that_is_also_a_local_clusterip_keeps_only_the_local_ptr() -> None:
    """The draft rule of spec 2.3.3: a clusterset IP gets our PTR only when the cluster
    has none for it; a local Service taking the address wins, giving it back restores
    ours, in full builds and in deltas alike."""
    web = ServiceImport("test", "web", ServiceKind.CLUSTER_IP, ("10.96.0.50",))
    local = Service("test", "local", ServiceKind.CLUSTER_IP, cluster_ips=("10.96.0.50",))
    rname = "50.0.96.10.in-addr.arpa"

    def ptrs(snap: Any) -> list[str]:
        return [str(r.data.target) for r in snap.nodes.get(rname, {}).get(RRType.PTR, ())]

    both = Cluster((Namespace("test"),), (local,), (), (), (web,))
    assert ptrs(build(both, MC, 1)) == ["local.test.svc.cluster.local"]
    alone = Cluster((Namespace("test"),), (), (), (), (web,))
    assert ptrs(build(alone, MC, 1)) == [f"web.test.svc.{ZONE}"]
    builder = Builder(MC, alone)
    assert ptrs(builder.publish(1)) == [f"web.test.svc.{ZONE}"]
    builder.apply(local)
    assert ptrs(builder.publish(2)) == ["local.test.svc.cluster.local"]
    builder.delete(Service, ("test", "local"))
    assert ptrs(builder.publish(3)) == [f"web.test.svc.{ZONE}"]
