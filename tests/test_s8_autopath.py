"""§S8 Autopath: a pod's search list walked on the server, and every case where it is not.

The cluster lives in the in-repo fake API server and reaches clusterdns through the real
``kubernetes`` client (the pods watch included); its pods have loopback addresses
(127.0.0.2, 127.0.0.3, ...), so a dnspython client bound to one of them is, to the
server, that pod asking. Out-of-zone names go to ``tests/upstream.py``'s FakeUpstream,
and the server's resolv.conf (``autopath_resolv_conf``) has one search domain of its
own, ``corp.test``. Expected answers come from the objects and zone lines below.
"""

from __future__ import annotations

import asyncio
import random
import time
import urllib.request
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from prometheus_client.parser import text_string_to_metric_families
from upstream import FakeUpstream

from clusterdns import autopath, config, corefile, wire
from clusterdns.config import Config, ConfigError, ListenAddr, PodsMode, SourceSpec
from clusterdns.objects import Cluster, Namespace, Pod
from clusterdns.records import Record
from clusterdns.snapshot import SnapshotRef, unsynced
from clusterdns.source.kube import KubeSource, Tuning
from conftest import (
    RunningServer,
    _Handle,
    _start,
    _stop,
    demo_config,
    free_port,
    rrset_texts,
    serving_fake,
)
from fakekube import FakeKube

NOERROR, NXDOMAIN = dns.rcode.NOERROR, dns.rcode.NXDOMAIN
FAST = Tuning(page_size=50, watch_timeout=4.0, inactivity_timeout=1.0, request_timeout=5.0,
              backoff_base=0.05, backoff_cap_early=0.5)
WITHIN = 3.0  # seconds for a change in the API server to show in DNS

# The pods, by source address. 127.0.0.1 (the tests' usual address) is no pod's.
POD_A = "127.0.0.2"  # web, team-a: running, ClusterFirst
POD_B = "127.0.0.3"  # worker, team-b: running, ClusterFirst
TWO_PODS = "127.0.0.4"  # two running pods of team-a
PENDING = "127.0.0.5"
HOST_NETWORK = "127.0.0.6"
POLICY_DEFAULT = "127.0.0.7"
POLICY_NONE = "127.0.0.8"
POLICY_WITH_HOST_NET = "127.0.0.9"  # ClusterFirstWithHostNet without hostNetwork
SEARCHES = "127.0.0.10"
NDOTS = "127.0.0.11"
REUSED = "127.0.0.12"  # a Succeeded pod of team-b, then a running one of team-a
NO_POD = "127.0.0.1"
MOVING = "127.0.0.13"  # changed by one test

UPSTREAM_ZONE = [
    "example.test. 300 IN SOA ns.example.test. admin.example.test. 1 7200 900 86400 60",
    "example.test. 300 IN A 192.0.2.10",
    "www.example.test. 300 IN A 192.0.2.11",
    "nodata.example.test. 300 IN TXT only-text",
    "corp.test. 300 IN SOA ns.corp.test. admin.corp.test. 1 7200 900 86400 60",
    "intranet.corp.test. 300 IN A 198.51.100.7",
    "intranet.test. 300 IN A 203.0.113.99",  # the bare name: never reached for intranet
]


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def service(name: str, ns: str, ip: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}


def external_name(name: str, ns: str, target: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"type": "ExternalName", "externalName": target}}


def pod(name: str, ns: str, ip: str, *, phase: str = "Running", host_network: bool = False,
        policy: str = "ClusterFirst", dns_config: dict[str, Any] | None = None,
        ) -> dict[str, Any]:
    """A pod as the API server returns it (the defaults filled in)."""
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "busybox"}],
                            "dnsPolicy": policy, "restartPolicy": "Always"}
    if host_network:
        spec["hostNetwork"] = True
    if dns_config is not None:
        spec["dnsConfig"] = dns_config
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": spec, "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]}}


CLUSTER = [
    namespace("team-a"), namespace("team-b"),
    service("svc2", "team-a", "10.96.1.2"),
    service("svc3", "team-b", "10.96.1.3"),
    external_name("ext", "team-a", "www.example.test"),
    pod("web", "team-a", POD_A),
    pod("worker", "team-b", POD_B),
    pod("twin-1", "team-a", TWO_PODS), pod("twin-2", "team-a", TWO_PODS),
    pod("starting", "team-a", PENDING, phase="Pending"),
    pod("node-agent", "team-a", HOST_NETWORK, host_network=True,
        policy="ClusterFirstWithHostNet"),
    pod("default-dns", "team-a", POLICY_DEFAULT, policy="Default"),
    pod("own-dns", "team-a", POLICY_NONE, policy="None",
        dns_config={"nameservers": ["10.96.0.10"],
                    "searches": ["team-a.svc.cluster.local", "svc.cluster.local",
                                 "cluster.local"]}),
    pod("with-host-net", "team-a", POLICY_WITH_HOST_NET, policy="ClusterFirstWithHostNet"),
    pod("more-searches", "team-a", SEARCHES, dns_config={"searches": ["corp.example"]}),
    pod("fewer-dots", "team-a", NDOTS, dns_config={"options": [{"name": "ndots",
                                                                 "value": "2"}]}),
    pod("job-done", "team-b", REUSED, phase="Succeeded"),
    pod("newcomer", "team-a", REUSED),
    pod("mover", "team-a", MOVING),
]


# ----------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream(UPSTREAM_ZONE)
    yield up
    up.close()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeKube]:
    with serving_fake(CLUSTER) as server:
        yield server


def autopath_config(tmp: Path, fake: FakeKube, upstream: FakeUpstream,
                    **changes: Any) -> Config:
    resolv = tmp / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.53\nsearch corp.test\noptions edns0\n")
    kubeconfig = fake.write_kubeconfig(tmp / "kubeconfig")
    settings: dict[str, Any] = {
        "source": SourceSpec("kubernetes"), "kubeconfig": str(kubeconfig),
        "pods": PodsMode.VERIFIED, "autopath": True, "autopath_resolv_conf": str(resolv),
        "upstreams": (upstream.address,), "loop_detect": False,
        "metrics": ListenAddr("127.0.0.1", free_port())}
    return demo_config(**{**settings, **changes})


def start(cfg: Config) -> _Handle:
    handle = _start(cfg, kube=KubeSource(cfg, tuning=FAST))
    deadline = time.monotonic() + 10
    while ask(handle.server, "svc2.team-a.svc.cluster.local", source=NO_POD).rcode() \
            != NOERROR:
        assert time.monotonic() < deadline, "the server did not sync"
        time.sleep(0.05)
    return handle


@pytest.fixture(scope="module")
def server(fake: FakeKube, upstream: FakeUpstream,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    handle = start(autopath_config(tmp_path_factory.mktemp("autopath"), fake, upstream))
    yield handle.server
    _stop(handle)


def ask(server: RunningServer, name: str, rdtype: str = "A", *, source: str,
        tcp: bool = False, query: dns.message.Message | None = None) -> dns.message.Message:
    """One query from ``source`` (a pod's address) over UDP or TCP."""
    q = query or dns.message.make_query(name, rdtype, use_edns=0, payload=1232)
    if tcp:
        return dns.query.tcp(q, server.host, port=server.port, timeout=5, source=source)
    return dns.query.udp(q, server.host, port=server.port, timeout=5, source=source)


def walked_to(msg: dns.message.Message, asked: str, found: str) -> bool:
    """The reply is a CNAME from the name asked to the name found, then its records."""
    return (msg.rcode() == NOERROR and len(msg.answer) >= 2
            and str(msg.answer[0].name) == asked + "."
            and msg.answer[0].rdtype == dns.rdatatype.CNAME
            and [rd.to_text() for rd in msg.answer[0]] == [found + "."]
            and str(msg.answer[1].name) == found + ".")


def successes(server: RunningServer) -> float:
    """``coredns_autopath_success_total{server}`` from /metrics."""
    metrics = server.app.config.metrics
    assert metrics is not None
    url = f"http://{metrics.host}:{metrics.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "coredns_autopath_success":
            (sample,) = [s for s in family.samples if s.name.endswith("_total")]
            assert set(sample.labels) == {"server"}
            return float(sample.value)
    raise AssertionError("coredns_autopath_success_total is not exported")


@pytest.fixture(params=["udp", "tcp"])
def tcp(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "tcp")


# ----------------------------------------------------------------------- the walk


def test_s8_a_pod_gets_an_external_name_in_one_query_as_a_cname_to_the_upstream_answer(
        server: RunningServer, upstream: FakeUpstream, tcp: bool) -> None:
    asked = "example.test.team-a.svc.cluster.local"
    reply = ask(server, asked, source=POD_A, tcp=tcp)
    assert walked_to(reply, asked, "example.test")
    assert [rd.to_text() for rd in reply.answer[1]] == ["192.0.2.10"]
    assert upstream.count("example.test", "A") >= 1
    assert upstream.count(asked) == 0  # names in our zones never go upstream


def test_s8_a_name_of_the_pods_own_namespace_that_exists_is_answered_as_it_is(
        server: RunningServer, tcp: bool) -> None:
    reply = ask(server, "svc2.team-a.svc.cluster.local", source=POD_A, tcp=tcp)
    assert rrset_texts(reply) == ["svc2.team-a.svc.cluster.local. 5 IN A 10.96.1.2"]


def test_s8_a_service_of_another_namespace_is_found_at_the_svc_step(
        server: RunningServer, tcp: bool) -> None:
    asked = "svc3.team-b.team-a.svc.cluster.local"
    reply = ask(server, asked, source=POD_A, tcp=tcp)
    assert walked_to(reply, asked, "svc3.team-b.svc.cluster.local")
    assert rrset_texts(reply) == [
        f"{asked}. 5 IN CNAME svc3.team-b.svc.cluster.local.",
        "svc3.team-b.svc.cluster.local. 5 IN A 10.96.1.3"]
    assert reply.flags & dns.flags.AA


def test_s8_the_servers_search_domains_come_after_the_zone_and_before_the_bare_name(
        server: RunningServer, upstream: FakeUpstream) -> None:
    asked = "intranet.team-a.svc.cluster.local"
    reply = ask(server, asked, source=POD_A)
    assert walked_to(reply, asked, "intranet.corp.test")
    assert [rd.to_text() for rd in reply.answer[1]] == ["198.51.100.7"]
    assert upstream.count("intranet.corp.test", "A") >= 1
    assert upstream.count("intranet") == 0  # found before the bare name


def test_s8_a_name_found_nowhere_is_the_nxdomain_of_the_name_asked_after_the_whole_walk(
        server: RunningServer, upstream: FakeUpstream, tcp: bool) -> None:
    label = "nope-tcp" if tcp else "nope-udp"
    asked = f"{label}.team-a.svc.cluster.local"
    reply = ask(server, asked, source=POD_A, tcp=tcp)
    assert reply.rcode() == NXDOMAIN and not reply.answer
    assert rrset_texts(reply, "authority")[0].startswith("cluster.local. 5 IN SOA")
    seen = upstream.names_seen()
    assert seen.index(f"{label}.corp.test") < seen.index(label)


def test_s8_a_name_that_exists_without_the_asked_type_ends_the_walk_as_nodata_without_a_cname(
        server: RunningServer, upstream: FakeUpstream) -> None:
    in_zone = ask(server, "svc2.team-a.team-b.svc.cluster.local", "AAAA", source=POD_B)
    assert in_zone.rcode() == NOERROR and not in_zone.answer
    assert [(e.code, e.text) for e in in_zone.extended_errors()] == [
        (0, "svc2.team-a.svc.cluster.local exists but has no AAAA records")]
    upstream_nodata = ask(server, "nodata.example.test.team-b.svc.cluster.local", source=POD_B)
    assert upstream_nodata.rcode() == NOERROR and not upstream_nodata.answer
    assert rrset_texts(upstream_nodata, "authority")[0].startswith("example.test. ")
    assert upstream.count("nodata.example.test", "A") >= 1


def test_s8_an_external_name_found_on_the_walk_is_chased_upstream_behind_both_cnames(
        server: RunningServer) -> None:
    asked = "ext.team-a.team-b.svc.cluster.local"
    reply = ask(server, asked, source=POD_B)
    assert rrset_texts(reply) == [
        f"{asked}. 5 IN CNAME ext.team-a.svc.cluster.local.",
        "ext.team-a.svc.cluster.local. 5 IN CNAME www.example.test.",
        "www.example.test. 300 IN A 192.0.2.11"]


def test_s8_the_letter_case_of_the_name_asked_is_kept_in_the_cname(
        server: RunningServer) -> None:
    reply = ask(server, "Example.TEST.Team-A.svc.Cluster.Local", source=POD_A)
    assert reply.answer[0].name.to_text() == "Example.TEST.Team-A.svc.Cluster.Local."
    assert [rd.to_text() for rd in reply.answer[0]] == ["example.test."]


def test_s8_a_finished_pod_that_had_the_address_does_not_count(server: RunningServer) -> None:
    asked = "example.test.team-a.svc.cluster.local"
    assert walked_to(ask(server, asked, source=REUSED), asked, "example.test")


def test_s8_an_upstream_that_does_not_answer_ends_the_walk_with_the_name_asked_as_usual(
        fake: FakeKube, tmp_path: Path) -> None:
    silent = FakeUpstream(UPSTREAM_ZONE)
    silent.silent = True
    handle = start(autopath_config(tmp_path, fake, silent, forward_timeout=0.2,
                                   forward_deadline=0.4))
    try:
        started = time.monotonic()
        reply = ask(handle.server, "example.test.team-a.svc.cluster.local", source=POD_A)
        assert reply.rcode() == NXDOMAIN and not reply.answer
        assert [(e.code, e.text) for e in reply.extended_errors()] == [
            (0, 'service "test" not found in namespace "team-a"')]
        assert time.monotonic() - started < 2.0
        assert silent.count("example.test.corp.test") >= 1  # asked, never answered
        assert silent.count("example.test") == 0  # the walk ended there
        assert handle.server.app.handler.stats.autopath == 0
    finally:
        _stop(handle)
        silent.close()


# ------------------------------------------------------------------ when it is not


REFUSED_SOURCES = {
    "no pod has the address": NO_POD,
    "two running pods have it": TWO_PODS,
    "the pod is not running": PENDING,
    "hostNetwork": HOST_NETWORK,
    "dnsPolicy Default": POLICY_DEFAULT,
    "dnsPolicy None": POLICY_NONE,
    "dnsPolicy ClusterFirstWithHostNet": POLICY_WITH_HOST_NET,
    "dnsConfig searches": SEARCHES,
    "dnsConfig ndots": NDOTS,
    "the pod is of another namespace than the name": POD_B,
}


@pytest.mark.parametrize("source", list(REFUSED_SOURCES.values()), ids=list(REFUSED_SOURCES))
def test_s8_a_query_autopath_may_not_walk_for_is_answered_as_usual(
        server: RunningServer, source: str, tcp: bool) -> None:
    before = successes(server)
    reply = ask(server, "example.test.team-a.svc.cluster.local", source=source, tcp=tcp)
    assert reply.rcode() == NXDOMAIN and not reply.answer
    assert [(e.code, e.text) for e in reply.extended_errors()] == [
        (0, 'service "test" not found in namespace "team-a"')]
    assert successes(server) == before


def test_s8_a_pod_asking_for_a_name_under_another_namespace_gets_it_as_usual(
        server: RunningServer) -> None:
    reply = ask(server, "example.test.team-b.svc.cluster.local", source=POD_A)
    assert reply.rcode() == NXDOMAIN and not reply.answer


def test_s8_without_upstreams_only_names_in_our_zones_are_tried(
        fake: FakeKube, upstream: FakeUpstream, tmp_path: Path) -> None:
    handle = start(autopath_config(tmp_path, fake, upstream, upstreams=()))
    try:
        asked = "svc3.team-b.team-a.svc.cluster.local"
        assert walked_to(ask(handle.server, asked, source=POD_A), asked,
                         "svc3.team-b.svc.cluster.local")
        reply = ask(handle.server, "example.test.team-a.svc.cluster.local", source=POD_A)
        assert reply.rcode() == NXDOMAIN and not reply.answer  # not REFUSED, not SERVFAIL
        assert [(e.code, e.text) for e in reply.extended_errors()] == [
            (0, 'service "test" not found in namespace "team-a"')]
    finally:
        _stop(handle)


def test_s8_the_first_search_domain_itself_is_answered_as_usual(server: RunningServer) -> None:
    reply = ask(server, "team-a.svc.cluster.local", source=POD_A)
    assert reply.rcode() == NOERROR and not reply.answer  # the namespace: NODATA


def test_s8_a_server_without_autopath_answers_every_pod_as_usual(
        fake: FakeKube, upstream: FakeUpstream, tmp_path: Path) -> None:
    handle = start(autopath_config(tmp_path, fake, upstream, autopath=False))
    try:
        reply = ask(handle.server, "example.test.team-a.svc.cluster.local", source=POD_A)
        assert reply.rcode() == NXDOMAIN and not reply.answer
        assert handle.server.app.handler.stats.autopath == 0
    finally:
        _stop(handle)


def test_s8_a_reload_turns_autopath_on_and_off(fake: FakeKube, upstream: FakeUpstream,
                                               tmp_path: Path) -> None:
    cfg = autopath_config(tmp_path, fake, upstream, autopath=False)
    handle = start(cfg)
    asked = "example.test.team-a.svc.cluster.local"
    try:
        for on in (True, False):
            app = handle.server.app
            asyncio.run_coroutine_threadsafe(app.apply_config(cfg.replace(autopath=on)),
                                             handle.server.loop).result(timeout=10)
            deadline = time.monotonic() + WITHIN
            while walked_to(ask(handle.server, asked, source=POD_A), asked,
                            "example.test") != on:
                assert time.monotonic() < deadline, f"autopath not {on} after the reload"
                time.sleep(0.05)
    finally:
        _stop(handle)


def test_s8_a_second_pod_taking_the_address_stops_autopath_and_its_going_restores_it(
        server: RunningServer, fake: FakeKube) -> None:
    asked = "example.test.team-a.svc.cluster.local"

    def walked() -> bool:
        return walked_to(ask(server, asked, source=MOVING), asked, "example.test")

    def wait_for(want: bool) -> None:
        deadline = time.monotonic() + WITHIN
        while walked() != want:
            assert time.monotonic() < deadline, f"autopath still {not want}"
            time.sleep(0.05)

    wait_for(True)
    fake.apply(pod("mover-2", "team-b", MOVING))
    wait_for(False)
    fake.delete("Pod", "team-b", "mover-2")
    wait_for(True)
    fake.apply(pod("mover", "team-a", MOVING, phase="Failed"))
    wait_for(False)


# ------------------------------------------------------------- no cached crossing


@pytest.mark.parametrize("first", ["the pod", "another client"])
def test_s8_a_walked_reply_never_reaches_another_client_nor_the_other_way_round(
        server: RunningServer, first: str, tcp: bool) -> None:
    """The very same query bytes (ID included), asked again and again by a client the
    walk is for and by one it is not, in both orders: each keeps getting its own."""
    asked = "www.example.test.team-a.svc.cluster.local"
    query = dns.message.make_query(asked, "A", use_edns=0, payload=1232)
    order = [POD_A, NO_POD] if first == "the pod" else [NO_POD, POD_A]
    for _ in range(3):
        for source in order:
            reply = ask(server, asked, source=source, tcp=tcp, query=query)
            if source == POD_A:
                assert walked_to(reply, asked, "www.example.test"), reply.to_text()
            else:
                assert reply.rcode() == NXDOMAIN and not reply.answer, reply.to_text()
    # Pods of other namespaces asking the same bytes are answered for themselves too.
    assert ask(server, asked, source=POD_B, tcp=tcp, query=query).rcode() == NXDOMAIN


def test_s8_a_walked_reply_never_reaches_a_pod_of_another_namespace(
        server: RunningServer) -> None:
    """team-a's pod gets team-a's walk for the short name ``svc3``... and team-b's pod
    asking its own first candidate gets team-b's service, straight."""
    a = ask(server, "svc3.team-a.svc.cluster.local", source=POD_A)
    assert a.rcode() == NXDOMAIN  # svc3 is team-b's: from team-a it is found further on
    b = ask(server, "svc3.team-b.svc.cluster.local", source=POD_B)
    assert rrset_texts(b) == ["svc3.team-b.svc.cluster.local. 5 IN A 10.96.1.3"]
    again = ask(server, "svc3.team-a.svc.cluster.local", source=POD_A)
    assert again.rcode() == NXDOMAIN


def test_s8_the_metric_counts_each_query_answered_for_another_name(
        server: RunningServer) -> None:
    before = successes(server)
    ask(server, "svc3.team-b.team-a.svc.cluster.local", source=POD_A)  # walked: 1
    ask(server, "example.test.team-a.svc.cluster.local", source=POD_A, tcp=True)  # 2
    ask(server, "svc2.team-a.svc.cluster.local", source=POD_A)  # the name itself: no
    ask(server, "gone-for-good.team-a.svc.cluster.local", source=POD_A)  # nothing found
    ask(server, "example.test.team-a.svc.cluster.local", source=NO_POD)  # not a pod
    assert successes(server) == before + 2


def test_s8_the_fast_path_keeps_the_nxdomain_a_walk_replaces_for_everyone_but_its_pods(
        server: RunningServer) -> None:
    fast = server.app.handler.fast
    assert fast is not None
    shaped = dns.message.make_query("kept.team-a.svc.cluster.local", "A").to_wire()
    for source in (NO_POD, POD_A, NO_POD, POD_B):
        ask(server, "", source=source, query=dns.message.from_wire(shaped))

    def hit(source: str) -> bytes | None:
        reply = server.call(lambda: fast.lookup(shaped, 0, (source, 5353)))
        assert reply is None or isinstance(reply, bytes)
        return reply

    stored = hit(NO_POD)
    assert stored is not None and stored[3] & 0x0F == NXDOMAIN
    assert hit(POD_B) == stored  # a pod of another namespace gets NXDOMAIN anyway
    assert hit(TWO_PODS) == stored  # so does an address autopath does not walk for
    assert hit(POD_A) is None  # team-a's pod: the full path walks its search list


# ----------------------------------------------------------------------- configuration


def test_s8_autopath_is_off_by_default_and_read_from_yaml() -> None:
    assert Config().autopath is False
    cfg = config.from_mapping({"pods": "verified", "autopath": True,
                               "autopath_zones": ["cluster.local"],
                               "autopath_resolv_conf": "resolv.conf"}, "x.yaml",
                              base=Path("/etc/clusterdns"))
    assert (cfg.autopath, cfg.autopath_zones, cfg.autopath_resolv_conf) == (
        True, ("cluster.local",), "/etc/clusterdns/resolv.conf")


@pytest.mark.parametrize("pods", ["disabled", "insecure"])
def test_s8_autopath_without_pods_verified_is_a_config_error_naming_the_key(pods: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.from_mapping({"pods": pods, "autopath": True}, "x.yaml")
    assert str(info.value) == (
        "x.yaml: autopath: needs pods: verified (the pods watch tells which pod a query "
        f"comes from), not pods: {pods}")


def test_s8_autopath_zones_must_be_forward_zones_that_are_served() -> None:
    with pytest.raises(ConfigError, match=r"autopath_zones: in-addr\.arpa is not a forward"):
        config.from_mapping({"pods": "verified", "autopath": True,
                             "autopath_zones": ["in-addr.arpa"]}, "x.yaml")


COREFILE = """\
.:53 {
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods verified
    }
    AUTOPATH
    forward . 192.0.2.53
}
"""


@pytest.mark.parametrize(("line", "autopath", "zones"), [
    ("autopath @kubernetes", True, ()),
    ("autopath . @kubernetes", True, ()),
    ("autopath cluster.local @kubernetes", True, ("cluster.local",)),
])
def test_s8_the_corefile_reads_autopath_as_coredns_spells_it(
        line: str, autopath: bool, zones: tuple[str, ...]) -> None:
    cfg, warnings = corefile.parse(COREFILE.replace("AUTOPATH", line))
    assert (cfg.autopath, cfg.autopath_zones, warnings) == (autopath, zones, [])
    assert cfg.autopath_resolv_conf == "/etc/resolv.conf"


def test_s8_a_corefile_autopath_of_a_resolv_conf_or_of_zones_not_ours_is_a_warning() -> None:
    cfg, warnings = corefile.parse(COREFILE.replace("AUTOPATH", "autopath /etc/resolv.conf"))
    assert not cfg.autopath
    assert warnings == ["Corefile:6: autopath: /etc/resolv.conf: only 'autopath @kubernetes' "
                        "(each pod's own search list) is supported, not one search list for "
                        "every client; ignored"]
    cfg, warnings = corefile.parse(COREFILE.replace(
        "AUTOPATH", "autopath cluster.local example.org @kubernetes"))
    assert cfg.autopath and cfg.autopath_zones == ("cluster.local",)
    assert warnings == ["Corefile:6: autopath: example.org: not a forward zone of the "
                        "kubernetes plugin (cluster.local); ignored"]


def test_s8_a_corefile_autopath_without_pods_verified_is_an_error_naming_the_line() -> None:
    text = COREFILE.replace("AUTOPATH", "autopath @kubernetes")
    with pytest.raises(ConfigError) as info:
        corefile.parse(text.replace("pods verified", "pods insecure"))
    assert str(info.value) == (
        "Corefile:6: autopath: @kubernetes needs 'pods verified' in the kubernetes block "
        "(the pods watch tells which pod asks), not pods insecure")


# ------------------------------------------------------------------- pure pieces


def test_s8_the_walk_tries_the_pods_search_list_in_its_resolvers_order() -> None:
    assert autopath.candidates("example.com", "cluster.local", ("corp.test", "lab.test")) == (
        "example.com.svc.cluster.local", "example.com.cluster.local",
        "example.com.corp.test", "example.com.lab.test", "example.com")
    # A search domain that repeats a step is tried once; names too long are skipped.
    assert autopath.candidates("x", "cluster.local", ("cluster.local",)) == (
        "x.svc.cluster.local", "x.cluster.local", "x")
    long = ".".join(["a" * 60] * 4)
    assert autopath.candidates(long, "cluster.local", ()) == (long,)


def test_s8_the_search_domains_are_the_last_search_line_of_the_resolv_conf() -> None:
    text = ("domain old.example\nsearch a.example B.Example.\n# search c.example\n"
            "nameserver 10.0.0.1\n")
    assert autopath.read_search(text) == ("a.example", "b.example")
    assert autopath.read_search("nameserver 10.0.0.1\n") == ()
    assert len(autopath.read_search("search " + " ".join(f"d{i}.example"
                                                         for i in range(40)))) == 32


@pytest.mark.parametrize(("peer", "ip"), [
    (("127.0.0.2", 5353), "127.0.0.2"),
    (("::ffff:10.244.1.5", 5353, 0, 0), "10.244.1.5"),
    (("fd00:0:0:0::5", 5353, 0, 0), "fd00::5"),
    (("fe80::1%eth0", 5353, 0, 2), "fe80::1"),
    (None, None),
    ("not-an-address", None),
])
def test_s8_the_source_address_is_read_in_the_form_pod_addresses_have(peer: Any,
                                                                       ip: str | None) -> None:
    assert autopath.source_ip(peer) == ip


def test_s8_the_address_index_after_any_pod_changes_equals_one_built_from_scratch() -> None:
    """Random pods (shared addresses, phases, policies) added, changed and deleted one by
    one: the published index equals the plain answer, address -> the pods holding it."""
    rng = random.Random(8)
    cfg = Config(pods=PodsMode.VERIFIED, autopath=True)
    ref = SnapshotRef(unsynced(cfg))
    pods: dict[tuple[str, str], Pod] = {}
    ref.publish_cluster(Cluster(namespaces=(Namespace("a"),)), cfg)
    for _ in range(400):
        key = (rng.choice(["a", "b"]), f"p{rng.randrange(6)}")
        if key in pods and rng.random() < 0.3:
            del pods[key]
            snap = ref.publish_changes([(Pod, key, None)])
        else:
            ips = tuple(rng.sample(["10.0.0.1", "10.0.0.2", "fd00::1"], rng.randrange(3)))
            new = Pod(*key, ips, rng.choice(["Running", "Pending", "Succeeded", "Failed"]),
                      rng.choice(["ClusterFirst", "hostNetwork"]))
            pods[key] = new
            snap = ref.publish_changes([(Pod, key, new)])
        want: dict[str, list[Pod]] = {}
        for p in pods.values():
            if p.phase not in ("Succeeded", "Failed"):
                for ip in p.ips:
                    want.setdefault(ip, []).append(p)
        got = {ip: sorted([held] if isinstance(held, Pod) else list(held),
                          key=lambda p: (p.namespace, p.name))
               for ip, held in snap.pods_by_ip.items()}
        assert got == {ip: sorted(ps, key=lambda p: (p.namespace, p.name))
                       for ip, ps in want.items()}
        for ip, ps in want.items():
            expect = ps[0].namespace if len(ps) == 1 and ps[0].autopath else None
            assert snap.autopath_namespace(ip) == expect


def test_s8_names_asked_upstream_share_one_forward_deadline() -> None:
    """Each upstream name of a walk takes 0.3 s here (a slow upstream that answers
    NXDOMAIN); with forward_deadline 1 s the walk asks no name after the deadline and
    answers the name asked as usual."""
    cfg = Config(pods=PodsMode.VERIFIED, autopath=True, forward_deadline=1.0)
    snap = SnapshotRef(unsynced(cfg)).publish_cluster(
        Cluster(pods=(Pod("a", "p", ("10.0.0.1",), "Running"),)), cfg)
    now = [0.0]
    asked: list[str] = []

    class Slow:
        def answer(self, *args: Any, **kwargs: Any) -> bytes:
            raise AssertionError("no ExternalName here")

        def candidate(self, query: wire.Query, limit: int, name: str,
                      cname: Record) -> Awaitable[autopath.Step]:
            async def later() -> autopath.Step:
                now[0] += 0.3
                asked.append(name)
                return autopath.Miss.NXDOMAIN
            return later()

    query = wire.parse(dns.message.make_query("x.example.a.svc.cluster.local", "A").to_wire())
    tried = autopath.candidates("x.example", "cluster.local",
                                tuple(f"d{i}.test" for i in range(8)))
    walk = autopath.Walk(snap, query, "cluster.local", tried, 512, 1232, 0, Slow(),
                         lambda: b"the usual answer", lambda reply: None,
                         clock=lambda: now[0])
    pending = walk.run()
    assert pending is not None and not isinstance(pending, bytes)
    assert asyncio.run(_awaited(pending)) == b"the usual answer"
    assert asked == ["x.example.d0.test", "x.example.d1.test", "x.example.d2.test",
                     "x.example.d3.test"]  # the fourth began at 0.9 s, the fifth would at 1.2


async def _awaited(pending: Awaitable[bytes | None]) -> bytes | None:
    return await pending


def test_s8_without_autopath_no_address_index_is_kept() -> None:
    cfg = Config(pods=PodsMode.VERIFIED)
    snap = SnapshotRef(unsynced(cfg)).publish_cluster(
        Cluster(pods=(Pod("a", "p", ("10.0.0.1",), "Running"),)), cfg)
    assert len(snap.pods_by_ip) == 0 and snap.autopath_namespace("10.0.0.1") is None
