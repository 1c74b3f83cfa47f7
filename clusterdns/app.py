"""Wiring: source -> snapshot reference -> handler -> sockets, with named guarded tasks.

``App`` owns the one ``SnapshotRef``. It loads the source first (so a broken start
fails before any socket is bound), starts the listeners, publishes the first snapshot,
then runs the source's watch loop as a named task. The first root task that dies stops
the process with a clear message; SIGTERM and SIGINT stop it cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from typing import Any

from clusterdns.config import Config
from clusterdns.handler import Handler
from clusterdns.objects import Cluster
from clusterdns.server import DNSServer, ServerOptions
from clusterdns.snapshot import SnapshotRef, unsynced
from clusterdns.source.file import FileSource, SourceError

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The server cannot start; the message says why (exit code 2)."""


class App:
    def __init__(self, config: Config) -> None:
        if config.source.kind != "file":
            raise StartupError(
                "--source kubernetes is not implemented yet; use --source file:PATH "
                "(a dump from `kubectl get ns,svc,endpointslices,pods -A -o yaml`)")
        self.config = config
        self.ref = SnapshotRef(unsynced(config))
        self.handler = Handler(self.ref, config.max_udp_size)
        self.server = DNSServer(self.handler.handle, ServerOptions(
            tcp_idle_timeout=config.tcp_idle_timeout,
            tcp_max_connections=config.tcp_max_connections))
        self.source = FileSource(config.source.paths, config.poll_interval)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()
        self.failure: str | None = None

    def publish(self, cluster: Cluster) -> None:
        snap = self.ref.publish_cluster(cluster, self.config)
        log.info("published snapshot serial %d (%d names)", snap.serial, len(snap.nodes))

    async def start(self) -> None:
        """Load, bind, publish, then watch. Raises StartupError or OSError."""
        cluster = self.source.load()
        await self.server.start([(a.host, a.port) for a in self.config.listen])
        for host, port in self.server.bound:
            log.info("listening on %s port %d (udp and tcp)", host, port)
        self.publish(cluster)
        self._spawn("file-source", self.source.run(self.publish))

    def _spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        self.failure = (f"task {task.get_name()!r} died: {exc!r}" if exc is not None
                        else f"task {task.get_name()!r} ended unexpectedly")
        log.error("%s; stopping", self.failure)
        self._stopped.set()

    def stop(self) -> None:
        self._stopped.set()

    async def wait(self) -> None:
        await self._stopped.wait()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.server.stop()


async def run(config: Config) -> int:
    """Serve until SIGTERM/SIGINT or a fatal task failure; the process exit code."""
    try:
        app = App(config)
        await app.start()
    except (StartupError, SourceError) as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 2
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, app.stop)
    try:
        await app.wait()
    finally:
        await app.close()
    return 1 if app.failure else 0
