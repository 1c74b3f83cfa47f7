"""The immutable snapshot every query is answered from.

Why this module exists: readers (``resolve``, ``handler``, the fast path) need the
snapshot's shape and nothing of how it is built. A ``Snapshot`` is one generation: every
name the cluster implies under the configured zones (``nodes``, including every empty
non-terminal, so "does this name exist" is a lookup), what negative answers need to
explain themselves (``services``), the namespaces and pod addresses that exist, and
(with autopath) which pod holds each address. The SOA serial is the generation number.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Set
from dataclasses import dataclass, field
from types import MappingProxyType

from clusterdns import names
from clusterdns.config import Config
from clusterdns.objects import ServiceKind
from clusterdns.records import Record, RRType
from clusterdns.snapshot.nodes import Node
from clusterdns.snapshot.pods import NO_PODS, Holders, sole_holder


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """What negative answers need to explain themselves."""

    kind: ServiceKind
    ready_endpoints: int


_INFOS: dict[tuple[ServiceKind, int], ServiceInfo] = {}


def service_info(kind: ServiceKind, ready: int) -> ServiceInfo:
    """The one ``ServiceInfo`` of this kind and count (services share them)."""
    info = _INFOS.get((kind, ready))
    if info is None:
        info = _INFOS[(kind, ready)] = ServiceInfo(kind, ready)
    return info


@dataclass(frozen=True, slots=True)
class Snapshot:
    serial: int
    synced: bool
    config: Config
    zones: tuple[str, ...]  # longest first, for matching
    forward_zones: tuple[str, ...]
    nodes: Mapping[str, Node]
    namespaces: frozenset[str]  # exposed namespaces that exist
    pod_ips: Set[tuple[str, str]]  # (namespace, ip) of every pod, for pods verified
    services: Mapping[tuple[str, str], ServiceInfo] = field(
        default_factory=lambda: MappingProxyType({}))
    # Address -> the pod holding it, or every pod when several do; only with autopath.
    pods_by_ip: Mapping[str, Holders] = field(default_factory=lambda: NO_PODS)
    record_count: int = 0  # records in ``nodes``, kept as names change (for metrics)
    multicluster_zones: tuple[str, ...] = ()  # answered from ServiceImports (SPEC §S7)
    imports: Mapping[tuple[str, str], ServiceInfo] = field(  # what explains their NXDOMAINs
        default_factory=lambda: MappingProxyType({}))

    def zone_for(self, name: str) -> str | None:
        for zone in self.zones:
            if names.is_subdomain(name, zone):
                return zone
        return None

    def soa(self, zone: str) -> Record:
        return self.nodes[zone][RRType.SOA][0]

    def autopath_namespace(self, ip: str) -> str | None:
        """The namespace of the pod a query from ``ip`` comes from, when autopath may
        walk that pod's search list: exactly one pod holds ``ip``, and it is running
        with the cluster's own resolv.conf (``Pod.autopath``). Otherwise None."""
        pod = sole_holder(self.pods_by_ip, ip)
        return pod.namespace if pod is not None and pod.autopath else None

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
    zones = tuple(sorted((*config.zones, *config.multicluster_zones), key=len, reverse=True))
    return Snapshot(serial=0, synced=False, config=config, zones=zones,
                    forward_zones=tuple(z for z in config.zones if not names.is_reverse_zone(z)),
                    nodes=MappingProxyType({}), namespaces=frozenset(), pod_ips=frozenset())
