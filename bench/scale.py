"""Scale: 10,000 Services and 100,000 endpoints -- build time, memory, time to ready.

Issue 5's scale figure. The cluster is ``bench.cluster``'s (EndpointSlices of 100),
written once as one ``kubectl get -o json`` List. Measured:

(a) in a fresh Python process per run (``--child build``): the file load (json + convert
    to slim objects), the first snapshot build (``SnapshotRef.publish_cluster``, what the
    server does on start), VmRSS after each step and the process's peak RSS (VmHWM, which
    includes the parsed JSON that is dropped after the load);
(b) ``clusterdns serve --source file:<the List>`` started as a process, per run: seconds
    from starting it to the first NOERROR answer for the last service, its VmHWM and
    VmRSS at that moment, and the load time it logs;
(c) once (it does not vary): bytes per Service and per endpoint, measured with
    tracemalloc as what the slim cluster plus its snapshot keep allocated after a
    ``gc.collect()``, from three fresh processes: namespaces only, + the Services,
    + the endpoints; per Service = (second - first) / services, per endpoint =
    (third - second) / endpoints (the slices' own overhead is counted per endpoint).

Targets (issue 5): first build <= 2 s, RSS <= 164 MB (CoreDNS's (pods+services)/1000 +
54 MB). Nothing asserts on these; the script prints one line per run and the medians.

Run: ``.venv/bin/python -m bench.scale [--runs 3] [--services N] [--endpoints N]``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.cluster import add_cluster_arguments, namespace_of, write_json_list
from bench.dnsperf_common import free_port, machine_load, wait_answering

ROOT = Path(__file__).resolve().parents[1]
BUILD_TARGET_S = 2.0
RSS_TARGET_MB = 164.0

Table = tuple[str, list[str], list[list[str]]]
"""What ``main_table()`` returns: title, column names, rows of cells (``bench.run_all``'s
shape, as in ``bench.dnsperf_common``)."""


# -- small process helpers (churn.py uses them too) ----------------------------------------


def status_mb(pid: int | str, field: str) -> float:
    """A memory line of /proc/PID/status (VmRSS, VmHWM) in MB (2**20 bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def serve_command(source: str, port: int, metrics_port: int | None = None,
                  log_level: str = "info") -> list[str]:
    """``clusterdns serve`` on 127.0.0.1:port; /health and /ready off (their default
    ports would clash with other servers on the machine), /metrics optional."""
    metrics = f"127.0.0.1:{metrics_port}" if metrics_port is not None else ""
    return [sys.executable, "-m", "clusterdns", "serve", "--source", source,
            "--listen", f"127.0.0.1:{port}", "--health", "", "--ready", "",
            "--metrics", metrics, "--lameduck", "0", "--log-level", log_level]


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def markdown(title: str, header: list[str], rows: list[list[str]]) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- (a) and (c): fresh child processes ----------------------------------------------------


def child_build(path: Path) -> dict[str, float]:
    """Load ``path`` and build the first snapshot, as the server does; times and RSS."""
    from clusterdns.config import Config
    from clusterdns.snapshot import SnapshotRef, unsynced
    from clusterdns.source.dump import load_files

    config = Config()
    ref = SnapshotRef(unsynced(config))
    rss_start = status_mb("self", "VmRSS")
    started = time.perf_counter()
    cluster = load_files([path]).cluster
    loaded = time.perf_counter()
    rss_loaded = status_mb("self", "VmRSS")
    snap = ref.publish_cluster(cluster, config)
    built = time.perf_counter()
    assert snap.synced
    return {"load_s": loaded - started, "build_s": built - loaded,
            "rss_start_mb": rss_start, "rss_loaded_mb": rss_loaded,
            "rss_built_mb": status_mb("self", "VmRSS"), "hwm_mb": status_mb("self", "VmHWM")}


def child_bytes(path: Path) -> dict[str, float]:
    """Bytes the slim cluster and its snapshot keep allocated (tracemalloc)."""
    import gc
    import tracemalloc

    from clusterdns.config import Config
    from clusterdns.snapshot import SnapshotRef, unsynced
    from clusterdns.source.dump import load_files

    config = Config()
    ref = SnapshotRef(unsynced(config))
    gc.collect()
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    cluster = load_files([path]).cluster
    snap = ref.publish_cluster(cluster, config)
    gc.collect()
    after, peak = tracemalloc.get_traced_memory()  # cluster and snap are still alive
    assert snap.synced and cluster is not None
    return {"bytes": float(after - before), "peak_bytes": float(peak - before)}


def run_child(mode: str, path: Path) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-m", "bench.scale", "--child", mode, str(path)],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench.scale --child {mode} failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- (b): time to ready of the server process ----------------------------------------------


_LOADED = re.compile(r"loaded .* in ([0-9.]+) s")


def serve_once(path: Path, last_name: str, log: Path) -> dict[str, float]:
    port = free_port()
    started = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen(serve_command(f"file:{path}", port), cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=out)
    try:
        wait_answering(port, last_name, process, log, timeout=600, interval=0.01)
        ready = time.monotonic() - started
        hwm, rss = status_mb(process.pid, "VmHWM"), status_mb(process.pid, "VmRSS")
    finally:
        stop(process)
    match = _LOADED.search(log.read_text())
    return {"ready_s": ready, "hwm_mb": hwm, "rss_mb": rss,
            "load_s": float(match.group(1)) if match else float("nan")}


# -- the whole figure ----------------------------------------------------------------------


def measure(runs: int = 3, services: int = 10_000, endpoints: int = 100_000,
            skip_bytes: bool = False) -> Table:
    print(f"scale: {services} services, {endpoints} endpoints (slices of 100); "
          f"{machine_load()}", flush=True)
    builds: list[dict[str, float]] = []
    serves: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="clusterdns-scale-") as tmp:
        directory = Path(tmp)
        full = write_json_list(directory / "cluster.json", services, endpoints)
        print(f"cluster.json: {full.stat().st_size / 1e6:.1f} MB", flush=True)
        last = services - 1
        last_name = f"svc-{last}.{namespace_of(last)}.svc.cluster.local"
        for run in range(1, runs + 1):
            b = run_child("build", full)
            builds.append(b)
            print(f"run {run} build: load {b['load_s']:.2f} s, first build {b['build_s']:.2f} s, "
                  f"RSS {b['rss_start_mb']:.0f} -> {b['rss_loaded_mb']:.0f} (loaded) -> "
                  f"{b['rss_built_mb']:.0f} MB (built), peak {b['hwm_mb']:.0f} MB", flush=True)
            s = serve_once(full, last_name, directory / f"serve-{run}.log")
            serves.append(s)
            print(f"run {run} serve: answering after {s['ready_s']:.2f} s "
                  f"(logged load {s['load_s']:.2f} s), peak RSS {s['hwm_mb']:.0f} MB, "
                  f"RSS {s['rss_mb']:.0f} MB when answering", flush=True)
        per_service = per_endpoint = float("nan")
        if not skip_bytes:
            empty = run_child("bytes", write_json_list(directory / "empty.json", 0, 0))
            svcs = run_child("bytes", write_json_list(directory / "services.json", services, 0))
            everything = run_child("bytes", full)
            if services:
                per_service = (svcs["bytes"] - empty["bytes"]) / services
            if endpoints:
                per_endpoint = (everything["bytes"] - svcs["bytes"]) / endpoints
            print(f"tracemalloc: kept {empty['bytes'] / 2**20:.1f} MB (namespaces only), "
                  f"{svcs['bytes'] / 2**20:.1f} MB (+ services), "
                  f"{everything['bytes'] / 2**20:.1f} MB (+ endpoints; peak while loading "
                  f"{everything['peak_bytes'] / 2**20:.0f} MB): "
                  f"{per_service:.0f} B per service, {per_endpoint:.0f} B per endpoint",
                  flush=True)

    def row(figure: str, values: list[float], unit: str, digits: int, target: str = "",
            limit: float | None = None) -> list[str]:
        m = median(values)
        verdict = "" if limit is None else ("pass" if m <= limit else "FAIL")
        return [figure, f"{m:.{digits}f} {unit}",
                ", ".join(f"{v:.{digits}f}" for v in values), target, verdict]

    rows = [
        row("first snapshot build", [b["build_s"] for b in builds], "s", 2,
            f"<= {BUILD_TARGET_S:g} s", BUILD_TARGET_S),
        row("JSON List load (json + convert)", [b["load_s"] for b in builds], "s", 2),
        row("RSS after load + build (fresh process)", [b["rss_built_mb"] for b in builds],
            "MB", 0, f"<= {RSS_TARGET_MB:g} MB", RSS_TARGET_MB),
        row("peak RSS, load + build (VmHWM)", [b["hwm_mb"] for b in builds], "MB", 0),
        row("serve --source file: start -> answering", [s["ready_s"] for s in serves], "s", 2),
        row("serve: peak RSS (VmHWM)", [s["hwm_mb"] for s in serves], "MB", 0,
            f"<= {RSS_TARGET_MB:g} MB", RSS_TARGET_MB),
        row("serve: RSS when answering", [s["rss_mb"] for s in serves], "MB", 0),
    ]
    if not skip_bytes:
        rows += [["bytes per service (tracemalloc, cluster + snapshot)",
                  f"{per_service:,.0f} B", "1 measurement", "", ""],
                 ["bytes per endpoint (tracemalloc, cluster + snapshot)",
                  f"{per_endpoint:,.0f} B", "1 measurement", "", ""]]
    rows.append([machine_load(), "", "", "", ""])
    title = (f"Scale: {services:,} Services, {endpoints:,} endpoints "
             f"(slices of 100), medians of {runs}")
    return title, ["figure", "median", "runs", "target", ""], rows


def main_table(runs: int = 3) -> Table:
    return measure(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_cluster_arguments(parser)
    parser.add_argument("--skip-bytes", action="store_true",
                        help="leave out the tracemalloc bytes-per-object measurement")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, path = args.child
        result: dict[str, Any] = (child_build if mode == "build" else child_bytes)(Path(path))
        print(json.dumps(result))
        return
    print(markdown(*measure(args.runs, args.services, args.endpoints, args.skip_bytes)))


if __name__ == "__main__":
    main()
