"""SPEC S6 operations: /health, /ready, /metrics over real HTTP, and the query log.

Every server here is the real App with its HTTP endpoints on 127.0.0.1 port 0 (the
bound ports come from ``app.http_bound``); probes and scrapes go over real HTTP with
urllib, DNS questions over real UDP/TCP with dnspython. Readiness before sync uses the
Kubernetes source against tests/fakekube with one resource forbidden, so that kind never
lists. The query log is checked on the stdout of a real ``clusterdns serve`` process.
Expected metric names and label sets are CoreDNS's (plugin/metrics/vars, plugin/cache,
plugin/pkg/proxy as used by forward, plugin/kubernetes).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_kube_source import endpoint_slice, fast_source, wait_synced
from upstream import FakeUpstream

from clusterdns.config import ListenAddr, SourceSpec
from conftest import ROOT, RunningServer, free_port
from fakekube import FakeKube

LOOPBACK0 = ListenAddr("127.0.0.1", 0)
HTTP_ON = {"health": LOOPBACK0, "ready": LOOPBACK0, "metrics": LOOPBACK0}
WITHIN = 10.0  # generous: a loaded 2-core CI machine

HTTPENV = "httpenv.default.svc.cluster.local."


# ----------------------------------------------------------------------------- helpers


def get(server: RunningServer, endpoint: str, path: str | None = None) -> tuple[int, str]:
    host, port = server.app.http_bound[endpoint]
    url = f"http://{host}:{port}/{path or endpoint}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def poll(server: RunningServer, endpoint: str, ok: Callable[[int, str], bool],
         what: str) -> tuple[int, str]:
    deadline = time.monotonic() + WITHIN
    while True:
        status, body = get(server, endpoint)
        if ok(status, body):
            return status, body
        if time.monotonic() >= deadline:
            pytest.fail(f"/{endpoint}: {what} not seen within {WITHIN} s; "
                        f"last: {status} {body!r}")
        time.sleep(0.02)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: RunningServer) -> tuple[dict[str, Any], Samples]:
    """(families by name, {(sample name, labels): value}) from one GET /metrics."""
    status, text = get(server, "metrics")
    assert status == 200, text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples: Samples = {}
    for family in families.values():
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return families, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def label_names(families: dict[str, Any], name: str) -> set[frozenset[str]]:
    return {frozenset(k for k in s.labels if k != "le") for s in families[name].samples}


# ----------------------------------------------------------------------------- fixtures


# ----------------------------------------------------------------------------- health


def test_health_answers_200_ok_while_the_server_runs(
        make_server: Callable[..., RunningServer]) -> None:
    server = make_server(**HTTP_ON)
    assert get(server, "health") == (200, "OK")


def test_each_endpoint_gets_its_own_port_and_serves_only_its_own_path(
        make_server: Callable[..., RunningServer]) -> None:
    server = make_server(**HTTP_ON)
    bound = server.app.http_bound
    assert len({bound["health"], bound["ready"], bound["metrics"]}) == 3
    assert get(server, "health", "ready")[0] == 404
    assert get(server, "ready", "metrics")[0] == 404


def test_two_endpoints_on_one_address_share_one_site_serving_both_paths(
        make_server: Callable[..., RunningServer]) -> None:
    shared = ListenAddr("127.0.0.1", free_port())
    server = make_server(health=shared, ready=shared, metrics=LOOPBACK0)
    bound = server.app.http_bound
    assert bound["health"] == bound["ready"] == ("127.0.0.1", shared.port)
    assert bound["metrics"] != bound["health"]
    assert get(server, "health") == (200, "OK")
    assert get(server, "ready") == (200, "OK")


# ----------------------------------------------------------------------------- ready


def test_ready_is_503_naming_the_kinds_not_listed_yet_then_200_after_the_first_sync(
        fake: FakeKube, make_server: Callable[..., RunningServer], tmp_path: Path) -> None:
    fake.forbid("endpointslices")
    server = make_server(source=SourceSpec("kubernetes"),
                         kubeconfig=str(fake.write_kubeconfig(tmp_path / "kubeconfig")),
                         kube=fast_source(), **HTTP_ON)
    # Services and namespaces list at once; EndpointSlices stay forbidden.
    status, body = poll(server, "ready", lambda s, b: "watch-services" not in b
                        and "watch-namespaces" not in b, "services and namespaces listed")
    assert status == 503
    assert "watch-endpointslices" in body
    assert server.ask(HTTPENV, "A").rcode() == dns.rcode.SERVFAIL
    assert get(server, "health") == (200, "OK")  # alive, just not ready

    fake.allow("endpointslices")
    assert poll(server, "ready", lambda s, b: s == 200, "200") == (200, "OK")
    assert server.ask(HTTPENV, "A").rcode() == dns.rcode.NOERROR


def test_ready_turns_503_draining_once_the_app_drains_while_dns_keeps_answering(
        make_server: Callable[..., RunningServer]) -> None:
    server = make_server(**HTTP_ON)
    assert get(server, "ready") == (200, "OK")
    server.call(lambda: setattr(server.app, "draining", True))
    assert get(server, "ready") == (503, "draining")
    assert server.ask(HTTPENV, "A").rcode() == dns.rcode.NOERROR
    assert get(server, "health") == (200, "OK")


# ----------------------------------------------------------------------------- metrics

COREDNS_LABELS = {
    "coredns_dns_requests": {"server", "zone", "view", "proto", "family", "type"},
    "coredns_dns_responses": {"server", "zone", "view", "rcode", "plugin"},
    "coredns_dns_request_duration_seconds": {"server", "zone", "view", "type"},
    "coredns_dns_request_size_bytes": {"server", "zone", "view", "proto"},
    "coredns_dns_response_size_bytes": {"server", "zone", "view", "proto"},
    "coredns_cache_hits": {"server", "type", "zones", "view"},
    "coredns_cache_misses": {"server", "zones", "view"},
    "coredns_cache_entries": {"server", "type", "zones", "view"},
    "coredns_build_info": {"version", "revision", "goversion"},
    "coredns_panics": set(),
}
OWN = ("clusterdns_snapshot_serial", "clusterdns_data_age_seconds", "clusterdns_records",
       "clusterdns_watch_restarts", "clusterdns_sync_duration_seconds",
       "clusterdns_truncated_replies", "clusterdns_programming_latency_seconds",
       "coredns_forward_requests", "coredns_forward_responses",
       "coredns_forward_request_duration_seconds",
       "coredns_kubernetes_dns_programming_duration_seconds", "clusterdns_gc_pause_seconds",
       "clusterdns_objects_held_back", "clusterdns_transfers")


def test_metrics_carry_every_coredns_name_and_label_set_and_count_queries(
        make_server: Callable[..., RunningServer]) -> None:
    server = make_server(**HTTP_ON)
    _, before = scrape(server)
    server_label = f"dns://127.0.0.1:{server.port}"
    common = {"server": server_label, "zone": ".", "view": ""}

    assert server.ask(HTTPENV, "A").rcode() == dns.rcode.NOERROR
    assert server.ask(HTTPENV, "AAAA", tcp=True).rcode() == dns.rcode.NOERROR
    assert server.ask("nope.default.svc.cluster.local.", "A").rcode() == dns.rcode.NXDOMAIN
    families, after = scrape(server)

    for name, labels in COREDNS_LABELS.items():
        assert name in families, name
        assert label_names(families, name) == {frozenset(labels)}, name
    for name in OWN:
        assert name in families, name
    assert families["coredns_dns_requests"].type == "counter"
    assert families["coredns_dns_request_duration_seconds"].type == "histogram"

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("coredns_dns_requests_total", proto="udp", family="1", type="A",
                 **common) == 2
    assert delta("coredns_dns_requests_total", proto="tcp", family="1", type="AAAA",
                 **common) == 1
    assert delta("coredns_dns_responses_total", rcode="NOERROR", plugin="kubernetes",
                 **common) == 2
    assert delta("coredns_dns_responses_total", rcode="NXDOMAIN", plugin="kubernetes",
                 **common) == 1
    assert delta("coredns_dns_request_duration_seconds_count", type="A", **common) == 2
    assert delta("coredns_dns_request_size_bytes_count", proto="tcp", **common) == 1
    assert delta("coredns_dns_response_size_bytes_count", proto="udp", **common) == 2
    # Sizes land in CoreDNS's buckets: a reply of ~100 bytes is under 511, over 0.
    assert delta("coredns_dns_response_size_bytes_bucket", proto="udp", le="511",
                 **common) == 2
    assert delta("coredns_dns_response_size_bytes_bucket", proto="udp", le="0",
                 **common) == 0
    serial = server.app.ref.get().serial
    assert value(after, "clusterdns_snapshot_serial") == serial > 0
    assert value(after, "clusterdns_records") > 0
    assert value(after, "coredns_build_info", revision="") == 1


def test_forwarded_answers_count_per_upstream_and_cache_hits_are_labelled_cache(
        make_server: Callable[..., RunningServer]) -> None:
    up = FakeUpstream(["example.com. 300 IN A 192.0.2.1",
                       "example.com. 3600 IN SOA ns.example.com. h.example.com. 1 2 3 4 60"])
    try:
        server = make_server(upstreams=(up.address,), loop_detect=False, **HTTP_ON)
        _, before = scrape(server)
        assert server.ask("example.com.", "A").rcode() == dns.rcode.NOERROR  # upstream
        assert server.ask("example.com.", "A").rcode() == dns.rcode.NOERROR  # cache
        assert server.ask("nope.example.com.", "A").rcode() == dns.rcode.NXDOMAIN
        families, after = scrape(server)
    finally:
        up.close()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    to = up.address
    for name, labels in (("coredns_forward_requests", {"to"}),
                         ("coredns_forward_responses", {"to", "rcode"}),
                         ("coredns_forward_request_duration_seconds", {"to", "rcode"})):
        assert label_names(families, name) == {frozenset(labels)}, name
    assert delta("coredns_forward_requests_total", to=to) == 2
    assert delta("coredns_forward_responses_total", to=to, rcode="NOERROR") == 1
    assert delta("coredns_forward_responses_total", to=to, rcode="NXDOMAIN") == 1
    assert delta("coredns_forward_request_duration_seconds_count", to=to) == 2
    assert delta("coredns_dns_responses_total", rcode="NOERROR", plugin="forward") == 1
    assert delta("coredns_dns_responses_total", rcode="NOERROR", plugin="cache") == 1
    assert delta("coredns_dns_responses_total", rcode="NXDOMAIN", plugin="forward") == 1
    assert delta("coredns_cache_hits_total", type="success") == 1
    assert delta("coredns_cache_misses_total") == 2
    assert value(after, "coredns_cache_entries", type="success") == 1
    assert value(after, "coredns_cache_entries", type="denial") == 1


def test_the_family_label_is_2_for_queries_over_ipv6(
        make_server: Callable[..., RunningServer]) -> None:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    server = make_server(listen=(ListenAddr("::1", 0),), **HTTP_ON)
    _, before = scrape(server)
    assert server.ask(HTTPENV, "A").rcode() == dns.rcode.NOERROR
    assert server.ask(HTTPENV, "A", tcp=True).rcode() == dns.rcode.NOERROR
    _, after = scrape(server)
    label = f"dns://[::1]:{server.port}"
    for proto in ("udp", "tcp"):
        labels = {"server": label, "proto": proto, "type": "A"}
        assert (value(after, "coredns_dns_requests_total", family="2", **labels)
                - value(before, "coredns_dns_requests_total", family="2", **labels)) == 1
    assert value(after, "coredns_dns_requests_total", family="1") == 0


def test_truncated_udp_replies_are_counted(make_server: Callable[..., RunningServer]) -> None:
    server = make_server(**HTTP_ON)
    _, before = scrape(server)
    reply = server.ask("httpenv-headless.default.svc.cluster.local.", "A", edns=False)
    _, after = scrape(server)
    truncated = 1 if reply.flags & dns.flags.TC else 0
    assert (value(after, "clusterdns_truncated_replies_total")
            - value(before, "clusterdns_truncated_replies_total")) == truncated


def test_kube_source_metrics_show_sync_data_age_and_programming_latency_by_service_kind(
        fake: FakeKube, make_server: Callable[..., RunningServer], tmp_path: Path) -> None:
    server = make_server(source=SourceSpec("kubernetes"),
                         kubeconfig=str(fake.write_kubeconfig(tmp_path / "kubeconfig")),
                         kube=fast_source(), **HTTP_ON)
    wait_synced(server)
    fake.apply(endpoint_slice("empty-headless-s5dk9", "empty-headless",
                              [("10.244.9.9", True)]))
    deadline = time.monotonic() + WITHIN
    name = "empty-headless.default.svc.cluster.local."
    while server.ask(name, "A").rcode() != dns.rcode.NOERROR:
        assert time.monotonic() < deadline, "the new endpoint never showed in DNS"
        time.sleep(0.02)
    _, samples = scrape(server)
    hist = "coredns_kubernetes_dns_programming_duration_seconds_count"
    assert value(samples, hist, service_kind="headless_with_selector") >= 1
    assert value(samples, "clusterdns_programming_latency_seconds_count") >= 1
    assert value(samples, "clusterdns_sync_duration_seconds") > 0
    age = value(samples, "clusterdns_data_age_seconds")
    assert 0 <= age < 60


def test_file_source_reports_no_data_age(make_server: Callable[..., RunningServer]) -> None:
    server = make_server(**HTTP_ON)
    _, samples = scrape(server)
    assert value(samples, "clusterdns_data_age_seconds") != \
        value(samples, "clusterdns_data_age_seconds")  # NaN


# ----------------------------------------------------------------------------- query log

LOG_LINE = re.compile(
    r'^\[INFO\] (?P<remote>\S+):(?P<port>\d+) - (?P<id>\d+) "(?P<type>\S+) (?P<class>\S+) '
    r'(?P<name>\S+) (?P<proto>udp|tcp) (?P<size>\d+) (?P<do>true|false) (?P<bufsize>\d+)" '
    r'(?P<rcode>[A-Z]+) (?P<flags>\S+) (?P<rsize>\d+) (?P<duration>\d+(\.\d+)?s)$')


def udp_raw(port: int, query: bytes, timeout: float = 3.0) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(query, ("127.0.0.1", port))
        return s.recv(65535)


def tcp_raw(port: int, query: bytes, timeout: float = 3.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(len(query).to_bytes(2, "big") + query)
        data = b""
        while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2], "big"):
            chunk = s.recv(65535)
            assert chunk, "connection closed early"
            data += chunk
        return data[2:]


def test_the_query_log_writes_one_coredns_format_line_per_query_on_stdout() -> None:
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "clusterdns", "serve", "--config",
         str(ROOT / "config" / "demo.yaml"), "--listen", f"127.0.0.1:{port}",
         "--health", "", "--ready", "", "--metrics", "", "--lameduck", "0",
         "--log-queries"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + WITHIN
        probe = dns.message.make_query("cluster.local.", "SOA").to_wire()
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                udp_raw(port, probe, timeout=0.2)
                break
            except OSError:  # refused or timed out: not listening yet
                assert time.monotonic() < deadline, "clusterdns did not start"
        udp_q = dns.message.make_query("HTTPenv.default.svc.cluster.local.", "A",
                                       use_edns=0, payload=1232)
        udp_r = udp_raw(port, udp_q.to_wire())
        tcp_q = dns.message.make_query("nope.default.svc.cluster.local.", "AAAA",
                                       use_edns=0, want_dnssec=True)
        tcp_r = tcp_raw(port, tcp_q.to_wire())
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=WITHIN)
    lines = [m for m in map(LOG_LINE.match, out.splitlines()) if m]
    assert lines and len(lines) == len(out.splitlines()), out
    by_id = {int(m["id"]): m for m in lines}

    udp = by_id[udp_q.id]
    assert (udp["remote"], udp["type"], udp["class"], udp["name"], udp["proto"]) == (
        "127.0.0.1", "A", "IN", "httpenv.default.svc.cluster.local.", "udp")
    assert int(udp["size"]) == len(udp_q.to_wire())
    assert (udp["do"], udp["bufsize"], udp["rcode"]) == ("false", "1232", "NOERROR")
    assert udp["flags"] == "qr,aa,rd"
    assert int(udp["rsize"]) == len(udp_r)
    assert dns.message.from_wire(udp_r).rcode() == dns.rcode.NOERROR

    tcp = by_id[tcp_q.id]
    assert (tcp["type"], tcp["proto"], tcp["do"], tcp["bufsize"], tcp["rcode"]) == (
        "AAAA", "tcp", "true", "65535", "NXDOMAIN")
    assert tcp["flags"] == "qr,aa,rd"
    assert int(tcp["size"]) == len(tcp_q.to_wire())
    assert int(tcp["rsize"]) == len(tcp_r)
    assert dns.message.from_wire(tcp_r).rcode() == dns.rcode.NXDOMAIN
    assert "[INFO]" not in err  # query lines go to stdout only
