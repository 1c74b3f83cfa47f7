"""Loading dump files in a child process, so that parsing never stalls answering.

Parsing holds the GIL: PyYAML's C loader and the ``json`` decoder run long stretches of C
without letting another thread in, so a reload parsed in a worker thread stopped the
event loop for as long as the parse took (33% of queries lost while a 1.5 MB YAML dump
was rewritten every 2 s). Here a child interpreter (``python -m clusterdns.source.loader
PATH...``) reads and converts the files with ``dump.load_files`` and streams the slim
objects back over a pipe, pickled in batches of ``BATCH`` objects, each frame prefixed
with its length. The parent reads and unpickles one batch at a time on the event loop
(a fraction of a millisecond each), so queries are answered between batches. The child
is our own program reading our own pipe: unpickling its output is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO

from clusterdns.objects import Cluster, KubeObject
from clusterdns.source.dump import LoadResult, SourceError, load_files

BATCH = 500
"""Objects per frame: about 100 kB of pickle, unpickled in well under a millisecond."""
_LENGTH = struct.Struct("!I")


def _write(out: BinaryIO, frame: tuple[Any, ...]) -> None:
    data = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(_LENGTH.pack(len(data)) + data)


def child(paths: Sequence[str], out: BinaryIO) -> None:
    """The child's side: load ``paths`` and write the frames to ``out``."""
    try:
        result = load_files([Path(p) for p in paths])
    except SourceError as exc:
        _write(out, ("error", str(exc)))
        return
    cluster = result.cluster
    everything: list[KubeObject] = [*cluster.namespaces, *cluster.services,
                                    *cluster.endpoint_slices, *cluster.pods]
    for start in range(0, len(everything), BATCH):
        _write(out, ("objects", everything[start:start + BATCH]))
    _write(out, ("done", result.warnings, dict(result.ignored)))


async def load_in_child(paths: Sequence[Path]) -> tuple[list[KubeObject], LoadResult]:
    """Load ``paths`` in a child process: the objects, and the ``LoadResult`` (whose
    ``cluster`` is empty: the objects come separately, as they were read).

    Raises ``SourceError`` as ``load_files`` would, or when the child fails.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clusterdns.source.loader", *(str(p) for p in paths),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    errors = asyncio.ensure_future(process.stderr.read())
    objects: list[KubeObject] = []
    try:
        while True:
            try:
                size = _LENGTH.unpack(await process.stdout.readexactly(_LENGTH.size))[0]
                frame = pickle.loads(await process.stdout.readexactly(size))
            except asyncio.IncompleteReadError:
                await process.wait()
                detail = (await errors).decode("utf-8", "replace").strip().splitlines()
                raise SourceError(
                    f"{', '.join(map(str, paths))}: the loader process failed (exit status "
                    f"{process.returncode}){': ' + detail[-1] if detail else ''}") from None
            if frame[0] == "objects":
                objects.extend(frame[1])
            elif frame[0] == "error":
                raise SourceError(frame[1])
            else:
                _, warnings, ignored = frame
                await process.wait()
                return objects, LoadResult(Cluster(), tuple(warnings), MappingProxyType(ignored))
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        errors.cancel()


def main() -> None:
    child(sys.argv[1:], sys.stdout.buffer)
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
