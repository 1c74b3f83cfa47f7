"""Incremental snapshots (issue 5 item 4): deltas give exactly what a full build gives.

Random sequences of adds, changes and deletes of Namespaces, Services, EndpointSlices
(some imported for a ServiceImport), Pods and ServiceImports go into a ``Store``; after
each step its changed keys are published as deltas
(``SnapshotRef.publish_changes``) and the result is compared with ``snapshot.build`` of
the store's whole cluster and with ``reference_build`` below -- the straightforward
every-record-then-group algorithm the snapshot used before it became incremental, kept
here as the oracle. Also: old snapshots never change, serials count up by one, and a
change to one service rewrites only that service's names (and the apex, for the SOA).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.rcode
import pytest

from clusterdns import multicluster, names, records, snapshot
from clusterdns.config import Config, PodsMode, SourceSpec
from clusterdns.objects import (
    Cluster,
    Endpoint,
    EndpointSlice,
    KubeObject,
    Namespace,
    Pod,
    Port,
    Service,
    ServiceImport,
    ServiceKind,
)
from clusterdns.records import Record, RRType
from clusterdns.snapshot import Snapshot, SnapshotRef, unsynced
from clusterdns.source.kube import KubeSource, Tuning
from clusterdns.store import KIND_TYPES, Kind, Store
from conftest import RunningServer, addresses
from fakekube import FakeKube

CONFIGS = {
    "default": Config(),
    "pods-verified": Config(pods=PodsMode.VERIFIED),
    "pods-insecure-pod-names": Config(pods=PodsMode.INSECURE, endpoint_pod_names=True),
    "namespace-filter": Config(namespaces=frozenset({"a", "kube-system"})),
    "ignore-empty": Config(ignore_empty_service=True),
    "two-zones-small-reverse": Config(zones=("cluster.local", "corp.example",
                                             "0.10.in-addr.arpa", "ip6.arpa")),
    "nested-zones": Config(zones=("cluster.local", "a.svc.cluster.local", "in-addr.arpa")),
    "multicluster": Config(multicluster_zones=("clusterset.local",)),
    "multicluster-two-zones-filtered": Config(
        multicluster_zones=("clusterset.local", "mcs.example"),
        namespaces=frozenset({"a", "kube-system"}), ignore_empty_service=True,
        endpoint_pod_names=True),
}


# ------------------------------------------------------------------------------ oracle


def reference_build(cluster: Cluster, config: Config) -> dict[str, dict[RRType, list[Record]]]:
    """Name -> type -> records, computed the plain way: every record, then group.

    Services merge into a shared name (a PTR two services claim) in (namespace, name)
    order and slices apply in name order: the canonical order ``snapshot`` documents.
    """
    ttl, allowed, domain = config.ttl, config.namespaces, config.cluster_domain
    forward = [z for z in config.zones if not names.is_reverse_zone(z)]
    reverse = [z for z in config.zones if names.is_reverse_zone(z)]

    def exposed(ns: str) -> bool:
        return not allowed or ns in allowed

    spaces = {ns.name for ns in cluster.namespaces}
    for group in (cluster.services, cluster.endpoint_slices, cluster.pods,
                  cluster.service_imports):
        spaces.update(o.namespace for o in group)
    spaces = {ns for ns in spaces if exposed(ns)}
    by_svc: dict[tuple[str, str], list[EndpointSlice]] = {}
    for sl in sorted(cluster.endpoint_slices, key=lambda s: s.name):
        by_svc.setdefault((sl.namespace, sl.service), []).append(sl)
    chosen = []
    for svc in sorted(cluster.services, key=lambda s: (s.namespace, s.name)):
        if not exposed(svc.namespace):
            continue
        slices = by_svc.get((svc.namespace, svc.name), [])
        ready = records.ready_endpoints(slices, config.endpoint_pod_names)
        if not ready and (svc.kind is ServiceKind.HEADLESS or (
                svc.kind is ServiceKind.CLUSTER_IP and config.ignore_empty_service)):
            continue
        chosen.append((svc, slices))
    collected: list[Record] = []
    for zone in forward:
        for svc, slices in chosen:
            collected += records.service_records(svc, slices, zone, ttl,
                                                 config.endpoint_pod_names)
    for svc, slices in chosen:
        collected += [r for r in records.ptr_records(svc, slices, domain, ttl,
                                                     config.endpoint_pod_names)
                      if any(names.is_subdomain(r.name, z) for z in reverse)]
    kube_dns = next((s for s in cluster.services
                     if (s.namespace, s.name) == ("kube-system", "kube-dns")), None)
    for zone in config.zones:
        collected += records.apex_records(zone, domain, 0, ttl)
        if kube_dns is not None and zone in forward:
            collected += [records.address_record(names.join("ns.dns", zone), ttl, ip)
                          for ip in kube_dns.cluster_ips]
    # Multicluster zones (SPEC S7): their apex, and each exposed import's names.
    imported: dict[tuple[str, str], list[EndpointSlice]] = {}
    for sl in sorted(cluster.endpoint_slices, key=lambda s: s.name):
        if sl.import_name:
            imported.setdefault((sl.namespace, sl.import_name), []).append(sl)
    made: list[multicluster.Imported] = []
    for zone in config.multicluster_zones:
        collected += multicluster.apex_records(zone, 0, ttl)
        if kube_dns is not None:
            collected += [records.address_record(names.join("ns.dns", zone), ttl, ip)
                          for ip in kube_dns.cluster_ips]
        for imp in cluster.service_imports:
            if exposed(imp.namespace):
                made.append(multicluster.import_records(
                    imp, imported.get((imp.namespace, imp.name), []), zone, ttl,
                    use_pod_names=config.endpoint_pod_names,
                    ignore_empty_service=config.ignore_empty_service))
    for one in made:
        collected += one.records
    # A clusterset IP's PTR, where the cluster has no PTR of its own (SPEC S7).
    local_ptrs = {r.name for r in collected if r.rtype == RRType.PTR}
    for zone in config.multicluster_zones:  # merged in (namespace, name) order
        for imp in sorted(cluster.service_imports, key=lambda i: (i.namespace, i.name)):
            exists = exposed(imp.namespace) and multicluster.import_records(
                imp, imported.get((imp.namespace, imp.name), []), zone, ttl,
                ignore_empty_service=config.ignore_empty_service).exists
            for ip, target in multicluster.clusterset_ptrs(imp, zone) if exists else ():
                rname = names.reverse_name(ip)
                if rname not in local_ptrs and any(names.is_subdomain(rname, z)
                                                   for z in reverse):
                    collected.append(Record(rname, ttl, records.PTR(target)))
    grouped: dict[str, dict[RRType, dict[Record, None]]] = {}
    for rec in collected:
        grouped.setdefault(rec.name, {}).setdefault(rec.rtype, {})[rec] = None
    present = set(grouped)
    present |= {one.base for one in made if one.exists}
    for zone in config.multicluster_zones:
        present.add(names.join("svc", zone))
        present |= {names.join(ns, "svc", zone) for ns in spaces}
    for zone in forward:
        present |= {names.join("svc", zone), names.join("pod", zone)}
        present |= {names.join(ns, "svc", zone) for ns in spaces}
        if config.pods is not PodsMode.DISABLED:
            present |= {names.join(ns, "pod", zone) for ns in spaces}
    long_first = sorted((*config.zones, *config.multicluster_zones), key=len, reverse=True)
    for name in list(present):
        zone = next(z for z in long_first if names.is_subdomain(name, z))
        present.update(names.ancestors(name, zone))
    return {name: {t: list(rs) for t, rs in grouped.get(name, {}).items()} for name in present}


def content(snap: Snapshot) -> dict[str, dict[RRType, list[Record]]]:
    """The snapshot's names and records with the SOA serial set to 0 (as the oracle)."""
    out: dict[str, dict[RRType, list[Record]]] = {}
    for name, node in snap.nodes.items():
        sets = {t: list(rs) for t, rs in node.items()}
        if RRType.SOA in sets:
            sets[RRType.SOA] = [Record(r.name, r.ttl, dataclasses.replace(r.data, serial=0))
                                for r in sets[RRType.SOA] if isinstance(r.data, records.SOA)]
        out[name] = sets
    return out


# ------------------------------------------------------------------- random clusters


class World:
    """Random objects drawn from a small universe, so names and IPs collide often."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def ip(self, v6: bool = False) -> str:
        r = self.rng
        if v6:
            return f"fd00::{r.randrange(1, 6):x}"
        return f"10.0.{r.randrange(0, 2)}.{r.randrange(1, 7)}"

    def ns(self) -> str:
        return self.rng.choice(["a", "b", "c", "kube-system"])

    def ports(self) -> tuple[Port, ...]:
        r = self.rng
        pool = [Port("http", "tcp", 80), Port("dns", "udp", 53), Port("dns-tcp", "tcp", 53),
                Port("", "tcp", 8080), Port("http", "tcp", 8080)]
        return tuple(r.sample(pool, r.randrange(0, 3)))

    def service(self) -> Service:
        r = self.rng
        ns, name = self.ns(), r.choice(["web", "db", "kube-dns", "api"])
        kind = r.choice([ServiceKind.CLUSTER_IP, ServiceKind.CLUSTER_IP, ServiceKind.HEADLESS,
                         ServiceKind.EXTERNAL_NAME])
        if kind is ServiceKind.EXTERNAL_NAME:
            target = r.choice(["example.com", "web.a.svc.cluster.local"])
            return Service(ns, name, kind, external_name=target, ports=self.ports())
        ips: tuple[str, ...] = ()
        if kind is ServiceKind.CLUSTER_IP:
            ips = tuple(dict.fromkeys(self.ip(r.random() < 0.2)
                                      for _ in range(r.randrange(0, 3))))
        return Service(ns, name, kind, cluster_ips=ips, ports=self.ports())

    def endpoint(self, address_type: str) -> Endpoint:
        r = self.rng
        if address_type == "FQDN":
            addresses: tuple[str, ...] = ("x.example.com",)
        else:
            addresses = tuple(dict.fromkeys(self.ip(address_type == "IPv6")
                                            for _ in range(r.randrange(0, 3))))
        hostname = r.choice(["", "", "", "h-0", "h-1"])
        pod = r.choice(["", "web-1", "Bad_Name", "db-0"])
        return Endpoint(addresses, r.random() < 0.75, hostname, pod)

    def endpoint_slice(self) -> EndpointSlice:
        """A slice of a Service, of a ServiceImport (from one of two clusters), or of
        both (it carries both labels)."""
        r = self.rng
        ns, service = self.ns(), r.choice(["web", "db", "kube-dns", "api"])
        address_type = r.choice(["IPv4", "IPv4", "IPv6", "FQDN"])
        endpoints = tuple(self.endpoint(address_type) for _ in range(r.randrange(0, 4)))
        which = r.choice(["service", "service", "import", "both"])
        import_name, cluster = "", ""
        if which != "service":
            import_name, cluster = service, r.choice(["cluster-a", "b.registry"])
        return EndpointSlice(ns, f"{service}-{r.randrange(3)}",
                             "" if which == "import" else service, address_type,
                             endpoints, self.ports(), import_name, cluster)

    def service_import(self) -> ServiceImport:
        r = self.rng
        kind = r.choice([ServiceKind.CLUSTER_IP, ServiceKind.HEADLESS])
        ips: tuple[str, ...] = ()
        if kind is ServiceKind.CLUSTER_IP:
            ips = tuple(dict.fromkeys(self.ip(r.random() < 0.2)
                                      for _ in range(r.randrange(0, 3))))
        return ServiceImport(self.ns(), r.choice(["web", "db", "api"]), kind, ips,
                             self.ports())

    def pod(self) -> Pod:
        r = self.rng
        return Pod(self.ns(), f"p{r.randrange(4)}",
                   tuple(dict.fromkeys(self.ip(r.random() < 0.2)
                                       for _ in range(r.randrange(0, 3)))))

    def move_endpoints(self, store: Store) -> bool:
        """Change only the endpoints of an existing slice (the builder's partial path):
        flip readiness, swap an address, rename, add or drop one. False if no slice."""
        r = self.rng
        slices = store.cluster().endpoint_slices
        if not slices:
            return False
        old = r.choice(slices)
        eps = list(old.endpoints)
        fresh = self.endpoint(old.address_type)
        i = r.randrange(len(eps)) if eps else 0
        how = r.choice(["ready", "address", "hostname", "add", "drop"]) if eps else "add"
        if how == "ready":
            eps[i] = dataclasses.replace(eps[i], ready=not eps[i].ready)
        elif how == "address":
            eps[i] = dataclasses.replace(eps[i], addresses=fresh.addresses)
        elif how == "hostname":
            eps[i] = dataclasses.replace(eps[i], hostname=fresh.hostname,
                                         pod_name=fresh.pod_name)
        elif how == "add":
            eps.insert(i, fresh)
        else:
            del eps[i]
        store.apply(Kind.ENDPOINT_SLICE, EndpointSlice(
            old.namespace, old.name, old.service, old.address_type, tuple(eps), old.ports,
            old.import_name, old.source_cluster))
        return True

    def step(self, store: Store) -> None:
        """One random add, change or delete."""
        r = self.rng
        if r.random() < 0.4 and self.move_endpoints(store):
            return
        kind = r.choice(list(Kind))
        if r.random() < 0.3:
            keys = list(_keys(store, kind))
            if keys:
                store.delete(kind, r.choice(keys))
                return
        obj: KubeObject
        if kind is Kind.NAMESPACE:
            obj = Namespace(self.ns())
        elif kind is Kind.SERVICE:
            obj = self.service()
        elif kind is Kind.ENDPOINT_SLICE:
            obj = self.endpoint_slice()
        elif kind is Kind.SERVICE_IMPORT:
            obj = self.service_import()
        else:
            obj = self.pod()
        store.apply(kind, obj)


def _keys(store: Store, kind: Kind) -> Iterator[tuple[str, str]]:
    cluster = store.cluster()
    groups: dict[Kind, tuple[Any, ...]] = {
        Kind.NAMESPACE: cluster.namespaces, Kind.SERVICE: cluster.services,
        Kind.ENDPOINT_SLICE: cluster.endpoint_slices, Kind.POD: cluster.pods,
        Kind.SERVICE_IMPORT: cluster.service_imports}
    for obj in groups[kind]:
        yield ("", obj.name) if kind is Kind.NAMESPACE else (obj.namespace, obj.name)


def deltas(store: Store) -> list[tuple[type[KubeObject], tuple[str, str], KubeObject | None]]:
    changes = store.take_changes()
    assert changes is not None
    return [(KIND_TYPES[kind], key, obj) for kind, key, obj in changes]


# ------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@pytest.mark.parametrize("seed", range(5))
def test_deltas_after_every_random_change_equal_a_full_build_and_the_reference(
        config_name: str, seed: int) -> None:
    config = CONFIGS[config_name]
    rng = random.Random(f"{config_name}-{seed}")
    world, store = World(rng), Store()
    for _ in range(8):
        world.step(store)
    store.take_changes()
    ref = SnapshotRef(unsynced(config))
    ref.publish_cluster(store.cluster(), config)
    for step in range(40):
        for _ in range(rng.choice([1, 1, 1, 3])):
            world.step(store)
        snap = ref.publish_changes(deltas(store))
        full = snapshot.build(store.cluster(), config, snap.serial)
        where = f"{config_name} seed {seed} step {step}"
        got = content(snap)
        assert got == content(full), where
        assert got == reference_build(store.cluster(), config), where
        assert list(snap.records()) == list(full.records()), where
        assert snap.namespaces == full.namespaces, where
        assert snap.pod_ips == full.pod_ips, where
        assert dict(snap.services) == dict(full.services), where
        assert dict(snap.imports) == dict(full.imports), where
        assert snap.record_count == full.record_count == sum(
            len(rs) for sets in got.values() for rs in sets.values()), where
    assert ref.delta_builds == 40 and ref.full_builds == 1


def test_a_full_build_equals_the_reference_on_random_clusters() -> None:
    for seed in range(40):
        rng = random.Random(seed)
        world, store = World(rng), Store()
        for _ in range(rng.randrange(5, 40)):
            world.step(store)
        for config in CONFIGS.values():
            assert content(snapshot.build(store.cluster(), config, 1)) == \
                reference_build(store.cluster(), config), seed


def big_cluster(services: int = 200, per_service: int = 5) -> Store:
    store = Store()
    store.apply(Kind.NAMESPACE, Namespace("default"))
    for i in range(services):
        store.apply(Kind.SERVICE, Service("default", f"s{i}", ServiceKind.CLUSTER_IP,
                                          (f"10.96.{i // 250}.{i % 250 + 1}",),
                                          ports=(Port("http", "tcp", 80),)))
        eps = tuple(Endpoint((f"10.{1 + i // 250}.{i % 250}.{j + 1}",), True)
                    for j in range(per_service))
        store.apply(Kind.ENDPOINT_SLICE, EndpointSlice("default", f"s{i}-x", f"s{i}", "IPv4",
                                                       eps, (Port("http", "tcp", 8080),)))
    return store


def test_changing_one_slice_rewrites_only_that_services_names_and_the_apex() -> None:
    store = big_cluster()
    ref = SnapshotRef(unsynced(Config()))
    store.take_changes()
    old = ref.publish_cluster(store.cluster(), Config())
    store.apply(Kind.ENDPOINT_SLICE, EndpointSlice(
        "default", "s7-x", "s7", "IPv4",
        (Endpoint(("10.1.7.1",), True), Endpoint(("10.1.7.99",), True)),
        (Port("http", "tcp", 8080),)))
    new = ref.publish_changes(deltas(store))
    def stored(snap: Snapshot, name: str) -> object:  # the index's own object, not a view
        assert isinstance(snap.nodes, snapshot.NodeIndex)
        return snap.nodes.stored(name)

    changed = {name for name in set(old.nodes) | set(new.nodes)
               if stored(old, name) is not stored(new, name)}
    gone = {f"10-1-7-{j}.s7.default.svc.cluster.local" for j in range(2, 6)} | {
        f"{j}.7.1.10.in-addr.arpa" for j in range(2, 6)}
    added = {"10-1-7-99.s7.default.svc.cluster.local", "99.7.1.10.in-addr.arpa"}
    apexes = {"cluster.local", "in-addr.arpa", "ip6.arpa"}  # the SOA serial
    assert changed == gone | added | apexes
    assert ref.last_replaced == len(changed)
    assert gone.isdisjoint(new.nodes) and added <= set(new.nodes)
    # every other name -- other services, s7's unchanged ones -- is the very same node
    for name in old.nodes:
        if name not in changed:
            assert stored(new, name) is stored(old, name)


def test_moving_one_endpoint_of_a_large_headless_service_computes_only_its_names() -> None:
    # Cost follows the change (issue 5 item 4): one endpoint of 100 turns unready, and
    # the publish computes the service-wide names and that endpoint's, not all 100.
    store = Store()
    store.apply(Kind.SERVICE, Service("default", "db", ServiceKind.HEADLESS,
                                      ports=(Port("sql", "tcp", 5432),)))
    eps = [Endpoint((f"10.1.0.{j + 1}",), True) for j in range(100)]
    store.apply(Kind.ENDPOINT_SLICE, EndpointSlice("default", "db-x", "db", "IPv4", eps,
                                                   (Port("sql", "tcp", 5432),)))
    ref = SnapshotRef(unsynced(Config()))
    store.take_changes()
    ref.publish_cluster(store.cluster(), Config())
    assert ref.last_examined > 200  # a full build computes every name
    eps[41] = Endpoint(("10.1.0.42",), False)
    store.apply(Kind.ENDPOINT_SLICE, EndpointSlice("default", "db-x", "db", "IPv4", eps,
                                                   (Port("sql", "tcp", 5432),)))
    snap = ref.publish_changes(deltas(store))
    # db.default.svc (A, SRV), _sql._tcp.db.default.svc (SRV); the endpoint's own name
    # and PTR are gone, so nothing else was computed
    assert ref.last_examined == 2
    base = "db.default.svc.cluster.local"
    assert f"10-1-0-42.{base}" not in snap.nodes
    assert "42.0.1.10.in-addr.arpa" not in snap.nodes
    assert f"10-1-0-41.{base}" in snap.nodes and "41.0.1.10.in-addr.arpa" in snap.nodes
    assert len(snap.nodes[base][RRType.A]) == 99
    assert len(snap.nodes[f"_sql._tcp.{base}"][RRType.SRV]) == 99
    assert content(snap) == content(snapshot.build(store.cluster(), Config(), snap.serial))


def test_an_srv_owner_goes_when_the_last_ready_endpoint_of_its_slice_does() -> None:
    # Headless: slice "a" carries the named port, slice "b" has none. When a's only
    # endpoint turns unready the service still has endpoints, yet _http._tcp must go.
    store = Store()
    store.apply(Kind.SERVICE, Service("default", "web", ServiceKind.HEADLESS))
    store.apply(Kind.ENDPOINT_SLICE, EndpointSlice(
        "default", "web-a", "web", "IPv4", (Endpoint(("10.1.0.1",), True),),
        (Port("http", "tcp", 80),)))
    store.apply(Kind.ENDPOINT_SLICE, EndpointSlice(
        "default", "web-b", "web", "IPv4", (Endpoint(("10.1.0.2",), True),)))
    ref = SnapshotRef(unsynced(Config()))
    store.take_changes()
    ref.publish_cluster(store.cluster(), Config())
    srv = "_http._tcp.web.default.svc.cluster.local"
    assert srv in ref.current.nodes
    store.apply(Kind.ENDPOINT_SLICE, EndpointSlice(
        "default", "web-a", "web", "IPv4", (Endpoint(("10.1.0.1",), False),),
        (Port("http", "tcp", 80),)))
    snap = ref.publish_changes(deltas(store))
    assert srv not in snap.nodes
    assert content(snap) == content(snapshot.build(store.cluster(), Config(), snap.serial))


def test_a_reader_holding_an_old_snapshot_sees_it_unchanged_after_later_deltas() -> None:
    store = big_cluster(services=50)
    ref = SnapshotRef(unsynced(Config()))
    store.take_changes()
    first = ref.publish_cluster(store.cluster(), Config())
    before = content(first)
    names_before = len(first.nodes)
    rng = random.Random(5)
    world = World(rng)
    for i in range(30):
        store.delete(Kind.SERVICE, ("default", f"s{i}"))
        world.step(store)
        ref.publish_changes(deltas(store))
    assert len(first.nodes) == names_before
    assert content(first) == before
    assert first.serial == 1


def test_each_publish_is_the_previous_serial_plus_one_and_the_soa_says_so() -> None:
    store = big_cluster(services=3)
    ref = SnapshotRef(unsynced(Config()))
    store.take_changes()
    serials = [ref.publish_cluster(store.cluster(), Config()).serial]
    for i in range(5):
        store.apply(Kind.SERVICE, Service("default", f"n{i}", ServiceKind.HEADLESS))
        serials.append(ref.publish_changes(deltas(store)).serial)
    serials.append(ref.publish_cluster(store.cluster(), Config()).serial)
    serials.append(ref.publish_changes([]).serial)
    assert serials == list(range(1, 9))
    assert ref.get().soa("cluster.local").data.serial == 8  # type: ignore[union-attr]


def test_deltas_need_a_full_build_first() -> None:
    ref, store = SnapshotRef(unsynced(Config())), Store()
    assert not ref.can_apply(Config(), store)
    with pytest.raises(RuntimeError):
        ref.publish_changes([])
    ref.publish_cluster(store.cluster(), Config(), store)
    assert ref.can_apply(Config(), store)
    assert not ref.can_apply(Config(ttl=30), store)  # a config change: build afresh
    assert not ref.can_apply(Config(), Store())  # another source's objects: afresh
    ref.publish_cluster(Cluster(), Config())  # e.g. a file source
    assert not ref.can_apply(Config(), store)


def test_the_store_reports_changed_keys_and_asks_for_a_full_build_when_too_many() -> None:
    store = Store()
    assert store.take_changes() is None  # nothing taken yet: build from scratch
    store.apply(Kind.NAMESPACE, Namespace("a"))
    store.apply(Kind.SERVICE, Service("a", "web", ServiceKind.HEADLESS))
    store.apply(Kind.SERVICE, Service("a", "web", ServiceKind.HEADLESS))  # no change
    store.delete(Kind.NAMESPACE, ("", "a"))
    changes = store.take_changes()
    assert changes is not None and sorted(changes, key=str) == sorted([
        (Kind.NAMESPACE, ("", "a"), None),
        (Kind.SERVICE, ("a", "web"), Service("a", "web", ServiceKind.HEADLESS))], key=str)
    store.replace(Kind.SERVICE, [Service("a", "db", ServiceKind.HEADLESS)])
    changes = store.take_changes()
    assert changes is not None and {(k, key) for k, key, _ in changes} == {
        (Kind.SERVICE, ("a", "web")), (Kind.SERVICE, ("a", "db"))}
    store.replace(Kind.NAMESPACE, [Namespace(f"n{i}") for i in range(25_000)])
    assert store.take_changes() is None
    assert store.take_changes() == []


# --------------------------------------------------------------------- end to end


FAST = Tuning(page_size=50, watch_timeout=4.0, inactivity_timeout=1.0, request_timeout=5.0,
              backoff_base=0.05, backoff_cap_early=0.5)


def wait_for(server: RunningServer, name: str, ok: Callable[[Any], bool]) -> Any:
    deadline = time.monotonic() + 5.0
    while True:
        msg = server.ask(name, "A", timeout=1.0)
        if ok(msg) or time.monotonic() > deadline:
            return msg
        time.sleep(0.01)


def test_the_kube_source_programs_changes_as_deltas_after_one_full_build(
        fake: FakeKube, make_server: Callable[..., RunningServer], tmp_path: Path) -> None:
    server = make_server(source=SourceSpec("kubernetes"),
                         kubeconfig=str(fake.write_kubeconfig(tmp_path / "kubeconfig")),
                         kube=lambda cfg: KubeSource(cfg, tuning=FAST))
    name = "shop.default.svc.cluster.local"
    wait_for(server, "httpenv.default.svc.cluster.local",
             lambda m: m.rcode() == dns.rcode.NOERROR)
    fake.apply({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "shop", "namespace": "default"},
                "spec": {"clusterIP": "10.96.200.1", "clusterIPs": ["10.96.200.1"]}})
    assert addresses(wait_for(server, name, lambda m: bool(addresses(m)))) == ["10.96.200.1"]
    fake.delete("Service", "default", "shop")
    assert wait_for(server, name, lambda m: m.rcode() == dns.rcode.NXDOMAIN).rcode() == \
        dns.rcode.NXDOMAIN
    ref = server.app.ref
    assert ref.full_builds == 1 and ref.delta_builds >= 2
    assert addresses(server.ask("httpenv.default.svc.cluster.local")) == ["10.108.189.10"]
