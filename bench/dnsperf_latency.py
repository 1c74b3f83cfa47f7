"""Latency distribution (p50, p99) at a fixed moderate rate (20k queries/s).

Issue 5's third figure. dnsperf 2.10 prints only the average and standard deviation of
latency and has no histogram option, but with ``-v`` it prints every answered query with
its latency, so this script runs dnsperf at a fixed rate (``-Q``) with ``-v`` and takes
percentiles over those per-query latencies. A lost query counts as slower than every
answered one (so loss can only make p99 worse, never better). clusterdns is the subject
(acceptance: p99 below 1 ms); knotd runs too, for reference.

Run: ``.venv/bin/python -m bench.dnsperf_latency [--runs 3] [--rate 20000]``.
"""

from __future__ import annotations

import argparse
import math
import statistics

from bench import dnsperf_common as common

TABLE_ORDER = 3
TARGET_P99_MS = 1.0


def measure(args: argparse.Namespace) -> common.Table:
    dnsperf_cpus, _ = common.pin_cpus(args.pin)
    with common.session(args, workers=None) as (setup, servers, notes):
        p50: dict[str, list[float]] = {server.name: [] for server in servers}
        p99: dict[str, list[float]] = {server.name: [] for server in servers}
        lost: dict[str, list[int]] = {server.name: [] for server in servers}
        for run in range(args.runs):
            for server in servers:
                result = common.dnsperf(server.port, setup.queries, args.seconds,
                                        clients=args.clients, outstanding=args.outstanding,
                                        rate=args.rate, cpus=dnsperf_cpus, verbose=True)
                missing = max(result.sent - len(result.latencies), 0)
                samples = [*result.latencies, *[math.inf] * missing]
                p50[server.name].append(common.nearest_rank(samples, 0.50))
                p99[server.name].append(common.nearest_rank(samples, 0.99))
                lost[server.name].append(missing)
                print(f"run {run + 1} {server.name}: {result.qps:,.0f} q/s, p50 "
                      f"{p50[server.name][-1] * 1e3:.3f} ms, p99 "
                      f"{p99[server.name][-1] * 1e3:.3f} ms, max "
                      f"{max(result.latencies, default=math.nan) * 1e3:.3f} ms, "
                      f"{missing} lost", flush=True)
    rows = []
    for name in p50:
        median99 = statistics.median(p99[name])
        verdict = ""
        if name == "clusterdns":
            verdict = "pass" if median99 * 1e3 < TARGET_P99_MS else "FAIL"
        rows.append([name, f"{statistics.median(p50[name]) * 1e3:.3f}",
                     f"{median99 * 1e3:.3f}",
                     ", ".join(f"{v * 1e3:.3f}" for v in p99[name]),
                     ", ".join(str(n) for n in lost[name]),
                     f"p99 < {TARGET_P99_MS:g} ms" if name == "clusterdns" else "reference",
                     verdict])
    for note in notes:
        rows.append([note])
    title = (f"Latency at {args.rate:,} q/s (dnsperf -Q {args.rate} -v -l {args.seconds:g}, "
             f"pin {args.pin}, medians of {args.runs})")
    return title, ["server", "p50 ms", "p99 ms", "p99 runs", "lost", "target", ""], rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_arguments(parser, clients=4, outstanding=200, rate=20_000)


def main_table(runs: int = 3) -> common.Table:
    return common.table_for(add_arguments, measure, runs)


def main() -> None:
    common.run_main(__doc__, add_arguments, measure)


if __name__ == "__main__":
    main()
