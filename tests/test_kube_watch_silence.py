"""A dead or silent watch connection is noticed within ``watch_silence`` (60 s), not 120 s.

Why: a watch that silently stopped delivering leaves DNS answering from a past state
with nothing in the log. Two mechanisms, as client-go: TCP keepalive on the watch
connection (a vanished peer fails the read in about 30 s), and an inactivity limit (no
event, no bookmark, no end), ``watch_silence`` in the YAML config. Because API servers
bookmark a quiet watch only about once a minute, each watch asks to be ended well within
that limit, so a healthy quiet stream never reaches it.

These tests run clusterdns with the real ``kubernetes`` client against FakeKube: a
stalled fake (``stall_watches``) is noticed after the configured silence and logged; the
keepalive options are read back from the very sockets the fake serves watches on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clusterdns.config import Config, ConfigError, SourceSpec, from_mapping
from clusterdns.source.kube import KubeSource, Tuning
from conftest import RunningServer, wait_until
from fakekube import FakeKube

# Fast reconnects; the silence limit comes from the config (no tuning override).
TUNING = Tuning(request_timeout=5.0, backoff_base=0.05, backoff_cap_early=0.5)
RESOURCES = ("namespaces", "services", "endpointslices")
WEB = "web.default.svc.cluster.local."
WEB_IP = "10.96.33.33"

StartServer = Callable[..., RunningServer]


def start(make_server: StartServer, fake: FakeKube, tmp_path: Path,
          **changes: Any) -> RunningServer:
    """clusterdns on ``fake`` with config ``changes``, synced."""
    server = make_server(source=SourceSpec("kubernetes"),
                         kubeconfig=str(fake.write_kubeconfig(tmp_path / "kubeconfig")),
                         kube=lambda cfg: KubeSource(cfg, tuning=TUNING), **changes)

    def synced() -> bool:
        reply = server.ask(WEB)
        return [rd.to_text() for rrset in reply.answer for rd in rrset] == [WEB_IP]
    wait_until(synced, 10, "clusterdns synced")
    fake.wait_for_watches(len(RESOURCES))
    return server


def stalls(server: RunningServer) -> dict[str, int]:
    kube = server.app.kube
    assert kube is not None
    counts: dict[str, int] = server.call(
        lambda: {r.resource.plural: r.restarts["stalled"] for r in kube.reflectors})
    return counts


def watch_rvs(fake: FakeKube, plural: str) -> list[str]:
    return [r.query.get("resourceVersion", "") for r in fake.requests
            if r.watch and r.path.endswith("/" + plural)]


# --------------------------------------------------------------------------- config


def test_watch_silence_defaults_to_sixty_seconds_and_is_read_from_the_yaml_config() -> None:
    assert Config().watch_silence == 60.0
    assert from_mapping({"watch_silence": 20}, "clusterdns.yaml").watch_silence == 20.0
    assert from_mapping({"watch_silence": 2.5}, "clusterdns.yaml").watch_silence == 2.5


@pytest.mark.parametrize("value", [0, 0.5, 3601, -60, "60s", True, None, [60]])
def test_a_watch_silence_not_from_1_to_3600_seconds_is_refused_naming_the_file_and_key(
        value: Any) -> None:
    with pytest.raises(ConfigError) as err:
        from_mapping({"watch_silence": value}, "clusterdns.yaml")
    assert err.value.key == "watch_silence"
    assert str(err.value).startswith("clusterdns.yaml: watch_silence: ")
    assert "expected a number from 1 to 3600" in str(err.value)


# --------------------------------------------------------------------------- silence


def test_a_stalled_watch_is_noticed_after_the_configured_silence_logged_and_rewatched(
        fake: FakeKube, make_server: StartServer, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clusterdns.source.kube")
    silence = 1.5
    server = start(make_server, fake, tmp_path, watch_silence=silence)
    before = stalls(server)
    rv = fake.resource_version
    fake.clear_log()
    caplog.clear()

    fake.stall_watches(True)  # nothing at all: no event, no bookmark, no end
    try:
        took = wait_until(lambda: all(n > before[p] for p, n in stalls(server).items()),
                          silence + 3, "every stalled watch noticed")
        # The last bookmark came at most one interval (0.25 s) before the stall.
        assert took >= silence - 0.3, f"noticed after {took:.2f} s of a {silence} s limit"
        wait_until(lambda: all(watch_rvs(fake, p) for p in RESOURCES), 2,
                   "every kind watched again")
    finally:
        fake.stall_watches(False)
    for plural in RESOURCES:  # resumed where it was: no relist, no event lost
        assert watch_rvs(fake, plural)[0] == rv, plural
    # Only one-item lists asking for the API server's resourceVersion: not a relist.
    assert all(r.query.get("limit") == "1" for r in fake.requests if not r.watch)

    lines = [r.getMessage() for r in caplog.records
             if r.levelno == logging.WARNING and "silent" in r.getMessage()]
    assert {line.split(":")[0] for line in lines} == {f"watch-{p}" for p in RESOURCES}
    for line in lines:
        assert f"silent for {silence:g} s" in line, line
        assert "re-watching" in line, line

    fake.apply({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "after-stall", "namespace": "default"},
                "spec": {"clusterIP": "10.96.60.1", "clusterIPs": ["10.96.60.1"],
                         "ports": [{"port": 80}]}})
    wait_until(lambda: bool(server.ask("after-stall.default.svc.cluster.local.").answer),
               3, "a change after the stall is served")


def test_a_watch_asks_the_api_server_to_end_it_well_within_the_silence_limit(
        fake: FakeKube, make_server: StartServer, tmp_path: Path) -> None:
    start(make_server, fake, tmp_path, watch_silence=20)
    timeouts = [int(r.query["timeoutSeconds"]) for r in fake.requests if r.watch]
    assert timeouts
    # 0.75 of the limit, jittered by +-20%: 12 to 18 s, never the 300 s of a quiet kind
    # left to an API server that bookmarks once a minute.
    assert all(12 <= t <= 18 for t in timeouts), timeouts


# --------------------------------------------------------------------------- keepalive


def sockets_of_this_process() -> Iterator[socket.socket]:
    """A duplicate of every TCP socket this process holds (Linux: /proc/self/fd)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            dup = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        if dup.type != socket.SOCK_STREAM:
            dup.close()
            continue
        yield dup


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd") or not hasattr(socket, "TCP_KEEPIDLE"),
                    reason="reads sockets through /proc/self/fd and Linux TCP options")
def test_every_watch_connection_has_tcp_keepalive_noticing_a_dead_peer_in_thirty_seconds(
        fake: FakeKube, make_server: StartServer, tmp_path: Path) -> None:
    start(make_server, fake, tmp_path)
    peers = set(fake.watch_peers())  # the client end of each watch, as the fake sees it
    assert len(peers) == len(RESOURCES), peers
    options: dict[tuple[str, int], tuple[int, int, int, int]] = {}
    for sock in sockets_of_this_process():
        with sock:
            try:
                local = sock.getsockname()
            except OSError:
                continue
            if isinstance(local, tuple) and (local[0], local[1]) in peers:
                options[(local[0], local[1])] = (
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT))
    assert set(options) == peers, "every watch socket found in this process"
    for peer, (keepalive, idle, interval, count) in options.items():
        assert keepalive == 1, peer
        assert (idle, interval, count) == (15, 5, 3), peer
        assert idle + interval * count <= 30, peer


def test_a_config_reload_gives_the_running_watches_a_new_watch_silence(
        fake: FakeKube, make_server: StartServer, tmp_path: Path) -> None:
    server = start(make_server, fake, tmp_path, watch_silence=60.0)
    kube = server.app.kube
    assert kube is not None
    new = server.app.config.replace(watch_silence=5.0)
    asyncio.run_coroutine_threadsafe(server.app.apply_config(new), server.loop).result(10)
    assert server.app.kube is kube, "no relist: the source was kept"
    assert kube.config.watch_silence == 5.0
