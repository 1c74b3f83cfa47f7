"""The immutable snapshot every query is answered from, and the one reference to it.

Why this module exists: queries need one consistent, read-only view of every name the
cluster implies (owner name -> record type -> RRset, including every empty non-terminal,
so "does this name exist" is a lookup), and the writer needs to produce the next such
view cheaply when one object changes. ``SnapshotRef.publish*`` swaps the single shared
reference; readers take it once per query and never lock, so each reply sees one
generation. The SOA serial is the generation number.

How a change stays cheap (issue 5 item 4): a ``Builder`` keeps, per Service, the names
its *contribution* claims (its records, its PTRs, and the empty non-terminals above
them). A change to a Service, its EndpointSlices, a Namespace or a Pod withdraws exactly
the affected contributions and adds their new versions; when a slice only moved
endpoints, just the service-wide names and those endpoints' names are computed again
(one endpoint of a 100-endpoint headless service: 2 names, not 200). Names claimed by several
contributions (``<ns>.svc.<zone>``, reverse-zone non-terminals, a PTR name two services
share) keep a claim count and the record-carrying claims, merged in owner order. The name
index is a ``NameIndex`` of copy-on-write shards: a publish copies only the shards the
change touched, so a published snapshot's dicts are never mutated. ``build`` is the
from-scratch path and uses the same claims, so both paths produce the same snapshot.

How it stays small (item 5): a node stores its owner name, TTL and raw record values
(address text, target names, SRV tuples) and makes ``Record`` objects on lookup;
strings are shared with the objects they came from.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, TypeVar

from clusterdns import names, records
from clusterdns.config import Config, PodsMode
from clusterdns.objects import (
    Cluster,
    EndpointSlice,
    KubeObject,
    Namespace,
    Pod,
    Service,
    ServiceKind,
)
from clusterdns.records import Record, RRType

Node = Mapping[RRType, tuple[Record, ...]]
EMPTY_NODE: Node = MappingProxyType({})

Key = tuple[str, str]  # (namespace, name); namespaces use ("", name)
Owner = tuple[str, str, str]  # who claims a name: ("svc", ns, name), ("ns", ns, ""), ...
_ZONE_OWNER: Owner = ("", "", "")  # sorts first: apex records lead merged RRsets
_Item = tuple[tuple[str, ...], str, str]  # a ready endpoint: (addresses, hostname, pod name)
Claims = dict[str, dict["RRType", dict[Any, None]]]  # name -> type -> raw values, in order



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
_NAME: Final = 0
_TTL: Final = 1
_OWNER: Final = 2
_KINDS: Final = 3
_DATA: Final = 4


def _raw(node: RawNode, rtype: int) -> Any:
    """The raw value(s) of ``rtype`` at ``node``, or None."""
    types = node[_KINDS]
    if len(types) == 1:
        return node[_DATA] if types[0] == rtype else None
    for i, t in enumerate(types):
        if t == rtype:
            return node[_DATA][i]
    return None


def _raw_items(node: RawNode) -> Iterator[tuple[int, tuple[Any, ...]]]:
    """(type, raw values) pairs of ``node``, without making records."""
    types = node[_KINDS]
    if len(types) == 1:
        raw = node[_DATA]
        yield types[0], raw if type(raw) is tuple else (raw,)
        return
    for t, raw in zip(types, node[_DATA], strict=True):
        yield t, raw if type(raw) is tuple else (raw,)


def _record_count(node: RawNode) -> int:
    types, data = node[_KINDS], node[_DATA]
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
        return self.raw[_NAME]

    @property
    def owner(self) -> Owner:
        owner: Owner = self.raw[_OWNER]
        return owner

    def _rrset(self, rtype: int, raw: Any) -> tuple[Record, ...]:
        name, ttl, wrap = self.raw[_NAME], self.raw[_TTL], _WRAP.get(rtype)
        items = raw if type(raw) is tuple else (raw,)
        if wrap is None:
            return tuple(Record(name, ttl, v) for v in items)
        return tuple(Record(name, ttl, wrap(v)) for v in items)

    def raw_items(self) -> Iterator[tuple[int, tuple[Any, ...]]]:
        return _raw_items(self.raw)

    def __getitem__(self, rtype: RRType) -> tuple[Record, ...]:
        raw = _raw(self.raw, rtype)
        if raw is None:
            raise KeyError(rtype)
        return self._rrset(rtype, raw)

    def get(self, rtype: RRType, default: Any = None) -> Any:
        raw = _raw(self.raw, rtype)
        return default if raw is None else self._rrset(rtype, raw)

    def __contains__(self, rtype: object) -> bool:
        return rtype in self.raw[_KINDS]

    def __iter__(self) -> Iterator[RRType]:
        return (RRType(t) for t in self.raw[_KINDS])

    def __len__(self) -> int:
        return len(self.raw[_KINDS])

    def record_count(self) -> int:
        return _record_count(self.raw)

    def __repr__(self) -> str:
        return f"LazyNode({self.name!r}, {dict(self)!r})"


_K = TypeVar("_K")
_V = TypeVar("_V")


_ONE_TYPE = {t: _types((t,)) for t in RRType}
_A, _AAAA, _PTR = _ONE_TYPE[RRType.A], _ONE_TYPE[RRType.AAAA], _ONE_TYPE[RRType.PTR]


def _node(name: str, ttl: int, owner: Owner, sets: Mapping[RRType, Iterable[Any]]) -> RawNode:
    """A node from raw values per type (already de-duplicated and in order)."""
    if len(sets) == 1:  # the common case: one RRset, often of one record
        for rtype, values in sets.items():
            items = tuple(values)
            return (name, ttl, owner, _ONE_TYPE[rtype],
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


def _record_values(recs: Iterable[Record]) -> dict[RRType, dict[Any, None]]:
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


# ------------------------------------------------------------------------ name index


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
        # the names a service's records get are compact as made (see Builder._write_new).
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
        kinds = _PTR if name.endswith(".arpa") else _AAAA if ":" in value else _A
        return (name, self.ttl, owner, kinds, value)

    def unpack(self, name: str, stored: Any) -> RawNode:
        if type(stored) is not str:
            raw: RawNode = stored
            return raw
        node = self._node(name, stored)
        assert node is not None  # pack stores nothing else as a string
        return node

    def pack(self, node: RawNode) -> Any:
        data, name = node[_DATA], node[_NAME]
        if type(data) is not str or node[_TTL] != self.ttl:
            return node
        kinds = _PTR if name.endswith(".arpa") else _AAAA if ":" in data else _A
        if node[_KINDS] != kinds or self.owner(name, data) != node[_OWNER]:
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


class _CowIndex:
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


class _NodeStore(_CowIndex):
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
    return 1 if type(stored) is str else _record_count(stored)


def _shard_count(estimate: int) -> int:
    """Shards of ~250-500 names: a delta copies a few (~10 us each), and a full build
    writes into few enough dicts to stay in cache (7% faster than 64-128 per shard)."""
    count = 16
    while count < 65536 and count * 512 < estimate:
        count *= 2
    return count


# -------------------------------------------------------------------------- snapshot


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """What negative answers need to explain themselves."""

    kind: ServiceKind
    ready_endpoints: int


_INFOS: dict[tuple[ServiceKind, int], ServiceInfo] = {}


def _info(kind: ServiceKind, ready: int) -> ServiceInfo:
    info = _INFOS.get((kind, ready))
    if info is None:
        info = _INFOS[(kind, ready)] = ServiceInfo(kind, ready)
    return info


@dataclass(frozen=True, slots=True)
class Snapshot:
    serial: int
    synced: bool
    config: Config
    zones: tuple[str, ...]  # longest first, for matching
    forward_zones: tuple[str, ...]
    nodes: Mapping[str, Node]
    namespaces: frozenset[str]  # exposed namespaces that exist
    pod_ips: frozenset[tuple[str, str]]  # (namespace, ip) of every pod, for pods verified
    services: Mapping[tuple[str, str], ServiceInfo] = field(
        default_factory=lambda: MappingProxyType({}))
    record_count: int = 0  # records in ``nodes``, kept as names change (for metrics)

    def zone_for(self, name: str) -> str | None:
        for zone in self.zones:
            if names.is_subdomain(name, zone):
                return zone
        return None

    def soa(self, zone: str) -> Record:
        return self.nodes[zone][RRType.SOA][0]

    def records(self) -> Iterator[Record]:
        """Every record, apex first, in a stable order (for ``clusterdns records``)."""
        for zone in self.zones[::-1]:
            for rtype in (RRType.SOA, RRType.NS):
                yield from self.nodes[zone].get(rtype, ())
        apexes = set(self.zones)
        for name in sorted(self.nodes, key=lambda n: tuple(reversed(n.split(".")))):
            node = self.nodes[name]
            for rtype in sorted(node):
                if name in apexes and rtype in (RRType.SOA, RRType.NS):
                    continue
                yield from node[rtype]


def unsynced(config: Config) -> Snapshot:
    """The placeholder served before the first complete sync: SERVFAIL in our zones."""
    zones = tuple(sorted(config.zones, key=len, reverse=True))
    return Snapshot(serial=0, synced=False, config=config, zones=zones,
                    forward_zones=tuple(z for z in config.zones if not names.is_reverse_zone(z)),
                    nodes=MappingProxyType({}), namespaces=frozenset(), pod_ips=frozenset())


def build(cluster: Cluster, config: Config, serial: int) -> Snapshot:
    """Every record the cluster implies under the configured zones (from scratch)."""
    return Builder(config, cluster).publish(serial)


# --------------------------------------------------------------------------- builder


def _add_ancestors(claims: Claims, zones: frozenset[str]) -> list[str]:
    """Claim, as empty, each name between a claimed name and its zone that is not
    claimed yet (the empty non-terminals); return those names."""
    added: list[str] = []
    for name in list(claims):
        if name.partition(".")[2] in claims:
            continue  # the common case: the parent is claimed (its own turn comes)
        while name not in zones and "." in name:
            name = name.partition(".")[2]
            if name in claims:
                break
            claims[name] = {}
            added.append(name)
    return added


# Stands for "this owner's records at this name are unchanged" in the claims handed to
# ``Builder._claim`` (truthy, like a name with records; compared by identity).
_KEEP: dict[RRType, dict[Any, None]] = {RRType.A: {}}


def _reverse_name(ip: str) -> str:
    if ":" in ip:
        return names.reverse_name(ip)
    a, b, c, d = ip.split(".")
    return f"{d}.{c}.{b}.{a}.in-addr.arpa"


class _Shared:
    """A name claimed by more than one contribution: empty claims counted, others kept."""

    __slots__ = ("claims", "empty")

    def __init__(self) -> None:
        self.empty = 0
        self.claims: dict[Owner, RawNode] = {}


class Builder:
    """The writer's state: current objects, per-owner contributions, the name index.

    ``Builder(config, cluster)`` takes in a whole cluster; ``apply`` takes one changed
    object (or a deletion) at a time; ``publish(serial)`` settles what changed and
    returns an immutable ``Snapshot``. Not thread-safe: one writer at a time.
    """

    def __init__(self, config: Config, cluster: Cluster | None = None) -> None:
        cluster = cluster or Cluster()
        self.config = config
        self.ttl = config.ttl
        self.forward = tuple(z for z in config.zones if not names.is_reverse_zone(z))
        self.reverse = tuple(z for z in config.zones if names.is_reverse_zone(z))
        # Whole reverse trees served: every PTR name of that family is in a zone.
        self.all_v4 = "in-addr.arpa" in self.reverse
        self.all_v6 = "ip6.arpa" in self.reverse
        self.zones_long_first = tuple(sorted(config.zones, key=len, reverse=True))
        self.zone_set = frozenset(config.zones)
        self.domain = config.cluster_domain
        self.use_pod_names = config.endpoint_pod_names
        self.allowed = config.namespaces
        self.services: dict[Key, Service] = {}
        self.slices: dict[Key, EndpointSlice] = {}
        self.slices_by_svc: dict[Key, dict[str, EndpointSlice]] = {}
        self.pods: dict[Key, Pod] = {}
        self.namespace_objects: set[str] = set()
        self.ns_refs: dict[str, int] = {}  # namespace -> objects that make it exist
        self.pod_ip_refs: dict[tuple[str, str], int] = {}
        self.claimed: dict[Owner, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self.shared: dict[str, _Shared] = {}
        size = len(cluster.services) * 4 + sum(s.endpoint_count for s in cluster.endpoint_slices)
        self.index = _NodeStore(_shard_count(2 * size),
                                Compact(self.ttl, self.forward, self.domain))
        self.infos = _CowIndex(_shard_count(len(cluster.services)))
        self._dirty_services: set[Key] = set()
        # Dirty services whose only change is endpoints moving inside slices they already
        # had: the (addresses, hostname, pod name) items that appeared or went. A dirty
        # service without an entry here is recomputed whole.
        self._touched: dict[Key, set[_Item]] = {}
        self.examined = 0  # names the last publish computed (tests: cost follows change)
        self._dirty_namespaces: set[str] = set()
        self._pods_changed = True
        self._namespaces: frozenset[str] = frozenset()
        self._pod_ips: frozenset[tuple[str, str]] = frozenset()
        self.replaced = 0  # names the last publish wrote or removed (tests and benches)
        for ns in cluster.namespaces:
            self.apply(ns)
        for svc in cluster.services:
            self.apply(svc)
        for sl in cluster.endpoint_slices:
            self.apply(sl)
        for pod in cluster.pods:
            self.apply(pod)

    # ----------------------------------------------------------------- object deltas

    def _exposed(self, ns: str) -> bool:
        return not self.allowed or ns in self.allowed

    def _ns_ref(self, ns: str, delta: int) -> None:
        before = self.ns_refs.get(ns, 0)
        after = before + delta
        if after:
            self.ns_refs[ns] = after
        else:
            del self.ns_refs[ns]
        if (before == 0) != (after == 0):
            self._dirty_namespaces.add(ns)

    def apply(self, obj: KubeObject) -> None:
        """ADDED or MODIFIED: ``obj`` replaces the object with its key."""
        if isinstance(obj, Service):
            key = (obj.namespace, obj.name)
            if key not in self.services:
                self._ns_ref(obj.namespace, 1)
            self.services[key] = obj
            self._recompute(key)
        elif isinstance(obj, EndpointSlice):
            key = (obj.namespace, obj.name)
            old = self.slices.get(key)
            owner = (obj.namespace, obj.service)
            if old is not None and old.service == obj.service and \
                    old.ports == obj.ports and old.address_type == obj.address_type:
                self._endpoints_moved(owner, old, obj)
                self.slices[key] = obj
                self.slices_by_svc[owner][obj.name] = obj
                return
            if old is not None:
                self._unlink_slice(old)
            else:
                self._ns_ref(obj.namespace, 1)
            self.slices[key] = obj
            self.slices_by_svc.setdefault(owner, {})[obj.name] = obj
            self._recompute(owner)
        elif isinstance(obj, Namespace):
            if obj.name not in self.namespace_objects:
                self.namespace_objects.add(obj.name)
                self._ns_ref(obj.name, 1)
        else:
            key = (obj.namespace, obj.name)
            if key in self.pods:
                self._unlink_pod(self.pods[key])
            else:
                self._ns_ref(obj.namespace, 1)
            self.pods[key] = obj
            for ip in obj.ips:
                self.pod_ip_refs[(obj.namespace, ip)] = self.pod_ip_refs.get(
                    (obj.namespace, ip), 0) + 1
            self._pods_changed = True

    def delete(self, kind: type[KubeObject], key: Key) -> None:
        """DELETED: the object of ``kind`` with ``key`` is gone (no-op if unknown)."""
        if kind is Service:
            if self.services.pop(key, None) is not None:
                self._ns_ref(key[0], -1)
                self._recompute(key)
        elif kind is EndpointSlice:
            old = self.slices.pop(key, None)
            if old is not None:
                self._unlink_slice(old)
                self._ns_ref(old.namespace, -1)
        elif kind is Namespace:
            if key[1] in self.namespace_objects:
                self.namespace_objects.discard(key[1])
                self._ns_ref(key[1], -1)
        else:
            pod = self.pods.pop(key, None)
            if pod is not None:
                self._unlink_pod(pod)
                self._ns_ref(pod.namespace, -1)

    def _unlink_slice(self, old: EndpointSlice) -> None:
        owner = (old.namespace, old.service)
        group = self.slices_by_svc[owner]
        del group[old.name]
        if not group:
            del self.slices_by_svc[owner]
        self._recompute(owner)

    def _recompute(self, service: Key) -> None:
        """``service``'s whole contribution is computed again at the next publish."""
        self._touched.pop(service, None)
        self._dirty_services.add(service)

    def _endpoints_moved(self, service: Key, old: EndpointSlice, new: EndpointSlice) -> None:
        """A slice changed only its endpoints: note which, so that the next publish
        recomputes the names of those endpoints (and the service-wide RRsets), not the
        names of every endpoint of the service."""
        touched = self._touched.get(service)
        if touched is None:
            if service in self._dirty_services:
                return  # already recomputed whole
            touched = self._touched[service] = set()
        self._dirty_services.add(service)
        if new.address_type in ("IPv4", "IPv6"):
            touched.update(set(old.ready_items()).symmetric_difference(new.ready_items()))

    def _unlink_pod(self, pod: Pod) -> None:
        for ip in pod.ips:
            k = (pod.namespace, ip)
            left = self.pod_ip_refs[k] - 1
            if left:
                self.pod_ip_refs[k] = left
            else:
                del self.pod_ip_refs[k]
        self._pods_changed = True

    # ------------------------------------------------------------------ publication

    def publish(self, serial: int) -> Snapshot:
        """Settle every change since the last publish and freeze a snapshot."""
        writes = self.index.writes
        for ns in self._dirty_namespaces:
            owner: Owner = ("ns", ns, "")
            exists = ns in self.ns_refs and self._exposed(ns)
            self._claim(owner, self._namespace_claims(ns) if exists else {})
        if self._dirty_namespaces:
            self._namespaces = frozenset(ns for ns in self.ns_refs if self._exposed(ns))
            self._dirty_namespaces.clear()
            self._pods_changed = True  # pod_ips only holds exposed namespaces
        self.examined = 0
        for key in self._dirty_services:
            owner = ("svc", key[0], key[1])
            svc = self.services.get(key)
            if svc is None or not self._exposed(key[0]):
                self._withdraw(owner)
                self.infos.delete(key)
                continue
            slices = self.slices_by_svc.get(key)
            ordered = [slices[n] for n in sorted(slices)] if slices else []
            # A new service (every one, in a full build) has nothing to compare with:
            # its one-record names skip the claims (``lone``, see ``_claim_fresh``).
            fresh = owner not in self.claimed
            lone: list[tuple[str, RRType, Any]] | None = [] if fresh else None
            touched = None if fresh else self._touched.get(key)
            info, claims, scope = self._service_claims(svc, ordered, touched, lone)
            self.examined += len(claims) + len(lone or ())
            if scope is not None:  # the names outside the scope stay as they are
                kept: Claims = {n: _KEEP for n in self.claimed[owner][0] if n not in scope}
                kept.update(claims)
                claims = kept
            if self.infos.get(key) is not info:
                self.infos.set(key, info)
            if lone is None:
                self._claim(owner, claims)
            else:
                self._claim_fresh(owner, claims, lone)
        self._dirty_services.clear()
        self._touched.clear()
        self._claim(_ZONE_OWNER, self._zone_claims(serial))  # the SOA serial, kube-dns
        if self._pods_changed:
            self._pod_ips = frozenset(k for k in self.pod_ip_refs if k[0] in self._namespaces)
            self._pods_changed = False
        self.replaced = self.index.writes - writes
        return Snapshot(serial=serial, synced=True, config=self.config,
                        zones=self.zones_long_first, forward_zones=self.forward,
                        nodes=self.index.freeze_nodes(), namespaces=self._namespaces,
                        pod_ips=self._pod_ips, services=self.infos.freeze(),
                        record_count=self.index.weight)

    # ----------------------------------------------------------------------- claims

    def _claim(self, owner: Owner, claims: Claims) -> None:
        """Make ``owner``'s claims exactly ``claims`` (names with records or empty ones)
        plus the non-terminals between those names and their zones.

        Only names whose content changed are written: an unchanged node keeps its object;
        a name mapped to ``_KEEP`` (one ``owner`` already claims with records) is not
        even compared.
        """
        old = self.claimed.pop(owner, None)
        if old is None:
            self._claim_fresh(owner, claims)
            return
        ttl, zones = self.ttl, self.zone_set
        full: list[str] = []
        empty: list[str] = []
        for name, sets in claims.items():
            (full if sets else empty).append(name)
        empty.extend(_add_ancestors(claims, zones))
        old_full, old_empty = set(old[0]), set(old[1])
        for name in old[0]:
            if not claims.get(name):
                self._drop(owner, name, True)
        for name in old[1]:
            if claims.get(name, True):
                self._drop(owner, name, False)
        made: list[tuple[RawNode, int]] = []
        for name in full:
            sets = claims[name]
            if name in old_full:
                if sets is not _KEEP:
                    self._swap(owner, _node(name, ttl, owner, sets))
                continue
            made.append((_node(name, ttl, owner, sets), sum(map(len, sets.values()))))
        self._write_new(made)
        hold = self._hold_empty
        for name in empty:
            if name not in old_empty:
                hold(name, owner)
        if full or empty:
            self.claimed[owner] = (tuple(full), tuple(empty))

    def _claim_fresh(self, owner: Owner, claims: Claims,
                     lone: Sequence[tuple[str, RRType, Any]] = ()) -> None:
        """``_claim`` for an owner that claims nothing yet (every owner, in a full
        build): nothing to compare, so one pass that makes and writes the nodes.

        ``lone`` are (name, type, value) triples, each name distinct and not in
        ``claims``: names of one record (an endpoint's name, a PTR), written without a
        claims entry of their own (most of a full build's names; see
        ``_service_claims``).
        """
        ttl, zones, one_type = self.ttl, self.zone_set, _ONE_TYPE
        full: list[str] = []
        empty: list[str] = []
        made: list[tuple[RawNode, int]] = []
        _add_ancestors(claims, zones)
        for name, sets in claims.items():
            if not sets:
                empty.append(name)
                continue
            full.append(name)
            made.append((_node(name, ttl, owner, sets), sum(map(len, sets.values()))))
        self._write_new(made)
        if lone:
            above = dict[str, None]()
            singles: list[tuple[RawNode, int]] = []
            for name, rtype, value in lone:
                full.append(name)
                singles.append(((name, ttl, owner, one_type[rtype], value), 1))
                while name not in zones and "." in name:  # its empty non-terminals
                    name = name.partition(".")[2]
                    if name in above or name in claims:
                        break
                    above[name] = None
            empty.extend(above)
            self._write_new(singles, self.index.compact.trusted)
        hold = self._hold_empty
        for name in empty:
            hold(name, owner)
        if full or empty:
            self.claimed[owner] = (tuple(full), tuple(empty))

    def _write_new(self, made: Iterable[tuple[RawNode, int]], compact: bool = False) -> None:
        """Index nodes for names their owner did not hold (with their record counts).

        One probe each: a name nobody holds yet (the common case) is written straight
        into its shard; one somebody holds (a shared name is always in the index) is
        merged by ``_put``. ``compact``: every node is a service's one A, AAAA or PTR
        record named as ``_service_claims`` names them, so its value is its compact
        form (``Compact.pack`` would say so, at a cost of ~2 us a name).
        """
        index, put, pack = self.index, self._put, self.index.compact.pack
        shards, mask, writable, owned = index.shards, index.mask, index.writable_shard, index.owned
        added = weight = 0
        for node, count in made:
            name = node[_NAME]
            i = hash(name) & mask
            shard = shards[i] if i in owned else writable(i)
            if name in shard:
                put(node)
            else:
                shard[name] = node[_DATA] if compact else pack(node)
                added += 1
                weight += count
        index.added(added, weight)

    def _hold_empty(self, name: str, owner: Owner) -> None:
        """``owner`` claims ``name`` as an empty non-terminal."""
        shared = self.shared.get(name)
        if shared is not None and not shared.claims:
            # An empty name others hold already (``svc.<zone>``, a namespace, a reverse
            # prefix: one per service in a full build): one more holder, nothing to index.
            shared.empty += 1
        else:
            self._put((name, self.ttl, owner, (), ()))

    def _withdraw(self, owner: Owner) -> None:
        """Remove every name ``owner`` claimed (no-op if it claimed none)."""
        self._claim(owner, {})

    def _swap(self, owner: Owner, node: RawNode) -> None:
        """``owner`` claims the node's name with records again: write it if they changed."""
        name = node[_NAME]
        shared = self.shared.get(name)
        before = shared.claims[owner] if shared is not None else self.index.get(name)
        if before[_KINDS] == node[_KINDS] and before[_DATA] == node[_DATA]:
            return
        if shared is None:
            self.index.set(name, node)
        else:
            shared.claims[owner] = node
            self._settle(name, shared)

    def _put(self, node: RawNode) -> None:
        name, index = node[_NAME], self.index
        shared = self.shared.get(name)
        if shared is None:
            present = index.get(name)
            if present is None:
                index.set_new(name, node)
                return
            shared = self.shared[name] = _Shared()
            self._add_shared(shared, present)
        self._add_shared(shared, node)
        self._settle(name, shared)

    @staticmethod
    def _add_shared(shared: _Shared, node: RawNode) -> None:
        if node[_KINDS]:
            shared.claims[node[_OWNER]] = node
        else:
            shared.empty += 1

    def _settle(self, name: str, shared: _Shared) -> None:
        """Index the merge of a shared name's claims (an empty node stays as it was)."""
        if not shared.claims:
            present = self.index.get(name)
            if present is not None and not present[_KINDS]:
                return
        self.index.set(name, self._merged(name, shared))

    def _drop(self, owner: Owner, name: str, has_records: bool) -> None:
        """Remove ``owner``'s claim on ``name``. A name once shared stays in
        ``self.shared`` until no claim is left, so a count going 2 -> 1 -> 2 does not
        rewrite it each time."""
        shared = self.shared.get(name)
        if shared is None:
            self.index.delete(name)
            return
        if has_records:
            del shared.claims[owner]
        else:
            shared.empty -= 1
        if shared.empty or shared.claims:
            self._settle(name, shared)
        else:
            del self.shared[name]
            self.index.delete(name)

    def _merged(self, name: str, shared: _Shared) -> RawNode:
        if not shared.claims:
            return (name, self.ttl, _ZONE_OWNER, (), ())
        if len(shared.claims) == 1:
            return next(iter(shared.claims.values()))
        sets: dict[RRType, dict[Any, None]] = {}
        for owner in sorted(shared.claims):
            for rtype, raw in _raw_items(shared.claims[owner]):
                sets.setdefault(RRType(rtype), {}).update(dict.fromkeys(raw))
        return _node(name, self.ttl, _ZONE_OWNER, sets)

    # ------------------------------------------------------------- what owners claim

    def _spelling(self, spelled: dict[str, str]) -> Callable[[str, str], str]:
        """``spelled.setdefault`` that first takes a name's object from the index."""
        index_get = self.index.get

        def one(text: str, _: str) -> str:
            found = spelled.get(text)
            if found is None:
                node = index_get(text)
                found = spelled[text] = text if node is None else node[_NAME]
            return found
        return one

    def _zone_claims(self, serial: int) -> dict[str, dict[RRType, dict[Any, None]]]:
        ttl, domain = self.ttl, self.domain
        recs: list[Record] = []
        kube_dns = self.services.get(("kube-system", "kube-dns"))
        for zone in self.config.zones:
            recs.extend(records.apex_records(zone, domain, serial, ttl))
            if kube_dns is not None and zone in self.forward:
                ns_name = names.join("ns.dns", zone)
                recs.extend(records.address_record(ns_name, ttl, ip)
                            for ip in kube_dns.cluster_ips)
        by_name: dict[str, list[Record]] = {}
        for rec in recs:
            by_name.setdefault(rec.name, []).append(rec)
        claims = {name: _record_values(rs) for name, rs in by_name.items()}
        for zone in self.forward:
            for label in ("svc", "pod"):
                claims.setdefault(names.join(label, zone), {})
        return claims

    def _namespace_claims(self, ns: str) -> dict[str, dict[RRType, dict[Any, None]]]:
        claims: dict[str, dict[RRType, dict[Any, None]]] = {}
        pods = self.config.pods is not PodsMode.DISABLED
        for zone in self.forward:
            claims[names.join(ns, "svc", zone)] = {}
            if pods:
                claims[names.join(ns, "pod", zone)] = {}
        return claims

    def _service_claims(
        self, svc: Service, slices: list[EndpointSlice], touched: set[_Item] | None = None,
        lone: list[tuple[str, RRType, Any]] | None = None,
    ) -> tuple[ServiceInfo, Claims, set[str] | None]:
        """SPEC §S2.2-S2.7 for one service; the same rules as ``records.service_records``
        and ``records.ptr_records``, written for speed: raw values, no ``Record``s.

        With ``touched`` (the endpoints that changed since the last publish), only the
        service-wide names (the service name, its SRV owners, its ClusterIP PTRs) and the
        names of the touched endpoints are computed, and the third value is the scope:
        every name those could have held, before or now. Outside the scope the service's
        last claims stand. Without ``touched`` (or when the service has no ready
        endpoints left) everything is computed and the scope is None.

        With ``lone`` (for ``_claim_fresh``), the names of one record go there as (name,
        type, value) instead of into the claims: an endpoint's name with one address,
        and the PTRs when no two of the service's addresses share a name.
        """
        use_pod, kind = self.use_pod_names, svc.kind
        label_of = records.endpoint_label
        # One pass over the ready endpoints: the merged label -> addresses of the IP
        # slices (``records.ready_endpoints``), and for a headless service, per slice
        # with a named port, the distinct labels of its ready endpoints (SRV targets).
        ready: dict[str, dict[str, None]] = {}
        slice_labels: list[tuple[EndpointSlice, list[str]]] = []
        for sl in slices:
            counted = sl.address_type in ("IPv4", "IPv6")
            named = kind is ServiceKind.HEADLESS and any(p.name for p in sl.ports)
            if not counted and not named:
                continue
            if not named and not sl.has_hostnames and not (use_pod and sl.has_pod_names):
                # every label is the dashed address: the common case, made quick
                dotted = sl.address_type == "IPv4"
                for ip in sl.ready_addresses():
                    label = ip.replace(".", "-") if dotted else names.dashed_ip(ip)
                    ips_of = ready.get(label)
                    if ips_of is None:
                        ready[label] = {ip: None}
                    else:
                        ips_of[ip] = None
                continue
            by_ip: dict[str, str] = {}
            for addresses, hostname, pod_name in sl.ready_items():
                for ip in addresses:
                    label = label_of(hostname, pod_name, ip, use_pod)
                    if counted:
                        ips_of = ready.get(label)
                        if ips_of is None:
                            ready[label] = {ip: None}
                        else:
                            ips_of[ip] = None
                    if named:
                        by_ip[ip] = label
            if named:
                slice_labels.append((sl, list(dict.fromkeys(by_ip.values()))))
        info = _info(kind, len(ready))
        claims: Claims = {}
        if not ready and (kind is ServiceKind.HEADLESS or (
                kind is ServiceKind.CLUSTER_IP and self.config.ignore_empty_service)):
            return info, claims, None
        A, AAAA, SRV = RRType.A, RRType.AAAA, RRType.SRV

        def add(name: str, rtype: RRType, value: Any) -> None:
            sets = claims.get(name)
            if sets is None:
                claims[name] = {rtype: {value: None}}
            else:
                sets.setdefault(rtype, {})[value] = None

        if kind is ServiceKind.EXTERNAL_NAME:
            for zone in self.forward:
                add(names.join(svc.name, svc.namespace, "svc", zone), RRType.CNAME,
                    svc.external_name)
            return info, claims, None

        # The endpoints whose own names (``<label>.<service>``, PTRs) are computed.
        labels: set[str] | None = None
        ips: set[str] | None = None
        scope: set[str] | None = None
        if touched is not None:
            labels, ips, scope = set(), set(svc.cluster_ips), set()
            for addresses, hostname, pod_name in touched:
                for ip in addresses:
                    labels.add(records.endpoint_label(hostname, pod_name, ip, use_pod))
                    ips.add(ip)
            scope.update(_reverse_name(ip) for ip in ips)
        wanted = ready if labels is None else {
            label: ips_of for label, ips_of in ready.items() if label in labels}

        # One string object per distinct name: an endpoint's name is its node's key,
        # its SRV target and its PTR target (the same text, stored once).
        # Recomputing a service, the names it holds already keep their objects: a new SRV
        # target would otherwise be a second copy of its endpoint name's text.
        spelled: dict[str, str] = {}
        one = spelled.setdefault if lone is not None else self._spelling(spelled)
        for zone in self.forward:
            base = names.join(svc.name, svc.namespace, "svc", zone)
            base = one(base, base)
            srv: dict[tuple[str, int, str], None] = {}
            if kind is ServiceKind.CLUSTER_IP:
                for ip in svc.cluster_ips:
                    add(base, AAAA if ":" in ip else A, ip)
                for port in svc.ports:
                    if port.name:
                        srv[(f"_{port.name}._{port.protocol}.{base}", port.port, base)] = None
            else:  # headless: ``ready`` is not empty (see above)
                sets: dict[RRType, dict[Any, None]] = {}
                claims[base] = sets
                for ips_of in ready.values():
                    for ip in ips_of:
                        rtype = AAAA if ":" in ip else A
                        values = sets.get(rtype)
                        if values is None:
                            sets[rtype] = {ip: None}
                        else:
                            values[ip] = None
                for sl, sl_labels in slice_labels:
                    for port in sl.ports:
                        if port.name:
                            owner = f"_{port.name}._{port.protocol}.{base}"
                            for label in sl_labels:
                                target = f"{label}.{base}"
                                srv[(owner, port.port, one(target, target))] = None
            if scope is not None:
                # Every name the service itself could hold: an SRV owner whose last
                # target went must go too.
                scope.add(base)
                ports = svc.ports if kind is ServiceKind.CLUSTER_IP else [
                    p for sl in slices for p in sl.ports]
                scope.update(f"_{p.name}._{p.protocol}.{base}" for p in ports if p.name)
                assert labels is not None
                scope.update(f"{label}.{base}" for label in labels)
            for label, ips_of in wanted.items():
                owner = f"{label}.{base}"
                owner = one(owner, owner)
                if len(ips_of) == 1 and owner not in claims:  # the common case
                    for ip in ips_of:
                        if lone is None:
                            claims[owner] = {AAAA if ":" in ip else A: {ip: None}}
                        else:  # no other name of the service can be this one
                            lone.append((owner, AAAA if ":" in ip else A, ip))
                    continue
                for ip in ips_of:
                    add(owner, AAAA if ":" in ip else A, ip)
            per_owner: dict[str, int] = {}
            for owner, _, _ in srv:
                per_owner[owner] = per_owner.get(owner, 0) + 1
            for owner, number, target in srv:
                add(owner, SRV, (0, records.srv_weight(per_owner[owner]), number, target))
            bare = list(dict.fromkeys((number, target) for _, number, target in srv))
            for number, target in bare:
                add(base, SRV, (0, records.srv_weight(len(bare)), number, target))
        if self.reverse:
            base = names.join(svc.name, svc.namespace, "svc", self.domain)
            base = one(base, base)
            # (address, PTR target) pairs: the ClusterIPs, then every endpoint's
            ptrs: list[tuple[str, str]] = []
            if kind is ServiceKind.CLUSTER_IP:
                ptrs.extend((ip, base) for ip in svc.cluster_ips)
            for label, ips_of in ready.items():
                if ips is not None and ips.isdisjoint(ips_of):
                    continue
                target = f"{label}.{base}"
                target = one(target, target)
                for ip in ips_of:
                    if ips is None or ip in ips:
                        ptrs.append((ip, target))
            reverse, all_v4, all_v6, PTR = self.reverse, self.all_v4, self.all_v6, RRType.PTR
            # An address under two labels means two PTRs at one name: merged in claims.
            lone_ptrs = lone if lone is not None and len(
                {ip for ip, _ in ptrs}) == len(ptrs) else None
            for ip, target in ptrs:
                rname = _reverse_name(ip)
                if (all_v6 if ":" in ip else all_v4) or any(
                        names.is_subdomain(rname, z) for z in reverse):
                    if lone_ptrs is not None:
                        lone_ptrs.append((rname, PTR, target))
                        continue
                    at = claims.get(rname)
                    if at is None:  # the common case: one PTR at a name
                        claims[rname] = {PTR: {target: None}}
                    else:
                        at.setdefault(PTR, {})[target] = None
        return info, claims, scope


# ------------------------------------------------------------------------ reference


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
