"""``serve --workers N``: a small supervisor process and N worker processes on one port.

One Python process answers on one core. To use more, ``clusterdns serve --workers N``
starts N workers that each bind the same UDP and TCP addresses with SO_REUSEPORT; the
kernel spreads datagrams (and new TCP connections) over them by a hash of the client's
address and port. This module is the supervisor, and the little the workers need from it.

Choices, and why:

- **Workers are re-executed** (``python -m clusterdns serve <the same arguments>
  --worker-index i ...``), not forked with multiprocessing. A worker is then exactly the
  single-process server (same code path, its own signal handlers, uvloop, config reload)
  and shows up in ``ps`` with its index; nothing has to be pickled.
- **One source per worker.** Each worker reads the files, or lists and watches the API
  server, by itself and builds its own snapshot. Simple and fault-isolated, but it costs
  N times: the API server sees N watch connections per watched kind (Services,
  EndpointSlices, Namespaces, and Pods with ``pods: verified``) and N initial lists (and N
  relists after a 410 or an outage); every worker holds its own objects and snapshot
  (N times the memory) and rebuilds on every change (N times the CPU). Workers may briefly
  disagree after a change (each publishes when its own watch delivers it).
- **Port 0** is resolved by the supervisor first (it binds a UDP+TCP pair with
  SO_REUSEPORT, notes the port, closes them); the workers then bind that port. Between
  the close and the workers' binds another program could take it; the workers then
  fail to start and the supervisor exits 2.
- **HTTP**: the supervisor serves ``/health``, ``/ready`` and ``/metrics`` on the
  configured addresses; every worker serves its own ``/ready`` and ``/metrics`` on a
  private loopback port (picked by the supervisor, passed on its command line).
  ``/health`` is 200 while the supervisor runs. ``/ready`` asks every worker and is 200
  only when all of them are ready (503 naming the workers that are not, or that do not
  answer); 503 ``draining`` after SIGTERM. ``/metrics`` is every worker's metrics merged,
  each sample labelled ``worker="<index>"`` (sum over ``worker`` for totals), plus
  ``clusterdns_workers`` and ``clusterdns_worker_restarts_total``.
- **Signals**: SIGTERM (first) makes ``/ready`` fail and is passed to every worker, which
  keeps answering for its lameduck window and exits; the supervisor exits 0 when all
  workers have exited cleanly (1 otherwise). A second SIGTERM, or SIGINT, is passed on
  too and stops the workers at once. SIGHUP is passed to every worker, which reloads its
  config; each worker also polls the config file itself. ``workers`` and the HTTP
  addresses are read once by the supervisor: changing them needs a restart.
- **A worker that dies** after the start is restarted, with a log line, after a backoff
  (1 s, doubling to 30 s; back to 1 s once a worker has lived a minute). A worker that
  fails during the start stops everything: the supervisor exits with its code. Workers
  hold the read end of a pipe from the supervisor; if the supervisor dies (even by
  SIGKILL), they see end-of-file and drain and exit as on SIGTERM.

With SO_REUSEPORT, a socket that closes drops the TCP connections still waiting in its
accept queue (Linux), so a dying worker can reset a few connecting clients; UDP queries
already queued to it are lost. Another program of the same user that also sets
SO_REUSEPORT can join the port unnoticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from clusterdns.config import Config, ListenAddr
from clusterdns.http import HttpSites
from clusterdns.server import _bind_pair

log = logging.getLogger(__name__)

BACKOFF_FIRST = 1.0  # seconds before restarting a worker that died
BACKOFF_MAX = 30.0
BACKOFF_RESET = 60.0  # a worker that lived this long restarts after BACKOFF_FIRST again
READY_TIMEOUT = 2.0  # seconds for a worker's private /ready to answer
METRICS_TIMEOUT = 5.0  # and its /metrics
_CLEAN_EXITS = (0, -signal.SIGTERM, -signal.SIGINT)  # while draining
PRIVATE_HOST = "127.0.0.1"



# --------------------------------------------------------------------- pure helpers


def worker_argv(argv: Sequence[str], index: int, listen: Sequence[ListenAddr],
                http_port: int, pipe_fd: int) -> list[str]:
    """The ``serve`` arguments of worker ``index``: the supervisor's own, then overrides
    (argparse keeps the last value) for the listen addresses, HTTP and the pipe."""
    out = [*argv, "--worker-index", str(index), "--worker-pipe", str(pipe_fd),
           "--health", "", "--ready", f"{PRIVATE_HOST}:{http_port}",
           "--metrics", f"{PRIVATE_HOST}:{http_port}"]
    for addr in listen:
        out += ["--worker-listen", str(addr)]
    return out


def overall_readiness(draining: bool,
                      workers: Sequence[tuple[int, int | None, str]]) -> tuple[bool, str]:
    """(ready, why) from each worker's (index, /ready status or None, body)."""
    if draining:
        return False, "draining"
    problems = [f"worker {i}: {body.strip() if status is not None else body}"
                for i, status, body in workers if status != 200]
    return (False, "; ".join(problems)) if problems else (True, "OK")


def merge_metrics(texts: Iterable[tuple[int, str]], extra: Iterable[Metric] = ()) -> bytes:
    """Prometheus text from several workers as one exposition: one family per name, every
    sample labelled with its worker's index."""
    families: dict[str, Metric] = {}
    for index, text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit)
            elif merged.type != family.type:
                continue  # cannot happen between workers of one version; never mix
            merged.samples.extend(
                s._replace(labels={**s.labels, "worker": str(index)}) for s in family.samples)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*families.values(), *extra]))
    return generate_latest(registry)


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def pick_ports(listen: Sequence[ListenAddr]) -> tuple[ListenAddr, ...]:
    """``listen`` with every port 0 replaced by a port free for UDP and TCP right now."""
    out = []
    for addr in listen:
        if addr.port == 0:
            udp, tcp = _bind_pair(addr.host, 0, reuse_port=True)
            port = int(udp.getsockname()[1])
            udp.close()
            tcp.close()
            addr = ListenAddr(addr.host, port)
        out.append(addr)
    return tuple(out)


def free_tcp_port(host: str = PRIVATE_HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"


# ------------------------------------------------------------------ worker side


def stop_with_supervisor(fd: int) -> None:
    """In a worker: drain and exit (as on SIGTERM) when the supervisor's pipe closes."""
    def wait() -> None:
        with contextlib.suppress(OSError):
            while os.read(fd, 64):
                pass
        log.warning("the supervisor is gone; draining and exiting")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait, name="supervisor-watch", daemon=True).start()


# ------------------------------------------------------------------ supervisor


@dataclass
class Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    http_port: int = 0
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = BACKOFF_FIRST
    history: list[int] = field(default_factory=list)  # pids, oldest first

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class Supervisor:
    """Starts, watches, signals and restarts the workers; serves the HTTP endpoints."""

    def __init__(self, config: Config, argv: Sequence[str]) -> None:
        self.config = config
        self.argv = list(argv)
        self.listen = config.listen
        self.workers = [Worker(i) for i in range(config.workers)]
        self.draining = False
        self.http = HttpSites(config, {"health": self._health, "ready": self._ready,
                                       "metrics": self._metrics}, " (for all workers)")
        self.http_bound = self.http.bound
        self._drain = asyncio.Event()
        self._pipe_read, self._pipe_write = os.pipe()
        self._session: aiohttp.ClientSession | None = None

    # ---------------------------------------------------------------- processes

    async def _spawn(self, worker: Worker) -> None:
        worker.http_port = free_tcp_port()
        args = worker_argv(self.argv, worker.index, self.listen, worker.http_port,
                           self._pipe_read)
        worker.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "clusterdns", *args, pass_fds=(self._pipe_read,))
        worker.started_at = time.monotonic()
        worker.history.append(worker.proc.pid)
        log.info("started worker %d (pid %d)", worker.index, worker.proc.pid)

    async def _started(self, worker: Worker) -> int | None:
        """Wait until the worker has bound its sockets (its private HTTP port accepts;
        it binds that after DNS) -> None, or until it exits -> its exit code."""
        assert worker.proc is not None
        exited = asyncio.ensure_future(worker.proc.wait())
        try:
            while not exited.done():
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection(PRIVATE_HOST, worker.http_port)
                    writer.close()
                    return None
                await asyncio.wait([exited], timeout=0.05)
            return exited.result()
        finally:
            exited.cancel()

    async def _keep(self, worker: Worker) -> int:
        """Restart the worker whenever it dies, until draining; its last exit code."""
        while True:
            assert worker.proc is not None
            code = await worker.proc.wait()
            if self.draining:
                return code
            lived = time.monotonic() - worker.started_at
            if lived >= BACKOFF_RESET:
                worker.backoff = BACKOFF_FIRST
            delay = worker.backoff
            worker.backoff = min(worker.backoff * 2, BACKOFF_MAX)
            log.error("worker %d (pid %d) died (%s) after %.1f s; restarting it in %.1f s",
                      worker.index, worker.proc.pid, describe_exit(code), lived, delay)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._drain.wait()
            if self.draining:
                return 0
            worker.restarts += 1
            await self._spawn(worker)

    def signal_workers(self, sig: signal.Signals) -> None:
        for worker in self.workers:
            if worker.alive:
                assert worker.proc is not None
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(sig)

    def terminate(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if not self.draining:
            log.info("%s: reporting not ready; every worker drains and exits", sig.name)
        self.draining = True
        self._drain.set()
        self.signal_workers(sig)

    # --------------------------------------------------------------------- HTTP

    async def _ask(self, worker: Worker, path: str,
                   timeout: float) -> tuple[int | None, str]:
        if not worker.alive or self._session is None:
            return None, "not running"
        url = f"http://{PRIVATE_HOST}:{worker.http_port}/{path}"
        try:
            async with self._session.get(
                    url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                return resp.status, await resp.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return None, f"not answering ({exc.__class__.__name__})"

    async def _health(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="OK")

    async def _ready(self, request: web.Request) -> web.StreamResponse:
        answers = await asyncio.gather(*(self._ask(w, "ready", READY_TIMEOUT)
                                         for w in self.workers))
        ok, why = overall_readiness(
            self.draining, [(w.index, s, b) for w, (s, b) in zip(self.workers, answers,
                                                                 strict=True)])
        return web.Response(text=why, status=200 if ok else 503)

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        answers = await asyncio.gather(*(self._ask(w, "metrics", METRICS_TIMEOUT)
                                         for w in self.workers))
        texts = [(w.index, body) for w, (status, body) in zip(self.workers, answers,
                                                               strict=True) if status == 200]
        count = GaugeMetricFamily("clusterdns_workers", "Worker processes configured "
                                  "(--workers) and running.", labels=["state"])
        count.add_metric(["configured"], len(self.workers))
        count.add_metric(["running"], sum(w.alive for w in self.workers))
        restarts = CounterMetricFamily("clusterdns_worker_restarts", "Times the supervisor "
                                       "restarted a worker that died.", labels=["worker"])
        for w in self.workers:
            restarts.add_metric([str(w.index)], w.restarts)
        body = merge_metrics(texts, [count, restarts])
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> int:
        """Start every worker, serve until they have all exited; the exit code."""
        loop = asyncio.get_running_loop()
        for sig, action in ((signal.SIGTERM, lambda: self.terminate(signal.SIGTERM)),
                            (signal.SIGINT, lambda: self.terminate(signal.SIGINT)),
                            (signal.SIGHUP, lambda: self.signal_workers(signal.SIGHUP))):
            loop.add_signal_handler(sig, action)
        self._session = aiohttp.ClientSession()
        try:
            self.listen = pick_ports(self.config.listen)
            # HTTP first: a taken HTTP port then fails the start before any worker has
            # bound (and logged) the DNS port. /ready says 503 until every worker is up.
            await self.http.start()
            for worker in self.workers:
                await self._spawn(worker)
            for worker in self.workers:
                code = await self._started(worker)
                if code is not None and not self.draining:
                    log.error("worker %d failed to start (%s; its reason is logged above, "
                              "marked [worker %d]); stopping", worker.index,
                              describe_exit(code), worker.index)
                    await self._stop_all()
                    return code if code > 0 else 2
            if not self.draining:
                log.info("%d workers serving %s", len(self.workers),
                         ", ".join(str(a) for a in self.listen))
            codes = await asyncio.gather(*(self._keep(w) for w in self.workers))
        except OSError as exc:
            log.error("cannot start: %s", exc)
            await self._stop_all()
            return 2
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self._close()
        bad = [(w.index, c) for w, c in zip(self.workers, codes, strict=True)
               if c not in _CLEAN_EXITS]
        for index, code in bad:
            log.error("worker %d ended with %s", index, describe_exit(code))
        log.info("all workers have exited")
        return 1 if bad else 0

    async def _stop_all(self) -> None:
        self.draining = True
        self._drain.set()
        self.signal_workers(signal.SIGINT)
        for worker in self.workers:
            if worker.proc is not None:
                await worker.proc.wait()

    async def _close(self) -> None:
        await self.http.close()
        if self._session is not None:
            await self._session.close()
        for fd in (self._pipe_read, self._pipe_write):
            with contextlib.suppress(OSError):
                os.close(fd)


async def supervise(config: Config, argv: Sequence[str]) -> int:
    """Run the supervisor for ``config.workers`` workers started with ``argv``."""
    return await Supervisor(config, argv).run()
