"""Synthetic clusters for the benchmarks: N services, M endpoints in slices of 100.

Shared by every bench script so they all measure the same shape of cluster: services
``svc-<i>`` spread over 50 namespaces, each with a ClusterIP and a named port; the
first ``endpoints / 100`` services are backed by one EndpointSlice of 100 ready pods.
With ``headless=H`` the first H services are headless (``clusterIP: None``) instead, so
their endpoints get names of their own (the churn bench changes those).
"""

from __future__ import annotations

import argparse
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

NAMESPACES = 50


def namespace_of(i: int) -> str:
    return f"ns-{i % NAMESPACES}"


def objects(services: int = 10_000, endpoints: int = 100_000,
            per_slice: int = 100, headless: int = 0) -> Iterator[dict[str, Any]]:
    """Raw API objects (with kind/apiVersion), namespaces first."""
    for n in range(NAMESPACES):
        yield {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"ns-{n}"}}
    for i in range(services):
        ip = (f"10.{96 + i // 65536}.{(i // 256) % 256}.{i % 256}" if i >= headless
              else "None")
        yield {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": f"svc-{i}", "namespace": namespace_of(i),
                            "labels": {"app": f"svc-{i}"}},
               "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}
    for s in range(endpoints // per_slice):
        eps = []
        for j in range(per_slice):
            k = s * per_slice + j
            eps.append({"addresses": [f"10.{128 + k // 65536}.{(k // 256) % 256}.{k % 256}"],
                        "conditions": {"ready": True, "serving": True, "terminating": False},
                        "targetRef": {"kind": "Pod", "name": f"svc-{s}-pod-{j}",
                                      "namespace": namespace_of(s)}})
        yield {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": f"svc-{s}-abcde", "namespace": namespace_of(s),
                            "labels": {"kubernetes.io/service-name": f"svc-{s}"}},
               "addressType": "IPv4", "endpoints": eps,
               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def write_json_list(path: Path, services: int = 10_000, endpoints: int = 100_000) -> Path:
    """The cluster as ``kubectl get ... -A -o json`` prints it: one List, indented by 4,
    keys in kubectl's order (so ``kind`` comes after ``items``). Written item by item."""
    with path.open("w") as out:
        out.write('{\n    "apiVersion": "v1",\n    "items": [')
        for number, obj in enumerate(objects(services, endpoints)):
            out.write(("," if number else "") + "\n")
            out.write(textwrap.indent(json.dumps(obj, indent=4), " " * 8))
        out.write('\n    ],\n    "kind": "List",\n    "metadata": {\n'
                  '        "resourceVersion": ""\n    }\n}\n')
    return path


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """``--runs``, ``--services`` and ``--endpoints``: how many runs of which cluster, as
    the scripts that measure this cluster's shape take them."""
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--endpoints", type=int, default=100_000)
