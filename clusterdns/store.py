"""The current objects of each watched kind, as the watch loops last reported them.

Pure and single-writer: the reflectors in ``source/kube.py`` call ``apply`` for watch
events and ``replace`` after a (re)list, which swaps a kind's objects atomically so that
objects deleted while a watch was down disappear. ``cluster()`` hands the snapshot
builder one consistent ``Cluster``. Keys are (namespace, name); namespaces use "".

It also remembers which keys changed since the last ``take_changes()``, so the rebuild
loop can hand the snapshot builder deltas instead of the whole cluster; when too much
changed (or nothing was taken yet) it says so and the builder starts from scratch.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from clusterdns.objects import (
    Cluster,
    EndpointSlice,
    KubeObject,
    Namespace,
    Pod,
    Service,
    ServiceImport,
)

# More changed keys than this between two takes: a full build is cheaper than deltas.
MAX_TRACKED_CHANGES = 20_000


class Kind(Enum):
    NAMESPACE = "Namespace"
    SERVICE = "Service"
    ENDPOINT_SLICE = "EndpointSlice"
    POD = "Pod"
    SERVICE_IMPORT = "ServiceImport"


KIND_TYPES: dict[Kind, type[KubeObject]] = {
    Kind.NAMESPACE: Namespace, Kind.SERVICE: Service, Kind.ENDPOINT_SLICE: EndpointSlice,
    Kind.POD: Pod, Kind.SERVICE_IMPORT: ServiceImport}
"""Each kind's object type (the snapshot builder's ``delete`` takes the type)."""
KIND_OF: dict[type[KubeObject], Kind] = {t: k for k, t in KIND_TYPES.items()}
"""Each object type's kind."""

Key = tuple[str, str]


def key_of(obj: KubeObject) -> Key:
    if isinstance(obj, Namespace):
        return ("", obj.name)
    return (obj.namespace, obj.name)


class Store:
    """Objects per kind; a scope (one namespace, or "" for all) lists and watches apart."""

    def __init__(self) -> None:
        self._objects: dict[Kind, dict[Key, KubeObject]] = {kind: {} for kind in Kind}
        self.generation = 0  # bumped on every change, so readers can tell "anything new?"
        # Keys changed since the last take; None: unknown (never taken, or too many).
        self._changes: dict[Kind, set[Key]] | None = None
        self._tracked = 0

    def _changed(self, kind: Kind, key: Key) -> None:
        changes = self._changes
        if changes is None:
            return
        if self._tracked >= MAX_TRACKED_CHANGES:
            self._changes = None
            return
        changes.setdefault(kind, set()).add(key)
        self._tracked += 1

    def take_changes(self) -> list[tuple[Kind, Key, KubeObject | None]] | None:
        """What changed since the last call: (kind, key, current object or None if
        deleted), or None when a full rebuild is needed (first call, or too many)."""
        changes, self._changes, self._tracked = self._changes, {}, 0
        if changes is None:
            return None
        return [(kind, key, self._objects[kind].get(key))
                for kind, keys in changes.items() for key in keys]

    def apply(self, kind: Kind, obj: KubeObject) -> bool:
        """ADDED or MODIFIED; True when it changed anything DNS can see."""
        objects = self._objects[kind]
        key = key_of(obj)
        if objects.get(key) == obj:
            return False
        objects[key] = obj
        self.generation += 1
        self._changed(kind, key)
        return True

    def delete(self, kind: Kind, key: Key) -> bool:
        if self._objects[kind].pop(key, None) is None:
            return False
        self.generation += 1
        self._changed(kind, key)
        return True

    def replace(self, kind: Kind, objs: Iterable[KubeObject], scope: str = "") -> bool:
        """After a list: ``kind``'s objects within ``scope`` become exactly ``objs``."""
        return self.install(kind, *self.diff(kind, objs, scope), scope)

    def diff(self, kind: Kind, objs: Iterable[KubeObject],
             scope: str = "") -> tuple[dict[Key, KubeObject], list[Key]]:
        """What ``replace`` would make of ``kind`` within ``scope``, without changing
        anything (so it may run in another thread while nothing writes the store).

        Returns the new objects, where every object equal to the stored one *is* the
        stored one (a relist or a reloaded dump then leaves one copy in memory, not
        two), and the keys that changed, deleted ones included.
        """
        objects = self._objects[kind]
        merged: dict[Key, KubeObject] = {}
        changed: list[Key] = []
        for obj in objs:
            key = key_of(obj)
            old = objects.get(key)
            if old is not None and (not scope or key[0] == scope) and (old is obj or old == obj):
                merged[key] = old
            else:
                merged[key] = obj
                changed.append(key)
        for key in objects:
            if (not scope or key[0] == scope) and key not in merged:
                changed.append(key)
        return merged, changed

    def install(self, kind: Kind, merged: dict[Key, KubeObject], changed: list[Key],
                scope: str = "") -> bool:
        """Make ``diff``'s result current; True when anything changed."""
        if not changed:
            return False
        objects = self._objects[kind]
        if not scope:
            self._objects[kind] = merged
        else:
            for key in changed:
                objects.pop(key, None)
            objects.update((key, merged[key]) for key in changed if key in merged)
        for key in changed:
            self._changed(kind, key)
        self.generation += 1
        return True

    def get(self, kind: Kind, key: Key) -> KubeObject | None:
        return self._objects[kind].get(key)

    def count(self, kind: Kind) -> int:
        return len(self._objects[kind])

    def cluster(self) -> Cluster:
        o = self._objects
        return Cluster(
            namespaces=tuple(x for x in o[Kind.NAMESPACE].values() if isinstance(x, Namespace)),
            services=tuple(x for x in o[Kind.SERVICE].values() if isinstance(x, Service)),
            endpoint_slices=tuple(
                x for x in o[Kind.ENDPOINT_SLICE].values() if isinstance(x, EndpointSlice)),
            pods=tuple(x for x in o[Kind.POD].values() if isinstance(x, Pod)),
            service_imports=tuple(x for x in o[Kind.SERVICE_IMPORT].values()
                                  if isinstance(x, ServiceImport)),
        )
