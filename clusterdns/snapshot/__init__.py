"""The immutable snapshot every query is answered from, and the one reference to it.

Why this package exists: queries need one consistent, read-only view of every name the
cluster implies (owner name -> record type -> RRset, including every empty non-terminal,
so "does this name exist" is a lookup), and the writer needs to produce the next such
view cheaply when one object changes. ``SnapshotRef.publish*`` swaps the single shared
reference; readers take it once per query and never lock, so each reply sees one
generation. The SOA serial is the generation number.

One module per job, each depending only on those before it:

- ``nodes``: how one name's records are stored (``RawNode`` tuples, ``LazyNode`` views);
- ``index``: the name index in copy-on-write shards, and ``Compact`` storage;
- ``pods``: which pod holds each address, for autopath, in copy-on-write shards;
- ``model``: ``Snapshot`` itself, what readers see;
- ``claims``: which owner claims which name, counted and merged into the index;
- ``builder``: the current objects and the record rules, turned into claims;
- ``ref``: ``SnapshotRef``, the one reference, and the one writer.

Readers import from here; the names below are the package's interface.
"""

from clusterdns.snapshot.builder import Builder, Key, build
from clusterdns.snapshot.index import NameIndex, NodeIndex
from clusterdns.snapshot.model import ServiceInfo, Snapshot, unsynced
from clusterdns.snapshot.nodes import EMPTY_NODE, LazyNode, Node, Owner, RawNode
from clusterdns.snapshot.ref import SnapshotRef

__all__ = [
    "EMPTY_NODE",
    "Builder",
    "Key",
    "LazyNode",
    "NameIndex",
    "Node",
    "NodeIndex",
    "Owner",
    "RawNode",
    "ServiceInfo",
    "Snapshot",
    "SnapshotRef",
    "build",
    "unsynced",
]
