"""Zone transfer at scale: AXFR of a 10,000-service / 100,000-endpoint cluster.

Issue 14 item 1 asks that a transfer work at that scale and that its time and memory be
known. Per run, against a fresh ``clusterdns serve`` of ``bench.cluster``'s cluster
(written once as a ``kubectl get -o json`` List; transfers allowed to 127.0.0.1):

1. once the last service answers, the UDP probe of step 3 runs for 2 s alone (the
   baseline), then the server's peak RSS is reset
   (``echo 5 > /proc/PID/clear_refs``) and its RSS read;
2. AXFR of ``cluster.local`` over one TCP connection, read by this process as fast as it
   can: seconds from sending the query to the closing SOA, messages, bytes, records (the
   two SOAs included) and records per second; the first and last message are parsed to
   check the SOA and its serial, every message's header for NOERROR and its length for
   the 65,535-byte limit;
3. while it runs, a second thread sends UDP A queries for services at a steady rate and
   times them: what a transfer costs everyone else (p50/p99/max, lost);
4. the server's peak RSS over the transfer (VmHWM after it) and its RSS after;
5. the same for ``in-addr.arpa`` (the PTR records), then ``ip6.arpa``; the records of
   the three zones, less one SOA each, must add up to ``clusterdns_records`` (every
   record, each in exactly one zone).

Medians of ``--runs`` runs (3). Nothing asserts on timings: the script prints one line
per transfer and the table.

Run: ``.venv/bin/python -m bench.axfr [--runs 3] [--services N] [--endpoints N]``.
"""

from __future__ import annotations

import argparse
import random
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rdtypes.ANY.SOA

from bench.cluster import add_cluster_arguments, namespace_of, write_json_list
from bench.dnsperf_common import free_port, machine_load, wait_answering
from bench.scale import Table, markdown, median, status_mb, stop

ROOT = Path(__file__).resolve().parents[1]
TABLE_ORDER = 60
ZONES = ("cluster.local", "in-addr.arpa", "ip6.arpa")
UDP_RATE = 500  # probe queries per second during a transfer


@dataclass
class Transfer:
    zone: str
    seconds: float = 0.0
    messages: int = 0
    bytes: int = 0
    records: int = 0
    largest: int = 0
    serial: int = 0
    rss_before_mb: float = 0.0
    peak_mb: float = 0.0
    rss_after_mb: float = 0.0
    udp_ms: list[float] = field(default_factory=list)
    udp_lost: int = 0

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds else float("nan")


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(left)
        if not chunk:
            raise SystemExit(f"the server closed the connection with {left} bytes to go")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def soa_serial(message: bytes, last: bool) -> int:
    msg = dns.message.from_wire(message, one_rr_per_rrset=True)
    rrset = msg.answer[-1] if last else msg.answer[0]
    soa = rrset[0]
    if rrset.rdtype != dns.rdatatype.SOA or not isinstance(soa, dns.rdtypes.ANY.SOA.SOA):
        raise SystemExit(f"the transfer does not {'end' if last else 'begin'} with the SOA")
    return int(soa.serial)


def axfr(port: int, zone: str) -> Transfer:
    """One AXFR of ``zone``, read to its closing SOA: counted, timed, checked."""
    out = Transfer(zone)
    query = dns.message.make_query(zone, "AXFR", use_edns=False).to_wire()
    with socket.create_connection(("127.0.0.1", port), timeout=60,
                                  source_address=("127.0.0.1", 0)) as sock:
        started = time.perf_counter()
        sock.sendall(struct.pack("!H", len(query)) + query)
        first = last = b""
        soas = 0
        while soas < 2:
            (length,) = struct.unpack("!H", recv_exactly(sock, 2))
            message = recv_exactly(sock, length)
            flags = struct.unpack_from("!H", message, 2)[0]
            if flags & 0x000F != dns.rcode.NOERROR:
                raise SystemExit(f"{zone}: rcode {flags & 0x000F} in message "
                                 f"{out.messages + 1}")
            types = record_types(message)
            soas += types.count(dns.rdatatype.SOA)
            first = first or message
            last = message
            out.messages += 1
            out.bytes += length
            out.records += len(types)
            out.largest = max(out.largest, length)
        out.seconds = time.perf_counter() - started
    out.serial = soa_serial(first, last=False)
    if soa_serial(last, last=True) != out.serial:
        raise SystemExit(f"{zone}: the closing SOA has another serial")
    return out


def record_types(message: bytes) -> list[int]:
    """The type of every Answer record of a message, read by skipping through it."""
    qd, an = struct.unpack_from("!HH", message, 4)
    pos = 12
    types = []
    for index in range(qd + an):
        while message[pos] and message[pos] < 0xC0:  # labels
            pos += 1 + message[pos]
        pos += 2 if message[pos] else 1  # a pointer, or the root label
        if index < qd:
            pos += 4
            continue
        rtype, rdlen = struct.unpack_from("!H", message, pos)[0], \
            struct.unpack_from("!H", message, pos + 8)[0]
        types.append(rtype)
        pos += 10 + rdlen
    return types


class UdpProbe(threading.Thread):
    """UDP A queries for random services at ``rate`` q/s, timed, until stopped."""

    def __init__(self, port: int, services: int, rate: int = UDP_RATE) -> None:
        super().__init__(daemon=True)
        self.port, self.services, self.rate = port, services, rate
        self.latencies_ms: list[float] = []
        self.lost = 0
        self.done = threading.Event()

    def run(self) -> None:
        rng = random.Random(14)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(1.0)
            sock.connect(("127.0.0.1", self.port))
            interval = 1.0 / self.rate
            next_at = time.perf_counter()
            ident = 0
            while not self.done.is_set():
                i = rng.randrange(self.services)
                ident = (ident + 1) & 0xFFFF
                q = dns.message.make_query(f"svc-{i}.{namespace_of(i)}.svc.cluster.local", "A")
                q.id = ident
                sent = time.perf_counter()
                sock.send(q.to_wire())
                try:
                    while True:
                        reply = sock.recv(4096)
                        if reply[:2] == struct.pack("!H", ident):
                            break
                    self.latencies_ms.append((time.perf_counter() - sent) * 1000)
                except TimeoutError:
                    self.lost += 1
                next_at += interval
                time.sleep(max(0.0, next_at - time.perf_counter()))


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def baseline(port: int, services: int, seconds: float = 2.0) -> list[float]:
    """UDP latencies (ms) of the probe with no transfer running."""
    probe = UdpProbe(port, services)
    probe.start()
    time.sleep(seconds)
    probe.done.set()
    probe.join()
    return probe.latencies_ms


def measured(pid: int, port: int, zone: str, services: int) -> Transfer:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = status_mb(pid, "VmRSS")
    probe = UdpProbe(port, services)
    probe.start()
    try:
        result = axfr(port, zone)
    finally:
        probe.done.set()
        probe.join()
    result.rss_before_mb = before
    result.peak_mb = status_mb(pid, "VmHWM")
    result.rss_after_mb = status_mb(pid, "VmRSS")
    result.udp_ms, result.udp_lost = probe.latencies_ms, probe.lost
    return result


def records_gauge(metrics_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("clusterdns_records "):
                return int(float(line.split()[1]))
    raise SystemExit("no clusterdns_records in /metrics")


def serve(directory: Path, dump: Path, run: int) -> tuple[subprocess.Popen[bytes], int, int,
                                                          Path]:
    port, metrics_port = free_port(), free_port()
    config = directory / "axfr.yaml"
    config.write_text(f"source: file:{dump}\nlisten: ['127.0.0.1:{port}']\n"
                      f"health: ''\nready: ''\nmetrics: '127.0.0.1:{metrics_port}'\n"
                      "lameduck: 0\nreload: 0\ntransfer_to: 127.0.0.1\n", encoding="utf-8")
    log = directory / f"serve-{run}.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "clusterdns", "serve", "--config",
                                    str(config)], cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=out)
    return process, port, metrics_port, log


def measure(runs: int = 3, services: int = 10_000, endpoints: int = 100_000) -> Table:
    print(f"axfr: {services} services, {endpoints} endpoints (slices of 100); "
          f"{machine_load()}", flush=True)
    by_zone: dict[str, list[Transfer]] = {zone: [] for zone in ZONES}
    quiet: list[list[float]] = []
    with tempfile.TemporaryDirectory(prefix="clusterdns-axfr-") as tmp:
        directory = Path(tmp)
        dump = write_json_list(directory / "cluster.json", services, endpoints)
        last = services - 1
        for run in range(1, runs + 1):
            process, port, metrics_port, log = serve(directory, dump, run)
            try:
                wait_answering(port, f"svc-{last}.{namespace_of(last)}.svc.cluster.local",
                               process, log, timeout=600)
                quiet.append(baseline(port, services))
                results = [measured(process.pid, port, zone, services) for zone in ZONES]
                total = records_gauge(metrics_port)
            finally:
                stop(process)
            transferred = sum(r.records - 1 for r in results)
            if transferred != total:
                raise SystemExit(f"the zones hold {transferred} records, the server "
                                 f"{total}")
            for r in results:
                by_zone[r.zone].append(r)
                print(f"run {run} {r.zone}: {r.records:,} records in {r.messages} messages "
                      f"({r.bytes / 1e6:.1f} MB, largest {r.largest:,} B), {r.seconds:.2f} s, "
                      f"{r.rate:,.0f} records/s; serial {r.serial}; RSS "
                      f"{r.rss_before_mb:.1f} -> peak {r.peak_mb:.1f} -> {r.rss_after_mb:.1f} "
                      f"MB; UDP during it p50 {percentile(r.udp_ms, 50):.2f} / p99 "
                      f"{percentile(r.udp_ms, 99):.2f} / max {max(r.udp_ms, default=0):.1f} "
                      f"ms, {r.udp_lost} lost of {len(r.udp_ms) + r.udp_lost}", flush=True)
            print(f"run {run}: {transferred:,} records in the three zones = "
                  f"clusterdns_records; UDP without a transfer p50 "
                  f"{percentile(quiet[-1], 50):.2f} / p99 {percentile(quiet[-1], 99):.2f} ms",
                  flush=True)

    rows: list[list[str]] = []
    for zone in ZONES[:2]:
        rs = by_zone[zone]

        def cell(values: list[float], fmt: str) -> str:
            return f"{median(values):{fmt}} ({', '.join(f'{v:{fmt}}' for v in values)})"

        rows += [
            [zone, "records (both SOAs) / messages / MB", f"{rs[0].records:,} / "
             f"{rs[0].messages} / {rs[0].bytes / 1e6:.1f} (largest message "
             f"{max(r.largest for r in rs):,} B)"],
            [zone, "transfer time, s", cell([r.seconds for r in rs], ".2f")],
            [zone, "records/s", cell([r.rate for r in rs], ",.0f")],
            [zone, "server RSS before -> peak during -> after, MB",
             f"{median([r.rss_before_mb for r in rs]):.1f} -> "
             f"{median([r.peak_mb for r in rs]):.1f} -> "
             f"{median([r.rss_after_mb for r in rs]):.1f} (peak runs: "
             f"{', '.join(f'{r.peak_mb:.1f}' for r in rs)}; peak - before: "
             f"{median([r.peak_mb - r.rss_before_mb for r in rs]):.1f})"],
            [zone, f"UDP at {UDP_RATE} q/s during the transfer: p50 / p99 / max ms, lost",
             f"{median([percentile(r.udp_ms, 50) for r in rs]):.2f} / "
             f"{median([percentile(r.udp_ms, 99) for r in rs]):.2f} / "
             f"{median([max(r.udp_ms, default=0) for r in rs]):.1f}, "
             f"{sum(r.udp_lost for r in rs)} lost"],
        ]
    rows.append(["", f"UDP at {UDP_RATE} q/s with no transfer running: p50 / p99 / max ms",
                 f"{median([percentile(q, 50) for q in quiet]):.2f} / "
                 f"{median([percentile(q, 99) for q in quiet]):.2f} / "
                 f"{median([max(q, default=0) for q in quiet]):.1f}"])
    rows.append(["", machine_load(), ""])
    title = (f"Zone transfer (AXFR) of a {services:,}-service / {endpoints:,}-endpoint "
             f"cluster, medians of {runs}")
    return title, ["zone", "figure", "median (runs)"], rows


def main_table(runs: int = 3) -> Table:
    return measure(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_cluster_arguments(parser)
    args = parser.parse_args()
    print(markdown(*measure(args.runs, args.services, args.endpoints)))


if __name__ == "__main__":
    main()
