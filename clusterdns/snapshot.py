"""The immutable snapshot every query is answered from, and the one reference to it.

``build`` turns one consistent ``Cluster`` plus the config into a read-only index of
owner name -> record type -> RRset, including every empty non-terminal, so "does this
name exist" is a set lookup. ``SnapshotRef.publish`` swaps the single shared reference;
readers take it once per query and never lock, so each reply sees one generation. The
SOA serial is the generation number.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from clusterdns import names, records
from clusterdns.config import Config, PodsMode
from clusterdns.objects import Cluster, EndpointSlice, Service, ServiceKind
from clusterdns.records import Record, RRType

Node = Mapping[RRType, tuple[Record, ...]]
EMPTY_NODE: Node = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """What negative answers need to explain themselves."""

    kind: ServiceKind
    ready_endpoints: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    serial: int
    synced: bool
    config: Config
    zones: tuple[str, ...]  # longest first, for matching
    forward_zones: tuple[str, ...]
    nodes: Mapping[str, Node]
    namespaces: frozenset[str]  # exposed namespaces that exist
    pod_ips: frozenset[tuple[str, str]]  # (namespace, ip) of every pod, for pods verified
    services: Mapping[tuple[str, str], ServiceInfo] = field(
        default_factory=lambda: MappingProxyType({}))

    def zone_for(self, name: str) -> str | None:
        for zone in self.zones:
            if names.is_subdomain(name, zone):
                return zone
        return None

    def soa(self, zone: str) -> Record:
        return self.nodes[zone][RRType.SOA][0]

    def records(self) -> Iterator[Record]:
        """Every record, apex first, in a stable order (for ``clusterdns records``)."""
        for zone in self.zones[::-1]:
            for rtype in (RRType.SOA, RRType.NS):
                yield from self.nodes[zone].get(rtype, ())
        apexes = set(self.zones)
        for name in sorted(self.nodes, key=lambda n: tuple(reversed(n.split(".")))):
            node = self.nodes[name]
            for rtype in sorted(node):
                if name in apexes and rtype in (RRType.SOA, RRType.NS):
                    continue
                yield from node[rtype]


def unsynced(config: Config) -> Snapshot:
    """The placeholder served before the first complete sync: SERVFAIL in our zones."""
    zones = tuple(sorted(config.zones, key=len, reverse=True))
    return Snapshot(serial=0, synced=False, config=config, zones=zones,
                    forward_zones=tuple(z for z in config.zones if not names.is_reverse_zone(z)),
                    nodes=MappingProxyType({}), namespaces=frozenset(), pod_ips=frozenset())


def build(cluster: Cluster, config: Config, serial: int) -> Snapshot:
    """Every record the cluster implies under the configured zones."""
    ttl = config.ttl
    allowed = config.namespaces
    forward = tuple(z for z in config.zones if not names.is_reverse_zone(z))
    reverse = tuple(z for z in config.zones if names.is_reverse_zone(z))
    domain = config.cluster_domain

    def exposed(ns: str) -> bool:
        return not allowed or ns in allowed

    namespaces = {ns.name for ns in cluster.namespaces}
    namespaces.update(s.namespace for s in cluster.services)
    namespaces.update(s.namespace for s in cluster.endpoint_slices)
    namespaces.update(p.namespace for p in cluster.pods)
    namespaces = {ns for ns in namespaces if exposed(ns)}

    slices_by_svc: dict[tuple[str, str], list[EndpointSlice]] = {}
    for sl in cluster.endpoint_slices:
        slices_by_svc.setdefault((sl.namespace, sl.service), []).append(sl)

    collected: list[Record] = []
    infos: dict[tuple[str, str], ServiceInfo] = {}
    services: list[tuple[Service, list[EndpointSlice]]] = []
    for svc in cluster.services:
        if not exposed(svc.namespace):
            continue
        slices = slices_by_svc.get((svc.namespace, svc.name), [])
        ready = len(records.ready_endpoints(slices, config.endpoint_pod_names))
        infos[(svc.namespace, svc.name)] = ServiceInfo(svc.kind, ready)
        if ready == 0 and (svc.kind is ServiceKind.HEADLESS or (
                svc.kind is ServiceKind.CLUSTER_IP and config.ignore_empty_service)):
            continue
        services.append((svc, slices))

    for zone in forward:
        for svc, slices in services:
            collected.extend(records.service_records(
                svc, slices, zone, ttl, config.endpoint_pod_names))
    if reverse:
        for svc, slices in services:
            for rec in records.ptr_records(svc, slices, domain, ttl, config.endpoint_pod_names):
                if any(names.is_subdomain(rec.name, z) for z in reverse):
                    collected.append(rec)

    kube_dns = next((s for s in cluster.services
                     if (s.namespace, s.name) == ("kube-system", "kube-dns")), None)
    for zone in config.zones:
        collected.extend(records.apex_records(zone, domain, serial, ttl))
        if kube_dns is not None and zone in forward:
            ns_name = names.join("ns.dns", zone)
            collected.extend(records.address_record(ns_name, ttl, ip)
                             for ip in kube_dns.cluster_ips)

    grouped: dict[str, dict[RRType, dict[Record, None]]] = {}
    for rec in collected:
        grouped.setdefault(rec.name, {}).setdefault(rec.rtype, {})[rec] = None

    # Names that exist without records (SPEC §S3): svc/pod below each forward zone,
    # each exposed namespace, and every name between an owner and its zone apex.
    present: set[str] = set(grouped)
    for zone in forward:
        present.update((names.join("svc", zone), names.join("pod", zone)))
        present.update(names.join(ns, "svc", zone) for ns in namespaces)
        if config.pods is not PodsMode.DISABLED:
            present.update(names.join(ns, "pod", zone) for ns in namespaces)
    zones_long_first = tuple(sorted(config.zones, key=len, reverse=True))
    for name in list(present):
        zone = next(z for z in zones_long_first if names.is_subdomain(name, z))
        present.update(names.ancestors(name, zone))

    nodes: dict[str, Node] = {}
    for name in present:
        sets = grouped.get(name)
        nodes[name] = (MappingProxyType({t: tuple(rs) for t, rs in sets.items()})
                       if sets else EMPTY_NODE)

    pod_ips = frozenset((p.namespace, ip) for p in cluster.pods
                        if p.namespace in namespaces for ip in p.ips)
    return Snapshot(serial=serial, synced=True, config=config, zones=zones_long_first,
                    forward_zones=forward, nodes=MappingProxyType(nodes),
                    namespaces=frozenset(namespaces), pod_ips=pod_ips,
                    services=MappingProxyType(infos))


class SnapshotRef:
    """The only shared mutable state: one reference, swapped whole by ``publish``.

    Readers call ``get()`` (a plain attribute read) and never lock. Writers are
    serialised by a lock so generations increase strictly; the serial handed to
    ``build`` comes from ``next_serial``.
    """

    def __init__(self, initial: Snapshot) -> None:
        self.current = initial
        self._serial = initial.serial
        self._write = threading.Lock()

    def get(self) -> Snapshot:
        return self.current

    def publish_cluster(self, cluster: Cluster, config: Config) -> Snapshot:
        """Build the next generation from ``cluster`` and publish it."""
        with self._write:
            snap = build(cluster, config, self._serial + 1)
            self._serial = snap.serial
            self.current = snap
            return snap
