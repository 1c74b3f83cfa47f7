"""Slim, immutable views of the Kubernetes objects that DNS needs.

Sources (the YAML file reader, the API watcher) turn raw API dicts into these
types at ingest and keep nothing else: memory at 100k endpoints matters, and the
record builder must not care where an object came from. IP addresses are kept in
their canonical text form (``ipaddress`` normalised), names lower-cased.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any


class ServiceKind(Enum):
    """How a Service reaches DNS."""

    CLUSTER_IP = "ClusterIP"  # also NodePort and LoadBalancer: they all have cluster IPs
    HEADLESS = "Headless"
    EXTERNAL_NAME = "ExternalName"


@dataclass(frozen=True, slots=True)
class Port:
    """A named or unnamed port of a Service or an EndpointSlice."""

    name: str  # "" when the port is unnamed
    protocol: str  # lower-case: "tcp", "udp" or "sctp"
    port: int


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    kind: ServiceKind
    cluster_ips: tuple[str, ...] = ()
    external_name: str = ""  # lower-case, no trailing dot; only for EXTERNAL_NAME
    ports: tuple[Port, ...] = ()


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint of an EndpointSlice (normally one pod)."""

    addresses: tuple[str, ...]
    ready: bool
    hostname: str = ""  # the pod's hostname when it set hostname + subdomain
    pod_name: str = ""  # targetRef.name when the target is a Pod


class EndpointSlice:
    """An EndpointSlice, stored by column: at 100k endpoints an ``Endpoint`` object per
    endpoint (plus a tuple for its usually single address) costs ~110 bytes each, the
    columns ~20. ``endpoints`` makes the ``Endpoint`` values on access. Immutable,
    compared and hashed by value like the other slim types.

    A slice belongs to the Service its ``kubernetes.io/service-name`` label names
    (``service``) and, when an MCS controller imported it, to the ServiceImport its
    ``multicluster.kubernetes.io/service-name`` label names (``import_name``, with the
    ``multicluster.kubernetes.io/source-cluster`` label in ``source_cluster``). Each
    label is read on its own: an imported slice counts for no cluster-local Service
    unless it carries that Service's label too.
    """

    __slots__ = ("_addresses", "_hostnames", "_pod_names", "_ready", "address_type",
                 "import_name", "name", "namespace", "ports", "service", "source_cluster")

    namespace: str
    name: str
    service: str  # from the kubernetes.io/service-name label; "" for an imported slice
    address_type: str  # "IPv4", "IPv6" or "FQDN"
    ports: tuple[Port, ...]
    _addresses: tuple[str | tuple[str, ...], ...]  # one address as itself, else a tuple
    _ready: int  # bit i set: endpoint i is ready
    _hostnames: tuple[str, ...]  # () when no endpoint has one
    _pod_names: tuple[str, ...]  # () when no endpoint has one
    import_name: str  # the ServiceImport it was imported for; "" when not imported
    source_cluster: str  # the cluster id it was imported from; "" when not imported

    def __init__(self, namespace: str, name: str, service: str, address_type: str,
                 endpoints: Iterable[Endpoint] = (), ports: tuple[Port, ...] = (),
                 import_name: str = "", source_cluster: str = "") -> None:
        eps = tuple(endpoints)
        hostnames = tuple(ep.hostname for ep in eps)
        pod_names = tuple(ep.pod_name for ep in eps)
        fields = {
            "namespace": namespace, "name": name, "service": service,
            "address_type": address_type, "ports": ports,
            "_addresses": tuple(a[0] if len(a) == 1 else a
                                for a in (ep.addresses for ep in eps)),
            "_ready": sum(1 << i for i, ep in enumerate(eps) if ep.ready),
            "_hostnames": hostnames if any(hostnames) else (),
            "_pod_names": pod_names if any(pod_names) else (),
            "import_name": import_name, "source_cluster": source_cluster,
        }
        for key, value in fields.items():
            object.__setattr__(self, key, value)

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        ready, hostnames, pod_names = self._ready, self._hostnames, self._pod_names
        return tuple(
            Endpoint(a if isinstance(a, tuple) else (a,), bool(ready >> i & 1),
                     hostnames[i] if hostnames else "", pod_names[i] if pod_names else "")
            for i, a in enumerate(self._addresses))

    @property
    def endpoint_count(self) -> int:
        return len(self._addresses)

    def ready_items(self) -> Iterator[tuple[tuple[str, ...], str, str]]:
        """(addresses, hostname, pod name) of each ready endpoint, in order, without
        making ``Endpoint`` objects (the snapshot builder's loop over 100k endpoints)."""
        ready, hostnames, pod_names = self._ready, self._hostnames, self._pod_names
        for i, a in enumerate(self._addresses):
            if ready >> i & 1:
                yield ((a if isinstance(a, tuple) else (a,)),
                       hostnames[i] if hostnames else "", pod_names[i] if pod_names else "")

    @property
    def has_hostnames(self) -> bool:
        return bool(self._hostnames)

    @property
    def has_pod_names(self) -> bool:
        return bool(self._pod_names)

    def ready_addresses(self) -> list[str]:
        """The addresses of the ready endpoints, in order."""
        addresses, ready = self._addresses, self._ready
        chosen: Iterable[str | tuple[str, ...]] = addresses
        if ready != (1 << len(addresses)) - 1:
            chosen = [a for i, a in enumerate(addresses) if ready >> i & 1]
        out: list[str] = []
        for a in chosen:
            if isinstance(a, tuple):
                out.extend(a)
            else:
                out.append(a)
        return out

    def _key(self) -> tuple[object, ...]:
        return (self.namespace, self.name, self.service, self.address_type, self.ports,
                self._addresses, self._ready, self._hostnames, self._pod_names,
                self.import_name, self.source_cluster)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EndpointSlice):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        imported = (f", import_name={self.import_name!r}, "
                    f"source_cluster={self.source_cluster!r}" if self.import_name else "")
        return (f"EndpointSlice({self.namespace!r}, {self.name!r}, {self.service!r}, "
                f"{self.address_type!r}, {self.endpoints!r}, {self.ports!r}{imported})")

    def __reduce__(self) -> tuple[Any, tuple[object, ...]]:
        # The columns as they are (the file source's loader pickles slices across a pipe).
        return (_slice_from_columns, self._key())

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError(f"EndpointSlice is immutable: cannot set {key!r}")

    def __delattr__(self, key: str) -> None:
        raise AttributeError(f"EndpointSlice is immutable: cannot delete {key!r}")


def _slice_from_columns(*columns: Any) -> EndpointSlice:
    """An ``EndpointSlice`` from the values ``_key`` lists (unpickling); names interned."""
    out = object.__new__(EndpointSlice)
    namespace, name, service, address_type, *rest, import_name, source_cluster = columns
    values = (sys.intern(namespace), name, sys.intern(service), sys.intern(address_type),
              *rest, sys.intern(import_name), sys.intern(source_cluster))
    for slot, value in zip(_SLICE_COLUMNS, values, strict=True):
        object.__setattr__(out, slot, value)
    return out


_SLICE_COLUMNS = ("namespace", "name", "service", "address_type", "ports", "_addresses",
                  "_ready", "_hostnames", "_pod_names", "import_name", "source_cluster")


CLUSTER_FIRST = "ClusterFirst"
FINISHED_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True, slots=True)
class Pod:
    """A pod: its addresses, and what autopath must know of whoever asks from one.

    ``phase`` is ``status.phase`` (``Running``, ``Pending``, ``Succeeded``, ``Failed``,
    ``Unknown``; "" when absent). ``dns`` says how the kubelet wrote the pod's
    resolv.conf: ``CLUSTER_FIRST`` when it is exactly the cluster's search list and
    ndots (``dnsPolicy: ClusterFirst``, not ``hostNetwork``, no ``dnsConfig`` searches
    or ``ndots`` option), otherwise why not (``hostNetwork``, ``dnsPolicy Default``,
    ``dnsConfig searches``, ``dnsConfig ndots``), as the API's defaults make it when
    the fields are absent. Both are shared interned strings: 16 bytes a pod.
    """

    namespace: str
    name: str
    ips: tuple[str, ...] = ()
    phase: str = ""
    dns: str = CLUSTER_FIRST

    @property
    def holds_ips(self) -> bool:
        """Whether its addresses are still its own: a pod that has finished (Succeeded,
        Failed) has given them back, and a new pod may have them now."""
        return self.phase not in FINISHED_PHASES

    @property
    def autopath(self) -> bool:
        """Whether a query from its address may have the search list walked for it."""
        return self.phase == "Running" and self.dns == CLUSTER_FIRST


@dataclass(frozen=True, slots=True)
class ServiceImport:
    """A ``multicluster.x-k8s.io/v1alpha1`` ServiceImport (KEP-1645): a service exported
    from the clusters of a clusterset, served under the multicluster zones.

    ``kind`` is ``CLUSTER_IP`` for the spec's type ``ClusterSetIP`` (``ips`` are its
    clusterset IPs) and ``HEADLESS`` for ``Headless``; its endpoints are the imported
    EndpointSlices whose ``import_name`` is ``name``.
    """

    namespace: str
    name: str
    kind: ServiceKind  # CLUSTER_IP (ClusterSetIP) or HEADLESS, never EXTERNAL_NAME
    ips: tuple[str, ...] = ()
    ports: tuple[Port, ...] = ()


KubeObject = Namespace | Service | EndpointSlice | Pod | ServiceImport


@dataclass(frozen=True, slots=True)
class Cluster:
    """Every object a snapshot is built from, one consistent set."""

    namespaces: tuple[Namespace, ...] = ()
    services: tuple[Service, ...] = ()
    endpoint_slices: tuple[EndpointSlice, ...] = ()
    pods: tuple[Pod, ...] = ()
    service_imports: tuple[ServiceImport, ...] = ()
