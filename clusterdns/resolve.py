"""Decide the answer to one question from one snapshot.

Pure: a normalised name, a type and a snapshot go in; a ``Decision`` (an outcome kind
plus the records of each section and an optional RFC 8914 explanation) comes out.
Turning the decision into rcode, flags and bytes is ``wire``'s job; choosing which
packets reach this function at all is ``handler``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from clusterdns import multicluster, names
from clusterdns.config import PodsMode
from clusterdns.objects import ServiceKind
from clusterdns.records import AAAA, HINFO, NS, SRV, A, Record, RRType
from clusterdns.snapshot import Snapshot


class Outcome(Enum):
    SUCCESS = "SUCCESS"
    NODATA = "NODATA"
    NXDOMAIN = "NXDOMAIN"
    SERVFAIL = "SERVFAIL"
    REFUSED = "REFUSED"
    NOTIMP = "NOTIMP"
    FORMERR = "FORMERR"


class EDE(int, Enum):
    """RFC 8914 extended error codes we use."""

    OTHER = 0
    NOT_READY = 14
    PROHIBITED = 18
    NOT_AUTHORITATIVE = 20
    NOT_SUPPORTED = 21


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    answer: tuple[Record, ...] = ()
    authority: tuple[Record, ...] = ()
    additional: tuple[Record, ...] = ()
    authoritative: bool = False
    ede: tuple[EDE, str] | None = None


TRANSFER_REFUSED = Decision(Outcome.REFUSED,
                            ede=(EDE.NOT_SUPPORTED, "zone transfer is not enabled"))
"""``resolve``'s answer to a transfer query (AXFR, IXFR) of a synced zone of ours: it
does not transfer (the handler says why, and starts the transfers that may run)."""

MAX_CHAIN = 16
"""In-zone CNAMEs followed for one answer (BIND's limit too); a longer chain is answered
as far as this, and the client may go on from its last target."""
ADDRESS_TYPES = (RRType.A, RRType.AAAA)
MAX_ROTATIONS = 32
"""Distinct orders a rotating RRset is served in. Up to this many records, every record
leads in turn; a larger RRset starts at one of this many evenly spaced records. The fast
path keeps one reply per order, so this also bounds what it stores per question."""
SRV_ROTATE_ABOVE = 1024
"""SRV RRsets rotate only above this size: no TCP message holds much more than 1,500 SRV
records, so the order of those sets decides which targets a cut answer carries (SRV
clients choose by weight, not by order, so smaller sets keep theirs)."""


def rotating(rtype: int, count: int) -> bool:
    """Whether an answer RRset of ``count`` records of ``rtype`` is served in rotation."""
    return count > 1 and (rtype in ADDRESS_TYPES
                          or (rtype == RRType.SRV and count > SRV_ROTATE_ABOVE))


def rotations(count: int) -> int:
    """How many distinct orders a rotating RRset of ``count`` records has."""
    return min(count, MAX_ROTATIONS)


def _rotate(rrset: tuple[Record, ...], rotation: int) -> tuple[Record, ...]:
    count = len(rrset)
    orders = rotations(count)
    k = (rotation % orders) * count // orders
    return rrset[k:] + rrset[:k]


def resolve(snap: Snapshot, qname: str, qtype: int, rotation: int = 0) -> Decision:
    """Answer ``qname`` (normal form) / ``qtype`` from ``snap``."""
    zone = snap.zone_for(qname)
    if zone is None:
        return Decision(Outcome.REFUSED,
                        ede=(EDE.NOT_AUTHORITATIVE, f"not authoritative for {qname or '.'}"))
    if not snap.synced:
        return Decision(Outcome.SERVFAIL, ede=(EDE.NOT_READY, "not synced with the API server"))
    if qtype in (RRType.AXFR, RRType.IXFR):
        return TRANSFER_REFUSED

    chain: list[Record] = []
    seen = {qname}
    name = qname
    while True:
        node = snap.nodes.get(name)
        if node is None:
            pod = _pod_answer(snap, name, zone, qtype)
            if pod is not None:
                return _merge(chain, pod)
            why = _why_missing(snap, name, zone)
            return _merge(chain, _negative(snap, zone, Outcome.NXDOMAIN, why))
        cname = node.get(RRType.CNAME)
        if cname and qtype not in (RRType.CNAME, RRType.ANY):
            chain.extend(cname)
            target = cname[0].data.target  # type: ignore[union-attr]
            next_zone = snap.zone_for(target)
            if next_zone is None:  # out of our zones: the client (or a forwarder) follows it
                return Decision(Outcome.SUCCESS, tuple(chain), authoritative=True)
            if target in seen:  # a loop: every CNAME of it is in the answer once
                return Decision(Outcome.SUCCESS, tuple(chain), authoritative=True,
                                ede=(EDE.OTHER, f"CNAME loop at {target}"))
            if len(chain) >= MAX_CHAIN:  # as far as we go; the client may go on
                return Decision(Outcome.SUCCESS, tuple(chain), authoritative=True, ede=(
                    EDE.OTHER, f"CNAME chain longer than {MAX_CHAIN}: followed that far"))
            seen.add(target)
            name, zone = target, next_zone
            continue
        if qtype == RRType.ANY:
            if not node:
                why = _why_nodata(name, "ANY")
                return _merge(chain, _negative(snap, zone, Outcome.NODATA, why))
            # RFC 8482: one RRset instead of all of them: the CNAME of an alias (what
            # RFC 1034 would return), else a synthesised HINFO.
            minimal = cname or (Record(name, snap.config.ttl, HINFO("RFC8482", "")),)
            return _merge(chain, Decision(Outcome.SUCCESS, minimal, authoritative=True))
        rrset = node.get(RRType(qtype)) if qtype in RRType._value2member_map_ else None
        if not rrset:
            why = _why_nodata(name, _type_name(qtype))
            return _merge(chain, _negative(snap, zone, Outcome.NODATA, why))
        if rotation and rotating(qtype, len(rrset)):
            rrset = _rotate(rrset, rotation)
        return _merge(chain, Decision(Outcome.SUCCESS, rrset, additional=_additional(snap, rrset),
                                      authoritative=True))


def _merge(chain: list[Record], decision: Decision) -> Decision:
    """Put the CNAMEs followed so far in front of the final decision's answer."""
    if not chain:
        return decision
    return Decision(decision.outcome, tuple(chain) + decision.answer, decision.authority,
                    decision.additional, True, decision.ede)


def _negative(snap: Snapshot, zone: str, outcome: Outcome, why: str) -> Decision:
    soa = snap.soa(zone)
    neg_ttl = min(soa.ttl, soa.data.minimum)  # type: ignore[union-attr]
    authority = Record(soa.name, neg_ttl, soa.data)
    return Decision(outcome, authority=(authority,), authoritative=True, ede=(EDE.OTHER, why))


def _additional(snap: Snapshot, rrset: tuple[Record, ...]) -> tuple[Record, ...]:
    """Addresses of SRV and NS targets that we hold ourselves (SPEC §S2.5), unless the
    RRset is so large that no message would have room for them."""
    if len(rrset) > SRV_ROTATE_ABOVE:
        return ()
    out: list[Record] = []
    seen: set[str] = set()
    for rec in rrset:
        if not isinstance(rec.data, SRV | NS):
            continue
        target = rec.data.target
        if target in seen:
            continue
        seen.add(target)
        node = snap.nodes.get(target)
        if node:
            for rtype in ADDRESS_TYPES:
                out.extend(node.get(rtype, ()))
    return tuple(out)


def _pod_answer(snap: Snapshot, name: str, zone: str, qtype: int) -> Decision | None:
    """SPEC §S2.8: ``<a-b-c-d>.<ns>.pod.<zone>`` is synthesised, not stored."""
    mode = snap.config.pods
    if mode is PodsMode.DISABLED or zone not in snap.forward_zones:
        return None
    rel = names.relative(name, zone).split(".")
    if len(rel) != 3 or rel[2] != "pod" or rel[1] not in snap.namespaces:
        return None
    ip = names.ip_from_dashed(rel[0])
    if ip is None:
        return None
    if mode is PodsMode.VERIFIED and (rel[1], ip) not in snap.pod_ips:
        return None
    want = RRType.AAAA if ":" in ip else RRType.A
    if qtype == want:
        data = AAAA(ip) if want == RRType.AAAA else A(ip)
        return Decision(Outcome.SUCCESS, (Record(name, snap.config.ttl, data),), authoritative=True)
    if qtype == RRType.ANY:
        hinfo = Record(name, snap.config.ttl, HINFO("RFC8482", ""))
        return Decision(Outcome.SUCCESS, (hinfo,), authoritative=True)
    return _negative(snap, zone, Outcome.NODATA, _why_nodata(name, _type_name(qtype)))


def _type_name(qtype: int) -> str:
    try:
        return RRType(qtype).name
    except ValueError:
        return f"TYPE{qtype}"


def _why_nodata(name: str, type_name: str) -> str:
    return f"{name} exists but has no {type_name} records"


def _why_missing(snap: Snapshot, name: str, zone: str) -> str:
    """An RFC 8914 EXTRA-TEXT that says why ``name`` does not exist."""
    if zone in snap.multicluster_zones:
        return multicluster.why_missing(name, zone, snap.namespaces, snap.config.namespaces,
                                        snap.imports)
    if zone not in snap.forward_zones:
        return f"no service or endpoint has the address of {name}"
    labels = names.relative(name, zone).split(".")
    allowed = snap.config.namespaces
    if len(labels) >= 2 and labels[-1] == "svc":
        ns = labels[-2]
        if ns not in snap.namespaces:
            if allowed and ns not in allowed:
                return f'namespace "{ns}" is not served (namespaces: {", ".join(sorted(allowed))})'
            return f'namespace "{ns}" not found'
        if len(labels) >= 3:
            svc = labels[-3]
            info = snap.services.get((ns, svc))
            if info is None:
                return f'service "{svc}" not found in namespace "{ns}"'
            if info.ready_endpoints == 0 and len(labels) == 3:
                return f'service "{svc}" has 0 ready endpoints'
            if info.kind is ServiceKind.EXTERNAL_NAME:
                return f'service "{svc}" is an ExternalName: no names below it'
            if len(labels) >= 6:
                return "too many labels left of the service name"
            return f'no such endpoint or port of service "{svc}"'
    if len(labels) >= 2 and labels[-1] == "pod":
        if snap.config.pods is PodsMode.DISABLED:
            return "pod records are disabled (pods disabled)"
        ns = labels[-2]
        if ns not in snap.namespaces:
            return f'namespace "{ns}" not found'
        if len(labels) == 3 and names.ip_from_dashed(labels[0]) is not None:
            return f'no pod with that IP in namespace "{ns}" (pods verified)'
        return f'"{labels[0]}" is not a dashed IP address'
    return f"{name} does not exist"
