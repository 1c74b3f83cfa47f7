"""Which pod holds each address: indexes in copy-on-write shards.

Why this module exists: autopath answers a query with the asking pod's own search list,
so it must know from the source address alone which pod asks, and be sure of it. Exactly
one pod may hold the address: a pod that has finished (Succeeded, Failed) has given its
addresses back and does not count, but two holders (hostNetwork pods sharing their
node's address, or a pod that is going while a new one already has its address) mean
nobody can tell who asks, and then autopath must not guess. ``PodIndex`` maps every
address some pod holds to that pod, or to all of them when there are several; it is
kept only while autopath is on. It changes one pod at a time and is frozen for each
publish like the name index (``index.CowIndex``), so a pod event copies one shard of a
few hundred addresses, never the whole index; a snapshot's view never changes.

``pods verified`` needs less: whether some pod of a namespace holds an address
(``PodAddresses``). It is kept the same way, so that at 100,000 pods a pod event does not
make a new 100,000-entry set for the next snapshot (that took ~20 ms per publish).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Set
from types import MappingProxyType
from typing import Any

from clusterdns.objects import Pod
from clusterdns.snapshot.index import CowIndex, shards_for

Holders = Pod | tuple[Pod, ...]
"""The pod holding an address, or every pod holding it when there are several."""

NO_PODS: Mapping[str, Holders] = MappingProxyType({})


class PodIndex:
    """The writer's side: ``add`` and ``remove`` pods as they change, ``freeze`` per
    publish. A pod is the same object from ``add`` to its ``remove`` (the builder
    removes the object it added)."""

    def __init__(self, estimate: int = 0) -> None:
        self._index = CowIndex(shards_for(estimate))

    def __len__(self) -> int:
        return self._index.length

    def add(self, pod: Pod) -> None:
        if not pod.holds_ips:
            return
        index = self._index
        for ip in dict.fromkeys(pod.ips):
            held = index.get(ip)
            if held is None:
                index.set_new(ip, pod)
            else:
                index.set(ip, (held, pod) if isinstance(held, Pod) else (*held, pod))

    def remove(self, pod: Pod) -> None:
        if not pod.holds_ips:
            return
        index = self._index
        for ip in dict.fromkeys(pod.ips):
            held = index.get(ip)
            if held is pod:
                index.delete(ip)
            elif isinstance(held, tuple):
                rest = list(held)
                for i, other in enumerate(rest):
                    if other is pod:
                        del rest[i]
                        break
                index.set(ip, rest[0] if len(rest) == 1 else tuple(rest))

    def freeze(self) -> Mapping[str, Holders]:
        """A read-only view that later changes never touch."""
        return self._index.freeze()


def sole_holder(pods_by_ip: Mapping[str, Holders], ip: str) -> Pod | None:
    """The one pod holding ``ip``, or None: no pod holds it, or several do."""
    held = pods_by_ip.get(ip)
    return held if isinstance(held, Pod) else None


def address_key(namespace: str, ip: str) -> str:
    """The key of (namespace, ip) in the index behind ``PodAddresses``."""
    return f"{namespace} {ip}"


class PodAddresses(Set[tuple[str, str]]):
    """(namespace, ip) of every pod in a namespace we serve: a read-only view of a
    frozen copy-on-write index keyed by ``address_key`` (of every namespace) and the
    namespaces served when it was frozen."""

    __slots__ = ("_held", "_namespaces")

    def __init__(self, held: Mapping[str, Any], namespaces: frozenset[str]) -> None:
        self._held = held
        self._namespaces = namespaces

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, tuple) or len(item) != 2:
            return False
        namespace, ip = item
        return namespace in self._namespaces and address_key(namespace, ip) in self._held

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for key in self._held:
            namespace, _, ip = key.partition(" ")
            if namespace in self._namespaces:
                yield namespace, ip

    def __len__(self) -> int:
        return sum(1 for _ in self)
