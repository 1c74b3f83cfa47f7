"""Reading a cluster dump: YAML or JSON files of Kubernetes objects, into slim objects.

``kubectl get ns,svc,endpointslices,pods -A -o yaml > dump.yaml`` captures everything
DNS needs from a cluster; pointing clusterdns at that file lets people test names with
dig offline, reproduce a user's problem from their dump, and run the demo. Each file may
hold several YAML documents, each a single object or a ``kind: List`` (or ``ServiceList``
and the like) with ``items``. ``-o json`` dumps (a ``.json`` name, or text that starts
with ``{`` or ``[`` and parses as JSON) are read with the ``json`` module: a 35 MB List at
10k Services and 100k endpoints takes PyYAML about ten seconds, ``json`` well under one;
a JSON List is decoded one item at a time, so its raw dicts never all exist at once. A
top-level JSON array counts as one document per element.

A file that cannot be read or parsed fails the whole load (``SourceError``): serving half
a cluster would turn real names into NXDOMAIN. A single malformed object is skipped with
a warning that says where it is (file, 1-based document and item numbers, the object,
the field). ``source.file.FileSource`` serves the result and reloads it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, TextIO

import yaml

from clusterdns.convert import SUPPORTED_KINDS, ConvertError, convert, describe
from clusterdns.objects import (
    Cluster,
    EndpointSlice,
    KubeObject,
    Namespace,
    Pod,
    Service,
    ServiceImport,
)

try:
    from yaml import CSafeLoader as _YamlLoader
except ImportError:  # PyYAML built without libyaml
    from yaml import SafeLoader as _YamlLoader  # type: ignore[assignment]

_FIRST_NON_SPACE = re.compile(r"\S")

class SourceError(Exception):
    """A file cannot be read or parsed; the message names the file."""


@dataclass(frozen=True)
class LoadResult:
    cluster: Cluster
    warnings: tuple[str, ...]  # one per skipped object or document
    ignored: Mapping[str, int]  # unsupported kind -> number of objects


class ItemCache:
    """The items of YAML Lists as ``kubectl get -o yaml`` writes them, by their text, as
    the last load converted them.

    PyYAML's C loader reads about 1 MB a second, so a 1.5 MB dump took 1.5 s to load
    however little had changed. With a cache, ``load_files`` cuts such a List into its
    items (each starts a line with ``- `` under ``items:``) and parses only the items
    whose text it has not seen: a rewrite that changed a few services parses a few.
    ``complete`` says whether every file of the last load was read this way; it holds
    the items of the last load only.
    """

    def __init__(self) -> None:
        self.items: dict[str, _Outcome] = {}
        self.complete = False


def load_files(paths: Sequence[Path], cache: ItemCache | None = None) -> LoadResult:
    """Read and convert every object in ``paths``; the last of duplicate objects wins.

    Raises ``SourceError`` when any file cannot be read or parsed.
    """
    collector = _Collector()
    seen: dict[str, _Outcome] | None = None
    if cache is not None:
        seen, cache.complete = {}, True
    for path in paths:
        where = str(path)
        for number, document in enumerate(_parse(path, collector, cache, seen), 1):
            collector.add_document(f"{where}: document {number}", document)
    if cache is not None and seen is not None:
        cache.items = seen
    return collector.result()


def _parse(path: Path, collector: _Collector, cache: ItemCache | None = None,
           seen: dict[str, _Outcome] | None = None) -> list[Any]:
    """The documents of one file (a JSON List, or with ``cache`` a YAML List, may go
    straight into ``collector``)."""
    if _stream_json_list(path, collector):
        if cache is not None:
            cache.complete = False
        return []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: cannot read: not UTF-8 text (byte {exc.start})") from None
    first = _FIRST_NON_SPACE.search(text)
    if first is None:
        return []
    if path.suffix.lower() == ".json":
        if cache is not None:
            cache.complete = False
        return _parse_json(path, text)
    if cache is not None and seen is not None:
        if _cached_items(path, text, collector, cache, seen):
            return []
        cache.complete = False
    if first.group() in "{[":
        # Most likely ``-o json``; a YAML file may start with a flow collection too
        # (``{kind: Namespace, ...}``), so anything that is not JSON goes on to YAML.
        try:
            return _parse_json(path, text)
        except SourceError:
            pass
    try:
        return list(yaml.load_all(text, Loader=_YamlLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise SourceError(f"{path}: not valid YAML{at}: {exc.problem or exc.context}") from None
    except yaml.reader.ReaderError as exc:
        # Its position counts bytes in libyaml, characters in Python; the character is
        # the same, and its first occurrence is where the reader stopped.
        index = text.find(chr(exc.character))
        line, column = text.count("\n", 0, index) + 1, index - text.rfind("\n", 0, index)
        raise SourceError(f"{path}: not valid YAML at line {line}, column {column}: "
                          f"{exc.reason}") from None
    except yaml.YAMLError as exc:
        raise SourceError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None


_ITEMS = re.compile(r"^items:[ \t]*\n", re.MULTILINE)
_ITEM_START = re.compile(r"^-(?: |$)", re.MULTILINE)
_ITEMS_END = re.compile(r"^(?:[^ \-\n]|-[^ \n])", re.MULTILINE)  # column 0, not "- "


def _cached_items(path: Path, text: str, collector: _Collector, cache: ItemCache,
                  seen: dict[str, _Outcome]) -> bool:
    """Read a kubectl-style YAML List item by item through ``cache`` (see
    ``ItemCache``); False, having added nothing, when ``text`` is not one or anything
    in it does not parse (the caller then parses it whole, for the error's place)."""
    match = _ITEMS.search(text)
    if match is None:
        return False
    start = match.end()
    end_match = _ITEMS_END.search(text, start)
    end = end_match.start() if end_match is not None else len(text)
    starts = [m.start() for m in _ITEM_START.finditer(text, start, end)]
    if not starts or starts[0] != start:
        return False
    try:
        skeleton = yaml.load(text[:start] + text[end:], Loader=_YamlLoader)
    except yaml.YAMLError:
        return False
    kind = skeleton.get("kind") if isinstance(skeleton, dict) else None
    if not (isinstance(kind, str) and kind.endswith("List") and "items" in skeleton
            and skeleton["items"] is None):
        return False
    item_kind = kind[: -len("List")]
    outcomes: list[_Outcome] = []
    for begin, finish in zip(starts, [*starts[1:], end], strict=True):
        item = text[begin:finish]
        outcome = seen.get(item) or cache.items.get(item)
        if outcome is None:
            try:
                parsed = yaml.load(item, Loader=_YamlLoader)
            except yaml.YAMLError:
                return False
            if not isinstance(parsed, list) or len(parsed) != 1:
                return False
            outcome = _outcome(parsed[0], item_kind)
        seen[item] = outcome
        outcomes.append(outcome)
    place = f"{path}: document 1"
    for number, outcome in enumerate(outcomes, 1):
        collector.add_outcome(f"{place}, item {number}", outcome)
    return True


def _parse_json(path: Path, text: str) -> list[Any]:
    """The documents of a JSON file: the value itself, or each element of a top-level array.

    The ``json`` module reads a 35 MB ``kubectl get -o json`` List in well under a
    second, where PyYAML (even with libyaml) needs about ten.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path}: not valid JSON at line {exc.lineno}, "
                          f"column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise SourceError(f"{path}: not valid JSON: nested too deeply") from None
    return value if isinstance(value, list) else [value]


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _skip(text: str, i: int) -> int:
    """Past the JSON white space at ``i``."""
    match = _JSON_SPACE.match(text, i)
    assert match is not None  # the pattern matches the empty string
    return match.end()


class _JsonChunks:
    """A JSON text read in chunks: what is buffered, and the means to read more."""

    CHUNK = 1 << 20

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.text = ""
        self.i = 0
        self.ended = False

    def more(self) -> bool:
        """Read another chunk (dropping what was consumed); False at the end."""
        if self.ended:
            return False
        chunk = self.stream.read(self.CHUNK)
        if not chunk:
            self.ended = True
            return False
        self.text = self.text[self.i:] + chunk
        self.i = 0
        return True

    def peek(self) -> str:
        """The next character that is not JSON white space ("" at the end)."""
        while True:
            self.i = _skip(self.text, self.i)
            if self.i < len(self.text) or not self.more():
                return self.text[self.i:self.i + 1]

    def take(self, char: str) -> bool:
        if self.peek() != char:
            return False
        self.i += 1
        return True

    def value(self) -> Any:
        """The next JSON value; ``json.JSONDecodeError`` if it is not one."""
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.i)
            except json.JSONDecodeError:
                if self.more():
                    continue  # cut off by the end of the chunk, perhaps
                raise
            if end == len(self.text) and self.more():
                continue  # a number may go on in the next chunk
            self.i = end
            return value


def _stream_json_list(path: Path, collector: _Collector) -> bool:
    """Read a JSON ``kind: *List`` file item by item into ``collector``.

    ``read_text`` + ``json.loads`` of a 50 MB List holds the bytes, the text and every
    raw dict at once (~200 MB at 100k endpoints) before the first is converted; this
    holds a chunk and one item. The result is what ``json.loads`` and ``add_document``
    would give; anything else (not a List, not JSON, not UTF-8, a second ``items``)
    returns False having changed nothing, and the caller reads the file as before.
    """
    part = _Collector()
    place = f"{path}: document 1"
    members: dict[str, Any] = {}
    streamed = False
    deferred: list[tuple[int, Any]] = []  # items that need the List's kind, and all after
    try:
        with path.open(encoding="utf-8-sig") as stream:
            json_text = _JsonChunks(stream)
            if not json_text.take("{"):
                return False
            closed = json_text.take("}")
            while not closed:
                key = json_text.value()
                if not isinstance(key, str) or not json_text.take(":") or key in members:
                    return False
                if key == "items" and json_text.take("[") and not streamed:
                    streamed = True
                    number = 0
                    ended = json_text.take("]")
                    while not ended:
                        item = json_text.value()
                        number += 1
                        if not deferred and (not isinstance(item, dict)
                                             or item.get("kind") not in (None, "")):
                            part.add_object(f"{place}, item {number}", item, "")
                        else:
                            deferred.append((number, item))
                        ended = json_text.take("]")
                        if not ended and (not json_text.take(",") or json_text.peek() == "]"):
                            return False  # [1 2] or [1,] is not JSON
                elif key == "items" and streamed:
                    return False
                else:
                    members[key] = json_text.value()
                closed = json_text.take("}")
                if not closed and (not json_text.take(",") or json_text.peek() == "}"):
                    return False
            if json_text.peek():
                return False  # more after the object
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    kind = members.get("kind")
    if not streamed or not (isinstance(kind, str) and kind.endswith("List")):
        return False
    for number, item in deferred:
        part.add_object(f"{place}, item {number}", item, kind[: -len("List")])
    collector.absorb(part)
    return True


_DECODER = json.JSONDecoder()


class _Collector:
    """Objects by identity (so duplicates replace), plus what was skipped."""

    def __init__(self) -> None:
        self.namespaces: dict[str, Namespace] = {}
        self.services: dict[tuple[str, str], Service] = {}
        self.endpoint_slices: dict[tuple[str, str], EndpointSlice] = {}
        self.pods: dict[tuple[str, str], Pod] = {}
        self.service_imports: dict[tuple[str, str], ServiceImport] = {}
        self.warnings: list[str] = []
        self.ignored: Counter[str] = Counter()

    def add_document(self, place: str, document: Any) -> None:
        if document is None:
            return
        if not isinstance(document, dict):
            self.warnings.append(f"{place}: expected a mapping, got {describe(document)}")
            return
        kind = document.get("kind")
        if not (isinstance(kind, str) and kind.endswith("List")):
            self.add_object(place, document, "")
            return
        items = document.get("items")
        if items is None:
            return
        if not isinstance(items, list):
            self.warnings.append(f"{place} ({kind}): items: expected a list, got {describe(items)}")
            return
        item_kind = kind[: -len("List")]  # items of a ServiceList may omit kind: Service
        for number, item in enumerate(items, 1):
            # Drop each raw item once converted: at 100k endpoints the raw dicts and the
            # slim objects would otherwise peak together (tens of MB of RSS).
            items[number - 1] = None
            self.add_object(f"{place}, item {number}", item, item_kind)

    def add_object(self, place: str, raw: Any, default_kind: str) -> None:
        self.add_outcome(place, _outcome(raw, default_kind))

    def add_outcome(self, place: str, outcome: _Outcome) -> None:
        """Record what one item came to (see ``_outcome``), found at ``place``."""
        what, value = outcome
        if what == "object":
            self.store(value)
        elif what == "ignored":
            self.ignored[value] += 1
        else:  # a warning; "(" starts the object's identity, else the field
            self.warnings.append(f"{place}{' ' if value.startswith('(') else ': '}{value}")

    def absorb(self, other: _Collector) -> None:
        """Take in what ``other`` collected, as if it had been added here after the rest."""
        self.namespaces.update(other.namespaces)
        self.services.update(other.services)
        self.endpoint_slices.update(other.endpoint_slices)
        self.pods.update(other.pods)
        self.service_imports.update(other.service_imports)
        self.warnings.extend(other.warnings)
        self.ignored.update(other.ignored)

    def store(self, obj: KubeObject) -> None:
        match obj:
            case Namespace():
                self.namespaces[obj.name] = obj
            case Service():
                self.services[obj.namespace, obj.name] = obj
            case EndpointSlice():
                self.endpoint_slices[obj.namespace, obj.name] = obj
            case Pod():
                self.pods[obj.namespace, obj.name] = obj
            case ServiceImport():
                self.service_imports[obj.namespace, obj.name] = obj

    def result(self) -> LoadResult:
        cluster = Cluster(
            namespaces=tuple(self.namespaces.values()),
            services=tuple(self.services.values()),
            endpoint_slices=tuple(self.endpoint_slices.values()),
            pods=tuple(self.pods.values()),
            service_imports=tuple(self.service_imports.values()),
        )
        ignored = MappingProxyType(dict(sorted(self.ignored.items())))
        return LoadResult(cluster, tuple(self.warnings), ignored)


_Outcome = tuple[str, Any]
"""What one raw item comes to: ("object", the slim object), ("ignored", its kind) or
("warning", why it was skipped, without where it was)."""


def _outcome(raw: Any, default_kind: str) -> _Outcome:
    if not isinstance(raw, dict):
        return "warning", f"expected a mapping, got {describe(raw)}"
    kind = raw.get("kind")
    if kind is None or kind == "":
        kind = default_kind
    if not isinstance(kind, str):
        return "warning", f"kind: expected a string, got {describe(kind)}"
    if not kind:
        return "warning", "kind: required"
    if kind not in SUPPORTED_KINDS:
        return "ignored", kind
    try:
        return "object", convert(kind, raw)
    except ConvertError as exc:
        return "warning", f"({_identify(kind, raw)}): {exc}"


def _identify(kind: str, raw: Mapping[str, Any]) -> str:
    """``Service default/web``, ``Namespace prod``, or just the kind when the name is bad."""
    meta = raw.get("metadata")
    if not isinstance(meta, dict):
        return kind
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        return kind
    if kind == "Namespace":
        return f"{kind} {name}"
    namespace = meta.get("namespace")
    if not isinstance(namespace, str) or not namespace:
        namespace = "default"
    return f"{kind} {namespace}/{name}"
