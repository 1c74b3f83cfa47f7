"""Run every benchmark in bench/ and write one Markdown table: ``bench/results/latest.md``.

Issue 5 wants the figures together with the machine they ran on. The convention that
plugs a script in: a module ``bench/<name>.py`` with a function

    def main_table(runs: int = 3) -> tuple[str, list[str], list[list[str]]]

returning a title, column names and rows of cells (strings), or a list of such tables;
optionally ``TABLE_ORDER = <int>`` at module level places its table (default 100; the
dnsperf figures use 1 to 3). It does the measuring itself (medians of ``runs``) and may
print progress. Modules run in that order, one at a time, each in its own interpreter
(``python -m bench.run_all --one NAME``), so one script's memory or crash does not touch
the next; a failing script gets a row saying so and the others still run.

Run: ``.venv/bin/python -m bench.run_all [--runs 3] [--only qps,cpu] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import pkgutil
import platform
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

Table = tuple[str, list[str], list[list[str]]]
"""What ``main_table()`` returns: title, column names, rows of cells."""

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"


def markdown(title: str, header: list[str], rows: list[list[str]]) -> str:
    """One table as Markdown, under a level-3 heading."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    width = len(header)
    out = [f"### {title}", "", line(header), line(["---"] * width)]
    out += [line([*row, *[""] * (width - len(row))][:width]) for row in rows]
    return "\n".join(out) + "\n"


def discover() -> list[str]:
    """Names of the bench modules that define ``main_table``, in ``TABLE_ORDER``
    (then name) order. Found by reading the source, not importing it: each module is
    imported only in its own child interpreter."""
    found = []
    for info in pkgutil.iter_modules([str(BENCH)]):
        if info.name == "run_all":
            continue
        source = (BENCH / f"{info.name}.py").read_text()
        if "\ndef main_table(" in source:
            order = re.search(r"^TABLE_ORDER\s*=\s*(\d+)", source, re.MULTILINE)
            found.append((int(order.group(1)) if order else 100, info.name))
    return [name for _, name in sorted(found)]


def _tables(value: Any) -> list[Table]:
    if isinstance(value, tuple):
        value = [value]
    tables: list[Table] = []
    for title, header, rows in value:
        tables.append((str(title), [str(h) for h in header],
                       [[str(cell) for cell in row] for row in rows]))
    return tables


def run_one(name: str, runs: int) -> None:
    """Child mode: import bench.<name>, call main_table(runs), print the tables as JSON
    on the last line of stdout."""
    module = importlib.import_module(f"bench.{name}")
    tables = _tables(module.main_table(runs=runs))
    print("\n" + json.dumps(tables), flush=True)


def run_module(name: str, runs: int, timeout: float) -> tuple[list[Table], float]:
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "bench.run_all", "--one", name,
                               "--runs", str(runs)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return [(name, ["result"], [[f"timed out after {timeout:.0f} s"]])], timeout
    elapsed = time.monotonic() - started
    lines = done.stdout.rstrip().splitlines()
    for line in lines[:-1]:
        print(f"  [{name}] {line}", flush=True)
    if done.returncode != 0 or not lines:
        return [(name, ["result"], [[f"failed (exit {done.returncode}), see its output"]])
                ], elapsed
    try:
        return _tables(json.loads(lines[-1])), elapsed
    except (ValueError, TypeError) as exc:
        return [(name, ["result"], [[f"unreadable result: {exc}"]])], elapsed


def cpu_ticks() -> tuple[int, int]:
    """(all, stolen) CPU ticks of the machine so far, from /proc/stat."""
    try:
        fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    steal = fields[7] if len(fields) > 7 else 0
    return sum(fields[:8]), steal


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _command_version(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "not installed"
    text = (done.stdout + done.stderr).strip().splitlines()
    return next((line.strip() for line in text if any(c.isdigit() for c in line)),
                "unknown")


def machine() -> list[list[str]]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    one, five, _ = os.getloadavg()
    return [
        ["CPU", model],
        ["cores", str(os.cpu_count())],
        ["memory", mem],
        ["kernel", f"{platform.system()} {platform.release()}"],
        ["Python", f"{platform.python_implementation()} {platform.python_version()}"],
        ["uvloop", _version("uvloop")],
        ["clusterdns", _version("clusterdns")],
        ["dnsperf", _command_version(["dnsperf", "-h"]).replace("Version ", "")],
        ["knotd", _command_version(["knotd", "--version"])],
        ["load before the run", f"{one:.2f} (1 min), {five:.2f} (5 min)"],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (medians)")
    parser.add_argument("--only", default="",
                        help="comma-separated module names or parts of them (qps,cpu)")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.md")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds one script may take")
    parser.add_argument("--list", action="store_true", help="list the scripts and stop")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args.one, args.runs)
        return
    names = discover()
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        names = [n for n in names if any(w in n for w in wanted)]
    if args.list:
        print("\n".join(names))
        return
    info = machine()
    started = datetime.datetime.now(datetime.UTC)
    sections = []
    for name in names:
        print(f"== bench.{name}", flush=True)
        total_before, steal_before = cpu_ticks()
        tables, elapsed = run_module(name, args.runs, args.timeout)
        total_after, steal_after = cpu_ticks()
        # A VM's neighbours take CPU from it ("steal"); the figures mean less when they do.
        ticks = total_after - total_before
        stolen = f", {(steal_after - steal_before) / ticks:.1%} of CPU stolen" if ticks else ""
        for title, header, rows in tables:
            sections.append(markdown(f"{title} ({name}, {elapsed:.0f} s{stolen})",
                                     header, rows))
    report = [
        f"## clusterdns benchmarks, {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"`python -m bench.run_all --runs {args.runs}`; medians of {args.runs} runs.",
        "",
        markdown("Machine", ["", ""], info),
        *sections,
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(report))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
