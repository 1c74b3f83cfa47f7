"""Snapshot build and incremental update at scale: time, peak RSS, bytes per object.

Why this script exists: issue 5 items 4 and 5 (incremental snapshots, compact memory)
have targets at 10,000 Services and 100,000 endpoints (EndpointSlices of 100) -- first
build <= 2 s, whole-process RSS <= 164 MB, one change answerable quickly under 100
updates/s -- and this measures exactly the parts this code owns, in one process:

- convert: the raw API dicts of ``bench/cluster.py`` through ``convert`` (as the kube
  source does), kept in a ``Store``;
- first build: ``SnapshotRef.publish_cluster`` of the store's cluster;
- peak RSS: ``ru_maxrss`` once built (the raw dicts are generated one at a time, so
  this is the steady state plus the build's own peak, not JSON parsing);
- incremental updates: ``--updates`` times, one EndpointSlice (or, with
  ``--change service``, one Service) changes in the store and ``publish_changes`` applies
  the store's changed keys; median and p99 of that publish;
- with ``--trace``: tracemalloc bytes held by the slim objects and by the snapshot, and
  from a second, endpoint-less cluster, bytes per service and per endpoint (slow:
  tracemalloc makes everything ~5x slower; timings of that run mean nothing).

Run: ``.venv/bin/python -m bench.snapshot_micro [--services N] [--endpoints N]
[--updates 1000] [--change slice|service] [--trace]``.
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import time
import tracemalloc
from typing import Any

from bench.cluster import namespace_of, objects
from clusterdns.config import Config
from clusterdns.convert import convert
from clusterdns.objects import Endpoint, EndpointSlice
from clusterdns.snapshot import SnapshotRef, unsynced
from clusterdns.store import KIND_TYPES, Kind, Store

KINDS = {"Namespace": Kind.NAMESPACE, "Service": Kind.SERVICE,
         "EndpointSlice": Kind.ENDPOINT_SLICE, "Pod": Kind.POD}


def traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0


def load(services: int, endpoints: int) -> Store:
    store = Store()
    for raw in objects(services, endpoints):
        kind = raw["kind"]
        store.apply(KINDS[kind], convert(kind, raw))
    return store


def measure(services: int, endpoints: int) -> dict[str, Any]:
    m0 = traced()
    t0 = time.perf_counter()
    store = load(services, endpoints)
    convert_s = time.perf_counter() - t0
    m1 = traced()
    ref = SnapshotRef(unsynced(Config()))
    store.take_changes()
    t0 = time.perf_counter()
    snap = ref.publish_cluster(store.cluster(), Config())
    build_s = time.perf_counter() - t0
    gc.freeze()  # as App.publish does after a full build
    m2 = traced()
    return {"store": store, "ref": ref, "names": len(snap.nodes), "convert_s": convert_s,
            "build_s": build_s, "objects_bytes": m1 - m0, "snapshot_bytes": m2 - m1,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def updates(store: Store, ref: SnapshotRef, count: int, change: str,
            services: int, endpoints: int) -> list[float]:
    """Publish ``count`` single-object changes; seconds per publish (store work excluded)."""
    slices = max(1, endpoints // 100)
    took: list[float] = []
    for i in range(count):
        if change == "service":
            s = i % services
            ip = f"10.200.{(i // 250) % 250}.{i % 250 + 1}"
            store.apply(Kind.SERVICE, convert("Service", {
                "metadata": {"name": f"svc-{s}", "namespace": namespace_of(s)},
                "spec": {"clusterIP": ip, "clusterIPs": [ip],
                         "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}))
        else:
            s = i % slices
            key = (namespace_of(s), f"svc-{s}-abcde")
            current = store.get(Kind.ENDPOINT_SLICE, key)
            assert isinstance(current, EndpointSlice)
            j = (i // slices) % len(current.endpoints)
            eps = list(current.endpoints)
            ep = eps[j]
            eps[j] = Endpoint(ep.addresses, not ep.ready, ep.hostname, ep.pod_name)
            store.apply(Kind.ENDPOINT_SLICE, EndpointSlice(
                current.namespace, current.name, current.service, current.address_type,
                tuple(eps), current.ports))
        changes = store.take_changes()
        assert changes is not None
        deltas = [(KIND_TYPES[k], key, obj) for k, key, obj in changes]
        t0 = time.perf_counter()
        ref.publish_changes(deltas)
        took.append(time.perf_counter() - t0)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--endpoints", type=int, default=100_000)
    parser.add_argument("--updates", type=int, default=1000)
    parser.add_argument("--change", choices=("slice", "service"), default="slice")
    parser.add_argument("--trace", action="store_true")
    args = parser.parse_args()
    if args.trace:
        tracemalloc.start()
    r = measure(args.services, args.endpoints)
    print(f"{args.services} services, {args.endpoints} endpoints: {r['names']} names")
    print(f"convert + store: {r['convert_s']:.2f} s; first build: {r['build_s']:.2f} s; "
          f"peak RSS: {r['rss_mb']:.0f} MB")
    if args.trace:
        print(f"tracemalloc: objects {r['objects_bytes'] / 1e6:.1f} MB, "
              f"snapshot {r['snapshot_bytes'] / 1e6:.1f} MB")
        store, ref = r.pop("store"), r.pop("ref")
        bare = measure(args.services, 0)
        per_service = (bare["objects_bytes"] + bare["snapshot_bytes"]) / args.services
        per_endpoint = ((r["objects_bytes"] + r["snapshot_bytes"])
                        - (bare["objects_bytes"] + bare["snapshot_bytes"])) / args.endpoints
        print(f"bytes per service: {per_service:.0f} (objects "
              f"{bare['objects_bytes'] / args.services:.0f}); bytes per endpoint: "
              f"{per_endpoint:.0f} (objects "
              f"{(r['objects_bytes'] - bare['objects_bytes']) / args.endpoints:.0f})")
        del store, ref, bare
        return
    if args.updates:
        took = sorted(updates(r["store"], r["ref"], args.updates, args.change,
                              args.services, args.endpoints))
        p99 = took[min(len(took) - 1, int(len(took) * 0.99))]
        print(f"{args.updates} incremental updates ({args.change}): median "
              f"{statistics.median(took) * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms, "
              f"max {took[-1] * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
