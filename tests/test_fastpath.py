"""The fast path (clusterdns.fastpath): stored replies mean exactly what the full path says.

The first part is pure: a handler with the fast path and one without answer a large
deterministic set of generated queries over the demo snapshot (every name in it and
names below them, out-of-zone names, many types, letter case, EDNS payload sizes and
the DO bit, TCP and UDP, RD/CD/AD bits, other classes); each query is answered once by
the full path (which stores it) and then again from the store, and the stored reply
must be byte for byte the full path's, ID included; for a round-robin RRset it must be
one of the full path's rotations, byte for byte. The second part runs real servers on
loopback: hits over UDP and TCP, invalidation by a new snapshot, rotation, 0x20 case,
truncation and the /metrics counters.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from test_s6_operations import HTTP_ON, scrape, value

from clusterdns import resolve as resolver
from clusterdns import wire
from clusterdns.config import Config, ListenAddr, PodsMode, SourceSpec
from clusterdns.fastpath import TCP4, UDP4, ReplyCache, plain_query
from clusterdns.handler import Handler
from clusterdns.snapshot import Snapshot, SnapshotRef, unsynced
from clusterdns.source.dump import load_files
from conftest import DEMO_CLUSTER, EXTRA_CLUSTER, RunningServer, addresses

SERVER_MAX = 1232
HEADLESS = "httpenv-headless.default.svc.cluster.local"
WEB = "web.default.svc.cluster.local"
BIG = "big.team-a.svc.cluster.local"  # headless, too many addresses for 512 bytes
QTYPES = (1, 28, 33, 12, 16, 2, 6, 5, 255, 15, 13, 65, 99)  # ... MX HINFO HTTPS SPF
# (AXFR and IXFR are never stored: test_zone_transfer_queries_are_never_stored)


# ----------------------------------------------------------------------------- helpers


def _config() -> Config:
    return Config(zones=("cluster.local", "in-addr.arpa", "ip6.arpa"),
                  source=SourceSpec("file", (DEMO_CLUSTER, EXTRA_CLUSTER)),
                  listen=(ListenAddr("127.0.0.1", 0),), pods=PodsMode.INSECURE)


@pytest.fixture(scope="module")
def ref() -> SnapshotRef:
    config = _config()
    ref = SnapshotRef(unsynced(config))
    ref.publish_cluster(load_files(config.source.paths).cluster, config)
    return ref


def wire_name(name: str) -> bytes:
    labels = [label.encode() for label in name.split(".") if label]
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"


def make_query(name: str, qtype: int, *, ident: int = 0x1234, flags: int = 0x0100,
               qclass: int = 1, payload: int | None = None, do: bool = False,
               options: bytes = b"") -> bytes:
    """A query built byte by byte; ``payload`` None means no OPT record."""
    ar = 0 if payload is None else 1
    out = struct.pack("!HHHHHH", ident, flags, 1, 0, 0, ar)
    out += wire_name(name) + struct.pack("!HH", qtype, qclass)
    if payload is not None:
        out += b"\x00" + struct.pack("!HHIH", 41, payload, 0x8000 if do else 0, len(options))
        out += options
    return out


def respell(name: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in name)


def rotations_of(snap: Snapshot, data: bytes, tcp: bool) -> set[bytes] | None:
    """Every rotation the full path can give for ``data`` (without ID), or None if the
    answer does not rotate."""
    query = wire.parse(data)
    if query.qclass not in (1, 255) or query.qtype in (41, 249, 250, 253, 254):
        return None
    decision = resolver.resolve(snap, query.qname, query.qtype, 0)
    if decision.outcome is not resolver.Outcome.SUCCESS or query.qtype not in (1, 28):
        return None
    n = sum(1 for r in decision.answer if r.rtype == query.qtype)
    if n < 2:
        return None
    limit = wire.TCP_MAX if tcp else query.udp_limit(SERVER_MAX)
    bodies = {wire.encode(query, resolver.resolve(snap, query.qname, query.qtype, k),
                          limit, SERVER_MAX)[2:] for k in range(n)}
    return bodies if len(bodies) > 1 else None  # truncated: the RRset is not there


def generated_queries() -> Iterator[tuple[bytes, bool]]:
    """(query bytes, over TCP) for every name x type, in many shapes; deterministic."""
    config = _config()
    snap = SnapshotRef(unsynced(config))
    snap.publish_cluster(load_files(config.source.paths).cluster, config)
    names = sorted(snap.get().nodes)
    names += [f"nope.{n}" for n in names[::3]]
    names += ["10-244-1-5.default.pod.cluster.local", "10-244-1-5.nope.pod.cluster.local",
              "example.com", "", "a.b.c.d.e.web.default.svc.cluster.local"]
    nodes = snap.get().nodes
    rng = random.Random(5)
    for name in names:
        for qtype in QTYPES if not name.startswith("nope.") else (1, 28, 33, 16):
            n = len(nodes.get(name, {}).get(qtype, ()))  # type: ignore[call-overload]
            for _ in range(12 if 1 < n <= 10 else 1):  # more shapes for small RR sets
                spelled = respell(name, rng) if rng.random() < 0.5 else name
                payload = rng.choice([None, None, 512, 600, 1232, 4096, 65535])
                flags = rng.choice([0x0000, 0x0100, 0x0110, 0x0010, 0x0120])
                qclass = 1 if rng.random() < 0.9 else rng.choice([3, 255])
                yield (make_query(spelled, qtype, ident=rng.randrange(65536), flags=flags,
                                  qclass=qclass, payload=payload, do=rng.random() < 0.3),
                       rng.random() < 0.3)


# ----------------------------------------------------------------------------- pure


def test_fast_and_full_path_agree_byte_for_byte_on_every_generated_query(
        ref: SnapshotRef) -> None:
    full = Handler(ref, SERVER_MAX, fast=False)
    fast = Handler(ref, SERVER_MAX)
    assert fast.fast is not None
    snap = ref.get()
    checked = rotating = 0
    for data, tcp in generated_queries():
        expected = full.handle(data, tcp)
        assert isinstance(expected, bytes)
        slot = TCP4 if tcp else UDP4
        first = fast.fast.lookup(data, slot) or fast.handle(data, tcp)
        again = bytes([data[0] ^ 0xFF]) + data[1:]  # same query, another ID
        rotations = rotations_of(snap, data, tcp)
        for _ in range(len(rotations or ()) + 1):
            hit = fast.fast.lookup(again, slot)
            if hit is not None:
                break
            fast.handle(again, tcp)  # fills the rotation the entry is missing
        assert plain_query(data)
        assert hit is not None, (data, tcp)
        assert hit[:2] == again[:2]
        assert isinstance(first, bytes) and first[:2] == data[:2]
        if rotations is None:
            assert first[2:] == expected[2:] == hit[2:], (data, tcp)
        else:
            rotating += 1
            assert {expected[2:], first[2:], hit[2:]} <= rotations, (data, tcp)
        checked += 1
    assert checked > 4000
    assert rotating > 40


def test_a_new_snapshot_starts_a_fresh_cache(ref: SnapshotRef) -> None:
    config = _config()
    mine = SnapshotRef(unsynced(config))
    handler = Handler(mine, SERVER_MAX)
    assert handler.fast is not None
    query = make_query(WEB, 1, payload=1232)
    before = handler.handle(query, False)
    assert isinstance(before, bytes) and before[3] & 0x0F == 2  # SERVFAIL, not synced
    assert handler.fast.lookup(query, UDP4) == before
    mine.publish_cluster(load_files(config.source.paths).cluster, config)
    assert handler.fast.lookup(query, UDP4) is None
    after = handler.handle(query, False)
    assert isinstance(after, bytes) and after[3] & 0x0F == 0
    assert handler.fast.lookup(query, UDP4) == after


def test_changing_the_udp_size_or_the_forwarder_forgets_stored_replies(
        ref: SnapshotRef) -> None:
    handler = Handler(ref, SERVER_MAX)
    assert handler.fast is not None
    query = make_query(WEB, 1, payload=4096)
    handler.handle(query, False)
    assert handler.fast.lookup(query, UDP4) is not None
    handler.max_udp_size = 4096
    assert handler.fast.lookup(query, UDP4) is None
    reply = handler.handle(query, False)
    assert isinstance(reply, bytes) and reply == handler.fast.lookup(query, UDP4)
    assert dns.message.from_wire(reply).payload == 4096
    handler.forwarder = None
    assert handler.fast.lookup(query, UDP4) is None


def test_queries_with_edns_options_or_odd_shapes_are_never_stored(ref: SnapshotRef) -> None:
    handler = Handler(ref, SERVER_MAX)
    assert handler.fast is not None
    cookie = struct.pack("!HH", 10, 8) + b"abcdefgh"
    shapes = [
        make_query(WEB, 1, payload=1232, options=cookie),  # what dig sends
        make_query(WEB, 1, flags=0x0900),  # opcode 1
        make_query(WEB, 1) + b"\x00",  # trailing byte
        make_query(WEB, 1)[:5] + b"\x02" + make_query(WEB, 1)[6:]
        + wire_name(WEB) + b"\x00\x01\x00\x01",  # two questions
    ]
    bad_version = bytearray(make_query(WEB, 1, payload=1232))
    bad_version[-5] = 1  # EDNS version 1: BADVERS
    shapes.append(bytes(bad_version))
    for data in shapes:
        assert not plain_query(data)
        for _ in range(2):
            assert handler.handle(data, False) is not None
            assert handler.fast.lookup(data, UDP4) is None
    assert len(handler.fast) == 0


def test_zone_transfer_queries_are_never_stored(ref: SnapshotRef) -> None:
    """Whether a transfer is allowed depends on the client's address, which is not in
    the query bytes the fast path keys on; with transfers off, over UDP and over TCP."""
    handler = Handler(ref, SERVER_MAX)
    assert handler.fast is not None
    for zone in ("cluster.local", "in-addr.arpa"):
        for qtype in (252, 251):  # AXFR, IXFR
            data = make_query(zone, qtype, payload=1232)
            assert plain_query(data)
            for tcp, slot in ((False, UDP4), (True, TCP4)):
                for _ in range(2):
                    reply = handler.handle(data, tcp)
                    assert isinstance(reply, bytes) and reply[3] & 0x0F == 5  # REFUSED
                    assert handler.fast.lookup(data, slot) is None
    assert len(handler.fast) == 0
    handler.handle(make_query(WEB, 1, payload=1232), False)
    assert len(handler.fast) == 1  # other queries still are


def test_stored_round_robin_answers_cycle_through_every_rotation(ref: SnapshotRef) -> None:
    handler = Handler(ref, SERVER_MAX)
    assert handler.fast is not None
    query = make_query(HEADLESS, 1, payload=1232)
    rotations = rotations_of(ref.get(), query, False)
    assert rotations is not None and len(rotations) >= 3
    seen: list[bytes] = []
    for _ in range(10 * len(rotations)):
        reply = handler.fast.lookup(query, UDP4) or handler.handle(query, False)
        assert isinstance(reply, bytes)
        seen.append(reply[2:])
    assert set(seen) == rotations
    hits = seen[-len(rotations):]  # by now every rotation is stored: one cycle, in turn
    assert sorted(hits) == sorted(rotations)
    assert hits[0] != hits[1]


def test_the_cache_is_bounded_and_evicts_the_oldest_entry(ref: SnapshotRef) -> None:
    cache = ReplyCache(ref, max_entries=3)
    snap = ref.get()
    queries = [make_query(f"n{i}.cluster.local", 1) for i in range(5)]
    for q in queries:
        assert cache.insert(snap, q, False, b"\x00" * 12 + q[12:], qtype=1, in_zone=True)
    assert len(cache) == 3
    assert cache.lookup(queries[0], UDP4) is None
    assert cache.lookup(queries[4], UDP4) is not None


class _Origin:
    hits = 0


def test_no_hit_is_lost_when_the_counter_cells_are_folded(ref: SnapshotRef) -> None:
    # A fold drops every entry counting into the folded cells, the forwarded ones too,
    # whichever table's insert needed the new cell.
    cache = ReplyCache(ref)
    cache.hits.max_cells = 2
    snap = ref.get()
    forwarded = make_query("example.com", 1)
    assert cache.lookup(forwarded, UDP4) is None  # the tables now belong to ``snap``
    assert cache.remember(forwarded, False, b"\x00" * 12 + forwarded[12:], (), 0.0, 0,
                          float("inf"), 1, False, _Origin())
    assert cache.lookup(forwarded, UDP4) is not None
    for i in range(3):  # replies of other sizes: new cells until there is no room
        query = make_query("n" * (i + 1) + ".cluster.local", 1)
        cache.insert(snap, query, False, b"\x00" * 12 + query[12:], qtype=1, in_zone=True)
    assert cache.hits.folded == 1
    hit = cache.lookup(forwarded, UDP4) is not None
    assert cache.hits.total() == 1 + hit


# ----------------------------------------------------------------------------- servers


def udp_raw(port: int, data: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(data, ("127.0.0.1", port))
        return s.recv(65535)


def tcp_raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(len(data).to_bytes(2, "big") + data)
        buf = b""
        while len(buf) < 2 or len(buf) < 2 + int.from_bytes(buf[:2], "big"):
            chunk = s.recv(65535)
            assert chunk
            buf += chunk
        return buf[2:]


def test_hits_over_udp_and_tcp_repeat_the_full_path_reply_with_the_new_id(
        demo: RunningServer, proto: str) -> None:
    send = tcp_raw if proto == "tcp" else udp_raw
    cache = demo.app.handler.fast
    assert cache is not None
    data = make_query("Web.Default.SVC.cluster.local", 1, ident=1, payload=1232)
    first = send(demo.port, data)
    generations = cache.generations
    second = send(demo.port, b"\x00\x02" + data[2:])
    assert second == b"\x00\x02" + first[2:]
    assert cache.generations == generations  # answered from the same tables
    assert second[12:12 + len(wire_name(WEB))] == wire_name("Web.Default.SVC.cluster.local")
    msg = dns.message.from_wire(second)
    assert str(msg.answer[0].name) == "Web.Default.SVC.cluster.local."  # 0x20 case kept


def test_the_0x20_case_of_each_query_is_kept_on_hits(demo: RunningServer) -> None:
    rng = random.Random(20)
    for _ in range(20):
        spelled = respell(WEB, rng)
        for _ in range(2):  # the second one is a hit
            reply = demo.ask(spelled + ".", "A")
            assert reply.rcode() == dns.rcode.NOERROR
            owner = reply.answer[0].name.to_text(omit_final_dot=True)
            assert owner == spelled  # byte for byte, not just equal as names


def test_round_robin_still_rotates_when_answers_come_from_the_cache(
        demo: RunningServer) -> None:
    orders = [tuple(addresses(demo.ask(HEADLESS + ".", "A"))) for _ in range(30)]
    assert len(set(orders)) >= 3
    assert len({frozenset(o) for o in orders}) == 1
    firsts = [o[0] for o in orders[-10:]]
    assert len(set(firsts)) >= 3  # the cached rotations keep changing the first address


def test_truncated_udp_replies_are_served_identically_from_the_cache(
        demo: RunningServer) -> None:
    data = make_query(BIG, 1)  # no EDNS: 512 bytes
    replies = [udp_raw(demo.port, data) for _ in range(12)]
    assert all(r[2] & 0x02 for r in replies), "the demo's headless A RRset no longer fits 512"
    assert len({len(r) for r in replies}) == 1
    assert len(set(replies)) == 1  # truncation drops the whole RRset: nothing to rotate
    assert tcp_raw(demo.port, data)[2] & 0x02 == 0


def test_a_changed_service_is_answered_by_the_next_query_after_publication(
        make_server: Callable[..., RunningServer], tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(DEMO_CLUSTER.read_text())
    server = make_server(source=SourceSpec("file", (path,)), poll_interval=0.1)
    for _ in range(3):
        assert addresses(server.ask(WEB + ".", "A")) == ["10.96.33.33"]
    path.write_text(DEMO_CLUSTER.read_text().replace("10.96.33.33", "10.96.44.44"))
    deadline = time.monotonic() + 5
    while server.app.ref.get().serial < 2:
        assert time.monotonic() < deadline, "the edit was not published"
        time.sleep(0.02)
    assert addresses(server.ask(WEB + ".", "A")) == ["10.96.44.44"]
    assert addresses(server.ask(WEB + ".", "A")) == ["10.96.44.44"]


def test_metrics_count_hits_like_every_other_query(
        make_server: Callable[..., RunningServer]) -> None:
    server = make_server(**HTTP_ON)
    cache = server.app.handler.fast
    assert cache is not None
    _, before = scrape(server)
    total_before = cache.hits.total()
    for _ in range(5):
        assert server.ask(WEB + ".", "A").rcode() == dns.rcode.NOERROR
    for _ in range(3):
        assert server.ask("nope.default.svc.cluster.local.", "AAAA",
                          tcp=True).rcode() == dns.rcode.NXDOMAIN
    reply = server.ask(BIG + ".", "A", edns=False)
    reply = server.ask(BIG + ".", "A", edns=False)
    assert reply.flags & dns.flags.TC
    _, after = scrape(server)
    assert cache.hits.total() - total_before == 4 + 2 + 1  # all but the first of each

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("coredns_dns_requests_total", proto="udp", family="1", type="A") == 7
    assert delta("coredns_dns_requests_total", proto="tcp", family="1", type="AAAA") == 3
    assert delta("coredns_dns_responses_total", rcode="NOERROR", plugin="kubernetes") == 7
    assert delta("coredns_dns_responses_total", rcode="NXDOMAIN", plugin="kubernetes") == 3
    assert delta("coredns_dns_request_duration_seconds_count", type="A") == 7
    assert delta("coredns_dns_request_duration_seconds_bucket", type="A", le="0.00025") >= 4
    assert delta("coredns_dns_request_size_bytes_count", proto="tcp") == 3
    assert delta("coredns_dns_response_size_bytes_count", proto="udp") == 7
    assert delta("clusterdns_truncated_replies_total") == 2
    # Sizes are summed exactly: five identical A replies, then two identical TC ones.
    web = dns.message.make_query(WEB + ".", "A", use_edns=0, payload=1232)
    assert delta("coredns_dns_request_size_bytes_sum", proto="tcp") == 3 * len(
        dns.message.make_query("nope.default.svc.cluster.local.", "AAAA", use_edns=0,
                               payload=1232).to_wire())
    assert delta("coredns_dns_request_size_bytes_sum", proto="udp") == (
        5 * len(web.to_wire())
        + 2 * len(dns.message.make_query(BIG + ".", "A").to_wire()))


def test_the_query_log_turns_the_fast_path_off(
        make_server: Callable[..., RunningServer]) -> None:
    server = make_server(log_queries=True)
    assert server.app.handler.fast is None
    assert server.app.server.fast is None
    assert addresses(server.ask(WEB + ".", "A")) == ["10.96.33.33"]
