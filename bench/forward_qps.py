"""Queries per second for cached out-of-zone names: clusterdns forwarding beside unbound.

Why it exists: most of what a cluster's DNS server answers in practice is not the
cluster's own names but names of the outside world, asked again and again and answered
from the forwarder's cache. The acceptance line for that path: cached out-of-zone names
are answered at >= 0.5x unbound's q/s and >= 0.7x clusterdns's own in-zone q/s, in the
same run, with the same query file.

What it runs, all on free loopback ports:

- knotd (``bench.knot``) authoritative for an external test zone, ``bench-ext.example.``
  (not ``test.``, which unbound serves as a local zone), of ``--names`` names: A records,
  AAAA on half of them, one name in ten a CNAME to another; everything with TTL 3600 so
  nothing expires in either cache during a run;
- unbound (2 threads, cache only: ``module-config: "iterator"``, no validation, a
  ``forward-zone`` for the test zone to knotd, caches large enough for everything);
- ``clusterdns serve --config config/demo.yaml --upstream 127.0.0.1:<knotd>`` as a user
  runs it (health, ready and metrics off).

Two query files of the same length: (a) external names, 90% existing (A, AAAA, A of the
CNAMEs) and 10% NXDOMAIN, and (b) the demo cluster's own names, built as
``bench.dnsperf_common`` builds its query file. Both servers first get every distinct
external question once (so every answer is in the cache), then one pass over file (a)
(clusterdns also over (b)); a sample of the external questions is then asked of
clusterdns, unbound and knotd, which must agree on rcode and answer records. Measured
with dnsperf (``-c 8 -q 500 -l 10`` as ``bench.dnsperf_qps``), runs interleaved: unbound
on (a), clusterdns on (a), clusterdns on (b); medians of ``--runs``.

The helpers that start knotd on the test zone, unbound and a forwarding clusterdns are
shared with ``bench.search_path``.

Run: ``.venv/bin/python -m bench.forward_qps [--runs 3] [--seconds 10] [--names 3000]``.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import shutil
import statistics
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from bench import dnsperf_common as common
from bench import knot

TABLE_ORDER = 4
TARGET_UNBOUND = 0.5
TARGET_IN_ZONE = 0.7

DEMO_CONFIG = common.ROOT / "config" / "demo.yaml"
DEMO_PROBE = "httpenv.default.svc.cluster.local"
EXT_ZONE = "bench-ext.example."
EXT_TTL = 3600
NAMES = 3_000
QUERIES = 100_000
UNBOUND_THREADS = 2
CLUSTERDNS_CACHE_SIZE = 10_000
"""clusterdns's default ``cache_size`` (config/demo.yaml keeps it): distinct forwarded
questions beyond it would be evicted during a run."""
NXDOMAIN_SHARE = 0.10
ALIAS_EVERY = 10  # every 10th name is a CNAME to the name before it
AAAA_EVERY = 2  # every 2nd host name also has an AAAA record
SAMPLE = 300
LOST_NOTE = 0.01
"""Share of lost queries worth a note. With ``-q 500`` dnsperf loses about 0.2% against
every server alike (none with ``-q 100``): a burst overflowing a socket buffer, not the
server."""

Question = tuple[str, str]
"""(name with a trailing dot, record type) as a dnsperf line has them."""


# -- the external test zone ----------------------------------------------------------------


@dataclass(frozen=True)
class ExternalZone:
    """The zone knotd serves and the questions that can be asked of it."""

    records: str
    """Master-file lines (``owner ttl IN type rdata``), the SOA among them."""
    existing: tuple[Question, ...]
    """Questions with an answer: A of every host, AAAA of the hosts that have one, A of
    every alias (CNAME plus the target's A)."""
    missing: tuple[str, ...]
    """Names under the zone that do not exist (NXDOMAIN)."""
    owners: frozenset[str]
    """Every owner name in the zone (lower case, trailing dot)."""
    probe: str
    """A name with an A record, to wait for a server to answer."""


def external_zone(names: int = NAMES, zone: str = EXT_ZONE) -> ExternalZone:
    """``names`` names under ``zone``: ``host-<i>`` with an A (198.18.0.0/15, the
    benchmarking range) and, for every ``AAAA_EVERY``-th, an AAAA (2001:db8::/32);
    every ``ALIAS_EVERY``-th index is ``alias-<i>``, a CNAME to ``host-<i-1>``."""
    if names < ALIAS_EVERY:
        raise SystemExit(f"--names must be at least {ALIAS_EVERY}")
    if names > 1 << 17:
        raise SystemExit("--names must be at most 131072 (the addresses are 198.18.0.0/15)")
    soa = (f"{zone}\t{EXT_TTL}\tIN\tSOA\tns.{zone} hostmaster.{zone} 1 7200 1800 86400 "
           f"{EXT_TTL}")
    lines = [soa, f"{zone}\t{EXT_TTL}\tIN\tNS\tns.{zone}",
             f"ns.{zone}\t{EXT_TTL}\tIN\tA\t127.0.0.1"]
    existing: list[Question] = []
    owners = {zone, f"ns.{zone}"}
    for i in range(names):
        if i % ALIAS_EVERY == ALIAS_EVERY - 1:
            owner = f"alias-{i}.{zone}"
            lines.append(f"{owner}\t{EXT_TTL}\tIN\tCNAME\thost-{i - 1}.{zone}")
            existing.append((owner, "A"))
        else:
            owner = f"host-{i}.{zone}"
            lines.append(f"{owner}\t{EXT_TTL}\tIN\tA\t198.{18 + (i >> 16)}.{(i >> 8) & 255}."
                         f"{i & 255}")
            existing.append((owner, "A"))
            if i % AAAA_EVERY == 0:
                lines.append(f"{owner}\t{EXT_TTL}\tIN\tAAAA\t2001:db8::{i:x}")
                existing.append((owner, "AAAA"))
        owners.add(owner)
    missing = tuple(f"missing-{k}.{zone}" for k in range(max(100, names // 5)))
    return ExternalZone("\n".join(lines) + "\n", tuple(existing), missing,
                        frozenset(owners), f"host-0.{zone}")


def external_query_lines(zone: ExternalZone, count: int = QUERIES,
                         seed: int = 7) -> list[str]:
    """dnsperf lines: ``1 - NXDOMAIN_SHARE`` existing questions, the rest A of names
    that do not exist; fixed seed."""
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        if rng.random() < NXDOMAIN_SHARE:
            lines.append(f"{rng.choice(zone.missing)} A")
        else:
            name, rtype = rng.choice(zone.existing)
            lines.append(f"{name} {rtype}")
    return lines


def write_lines(path: Path, lines: Iterable[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def distinct_questions(queries: Path) -> list[Question]:
    """Every distinct (name, type) of a dnsperf file, in order of first appearance."""
    seen: dict[Question, None] = {}
    for line in queries.read_text().splitlines():
        if line.strip():
            name, rtype = line.split()[:2]
            seen[(name, rtype)] = None
    return list(seen)


# -- the servers ---------------------------------------------------------------------------


@contextlib.contextmanager
def knotd_external(directory: Path, zone: ExternalZone) -> Iterator[common.Server]:
    """knotd authoritative for the external test zone (``bench.knot``'s setup)."""
    with knot.knotd(directory, zone.records, probe=zone.probe) as server:
        server.name = f"knotd ({knot.UDP_WORKERS} UDP workers, {EXT_ZONE})"
        yield server


def unbound_config(home: Path, port: int, forward_to: int,
                   local_zones: Sequence[str] = (), local_data: Sequence[str] = ()) -> str:
    """An unbound.conf: ``UNBOUND_THREADS`` threads on 127.0.0.1:``port``, in the
    foreground, everything in ``home``, no remote control, no validation; the test zone
    forwarded to 127.0.0.1:``forward_to``; ``local_zones`` served ``static`` from
    ``local_data`` (resource record lines)."""
    server = [
        f"num-threads: {UNBOUND_THREADS}",
        "do-daemonize: no",
        "interface: 127.0.0.1",
        f"port: {port}",
        'username: ""',
        'chroot: ""',
        f'directory: "{home}"',
        f'pidfile: "{home / "unbound.pid"}"',
        'logfile: ""',
        "use-syslog: no",
        "verbosity: 1",
        "do-ip6: no",
        "access-control: 127.0.0.0/8 allow",
        "do-not-query-localhost: no",  # knotd is on 127.0.0.1
        'module-config: "iterator"',  # no validator: a cache in front of forwarders
        "msg-cache-size: 64m",
        "rrset-cache-size: 128m",
        "num-queries-per-thread: 4096",
        *(f'domain-insecure: "{zone}"' for zone in (EXT_ZONE, *local_zones)),
        *(f'local-zone: "{zone}" static' for zone in local_zones),
        *(f"local-data: '{line}'" for line in local_data),
    ]
    return ("server:\n" + "".join(f"    {line}\n" for line in server)
            + "remote-control:\n    control-enable: no\n"
            + f'forward-zone:\n    name: "{EXT_ZONE}"\n'
            + f"    forward-addr: 127.0.0.1@{forward_to}\n")


@contextlib.contextmanager
def unbound(directory: Path, forward_to: int, probe: str, local_zones: Sequence[str] = (),
            local_data: Sequence[str] = ()) -> Iterator[common.Server]:
    """unbound on a free loopback port (config checked with ``unbound-checkconf``),
    answering once ``probe`` resolves; stopped with SIGTERM."""
    binary = shutil.which("unbound") or "/usr/sbin/unbound"
    checkconf = shutil.which("unbound-checkconf") or "/usr/sbin/unbound-checkconf"
    if not Path(binary).exists():
        raise SystemExit("unbound not found (apt-get install -y unbound)")
    home = Path(tempfile.mkdtemp(prefix="unbound-", dir=directory))
    port = common.free_port()
    conf = home / "unbound.conf"
    conf.write_text(unbound_config(home, port, forward_to, local_zones, local_data))
    checked = subprocess.run([checkconf, str(conf)], capture_output=True, text=True,
                             check=False)
    if checked.returncode != 0:
        raise SystemExit(f"unbound-checkconf {conf}: {checked.stdout}{checked.stderr}")
    log = home / "unbound.log"
    with log.open("w") as out:
        process = subprocess.Popen([binary, "-d", "-c", str(conf)],
                                   stdout=subprocess.DEVNULL, stderr=out)
    server = common.Server(f"unbound ({UNBOUND_THREADS} threads)", port, process, log)
    try:
        common.wait_answering(port, probe, process, log)
        yield server
    finally:
        common.stop(process)


@contextlib.contextmanager
def clusterdns_forwarding(directory: Path, upstream: int, probe: str,
                          metrics: bool = False) -> Iterator[common.Server]:
    """``clusterdns serve --config config/demo.yaml`` on a free port, forwarding to
    127.0.0.1:``upstream``; health and ready off, metrics on a free port when asked
    (``server.extra["metrics"]``). Yields once a demo name and ``probe`` (forwarded)
    both answer."""
    port = common.free_port()
    metrics_port = common.free_port() if metrics else None
    cmd = [*common.CLUSTERDNS, "serve", "--config", str(DEMO_CONFIG),
           "--listen", f"127.0.0.1:{port}", "--health", "", "--ready", "",
           "--metrics", f"127.0.0.1:{metrics_port}" if metrics_port else "",
           "--upstream", f"127.0.0.1:{upstream}", "--lameduck", "0",
           "--log-level", "warning"]
    log = directory / f"clusterdns-{port}.log"
    with log.open("w") as out:
        process = subprocess.Popen(cmd, cwd=common.ROOT, stdout=subprocess.DEVNULL,
                                   stderr=out)
    server = common.Server("clusterdns", port, process, log)
    if metrics_port:
        server.extra["metrics"] = str(metrics_port)
    try:
        common.wait_answering(port, DEMO_PROBE, process, log)
        common.wait_answering(port, probe, process, log)
        yield server
    finally:
        common.stop(process)


# -- answers -------------------------------------------------------------------------------

Answer = tuple[str, frozenset[str]]
"""(rcode, answer records as ``name TYPE rdata`` without TTLs)."""


def ask(port: int, name: str, rtype: str, tries: int = 3) -> Answer:
    """One question over UDP, without EDNS; TTLs are left out (caches count them down)
    and the answer is a set (headless services rotate)."""
    query = dns.message.make_query(name, rtype)
    for attempt in range(tries):
        try:
            reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=2)
        except dns.exception.Timeout:
            if attempt == tries - 1:
                return ("TIMEOUT", frozenset())
            continue
        records = frozenset(f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)} {rd}"
                            for rrset in reply.answer for rd in rrset)
        return (dns.rcode.to_text(reply.rcode()), records)
    return ("TIMEOUT", frozenset())


def fill(server: common.Server, questions: Sequence[Question]) -> dict[str, int]:
    """Ask every question once, one at a time, so each answer is fetched and cached
    (a burst of first questions could overrun ``forward_max_concurrent`` or a socket
    buffer and leave names uncached); returns the count per rcode."""
    rcodes: dict[str, int] = {}
    for name, rtype in questions:
        rcode = ask(server.port, name, rtype)[0]
        rcodes[rcode] = rcodes.get(rcode, 0) + 1
    return rcodes


def compare_answers(servers: Mapping[str, int], questions: Sequence[Question]) -> list[str]:
    """Every question on which the servers (name -> port) differ in rcode or answer."""
    mismatches = []
    for name, rtype in questions:
        answers = {label: ask(port, name, rtype) for label, port in servers.items()}
        if len(set(answers.values())) > 1:
            detail = "; ".join(f"{label} {rcode} {sorted(records)}"
                               for label, (rcode, records) in answers.items())
            mismatches.append(f"{name} {rtype}: {detail}")
    return mismatches


def check_answers(servers: Mapping[str, int], questions: Sequence[Question],
                  size: int = SAMPLE, seed: int = 1) -> int:
    """Compare a sample of the questions and print the mismatches; returns how many."""
    picked = random.Random(seed).sample(list(questions), min(size, len(questions)))
    mismatches = compare_answers(servers, picked)
    for line in mismatches[:20]:
        print(f"  MISMATCH {line}", flush=True)
    if len(mismatches) > 20:
        print(f"  ... and {len(mismatches) - 20} more", flush=True)
    print(f"answer check: {len(picked) - len(mismatches)}/{len(picked)} sampled questions "
          f"answered the same by {', '.join(servers)}", flush=True)
    return len(mismatches)


# -- measuring -----------------------------------------------------------------------------


Responses = dict[tuple[str, str], float]
"""``coredns_dns_responses_total`` by (rcode, plugin)."""


def scrape_responses(metrics_port: int) -> Responses:
    """``coredns_dns_responses_total`` from a clusterdns /metrics, by (rcode, plugin)."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    counts: Responses = {}
    for line in text.splitlines():
        if line.startswith("coredns_dns_responses_total{"):
            labels = dict(_LABEL.findall(line[:line.rindex("}")]))
            key = (labels.get("rcode", ""), labels.get("plugin", ""))
            counts[key] = counts.get(key, 0.0) + float(line.rsplit(None, 1)[1])
    return counts


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass
class Series:
    """One (server, query file) pair measured ``runs`` times; with the server's
    /metrics on, the responses it counted during the runs by (rcode, plugin)."""

    label: str
    server: common.Server
    queries: Path
    qps: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    responses: Responses = field(default_factory=dict)

    def median(self) -> float:
        return statistics.median(self.qps) if self.qps else 0.0

    def runs_text(self) -> str:
        return ", ".join(f"{value:,.0f}" for value in self.qps)


def run_series(series: Sequence[Series], runs: int, seconds: float, clients: int,
               outstanding: int) -> None:
    """dnsperf runs interleaved (run 1 of every series, then run 2, ...), so drifting
    background load hits them alike. More than ``LOST_NOTE`` of the queries lost, and
    any SERVFAIL or REFUSED, become notes. A server with /metrics on is scraped before
    and after each of its runs."""
    for run in range(runs):
        for one in series:
            metrics = one.server.extra.get("metrics")
            before = scrape_responses(int(metrics)) if metrics else {}
            result = common.dnsperf(one.server.port, one.queries, seconds, clients=clients,
                                    outstanding=outstanding)
            if metrics:
                for key, value in scrape_responses(int(metrics)).items():
                    one.responses[key] = (one.responses.get(key, 0.0) + value
                                          - before.get(key, 0.0))
            one.qps.append(result.qps)
            lost = 100 * result.lost / max(result.sent, 1)
            print(f"run {run + 1} {one.label}: {result.qps:,.0f} q/s, {lost:.2f}% lost, "
                  f"avg latency {result.avg_latency * 1e3:.2f} ms, {result.rcodes}",
                  flush=True)
            if result.lost > LOST_NOTE * result.sent:
                one.notes.append(f"run {run + 1}: {lost:.2f}% lost")
            if "SERVFAIL" in result.rcodes or "REFUSED" in result.rcodes:
                one.notes.append(f"run {run + 1}: {result.rcodes}")


def ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def measure(args: argparse.Namespace) -> common.Table:
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="clusterdns-bench-") as tmp, \
            contextlib.ExitStack() as stack:
        directory = Path(tmp)
        zone = external_zone(args.names)
        external = write_lines(directory / "external.txt",
                               external_query_lines(zone, args.queries))
        in_zone = write_lines(directory / "in-zone.txt", common.query_lines(
            common.records_text(DEMO_CONFIG), args.queries))
        questions = distinct_questions(external)
        print(f"external zone {EXT_ZONE}: {args.names} names, {len(questions)} distinct "
              f"questions in {args.queries} queries; {common.machine_load()}", flush=True)
        if len(questions) > CLUSTERDNS_CACHE_SIZE:
            notes.append(f"{len(questions)} distinct questions > clusterdns cache_size "
                         f"{CLUSTERDNS_CACHE_SIZE}: some answers are evicted")
            print(notes[-1], flush=True)
        authority = stack.enter_context(knotd_external(directory, zone))
        theirs = stack.enter_context(unbound(directory, authority.port, zone.probe))
        ours = stack.enter_context(clusterdns_forwarding(directory, authority.port,
                                                         zone.probe))
        for server in (theirs, ours):
            rcodes = fill(server, questions)
            print(f"filled {server.name}'s cache: {rcodes}", flush=True)
            if set(rcodes) - {"NOERROR", "NXDOMAIN"}:
                notes.append(f"filling {server.name}: {rcodes}")
            common.warm_up(server, external, "none")
        common.warm_up(ours, in_zone, "none")
        bad = check_answers({"clusterdns": ours.port, "unbound": theirs.port,
                             "knotd": authority.port}, questions)
        if bad:
            notes.append(f"{bad} of {min(SAMPLE, len(questions))} sampled external "
                         "questions answered differently by clusterdns, unbound or knotd")
        series = [Series(theirs.name, theirs, external),
                  Series("clusterdns, external (cached)", ours, external),
                  Series("clusterdns, in-zone", ours, in_zone)]
        run_series(series, args.runs, args.seconds, args.clients, args.outstanding)
        log_tail = ours.log.read_text().strip()
    if log_tail:
        notes.append(f"clusterdns log: {log_tail[-300:]}")
    reference, external_ours, in_zone_ours = series
    vs_unbound = ratio(external_ours.median(), reference.median())
    vs_in_zone = ratio(external_ours.median(), in_zone_ours.median())
    failed = [f"{value:.2f}x < {target}x {what}"
              for value, target, what in ((vs_unbound, TARGET_UNBOUND, "unbound"),
                                          (vs_in_zone, TARGET_IN_ZONE, "in-zone"))
              if value < target]
    rows = [
        [reference.label, "external", f"{reference.median():,.0f}", reference.runs_text(),
         "1.00x", "", "reference", ""],
        [external_ours.label, "external", f"{external_ours.median():,.0f}",
         external_ours.runs_text(), f"{vs_unbound:.2f}x", f"{vs_in_zone:.2f}x",
         f">= {TARGET_UNBOUND}x unbound, >= {TARGET_IN_ZONE}x in-zone",
         "FAIL: " + ", ".join(failed) if failed else "pass"],
        [in_zone_ours.label, "in-zone (demo)", f"{in_zone_ours.median():,.0f}",
         in_zone_ours.runs_text(), f"{ratio(in_zone_ours.median(), reference.median()):.2f}x",
         "1.00x", "reference", ""],
    ]
    for one in series:
        notes += [f"{one.label}: {note}" for note in one.notes]
    rows += [[note, "", "", "", "", "", "", ""] for note in notes]
    title = (f"Cached out-of-zone names vs unbound and in-zone (dnsperf -c {args.clients} "
             f"-q {args.outstanding} -l {args.seconds:g}, {args.names} external names, "
             f"medians of {args.runs})")
    return title, ["server", "queries", "QPS", "runs", "vs unbound", "vs own in-zone",
                   "target", ""], rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=3, help="runs per series (medians)")
    parser.add_argument("--seconds", type=float, default=10.0, help="dnsperf -l per run")
    parser.add_argument("--names", type=int, default=NAMES,
                        help=f"names in the external test zone (default {NAMES})")
    parser.add_argument("--queries", type=int, default=QUERIES,
                        help="lines in each query file (dnsperf loops over it)")
    parser.add_argument("--clients", type=int, default=8, help="dnsperf -c")
    parser.add_argument("--outstanding", type=int, default=500, help="dnsperf -q")


def main_table(runs: int = 3) -> common.Table:
    return common.table_for(add_arguments, measure, runs)


def main() -> None:
    common.run_main(__doc__, add_arguments, measure)


if __name__ == "__main__":
    main()
