"""The file source: serve a cluster dump, and follow it as it is rewritten.

A dump (``source.dump``) is read once at start, in-process, before anything is served.
After that the files are polled (their size, mtime and inode) and a changed dump is
loaded only when it is safe and cheap to do so:

- **Settled.** ``kubectl get ... > dump.yaml`` truncates the file first and writes it
  later; an editor or a slow writer may rewrite it in place. A change is loaded only
  once the files' size, mtime and inode have stayed the same for ``settle`` seconds
  (half a second by default), re-checked every tenth of a second; a file renamed over
  the dump (a new inode) is complete and loaded at once.
- **Not empty.** A load that finds no objects at all, after one that found some, is
  refused with a warning: an empty or truncated file is a writer at work, not a
  cluster that lost every namespace. The previous answers keep serving.
- **In a child process.** Parsing holds the GIL for long stretches (``source.loader``),
  so it runs in a child interpreter that streams the objects back in small batches.
- **As changes.** The new objects are compared with the current ones in a worker thread
  (equal objects keep the current instance, so memory holds one copy) and only the
  changed keys are installed in ``store``; the app then publishes them as snapshot
  deltas, like watch events, instead of rebuilding everything.

A file that cannot be read or parsed is logged and the previous answers keep serving;
so does a malformed object, which is skipped with a warning (``source.dump``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence, Sized
from pathlib import Path

from clusterdns.objects import Cluster, KubeObject
from clusterdns.source.dump import LoadResult, SourceError, load_files
from clusterdns.source.loader import Loader
from clusterdns.store import KIND_OF, Key, Kind, Store, key_of

_log = logging.getLogger(__name__)

SETTLE = 0.5
"""Seconds the files must stay unchanged before a change is loaded."""
SETTLE_STEP = 0.1
"""Seconds between checks while waiting for the files to settle."""
STILL_CHANGING = 30.0
"""Seconds of constant change after which a warning says the dump never settles."""

# (mtime_ns, size, inode) of a path, or None when it cannot be stat'ed.
_FileState = tuple[int, int, int] | None


class FileSource:
    """Serves the objects in ``paths`` and reloads them when the files change.

    Call ``load()`` once for the first snapshot (it raises ``SourceError``), then run
    ``run(changed)`` as a task: ``changed()`` is called whenever ``store`` has new
    objects. A change is a different (mtime_ns, size, inode) of any path, so an atomic
    rename or a rewrite within the clock's granularity is noticed too.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        poll_interval: float = 0.5,
        *,
        settle: float = SETTLE,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._paths = tuple(paths)
        self._poll_interval = poll_interval
        self._settle = settle
        self._clock = clock
        self._sleep = sleep
        self._seen: tuple[_FileState, ...] | None = None
        self._loader = Loader()
        self.store = Store()

    def cluster(self) -> Cluster:
        return self.store.cluster()

    def load(self) -> Cluster:
        """The initial load, in this process; raises ``SourceError``."""
        self._seen = self._states()
        started = self._clock()
        result = load_files(self._paths)
        c = result.cluster
        objects: list[KubeObject] = [*c.namespaces, *c.services, *c.endpoint_slices, *c.pods,
                                     *c.service_imports]
        by_kind = _by_kind(objects)
        self._log_load(result, by_kind, self._clock() - started)
        for kind, objs in by_kind.items():
            self.store.replace(kind, objs.values())
        return self.cluster()

    async def load_async(self) -> Cluster:
        """Like ``load``, parsing in a child process (a source replaced by a reload)."""
        self._seen = self._states()
        await self._reload()
        return self.cluster()

    async def close(self) -> None:
        """Stop the loader child kept ready for the next reload."""
        await self._loader.close()

    async def run(self, changed: Callable[[], None]) -> None:
        """Poll forever; install every good reload and call ``changed``.

        A load that fails (unreadable, unparseable, empty after objects) is logged and
        the current objects stay.
        """
        while True:
            next_poll = self._clock() + self._poll_interval
            states = self._states()
            if states != self._seen:
                self._seen = await self._settled(states)
                try:
                    if await self._reload():
                        changed()
                except SourceError as exc:
                    _log.error("keeping the previous snapshot: %s", exc)
            await self._sleep(max(0.0, next_poll - self._clock()))

    async def _settled(self, states: tuple[_FileState, ...]) -> tuple[_FileState, ...]:
        """The files' states once they have not changed for ``settle`` seconds; at once
        when every changed file is a new one (a rename put it there whole)."""
        before = self._seen or (None,) * len(states)
        if all(old is not None and new is not None and new[2] != old[2]
               for old, new in zip(before, states, strict=True) if old != new):
            return states
        stable_since = started = self._clock()
        warned = False
        while self._clock() - stable_since < self._settle:
            await self._sleep(SETTLE_STEP)
            now = self._states()
            if now != states:
                states, stable_since = now, self._clock()
            if not warned and self._clock() - started >= STILL_CHANGING:
                warned = True
                _log.warning("%s: still changing after %.0f s; waiting for the writer to "
                             "finish (write to a temporary file and rename it over the "
                             "dump to replace it at once)", self._names(), STILL_CHANGING)
        return states

    async def _reload(self) -> bool:
        """Load in a child, refuse an empty result, install what changed; whether
        anything did. Raises ``SourceError``."""
        started = self._clock()
        objects, result = await self._loader.load(self._paths)
        loaded = self._clock() - started
        total = sum(self.store.count(kind) for kind in Kind)
        if not objects and total:
            self._log_load(result, {}, loaded)
            _log.warning("%s: no objects in it (empty, or still being written?); keeping the "
                         "previous %d objects", self._names(), total)
            return False
        # Sorting and comparing 100k objects is tens of milliseconds of Python: a worker
        # thread's, so that the event loop gets the GIL back every switch interval.
        by_kind, diffs = await asyncio.to_thread(self._diff, objects)
        self._log_load(result, by_kind, loaded)
        changed = False
        for kind, (merged, keys) in diffs.items():
            changed = self.store.install(kind, merged, keys) or changed
        return changed

    def _diff(self, objects: Sequence[KubeObject]) -> tuple[
            dict[Kind, dict[Key, KubeObject]],
            dict[Kind, tuple[dict[Key, KubeObject], list[Key]]]]:
        """``objects`` per kind, and ``store.diff`` of each kind (a worker thread's job:
        it only reads the store, which only this source's task writes)."""
        by_kind = _by_kind(objects)
        return by_kind, {kind: self.store.diff(kind, by_kind.get(kind, {}).values())
                         for kind in Kind}

    def _log_load(self, result: LoadResult, counts: Mapping[Kind, Sized],
                  seconds: float) -> None:
        for warning in result.warnings:
            _log.warning("skipped %s", warning)
        imports = len(counts.get(Kind.SERVICE_IMPORT, ()))
        _log.info(
            "loaded %d namespaces, %d services, %d endpoint slices, %d pods%s from %s in %.2f s",
            *(len(counts.get(kind, ())) for kind in (Kind.NAMESPACE, Kind.SERVICE,
                                                     Kind.ENDPOINT_SLICE, Kind.POD)),
            f", {imports} service imports" if imports else "", self._names(), seconds,
        )
        if result.ignored:
            _log.info(
                "ignored %d objects of unsupported kinds: %s",
                sum(result.ignored.values()),
                ", ".join(f"{kind}={count}" for kind, count in result.ignored.items()),
            )

    def _names(self) -> str:
        return ", ".join(str(path) for path in self._paths)

    def _states(self) -> tuple[_FileState, ...]:
        return tuple(_state(path) for path in self._paths)


def _by_kind(objects: Sequence[KubeObject]) -> dict[Kind, dict[Key, KubeObject]]:
    """Objects per kind and key; of duplicates the last wins (as in ``load_files``)."""
    out: dict[Kind, dict[Key, KubeObject]] = {}
    for obj in objects:
        out.setdefault(KIND_OF[type(obj)], {})[key_of(obj)] = obj
    return out


def _state(path: Path) -> _FileState:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)
