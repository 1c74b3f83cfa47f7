"""Our own record types and the pure rules that turn cluster objects into records.

This is the Kubernetes DNS specification (SPEC §S2) written as functions: a Service,
its EndpointSlices and the config go in, ``Record`` values come out. Nothing here knows
about wire format, sockets or the API server, so every rule is testable on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum

from clusterdns import names
from clusterdns.objects import EndpointSlice, Service, ServiceKind

SCHEMA_VERSION = "1.1.0"


class RRType(IntEnum):
    A = 1
    NS = 2
    CNAME = 5
    SOA = 6
    PTR = 12
    HINFO = 13
    TXT = 16
    AAAA = 28
    SRV = 33
    OPT = 41
    IXFR = 251
    AXFR = 252
    MAILB = 253
    MAILA = 254
    ANY = 255


@dataclass(frozen=True, slots=True)
class A:
    address: str


@dataclass(frozen=True, slots=True)
class AAAA:
    address: str


@dataclass(frozen=True, slots=True)
class CNAME:
    target: str


@dataclass(frozen=True, slots=True)
class PTR:
    target: str


@dataclass(frozen=True, slots=True)
class NS:
    target: str


@dataclass(frozen=True, slots=True)
class SRV:
    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True, slots=True)
class SOA:
    mname: str
    rname: str
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int


@dataclass(frozen=True, slots=True)
class TXT:
    strings: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HINFO:
    cpu: str
    os: str


RData = A | AAAA | CNAME | PTR | NS | SRV | SOA | TXT | HINFO

RDATA_TYPE: dict[type, RRType] = {
    A: RRType.A, AAAA: RRType.AAAA, CNAME: RRType.CNAME, PTR: RRType.PTR, NS: RRType.NS,
    SRV: RRType.SRV, SOA: RRType.SOA, TXT: RRType.TXT, HINFO: RRType.HINFO,
}


@dataclass(frozen=True, slots=True)
class Record:
    """One resource record; ``name`` is in normal form (lower-case, no trailing dot)."""

    name: str
    ttl: int
    data: RData

    @property
    def rtype(self) -> RRType:
        return RDATA_TYPE[type(self.data)]


def address_record(name: str, ttl: int, ip: str) -> Record:
    return Record(name, ttl, AAAA(ip) if ":" in ip else A(ip))


# ------------------------------------------------------------------------------ zone


def soa(zone: str, cluster_domain: str, serial: int, ttl: int, negative_ttl: int) -> Record:
    """SPEC §S2.9: ``ns.dns.<zone>. hostmaster.<zone>. <serial> 7200 1800 86400 <neg>``."""
    return Record(zone, ttl, SOA(names.join("ns.dns", zone), names.join("hostmaster", zone),
                                 serial, 7200, 1800, 86400, negative_ttl))


def apex_records(zone: str, cluster_domain: str, serial: int, ttl: int,
                 schema: str = SCHEMA_VERSION) -> list[Record]:
    """SOA and NS, and in a forward zone ``dns-version`` saying ``schema``."""
    out = [soa(zone, cluster_domain, serial, ttl, ttl),
           Record(zone, ttl, NS(names.join("ns.dns", zone)))]
    if not names.is_reverse_zone(zone):
        out.append(Record(names.join("dns-version", zone), ttl, TXT((schema,))))
    return out


# -------------------------------------------------------------------------- services


@dataclass(frozen=True, slots=True)
class ReadyEndpoint:
    """A ready endpoint as DNS sees it: its label and its addresses."""

    label: str
    addresses: tuple[str, ...]


def endpoint_label(hostname: str, pod_name: str, ip: str, use_pod_name: bool) -> str:
    """SPEC §S2.4: hostname, else (optionally) the pod name, else the dashed IP."""
    if hostname:
        return hostname
    if use_pod_name and pod_name and names.is_dns_label(pod_name):
        return pod_name
    return names.dashed_ip(ip)


def ready_endpoints(slices: Iterable[EndpointSlice], use_pod_name: bool) -> list[ReadyEndpoint]:
    """Ready endpoints across a service's slices, de-duplicated by (label, address).

    Endpoints with the same label (e.g. the IPv4 and IPv6 slice of one dual-stack pod
    with a hostname) are merged into one name with all their addresses.
    """
    merged: dict[str, dict[str, None]] = {}
    for sl in slices:
        if sl.address_type not in ("IPv4", "IPv6"):
            continue
        for addresses, hostname, pod_name in sl.ready_items():
            for ip in addresses:
                label = endpoint_label(hostname, pod_name, ip, use_pod_name)
                merged.setdefault(label, {})[ip] = None
    return [ReadyEndpoint(label, tuple(ips)) for label, ips in merged.items()]


def srv_weight(count: int) -> int:
    return 100 // count if count else 0


def service_records(
    svc: Service,
    slices: list[EndpointSlice],
    zone: str,
    ttl: int,
    use_pod_name: bool,
) -> list[Record]:
    """Every forward record a service contributes under one zone (SPEC §S2.2-S2.6)."""
    base = names.join(svc.name, svc.namespace, "svc", zone)
    if svc.kind is ServiceKind.EXTERNAL_NAME:
        return [Record(base, ttl, CNAME(svc.external_name))]

    out: list[Record] = []
    ready = ready_endpoints(slices, use_pod_name)
    srv: list[tuple[str, int, str]] = []  # (owner, port, target) before weights are known

    if svc.kind is ServiceKind.CLUSTER_IP:
        out.extend(address_record(base, ttl, ip) for ip in svc.cluster_ips)
        for port in svc.ports:
            if port.name:
                owner = names.join(f"_{port.name}", f"_{port.protocol}", base)
                srv.append((owner, port.port, base))
    else:
        seen: dict[str, None] = {}
        for ep in ready:
            for ip in ep.addresses:
                seen[ip] = None
        out.extend(address_record(base, ttl, ip) for ip in seen)
        for sl in slices:
            labels = {ip: endpoint_label(ep.hostname, ep.pod_name, ip, use_pod_name)
                      for ep in sl.endpoints if ep.ready for ip in ep.addresses}
            for port in sl.ports:
                if not port.name:
                    continue
                owner = names.join(f"_{port.name}", f"_{port.protocol}", base)
                for label in dict.fromkeys(labels.values()):
                    srv.append((owner, port.port, names.join(label, base)))

    for ep in ready:
        owner = names.join(ep.label, base)
        out.extend(address_record(owner, ttl, ip) for ip in ep.addresses)

    out.extend(srv_records(srv, base, ttl))
    return out


def srv_records(srv: Iterable[tuple[str, int, str]], base: str, ttl: int) -> list[Record]:
    """The SRV RRsets of a service at ``base`` from its (owner, port, target) triples,
    duplicates dropped, weighed as SPEC §S2.5 says (priority 0, weight floor(100 / N));
    and at ``base`` itself every distinct (port, target)."""
    unique = list(dict.fromkeys(srv))
    by_owner: dict[str, int] = {}
    for owner, _, _ in unique:
        by_owner[owner] = by_owner.get(owner, 0) + 1
    out = [Record(owner, ttl, SRV(0, srv_weight(by_owner[owner]), number, target))
           for owner, number, target in unique]
    # The bare service name answers SRV with every named port (SPEC §S2.5).
    # Two ports with one number (dns/UDP and dns-tcp/TCP on 53) are one record here.
    bare = list(dict.fromkeys((number, target) for _, number, target in unique))
    out.extend(Record(base, ttl, SRV(0, srv_weight(len(bare)), number, target))
               for number, target in bare)
    return out


def ptr_records(
    svc: Service, slices: list[EndpointSlice], cluster_domain: str, ttl: int, use_pod_name: bool,
) -> Iterator[Record]:
    """SPEC §S2.7: ClusterIP -> service name; ready endpoint IP -> endpoint name."""
    if svc.kind is ServiceKind.EXTERNAL_NAME:
        return
    base = names.join(svc.name, svc.namespace, "svc", cluster_domain)
    if svc.kind is ServiceKind.CLUSTER_IP:
        for ip in svc.cluster_ips:
            yield Record(names.reverse_name(ip), ttl, PTR(base))
    for ep in ready_endpoints(slices, use_pod_name):
        for ip in ep.addresses:
            yield Record(names.reverse_name(ip), ttl, PTR(names.join(ep.label, base)))


# ----------------------------------------------------------------------------- text


def to_text(record: Record) -> str:
    """One line of RFC 1035 master-file text."""
    d = record.data
    rdata: str
    if isinstance(d, A | AAAA):
        rdata = d.address
    elif isinstance(d, CNAME | PTR | NS):
        rdata = d.target + "."
    elif isinstance(d, SRV):
        rdata = f"{d.priority} {d.weight} {d.port} {d.target}."
    elif isinstance(d, SOA):
        rdata = (f"{d.mname}. {d.rname}. {d.serial} {d.refresh} {d.retry} {d.expire} "
                 f"{d.minimum}")
    elif isinstance(d, TXT):
        rdata = " ".join('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
                         for s in d.strings)
    else:
        rdata = f'"{d.cpu}" "{d.os}"'
    return f"{record.name}.\t{record.ttl}\tIN\t{record.rtype.name}\t{rdata}"
