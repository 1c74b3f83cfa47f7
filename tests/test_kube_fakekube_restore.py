"""The fake API server's restore, exercised with the real ``kubernetes`` client.

Why: the live source's tests of a resourceVersion that goes backwards (an etcd backup
restored, a new cluster at the same address) rely on ``FakeKube.restore`` winding its
history back and on each way it then answers a watch from the client's now-future
resourceVersion (``TOO_NEW_MODES``): the 504 ``ResourceVersionTooLarge`` Status, that
Status as an ERROR event, bookmarks carrying the server's lower version, or nothing at
all. These tests pin those answers down on the wire, so a failure in a live-source test
points at clusterdns, not at the fake.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes.aio.client
import pytest
import urllib3
from kubernetes import client as _client
from test_fakekube import service

from conftest import DEMO_CLUSTER, serving_fake
from fakekube import TOO_LARGE_MESSAGE, FakeKube, too_large_status

# Partly typed packages: used dynamically, as a caller of the wire would.
client: Any = _client
aclient: Any = kubernetes.aio.client
ApiException: Any = _client.exceptions.ApiException


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    with serving_fake(DEMO_CLUSTER, bookmark_interval=0.2) as server:
        yield server


@pytest.fixture
def core(fake: FakeKube) -> Iterator[Any]:
    cfg = client.Configuration()
    cfg.host = fake.url
    with client.ApiClient(cfg) as api_client:
        yield client.CoreV1Api(api_client)


def service_names(core: Any) -> list[str]:
    return sorted(s.metadata.name for s in core.list_namespaced_service("default").items)


async def events_within(fake: FakeKube, rv: str, seconds: float,
                        then: Callable[[], object] = lambda: None) -> list[dict[str, Any]]:
    """The events of a watch from ``rv`` (with bookmarks) in its first ``seconds``, read
    with the asyncio client; ``then`` runs once the stream is open."""
    loop = asyncio.get_running_loop()
    async with aclient.ApiClient(aclient.Configuration(host=fake.url)) as api:
        resp = await aclient.CoreV1Api(api).list_namespaced_service_without_preload_content(
            "default", watch=True, resource_version=rv, allow_watch_bookmarks=True,
            timeout_seconds=5)
        assert resp.status == 200
        await asyncio.to_thread(fake.wait_for_watches, 1)
        then()
        events: list[dict[str, Any]] = []
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            try:
                line = await asyncio.wait_for(resp.content.readline(), left)
            except TimeoutError:
                break
            if not line:
                break
            events.append(json.loads(line))
        resp.close()
    return events


def watch_from(core: Any, rv: str, timeout: int = 5) -> Any:
    return core.list_namespaced_service("default", watch=True, resource_version=rv,
                                        allow_watch_bookmarks=True, timeout_seconds=timeout,
                                        _preload_content=False)


def read_ok(resp: Any) -> list[dict[str, Any]]:
    assert resp.status == 200
    data = b"".join(resp.stream(amt=None, decode_content=False))
    resp.release_conn()
    return [json.loads(line) for line in data.splitlines() if line.strip()
            and json.loads(line)["type"] != "BOOKMARK"]


def test_a_restore_undoes_every_change_after_its_resource_version_and_lowers_the_counter(
        fake: FakeKube, core: Any) -> None:
    saved = fake.resource_version
    before = service_names(core)
    fake.apply(service("born-after"))
    fake.delete("Service", "default", "web")
    changed = service("httpenv")
    changed["spec"]["clusterIP"] = "10.96.99.99"
    fake.apply(changed)

    assert fake.restore(saved) == saved
    assert fake.resource_version == saved
    listed = core.list_namespaced_service("default")
    assert listed.metadata.resource_version == saved
    assert sorted(s.metadata.name for s in listed.items) == before
    httpenv = core.read_namespaced_service("httpenv", "default")
    assert httpenv.spec.cluster_ip == "10.108.189.10"
    assert int(fake.apply(service("born-after-restore"))) == int(saved) + 1


def test_a_restore_drops_every_open_watch_and_refuses_to_go_past_a_compaction(
        fake: FakeKube, core: Any) -> None:
    saved = fake.resource_version
    resp = watch_from(core, saved)
    fake.wait_for_watches(1)
    fake.apply(service("born-after"))
    fake.restore(saved)
    assert fake.watch_count == 0
    with pytest.raises(urllib3.exceptions.ProtocolError):
        b"".join(resp.stream(amt=None, decode_content=False))

    fake.apply(service("kept"))
    fake.compact()
    with pytest.raises(ValueError, match="cannot restore"):
        fake.restore(saved)
    with pytest.raises(ValueError, match="cannot restore"):
        fake.restore(int(fake.resource_version) + 1)


def test_after_a_restore_a_watch_from_a_newer_version_gets_a_504_too_large_status(
        fake: FakeKube, core: Any) -> None:
    saved = fake.resource_version
    fake.apply(service("born-after"))
    ours = fake.resource_version
    fake.restore(saved, too_new="status")
    with pytest.raises(ApiException) as err:
        watch_from(core, ours)
    assert err.value.status == 504
    assert err.value.headers["Retry-After"] == "1"
    body = json.loads(err.value.body)
    assert body == too_large_status(int(ours), int(saved))
    assert body["reason"] == "Timeout" and body["code"] == 504
    assert body["message"] == f"{TOO_LARGE_MESSAGE}: {ours}, current: {saved}"
    assert body["details"] == {"causes": [{"reason": "ResourceVersionTooLarge",
                                           "message": "Too large resource version"}],
                               "retryAfterSeconds": 1}
    assert read_ok(watch_from(core, saved, timeout=1)) == []  # its own version is fine


def test_after_a_restore_the_error_event_mode_ends_a_200_stream_with_that_status(
        fake: FakeKube, core: Any) -> None:
    saved = fake.resource_version
    fake.apply(service("born-after"))
    ours = fake.resource_version
    fake.restore(saved, too_new="error-event")
    resp = watch_from(core, ours)
    assert resp.status == 200
    events = read_ok(resp)  # the stream ends by itself after the error
    assert events == [{"type": "ERROR", "object": too_large_status(int(ours), int(saved))}]


async def test_after_a_restore_the_bookmarks_mode_sends_only_bookmarks_of_the_lower_version(
        fake: FakeKube) -> None:
    saved = fake.resource_version
    fake.apply(service("born-after"))
    ours = fake.resource_version
    fake.restore(saved, too_new="bookmarks")
    below: list[str] = []
    events = await events_within(fake, ours, 1.0,
                                 lambda: below.append(fake.apply(service("at-ours"))))
    assert below == [ours]  # the first change after the restore takes our version again
    assert len(events) >= 3, events
    assert all(e["type"] == "BOOKMARK" for e in events), events
    assert {e["object"]["metadata"]["resourceVersion"] for e in events} == {ours}

    past: list[str] = []
    events = await events_within(fake, ours, 0.6,
                                 lambda: past.append(fake.apply(service("past-ours"))))
    assert [(e["type"], e["object"]["metadata"]["resourceVersion"]) for e in events
            if e["type"] != "BOOKMARK"] == [("ADDED", past[0])]


async def test_after_a_restore_the_silent_mode_sends_nothing_until_it_passes_the_version(
        fake: FakeKube) -> None:
    saved = fake.resource_version
    for i in range(3):
        fake.apply(service(f"born-after-{i}"))
    ours = fake.resource_version
    fake.restore(saved, too_new="silent")
    events = await events_within(fake, ours, 1.0, lambda: fake.apply(service("below-ours")))
    assert events == []  # five bookmark intervals: not even a bookmark

    def catch_up() -> None:
        for i in range(3):
            fake.apply(service(f"catching-up-{i}"))
    events = await events_within(fake, ours, 1.0, catch_up)
    assert events and events[0]["type"] == "ADDED", events
    assert events[0]["object"]["metadata"]["name"] == "catching-up-2"
    assert len(events) > 1 and all(
        e["type"] == "BOOKMARK" and e["object"]["metadata"]["resourceVersion"]
        == fake.resource_version for e in events[1:]), events  # bookmarks again
