"""The name index: a read-only mapping in copy-on-write shards.

Why this module exists: publishing a change must not copy a quarter of a million names,
and must never mutate a dict a published snapshot (and so a reader) holds. The index is
split into shards by hash; the writer (``CowIndex``, ``NodeStore``) copies a shard the
first time a publish writes to it and hands out frozen ``NameIndex`` / ``NodeIndex``
views whose shard dicts it never touches again. ``Compact`` is how the index stores
most names (one A, AAAA or PTR record of a service) as the bare value instead of a
``RawNode`` tuple.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from clusterdns import names
from clusterdns.snapshot.nodes import (
    DATA,
    KINDS,
    NAME,
    ONLY_A,
    ONLY_AAAA,
    ONLY_PTR,
    OWNER,
    TTL,
    LazyNode,
    Node,
    Owner,
    RawNode,
    record_count,
)

_K = TypeVar("_K")
_V = TypeVar("_V")


class NameIndex(Mapping[_K, _V]):
    """A read-only mapping split into shards by hash, so a writer can copy only a few.

    ``Builder`` owns the only mutable version; it hands out ``NameIndex`` objects whose
    shard dicts it never touches again.
    """

    __slots__ = ("_len", "_mask", "_shards")

    def __init__(self, shards: tuple[dict[_K, _V], ...], length: int) -> None:
        self._shards = shards
        self._mask = len(shards) - 1
        self._len = length

    def __getitem__(self, key: _K) -> _V:
        return self._shards[hash(key) & self._mask][key]

    def get(self, key: _K, default: Any = None) -> Any:
        return self._shards[hash(key) & self._mask].get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._shards[hash(key) & self._mask]

    def __iter__(self) -> Iterator[_K]:
        for shard in self._shards:
            yield from shard

    def __len__(self) -> int:
        return self._len


class Compact:
    """How the index stores most names in one object instead of a ``RawNode`` tuple.

    A name holding one A, AAAA or PTR record of a service (an endpoint's name, a PTR:
    most of the names of a cluster) is stored as the bare value: its type follows from
    where it is (PTR under ``.arpa``, else AAAA when the address has a colon, else A),
    its TTL is the zone's, and its owner (the service) from the name itself, or for a
    PTR from its target. That saves an 80-byte tuple per name: 16 MB at 100k
    endpoints. ``pack`` stores a node compactly only when ``unpack`` gives it back
    exactly.
    """

    __slots__ = ("domain", "forward", "trusted", "ttl")

    def __init__(self, ttl: int, forward: tuple[str, ...], domain: str) -> None:
        self.ttl = ttl
        self.forward = forward
        self.domain = domain
        # With no forward zone inside another, a name's zone is the one it ends with, so
        # the names a service's records get are compact as made (see ClaimBook._write_new).
        self.trusted = not any(names.is_subdomain(a, b) for a in forward for b in forward
                               if a != b)

    def owner(self, name: str, value: str) -> Owner | None:
        """The service a compact name belongs to (from the name, or a PTR's target)."""
        zones = self.forward
        if name.endswith(".arpa"):
            name, zones = value, (self.domain,)
        for zone in zones:
            if name.endswith(zone) and name[-len(zone) - 1:-len(zone)] == ".":
                parts = name[:-len(zone) - 1].rsplit(".", 3)
                if len(parts) >= 3 and parts[-1] == "svc":
                    return ("svc", parts[-2], parts[-3])
                return None
        return None

    def _node(self, name: str, value: str) -> RawNode | None:
        """The node a compact ``value`` at ``name`` stands for (None: it cannot be one)."""
        owner = self.owner(name, value)
        if owner is None:
            return None
        kinds = ONLY_PTR if name.endswith(".arpa") else ONLY_AAAA if ":" in value else ONLY_A
        return (name, self.ttl, owner, kinds, value)

    def unpack(self, name: str, stored: Any) -> RawNode:
        if type(stored) is not str:
            raw: RawNode = stored
            return raw
        node = self._node(name, stored)
        assert node is not None  # pack stores nothing else as a string
        return node

    def pack(self, node: RawNode) -> Any:
        data, name = node[DATA], node[NAME]
        if type(data) is not str or node[TTL] != self.ttl:
            return node
        kinds = ONLY_PTR if name.endswith(".arpa") else ONLY_AAAA if ":" in data else ONLY_A
        if node[KINDS] != kinds or self.owner(name, data) != node[OWNER]:
            return node
        return data


class NodeIndex(NameIndex[str, Node]):
    """The snapshot's names: a ``NameIndex`` of stored nodes (see ``Compact``) that hands
    out ``LazyNode`` views."""

    __slots__ = ("_compact",)

    def __init__(self, shards: tuple[dict[str, Any], ...], length: int,
                 compact: Compact) -> None:
        super().__init__(shards, length)
        self._compact = compact

    def __getitem__(self, key: str) -> Node:
        stored = self._shards[hash(key) & self._mask][key]
        return LazyNode(self._compact.unpack(key, stored))

    def get(self, key: str, default: Any = None) -> Any:
        stored = self._shards[hash(key) & self._mask].get(key)
        return default if stored is None else LazyNode(self._compact.unpack(key, stored))

    def stored(self, key: str) -> Any:
        """The object the index holds for ``key`` (a tuple, or a compact value), or None."""
        return self._shards[hash(key) & self._mask].get(key)


class CowIndex:
    """The writer's side of a ``NameIndex``: shards are copied on first write per publish."""

    def __init__(self, shard_count: int, weigh: Callable[[Any], int] | None = None) -> None:
        self.shards: list[dict[Any, Any]] = [{} for _ in range(shard_count)]
        self.mask = shard_count - 1
        self.length = 0
        self.writes = 0  # names set or deleted, ever
        self.weigh = weigh
        self.weight = 0  # sum of weigh(value), when weigh is given
        self.owned: set[int] = set(range(shard_count))  # shards no snapshot can see

    def _writable(self, key: Any) -> dict[Any, Any]:
        return self.writable_shard(hash(key) & self.mask)

    def writable_shard(self, i: int) -> dict[Any, Any]:
        """Shard ``i``, copied first if a published snapshot may hold it."""
        shard = self.shards[i]
        if i not in self.owned:
            shard = self.shards[i] = shard.copy()
            self.owned.add(i)
        return shard

    def added(self, count: int, weight: int) -> None:
        """``count`` keys of total ``weight`` were put straight into writable shards."""
        self.writes += count
        self.length += count
        self.weight += weight

    def get(self, key: Any) -> Any:
        return self.shards[hash(key) & self.mask].get(key)

    def set(self, key: Any, value: Any) -> None:
        self.writes += 1
        shard = self._writable(key)
        before = shard.get(key)
        if before is None:
            self.length += 1
        shard[key] = value
        if self.weigh is not None:
            self.weight += self.weigh(value) - (0 if before is None else self.weigh(before))

    def set_new(self, key: Any, value: Any) -> None:
        """``set`` for a key known to be absent."""
        self.writes += 1
        self.length += 1
        if self.weigh is not None:
            self.weight += self.weigh(value)
        i = hash(key) & self.mask
        if i in self.owned:
            self.shards[i][key] = value
        else:
            self._writable(key)[key] = value

    def delete(self, key: Any) -> None:
        self.writes += 1
        shard = self._writable(key)
        before = shard.pop(key, None)
        if before is not None:
            self.length -= 1
            if self.weigh is not None:
                self.weight -= self.weigh(before)

    def freeze(self) -> NameIndex[Any, Any]:
        self.owned.clear()
        return NameIndex(tuple(self.shards), self.length)


class NodeStore(CowIndex):
    """The builder's name index: nodes go in and come out as ``RawNode``s, and are
    stored packed (``Compact``)."""

    def __init__(self, shard_count: int, compact: Compact) -> None:
        super().__init__(shard_count, _stored_count)
        self.compact = compact

    def get(self, key: Any) -> Any:
        stored = super().get(key)
        return None if stored is None else self.compact.unpack(key, stored)

    def set(self, key: Any, value: Any) -> None:
        super().set(key, self.compact.pack(value))

    def set_new(self, key: Any, value: Any) -> None:
        super().set_new(key, self.compact.pack(value))

    def freeze_nodes(self) -> NodeIndex:
        self.owned.clear()
        return NodeIndex(tuple(self.shards), self.length, self.compact)


def _stored_count(stored: Any) -> int:
    return 1 if type(stored) is str else record_count(stored)


def shards_for(estimate: int) -> int:
    """Shards of ~250-500 names: a delta copies a few (~10 us each), and a full build
    writes into few enough dicts to stay in cache (7% faster than 64-128 per shard)."""
    count = 16
    while count < 65536 and count * 512 < estimate:
        count *= 2
    return count
