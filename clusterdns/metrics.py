"""Prometheus metrics under CoreDNS's names, so existing CoreDNS dashboards keep working.

This module exists to keep the per-query cost of metrics tiny (the server aims at a
couple of hundred thousand queries a second) while still exporting the exact CoreDNS
metric names, label sets and buckets. The per-query hook (``QueryMetrics.observe``,
called by the server with the raw query and reply bytes) only reads a few header bytes
and bumps plain dict and list counters; nothing touches ``prometheus_client`` per
query. At scrape time a custom collector turns those counters, the handler's and
server's stats, the forwarder's counters and the app's snapshot, source and latency
figures into metric families on a per-App registry (tests run several apps in one
process).

Fast-path hits (``clusterdns.fastpath``) never reach ``observe``: each bumps a counter
cell keyed by (qtype, in zone, rcode, TC, query size, reply size) and transport slot,
and ``with_hits`` adds those cells in at scrape time, so requests, responses and both
size histograms count hits exactly. A hit is not timed: it is counted in the first
duration bucket (0.25 ms; a hit takes a few microseconds) and adds nothing to the
duration sum.

Verified against CoreDNS sources: plugin/metrics/vars (names, label sets, the 0.25 ms
x2 time buckets and the size buckets), plugin/cache/metrics.go, plugin/pkg/proxy
metrics (what ``forward`` exports), plugin/kubernetes/metrics.go (programming latency,
1 ms x2 buckets, 20 of them).
"""

from __future__ import annotations

import gc
import math
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from clusterdns import __version__, names
from clusterdns.forward import ForwardStats

if TYPE_CHECKING:
    from clusterdns.config import Config
    from clusterdns.fastpath import CellKey, HitCounts
    from clusterdns.forward import Forwarder
    from clusterdns.handler import Handler
    from clusterdns.server import DNSServer
    from clusterdns.snapshot import SnapshotRef
    from clusterdns.source.kube import KubeSource

TIME_BUCKETS = tuple(0.00025 * 2.0 ** i for i in range(16))  # 0.25 ms .. 8.192 s
SIZE_BUCKETS = (0.0, 100.0, 200.0, 300.0, 400.0, 511.0, 1023.0, 2047.0, 4095.0, 8291.0,
                16e3, 32e3, 48e3, 64e3)
PROGRAMMING_BUCKETS = tuple(0.001 * 2.0 ** i for i in range(20))  # 1 ms .. ~9 min

TYPE_NAMES: dict[int, str] = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT",
    28: "AAAA", 29: "LOC", 33: "SRV", 35: "NAPTR", 39: "DNAME", 41: "OPT", 43: "DS",
    46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 50: "NSEC3", 51: "NSEC3PARAM", 52: "TLSA",
    59: "CDS", 60: "CDNSKEY", 64: "SVCB", 65: "HTTPS", 99: "SPF", 249: "TKEY",
    250: "TSIG", 251: "IXFR", 252: "AXFR", 253: "MAILB", 254: "MAILA", 255: "ANY",
    256: "URI", 257: "CAA",
}
# The types CoreDNS gives their own ``type`` label value; the rest are "other".
MONITORED_TYPES = frozenset({"A", "AAAA", "CNAME", "DNSKEY", "DS", "MX", "NSEC3", "NSEC",
                             "NS", "PTR", "RRSIG", "SOA", "SRV", "TXT", "HTTPS", "IXFR",
                             "AXFR", "ANY"})
_METRIC_TYPE: dict[int, str] = {code: name for code, name in TYPE_NAMES.items()
                                if name in MONITORED_TYPES}
MONITORED_CODES = frozenset(_METRIC_TYPE)
"""The query types counted under their own name; the rest are "other"."""
RCODE_NAMES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED",
               "YXDOMAIN", "YXRRSET", "NXRRSET", "NOTAUTH", "NOTZONE")

ZONE = "."  # one server block for the root, as in kind's Corefile
VIEW = ""


def type_name(qtype: int) -> str:
    return TYPE_NAMES.get(qtype) or f"TYPE{qtype}"


EXTENDED_RCODE_NAMES = {16: "BADVERS", 23: "BADCOOKIE"}


def rcode_name(rcode: int) -> str:
    if rcode < len(RCODE_NAMES):
        return RCODE_NAMES[rcode]
    return EXTENDED_RCODE_NAMES.get(rcode) or str(rcode)


def question_end(data: bytes) -> int:
    """Offset just past the first question's name, or -1 if it cannot be read."""
    n = len(data)
    i = 12
    while i < n:
        length = data[i]
        if length == 0:
            return i + 1 if i + 5 <= n else -1
        if length > 63:
            return -1
        i += length + 1
    return -1


def _zone_wire(zone: str) -> bytes:
    zone = names.normalise(zone)
    labels = [label.encode("ascii", "replace") for label in zone.split(".") if label]
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"


def server_label(host: str, port: int) -> str:
    """CoreDNS's ``server`` label: ``dns://:53``, or ``dns://IP:PORT`` for a bound IP."""
    if host in ("0.0.0.0", "::", ""):
        return f"dns://:{port}"
    return f"dns://[{host}]:{port}" if ":" in host else f"dns://{host}:{port}"


class Hist:
    """A histogram as plain numbers: per-bucket counts (not cumulative) and a sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            total += count
            out.append((f"{bound:g}", total))  # as Go prints them: 0.00025, 1023
        out.append(("+Inf", total + self.counts[-1]))
        return out


_RCODES = tuple(rcode_name(i) for i in range(16))
_PLUGINS = ("", "kubernetes", "cache", "cache")  # by fastpath.NOT_OURS ... CACHE_DENIAL
_SIZE_INDEX = [bisect_left(SIZE_BUCKETS, n) for n in range(65536)]
NAME_CACHE_MAX = 4096
"""Distinct (name, type) questions whose labels ``observe`` remembers; emptied when full."""


class QueryMetrics:
    """Per-query counters, updated by ``observe`` (the server's observer hook).

    ``observe`` is on the hot path: it finds the question by the first zero byte,
    remembers each distinct (name, type) it has classified (metric type label, in our
    zones or not) in a bounded dict, and bumps plain counters; size buckets come from a
    table indexed by length. Everything else waits for a scrape.
    """

    def __init__(self, zones: Iterable[str], forwarder: ForwardStats | None = None) -> None:
        self._zones = tuple(_zone_wire(z) for z in zones)
        self._forward = forwarder
        self._hits_seen = 0  # the forwarder's cache hits at the last observation
        # (name + type bytes) -> (type label, plugin if decided by the name, histogram)
        self._names: dict[bytes, tuple[str, str | None, Hist]] = {}
        self.requests: dict[tuple[bool, bool, str], int] = {}  # (tcp, ipv6, type)
        self.responses: dict[tuple[str, str], int] = {}  # (rcode, plugin)
        self.dropped: dict[tuple[bool, bool], int] = {}  # (tcp, ipv6): no reply sent
        self.duration: dict[str, Hist] = {}  # type
        self.request_size = (Hist(SIZE_BUCKETS), Hist(SIZE_BUCKETS))  # [udp, tcp]
        self.response_size = (Hist(SIZE_BUCKETS), Hist(SIZE_BUCKETS))

    def use_forwarder(self, forwarder: ForwardStats | None) -> None:
        """After a reload replaced the forwarder: tell cache hits apart with the new one."""
        self._forward = forwarder
        self._hits_seen = sum(forwarder.cache_hits.values()) if forwarder is not None else 0

    def observe(self, query: bytes, reply: bytes | None, tcp: bool, peer: Any,
                start: float) -> None:
        elapsed = time.perf_counter() - start
        v6 = peer is not None and len(peer) > 2
        size = self.request_size[tcp]
        n = len(query)
        size.counts[_SIZE_INDEX[n] if n < 65536 else -1] += 1
        size.sum += n
        if reply is None:
            key2 = (tcp, v6)
            self.dropped[key2] = self.dropped.get(key2, 0) + 1
            return
        zero = query.find(0, 12)
        known = self._names.get(query[12:zero + 3]) if zero > 0 else None
        if known is None:
            known = self._classify(query, zero)
        qtype, by_name, hist = known
        key = (tcp, v6, qtype)
        self.requests[key] = self.requests.get(key, 0) + 1
        hist.counts[bisect_left(TIME_BUCKETS, elapsed)] += 1
        hist.sum += elapsed
        size = self.response_size[tcp]
        n = len(reply)
        size.counts[_SIZE_INDEX[n] if n < 65536 else -1] += 1
        size.sum += n
        fwd = self._forward
        if by_name is not None:  # ours ("kubernetes") or unreadable ("": FORMERR)
            plugin = by_name
            if fwd is not None:  # an in-zone CNAME's target may have come from the cache
                self._hits_seen = fwd.cache_hits["success"] + fwd.cache_hits["denial"]
        elif fwd is None:
            plugin = ""  # REFUSED by the server itself: not ours, nowhere to forward
        else:
            # A cache hit is answered inline and observed at once, before any other
            # query: if the hit counter moved since the last observation, it was this.
            hits = fwd.cache_hits["success"] + fwd.cache_hits["denial"]
            plugin = "cache" if hits != self._hits_seen else "forward"
            self._hits_seen = hits
        rkey = (_RCODES[reply[3] & 0x0F] if n > 3 else "SERVFAIL", plugin)
        self.responses[rkey] = self.responses.get(rkey, 0) + 1

    def with_hits(self, hits: HitCounts | None) -> QueryMetrics:
        """A copy of these counters with the fast path's hits added (for a scrape)."""
        out = QueryMetrics(())
        out.requests = dict(self.requests)
        out.responses = dict(self.responses)
        out.dropped = dict(self.dropped)
        out.duration = {k: _copy_hist(h) for k, h in list(self.duration.items())}
        out.request_size = (_copy_hist(self.request_size[0]), _copy_hist(self.request_size[1]))
        out.response_size = (_copy_hist(self.response_size[0]),
                             _copy_hist(self.response_size[1]))
        if hits is not None:
            out.absorb_hits(list(hits.cells.items()))
        return out

    def absorb_hits(self, cells: Iterable[tuple[CellKey, list[int]]]) -> None:
        """Count fast-path hit cells as observed queries (at a scrape, on a copy; when
        the fast path folds its cells, for good)."""
        for cell, counts in cells:
            total = sum(counts)
            if not total:
                continue
            qtype = _METRIC_TYPE.get(cell.qtype, "other")
            for slot, count in enumerate(counts):
                if count:
                    key = (slot >= 2, slot % 2 == 1, qtype)
                    self.requests[key] = self.requests.get(key, 0) + count
            rkey = (_RCODES[cell.rcode], _PLUGINS[cell.plugin])
            self.responses[rkey] = self.responses.get(rkey, 0) + total
            self._duration(qtype).counts[0] += total
            for tcp, count in ((0, counts[0] + counts[1]), (1, counts[2] + counts[3])):
                if count:
                    for hist, size in ((self.request_size[tcp], cell.query_size),
                                       (self.response_size[tcp], cell.reply_size)):
                        hist.counts[_SIZE_INDEX[size] if size < 65536 else -1] += count
                        hist.sum += size * count

    def _classify(self, query: bytes, zero: int) -> tuple[str, str | None, Hist]:
        """(type label, plugin if the name decides it, histogram) for a new question."""
        end = question_end(query)
        if end < 0:  # unreadable: the error ladder answered, nothing to remember
            return ("other", "", self._duration("other"))
        qtype = _METRIC_TYPE.get(query[end] << 8 | query[end + 1], "other")
        qname = query[12:end].lower()
        in_zone = any(qname.endswith(zone) and _label_aligned(query, len(qname) - len(zone))
                      for zone in self._zones)
        known = (qtype, "kubernetes" if in_zone else None, self._duration(qtype))
        if end == zero + 1:  # the first zero byte ends the name: safe to remember by it
            if len(self._names) >= NAME_CACHE_MAX:
                self._names.clear()
            self._names[query[12:end + 2]] = known
        return known

    def _duration(self, qtype: str) -> Hist:
        hist = self.duration.get(qtype)
        if hist is None:
            hist = self.duration[qtype] = Hist(TIME_BUCKETS)
        return hist


def _copy_hist(hist: Hist) -> Hist:
    out = Hist(hist.bounds)
    out.counts = list(hist.counts)
    out.sum = hist.sum
    return out


def _label_aligned(query: bytes, offset: int) -> bool:
    """Whether a label starts ``offset`` bytes into the question name."""
    i = 0
    while i < offset:
        i += query[12 + i] + 1
    return i == offset


# --------------------------------------------------------------------------- collector


class Observed(Protocol):
    """What the collector reads of the app it reports on (``clusterdns.app.App``).

    A protocol rather than the class, so that this module stays below ``app``, which
    builds the registry, instead of importing it back.
    """

    @property
    def config(self) -> Config: ...
    @property
    def server(self) -> DNSServer: ...
    @property
    def handler(self) -> Handler: ...
    @property
    def forwarder(self) -> Forwarder | None: ...
    @property
    def forward_durations(self) -> ForwardDurations: ...
    @property
    def ref(self) -> SnapshotRef: ...
    @property
    def kube(self) -> KubeSource | None: ...
    @property
    def sync_duration(self) -> float | None: ...
    @property
    def gc_pauses(self) -> GcPauses: ...
    @property
    def latency(self) -> Latency: ...


class AppCollector(Collector):
    """Every metric family, built from plain counters at scrape time."""

    def __init__(self, app: Observed, queries: QueryMetrics | None) -> None:
        self.app = app
        self.queries = queries

    def _server(self) -> str:
        bound = self.app.server.bound
        if bound:
            return server_label(bound[0][0], bound[0][1])
        listen = self.app.config.listen
        return server_label(listen[0].host, listen[0].port) if listen else "dns://:53"

    def collect(self) -> Iterator[Metric]:
        server = self._server()
        yield from self._dns(server)
        yield from self._cache(server)
        yield from self._forward()
        yield from self._app()

    # ----------------------------------------------------------------- coredns_dns_*

    def _dns(self, server: str) -> Iterator[Metric]:
        fast = self.app.handler.fast
        q = self.queries.with_hits(fast.hits if fast is not None else None) \
            if self.queries is not None else None
        base = [server, ZONE, VIEW]
        requests = CounterMetricFamily(
            "coredns_dns_requests", "Counter of DNS requests made per zone, protocol and "
            "family.", labels=["server", "zone", "view", "proto", "family", "type"])
        responses = CounterMetricFamily(
            "coredns_dns_responses", "Counter of response status codes.",
            labels=["server", "zone", "view", "rcode", "plugin"])
        duration = HistogramMetricFamily(
            "coredns_dns_request_duration_seconds",
            "Histogram of the time (in seconds) each request took per zone.",
            labels=["server", "zone", "view", "type"])
        req_size = HistogramMetricFamily(
            "coredns_dns_request_size_bytes", "Size of the EDNS0 UDP buffer in bytes (64K "
            "for TCP) per zone and protocol.", labels=["server", "zone", "view", "proto"])
        resp_size = HistogramMetricFamily(
            "coredns_dns_response_size_bytes", "Size of the returned response in bytes.",
            labels=["server", "zone", "view", "proto"])
        if q is not None:
            for (tcp, v6, qtype), count in list(q.requests.items()):
                requests.add_metric([*base, "tcp" if tcp else "udp", "2" if v6 else "1",
                                     qtype], count)
            for (tcp, v6), count in list(q.dropped.items()):
                requests.add_metric([server, "dropped", VIEW, "tcp" if tcp else "udp",
                                     "2" if v6 else "1", "other"], count)
            for (rcode, plugin), count in list(q.responses.items()):
                responses.add_metric([*base, rcode, plugin], count)
            for qtype, hist in list(q.duration.items()):
                duration.add_metric([*base, qtype], hist.buckets(), hist.sum)
            for proto, hists in (("udp", 0), ("tcp", 1)):
                for family, hist in ((req_size, q.request_size[hists]),
                                     (resp_size, q.response_size[hists])):
                    if any(hist.counts):
                        family.add_metric([*base, proto], hist.buckets(), hist.sum)
        yield from (requests, responses, duration, req_size, resp_size)
        build = GaugeMetricFamily(
            "coredns_build_info", "A metric with a constant '1' value labeled by version, "
            "revision, and goversion from which CoreDNS was built.",
            labels=["version", "revision", "goversion"])
        build.add_metric([__version__, "", _python_version()], 1)
        yield build
        handler = self.app.handler.stats
        yield CounterMetricFamily("coredns_panics", "A metrics that counts the number of "
                                  "panics.", value=handler.errors)
        if self.app.config.autopath:  # CoreDNS has it once the autopath plugin is in use
            walked = CounterMetricFamily("coredns_autopath_success", "Counter of requests "
                                         "that did autopath.", labels=["server"])
            walked.add_metric([server], handler.autopath)
            yield walked

    # ----------------------------------------------------------------- cache, forward

    def _cache(self, server: str) -> Iterator[Metric]:
        fwd = self.app.forwarder
        stats = fwd.stats if fwd is not None else ForwardStats()
        counts = _cache_entries(fwd) if fwd is not None else {}
        hits = CounterMetricFamily("coredns_cache_hits", "The count of cache hits.",
                                   labels=["server", "type", "zones", "view"])
        misses = CounterMetricFamily("coredns_cache_misses", "The count of cache misses. "
                                     "Deprecated, derive misses from cache hits/requests "
                                     "counters.", labels=["server", "zones", "view"])
        entries = GaugeMetricFamily("coredns_cache_entries", "The number of elements in the "
                                    "cache.", labels=["server", "type", "zones", "view"])
        fast = self.app.handler.fast
        fast_hits = fast.hits.cache_hits() if fast is not None else {}
        for kind in ("success", "denial"):
            hits.add_metric([server, kind, ZONE, VIEW],
                            stats.cache_hits.get(kind, 0) + fast_hits.get(kind, 0))
            entries.add_metric([server, kind, ZONE, VIEW], counts.get(kind, 0))
        misses.add_metric([server, ZONE, VIEW], stats.cache_misses)
        yield from (hits, misses, entries)

    def _forward(self) -> Iterator[Metric]:
        fwd = self.app.forwarder
        stats = fwd.stats if fwd is not None else ForwardStats()
        requests = CounterMetricFamily("coredns_forward_requests", "Counter of requests made "
                                       "per upstream.", labels=["to"])
        responses = CounterMetricFamily("coredns_forward_responses", "Counter of responses "
                                        "received per upstream.", labels=["to", "rcode"])
        duration = HistogramMetricFamily("coredns_forward_request_duration_seconds",
                                         "Histogram of the time each request took.",
                                         labels=["to", "rcode"])
        for to, count in list(stats.requests.items()):
            requests.add_metric([to], count)
        for (to, rcode), count in list(stats.responses.items()):
            responses.add_metric([to, rcode], count)
        for (to, rcode), hist in list(self.app.forward_durations.hists.items()):
            duration.add_metric([to, rcode], hist.buckets(), hist.sum)
        yield from (requests, responses, duration)

    # ----------------------------------------------------------------------- our own

    def _app(self) -> Iterator[Metric]:
        app = self.app
        snap = app.ref.get()
        yield GaugeMetricFamily("clusterdns_snapshot_serial", "Generation (SOA serial) of "
                                "the snapshot being served; 0 before the first sync.",
                                value=snap.serial)
        age = app.kube.data_age() if app.kube is not None else None
        yield GaugeMetricFamily("clusterdns_data_age_seconds", "Seconds since the stalest "
                                "watch last heard from the API server (NaN: never, or a "
                                "file source).", value=math.nan if age is None else age)
        yield GaugeMetricFamily("clusterdns_records", "Records in the snapshot being served.",
                                value=snap.record_count)
        restarts = CounterMetricFamily("clusterdns_watch_restarts", "Watch or list restarts "
                                       "per kind and reason.", labels=["kind", "reason"])
        if app.kube is not None:
            totals: dict[tuple[str, str], int] = {}
            for reflector in app.kube.reflectors:
                for reason, count in reflector.restarts.items():
                    key = (reflector.resource.plural, reason)
                    totals[key] = totals.get(key, 0) + count
            for (kind, reason), count in sorted(totals.items()):
                restarts.add_metric([kind, reason], count)
        yield restarts
        held = GaugeMetricFamily("clusterdns_objects_held_back", "Objects whose latest "
                                 "version from the API server is malformed, so their last "
                                 "good version is served, per kind.", labels=["kind"])
        if app.kube is not None:
            held_counts: dict[str, int] = {}
            for reflector in app.kube.reflectors:
                plural = reflector.resource.plural
                held_counts[plural] = held_counts.get(plural, 0) + len(reflector.held)
            for kind, count in sorted(held_counts.items()):
                held.add_metric([kind], count)
        yield held
        sync = GaugeMetricFamily("clusterdns_sync_duration_seconds", "Seconds from start to "
                                 "the first complete snapshot (NaN until then).",
                                 value=math.nan if app.sync_duration is None
                                 else app.sync_duration)
        yield sync
        yield CounterMetricFamily("clusterdns_truncated_replies", "UDP replies sent with TC "
                                  "set because they did not fit.",
                                  value=app.handler.stats.truncated + (
                                      app.handler.fast.hits.truncated()
                                      if app.handler.fast is not None else 0))
        transfers = CounterMetricFamily(
            "clusterdns_transfers", "Zone transfers (AXFR, IXFR) per zone and result: "
            "complete, aborted (the client went away), up_to_date (IXFR: the SOA alone), "
            "refused.", labels=["zone", "result"])
        for (zone, result), count in sorted(app.handler.stats.transfers.items()):
            transfers.add_metric([zone, result], count)
        yield transfers
        gc_pauses = HistogramMetricFamily(
            "clusterdns_gc_pause_seconds", "Seconds each cyclic garbage collection stopped "
            "the process, per generation.", labels=["generation"])
        for generation, hist in enumerate(app.gc_pauses.hists):
            gc_pauses.add_metric([str(generation)], hist.buckets(), hist.sum)
        yield gc_pauses
        lat = app.latency
        prog = HistogramMetricFamily("clusterdns_programming_latency_seconds", "Seconds from "
                                     "a change reaching clusterdns to its publication.")
        prog.add_metric([], lat.programming.buckets(), lat.programming.sum)
        yield prog
        kube = HistogramMetricFamily(
            "coredns_kubernetes_dns_programming_duration_seconds", "Histogram of the time "
            "(in seconds) it took to program a dns instance.", labels=["service_kind"])
        for kind, hist in sorted(lat.by_kind.items()):
            kube.add_metric([kind], hist.buckets(), hist.sum)
        yield kube


def _python_version() -> str:
    import platform
    return f"python{platform.python_version()}"


# ----------------------------------------------------------------------- forwarding


class ForwardDurations:
    """``coredns_forward_request_duration_seconds``, fed by ``Forwarder.observe``."""

    def __init__(self) -> None:
        self.hists: dict[tuple[str, str], Hist] = {}

    def observe(self, to: str, rcode: str, seconds: float) -> None:
        hist = self.hists.get((to, rcode))
        if hist is None:
            hist = self.hists[(to, rcode)] = Hist(TIME_BUCKETS)
        hist.observe(seconds)


def _cache_entries(forwarder: Forwarder) -> dict[str, int]:
    return {"success": len(forwarder.cache) if forwarder.cache is not None else 0,
            "denial": len(forwarder.denials) if forwarder.denials is not None else 0}


# ----------------------------------------------------------------------- programming


class Latency:
    """Programming latency histograms, fed by the app's rebuild loop."""

    SERVICE_KINDS = ("cluster_ip", "headless_with_selector", "headless_without_selector")

    def __init__(self) -> None:
        self.programming = Hist(PROGRAMMING_BUCKETS)
        self.by_kind: dict[str, Hist] = {}

    def observe_trigger(self, service_kind: str, seconds: float) -> None:
        hist = self.by_kind.get(service_kind)
        if hist is None:
            hist = self.by_kind[service_kind] = Hist(PROGRAMMING_BUCKETS)
        hist.observe(max(seconds, 0.0))


class GcPauses:
    """How long the cyclic garbage collector stops everything, per generation.

    A full collection walks every tracked object not frozen (``gc.freeze``); at 100k
    endpoints that used to mean pauses of tens of milliseconds, which is programming
    latency and query latency alike. ``install`` hooks ``gc.callbacks``; the cost is two
    calls per collection.
    """

    def __init__(self) -> None:
        self.hists = [Hist(TIME_BUCKETS) for _ in range(3)]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.hists[info["generation"]].observe(time.perf_counter() - self._started)

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)


def new_registry(app: Observed, queries: QueryMetrics | None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AppCollector(app, queries))
    return registry
