"""Slim, immutable views of the Kubernetes objects that DNS needs.

Sources (the YAML file reader, the API watcher) turn raw API dicts into these
types at ingest and keep nothing else: memory at 100k endpoints matters, and the
record builder must not care where an object came from. IP addresses are kept in
their canonical text form (``ipaddress`` normalised), names lower-cased.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


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


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str
    name: str
    service: str  # from the kubernetes.io/service-name label
    address_type: str  # "IPv4", "IPv6" or "FQDN"
    endpoints: tuple[Endpoint, ...] = ()
    ports: tuple[Port, ...] = ()


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: str
    name: str
    ips: tuple[str, ...] = ()


KubeObject = Namespace | Service | EndpointSlice | Pod


@dataclass(frozen=True, slots=True)
class Cluster:
    """Every object a snapshot is built from, one consistent set."""

    namespaces: tuple[Namespace, ...] = ()
    services: tuple[Service, ...] = ()
    endpoint_slices: tuple[EndpointSlice, ...] = ()
    pods: tuple[Pod, ...] = ()
