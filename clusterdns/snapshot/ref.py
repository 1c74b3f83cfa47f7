"""The one reference to the snapshot being served, and the one writer of the next.

Why this module exists: it is the only shared mutable state of the server (see
docs/architecture.md). Readers take ``get()`` once per query and never lock, so each
reply sees one generation; writers build the next generation off to the side (keeping
the ``Builder`` for deltas) and publish it with one reference swap.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterable

from clusterdns.config import Config
from clusterdns.objects import Cluster, KubeObject
from clusterdns.snapshot.builder import Builder, Key
from clusterdns.snapshot.model import Snapshot


class SnapshotRef:
    """The only shared mutable state: one reference, swapped whole by ``publish``.

    Readers call ``get()`` (a plain attribute read) and never lock. Writers are
    serialised by a lock so generations increase strictly (each publish is the previous
    serial plus one). ``publish_cluster`` builds from scratch (and keeps the builder);
    ``publish_changes`` applies object deltas to it.
    """

    def __init__(self, initial: Snapshot) -> None:
        self.current = initial
        self._serial = initial.serial
        self._write = threading.Lock()
        self._builder: Builder | None = None
        self._origin: object = None  # what the last full build's cluster came from
        self.full_builds = 0  # publishes from scratch
        self.delta_builds = 0  # publishes from object deltas
        self.last_replaced = 0  # names the last publish wrote or removed
        self.last_examined = 0  # names of services the last publish computed

    def get(self) -> Snapshot:
        return self.current

    def can_apply(self, config: Config, origin: object) -> bool:
        """True when deltas from ``origin`` (e.g. a store) can follow the last full
        build: it was of ``origin``'s objects, under ``config``."""
        return (self._builder is not None and origin is not None
                and self._origin is origin and self._builder.config == config)

    def publish_cluster(self, cluster: Cluster, config: Config,
                        origin: object = None) -> Snapshot:
        """Build the next generation from ``cluster`` and publish it. ``origin`` names
        where ``cluster`` came from, for ``can_apply``."""
        with self._write:
            self._builder = None  # a failed build leaves no half-applied state behind
            self._origin = origin
            # The build allocates a million long-lived, acyclic objects: the cyclic
            # collector would rescan them over and over (about a fifth of the time).
            paused = gc.isenabled()
            gc.disable()
            try:
                builder = Builder(config, cluster)
                snap = builder.publish(self._serial + 1)
            finally:
                if paused:
                    gc.enable()
            self.full_builds += 1
            return self._published(builder, snap)

    def publish_changes(
        self, changes: Iterable[tuple[type[KubeObject], Key, KubeObject | None]],
    ) -> Snapshot:
        """Apply (kind, key, object or None for deleted) deltas and publish the result."""
        with self._write:
            builder = self._builder
            if builder is None:
                raise RuntimeError("publish_changes needs a full build first")
            self._builder = None
            for kind, key, obj in changes:
                if obj is None:
                    builder.delete(kind, key)
                else:
                    builder.apply(obj)
            snap = builder.publish(self._serial + 1)
            self.delta_builds += 1
            return self._published(builder, snap)

    def _published(self, builder: Builder, snap: Snapshot) -> Snapshot:
        """``builder`` made ``snap``: keep the builder for the next deltas, swap it in."""
        self._builder = builder
        self.last_replaced = builder.replaced
        self.last_examined = builder.examined
        self._serial = snap.serial
        self.current = snap
        return snap
