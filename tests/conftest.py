"""Shared fixtures: real clusterdns servers on loopback, and a small query helper.

Each server runs the real ``App`` (file source, snapshot, handler, UDP and TCP
listeners) on its own event loop in a background thread, bound to 127.0.0.1 on a
free port, so tests talk to it exactly as dig or a pod would.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from upstream import EXAMPLE_ZONE, FakeUpstream

from clusterdns.app import App
from clusterdns.config import Config, ListenAddr, PodsMode, SourceSpec
from clusterdns.source.kube import KubeSource
from fakekube import FakeKube

ROOT = Path(__file__).resolve().parent.parent
DEMO_CLUSTER = ROOT / "config" / "demo-cluster.yaml"
EXTRA_CLUSTER = Path(__file__).resolve().parent / "data" / "extra-cluster.yaml"


@dataclass
class RunningServer:
    app: App
    host: str
    port: int
    loop: asyncio.AbstractEventLoop

    def ask(self, name: str, rdtype: str = "A", *, tcp: bool = False,
            edns: bool = True, payload: int = 1232, timeout: float = 3.0,
            **kwargs: Any) -> dns.message.Message:
        """One query over UDP (default) or TCP with dnspython; returns the parsed reply."""
        q = dns.message.make_query(name, rdtype, use_edns=0 if edns else False,
                                   payload=payload, **kwargs)
        if tcp:
            return dns.query.tcp(q, self.host, port=self.port, timeout=timeout)
        return dns.query.udp(q, self.host, port=self.port, timeout=timeout,
                             ignore_trailing=False)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the server's event loop thread and return its result."""
        async def wrapper() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout=10)


def demo_config(**changes: Any) -> Config:
    base = Config(
        zones=("cluster.local", "in-addr.arpa", "ip6.arpa"),
        source=SourceSpec("file", (DEMO_CLUSTER, EXTRA_CLUSTER)),
        listen=(ListenAddr("127.0.0.1", 0),),
        pods=PodsMode.INSECURE,
        poll_interval=0.1,
        health=None, ready=None, metrics=None, lameduck=0.0, reload=0.0,
    )
    return base.replace(**changes)


@dataclass
class _Handle:
    server: RunningServer
    thread: threading.Thread


def _start(config: Config, publish: bool = True, kube: KubeSource | None = None) -> _Handle:
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            app = App(config, kube=kube)
            if publish:
                await app.start()
            else:  # bind only: the server stays unsynced until a test publishes
                await app.server.start([(a.host, a.port) for a in config.listen])
            box["app"] = app
            ready.set()

        try:
            loop.run_until_complete(boot())
        except BaseException as exc:  # surface start failures in the test thread
            box["error"] = exc
            ready.set()
            return
        loop.run_forever()

    thread = threading.Thread(target=run, name="clusterdns-test-server", daemon=True)
    thread.start()
    ready.wait(timeout=30)
    if "error" in box:
        raise box["error"]
    app: App = box["app"]
    host, port = app.server.bound[0][:2]
    return _Handle(RunningServer(app, host, port, loop), thread)


def _stop(handle: _Handle) -> None:
    loop = handle.server.loop
    asyncio.run_coroutine_threadsafe(handle.server.app.close(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    handle.thread.join(timeout=10)
    loop.close()


@pytest.fixture(scope="session")
def demo() -> Iterator[RunningServer]:
    """The demo cluster (plus tests/data/extra-cluster.yaml), pods insecure."""
    handle = _start(demo_config())
    yield handle.server
    _stop(handle)


@pytest.fixture
def make_server() -> Iterator[Callable[..., RunningServer]]:
    """Start a server with config changes: ``make_server(pods=PodsMode.VERIFIED)``.

    ``publish=False`` binds the sockets without loading anything, so the server answers
    as it does before the first sync. ``kube=`` builds the Kubernetes source to use
    (for ``source=SourceSpec("kubernetes")``), e.g. with short timeouts.
    """
    started: list[_Handle] = []

    def factory(*, publish: bool = True, kube: Callable[[Config], KubeSource] | None = None,
                **changes: Any) -> RunningServer:
        config = demo_config(**changes)
        handle = _start(config, publish=publish, kube=kube(config) if kube else None)
        started.append(handle)
        return handle.server

    yield factory
    for handle in started:
        _stop(handle)


@pytest.fixture(params=["udp", "tcp"])
def proto(request: pytest.FixtureRequest) -> str:
    """Run a test once over UDP and once over TCP."""
    return str(request.param)


def rrset_texts(msg: dns.message.Message, section: str = "answer") -> list[str]:
    """Each record of a section as ``name ttl IN TYPE rdata`` text, in order."""
    out: list[str] = []
    for rrset in getattr(msg, section):
        for rd in rrset:
            out.append(f"{rrset.name} {rrset.ttl} IN {dns.rdatatype.to_text(rrset.rdtype)} {rd}")
    return out


def addresses(msg: dns.message.Message, rdtype: str = "A") -> list[str]:
    t = dns.rdatatype.from_text(rdtype)
    return [rd.to_text() for rrset in msg.answer if rrset.rdtype == t for rd in rrset]


def raw_exchange(server: RunningServer, query: bytes, *, tcp: bool,
                 timeout: float = 3.0) -> bytes:
    """Send one query as raw bytes and return the raw reply bytes."""
    if tcp:
        with socket.create_connection((server.host, server.port), timeout=timeout) as conn:
            conn.sendall(struct.pack("!H", len(query)) + query)
            data = b""
            while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
                chunk = conn.recv(65535)
                assert chunk, "connection closed early"
                data += chunk
            return data[2:]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(query, (server.host, server.port))
        return sock.recvfrom(65535)[0]


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise AssertionError("no free port for UDP and TCP")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.02) -> float:
    """Poll until ``predicate()`` holds; the seconds it took. AssertionError on timeout."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(interval)
    return time.monotonic() - start


def a_answer(server: RunningServer, name: str) -> tuple[int, list[str]]:
    """rcode and A addresses of one UDP query."""
    reply = server.ask(name, "A")
    return reply.rcode(), sorted(rd.to_text() for rrset in reply.answer for rd in rrset)


def resolves_to(server: RunningServer, name: str, ip: str) -> Callable[[], bool]:
    return lambda: a_answer(server, name) == (dns.rcode.NOERROR, [ip])


def is_nxdomain(server: RunningServer, name: str) -> Callable[[], bool]:
    return lambda: a_answer(server, name)[0] == dns.rcode.NXDOMAIN


# The Kubernetes-source tests: what the demo config watches, a demo-cluster name and its
# address, a Service to add, and make_server's type.
RESOURCES = ("namespaces", "services", "endpointslices")
WEB = "web.default.svc.cluster.local."
WEB_IP = "10.96.33.33"
StartServer = Callable[..., RunningServer]


def service(name: str, ip: str) -> dict[str, Any]:
    """A ClusterIP Service ``name`` in ``default`` at ``ip``, port http 80."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}


def svc_name(name: str) -> str:
    return f"{name}.default.svc.cluster.local."


FAKE_BOOKMARK_INTERVAL = 0.25  # well under the tests' 1 s stall detector: quiet watches stay


@contextlib.contextmanager
def serving_fake(objects: Path | Iterable[Mapping[str, Any]],
                 bookmark_interval: float = FAKE_BOOKMARK_INTERVAL) -> Iterator[FakeKube]:
    """A plain-HTTP FakeKube, serving while in the ``with``, holding ``objects``: a
    ``kubectl get -o yaml`` dump or the objects themselves."""
    server = FakeKube(bookmark_interval=bookmark_interval)
    if isinstance(objects, Path):
        server.load_yaml(objects)
    else:
        server.bulk_load(objects)
    with server:
        yield server


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    """A plain-HTTP FakeKube holding the demo cluster, sending bookmarks every 0.25 s."""
    with serving_fake(DEMO_CLUSTER) as server:
        yield server


@pytest.fixture
def upstreams() -> Iterator[Callable[..., FakeUpstream]]:
    """Fake upstreams: ``upstreams(records=EXAMPLE_ZONE)``; all closed at the end."""
    made: list[FakeUpstream] = []

    def factory(records: list[str] | None = None) -> FakeUpstream:
        up = FakeUpstream(EXAMPLE_ZONE if records is None else records)
        made.append(up)
        return up

    yield factory
    for up in made:
        up.close()
