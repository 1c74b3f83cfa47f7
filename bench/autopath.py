"""Autopath: what it saves a pod, what it costs the server, and what the pods watch costs.

Why it exists: autopath (SPEC §S8) is worth having only if it saves a pod's lookups of
external names real round trips, costs other clients little, and its pods watch fits
the memory a cluster DNS pod gets. Three figures:

(1) **Lookups** (the default). A pod of namespace ``bench`` at 127.0.0.2 with the
    kubelet's ``search bench.svc.cluster.local svc.cluster.local cluster.local
    corp.bench.example`` and ``ndots:5`` resolves external names (``host-<i>.bench-ext.
    example``, served by knotd as ``bench.forward_qps`` sets it up, with
    ``corp.bench.example`` as the server's own search domain) the way glibc's
    ``getaddrinfo`` does: A and AAAA together for each candidate of the search list in
    turn, then the name itself, stopping at the first candidate where either has an
    answer. Two ``clusterdns serve`` (file source, ``pods: verified``, forwarding to
    knotd), one with ``autopath: true``, one without. Per server and run: ``--names``
    names never asked before (cold: the candidates go upstream) and then the same names
    again (warm: from the forward cache); queries per lookup and the median time per
    lookup (client included: one UDP socket, queries prepared beforehand), medians of
    ``--runs``. Every walked answer is checked against the zone.
(2) **Server cost** (dnsperf, ``-c 8 -q 500 -l 10``, interleaved, medians of ``--runs``):
    NXDOMAINs of ``nosuch-<k>.bench.svc.cluster.local`` asked by a client that is no
    pod, against both servers: with autopath on, the fast path must not give such a
    reply to a pod of ``bench`` (its search list is walked instead), so each hit checks
    the client's address first: what autopath costs everyone else; and, against the
    autopath server from the pod's address, the first query of each lookup of (1),
    warm: walks per second.
(3) **Memory** (``--memory``): the fake API server (``tests.fakekube``) with
    ``bench.cluster``'s 10,000 services and 100,000 endpoints plus one pod per endpoint
    (100,000, as the API server returns them: metadata, one container, status) and 300
    hostNetwork pods on 100 node addresses; ``clusterdns serve --source kubernetes``
    three times: ``pods: disabled`` (no pods watch), ``pods: verified`` (the watch), and
    ``pods: verified`` with ``autopath: true`` (the watch and the address index). Peak
    RSS (VmHWM) at sync, RSS once settled (10 s after sync), and seconds to sync, one
    run each (they do not vary by more than a few MB); the pods' cost per pod is the
    difference over the pods.

Run: ``.venv/bin/python -m bench.autopath [--runs 3] [--names 300] [--seconds 10]`` and
``.venv/bin/python -m bench.autopath --memory [--pods 100000]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype

from bench import dnsperf_common as common
from bench import forward_qps as fq
from bench import knot
from bench.cluster import namespace_of, objects
from bench.scale import markdown, serve_command, status_mb, stop

sys.path.insert(0, str(common.ROOT / "tests"))  # the fake API server lives with the tests
from fakekube import FakeKube

TABLE_ORDER = 6  # after bench.search_path, the lookups it shortens
POD_IP = "127.0.0.2"
OTHER_IP = "127.0.0.1"  # no pod has it
NAMESPACE = "bench"
HOST_SEARCH = "corp.bench.example."
SEARCH = (f"{NAMESPACE}.svc.cluster.local.", "svc.cluster.local.", "cluster.local.",
          HOST_SEARCH)
NAMES = 300
NXDOMAIN_NAMES = 1_000
QUERY_LINES = 100_000


# -- (1) lookups as glibc makes them ----------------------------------------------------------


def cluster_yaml() -> str:
    """The namespace, one service and the pod that asks (the file source's dump)."""
    items = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace":
                                                             NAMESPACE},
         "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                  "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client", "namespace":
                                                         NAMESPACE},
         "spec": {"containers": [{"name": "app", "image": "busybox"}],
                  "dnsPolicy": "ClusterFirst"},
         "status": {"phase": "Running", "podIP": POD_IP, "podIPs": [{"ip": POD_IP}]}},
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


@contextlib.contextmanager
def clusterdns_autopath(directory: Path, upstream: int, autopath: bool) -> Iterator[
        common.Server]:
    """``clusterdns serve --config`` (file source, pods verified, forwarding to knotd)."""
    port = common.free_port()
    name = "autopath" if autopath else "plain"
    (directory / "cluster.json").write_text(cluster_yaml())
    (directory / "resolv.conf").write_text(f"nameserver 127.0.0.53\nsearch {HOST_SEARCH}\n")
    config = directory / f"{name}.yaml"
    config.write_text(json.dumps({
        "source": "file:cluster.json", "listen": [f"127.0.0.1:{port}"],
        "pods": "verified", "autopath": autopath, "autopath_resolv_conf": "resolv.conf",
        "upstreams": [f"127.0.0.1:{upstream}"], "loop_detect": False,
        "health": "", "ready": "", "metrics": "", "lameduck": 0, "reload": 0}))
    log = directory / f"clusterdns-{name}.log"
    with log.open("w") as out:
        process = subprocess.Popen([*common.CLUSTERDNS, "serve", "--config", str(config),
                                    "--log-level", "warning"], cwd=common.ROOT,
                                   stdout=subprocess.DEVNULL, stderr=out)
    server = common.Server(f"clusterdns ({'autopath' if autopath else 'no autopath'})",
                           port, process, log)
    try:
        common.wait_answering(port, f"web.{NAMESPACE}.svc.cluster.local", process, log)
        yield server
    finally:
        common.stop(process)


@dataclass
class Lookup:
    queries: int
    seconds: float
    found: bool


def prepared(name: str, qid: int) -> list[tuple[bytes, bytes]]:
    """(A, AAAA) query bytes for each candidate glibc tries for ``name`` (fewer than 5
    dots: the search list first, then the name itself)."""
    out = []
    for i, candidate in enumerate([*(f"{name}{d}" for d in SEARCH), name]):
        pair = []
        for j, rtype in enumerate(("A", "AAAA")):
            q = dns.message.make_query(candidate, rtype)
            q.id = (qid + 2 * i + j) % 65536
            pair.append(q.to_wire())
        out.append((pair[0], pair[1]))
    return out


def lookup(sock: socket.socket, port: int, candidates: Sequence[tuple[bytes, bytes]]) -> Lookup:
    """glibc's walk: both families per candidate, on to the next unless either answered."""
    queries = 0
    start = time.perf_counter()
    for a, aaaa in candidates:
        sock.sendto(a, ("127.0.0.1", port))
        sock.sendto(aaaa, ("127.0.0.1", port))
        queries += 2
        wanted = {a[:2], aaaa[:2]}
        answered = False
        while wanted:
            data = sock.recv(65535)
            if data[:2] in wanted:
                wanted.discard(data[:2])
                answered |= (data[3] & 0xF) == 0 and int.from_bytes(data[6:8], "big") > 0
        if answered:
            return Lookup(queries, time.perf_counter() - start, True)
    return Lookup(queries, time.perf_counter() - start, False)


def check_walked(port: int, name: str, zone: fq.ExternalZone) -> None:
    """The pod's first query is answered by a CNAME to ``name``, then its address."""
    asked = f"{name}{SEARCH[0]}"
    reply = dns.query.udp(dns.message.make_query(asked, "A"), "127.0.0.1", port=port,
                          timeout=2, source=POD_IP)
    want = {line.split()[4] for line in zone.records.splitlines()
            if line.split()[0] == name and line.split()[3] == "A"}
    chain = [(str(r.name), dns.rdatatype.to_text(r.rdtype), sorted(d.to_text() for d in r))
             for r in reply.answer]
    if chain != [(asked, "CNAME", [name]), (name, "A", sorted(want))]:
        raise SystemExit(f"autopath answered {asked} wrongly: {chain}")


@dataclass
class LookupFigures:
    cold_queries: list[float]
    cold_ms: list[float]
    warm_queries: list[float]
    warm_ms: list[float]


def run_lookups(port: int, source: str, names: Sequence[str]) -> tuple[float, float, float,
                                                                        float]:
    """(queries per lookup, median ms) cold then warm, for ``names`` from ``source``."""
    out: list[float] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(5)
        for _ in ("cold", "warm"):
            results = [lookup(sock, port, prepared(n, i * 16)) for i, n in enumerate(names)]
            if not all(r.found for r in results):
                raise SystemExit(f"{sum(not r.found for r in results)} lookups found nothing")
            out += [statistics.mean(r.queries for r in results),
                    statistics.median(r.seconds for r in results) * 1e3]
    return out[0], out[1], out[2], out[3]


def measure_lookups(args: argparse.Namespace) -> common.Table:
    zone = fq.external_zone(max(fq.NAMES, 2 * args.runs * args.names + 10))
    hosts = [name for name, rtype in zone.existing if rtype == "A" and name.startswith("host-")]
    records = (zone.records + f"{HOST_SEARCH}\t3600\tIN\tSOA\tns.{HOST_SEARCH} hostmaster."
               f"{HOST_SEARCH} 1 7200 1800 86400 3600\n{HOST_SEARCH}\t3600\tIN\tNS\t"
               f"ns.{HOST_SEARCH}\n")
    print(f"autopath lookups: {args.names} names per run and server, {args.runs} runs; "
          f"{common.machine_load()}", flush=True)
    figures = {True: LookupFigures([], [], [], []), False: LookupFigures([], [], [], [])}
    other: dict[bool, list[float]] = {True: [], False: []}
    qps: dict[str, list[float]] = {"shaped NXDOMAIN, no autopath": [],
                                   "shaped NXDOMAIN, autopath": [], "walks": []}
    with tempfile.TemporaryDirectory(prefix="clusterdns-autopath-") as tmp:
        directory = Path(tmp)
        nxdomain = directory / "nxdomain.txt"
        nxdomain.write_text("".join(f"nosuch-{k % NXDOMAIN_NAMES}.{NAMESPACE}.svc.cluster."
                                    f"local A\n" for k in range(QUERY_LINES)))
        walks = directory / "walks.txt"
        (directory / "on").mkdir()
        (directory / "off").mkdir()
        with knot.knotd(directory, records, probe=zone.probe) as upstream, \
                clusterdns_autopath(directory / "on", upstream.port, True) as on, \
                clusterdns_autopath(directory / "off", upstream.port, False) as off:
            used = 0
            for run in range(1, args.runs + 1):
                for autopath, server in ((True, on), (False, off)):
                    names = hosts[used:used + args.names]
                    used += args.names
                    if autopath:
                        check_walked(server.port, names[0], zone)
                    cq, cms, wq, wms = run_lookups(server.port, POD_IP, names)
                    f = figures[autopath]
                    f.cold_queries.append(cq)
                    f.cold_ms.append(cms)
                    f.warm_queries.append(wq)
                    f.warm_ms.append(wms)
                    # A client that is no pod, on names already cached: the price of
                    # keeping the first candidates' NXDOMAINs out of the fast path.
                    other[autopath].append(run_lookups(server.port, OTHER_IP, names)[3])
                    print(f"run {run}, {server.name}: cold {cq:.1f} queries, {cms:.3f} ms; "
                          f"warm {wq:.1f} queries, {wms:.3f} ms per lookup; not a pod, warm: "
                          f"{other[autopath][-1]:.3f} ms", flush=True)
            walks.write_text("".join(f"{n}{SEARCH[0]} A\n" for n in hosts[:used]))
            for run in range(1, args.runs + 1):
                for label, server, queries, source in (
                        ("shaped NXDOMAIN, no autopath", off, nxdomain, OTHER_IP),
                        ("shaped NXDOMAIN, autopath", on, nxdomain, OTHER_IP),
                        ("walks", on, walks, POD_IP)):
                    result = common.dnsperf(server.port, queries, args.seconds, clients=8,
                                            outstanding=500, source=source)
                    qps[label].append(result.qps)
                    print(f"run {run}, {label}: {result.qps:,.0f} q/s ({result.rcodes})",
                          flush=True)

    def med(values: Sequence[float], digits: int = 3) -> str:
        return f"{statistics.median(values):.{digits}f}"

    def runs(values: Sequence[float], digits: int = 3) -> str:
        return ", ".join(f"{v:.{digits}f}" for v in values)

    rows = []
    for autopath in (False, True):
        f = figures[autopath]
        label = "autopath" if autopath else "no autopath"
        rows += [
            [f"pod, external name, first time ({label}): queries per lookup",
             med(f.cold_queries, 1), runs(f.cold_queries, 1)],
            ["same: ms per lookup", med(f.cold_ms), runs(f.cold_ms)],
            [f"pod, external name, cached ({label}): queries per lookup",
             med(f.warm_queries, 1), runs(f.warm_queries, 1)],
            ["same: ms per lookup", med(f.warm_ms), runs(f.warm_ms)],
            [f"not a pod, external name, cached ({label}): ms per lookup",
             med(other[autopath]), runs(other[autopath])],
        ]
    for label, values in qps.items():
        what = {"shaped NXDOMAIN, no autopath":
                "dnsperf, not a pod: NXDOMAIN of x.bench.svc.cluster.local, no autopath (fast "
                "path)",
                "shaped NXDOMAIN, autopath":
                "same, autopath on (the fast path checks the client of each such hit)",
                "walks": "dnsperf, the pod: first query of each lookup, cached (one walk "
                         "each)"}[label]
        rows.append([f"{what}: q/s", f"{statistics.median(values):,.0f}",
                     ", ".join(f"{v:,.0f}" for v in values)])
    rows.append([common.machine_load(), "", ""])
    title = (f"Autopath: a pod's lookups of external names (ndots:5, 4 search domains), "
             f"{args.names} names per run, medians of {args.runs}")
    return title, ["figure", "median", "runs"], rows


# -- (3) memory ---------------------------------------------------------------------------------


def pod_object(name: str, ns: str, ip: str, node: int, *, host_network: bool = False,
               ) -> dict[str, Any]:
    """A pod as the API server lists it (managed fields left out, as clients see them)."""
    node_ip = f"172.18.{node // 256}.{node % 256}"
    spec: dict[str, Any] = {
        "containers": [{
            "name": "app", "image": "registry.example/app:1.2.3", "imagePullPolicy":
            "IfNotPresent", "ports": [{"containerPort": 8080, "name": "http",
                                       "protocol": "TCP"}],
            "resources": {"limits": {"memory": "256Mi"}, "requests": {"cpu": "100m",
                                                                      "memory": "128Mi"}},
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "volumeMounts": [{"mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                              "name": "kube-api-access", "readOnly": True}]}],
        "dnsPolicy": "ClusterFirstWithHostNet" if host_network else "ClusterFirst",
        "enableServiceLinks": True, "nodeName": f"node-{node}", "preemptionPolicy":
        "PreemptLowerPriority", "priority": 0, "restartPolicy": "Always", "schedulerName":
        "default-scheduler", "securityContext": {}, "serviceAccount": "default",
        "serviceAccountName": "default", "terminationGracePeriodSeconds": 30,
        "tolerations": [{"effect": "NoExecute", "key": "node.kubernetes.io/not-ready",
                         "operator": "Exists", "tolerationSeconds": 300},
                        {"effect": "NoExecute", "key": "node.kubernetes.io/unreachable",
                         "operator": "Exists", "tolerationSeconds": 300}],
        "volumes": [{"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"items": [{"key": "ca.crt", "path": "ca.crt"}],
                           "name": "kube-root-ca.crt"}}]}}]}
    if host_network:
        spec["hostNetwork"] = True
    when = "2026-12-01T10:00:00Z"
    conditions = [{"lastProbeTime": None, "lastTransitionTime": when, "status": "True",
                   "type": kind} for kind in ("Initialized", "Ready", "ContainersReady",
                                              "PodScheduled")]
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "generateName": name.rsplit("-", 1)[0] + "-",
                     "uid": f"00000000-0000-4000-8000-{abs(hash((ns, name))) % 10**12:012d}",
                     "creationTimestamp": when,
                     "labels": {"app": name.rsplit("-pod-", 1)[0], "pod-template-hash":
                                "5d9c7b6f4"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                          "name": name.rsplit("-pod-", 1)[0] + "-5d9c7b6f4",
                                          "uid": "11111111-2222-4333-8444-555555555555",
                                          "controller": True, "blockOwnerDeletion": True}]},
        "spec": spec,
        "status": {"phase": "Running", "conditions": conditions, "hostIP": node_ip,
                   "hostIPs": [{"ip": node_ip}], "podIP": ip, "podIPs": [{"ip": ip}],
                   "qosClass": "Burstable", "startTime": when,
                   "containerStatuses": [{
                       "containerID": "containerd://" + "ab" * 32, "image":
                       "registry.example/app:1.2.3", "imageID": "registry.example/app@sha256:"
                       + "cd" * 32, "lastState": {}, "name": "app", "ready": True,
                       "restartCount": 0, "started": True,
                       "state": {"running": {"startedAt": when}}}]},
    }


def pod_objects(services: int, endpoints: int, pods: int) -> Iterator[dict[str, Any]]:
    """One pod per endpoint of ``bench.cluster`` (its name, namespace and address), up to
    ``pods``, plus 3 hostNetwork pods on each of 100 node addresses."""
    per_slice = 100
    for k in range(min(pods, endpoints)):
        s, j = divmod(k, per_slice)
        ip = f"10.{128 + k // 65536}.{(k // 256) % 256}.{k % 256}"
        yield pod_object(f"svc-{s}-pod-{j}", namespace_of(s), ip, k % 100)
    for node in range(100):
        for agent in ("proxy", "cni", "exporter"):
            obj = pod_object(f"{agent}-pod-{node}", "kube-system", f"172.18.0.{node}", node,
                             host_network=True)
            yield obj


@dataclass
class MemoryRun:
    mode: str
    sync_s: float
    hwm_mb: float
    settled_mb: float


def memory_run(kubeconfig: Path, directory: Path, mode: str, probe: str,
               settle: float) -> MemoryRun:
    port = common.free_port()
    config = directory / f"{mode}.yaml"
    settings: dict[str, Any] = {"source": "kubernetes", "kubeconfig": str(kubeconfig)}
    if mode != "no pods watch":
        settings["pods"] = "verified"
    if mode == "pods watch + autopath":
        settings.update(autopath=True, autopath_resolv_conf="")
    config.write_text(json.dumps(settings))
    log = directory / f"{mode.replace(' ', '-')}.log"
    cmd = [*serve_command("kubernetes", port), "--config", str(config)]
    started = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen(cmd, cwd=common.ROOT, stdout=subprocess.DEVNULL, stderr=out)
    try:
        common.wait_answering(port, probe, process, log, timeout=900, interval=0.05)
        synced = time.monotonic() - started
        hwm = status_mb(process.pid, "VmHWM")
        time.sleep(settle)
        settled = status_mb(process.pid, "VmRSS")
    finally:
        stop(process)
    return MemoryRun(mode, synced, hwm, settled)


def measure_memory(args: argparse.Namespace) -> common.Table:
    print(f"autopath memory: {args.services} services, {args.endpoints} endpoints, "
          f"{args.pods} pods (+300 hostNetwork); {common.machine_load()}", flush=True)
    fake = FakeKube().start()
    results: list[MemoryRun] = []
    try:
        count = fake.bulk_load(objects(args.services, args.endpoints))
        count += fake.bulk_load(pod_objects(args.services, args.endpoints, args.pods))
        print(f"fake API server: {count} objects", flush=True)
        gc.freeze()
        last = args.services - 1
        probe = f"svc-{last}.{namespace_of(last)}.svc.cluster.local"
        with tempfile.TemporaryDirectory(prefix="clusterdns-autopath-memory-") as tmp:
            kubeconfig = fake.write_kubeconfig(Path(tmp) / "kubeconfig")
            for mode in ("no pods watch", "pods watch", "pods watch + autopath"):
                r = memory_run(kubeconfig, Path(tmp), mode, probe, args.settle)
                results.append(r)
                print(f"{mode}: synced in {r.sync_s:.1f} s, peak RSS {r.hwm_mb:.0f} MB, "
                      f"settled {r.settled_mb:.0f} MB", flush=True)
    finally:
        fake.close()
    base = results[0]
    pods = min(args.pods, args.endpoints) + 300
    rows = []
    for r in results:
        extra = ""
        if r is not base:
            per_pod = (r.settled_mb - base.settled_mb) * 2**20 / pods
            extra = (f"+{r.hwm_mb - base.hwm_mb:.0f} MB peak, "
                     f"+{r.settled_mb - base.settled_mb:.0f} MB settled "
                     f"({per_pod:,.0f} B per pod)")
        rows.append([r.mode, f"{r.sync_s:.1f} s", f"{r.hwm_mb:.0f} MB", f"{r.settled_mb:.0f} MB",
                     extra])
    rows.append([common.machine_load(), "", "", "", ""])
    title = (f"Autopath's memory: `serve --source kubernetes` at {args.services:,} services, "
             f"{args.endpoints:,} endpoints, {pods:,} pods")
    return title, ["pods", "sync", "peak RSS (VmHWM) at sync",
                   f"RSS {args.settle:g} s after sync", "cost of the pods"], rows


# -- command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--names", type=int, default=NAMES,
                        help="external names looked up per run and server")
    parser.add_argument("--seconds", type=float, default=10.0, help="per dnsperf run")
    parser.add_argument("--memory", action="store_true",
                        help="the memory figure (3) instead of the lookups")
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--endpoints", type=int, default=100_000)
    parser.add_argument("--pods", type=int, default=100_000)
    parser.add_argument("--settle", type=float, default=10.0, metavar="SECONDS",
                        help="after sync, before the settled RSS is read")


def main_table(runs: int = 3) -> list[common.Table]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--runs", str(runs)])
    return [measure_lookups(args), measure_memory(args)]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args()
    table = measure_memory(args) if args.memory else measure_lookups(args)
    print(markdown(*table))


if __name__ == "__main__":
    main()
