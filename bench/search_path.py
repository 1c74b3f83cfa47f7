"""The queries pods really send: a search-path mix of short, namespaced and external names.

Why it exists: a pod does not ask for ``httpenv.default.svc.cluster.local``; it asks for
``httpenv``, and its resolver (glibc, ``ndots:5``) turns that into a series of queries
through the search list. For a name with fewer than five dots every suffix is tried
before the name itself, so an external name costs three NXDOMAINs from the cluster zone
before it is forwarded. The figure that matters to a cluster is the rate of *that*
traffic and where it is answered: in-zone positive, in-zone NXDOMAIN, or forwarded
(from the cache, after warm-up). Acceptance: report q/s and the share answered from
each path, beside unbound on the same mix where it applies.

The pod is in namespace ``default`` with ``search default.svc.cluster.local
svc.cluster.local cluster.local`` and ``ndots:5``. Each lookup sends A then AAAA for
each candidate name in turn and stops at the first candidate where either has an answer
(glibc goes on past NXDOMAIN and past NODATA for both); a name with five dots or more is
tried as itself first, one with a trailing dot only as itself. The mix (``--mix``,
shares of lookups):

- ``short``: a service of ``default`` (``httpenv``): found at the first suffix;
- ``ns``: ``<service>.<namespace>`` of any namespace (``svc-clusterip-httpd.default``):
  NXDOMAIN at ``...default.default.svc.cluster.local``, found at the second suffix;
- ``external``: a name of the external test zone (``host-17.bench-ext.example``):
  three NXDOMAINs from the cluster zone, then forwarded;
- ``fqdn``: the same with a trailing dot: asked once, forwarded.

Services are those of the demo cluster (``config/demo.yaml``) with addresses; the
ExternalName services are left out, since unbound's local data does not chase CNAMEs.
The query file is exactly the queries these lookups send, in order. The external zone,
knotd, unbound and the forwarding clusterdns come from ``bench.forward_qps``.

Measured: clusterdns (``--metrics`` on a free port) forwarding to knotd, and unbound
(2 threads) with the demo cluster's records as static local data (``clusterdns
records``: SOA, NS, A, AAAA, SRV, PTR, TXT) and the external zone forwarded to knotd, so
both answer the identical file (checked on a sample, and against the rcodes the model
expects). Both get every forwarded question once and one pass over the file first.
dnsperf ``-c 8 -q 500 -l 10``, runs interleaved, medians of ``--runs``. The share per
path comes from the query file and, for clusterdns, from its
``coredns_dns_responses_total{rcode,plugin}`` scraped before and after each run
(``kubernetes``: in-zone; ``cache``: forwarded, from the cache; ``forward``: asked
upstream).

Run: ``.venv/bin/python -m bench.search_path [--runs 3] [--seconds 10]
[--mix short=50,ns=20,external=30]``.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import dnsperf_common as common
from bench import forward_qps as fq

TABLE_ORDER = 5

SEARCH = ("default.svc.cluster.local.", "svc.cluster.local.", "cluster.local.")
NDOTS = 5
CLUSTER_ZONE = "cluster.local."
POD_NAMESPACE = "default"
KINDS = ("short", "ns", "external", "fqdn")
DEFAULT_MIX = "short=50,ns=20,external=30"
LOCAL_TYPES = frozenset({"SOA", "NS", "A", "AAAA", "SRV", "PTR", "TXT"})
"""Record types given to unbound as local data (not CNAME: unbound would not chase it)."""

# Where a query is answered, as the query file predicts it.
IN_ZONE_ANSWER = "in-zone, answer"
IN_ZONE_NODATA = "in-zone, NODATA"
IN_ZONE_NXDOMAIN = "in-zone, NXDOMAIN"
FORWARDED = "forwarded"
PATHS = (IN_ZONE_ANSWER, IN_ZONE_NODATA, IN_ZONE_NXDOMAIN, FORWARDED)


# -- the names and the model of the resolver -----------------------------------------------


@dataclass(frozen=True)
class Record:
    owner: str
    ttl: str
    rtype: str
    rdata: str

    def text(self) -> str:
        return f"{self.owner} {self.ttl} IN {self.rtype} {self.rdata}"


def parse_records(text: str) -> list[Record]:
    """Master-file lines (``owner ttl class type rdata``) as records; owners lower case."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith(";"):
            continue
        owner, ttl, _class, rtype, rdata = line.split(None, 4)
        out.append(Record(owner.lower(), ttl, rtype, rdata))
    return out


@dataclass(frozen=True)
class Names:
    """What the lookups are drawn from and what the model knows of the answers."""

    short: tuple[str, ...]
    """Services of the pod's namespace, as a pod names them (``httpenv``)."""
    qualified: tuple[str, ...]
    """Every service as ``<service>.<namespace>``."""
    external: tuple[str, ...]
    """Names of the external test zone with an answer, without the trailing dot."""
    answered: frozenset[tuple[str, str]]
    """(name, type) pairs with records in the answer, in-zone and external."""
    existing: frozenset[str]
    """Every name that exists (owners and the empty non-terminals above them)."""


def ancestors(name: str, zone: str) -> list[str]:
    """``name`` and every name between it and ``zone`` (inclusive)."""
    out = [name]
    while name != zone and "." in name.rstrip("."):
        name = name.split(".", 1)[1]
        out.append(name)
    return out


def names_for(records: Sequence[Record], zone: fq.ExternalZone) -> Names:
    """The services of the demo cluster (``<svc>.<ns>.svc.cluster.local`` with A or
    AAAA records) and the external zone's names with an answer."""
    services: set[str] = set()
    answered: set[tuple[str, str]] = set()
    existing: set[str] = set()
    for record in records:
        if record.owner.endswith("." + CLUSTER_ZONE) or record.owner == CLUSTER_ZONE:
            existing.update(ancestors(record.owner, CLUSTER_ZONE))
        if record.rtype not in ("A", "AAAA"):
            continue
        answered.add((record.owner, record.rtype))
        labels = record.owner.rstrip(".").split(".")
        if len(labels) == 5 and labels[2] == "svc" and record.owner.endswith(CLUSTER_ZONE):
            services.add(f"{labels[0]}.{labels[1]}")
    if not services:
        raise SystemExit("the demo records have no services with addresses")
    short = tuple(sorted(s.split(".")[0] for s in services
                         if s.split(".")[1] == POD_NAMESPACE))
    if not short:
        raise SystemExit(f"the demo cluster has no services in {POD_NAMESPACE}")
    answered.update(zone.existing)
    existing.update(zone.owners)
    external = tuple(sorted({name.rstrip(".") for name, _ in zone.existing}))
    return Names(short, tuple(sorted(services)), external, frozenset(answered),
                 frozenset(existing))


def candidates(name: str) -> list[str]:
    """The names a glibc resolver with our search list and ``ndots:5`` tries, in order."""
    if name.endswith("."):
        return [name.lower()]
    name = name.lower()
    searched = [f"{name}.{suffix}" for suffix in SEARCH]
    if name.count(".") >= NDOTS:
        return [f"{name}.", *searched]
    return [*searched, f"{name}."]


def lookup(name: str, names: Names) -> list[fq.Question]:
    """The queries one lookup of ``name`` sends: A and AAAA for each candidate, up to
    the first where either has an answer."""
    sent: list[fq.Question] = []
    for candidate in candidates(name):
        sent += [(candidate, "A"), (candidate, "AAAA")]
        if (candidate, "A") in names.answered or (candidate, "AAAA") in names.answered:
            break
    return sent


def in_our_zone(name: str) -> bool:
    return name == CLUSTER_ZONE or name.endswith("." + CLUSTER_ZONE)


def path_of(question: fq.Question, names: Names) -> str:
    name, rtype = question
    if not in_our_zone(name):
        return FORWARDED
    if (name, rtype) in names.answered:
        return IN_ZONE_ANSWER
    return IN_ZONE_NODATA if name in names.existing else IN_ZONE_NXDOMAIN


def expected_rcode(question: fq.Question, names: Names) -> str:
    return "NOERROR" if question[0] in names.existing else "NXDOMAIN"


def parse_mix(text: str) -> dict[str, float]:
    """``short=50,ns=20,external=30[,fqdn=N]`` as shares of lookups summing to 1."""
    shares: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        kind, _, value = part.partition("=")
        kind = kind.strip()
        if kind not in KINDS:
            raise SystemExit(f"--mix: unknown kind {kind!r} (known: {', '.join(KINDS)})")
        try:
            shares[kind] = float(value)
        except ValueError:
            raise SystemExit(f"--mix: {part!r} is not KIND=NUMBER") from None
        if shares[kind] < 0:
            raise SystemExit(f"--mix: {part!r} is negative")
    total = sum(shares.values())
    if total <= 0:
        raise SystemExit("--mix: the shares add up to nothing")
    return {kind: value / total for kind, value in shares.items() if value > 0}


def mix_text(mix: Mapping[str, float]) -> str:
    return ", ".join(f"{kind} {share:.0%}" for kind, share in mix.items())


@dataclass(frozen=True)
class QueryFile:
    lines: list[str]
    lookups: int
    per_kind: dict[str, int]
    """Lookups of each kind."""
    paths: dict[str, int]
    """Queries per expected path (``PATHS``)."""


def search_queries(names: Names, mix: Mapping[str, float], count: int = fq.QUERIES,
                   seed: int = 11) -> QueryFile:
    """Whole lookups drawn from ``mix`` until the file has at least ``count`` queries."""
    rng = random.Random(seed)
    kinds = list(mix)
    weights = [mix[kind] for kind in kinds]
    pools = {"short": names.short, "ns": names.qualified, "external": names.external,
             "fqdn": names.external}
    lines: list[str] = []
    per_kind: Counter[str] = Counter()
    paths: Counter[str] = Counter()
    lookups = 0
    while len(lines) < count:
        kind = rng.choices(kinds, weights)[0]
        name = rng.choice(pools[kind]) + ("." if kind == "fqdn" else "")
        for question in lookup(name, names):
            lines.append(f"{question[0]} {question[1]}")
            paths[path_of(question, names)] += 1
        per_kind[kind] += 1
        lookups += 1
    return QueryFile(lines, lookups, dict(per_kind), dict(paths))


# -- unbound with the cluster as local data ------------------------------------------------


def local_zones(records: Sequence[Record]) -> list[str]:
    return sorted({r.owner for r in records if r.rtype == "SOA"}, key=len)


def local_data(records: Sequence[Record]) -> list[str]:
    """Every record unbound can serve as ``local-data`` (``LOCAL_TYPES``)."""
    lines = []
    for record in records:
        if record.rtype in LOCAL_TYPES:
            if "'" in record.rdata:
                raise SystemExit(f"cannot quote for unbound: {record.text()}")
            lines.append(record.text())
    return lines


# -- checking and measuring ----------------------------------------------------------------


def check(servers: Mapping[str, int], questions: Sequence[fq.Question], names: Names,
          size: int = fq.SAMPLE, seed: int = 1) -> list[str]:
    """A sample of the questions: the servers must agree with each other and give the
    rcode the model expects. Returns the differences (printed too)."""
    picked = random.Random(seed).sample(list(questions), min(size, len(questions)))
    problems = fq.compare_answers(servers, picked)
    for question in picked:
        want = expected_rcode(question, names)
        for label, port in servers.items():
            rcode = fq.ask(port, *question)[0]
            if rcode != want:
                problems.append(f"{question[0]} {question[1]}: {label} {rcode}, "
                                f"the model expects {want}")
    for line in problems[:20]:
        print(f"  MISMATCH {line}", flush=True)
    print(f"answer check: {len(problems)} problems in {len(picked)} sampled questions "
          f"({', '.join(servers)} and the model)", flush=True)
    return problems


IN_ZONE_NOERROR = "in-zone, NOERROR (answer or NODATA)"
FROM_CACHE = "forwarded, from the cache"
UPSTREAM = "forwarded, asked upstream"
MEASURED_PATHS = {
    ("kubernetes", "NOERROR"): IN_ZONE_NOERROR,
    ("kubernetes", "NXDOMAIN"): IN_ZONE_NXDOMAIN,
    ("cache", "NOERROR"): FROM_CACHE,
    ("cache", "NXDOMAIN"): FROM_CACHE,
    ("forward", "NOERROR"): UPSTREAM,
    ("forward", "NXDOMAIN"): UPSTREAM,
}
"""(plugin, rcode) of ``coredns_dns_responses_total`` -> the path it stands for."""


def measured_paths(responses: fq.Responses) -> dict[str, float]:
    """The clusterdns response counters grouped by path; other (plugin, rcode) pairs
    keep their labels."""
    out: dict[str, float] = {}
    for (rcode, plugin), count in sorted(responses.items()):
        if count:
            path = MEASURED_PATHS.get((plugin, rcode), f'plugin="{plugin}" rcode={rcode}')
            out[path] = out.get(path, 0.0) + count
    return out


def file_paths(paths: Mapping[str, int]) -> dict[str, int]:
    """The query file's paths in the rows of ``measured_paths`` (every forwarded
    question is in the cache after the warm-up)."""
    return {IN_ZONE_NOERROR: paths.get(IN_ZONE_ANSWER, 0) + paths.get(IN_ZONE_NODATA, 0),
            IN_ZONE_NXDOMAIN: paths.get(IN_ZONE_NXDOMAIN, 0),
            FROM_CACHE: paths.get(FORWARDED, 0), UPSTREAM: 0}


def share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def measure(args: argparse.Namespace) -> list[common.Table]:
    mix = parse_mix(args.mix)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="clusterdns-bench-") as tmp, \
            contextlib.ExitStack() as stack:
        directory = Path(tmp)
        zone = fq.external_zone(args.names)
        records = parse_records(common.records_text(fq.DEMO_CONFIG))
        names = names_for(records, zone)
        made = search_queries(names, mix, args.queries)
        queries = fq.write_lines(directory / "search.txt", made.lines)
        questions = fq.distinct_questions(queries)
        forwarded = [q for q in questions if not in_our_zone(q[0])]
        per_lookup = len(made.lines) / made.lookups
        print(f"search-path file: {made.lookups} lookups ({mix_text(mix)}) = "
              f"{len(made.lines)} queries ({per_lookup:.2f} per lookup), "
              f"{len(questions)} distinct, {len(forwarded)} of them forwarded; "
              f"{common.machine_load()}", flush=True)
        if len(forwarded) > fq.CLUSTERDNS_CACHE_SIZE:
            notes.append(f"{len(forwarded)} distinct forwarded questions > clusterdns "
                         f"cache_size {fq.CLUSTERDNS_CACHE_SIZE}: some are evicted")
        authority = stack.enter_context(fq.knotd_external(directory, zone))
        theirs = stack.enter_context(fq.unbound(
            directory, authority.port, zone.probe, local_zones(records), local_data(records)))
        theirs.name = f"unbound ({fq.UNBOUND_THREADS} threads, the cluster as local data)"
        ours = stack.enter_context(fq.clusterdns_forwarding(directory, authority.port,
                                                            zone.probe, metrics=True))
        for server in (theirs, ours):
            rcodes = fq.fill(server, forwarded)
            print(f"filled {server.name}'s cache: {rcodes}", flush=True)
            if set(rcodes) - {"NOERROR", "NXDOMAIN"}:
                notes.append(f"filling {server.name}: {rcodes}")
            common.warm_up(server, queries, "none")
        problems = check({"clusterdns": ours.port, "unbound": theirs.port}, questions, names)
        if problems:
            notes.append(f"{len(problems)} answer problems in "
                         f"{min(fq.SAMPLE, len(questions))} sampled questions: "
                         f"{problems[0][:200]}")
        series = [fq.Series(ours.name, ours, queries), fq.Series(theirs.name, theirs, queries)]
        fq.run_series(series, args.runs, args.seconds, args.clients, args.outstanding)
        log_tail = ours.log.read_text().strip()
    if log_tail:
        notes.append(f"clusterdns log: {log_tail[-300:]}")
    for one in series:
        notes += [f"{one.label}: {note}" for note in one.notes]
    mine, reference = series
    rows = []
    for one in series:
        rows.append([one.label, f"{one.median():,.0f}", one.runs_text(),
                     f"{fq.ratio(one.median(), reference.median()):.2f}x",
                     f"{one.median() / per_lookup:,.0f}"])
    rows += [[note, "", "", "", ""] for note in notes]
    title = (f"Search path, pod in {POD_NAMESPACE} with ndots:5 ({mix_text(mix)} of "
             f"{made.lookups:,} lookups = {len(made.lines):,} queries; dnsperf -c "
             f"{args.clients} -q {args.outstanding} -l {args.seconds:g}, medians of "
             f"{args.runs})")
    qps_table: common.Table = (title, ["server", "QPS", "runs", "vs unbound",
                                       "lookups/s"], rows)

    total = len(made.lines)
    expected = file_paths(made.paths)
    measured = measured_paths(mine.responses)
    counted = sum(measured.values())
    path_rows = []
    for path in [*expected, *(p for p in measured if p not in expected)]:
        label = path
        if path == IN_ZONE_NOERROR:
            label += (f"; in the file {share(made.paths.get(IN_ZONE_ANSWER, 0), total)} "
                      f"answer + {share(made.paths.get(IN_ZONE_NODATA, 0), total)} NODATA")
        path_rows.append([label, f"{expected[path]:,}" if path in expected else "",
                          share(expected.get(path, 0), total),
                          f"{measured.get(path, 0):,.0f}", share(measured.get(path, 0), counted)])
    kinds = ", ".join(f"{kind} {made.per_kind.get(kind, 0):,}" for kind in mix)
    path_rows.append([f"lookups per kind: {kinds}", "", "", "", ""])
    paths_table: common.Table = (
        "Search path: where the queries are answered (the query file; clusterdns's "
        f"coredns_dns_responses_total over its {args.runs} runs)",
        ["path", "queries in the file", "share", "clusterdns responses", "share"],
        path_rows)
    return [qps_table, paths_table]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=3, help="runs per server (medians)")
    parser.add_argument("--seconds", type=float, default=10.0, help="dnsperf -l per run")
    parser.add_argument("--mix", default=DEFAULT_MIX,
                        help=f"shares of lookups by kind ({', '.join(KINDS)}); "
                             f"default {DEFAULT_MIX}")
    parser.add_argument("--names", type=int, default=fq.NAMES,
                        help=f"names in the external test zone (default {fq.NAMES})")
    parser.add_argument("--queries", type=int, default=fq.QUERIES,
                        help="queries in the file, at least (whole lookups)")
    parser.add_argument("--clients", type=int, default=8, help="dnsperf -c")
    parser.add_argument("--outstanding", type=int, default=500, help="dnsperf -q")


def main_table(runs: int = 3) -> list[common.Table]:
    return common.table_for(add_arguments, measure, runs)


def main() -> None:
    common.run_main(__doc__, add_arguments, measure)


if __name__ == "__main__":
    main()
