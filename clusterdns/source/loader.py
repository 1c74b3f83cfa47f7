"""Loading dump files in a child process, so that parsing never stalls answering.

Parsing holds the GIL: PyYAML's C loader and the ``json`` decoder run long stretches of C
without letting another thread in, so a reload parsed in a worker thread stopped the
event loop for as long as the parse took (33% of queries lost while a 1.5 MB YAML dump
was rewritten every 2 s). Here a child interpreter (``python -m clusterdns.source.loader``)
reads and converts the files with ``dump.load_files`` and streams the slim objects back
over a pipe, pickled in frames of at most about ``FRAME_BYTES``, each prefixed with its
length. The parent reads and unpickles one frame at a time on the event loop (well under
a millisecond each), so queries are answered between frames.

The child is started ahead of time and waits for the paths on its stdin, so a reload
does not wait for an interpreter to start (a quarter of a second); it serves one load
and exits, and the next child is started at once. It is started with
``subprocess.Popen`` in a worker thread: asyncio's own subprocess call blocked the loop
for 15 ms in a large process. The child is our own program talking over our own pipe:
unpickling its output is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pickle
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any

from clusterdns.objects import Cluster, EndpointSlice, KubeObject
from clusterdns.source.dump import LoadResult, SourceError, load_files

FRAME_BYTES = 64 * 1024
"""About how many bytes of pickle per frame (one large object may make a frame larger)."""
_LENGTH = struct.Struct("!I")


def _write(out: IO[bytes], frame: tuple[Any, ...]) -> None:
    data = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(_LENGTH.pack(len(data)) + data)


def child(paths: Sequence[str], out: IO[bytes]) -> None:
    """The child's side: load ``paths`` and write the frames to ``out``."""
    try:
        result = load_files([Path(p) for p in paths])
    except SourceError as exc:
        _write(out, ("error", str(exc)))
        return
    cluster = result.cluster
    batch: list[KubeObject] = []
    size = 0
    everything: tuple[KubeObject, ...] = (*cluster.namespaces, *cluster.services,
                                          *cluster.endpoint_slices, *cluster.pods)
    for obj in everything:
        batch.append(obj)
        size += _pickled_size(obj)
        if size >= FRAME_BYTES:
            _write(out, ("objects", batch))
            batch, size = [], 0
    if batch:
        _write(out, ("objects", batch))
    _write(out, ("done", result.warnings, dict(result.ignored)))


def _pickled_size(obj: KubeObject) -> int:
    """About how many bytes ``obj`` takes pickled (an endpoint ~40, anything else ~150)."""
    return 100 + 40 * obj.endpoint_count if isinstance(obj, EndpointSlice) else 150


def _spawn() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "clusterdns.source.loader"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


class Loader:
    """Loads dump files in child processes, one at a time, keeping the next one ready."""

    def __init__(self) -> None:
        self._next: asyncio.Future[subprocess.Popen[bytes]] | None = None

    def _prepare(self) -> None:
        if self._next is None:
            self._next = asyncio.ensure_future(asyncio.to_thread(_spawn))

    async def load(self, paths: Sequence[Path]) -> tuple[list[KubeObject], LoadResult]:
        """Load ``paths`` in a child: the objects, and the ``LoadResult`` (whose
        ``cluster`` is empty: the objects come separately, as they were read).

        Raises ``SourceError`` as ``load_files`` would, or when the child fails.
        """
        self._prepare()
        assert self._next is not None
        process = await self._next
        self._next = None
        try:
            return await self._run(process, paths)
        finally:
            self._prepare()  # the next load's child starts while this one's result is used

    async def _run(self, process: subprocess.Popen[bytes],
                   paths: Sequence[Path]) -> tuple[list[KubeObject], LoadResult]:
        assert process.stdin is not None and process.stdout is not None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 24)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), process.stdout)
        objects: list[KubeObject] = []
        try:
            process.stdin.write(json.dumps([str(p) for p in paths]).encode() + b"\n")
            process.stdin.close()
            while True:
                try:
                    size = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))[0]
                    frame = pickle.loads(await reader.readexactly(size))
                except asyncio.IncompleteReadError:
                    code = await asyncio.to_thread(process.wait)
                    assert process.stderr is not None
                    detail = (await asyncio.to_thread(process.stderr.read)).decode(
                        "utf-8", "replace").strip().splitlines()
                    raise SourceError(
                        f"{', '.join(map(str, paths))}: the loader process failed (exit "
                        f"status {code}){': ' + detail[-1] if detail else ''}") from None
                if frame[0] == "objects":
                    objects.extend(frame[1])
                elif frame[0] == "error":
                    raise SourceError(frame[1])
                else:
                    _, warnings, ignored = frame
                    return objects, LoadResult(Cluster(), tuple(warnings),
                                               MappingProxyType(ignored))
        finally:
            transport.close()
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            await asyncio.to_thread(process.wait)
            if process.stderr is not None:
                process.stderr.close()

    async def close(self) -> None:
        """Stop the child kept ready, if any."""
        if self._next is None:
            return
        process = await self._next
        self._next = None
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await asyncio.to_thread(process.wait)
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def main() -> None:
    """The child: read the paths (a JSON list on one line of stdin), load, write frames."""
    paths = json.loads(sys.stdin.readline() or "[]")
    if paths:
        child(paths, sys.stdout.buffer)
        sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
