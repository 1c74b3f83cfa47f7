"""Which pod holds each address, for autopath: an index in copy-on-write shards.

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
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

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
