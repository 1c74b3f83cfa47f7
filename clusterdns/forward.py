"""Forwarding out-of-zone names to upstream resolvers, with a TTL-respecting cache.

This module is the only part of the query path that does network I/O of its own (through
``upstreams``), so it is kept apart from the pure handler: the handler hands it a parsed
query that needs an upstream and gets back either reply bytes at once (cache hit, loop,
over the cap) or an awaitable of them. It owns the start-up loop probe (like CoreDNS
``loop``), the deadline of a client query (``forward_deadline``, all tries together),
the cap on upstream queries in flight, and the answer caches as CoreDNS ``cache`` keeps
them: positive answers (TTLs capped by ``cache_ttl``, raised to ``cache_min_ttl``) and
negative ones (RFC 2308, capped by ``cache_negative_ttl``, raised to
``cache_negative_min_ttl``) apart, each with its capacity; RFC 8767 serve-stale; and
prefetching of popular answers shortly before they expire (``cache_prefetch``).

A cached answer that a plain query can reuse is also handed to ``remember`` (the fast
path, ``fastpath.ForwardedReplies``) with the offsets of its TTLs, so that repeats are
answered without reaching this module at all, their TTLs patched as they count down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from cachetools import TLRUCache

from clusterdns import wire
from clusterdns.autopath import Miss, Step
from clusterdns.config import Config
from clusterdns.records import Record, RRType
from clusterdns.resolve import Outcome
from clusterdns.upstreams import (
    Failed,
    ForwardStats,
    Upstream,
    Upstreams,
    is_ourselves,
    read_resolv_conf,
    upstream_list,
)

log = logging.getLogger(__name__)

EDE_OTHER = 0
CacheKey = tuple[str, int, int, bool]  # lower-cased qname, qtype, qclass, DO bit

CACHE_UNIT = 512
"""A cached reply takes one of its cache's places per started 512 bytes of its wire size,
so a cache holds its capacity of ordinary replies but never more than about capacity x
512 bytes of replies, however large the ones clients ask for."""


@dataclass(slots=True)
class CacheEntry:
    """A cached upstream reply, and how popular it is (for prefetching)."""

    reply: wire.UpstreamReply
    stored: float  # clock() when cached
    ttl: int  # seconds it is fresh
    kind: str  # "success" or "denial"
    hits: int = 0  # queries answered from it since ``window``
    window: float = 0.0  # clock() when the current popularity window began
    refreshing: bool = False  # a prefetch is under way


def cache_weight(entry: CacheEntry) -> int:
    return max(1, -(-entry.reply.size // CACHE_UNIT))


Remember = Callable[[wire.Query, bool, bytes, list[tuple[int, int]], int, float, CacheEntry],
                    None]
"""(query, over TCP, reply, its TTLs' offsets and values, the entry's age in whole seconds
when written, clock() from which the reply may no longer be given, the cache entry)."""


@dataclass
class _Tasks:
    """Background tasks (prefetches), kept so that they can be cancelled."""

    running: set[asyncio.Task[None]] = field(default_factory=set)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def cancel(self) -> None:
        for task in list(self.running):
            task.cancel()
        for task in list(self.running):
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Forwarder:
    """Answers the queries the handler cannot answer from the snapshot."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock  # the caches' and the upstreams' time source
        self.max_udp_size = config.max_udp_size
        self.upstreams: list[Upstream] = []
        self.pool: Upstreams | None = None
        self.stats = ForwardStats()
        self.observe: Callable[[str, str, float], None] | None = None
        """Called with (upstream, rcode name, seconds) for every upstream reply."""
        self.remember: Remember | None = None
        self.loop_detected = False
        self.probed = asyncio.Event()  # set when the start-up loop probe is over
        self.inflight = 0
        self._probe_names: dict[str, Upstream] = {}
        self._probe_task: asyncio.Task[None] | None = None
        self._tasks = _Tasks()
        self._rng = random.SystemRandom()
        stale = config.serve_stale
        self.cache: TLRUCache[CacheKey, CacheEntry] | None = None
        self.denials: TLRUCache[CacheKey, CacheEntry] | None = None
        for attr, size in (("cache", config.cache_size), ("denials", config.cache_negative_size)):
            if size > 0:
                setattr(self, attr, TLRUCache(
                    maxsize=size, ttu=lambda _key, entry, now: now + entry.ttl + stale,
                    timer=lambda: self.clock(), getsizeof=cache_weight))

    # -------------------------------------------------------------------- lifecycle

    async def start(self, bound: Sequence[tuple[str, int]]) -> None:
        """Work out the upstreams now that our own addresses are known; probe for a loop."""
        self.upstreams = upstream_list(self.config.upstreams, bound)
        self.pool = Upstreams(self.config, self.upstreams, self.stats,
                              clock=lambda: self.clock())
        self.pool.observe = lambda *args: self.observe(*args) if self.observe else None
        if self.upstreams:
            log.info("forwarding out-of-zone names to %s (policy %s)",
                     ", ".join(str(u) for u in self.upstreams), self.config.forward_policy)
        else:
            log.error("no usable upstream in %s; out-of-zone names will get SERVFAIL",
                      ", ".join(self.config.upstreams))
        if self.config.loop_detect and self.upstreams:
            self._probe_task = asyncio.create_task(self._probe(), name="forward-loop-probe")
        else:
            self.probed.set()

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        await self._tasks.cancel()
        if self.pool is not None:
            await self.pool.close()

    async def _probe(self) -> None:
        """Send ``<random>.<random>.`` HINFO through each upstream; see if it comes back."""
        assert self.pool is not None
        try:
            for up in list(self.upstreams):
                name = f"{self._rng.randrange(10**9)}.{self._rng.randrange(10**9)}"
                self._probe_names[name] = up
                try:
                    await self.pool.ask(up, wire.labels_of(name), RRType.HINFO, 1, do=False,
                                        cd=False, tcp=False,
                                        timeout=self.config.forward_timeout)
                except Failed as exc:
                    log.debug("loop probe through %s: %s", up, exc)
                if self.loop_detected:
                    break
        finally:
            self.probed.set()

    def _loop_seen(self, name: str) -> None:
        if self.loop_detected:
            return
        self.loop_detected = True
        log.error("forwarding loop detected: our probe query %s. HINFO sent through upstream "
                  "%s came back to us. Answering SERVFAIL for every out-of-zone name instead "
                  "of forwarding; fix the upstream list (often the node's resolv.conf "
                  "pointing at this server)", name, self._probe_names[name])

    # ---------------------------------------------------------------------- queries

    def answer(self, query: wire.Query, limit: int, chain: tuple[Record, ...] = (),
               target: str | None = None, *,
               ours: bool = False) -> bytes | Awaitable[bytes | None]:
        """Reply bytes now (cache hit, loop, over the cap) or an awaitable of them.

        ``ours``: the name is in one of our zones (a ``fallthrough`` NXDOMAIN), so the
        reply is not handed to the fast path, whose forwarded answers outlive snapshots:
        the next snapshot may have the name.

        ``target``: ask the upstream about this name instead of the query's (the
        out-of-zone target of an ExternalName), putting ``chain`` in front of its answer.
        A ``limit`` of ``wire.TCP_MAX`` means the client asked over TCP.
        """
        name = query.qname if target is None else target
        if target is None and name in self._probe_names:
            self._loop_seen(name)
        if self.loop_detected:
            return self._error(query, limit, chain, Outcome.SERVFAIL, EDE_OTHER,
                               "forwarding loop detected: not forwarding")
        if not self.upstreams:
            return self._error(query, limit, chain, Outcome.SERVFAIL,
                               wire.EDE_NO_REACHABLE_AUTHORITY, "no usable upstream")
        key, entry, age = self._lookup(query, name)
        if age is not None:
            assert entry is not None
            return self._relay(query, limit, chain, entry, age, remember=not (chain or ours))
        if not self._may_ask():
            return self._error(query, limit, chain, Outcome.REFUSED, EDE_OTHER,
                               "too many upstream queries in flight")
        self.inflight += 1
        labels = query.labels if target is None else wire.labels_of(target)
        return self._forward(query, limit, chain, labels, key, entry, not (chain or ours))

    def candidate(self, query: wire.Query, limit: int, name: str,
                  cname: Record) -> Step | Awaitable[Step]:
        """One name of an autopath walk (``clusterdns.autopath``), asked upstream for the
        query's type, through the cache (keyed by ``name``, the same for every client):
        ``Miss.NXDOMAIN`` when it does not exist, our reply to ``query`` when it does
        (``cname`` then the upstream's answer; a NODATA as the upstream gave it, as
        CoreDNS does), ``Miss.FAILED`` when no answer can be had. The reply answers one
        client's own search list, so it is never handed to the fast path."""
        if self.loop_detected or not self.upstreams:
            return Miss.FAILED
        key, entry, age = self._lookup(query, name)
        if age is not None:
            assert entry is not None
            return self._walked(query, limit, cname, entry.reply, entry, age)
        if not self._may_ask():
            return Miss.FAILED
        self.inflight += 1
        return self._candidate(query, limit, name, cname, key, entry)

    async def _candidate(self, query: wire.Query, limit: int, name: str, cname: Record,
                         key: CacheKey, old: CacheEntry | None) -> Step:
        try:
            reply, entry, stale = await self._fetch(query, limit, wire.labels_of(name), key,
                                                    old)
            if reply is None:
                return Miss.FAILED
            return self._walked(query, limit, cname, reply, entry, 0, stale=stale)
        except Exception:
            log.exception("error while asking upstream for an autopath candidate; answering "
                          "the name asked instead")
            return Miss.FAILED
        finally:
            self.inflight -= 1

    def _walked(self, query: wire.Query, limit: int, cname: Record, reply: wire.UpstreamReply,
                entry: CacheEntry | None, age: int, *, stale: bool = False) -> Step:
        """What an upstream reply for an autopath candidate means for the walk."""
        if reply.rcode == wire.RCODE_NXDOMAIN:
            return Miss.NXDOMAIN
        if reply.rcode != wire.RCODE_NOERROR:
            return Miss.FAILED
        chain = (cname,) if reply.answer else ()
        if entry is None:
            return wire.relay(query, reply, limit, self.max_udp_size, chain=chain, stale=stale)
        return self._relay(query, limit, chain, entry, age, remember=False)

    def _lookup(self, query: wire.Query, name: str
                ) -> tuple[CacheKey, CacheEntry | None, int | None]:
        """The cache key of ``name`` asked as ``query`` asks, its entry if any, and the
        entry's age in whole seconds when it is still fresh (a hit, counted, and maybe a
        prefetch started), else None (a miss, counted)."""
        do = query.edns is not None and query.edns.do
        key: CacheKey = (name, query.qtype, query.qclass, do)
        entry = self._cached(key)
        if entry is not None:
            now = self.clock()
            age = now - entry.stored
            if age < entry.ttl:
                self.stats.cache_hits[entry.kind] += 1
                self._popular(key, entry, now, age, query)
                return key, entry, int(age)
        self.stats.cache_misses += 1
        return key, entry, None

    def _may_ask(self) -> bool:
        """Whether one more upstream query may be in flight (else counted as refused)."""
        if self.inflight >= self.config.forward_max_concurrent:
            self.stats.refused_over_cap += 1
            return False
        return True

    def _cached(self, key: CacheKey) -> CacheEntry | None:
        for cache in (self.cache, self.denials):
            if cache is not None:
                entry = cache.get(key)
                if entry is not None:
                    return entry
        return None

    def _relay(self, query: wire.Query, limit: int, chain: tuple[Record, ...],
               entry: CacheEntry, age: int, *, remember: bool) -> bytes:
        """Our reply from a cached ``entry``, handed to the fast path when it may be."""
        floor = (self.config.cache_min_ttl if entry.kind == "success"
                 else self.config.cache_negative_min_ttl)
        ttls: list[tuple[int, int]] | None = [] if remember and self.remember else None
        reply = wire.relay(query, entry.reply, limit, self.max_udp_size, chain=chain,
                           ttl_cap=entry.ttl, ttl_floor=floor, age=age, ttls=ttls)
        if ttls is not None and self.remember is not None and not reply[2] & 0x02:
            expires = entry.stored + entry.ttl
            if self.config.cache_prefetch:  # stop in time for the forwarder to prefetch
                expires -= self._prefetch_margin(entry)
            if expires > self.clock():
                self.remember(query, limit == wire.TCP_MAX, reply, ttls, age, expires, entry)
        return reply

    def _prefetch_margin(self, entry: CacheEntry) -> int:
        """Seconds before expiry from which a popular entry is fetched again."""
        return max(1, entry.ttl * self.config.cache_prefetch_percentage // 100)

    def _popular(self, key: CacheKey, entry: CacheEntry, now: float, age: float,
                 query: wire.Query) -> None:
        """Count a hit; prefetch a popular entry that is about to expire (CoreDNS
        ``prefetch AMOUNT DURATION PERCENTAGE%``)."""
        cfg = self.config
        if not cfg.cache_prefetch:
            return
        if now - entry.window > cfg.cache_prefetch_window:
            entry.window, entry.hits = now, 0
        entry.hits += 1
        if (entry.hits >= cfg.cache_prefetch and not entry.refreshing
                and entry.ttl - age <= self._prefetch_margin(entry)
                and self.inflight < cfg.forward_max_concurrent):
            entry.refreshing = True
            self.stats.prefetches += 1
            self.inflight += 1
            self._tasks.spawn(self._prefetch(key, entry, query), f"prefetch {key[0]}")

    async def _prefetch(self, key: CacheKey, entry: CacheEntry, query: wire.Query) -> None:
        try:
            labels = wire.labels_of(key[0])
            reply = await self._ask(labels, key[1], key[2], key[3],
                                    bool(query.flags & wire.FLAG_CD), tcp=False)
            if reply is not None and reply.rcode in (wire.RCODE_NOERROR, wire.RCODE_NXDOMAIN):
                self._store(key, reply)
        finally:
            entry.refreshing = False
            self.inflight -= 1

    async def _forward(self, query: wire.Query, limit: int, chain: tuple[Record, ...],
                       labels: Sequence[bytes], key: CacheKey,
                       old: CacheEntry | None, remember: bool) -> bytes | None:
        try:
            reply, entry, stale = await self._fetch(query, limit, labels, key, old)
            if entry is not None:
                return self._relay(query, limit, chain, entry, 0, remember=remember)
            if reply is not None:
                return wire.relay(query, reply, limit, self.max_udp_size, chain=chain,
                                  stale=stale)
            tried = ", ".join(str(u) for u in self.upstreams)
            return self._error(query, limit, chain, Outcome.SERVFAIL,
                               wire.EDE_NO_REACHABLE_AUTHORITY,
                               f"no upstream answered within {self.config.forward_deadline:g} "
                               f"s ({tried})")
        except Exception:
            log.exception("error while forwarding; replying SERVFAIL")
            return self._error(query, limit, chain, Outcome.SERVFAIL, EDE_OTHER,
                               "internal error while forwarding")
        finally:
            self.inflight -= 1

    async def _fetch(self, query: wire.Query, limit: int, labels: Sequence[bytes],
                     key: CacheKey, old: CacheEntry | None
                     ) -> tuple[wire.UpstreamReply | None, CacheEntry | None, bool]:
        """Ask the upstreams about ``labels`` as ``query`` asks: (reply, its new cache
        entry if cached, False) for a NOERROR or NXDOMAIN; else (the reply of ``old`` or
        of the entry cached meanwhile, None, True), stale; else (the upstream's other
        reply or None when there was none, None, False)."""
        reply = await self._ask(labels, query.qtype, query.qclass, key[3],
                                bool(query.flags & wire.FLAG_CD), tcp=limit == wire.TCP_MAX)
        if reply is not None and reply.rcode in (wire.RCODE_NOERROR, wire.RCODE_NXDOMAIN):
            return reply, self._store(key, reply), False
        if old is None:
            old = self._cached(key)  # may have been refreshed meanwhile
        if old is not None:
            self.stats.stale_served += 1
            return old.reply, None, True
        return reply, None, False

    def _store(self, key: CacheKey, reply: wire.UpstreamReply) -> CacheEntry | None:
        """Cache ``reply`` if it may be; the entry."""
        lifetime = wire.cache_lifetime(reply)
        if lifetime is None:
            return None
        kind, ttl = lifetime
        cfg = self.config
        if kind == "success":
            cache, cap, floor = self.cache, cfg.cache_ttl, cfg.cache_min_ttl
        else:
            cache, cap, floor = self.denials, cfg.cache_negative_ttl, cfg.cache_negative_min_ttl
        if cache is None:
            return None
        ttl = min(max(ttl, floor), cap)
        if ttl <= 0:  # a cap of 0 turns caching of this kind off; TTLs stay as sent
            return None
        entry = CacheEntry(reply, self.clock(), ttl, kind, window=self.clock())
        for other in (self.cache, self.denials):  # a name changes kind: one entry
            if other is not None and other is not cache:
                other.pop(key, None)
        cache[key] = entry
        return entry

    def _error(self, query: wire.Query, limit: int, chain: tuple[Record, ...],
               outcome: Outcome, code: int, text: str) -> bytes:
        return wire.encode_forward_error(query, outcome, limit, self.max_udp_size,
                                         (code, text), chain)

    async def _ask(self, labels: Sequence[bytes], qtype: int, qclass: int, do: bool,
                   cd: bool, *, tcp: bool) -> wire.UpstreamReply | None:
        """The first NOERROR/NXDOMAIN reply from the upstreams, else the last other reply,
        within ``forward_deadline`` seconds for all tries together."""
        pool = self.pool
        assert pool is not None
        other: wire.UpstreamReply | None = None
        deadline = time.monotonic() + self.config.forward_deadline
        for up in pool.order():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                reply = await pool.ask(up, labels, qtype, qclass, do=do, cd=cd, tcp=tcp,
                                       timeout=min(self.config.forward_timeout, left))
            except Failed as exc:
                log.debug("upstream %s failed: %s", up, exc)
                continue
            if reply.rcode in (wire.RCODE_NOERROR, wire.RCODE_NXDOMAIN):
                return reply
            other = reply
        return other


__all__ = ["CACHE_UNIT", "CacheEntry", "ForwardStats", "Forwarder", "Upstream",
           "is_ourselves", "read_resolv_conf", "upstream_list"]
