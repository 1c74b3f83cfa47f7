"""Initial sync time and peak RSS of clusterdns against the fake API server at scale.

Serves 10,000 Services and 100,000 endpoints (1,000 EndpointSlices of 100) from
``tests.fakekube``, starts ``clusterdns serve --source kubernetes`` as a separate process
(so its memory is its own), and measures, per run:

- sync seconds: as clusterdns logs it ("synced with the API server in X s"),
- ready seconds: process start until a name of the last service answers NOERROR
  (includes interpreter start-up and the first snapshot build),
- peak RSS: VmHWM of the clusterdns process once it answers.

Run: ``.venv/bin/python -m bench.kube_sync [--runs 3] [--services N] [--endpoints N]``.
Prints one line per run and the medians.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.cluster import namespace_of, objects
from bench.dnsperf_common import free_port, wait_answering
from bench.scale import status_mb

# The fake API server lives with the tests (as `fakekube`, the name the tests import it by).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fakekube import FakeKube


def one_run(kubeconfig: Path, last_name: str, log_path: Path) -> tuple[float, float, float]:
    port = free_port()
    started = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clusterdns", "serve", "--source", "kubernetes",
             "--kubeconfig", str(kubeconfig), "--listen", f"127.0.0.1:{port}"],
            stderr=log)
    try:
        wait_answering(port, last_name, proc, log_path, timeout=300)
        ready = time.monotonic() - started
        rss = status_mb(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    match = re.search(r"synced with the API server in ([0-9.]+) s", log_path.read_text())
    sync = float(match.group(1)) if match else float("nan")
    return sync, ready, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--endpoints", type=int, default=100_000)
    args = parser.parse_args()
    fake = FakeKube().start()
    try:
        loaded = fake.bulk_load(objects(args.services, args.endpoints))
        print(f"fake API server: {loaded} objects "
              f"({args.services} services, {args.endpoints} endpoints)")
        with tempfile.TemporaryDirectory() as tmp:
            kubeconfig = fake.write_kubeconfig(Path(tmp) / "kubeconfig")
            last = args.services - 1
            name = f"svc-{last}.{namespace_of(last)}.svc.cluster.local"
            results = []
            for run in range(args.runs):
                sync, ready, rss = one_run(kubeconfig, name, Path(tmp) / f"run{run}.log")
                results.append((sync, ready, rss))
                print(f"run {run + 1}: sync {sync:.2f} s, answering after {ready:.2f} s, "
                      f"peak RSS {rss:.0f} MB")
    finally:
        fake.close()
    print(f"median: sync {statistics.median(r[0] for r in results):.2f} s, "
          f"answering after {statistics.median(r[1] for r in results):.2f} s, "
          f"peak RSS {statistics.median(r[2] for r in results):.0f} MB")


if __name__ == "__main__":
    main()
