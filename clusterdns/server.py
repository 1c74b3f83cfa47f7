"""The socket shell: UDP and TCP listeners around a bytes-in, bytes-out handler.

This module exists so that no DNS logic ever touches a socket and no socket detail ever
reaches the DNS logic. It knows framing (one datagram per message on UDP, RFC 7766
2-byte length prefixes on TCP), binding (UDP and TCP on the same address and port), and
the limits that keep a hostile or broken client from hurting everyone else: a TCP idle
timeout, a connection cap, a budget of TCP queries per loop turn shared fairly by every
connection (``Turns``), and write back-pressure. What a
message means is the handler's business; the handler must be fast and must not block,
because it runs inline on the event loop. When an answer needs I/O (a forwarded name),
the handler returns an awaitable instead of bytes; the server runs it as a task and sends
its reply when it is done (TCP replies may then leave out of order, RFC 7766 §6.2.1.1).
An optional observer sees every query with its reply, transport, peer and start time:
metrics and the query log hang there. An optional transfer function sees each TCP query
the fast path did not answer, with the client's address: for a zone transfer it returns
the reply, or a stream of messages, which the connection writes one per loop turn as the
client reads them (``_TCPConnection._stream``), answering nothing else on that
connection meanwhile. An optional fast function is tried before all of
that: given the query bytes and the listener's slot (transport and address family, see
``fastpath``), it returns a finished reply or None; a reply it gives is sent at once,
without the handler and without the observer (it counts itself).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from clusterdns.binding import bind_or_explain

log = logging.getLogger(__name__)

Reply = bytes | None
Handle = Callable[[bytes, bool, Any], Reply | Awaitable[Reply]]
"""(query bytes, is_tcp, the client's address as the socket gives it) -> reply bytes,
None to send nothing, or an awaitable of either."""
Observe = Callable[[bytes, Reply, bool, Any, float], None]
"""(query, reply or None, is_tcp, peer address, time.perf_counter() at receipt)."""
Fast = Callable[[bytes, int, Any], bytes | None]
"""(query bytes, slot: 0 UDP/IPv4, 1 UDP/IPv6, 2 TCP/IPv4, 3 TCP/IPv6, the client's
address) -> reply or None."""


class Stream(Protocol):
    """Many messages answering one query (a zone transfer, ``transfer.Transfer``): each
    ``next`` makes one, or returns ``b""`` (nothing yet: let other work run); ``finish``
    must be called once it ends, complete or not."""

    def __iter__(self) -> Iterator[bytes]: ...

    def __next__(self) -> bytes: ...

    def finish(self, complete: bool) -> None: ...


TransferHook = Callable[[bytes, Any], bytes | Stream | None]
"""(TCP query bytes, peer address) -> the reply, a stream of replies, or None: not a
transfer, ask the handler."""

MAX_TCP_MESSAGE = 65535
_BIND_ATTEMPTS = 5


@dataclass(frozen=True)
class ServerOptions:
    tcp_idle_timeout: float = 10.0
    """Close a TCP connection after this many seconds without a complete query."""
    tcp_max_connections: int = 1000
    """Connections accepted beyond this many open ones are closed at once."""
    tcp_queries_per_turn: int = 64
    """TCP queries answered per event-loop turn across all connections together; past
    that, connections with queries waiting take turns (round robin, a fair share each),
    so pipelining clients cannot keep UDP queries waiting."""
    tcp_write_high_water: int = 64 * 1024
    """Unsent reply bytes on a connection above which we stop reading its queries."""
    tcp_socket_buffer: int = 64 * 1024
    """SO_RCVBUF and SO_SNDBUF of TCP connections (the kernel doubles them): what a client
    that writes without reading can park in the kernel on our side. DNS over TCP needs
    no more than a message or two in flight; autotuned buffers grow to megabytes."""
    tcp_backlog: int = 511
    stop_grace: float = 1.0
    """Seconds stop() lets TCP connections flush replies already written before aborting."""
    reuse_port: bool = False
    """Set SO_REUSEPORT on the DNS sockets, so that several worker processes can bind the
    same address and the kernel spreads datagrams and connections over them (--workers).
    Off by default: a second server on a taken port must fail, not silently share it."""

    def __post_init__(self) -> None:
        if self.tcp_idle_timeout <= 0:
            raise ValueError("tcp_idle_timeout must be positive")
        for name in ("tcp_max_connections", "tcp_queries_per_turn", "tcp_write_high_water"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


@dataclass(slots=True)
class ServerCounters:
    """Plain counters, read by the metrics exporter."""

    udp_queries: int = 0
    tcp_queries: int = 0
    tcp_connections_open: int = 0
    tcp_connections_refused: int = 0
    dropped: int = 0
    """Queries that got no reply: the handler returned None or the reply could not be sent."""
    handler_errors: int = 0


class DNSServer:
    """UDP and TCP listeners on one or more addresses, all feeding one handler."""

    def __init__(self, handle: Handle, options: ServerOptions,
                 observe: Observe | None = None, fast: Fast | None = None,
                 transfer: TransferHook | None = None) -> None:
        self.handle = handle
        self.options = options
        self.observe = observe
        self.fast = fast
        self.transfer = transfer
        self._deferred: set[asyncio.Task[Reply]] = set()
        self.counters = ServerCounters()
        self.bound: list[tuple[str, int]] = []
        self._started = False
        self._stopping = False
        self._udp: list[tuple[asyncio.DatagramTransport, _UDPProtocol]] = []
        self._tcp_servers: list[asyncio.Server] = []
        self._connections: set[_TCPConnection] = set()
        self.turns = Turns(options.tcp_queries_per_turn)

    async def start(self, listen: Sequence[tuple[str, int]]) -> None:
        """Bind UDP and TCP on every (IP literal, port); port 0 picks one free port for both.

        Raises OSError (``BindError`` naming the address and protocol when one cannot be
        bound; ValueError for a host that is not an IP literal) with nothing left bound.
        """
        if self._started:
            raise RuntimeError("DNSServer.start() may only be called once")
        self._started = True
        loop = asyncio.get_running_loop()
        try:
            for host, port in listen:
                udp_sock, tcp_sock = _bind_pair(host, port, self.options.reuse_port,
                                                self.options.tcp_socket_buffer)
                try:
                    udp = await loop.create_datagram_endpoint(
                        lambda: _UDPProtocol(self), sock=udp_sock)
                except BaseException:
                    udp_sock.close()
                    tcp_sock.close()
                    raise
                self._udp.append(udp)  # from here on stop() owns the UDP socket
                try:
                    tcp = await loop.create_server(
                        lambda: _TCPConnection(self), sock=tcp_sock,
                        backlog=self.options.tcp_backlog)
                except BaseException:
                    tcp_sock.close()
                    raise
                self._tcp_servers.append(tcp)
                name = udp_sock.getsockname()
                self.bound.append((name[0], name[1]))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Close the listeners and every open TCP connection, and wait until they are gone.

        Connections get ``stop_grace`` seconds to flush replies already written, then
        they are aborted. Safe to call more than once.
        """
        self._stopping = True
        for task in list(self._deferred):
            task.cancel()
        for server in self._tcp_servers:
            server.close()
        for transport, _ in self._udp:
            transport.close()
        connections = list(self._connections)
        for conn in connections:
            conn.transport.close()
        if connections:
            await asyncio.wait([c.closed for c in connections], timeout=self.options.stop_grace)
            for conn in connections:
                if not conn.closed.done():
                    conn.transport.abort()
            await asyncio.wait([c.closed for c in connections])
        for server in self._tcp_servers:
            await server.wait_closed()
        for _, protocol in self._udp:
            await protocol.closed
        self._tcp_servers.clear()
        self._udp.clear()
        self.bound.clear()

    def _admit(self, conn: _TCPConnection) -> bool:
        counters = self.counters
        if self._stopping or counters.tcp_connections_open >= self.options.tcp_max_connections:
            counters.tcp_connections_refused += 1
            return False
        counters.tcp_connections_open += 1
        self._connections.add(conn)
        return True

    def _release(self, conn: _TCPConnection) -> None:
        self.counters.tcp_connections_open -= 1
        self._connections.discard(conn)

    def defer(self, pending: Awaitable[Reply], done: Callable[[Reply], None]) -> None:
        """Run a handler's awaitable reply; ``done`` gets its bytes (None on failure)."""
        task: asyncio.Task[Reply] = asyncio.ensure_future(pending)
        self._deferred.add(task)

        def finished(t: asyncio.Task[Reply]) -> None:
            self._deferred.discard(t)
            if t.cancelled():
                return
            exc = t.exception()
            if exc is not None:
                self.counters.handler_errors += 1
                log.error("deferred answer failed: %r; dropping the query", exc)
                done(None)
                return
            done(t.result())

        task.add_done_callback(finished)


def _bind_pair(host: str, port: int, reuse_port: bool = False,
               socket_buffer: int = 0) -> tuple[socket.socket, socket.socket]:
    """A bound UDP socket and a bound TCP socket on the same address and port.

    With port 0 the kernel picks the UDP port and TCP binds the same number; if that
    number is taken for TCP, try again with a fresh one a few times. ``reuse_port`` sets
    SO_REUSEPORT on both (every socket sharing the port must set it, same user).
    """
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    attempts_left = _BIND_ATTEMPTS if port == 0 else 1
    while True:
        attempts_left -= 1
        udp = _bound_socket(family, socket.SOCK_DGRAM, host, port, reuse_port)
        chosen: int = udp.getsockname()[1]
        try:
            tcp = _bound_socket(family, socket.SOCK_STREAM, host, chosen, reuse_port,
                                socket_buffer)
        except BaseException as exc:
            udp.close()
            if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE and attempts_left:
                log.debug("TCP port %d on %s is taken; picking another port", chosen, host)
                continue
            raise
        return udp, tcp


def _bound_socket(
    family: socket.AddressFamily, kind: socket.SocketKind, host: str, port: int,
    reuse_port: bool = False, socket_buffer: int = 0,
) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        sock.setblocking(False)
        if family == socket.AF_INET6:
            # Let `::` and `0.0.0.0` share a port instead of `::` claiming IPv4 as well.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if socket_buffer:  # accepted connections inherit them from the listener
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, socket_buffer)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, socket_buffer)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        bind_or_explain(sock, host, port, "DNS", "--listen")
    except BaseException:
        sock.close()
        raise
    return sock


def _is_ipv6(transport: asyncio.BaseTransport) -> bool:
    sock = transport.get_extra_info("socket")
    return sock is not None and sock.family == socket.AF_INET6


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DNSServer) -> None:
        self._server = server
        self._handle = server.handle
        self._observe = server.observe
        self._fast = server.fast
        self._slot = 0
        self._counters = server.counters
        self._transport: asyncio.DatagramTransport
        self._sendto: Callable[[bytes, Any], None]
        self._write_paused = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        self._sendto = self._transport.sendto
        self._slot = 1 if _is_ipv6(transport) else 0

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        counters = self._counters
        counters.udp_queries += 1
        fast = self._fast
        if fast is not None and not self._write_paused:
            hit = fast(data, self._slot, addr)
            if hit is not None:
                self._sendto(hit, addr)
                return
        start = time.perf_counter() if self._observe is not None else 0.0
        try:
            reply = self._handle(data, False, addr)
        except Exception:
            counters.handler_errors += 1
            log.exception("handler raised on a UDP query from %s; dropping it", addr[0])
            return
        if reply is None or isinstance(reply, bytes):
            self._send(data, reply, addr, start)
        else:
            self._server.defer(reply, lambda r: self._send(data, r, addr, start))

    def _send(self, data: bytes, reply: Reply, addr: tuple[str | int, ...],
              start: float) -> None:
        if self._observe is not None:
            self._observe(data, reply, False, addr, start)
        if reply is None or self._write_paused or self._transport.is_closing():
            # While paused the socket buffer is full and asyncio would queue without bound.
            self._counters.dropped += 1
            return
        self._transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable and the like) about earlier replies: nothing to do.
        log.debug("UDP error ignored: %s", exc)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set_result(None)


class Turnable(Protocol):
    """What ``Turns`` needs of a connection (``_TCPConnection``; tests use stand-ins)."""

    in_line: bool

    def answer_some(self, limit: int) -> int: ...

    def has_complete_query(self) -> bool: ...

    def can_answer(self) -> bool: ...

    def update_reading(self) -> None: ...


class Turns:
    """The fair share: at most ``budget`` TCP queries answered per event-loop turn, over
    every connection together.

    A connection with complete queries asks for its turn (``request``). While nobody is
    waiting and this turn's budget lasts, it answers at once; otherwise it joins the line
    and stops reading. Once per loop turn (a ``call_soon`` callback, which runs before
    that turn's I/O callbacks) the budget is renewed and split between the connections
    in line, in order, each getting an equal share (at least one query); those with more
    to answer go to the back. UDP datagrams are read between turns, so however many
    connections pipeline, a UDP query waits for at most one turn of TCP work.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.spent = 0  # queries answered in the current turn
        self.line: deque[Turnable] = deque()
        self._armed = False
        self.turns = 0  # turns taken (for tests)
        self.most = 0  # the most queries any turn answered (for tests)

    def request(self, conn: Turnable) -> None:
        if conn.in_line:
            return
        if not self.line and self.spent < self.budget:
            self.spent += conn.answer_some(self.budget - self.spent)
            self.most = max(self.most, self.spent)
            self._arm()
            if not conn.has_complete_query():
                conn.update_reading()
                return
        conn.in_line = True
        self.line.append(conn)
        conn.update_reading()
        self._arm()

    def forget(self, conn: Turnable) -> None:
        if conn.in_line:
            conn.in_line = False
            self.line.remove(conn)

    def _arm(self) -> None:
        if not self._armed:
            self._armed = True
            asyncio.get_running_loop().call_soon(self._turn)

    def _turn(self) -> None:
        self._armed = False
        self.turns += 1
        budget = self.budget
        line = self.line
        share = max(1, budget // len(line)) if line else 0
        spent = 0
        for _ in range(len(line)):
            if spent >= budget:
                break
            conn = line.popleft()
            conn.in_line = False
            spent += conn.answer_some(min(share, budget - spent))
            if conn.has_complete_query() and conn.can_answer():
                conn.in_line = True
                line.append(conn)
            else:
                conn.update_reading()
        self.spent = spent
        self.most = max(self.most, spent)
        if line or spent:
            self._arm()  # the next turn renews the budget (and serves the line)


MAX_TCP_INPUT = 2 + MAX_TCP_MESSAGE
"""Bytes read from a TCP connection and not yet answered: one whole message of the
largest size. Reads never take more (``get_buffer``); a connection whose buffer holds
complete queries waits for its turn without reading."""
_READ_SCRATCH = memoryview(bytearray(MAX_TCP_INPUT))
"""Where every connection's reads land first (one at a time, on the loop's thread)."""


class _TCPConnection(asyncio.BufferedProtocol):
    """One RFC 7766 connection: length-prefixed queries in, replies out in the same order.

    Reading stops while unsent replies exceed the high-water mark (the client is not
    reading them) or while complete queries wait in line for their turn (``Turns``).
    At most ``MAX_TCP_INPUT`` bytes are held per connection: each read is given only the
    room left.
    """

    def __init__(self, server: DNSServer) -> None:
        self.server = server
        self.transport: asyncio.Transport
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.in_line = False
        self._stream: asyncio.Task[None] | None = None  # a transfer being written
        self._drained: asyncio.Future[None] | None = None  # set when writing may go on
        self._peer: Any = None  # the client's address, read once when accepted
        self._buffer = bytearray()
        self._accepted = False
        self._eof = False
        self._write_paused = False
        self._reading_paused = False
        self._idle_timer: asyncio.TimerHandle | None = None
        self._last_query = 0.0
        self._slot = 2

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tr = self.transport = cast(asyncio.Transport, transport)
        server = self.server
        if not server._admit(self):
            log.debug("refusing TCP connection from %s: %d open",
                      tr.get_extra_info("peername"), server.counters.tcp_connections_open)
            tr.abort()
            return
        self._accepted = True
        self._slot = 3 if _is_ipv6(tr) else 2
        self._peer = tr.get_extra_info("peername")
        tr.set_write_buffer_limits(high=server.options.tcp_write_high_water)
        loop = asyncio.get_running_loop()
        self._last_query = loop.time()
        self._idle_timer = loop.call_later(server.options.tcp_idle_timeout, self._check_idle)

    def get_buffer(self, sizehint: int) -> memoryview:
        # At least one byte: an empty buffer would be a fatal error for the transport
        # (and the buffer is full only while complete queries wait, with reading paused).
        return _READ_SCRATCH[:max(1, MAX_TCP_INPUT - len(self._buffer))]

    def buffer_updated(self, nbytes: int) -> None:
        self._buffer += _READ_SCRATCH[:nbytes]
        self._ready()

    def eof_received(self) -> bool:
        # Keep the write side open: queries already received still get their replies.
        self._eof = True
        self._ready()
        return True

    def pause_writing(self) -> None:
        self._write_paused = True
        self.update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake()
        self._ready()

    def _wake(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._accepted:
            self.server._release(self)
        self.server.turns.forget(self)
        self._wake()
        if self._stream is not None:
            self._stream.cancel()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._buffer.clear()
        self.closed.set_result(None)

    def _ready(self) -> None:
        """Something changed: ask for a turn if there is a query to answer, close after
        a half-close once everything is answered."""
        if self.in_line or self.transport.is_closing():
            return
        if self._stream is not None:  # later queries wait for the transfer to end
            self.update_reading()
            return
        if self.has_complete_query() and self.can_answer():
            self.server.turns.request(self)
        elif self._eof and not self._write_paused:
            self.transport.close()
        else:
            self.update_reading()

    def can_answer(self) -> bool:
        return (not self._write_paused and self._stream is None
                and not self.transport.is_closing())

    def has_complete_query(self) -> bool:
        """A whole message (or a zero length, which ends the connection) is buffered."""
        buf = self._buffer
        return len(buf) >= 2 and len(buf) >= 2 + (buf[0] << 8 | buf[1])

    def answer_some(self, limit: int) -> int:
        """Answer up to ``limit`` complete queries from the buffer; how many it answered."""
        tr = self.transport
        buf = self._buffer
        start = answered = 0
        while answered < limit and not self._write_paused and not tr.is_closing() \
                and self._stream is None and len(buf) - start >= 2:
            length = buf[start] << 8 | buf[start + 1]
            if length == 0:
                log.debug("zero-length TCP message; closing the connection")
                tr.close()
                break
            end = start + 2 + length
            if len(buf) < end:
                break
            query = bytes(buf[start + 2:end])
            start = end
            answered += 1
            self._answer(query)
        del buf[:start]
        if self._eof and not self.has_complete_query() and not self._write_paused \
                and self._stream is None:
            tr.close()
        return answered

    def _answer(self, query: bytes) -> None:
        server = self.server
        server.counters.tcp_queries += 1
        self._last_query = asyncio.get_running_loop().time()
        if server.fast is not None:
            # answer_some checked the connection is open and not paused for writing.
            hit = server.fast(query, self._slot, self._peer)
            if hit is not None:
                self.transport.write(len(hit).to_bytes(2, "big") + hit)
                return
        start = time.perf_counter() if server.observe is not None else 0.0
        if server.transfer is not None:
            out = server.transfer(query, self._peer)
            if out is not None:
                if isinstance(out, bytes):
                    self._send(query, out, start)
                else:
                    self._stream = asyncio.ensure_future(self._write_stream(query, out, start))
                    self.update_reading()
                return
        try:
            reply = server.handle(query, True, self._peer)
        except Exception:
            server.counters.handler_errors += 1
            log.exception("handler raised on a TCP query from %s; dropping it", self._peer)
            return
        if reply is None or isinstance(reply, bytes):
            self._send(query, reply, start)
        else:
            server.defer(reply, lambda r: self._send(query, r, start))

    def _send(self, query: bytes, reply: Reply, start: float) -> None:
        counters = self.server.counters
        if self.server.observe is not None:
            self.server.observe(query, reply, True, self._peer, start)
        if reply is None or self.transport.is_closing():
            counters.dropped += 1
            return
        if len(reply) > MAX_TCP_MESSAGE:
            counters.dropped += 1
            log.error("reply of %d bytes does not fit TCP framing; closing the connection",
                      len(reply))
            self.transport.close()
            return
        self.transport.write(len(reply).to_bytes(2, "big") + reply)

    async def _write_stream(self, query: bytes, stream: Stream, start: float) -> None:
        """Write a transfer's messages, giving the loop a turn after each and whenever
        the stream says so (``b""``), so that UDP and the other connections are served
        meanwhile; wait while the client is not reading (more than the high-water mark
        unsent); stop when the connection closes. Each message written counts as
        activity for the idle timeout."""
        server, tr = self.server, self.transport
        loop = asyncio.get_running_loop()
        complete = False
        observe = server.observe
        try:
            for message in stream:
                if tr.is_closing():
                    break
                if not message:
                    await asyncio.sleep(0)
                    continue
                if observe is not None:
                    observe(query, message, True, self._peer, start)
                    observe = None
                if len(message) > MAX_TCP_MESSAGE:
                    raise ValueError(f"a transfer message of {len(message)} bytes")
                tr.write(len(message).to_bytes(2, "big") + message)
                self._last_query = loop.time()
                if self._write_paused:
                    self._drained = loop.create_future()
                    await self._drained
                    self._drained = None
                else:
                    await asyncio.sleep(0)
            else:
                complete = not tr.is_closing()
        except Exception:
            server.counters.handler_errors += 1
            log.exception("zone transfer to %s failed; closing the connection", self._peer)
            tr.close()
        finally:
            stream.finish(complete)
            self._stream = None
        self._ready()

    def update_reading(self) -> None:
        tr = self.transport
        if self._eof or tr.is_closing():
            return
        want_paused = (self._write_paused or self.in_line
                       or (self._stream is not None and self.has_complete_query()))
        if want_paused != self._reading_paused:
            if want_paused:
                tr.pause_reading()
            else:
                tr.resume_reading()
            self._reading_paused = want_paused

    def _check_idle(self) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.server.options.tcp_idle_timeout
        idle_for = loop.time() - self._last_query
        if idle_for < timeout:
            self._idle_timer = loop.call_later(timeout - idle_for, self._check_idle)
            return
        self._idle_timer = None
        log.debug("closing TCP connection idle for %.1f s", idle_for)
        # abort, not close: unsent replies after this long mean the client is not reading.
        self.transport.abort()
