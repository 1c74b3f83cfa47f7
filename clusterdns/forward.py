"""Forwarding out-of-zone names to upstream resolvers, with a TTL-respecting cache.

This module is the only part of the query path that does network I/O of its own, so it
is kept apart from the pure handler: the handler hands it a parsed query that needs an
upstream and gets back either reply bytes at once (cache hit, loop, over the cap) or an
awaitable of them. It owns the upstream list (from config or a resolv.conf, never our
own listen addresses), the start-up loop probe (like CoreDNS ``loop``), UDP with a TCP
retry on TC or a malformed reply, per-try timeouts, failover that remembers a dead
upstream for a while, a cap on upstream queries in flight, the answer cache (positive
TTLs capped by ``cache_ttl``, RFC 2308 negative TTLs capped by ``cache_negative_ttl``,
RFC 8767 serve-stale) and the counters the metrics exporter reads. Every byte is
``wire``'s business.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cachetools import TLRUCache

from clusterdns import wire
from clusterdns.config import Config, ConfigError, parse_listen
from clusterdns.records import Record, RRType
from clusterdns.resolve import Outcome

log = logging.getLogger(__name__)

DEAD_FOR = 5.0  # seconds a failed upstream goes to the back of the line
EDE_OTHER = 0
CacheKey = tuple[str, int, int, bool]  # lower-cased qname, qtype, qclass, DO bit


@dataclass(frozen=True, slots=True)
class Upstream:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(slots=True)
class ForwardStats:
    """Plain counters, read by the metrics exporter (CoreDNS ``forward``/``cache`` names)."""

    cache_hits: dict[str, int] = field(default_factory=lambda: {"success": 0, "denial": 0})
    cache_misses: int = 0
    stale_served: int = 0
    refused_over_cap: int = 0
    requests: dict[str, int] = field(default_factory=dict)  # upstream -> tries
    responses: dict[tuple[str, str], int] = field(default_factory=dict)  # (upstream, rcode)
    failures: dict[str, int] = field(default_factory=dict)  # upstream -> timeouts/errors
    durations: deque[tuple[str, str, float]] = field(
        default_factory=lambda: deque(maxlen=1024))  # recent (upstream, rcode, seconds)


@dataclass(frozen=True, slots=True)
class _Entry:
    reply: wire.UpstreamReply
    stored: float  # clock() when cached
    ttl: int  # seconds it is fresh
    kind: str  # "success" or "denial"


CACHE_UNIT = 512
"""A cached reply takes one of the cache's ``cache_size`` places per started 512 bytes of
its wire size, so the cache holds ``cache_size`` ordinary replies but never more than
about ``cache_size`` x 512 bytes of replies, however large the ones clients ask for."""


def cache_weight(entry: _Entry) -> int:
    return max(1, -(-entry.reply.size // CACHE_UNIT))


# ------------------------------------------------------------------ the upstream list


def read_resolv_conf(text: str) -> list[str]:
    """The addresses of the ``nameserver`` lines of a resolv.conf, in order."""
    out = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                ipaddress.ip_address(fields[1].split("%", 1)[0])
            except ValueError:
                log.warning("ignoring resolv.conf line %r: not an IP address", line.strip())
                continue
            out.append(fields[1])
    return out


def is_local_address(host: str) -> bool:
    """Whether ``host`` is an address of this machine (we can bind to it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((host, 0))
        except OSError:
            return False
    return True


def is_ourselves(up: Upstream, bound: Sequence[tuple[str, int]],
                 is_local: Callable[[str], bool] = is_local_address) -> bool:
    """Whether queries to ``up`` would reach one of our own listening sockets."""
    try:
        target = ipaddress.ip_address(up.host.split("%", 1)[0])
    except ValueError:
        return False
    for host, port in bound:
        if port != up.port:
            continue
        ours = ipaddress.ip_address(host.split("%", 1)[0])
        if ours == target:
            return True
        if ours.is_unspecified and ours.version == target.version and (
                target.is_loopback or target.is_unspecified or is_local(up.host)):
            return True
    return False


def upstream_list(entries: Sequence[str], bound: Sequence[tuple[str, int]], *,
                  read: Callable[[Path], str] = lambda p: p.read_text(encoding="utf-8"),
                  is_local: Callable[[str], bool] = is_local_address) -> list[Upstream]:
    """Upstreams from config entries (HOST:PORT or a resolv.conf path), minus ourselves."""
    found: list[Upstream] = []
    for entry in entries:
        if entry.startswith(("/", ".")):
            try:
                addresses = read_resolv_conf(read(Path(entry)))
            except OSError as exc:
                log.error("cannot read upstreams from %s: %s", entry, exc.strerror or exc)
                continue
            if not addresses:
                log.warning("%s has no nameserver lines", entry)
            found.extend(Upstream(a, 53) for a in addresses)
            continue
        try:
            addr = parse_listen(entry, key="upstreams")
        except ConfigError as exc:
            log.error("ignoring upstream %s", exc)
            continue
        found.append(Upstream(addr.host, addr.port))
    out: list[Upstream] = []
    for up in dict.fromkeys(found):
        if is_ourselves(up, bound, is_local):
            log.warning("not forwarding to %s: that is our own listen address", up)
            continue
        out.append(up)
    return out


# -------------------------------------------------------------------------- exchanges


class _Failed(Exception):
    """One upstream try failed (timeout, network error, unusable reply)."""


class _UDPExchange(asyncio.DatagramProtocol):
    """Waits for the first datagram that answers our query; others are ignored."""

    def __init__(self, accept: Callable[[bytes], wire.UpstreamReply | None],
                 done: asyncio.Future[wire.UpstreamReply | None]) -> None:
        self.accept = accept
        self.done = done

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self.done.done():
            return
        try:
            reply = self.accept(data)
        except wire.Malformed as exc:
            log.debug("malformed UDP reply (%s); retrying over TCP", exc)
            self.done.set_result(None)
            return
        if reply is not None:
            self.done.set_result(reply)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("socket closed"))


class Forwarder:
    """Answers the queries the handler cannot answer from the snapshot."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock  # the cache's and the dead-upstream memory's time source
        self.max_udp_size = config.max_udp_size
        self.upstreams: list[Upstream] = []
        self.stats = ForwardStats()
        self.observe: Callable[[str, str, float], None] | None = None
        """Called with (upstream, rcode name, seconds) for every upstream reply."""
        self.loop_detected = False
        self.probed = asyncio.Event()  # set when the start-up loop probe is over
        self.inflight = 0
        self._dead_until: dict[Upstream, float] = {}
        self._probe_names: dict[str, Upstream] = {}
        self._probe_task: asyncio.Task[None] | None = None
        self._rng = random.SystemRandom()
        self.cache: TLRUCache[CacheKey, _Entry] | None = None
        if config.cache_size > 0:
            stale = config.serve_stale
            self.cache = TLRUCache(maxsize=config.cache_size,
                                   ttu=lambda _key, entry, now: now + entry.ttl + stale,
                                   timer=lambda: self.clock(), getsizeof=cache_weight)

    # -------------------------------------------------------------------- lifecycle

    async def start(self, bound: Sequence[tuple[str, int]]) -> None:
        """Work out the upstreams now that our own addresses are known; probe for a loop."""
        self.upstreams = upstream_list(self.config.upstreams, bound)
        if self.upstreams:
            log.info("forwarding out-of-zone names to %s",
                     ", ".join(str(u) for u in self.upstreams))
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

    async def _probe(self) -> None:
        """Send ``<random>.<random>.`` HINFO through each upstream; see if it comes back."""
        try:
            for up in list(self.upstreams):
                name = f"{self._rng.randrange(10**9)}.{self._rng.randrange(10**9)}"
                self._probe_names[name] = up
                try:
                    await self._exchange(up, wire.labels_of(name), RRType.HINFO, 1,
                                         do=False, cd=False)
                except _Failed as exc:
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
               target: str | None = None) -> bytes | Awaitable[bytes | None]:
        """Reply bytes now (cache hit, loop, over the cap) or an awaitable of them.

        ``target``: ask the upstream about this name instead of the query's (the
        out-of-zone target of an ExternalName), putting ``chain`` in front of its answer.
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
        do = query.edns is not None and query.edns.do
        key: CacheKey = (name, query.qtype, query.qclass, do)
        entry = self.cache.get(key) if self.cache is not None else None
        if entry is not None:
            age = self.clock() - entry.stored
            if age < entry.ttl:
                self.stats.cache_hits[entry.kind] += 1
                return wire.relay(query, entry.reply, limit, self.max_udp_size, chain=chain,
                                  ttl_cap=entry.ttl, age=int(age))
        self.stats.cache_misses += 1
        if self.inflight >= self.config.forward_max_concurrent:
            self.stats.refused_over_cap += 1
            return self._error(query, limit, chain, Outcome.REFUSED, EDE_OTHER,
                               "too many upstream queries in flight")
        self.inflight += 1
        labels = query.labels if target is None else wire.labels_of(target)
        return self._forward(query, limit, chain, labels, key, entry)

    async def _forward(self, query: wire.Query, limit: int, chain: tuple[Record, ...],
                       labels: Sequence[bytes], key: CacheKey,
                       old: _Entry | None) -> bytes | None:
        try:
            reply = await self._ask(labels, query.qtype, query.qclass, key[3],
                                    bool(query.flags & wire.FLAG_CD))
            if reply is not None and reply.rcode in (wire.RCODE_NOERROR, wire.RCODE_NXDOMAIN):
                lifetime = self._store(key, reply)
                return wire.relay(query, reply, limit, self.max_udp_size, chain=chain,
                                  ttl_cap=lifetime)
            if old is None and self.cache is not None:
                old = self.cache.get(key)  # may have been refreshed meanwhile
            if old is not None:
                self.stats.stale_served += 1
                return wire.relay(query, old.reply, limit, self.max_udp_size, chain=chain,
                                  stale=True)
            if reply is not None:
                return wire.relay(query, reply, limit, self.max_udp_size, chain=chain)
            tried = ", ".join(str(u) for u in self.upstreams)
            return self._error(query, limit, chain, Outcome.SERVFAIL,
                               wire.EDE_NO_REACHABLE_AUTHORITY, f"no upstream answered ({tried})")
        except Exception:
            log.exception("error while forwarding; replying SERVFAIL")
            return self._error(query, limit, chain, Outcome.SERVFAIL, EDE_OTHER,
                               "internal error while forwarding")
        finally:
            self.inflight -= 1

    def _store(self, key: CacheKey, reply: wire.UpstreamReply) -> int | None:
        """Cache ``reply`` if it may be; its lifetime (the TTL cap to relay it with)."""
        if self.cache is None:
            return None
        lifetime = wire.cache_lifetime(reply)
        if lifetime is None:
            return None
        kind, ttl = lifetime
        ttl = min(ttl, self.config.cache_ttl if kind == "success"
                  else self.config.cache_negative_ttl)
        if ttl <= 0:  # a cap of 0 turns caching of this kind off; TTLs stay as sent
            return None
        self.cache[key] = _Entry(reply, self.clock(), ttl, kind)
        return ttl

    def _error(self, query: wire.Query, limit: int, chain: tuple[Record, ...],
               outcome: Outcome, code: int, text: str) -> bytes:
        return wire.encode_forward_error(query, outcome, limit, self.max_udp_size,
                                         (code, text), chain)

    def _order(self) -> list[Upstream]:
        """Healthy upstreams in config order, then the recently dead, soonest back first."""
        now = self.clock()
        alive = [u for u in self.upstreams if self._dead_until.get(u, 0.0) <= now]
        dead = sorted((u for u in self.upstreams if self._dead_until.get(u, 0.0) > now),
                      key=lambda u: self._dead_until[u])
        return alive + dead

    async def _ask(self, labels: Sequence[bytes], qtype: int, qclass: int, do: bool,
                   cd: bool) -> wire.UpstreamReply | None:
        """The first NOERROR/NXDOMAIN reply from the upstreams, else the last other reply."""
        other: wire.UpstreamReply | None = None
        for up in self._order():
            try:
                reply = await self._exchange(up, labels, qtype, qclass, do=do, cd=cd)
            except _Failed as exc:
                name = str(up)
                self.stats.failures[name] = self.stats.failures.get(name, 0) + 1
                self._dead_until[up] = self.clock() + DEAD_FOR
                log.debug("upstream %s failed: %s", up, exc)
                continue
            self._dead_until.pop(up, None)
            if reply.rcode in (wire.RCODE_NOERROR, wire.RCODE_NXDOMAIN):
                return reply
            other = reply
        return other

    async def _exchange(self, up: Upstream, labels: Sequence[bytes], qtype: int, qclass: int,
                        *, do: bool, cd: bool) -> wire.UpstreamReply:
        """One try at one upstream: UDP, then TCP if the UDP reply is truncated or garbled."""
        name = str(up)
        self.stats.requests[name] = self.stats.requests.get(name, 0) + 1
        start = time.perf_counter()
        try:
            reply = await self._udp(up, labels, qtype, qclass, do, cd)
            if reply is None or reply.truncated:
                reply = await self._tcp(up, labels, qtype, qclass, do, cd)
        except (OSError, TimeoutError, EOFError, wire.Malformed) as exc:
            raise _Failed(f"{type(exc).__name__}: {exc}" if str(exc)
                          else type(exc).__name__) from None
        seconds = time.perf_counter() - start
        rcode = reply.rcode_name
        self.stats.responses[(name, rcode)] = self.stats.responses.get((name, rcode), 0) + 1
        self.stats.durations.append((name, rcode, seconds))
        if self.observe is not None:
            self.observe(name, rcode, seconds)
        return reply

    async def _udp(self, up: Upstream, labels: Sequence[bytes], qtype: int, qclass: int,
                   do: bool, cd: bool) -> wire.UpstreamReply | None:
        """The matching UDP reply; None when it was malformed (retry over TCP)."""
        ident = self._rng.randrange(65536)
        packet = wire.upstream_query(labels, qtype, qclass, ident, do=do, cd=cd)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[wire.UpstreamReply | None] = loop.create_future()

        def accept(data: bytes) -> wire.UpstreamReply | None:
            return wire.read_reply(data, ident, labels, qtype, qclass)

        async with asyncio.timeout(self.config.forward_timeout):
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UDPExchange(accept, done), remote_addr=(up.host, up.port))
            try:
                transport.sendto(packet)
                return await done
            finally:
                if not done.done():
                    done.cancel()
                transport.close()

    async def _tcp(self, up: Upstream, labels: Sequence[bytes], qtype: int, qclass: int,
                   do: bool, cd: bool) -> wire.UpstreamReply:
        ident = self._rng.randrange(65536)
        packet = wire.upstream_query(labels, qtype, qclass, ident, do=do, cd=cd)
        async with asyncio.timeout(self.config.forward_timeout):
            reader, writer = await asyncio.open_connection(up.host, up.port)
            try:
                writer.write(len(packet).to_bytes(2, "big") + packet)
                while True:  # replies to other queries (there are none) are skipped
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    reply = wire.read_reply(await reader.readexactly(size), ident, labels,
                                            qtype, qclass)
                    if reply is not None:
                        return reply
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()


__all__ = ["ForwardStats", "Forwarder", "Upstream", "is_ourselves", "read_resolv_conf",
           "upstream_list"]
