"""Which owner claims which name, counted and merged into the name index.

Why this module exists: a change to one object must touch only the names it affects
(issue 5 item 4). Every contribution to the snapshot has an owner (a Service, a
Namespace, the zone apexes), and the ``ClaimBook`` keeps, per owner, the names it
claims: with records, or empty (the non-terminals above its names). ``claim`` makes an
owner's claims exactly a new set and writes only the names whose content changed; a
withdrawn owner's names go, unless another owner still claims them. Names claimed by
several owners (``<ns>.svc.<zone>``, reverse-zone non-terminals, a PTR name two services
share) are ``shared``: their empty claims are counted, their record-carrying claims
kept and merged in owner order. The full build claims through the same book, so both
paths produce the same snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from clusterdns.records import RRType
from clusterdns.snapshot.index import NodeStore
from clusterdns.snapshot.nodes import (
    DATA,
    KINDS,
    MCS_OWNER,
    NAME,
    ONE_TYPE,
    OWNER,
    ZONE_OWNER,
    Owner,
    RawNode,
    make_node,
    raw_items,
)

Claims = dict[str, dict["RRType", dict[Any, None]]]  # name -> type -> raw values, in order


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
# ``ClaimBook.claim`` (truthy, like a name with records; compared by identity).
KEEP: dict[RRType, dict[Any, None]] = {RRType.A: {}}


def _local_first(claims: dict[Owner, RawNode]) -> dict[Owner, RawNode]:
    """At a reverse name, a multicluster import's PTR (owner ``("mcs", ns, name)``) is
    only a fallback: when the cluster itself has a PTR there (a Service's ClusterIP, an
    endpoint), the address keeps the cluster's own (SPEC §S7)."""
    local = {owner: node for owner, node in claims.items() if owner[0] != MCS_OWNER}
    return local if local and len(local) < len(claims) else claims


class _Shared:
    """A name claimed by more than one contribution: empty claims counted, others kept."""

    __slots__ = ("claims", "empty")

    def __init__(self) -> None:
        self.empty = 0
        self.claims: dict[Owner, RawNode] = {}


class ClaimBook:
    """Every owner's claims, and the index holding what they claim, merged.

    Not thread-safe: the ``Builder`` that owns it is the one writer.
    """

    def __init__(self, ttl: int, zones: frozenset[str], index: NodeStore) -> None:
        self.ttl = ttl
        self.zone_set = zones
        self.index = index
        # owner -> (names it claims with records, names it claims empty)
        self.claimed: dict[Owner, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self.shared: dict[str, _Shared] = {}  # names claimed by more than one owner

    def claim(self, owner: Owner, claims: Claims) -> None:
        """Make ``owner``'s claims exactly ``claims`` (names with records or empty ones)
        plus the non-terminals between those names and their zones.

        Only names whose content changed are written: an unchanged node keeps its object;
        a name mapped to ``KEEP`` (one ``owner`` already claims with records) is not
        even compared.
        """
        old = self.claimed.pop(owner, None)
        if old is None:
            self.claim_fresh(owner, claims)
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
                if sets is not KEEP:
                    self._swap(owner, make_node(name, ttl, owner, sets))
                continue
            made.append((make_node(name, ttl, owner, sets), sum(map(len, sets.values()))))
        self._write_new(made)
        hold = self._hold_empty
        for name in empty:
            if name not in old_empty:
                hold(name, owner)
        if full or empty:
            self.claimed[owner] = (tuple(full), tuple(empty))

    def claim_fresh(self, owner: Owner, claims: Claims,
                     lone: Sequence[tuple[str, RRType, Any]] = ()) -> None:
        """``claim`` for an owner that claims nothing yet (every owner, in a full
        build): nothing to compare, so one pass that makes and writes the nodes.

        ``lone`` are (name, type, value) triples, each name distinct and not in
        ``claims``: names of one record (an endpoint's name, a PTR), written without a
        claims entry of their own (most of a full build's names; see
        ``Builder._service_claims``).
        """
        ttl, zones, one_type = self.ttl, self.zone_set, ONE_TYPE
        full: list[str] = []
        empty: list[str] = []
        made: list[tuple[RawNode, int]] = []
        _add_ancestors(claims, zones)
        for name, sets in claims.items():
            if not sets:
                empty.append(name)
                continue
            full.append(name)
            made.append((make_node(name, ttl, owner, sets), sum(map(len, sets.values()))))
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
        record named as ``Builder._service_claims`` names them, so its value is its compact
        form (``Compact.pack`` would say so, at a cost of ~2 us a name).
        """
        index, put, pack = self.index, self._put, self.index.compact.pack
        shards, mask, writable, owned = index.shards, index.mask, index.writable_shard, index.owned
        added = weight = 0
        for node, count in made:
            name = node[NAME]
            i = hash(name) & mask
            shard = shards[i] if i in owned else writable(i)
            if name in shard:
                put(node)
            else:
                shard[name] = node[DATA] if compact else pack(node)
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

    def withdraw(self, owner: Owner) -> None:
        """Remove every name ``owner`` claimed (no-op if it claimed none)."""
        self.claim(owner, {})

    def _swap(self, owner: Owner, node: RawNode) -> None:
        """``owner`` claims the node's name with records again: write it if they changed."""
        name = node[NAME]
        shared = self.shared.get(name)
        before = shared.claims[owner] if shared is not None else self.index.get(name)
        if before[KINDS] == node[KINDS] and before[DATA] == node[DATA]:
            return
        if shared is None:
            self.index.set(name, node)
        else:
            shared.claims[owner] = node
            self._settle(name, shared)

    def _put(self, node: RawNode) -> None:
        name, index = node[NAME], self.index
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
        if node[KINDS]:
            shared.claims[node[OWNER]] = node
        else:
            shared.empty += 1

    def _settle(self, name: str, shared: _Shared) -> None:
        """Index the merge of a shared name's claims (an empty node stays as it was)."""
        if not shared.claims:
            present = self.index.get(name)
            if present is not None and not present[KINDS]:
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
        claims = shared.claims
        if not claims:
            return (name, self.ttl, ZONE_OWNER, (), ())
        if len(claims) > 1 and name.endswith(".arpa"):
            claims = _local_first(claims)
        if len(claims) == 1:
            return next(iter(claims.values()))
        sets: dict[RRType, dict[Any, None]] = {}
        for owner in sorted(claims):
            for rtype, raw in raw_items(claims[owner]):
                sets.setdefault(RRType(rtype), {}).update(dict.fromkeys(raw))
        return make_node(name, self.ttl, ZONE_OWNER, sets)

    # ------------------------------------------------------------- what owners claim
