"""knotd, the C authoritative server clusterdns is measured against, serving our records.

Issue 5 compares clusterdns with Knot DNS (apt package ``knot``) answering the very same
records. This module turns ``clusterdns records`` output into one zone file per zone (each
record goes to the longest zone its owner is in), writes a knotd config with two UDP
workers in a temporary directory of its own (conf, rundir, storage, zones), starts knotd
on a free loopback port and stops it with SIGTERM. ``compare`` asks both servers the same
questions and lists every difference in rcode, answer or authority, so a benchmark never
compares a server with one that answers something else.

Run by hand: ``.venv/bin/python -m bench.knot [--sample 500]`` builds the test cluster,
starts both servers and prints the mismatches (none expected).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset

from bench import dnsperf_common as common

UDP_WORKERS = 2


def split_zones(records: str) -> dict[str, list[str]]:
    """Master-file lines per zone; the zones are the owners of the SOA records."""
    lines = [line for line in records.splitlines() if line and not line.startswith(";")]
    zones = sorted({line.split()[0] for line in lines if line.split()[3] == "SOA"},
                   key=len, reverse=True)
    per_zone: dict[str, list[str]] = {zone: [] for zone in zones}
    for line in lines:
        owner = line.split()[0]
        zone = next((z for z in zones if owner == z or owner.endswith("." + z)), None)
        if zone is None:
            raise SystemExit(f"record outside every zone: {line}")
        per_zone[zone].append(line)
    return per_zone


def zone_file(zone: str, lines: Sequence[str]) -> str:
    """A zone file knotd accepts: $ORIGIN, then the SOA first, then everything else."""
    soa = [line for line in lines if line.split()[3] == "SOA"]
    rest = [line for line in lines if line.split()[3] != "SOA"]
    return f"$ORIGIN {zone}\n" + "\n".join([*soa, *rest]) + "\n"


def config_text(directory: Path, port: int, zones: Sequence[str]) -> str:
    zone_entries = "".join(f"  - domain: {zone}\n" for zone in zones)
    return (
        "server:\n"
        f"    rundir: \"{directory / 'run'}\"\n"
        f"    listen: 127.0.0.1@{port}\n"
        f"    udp-workers: {UDP_WORKERS}\n"
        "    tcp-workers: 1\n"
        "    background-workers: 1\n"
        "database:\n"
        f"    storage: \"{directory / 'storage'}\"\n"
        "log:\n"
        "  - target: stderr\n"
        "    any: warning\n"
        "template:\n"
        "  - id: default\n"
        f"    storage: \"{directory / 'zones'}\"\n"
        "    file: \"%s.zone\"\n"
        "    zonefile-sync: -1\n"
        "    journal-content: none\n"
        "zone:\n" + zone_entries)


@contextlib.contextmanager
def knotd(directory: Path, records: str, cpus: str | None = None,
          probe: str | None = None) -> Iterator[common.Server]:
    """knotd serving ``records`` on a free loopback port until the block ends."""
    binary = shutil.which("knotd") or "/usr/sbin/knotd"
    if not Path(binary).exists():
        raise SystemExit("knotd not found (apt-get install -y knot)")
    home = Path(tempfile.mkdtemp(prefix="knot-", dir=directory))
    for sub in ("run", "storage", "zones"):
        (home / sub).mkdir()
    per_zone = split_zones(records)
    for zone, lines in per_zone.items():
        (home / "zones" / f"{zone.rstrip('.') or 'root'}.zone").write_text(
            zone_file(zone, lines))
    port = common.free_port()
    conf = home / "knot.conf"
    conf.write_text(config_text(home, port, [z.rstrip(".") for z in per_zone]))
    log = home / "knotd.log"
    with log.open("w") as out:
        process = subprocess.Popen([*common.taskset(cpus), binary, "-c", str(conf)],
                                   stdout=subprocess.DEVNULL, stderr=out)
    server = common.Server(f"knotd ({UDP_WORKERS} UDP workers)", port, process, log)
    try:
        common.wait_answering(port, probe or common.probe_name(), process, log)
        yield server
    finally:
        common.stop(process)


def _answer(port: int, name: str, rtype: str) -> tuple[str, set[str], set[str], bool]:
    query = dns.message.make_query(name, rtype)  # no EDNS, as dnsperf sends them
    reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=2)

    def texts(section: list[dns.rrset.RRset]) -> set[str]:
        return {f"{rrset.name} {rrset.ttl} {dns.rdatatype.to_text(rrset.rdtype)} {rd}"
                for rrset in section for rd in rrset}

    return (dns.rcode.to_text(reply.rcode()), texts(reply.answer), texts(reply.authority),
            bool(reply.flags & dns.flags.AA))


def compare(port_a: int, port_b: int, questions: Sequence[tuple[str, str]]) -> list[str]:
    """Every question whose rcode, AA flag, answer or authority differs between the two
    servers (answers compared as sets: headless rotation is not a difference)."""
    mismatches = []
    for name, rtype in questions:
        a = _answer(port_a, name, rtype)
        b = _answer(port_b, name, rtype)
        if a != b:
            mismatches.append(f"{name} {rtype}: {a} != {b}")
    return mismatches


def sample_questions(queries: Path, size: int, seed: int = 1) -> list[tuple[str, str]]:
    lines = sorted(set(queries.read_text().splitlines()))
    picked = random.Random(seed).sample(lines, min(size, len(lines)))
    return [(line.split()[0], line.split()[1]) for line in picked]


def check_same_answers(clusterdns_port: int, knot_port: int, queries: Path,
                       size: int = 300) -> int:
    """Compare a sample and print the mismatches; returns how many there were."""
    mismatches = compare(clusterdns_port, knot_port, sample_questions(queries, size))
    for line in mismatches[:20]:
        print(f"  MISMATCH clusterdns vs knotd: {line}")
    if len(mismatches) > 20:
        print(f"  ... and {len(mismatches) - 20} more")
    print(f"answer check: {size - len(mismatches)}/{size} sampled queries answered the "
          f"same by clusterdns and knotd")
    return len(mismatches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=500,
                        help="how many distinct questions of the query file to compare")
    parser.add_argument("--keep", action="store_true",
                        help="print the temp dir and leave knotd's files there")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="clusterdns-bench-"))
    try:
        setup = common.prepare(tmp)
        print(f"test cluster: {common.record_count(setup.records)} records; files in {tmp}")
        with common.clusterdns(tmp, setup.cluster) as ours, \
                knotd(tmp, setup.records) as knot:
            bad = check_same_answers(ours.port, knot.port, setup.queries, args.sample)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
