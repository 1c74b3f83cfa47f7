"""Loading dump files in a child process, so that parsing never stalls answering.

Parsing holds the GIL: PyYAML's C loader and the ``json`` decoder run long stretches of C
without letting another thread in, so a reload parsed in a worker thread stopped the
event loop for as long as the parse took (33% of queries lost while a 1.5 MB YAML dump
was rewritten every 2 s). Here a child interpreter (``python -m clusterdns.source.loader``)
reads and converts the files with ``dump.load_files`` and streams the slim objects back
over a pipe, pickled in frames of at most about ``FRAME_BYTES``, each prefixed with its
length. The parent reads and unpickles one frame at a time on the event loop (a fraction
of a millisecond each), yielding to the loop after each, so queries are answered
between frames.

The child is started ahead of time and waits for the paths on its stdin, so a reload
does not wait for an interpreter to start (a quarter of a second). When every file it
read was a YAML List it could read item by item (``dump.ItemCache``), it stays for the
next load and keeps its cache, so that a rewritten dump costs only its changed items;
otherwise (JSON, whose parse leaves a large heap behind) it exits, and the next child is
started at once. Children are started with ``subprocess.Popen`` in a worker thread:
asyncio's own subprocess call blocked the loop for 15 ms in a large process. The child
is our own program talking over our own pipe: unpickling its output is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any

from clusterdns.objects import Cluster, EndpointSlice, KubeObject
from clusterdns.source.dump import ItemCache, LoadResult, SourceError, load_files

FRAME_BYTES = 16 * 1024
"""About how many bytes of pickle per frame (one large object may make a frame larger):
a frame is unpickled in a fraction of a millisecond."""
_LENGTH = struct.Struct("!I")


def _write(out: IO[bytes], frame: tuple[Any, ...]) -> None:
    data = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(_LENGTH.pack(len(data)) + data)


def child(paths: Sequence[str], out: IO[bytes], cache: ItemCache | None = None) -> bool:
    """The child's side: load ``paths`` and write the frames to ``out``; whether the
    child should stay for the next load (everything went through ``cache``)."""
    try:
        result = load_files([Path(p) for p in paths], cache)
    except SourceError as exc:
        _write(out, ("error", str(exc), False))
        return False
    cluster = result.cluster
    batch: list[KubeObject] = []
    size = 0
    everything: tuple[KubeObject, ...] = (*cluster.namespaces, *cluster.services,
                                          *cluster.endpoint_slices, *cluster.pods,
                                          *cluster.service_imports)
    for obj in everything:
        batch.append(obj)
        size += _pickled_size(obj)
        if size >= FRAME_BYTES:
            _write(out, ("objects", batch))
            batch, size = [], 0
    if batch:
        _write(out, ("objects", batch))
    stay = cache is not None and cache.complete
    _write(out, ("done", result.warnings, dict(result.ignored), stay))
    return stay


def _pickled_size(obj: KubeObject) -> int:
    """About how many bytes ``obj`` takes pickled (an endpoint ~40, anything else ~150)."""
    return 100 + 40 * obj.endpoint_count if isinstance(obj, EndpointSlice) else 150


def _spawn() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "clusterdns.source.loader"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


class _ChildGone(Exception):
    """The child was gone before it took the request (the load is tried again)."""


class _Child:
    """A loader child and the reader of its frames."""

    def __init__(self, process: subprocess.Popen[bytes], reader: asyncio.StreamReader,
                 transport: asyncio.BaseTransport) -> None:
        self.process = process
        self.reader = reader
        self.transport = transport

    @classmethod
    async def start(cls) -> _Child:
        process = await asyncio.to_thread(_spawn)
        assert process.stdout is not None
        reader = asyncio.StreamReader(limit=1 << 24)
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), process.stdout)
        return cls(process, reader, transport)

    async def stop(self) -> None:
        self.transport.close()
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await asyncio.to_thread(self.process.wait)
        for pipe in (self.process.stdin, self.process.stderr):
            if pipe is not None:
                pipe.close()


class Loader:
    """Loads dump files in child processes, one at a time, keeping one ready."""

    def __init__(self) -> None:
        self._child: asyncio.Future[_Child] | None = None

    def _prepare(self) -> None:
        if self._child is None:
            self._child = asyncio.ensure_future(_Child.start())

    async def load(self, paths: Sequence[Path]) -> tuple[list[KubeObject], LoadResult]:
        """Load ``paths`` in a child: the objects, and the ``LoadResult`` (whose
        ``cluster`` is empty: the objects come separately, as they were read).

        Raises ``SourceError`` as ``load_files`` would, or when the child fails.
        """
        for attempt in range(2):
            self._prepare()
            assert self._child is not None
            child = await self._child
            stay = False
            try:
                objects, result, stay = await self._run(child, paths)
                return objects, result
            except _ChildGone as gone:
                if attempt:
                    raise SourceError(f"{', '.join(map(str, paths))}: the loader process "
                                      f"failed{gone}") from None
            finally:
                if not stay:
                    self._child = None
                    await child.stop()
                self._prepare()  # the next child starts while this load's result is used
        raise AssertionError("unreachable")

    async def _run(self, child: _Child, paths: Sequence[Path],
                   ) -> tuple[list[KubeObject], LoadResult, bool]:
        process, reader = child.process, child.reader
        assert process.stdin is not None
        objects: list[KubeObject] = []
        try:
            process.stdin.write(json.dumps([str(p) for p in paths]).encode() + b"\n")
            process.stdin.flush()
        except OSError:  # a child kept from the last load died meanwhile
            raise _ChildGone(" (its pipe was closed)") from None
        frames = 0
        while True:
            try:
                size = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))[0]
                frame = pickle.loads(await reader.readexactly(size))
            except asyncio.IncompleteReadError:
                code = await asyncio.to_thread(process.wait)
                assert process.stderr is not None
                lines = (await asyncio.to_thread(process.stderr.read)).decode(
                    "utf-8", "replace").strip().splitlines()
                detail = f" (exit status {code}){': ' + lines[-1] if lines else ''}"
                if not frames:  # it died before it answered: try a fresh one
                    raise _ChildGone(detail) from None
                raise SourceError(f"{', '.join(map(str, paths))}: the loader process "
                                  f"failed{detail}") from None
            frames += 1
            if frame[0] == "objects":
                objects.extend(frame[1])
                # Frames already buffered would be read without a pause: let the loop
                # answer what arrived meanwhile before the next.
                await asyncio.sleep(0)
            elif frame[0] == "error":
                raise SourceError(frame[1])
            else:
                _, warnings, ignored, stay = frame
                return objects, LoadResult(Cluster(), tuple(warnings),
                                           MappingProxyType(ignored)), stay

    async def close(self) -> None:
        """Stop the child kept ready, if any."""
        if self._child is None:
            return
        child = await self._child
        self._child = None
        await child.stop()


def main() -> None:
    """The child: read the paths (a JSON list on one line of stdin), load, write frames.

    It lowers its own scheduling priority first: on a machine with few cores, the server
    answering queries goes before a reload's parsing."""
    with contextlib.suppress(OSError):
        os.nice(10)
    cache = ItemCache()
    for line in sys.stdin:
        paths = json.loads(line)
        stay = child(paths, sys.stdout.buffer, cache)
        sys.stdout.buffer.flush()
        if not stay:
            return


if __name__ == "__main__":
    main()
