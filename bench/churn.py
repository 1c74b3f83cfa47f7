"""Programming latency under churn: 100 EndpointSlice updates/s at 10k Services, 100k endpoints.

Issue 5's last figure. The fake API server (``tests.fakekube``) holds ``bench.cluster``'s
cluster with the first H services headless (H = 100 by default, 10,000 of their endpoints
have names of their own). Per run, ``clusterdns serve --source kubernetes`` starts as its
own process, syncs, and then the script applies ``--rate`` updates/s for ``--seconds``:
each replaces one EndpointSlice of a headless service with one endpoint changed -- every
other update makes it not ready (its name ``a-b-c-d.svc-N.ns-M.svc.cluster.local`` must
disappear), the others move it to a new address (the new name must appear). Every update
touches an endpoint no earlier update of the session touched, so each has one expected
answer, and sets ``endpoints.kubernetes.io/last-change-trigger-time`` to the moment it is
sent.

Two figures per run:

- external: from just before the update is sent to the API server until a DNS query for
  the changed name gives the new answer (includes the API server, the watch stream and
  the polling step). One poller asks about the oldest ``--poll-batch`` unconfirmed
  updates at once, every ``--poll-interval`` s (at once again when they all were
  confirmed): updates arrive on one watch stream and snapshots are published in order,
  so a later update is never answerable before an earlier one, and the oldest are the
  ones worth asking about; this bounds the poll load without the poller falling behind;
- server side: ``clusterdns_programming_latency_seconds`` (event received by clusterdns
  -> snapshot published) and
  ``coredns_kubernetes_dns_programming_duration_seconds{service_kind="headless_with_selector"}``
  (trigger time -> published), read from /metrics before and after the churn; the
  quantiles come from the histogram buckets (linear inside a bucket, as Prometheus's
  ``histogram_quantile``), and the bucket that holds p99 is printed: with buckets that
  double from 1 ms, "p99 <= 50 ms" cannot be decided when p99 falls between 32 and 64 ms.

The table also gives the server's peak RSS (VmHWM) at sync and after the churn, its RSS
at the end, and what the cyclic garbage collector did during the churn (full
collections, the longest pause, from ``clusterdns_gc_pause_seconds``).

``--relists N`` forces N relists of every kind during each run (the next watch of each
kind gets 410 Gone and every open watch is broken), as after an API server restart that
lost its watch history. ``--memory`` runs the memory session of issue 11 instead: one run
of 36,000 updates (200/s for 180 s, an hour of a busy cluster's churn compressed) with 5
forced relists, against the 160 MB target (kubeadm gives CoreDNS 170Mi).

Acceptance: programming latency p99 <= 50 ms (issues 5 and 11) in the default runs;
session peak RSS <= 160 MB in the memory session. Nothing asserts on them here; the script
prints one line per run and the medians over runs. ``main_table`` gives both tables.

Run: ``.venv/bin/python -m bench.churn [--runs 3] [--seconds 30] [--rate 100]`` and
``.venv/bin/python -m bench.churn --memory``.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import re
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
from prometheus_client.parser import text_string_to_metric_families

from bench.cluster import namespace_of, objects
from bench.dnsperf_common import free_port, machine_load, table_for, wait_answering
from bench.scale import (
    ROOT,
    RSS_TARGET_MB,
    Table,
    markdown,
    serve_command,
    status_mb,
    stop,
)

# The fake API server lives with the tests (as `fakekube`, the name the tests import it by).
sys.path.insert(0, str(ROOT / "tests"))
from fakekube import FakeKube

TARGET_P99_S = 0.050
PER_SLICE = 100
TRIGGER = "endpoints.kubernetes.io/last-change-trigger-time"
PROGRAMMING = "clusterdns_programming_latency_seconds"
TRIGGERED = "coredns_kubernetes_dns_programming_duration_seconds"
GC_PAUSES = "clusterdns_gc_pause_seconds"
MEMORY_TARGET_MB = 160.0  # issue 11: session peak with 5 forced relists
RELIST_KINDS = ("namespaces", "services", "endpointslices")


# -- the updates ---------------------------------------------------------------------------


@dataclass
class Update:
    """One EndpointSlice change and what DNS must answer once it is programmed."""

    name: str  # the endpoint name whose answer changes
    address: str | None  # the A record it must have, or None: it must have none
    sent: float = 0.0  # monotonic, just before the API server was told
    applied: float = 0.0  # monotonic, once the API server had it in its watch queues
    answered: float | None = None  # monotonic, first poll that saw the change


def dashed(ip: str) -> str:
    return ip.replace(".", "-")


def endpoint_ip(k: int) -> str:
    """``bench.cluster``'s address of endpoint k (slice k // 100, position k % 100)."""
    return f"10.{128 + k // 65536}.{(k // 256) % 256}.{k % 256}"


def moved_ip(n: int) -> str:
    """A fresh address for the n-th moved endpoint, outside bench.cluster's ranges."""
    return f"10.{200 + n // 65536}.{(n // 256) % 256}.{n % 256}"


class Churn:
    """The headless services' slices as the API server has them, and the next change."""

    def __init__(self, headless: int) -> None:
        self.headless = headless
        self.next = 0  # the session-wide index of the next untouched endpoint
        self.slices: dict[int, dict[str, Any]] = {}
        for obj in objects(services=headless, endpoints=headless * PER_SLICE,
                           headless=headless):
            if obj["kind"] == "EndpointSlice":
                self.slices[len(self.slices)] = obj

    def capacity(self) -> int:
        return self.headless * PER_SLICE

    def make(self) -> tuple[Update, dict[str, Any]]:
        """The next update and the slice to send (the caller must not keep it)."""
        index = self.next
        self.next += 1
        if index >= self.capacity():
            raise SystemExit("every headless endpoint was changed already: "
                             "raise --headless or lower --runs/--seconds/--rate")
        s, j = index % self.headless, index // self.headless
        raw = self.slices[s]
        endpoint = raw["endpoints"][j]
        service = f"svc-{s}.{namespace_of(s)}.svc.cluster.local"
        if index % 2 == 0:
            endpoint["conditions"] = {"ready": False, "serving": False, "terminating": True}
            update = Update(f"{dashed(endpoint['addresses'][0])}.{service}", None)
        else:
            new = moved_ip(index)
            endpoint["addresses"] = [new]
            update = Update(f"{dashed(new)}.{service}", new)
        stamp = datetime.now(UTC).isoformat(timespec="microseconds")
        raw["metadata"]["annotations"] = {TRIGGER: stamp.replace("+00:00", "Z")}
        return update, raw


def reflects(update: Update, reply: dns.message.Message) -> bool:
    """Whether ``reply`` already shows ``update``."""
    found = {rdata.address for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A
             for rdata in rrset}
    if update.address is None:
        return reply.rcode() in (dns.rcode.NXDOMAIN, dns.rcode.NOERROR) and not found
    return update.address in found


@dataclass
class Poller:
    """Confirms updates, the oldest ``batch`` unconfirmed ones per round.

    A round sends one query per update in the batch at once on one UDP socket and takes
    the replies for up to ``timeout`` s; an update is answered when its reply arrives
    showing the change. Updates become answerable in order (see the module docstring), so
    the oldest are the ones to ask about; a round whose whole batch was answered is
    followed at once by the next, otherwise the poller sleeps ``interval`` s. Asking in
    batches keeps the poller from falling behind when each reply is slow.
    """

    port: int
    interval: float
    give_up: float  # seconds after sending an update before it counts as never answered
    process: subprocess.Popen[bytes]  # clusterdns: when it exits, polling stops
    batch: int = 50
    timeout: float = 1.0
    pending: deque[Update] = field(default_factory=deque)
    missed: list[Update] = field(default_factory=list)
    queries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: threading.Event = field(default_factory=threading.Event)  # no more updates

    def run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("127.0.0.1", self.port))
            while self.process.poll() is None:
                with self.lock:
                    batch = list(itertools.islice(self.pending, self.batch))
                if not batch:
                    if self.done.is_set():
                        return
                    time.sleep(self.interval)
                    continue
                self.round(sock, batch)
                now = time.monotonic()
                with self.lock:
                    while self.pending and (self.pending[0].answered is not None
                                            or now - self.pending[0].sent > self.give_up):
                        oldest = self.pending.popleft()
                        if oldest.answered is None:
                            self.missed.append(oldest)
                if not all(u.answered is not None for u in batch):
                    time.sleep(self.interval)

    def round(self, sock: socket.socket, batch: list[Update]) -> None:
        waiting: dict[int, Update] = {}
        for update in batch:
            if update.answered is not None:
                continue
            query = dns.message.make_query(update.name, "A")
            while query.id in waiting:
                query.id = (query.id + 1) % 65536
            waiting[query.id] = update
            sock.send(query.to_wire())
            self.queries += 1
        deadline = time.monotonic() + self.timeout
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                return
            try:
                data = sock.recv(65535)
                reply = dns.message.from_wire(data)
            except (OSError, dns.exception.DNSException):
                continue
            found = waiting.get(reply.id)
            if found is None:
                continue
            del waiting[reply.id]
            if reflects(found, reply):
                found.answered = time.monotonic()


# -- /metrics ------------------------------------------------------------------------------


Buckets = list[tuple[float, float]]  # (upper bound, cumulative count), ascending


def scrape(port: int) -> dict[tuple[str, str], Buckets]:
    """Histogram buckets by (metric, service_kind or generation label, or "")."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    found: dict[tuple[str, str], Buckets] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (PROGRAMMING, TRIGGERED, GC_PAUSES):
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                label = sample.labels.get("service_kind", sample.labels.get("generation", ""))
                key = (family.name, label)
                found.setdefault(key, []).append((float(sample.labels["le"]), sample.value))
    return {key: sorted(buckets) for key, buckets in found.items()}


def longest(buckets: Buckets) -> float:
    """The upper bound of the highest bucket with a count in it (NaN: none)."""
    top, before = math.nan, 0.0
    for le, count in buckets:
        if count > before:
            top = le
        before = count
    return top


def delta(after: Buckets, before: Buckets | None) -> Buckets:
    old = dict(before or [])
    return [(le, count - old.get(le, 0.0)) for le, count in after]


def quantile(q: float, buckets: Buckets) -> tuple[float, float, float]:
    """(estimate, bucket lower bound, bucket upper bound) of quantile q, or NaNs."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return math.nan, math.nan, math.nan
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower_bound, lower_bound, le
            inside = (rank - lower_count) / (count - lower_count) if count > lower_count else 1
            return lower_bound + (le - lower_bound) * inside, lower_bound, le
        lower_bound, lower_count = le, count
    return math.nan, math.nan, math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# -- one run -------------------------------------------------------------------------------


@dataclass
class RunResult:
    sync_s: float
    updates: int
    answered: list[float]  # external latencies, seconds
    missed: int
    server: dict[str, tuple[float, float, float, float]]  # figure -> p50, p99, (p99 bucket)
    send_lag_p99: float  # how late the sender was against its schedule
    queries: int
    hwm_mb: float
    sync_hwm_mb: float = math.nan  # peak RSS just after the first sync
    end_rss_mb: float = math.nan
    relists: int = 0  # relists forced during the churn
    gc_full: int = 0  # full (generation 2) collections during the churn
    gc_longest: float = math.nan  # upper bound of the longest pause's bucket, seconds


def start_clusterdns(kubeconfig: Path, log: Path,
                     pin: str = "none") -> tuple[subprocess.Popen[bytes], int, int]:
    port, metrics = free_port(), free_port()
    cmd = [*serve_command("kubernetes", port, metrics), "--kubeconfig", str(kubeconfig)]
    if pin == "split":  # clusterdns alone on CPU 1; this harness stays on CPU 0
        cmd = ["taskset", "-c", "1", *cmd]
    with log.open("w") as out:
        process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=out)
    return process, port, metrics


def one_run(fake: FakeKube, churn: Churn, kubeconfig: Path, log: Path, probe: str,
            args: argparse.Namespace) -> RunResult:
    started = time.monotonic()
    process, port, metrics_port = start_clusterdns(kubeconfig, log, args.pin)
    try:
        wait_answering(port, probe, process, log, timeout=600, interval=0.01)
        sync = time.monotonic() - started
        sync_hwm = status_mb(process.pid, "VmHWM")
        time.sleep(args.settle)
        before = scrape(metrics_port)
        poller = Poller(port, args.poll_interval, args.give_up, process, args.poll_batch)
        thread = threading.Thread(target=poller.run, name="poller", daemon=True)
        thread.start()
        updates: list[Update] = []
        lags: list[float] = []
        count = int(args.rate * args.seconds)
        relist_at = {count * (i + 1) // (args.relists + 1) for i in range(args.relists)}
        relists = 0
        begin = time.monotonic()
        for n in range(count):
            if process.poll() is not None:
                break
            if n in relist_at:
                force_relist(fake)
                relists += 1
            due = begin + n / args.rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            update, raw = churn.make()
            update.sent = time.monotonic()
            lags.append(update.sent - due)
            # The fake server keeps what it is given; a JSON round trip is its own copy
            # at a fifth of deepcopy's cost (which made this sender fall behind).
            fake.bulk_load([json.loads(json.dumps(raw))])
            update.applied = time.monotonic()
            updates.append(update)
            with poller.lock:
                poller.pending.append(update)
        poller.done.set()
        thread.join()
        if process.poll() is not None:
            raise SystemExit(f"clusterdns exited ({process.returncode}) during the churn, "
                             f"after {len(updates)} updates:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)  # let the last publication's metrics land
        after = scrape(metrics_port)
        hwm = status_mb(process.pid, "VmHWM")
        end_rss = status_mb(process.pid, "VmRSS")
    finally:
        stop(process)
    full = delta(after.get((GC_PAUSES, "2"), []), before.get((GC_PAUSES, "2")))
    pauses = [delta(after.get((GC_PAUSES, g), []), before.get((GC_PAUSES, g)))
              for g in "012"]
    server: dict[str, tuple[float, float, float, float]] = {}
    for (metric, kind), buckets in sorted(after.items()):
        if metric == GC_PAUSES or (metric == TRIGGERED and kind != "headless_with_selector"):
            continue
        change = delta(buckets, before.get((metric, kind)))
        p50 = quantile(0.5, change)[0]
        p99, low, high = quantile(0.99, change)
        label = "server: received -> published" if metric == PROGRAMMING \
            else "server: trigger time -> published"
        server[label] = (p50, p99, low, high)
    external = [u.answered - u.sent for u in updates if u.answered is not None]
    match = re.search(r"synced with the API server in ([0-9.]+) s", log.read_text())
    return RunResult(float(match.group(1)) if match else sync, len(updates), external,
                     len(poller.missed), server, percentile(lags, 0.99), poller.queries, hwm,
                     sync_hwm, end_rss, relists, int(full[-1][1]) if full else 0,
                     max((longest(p) for p in pauses if p), default=math.nan))


def force_relist(fake: FakeKube) -> None:
    """Make clusterdns relist every kind, as after an API server restart that lost the
    watch history: each kind's next watch request gets 410 Gone, and every open watch is
    broken so that the next one comes at once."""
    for plural in RELIST_KINDS:
        fake.fail_next(1, 410, path_contains=f"{plural}?watch=")
    fake.drop_watches()


# -- the whole figure ----------------------------------------------------------------------


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:.1f}"


def measure(args: argparse.Namespace) -> Table:
    headless = args.headless
    if args.pin == "split":
        os.sched_setaffinity(0, {0})  # threads started from here on inherit it
    print(f"churn: {args.services} services ({headless} headless), {args.endpoints} endpoints, "
          f"{args.rate:g} updates/s for {args.seconds:g} s; {machine_load()}", flush=True)
    results: list[RunResult] = []
    # Three threads share this interpreter (the fake API server's loop, the sender and
    # the poller): switch between them more often than the default 5 ms, which would
    # otherwise show up as latency.
    sys.setswitchinterval(0.0005)
    fake = FakeKube().start()
    try:
        loaded = fake.bulk_load(objects(args.services, args.endpoints, headless=headless))
        print(f"fake API server: {loaded} objects", flush=True)
        churn = Churn(headless)
        # Millions of long-lived dicts live here (the fake server's objects, the slices
        # being churned, each update's new copy): a collection walking them stalls every
        # thread of this harness for 0.1-0.3 s, and the updates then arrive in bursts.
        # Nothing here needs the cyclic collector for the few minutes of a run.
        gc.freeze()
        gc.disable()
        last = args.services - 1
        probe = f"svc-{last}.{namespace_of(last)}.svc.cluster.local"
        with tempfile.TemporaryDirectory(prefix="clusterdns-churn-") as tmp:
            kubeconfig = fake.write_kubeconfig(Path(tmp) / "kubeconfig")
            for run in range(1, args.runs + 1):
                r = one_run(fake, churn, kubeconfig, Path(tmp) / f"run{run}.log", probe, args)
                results.append(r)
                server = "; ".join(
                    f"{label}: p50 {ms(p50)} ms, p99 {ms(p99)} ms (bucket {ms(lo)}-{ms(hi)} ms)"
                    for label, (p50, p99, lo, hi) in r.server.items())
                print(f"run {run}: synced in {r.sync_s:.2f} s (peak RSS {r.sync_hwm_mb:.0f} MB);"
                      f" {r.updates} updates, {r.relists} forced relists, "
                      f"{len(r.answered)} answered, {r.missed} never; external p50 "
                      f"{ms(percentile(r.answered, 0.5))} ms, p99 "
                      f"{ms(percentile(r.answered, 0.99))} ms; {server}; sender lag p99 "
                      f"{ms(r.send_lag_p99)} ms, {r.queries} polls; {r.gc_full} full "
                      f"collections, longest pause <= {ms(r.gc_longest)} ms; peak RSS "
                      f"{r.hwm_mb:.0f} MB, at the end {r.end_rss_mb:.0f} MB", flush=True)
    finally:
        fake.close()

    def row(figure: str, values: list[float], target: bool = False) -> list[str]:
        clean = [v for v in values if not math.isnan(v)]
        m = statistics.median(clean) if clean else math.nan
        verdict = ""
        if target and not math.isnan(m):
            verdict = "pass" if m <= TARGET_P99_S else "FAIL"
        return [figure, f"{ms(m)} ms", ", ".join(ms(v) for v in values),
                f"<= {TARGET_P99_S * 1e3:g} ms" if target else "", verdict]

    rows = [row("external p50 (sent -> answered)",
                [percentile(r.answered, 0.5) for r in results]),
            row("external p99 (sent -> answered)",
                [percentile(r.answered, 0.99) for r in results])]
    labels = sorted({label for r in results for label in r.server})
    for label in labels:
        got = [r.server.get(label, (math.nan,) * 4) for r in results]
        rows.append(row(f"{label} p50", [g[0] for g in got]))
        rows.append(row(f"{label} p99", [g[1] for g in got], target=True))
        rows.append([f"{label}: bucket holding p99", "",
                     ", ".join(f"{ms(g[2])}-{ms(g[3])}" for g in got), "", ""])
    rows.append(row("GC: longest pause (bucket upper bound)", [r.gc_longest for r in results]))
    rows.append(["GC: full collections during the churn",
                 str(statistics.median([r.gc_full for r in results])),
                 ", ".join(str(r.gc_full) for r in results), "", ""])
    target = MEMORY_TARGET_MB if args.relists else RSS_TARGET_MB
    for figure, values in (("peak RSS (VmHWM) at sync", [r.sync_hwm_mb for r in results]),
                           (f"peak RSS (VmHWM) after the churn and {args.relists} forced "
                            "relists per run", [r.hwm_mb for r in results]),
                           ("RSS at the end", [r.end_rss_mb for r in results])):
        m = statistics.median(values)
        rows.append([f"`serve --source kubernetes`: {figure}", f"{m:.0f} MB",
                     ", ".join(f"{v:.0f}" for v in values), f"<= {target:g} MB",
                     "pass" if m <= target else "FAIL"])
    missed = sum(r.missed for r in results)
    if missed:
        rows.append([f"updates never answered within {args.give_up:g} s", str(missed),
                     ", ".join(str(r.missed) for r in results), "0", "FAIL"])
    rows.append([machine_load(), "", "", "", ""])
    title = (f"Programming latency (pin {args.pin}): {args.rate:g} EndpointSlice updates/s for "
             f"{args.seconds:g} s at {args.services:,} Services, {args.endpoints:,} endpoints, "
             f"{args.relists} forced relists per run, medians of {args.runs}")
    return title, ["figure", "median", "runs", "target", ""], rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pin", choices=["none", "split"], default="none",
                        help="split: clusterdns on CPU 1, the fake API server, sender and "
                             "poller on CPU 0 (so the harness cannot starve the server)")
    parser.add_argument("--seconds", type=float, default=30.0, help="churn per run")
    parser.add_argument("--rate", type=float, default=100.0, help="updates per second")
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--endpoints", type=int, default=100_000)
    parser.add_argument("--headless", type=int, default=100,
                        help="headless services among the first ones (their endpoints "
                             "are the ones changed)")
    parser.add_argument("--poll-interval", type=float, default=0.002, metavar="SECONDS",
                        help="pause after a round of polls that did not confirm everything")
    parser.add_argument("--poll-batch", type=int, default=50, metavar="N",
                        help="the oldest N unconfirmed updates are polled per round")
    parser.add_argument("--give-up", type=float, default=120.0, metavar="SECONDS",
                        help="an update not answerable this long after it was sent is "
                             "counted as never answered")
    parser.add_argument("--settle", type=float, default=2.0, metavar="SECONDS",
                        help="wait after the first answer before churning")
    parser.add_argument("--relists", type=int, default=0, metavar="N",
                        help="force N relists of every kind, evenly spread over each run "
                             "(410 Gone on the next watch, open watches broken)")
    parser.add_argument("--memory", action="store_true",
                        help="the memory session instead: one run of 36,000 updates "
                             "(200/s for 180 s, an hour's churn of a busy cluster) with 5 "
                             "forced relists, against the 160 MB target")


MEMORY_SESSION = ["--runs", "1", "--rate", "200", "--seconds", "180", "--relists", "5",
                  "--headless", "400"]


def main_table(runs: int = 3) -> list[Table]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return [table_for(add_arguments, measure, runs), measure(parser.parse_args(MEMORY_SESSION))]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args()
    if args.memory:
        args = parser.parse_args([*MEMORY_SESSION, *(a for a in sys.argv[1:] if a != "--memory")])
    if args.runs * args.rate * args.seconds > args.headless * PER_SLICE:
        parser.error("runs x rate x seconds updates need that many distinct endpoints: "
                     f"raise --headless (now {args.headless}, {PER_SLICE} endpoints each)")
    print(markdown(*measure(args)))


if __name__ == "__main__":
    main()
