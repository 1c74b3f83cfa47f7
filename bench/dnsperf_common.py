"""What the dnsperf benchmarks share: the test cluster, the query file, the servers, dnsperf.

The QPS, CPU-per-query and latency scripts must measure clusterdns and knotd on exactly
the same records and the same queries, so everything they have in common lives here:

- the test cluster (``write_cluster``): synthetic services from ``bench.cluster``, some of
  them headless, written as a ``kubectl get -o json`` List and served by clusterdns's file
  source; ``clusterdns records`` gives about 10,000 records for it;
- the query file (``write_queries``): 90% existing names (A of services, SRV of named
  ports, AAAA of IPv4-only services, which is NODATA), 10% NXDOMAIN, fixed seed;
- ``Server``: a DNS server process (clusterdns started the way a user starts it, or knotd
  from ``bench.knot``) with the pids whose CPU time counts;
- ``dnsperf``: one dnsperf run, parsed.

Nothing here asserts anything about speed; the scripts print numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import dns.exception
import dns.message
import dns.query
import dns.rcode

from bench import cluster
from bench.run_all import Table, markdown

__all__ = ["Table", "markdown"]

ROOT = Path(__file__).resolve().parents[1]
CLUSTERDNS = [sys.executable, "-m", "clusterdns"]
ZONES = ("cluster.local", "in-addr.arpa")
DOMAIN = "cluster.local"

# The shape of the test cluster: services svc-<i> in 50 namespaces, each with a ClusterIP
# (or headless) and a named port; the first SLICED services have one EndpointSlice of
# PER_SLICE ready pods, and every HEADLESS_EVERY-th of those is headless.
SERVICES = 1_500
SLICED = 300
PER_SLICE = 5
HEADLESS_EVERY = 4
NXDOMAIN_POOL = 2_000



# -- the test cluster and its query file ---------------------------------------------------


def cluster_objects(services: int = SERVICES, sliced: int = SLICED,
                    per_slice: int = PER_SLICE) -> Iterator[dict[str, Any]]:
    """``bench.cluster`` objects with every ``HEADLESS_EVERY``-th backed service headless."""
    for obj in cluster.objects(services, sliced * per_slice, per_slice):
        if obj["kind"] == "Service":
            index = int(obj["metadata"]["name"].removeprefix("svc-"))
            if index < sliced and index % HEADLESS_EVERY == 0:
                obj["spec"]["clusterIP"] = "None"
                obj["spec"]["clusterIPs"] = ["None"]
        yield obj


def is_headless(index: int, sliced: int = SLICED) -> bool:
    return index < sliced and index % HEADLESS_EVERY == 0


def write_cluster(directory: Path, services: int = SERVICES, sliced: int = SLICED,
                  per_slice: int = PER_SLICE) -> Path:
    """The test cluster as one ``kubectl get -o json`` List; returns its path."""
    path = directory / "cluster.json"
    doc = {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""},
           "items": list(cluster_objects(services, sliced, per_slice))}
    path.write_text(json.dumps(doc))
    return path


def free_port() -> int:
    """A loopback port free for both UDP and TCP (right now)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def write_config(directory: Path, source: Path, port: int) -> Path:
    """A clusterdns config serving ``source`` on 127.0.0.1:``port``; health, ready and
    metrics stay on (we measure the real thing) but on free loopback ports."""
    path = directory / f"clusterdns-{port}.yaml"
    path.write_text(
        f"source: file:{source}\n"
        f"listen: [\"127.0.0.1:{port}\"]\n"
        f"zones: [{', '.join(ZONES)}]\n"
        f"health: 127.0.0.1:{free_port()}\n"
        f"ready: 127.0.0.1:{free_port()}\n"
        f"metrics: 127.0.0.1:{free_port()}\n"
        "lameduck: 0\n")
    return path


def records_text(config: Path) -> str:
    """``clusterdns records --config config``: every record served, as master-file text."""
    done = subprocess.run([*CLUSTERDNS, "records", "--config", str(config)], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"clusterdns records failed: {done.stderr[-2000:]}")
    return done.stdout


def record_count(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith(";"))


@dataclass(frozen=True)
class QueryMix:
    """Shares of the query file; the rest of 1.0 is NXDOMAIN."""

    a: float = 0.65
    srv: float = 0.15
    aaaa_nodata: float = 0.10


def query_lines(records: str, count: int = 100_000, seed: int = 5,
                mix: QueryMix = QueryMix()) -> list[str]:
    """dnsperf input lines (``name TYPE``) drawn from the records clusterdns serves:
    A of services (ClusterIP and headless), SRV of named ports, AAAA of IPv4-only
    services (NODATA) and, for the rest, names from ``nxdomain_names``."""
    services: list[str] = []
    srvs: list[str] = []
    v4_only: set[str] = set()
    v6: set[str] = set()
    for line in records.splitlines():
        if not line or line.startswith(";"):
            continue
        owner, _ttl, _class, rtype, *_ = line.split()
        labels = owner.rstrip(".").split(".")
        # <svc>.<ns>.svc.<domain>: exactly two labels left of "svc"
        is_service = len(labels) == 5 and labels[2] == "svc" and owner.endswith(DOMAIN + ".")
        if rtype == "A" and is_service:
            v4_only.add(owner)
        elif rtype == "AAAA" and is_service:
            v6.add(owner)
        elif rtype == "SRV" and owner.startswith("_"):
            srvs.append(owner)
    services = sorted(v4_only)
    nodata = sorted(v4_only - v6)
    srvs = sorted(set(srvs))
    if not services or not srvs or not nodata:
        raise SystemExit("the records have no services / SRV / IPv4-only names to query")
    rng = random.Random(seed)
    missing = nxdomain_names(services, rng)
    lines = []
    for _ in range(count):
        roll = rng.random()
        if roll < mix.a:
            lines.append(f"{rng.choice(services)} A")
        elif roll < mix.a + mix.srv:
            lines.append(f"{rng.choice(srvs)} SRV")
        elif roll < mix.a + mix.srv + mix.aaaa_nodata:
            lines.append(f"{rng.choice(nodata)} AAAA")
        else:
            lines.append(f"{rng.choice(missing)} A")
    return lines


def nxdomain_names(services: Sequence[str], rng: random.Random,
                   count: int = NXDOMAIN_POOL) -> list[str]:
    """Names that do not exist, the kind a cluster sees: half are search-path expansions
    (a pod in ``ns-b`` looking up ``svc-1.ns-a`` with ndots:5 first asks for
    ``svc-1.ns-a.ns-b.svc.<domain>``), half services missing from an existing namespace.
    A fixed pool, so they repeat as real misses do."""
    names = []
    for k in range(count):
        if k % 2 == 0:
            svc, ns = rng.choice(services).split(".")[:2]
            other = cluster.namespace_of(rng.randrange(cluster.NAMESPACES))
            names.append(f"{svc}.{ns}.{other}.svc.{DOMAIN}.")
        else:
            ns = cluster.namespace_of(rng.randrange(cluster.NAMESPACES))
            names.append(f"nosuch-{k}.{ns}.svc.{DOMAIN}.")
    return names


def write_queries(directory: Path, records: str, count: int = 100_000,
                  seed: int = 5) -> Path:
    path = directory / "queries.txt"
    path.write_text("\n".join(query_lines(records, count, seed)) + "\n")
    return path


# -- server processes ----------------------------------------------------------------------


@dataclass
class Server:
    """A DNS server process listening on 127.0.0.1:``port``."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    extra: dict[str, str] = field(default_factory=dict)

    def pids(self) -> list[int]:
        """The server process and every descendant (workers), whose CPU time counts."""
        return [self.process.pid, *descendants(self.process.pid)]

    def cpu_seconds(self) -> float:
        """utime + stime of every process of the server (all threads), in seconds."""
        return sum(process_cpu_seconds(pid) for pid in self.pids())


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in children:
                found.append(int(child))
                todo.append(int(child))
    return found


def process_cpu_seconds(pid: int) -> float:
    """utime + stime from /proc/<pid>/stat (every thread of the process), in seconds."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    # after "pid (comm) ": state is field 3, so utime (14) and stime (15) are at 11, 12
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_answering(port: int, name: str, process: subprocess.Popen[bytes], log: Path,
                   timeout: float = 60.0, interval: float = 0.05) -> None:
    """Wait until ``name`` A gets NOERROR with an answer from 127.0.0.1:``port``."""
    query = dns.message.make_query(name, "A")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited ({process.returncode}): "
                             f"{log.read_text()[-2000:]}")
        try:
            reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=0.5)
            if reply.rcode() == dns.rcode.NOERROR and reply.answer:
                return
        except (dns.exception.Timeout, OSError):
            pass
        time.sleep(interval)
    raise SystemExit(f"no answer for {name} on port {port} within {timeout} s")


def taskset(cpus: str | None) -> list[str]:
    """``taskset -c cpus`` as a command prefix (nothing when cpus is None)."""
    if cpus is None:
        return []
    if shutil.which("taskset") is None:
        raise SystemExit("taskset not found (apt-get install -y util-linux)")
    return ["taskset", "-c", cpus]


def workers_supported() -> bool:
    """Whether this clusterdns has ``serve --workers`` (issue 5, item 3)."""
    done = subprocess.run([*CLUSTERDNS, "serve", "--help"], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    return "--workers" in done.stdout


def probe_name(services: int = SERVICES) -> str:
    last = services - 1
    return f"svc-{last}.{cluster.namespace_of(last)}.svc.{DOMAIN}"


@contextlib.contextmanager
def clusterdns(directory: Path, source: Path, workers: int | None = None,
               cpus: str | None = None) -> Iterator[Server]:
    """``clusterdns serve --config X --listen 127.0.0.1:PORT [--workers N]`` as a user
    runs it, answering the test cluster; stopped with SIGTERM on exit."""
    port = free_port()
    config = write_config(directory, source, port)
    cmd = [*taskset(cpus), *CLUSTERDNS, "serve", "--config", str(config),
           "--listen", f"127.0.0.1:{port}", "--log-level", "warning"]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    log = directory / f"clusterdns-{port}.log"
    with log.open("w") as out:
        process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=out)
    name = "clusterdns" if workers is None else f"clusterdns --workers {workers}"
    server = Server(name, port, process, log)
    try:
        wait_answering(port, probe_name(), process, log)
        yield server
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- dnsperf -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DnsperfResult:
    sent: int
    completed: int
    lost: int
    qps: float
    avg_latency: float
    latencies: tuple[float, ...] = ()
    """Per-query latency in seconds (only with ``verbose=True``)."""
    rcodes: str = ""


_VERBOSE = re.compile(r"^> \S+ \S+ \S+ ([0-9.]+)$", re.MULTILINE)


def dnsperf(port: int, queries: Path, seconds: float, clients: int = 1, outstanding: int = 100,
            rate: int | None = None, threads: int = 1, cpus: str | None = None,
            verbose: bool = False, source: str | None = None) -> DnsperfResult:
    """One dnsperf run against 127.0.0.1:``port`` over UDP.

    ``clients`` (-c) sockets, ``outstanding`` (-q) queries in flight, ``rate`` (-Q) caps
    queries per second, ``threads`` (-T), ``source`` (-a) the address queries come from.
    ``verbose`` collects every query's latency.
    """
    if shutil.which("dnsperf") is None:
        raise SystemExit("dnsperf not found (apt-get install -y dnsperf)")
    cmd = [*taskset(cpus), "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries),
           "-l", str(seconds), "-c", str(clients), "-q", str(outstanding), "-T", str(threads),
           "-t", "2"]
    if rate is not None:
        cmd += ["-Q", str(rate)]
    if source is not None:
        cmd += ["-a", source]
    if verbose:
        cmd.append("-v")
    # dnsperf writes its report (with -v, one line per answered query: ~16 MB per 10 s at
    # 20k q/s) to a file, not a pipe: read through a pipe, dnsperf stalls whenever the
    # pipe is full and this process has not drained it yet, and the answers that arrive
    # meanwhile are timed late -- the harness's own delay would count as the server's.
    with tempfile.TemporaryFile() as report:
        done = subprocess.run(cmd, stdout=report, stderr=subprocess.PIPE, text=True,
                              check=False)
        report.seek(0)
        out = report.read().decode()
    if done.returncode != 0:
        raise SystemExit(f"dnsperf failed ({done.returncode}): {done.stderr[-2000:]}")
    return parse_dnsperf(out, verbose)


def parse_dnsperf(out: str, verbose: bool = False) -> DnsperfResult:
    def number(label: str) -> float:
        match = re.search(rf"^\s*{re.escape(label)}:\s+([0-9.]+)", out, re.MULTILINE)
        if match is None:
            raise SystemExit(f"dnsperf output has no {label!r}:\n{out[-2000:]}")
        return float(match.group(1))

    rcodes = re.search(r"^\s*Response codes:\s+(.*)$", out, re.MULTILINE)
    latencies = tuple(float(m) for m in _VERBOSE.findall(out)) if verbose else ()
    return DnsperfResult(
        sent=int(number("Queries sent")), completed=int(number("Queries completed")),
        lost=int(number("Queries lost")), qps=number("Queries per second"),
        avg_latency=number("Average Latency (s)"), latencies=latencies,
        rcodes=rcodes.group(1) if rcodes else "")


# -- the whole setup -----------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    directory: Path
    cluster: Path
    records: str
    queries: Path


def prepare(directory: Path, query_count: int = 100_000, seed: int = 5) -> Setup:
    """Write the test cluster, export its records and write the query file."""
    source = write_cluster(directory)
    config = write_config(directory, source, free_port())
    records = records_text(config)
    (directory / "records.zone").write_text(records)
    queries = write_queries(directory, records, query_count, seed)
    return Setup(directory, source, records, queries)


def machine_load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} (1 / 5 min) on {os.cpu_count()} CPUs"


def median_text(values: Sequence[float], digits: int = 0) -> str:
    return f"{statistics.median(values):,.{digits}f}" if values else "-"


def median(values: Sequence[float]) -> float:
    """The median, NaN when there are no values."""
    return statistics.median(values) if values else math.nan


def nearest_rank(values: Sequence[float], share: float, missing: int = 0) -> float:
    """Nearest-rank percentile (``share`` in 0..1) of ``values``; ``missing`` values
    (unanswered queries) count as larger than all of them (infinite); NaN when there is
    nothing."""
    total = len(values) + missing
    if total == 0:
        return math.nan
    rank = max(math.ceil(share * total), 1)
    if rank > len(values):
        return math.inf
    return sorted(values)[rank - 1]


def percentile_ms(latencies_ns: Sequence[int], missing: int, share: float) -> float:
    """Nearest-rank percentile in ms; ``missing`` unanswered queries count as infinite."""
    return nearest_rank(latencies_ns, share, missing) / 1e6


def ms(value: float, digits: int = 2, unit: str = "") -> str:
    """A latency for the table; infinite (a lost query is the percentile) is "lost"."""
    if math.isinf(value):
        return "lost"
    if math.isnan(value):
        return "-"
    return f"{value:.{digits}f}{unit}"


# -- command line and the running pair of servers ------------------------------------------

PIN_HELP = ("CPU pinning with taskset: 'none' (default) lets the kernel place dnsperf and the "
            "servers on both cores, as a user runs them, so knotd's two workers and "
            "clusterdns --workers 2 can use both; 'split' puts dnsperf on CPU 0 and the "
            "server on CPU 1 (one core each: a same-budget comparison of one worker)")


def add_arguments(parser: argparse.ArgumentParser, *, clients: int, outstanding: int,
                  rate: int | None = None, seconds: float = 10.0) -> None:
    """The options every dnsperf script takes; ``rate`` adds ``--rate`` (dnsperf -Q)."""
    parser.add_argument("--runs", type=int, default=3, help="runs per server (medians)")
    parser.add_argument("--clients", type=int, default=clients,
                        help="dnsperf -c: client sockets (several, so SO_REUSEPORT can "
                             "spread them over workers)")
    parser.add_argument("--outstanding", type=int, default=outstanding,
                        help="dnsperf -q: queries in flight")
    if rate is not None:
        parser.add_argument("--rate", type=int, default=rate, help="dnsperf -Q: queries/s")
    parser.add_argument("--seconds", type=float, default=seconds,
                        help=f"dnsperf -l per run (default {seconds:g})")
    parser.add_argument("--pin", choices=("none", "split"), default="none", help=PIN_HELP)
    parser.add_argument("--queries", type=int, default=100_000,
                        help="lines in the query file (dnsperf loops over it)")
    parser.add_argument("--no-knot", action="store_true", help="measure clusterdns only")


def pin_cpus(pin: str) -> tuple[str | None, str | None]:
    """(dnsperf CPUs, server CPUs) for taskset."""
    if pin == "split":
        if (os.cpu_count() or 1) < 2:
            raise SystemExit("--pin split needs two CPUs")
        return "0", "1"
    return None, None


@contextlib.contextmanager
def session(args: argparse.Namespace, workers: int | None = None,
            knot: bool = True) -> Iterator[tuple[Setup, list[Server], list[str]]]:
    """The test cluster and the servers to measure, answering the same; yields the
    setup, the servers (clusterdns first, then clusterdns --workers N, then knotd) and
    notes for the table (skipped variants, mismatches)."""
    from bench import knot as knot_module

    notes: list[str] = []
    _, server_cpus = pin_cpus(args.pin)
    with tempfile.TemporaryDirectory(prefix="clusterdns-bench-") as tmp, \
            contextlib.ExitStack() as stack:
        directory = Path(tmp)
        setup = prepare(directory, args.queries)
        print(f"test cluster: {record_count(setup.records)} records, "
              f"{args.queries} queries in the file; {machine_load()}", flush=True)
        servers = [stack.enter_context(clusterdns(directory, setup.cluster, None,
                                                  server_cpus))]
        if workers is not None:
            if workers_supported():
                try:
                    servers.append(stack.enter_context(
                        clusterdns(directory, setup.cluster, workers, server_cpus)))
                except SystemExit as exc:
                    notes.append(f"clusterdns --workers {workers}: did not start: "
                                 f"{str(exc)[-300:]}")
                    print(notes[-1], flush=True)
            else:
                notes.append(f"clusterdns --workers {workers}: skipped, this clusterdns "
                             "has no --workers flag yet")
                print(notes[-1], flush=True)
        if knot and not args.no_knot:
            theirs = stack.enter_context(knot_module.knotd(directory, setup.records,
                                                           server_cpus))
            servers.append(theirs)
            bad = knot_module.check_same_answers(servers[0].port, theirs.port, setup.queries)
            if bad:
                notes.append(f"{bad} sampled queries answered differently by knotd")
        for server in servers:
            warm_up(server, setup.queries, args.pin)
        yield setup, servers, notes


WARM_UP_RATE = 20_000


def warm_up(server: Server, queries: Path, pin: str) -> None:
    """One pass over the whole query file before measuring (knotd gets the same), so
    every distinct query has been asked once, the fast path's store is filled and no run
    pays for a cold start. (Two seconds used to cover 40% of the file: the first
    measured run was always the slowest.)"""
    with queries.open("rb") as lines:
        count = sum(1 for _ in lines)
    dnsperf(server.port, queries, count / WARM_UP_RATE + 0.5, clients=4, outstanding=100,
            rate=WARM_UP_RATE, cpus=pin_cpus(pin)[0])


Measured = TypeVar("Measured", Table, list[Table])


def table_for(add_arguments: Callable[[argparse.ArgumentParser], None],
              measure: Callable[[argparse.Namespace], Measured], runs: int) -> Measured:
    """A script's ``main_table`` (for run_all): its defaults with ``runs`` runs."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return measure(parser.parse_args(["--runs", str(runs)]))


def command_line(doc: str | None,
                 add_arguments: Callable[[argparse.ArgumentParser], None]) -> argparse.Namespace:
    """A script's command line, parsed; its help starts with the docstring's first line."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    add_arguments(parser)
    return parser.parse_args()


def run_main(doc: str | None, add_arguments: Callable[[argparse.ArgumentParser], None],
             measure: Callable[[argparse.Namespace], Table | list[Table]]) -> None:
    """A script's ``main``: parse the command line, measure, print the Markdown table(s)."""
    measured = measure(command_line(doc, add_arguments))
    for table in measured if isinstance(measured, list) else [measured]:
        print(markdown(*table))
