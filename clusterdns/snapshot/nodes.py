"""How one owner name's records are stored: a plain tuple, read through ``LazyNode``.

Why this module exists: the snapshot of a large cluster holds a quarter of a million
names, and what each costs in memory and in garbage-collector work is decided here, in
one place (issue 5 item 5). A node stores its owner name, TTL, owner and raw record
values (address text, target names, SRV tuples) as a ``RawNode``: a tuple of strings,
ints and tuples, which the cyclic collector stops tracking. ``Record`` objects are made
only on lookup, by ``LazyNode``. Strings are shared with the objects they came from.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Final

from clusterdns import records
from clusterdns.records import Record, RRType

Node = Mapping[RRType, tuple[Record, ...]]
EMPTY_NODE: Node = MappingProxyType({})

Owner = tuple[str, str, str]  # who claims a name: ("svc", ns, name), ("ns", ns, ""), ...
ZONE_OWNER: Owner = ("", "", "")  # sorts first: apex records lead merged RRsets
MCS_OWNER = "mcs"  # Owner[0] of a ServiceImport's claims: ("mcs", ns, name)


def _srv(raw: tuple[int, int, int, str]) -> records.SRV:
    return records.SRV(*raw)


# Record types whose raw value is wrapped on lookup (a string; for SRV a (priority,
# weight, port, target) tuple); the rest store RData. Raw values are plain strings and
# tuples because the cyclic collector stops tracking those: a churning cluster then
# leaves almost nothing for it to walk (SRV objects made it walk ~200 per change).
_WRAP: dict[int, Any] = {RRType.A: records.A, RRType.AAAA: records.AAAA,
                         RRType.PTR: records.PTR, RRType.CNAME: records.CNAME,
                         RRType.NS: records.NS, RRType.SRV: _srv}
_RDATA_WRAP: dict[type, RRType] = {records.A: RRType.A, records.AAAA: RRType.AAAA,
                                   records.PTR: RRType.PTR, records.CNAME: RRType.CNAME,
                                   records.NS: RRType.NS}
_TYPES: dict[tuple[int, ...], tuple[int, ...]] = {}  # one shared tuple per combination


def _types(key: tuple[int, ...]) -> tuple[int, ...]:
    """The shared tuple of these types, as plain ints (an ``RRType`` member is an object
    the cyclic collector tracks, and would keep every node holding it tracked too)."""
    key = tuple(int(t) for t in key)
    return _TYPES.setdefault(key, key)


RawNode = tuple[str, int, "Owner", tuple[int, ...], Any]
"""A name's RRsets as the index stores them: (name, TTL, owner, types, values), where
values holds, per type, one raw value or a tuple of them (when there is one type, values
is that entry itself). A plain tuple of strings, ints and tuples: the cyclic collector
stops tracking it (and then the shard dicts holding it), so a full collection does not
walk the snapshot, however much of it deltas have rewritten."""
NAME: Final = 0
TTL: Final = 1
OWNER: Final = 2
KINDS: Final = 3
DATA: Final = 4


def _raw(node: RawNode, rtype: int) -> Any:
    """The raw value(s) of ``rtype`` at ``node``, or None."""
    types = node[KINDS]
    if len(types) == 1:
        return node[DATA] if types[0] == rtype else None
    for i, t in enumerate(types):
        if t == rtype:
            return node[DATA][i]
    return None


def raw_items(node: RawNode) -> Iterator[tuple[int, tuple[Any, ...]]]:
    """(type, raw values) pairs of ``node``, without making records."""
    types = node[KINDS]
    if len(types) == 1:
        raw = node[DATA]
        yield types[0], raw if type(raw) is tuple else (raw,)
        return
    for t, raw in zip(types, node[DATA], strict=True):
        yield t, raw if type(raw) is tuple else (raw,)


def record_count(node: RawNode) -> int:
    types, data = node[KINDS], node[DATA]
    if len(types) == 1:
        return len(data) if type(data) is tuple else 1
    return sum(len(v) if type(v) is tuple else 1 for v in data)


class LazyNode(Mapping[RRType, tuple[Record, ...]]):
    """A read view of one owner name's RRsets (a ``RawNode``), made on lookup: records
    are made from the raw values when asked for. A node with no types is an empty
    non-terminal."""

    __slots__ = ("raw",)

    def __init__(self, raw: RawNode) -> None:
        self.raw = raw

    @property
    def name(self) -> str:
        return self.raw[NAME]

    @property
    def owner(self) -> Owner:
        owner: Owner = self.raw[OWNER]
        return owner

    def _rrset(self, rtype: int, raw: Any) -> tuple[Record, ...]:
        name, ttl, wrap = self.raw[NAME], self.raw[TTL], _WRAP.get(rtype)
        items = raw if type(raw) is tuple else (raw,)
        if wrap is None:
            return tuple(Record(name, ttl, v) for v in items)
        return tuple(Record(name, ttl, wrap(v)) for v in items)

    def raw_items(self) -> Iterator[tuple[int, tuple[Any, ...]]]:
        return raw_items(self.raw)

    def __getitem__(self, rtype: RRType) -> tuple[Record, ...]:
        raw = _raw(self.raw, rtype)
        if raw is None:
            raise KeyError(rtype)
        return self._rrset(rtype, raw)

    def get(self, rtype: RRType, default: Any = None) -> Any:
        raw = _raw(self.raw, rtype)
        return default if raw is None else self._rrset(rtype, raw)

    def __contains__(self, rtype: object) -> bool:
        return rtype in self.raw[KINDS]

    def __iter__(self) -> Iterator[RRType]:
        return (RRType(t) for t in self.raw[KINDS])

    def __len__(self) -> int:
        return len(self.raw[KINDS])

    def record_count(self) -> int:
        return record_count(self.raw)

    def __repr__(self) -> str:
        return f"LazyNode({self.name!r}, {dict(self)!r})"




ONE_TYPE = {t: _types((t,)) for t in RRType}
ONLY_A, ONLY_AAAA, ONLY_PTR = ONE_TYPE[RRType.A], ONE_TYPE[RRType.AAAA], ONE_TYPE[RRType.PTR]


def make_node(name: str, ttl: int, owner: Owner, sets: Mapping[RRType, Iterable[Any]]) -> RawNode:
    """A node from raw values per type (already de-duplicated and in order)."""
    if len(sets) == 1:  # the common case: one RRset, often of one record
        for rtype, values in sets.items():
            items = tuple(values)
            return (name, ttl, owner, ONE_TYPE[rtype],
                    items[0] if len(items) == 1 and rtype != RRType.SRV else items)
    if not sets:
        return (name, ttl, owner, (), ())
    types = _types(tuple(sets))
    packed = [_pack(tuple(v), t) for t, v in sets.items()]
    return (name, ttl, owner, types, tuple(packed))


def _pack(values: tuple[Any, ...], rtype: RRType) -> Any:
    """One raw value as itself, several as a tuple; SRV values (tuples themselves)
    always in a tuple."""
    return values[0] if len(values) == 1 and rtype != RRType.SRV else values


def record_values(recs: Iterable[Record]) -> dict[RRType, dict[Any, None]]:
    """Raw values per type from ``Record``s (apex records), de-duplicated in order."""
    sets: dict[RRType, dict[Any, None]] = {}
    for rec in recs:
        data = rec.data
        rtype = _RDATA_WRAP.get(type(data))
        raw: Any = data
        if rtype is not None:
            raw = getattr(data, "address", None) or getattr(data, "target", "")
        elif isinstance(data, records.SRV):
            rtype, raw = RRType.SRV, (data.priority, data.weight, data.port, data.target)
        else:
            rtype = rec.rtype
        sets.setdefault(rtype, {})[raw] = None
    return sets
