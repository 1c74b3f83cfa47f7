"""Autopath: a pod's search list walked on the server, made safe (CoreDNS ``autopath``).

Why this module exists: a pod with the usual ``ndots:5`` looking up ``example.com`` asks
for ``example.com.<ns>.svc.cluster.local``, ``example.com.svc.cluster.local``,
``example.com.cluster.local``, the node's search domains and only then ``example.com``,
each for A and AAAA: up to a dozen round trips, all but the last NXDOMAIN. When the
first of them reaches us we know the rest of the list (the pod's namespace from its
source address, the cluster's domains, the node's search domains, which the kubelet
copies into every pod), so we walk it here and answer the first name that exists, with
a CNAME from the name asked to the name found: one round trip. CoreDNS's ``autopath
@kubernetes`` does this too, but guesses (the first pod its index has for the address)
and caches the walked reply by question only, so pods of different namespaces can get
each other's answers. Here:

- the walk is only for a source address that exactly one pod holds, running, with the
  cluster's own resolv.conf (``Snapshot.autopath_namespace``), only for a name under
  that pod's own ``<ns>.svc.<zone>`` (with a label in front) that does not exist
  itself; every other query is answered as if autopath were off;
- a walked reply is never stored by the fast path or any cache keyed without the
  source, and neither is the NXDOMAIN of a name a walk could apply to, so no stored
  reply stands in front of a walk (the handler sees to both); the forwarder's cache
  holds the candidates' own answers, keyed by their own names, the same for everyone;
- in-zone candidates are resolved against the one snapshot the query started with.

What ends the walk (CoreDNS's rule, kept): the first candidate that is not NXDOMAIN, so
NODATA too (glibc and musl stop at the same name for the other address family's query,
and a name that exists for no family at all is passed on as NODATA without a CNAME,
after which glibc goes on down its list as it would have). Where this differs: a
forwarded candidate that gets no answer (SERVFAIL, a timeout, the cap on queries in
flight) ends the walk with the name's own NXDOMAIN, so the client goes on by itself,
instead of CoreDNS's SERVFAIL; and the CNAME's TTL is the zone's negative TTL, as it
stands for the NXDOMAINs of the names before the one found.

This module decides (pure: no asyncio, no sockets). The walk over forwarded names is a
coroutine awaiting the forwarder (``Upstream``), with no I/O of its own.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from clusterdns import names, wire
from clusterdns import resolve as resolver
from clusterdns.config import PodsMode
from clusterdns.records import CNAME, Record, RRType
from clusterdns.resolve import Decision, Outcome
from clusterdns.snapshot import Snapshot

MAX_SEARCH = 32
"""Search domains of the server's resolv.conf that follow ``<zone>`` in a walk (the
kubelet passes at most 32 on to pods; glibc before 2.26 used only 6)."""
MAX_NAME = 253
"""Longest name in text form that fits a query (255 octets on the wire); a resolver
skips longer candidates, and so does the walk."""

Reply = bytes | None


class Miss(Enum):
    """A step of the walk that did not find a name."""

    NXDOMAIN = "nxdomain"  # the candidate does not exist: try the next one
    FAILED = "failed"  # no answer could be had: stop, answer the name asked as usual


Step = bytes | Miss
"""Our reply for the name found, or why there is none."""


class Upstream(Protocol):
    """What the walk needs of a forwarder (``clusterdns.forward.Forwarder``)."""

    def answer(self, query: wire.Query, limit: int, chain: tuple[Record, ...] = (),
               target: str | None = None, *,
               ours: bool = False) -> bytes | Awaitable[Reply]: ...

    def candidate(self, query: wire.Query, limit: int, name: str,
                  cname: Record) -> Step | Awaitable[Step]: ...


def read_search(text: str) -> tuple[str, ...]:
    """The search domains of a resolv.conf (the last ``search`` or ``domain`` line wins,
    as in glibc), in normal form, at most ``MAX_SEARCH``."""
    found: list[str] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if fields and fields[0] in ("search", "domain"):
            found = [names.normalise(f) for f in fields[1:]]
    return tuple(dict.fromkeys(d for d in found if d))[:MAX_SEARCH]


def source_ip(peer: Any) -> str | None:
    """The client's address in canonical text, from the socket's peer address tuple
    (an IPv4 client of an IPv6 socket shows as ``::ffff:a.b.c.d``)."""
    if not isinstance(peer, tuple | list) or not peer or not isinstance(peer[0], str):
        return None
    if ":" not in peer[0]:
        return peer[0]  # IPv4: the kernel's text is already canonical
    return _canonical_v6(peer[0])


@functools.lru_cache(maxsize=4096)
def _canonical_v6(host: str) -> str | None:
    """``source_ip`` of an IPv6 peer; remembered, as parsing one takes ~10 us and the
    same clients ask again and again."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def shape(snap: Snapshot, qname: str) -> tuple[str, str, str] | None:
    """(base, namespace, zone) when ``qname`` is ``<base>.<namespace>.svc.<zone>`` in a
    zone autopath applies to: the first name of the search list of a pod of that
    namespace. None otherwise (and for names with a dot inside a label)."""
    zone = snap.zone_for(qname)
    if zone is None or zone not in (snap.config.autopath_zones or snap.forward_zones) \
            or "\\" in qname:
        return None
    base, _, rest = names.relative(qname, zone).rpartition(".svc")
    base, _, namespace = base.rpartition(".")
    if rest or not base or not namespace:
        return None  # not <base>.<namespace>.svc.<zone>
    return base, namespace, zone


def candidates(base: str, zone: str, search: Sequence[str]) -> tuple[str, ...]:
    """What the pod's resolver tries after ``<base>.<ns>.svc.<zone>``, in its order:
    ``<base>.svc.<zone>``, ``<base>.<zone>``, ``<base>.<domain>`` for each of the
    server's search domains, then ``<base>`` itself; repeats and names too long for a
    query left out."""
    tried = (f"{base}.svc.{zone}", f"{base}.{zone}", *(f"{base}.{d}" for d in search), base)
    return tuple(n for n in dict.fromkeys(tried) if len(n) <= MAX_NAME)


@dataclass(slots=True, eq=False)
class Walk:
    """One query's walk: the candidates (``names``), tried in order against one snapshot."""

    snap: Snapshot
    query: wire.Query
    zone: str
    names: Sequence[str]
    limit: int
    server_max: int
    rotation: int
    upstream: Upstream | None
    normal: Callable[[], bytes | Awaitable[Reply]]
    """The reply to the name asked, were there no autopath."""
    succeeded: Callable[[bytes], None]
    """Told of each reply that answers another name."""
    clock: Callable[[], float] = time.monotonic
    deadline: float = field(init=False)
    """Names asked upstream share one forward_deadline: past it, the name asked is
    answered as usual (each one still has forward_deadline of its own)."""

    def __post_init__(self) -> None:
        self.deadline = self.clock() + self.snap.config.forward_deadline

    def run(self) -> bytes | Awaitable[Reply] | None:
        """The reply for the first name that exists; None when none does and none had
        to be asked upstream (the caller answers the name as usual); an awaitable when
        an upstream must be asked."""
        for i, name in enumerate(self.names):
            step = self._step(name)
            if isinstance(step, bytes):
                self.succeeded(step)
                return step
            if step is Miss.FAILED:
                return None
            if step is not Miss.NXDOMAIN:
                return self._rest(step, i + 1)
        return None

    async def _rest(self, pending: Awaitable[Step], start: int) -> Reply:
        """The walk from a step that had to ask upstream, to its end."""
        step: Step | Awaitable[Step] = await pending
        for name in (None, *self.names[start:]):
            if name is not None:
                if self.clock() >= self.deadline:
                    break
                step = self._step(name)
                if not isinstance(step, bytes | Miss):
                    step = await step
            if isinstance(step, bytes):
                self.succeeded(step)
                return step
            if step is Miss.FAILED:
                break
        normal = self.normal()
        return normal if isinstance(normal, bytes) else await normal

    def _cname(self, name: str) -> Record:
        """The CNAME from the name asked to ``name``, with the zone's negative TTL: it
        stands for the NXDOMAINs of the names tried before."""
        soa = self.snap.soa(self.zone)
        ttl = min(soa.ttl, soa.data.minimum)  # type: ignore[union-attr]
        return Record(self.query.qname, ttl, CNAME(name))

    def _step(self, name: str) -> Step | Awaitable[Step]:
        """Try one candidate: from the snapshot when it is in our zones, else upstream."""
        snap, query = self.snap, self.query
        if snap.zone_for(name) is None:
            if self.upstream is None:
                return Miss.NXDOMAIN  # a client would get REFUSED here and go on
            return self.upstream.candidate(query, self.limit, name, self._cname(name))
        if name not in snap.nodes and (snap.config.pods is PodsMode.DISABLED
                                       or ".pod." not in name):
            return Miss.NXDOMAIN  # no such name, and none made up from it (SPEC §S2.8)
        decision = resolver.resolve(snap, name, query.qtype, self.rotation)
        outcome = decision.outcome
        if outcome is Outcome.NXDOMAIN and not decision.answer:
            return Miss.NXDOMAIN
        if outcome not in (Outcome.SUCCESS, Outcome.NODATA, Outcome.NXDOMAIN):
            return Miss.FAILED
        chain = decision.answer
        if (self.upstream is not None and outcome is Outcome.SUCCESS and chain
                and isinstance(chain[-1].data, CNAME)
                and query.qtype not in (RRType.CNAME, RRType.ANY)
                and snap.zone_for(chain[-1].data.target) is None):
            # An ExternalName pointing outside: its target's answer comes from upstream.
            onward = self.upstream.answer(query, self.limit, (self._cname(name), *chain),
                                          chain[-1].data.target, ours=True)
            return onward if isinstance(onward, bytes) else _found(onward)
        if chain:  # the records found, behind a CNAME from the name asked
            decision = Decision(outcome, (self._cname(name), *chain), decision.authority,
                                decision.additional, True, decision.ede)
        return wire.encode(query, decision, self.limit, self.server_max)


async def _found(pending: Awaitable[Reply]) -> Step:
    """An upstream answer for a name that exists (an ExternalName's target): final."""
    reply = await pending
    return Miss.FAILED if reply is None else reply
