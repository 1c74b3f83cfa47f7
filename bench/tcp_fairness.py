"""TCP fairness: does pipelined TCP starve UDP? UDP latency and loss under a TCP flood.

Why this exists: the TCP budget of ``tcp_max_pipelined`` (100) queries per loop turn used
to be per connection, so N connections that each write 100 pipelined queries got N x 100
answers in one loop turn while every UDP query waited behind them (worst UDP latency
78 ms with 100 such connections, 165 ms and lost UDP queries with 200). The acceptance
item: TCP work per loop turn is bounded across all connections together, so that with
200 connections each pushing 100 pipelined queries without reading, UDP at 2,000 q/s
keeps p99 <= 5 ms and loses nothing, and a well-behaved TCP client is still answered.

What it measures, per run, against a fresh ``clusterdns serve`` process answering the
bundled demo cluster (``config/demo.yaml``) on a free loopback port:

1. baseline: the measuring clients (below) alone for ``--seconds``, no attackers;
2. under attack: the same clients while a separate process (``--attack``, a child
   interpreter, so the flood does not slow the measuring loop) holds ``--connections``
   TCP connections, each writing ``--pipelined`` length-prefixed queries in one write,
   again and again for as long as the socket accepts data, up to ``--backlog`` writes
   (30,000 queries; see ``BACKLOG_BATCHES`` for why a bound), and never reading a reply.
   Those writes land in the kernel's socket buffers at once (hundreds of MB on loopback),
   so the window starts ``--settle`` seconds after the attack did: it measures the
   server under a standing flood, not the generator's start-up. At the end the attacker
   reports from /proc/net/tcp how many connections still had queries the server had not
   read (the flood stood to the end), the replies left unread, and the kernel's TCP
   memory.

The measuring clients share one ``select`` loop in this process:

- UDP at a steady ``--udp-rate`` q/s on one socket, a unique ID per query (IDs wrap at
  65,536, far beyond the 1 s timeout at these rates), each timed from send to receive
  with ``time.perf_counter_ns``; no reply within 1 s counts as lost. Percentiles are
  nearest-rank over every query sent, a lost query counting as slower than all answered
  ones, so loss can only make them worse; max is over the answered ones;
- a well-behaved TCP client on its own connection: one query at a time, reading each
  reply before the next, at most ``--tcp-rate`` q/s; its answers and their p50/p99.

All queries are valid in-zone queries the server's fast path answers after a warm-up:
A, SRV, AAAA (NODATA) and PTR of demo names, and two NXDOMAIN names.

Verdict (under attack, medians over runs): UDP p99 <= 5 ms, no UDP query lost, and the
well-behaved TCP client answered in every run. The table also gives the CPU share (of one
core) of the server, the attacker and the measuring process: on a small machine the
generators compete with the server for cores, and a starved measuring loop would show
up as latency that is not the server's; the CPU of everything else on the machine is
given too, since other programs running at the same time make every figure noisier.

Run: ``.venv/bin/python -m bench.tcp_fairness [--runs 3] [--connections 200]
[--pipelined 100] [--udp-rate 2000] [--seconds 10] [--backlog 300] [--settle 2]``
(about 25 s per run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.dnsperf_common import (
    command_line,
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
from bench.scale import status_mb

TABLE_ORDER = 80

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "config" / "demo.yaml"
PROBE = "httpenv.default.svc.cluster.local"
TARGET_P99_MS = 5.0
UDP_TIMEOUT_S = 1.0
ATTACK_READY_TIMEOUT_S = 30.0
PUSH_BYTES = 64 * 1024
"""At most this much is written to one attacking connection before the next one's turn."""
BACKLOG_BATCHES = 300
"""Writes per attacking connection by default (30,000 queries at 100 per write): about
three times what the server answered per connection in a whole run (settle and window)
when it was measured with no bound, so the attack stands to the end (the report says how
many connections still had queries unread by the server then); but bounded, because with
no bound the attackers keep writing into the server's ever-growing receive buffers and
the kernel's TCP memory reaches its pressure threshold (1.5 GB here) within the run, and
then every TCP socket on the machine feels it."""

A, PTR, AAAA, SRV = 1, 12, 28, 33
QUESTIONS: tuple[tuple[str, int], ...] = (
    ("httpenv.default.svc.cluster.local", A),
    ("kube-dns.kube-system.svc.cluster.local", A),
    ("httpenv-headless.default.svc.cluster.local", A),  # headless: five rotations
    ("_amqp._tcp.rabbitmq.default.svc.cluster.local", SRV),
    ("httpenv.default.svc.cluster.local", AAAA),  # IPv4-only: NODATA
    ("10.189.108.10.in-addr.arpa", PTR),
    ("nope.default.svc.cluster.local", A),  # NXDOMAIN
    ("httpenv.default.default.svc.cluster.local", A),  # NXDOMAIN, a search-path expansion
)
"""What every client asks, in turn: demo names the fast path answers, some NXDOMAIN."""


# -- DNS wire format (just enough: queries out, ID and rcode in) ---------------------------


def query_wire(name: str, qtype: int, qid: int) -> bytes:
    """A plain query (RD set, no EDNS, as a glibc stub sends it) for ``name``/``qtype``."""
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(label)]) + label.encode("ascii")
                      for label in name.rstrip(".").split("."))
    return header + labels + b"\x00" + struct.pack("!HH", qtype, 1)


def framed(message: bytes) -> bytes:
    """``message`` with its RFC 7766 two-byte length prefix."""
    return len(message).to_bytes(2, "big") + message


def attack_batch(pipelined: int) -> bytes:
    """``pipelined`` length-prefixed queries (IDs 0..n-1, cycling over ``QUESTIONS``) as
    one buffer: what every attacking connection writes at once."""
    return b"".join(framed(query_wire(*QUESTIONS[i % len(QUESTIONS)], i & 0xFFFF))
                    for i in range(pipelined))


def reply_ok(reply: bytes) -> bool:
    """A response (QR set) with NOERROR or NXDOMAIN, which is what every question gets."""
    return len(reply) >= 12 and reply[2] & 0x80 != 0 and reply[3] & 0x0F in (0, 3)


def warm_up(port: int, rounds: int = 10) -> None:
    """Ask every question a few times over UDP and TCP, so the fast path (one table per
    transport, headless answers filled rotation by rotation) answers all of them."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(2.0)
        udp.connect(("127.0.0.1", port))
        for _ in range(rounds):
            for qid, (name, qtype) in enumerate(QUESTIONS):
                udp.send(query_wire(name, qtype, qid))
                if not reply_ok(udp.recv(4096)):
                    raise SystemExit(f"warm-up: bad UDP reply for {name} ({qtype})")
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as tcp:
        for _ in range(rounds):
            for qid, (name, qtype) in enumerate(QUESTIONS):
                tcp.sendall(framed(query_wire(name, qtype, qid)))
                length = int.from_bytes(_recv_exactly(tcp, 2), "big")
                if not reply_ok(_recv_exactly(tcp, length)):
                    raise SystemExit(f"warm-up: bad TCP reply for {name} ({qtype})")


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise SystemExit("warm-up: the server closed the TCP connection")
        data += chunk
    return bytes(data)


# -- the attacker (a child interpreter: python -m bench.tcp_fairness --attack ...) ---------


class Attack:
    """``connections`` TCP connections, each writing ``batch`` again and again whenever
    its socket accepts data, never reading, until it has written ``backlog`` batches (0:
    no end). Stops when stdin closes or after ``limit_s``."""

    def __init__(self, port: int, connections: int, batch: bytes, backlog: int,
                 limit_s: float) -> None:
        self.port = port
        self.wanted = connections
        self.batch = memoryview(batch)
        self.backlog = backlog
        self.limit_s = limit_s
        self.socks: dict[int, socket.socket] = {}
        self.rest: dict[int, memoryview] = {}
        """Per connection, the unsent tail of the batch being written (framing stays whole)."""
        self.written: dict[int, int] = {}
        """Per connection, the batches written whole."""
        self.refused = 0
        self.closed = 0
        self.full = 0
        """Connections that wrote their whole backlog."""
        self.batches = 0
        self.per_second: list[int] = []
        self.started = time.monotonic()
        self.last_write_s = 0.0

    def connect(self) -> None:
        for _ in range(self.wanted):
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=5.0)
            except OSError:
                self.refused += 1
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            self.socks[sock.fileno()] = sock
            self.rest[sock.fileno()] = self.batch
            self.written[sock.fileno()] = 0
        self.started = time.monotonic()

    def push(self, fd: int) -> bool:
        """Write as much as the socket takes, up to ``PUSH_BYTES`` (then the other
        connections get their turn); False when this connection is done (its backlog is
        written or the server closed it)."""
        sock = self.socks[fd]
        view = self.rest[fd]
        wrote = False
        budget = PUSH_BYTES
        try:
            while budget > 0:
                sent = sock.send(view)
                budget -= sent
                wrote = True
                if sent < len(view):
                    view = view[sent:]
                    continue
                view = self.batch
                self.batches += 1
                self.written[fd] += 1
                second = int(time.monotonic() - self.started)
                while len(self.per_second) <= second:
                    self.per_second.append(0)
                self.per_second[second] += 1
                if self.written[fd] == self.backlog:
                    self.full += 1
                    break
        except BlockingIOError:
            pass
        except OSError:
            self.closed += 1
            del self.socks[fd], self.rest[fd]
            sock.close()
            return False
        self.rest[fd] = view
        if wrote:
            self.last_write_s = time.monotonic() - self.started
        return self.written[fd] != self.backlog

    def queues(self) -> dict[str, int]:
        """From /proc/net/tcp, for this attack's connections: how many still have queries
        the server has not read (its socket's receive queue), and the bytes of queries
        unread and of replies not read by us (our receive queues and the server's send
        queues). Queries the server has read but not yet answered are not counted."""
        ours = {sock.getsockname()[1] for sock in self.socks.values()}
        alive = waiting = queries = replies = 0
        try:
            lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
        except OSError:
            return {}
        for line in lines:
            fields = line.split()
            local = int(fields[1].split(":")[1], 16)
            remote = int(fields[2].split(":")[1], 16)
            tx, rx = (int(x, 16) for x in fields[4].split(":"))
            if local == self.port and remote in ours:
                alive += 1
                waiting += rx > 0
                queries += rx
                replies += tx
            elif local in ours and remote == self.port:
                replies += rx
        return {"alive": alive, "waiting": waiting, "queries_unread": queries,
                "replies_unread": replies, **tcp_memory()}

    def run(self) -> dict[str, Any]:
        self.connect()
        poller = select.epoll()
        for fd in list(self.socks):
            if self.push(fd):
                poller.register(fd, select.EPOLLOUT)
        stdin = sys.stdin.fileno()
        poller.register(stdin, select.EPOLLIN)
        print(f"ready {len(self.socks)}", flush=True)
        deadline = self.started + self.limit_s
        while time.monotonic() < deadline:
            events = poller.poll(0.5)
            if any(fd == stdin for fd, _ in events):
                break
            for fd, _ in events:
                if fd in self.socks and not self.push(fd):
                    poller.unregister(fd)
        elapsed = time.monotonic() - self.started
        usage = resource.getrusage(resource.RUSAGE_SELF)
        queues = self.queues()
        for sock in self.socks.values():
            sock.close()
        poller.close()
        return {"connected": self.wanted - self.refused, "refused": self.refused,
                "closed_by_server": self.closed, "full": self.full, "backlog": self.backlog,
                "batches": self.batches, "per_second": self.per_second,
                "last_write_s": self.last_write_s, "seconds": elapsed,
                "cpu_s": usage.ru_utime + usage.ru_stime, **queues}


def tcp_memory() -> dict[str, int]:
    """The kernel's TCP memory now and its pressure threshold, in bytes."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        pressure = int(Path("/proc/sys/net/ipv4/tcp_mem").read_text().split()[1])
        for line in Path("/proc/net/sockstat").read_text().splitlines():
            if line.startswith("TCP:"):
                fields = line.split()
                used = int(fields[fields.index("mem") + 1])
                return {"tcp_mem": used * page, "tcp_mem_pressure": pressure * page}
    except (OSError, ValueError, IndexError):
        pass
    return {}


def attack_main(port: int, connections: int, pipelined: int, backlog: int,
                limit_s: float) -> None:
    result = Attack(port, connections, attack_batch(pipelined), backlog, limit_s).run()
    print(json.dumps(result), flush=True)


class Attacker:
    """The attacking child process, seen from the measuring side."""

    def __init__(self, port: int, connections: int, pipelined: int, backlog: int,
                 limit_s: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.tcp_fairness", "--attack", str(port),
             str(connections), str(pipelined), str(backlog), str(limit_s)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], ATTACK_READY_TIMEOUT_S)
        line = self.process.stdout.readline().decode().split() if ready else []
        if not line or line[0] != "ready":
            self.stop()
            raise SystemExit("the attacker did not get ready")
        self.connected = int(line[1])

    def stop(self) -> dict[str, Any]:
        """Close its stdin (its signal to stop) and read its report."""
        try:
            out, _ = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            return {}
        lines = out.decode().strip().splitlines()
        try:
            report: dict[str, Any] = json.loads(lines[-1])
        except (IndexError, ValueError):
            return {}
        return report


# -- the measuring clients -----------------------------------------------------------------


@dataclass
class Phase:
    """What the measuring clients saw in one window."""

    udp_sent: int
    udp_latencies_ns: list[int]
    udp_lost: int
    udp_late: int
    """Replies that came after their query had been counted lost."""
    udp_bad: int
    """Replies that were not NOERROR/NXDOMAIN responses."""
    tcp_sent: int
    tcp_latencies_ns: list[int]
    tcp_bad: int
    tcp_closed: bool
    server_cpu: float
    """Server CPU seconds per second of the window (1.0 = one core)."""
    client_cpu: float
    """CPU of this measuring process, per second of the window."""
    attacker_cpu: float
    """CPU of the attacking process, per second of the window (nan without one)."""
    other_cpu: float
    """CPU of everything else on the machine (the kernel's own threads, other programs),
    per second of the window: when it is high, the figures carry other people's noise."""

    def udp_percentile_ms(self, share: float) -> float:
        return percentile_ms(self.udp_latencies_ns, self.udp_lost, share)

    @property
    def udp_max_ms(self) -> float:
        return max(self.udp_latencies_ns, default=0) / 1e6 if self.udp_latencies_ns \
            else math.nan

    @property
    def tcp_answered(self) -> int:
        return len(self.tcp_latencies_ns)

    def tcp_percentile_ms(self, share: float) -> float:
        return percentile_ms(self.tcp_latencies_ns, self.tcp_sent - self.tcp_answered, share)


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all CPUs, /proc/stat), so far."""
    try:
        fields = [int(f) for f in
                  Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return math.nan
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def measure_clients(port: int, server_pid: int, seconds: float, udp_rate: int,
                    tcp_rate: float, attacker_pid: int | None = None) -> Phase:
    """The UDP client at ``udp_rate`` and the well-behaved TCP client for ``seconds``,
    then up to ``UDP_TIMEOUT_S`` more for the last replies. CPU shares are taken over the
    same time for the server, this process and ``attacker_pid``."""
    templates = [query_wire(name, qtype, 0)[2:] for name, qtype in QUESTIONS]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    udp.connect(("127.0.0.1", port))
    udp.setblocking(False)
    tcp = socket.create_connection(("127.0.0.1", port), timeout=5.0)
    tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tcp.setblocking(False)

    timeout_ns = int(UDP_TIMEOUT_S * 1e9)
    udp_total = int(udp_rate * seconds)
    outstanding: dict[int, int] = {}  # query ID -> send time
    expiry: deque[tuple[int, int]] = deque()  # (send time, ID), oldest first
    latencies: list[int] = []
    lost = late = bad = 0
    udp_seq = 0

    tcp_interval_ns = int(1e9 / tcp_rate) if tcp_rate > 0 else 0
    tcp_latencies: list[int] = []
    tcp_buffer = bytearray()
    tcp_sent = tcp_bad = 0
    tcp_inflight_ns = 0  # send time of the query awaiting its reply, 0 when none
    tcp_closed = False

    machine_before = machine_busy_seconds()
    cpu_before = process_cpu_seconds(server_pid)
    attacker_before = process_cpu_seconds(attacker_pid) if attacker_pid else 0.0
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter_ns()
    send_end = start + int(seconds * 1e9)
    tcp_due = start
    try:
        while True:
            now = time.perf_counter_ns()
            while udp_seq < udp_total and start + udp_seq * 1_000_000_000 // udp_rate <= now:
                qid = udp_seq & 0xFFFF
                message = struct.pack("!H", qid) + templates[udp_seq % len(templates)]
                sent_ns = time.perf_counter_ns()
                with contextlib.suppress(OSError):  # a failed send is lost at its timeout
                    udp.send(message)
                outstanding[qid] = sent_ns
                expiry.append((sent_ns, qid))
                udp_seq += 1
            if (not tcp_closed and not tcp_inflight_ns and tcp_interval_ns
                    and now >= tcp_due and now < send_end):
                qid = tcp_sent & 0xFFFF
                message = framed(struct.pack("!H", qid) + templates[tcp_sent % len(templates)])
                tcp_inflight_ns = time.perf_counter_ns()
                if tcp.send(message) != len(message):
                    raise SystemExit("the well-behaved TCP client could not write 1 query")
                tcp_sent += 1
                tcp_due = max(tcp_due + tcp_interval_ns, now)
            now = time.perf_counter_ns()
            while expiry and expiry[0][0] + timeout_ns <= now:
                sent_ns, qid = expiry.popleft()
                if outstanding.get(qid) == sent_ns:
                    del outstanding[qid]
                    lost += 1
            if udp_seq >= udp_total and not outstanding and (
                    not tcp_inflight_ns or tcp_closed):
                break
            if udp_seq >= udp_total and now >= send_end + timeout_ns:
                break  # the TCP client's last query is still unanswered: count it so
            wake = send_end + timeout_ns
            if udp_seq < udp_total:
                wake = min(wake, start + udp_seq * 1_000_000_000 // udp_rate)
            if expiry:
                wake = min(wake, expiry[0][0] + timeout_ns)
            if not tcp_closed and not tcp_inflight_ns and tcp_interval_ns and now < send_end:
                wake = min(wake, tcp_due)
            readable, _, _ = select.select([udp, tcp] if not tcp_closed else [udp], [], [],
                                           max(wake - now, 0) / 1e9)
            if udp in readable:
                while True:
                    try:
                        reply = udp.recv(4096)
                    except BlockingIOError:
                        break
                    except ConnectionRefusedError:
                        continue
                    got_ns = time.perf_counter_ns()
                    if len(reply) < 12:
                        bad += 1
                        continue
                    sent_ns = outstanding.pop(reply[0] << 8 | reply[1], 0)
                    if not sent_ns:
                        late += 1
                        continue
                    latencies.append(got_ns - sent_ns)
                    if not reply_ok(reply):
                        bad += 1
            if tcp in readable:
                try:
                    chunk = tcp.recv(65536)
                except BlockingIOError:
                    chunk = None
                except OSError:
                    chunk = b""
                got_ns = time.perf_counter_ns()
                if chunk == b"":
                    tcp_closed = True
                elif chunk:
                    tcp_buffer += chunk
                while len(tcp_buffer) >= 2:
                    length = tcp_buffer[0] << 8 | tcp_buffer[1]
                    if len(tcp_buffer) < 2 + length:
                        break
                    reply = bytes(tcp_buffer[2:2 + length])
                    del tcp_buffer[:2 + length]
                    if tcp_inflight_ns and reply[:2] == struct.pack("!H", (tcp_sent - 1) & 0xFFFF):
                        tcp_latencies.append(got_ns - tcp_inflight_ns)
                        tcp_inflight_ns = 0
                        if not reply_ok(reply):
                            tcp_bad += 1
                    else:
                        tcp_bad += 1
    finally:
        udp.close()
        tcp.close()
    wall = (time.perf_counter_ns() - start) / 1e9
    usage_after = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = (usage_after.ru_utime + usage_after.ru_stime
                  - usage_before.ru_utime - usage_before.ru_stime)
    lost += len(outstanding)
    server_cpu = process_cpu_seconds(server_pid) - cpu_before
    attacker_cpu = math.nan
    if attacker_pid:
        attacker_cpu = (process_cpu_seconds(attacker_pid) - attacker_before) / wall
    others = (machine_busy_seconds() - machine_before) / wall - server_cpu / wall \
        - client_cpu / wall - (0.0 if math.isnan(attacker_cpu) else attacker_cpu)
    return Phase(udp_sent=udp_seq, udp_latencies_ns=latencies, udp_lost=lost, udp_late=late,
                 udp_bad=bad, tcp_sent=tcp_sent, tcp_latencies_ns=tcp_latencies,
                 tcp_bad=tcp_bad, tcp_closed=tcp_closed,
                 server_cpu=server_cpu / wall, client_cpu=client_cpu / wall,
                 attacker_cpu=attacker_cpu, other_cpu=max(others, 0.0))


# -- one run: a fresh server, the baseline, the attack -------------------------------------


@dataclass
class Run:
    baseline: Phase
    attacked: Phase
    attack: dict[str, Any]
    attack_connected: int
    settle_s: float
    rss_before_mb: float
    """The server's VmRSS after the baseline, before the attack."""
    hwm_mb: float
    """The server's peak RSS (VmHWM) after the attack."""

    @property
    def passed(self) -> bool:
        return (self.attacked.udp_percentile_ms(0.99) <= TARGET_P99_MS
                and self.attacked.udp_lost == 0 and self.attacked.tcp_answered > 0)


def serve_command(port: int) -> list[str]:
    """The demo as a user starts it, on 127.0.0.1:``port``, HTTP endpoints off."""
    return [sys.executable, "-m", "clusterdns", "serve", "--config", str(DEMO_CONFIG),
            "--listen", f"127.0.0.1:{port}", "--health", "", "--ready", "", "--metrics", "",
            "--lameduck", "0", "--log-level", "warning"]


def run_once(number: int, args: argparse.Namespace, directory: Path) -> Run:
    port = free_port()
    log = directory / f"serve-{number}.log"
    with log.open("w") as out:
        process = subprocess.Popen(serve_command(port), cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=out)
    try:
        wait_answering(port, PROBE, process, log)
        warm_up(port)
        baseline = measure_clients(port, process.pid, args.seconds, args.udp_rate,
                                   args.tcp_rate)
        print(f"run {number} baseline: {describe(baseline)}", flush=True)
        rss_before = status_mb(process.pid, "VmRSS")
        attacker = Attacker(port, args.connections, args.pipelined, args.backlog,
                            args.settle + args.seconds + UDP_TIMEOUT_S + 60)
        try:
            time.sleep(args.settle)
            attacked = measure_clients(port, process.pid, args.seconds, args.udp_rate,
                                       args.tcp_rate, attacker.process.pid)
        finally:
            report = attacker.stop()
        if process.poll() is not None:
            raise SystemExit(f"the server exited ({process.returncode}) under attack: "
                             f"{log.read_text()[-2000:]}")
        hwm = status_mb(process.pid, "VmHWM")
    finally:
        stop(process)
    run = Run(baseline, attacked, report, attacker.connected, args.settle, rss_before, hwm)
    print(f"run {number} under attack: {describe(attacked)}", flush=True)
    print(f"run {number} attack: {describe_attack(run)}; "
          f"{'pass' if run.passed else 'FAIL'}", flush=True)
    return run


def cpu_text(phase: Phase) -> str:
    """Server / attacker / measuring client / everything else, in % of one core."""
    attacker = "-" if math.isnan(phase.attacker_cpu) else f"{phase.attacker_cpu:.0%}"
    others = "-" if math.isnan(phase.other_cpu) else f"{phase.other_cpu:.0%}"
    return f"{phase.server_cpu:.0%} / {attacker} / {phase.client_cpu:.0%} / {others}"


def describe(phase: Phase) -> str:
    extra = ""
    if phase.udp_late or phase.udp_bad or phase.tcp_bad or phase.tcp_closed:
        extra = (f" [UDP late {phase.udp_late}, UDP bad {phase.udp_bad}, TCP bad "
                 f"{phase.tcp_bad}, TCP closed by server {phase.tcp_closed}]")
    return (f"UDP {phase.udp_sent} sent, {phase.udp_lost} lost, p50 "
            f"{ms(phase.udp_percentile_ms(0.5), 3, ' ms')}, p99 "
            f"{ms(phase.udp_percentile_ms(0.99), 2, ' ms')}, p99.9 "
            f"{ms(phase.udp_percentile_ms(0.999), 2, ' ms')}, max "
            f"{ms(phase.udp_max_ms, 2, ' ms')}; TCP client {phase.tcp_answered}/"
            f"{phase.tcp_sent} answered, p50 {ms(phase.tcp_percentile_ms(0.5), 3, ' ms')}, p99 "
            f"{ms(phase.tcp_percentile_ms(0.99), 2, ' ms')}; CPU server / attacker / "
            f"measuring client / others {cpu_text(phase)}{extra}")


def describe_attack(run: Run) -> str:
    report = run.attack
    memory = (f"server RSS {run.rss_before_mb:.0f} MB before the attack, peak (VmHWM) "
              f"{run.hwm_mb:.0f} MB")
    if not report:
        return f"{run.attack_connected} connections, no report from the attacker; {memory}"
    seconds = max(float(report["seconds"]), 1e-9)
    per_second = ", ".join(str(n) for n in report["per_second"])
    backlog = int(report["backlog"])
    full = (f", {report['full']} wrote their whole backlog of {backlog} writes"
            if backlog else "")
    standing = ""
    if "alive" in report:
        standing = (f"; at the end {report['alive']} connections open, {report['waiting']} "
                    f"with queries the server had not read yet "
                    f"({int(report['queries_unread']) / 1e6:.0f} MB), "
                    f"{int(report['replies_unread']) / 1e6:.0f} MB of replies unread in "
                    "kernel queues")
    if "tcp_mem" in report:
        standing += (f", kernel TCP memory {int(report['tcp_mem']) / 1e6:,.0f} MB (pressure "
                     f"at {int(report['tcp_mem_pressure']) / 1e6:,.0f} MB)")
    return (f"{report['connected']} connections ({report['refused']} refused, "
            f"{report['closed_by_server']} closed by the server{full}), "
            f"{report['batches']:,} writes in {seconds:.1f} s (per second, measuring from "
            f"second {run.settle_s:g}: {per_second}), last write at "
            f"{float(report['last_write_s']):.1f} s, attacker CPU "
            f"{float(report['cpu_s']) / seconds:.0%}{standing}; {memory}")


# -- the table -----------------------------------------------------------------------------


def phase_row(label: str, phases: Sequence[Phase], target: str, verdict: str) -> list[str]:
    return [
        label,
        f"{median([p.udp_sent for p in phases]):,.0f}",
        f"{median([p.udp_lost for p in phases]):,.0f}",
        ms(median([p.udp_percentile_ms(0.5) for p in phases]), 3),
        ms(median([p.udp_percentile_ms(0.99) for p in phases])),
        ms(median([p.udp_percentile_ms(0.999) for p in phases])),
        ms(median([p.udp_max_ms for p in phases])),
        f"{median([p.tcp_answered for p in phases]):,.0f} / "
        f"{median([p.tcp_sent for p in phases]):,.0f}",
        ms(median([p.tcp_percentile_ms(0.5) for p in phases]), 3),
        ms(median([p.tcp_percentile_ms(0.99) for p in phases])),
        " ; ".join(cpu_text(p) for p in phases),
        target,
        verdict,
    ]


def measure(args: argparse.Namespace) -> Table:
    if args.udp_rate * UDP_TIMEOUT_S >= 0x10000:
        raise SystemExit("--udp-rate too high: query IDs would repeat within the timeout")
    print(f"tcp_fairness: UDP {args.udp_rate} q/s and a TCP client at <= {args.tcp_rate:g} "
          f"q/s, {args.seconds:g} s windows; attack: {args.connections} connections x "
          f"{args.pipelined} pipelined queries per write, up to {args.backlog or 'unlimited'} "
          f"writes each, never reading; {machine_load()}",
          flush=True)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="clusterdns-tcp-fairness-") as tmp:
        for number in range(1, args.runs + 1):
            runs.append(run_once(number, args, Path(tmp)))
    attacked = [r.attacked for r in runs]
    p99 = median([p.udp_percentile_ms(0.99) for p in attacked])
    lost = median([p.udp_lost for p in attacked])
    answered_always = all(p.tcp_answered > 0 for p in attacked)
    verdict = "pass" if p99 <= TARGET_P99_MS and lost == 0 and answered_always else "FAIL"
    passing = sum(r.passed for r in runs)
    rows = [
        phase_row("baseline: no attackers", [r.baseline for r in runs], "", ""),
        phase_row(f"{args.connections} TCP connections x {args.pipelined} pipelined, "
                  "not reading", attacked,
                  f"UDP p99 <= {TARGET_P99_MS:g} ms, 0 lost, TCP client answered",
                  f"{verdict} ({passing}/{len(runs)} runs pass)"),
        ["under attack, per run: UDP p99 ms "
         + ", ".join(ms(p.udp_percentile_ms(0.99)) for p in attacked)
         + "; UDP lost " + ", ".join(str(p.udp_lost) for p in attacked)
         + "; UDP max ms " + ", ".join(ms(p.udp_max_ms) for p in attacked)
         + "; TCP client answered " + ", ".join(str(p.tcp_answered) for p in attacked)],
    ]
    for number, run in enumerate(runs, 1):
        rows.append([f"run {number} attack: {describe_attack(run)}"])
    rows.append([machine_load()])
    title = (f"TCP fairness: UDP at {args.udp_rate:,} q/s while {args.connections} TCP "
             f"connections pipeline {args.pipelined} queries per write without reading, "
             f"up to {args.backlog or 'unlimited'} writes each ({args.seconds:g} s windows, "
             f"medians of {args.runs})")
    header = ["phase", "UDP sent", "UDP lost", "UDP p50 ms", "UDP p99 ms", "UDP p99.9 ms",
              "UDP max ms", "TCP client answered / sent", "TCP p50 ms", "TCP p99 ms",
              "CPU server / attacker / measuring / others, per run", "target", ""]
    return title, header, rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=3, help="runs, each on a fresh server")
    parser.add_argument("--connections", type=int, default=200,
                        help="attacking TCP connections (default 200)")
    parser.add_argument("--pipelined", type=int, default=100,
                        help="queries per write on each attacking connection (default 100)")
    parser.add_argument("--udp-rate", type=int, default=2_000,
                        help="UDP queries per second of the measuring client (default 2000)")
    parser.add_argument("--tcp-rate", type=float, default=100.0,
                        help="at most this many q/s from the well-behaved TCP client, one at "
                             "a time (default 100)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="length of each measuring window (default 10)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds between the attack starting and the measuring window, "
                             "while the attack fills the kernel's socket buffers (default 2)")
    parser.add_argument("--backlog", type=int, default=BACKLOG_BATCHES,
                        help="writes (of --pipelined queries) per attacking connection, then "
                             f"it stops writing; 0: no end (default {BACKLOG_BATCHES})")
    parser.add_argument("--attack", nargs=5, metavar=("PORT", "CONNECTIONS", "PIPELINED",
                                                      "BACKLOG", "LIMIT_S"),
                        help=argparse.SUPPRESS)


def main_table(runs: int = 3) -> Table:
    return table_for(add_arguments, measure, runs)


def main() -> None:
    args = command_line(__doc__, add_arguments)
    if args.attack:
        port, connections, pipelined, backlog, limit_s = args.attack
        attack_main(int(port), int(connections), int(pipelined), int(backlog),
                    float(limit_s))
        return
    for name in ("runs", "connections", "pipelined", "udp_rate"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1")
    if args.seconds <= 0:
        raise SystemExit("--seconds must be positive")
    if args.settle < 0 or args.backlog < 0 or args.tcp_rate < 0:
        raise SystemExit("--settle, --backlog and --tcp-rate must not be negative")
    print(markdown(*measure(args)))


if __name__ == "__main__":
    main()
