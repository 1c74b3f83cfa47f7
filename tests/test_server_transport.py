"""§S4 Transport: the socket shell in clusterdns.server, over real loopback sockets.

The handler here is a tiny stand-in written with dnspython: it answers every name with
one A record, except a few magic names that raise, drop, or return oversized replies.
Clients are dnspython's blocking ``dns.query`` (run in a thread so the server's loop
keeps running) and raw non-blocking sockets for the framing edge cases.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rrset
import pytest

from clusterdns.server import MAX_TCP_INPUT, DNSServer, Handle, ServerOptions, Turns

BOOM = dns.name.from_text("boom.example.")
DROP = dns.name.from_text("drop.example.")
BIG = dns.name.from_text("big.example.")
HUGE = dns.name.from_text("huge.example.")

LOOPBACK = "127.0.0.1"
STEP = 2.0  # upper bound for any single network step


def _big_reply_tail() -> bytes:
    """A ~59 kB reply (one TXT record of 230 strings), minus its 2-byte ID."""
    query = dns.message.make_query(BIG, "TXT")
    reply = dns.message.make_response(query)
    strings = " ".join(['"' + "x" * 255 + '"'] * 230)
    reply.answer.append(dns.rrset.from_text(BIG, 30, "IN", "TXT", strings))
    return reply.to_wire()[2:]


BIG_TAIL = _big_reply_tail()


def answer(data: bytes, tcp: bool, peer: object = None) -> bytes | None:
    """A real (if tiny) DNS handler: one A record for every name but the magic ones."""
    query = dns.message.from_wire(data)
    name = query.question[0].name
    if name == BOOM:
        raise RuntimeError("handler exploded on purpose")
    if name == DROP:
        return None
    if name == BIG:
        return data[:2] + BIG_TAIL
    if name == HUGE:
        return data[:2] + bytes(70_000)
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text(name, 30, "IN", "A", "192.0.2.1"))
    return reply.to_wire()


def query(name: str | dns.name.Name, qid: int = 1) -> dns.message.Message:
    q = dns.message.make_query(name, "A")
    q.id = qid
    return q


def frame(name: str | dns.name.Name, qid: int) -> bytes:
    wire = query(name, qid).to_wire()
    return len(wire).to_bytes(2, "big") + wire


def assert_a_reply(reply: dns.message.Message, name: str, qid: int) -> None:
    assert reply.id == qid
    assert reply.question[0].name == dns.name.from_text(name)
    assert [rd.to_text() for rrset in reply.answer for rd in rrset] == ["192.0.2.1"]


def ipv6_loopback_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback")


async def udp_ask(q: dns.message.Message, port: int, host: str = LOOPBACK,
                  timeout: float = STEP) -> dns.message.Message:
    return await asyncio.to_thread(dns.query.udp, q, host, timeout=timeout, port=port)


async def tcp_ask(q: dns.message.Message, port: int, host: str = LOOPBACK) -> dns.message.Message:
    return await asyncio.to_thread(dns.query.tcp, q, host, timeout=STEP, port=port)


async def recv_exact(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = bytearray()
    async with asyncio.timeout(STEP):
        while len(data) < n:
            chunk = await loop.sock_recv(sock, n - len(data))
            if not chunk:
                raise ConnectionError(f"closed after {len(data)} of {n} bytes")
            data += chunk
    return bytes(data)


async def read_reply(sock: socket.socket) -> dns.message.Message:
    length = int.from_bytes(await recv_exact(sock, 2), "big")
    return dns.message.from_wire(await recv_exact(sock, length))


async def assert_closed_by_server(sock: socket.socket, within: float = STEP) -> None:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(within):
        try:
            data = await loop.sock_recv(sock, 1)
        except ConnectionResetError:
            return
    assert data == b""


async def eventually(condition: Callable[[], bool], within: float = STEP) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.01)


class Servers:
    def __init__(self) -> None:
        self.started: list[DNSServer] = []

    async def start(self, options: ServerOptions | None = None,
                    listen: Sequence[tuple[str, int]] = ((LOOPBACK, 0),),
                    handle: Handle = answer) -> DNSServer:
        server = DNSServer(handle, options or ServerOptions())
        self.started.append(server)
        async with asyncio.timeout(STEP):
            await server.start(listen)
        return server


class Clients:
    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []

    async def tcp(self, port: int, host: str = LOOPBACK,
                  rcvbuf: int | None = None) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        self.sockets.append(sock)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        async with asyncio.timeout(STEP):
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
        return sock


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    s = Servers()
    yield s
    for server in s.started:
        await asyncio.wait_for(server.stop(), 5)


@pytest.fixture
def clients() -> Iterator[Clients]:
    c = Clients()
    yield c
    for sock in c.sockets:
        sock.close()


async def send(sock: socket.socket, data: bytes) -> None:
    async with asyncio.timeout(STEP):
        await asyncio.get_running_loop().sock_sendall(sock, data)


# --- options and binding ---------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    {"tcp_idle_timeout": 0.0},
    {"tcp_max_connections": 0},
    {"tcp_queries_per_turn": 0},
    {"tcp_write_high_water": 0},
])
def test_server_options_reject_limits_that_would_disable_the_server(
        bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        ServerOptions(**bad)  # type: ignore[arg-type]


async def test_port_zero_gives_udp_and_tcp_the_same_port(servers: Servers) -> None:
    server = await servers.start()
    [(host, port)] = server.bound
    assert host == LOOPBACK
    assert port != 0
    assert_a_reply(await udp_ask(query("a.example."), port), "a.example.", 1)
    assert_a_reply(await tcp_ask(query("b.example.", 2), port), "b.example.", 2)
    assert (server.counters.udp_queries, server.counters.tcp_queries) == (1, 1)


async def test_start_fails_and_releases_udp_when_the_fixed_tcp_port_is_taken(
        servers: Servers) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind((LOOPBACK, 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        server = DNSServer(answer, ServerOptions())
        with pytest.raises(OSError) as raised:
            await server.start([(LOOPBACK, port)])
        assert raised.value.errno == errno.EADDRINUSE
        assert server.bound == []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((LOOPBACK, port))  # the server's UDP socket is gone again


async def test_start_rejects_a_host_that_is_not_an_ip_address() -> None:
    server = DNSServer(answer, ServerOptions())
    with pytest.raises(ValueError):
        await server.start([("localhost", 0)])


async def test_start_may_only_be_called_once(servers: Servers) -> None:
    server = await servers.start()
    with pytest.raises(RuntimeError):
        await server.start([(LOOPBACK, 0)])


@needs_ipv6
async def test_udp_and_tcp_answer_on_ipv4_and_ipv6_loopback_from_one_server(
        servers: Servers) -> None:
    server = await servers.start(listen=[(LOOPBACK, 0), ("::1", 0)])
    (v4, port4), (v6, port6) = server.bound
    assert (v4, v6) == (LOOPBACK, "::1")
    assert_a_reply(await udp_ask(query("v6.example."), port6, "::1"), "v6.example.", 1)
    assert_a_reply(await tcp_ask(query("v6.example."), port6, "::1"), "v6.example.", 1)
    assert_a_reply(await udp_ask(query("v4.example."), port4), "v4.example.", 1)


@needs_ipv6
async def test_ipv6_wildcard_shares_a_port_with_the_ipv4_wildcard(servers: Servers) -> None:
    v4 = await servers.start(listen=[("0.0.0.0", 0)])
    port = v4.bound[0][1]
    v6 = await servers.start(listen=[("::", port)])
    assert v6.bound == [("::", port)]
    await udp_ask(query("four.example."), port, LOOPBACK)
    await tcp_ask(query("six.example."), port, "::1")
    assert (v4.counters.udp_queries, v4.counters.tcp_queries) == (1, 0)
    assert (v6.counters.udp_queries, v6.counters.tcp_queries) == (0, 1)


# --- UDP ------------------------------------------------------------------------------


async def test_the_handler_is_given_the_clients_address_over_udp_and_tcp(
        servers: Servers) -> None:
    peers: list[tuple[bool, str]] = []

    def recording(data: bytes, tcp: bool, peer: object = None) -> bytes | None:
        assert isinstance(peer, tuple)
        peers.append((tcp, peer[0]))
        return answer(data, tcp)

    server = await servers.start(handle=recording)
    port = server.bound[0][1]
    q = query("who.example.")
    for tcp in (False, True):
        reply = await asyncio.to_thread(dns.query.tcp if tcp else dns.query.udp, q, LOOPBACK,
                                        timeout=STEP, port=port, source="127.0.0.9",
                                        source_port=0)
        assert_a_reply(reply, "who.example.", q.id)
    assert peers == [(False, "127.0.0.9"), (True, "127.0.0.9")]


async def test_udp_none_reply_sends_no_packet_and_counts_a_drop(servers: Servers) -> None:
    server = await servers.start()
    port = server.bound[0][1]
    with pytest.raises(dns.exception.Timeout):
        await udp_ask(query(DROP), port, timeout=0.3)
    assert server.counters.dropped == 1
    assert_a_reply(await udp_ask(query("after.example."), port), "after.example.", 1)


async def test_udp_handler_exception_is_logged_counted_and_the_server_keeps_answering(
        servers: Servers, caplog: pytest.LogCaptureFixture) -> None:
    server = await servers.start()
    port = server.bound[0][1]
    with caplog.at_level(logging.ERROR, logger="clusterdns.server"), \
            pytest.raises(dns.exception.Timeout):
        await udp_ask(query(BOOM), port, timeout=0.3)
    assert server.counters.handler_errors == 1
    assert any(r.exc_info and "exploded" in str(r.exc_info[1]) for r in caplog.records)
    assert_a_reply(await udp_ask(query("after.example."), port), "after.example.", 1)


# --- TCP framing ----------------------------------------------------------------------


async def test_tcp_answers_several_queries_one_after_another_on_one_connection(
        servers: Servers, clients: Clients) -> None:
    server = await servers.start()
    sock = await clients.tcp(server.bound[0][1])
    for qid in range(1, 4):
        await send(sock, frame(f"q{qid}.example.", qid))
        assert_a_reply(await read_reply(sock), f"q{qid}.example.", qid)
    assert server.counters.tcp_connections_open == 1


async def test_tcp_answers_two_pipelined_queries_sent_in_one_segment_in_order(
        servers: Servers, clients: Clients) -> None:
    server = await servers.start()
    sock = await clients.tcp(server.bound[0][1])
    await send(sock, frame("first.example.", 1) + frame("second.example.", 2))
    assert_a_reply(await read_reply(sock), "first.example.", 1)
    assert_a_reply(await read_reply(sock), "second.example.", 2)


async def test_tcp_answers_queries_split_byte_by_byte_across_segments(
        servers: Servers, clients: Clients) -> None:
    server = await servers.start()
    sock = await clients.tcp(server.bound[0][1])
    stream = frame("split.example.", 7) + frame("again.example.", 8)
    for i in range(len(stream)):
        await send(sock, stream[i:i + 1])
        await asyncio.sleep(0.002)  # with TCP_NODELAY: one byte per segment
    assert_a_reply(await read_reply(sock), "split.example.", 7)
    assert_a_reply(await read_reply(sock), "again.example.", 8)
    assert server.counters.tcp_queries == 2


async def test_tcp_yields_the_loop_after_the_pipelining_budget_and_still_answers_in_order(
        servers: Servers, clients: Clients) -> None:
    loop = asyncio.get_running_loop()
    turn = 0

    def tick() -> None:  # counts event-loop iterations while the test runs
        nonlocal turn
        turn += 1
        ticker[0] = loop.call_soon(tick)

    ticker = [loop.call_soon(tick)]
    turns_seen: list[int] = []

    def recording(data: bytes, tcp: bool, peer: object = None) -> bytes | None:
        turns_seen.append(turn)
        return answer(data, tcp)

    try:
        server = await servers.start(ServerOptions(tcp_queries_per_turn=2), handle=recording)
        sock = await clients.tcp(server.bound[0][1])
        await send(sock, b"".join(frame(f"p{i}.example.", i) for i in range(1, 8)))
        for i in range(1, 8):
            assert_a_reply(await read_reply(sock), f"p{i}.example.", i)
    finally:
        ticker[0].cancel()
    assert len(turns_seen) == 7
    assert len(set(turns_seen)) >= 4  # at most two queries per loop turn


class Waiting:
    """A stand-in connection for ``Turns``: ``left`` complete queries, answered on demand."""

    def __init__(self, name: int, left: int, log: list[tuple[int, int]], turns: Turns) -> None:
        self.name = name
        self.left = left
        self.in_line = False
        self.log = log  # (turn, connection) per answered query
        self.turns = turns

    def answer_some(self, limit: int) -> int:
        n = min(limit, self.left)
        self.left -= n
        self.log.extend([(self.turns.turns, self.name)] * n)
        return n

    def has_complete_query(self) -> bool:
        return self.left > 0

    def can_answer(self) -> bool:
        return True

    def update_reading(self) -> None:
        pass


async def test_the_fair_share_answers_at_most_the_budget_per_turn_in_round_robin() -> None:
    turns = Turns(64)
    log: list[tuple[int, int]] = []
    conns = [Waiting(i, 100, log, turns) for i in range(200)]
    for conn in conns:  # 200 connections with 100 pipelined queries each, in one turn
        turns.request(conn)
    async with asyncio.timeout(STEP):
        while any(c.left for c in conns):
            await asyncio.sleep(0)
    per_turn = Counter(turn for turn, _ in log)
    assert len(log) == 200 * 100
    assert max(per_turn.values()) == 64  # every turn used its budget, and no more
    assert turns.most == 64
    # Round robin: while every connection still has queries, answers per connection
    # differ by at most one share (1 with 200 in line) at the end of each turn; the first
    # connection answered inline before anyone was waiting, so it started one budget ahead.
    served = Counter[int]()
    for turn in sorted(per_turn):
        served.update(name for t, name in log if t == turn)
        waiting = [served[c.name] for c in conns[1:]]
        if min(waiting) < 100 and max(waiting) < 100:
            assert max(waiting) - min(waiting) <= 1, (turn, min(waiting), max(waiting))


async def test_many_pipelining_connections_share_one_budget_per_loop_turn(
        servers: Servers, clients: Clients) -> None:
    loop = asyncio.get_running_loop()
    turn = 0

    def tick() -> None:
        nonlocal turn
        turn += 1
        ticker[0] = loop.call_soon(tick)

    ticker = [loop.call_soon(tick)]
    seen: list[tuple[int, bool]] = []  # (loop turn, tcp) per answered query

    def recording(data: bytes, tcp: bool, peer: object = None) -> bytes | None:
        seen.append((turn, tcp))
        return answer(data, tcp)

    try:
        server = await servers.start(ServerOptions(tcp_queries_per_turn=8), handle=recording)
        port = server.bound[0][1]
        socks = [await clients.tcp(port) for _ in range(30)]
        for n, sock in enumerate(socks):  # 30 x 20 pipelined queries, nobody reading yet
            await send(sock, b"".join(frame(f"c{n}q{i}.example.", i) for i in range(20)))
        udp = await udp_ask(query("udp.example.", 99), port)  # still answered meanwhile
        assert_a_reply(udp, "udp.example.", 99)
        for n, sock in enumerate(socks):
            for i in range(20):
                assert_a_reply(await read_reply(sock), f"c{n}q{i}.example.", i)
    finally:
        ticker[0].cancel()
    tcp_turns = Counter(t for t, tcp in seen if tcp)
    assert sum(tcp_turns.values()) == 600
    assert max(tcp_turns.values()) <= 8
    assert server.turns.most <= 8


async def test_a_client_writing_without_reading_parks_at_most_one_message_in_the_server(
        servers: Servers, clients: Clients) -> None:
    loop = asyncio.get_running_loop()
    biggest = 0

    def watch() -> None:  # the bytes each connection holds, every loop turn
        nonlocal biggest
        for conn in server._connections:
            biggest = max(biggest, len(conn._buffer))
        ticker[0] = loop.call_soon(watch)

    server = await servers.start(ServerOptions(tcp_queries_per_turn=8))
    ticker = [loop.call_soon(watch)]
    try:
        sock = await clients.tcp(server.bound[0][1])
        batch = b"".join(frame(f"q{i}.example.", i) for i in range(1000))  # ~33 kB
        with contextlib.suppress(TimeoutError):  # until the kernel buffers are full
            async with asyncio.timeout(1.0):
                for _ in range(100):
                    await loop.sock_sendall(sock, batch)
        await asyncio.sleep(0.2)
        (conn,) = server._connections
        rcvbuf = conn.transport.get_extra_info("socket").getsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF)
    finally:
        ticker[0].cancel()
    assert 0 < biggest <= MAX_TCP_INPUT
    assert rcvbuf <= 2 * ServerOptions().tcp_socket_buffer  # the kernel doubles it


async def test_tcp_answers_queries_sent_before_the_client_half_closes(
        servers: Servers, clients: Clients) -> None:
    server = await servers.start()
    sock = await clients.tcp(server.bound[0][1])
    await send(sock, frame("one.example.", 1) + frame("two.example.", 2))
    sock.shutdown(socket.SHUT_WR)
    assert_a_reply(await read_reply(sock), "one.example.", 1)
    assert_a_reply(await read_reply(sock), "two.example.", 2)
    await assert_closed_by_server(sock)


async def test_tcp_zero_length_message_closes_the_connection_after_earlier_replies(
        servers: Servers, clients: Clients) -> None:
    server = await servers.start()
    sock = await clients.tcp(server.bound[0][1])
    await send(sock, frame("before.example.", 1) + b"\x00\x00" + frame("after.example.", 2))
    assert_a_reply(await read_reply(sock), "before.example.", 1)
    await assert_closed_by_server(sock)
    assert server.counters.tcp_queries == 1


async def test_tcp_reply_longer_than_65535_bytes_closes_the_connection(
        servers: Servers, clients: Clients) -> None:
    server = await servers.start()
    sock = await clients.tcp(server.bound[0][1])
    await send(sock, frame(HUGE, 1))
    await assert_closed_by_server(sock)
    assert server.counters.dropped == 1


async def test_tcp_handler_exception_and_none_reply_skip_only_that_query(
        servers: Servers, clients: Clients) -> None:
    server = await servers.start()
    sock = await clients.tcp(server.bound[0][1])
    await send(sock, frame("a.example.", 1) + frame(BOOM, 2) + frame(DROP, 3)
               + frame("d.example.", 4))
    assert_a_reply(await read_reply(sock), "a.example.", 1)
    assert_a_reply(await read_reply(sock), "d.example.", 4)
    assert (server.counters.handler_errors, server.counters.dropped) == (1, 1)
    assert_a_reply(await tcp_ask(query("fresh.example.", 5), server.bound[0][1]),
                   "fresh.example.", 5)


# --- TCP limits -----------------------------------------------------------------------


async def test_tcp_idle_timeout_closes_a_connection_that_sends_no_query(
        servers: Servers, clients: Clients) -> None:
    server = await servers.start(ServerOptions(tcp_idle_timeout=0.2))
    loop = asyncio.get_running_loop()
    began = loop.time()
    sock = await clients.tcp(server.bound[0][1])
    await send(sock, frame("partial.example.", 1)[:5])  # an incomplete query is not activity
    await assert_closed_by_server(sock, within=1.0)
    assert loop.time() - began >= 0.18
    await eventually(lambda: server.counters.tcp_connections_open == 0)


async def test_tcp_idle_timer_restarts_with_each_complete_query(
        servers: Servers, clients: Clients) -> None:
    server = await servers.start(ServerOptions(tcp_idle_timeout=0.3))
    sock = await clients.tcp(server.bound[0][1])
    for qid in range(1, 5):  # 0.6 s in all, never 0.3 s without a query
        await asyncio.sleep(0.15)
        await send(sock, frame("keep.example.", qid))
        assert_a_reply(await read_reply(sock), "keep.example.", qid)
    await assert_closed_by_server(sock, within=1.0)


async def test_tcp_connection_cap_refuses_the_extra_connection(
        servers: Servers, clients: Clients) -> None:
    server = await servers.start(ServerOptions(tcp_max_connections=1))
    port = server.bound[0][1]
    first = await clients.tcp(port)
    await send(first, frame("first.example.", 1))
    assert_a_reply(await read_reply(first), "first.example.", 1)

    extra = await clients.tcp(port)
    await assert_closed_by_server(extra)
    assert server.counters.tcp_connections_refused == 1
    await send(first, frame("still.example.", 2))
    assert_a_reply(await read_reply(first), "still.example.", 2)

    first.close()
    await eventually(lambda: server.counters.tcp_connections_open == 0)
    later = await clients.tcp(port)
    await send(later, frame("later.example.", 3))
    assert_a_reply(await read_reply(later), "later.example.", 3)


async def test_tcp_client_that_never_reads_stops_being_read_until_it_catches_up(
        servers: Servers, clients: Clients) -> None:
    server = await servers.start(ServerOptions(tcp_write_high_water=16 * 1024))
    count = 300  # ~18 MB of replies: far more than the kernel buffers will take
    sock = await clients.tcp(server.bound[0][1], rcvbuf=4096)
    await send(sock, b"".join(frame(BIG, i) for i in range(count)))
    await asyncio.sleep(0.3)
    stalled_at = server.counters.tcp_queries
    assert 0 < stalled_at < count
    await asyncio.sleep(0.2)
    assert server.counters.tcp_queries == stalled_at

    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    for i in range(count):
        length = int.from_bytes(await recv_exact(sock, 2), "big")
        body = await recv_exact(sock, length)
        assert (int.from_bytes(body[:2], "big"), body[2:]) == (i, BIG_TAIL)
    assert server.counters.tcp_queries == count


async def test_stop_closes_open_tcp_connections_and_the_listeners(
        servers: Servers, clients: Clients) -> None:
    server = await servers.start()
    port = server.bound[0][1]
    socks = [await clients.tcp(port) for _ in range(2)]
    for qid, sock in enumerate(socks, 1):
        await send(sock, frame("open.example.", qid))
        assert_a_reply(await read_reply(sock), "open.example.", qid)
    assert server.counters.tcp_connections_open == 2

    await asyncio.wait_for(server.stop(), STEP)
    for sock in socks:
        await assert_closed_by_server(sock)
    assert server.counters.tcp_connections_open == 0
    assert server.bound == []
    with pytest.raises(ConnectionRefusedError):
        await clients.tcp(port)
