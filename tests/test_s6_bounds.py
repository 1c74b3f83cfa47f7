"""§S6: everything that grows with what clients send has a bound, held here one by one.

The bounds are listed in docs/limits.md. Each test feeds a structure far more variety
than its bound (names, types, sizes, letter case, rotations) and checks the bound holds
and that nothing it had to count was lost: the fast path's replies (entries per
transport, bytes in all, rotations per question) and its hit counter cells (folded into
the metrics exporter's totals when full), the per-question labels the metrics observer
remembers, and the forward cache (weighed by reply size).
"""

from __future__ import annotations

from pathlib import Path

import dns.message
import dnslib
import pytest

from clusterdns import wire
from clusterdns.config import Config, PodsMode, SourceSpec
from clusterdns.fastpath import ENTRY_OVERHEAD, ReplyCache
from clusterdns.forward import CACHE_UNIT, Forwarder
from clusterdns.handler import Handler
from clusterdns.metrics import NAME_CACHE_MAX, QueryMetrics
from clusterdns.resolve import MAX_ROTATIONS
from clusterdns.snapshot import SnapshotRef, unsynced
from clusterdns.source.dump import load_files
from conftest import DEMO_CLUSTER, EXTRA_CLUSTER

BIG = "big.team-a.svc.cluster.local."  # a headless service of 120 endpoints


def demo_ref() -> SnapshotRef:
    config = Config(zones=("cluster.local", "in-addr.arpa", "ip6.arpa"),
                    source=SourceSpec("file", (DEMO_CLUSTER, EXTRA_CLUSTER)),
                    pods=PodsMode.INSECURE)
    ref = SnapshotRef(unsynced(config))
    ref.publish_cluster(load_files(config.source.paths).cluster, config)
    return ref


REF = demo_ref()


def handler_with(cache: ReplyCache) -> Handler:
    handler = Handler(REF)
    handler.fast = cache
    return handler


def ask(handler: Handler, name: str, rdtype: str = "A", *, tcp: bool = False,
        qid: int = 1) -> bytes:
    """One query through the fast path then (on a miss) the full path, as the server does."""
    data = dns.message.make_query(name, rdtype, id=qid, use_edns=0).to_wire()
    assert handler.fast is not None
    hit = handler.fast.lookup(data, 2 if tcp else 0)
    if hit is not None:
        return hit
    reply = handler.handle(data, tcp)
    assert isinstance(reply, bytes)
    return reply


def spell(name: str, n: int) -> str:
    """The n-th DNS 0x20 spelling of ``name`` (distinct for distinct n below 2**letters)."""
    letters = [i for i, c in enumerate(name) if c.isalpha()]
    chars = list(name)
    for bit, i in enumerate(letters):
        if n >> bit & 1:
            chars[i] = chars[i].upper()
    return "".join(chars)


def stored_bytes(cache: ReplyCache) -> int:
    total = 0
    for table in (cache._udp, cache._tcp):
        for key, entry in table.items():
            bodies = [entry.body] if entry.body is not None else entry.bodies
            total += len(key) + ENTRY_OVERHEAD + sum(len(b) for b in bodies if b is not None)
    return total


def test_the_fast_path_keeps_at_most_max_entries_questions_per_transport() -> None:
    cache = ReplyCache(REF, max_entries=100)
    handler = handler_with(cache)
    for i in range(1000):
        ask(handler, f"nope{i}.default.svc.cluster.local.", tcp=i % 2 == 1)
        assert len(cache._udp) <= 100 and len(cache._tcp) <= 100
    assert len(cache) == 200
    # the oldest went first: the latest questions are still answered from the table
    assert ask(handler, "nope999.default.svc.cluster.local.", tcp=True, qid=7)[:2] == b"\x00\x07"
    assert cache.lookup(dns.message.make_query("nope999.default.svc.cluster.local.", "A",
                                               use_edns=0).to_wire(), 2) is not None


def test_the_fast_path_keeps_at_most_max_bytes_of_questions_and_replies() -> None:
    cache = ReplyCache(REF, max_bytes=256 * 1024)
    handler = handler_with(cache)
    for n in range(300):  # 300 spellings of a 2 kB answer in 32 rotations each, over TCP
        for _ in range(4):
            ask(handler, spell(BIG, n), tcp=True)
        assert cache.bytes <= cache.max_bytes
        assert cache.bytes == stored_bytes(cache)
    for n in range(3000):  # and small NXDOMAIN replies over UDP on top
        ask(handler, f"n{n}.default.svc.cluster.local.")
        assert cache.bytes <= cache.max_bytes
    assert cache.bytes == stored_bytes(cache)


def test_a_reply_larger_than_the_whole_byte_budget_is_not_stored() -> None:
    cache = ReplyCache(REF, max_bytes=1000)
    handler = handler_with(cache)
    for _ in range(3):
        ask(handler, BIG, tcp=True)
    assert len(cache) == 0 and cache.bytes == 0


def test_the_fast_path_keeps_at_most_max_rotations_replies_per_question() -> None:
    cache = ReplyCache(REF)
    handler = handler_with(cache)
    firsts = set()
    for _ in range(200):
        reply = dns.message.from_wire(ask(handler, BIG, tcp=True))
        firsts.add(reply.answer[0][0].to_text())
    (entry,) = cache._tcp.values()
    assert len(entry.bodies) == MAX_ROTATIONS
    assert len(set(entry.bodies)) == MAX_ROTATIONS
    assert len(firsts) == MAX_ROTATIONS


def test_hit_counter_cells_stay_bounded_and_folded_hits_are_counted_by_the_exporter() -> None:
    cache = ReplyCache(REF)
    metrics = QueryMetrics(["cluster.local"])
    cache.hits.max_cells = 16
    cache.hits.on_fold = metrics.absorb_hits
    handler = handler_with(cache)
    asked = 0
    for n in range(200):  # 200 names of different lengths: 200 (size, rcode) cells
        name = "x" * (1 + n % 60) + f".n{n}.default.svc.cluster.local."
        for _ in range(3):  # one full-path answer, then two hits
            ask(handler, name, "TXT" if n % 2 else "A")
            asked += 1
            assert len(cache.hits.cells) <= 16
    hits = asked - 200
    assert cache.hits.total() == hits
    assert cache.hits.folded > 0
    live = metrics.with_hits(cache.hits)
    assert sum(live.requests.values()) == hits
    assert live.requests[(False, False, "A")] == hits // 2
    assert live.requests[(False, False, "TXT")] == hits // 2
    assert sum(h.counts[0] for h in live.duration.values()) == hits


def test_types_that_metrics_do_not_name_share_one_cell() -> None:
    cache = ReplyCache(REF)
    cache.hits.types = frozenset({1, 28})
    handler = handler_with(cache)
    for qtype in range(1000, 1200):
        for _ in range(2):
            ask(handler, "httpenv.default.svc.cluster.local.", f"TYPE{qtype}")
    assert len(cache.hits.cells) == 1


def test_the_metrics_observer_remembers_at_most_name_cache_max_questions() -> None:
    metrics = QueryMetrics(["cluster.local"])
    reply = b"\x00" * 12
    for n in range(NAME_CACHE_MAX + 5000):
        query = dns.message.make_query(f"q{n}.example.", "A").to_wire()
        metrics.observe(query, reply, False, ("127.0.0.1", 1), 0.0)
        assert len(metrics._names) <= NAME_CACHE_MAX
    assert sum(metrics.requests.values()) == NAME_CACHE_MAX + 5000


def upstream_reply(name: str, records: int) -> wire.UpstreamReply:
    msg = dnslib.DNSRecord(dnslib.DNSHeader(id=9, qr=1, ra=1), q=dnslib.DNSQuestion(name))
    for i in range(records):
        msg.add_answer(dnslib.RR(name, dnslib.QTYPE.TXT, ttl=300,
                                 rdata=dnslib.TXT("x" * 200 + str(i))))
    data = bytes(msg.pack())
    reply = wire.read_reply(data, 9, wire.labels_of(name), dnslib.QTYPE.A, 1)
    assert reply is not None
    return reply


@pytest.mark.parametrize("records", [1, 20])
def test_the_forward_cache_holds_at_most_cache_size_places_a_reply_taking_one_per_512_bytes(
        records: int, tmp_path: Path) -> None:
    forwarder = Forwarder(Config(upstreams=("127.0.0.1:9",), cache_size=100))
    assert forwarder.cache is not None
    for n in range(500):
        name = f"n{n}.example"
        reply = upstream_reply(name, records)
        forwarder._store((name, 1, 1, False), reply)
        assert forwarder.cache.currsize <= 100
        weight = -(-reply.size // CACHE_UNIT)
        assert len(forwarder.cache) <= 100 // weight
    assert sum(e.reply.size for e in forwarder.cache.values()) <= 100 * CACHE_UNIT
