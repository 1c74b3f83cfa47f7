"""The live source under API faults: real clusterdns, real ``kubernetes`` client, FakeKube.

Why: the live source never lies and never gives up (docs/architecture.md): a clean watch
end resumes from the last resourceVersion without a relist, a broken or silent stream is
noticed and resumed without losing an event, 410 relists once, an outage keeps the last
answers and backs off (but catches up within two seconds of the API server's return),
403 names the missing RBAC rule once and keeps the server honest (SERVFAIL), and
Retry-After is honoured. Each test runs the whole server against ``tests/fakekube`` loaded
with ``config/demo-cluster.yaml`` and checks what dig would see plus what the API server
saw (its request log).

Timing: the source runs with ``FAST`` (seconds instead of minutes). The fake sends
bookmarks every 0.25 s (conftest's ``fake``), well inside ``SILENCE``, so a
healthy idle stream is never taken for a stalled one; a stalled stream sends nothing at
all (not even bookmarks), which is what the inactivity timeout detects. Time bounds in
assertions are the ones the behaviour promises (at least Retry-After, within 2 s of the
API server's return); waits for eventual effects use generous timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import pytest

from clusterdns.config import SourceSpec
from clusterdns.source.kube import KubeSource, Reflector, Tuning
from conftest import (
    RESOURCES,
    WEB,
    WEB_IP,
    RunningServer,
    StartServer,
    a_answer,
    demo_config,
    is_nxdomain,
    resolves_to,
    rrset_texts,
    service,
    svc_name,
    wait_until,
)
from fakekube import FakeKube, RequestRecord

SILENCE = 1.0  # the stall detector (watch_silence), in FAST's own override
FAST = Tuning(watch_timeout=3.0, inactivity_timeout=SILENCE, request_timeout=5.0,
              backoff_base=0.1, backoff_cap_early=1.0)


# --------------------------------------------------------------------------- helpers


def whole_answer(reply: dns.message.Message) -> tuple[Any, ...]:
    """Everything a client sees in a reply except its ID and the order of records
    (the server may rotate them)."""
    return (reply.rcode(), reply.flags, *(sorted(rrset_texts(reply, section))
                                          for section in ("answer", "authority", "additional")))


def resource(rec: RequestRecord) -> str:
    """The plural a (cluster-wide) list or watch request is for."""
    return rec.path.rstrip("/").rsplit("/", 1)[-1]


def watches_of(records: list[RequestRecord], plural: str) -> list[RequestRecord]:
    return [r for r in records if r.watch and resource(r) == plural]


def lists_of(records: list[RequestRecord], plural: str | None = None) -> list[RequestRecord]:
    return [r for r in records
            if not r.watch and resource(r) in RESOURCES and plural in (None, resource(r))]


def probes_of(records: list[RequestRecord]) -> list[RequestRecord]:
    """One-item lists: where a watch that brought nothing asks for the API server's
    resourceVersion (has its history gone back?), not a relist."""
    return [r for r in lists_of(records) if r.query.get("limit") == "1"
            and "continue" not in r.query]


def reflectors(server: RunningServer) -> dict[str, Reflector]:
    """The source's reflectors by the plural they watch."""
    kube = server.app.kube
    assert kube is not None
    return {r.resource.plural: r for r in kube.reflectors}


def on_loop(server: RunningServer, fn: Callable[[], Any]) -> Any:
    return server.call(fn)


def reflector_rvs(server: RunningServer) -> dict[str, str | None]:
    refl = reflectors(server)
    rvs: dict[str, str | None] = on_loop(server, lambda: {p: r.rv for p, r in refl.items()})
    return rvs


def restart_counts(server: RunningServer, reason: str | None = None) -> dict[str, int]:
    """Per reflector: its restarts for ``reason``, or all of them added up."""
    refl = reflectors(server)

    def read() -> dict[str, int]:
        return {p: (r.restarts[reason] if reason else sum(r.restarts.values()))
                for p, r in refl.items()}
    counts: dict[str, int] = on_loop(server, read)
    return counts


def caught_up(server: RunningServer, fake: FakeKube) -> str:
    """Wait until every reflector holds the fake's latest RV (bookmarks carry it); it."""
    wait_until(lambda: set(reflector_rvs(server).values()) == {fake.resource_version},
               timeout=5, what="every reflector has seen the latest resourceVersion")
    return fake.resource_version


def backoff_attempt_bounds(tuning: Tuning, seconds: float) -> tuple[int, int]:
    """How many attempts one reflector makes in ``seconds`` of failures, at least and at
    most, by the backoff it promises: delay i is in [ceiling_i / 2, ceiling_i] with
    ceiling_i = min(cap_early, base * 2**i) (jitter), the first attempt at time 0."""
    def attempts(share: float) -> int:
        n, elapsed = 1, 0.0
        while True:
            elapsed += share * min(tuning.backoff_cap_early, tuning.backoff_base * 2.0 ** (n - 1))
            if elapsed > seconds:
                return n
            n += 1
    return attempts(1.0), attempts(0.5)


class ConnectionCounter:
    """Stands in on a stopped API server's port: counts TCP connections and resets each.

    While FakeKube is stopped it cannot log requests, and refused connections leave no
    trace outside the client. This listener counts how often clusterdns reached for the
    API server, independently of clusterdns's own counters; to clusterdns it looks like
    an API server host that resets every connection (an immediate failure, as a refusal).
    """

    def __init__(self, host: str, port: int) -> None:
        self.count = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(128)
        self._sock.settimeout(0.02)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="connection-counter",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.count += 1
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()  # RST

    def close(self) -> int:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()
        return self.count


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def start_clusterdns(fake: FakeKube, make_server: StartServer,
                     tmp_path: Path) -> Callable[[], RunningServer]:
    """Start clusterdns (Kubernetes source, ``FAST`` tuning) against ``fake``."""
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")

    def start() -> RunningServer:
        return make_server(source=SourceSpec("kubernetes"), kubeconfig=str(kubeconfig),
                           kube=lambda cfg: KubeSource(cfg, tuning=FAST))
    return start


@pytest.fixture
def server(start_clusterdns: Callable[[], RunningServer]) -> RunningServer:
    """clusterdns, synced with the demo cluster."""
    running = start_clusterdns()
    wait_until(resolves_to(running, WEB, WEB_IP), timeout=10, what="clusterdns synced")
    assert running.app.ready()
    return running


# --------------------------------------------------------------------------- tests


def test_a_cleanly_ended_watch_is_resumed_from_the_last_resource_version_without_a_list(
        fake: FakeKube, server: RunningServer) -> None:
    fake.apply(service("before-end", "10.96.50.1"))
    wait_until(resolves_to(server, svc_name("before-end"), "10.96.50.1"), 5,
               "a service added before the end is served")
    latest = caught_up(server, fake)
    ends = restart_counts(server, "watch_end")

    fake.clear_log()
    fake.end_watches()
    wait_until(lambda: all(watches_of(fake.requests, p) for p in RESOURCES), 5,
               "every resource is watched again")
    rewatches = fake.requests

    for plural in RESOURCES:
        assert [r.query.get("resourceVersion") for r in watches_of(rewatches, plural)] \
            == [latest] * len(watches_of(rewatches, plural)), plural
    assert all(after > before
               for after, before in zip(restart_counts(server, "watch_end").values(),
                                        ends.values(), strict=True))

    fake.apply(service("after-end", "10.96.50.2"))
    wait_until(resolves_to(server, svc_name("after-end"), "10.96.50.2"), 5,
               "a service added after the re-watch is served")
    log = fake.requests
    assert lists_of(log) == [], "a clean watch end must not relist"
    assert all(r.watch and r.status == 200 for r in log)
    assert all(int(r.query["resourceVersion"]) >= int(latest) for r in log)


def test_a_dropped_watch_is_resumed_from_the_last_resource_version_and_loses_no_event(
        fake: FakeKube, server: RunningServer) -> None:
    latest = caught_up(server, fake)
    errors = restart_counts(server, "error")
    fake.clear_log()

    fake.drop_watches()
    added_rv = fake.apply(service("added-while-dropped", "10.96.51.1"))
    changed = service("web", "10.96.51.2")
    changed["spec"]["selector"] = {"app": "web"}
    changed_rv = fake.apply(changed)

    wait_until(resolves_to(server, svc_name("added-while-dropped"), "10.96.51.1"), 5,
               "a service added after the drop is served")
    wait_until(resolves_to(server, WEB, "10.96.51.2"), 5,
               "a service changed after the drop is served with its new address")
    wait_until(lambda: all(watches_of(fake.requests, p) for p in RESOURCES), 5,
               "every resource is watched again")
    after = restart_counts(server, "error")
    assert all(after[p] > errors[p] for p in RESOURCES), "every broken stream is noticed"
    log = fake.requests
    assert lists_of(log) == [], "a broken stream is resumed, not relisted"
    for plural in RESOURCES:
        first = watches_of(log, plural)[0]
        assert first.query.get("resourceVersion") == latest, plural
    # The services watch resumed from before both changes, so they reached us through it.
    assert int(latest) < int(added_rv) < int(changed_rv)


def test_a_stalled_watch_is_detected_resumed_from_the_last_resource_version_and_loses_no_event(
        fake: FakeKube, server: RunningServer) -> None:
    latest = caught_up(server, fake)
    stalled = restart_counts(server, "stalled")
    fake.clear_log()

    fake.stall_watches(True)
    try:
        fake.apply(service("added-during-stall", "10.96.52.1"))
        wait_until(lambda: all(n > stalled[p]
                               for p, n in restart_counts(server, "stalled").items()),
                   timeout=SILENCE * 4, what="every stalled stream detected")
        wait_until(lambda: all(watches_of(fake.requests, p) for p in RESOURCES), 2,
                   "every resource is watched again (still stalled)")
        # A stalled stream delivers nothing: the change is not here yet.
        assert is_nxdomain(server, svc_name("added-during-stall"))()
    finally:
        fake.stall_watches(False)
    unstalled_at = time.monotonic()

    wait_until(resolves_to(server, svc_name("added-during-stall"), "10.96.52.1"), 5,
               "a service added during the stall is served after it")
    log = fake.requests
    assert lists_of(log) == probes_of(log), "a stalled stream is resumed, not relisted"
    assert {resource(r) for r in probes_of(log)} == set(RESOURCES)
    for plural in RESOURCES:
        watches = watches_of(log, plural)
        rvs = [int(r.query["resourceVersion"]) for r in watches]
        # Re-watched during the stall, from the last RV the stream had delivered; any
        # later watch (a natural timeout after recovery) only moves forward.
        assert watches[0].time < unstalled_at, plural
        assert rvs[0] == int(latest) and rvs == sorted(rvs), (plural, rvs)


def test_a_too_old_resource_version_relists_once_and_forgets_services_deleted_in_the_gap(
        fake: FakeKube, server: RunningServer) -> None:
    stale = caught_up(server, fake)
    gone = restart_counts(server, "gone")

    fake.stop()  # no watch can follow the changes below
    fake.delete("Service", "default", "web")
    fake.apply(service("added-in-gap", "10.96.53.1"))
    fake.compact()  # resuming from ``stale`` now answers 410 Expired
    fake.clear_log()
    fake.start()

    wait_until(is_nxdomain(server, WEB), 5, "a service deleted in the gap is NXDOMAIN")
    wait_until(resolves_to(server, svc_name("added-in-gap"), "10.96.53.1"), 5,
               "a service added in the gap is served")
    time.sleep(0.5)  # room for a retry loop on the stale RV to show itself
    log = fake.requests

    stale_watches = [r for r in log if r.watch and r.query.get("resourceVersion") == stale]
    assert any(resource(r) == "services" for r in stale_watches), \
        "the services watch resumed from its old RV and got 410"
    for plural in RESOURCES:
        mine = [r for r in stale_watches if resource(r) == plural]
        assert len(mine) <= 1, f"{plural}: the stale RV was retried {len(mine)} times"
        if mine:
            relists = [r for r in lists_of(log, plural)
                       if r.time >= mine[0].time and r.status == 200]
            assert relists, f"{plural}: no list after the 410"
    assert restart_counts(server, "gone")["services"] > gone["services"]


def test_a_ten_second_api_outage_keeps_every_answer_backs_off_and_converges_within_2_s(
        fake: FakeKube, server: RunningServer) -> None:
    kube = server.app.kube
    assert kube is not None
    questions = [(WEB, "A"), (svc_name("httpenv-headless"), "A"),
                 ("_http._tcp.web.default.svc.cluster.local.", "SRV"),
                 (svc_name("queue"), "A"), (svc_name("nothing-here"), "A"),
                 ("33.33.96.10.in-addr.arpa.", "PTR")]

    def data_age() -> float:
        age: float | None = on_loop(server, kube.data_age)
        assert age is not None, "every reflector has been in touch"
        return age

    def converged() -> bool:
        return (is_nxdomain(server, WEB)() and is_nxdomain(server, svc_name("queue"))()
                and resolves_to(server, svc_name("born-in-outage"), "10.96.54.1")())

    caught_up(server, fake)
    before = {q: whole_answer(server.ask(*q)) for q in questions}
    ages: list[float] = []
    for _ in range(4):
        time.sleep(0.3)
        ages.append(data_age())
    assert max(ages) < 1.0, f"data age while bookmarks flow: {ages}"
    errors = restart_counts(server, "error")

    outage = 10.0
    stopped_at = time.monotonic()
    fake.stop()
    counter = ConnectionCounter(fake.host, fake.port)
    counting_since = time.monotonic()
    fake.delete("Service", "default", "web")
    fake.delete("Service", "default", "queue")
    fake.apply(service("born-in-outage", "10.96.54.1"))
    fake.compact()

    differences: list[str] = []
    queries = 0
    while time.monotonic() - stopped_at < outage:
        for q in questions:
            now = whole_answer(server.ask(*q))
            queries += 1
            if now != before[q]:
                differences.append(f"{q}: {now} != {before[q]}")
        time.sleep(0.1)
    age_in_outage = data_age()
    connections = counter.close()
    restarted_at = time.monotonic()
    counted_for = restarted_at - counting_since
    fake.start()
    wait_until(converged, 5, "clusterdns catches up after the outage", interval=0.01)
    took = time.monotonic() - restarted_at
    down_for = restarted_at - stopped_at

    assert queries > 100 and differences == [], differences[:5]
    assert took <= 2.0, f"caught up {took:.2f} s after the API server came back"
    assert age_in_outage >= outage - 0.5, "the data age shows how old the answers are"
    wait_until(lambda: data_age() < 1.0, 2.0, "the data age is small again")

    # Backing off, not spinning: per reflector, the failures it counts itself (the
    # broken stream, then each attempt; +-1 for an attempt at either edge)...
    low, high = backoff_attempt_bounds(FAST, down_for)
    failed = {p: n - errors[p] for p, n in restart_counts(server, "error").items()}
    for plural, n in failed.items():
        assert low - 1 <= n <= high + 1, (plural, n, (low, high))
    # ...and the TCP connections that reached the port, counted outside clusterdns. An
    # attempt makes one or two: aiohttp retries an idempotent GET once when the server
    # resets the connection after accepting it.
    low, high = backoff_attempt_bounds(FAST, counted_for)
    assert len(RESOURCES) * (low - 2) <= connections <= 2 * len(RESOURCES) * high, \
        (connections, (low, high))
    assert connections < len(RESOURCES) * counted_for / FAST.backoff_base


def test_a_forbidden_kind_is_logged_once_with_its_rbac_rule_and_keeps_the_server_unready(
        fake: FakeKube, start_clusterdns: Callable[[], RunningServer],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clusterdns.source.kube")
    fake.forbid("endpointslices")
    server = start_clusterdns()

    wait_until(lambda: len([r for r in fake.requests if resource(r) == "endpointslices"
                            and r.status == 403]) >= 4, 5, "endpointslices retried")
    wait_until(lambda: all(watches_of(fake.requests, p) for p in ("namespaces", "services")),
               5, "the other kinds are watched")
    for plural in ("namespaces", "services"):
        seen = [r for r in fake.requests if resource(r) == plural]
        assert lists_of(seen) and watches_of(seen, plural), plural
        assert all(r.status == 200 for r in seen), plural
    for name in (WEB, svc_name("nothing-here")):
        assert a_answer(server, name) == (dns.rcode.SERVFAIL, []), name
    assert not server.app.ready()

    def complaints() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "clusterdns.source.kube"
                and r.levelno >= logging.WARNING and "endpointslices" in r.getMessage()]
    assert len(complaints()) == 1, complaints()
    message = complaints()[0]
    for word in ("endpointslices", "discovery.k8s.io", "list", "watch"):
        assert word in message, (word, message)

    fake.allow("endpointslices")
    wait_until(resolves_to(server, WEB, WEB_IP), 5, "clusterdns syncs once allowed")
    assert server.app.ready()
    assert len(complaints()) == 1, complaints()


def test_a_429_with_retry_after_delays_the_next_request_for_that_resource(
        fake: FakeKube, server: RunningServer) -> None:
    fake.clear_log()
    fake.fail_next(1, 429, retry_after=1.5, path_contains="services")
    fake.end_watches()  # every reflector asks again; the services one is told to wait

    wait_until(lambda: len([r for r in fake.requests if resource(r) == "services"]) >= 2,
               5, "services requested again after the 429")
    services = [r for r in fake.requests if resource(r) == "services"]
    assert services[0].status == 429
    waited = services[1].time - services[0].time
    assert waited >= 1.5, f"asked again {waited:.2f} s after Retry-After: 1.5"
    assert services[1].status == 200
    assert a_answer(server, WEB) == (dns.rcode.NOERROR, [WEB_IP])


# A stop (SIGTERM, App.close) cancels the reflectors. One that is cancelled just as a line
# of its watch stream arrives must still stop: otherwise the source's TaskGroup never ends
# and shutdown hangs. Reproduced here without timing luck: the stream's readline cancels
# the reflector's task at the moment it hands over a line.


class _LineThenSilence:
    """A watch body: a bookmark whose delivery coincides with ``victim.cancel()``, then
    nothing."""

    def __init__(self) -> None:
        self.victim: asyncio.Task[None] | None = None
        self.reads = 0

    async def readline(self) -> bytes:
        self.reads += 1
        if self.reads == 1:
            assert self.victim is not None
            self.victim.cancel()
            return (b'{"type":"BOOKMARK","object":{"kind":"Service","apiVersion":"v1",'
                    b'"metadata":{"resourceVersion":"8"}}}\n')
        await asyncio.Event().wait()
        return b""


class _WatchResponse:
    status = 200

    def __init__(self, content: _LineThenSilence) -> None:
        self.content = content

    def close(self) -> None:
        pass


class _ServicesClient:
    """Stands in for the kubernetes ``ApiClient``: every request is the watch."""

    def __init__(self, content: _LineThenSilence) -> None:
        self.content = content

    async def param_serialize(self, **params: Any) -> tuple[Any, ...]:
        assert ("watch", True) in params["query_params"]
        return ("GET", "/api/v1/services", {}, None, [])

    async def call_api(self, *request: Any, _request_timeout: float) -> Any:
        return types.SimpleNamespace(response=_WatchResponse(self.content))


class _StubbedKubeSource(KubeSource):
    stub: _ServicesClient

    def client(self) -> Any:
        return self.stub


async def test_a_reflector_cancelled_as_a_watch_line_arrives_stops_instead_of_watching_on(
        ) -> None:
    body = _LineThenSilence()
    source = _StubbedKubeSource(demo_config(source=SourceSpec("kubernetes")), tuning=FAST)
    source.stub = _ServicesClient(body)
    reflector = next(r for r in source.reflectors if r.resource.plural == "services")
    reflector.rv = "7"  # synced before: straight to the watch
    task = asyncio.create_task(reflector.run(), name=reflector.name)
    body.victim = task
    done, _ = await asyncio.wait([task], timeout=2)
    try:
        assert task in done and task.cancelled(), (
            f"the reflector swallowed its cancellation and is still watching "
            f"(rv {reflector.rv}, {body.reads} reads)")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
