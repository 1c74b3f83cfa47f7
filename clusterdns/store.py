"""The current objects of each watched kind, as the watch loops last reported them.

Pure and single-writer: the reflectors in ``source/kube.py`` call ``apply`` for watch
events and ``replace`` after a (re)list, which swaps a kind's objects atomically so that
objects deleted while a watch was down disappear. ``cluster()`` hands the snapshot
builder one consistent ``Cluster``. Keys are (namespace, name); namespaces use "".
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from clusterdns.objects import Cluster, EndpointSlice, KubeObject, Namespace, Pod, Service


class Kind(Enum):
    NAMESPACE = "Namespace"
    SERVICE = "Service"
    ENDPOINT_SLICE = "EndpointSlice"
    POD = "Pod"


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

    def apply(self, kind: Kind, obj: KubeObject) -> bool:
        """ADDED or MODIFIED; True when it changed anything DNS can see."""
        objects = self._objects[kind]
        key = key_of(obj)
        if objects.get(key) == obj:
            return False
        objects[key] = obj
        self.generation += 1
        return True

    def delete(self, kind: Kind, key: Key) -> bool:
        if self._objects[kind].pop(key, None) is None:
            return False
        self.generation += 1
        return True

    def replace(self, kind: Kind, objs: Iterable[KubeObject], scope: str = "") -> bool:
        """After a list: ``kind``'s objects within ``scope`` become exactly ``objs``."""
        objects = self._objects[kind]
        fresh = {key_of(o): o for o in objs}
        old = {k: v for k, v in objects.items() if k[0] == scope} if scope else objects
        if old == fresh:
            return False
        for key in old.keys() - fresh.keys():
            del objects[key]
        objects.update(fresh)
        self.generation += 1
        return True

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
        )
