"""Micro-benchmark of the fast path's hit cost, against the pieces it replaces.

Why it exists: the issue asks for a hit path of "a minimal scan, an ID patch and a
copy", counted in the metrics without the per-query observer. This prints, in
microseconds per query on the demo cluster:

- ``hit``: ``ReplyCache.lookup`` on a stored reply (snapshot check, dict lookup, hit
  counter, ID patch);
- ``hit, no counting``: the same lookup without bumping the metrics cell, i.e. what the
  hit counter costs;
- ``bare dict``: a plain ``dict.get`` plus the concatenation, the floor;
- ``cachetools LRU``: the same with ``cachetools.LRUCache`` (why a plain dict is used);
- ``full path``: ``Handler.handle`` with the fast path off (parse, resolve, encode);
- ``observe``: ``QueryMetrics.observe``, what every full-path query pays for metrics.

Run: ``.venv/bin/python -m bench.fastpath_micro`` (not part of the test suite).
"""

from __future__ import annotations

import time
import timeit
from collections.abc import Callable
from pathlib import Path

import cachetools

from clusterdns.config import Config, ListenAddr, PodsMode, SourceSpec
from clusterdns.fastpath import ReplyCache
from clusterdns.handler import Handler
from clusterdns.metrics import QueryMetrics
from clusterdns.snapshot import SnapshotRef, unsynced
from clusterdns.source.dump import load_files

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "config" / "demo-cluster.yaml"
# web.default.svc.cluster.local A, RD, EDNS 1232 without options: what dnsperf sends.
QUERY = bytes.fromhex(
    "abcd01000001000000000001"
    "037765620764656661756c74037376630763"
    "6c7573746572056c6f63616c0000010001"
    "00002904d000000000" "0000")


def per_call(fn: Callable[[], object], number: int) -> float:
    """Best of five runs, microseconds per call."""
    return min(timeit.repeat(fn, number=number, repeat=5, timer=time.perf_counter)) \
        / number * 1e6


def main() -> None:
    config = Config(zones=("cluster.local",), source=SourceSpec("file", (DEMO,)),
                    listen=(ListenAddr("127.0.0.1", 0),), pods=PodsMode.INSECURE)
    ref = SnapshotRef(unsynced(config))
    ref.publish_cluster(load_files((DEMO,)).cluster, config)
    handler = Handler(ref, 1232)
    full = Handler(ref, 1232, fast=False)
    cache = handler.fast
    assert cache is not None
    reply = handler.handle(QUERY, False)
    assert isinstance(reply, bytes) and cache.lookup(QUERY, 0) == reply

    quiet = ReplyCache(ref)
    quiet.insert(ref.get(), QUERY, False, reply, qtype=1, in_zone=True)
    quiet.hits.cells.clear()  # entries keep their cell; the counting still happens
    body = reply[2:]
    plain = {QUERY[2:]: body}
    lru: cachetools.LRUCache[bytes, bytes] = cachetools.LRUCache(50_000)
    lru[QUERY[2:]] = body
    metrics = QueryMetrics(config.zones)
    peer = ("127.0.0.1", 5353)
    n = 200_000

    def no_counting() -> object:
        # lookup minus the cell bump: the same steps, inlined
        if ref.current.serial != cache._serial:
            return None
        entry = cache._udp.get(QUERY[2:])
        if entry is None or entry.body is None:
            return None
        return QUERY[:2] + entry.body

    def bare() -> object:
        b = plain.get(QUERY[2:])
        return None if b is None else QUERY[:2] + b

    def with_lru() -> object:
        b = lru.get(QUERY[2:])
        return None if b is None else QUERY[:2] + b

    rows = [
        ("hit (ReplyCache.lookup)", per_call(lambda: cache.lookup(QUERY, 0), n)),
        ("hit, no counting", per_call(no_counting, n)),
        ("bare dict + concat", per_call(bare, n)),
        ("cachetools LRU + concat", per_call(with_lru, n)),
        ("full path (Handler.handle)", per_call(lambda: full.handle(QUERY, False), 5_000)),
        ("observe (QueryMetrics)", per_call(
            lambda: metrics.observe(QUERY, reply, False, peer, 0.0), n)),
    ]
    print("| path | us per query |\n|---|---|")
    for name, us in rows:
        print(f"| {name} | {us:.3f} |")


if __name__ == "__main__":
    main()
