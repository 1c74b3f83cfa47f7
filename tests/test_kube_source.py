"""The live source end to end: the real ``kubernetes`` client against FakeKube, real DNS.

Each test starts ``tests/fakekube`` (real HTTP or HTTPS, the demo cluster or objects the
test creates) and a real clusterdns server whose ``KubeSource`` lists and watches it
with short timings (``FAST``), then asks DNS questions with dnspython. What is checked
is what a pod would see -- answers, NXDOMAIN vs NODATA vs SERVFAIL, extended errors --
plus what the API server saw (``FakeKube.requests``): pages, namespaces, selectors, 401s.

Expected values come from config/demo-cluster.yaml: httpenv (ClusterIP 10.108.189.10),
httpenv-headless (five ready endpoints), rabbitmq (headless, hostnames rabbitmq-0..2,
named port amqp 5672), kube-dns in kube-system (10.96.0.10).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import math
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rdtypes.IN.SRV
import pytest
import trustme
from kubernetes.aio.config.incluster_config import InClusterConfigLoader

from clusterdns.config import Config, SourceSpec
from clusterdns.source.kube import KubeSource, Tuning
from conftest import DEMO_CLUSTER, FAKE_BOOKMARK_INTERVAL, RunningServer, addresses
from fakekube import FakeKube, RequestRecord, iter_yaml_objects

NOERROR = dns.rcode.NOERROR
NXDOMAIN = dns.rcode.NXDOMAIN
SERVFAIL = dns.rcode.SERVFAIL
EDE_NOT_READY = 14

# Small pages (the demo cluster has 5 namespaces, 12 services, 11 EndpointSlices), short
# watches, a quick stall detector and a low backoff cap keep every test to a second or two.
FAST = Tuning(page_size=3, watch_timeout=4.0, inactivity_timeout=1.0, request_timeout=5.0,
              backoff_base=0.05, backoff_cap_early=0.5)
PROPAGATION = 1.0  # a change in the API server shows in DNS within this many seconds
SYNC_WITHIN = 5.0

HTTPENV = "httpenv.default.svc.cluster.local"
HTTPENV_HEADLESS = "httpenv-headless.default.svc.cluster.local"
HTTPENV_PODS = ["10.244.1.11", "10.244.1.12", "10.244.1.13", "10.244.2.21", "10.244.2.22"]
RABBITMQ = {"rabbitmq-0": "10.244.1.31", "rabbitmq-1": "10.244.2.32",
            "rabbitmq-2": "10.244.1.33"}

SERVICES_PATH = "/api/v1/services"
SLICES_PATH = "/apis/discovery.k8s.io/v1/endpointslices"
NAMESPACES_PATH = "/api/v1/namespaces"


# ----------------------------------------------------------------------------- objects


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}


def cluster_ip_service(name: str, ip: str, namespace: str = "default",
                       labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                     "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                     "selector": {"app": name}, "sessionAffinity": "None",
                     "internalTrafficPolicy": "Cluster",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP",
                                "targetPort": 8080}]},
            "status": {"loadBalancer": {}}}


def endpoint_slice(name: str, service: str, endpoints: list[tuple[str, bool]],
                   namespace: str = "default", port: int = 8888) -> dict[str, Any]:
    """An EndpointSlice as the controller writes it; ``endpoints`` is (IP, ready) pairs."""
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "addressType": "IPv4",
            "metadata": {"name": name, "namespace": namespace, "generateName": f"{service}-",
                         "labels": {"kubernetes.io/service-name": service,
                                    "endpointslice.kubernetes.io/managed-by":
                                        "endpointslice-controller.k8s.io"},
                         "annotations": {"endpoints.kubernetes.io/last-change-trigger-time":
                                         datetime.datetime.now(datetime.UTC)
                                         .strftime("%Y-%m-%dT%H:%M:%SZ")},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Service",
                                              "name": service, "controller": True,
                                              "blockOwnerDeletion": True}]},
            "endpoints": [{"addresses": [ip],
                           "conditions": {"ready": ready, "serving": ready,
                                          "terminating": False},
                           "nodeName": "kind-worker",
                           "targetRef": {"kind": "Pod", "namespace": namespace,
                                         "name": f"{service}-{ip.replace('.', '-')}"}}
                          for ip, ready in endpoints],
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}


# ----------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Tls:
    context: ssl.SSLContext  # server side, for FakeKube
    ca_path: Path  # the CA that signed it, for kubeconfig / in-cluster ca.crt


# Tests take the FakeKube fixture *before* ``make_server``, so pytest tears the clusterdns
# server down first: its watches are then cancelled while the API server is still up, as
# in a real shutdown, instead of racing the API server's connections going away.


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    ca_path = tmp_path / "ca.crt"
    ca.cert_pem.write_to_path(str(ca_path))
    return Tls(ctx, ca_path)


@pytest.fixture
def tls_fake(tls: Tls) -> Iterator[FakeKube]:
    """An HTTPS FakeKube with the demo cluster that wants ``Bearer s3cret``."""
    server = FakeKube(ssl_context=tls.context, token="s3cret",
                      bookmark_interval=FAKE_BOOKMARK_INTERVAL)
    server.load_yaml(DEMO_CLUSTER)
    server.start()
    try:
        yield server
    finally:
        server.close()


def fast_source(**kwargs: Any) -> Callable[[Config], KubeSource]:
    def build(cfg: Config) -> KubeSource:
        return KubeSource(cfg, tuning=FAST, **kwargs)
    return build


def start_kube(make_server: Callable[..., RunningServer], kubeconfig: Path | None,
               kube: Callable[[Config], KubeSource] | None = None,
               **changes: Any) -> RunningServer:
    """A clusterdns server on the live source (kubeconfig "" means in-cluster)."""
    return make_server(source=SourceSpec("kubernetes"),
                       kubeconfig=str(kubeconfig) if kubeconfig else "",
                       kube=kube or fast_source(), **changes)


# ----------------------------------------------------------------------------- polling


def ede_list(msg: dns.message.Message) -> list[tuple[int, str]]:
    return [(int(opt.code), opt.text or "") for opt in msg.extended_errors()]


def eventually(server: RunningServer, name: str, rdtype: str,
               ok: Callable[[dns.message.Message], bool], *, within: float,
               since: float | None = None) -> dns.message.Message:
    """Ask until ``ok(reply)``; fail with the last reply once ``within`` s have passed
    (counted from ``since``, a ``time.monotonic()`` taken before the change)."""
    deadline = (time.monotonic() if since is None else since) + within
    while True:
        msg = server.ask(name, rdtype, timeout=1.0)
        if ok(msg):
            return msg
        if time.monotonic() >= deadline:
            pytest.fail(f"{name} {rdtype}: not as expected within {within} s; "
                        f"last reply:\n{msg.to_text()}")
        time.sleep(0.01)


def wait_until(condition: Callable[[], bool], what: str, within: float = SYNC_WITHIN) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}")
        time.sleep(0.01)


def a_records(expected: list[str]) -> Callable[[dns.message.Message], bool]:
    want = sorted(expected)
    return lambda msg: msg.rcode() == NOERROR and sorted(addresses(msg)) == want


def nxdomain(msg: dns.message.Message) -> bool:
    return msg.rcode() == NXDOMAIN and not msg.answer


def nodata(msg: dns.message.Message) -> bool:
    return msg.rcode() == NOERROR and not msg.answer


def synced(msg: dns.message.Message) -> bool:
    return msg.rcode() == NOERROR


def wait_synced(server: RunningServer, within: float = SYNC_WITHIN) -> None:
    """The apex SOA is SERVFAIL until the first complete sync, NOERROR after."""
    eventually(server, "cluster.local", "SOA", synced, within=within)


def assert_unsynced(msg: dns.message.Message, what: str) -> None:
    assert msg.rcode() == SERVFAIL, f"{what}: {msg.to_text()}"
    assert not msg.answer, f"{what}: {msg.to_text()}"
    eds = ede_list(msg)
    assert len(eds) == 1, f"{what}: {msg.to_text()}"
    code, text = eds[0]
    assert code == EDE_NOT_READY, f"{what}: {msg.to_text()}"
    assert "not synced" in text, f"{what}: {msg.to_text()}"


def list_requests(fake: FakeKube, path: str) -> list[RequestRecord]:
    return [r for r in fake.requests if r.path == path and not r.watch]


def watch_requests(fake: FakeKube, path: str) -> list[RequestRecord]:
    return [r for r in fake.requests if r.path == path and r.watch]


# ----------------------------------------------------------------------------- 1. sync


def test_the_first_sync_lists_every_kind_in_pages_then_answers_from_the_cluster(
        fake: FakeKube, make_server: Callable[..., RunningServer], tmp_path: Path) -> None:
    server = start_kube(make_server, fake.write_kubeconfig(tmp_path / "kubeconfig"))
    wait_synced(server)

    wait_until(lambda: all(watch_requests(fake, p)
                           for p in (NAMESPACES_PATH, SERVICES_PATH, SLICES_PATH)),
               "a watch on every kind")
    counts = Counter(str(o["kind"]) for o in iter_yaml_objects(DEMO_CLUSTER))
    for path, kind in ((NAMESPACES_PATH, "Namespace"), (SERVICES_PATH, "Service"),
                       (SLICES_PATH, "EndpointSlice")):
        assert counts[kind] > FAST.page_size
        pages = list_requests(fake, path)
        # One complete paginated list per kind: ceil(n / limit) pages, every one asking
        # for ``limit``, every page after the first continuing the previous one.
        assert len(pages) == math.ceil(counts[kind] / FAST.page_size), pages
        assert all(p.status == 200 for p in pages), pages
        assert all(p.query.get("limit") == str(FAST.page_size) for p in pages), pages
        assert "continue" not in pages[0].query
        assert all(p.query.get("continue") for p in pages[1:]), pages
        # ... then a watch from the list's resourceVersion, with bookmarks.
        watch = watch_requests(fake, path)[0]
        assert watch.query.get("resourceVersion")
        assert watch.query.get("allowWatchBookmarks") == "true"
    assert not [r for r in fake.requests if "/pods" in r.path]  # pods mode is not verified

    assert addresses(server.ask(HTTPENV)) == ["10.108.189.10"]
    headless = server.ask(HTTPENV_HEADLESS)
    assert headless.rcode() == NOERROR
    assert sorted(addresses(headless)) == HTTPENV_PODS
    srv = server.ask("_amqp._tcp.rabbitmq.default.svc.cluster.local", "SRV")
    assert srv.rcode() == NOERROR
    records = [rd for rrset in srv.answer if rrset.rdtype == dns.rdatatype.SRV
               for rd in rrset]
    assert all(isinstance(rd, dns.rdtypes.IN.SRV.SRV) for rd in records)
    assert {(rd.priority, rd.weight, rd.port) for rd in records} == {(0, 33, 5672)}
    assert {rd.target.to_text() for rd in records} == {
        f"{host}.rabbitmq.default.svc.cluster.local." for host in RABBITMQ}
    assert addresses(server.ask("rabbitmq-1.rabbitmq.default.svc.cluster.local")) == [
        RABBITMQ["rabbitmq-1"]]
    ptr = server.ask("10.189.108.10.in-addr.arpa", "PTR")
    assert [rd.to_text() for rrset in ptr.answer for rd in rrset] == [f"{HTTPENV}."]
    assert nxdomain(server.ask("nope.default.svc.cluster.local"))


def _forbid_slices(fake: FakeKube) -> Callable[[], None]:
    fake.forbid("endpointslices")
    return lambda: fake.allow("endpointslices")


def _fail_slices(fake: FakeKube) -> Callable[[], None]:
    fake.fail_next(100_000, 503, path_contains="endpointslices")
    return fake.clear_faults


UNSYNCED_QUESTIONS = [
    (HTTPENV, "A"),  # exists
    (HTTPENV_HEADLESS, "A"),  # exists, its endpoints are what is missing
    ("nope.default.svc.cluster.local", "A"),  # does not exist
    ("nope.nope.svc.cluster.local", "A"),  # nor does its namespace
    ("default.svc.cluster.local", "A"),  # an empty non-terminal
    ("httpenv.default.svc.cluster.local", "AAAA"),  # would be NODATA
    ("10.189.108.10.in-addr.arpa", "PTR"),
    ("cluster.local", "SOA"),
]


@pytest.mark.parametrize("block", [_forbid_slices, _fail_slices],
                         ids=["403 forbidden", "503 unavailable"])
def test_until_every_kind_has_listed_names_in_the_zone_are_servfail_never_nxdomain(
        fake: FakeKube, make_server: Callable[..., RunningServer], tmp_path: Path,
        block: Callable[[FakeKube], Callable[[], None]]) -> None:
    unblock = block(fake)
    server = start_kube(make_server, fake.write_kubeconfig(tmp_path / "kubeconfig"))

    # Namespaces and services list fine and are being watched; EndpointSlices keep failing.
    def partly_synced() -> bool:
        slice_failures = [r for r in list_requests(fake, SLICES_PATH) if r.status != 200]
        return (bool(watch_requests(fake, SERVICES_PATH))
                and bool(watch_requests(fake, NAMESPACES_PATH))
                and len(slice_failures) >= 3)
    wait_until(partly_synced, "services and namespaces watched, slices failing")

    for _ in range(2):  # and it stays that way
        for name, rdtype in UNSYNCED_QUESTIONS:
            assert_unsynced(server.ask(name, rdtype), f"{name} {rdtype}")
            assert_unsynced(server.ask(name, rdtype, tcp=True), f"{name} {rdtype} (tcp)")
        time.sleep(0.3)
    assert not [r for r in list_requests(fake, SLICES_PATH) if r.status == 200]

    since = time.monotonic()
    unblock()
    # The backoff cap early in an outage is FAST.backoff_cap_early (0.5 s).
    eventually(server, HTTPENV, "A", a_records(["10.108.189.10"]), within=2.0, since=since)
    assert sorted(addresses(server.ask(HTTPENV_HEADLESS))) == HTTPENV_PODS
    assert nxdomain(server.ask("nope.default.svc.cluster.local"))
    assert nxdomain(server.ask("nope.nope.svc.cluster.local"))
    assert nodata(server.ask("default.svc.cluster.local"))


# ----------------------------------------------------------------------------- 2. changes


def test_a_new_service_its_changed_cluster_ip_and_its_deletion_show_in_dns_within_a_second(
        fake: FakeKube, make_server: Callable[..., RunningServer], tmp_path: Path) -> None:
    server = start_kube(make_server, fake.write_kubeconfig(tmp_path / "kubeconfig"))
    wait_synced(server)
    name = "shop.default.svc.cluster.local"
    assert nxdomain(server.ask(name))

    since = time.monotonic()
    fake.apply(cluster_ip_service("shop", "10.96.200.1"))
    eventually(server, name, "A", a_records(["10.96.200.1"]), within=PROPAGATION, since=since)
    srv = server.ask(f"_http._tcp.{name}", "SRV")
    assert [rd.to_text() for rrset in srv.answer for rd in rrset] == [f"0 100 80 {name}."]

    since = time.monotonic()
    fake.apply(cluster_ip_service("shop", "10.96.200.2"))
    eventually(server, name, "A", a_records(["10.96.200.2"]), within=PROPAGATION, since=since)
    assert nxdomain(server.ask("1.200.96.10.in-addr.arpa", "PTR"))

    since = time.monotonic()
    fake.delete("Service", "default", "shop")
    eventually(server, name, "A", nxdomain, within=PROPAGATION, since=since)
    assert addresses(server.ask(HTTPENV)) == ["10.108.189.10"]  # the rest is untouched


def test_an_endpoint_slice_adding_unreadying_and_removing_an_endpoint_shows_within_a_second(
        fake: FakeKube, make_server: Callable[..., RunningServer], tmp_path: Path) -> None:
    server = start_kube(make_server, fake.write_kubeconfig(tmp_path / "kubeconfig"))
    wait_synced(server)
    assert sorted(addresses(server.ask(HTTPENV_HEADLESS))) == HTTPENV_PODS

    # A second slice for the headless service with one new ready endpoint.
    since = time.monotonic()
    fake.apply(endpoint_slice("httpenv-headless-x2m9d", "httpenv-headless",
                              [("10.244.3.30", True)]))
    eventually(server, HTTPENV_HEADLESS, "A", a_records([*HTTPENV_PODS, "10.244.3.30"]),
               within=PROPAGATION, since=since)
    assert addresses(server.ask("10-244-3-30.httpenv-headless.default.svc.cluster.local")) \
        == ["10.244.3.30"]

    since = time.monotonic()
    fake.apply(endpoint_slice("httpenv-headless-x2m9d", "httpenv-headless",
                              [("10.244.3.30", False)]))
    eventually(server, HTTPENV_HEADLESS, "A", a_records(HTTPENV_PODS), within=PROPAGATION,
               since=since)

    since = time.monotonic()
    fake.apply(endpoint_slice("httpenv-headless-x2m9d", "httpenv-headless",
                              [("10.244.3.31", True)]))
    eventually(server, HTTPENV_HEADLESS, "A", a_records([*HTTPENV_PODS, "10.244.3.31"]),
               within=PROPAGATION, since=since)
    since = time.monotonic()
    fake.delete("EndpointSlice", "default", "httpenv-headless-x2m9d")
    eventually(server, HTTPENV_HEADLESS, "A", a_records(HTTPENV_PODS), within=PROPAGATION,
               since=since)

    # The service's only slice losing its last ready endpoint: none ready is NXDOMAIN.
    since = time.monotonic()
    fake.apply(endpoint_slice("httpenv-headless-9qwzt", "httpenv-headless",
                              [(ip, False) for ip in HTTPENV_PODS]))
    eventually(server, HTTPENV_HEADLESS, "A", nxdomain, within=PROPAGATION, since=since)


def test_a_new_namespace_is_nodata_and_once_deleted_nxdomain_within_a_second(
        fake: FakeKube, make_server: Callable[..., RunningServer], tmp_path: Path) -> None:
    server = start_kube(make_server, fake.write_kubeconfig(tmp_path / "kubeconfig"))
    wait_synced(server)
    name = "staging.svc.cluster.local"
    assert nxdomain(server.ask(name))

    since = time.monotonic()
    fake.apply(namespace("staging"))
    eventually(server, name, "A", nodata, within=PROPAGATION, since=since)
    assert nxdomain(server.ask(f"nope.{name}"))

    since = time.monotonic()
    fake.delete("Namespace", None, "staging")
    eventually(server, name, "A", nxdomain, within=PROPAGATION, since=since)
    assert nodata(server.ask("prod.svc.cluster.local"))  # other namespaces stay


# ----------------------------------------------------------------------------- 3. namespaces


def test_the_namespaces_option_lists_and_watches_only_inside_those_namespaces(
        fake: FakeKube, make_server: Callable[..., RunningServer], tmp_path: Path) -> None:
    server = start_kube(make_server, fake.write_kubeconfig(tmp_path / "kubeconfig"),
                        namespaces=frozenset({"default"}))
    wait_synced(server)
    wait_until(lambda: len({r.path for r in fake.requests if r.watch}) == 2,
               "watches on default services and endpointslices")

    assert addresses(server.ask(HTTPENV)) == ["10.108.189.10"]
    assert sorted(addresses(server.ask(HTTPENV_HEADLESS))) == HTTPENV_PODS
    assert nodata(server.ask("default.svc.cluster.local"))
    for name in ("kube-dns.kube-system.svc.cluster.local", "kube-system.svc.cluster.local",
                 "prod.svc.cluster.local"):
        assert nxdomain(server.ask(name)), name

    # Nothing cluster-wide was asked for: no namespace list (a namespaced Role cannot
    # grant it), no services or endpointslices across every namespace.
    paths = {r.path for r in fake.requests}
    assert paths == {"/api/v1/namespaces/default/services",
                     "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"}, paths
    assert all(r.status == 200 for r in fake.requests)

    # A change inside the namespace still arrives through the namespaced watch.
    since = time.monotonic()
    fake.apply(cluster_ip_service("shop", "10.96.200.1"))
    fake.apply(cluster_ip_service("shop", "10.96.200.9", namespace="kube-system"))
    eventually(server, "shop.default.svc.cluster.local", "A", a_records(["10.96.200.1"]),
               within=PROPAGATION, since=since)
    assert nxdomain(server.ask("shop.kube-system.svc.cluster.local"))


# ----------------------------------------------------------------------------- 4. TLS, auth


def test_a_tls_kubeconfig_with_a_bearer_token_syncs_and_answers(
        tls_fake: FakeKube, tls: Tls, make_server: Callable[..., RunningServer],
        tmp_path: Path) -> None:
    assert tls_fake.url.startswith("https://")
    kubeconfig = tls_fake.write_kubeconfig(tmp_path / "kubeconfig", ca_path=tls.ca_path)
    server = start_kube(make_server, kubeconfig)
    eventually(server, HTTPENV, "A", a_records(["10.108.189.10"]), within=SYNC_WITHIN)
    assert sorted(addresses(server.ask(HTTPENV_HEADLESS))) == HTTPENV_PODS
    assert tls_fake.requests and all(r.status == 200 for r in tls_fake.requests)


def test_a_wrong_token_never_syncs_and_the_api_server_saw_only_401s(
        tls_fake: FakeKube, tls: Tls, make_server: Callable[..., RunningServer],
        tmp_path: Path) -> None:
    kubeconfig = tls_fake.write_kubeconfig(tmp_path / "kubeconfig", token="wrong",
                                           ca_path=tls.ca_path)
    server = start_kube(make_server, kubeconfig)
    # Every kind is retried (with backoff), and every attempt is refused.
    wait_until(lambda: all(len(list_requests(tls_fake, p)) >= 3
                           for p in (NAMESPACES_PATH, SERVICES_PATH, SLICES_PATH)),
               "three list attempts per kind")
    assert {r.status for r in tls_fake.requests} == {401}
    for name, rdtype in UNSYNCED_QUESTIONS:
        assert_unsynced(server.ask(name, rdtype), f"{name} {rdtype}")


def write_incluster_files(tmp_path: Path, token: str, tls: Tls) -> tuple[Path, Path]:
    token_path = tmp_path / "serviceaccount" / "token"
    token_path.parent.mkdir(exist_ok=True)
    token_path.write_text(token, encoding="utf-8")
    return token_path, tls.ca_path


def assert_token_accepted(fake: FakeKube) -> None:
    """The first requests with the in-cluster token succeed (else say what they got)."""
    wait_until(lambda: len(fake.requests) >= 3, "the first requests with the in-cluster token")
    statuses = Counter(r.status for r in fake.requests[:3])
    assert statuses == {200: 3}, (
        f"the API server answered {dict(statuses)} to the first requests: the token from "
        "the service account file was not accepted (the client sends it as "
        "'Authorization: bearer <token>'; the scheme is case-insensitive, RFC 7235)")


def incluster_source(fake: FakeKube, files: tuple[Path, Path]) -> Callable[[Config], KubeSource]:
    return fast_source(environ={"KUBERNETES_SERVICE_HOST": "127.0.0.1",
                                "KUBERNETES_SERVICE_PORT": str(fake.port)},
                       incluster_files=files)


def test_in_cluster_config_from_the_service_account_files_syncs_and_answers(
        tls_fake: FakeKube, tls: Tls, make_server: Callable[..., RunningServer],
        tmp_path: Path) -> None:
    files = write_incluster_files(tmp_path, "s3cret", tls)
    server = start_kube(make_server, None, kube=incluster_source(tls_fake, files))
    assert server.app.config.kubeconfig == ""
    assert_token_accepted(tls_fake)
    eventually(server, HTTPENV, "A", a_records(["10.108.189.10"]), within=SYNC_WITHIN)
    assert tls_fake.requests and all(r.status == 200 for r in tls_fake.requests)


def expire_incluster_token(server: RunningServer) -> None:
    """Make the client re-read the token file on its next request.

    The client (``InClusterConfigLoader``) re-reads the token file at most once a minute,
    from a refresh hook it installs on the client configuration. Waiting a minute is too
    slow for this suite, so this reaches into the hook's closure and marks the token it
    holds as expired -- the only thing shortened; reading the file, sending the new token
    and recovering from the 401s in between are all the real code paths.
    """
    def run() -> None:
        kube = server.app.kube
        assert kube is not None
        hook = kube._client.configuration.refresh_api_key_hook
        loaders = [cell.cell_contents for cell in (hook.__closure__ or ())
                   if isinstance(cell.cell_contents, InClusterConfigLoader)]
        assert len(loaders) == 1, "the kubernetes client's in-cluster refresh hook changed"
        loaders[0].token_expires_at = datetime.datetime.min
    server.call(run)


def test_a_rotated_service_account_token_is_picked_up_without_a_restart(
        tls_fake: FakeKube, tls: Tls, make_server: Callable[..., RunningServer],
        tmp_path: Path) -> None:
    token_path, ca_path = write_incluster_files(tmp_path, "s3cret", tls)
    server = start_kube(make_server, None,
                        kube=incluster_source(tls_fake, (token_path, ca_path)))
    assert_token_accepted(tls_fake)
    eventually(server, HTTPENV, "A", a_records(["10.108.189.10"]), within=SYNC_WITHIN)
    tls_fake.wait_for_watches(3)

    # The kubelet rotates the projected token; the API server stops taking the old one.
    token_path.write_text("rotated", encoding="utf-8")
    tls_fake.set_token("rotated")
    tls_fake.clear_log()
    tls_fake.end_watches()
    wait_until(lambda: any(r.status == 401 for r in tls_fake.requests),
               "a re-watch refused with the old token")
    assert nodata(server.ask("httpenv.default.svc.cluster.local", "AAAA"))  # still serving

    expire_incluster_token(server)
    since = time.monotonic()
    tls_fake.apply(cluster_ip_service("shop", "10.96.200.1"))
    eventually(server, "shop.default.svc.cluster.local", "A", a_records(["10.96.200.1"]),
               within=FAST.backoff_cap_early + PROPAGATION, since=since)
    wait_until(lambda: len({r.path for r in tls_fake.requests
                            if r.watch and r.status == 200}) == 3,
               "every kind watched again with the new token")


# ----------------------------------------------------------------------------- 5. labels


def test_a_label_selector_serves_only_matching_services_and_is_sent_to_the_api_server(
        fake: FakeKube, make_server: Callable[..., RunningServer], tmp_path: Path) -> None:
    fake.apply(cluster_ip_service("front", "10.96.50.1", labels={"app": "web"}))
    fake.apply(cluster_ip_service("back", "10.96.50.2", labels={"app": "db"}))
    server = start_kube(make_server, fake.write_kubeconfig(tmp_path / "kubeconfig"),
                        labels="app=web")
    wait_synced(server)

    assert addresses(server.ask("front.default.svc.cluster.local")) == ["10.96.50.1"]
    for name in ("back.default.svc.cluster.local", HTTPENV,
                 "kube-dns.kube-system.svc.cluster.local"):
        assert nxdomain(server.ask(name)), name
    assert nodata(server.ask("kube-system.svc.cluster.local"))  # namespaces are all there

    wait_until(lambda: bool(watch_requests(fake, SERVICES_PATH)), "a watch on services")
    services = [r for r in fake.requests if r.path == SERVICES_PATH]
    assert services and all(r.query.get("labelSelector") == "app=web" for r in services), \
        services
    others = [r for r in fake.requests if r.path != SERVICES_PATH]
    assert others and not any("labelSelector" in r.query for r in others), others

    # Relabelling moves a service in or out of the selection, through the watch.
    since = time.monotonic()
    fake.apply(cluster_ip_service("back", "10.96.50.2", labels={"app": "web"}))
    fake.apply(cluster_ip_service("front", "10.96.50.1", labels={"app": "old"}))
    eventually(server, "back.default.svc.cluster.local", "A", a_records(["10.96.50.2"]),
               within=PROPAGATION, since=since)
    eventually(server, "front.default.svc.cluster.local", "A", nxdomain,
               within=PROPAGATION, since=since)


# ----------------------------------------------------------------------------- shutdown


def awaiting(task: asyncio.Task[Any]) -> list[str]:
    """The names of the coroutines ``task`` is suspended in, outermost first."""
    names: list[str] = []
    coro: Any = task.get_coro()
    while coro is not None and hasattr(coro, "cr_code"):
        names.append(coro.cr_code.co_name)
        coro = coro.cr_await
    return names


def test_a_watch_cancelled_just_as_a_line_arrives_still_stops(
        fake: FakeKube, make_server: Callable[..., RunningServer], tmp_path: Path) -> None:
    """Shutdown (SIGTERM -> ``App.close`` -> the TaskGroup cancels every reflector) must end
    a reflector whose cancellation lands between a watch line arriving and the reflector
    resuming. A probe on the server's event loop waits for exactly that moment -- the
    services reflector suspended in ``_watch`` on an already-completed future -- and
    cancels it there, as ``TaskGroup`` would."""
    server = start_kube(make_server, fake.write_kubeconfig(tmp_path / "kubeconfig"))
    wait_synced(server)
    fake.wait_for_watches(3)
    loop = server.loop
    caught: concurrent.futures.Future[asyncio.Task[Any]] = concurrent.futures.Future()

    def reflector() -> asyncio.Task[Any] | None:
        return next((t for t in asyncio.all_tasks(loop) if t.get_name() == "watch-services"),
                    None)

    def probe() -> None:
        task = reflector()
        if task is None or task.done():
            caught.set_exception(AssertionError("the services reflector is not running"))
            return
        waiter = getattr(task, "_fut_waiter", None)  # what the task is suspended on
        in_watch = "_watch" in awaiting(task)
        if in_watch and waiter is not None and waiter.done():
            task.cancel()
            caught.set_result(task)
            return
        loop.call_soon(probe)

    loop.call_soon_threadsafe(probe)
    fake.apply(cluster_ip_service("shop", "10.96.200.1"))  # one watch line (or a bookmark)
    task = caught.result(timeout=5)
    deadline = time.monotonic() + 1.0
    while not server.call(task.done) and time.monotonic() < deadline:
        time.sleep(0.01)
    stopped = server.call(task.done)
    if not stopped:
        server.call(task.cancel)  # a second cancel ends it, so the teardown does not hang
    assert stopped, ("the services reflector swallowed its cancellation and kept running: "
                     "App.close() (and so SIGTERM) would wait for it forever")
    assert server.call(task.cancelled)


# ----------------------------------------------------------------------------- 6. coalescing


def soa_serial(server: RunningServer) -> int:
    """The snapshot generation, as the apex SOA serial shows it."""
    msg = server.ask("cluster.local", "SOA")
    assert msg.rcode() == NOERROR, msg.to_text()
    return int(msg.answer[0][0].serial)


def test_a_burst_of_two_hundred_service_events_is_published_in_far_fewer_snapshots(
        fake: FakeKube, make_server: Callable[..., RunningServer], tmp_path: Path) -> None:
    server = start_kube(make_server, fake.write_kubeconfig(tmp_path / "kubeconfig"))
    wait_synced(server)
    before = soa_serial(server)
    burst = 200
    for i in range(burst):
        fake.apply(cluster_ip_service(f"burst-{i}", f"10.96.{100 + i // 250}.{i % 250 + 1}"))
    last = f"burst-{burst - 1}.default.svc.cluster.local"
    eventually(server, last, "A", a_records([f"10.96.100.{burst}"]), within=5.0)
    for i in range(burst):  # every one of them made it, not just the last
        assert addresses(server.ask(f"burst-{i}.default.svc.cluster.local")) \
            == [f"10.96.100.{i + 1}"]
    rebuilds = soa_serial(server) - before
    assert 1 <= rebuilds <= burst // 4, f"{burst} events took {rebuilds} snapshot builds"


def test_programming_latency_is_recorded_from_receipt_and_from_the_slice_trigger_time(
        fake: FakeKube, make_server: Callable[..., RunningServer], tmp_path: Path) -> None:
    server = start_kube(make_server, fake.write_kubeconfig(tmp_path / "kubeconfig"))
    wait_synced(server)
    latency = server.app.latency

    def histograms() -> tuple[list[int], float, list[int], float]:
        triggered = latency.by_kind.get("headless_with_selector")
        return (list(latency.programming.counts), latency.programming.sum,
                list(triggered.counts) if triggered else [0], triggered.sum if triggered else 0.0)

    before = server.call(histograms)

    lag = 30  # the endpoints controller noticed the pod change this long ago
    slice_ = endpoint_slice("late-abcde", "httpenv-headless", [("10.244.9.9", True)])
    trigger = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=lag)
    slice_["metadata"]["annotations"]["endpoints.kubernetes.io/last-change-trigger-time"] = \
        trigger.strftime("%Y-%m-%dT%H:%M:%SZ")
    fake.apply(slice_)
    eventually(server, HTTPENV_HEADLESS, "A", a_records([*HTTPENV_PODS, "10.244.9.9"]),
               within=PROPAGATION)

    after = server.call(histograms)
    programmed = sum(after[0]) - sum(before[0])
    programming_sum = after[1] - before[1]
    triggered, trigger_sum = sum(after[2]) - sum(before[2]), after[3] - before[3]
    assert programmed >= 1 and triggered == 1, (before, after)
    assert 0 <= programming_sum < programmed * PROPAGATION, (programmed, programming_sum)
    # Whole-second trigger times: the latency is the lag, plus up to one second.
    assert lag <= trigger_sum < lag + 1 + PROPAGATION, trigger_sum


def ptr_targets(msg: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in msg.answer for rd in rrset)


def test_s2_7_an_address_behind_several_services_has_one_ptr_per_service_through_changes(
        fake: FakeKube, make_server: Callable[..., RunningServer], tmp_path: Path) -> None:
    """One pod (10.244.9.9) selected by services that come and go one watch event at a
    time: the PTR always lists one name per selecting service (incremental snapshots)."""
    server = start_kube(make_server, fake.write_kubeconfig(tmp_path / "kubeconfig"))
    wait_synced(server)
    reverse = "9.9.244.10.in-addr.arpa"
    pod = "10-244-9-9.{}.default.svc.cluster.local."

    def ptrs(*services: str) -> Callable[[dns.message.Message], bool]:
        want = sorted(pod.format(s) for s in services)
        return lambda msg: msg.rcode() == NOERROR and ptr_targets(msg) == want

    for n, svc in enumerate(("front", "back", "admin")):
        fake.apply(cluster_ip_service(svc, f"10.96.99.{n + 1}"))
        fake.apply(endpoint_slice(f"{svc}-abcde", svc, [("10.244.9.9", True)]))
    eventually(server, reverse, "PTR", ptrs("front", "back", "admin"), within=PROPAGATION)
    # An endpoint move in one slice keeps the other services' PTRs.
    fake.apply(endpoint_slice("back-abcde", "back", [("10.244.9.9", True),
                                                     ("10.244.9.10", True)]))
    eventually(server, "10.9.244.10.in-addr.arpa", "PTR",
               lambda msg: ptr_targets(msg) == ["10-244-9-10.back.default.svc.cluster.local."],
               within=PROPAGATION)
    assert ptrs("front", "back", "admin")(server.ask(reverse, "PTR"))
    # Not ready behind one service, gone behind another: only the rest remain.
    fake.apply(endpoint_slice("front-abcde", "front", [("10.244.9.9", False)]))
    eventually(server, reverse, "PTR", ptrs("back", "admin"), within=PROPAGATION)
    fake.delete("Service", "default", "admin")
    fake.delete("EndpointSlice", "default", "admin-abcde")
    eventually(server, reverse, "PTR", ptrs("back"), within=PROPAGATION)
    fake.apply(endpoint_slice("front-abcde", "front", [("10.244.9.9", True)]))
    eventually(server, reverse, "PTR", ptrs("front", "back"), within=PROPAGATION)
