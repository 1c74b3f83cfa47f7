"""Maximum queries per second: clusterdns (one worker, and --workers 2) against knotd.

Issue 5's first figure. Every server answers the same test cluster (about 10,000 records,
see ``bench.dnsperf_common``) and gets the same query file from dnsperf with many queries
in flight, in the same run: runs are interleaved (run 1 of every server, then run 2, ...)
so drifting background load hits all of them alike. Reported: each server's median QPS
over the runs and its ratio to knotd's median. Acceptance: one clusterdns worker >= 0.5x
knotd.

Run: ``.venv/bin/python -m bench.dnsperf_qps [--runs 3] [--seconds 10] [--pin none|split]``.
"""

from __future__ import annotations

import argparse
import statistics

from bench import dnsperf_common as common

TABLE_ORDER = 1
TARGET = 0.5


def measure(args: argparse.Namespace) -> common.Table:
    dnsperf_cpus, _ = common.pin_cpus(args.pin)
    with common.session(args, workers=2) as (setup, servers, notes):
        qps: dict[str, list[float]] = {server.name: [] for server in servers}
        for run in range(args.runs):
            for server in servers:
                result = common.dnsperf(server.port, setup.queries, args.seconds,
                                        clients=args.clients, outstanding=args.outstanding,
                                        threads=args.threads, cpus=dnsperf_cpus)
                qps[server.name].append(result.qps)
                lost = 100 * result.lost / max(result.sent, 1)
                print(f"run {run + 1} {server.name}: {result.qps:,.0f} q/s, "
                      f"{lost:.2f}% lost, avg latency {result.avg_latency * 1e3:.2f} ms, "
                      f"{result.rcodes}", flush=True)
    knot = next((statistics.median(v) for k, v in qps.items() if k.startswith("knotd")), None)
    rows = []
    for name, values in qps.items():
        median = statistics.median(values)
        ratio = f"{median / knot:.2f}x" if knot else "-"
        target = (f">= {TARGET}x knotd" if name == "clusterdns"
                  else "report" if name.startswith("clusterdns") else "reference")
        verdict = ""
        if name == "clusterdns" and knot:
            verdict = "pass" if median / knot >= TARGET else "FAIL"
        rows.append([name, f"{median:,.0f}", ", ".join(f"{v:,.0f}" for v in values), ratio,
                     target, verdict])
    for note in notes:
        rows.append([note, "", "", "", "", ""])
    title = (f"QPS (dnsperf -c {args.clients} -q {args.outstanding} -T {args.threads} "
             f"-l {args.seconds:g}, pin {args.pin}, medians of {args.runs})")
    return title, ["server", "QPS", "runs", "vs knotd", "target", ""], rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_arguments(parser, clients=8, outstanding=500)
    parser.add_argument("--threads", type=int, default=1, help="dnsperf -T")


def main_table(runs: int = 3) -> common.Table:
    return common.table_for(add_arguments, measure, runs)


def main() -> None:
    common.run_main(__doc__, add_arguments, measure)


if __name__ == "__main__":
    main()
