"""The fake Kubernetes API server, exercised with the real ``kubernetes`` client.

Why: the live source's tests lean on ``tests/fakekube`` behaving like a kube-apiserver as
far as the real client library can tell -- pagination, selectors, watch replay,
bookmarks, 410s, TLS, tokens and injected faults. These tests pin that down with the
sync client (``kubernetes.client``) and the asyncio one (``kubernetes.aio``), so a failure
in a live-source test points at clusterdns, not at the fake.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.aio.client
import kubernetes.aio.config
import kubernetes.aio.watch
import pytest
import urllib3
from kubernetes import client as _client
from kubernetes import config as _config
from kubernetes import watch as _watch

from conftest import DEMO_CLUSTER, ROOT, free_port, serving_fake
from fakekube import CONTINUE_EXPIRED_MESSAGE, FakeKube, RequestRecord

# The client packages are only partly typed (untyped Watch and config helpers, Optional
# model fields everywhere); these tests use them dynamically, as a caller of the wire would.
client: Any = _client
config: Any = _config
watch: Any = _watch
aclient: Any = kubernetes.aio.client
aconfig: Any = kubernetes.aio.config
awatch: Any = kubernetes.aio.watch
ApiException: Any = _client.exceptions.ApiException

DEFAULT_SERVICES = ["dual", "empty-headless", "httpbin", "httpenv", "httpenv-headless",
                    "kubernetes", "queue", "rabbitmq", "svc-clusterip-httpd", "web",
                    "web-headless"]


def service(name: str, namespace: str = "default", **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.7.7", "clusterIPs": ["10.96.7.7"],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    with serving_fake(DEMO_CLUSTER, bookmark_interval=0.2) as server:
        yield server


@pytest.fixture
def api(fake: FakeKube) -> Iterator[Any]:
    cfg = client.Configuration()
    cfg.host = fake.url
    with client.ApiClient(cfg) as api_client:
        yield api_client


@pytest.fixture
def core(api: Any) -> Any:
    return client.CoreV1Api(api)


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A server SSL context for 127.0.0.1 and the CA file that trusts it (trustme)."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    return ctx, ca_path


def raw_get(fake: FakeKube, path: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(fake.url + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode()


def read_lines(resp: Any) -> list[dict[str, Any]]:
    """Every watch event on a raw (``_preload_content=False``) urllib3 response."""
    data = b"".join(resp.stream(amt=None, decode_content=False))
    resp.release_conn()
    return [json.loads(line) for line in data.splitlines() if line]


# ------------------------------------------------------------------------ lists


def test_a_paginated_list_with_the_sync_client_returns_every_service_once(core: Any) -> None:
    names: list[str] = []
    rvs: set[str] = set()
    remaining: list[int | None] = []
    token: str | None = None
    pages = 0
    while True:
        page = core.list_namespaced_service("default", limit=3, _continue=token)
        pages += 1
        names += [s.metadata.name for s in page.items]
        rvs.add(page.metadata.resource_version)
        remaining.append(page.metadata.remaining_item_count)
        token = page.metadata.var_continue
        if not token:
            break
    assert names == DEFAULT_SERVICES
    assert pages == 4
    assert len(rvs) == 1
    assert remaining == [8, 5, 2, None]


def test_a_continued_list_is_the_snapshot_taken_at_the_first_page(
        fake: FakeKube, core: Any) -> None:
    first = core.list_namespaced_service("default", limit=5)
    fake.apply(service("zzz-new"))
    fake.delete("Service", "default", "web")
    rest = core.list_namespaced_service("default", limit=100,
                                        _continue=first.metadata.var_continue)
    names = [s.metadata.name for s in first.items + rest.items]
    assert names == DEFAULT_SERVICES
    assert rest.metadata.resource_version == first.metadata.resource_version
    assert int(fake.resource_version) == int(first.metadata.resource_version) + 2
    fresh = [s.metadata.name for s in core.list_namespaced_service("default").items]
    assert "zzz-new" in fresh and "web" not in fresh


def test_raw_json_lists_carry_no_kind_on_items_and_are_sorted(fake: FakeKube, api: Any) -> None:
    resp = client.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces(
        _preload_content=False)
    body = json.loads(resp.data)
    assert body["kind"] == "EndpointSliceList"
    assert body["apiVersion"] == "discovery.k8s.io/v1"
    assert body["metadata"] == {"resourceVersion": fake.resource_version}
    keys = [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in body["items"]]
    assert keys == sorted(keys) and len(keys) == 11
    assert all("kind" not in i and "apiVersion" not in i for i in body["items"])
    assert all(i["metadata"]["resourceVersion"].isdigit() for i in body["items"])


def test_label_and_field_selectors_filter_lists(core: Any, api: Any) -> None:
    discovery = client.DiscoveryV1Api(api)
    web = discovery.list_endpoint_slice_for_all_namespaces(
        label_selector="kubernetes.io/service-name=web")
    assert [s.metadata.name for s in web.items] == ["web-6nqjx"]
    either = discovery.list_namespaced_endpoint_slice(
        "default", label_selector="kubernetes.io/service-name in (web, dual),"
                                  "endpointslice.kubernetes.io/managed-by")
    assert [s.metadata.name for s in either.items] == [
        "dual-ipv4-r8kqz", "dual-ipv6-t2wnm", "web-6nqjx"]
    unlabelled = core.list_service_for_all_namespaces(label_selector="!component,k8s-app!=x")
    assert "kubernetes" not in [s.metadata.name for s in unlabelled.items]
    assert "kube-dns" in [s.metadata.name for s in unlabelled.items]
    notin = core.list_pod_for_all_namespaces(label_selector="app notin (web,httpenv),app")
    assert {p.metadata.labels["app"] for p in notin.items} == {"dual", "rabbitmq"}
    by_name = core.list_service_for_all_namespaces(field_selector="metadata.name==kube-dns")
    assert [(s.metadata.namespace, s.metadata.name) for s in by_name.items] == [
        ("kube-system", "kube-dns")]
    not_default = core.list_pod_for_all_namespaces(
        field_selector="metadata.namespace!=default")
    assert {p.metadata.namespace for p in not_default.items} == {"kube-system"}


def test_a_selector_the_apiserver_would_reject_answers_400(core: Any) -> None:
    with pytest.raises(ApiException) as bad_field:
        core.list_service_for_all_namespaces(field_selector="spec.bogus=1")
    assert bad_field.value.status == 400
    assert json.loads(bad_field.value.body)["message"] == "field label not supported: spec.bogus"
    with pytest.raises(ApiException) as bad_label:
        core.list_service_for_all_namespaces(label_selector="a in (x")
    assert bad_label.value.status == 400


def test_an_expired_continue_token_answers_410(fake: FakeKube, core: Any) -> None:
    first = core.list_pod_for_all_namespaces(limit=2)
    fake.apply(service("bump"))
    fake.compact()
    with pytest.raises(ApiException) as err:
        core.list_pod_for_all_namespaces(limit=2, _continue=first.metadata.var_continue)
    assert err.value.status == 410
    body = json.loads(err.value.body)
    assert (body["reason"], body["code"], body["message"]) == (
        "Expired", 410, CONTINUE_EXPIRED_MESSAGE)
    assert body["message"].startswith("The provided continue parameter is too old")


def service_import(name: str, ip: str) -> dict[str, Any]:
    return {"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "ClusterSetIP", "ips": [ip],
                     "ports": [{"name": "http", "protocol": "TCP", "port": 80}]}}


def test_service_imports_are_listed_and_watched_at_their_crds_group_and_version(
        fake: FakeKube, api: Any) -> None:
    fake.apply(service_import("web", "10.42.0.1"))
    custom = client.CustomObjectsApi(api)
    listed = custom.list_cluster_custom_object("multicluster.x-k8s.io", "v1alpha1",
                                               "serviceimports")
    assert listed["kind"] == "ServiceImportList"
    assert [i["spec"]["ips"] for i in listed["items"]] == [["10.42.0.1"]]
    resources = client.ApisApi(api).get_api_versions().groups
    assert {g.name: g.preferred_version.version for g in resources}[
        "multicluster.x-k8s.io"] == "v1alpha1"
    stream = _watch.Watch().stream(
        custom.list_namespaced_custom_object, "multicluster.x-k8s.io", "v1alpha1", "default",
        "serviceimports", resource_version=listed["metadata"]["resourceVersion"],
        timeout_seconds=2)
    fake.apply(service_import("web", "10.42.0.2"))
    event = next(stream)
    assert (event["type"], event["object"]["spec"]["ips"]) == ("MODIFIED", ["10.42.0.2"])
    assert raw_get(fake, "/apis/multicluster.x-k8s.io/v1/serviceimports")[0] == 404


def test_an_uninstalled_crd_answers_404_page_not_found_until_installed_again(
        fake: FakeKube, api: Any) -> None:
    fake.apply(service_import("web", "10.42.0.1"))
    fake.uninstall("serviceimports")
    path = "/apis/multicluster.x-k8s.io/v1alpha1/namespaces/default/serviceimports"
    assert raw_get(fake, path) == (404, "404 page not found\n")
    groups = client.ApisApi(api).get_api_versions().groups
    assert [g.name for g in groups] == ["discovery.k8s.io"]
    fake.install("serviceimports")
    status, body = raw_get(fake, path)
    assert status == 200 and [i["metadata"]["name"] for i in body["items"]] == ["web"]


def test_get_one_object_and_a_404_status(core: Any) -> None:
    assert core.read_namespaced_service("web", "default").spec.cluster_ip
    assert core.read_namespace("prod").metadata.name == "prod"
    with pytest.raises(ApiException) as err:
        core.read_namespaced_service("nope", "default")
    assert err.value.status == 404
    assert json.loads(err.value.body)["message"] == 'services "nope" not found'


def test_discovery_documents_version_and_unknown_paths(fake: FakeKube, api: Any) -> None:
    assert client.VersionApi(api).get_code().major == "1"
    assert client.CoreApi(api).get_api_versions().versions == ["v1"]
    groups = client.ApisApi(api).get_api_versions().groups
    assert [g.name for g in groups] == ["discovery.k8s.io", "multicluster.x-k8s.io"]
    resources = client.CoreV1Api(api).get_api_resources().resources
    assert {r.name for r in resources} == {"namespaces", "services", "pods"}
    assert raw_get(fake, "/healthz") == (200, "ok")
    status, body = raw_get(fake, "/api/v1/configmaps")
    assert status == 404
    assert (body["kind"], body["reason"], body["code"]) == ("Status", "NotFound", 404)


# ------------------------------------------------------------------------ watches


def test_a_watch_replays_events_after_a_resource_version_then_streams_live_ones(
        fake: FakeKube, core: Any) -> None:
    start = fake.resource_version
    fake.apply(service("a1"))
    fake.apply(service("other", namespace="kube-system"))
    fake.apply({**service("a1"), "spec": {"clusterIP": "10.96.9.9"}})
    deleted_rv = fake.delete("Service", "default", "web")
    w = watch.Watch()
    seen: list[tuple[str, str, str]] = []
    for event in w.stream(core.list_namespaced_service, "default", resource_version=start,
                          allow_watch_bookmarks=True, timeout_seconds=5):
        if event["type"] == "BOOKMARK":
            continue
        obj = event["object"]
        seen.append((event["type"], obj.metadata.name, obj.metadata.resource_version))
        assert event["raw_object"]["kind"] == "Service"
        if len(seen) == 3:
            fake.apply(service("live"))  # delivered on the open stream
        if len(seen) == 4:
            w.stop()
    assert [(t, n) for t, n, _ in seen] == [
        ("ADDED", "a1"), ("MODIFIED", "a1"), ("DELETED", "web"), ("ADDED", "live")]
    assert seen[2][2] == deleted_rv
    rvs = [int(rv) for _, _, rv in seen]
    assert rvs == sorted(rvs) and rvs[0] > int(start)
    assert w.resource_version == fake.resource_version


def test_a_watch_without_resource_version_starts_with_synthetic_added_events(
        fake: FakeKube, core: Any) -> None:
    w = watch.Watch()
    names = []
    for event in w.stream(core.list_namespace, timeout_seconds=1):
        assert event["type"] == "ADDED"
        names.append(event["object"].metadata.name)
        if len(names) == 5:
            w.stop()
    assert names == ["default", "kube-node-lease", "kube-public", "kube-system", "prod"]


def test_a_selected_watch_turns_label_changes_into_added_and_deleted(
        fake: FakeKube, core: Any) -> None:
    start = fake.resource_version
    fake.apply(service("flip", tier="front"))
    fake.apply(service("flip", tier="back"))
    fake.apply(service("flip", tier="front"))
    fake.apply(service("flip", tier="front", extra="1"))
    resp = core.list_namespaced_service("default", watch=True, resource_version=start,
                                        label_selector="tier=front", timeout_seconds=1,
                                        _preload_content=False)
    events = read_lines(resp)
    assert [e["type"] for e in events] == ["ADDED", "DELETED", "ADDED", "MODIFIED"]
    assert events[1]["object"]["metadata"]["labels"] == {"tier": "front"}  # before it left
    assert [int(e["object"]["metadata"]["resourceVersion"]) for e in events] == [
        int(start) + i for i in (1, 2, 3, 4)]


def test_a_watch_from_a_compacted_resource_version_gets_one_410_error_event(
        fake: FakeKube, core: Any) -> None:
    old = fake.resource_version
    fake.apply(service("after"))
    fake.compact()
    resp = core.list_namespaced_service("default", watch=True, resource_version=old,
                                        _preload_content=False)
    assert resp.status == 200
    events = read_lines(resp)  # the stream ends by itself after the error
    assert events == [{"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": f"too old resource version: {old} ({fake.resource_version})",
        "reason": "Expired", "code": 410}}]
    with pytest.raises(ApiException) as err:
        for _ in watch.Watch().stream(core.list_namespaced_service, "default",
                                      resource_version=old, timeout_seconds=1):
            pass
    assert err.value.status == 410
    # a watch from the compaction point itself is fine
    fresh = core.list_namespaced_service("default", watch=True, timeout_seconds=1,
                                         resource_version=fake.resource_version,
                                         _preload_content=False)
    assert read_lines(fresh) == []


def test_bookmarks_arrive_with_the_current_resource_version(fake: FakeKube, core: Any) -> None:
    w = watch.Watch()
    bookmarks = []
    started = time.monotonic()
    for event in w.stream(core.list_namespaced_service, "default",
                          resource_version=fake.resource_version,
                          allow_watch_bookmarks=True, timeout_seconds=3):
        assert event["type"] == "BOOKMARK"
        assert event["raw_object"] == {"kind": "Service", "apiVersion": "v1",
                                       "metadata": {"resourceVersion": fake.resource_version}}
        bookmarks.append(time.monotonic() - started)
        if len(bookmarks) == 3:
            w.stop()
    assert 0.4 < bookmarks[-1] < 2.0
    assert w.resource_version == fake.resource_version


def test_timeout_seconds_ends_the_stream_cleanly(fake: FakeKube, core: Any) -> None:
    started = time.monotonic()
    events = list(watch.Watch().stream(core.list_namespace,
                                       resource_version=fake.resource_version,
                                       timeout_seconds=1))
    elapsed = time.monotonic() - started
    assert events == []
    assert 0.9 < elapsed < 2.5
    assert fake.watch_count == 0


def test_dropped_watches_break_the_stream_mid_read(fake: FakeKube, core: Any) -> None:
    resp = core.list_namespaced_service("default", watch=True, _preload_content=False,
                                        resource_version=fake.resource_version)
    fake.wait_for_watches(1)
    fake.drop_watches()
    assert fake.watch_count == 0
    with pytest.raises(urllib3.exceptions.ProtocolError):
        read_lines(resp)


def test_ended_watches_finish_cleanly_and_the_client_can_resume(
        fake: FakeKube, core: Any) -> None:
    rv = fake.resource_version
    resp = core.list_namespaced_service("default", watch=True, _preload_content=False,
                                        resource_version=rv)
    fake.wait_for_watches(1)
    fake.apply(service("before-end"))
    fake.end_watches()
    events = read_lines(resp)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "before-end")]


async def test_stalled_watches_send_nothing_until_unstalled(fake: FakeKube) -> None:
    cfg = aclient.Configuration(host=fake.url)
    async with aclient.ApiClient(cfg) as api:
        core = aclient.CoreV1Api(api)
        rv = fake.resource_version
        fake.stall_watches(True)
        resp = await core.list_namespaced_service_without_preload_content(
            "default", watch=True, resource_version=rv, allow_watch_bookmarks=True)
        assert resp.status == 200  # headers arrive; the body does not
        fake.apply(service("held"))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(resp.content.readline(), 0.5)  # > bookmark interval
        fake.stall_watches(False)
        line = await asyncio.wait_for(resp.content.readline(), 2)
        event = json.loads(line)
        assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "held")
        resp.release()


async def test_events_missed_while_stalled_are_replayed_after_reconnecting(
        fake: FakeKube) -> None:
    cfg = aclient.Configuration(host=fake.url)
    async with aclient.ApiClient(cfg) as api:
        core = aclient.CoreV1Api(api)
        rv = fake.resource_version
        fake.stall_watches(True)
        stuck = await core.list_namespaced_service_without_preload_content(
            "default", watch=True, resource_version=rv)
        await asyncio.to_thread(fake.wait_for_watches, 1)
        fake.apply(service("missed"))
        stuck.close()  # the client gives up on the silent stream ...
        await asyncio.sleep(0.1)
        fake.stall_watches(False)
        names = []
        w = awatch.Watch()
        async with w.stream(core.list_namespaced_service, "default", resource_version=rv,
                            timeout_seconds=1) as stream:
            async for event in stream:
                names.append(event["object"].metadata.name)
        assert names == ["missed"]  # ... and replays it from its last RV


# ------------------------------------------------------------------------ asyncio client


async def test_the_asyncio_client_paginates_and_watches(fake: FakeKube) -> None:
    cfg = aclient.Configuration(host=fake.url)
    async with aclient.ApiClient(cfg) as api:
        core = aclient.CoreV1Api(api)
        names: list[str] = []
        token = None
        while True:
            page = await core.list_pod_for_all_namespaces(limit=4, _continue=token)
            names += [p.metadata.name for p in page.items]
            token = page.metadata.var_continue
            if not token:
                break
        assert len(names) == 18 and names[-1].startswith("coredns-")
        raw = await core.list_namespace_without_preload_content()
        body = await raw.json()
        assert body["kind"] == "NamespaceList" and "kind" not in body["items"][0]

        rv = page.metadata.resource_version
        fake.apply(service("async-one"))
        seen = []
        async with awatch.Watch().stream(core.list_namespaced_service, "default",
                                         resource_version=rv, allow_watch_bookmarks=True,
                                         timeout_seconds=1) as stream:
            async for event in stream:
                seen.append((event["type"], event["raw_object"]["metadata"]))
        assert seen[0][0] == "ADDED" and seen[0][1]["name"] == "async-one"
        assert {t for t, _ in seen[1:]} <= {"BOOKMARK"} and len(seen) >= 3


async def test_the_asyncio_watch_raises_410_after_compaction(fake: FakeKube) -> None:
    cfg = aclient.Configuration(host=fake.url)
    async with aclient.ApiClient(cfg) as api:
        core = aclient.CoreV1Api(api)
        old = fake.resource_version
        fake.apply(service("x"))
        fake.compact()
        with pytest.raises(aclient.exceptions.ApiException) as err:
            async with awatch.Watch().stream(core.list_namespaced_service, "default",
                                             resource_version=old,
                                             timeout_seconds=1) as stream:
                async for _ in stream:
                    pass
        assert err.value.status == 410
        assert "too old resource version" in err.value.reason


async def test_the_asyncio_client_gets_403_when_forbidden(fake: FakeKube) -> None:
    fake.forbid("endpointslices")
    cfg = aclient.Configuration(host=fake.url)
    async with aclient.ApiClient(cfg) as api:
        discovery = aclient.DiscoveryV1Api(api)
        with pytest.raises(aclient.exceptions.ApiException) as err:
            await discovery.list_endpoint_slice_for_all_namespaces()
        assert err.value.status == 403
        with pytest.raises(aclient.exceptions.ApiException) as watch_err:
            async with awatch.Watch().stream(discovery.list_endpoint_slice_for_all_namespaces,
                                             timeout_seconds=1) as stream:
                async for _ in stream:
                    pass
        assert watch_err.value.status == 403
        fake.allow("endpointslices")
        assert len((await discovery.list_endpoint_slice_for_all_namespaces()).items) == 11


async def test_the_asyncio_client_loads_a_tls_kubeconfig_with_a_token(
        tmp_path: Path, tls_files: tuple[ssl.SSLContext, Path]) -> None:
    ctx, ca_path = tls_files
    with FakeKube(ssl_context=ctx, token="s3cret") as fake:
        fake.apply(service("tls"))
        kubeconfig = fake.write_kubeconfig(tmp_path / "kc", ca_path=ca_path)
        cfg = aclient.Configuration()
        await aconfig.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        async with aclient.ApiClient(cfg) as api:
            page = await aclient.CoreV1Api(api).list_service_for_all_namespaces()
        assert [s.metadata.name for s in page.items] == ["tls"]
        assert fake.url.startswith("https://127.0.0.1:")


# ------------------------------------------------------------------------ TLS, auth, faults


def test_tls_and_token_through_a_kubeconfig_with_the_sync_client(
        tmp_path: Path, tls_files: tuple[ssl.SSLContext, Path]) -> None:
    ctx, ca_path = tls_files
    with FakeKube(ssl_context=ctx, token="s3cret") as fake:
        fake.load_yaml(DEMO_CLUSTER)
        kubeconfig = fake.write_kubeconfig(tmp_path / "kc", context="fake", ca_path=ca_path)
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        assert cfg.host == fake.url and cfg.ssl_ca_cert
        with client.ApiClient(cfg) as api:
            core = client.CoreV1Api(api)
            assert len(core.list_namespace().items) == 5
            events = list(watch.Watch().stream(core.list_namespace, timeout_seconds=1))
            assert len(events) == 5
            fake.token = "rotated"
            with pytest.raises(ApiException) as err:
                core.list_namespace()
            assert err.value.status == 401
            # load_kube_config installs a refresh hook that re-applies the token it read
            # on every request, so rotating means loading the kubeconfig again.
            fake.write_kubeconfig(kubeconfig, ca_path=ca_path)
            config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
            assert len(core.list_namespace().items) == 5
        assert fake.requests[-2].status == 401


def test_a_missing_or_wrong_token_gets_a_401_status(fake: FakeKube, core: Any) -> None:
    fake.set_token("right")
    with pytest.raises(ApiException) as err:
        core.list_namespace()
    assert err.value.status == 401
    assert json.loads(err.value.body) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "Unauthorized", "reason": "Unauthorized", "code": 401}
    assert raw_get(fake, "/api/v1/namespaces", token="wrong")[0] == 401
    assert raw_get(fake, "/api/v1/namespaces", token="right")[0] == 200


def test_a_forbidden_resource_answers_403_with_the_apiserver_message(
        fake: FakeKube, api: Any) -> None:
    fake.forbid("endpointslices")
    discovery = client.DiscoveryV1Api(api)
    with pytest.raises(ApiException) as err:
        discovery.list_endpoint_slice_for_all_namespaces()
    body = json.loads(err.value.body)
    assert err.value.status == 403 and body["reason"] == "Forbidden"
    assert body["message"] == (
        'endpointslices.discovery.k8s.io is forbidden: User '
        '"system:serviceaccount:kube-system:clusterdns" cannot list resource '
        '"endpointslices" in API group "discovery.k8s.io" at the cluster scope')
    with pytest.raises(ApiException) as namespaced:
        discovery.list_namespaced_endpoint_slice("default", watch=True, _preload_content=False)
    assert json.loads(namespaced.value.body)["message"].endswith(
        'cannot watch resource "endpointslices" in API group "discovery.k8s.io" '
        'in the namespace "default"')
    assert client.CoreV1Api(api).list_namespace().items  # other resources still fine
    fake.allow("endpointslices")
    assert len(discovery.list_endpoint_slice_for_all_namespaces().items) == 11


def test_fail_next_429_shows_retry_after_on_the_api_exception(fake: FakeKube) -> None:
    fake.fail_next(2, 429, retry_after=3, path_contains="/services")
    cfg = client.Configuration()
    cfg.host = fake.url
    cfg.retries = False  # else urllib3 itself sleeps Retry-After and retries (next test)
    with client.ApiClient(cfg) as api:
        core = client.CoreV1Api(api)
        core.list_namespace()  # not matching: unaffected
        for _ in range(2):
            with pytest.raises(ApiException) as err:
                core.list_service_for_all_namespaces()
            assert err.value.status == 429
            assert err.value.headers["Retry-After"] == "3"
            body = json.loads(err.value.body)
            assert body["reason"] == "TooManyRequests"
            assert body["details"] == {"retryAfterSeconds": 3}
        assert len(core.list_service_for_all_namespaces().items) == 12
    assert [r.status for r in fake.requests] == [200, 429, 429, 200]


def test_the_sync_client_silently_honours_retry_after_on_429_and_503(
        fake: FakeKube, core: Any) -> None:
    # urllib3's default Retry (3 tries) sleeps Retry-After and retries 413/429/503 GETs.
    fake.fail_next(2, 429, retry_after=0)
    assert len(core.list_namespace().items) == 5
    assert [r.status for r in fake.requests] == [429, 429, 200]
    fake.clear_log()
    fake.fail_next(5, 503, retry_after=0)
    with pytest.raises(ApiException) as exhausted:  # 1 try + 3 retries, then the 503
        core.list_namespace()
    assert exhausted.value.status == 503
    assert [r.status for r in fake.requests] == [503] * 4
    fake.clear_faults()
    fake.fail_next(1, 429)  # no Retry-After header: no silent retry
    with pytest.raises(ApiException) as err:
        core.list_namespace()
    assert err.value.status == 429 and "Retry-After" not in err.value.headers


async def test_the_asyncio_client_shows_retry_after_on_the_api_exception(
        fake: FakeKube) -> None:
    fake.fail_next(1, 429, retry_after=2)
    async with aclient.ApiClient(aclient.Configuration(host=fake.url)) as api:
        with pytest.raises(aclient.exceptions.ApiException) as err:
            await aclient.CoreV1Api(api).list_namespace()
    assert err.value.status == 429
    assert err.value.headers["Retry-After"] == "2"


def test_fail_next_5xx_applies_to_watches_too(fake: FakeKube, core: Any) -> None:
    fake.fail_next(1, 503, path_contains="watch=true")
    core.list_namespace()
    with pytest.raises(ApiException) as err:
        core.list_namespace(watch=True, timeout_seconds=1, _preload_content=False)
    assert err.value.status == 503
    fake.fail_next(1, 500)
    with pytest.raises(ApiException) as err500:
        core.list_namespace()
    assert err500.value.status == 500
    assert json.loads(err500.value.body)["reason"] == "InternalError"


def test_the_server_restarts_on_the_same_port_keeping_its_state(
        fake: FakeKube, core: Any) -> None:
    port, rv = fake.port, fake.resource_version
    resp = core.list_namespaced_service("default", watch=True, _preload_content=False,
                                        resource_version=rv)
    fake.wait_for_watches(1)
    fake.stop()
    assert not fake.running
    with pytest.raises(urllib3.exceptions.ProtocolError):
        read_lines(resp)  # the open watch was cut
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        core.list_namespace(_request_timeout=1)
    fake.apply(service("while-down"))  # mutations work while stopped
    fake.start()
    assert fake.port == port
    assert int(fake.resource_version) == int(rv) + 1
    events = list(watch.Watch().stream(core.list_namespaced_service, "default",
                                       resource_version=rv, timeout_seconds=1))
    assert [e["object"].metadata.name for e in events] == ["while-down"]


# ------------------------------------------------------------------------ loading, log, CLI


def test_load_yaml_reads_the_demo_cluster_dump_with_fresh_resource_versions() -> None:
    fake = FakeKube()
    assert fake.load_yaml(DEMO_CLUSTER) == 46
    assert fake.resource_version == "46"
    web = fake.get("svc", "default", "web")
    assert web is not None and web["kind"] == "Service"
    assert web["metadata"]["uid"] and web["metadata"]["resourceVersion"].isdigit()
    assert fake.get("Namespace", None, "prod") is not None
    assert fake.get("Service", "default", "missing") is None
    with pytest.raises(KeyError):
        fake.delete("Service", "default", "missing")


def test_bulk_load_of_ten_thousand_services_and_big_slices_lists_them_all_in_pages(
        api: Any) -> None:
    fake = FakeKube()
    services = [service(f"svc-{i:05d}", namespace=f"ns-{i % 50}") for i in range(10_000)]
    slices = [{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": f"slice-{i:04d}", "namespace": f"ns-{i % 50}",
                            "labels": {"kubernetes.io/service-name": f"svc-{i:05d}"}},
               "addressType": "IPv4",
               "endpoints": [{"addresses": [f"10.{i // 256}.{i % 256}.{j}"],
                              "conditions": {"ready": True}} for j in range(100)],
               "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
              for i in range(1000)]
    assert fake.bulk_load(services + slices) == 11_000
    with fake:
        cfg = client.Configuration()
        cfg.host = fake.url
        with client.ApiClient(cfg) as api_client:
            core = client.CoreV1Api(api_client)
            discovery = client.DiscoveryV1Api(api_client)
            count, token = 0, None
            while True:
                resp = core.list_service_for_all_namespaces(limit=1000, _continue=token,
                                                            _preload_content=False)
                body = json.loads(resp.data)
                count += len(body["items"])
                token = body["metadata"].get("continue")
                if not token:
                    break
            slices_body = json.loads(discovery.list_endpoint_slice_for_all_namespaces(
                limit=500, _preload_content=False).data)
    assert count == 10_000
    assert len(slices_body["items"]) == 500 and slices_body["metadata"]["remainingItemCount"]
    # (How fast this is, is bench/kube_sync.py's business, not a test's.)


def test_the_request_log_records_method_path_query_status_and_watch(
        fake: FakeKube, core: Any) -> None:
    fake.clear_log()
    before = time.monotonic()
    core.list_namespaced_pod("kube-system", limit=1)
    list(watch.Watch().stream(core.list_namespace, resource_version=fake.resource_version,
                              timeout_seconds=1))
    log = fake.requests
    assert len(log) == 2
    first, second = log
    assert isinstance(first, RequestRecord)
    assert (first.method, first.path, first.query, first.status, first.watch) == (
        "GET", "/api/v1/namespaces/kube-system/pods", {"limit": "1"}, 200, False)
    assert second.watch and second.path == "/api/v1/namespaces"
    assert second.query["watch"] == "true" and second.query["timeoutSeconds"] == "1"
    assert before <= first.time <= second.time
    with pytest.raises(AttributeError):
        first.status = 500  # type: ignore[misc]
    fake.clear_log()
    assert fake.requests == []


def test_write_kubeconfig_for_plain_http_loads_with_the_client(
        fake: FakeKube, tmp_path: Path) -> None:
    kubeconfig = fake.write_kubeconfig(tmp_path / "kc", context="plain")
    _contexts, current = config.list_kube_config_contexts(config_file=str(kubeconfig))
    assert current["name"] == "plain"
    api = config.new_client_from_config(config_file=str(kubeconfig))
    with api:
        assert len(client.CoreV1Api(api).list_namespace().items) == 5


@contextlib.contextmanager
def fakekube_command(kubeconfig: Path) -> Iterator[str]:
    """``python -m tests.fakekube`` serving the demo dump; yields what it printed up to
    its "Ctrl-C to stop." line, and checks that it exits 0 on SIGTERM."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakekube", "--load", str(DEMO_CLUSTER),
         "--port", str(port), "--kubeconfig", str(kubeconfig)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C" in line:
                break
        text = "".join(lines)
        assert f"http://127.0.0.1:{port}" in text, text
        yield text
    finally:
        proc.terminate()
        code = proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == 0


def test_the_command_line_serves_a_dump_and_writes_a_kubeconfig(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "fk.kubeconfig"
    with fakekube_command(kubeconfig) as text:
        assert "clusterdns serve --source kubernetes --kubeconfig" in text
        api = config.new_client_from_config(config_file=str(kubeconfig))
        with api:
            assert len(client.CoreV1Api(api).list_service_for_all_namespaces().items) == 12


# ------------------------------------------------------------------------ kubectl


def kubectl(kubeconfig: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real kubectl (CI installs kubernetes-client), with its discovery cache in a
    fresh HOME so every run asks the fake's discovery documents again."""
    path = shutil.which("kubectl")
    assert path is not None, "kubectl is not installed (apt-get install -y kubernetes-client)"
    env = {**os.environ, "HOME": str(home), "KUBECACHEDIR": str(home / "cache")}
    env.pop("KUBECONFIG", None)
    return subprocess.run([path, "--kubeconfig", str(kubeconfig), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30, check=False, env=env)


def test_the_kubectl_command_the_fake_prints_lists_every_service(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "fk.kubeconfig"
    with fakekube_command(kubeconfig) as text:
        (hint,) = [line.strip() for line in text.splitlines()
                   if line.strip().startswith("kubectl ")]
        args = shlex.split(hint)
        assert args[:3] == ["kubectl", "--kubeconfig", str(kubeconfig)], hint
        result = kubectl(kubeconfig, tmp_path, *args[3:])
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows[0][:2] == ["NAMESPACE", "NAME"], result.stdout
    assert sorted(row[1] for row in rows[1:] if row[0] == "default") == DEFAULT_SERVICES
    assert ["kube-system", "kube-dns"] in [row[:2] for row in rows[1:]]


@pytest.mark.parametrize(("resource", "kind", "count"), [
    ("svc", "service", 12), ("services", "service", 12), ("ns", "namespace", 5),
    ("po", "pod", 18), ("endpointslices", "endpointslice.discovery.k8s.io", 11),
    ("endpointslices.discovery.k8s.io", "endpointslice.discovery.k8s.io", 11),
])
def test_kubectl_finds_every_resource_by_its_name_and_short_name(
        fake: FakeKube, tmp_path: Path, resource: str, kind: str, count: int) -> None:
    kubeconfig = fake.write_kubeconfig(tmp_path / "kc")
    result = kubectl(kubeconfig, tmp_path, "get", resource, "-A", "-o", "name")
    assert result.returncode == 0, result.stderr
    names = result.stdout.split()
    assert len(names) == count, names
    assert all(name.startswith(f"{kind}/") for name in names), names


def test_kubectl_reads_one_service_s_field_and_everything_in_a_namespace(
        fake: FakeKube, tmp_path: Path) -> None:
    kubeconfig = fake.write_kubeconfig(tmp_path / "kc")
    one = kubectl(kubeconfig, tmp_path, "get", "svc", "httpenv", "-n", "default",
                  "-o", "jsonpath={.spec.clusterIP}")
    assert (one.returncode, one.stdout) == (0, "10.108.189.10"), one.stderr
    every = kubectl(kubeconfig, tmp_path, "get", "all", "-n", "kube-system", "-o", "name")
    assert every.returncode == 0, every.stderr
    assert "service/kube-dns" in every.stdout.split()
    assert all(name.split("/")[0] in ("service", "pod") for name in every.stdout.split())
    missing = kubectl(kubeconfig, tmp_path, "get", "svc", "nope", "-n", "default")
    assert missing.returncode == 1
    assert 'services "nope" not found' in missing.stderr
