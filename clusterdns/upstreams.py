"""The upstream resolvers: which there are, which to ask first, whether they are alive,
and the sockets to ask them on (as CoreDNS's ``forward`` does).

- **The list** comes from the config (addresses, or resolv.conf files whose nameservers
  are used), never including our own listen addresses.
- **Order** per query follows ``forward_policy``: ``random`` (the default), or
  ``round_robin``, or ``sequential`` (the configured order). Upstreams marked down go
  last; when every one is down, they are all tried anyway, in the same order.
- **Health**: ``forward_max_fails`` failures in a row (no usable reply within the try's
  time) mark an upstream down, with one log line; from then on a background task asks
  it ``. IN NS`` every ``forward_health_check`` seconds, outside any client's query, and
  the first reply of any kind marks it up again, with another log line. A client query
  never waits for a dead upstream it need not ask.
- **Sockets**: each upstream has one connected UDP socket shared by every query in
  flight to it (replies are matched by ID and question), closed after
  ``forward_expire`` seconds unused; TCP (a truncated or garbled UDP reply,
  ``forward_force_tcp``, or a client query that came over TCP unless
  ``forward_prefer_udp``) opens a connection per query.

Every byte is ``wire``'s business.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clusterdns import wire
from clusterdns.config import Config, ConfigError, ListenAddr, parse_listen

log = logging.getLogger(__name__)

_ROOT_NS = 2  # the health probe asks ". IN NS", as CoreDNS does


@dataclass(slots=True)
class ForwardStats:
    """Plain counters, read by the metrics exporter (CoreDNS ``forward``/``cache`` names)."""

    cache_hits: dict[str, int] = field(default_factory=lambda: {"success": 0, "denial": 0})
    cache_misses: int = 0
    stale_served: int = 0
    refused_over_cap: int = 0
    prefetches: int = 0
    requests: dict[str, int] = field(default_factory=dict)  # upstream -> tries
    responses: dict[tuple[str, str], int] = field(default_factory=dict)  # (upstream, rcode)
    failures: dict[str, int] = field(default_factory=dict)  # upstream -> failed tries
    probe_failures: dict[str, int] = field(default_factory=dict)  # upstream -> failed probes
    durations: deque[tuple[str, str, float]] = field(
        default_factory=lambda: deque(maxlen=1024))  # recent (upstream, rcode, seconds)


@dataclass(frozen=True, slots=True)
class Upstream(ListenAddr):
    """An upstream's address: a host and port, written as a listen address is."""


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


# ------------------------------------------------------------------------ exchanges


class Failed(Exception):
    """One try at one upstream failed (timeout, network error, unusable reply)."""


@dataclass(slots=True)
class _Waiter:
    labels: Sequence[bytes]
    qtype: int
    qclass: int
    done: asyncio.Future[wire.UpstreamReply | None]


class _UDPSocket(asyncio.DatagramProtocol):
    """One connected UDP socket to an upstream, shared by the queries in flight to it;
    a reply goes to the query with its ID whose question it answers."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.waiting: dict[int, list[_Waiter]] = {}
        self.used = 0.0  # clock() of the last query sent
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        header = wire.peek_header(data)
        if header is None:
            return
        for waiter in self.waiting.get(header[0], ()):
            if waiter.done.done():
                continue
            try:
                reply = wire.read_reply(data, header[0], waiter.labels, waiter.qtype,
                                        waiter.qclass)
            except wire.Malformed as exc:
                log.debug("malformed UDP reply (%s); retrying over TCP", exc)
                waiter.done.set_result(None)
                return
            if reply is not None:
                waiter.done.set_result(reply)
                return

    def error_received(self, exc: Exception) -> None:
        # ICMP errors of a connected socket (port unreachable...) concern every query on it.
        for waiters in self.waiting.values():
            for waiter in waiters:
                if not waiter.done.done():
                    waiter.done.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error_received(exc or ConnectionError("socket closed"))


@dataclass(slots=True)
class _Health:
    fails: int = 0  # failures in a row
    down_since: float | None = None  # clock() when marked down
    probe: asyncio.Task[None] | None = None


class Upstreams:
    """The upstream list with its order, health and sockets (see the module docstring)."""

    def __init__(self, config: Config, upstreams: Sequence[Upstream], stats: ForwardStats, *,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.list = list(upstreams)
        self.stats = stats
        self.clock = clock
        self._rng = rng or random.SystemRandom()
        self._health = {up: _Health() for up in self.list}
        self._sockets: dict[Upstream, _UDPSocket] = {}
        self._turn = 0  # round_robin's next first upstream
        self.observe: Callable[[str, str, float], None] | None = None
        """Called with (upstream, rcode name, seconds) for every upstream reply."""
        self.closed = False

    # ------------------------------------------------------------------- order, health

    def is_down(self, up: Upstream) -> bool:
        return self._health[up].down_since is not None

    def order(self) -> list[Upstream]:
        """The upstreams to try for one query: by policy, those marked down last."""
        ups = list(self.list)
        policy = self.config.forward_policy
        if policy == "random":
            self._rng.shuffle(ups)
        elif policy == "round_robin" and ups:
            k = self._turn % len(ups)
            self._turn += 1
            ups = ups[k:] + ups[:k]
        return [u for u in ups if not self.is_down(u)] + [u for u in ups if self.is_down(u)]

    def _failed(self, up: Upstream, why: str) -> None:
        name = str(up)
        failures = self.stats.failures
        failures[name] = failures.get(name, 0) + 1
        health = self._health[up]
        health.fails += 1
        limit = self.config.forward_max_fails
        if limit and health.fails >= limit and health.down_since is None and not self.closed:
            health.down_since = self.clock()
            log.warning("upstream %s is down after %d failures in a row (last: %s); asking "
                        "the others first and checking it every %g s", up, health.fails, why,
                        self.config.forward_health_check)
            health.probe = asyncio.create_task(self._probe(up), name=f"health-check {up}")

    def _answered(self, up: Upstream) -> None:
        health = self._health[up]
        health.fails = 0
        if health.down_since is not None:
            log.warning("upstream %s is back after %.1f s down", up,
                        self.clock() - health.down_since)
            health.down_since = None

    async def _probe(self, up: Upstream) -> None:
        """Ask a down upstream ``. IN NS`` until it answers anything."""
        name = str(up)
        while self.is_down(up):
            await asyncio.sleep(self.config.forward_health_check)
            try:
                await self._udp(up, (), _ROOT_NS, 1, do=False, cd=False,
                                timeout=self.config.forward_timeout)
            except (Failed, OSError, TimeoutError) as exc:
                probes = self.stats.probe_failures
                probes[name] = probes.get(name, 0) + 1
                log.debug("health check of %s failed: %s", up, exc)
                continue
            self._answered(up)

    # ------------------------------------------------------------------------ asking

    async def ask(self, up: Upstream, labels: Sequence[bytes], qtype: int, qclass: int, *,
                  do: bool, cd: bool, tcp: bool, timeout: float) -> wire.UpstreamReply:
        """One try at ``up``; raises ``Failed``. ``tcp``: the client asked over TCP."""
        name = str(up)
        stats = self.stats
        stats.requests[name] = stats.requests.get(name, 0) + 1
        start = time.perf_counter()
        deadline = start + timeout
        cfg = self.config
        try:
            reply = None
            if not (cfg.forward_force_tcp or (tcp and not cfg.forward_prefer_udp)):
                reply = await self._udp(up, labels, qtype, qclass, do=do, cd=cd,
                                        timeout=timeout)
            if reply is None or reply.truncated:
                reply = await self._tcp(up, labels, qtype, qclass, do=do, cd=cd,
                                        timeout=max(0.001, deadline - time.perf_counter()))
        except (OSError, TimeoutError, EOFError, wire.Malformed, Failed) as exc:
            why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self._failed(up, why)
            raise Failed(why) from None
        self._answered(up)
        seconds = time.perf_counter() - start
        rcode = reply.rcode_name
        stats.responses[(name, rcode)] = stats.responses.get((name, rcode), 0) + 1
        stats.durations.append((name, rcode, seconds))
        if self.observe is not None:
            self.observe(name, rcode, seconds)
        return reply

    async def _socket(self, up: Upstream) -> _UDPSocket:
        sock = self._sockets.get(up)
        now = self.clock()
        if sock is not None and (sock.closed or (not sock.waiting and self.config.forward_expire
                                                 and now - sock.used > self.config.forward_expire)):
            if sock.transport is not None:
                sock.transport.close()
            sock = None
        if sock is None:
            loop = asyncio.get_running_loop()
            _, sock = await loop.create_datagram_endpoint(_UDPSocket,
                                                          remote_addr=(up.host, up.port))
            self._sockets[up] = sock
        sock.used = now
        return sock

    async def _udp(self, up: Upstream, labels: Sequence[bytes], qtype: int, qclass: int, *,
                   do: bool, cd: bool, timeout: float) -> wire.UpstreamReply | None:
        """The matching UDP reply; None when it was malformed (retry over TCP)."""
        async with asyncio.timeout(timeout):
            sock = await self._socket(up)
            ident = self._rng.randrange(65536)
            for _ in range(8):  # an ID not in flight on this socket, if one comes quickly
                if ident not in sock.waiting:
                    break
                ident = self._rng.randrange(65536)
            done: asyncio.Future[wire.UpstreamReply | None] = (
                asyncio.get_running_loop().create_future())
            waiter = _Waiter(labels, qtype, qclass, done)
            sock.waiting.setdefault(ident, []).append(waiter)
            try:
                assert sock.transport is not None
                sock.transport.sendto(wire.upstream_query(labels, qtype, qclass, ident,
                                                          do=do, cd=cd))
                return await done
            finally:
                waiters = sock.waiting.get(ident, [])
                if waiter in waiters:
                    waiters.remove(waiter)
                if not waiters:
                    sock.waiting.pop(ident, None)

    async def _tcp(self, up: Upstream, labels: Sequence[bytes], qtype: int, qclass: int, *,
                   do: bool, cd: bool, timeout: float) -> wire.UpstreamReply:
        ident = self._rng.randrange(65536)
        packet = wire.upstream_query(labels, qtype, qclass, ident, do=do, cd=cd)
        async with asyncio.timeout(timeout):
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

    async def close(self) -> None:
        self.closed = True
        for health in self._health.values():
            health.down_since = None
            if health.probe is not None:
                health.probe.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await health.probe
        for sock in self._sockets.values():
            if sock.transport is not None:
                sock.transport.close()
        self._sockets.clear()
