"""The Kubernetes DNS-Based Multicluster Service Discovery spec as functions (SPEC §S7).

Why this module exists: a multicluster zone (``clusterset.local``) is answered by other
rules than a cluster zone (KEP-1645, its DNS specification, schema 1.0.0), from other
objects: ServiceImports and the EndpointSlices an MCS controller imported for them,
each from one source cluster. Keeping those rules apart from ``records`` (the
cluster-local spec) keeps each spec readable on its own and lets the snapshot builder
call them like it calls ``records``. Pure: objects in, ``Record`` values out.

What exists under ``<zone>`` (SPEC §S7 has the whole table and where CoreDNS differs):

- the apex (SOA, NS) and ``dns-version.<zone>`` (TXT ``"1.0.0"``);
- ``svc.<zone>`` and ``<ns>.svc.<zone>`` for every namespace that exists (empty);
- a ClusterSetIP import: ``<svc>.<ns>.svc.<zone>`` with an A/AAAA per clusterset IP,
  and SRV per named port at ``_<port>._<proto>.<svc>...`` pointing at the service name;
- a headless import with a ready endpoint: ``<svc>.<ns>.svc.<zone>`` with an A/AAAA per
  ready address across every cluster, ``<hostname>.<clusterid>.<svc>.<ns>.svc.<zone>``
  per ready endpoint, and SRV per ready endpoint and named port pointing at those names.

and, in the reverse zones we serve, a PTR from each clusterset IP of a ClusterSetIP
import to ``<svc>.<ns>.svc.<zone>``, unless the address already has a PTR of the
cluster's own (a local Service's ClusterIP or endpoint): the spec's 2.3.3 rule as its
drafts wrote it (schema 1.0.0 no longer requires it; it still allows it). An address
keeps the one PTR its cluster gives it; the ``ClaimBook`` gives local owners precedence
at reverse names (``clusterdns.snapshot.claims``).

Nothing else: no PTR for imported endpoints (their addresses belong to other clusters),
no names per cluster of a ClusterSetIP import, no records at ``<clusterid>.<svc>...``
(2.3.4, 2.4.4), no pod names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from clusterdns import names, records
from clusterdns.objects import EndpointSlice, ServiceImport, ServiceKind
from clusterdns.records import Record

SCHEMA_VERSION = "1.0.0"
"""The version of the multicluster schema served at ``dns-version.<zone>``."""

MAX_NAME = 253
"""The longest name (without the trailing dot) a query can ask. A hostname, a cluster
id, a service and a namespace may add up to more (KEP-1645 leaves choosing short ones to
users); such an endpoint gets no name of its own, and so no SRV record."""


def apex_records(zone: str, serial: int, ttl: int) -> list[Record]:
    """SOA and NS as every zone has them (SPEC §S2.9), and the multicluster schema's
    ``dns-version`` (spec 2.2)."""
    return records.apex_records(zone, zone, serial, ttl, SCHEMA_VERSION)


@dataclass(frozen=True, slots=True)
class Imported:
    """What one ServiceImport contributes under one multicluster zone."""

    base: str  # <svc>.<ns>.svc.<zone>
    exists: bool  # whether ``base`` exists at all (a headless import with no ready
    # endpoint, or an empty ClusterSetIP one with ``ignore_empty_service``, does not)
    records: tuple[Record, ...]
    ready: int  # distinct ready addresses across its imported slices


def clusterset_ptrs(imp: ServiceImport, zone: str) -> list[tuple[str, str]]:
    """(clusterset IP, name it points at) for each PTR a ClusterSetIP import asks for
    under ``zone``; none for a headless import."""
    if imp.kind is not ServiceKind.CLUSTER_IP:
        return []
    base = names.join(imp.name, imp.namespace, "svc", zone)
    return [(ip, base) for ip in imp.ips]


def endpoint_name(label: str, cluster: str, base: str) -> str | None:
    """``<hostname>.<clusterid>.<base>``, or None when that is too long to be asked."""
    name = f"{label}.{cluster}.{base}"
    return name if len(name) <= MAX_NAME else None


def import_records(imp: ServiceImport, slices: Iterable[EndpointSlice], zone: str, ttl: int,
                   *, use_pod_names: bool = False,
                   ignore_empty_service: bool = False) -> Imported:
    """Every record ``imp`` contributes under ``zone`` (spec 2.3 and 2.4).

    ``slices`` are the slices imported for it (``import_name`` is its name, in its
    namespace); FQDN slices and not-ready endpoints count for nothing. Endpoint names
    follow SPEC §S2.4 (``hostname``, else the pod name with ``endpoint_pod_names``,
    else the dashed address) under the slice's source cluster.
    """
    base = names.join(imp.name, imp.namespace, "svc", zone)
    # (cluster, label) -> addresses, and per slice the endpoint names of its ready
    # endpoints (SRV targets), in the order the slices list them.
    named: dict[tuple[str, str], dict[str, None]] = {}
    addresses: dict[str, None] = {}
    per_slice: list[tuple[EndpointSlice, list[str]]] = []
    for sl in slices:
        if sl.address_type not in ("IPv4", "IPv6"):
            continue
        targets: dict[str, None] = {}
        for endpoint_ips, hostname, pod_name in sl.ready_items():
            for ip in endpoint_ips:
                addresses[ip] = None
                label = records.endpoint_label(hostname, pod_name, ip, use_pod_names)
                named.setdefault((sl.source_cluster, label), {})[ip] = None
                target = endpoint_name(label, sl.source_cluster, base)
                if target is not None:
                    targets[target] = None
        per_slice.append((sl, list(targets)))
    ready = len(addresses)
    out: list[Record] = []
    srv: list[tuple[str, int, str]] = []  # (owner, port, target); srv_records drops repeats
    if imp.kind is ServiceKind.CLUSTER_IP:
        if ignore_empty_service and not ready:
            return Imported(base, False, (), ready)
        out.extend(records.address_record(base, ttl, ip) for ip in imp.ips)
        for port in imp.ports:
            if port.name:
                srv.append((f"_{port.name}._{port.protocol}.{base}", port.port, base))
    else:
        if not ready:  # spec 2.4.1: no ready endpoint, NXDOMAIN
            return Imported(base, False, (), ready)
        out.extend(records.address_record(base, ttl, ip) for ip in addresses)
        for (cluster, label), owned in named.items():
            owner = endpoint_name(label, cluster, base)
            if owner is not None:
                out.extend(records.address_record(owner, ttl, ip) for ip in owned)
        for sl, slice_targets in per_slice:
            for port in sl.ports:
                if port.name:
                    for target in slice_targets:
                        srv.append((f"_{port.name}._{port.protocol}.{base}", port.port,
                                    target))
    out.extend(records.srv_records(srv, base, ttl))
    return Imported(base, True, tuple(out), ready)


class ImportFacts(Protocol):
    """What an explanation needs to know of an import (the snapshot's ``ServiceInfo``)."""

    @property
    def kind(self) -> ServiceKind: ...

    @property
    def ready_endpoints(self) -> int: ...


def why_missing(name: str, zone: str, namespaces: frozenset[str], allowed: frozenset[str],
                imports: Mapping[tuple[str, str], ImportFacts]) -> str:
    """An RFC 8914 EXTRA-TEXT saying why ``name`` in multicluster ``zone`` does not
    exist; ``namespaces`` are those that exist and are served, ``allowed`` the
    ``namespaces`` option."""
    labels = names.relative(name, zone).split(".")
    if len(labels) >= 2 and labels[-1] == "svc":
        ns = labels[-2]
        if ns not in namespaces:
            if allowed and ns not in allowed:
                return f'namespace "{ns}" is not served (namespaces: {", ".join(sorted(allowed))})'
            return f'namespace "{ns}" not found'
        if len(labels) >= 3:
            svc = labels[-3]
            info = imports.get((ns, svc))
            if info is None:
                return f'no ServiceImport "{svc}" in namespace "{ns}"'
            if len(labels) == 3:
                return f'ServiceImport "{svc}" has 0 ready endpoints'
            if info.kind is ServiceKind.CLUSTER_IP and not labels[-4].startswith("_"):
                return (f'ServiceImport "{svc}" is ClusterSetIP: it has no names per cluster '
                        "or endpoint (KEP-1645 2.3.4)")
            if labels[0].startswith("_"):
                return f'no such named port of ServiceImport "{svc}"'
            return f'no ready endpoint of ServiceImport "{svc}" has that name and cluster'
    if len(labels) >= 2 and labels[-1] == "pod":
        return f"pod names are not served in the multicluster zone {zone}"
    return f"{name} does not exist"
