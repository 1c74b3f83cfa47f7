"""An API server whose resourceVersion went backwards is relisted, not watched forever.

Why: when etcd is restored from a backup (or a new cluster comes up at the same address)
the API server's resourceVersion goes back. clusterdns resumed watching from its own,
now future, version and heard nothing: services deleted by the restore kept answering,
services created after it were NXDOMAIN, and nothing was logged. Real API servers answer
such a watch with a 504 ``ResourceVersionTooLarge`` Status (as the response or as an ERROR
event) or say nothing at or below the version watched from; FakeKube's ``restore`` plays
each (``TOO_NEW_MODES``). Whatever the answer, clusterdns must relist from scratch, log
why, and count it in ``clusterdns_watch_restarts_total``.

Each test runs clusterdns with the real ``kubernetes`` client against FakeKube and checks
what a pod would see (dnspython queries), what clusterdns logged and counted.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from clusterdns.config import SourceSpec
from clusterdns.source.kube import KubeSource, Tuning, older
from conftest import (
    RESOURCES,
    WEB,
    WEB_IP,
    RunningServer,
    StartServer,
    is_nxdomain,
    resolves_to,
    service,
    svc_name,
    wait_until,
)
from fakekube import TOO_NEW_MODES, FakeKube

# Fast reconnects; a 2 s silence limit makes every watch end after 1 s, so the "silent"
# mode's empty watches show within about a second.
TUNING = Tuning(request_timeout=5.0, backoff_base=0.05, backoff_cap_early=0.5)
SILENCE = 2.0
CONVERGE = 5.0  # seconds for DNS to show the restored cluster

def restarts(server: RunningServer, reason: str) -> dict[str, int]:
    kube = server.app.kube
    assert kube is not None
    counts: dict[str, int] = server.call(
        lambda: {r.resource.plural: r.restarts[reason] for r in kube.reflectors})
    return counts


def scraped_restarts(server: RunningServer, reason: str) -> float:
    """``clusterdns_watch_restarts_total{kind="services",reason=...}`` as scraped."""
    value = server.call(lambda: server.app.registry.get_sample_value(
        "clusterdns_watch_restarts_total", {"kind": "services", "reason": reason}))
    return float(value or 0.0)


def caught_up(server: RunningServer, fake: FakeKube) -> str:
    """Wait until every reflector is at the fake's resourceVersion (bookmarks bring it)."""
    kube = server.app.kube
    assert kube is not None
    latest = fake.resource_version
    wait_until(lambda: server.call(lambda: {r.rv for r in kube.reflectors}) == {latest},
               3, f"every reflector at resourceVersion {latest}")
    return latest


@pytest.fixture
def server(fake: FakeKube, make_server: StartServer, tmp_path: Path) -> RunningServer:
    running = make_server(source=SourceSpec("kubernetes"),
                          kubeconfig=str(fake.write_kubeconfig(tmp_path / "kubeconfig")),
                          kube=lambda cfg: KubeSource(cfg, tuning=TUNING),
                          watch_silence=SILENCE)
    wait_until(resolves_to(running, WEB, WEB_IP), 10, "clusterdns synced")
    return running


# --------------------------------------------------------------------------- tests


def test_resource_versions_are_compared_only_when_both_are_integers() -> None:
    assert older("99", "100")  # as numbers, not as text
    assert not older("100", "99")
    assert not older("100", "100")
    assert not older("abc", "100") and not older("99", "abc")
    assert not older(None, "100") and not older("99", None) and not older("", "100")
    assert not older("٩", "10")  # a digit, but not an ASCII one: not an etcd revision


@pytest.mark.parametrize("mode", TOO_NEW_MODES)
def test_after_the_api_server_is_restored_to_an_older_version_dns_shows_the_restored_cluster(
        fake: FakeKube, server: RunningServer, mode: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clusterdns.source.kube")
    backup = fake.resource_version  # the etcd backup is taken here
    fake.apply(service("doomed", "10.96.70.1"))
    moved = service("web", "10.96.70.9")
    fake.apply(moved)
    wait_until(resolves_to(server, svc_name("doomed"), "10.96.70.1"), 3, "doomed is served")
    wait_until(resolves_to(server, WEB, "10.96.70.9"), 3, "web moved")
    ours = caught_up(server, fake)
    caplog.clear()

    restored_at = time.monotonic()
    fake.restore(backup, too_new=mode)  # the API server restarts on the restored etcd
    born = fake.apply(service("born-after-restore", "10.96.70.2"))
    assert int(born) < int(ours)  # a watch from ``ours`` would never be told about it

    wait_until(resolves_to(server, svc_name("born-after-restore"), "10.96.70.2"), CONVERGE,
               "a service created after the restore is served")
    wait_until(is_nxdomain(server, svc_name("doomed")), 1, "a service the restore deleted is gone")
    wait_until(resolves_to(server, WEB, WEB_IP), 1, "a service the restore changed is back")
    took = time.monotonic() - restored_at
    assert took < CONVERGE

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and r.getMessage().startswith("watch-services:")]
    if mode in ("status", "error-event"):
        said = f"the API server does not have resourceVersion {ours}"
        reason = "rv_too_large"
    else:
        said = "the API server's history went back"
        reason = "rv_went_back"
    assert any(said in w and "relisting" in w for w in warnings), warnings
    assert restarts(server, reason)["services"] >= 1
    assert scraped_restarts(server, reason) >= 1
    # Whichever way it was noticed, the relist shows the version went back, and says so.
    went_back = [w for w in warnings if "went back" in w]
    assert went_back and all(ours in w for w in went_back), warnings
    if mode in ("status", "error-event"):  # noticed at the relist: its resourceVersion
        assert any(f"listed at resourceVersion {born}, lower than the {ours}" in w
                   for w in went_back), warnings
        assert scraped_restarts(server, "rv_went_back") >= 1


def test_after_a_restore_every_kind_relists_once_and_then_watches_the_new_history(
        fake: FakeKube, server: RunningServer) -> None:
    backup = fake.resource_version
    fake.apply(service("doomed", "10.96.70.1"))
    wait_until(resolves_to(server, svc_name("doomed"), "10.96.70.1"), 3, "doomed is served")
    caught_up(server, fake)
    fake.clear_log()
    fake.restore(backup, too_new="status")
    wait_until(is_nxdomain(server, svc_name("doomed")), CONVERGE, "doomed is gone")
    time.sleep(1.0)  # room for a relist loop to show itself

    for plural in RESOURCES:
        mine = [r for r in fake.requests if r.path.endswith("/" + plural)]
        too_large = [r for r in mine if r.watch and r.status == 504]
        relists = [r for r in mine if not r.watch and "continue" not in r.query
                   and r.query.get("limit") != "1"]
        assert len(too_large) == 1, (plural, too_large)
        assert len(relists) == 1, (plural, relists)
        later = [r for r in mine if r.watch and r.time > relists[0].time]
        assert later and all(r.status == 200 for r in later), (plural, later)
        assert all(r.query["resourceVersion"] == backup for r in later), later

    # New changes flow through the watch again.
    fake.apply(service("after", "10.96.70.3"))
    wait_until(resolves_to(server, svc_name("after"), "10.96.70.3"), 2, "a later change is served")
