"""One snapshot per reply: queries racing many publishes a second never see a torn state.

The promise of docs/architecture.md: the snapshot reference is the only shared mutable
state, readers never lock, a writer publishes each new immutable snapshot with a single
assignment, so a query sees one generation and never a half-built one; the SOA serial is
the generation.

Generation ``k`` of the test cluster has a headless service ``gen`` whose ready endpoints
are ``10.k.0.1`` .. ``10.k.0.n(k)`` (so one reply's A records must all share one ``k`` and
be complete), and a service ``even`` that exists only when ``k`` is even (so one NODATA or
NXDOMAIN reply must agree with the generation its SOA serial names).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from clusterdns import snapshot
from clusterdns.config import Config, SourceSpec
from clusterdns.objects import (
    Cluster,
    Endpoint,
    EndpointSlice,
    Namespace,
    Port,
    Service,
    ServiceKind,
)
from clusterdns.records import RRType
from clusterdns.snapshot import Snapshot
from conftest import RunningServer

ZONE = "cluster.local"
GEN = f"gen.default.svc.{ZONE}"
GEN_SRV = f"_http._tcp.{GEN}"
EVEN = f"even.default.svc.{ZONE}"
GENERATIONS = 200  # k runs 1..200 and wraps around; 10.k.0.x stays a valid address
RUN_SECONDS = 3.0
SWITCH_INTERVAL = 0.001  # seconds; CPython's default is 0.005
MIN_REPLIES = 2000
MAX_SECONDS = 30.0  # a slow (or busy) machine runs longer to check MIN_REPLIES, never forever


def endpoint_count(k: int) -> int:
    return 3 + k % 4  # 3..6, so a reply that mixes two generations is also incomplete


def generation_ips(k: int) -> frozenset[str]:
    return frozenset(f"10.{k}.0.{i}" for i in range(1, endpoint_count(k) + 1))


def generation_of(ips: frozenset[str]) -> int | None:
    """The ``k`` whose complete address set ``ips`` is, or None for a torn set."""
    ks = {int(ip.split(".")[1]) for ip in ips}
    if len(ks) != 1:
        return None
    (k,) = ks
    return k if ips == generation_ips(k) else None


def cluster(k: int) -> Cluster:
    http = Port("http", "tcp", 80)
    services = [Service("default", "gen", ServiceKind.HEADLESS, ports=(http,))]
    if k % 2 == 0:
        services.append(Service("default", "even", ServiceKind.CLUSTER_IP,
                                cluster_ips=(f"10.96.{k}.1",), ports=(http,)))
    endpoints = tuple(Endpoint((ip,), ready=True)
                      for ip in sorted(generation_ips(k), key=ipaddress.ip_address))
    return Cluster(
        namespaces=(Namespace("default"),),
        services=tuple(services),
        endpoint_slices=(EndpointSlice("default", "gen-abcde", "gen", "IPv4", endpoints,
                                       (http,)),),
    )


@dataclass
class Observed:
    """What the readers saw; checked after the run, when every serial is known."""

    a_sets: list[frozenset[str]] = field(default_factory=list)
    srv_replies: list[tuple[frozenset[str], frozenset[tuple[str, str]]]] = field(
        default_factory=list)
    negatives: list[tuple[dns.rcode.Rcode, int]] = field(default_factory=list)  # rcode, serial
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self) -> int:
        return len(self.a_sets) + len(self.srv_replies) + len(self.negatives)


def _soa_serial(msg: dns.message.Message) -> int:
    (rrset,) = msg.authority
    assert rrset.rdtype == dns.rdatatype.SOA
    return int(rrset[0].serial)


def _reader(server: RunningServer, kind: str, tcp: bool, stop: threading.Event,
            seen: Observed) -> None:
    # One socket per reader (a persistent TCP connection: several queries each).
    if tcp:
        sock = socket.create_connection((server.host, server.port), timeout=5)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    qname, qtype = {"a": (GEN, "A"), "srv": (GEN_SRV, "SRV"), "neg": (EVEN, "AAAA")}[kind]
    try:
        while not stop.is_set():
            q = dns.message.make_query(qname, qtype, use_edns=0, payload=1232)
            if tcp:
                reply = dns.query.tcp(q, server.host, port=server.port, timeout=5, sock=sock)
            else:
                reply = dns.query.udp(q, server.host, port=server.port, timeout=5, sock=sock)
            rcode = reply.rcode()
            try:
                if kind == "neg":
                    assert rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN), rcode
                    assert not reply.answer, reply.answer
                    entry_neg = (rcode, _soa_serial(reply))
                    with seen.lock:
                        seen.negatives.append(entry_neg)
                    continue
                assert rcode == dns.rcode.NOERROR, dns.rcode.to_text(rcode)
                assert not reply.flags & dns.flags.TC
                if kind == "a":
                    (rrset,) = reply.answer
                    ips = frozenset(rd.address for rd in rrset)
                    assert len(ips) == len(rrset), "duplicate addresses"
                    with seen.lock:
                        seen.a_sets.append(ips)
                else:
                    (rrset,) = reply.answer
                    targets = frozenset(rd.target.to_text() for rd in rrset)
                    glue = frozenset((r.name.to_text(), rd.address)
                                     for r in reply.additional
                                     if r.rdtype == dns.rdatatype.A for rd in r)
                    with seen.lock:
                        seen.srv_replies.append((targets, glue))
            except AssertionError as exc:
                with seen.lock:
                    seen.problems.append(f"{kind} {'tcp' if tcp else 'udp'}: {exc}\n{reply}")
    except Exception as exc:  # a timeout or a dropped connection is a finding too
        with seen.lock:
            seen.problems.append(f"{kind} {'tcp' if tcp else 'udp'} reader died: {exc!r}")
    finally:
        sock.close()


def _writer(server: RunningServer, stop: threading.Event, serial_to_k: dict[int, int],
            publishes: list[float]) -> None:
    """Publish straight from this thread: SnapshotRef serialises writers with its own
    lock, and the query path (on the server's loop thread) never locks."""
    config = server.app.config
    k = 1
    while not stop.is_set():
        k = k % GENERATIONS + 1
        snap = server.app.ref.publish_cluster(cluster(k), config)
        serial_to_k[snap.serial] = k
        publishes.append(time.monotonic())
        time.sleep(0.005)


def test_every_reply_comes_from_exactly_one_published_generation(
        make_server: Callable[..., RunningServer], tmp_path: Path) -> None:
    dump = tmp_path / "empty.yaml"
    dump.write_text("kind: Namespace\nmetadata: {name: default}\n", encoding="utf-8")
    server = make_server(source=SourceSpec("file", (dump,)), poll_interval=3600.0)
    serial_to_k: dict[int, int] = {}
    first = server.app.ref.publish_cluster(cluster(1), server.app.config)
    serial_to_k[first.serial] = 1

    stop = threading.Event()
    seen = Observed()
    publishes: list[float] = []
    readers = [threading.Thread(target=_reader, args=(server, kind, tcp, stop, seen),
                                name=f"reader-{kind}-{'tcp' if tcp else 'udp'}", daemon=True)
               for kind in ("a", "srv", "neg") for tcp in (False, True)]
    writer = threading.Thread(target=_writer, args=(server, stop, serial_to_k, publishes),
                              name="writer", daemon=True)
    # Switch threads often: more interleavings of the writer with queries in flight.
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        for t in [*readers, writer]:
            t.start()
        started = time.monotonic()
        time.sleep(RUN_SECONDS)
        while seen.count() < MIN_REPLIES and time.monotonic() - started < MAX_SECONDS:
            time.sleep(0.1)
        stop.set()
        for t in [*readers, writer]:
            t.join(timeout=10)
            assert not t.is_alive(), f"{t.name} did not stop"
        elapsed = time.monotonic() - started
    finally:
        sys.setswitchinterval(old_interval)

    assert not seen.problems, "\n\n".join(seen.problems[:5])
    rate = len(publishes) / elapsed
    assert rate >= 50, f"only {rate:.0f} publishes/s"
    assert seen.count() >= MIN_REPLIES, f"only {seen.count()} replies checked"
    assert min(len(seen.a_sets), len(seen.srv_replies), len(seen.negatives)) >= 200

    published_ks = set(serial_to_k.values())
    torn = [sorted(ips) for ips in seen.a_sets if generation_of(ips) not in published_ks]
    assert not torn, f"{len(torn)} torn A replies, e.g. {torn[:3]}"
    # Readers really saw many generations, not one cached answer.
    assert len({generation_of(ips) for ips in seen.a_sets}) >= 20

    for targets, glue in seen.srv_replies:
        ips = frozenset(t.split(".")[0].replace("-", ".") for t in targets)
        k = generation_of(ips)
        assert k in published_ks, f"torn SRV reply: {sorted(targets)}"
        assert targets == {f"{ip.replace('.', '-')}.{GEN}." for ip in generation_ips(k)}
        # The targets' addresses (Additional) come from the same generation as the SRVs.
        assert glue == {(f"{ip.replace('.', '-')}.{GEN}.", ip) for ip in generation_ips(k)}, (
            f"SRV targets of generation {k} with glue {sorted(glue)}")

    unknown = sorted({serial for _, serial in seen.negatives} - set(serial_to_k))
    assert not unknown, f"SOA serials that were never published: {unknown[:10]}"
    for rcode, serial in seen.negatives:
        k = serial_to_k[serial]
        expected = dns.rcode.NOERROR if k % 2 == 0 else dns.rcode.NXDOMAIN
        assert rcode == expected, (
            f"{dns.rcode.to_text(rcode)} with serial {serial} (generation {k}): the reply "
            "mixes two generations")
    assert len({serial for _, serial in seen.negatives}) >= 20


# ------------------------------------------------------------------------ immutability


def _config() -> Config:
    return Config(zones=(ZONE, "in-addr.arpa"), source=SourceSpec("file", ()))


def _built() -> Snapshot:
    return snapshot.build(cluster(2), _config(), serial=7)


def _unsynced() -> Snapshot:
    return snapshot.unsynced(_config())


@pytest.mark.parametrize("make", [_built, _unsynced], ids=["built", "unsynced"])
def test_a_snapshot_is_a_frozen_dataclass(make: Callable[[], Snapshot]) -> None:
    snap = make()
    assert dataclasses.is_dataclass(snap)
    assert type(snap).__dataclass_params__.frozen  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.serial = 99  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.nodes = {}  # type: ignore[misc]
    with pytest.raises((AttributeError, TypeError)):  # slots: no new attributes either
        snap.extra = 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("make", [_built, _unsynced], ids=["built", "unsynced"])
def test_every_mapping_of_a_snapshot_is_read_only(make: Callable[[], Snapshot]) -> None:
    snap = make()
    with pytest.raises(TypeError):
        snap.nodes["new.cluster.local"] = {}  # type: ignore[index]
    with pytest.raises(TypeError):
        snap.services[("default", "new")] = None  # type: ignore[index]
    with pytest.raises(AttributeError):
        snap.namespaces.add("new")  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        snap.pod_ips.add(("default", "10.0.0.1"))  # type: ignore[attr-defined]
    for name, node in snap.nodes.items():
        with pytest.raises(TypeError):
            node[RRType.TXT] = ()  # type: ignore[index]
        for rtype, rrset in node.items():
            assert isinstance(rrset, tuple), (name, rtype)


def test_a_built_snapshot_keeps_the_records_and_serial_it_was_built_with() -> None:
    snap = _built()
    assert snap.serial == 7
    assert snap.soa(ZONE).data.serial == 7  # type: ignore[union-attr]
    addresses = {r.data.address for r in snap.nodes[GEN][RRType.A]}  # type: ignore[union-attr]
    assert addresses == generation_ips(2)
    # Publishing a later generation does not touch an earlier snapshot.
    ref = snapshot.SnapshotRef(snap)
    newer = ref.publish_cluster(cluster(3), _config())
    assert newer.serial == 8 and ref.get() is newer
    assert {r.data.address for r in snap.nodes[GEN][RRType.A]} == generation_ips(2)  # type: ignore[union-attr]
    assert EVEN in snap.nodes and EVEN not in newer.nodes
