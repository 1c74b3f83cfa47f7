"""Reload stall: does rewriting the dump disturb answering? UDP latency and loss during reloads.

Why this exists: the file source used to parse a changed dump in a worker thread, and
parsing holds the GIL, so the event loop starved while it ran: rewriting a 1.5 MB
``kubectl get -A -o yaml`` List (1,000 services) every 2 s under 2,000 q/s lost 33% of
the queries (p99 634 ms, max 940 ms), and changes were served after 3.2 s. The
acceptance item: reloading must not disturb answering -- 0 lost queries and p99 <= 5 ms
at 2,000 q/s while a 1,000-service YAML List and a 10,000-service JSON List are
reloaded, and the changes served within 2 s.

Two scenarios, each on a fresh ``clusterdns serve --source file:PATH`` per run (a free
loopback port, HTTP endpoints off, ``poll_interval: 0.5`` (the default) from a small
config file):

- ``yaml-1k``: ``bench.cluster``'s 1,000 services and 5,700 endpoints (slices of 10),
  about 1.5 MB written as ``kubectl get -A -o yaml`` writes a List (``items`` first,
  keys sorted, sequences not indented);
- ``json-10k``: its 10,000 services and 100,000 endpoints (slices of 100), about 58 MB
  written as ``kubectl get -A -o json`` writes it (``bench.scale``'s cluster).

Per run: a baseline window (``--baseline`` seconds, nothing rewritten), then a window of
``--seconds`` during which a writer process rewrites the dump every ``--every`` seconds
the way a careful user does: the complete new text goes to a temporary file in the same
directory, then ``os.replace()`` puts it over the dump. Each rewrite changes one
service's ClusterIP, adds one service and removes another (different names and
addresses every round; the changes accumulate). The writer is a separate process that
renders each text before its turn, so neither its CPU nor its writes stall the
measuring loop; the server's loader child and the writer still share the machine's
cores with the server, as they would on a user's machine.

Measured in this process, by one ``select`` loop over non-blocking sockets:

- the load: UDP queries at a steady ``--rate`` q/s for the whole window, from prebuilt
  packets (400 existing names, A and SRV, never touched by a rewrite), each with a unique
  ID and timed with ``time.perf_counter_ns`` from just before its send to its reply's
  arrival: the kernel's receive time of the reply (``SO_TIMESTAMPNS``, realtime, turned
  into perf_counter time with an offset measured again every 20 ms), so that the
  measuring loop's own waits for a CPU (it shares the cores with the server, the loader
  child, the writer and whatever else runs) do not count as the server's; the latency
  to the moment the loop read the reply is reported beside it. No reply within 1 s is
  lost. Percentiles are nearest-rank over every query sent, a lost query counting as
  slower than every answered one; a reply that is not NOERROR with an answer counts as
  bad (a reload must never make an existing name vanish, even briefly);
- the changes: from the ``os.replace()`` of each rewrite (the writer reports the moment
  on its monotonic clock), another socket asks the three names it touched every 20 ms,
  until the changed service answers its new address, the added one answers and the
  removed one is NXDOMAIN; that moment minus the replace is the change-served time. A
  rewrite not served within 10 s counts as never served.

To show where slow queries come from, the server runs with ``--log-level debug``; its
``loaded ... in X s`` and ``published snapshot serial N`` lines give, for every reload,
when the loader child started, when the last object was back and when the diff, install
and publish ended; the measuring loop also samples, every 20 ms, the server's children
(when the loader child first wrote to its pipe: the objects start streaming back and
are unpickled on the event loop) and, from /proc/PID/schedstat, how long the server's
event loop and the measuring loop have waited for a CPU while runnable. Each query
slower than 1 ms is counted against what was going on when its reply arrived (a lost
one: when it was sent): the loader child starting (its first 0.2 s: fork, exec,
imports), parsing, the objects streaming back, the diff + install + publish, the first
0.5 s after the publish (fresh fast-path cache), the writer writing the dump, the
server waiting for its next poll and for the dump to settle, or nothing at all. The
run-queue waits are given for the same phases, so that a stall from sharing the CPUs
(with the loader child, the writer, other programs) can be told from the server's own
work. The CPU of the server, its loader children, the writer, this measuring process
and everything else on the machine is given per window (in % of one core). The phases
come from log lines with millisecond stamps and 20 ms samples: take them as where to
look, not as exact accounting.

Verdict per scenario (medians over runs): 0 lost, p99 <= 5 ms and the slowest change
served within 2 s.

Run: ``.venv/bin/python -m bench.reload_stall [--scenario yaml-1k|json-10k|both]
[--seconds 20] [--baseline 10] [--every 2] [--rate 2000] [--runs 3]`` (about 40 s per run
and scenario).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import copy
import datetime
import json
import math
import os
import re
import resource
import select
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import cluster
from bench.dnsperf_common import (
    command_line,
    descendants,
    free_port,
    machine_load,
    median,
    ms,
    percentile_ms,
    process_cpu_seconds,
    stop,
    table_for,
    wait_answering,
)
from bench.run_all import Table, markdown
from bench.scale import serve_command, status_mb
from bench.tcp_fairness import machine_busy_seconds

try:
    from yaml import CSafeDumper as _Dumper
except ImportError:  # PyYAML built without libyaml
    from yaml import SafeDumper as _Dumper  # type: ignore[assignment]

TABLE_ORDER = 90

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = "cluster.local"

TARGET_P99_MS = 5.0
TARGET_SERVED_S = 2.0
UDP_TIMEOUT_S = 1.0
PROBE_INTERVAL_S = 0.02
"""How often the names a rewrite touched are asked until they answer the new values."""
SERVED_TIMEOUT_S = 10.0
"""A rewrite whose changes are not served this long after its replace never was."""
FIRST_REWRITE_S = 1.0
"""Seconds into the window of the first rewrite."""
TAIL_S = 3.0
"""The last rewrite comes at least this long before the window ends, so the load runs
through its whole reload (poll, settle, load, publish)."""
POLL_INTERVAL_S = 0.5
"""The file source's ``poll_interval`` (its default, written down so the run says so)."""
SLOW_MS = 1.0
"""Queries slower than this (or lost) are counted by what the server was doing."""
AFTER_PUBLISH_S = 0.5
SCHED_SAMPLE_S = 0.02
"""How often the server's run-queue wait (/proc/PID/schedstat) is sampled."""
LOAD_NAMES = 400
"""Distinct names of the load (every fourth an SRV query)."""
TOUCHED = 200
"""The last TOUCHED services of the cluster are the ones rewrites change and remove (two
per round, so at most TOUCHED // 2 rounds); the load never asks for them."""

A, SRV = 1, 33
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
"""Linux: each datagram carries the realtime at which the kernel queued it (35 on x86
and arm; Python does not export the name)."""
_STAMP_SPACE = socket.CMSG_SPACE(16)


@dataclass(frozen=True)
class Scenario:
    name: str
    fmt: str
    """The dump's format: yaml or json."""
    services: int
    endpoints: int
    per_slice: int

    @property
    def filename(self) -> str:
        return f"cluster.{self.fmt}"

    def describe(self) -> str:
        kubectl = f"kubectl get -A -o {self.fmt}"
        return (f"{self.services:,} services, {self.endpoints:,} endpoints in slices of "
                f"{self.per_slice}, one List as `{kubectl}` writes it")


SCENARIOS = {
    "yaml-1k": Scenario("yaml-1k", "yaml", 1_000, 5_700, 10),
    "json-10k": Scenario("json-10k", "json", 10_000, 100_000, 100),
}


def fqdn(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.svc.{DOMAIN}"


def ip_bytes(address: str) -> bytes:
    return bytes(int(part) for part in address.split("."))


# -- what each rewrite changes -------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """Rewrite number ``number`` (1-based): a new ClusterIP for one service, one service
    added and one removed. Later rewrites leave them so: the changes accumulate."""

    number: int
    changed: int
    """Index of the service whose ClusterIP changes."""
    removed: int
    """Index of the service removed."""

    @property
    def changed_ip(self) -> str:
        return f"10.250.{self.number // 256}.{self.number % 256}"

    @property
    def added_name(self) -> str:
        return f"added-{self.number}"

    @property
    def added_namespace(self) -> str:
        return cluster.namespace_of(self.number)

    @property
    def added_ip(self) -> str:
        return f"10.251.{self.number // 256}.{self.number % 256}"

    def probes(self) -> list[tuple[str, bytes | None]]:
        """(name, expected A address, or None for NXDOMAIN) once the rewrite is served."""
        return [(fqdn(f"svc-{self.changed}", cluster.namespace_of(self.changed)),
                 ip_bytes(self.changed_ip)),
                (fqdn(self.added_name, self.added_namespace), ip_bytes(self.added_ip)),
                (fqdn(f"svc-{self.removed}", cluster.namespace_of(self.removed)), None)]


def change_for(scenario: Scenario, number: int) -> Change:
    first = scenario.services - TOUCHED + 2 * (number - 1)
    return Change(number, changed=first, removed=first + 1)


# -- the dump, rendered piece by piece, and the writer process -----------------------------


def yaml_item(obj: dict[str, Any]) -> bytes:
    """One List item as kubectl's YAML has it: ``- `` before the first line, two spaces
    before the others, keys sorted."""
    lines = yaml.dump(obj, Dumper=_Dumper, default_flow_style=False,
                      sort_keys=True).splitlines()
    return ("- " + lines[0] + "\n" + "".join(f"  {line}\n" for line in lines[1:])).encode()


def json_item(obj: dict[str, Any]) -> bytes:
    """One List item as ``kubectl -o json`` prints it: indented by 4, nested by 8."""
    return ("        " + json.dumps(obj, indent=4).replace("\n", "\n        ")).encode()


class Dump:
    """The scenario's cluster as the text of one List, kept as one rendered piece per
    object, so a rewrite re-renders only the services it changes."""

    def __init__(self, scenario: Scenario) -> None:
        self.fmt = scenario.fmt
        self.render: Callable[[dict[str, Any]], bytes] = (
            yaml_item if scenario.fmt == "yaml" else json_item)
        self.namespaces: list[bytes] = []
        self.services: dict[str, bytes] = {}
        """Service name -> piece, in the order kubectl lists them (added ones last)."""
        self.raw: dict[str, dict[str, Any]] = {}
        self.slices: list[bytes] = []
        for obj in cluster.objects(scenario.services, scenario.endpoints, scenario.per_slice):
            piece = self.render(obj)
            if obj["kind"] == "Namespace":
                self.namespaces.append(piece)
            elif obj["kind"] == "Service":
                self.services[obj["metadata"]["name"]] = piece
                self.raw[obj["metadata"]["name"]] = obj
            else:
                self.slices.append(piece)

    def apply(self, change: Change) -> None:
        name = f"svc-{change.changed}"
        changed = copy.deepcopy(self.raw[name])
        changed["spec"]["clusterIP"] = change.changed_ip
        changed["spec"]["clusterIPs"] = [change.changed_ip]
        self.raw[name] = changed
        self.services[name] = self.render(changed)
        del self.services[f"svc-{change.removed}"], self.raw[f"svc-{change.removed}"]
        added = copy.deepcopy(self.raw["svc-0"])
        added["metadata"].update(name=change.added_name, namespace=change.added_namespace,
                                 labels={"app": change.added_name})
        added["spec"]["clusterIP"] = change.added_ip
        added["spec"]["clusterIPs"] = [change.added_ip]
        self.raw[change.added_name] = added
        self.services[change.added_name] = self.render(added)

    def text(self) -> bytes:
        items = [*self.namespaces, *self.services.values(), *self.slices]
        if self.fmt == "yaml":
            return (b"apiVersion: v1\nitems:\n" + b"".join(items)
                    + b'kind: List\nmetadata:\n  resourceVersion: ""\n')
        return (b'{\n    "apiVersion": "v1",\n    "items": [\n' + b",\n".join(items)
                + b'\n    ],\n    "kind": "List",\n    "metadata": {\n'
                  b'        "resourceVersion": ""\n    }\n}\n')


def replace(path: Path, text: bytes) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(text)
    os.replace(temporary, path)


def writer_main(scenario_name: str, directory: Path) -> None:
    """The writer process: write the first dump, say ``ready PATH SIZE``, wait for
    ``go T1 T2 ...`` (monotonic ns) on stdin, then at each Tk apply change k, replace the
    dump and say ``replaced k DONE_NS WRITE_NS SIZE``. Each text is rendered before its
    time comes, so only the write and the rename happen at Tk."""
    scenario = SCENARIOS[scenario_name]
    dump = Dump(scenario)
    path = directory / scenario.filename
    text = dump.text()
    replace(path, text)
    print(f"ready {path} {len(text)}", flush=True)
    line = sys.stdin.readline().split()
    if not line or line[0] != "go":
        return
    for number, due in enumerate((int(t) for t in line[1:]), 1):
        dump.apply(change_for(scenario, number))
        text = dump.text()
        delay = (due - time.monotonic_ns()) / 1e9
        if delay > 0:
            time.sleep(delay)
        started = time.monotonic_ns()
        replace(path, text)
        done = time.monotonic_ns()
        print(f"replaced {number} {done} {done - started} {len(text)}", flush=True)
    print("done", flush=True)
    sys.stdin.read()  # stay until the window ends, so that our CPU time can be read


class Writer:
    """The writer process, seen from the measuring side: its stdout is read without
    blocking from the measuring loop."""

    def __init__(self, scenario: Scenario, directory: Path, timeout: float = 300.0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.reload_stall", "--writer", scenario.name,
             str(directory)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        self.fd = self.process.stdout.fileno()
        os.set_blocking(self.fd, False)
        self._buffer = b""
        self.eof = False
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        while not lines and time.monotonic() < deadline and self.process.poll() is None:
            select.select([self.fd], [], [], 1.0)
            lines = self.lines()
        if not lines or not lines[0].startswith("ready "):
            self.stop()
            raise SystemExit(f"the writer did not get ready: {lines}")
        _, path, size = lines[0].split()
        self.path = Path(path)
        self.size = int(size)

    @property
    def pid(self) -> int:
        return self.process.pid

    def lines(self) -> list[str]:
        """The complete lines it has written since the last call."""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                self.eof = True
                break
            self._buffer += chunk
        *complete, self._buffer = self._buffer.split(b"\n")
        return [line.decode() for line in complete]

    def go(self, times_ns: Sequence[int]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(("go " + " ".join(map(str, times_ns)) + "\n").encode())
        self.process.stdin.flush()

    def stop(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


# -- DNS wire format (queries out; rcode and the first A address in) -----------------------


def question(name: str, qtype: int) -> bytes:
    """A query without its ID (RD set, no EDNS, as a glibc stub sends it): prefix two
    ID bytes to send it."""
    labels = b"".join(bytes([len(label)]) + label.encode("ascii")
                      for label in name.rstrip(".").split("."))
    return struct.pack("!HHHHH", 0x0100, 1, 0, 0, 0) + labels + b"\x00" + \
        struct.pack("!HH", qtype, 1)


def _skip_name(data: bytes, at: int) -> int:
    while True:
        length = data[at]
        if length & 0xC0 == 0xC0:
            return at + 2
        if length == 0:
            return at + 1
        at += 1 + length


def first_address(reply: bytes) -> bytes | None:
    """The address of the first answer record when it is an A record."""
    try:
        if int.from_bytes(reply[6:8], "big") == 0:
            return None
        at = _skip_name(reply, 12) + 4  # the question: name, type, class
        at = _skip_name(reply, at)
        rtype, _class, _ttl, length = struct.unpack_from("!HHIH", reply, at)
        at += 10
        if rtype != A or length != 4:
            return None
        return reply[at:at + 4]
    except (IndexError, struct.error):
        return None


def reply_answers(reply: bytes) -> bool:
    """A response with NOERROR and at least one answer: what every load query must get."""
    return (len(reply) >= 12 and reply[2] & 0x80 != 0 and reply[3] & 0x0F == 0
            and reply[6:8] != b"\x00\x00")


def load_questions(scenario: Scenario, count: int = LOAD_NAMES) -> list[bytes]:
    """``count`` existing names spread over the services no rewrite touches: A, and SRV
    of the named port for every fourth."""
    untouched = scenario.services - TOUCHED
    out = []
    for k in range(count):
        index = k * untouched // count
        name = fqdn(f"svc-{index}", cluster.namespace_of(index))
        out.append(question(f"_http._tcp.{name}", SRV) if k % 4 == 3 else question(name, A))
    return out


def warm_up(port: int, questions: Sequence[bytes]) -> None:
    """Ask each load question once, so the fast path has them all and every name is
    known to answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(2.0)
        udp.connect(("127.0.0.1", port))
        for qid, body in enumerate(questions):
            udp.send(qid.to_bytes(2, "big") + body)
            reply = udp.recv(4096)
            if not reply_answers(reply):
                raise SystemExit(f"warm-up: question {qid} got no answer: {reply!r}")


# -- the measuring loop --------------------------------------------------------------------


@dataclass(frozen=True)
class Rewrite:
    number: int
    replaced_ns: int
    """When ``os.replace()`` returned (perf_counter ns of this process)."""
    write_ns: int
    """How long the writer took to write the temporary file and rename it."""
    size: int


@dataclass
class Window:
    """What the measuring loop saw in one window."""

    seconds: float
    start_ns: int
    sent: int
    send_ns: list[int]
    """Send times of the answered queries (perf_counter ns), beside ``latencies_ns``."""
    latencies_ns: list[int]
    """From the send to the kernel queueing the reply on our socket."""
    read_latencies_ns: list[int]
    """From the send to the measuring loop reading the reply."""
    kernel_stamped: int
    """Replies that carried a kernel receive time (the others count as read)."""
    lost_send_ns: list[int]
    server_drops: int
    """Datagrams the kernel dropped at the server's socket (its receive buffer full)."""
    our_drops: int
    """Replies the kernel dropped at our load socket (the measuring loop fell behind)."""
    late: int
    """Replies that came after their query had been counted lost."""
    bad: int
    """Replies that were not NOERROR with an answer."""
    rewrites: list[Rewrite] = field(default_factory=list)
    served_s: dict[int, float] = field(default_factory=dict)
    """Rewrite number -> seconds from its replace to all three names answering the new
    values (inf: not within ``SERVED_TIMEOUT_S``)."""
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU per second of the window (1.0 = one core): server, loader (the server's
    children), writer, measuring, others."""
    sched: list[tuple[int, int, int]] = field(default_factory=list)
    """(perf_counter ns, ns the server's event-loop thread and ns this measuring process
    have spent runnable but waiting for a CPU so far), every ``SCHED_SAMPLE_S``."""
    loaders: list[tuple[int, int, int]] = field(default_factory=list)
    """The server's loader children as the samples saw them: (first seen, first seen
    having written more than when first seen, or 0; last seen), perf_counter ns. (A
    child forked by the server may show bytes written before its first object.)"""

    def waiting_at(self, when: int, column: int = 1) -> float:
        """A run-queue wait so far at ``when`` (ns, interpolated): the server's
        (``column`` 1) or ours (2)."""
        if not self.sched:
            return math.nan
        at = bisect.bisect_left(self.sched, when, key=lambda sample: sample[0])
        if at == 0:
            return float(self.sched[0][column])
        if at == len(self.sched):
            return float(self.sched[-1][column])
        before, after = self.sched[at - 1], self.sched[at]
        return before[column] + (after[column] - before[column]) * (
            when - before[0]) / max(after[0] - before[0], 1)

    def waiting_share(self, spans: Sequence[tuple[int, int]] | None = None,
                      column: int = 1) -> float:
        """Of the time in ``spans`` (default: the whole window), the share the server's
        event loop (``column`` 1; 2: this measuring process) was ready to run but had no
        CPU: the machine's other work, not its own, delaying answers."""
        if not self.sched:
            return math.nan
        first, last = self.sched[0][0], self.sched[-1][0]
        spans = [(first, last)] if spans is None else spans
        waited = total = 0.0
        for lo, hi in spans:
            lo, hi = max(lo, first), min(hi, last)
            if hi > lo:
                waited += self.waiting_at(hi, column) - self.waiting_at(lo, column)
                total += hi - lo
        return waited / total if total else math.nan

    @property
    def lost(self) -> int:
        return len(self.lost_send_ns)

    def percentile_ms(self, share: float, as_read: bool = False) -> float:
        """Nearest rank in ms over every query sent; lost ones count as infinite.
        ``as_read``: to the measuring loop reading the reply, not to its arrival."""
        latencies = self.read_latencies_ns if as_read else self.latencies_ns
        return percentile_ms(latencies, self.lost, share)

    @property
    def max_ms(self) -> float:
        return max(self.latencies_ns) / 1e6 if self.latencies_ns else math.nan

    @property
    def read_max_ms(self) -> float:
        return max(self.read_latencies_ns) / 1e6 if self.read_latencies_ns else math.nan

    @property
    def served_median_s(self) -> float:
        return statistics.median(self.served_s.values()) if self.served_s else math.nan

    @property
    def served_max_s(self) -> float:
        return max(self.served_s.values()) if self.served_s else math.nan


def server_cpu_seconds(pid: int) -> tuple[float, float]:
    """(the process's own CPU seconds, those of its children it has waited for) from
    /proc/<pid>/stat: the loader children are reaped by the server, so their CPU lands
    in cutime and cstime."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan, math.nan
    fields = stat[stat.rindex(")") + 2:].split()
    tick = os.sysconf("SC_CLK_TCK")
    return ((int(fields[11]) + int(fields[12])) / tick,
            (int(fields[13]) + int(fields[14])) / tick)


def run_queue_wait_ns(pid: int) -> int:
    """Nanoseconds the process's main thread (the event loop) has waited on a run queue
    (the second field of /proc/PID/schedstat); 0 when it cannot be read."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def udp_drops(port: int) -> int:
    """Datagrams the kernel dropped for the UDP sockets bound to 127.0.0.1:``port`` (their
    receive buffer was full), from the ``drops`` column of /proc/net/udp."""
    local = f"0100007F:{port:04X}"
    total = 0
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return 0
    for line in lines:
        fields = line.split()
        if len(fields) > 12 and fields[1] == local:
            total += int(fields[12])
    return total


def bytes_written(pid: int) -> int:
    """What the process has written so far (``wchar`` of /proc/PID/io); 0 when unknown."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class Clocks:
    """The offset from perf_counter to the realtime clock the kernel stamps packets with,
    re-measured often (``sync``) so that clock slewing cannot creep in."""

    def __init__(self) -> None:
        self.realtime_minus_perf = 0
        while not self.sync():
            pass

    def sync(self) -> bool:
        """Measure the offset again; False (and the old one kept) when this process was
        interrupted between the readings."""
        before = time.perf_counter_ns()
        realtime = time.time_ns()
        after = time.perf_counter_ns()
        if after - before > 20_000:
            return False
        self.realtime_minus_perf = realtime - (before + after) // 2
        return True


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rewrite_offsets(seconds: float, every: float) -> list[float]:
    """Seconds into the window of each rewrite: the first at ``FIRST_REWRITE_S``, then
    every ``every`` s, the last at least ``TAIL_S`` before the end."""
    offsets = []
    at = FIRST_REWRITE_S
    while at <= seconds - TAIL_S + 1e-9:
        offsets.append(at)
        at += every
    return offsets


def measure_window(port: int, questions: Sequence[bytes], seconds: float, rate: int,
                   server_pid: int, writer: Writer | None = None,
                   changes: Sequence[Change] = (), offsets: Sequence[float] = ()) -> Window:
    """The load at ``rate`` q/s for ``seconds`` (then up to ``UDP_TIMEOUT_S`` for the
    last replies) and, with a writer, the rewrites at ``offsets`` and the probes that
    time their changes."""
    load = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for sock in (load, probe):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
    with contextlib.suppress(OSError):  # without kernel stamps, replies are timed when read
        load.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    probes = {c.number: [(question(name, A), expect) for name, expect in c.probes()]
              for c in changes}

    timeout_ns = int(UDP_TIMEOUT_S * 1e9)
    total = int(rate * seconds)
    outstanding: dict[int, int] = {}  # query ID -> send time
    expiry: deque[tuple[int, int]] = deque()  # (send time, ID), oldest first
    send_ns: list[int] = []
    latencies: list[int] = []
    read_latencies: list[int] = []
    stamped = 0
    lost: list[int] = []
    late = bad = seq = 0

    rewrites: list[Rewrite] = []
    served: dict[int, float] = {}
    seen: dict[int, list[int]] = {}  # rewrite number -> first-right reply time per name
    pending: list[int] = []  # replaced, not yet served, not yet given up
    probe_ids: dict[int, tuple[int, int]] = {}  # probe ID -> (rewrite number, name index)
    probe_seq = 0
    writer_done = writer is None or not offsets

    me = os.getpid()
    our_port = int(load.getsockname()[1])
    server_drops, our_drops = udp_drops(port), udp_drops(our_port)
    clocks = Clocks()
    mono_to_perf = time.perf_counter_ns() - time.monotonic_ns()
    busy_before = machine_busy_seconds()
    server_before = server_cpu_seconds(server_pid)
    writer_before = process_cpu_seconds(writer.pid) if writer else 0.0
    own_before = _own_cpu_seconds()
    start = time.perf_counter_ns()
    if writer is not None and offsets:
        mono_start = start - mono_to_perf
        writer.go([mono_start + int(offset * 1e9) for offset in offsets])
    send_end = start + int(seconds * 1e9)
    hard_end = send_end + int(max(SERVED_TIMEOUT_S, UDP_TIMEOUT_S) * 1e9)
    next_probe = start
    sched: list[tuple[int, int, int]] = []
    loaders: dict[int, list[int]] = {}  # child pid -> what the samples saw of it
    next_sample = start
    readers: list[Any] = [load, probe] + ([writer.fd] if writer is not None else [])
    try:
        while True:
            now = time.perf_counter_ns()
            while seq < total and start + seq * 1_000_000_000 // rate <= now:
                qid = seq & 0xFFFF
                message = qid.to_bytes(2, "big") + questions[seq % len(questions)]
                sent = time.perf_counter_ns()
                with contextlib.suppress(OSError):  # a failed send is lost at its timeout
                    load.send(message)
                outstanding[qid] = sent
                expiry.append((sent, qid))
                seq += 1
            now = time.perf_counter_ns()
            for number in list(pending):
                replaced = rewrites[number - 1].replaced_ns
                if now - replaced > SERVED_TIMEOUT_S * 1e9:
                    served[number] = math.inf
                    pending.remove(number)
            if pending and now >= next_probe:
                for number in pending:
                    for index, (body, _) in enumerate(probes[number]):
                        if not seen[number][index]:
                            pid = probe_seq & 0xFFFF
                            probe_seq += 1
                            probe_ids[pid] = (number, index)
                            with contextlib.suppress(OSError):
                                probe.send(pid.to_bytes(2, "big") + body)
                next_probe = now + int(PROBE_INTERVAL_S * 1e9)
            if now >= next_sample:
                clocks.sync()
                sched.append((now, run_queue_wait_ns(server_pid), run_queue_wait_ns(me)))
                for child in descendants(server_pid):
                    written = bytes_written(child)
                    # [first seen, first seen writing, last seen, bytes written at first]
                    seen_child = loaders.setdefault(child, [now, 0, now, written])
                    seen_child[2] = now
                    if not seen_child[1] and written > seen_child[3]:
                        seen_child[1] = now
                next_sample = now + int(SCHED_SAMPLE_S * 1e9)
            load_done = seq >= total and not outstanding
            if load_done and writer_done and not pending:
                break
            if now >= hard_end or (load_done and now >= send_end + timeout_ns
                                   and writer_done and not pending):
                break
            wake = min(hard_end, next_sample)
            if seq < total:
                wake = min(wake, start + seq * 1_000_000_000 // rate)
            if expiry:
                wake = min(wake, expiry[0][0] + timeout_ns)
            if pending:
                wake = min(wake, next_probe)
            readable, _, _ = select.select(readers, [], [], max(wake - now, 0) / 1e9)
            if load in readable:
                while True:
                    try:
                        reply, ancillary, _, _ = load.recvmsg(4096, _STAMP_SPACE)
                    except BlockingIOError:
                        break
                    except ConnectionRefusedError:
                        continue
                    got = time.perf_counter_ns()
                    if len(reply) < 12:
                        bad += 1
                        continue
                    sent = outstanding.pop(reply[0] << 8 | reply[1], 0)
                    if not sent:
                        late += 1
                        continue
                    arrived = got
                    for level, kind, data in ancillary:
                        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS \
                                and len(data) >= 16:
                            seconds_part, nanoseconds = struct.unpack_from("qq", data)
                            arrived = min(got, seconds_part * 1_000_000_000 + nanoseconds
                                          - clocks.realtime_minus_perf)
                            stamped += 1
                    if arrived - sent > timeout_ns:
                        lost.append(sent)  # came too late, though before we gave up on it
                        continue
                    send_ns.append(sent)
                    latencies.append(max(arrived - sent, 0))
                    read_latencies.append(got - sent)
                    if not reply_answers(reply):
                        bad += 1
            # Queries count as lost only after the replies already queued have been read:
            # a loop that was kept off the CPU must not turn answered queries into lost.
            now = time.perf_counter_ns()
            while expiry and expiry[0][0] + timeout_ns <= now:
                sent, qid = expiry.popleft()
                if outstanding.get(qid) == sent:
                    del outstanding[qid]
                    lost.append(sent)
            if probe in readable:
                while True:
                    try:
                        reply = probe.recv(4096)
                    except BlockingIOError:
                        break
                    except ConnectionRefusedError:
                        continue
                    got = time.perf_counter_ns()
                    if len(reply) < 12:
                        continue
                    owner = probe_ids.pop(reply[0] << 8 | reply[1], None)
                    if owner is None or owner[0] not in pending:
                        continue
                    number, index = owner
                    expect = probes[number][index][1]
                    right = (reply[3] & 0x0F == 3 if expect is None
                             else reply[3] & 0x0F == 0 and first_address(reply) == expect)
                    if right and not seen[number][index]:
                        seen[number][index] = got
                        if all(seen[number]):
                            served[number] = (max(seen[number])
                                              - rewrites[number - 1].replaced_ns) / 1e9
                            pending.remove(number)
            if writer is not None and writer.fd in readable:
                for line in writer.lines():
                    words = line.split()
                    if words and words[0] == "replaced":
                        number, done, write, size = (int(w) for w in words[1:5])
                        rewrites.append(Rewrite(number, done + mono_to_perf, write, size))
                        seen[number] = [0] * len(probes[number])
                        pending.append(number)
                        next_probe = time.perf_counter_ns()
                    elif words == ["done"]:
                        writer_done = True
                if writer.eof:  # it died: no more rewrites (select would spin on EOF)
                    writer_done = True
                    readers.remove(writer.fd)
        server_drops = udp_drops(port) - server_drops
        our_drops = udp_drops(our_port) - our_drops
    finally:
        load.close()
        probe.close()
    wall = (time.perf_counter_ns() - start) / 1e9
    lost += list(outstanding.values())
    for number in pending:
        served[number] = math.inf
    for number in range(len(rewrites) + 1, len(offsets) + 1):
        served[number] = math.inf  # the writer never got to it
    server_after = server_cpu_seconds(server_pid)
    own = _own_cpu_seconds() - own_before
    writer_cpu = process_cpu_seconds(writer.pid) - writer_before if writer else 0.0
    server = server_after[0] - server_before[0]
    loader = server_after[1] - server_before[1]
    others = machine_busy_seconds() - busy_before - server - loader - writer_cpu - own
    cpu = {"server": server / wall, "loader": loader / wall, "writer": writer_cpu / wall,
           "measuring": own / wall, "others": max(others, 0.0) / wall}
    return Window(seconds=seconds, start_ns=start, sent=seq, send_ns=send_ns,
                  latencies_ns=latencies, read_latencies_ns=read_latencies,
                  kernel_stamped=stamped, server_drops=server_drops, our_drops=our_drops,
                  lost_send_ns=lost, late=late, bad=bad,
                  rewrites=rewrites, served_s=served, cpu=cpu, sched=sched,
                  loaders=[(a, b, c) for a, b, c, _ in loaders.values()])


# -- the server's log: when each reload loaded and published -------------------------------


@dataclass(frozen=True)
class Reload:
    """One reload seen in the server log, on this process's perf_counter clock (ns)."""

    start_ns: int
    """The loader child started (the logged load time before ``loaded_ns``)."""
    loaded_ns: int
    """Every object is back from the child; the diff in a worker thread starts."""
    published_ns: int | None
    """The snapshot with the changes is published (None: nothing changed)."""


_STAMP = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"
_LOADED = re.compile(_STAMP + r" INFO clusterdns\.source\.file[^:]*: loaded .* in ([0-9.]+) s$",
                     re.MULTILINE)
_PUBLISHED = re.compile(_STAMP + r" (?:DEBUG|INFO) clusterdns\.app[^:]*: published snapshot "
                        r"serial (\d+) ", re.MULTILINE)
_PROBLEM = re.compile(_STAMP + r" (WARNING|ERROR|CRITICAL) (.*)$", re.MULTILINE)


def _stamp_ns(stamp: str, wall_to_perf: int) -> int:
    when = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return int(when * 1e9) + wall_to_perf


def parse_log(text: str, wall_to_perf: int, since_ns: int) -> tuple[list[Reload], list[str]]:
    """The reloads that finished loading after ``since_ns``, and the warnings and errors
    logged after it."""
    published = sorted({int(m.group(2)): _stamp_ns(m.group(1), wall_to_perf)
                        for m in _PUBLISHED.finditer(text)}.values())
    loads = [(_stamp_ns(m.group(1), wall_to_perf), float(m.group(2)))
             for m in _LOADED.finditer(text)]
    loads = [(at, seconds) for at, seconds in loads if at >= since_ns]
    reloads = []
    for number, (loaded, seconds) in enumerate(loads):
        following = loads[number + 1][0] if number + 1 < len(loads) else math.inf
        # The log has milliseconds: a publish logged in the same millisecond counts.
        after = [p for p in published if loaded - 1_000_000 <= p < following]
        reloads.append(Reload(loaded - int(seconds * 1e9), loaded, after[0] if after else None))
    problems = [m.group(3)[:200] for m in _PROBLEM.finditer(text)
                if _stamp_ns(m.group(1), wall_to_perf) >= since_ns]
    return reloads, problems


STARTING_S = 0.2
"""The first this many seconds of a loader child are its start (fork, exec, imports)."""
STARTING = f"loader child starting (its first {STARTING_S:g} s)"
PARSING = "loader child parsing"
STREAMING = "objects streamed back, unpickled on the event loop"
PUBLISHING = "diff + install + publish"
AFTER_PUBLISH = f"first {AFTER_PUBLISH_S:g} s after a publish"
WRITING = "writer writing the dump"
WAITING = "waiting for the poll and the settle"
NOTHING = "nothing (no reload going on)"
PHASES = (STARTING, PARSING, STREAMING, PUBLISHING, AFTER_PUBLISH, WRITING, WAITING, NOTHING)
"""What may be going on when a query is sent, in order of precedence."""
RELOAD_PHASES = PHASES[:5]


def phase_spans(window: Window, reloads: Sequence[Reload]) -> list[tuple[str, int, int]]:
    """(phase, from, to) in perf_counter ns, in the order of ``PHASES`` (the last,
    nothing going on, is what no span covers). A reload's child starts streaming when
    it first wrote (seen by the measuring loop's samples); without that sample its
    whole run counts as parsing."""
    spans: list[tuple[str, int, int]] = []
    for r in reloads:
        parsed = r.loaded_ns
        for first_seen, first_write, _ in window.loaders:
            if r.start_ns - 50_000_000 <= first_seen <= r.loaded_ns and first_write:
                parsed = min(max(first_write, r.start_ns), r.loaded_ns)
        started = min(r.start_ns + int(STARTING_S * 1e9), parsed)
        spans.append((STARTING, r.start_ns, started))
        spans.append((PARSING, started, parsed))
        spans.append((STREAMING, parsed, r.loaded_ns))
        if r.published_ns is not None:
            spans.append((PUBLISHING, r.loaded_ns, r.published_ns))
            spans.append((AFTER_PUBLISH, r.published_ns,
                          r.published_ns + int(AFTER_PUBLISH_S * 1e9)))
    for w in window.rewrites:
        spans.append((WRITING, w.replaced_ns - w.write_ns, w.replaced_ns))
        start = min((r.start_ns for r in reloads if r.start_ns >= w.replaced_ns),
                    default=w.replaced_ns)
        spans.append((WAITING, w.replaced_ns, start))
    order = {phase: n for n, phase in enumerate(PHASES)}
    spans.sort(key=lambda span: order[span[0]])
    return spans


def slow_by_phase(window: Window, reloads: Sequence[Reload],
                  threshold_ms: float = SLOW_MS) -> dict[str, list[float]]:
    """The latencies (ms, inf when lost) of queries slower than ``threshold_ms``, by what
    was going on when their replies arrived (lost ones: when they were sent), the first
    of ``PHASES`` that applies. A stall delays every query sent while it lasts and their
    replies all leave when it ends, so the arrival points at the phase that stalled."""
    spans = phase_spans(window, reloads)
    threshold = threshold_ms * 1e6
    slow = [(s + lat, lat / 1e6)
            for s, lat in zip(window.send_ns, window.latencies_ns, strict=True)
            if lat > threshold]
    slow += [(s, math.inf) for s in window.lost_send_ns]
    out: dict[str, list[float]] = {}
    for when, latency in slow:
        phase = next((p for p, lo, hi in spans if lo <= when < hi), NOTHING)
        out.setdefault(phase, []).append(latency)
    return out


def waiting_by_phase(window: Window, reloads: Sequence[Reload],
                     ) -> dict[str, tuple[float, float]]:
    """The share of each phase's time the server's event loop, and this measuring
    process, spent waiting for a CPU (the loader child, the writer and other programs
    had them all), and of the whole window under "window"."""
    spans = phase_spans(window, reloads)
    out = {"window": (window.waiting_share(), window.waiting_share(column=2))}
    for phase in RELOAD_PHASES:
        mine = [(lo, hi) for p, lo, hi in spans if p == phase]
        out[phase] = (window.waiting_share(mine), window.waiting_share(mine, column=2))
    return out


@dataclass(frozen=True)
class Timeline:
    """One rewrite from its replace to its change answered, in seconds."""

    detect_s: float
    """Replace -> the loader child started (the poll interval and the settle)."""
    load_s: float
    publish_s: float
    """Objects back -> snapshot published (diff, install, publish)."""
    answer_s: float
    """Published -> the probes saw the change."""


def timelines(window: Window, reloads: Sequence[Reload]) -> list[Timeline]:
    """For each served rewrite, the reload that served it: the first whose publish came
    after its replace."""
    out = []
    for w in window.rewrites:
        served = window.served_s.get(w.number, math.inf)
        if math.isinf(served):
            continue
        reload = next((r for r in reloads if r.published_ns is not None
                       and r.start_ns >= w.replaced_ns), None)
        if reload is None or reload.published_ns is None:
            continue
        out.append(Timeline((reload.start_ns - w.replaced_ns) / 1e9,
                            (reload.loaded_ns - reload.start_ns) / 1e9,
                            (reload.published_ns - reload.loaded_ns) / 1e9,
                            w.replaced_ns / 1e9 + served - reload.published_ns / 1e9))
    return out


# -- one run: a fresh server, the baseline, the rewrites -----------------------------------


@dataclass
class Run:
    scenario: Scenario
    dump_size: int
    baseline: Window
    reloading: Window
    reloads: list[Reload]
    problems: list[str]
    rss_mb: float
    """The server's VmRSS after the baseline."""
    hwm_mb: float
    """The server's peak RSS (VmHWM) after the rewrites."""

    @property
    def passed(self) -> bool:
        return (self.reloading.lost == 0
                and self.reloading.percentile_ms(0.99) <= TARGET_P99_MS
                and self.reloading.served_max_s <= TARGET_SERVED_S)


def write_config(directory: Path) -> Path:
    path = directory / "clusterdns.yaml"
    path.write_text(f"poll_interval: {POLL_INTERVAL_S}\nlameduck: 0\n")
    return path


def run_once(number: int, scenario: Scenario, args: argparse.Namespace,
             directory: Path) -> Run:
    workdir = directory / f"{scenario.name}-{number}"
    workdir.mkdir()
    config = write_config(workdir)
    writer = Writer(scenario, workdir)
    process: subprocess.Popen[bytes] | None = None
    log = workdir / "serve.log"
    try:
        port = free_port()
        command = [*serve_command(f"file:{writer.path}", port, log_level="debug"),
                   "--config", str(config)]
        with log.open("w") as out:
            process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                                       stderr=out)
        questions = load_questions(scenario)
        last = scenario.services - TOUCHED - 1
        wait_answering(port, fqdn(f"svc-{last}", cluster.namespace_of(last)), process, log,
                       timeout=300, interval=0.05)
        warm_up(port, questions)
        baseline = measure_window(port, questions, args.baseline, args.rate, process.pid)
        print(f"{scenario.name} run {number} baseline: {describe(baseline)}", flush=True)
        rss = status_mb(process.pid, "VmRSS")
        offsets = rewrite_offsets(args.seconds, args.every)
        changes = [change_for(scenario, k) for k in range(1, len(offsets) + 1)]
        wall_to_perf = time.perf_counter_ns() - time.time_ns()
        reloading = measure_window(port, questions, args.seconds, args.rate, process.pid,
                                   writer, changes, offsets)
        if process.poll() is not None:
            raise SystemExit(f"the server exited ({process.returncode}) during the rewrites: "
                             f"{log.read_text()[-2000:]}")
        hwm = status_mb(process.pid, "VmHWM")
    finally:
        writer.stop()
        if process is not None:
            stop(process)
    reloads, problems = parse_log(log.read_text(), wall_to_perf, reloading.start_ns)
    run = Run(scenario, writer.size, baseline, reloading, reloads, problems, rss, hwm)
    print(f"{scenario.name} run {number} rewrites: {describe(reloading)}", flush=True)
    print(f"{scenario.name} run {number} reloads: {describe_reloads(run)}; "
          f"{'pass' if run.passed else 'FAIL'}", flush=True)
    return run


# -- text ----------------------------------------------------------------------------------


def seconds_text(value: float) -> str:
    if math.isinf(value):
        return f"not within {SERVED_TIMEOUT_S:g} s"
    return "-" if math.isnan(value) else f"{value:.2f} s"


def cpu_text(window: Window) -> str:
    c = window.cpu
    return " / ".join(f"{c[k]:.0%}" for k in ("server", "loader", "writer", "measuring",
                                              "others"))


def describe(window: Window) -> str:
    extra = f" [late {window.late}, bad {window.bad}]" if window.late or window.bad else ""
    answered = len(window.latencies_ns)
    if window.kernel_stamped < answered:
        extra += f" [{answered - window.kernel_stamped} replies without a kernel time]"
    served = ""
    if window.served_s:
        served = (f"; {len(window.rewrites)} rewrites, changes served after "
                  + ", ".join(f"{v:.2f}" if not math.isinf(v) else "never"
                              for _, v in sorted(window.served_s.items()))
                  + " s")
    drops = ""
    if window.server_drops or window.our_drops:
        drops = (f" ({window.server_drops} dropped at the server's full socket buffer, "
                 f"{window.our_drops} at ours)")
    return (f"{window.sent} sent, {window.lost} lost{drops}, p50 {ms(window.percentile_ms(0.5), 3)}"
            f" / p99 {ms(window.percentile_ms(0.99))} / p99.9 "
            f"{ms(window.percentile_ms(0.999))} / max {ms(window.max_ms)} ms (as read by "
            f"the measuring loop: p99 {ms(window.percentile_ms(0.99, as_read=True))} / max "
            f"{ms(window.read_max_ms)} ms){served}; "
            f"CPU server / loader / writer / measuring / others {cpu_text(window)}{extra}")


def describe_reloads(run: Run) -> str:
    lines = timelines(run.reloading, run.reloads)
    steps = ""
    if lines:
        steps = (", replace -> load start " + ", ".join(f"{t.detect_s:.2f}" for t in lines)
                 + " s; load " + ", ".join(f"{t.load_s:.2f}" for t in lines)
                 + " s; diff + install + publish "
                 + ", ".join(f"{t.publish_s * 1e3:.0f}" for t in lines) + " ms")
    slow = slow_by_phase(run.reloading, run.reloads)
    problems = f"; log: {len(run.problems)} warnings/errors ({run.problems[:2]})" \
        if run.problems else ""
    return (f"{len(run.reloads)} loads for {len(run.reloading.rewrites)} rewrites{steps}; "
            f"over {SLOW_MS:g} ms or lost: {phase_text(slow) or 'none'}; "
            f"{waiting_text([waiting_by_phase(run.reloading, run.reloads)], [run.baseline])}"
            f"; server RSS {run.rss_mb:.0f} MB, peak {run.hwm_mb:.0f} MB{problems}")


def waiting_text(shares: Sequence[dict[str, tuple[float, float]]],
                 baselines: Sequence[Window]) -> str:
    """The run-queue wait of the server and of the measuring loop by phase (medians over
    runs)."""
    def share(values: Sequence[float]) -> str:
        known = [v for v in values if not math.isnan(v)]
        return f"{median(known):.1%}" if known else "-"

    def pair(key: str) -> str:
        return (f"{share([s[key][0] for s in shares])} / "
                f"{share([s[key][1] for s in shares])}")

    parts = [f"{phase} {pair(phase)}" for phase in RELOAD_PHASES]
    return ("time waiting for a CPU, server event loop / measuring loop: " + ", ".join(parts)
            + f", the whole window {pair('window')} (baseline "
            f"{share([w.waiting_share() for w in baselines])} / "
            f"{share([w.waiting_share(column=2) for w in baselines])})")


def phase_text(slow: dict[str, list[float]]) -> str:
    parts = []
    for phase in PHASES:
        values = slow.get(phase, [])
        if values:
            lost = sum(1 for v in values if math.isinf(v))
            answered = [v for v in values if not math.isinf(v)]
            worst = f"max {max(answered):.1f} ms" if answered else ""
            parts.append(f"{phase} {len(values)}"
                         f" ({', '.join(x for x in (worst, f'{lost} lost' if lost else '') if x)})")
    return "; ".join(parts)


# -- the table -----------------------------------------------------------------------------


def window_row(label: str, windows: Sequence[Window], served: bool, target: str,
               verdict: str) -> list[str]:
    return [
        label,
        f"{median([w.sent for w in windows]):,.0f}",
        f"{median([w.lost for w in windows]):,.0f}",
        ms(median([w.percentile_ms(0.5) for w in windows]), 3),
        ms(median([w.percentile_ms(0.99) for w in windows])),
        ms(median([w.percentile_ms(0.999) for w in windows])),
        ms(median([w.max_ms for w in windows])),
        (f"{seconds_text(median([w.served_median_s for w in windows]))} / "
         f"{seconds_text(median([w.served_max_s for w in windows]))}") if served else "",
        " ; ".join(cpu_text(w) for w in windows),
        target,
        verdict,
    ]


def scenario_rows(scenario: Scenario, runs: Sequence[Run], args: argparse.Namespace,
                  ) -> list[list[str]]:
    windows = [r.reloading for r in runs]
    lost = median([w.lost for w in windows])
    p99 = median([w.percentile_ms(0.99) for w in windows])
    served_max = median([w.served_max_s for w in windows])
    good = lost == 0 and p99 <= TARGET_P99_MS and served_max <= TARGET_SERVED_S
    passing = sum(r.passed for r in runs)
    size = median([r.dump_size for r in runs]) / 1e6
    rewrites = median([len(w.rewrites) for w in windows])
    rows = [
        window_row(f"{scenario.name} ({size:.1f} MB): baseline, no rewrites",
                   [r.baseline for r in runs], False, "", ""),
        window_row(f"{scenario.name}: the dump replaced every {args.every:g} s "
                   f"({rewrites:.0f} times)", windows, True,
                   f"0 lost, p99 <= {TARGET_P99_MS:g} ms, served <= {TARGET_SERVED_S:g} s",
                   f"{'pass' if good else 'FAIL'} ({passing}/{len(runs)} runs pass)"),
        [f"{scenario.name} per run: lost " + ", ".join(str(w.lost) for w in windows)
         + " (of them dropped at the server's full socket buffer "
         + ", ".join(str(w.server_drops) for w in windows) + ", at ours "
         + ", ".join(str(w.our_drops) for w in windows) + ")"
         + "; p99 ms " + ", ".join(ms(w.percentile_ms(0.99)) for w in windows)
         + "; max ms " + ", ".join(ms(w.max_ms) for w in windows)
         + "; as read by the measuring loop, p99 ms "
         + ", ".join(ms(w.percentile_ms(0.99, as_read=True)) for w in windows)
         + " and max ms " + ", ".join(ms(w.read_max_ms) for w in windows)
         + "; slowest change served " + ", ".join(seconds_text(w.served_max_s)
                                                 for w in windows)
         + "; bad replies " + ", ".join(str(w.bad) for w in windows)],
    ]
    lines = [t for r in runs for t in timelines(r.reloading, r.reloads)]
    loads = sum(len(r.reloads) for r in runs)
    if lines:
        rows.append([
            f"{scenario.name} reload steps, medians over {len(lines)} rewrites: replace -> "
            f"loader start {median([t.detect_s for t in lines]):.2f} s (poll "
            f"{POLL_INTERVAL_S} s, settle 0.5 s for in-place writes only), loader child "
            f"{median([t.load_s for t in lines]):.2f} s (max "
            f"{max(t.load_s for t in lines):.2f}), diff + install + publish "
            f"{median([t.publish_s for t in lines]) * 1e3:.0f} ms (max "
            f"{max(t.publish_s for t in lines) * 1e3:.0f}), publish -> probe answered "
            f"{median([t.answer_s for t in lines]) * 1e3:.0f} ms; {loads} loads for "
            f"{sum(len(w.rewrites) for w in windows)} rewrites"])
    slow: dict[str, list[float]] = {}
    for r in runs:
        for phase, values in slow_by_phase(r.reloading, r.reloads).items():
            slow.setdefault(phase, []).extend(values)
    base = sum(len(v) for r in runs for v in slow_by_phase(r.baseline, []).values())
    rows.append([f"{scenario.name} queries over {SLOW_MS:g} ms or lost, all runs, by what "
                 f"was going on when the reply came (lost: when sent): "
                 f"{phase_text(slow) or 'none'} (baseline: {base})"])
    rows.append([f"{scenario.name}: "
                 + waiting_text([waiting_by_phase(r.reloading, r.reloads) for r in runs],
                                [r.baseline for r in runs])])
    problems = sorted({p for r in runs for p in r.problems})
    if problems:
        rows.append([f"{scenario.name} server log warnings/errors: {len(problems)}, e.g. "
                     + " | ".join(problems[:3])])
    rows.append([f"{scenario.name}: {scenario.describe()}; server peak RSS "
                 f"{median([r.hwm_mb for r in runs]):.0f} MB"])
    return rows


def selected(args: argparse.Namespace) -> list[Scenario]:
    return list(SCENARIOS.values()) if args.scenario == "both" else [SCENARIOS[args.scenario]]


def measure(args: argparse.Namespace) -> Table:
    if args.rate * UDP_TIMEOUT_S >= 0x10000:
        raise SystemExit("--rate too high: query IDs would repeat within the timeout")
    offsets = rewrite_offsets(args.seconds, args.every)
    if not offsets:
        raise SystemExit(f"--seconds must be at least {FIRST_REWRITE_S + TAIL_S:g}")
    if len(offsets) > TOUCHED // 2:
        raise SystemExit(f"at most {TOUCHED // 2} rewrites per window: raise --every")
    scenarios = selected(args)
    print(f"reload_stall: {', '.join(s.name for s in scenarios)}; UDP {args.rate} q/s, "
          f"{args.baseline:g} s baseline, then {args.seconds:g} s with the dump replaced "
          f"at {', '.join(f'{o:g}' for o in offsets)} s; {machine_load()}", flush=True)
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="clusterdns-reload-stall-") as tmp:
        for scenario in scenarios:
            runs = [run_once(n, scenario, args, Path(tmp)) for n in range(1, args.runs + 1)]
            rows += scenario_rows(scenario, runs, args)
    rows.append([machine_load()])
    title = (f"Reload stall: UDP at {args.rate:,} q/s while the file source's dump is "
             f"replaced every {args.every:g} s ({args.seconds:g} s windows, medians of "
             f"{args.runs})")
    header = ["scenario, window", "UDP sent", "lost", "p50 ms", "p99 ms", "p99.9 ms",
              "max ms", "change served, median / max",
              "CPU server / loader children / writer / measuring / others, per run",
              "target", ""]
    return title, header, rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", choices=[*SCENARIOS, "both"], default="both",
                        help="yaml-1k (1.5 MB YAML List), json-10k (58 MB JSON List) or both")
    parser.add_argument("--runs", type=int, default=3, help="runs, each on a fresh server")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="length of the window with rewrites (default 20)")
    parser.add_argument("--baseline", type=float, default=10.0,
                        help="length of the baseline window without rewrites (default 10)")
    parser.add_argument("--every", type=float, default=2.0,
                        help="seconds between rewrites of the dump (default 2)")
    parser.add_argument("--rate", type=int, default=2_000,
                        help="UDP queries per second (default 2000)")
    parser.add_argument("--writer", nargs=2, metavar=("SCENARIO", "DIR"),
                        help=argparse.SUPPRESS)


def main_table(runs: int = 3) -> Table:
    return table_for(add_arguments, measure, runs)


def main() -> None:
    args = command_line(__doc__, add_arguments)
    if args.writer:
        writer_main(args.writer[0], Path(args.writer[1]))
        return
    if args.runs < 1 or args.rate < 1:
        raise SystemExit("--runs and --rate must be at least 1")
    if args.every <= 0 or args.baseline <= 0:
        raise SystemExit("--every and --baseline must be positive")
    print(markdown(*measure(args)))


if __name__ == "__main__":
    main()
