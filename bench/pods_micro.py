"""Publishing one pod change with ``pods verified`` at 100,000 pods.

Why this script exists: with ``pods verified`` (which autopath requires) every pod event
is published, and the snapshot's set of pod addresses used to be made again from all
pods for each publish (~14-20 ms at 100,000 pods, in the builder thread, holding the
GIL). It is now a copy-on-write index like the names (``snapshot.pods.PodAddresses``);
this measures one pod added and published, in one process, median and max of
``--events``.

Run: ``.venv/bin/python -m bench.pods_micro [--pods 100000] [--events 200]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from clusterdns.config import Config, PodsMode
from clusterdns.objects import Cluster, Namespace, Pod
from clusterdns.snapshot import Builder


def address(i: int) -> str:
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


def measure(pods: int, events: int) -> list[float]:
    """Seconds per (one new pod applied + publish), after a full build of ``pods``."""
    namespaces = tuple(Namespace(f"ns-{i}") for i in range(100))
    cluster = Cluster(namespaces, (), (), tuple(
        Pod(f"ns-{i % 100}", f"pod-{i}", (address(i),), "Running", "ClusterFirst")
        for i in range(pods)))
    builder = Builder(Config(pods=PodsMode.VERIFIED), cluster)
    builder.publish(1)
    took: list[float] = []
    for n in range(events):
        pod = Pod("ns-1", f"new-{n}", (address(pods + n),), "Running", "ClusterFirst")
        t0 = time.perf_counter()
        builder.apply(pod)
        snap = builder.publish(n + 2)
        took.append(time.perf_counter() - t0)
        assert ("ns-1", address(pods + n)) in snap.pod_ips
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pods", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=200)
    args = parser.parse_args()
    took = measure(args.pods, args.events)
    print(f"{args.pods} pods: one pod event + publish: median "
          f"{statistics.median(took) * 1e3:.3f} ms, max {max(took) * 1e3:.3f} ms "
          f"({args.events} events)")


if __name__ == "__main__":
    main()
