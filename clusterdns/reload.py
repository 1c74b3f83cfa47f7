"""Config reload: notice a changed config file (polling) or a SIGHUP, load, hand over.

A reload must be atomic and must never make things worse: the new file is read and
validated completely (the loader raises ``ConfigError`` naming the file and the key or
line) before anything changes; a bad file is rejected with that message and the config
already serving stays. Only a config that differs from the current one is handed to the
app. This module knows nothing about what a config change means; ``App.apply_config``
does.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from clusterdns.config import Config, ConfigError
from clusterdns.source import KubeSourceError
from clusterdns.source.dump import SourceError

log = logging.getLogger(__name__)


def fingerprint(paths: Sequence[Path]) -> tuple[bytes | None, ...]:
    """A digest per file (None when unreadable), cheap enough to poll every second."""
    out: list[bytes | None] = []
    for path in paths:
        try:
            out.append(hashlib.sha256(path.read_bytes()).digest())
        except OSError:
            out.append(None)
    return tuple(out)


class ConfigWatcher:
    """Reload when the watched files change (every ``interval`` s; 0: only on request)."""

    def __init__(self, paths: Sequence[Path], load: Callable[[], Config],
                 apply: Callable[[Config], Awaitable[None]], current: Config,
                 interval: float) -> None:
        self.paths = tuple(paths)
        self.load = load
        self.apply = apply
        self.current = current
        self.interval = interval
        self.reloads = 0  # configs applied
        self.rejected = 0  # bad configs refused
        self._seen = fingerprint(self.paths)
        self._requested = asyncio.Event()

    def request(self) -> None:
        """Reload now (SIGHUP), whether or not the files look changed."""
        self._requested.set()

    async def run(self) -> None:
        while True:
            forced = False
            if self.interval > 0:
                try:
                    async with asyncio.timeout(self.interval):
                        await self._requested.wait()
                    forced = True
                except TimeoutError:
                    pass
            else:
                await self._requested.wait()
                forced = True
            self._requested.clear()
            seen = fingerprint(self.paths)
            if forced or seen != self._seen:
                self._seen = seen
                await self.reload("SIGHUP" if forced else "the config file changed")

    async def reload(self, reason: str) -> bool:
        """Load and apply; False (old config kept) when the new one is bad or the same."""
        try:
            new = self.load()
            if new == self.current:
                log.info("config reload (%s): nothing changed", reason)
                return False
            await self.apply(new)
        except (ConfigError, SourceError, KubeSourceError) as exc:
            self.rejected += 1
            log.error("config reload (%s) rejected: %s; still serving the previous config",
                      reason, exc)
            return False
        self.current = new
        self.reloads += 1
        log.info("config reloaded (%s)", reason)
        return True
