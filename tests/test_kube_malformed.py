"""An object modified into a malformed one keeps its last good version, on every path.

Why: the watch skipped a malformed new version (so the old one kept answering) but the
next relist dropped the object altogether, so a name went from answering to NXDOMAIN
on a relist nobody asked for. Now both paths keep the last good version, say which
object and field are wrong, and count what is held back in
``clusterdns_objects_held_back{kind}``; a later good version or a deletion releases it.
An object never seen in a good version has nothing to hold: it is skipped.

Each test runs clusterdns with the real ``kubernetes`` client against FakeKube; the
relist is forced the way an API server forces it, with a 410 on the re-watch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.rcode
import pytest

from clusterdns.config import SourceSpec
from clusterdns.source.kube import KubeSource, Tuning
from conftest import RunningServer, a_answer, wait_until
from fakekube import FakeKube

TUNING = Tuning(watch_timeout=3.0, inactivity_timeout=1.0, request_timeout=5.0,
                backoff_base=0.05, backoff_cap_early=0.5)
WEB = "web.default.svc.cluster.local."
WEB_IP = "10.96.33.33"
PROBLEM = 'spec.clusterIPs[1]: "10.96.33.999" is not an IP address'

StartServer = Callable[..., RunningServer]


def web(*ips: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"type": "ClusterIP", "clusterIP": ips[0], "clusterIPs": list(ips),
                     "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}


def held_back(server: RunningServer, kind: str = "services") -> float | None:
    """``clusterdns_objects_held_back{kind=...}`` as scraped."""
    value: float | None = server.call(lambda: server.app.registry.get_sample_value(
        "clusterdns_objects_held_back", {"kind": kind}))
    return value


def restarts(server: RunningServer, reason: str) -> int:
    kube = server.app.kube
    assert kube is not None
    count: int = server.call(lambda: sum(r.restarts[reason] for r in kube.reflectors
                                         if r.resource.plural == "services"))
    return count


def force_relist(fake: FakeKube, server: RunningServer) -> None:
    """The services watch is ended and its resumption answered 410: a relist."""
    gone = restarts(server, "gone")
    fake.clear_log()
    fake.fail_next(1, 410, path_contains="/services?")
    fake.end_watches()
    wait_until(lambda: restarts(server, "gone") > gone, 5, "the 410 relists services")
    wait_until(lambda: any(not r.watch and r.path == "/api/v1/services" and r.status == 200
                           for r in fake.requests), 5, "services listed again")
    wait_until(lambda: any(r.watch and r.path == "/api/v1/services" and r.status == 200
                           for r in fake.requests), 5, "services watched again")


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and text in r.getMessage()]


@pytest.fixture
def server(fake: FakeKube, make_server: StartServer, tmp_path: Path) -> RunningServer:
    running = make_server(source=SourceSpec("kubernetes"),
                          kubeconfig=str(fake.write_kubeconfig(tmp_path / "kubeconfig")),
                          kube=lambda cfg: KubeSource(cfg, tuning=TUNING))
    wait_until(lambda: a_answer(running, WEB) == (dns.rcode.NOERROR, [WEB_IP]), 10,
               "clusterdns synced")
    return running


def test_a_service_modified_into_a_malformed_one_keeps_answering_through_a_relist_until_fixed(
        fake: FakeKube, server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clusterdns.source.kube")
    assert held_back(server) == 0

    fake.apply(web(WEB_IP, "10.96.33.999"))  # MODIFIED through the watch
    wait_until(lambda: held_back(server) == 1, 3, "the malformed version held back")
    assert a_answer(server, WEB) == (dns.rcode.NOERROR, [WEB_IP])
    told = warnings_about(caplog, "default/web is malformed")
    assert len(told) == 1 and PROBLEM in told[0], told
    assert "keeping its last good version" in told[0]

    force_relist(fake, server)  # the list carries the malformed version too
    assert a_answer(server, WEB) == (dns.rcode.NOERROR, [WEB_IP])
    assert held_back(server) == 1
    assert len(warnings_about(caplog, "default/web is malformed")) == 1  # not news again

    fake.apply(web("10.96.33.34"))  # fixed, and moved
    wait_until(lambda: a_answer(server, WEB) == (dns.rcode.NOERROR, ["10.96.33.34"]), 3,
               "the well-formed version is served")
    assert held_back(server) == 0
    assert any("default/web is well-formed again" in r.getMessage() for r in caplog.records)


def test_a_service_deleted_while_held_back_is_gone_on_the_watch_and_on_a_relist(
        fake: FakeKube, server: RunningServer) -> None:
    fake.apply(web(WEB_IP, "10.96.33.999"))
    wait_until(lambda: held_back(server) == 1, 3, "the malformed version held back")
    fake.delete("Service", "default", "web")
    wait_until(lambda: a_answer(server, WEB)[0] == dns.rcode.NXDOMAIN, 3,
               "the deletion is served")
    assert held_back(server) == 0

    # Deleted while no watch could tell: the relist forgets it too.
    fake.apply(web(WEB_IP))
    wait_until(lambda: a_answer(server, WEB) == (dns.rcode.NOERROR, [WEB_IP]), 3, "web back")
    fake.apply(web(WEB_IP, "10.96.33.999"))
    wait_until(lambda: held_back(server) == 1, 3, "held back again")
    fake.stop()
    fake.delete("Service", "default", "web")
    fake.apply({**web("10.96.80.1"), "metadata": {"name": "other", "namespace": "default"}})
    fake.compact()  # resuming from before the deletion answers 410: a relist
    fake.start()
    wait_until(lambda: a_answer(server, WEB)[0] == dns.rcode.NXDOMAIN, 5,
               "the deletion is served after the relist")
    assert held_back(server) == 0


def test_an_object_malformed_from_its_first_version_is_skipped_not_held_back(
        fake: FakeKube, server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clusterdns.source.kube")
    broken = {**web("10.96.80.2", "10.96.33.999"),
              "metadata": {"name": "broken", "namespace": "default"}}
    fake.apply(broken)
    fake.apply({**web("10.96.80.3"), "metadata": {"name": "after", "namespace": "default"}})
    wait_until(lambda: a_answer(server, "after.default.svc.cluster.local.")[0]
               == dns.rcode.NOERROR, 3, "a later service is served")
    assert a_answer(server, "broken.default.svc.cluster.local.")[0] == dns.rcode.NXDOMAIN
    assert held_back(server) == 0
    told = warnings_about(caplog, "skipped malformed Service default/broken")
    assert told and PROBLEM in told[0], told
    force_relist(fake, server)
    assert a_answer(server, "broken.default.svc.cluster.local.")[0] == dns.rcode.NXDOMAIN
    assert held_back(server) == 0
