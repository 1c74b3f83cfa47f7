"""The HTTP shell: /health, /ready and /metrics, as CoreDNS serves them.

This module exists so that probes and Prometheus see what they see from CoreDNS
(``health`` on :8080, ``ready`` on :8181, ``prometheus`` on :9153) without any of it
leaking into the DNS path. Each configured address gets one aiohttp site; two endpoints
configured on the same address (port other than 0) share one site serving both paths.
Port 0 always means a fresh ephemeral port per endpoint; ``bound`` says which ports
were taken.

- ``/health``: 200 ``OK`` while the event loop runs (it answers, so it is alive).
- ``/ready``: 200 ``OK`` once the first complete snapshot is published; 503 saying what
  is missing before that (the kinds not listed yet), and 503 ``draining`` once the app
  is shutting down.
- ``/metrics``: the Prometheus text exposition of the app's own registry.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from clusterdns.binding import bind_or_explain
from clusterdns.config import Config, ListenAddr

log = logging.getLogger(__name__)

ENDPOINTS = ("health", "ready", "metrics")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Listing(Protocol):
    """A source that lists kinds before it is in sync (``KubeSource``)."""

    def missing(self) -> list[str]:
        """The kinds not listed yet."""
        ...


class Served(Protocol):
    """What the endpoints read of the app they serve (``clusterdns.app.App``).

    A protocol rather than the class, so that this module stays below ``app``, which
    builds the endpoints, instead of importing it back.
    """

    @property
    def config(self) -> Config: ...
    @property
    def draining(self) -> bool: ...
    @property
    def kube(self) -> Listing | None: ...
    @property
    def registry(self) -> CollectorRegistry: ...
    def ready(self) -> bool: ...


def readiness(app: Served) -> tuple[bool, str]:
    """(ready, why) for ``/ready``."""
    if app.draining:
        return False, "draining"
    if app.ready():
        return True, "OK"
    if app.kube is not None:
        missing = app.kube.missing()
        if missing:
            return False, "not synced with the API server; not listed yet: " + ", ".join(
                missing)
        return False, "synced with the API server; first snapshot not published yet"
    return False, "no snapshot yet"


class HttpSites:
    """One aiohttp site per configured address, serving the given endpoints there.

    Shared by a single server (``HttpEndpoints``) and the ``--workers`` supervisor, which
    answer the same paths differently.
    """

    def __init__(self, config: Config, routes: Mapping[str, Handler], note: str = "") -> None:
        self.config = config
        self.routes = routes
        self.note = note  # appended to the "serving HTTP" log line
        self.bound: dict[str, tuple[str, int]] = {}
        self._runners: list[web.AppRunner] = []

    def plan(self) -> list[tuple[ListenAddr, list[str]]]:
        """Which endpoints each site serves: equal addresses share one (not port 0)."""
        sites: list[tuple[ListenAddr, list[str]]] = []
        for name in ENDPOINTS:
            addr: ListenAddr | None = getattr(self.config, name)
            if addr is None:
                continue
            shared = next((paths for a, paths in sites if a == addr and addr.port != 0), None)
            if shared is not None:
                shared.append(name)
            else:
                sites.append((addr, [name]))
        return sites

    async def start(self) -> None:
        """Bind every site; raises OSError (``BindError`` saying which endpoint and
        address) with nothing left bound if one cannot. Logs where each one serves once
        all are bound."""
        serving: list[tuple[str, ListenAddr]] = []
        try:
            for addr, paths in self.plan():
                webapp = web.Application()
                for path in paths:
                    webapp.router.add_get(f"/{path}", self.routes[path])
                runner = web.AppRunner(webapp, access_log=None, handle_signals=False,
                                       shutdown_timeout=1.0)
                await runner.setup()
                self._runners.append(runner)
                what = " and ".join(f"/{p}" for p in paths)
                sock = bind(addr, f"HTTP {what}", " or ".join(f"--{p}" for p in paths))
                site = web.SockSite(runner, sock)
                await site.start()
                host, port = sock.getsockname()[:2]
                for path in paths:
                    self.bound[path] = (host, port)
                serving.append((what, ListenAddr(host, port)))
        except BaseException:
            await self.close()
            raise
        for what, where in serving:
            log.info("serving HTTP %s on %s%s", what, where, self.note)

    async def close(self) -> None:
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()


class HttpEndpoints(HttpSites):
    """The endpoints of one serving process, answered from its ``App``."""

    def __init__(self, app: Served) -> None:
        self.app = app
        super().__init__(app.config, {"health": self._health, "ready": self._ready,
                                      "metrics": self._metrics})

    async def _health(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="OK")

    async def _ready(self, request: web.Request) -> web.StreamResponse:
        ok, why = readiness(self.app)
        return web.Response(text=why, status=200 if ok else 503)

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        # On the event loop on purpose: the collector reads counters the loop mutates.
        body = generate_latest(self.app.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def bind(addr: ListenAddr, role: str = "HTTP", setting: str = "") -> socket.socket:
    """A listening, non-blocking TCP socket on ``addr`` (dual-stack only for ``::``);
    ``BindError`` names ``role`` and ``setting`` (the flag choosing the address)."""
    family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if addr.host == "::"
                            else 1)
        bind_or_explain(sock, addr.host, addr.port, role, setting)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
