"""Wiring: source -> snapshot reference -> handler -> sockets, with named guarded tasks.

``App`` owns the one ``SnapshotRef``. With the file source it loads first (so a broken
start fails before any socket is bound), binds, and publishes at once. With the
Kubernetes source it binds first and answers SERVFAIL in our zones until every watched
kind has listed. Either way, sources only say "something changed"; one rebuild task
coalesces bursts of changes into few snapshot builds, runs each build off the event loop
and publishes it with one reference swap, recording programming latency. The first root
task that dies stops the process with a clear message; SIGTERM and SIGINT stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clusterdns import autopath
from clusterdns.config import Config
from clusterdns.forward import CacheEntry, Forwarder
from clusterdns.handler import Handler
from clusterdns.http import HttpEndpoints
from clusterdns.metrics import (
    MONITORED_CODES,
    ForwardDurations,
    GcPauses,
    Latency,
    QueryMetrics,
    new_registry,
)
from clusterdns.objects import Cluster, KubeObject, ServiceKind
from clusterdns.querylog import QueryLog
from clusterdns.reload import ConfigWatcher
from clusterdns.server import DNSServer, Observe, ServerOptions
from clusterdns.snapshot import Snapshot, SnapshotRef, unsynced
from clusterdns.source import KubeSourceError
from clusterdns.source.dump import SourceError
from clusterdns.source.file import FileSource
from clusterdns.store import KIND_TYPES, Key
from clusterdns.transfer import TransferPolicy
from clusterdns.wire import Query

if TYPE_CHECKING:
    from clusterdns.source.kube import KubeSource

log = logging.getLogger(__name__)

COALESCE_SECONDS = 0.002  # gather a burst of events into one rebuild (a delta costs ~1 ms)
SWITCH_INTERVAL = 0.001  # seconds a thread may hold the GIL while another waits for it
DELTA_CHUNK = 32  # deltas per publish when many come at once
TRIM_EVERY = 5.0  # seconds between returning freed heap memory to the system after publishes

# What a reload cannot change without a restart (bound sockets).
RESTART_KEYS = ("listen", "health", "ready", "metrics", "tcp_max_connections",
                "tcp_idle_timeout", "workers")
# What makes a reload replace the source (and so re-read files or re-list the API).
SOURCE_KEYS = ("source", "kubeconfig", "context", "labels", "namespaces", "pods",
               "endpoint_pod_names", "poll_interval", "multicluster_zones")
# What makes a reload replace the forwarder (and so empty its cache).
FORWARD_KEYS = ("upstreams", "forward_timeout", "forward_max_concurrent", "loop_detect",
                "cache_size", "cache_ttl", "cache_negative_ttl", "serve_stale")


def _libc_trim() -> Callable[[int], object] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None


_MALLOC_TRIM = _libc_trim()


def release_memory() -> None:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim``).

    Relists and rebuilds allocate and free tens of MB; glibc keeps freed chunks between
    live ones, and without this the process stays at its high-water mark. ctypes drops
    the GIL for the call, so it runs in a worker thread without stalling answers.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def autopath_search(config: Config) -> tuple[str, ...]:
    """The search domains autopath walks after ``<zone>``: those of the server's own
    resolv.conf, which the kubelet also gives every ClusterFirst pod (CoreDNS reads
    /etc/resolv.conf the same way). A file that cannot be read gives none, with a
    warning: the walk then ends with the name itself, a little sooner than the pod's."""
    if not config.autopath:
        return ()
    path = config.autopath_resolv_conf
    search: tuple[str, ...] = ()
    if path:
        try:
            search = autopath.read_search(Path(path).read_text(encoding="utf-8",
                                                               errors="replace"))
        except OSError as exc:
            log.warning("autopath: cannot read the search domains of %s (%s); walking "
                        "none of its own", path, exc.strerror or exc)
    log.info("autopath on for %s: a pod's search list is walked as <ns>.svc.<zone>, "
             "svc.<zone>, <zone>%s, then the name itself",
             ", ".join(config.autopath_zones) or "every forward zone",
             "".join(f", {d}" for d in search))
    return search


def _kube_source(config: Config) -> KubeSource:
    """The Kubernetes source, imported only when used (``kubernetes`` is slow to import)."""
    from clusterdns.source.kube import KubeSource

    return KubeSource(config)


class App:
    def __init__(self, config: Config, *, kube: KubeSource | None = None) -> None:
        self.config = config
        self.ref = SnapshotRef(unsynced(config))
        # Out-of-zone names go upstream only when upstreams are configured (SPEC S5).
        self.forwarder = Forwarder(config) if config.upstreams else None
        # The fast path skips the query log, so logging queries turns it off.
        self.handler = Handler(self.ref, config.max_udp_size, self.forwarder,
                               fast=not config.log_queries)
        self.handler.autopath_search = autopath_search(config)
        self.handler.transfers = TransferPolicy.of(config)  # zone transfers: None is off
        # Per-query observers (SPEC S6): counters only when /metrics is served.
        self.query_metrics = (
            QueryMetrics((*config.zones, *config.multicluster_zones),
                         self.forwarder.stats if self.forwarder else None)
            if config.metrics is not None else None)
        if self.handler.fast is not None:  # hit cells: one per metric type label, folded
            hits = self.handler.fast.hits  # into the exporter's totals when too many
            hits.types = MONITORED_CODES
            if self.query_metrics is not None:
                hits.on_fold = self.query_metrics.absorb_hits
        self.forward_durations = ForwardDurations()
        if self.forwarder is not None:
            self._connect(self.forwarder)
        self.query_log = QueryLog() if config.log_queries else None
        self.server = DNSServer(self.handler.handle, ServerOptions(
            tcp_idle_timeout=config.tcp_idle_timeout,
            tcp_max_connections=config.tcp_max_connections,
            reuse_port=config.workers > 1), observe=self._observer(),
            fast=self.handler.fast.lookup if self.handler.fast is not None else None,
            transfer=self.handler.transfer)
        self.latency = Latency()
        self.gc_pauses = GcPauses()
        self.sync_duration: float | None = None  # seconds from start() to the first sync
        self._started_at = time.monotonic()
        self.registry = new_registry(self, self.query_metrics)
        self.http = HttpEndpoints(self)
        self.file: FileSource | None = None
        self.kube: KubeSource | None = None
        if config.source.kind == "file":
            self.file = FileSource(config.source.paths, config.poll_interval)
        else:
            self.kube = kube or _kube_source(config)
        self._dirty = asyncio.Event()
        self._trimmed = 0.0  # monotonic time of the last release_memory
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()
        self.failure: str | None = None
        self.draining = False  # SIGTERM received: /ready fails, queries still answered

    # ----------------------------------------------------------------- publication

    def _observer(self) -> Observe | None:
        metrics, querylog = self.query_metrics, self.query_log
        if metrics is not None and querylog is not None:
            first, second = metrics.observe, querylog.observe

            def both(query: bytes, reply: bytes | None, tcp: bool, peer: Any,
                     start: float) -> None:
                first(query, reply, tcp, peer, start)
                second(query, reply, tcp, peer, start)
            return both
        if metrics is not None:
            return metrics.observe
        return querylog.observe if querylog is not None else None

    @property
    def http_bound(self) -> dict[str, tuple[str, int]]:
        """Where each HTTP endpoint listens: ``{"ready": (host, port)}``."""
        return self.http.bound

    def publish(self, cluster: Cluster, origin: object = None) -> Snapshot:
        """Build and publish a snapshot of ``cluster`` now, on the calling thread.

        ``origin`` (the Kubernetes store) lets later changes there be applied as deltas.
        """
        snap = self.ref.publish_cluster(cluster, self.config, origin)
        # A full build leaves ~1M long-lived objects without cycles; freezing them keeps
        # the cyclic collector from walking them all on each full collection (which
        # would stall queries and incremental publishes for 100+ ms at 100k endpoints).
        gc.freeze()
        if self.sync_duration is None and snap.synced:
            self.sync_duration = time.monotonic() - self._started_at
        log.debug("published snapshot serial %d (%d names)", snap.serial, len(snap.nodes))
        return snap

    def publish_changes(self, deltas: list[tuple[type[KubeObject], Key, KubeObject | None]],
                        ) -> Snapshot:
        """Apply object deltas to the last snapshot and publish (issue 5: incremental).

        Many deltas at once (after a relist, or a reloaded dump) are published
        ``DELTA_CHUNK`` at a time: recomputing hundreds of large services in one publish
        holds their old and new records together (15 MB for 400 headless services of
        100 endpoints), and watch events never promised one generation across objects.
        """
        for start in range(0, max(1, len(deltas)), DELTA_CHUNK):
            snap = self.ref.publish_changes(deltas[start:start + DELTA_CHUNK])
        log.debug("published snapshot serial %d (%d changes)", snap.serial, len(deltas))
        return snap

    def _next_publish(self) -> Callable[[], Snapshot]:
        """Decide, on the loop thread that owns the store, what the next publish does.

        The source's changed keys become deltas when the last build came from that
        same store under the same config; otherwise (first sync, a new source, a config
        change, too many changes) it is a full build.
        """
        source = self.kube or self.file
        assert source is not None
        store = source.store
        changes = store.take_changes()
        if changes is not None and self.ref.can_apply(self.config, store):
            deltas = [(KIND_TYPES[kind], key, obj) for kind, key, obj in changes]
            return lambda: self.publish_changes(deltas)
        cluster = source.cluster()
        return lambda: self.publish(cluster, store)

    def changed(self) -> None:
        """A source has something new; the rebuild task will pick it up."""
        self._dirty.set()

    async def _rebuild_loop(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(COALESCE_SECONDS)
            self._dirty.clear()
            pending = self.kube.take_pending() if self.kube is not None else []
            snap = await asyncio.to_thread(self._next_publish())
            now, wall = time.monotonic(), time.time()
            for p in pending:  # seconds from receipt (and from trigger time) to publication
                self.latency.programming.observe(now - p.received)
                info = snap.services.get(p.service) if p.service is not None else None
                if p.triggered is not None and info is not None and \
                        info.kind is not ServiceKind.EXTERNAL_NAME:
                    # A slice with the controller's trigger time belongs to a service
                    # with a selector (CoreDNS's reasoning too).
                    kind = ("headless_with_selector" if info.kind is ServiceKind.HEADLESS
                            else "cluster_ip")
                    self.latency.observe_trigger(kind, wall - p.triggered)
            del snap  # an old generation kept alive pins every index shard changed since
            if now - self._trimmed >= TRIM_EVERY:
                self._trimmed = now
                await asyncio.to_thread(release_memory)

    # ------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Load (file), bind, publish (file), then watch. Raises on a broken start."""
        self._started_at = time.monotonic()
        self.gc_pauses.install()
        # Snapshot builds, reload diffs and list decoding run in worker threads; with the
        # default 5 ms switch interval a query arriving meanwhile waits up to 5 ms for
        # the GIL. 1 ms keeps answering within a millisecond at a small cost in handoffs.
        sys.setswitchinterval(SWITCH_INTERVAL)
        if self.file is not None:
            self.file.load()
        elif self.kube is not None:
            await self.kube.connect()
        await self.server.start([(a.host, a.port) for a in self.config.listen])
        if self.forwarder is not None:  # needs our bound addresses to skip ourselves
            await self.forwarder.start(self.server.bound)
        await self.http.start()  # before the first sync, so /ready can say 503
        # Only now that every socket is bound: a port taken for HTTP must not follow a
        # line saying that the server listens.
        for host, port in self.server.bound:
            log.info("listening on %s port %d (udp and tcp)", host, port)
        if self.file is not None:
            self.file.store.take_changes()  # what the first build covers
            snap = self.publish(self.file.cluster(), self.file.store)
            log.info("published snapshot serial %d (%d names)", snap.serial, len(snap.nodes))
        self._spawn("rebuild", self._rebuild_loop())
        if self.file is not None:
            self._spawn("file-source", self.file.run(self.changed))
        elif self.kube is not None:
            self._spawn("kube-source", self.kube.run(self.changed))

    def ready(self) -> bool:
        return self.ref.get().synced

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
        self.gc_pauses.remove()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.kube is not None:
            await self.kube.close()
        if self.file is not None:
            await self.file.close()
        await self.http.close()
        await self.server.stop()
        if self.forwarder is not None:
            await self.forwarder.close()

    # ---------------------------------------------------------------------- reload

    async def apply_config(self, new: Config) -> None:
        """Switch to ``new`` atomically; raises (changing nothing) if its source is bad.

        Sockets stay as they are (a changed listen or HTTP address needs a restart, and
        says so). A changed source is loaded (file) or connected (kubernetes) before
        anything is switched; until a new Kubernetes source has synced, the previous
        snapshot keeps answering. Everything else takes effect with the next snapshot,
        which is built at once.
        """
        old = self.config
        fixed = {k: getattr(old, k) for k in RESTART_KEYS if getattr(old, k) != getattr(new, k)}
        if fixed:
            log.warning("config reload: %s changed; restart clusterdns to apply that",
                        ", ".join(fixed))
            new = new.replace(**fixed)
        restart = any(getattr(old, k) != getattr(new, k) for k in SOURCE_KEYS)
        file: FileSource | None = None
        kube: KubeSource | None = None
        if restart and new.source.kind == "file":
            file = FileSource(new.source.paths, new.poll_interval)
            await file.load_async()
        elif restart:
            kube = _kube_source(new)
            await kube.connect()
        # Nothing below can fail: switch.
        self.config = new
        self.handler.max_udp_size = new.max_udp_size
        self.handler.autopath_search = autopath_search(new)
        self.handler.transfers = TransferPolicy.of(new)
        if restart:
            await self._stop_source()
            self.file, self.kube = file, kube
            if file is not None:
                self._spawn("file-source", file.run(self.changed))
            elif kube is not None:
                self._spawn("kube-source", kube.run(self.changed))
        elif self.kube is not None:  # settings each watch reads when it starts
            self.kube.config = new
        if any(getattr(old, k) != getattr(new, k) for k in FORWARD_KEYS):
            await self._replace_forwarder(new)
        if self.kube is None or self.kube.synced:
            self.changed()

    async def _replace_forwarder(self, config: Config) -> None:
        previous = self.forwarder
        forwarder = Forwarder(config) if config.upstreams else None
        if forwarder is not None:
            self._connect(forwarder)
            await forwarder.start(self.server.bound)
        self.forwarder = self.handler.forwarder = forwarder
        if self.query_metrics is not None:
            self.query_metrics.use_forwarder(forwarder.stats if forwarder else None)
        if previous is not None:
            await previous.close()

    def _connect(self, forwarder: Forwarder) -> None:
        """Hook ``forwarder`` up to the metrics and to the fast path, which keeps the
        replies it gives from its cache (and ages their TTLs by its clock)."""
        forwarder.observe = self.forward_durations.observe
        fast = self.handler.fast
        if fast is None:
            return
        fast.clock = lambda: forwarder.clock()

        def remember(query: Query, tcp: bool, reply: bytes, ttls: list[tuple[int, int]],
                     ages: int, expires: float, entry: CacheEntry) -> None:
            fast.remember(query.raw, tcp, reply, ttls, entry.stored, ages, expires,
                          query.qtype, entry.kind == "denial", entry)
        forwarder.remember = remember

    async def _stop_source(self) -> None:
        for task in [t for t in self._tasks if t.get_name() in ("file-source", "kube-source")]:
            self._tasks.remove(task)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.kube is not None:
            await self.kube.close()
        if self.file is not None:
            await self.file.close()


async def run(config: Config, load: Callable[[], Config] | None = None,
              watch: Sequence[Path] = ()) -> int:
    """Serve until SIGTERM/SIGINT or a fatal task failure; the process exit code.

    ``load`` re-reads the config (file plus flags) for reloads, on SIGHUP and when one of
    the ``watch`` files changes. SIGTERM fails /ready at once, keeps answering for
    ``lameduck`` seconds, then stops; SIGINT (or a second SIGTERM) stops at once.
    """
    app = App(config)
    try:
        await app.start()
    except (SourceError, KubeSourceError) as exc:
        log.error("%s", exc)
        await app.close()
        return 2
    except OSError as exc:
        log.error("cannot start: %s", exc)
        await app.close()
        return 2
    loop = asyncio.get_running_loop()

    def terminate() -> None:
        if app.draining:
            app.stop()
            return
        app.draining = True
        lameduck = app.config.lameduck
        log.info("SIGTERM: reporting not ready; answering for %.1f s more, then exiting",
                 lameduck)
        loop.call_later(lameduck, app.stop)

    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGTERM, terminate)
        loop.add_signal_handler(signal.SIGINT, app.stop)
    if load is not None:
        async def apply(new: Config) -> None:
            await app.apply_config(new)
            watcher.interval = new.reload

        watcher = ConfigWatcher(watch, load, apply, config, config.reload)
        app._spawn("config-reload", watcher.run())
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, watcher.request)
    try:
        await app.wait()
    finally:
        await app.close()
    return 1 if app.failure else 0
