"""An in-process fake Kubernetes API server that speaks the real HTTP protocol.

Why it exists: clusterdns's live source list+watches Services, EndpointSlices, Namespaces,
Pods and (with multicluster zones) the MCS API's ServiceImports with the real
``kubernetes`` client library (sync and ``kubernetes.aio``). Mocking
that library would test our guesses about it; running a real apiserver in CI is heavy. So
this module serves the small subset of the API those clients use -- LIST with
``limit``/``continue`` snapshots, label and field selectors, WATCH with replay from a
resourceVersion, bookmarks, ``timeoutSeconds`` and 410 "Expired" -- over real HTTP(S), and
adds fault controls (dropped or stalled watches, restarts on the same port, compaction,
injected 429/5xx, 403s, token rotation, a restore that winds the resourceVersion back as
an etcd backup does, and a CRD uninstalled so that its resource answers 404) so tests can
drive the failure paths of a real client.

A watch from a resourceVersion the server has not reached (the client's, after a
restore) is answered the ways real API servers do, chosen per restore (``TOO_NEW_MODES``):
a 504 ``ResourceVersionTooLarge`` Status, that Status as a watch ERROR event, or a stream
that never delivers anything at or below the requested version -- with bookmarks carrying
the server's own lower version, or (as the watch cache does) with none at all.

Threading model: :class:`FakeKube` owns one asyncio event loop running in a daemon thread
(created by the first :meth:`FakeKube.start`, ended by :meth:`FakeKube.close`). All server
state lives on that loop. Every public method may be called from any *other* thread --
the test thread, or the event loop of an async test -- and returns once its effect is in
place (an ``apply`` is in the store, the event log and every matching watch queue; an
``end_watches`` has finished every stream). The non-blocking methods (mutations, faults,
``stall_watches``, ``compact``...) also work from the server loop itself and before the
first ``start``; the blocking ones (``start``, ``stop``, ``close``, ``end_watches``,
``drop_watches``, ``wait_for_watches``) raise ``RuntimeError`` if called on the server loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import concurrent.futures
import contextlib
import copy
import datetime
import json
import math
import re
import ssl
import threading
import time
import uuid
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import yaml
from aiohttp import web

T = TypeVar("T")

DEFAULT_USER: Final = "system:serviceaccount:kube-system:clusterdns"
DEFAULT_VERSION: Final[dict[str, str]] = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0-fakekube",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-08-13T00:00:00Z",
    "goVersion": "go1.22.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}
CONTINUE_EXPIRED_MESSAGE: Final = (
    "The provided continue parameter is too old to display a consistent list result. "
    "You can start a new list without the continue parameter, or use the continue token "
    "in this response to retrieve the remainder of the results. Continuing with the "
    "provided token results in an inconsistent list - objects that were created, modified, "
    "or deleted between the time the first chunk was returned and now may show up in the "
    "list."
)
_TRUE_STRINGS: Final = frozenset({"1", "t", "T", "true", "TRUE", "True"})
_FAULT_REASONS: Final[dict[int, tuple[str, str]]] = {
    400: ("BadRequest", "bad request (injected fault)"),
    404: ("NotFound", "the server could not find the requested resource"),
    409: ("Conflict", "conflict (injected fault)"),
    410: ("Expired", "resource expired (injected fault)"),
    429: ("TooManyRequests", "Too many requests, please try again later."),
    500: ("InternalError", "Internal error occurred: injected fault"),
    502: ("BadGateway", "bad gateway (injected fault)"),
    503: ("ServiceUnavailable", "The server is currently unable to handle the request"),
    504: ("Timeout", "The server was unable to return a response in the time allotted"),
}
TOO_LARGE_MESSAGE: Final = "Too large resource version"
# How a watch from a resourceVersion past the server's is answered (see FakeKube.restore).
TOO_NEW_MODES: Final = ("status", "error-event", "bookmarks", "silent")
_WRITE_BATCH: Final = 256  # watch events per socket write
_STARTED: Final = web.RequestKey("fakekube_started", float)
_LOGGED: Final = web.RequestKey("fakekube_logged", bool)


# --------------------------------------------------------------------------- resources


@dataclass(frozen=True, slots=True)
class Resource:
    """One served resource type: its kind, API group/version, plural and scope."""

    kind: str
    group: str  # "" for the core group
    version: str
    plural: str
    namespaced: bool
    field_labels: frozenset[str]

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def qualified(self) -> str:
        """``plural.group`` as the apiserver writes it in Forbidden messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


_META_FIELDS: Final = frozenset({"metadata.name", "metadata.namespace"})
RESOURCES: Final[tuple[Resource, ...]] = (
    Resource("Namespace", "", "v1", "namespaces", False, _META_FIELDS | {"status.phase"}),
    Resource("Service", "", "v1", "services", True,
             _META_FIELDS | {"spec.clusterIP", "spec.type"}),
    Resource("Pod", "", "v1", "pods", True, _META_FIELDS | {
        "spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
        "spec.serviceAccountName", "spec.hostNetwork", "status.phase", "status.podIP",
        "status.nominatedNodeName"}),
    Resource("EndpointSlice", "discovery.k8s.io", "v1", "endpointslices", True, _META_FIELDS),
    # KEP-1645's ServiceImport, as the MCS API's CRD defines it (see ``uninstall``).
    Resource("ServiceImport", "multicluster.x-k8s.io", "v1alpha1", "serviceimports", True,
             _META_FIELDS),
)
_BY_KIND: Final = {r.kind: r for r in RESOURCES}
_BY_GROUP_PLURAL: Final = {(r.group, r.plural): r for r in RESOURCES}
_VERSIONS: Final = {r.group: r.version for r in RESOURCES}  # one version per group


_SHORT_NAMES: Final = {"ns": "namespaces", "svc": "services", "po": "pods"}


def resource_for(name: str) -> Resource:
    """Look a resource up by kind (``Service``), plural (``services``), ``plural.group``
    or kubectl short name (``svc``), any case."""
    low = name.lower()
    low = _SHORT_NAMES.get(low, low)
    for res in RESOURCES:
        if low in (res.kind.lower(), res.plural, res.qualified):
            return res
    raise KeyError(f"fakekube does not serve {name!r}")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One HTTP request as the server saw it (appended when its status is known)."""

    time: float  # time.monotonic() when the request arrived
    method: str
    path: str
    query: Mapping[str, str]
    status: int
    watch: bool


def _json_default(value: object) -> str:
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, datetime.date):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=_json_default).encode()


def _now_timestamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Obj:
    """A stored object version. ``data`` has no kind/apiVersion and is never mutated."""

    __slots__ = ("_item", "data", "name", "namespace", "res", "rv")

    def __init__(self, res: Resource, namespace: str, name: str,
                 data: dict[str, Any], rv: int) -> None:
        self.res = res
        self.namespace = namespace
        self.name = name
        self.data = data
        self.rv = rv
        self._item: bytes | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def item_json(self) -> bytes:
        """The object as a list item (no kind/apiVersion, like the real server)."""
        if self._item is None:
            self._item = _dumps(self.data)
        return self._item

    def full_json(self) -> bytes:
        """The object with kind and apiVersion first, as in watch events and GETs."""
        item = self.item_json()
        head = b'{"kind":"%s","apiVersion":"%s"' % (
            self.res.kind.encode(), self.res.api_version.encode())
        return head + b"}" if item == b"{}" else head + b"," + item[1:]

    def labels(self) -> Mapping[str, str]:
        labels = self.data.get("metadata", {}).get("labels")
        return labels if isinstance(labels, dict) else {}

    def restamped(self, rv: int) -> _Obj:
        """The same content carrying another resourceVersion (DELETED events)."""
        data = dict(self.data)
        meta = dict(data.get("metadata") or {})
        meta["resourceVersion"] = str(rv)
        data["metadata"] = meta
        return _Obj(self.res, self.namespace, self.name, data, rv)


@dataclass(frozen=True, slots=True)
class _Event:
    rv: int
    type: str  # ADDED / MODIFIED / DELETED
    obj: _Obj
    prev: _Obj | None  # the version before a MODIFIED or DELETED


# --------------------------------------------------------------------------- selectors


class SelectorError(ValueError):
    """A label or field selector the real apiserver would reject with 400."""


_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
_SET_TERM = re.compile(r"^(\S+)\s+(in|notin)\s*\((.*)\)$")


@dataclass(frozen=True, slots=True)
class _LabelReq:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values  # "!=", "notin"


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _check_key(key: str) -> str:
    if not _LABEL_KEY.match(key):
        raise SelectorError(f"unable to parse requirement: invalid label key {key!r}")
    return key


def _check_value(value: str) -> str:
    if not _LABEL_VALUE.match(value):
        raise SelectorError(f"unable to parse requirement: invalid label value {value!r}")
    return value


def parse_label_selector(text: str) -> tuple[_LabelReq, ...]:
    """Parse ``a=b,c!=d,e,!f,g in (x,y),h notin (z)`` into requirements (AND)."""
    reqs: list[_LabelReq] = []
    if not text.strip():
        return ()
    for raw in _split_top_level(text):
        term = raw.strip()
        if not term:
            raise SelectorError("found ',', expected: identifier")
        m = _SET_TERM.match(term)
        if m:
            values = frozenset(_check_value(v.strip()) for v in m.group(3).split(","))
            reqs.append(_LabelReq(_check_key(m.group(1)), m.group(2), values))
        elif term.startswith("!"):
            reqs.append(_LabelReq(_check_key(term[1:].strip()), "!", frozenset()))
        elif "!=" in term:
            key, value = term.split("!=", 1)
            reqs.append(_LabelReq(_check_key(key.strip()), "!=",
                                  frozenset({_check_value(value.strip())})))
        elif "=" in term:
            key, value = term.split("==", 1) if "==" in term else term.split("=", 1)
            reqs.append(_LabelReq(_check_key(key.strip()), "=",
                                  frozenset({_check_value(value.strip())})))
        else:
            reqs.append(_LabelReq(_check_key(term), "exists", frozenset()))
    return tuple(reqs)


def _field_value(data: Mapping[str, Any], path: str) -> str:
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return ""
        node = node.get(part)
    if node is None:
        return ""
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


def parse_field_selector(text: str, res: Resource) -> tuple[tuple[str, bool, str], ...]:
    """Parse ``metadata.name=x,metadata.namespace!=y`` into (field, equal, value) terms."""
    terms: list[tuple[str, bool, str]] = []
    if not text.strip():
        return ()
    for raw in text.split(","):
        term = raw.strip()
        if "!=" in term:
            field, value = term.split("!=", 1)
            equal = False
        elif "==" in term:
            field, value = term.split("==", 1)
            equal = True
        elif "=" in term:
            field, value = term.split("=", 1)
            equal = True
        else:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{term}'")
        field = field.strip()
        if field not in res.field_labels:
            raise SelectorError(f'field label not supported: {field}')
        terms.append((field, equal, value.strip()))
    return tuple(terms)


@dataclass(frozen=True, slots=True)
class _Filter:
    """Path namespace plus label and field selectors: what one LIST or WATCH sees."""

    namespace: str | None
    labels: tuple[_LabelReq, ...]
    fields: tuple[tuple[str, bool, str], ...]

    def matches(self, obj: _Obj) -> bool:
        if self.namespace is not None and obj.namespace != self.namespace:
            return False
        if self.labels:
            labels = obj.labels()
            if not all(req.matches(labels) for req in self.labels):
                return False
        for field, equal, value in self.fields:
            if (_field_value(obj.data, field) == value) != equal:
                return False
        return True

    def translate(self, ev: _Event) -> tuple[str, _Obj] | None:
        """The event this watcher sees, or None (selector transitions become ADD/DELETE)."""
        now = self.matches(ev.obj)
        if ev.type != "MODIFIED" or ev.prev is None:
            return (ev.type, ev.obj) if now else None
        before = self.matches(ev.prev)
        if now and before:
            return ("MODIFIED", ev.obj)
        if now:
            return ("ADDED", ev.obj)
        if before:  # left the selection: the previous content, at the event's RV
            return ("DELETED", ev.prev.restamped(ev.rv))
        return None


# --------------------------------------------------------------------------- helpers


def status_body(code: int, reason: str, message: str,
                details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A ``meta/v1 Status`` failure object."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "message": message, "reason": reason}
    if details is not None:
        body["details"] = dict(details)
    body["code"] = code
    return body


def too_large_status(requested: int, current: int) -> dict[str, Any]:
    """The 504 Status a kube-apiserver answers for a resourceVersion it has not reached
    (``NewTooLargeResourceVersionError``): reason Timeout, a ``ResourceVersionTooLarge``
    cause and ``retryAfterSeconds`` 1."""
    return status_body(504, "Timeout", f"{TOO_LARGE_MESSAGE}: {requested}, current: {current}",
                       {"causes": [{"reason": "ResourceVersionTooLarge",
                                    "message": TOO_LARGE_MESSAGE}],
                        "retryAfterSeconds": 1})


def _status_response(code: int, reason: str, message: str,
                     details: Mapping[str, Any] | None = None,
                     headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=code, body=_dumps(status_body(code, reason, message, details)),
                        content_type="application/json", headers=headers)


def _json_response(value: object) -> web.Response:
    return web.Response(body=_dumps(value), content_type="application/json")


def _parse_bool(value: str | None) -> bool:
    return value is not None and value in _TRUE_STRINGS


def _encode_token(payload: Mapping[str, Any]) -> str:
    return base64.urlsafe_b64encode(_dumps(payload)).decode().rstrip("=")


def _decode_token(token: str) -> dict[str, Any] | None:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw)
    except (ValueError, binascii.Error):
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("id"), str) \
            or not isinstance(payload.get("start"), int):
        return None
    return payload


def iter_yaml_objects(path: str | Path) -> Iterator[dict[str, Any]]:
    """Every object in a YAML file: multi-document, ``kind: List`` dumps, or both."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as fh:
        for doc in yaml.load_all(fh, Loader=loader):
            if not isinstance(doc, dict):
                continue
            if isinstance(doc.get("items"), list) and str(doc.get("kind", "")).endswith("List"):
                yield from (item for item in doc["items"] if isinstance(item, dict))
            else:
                yield doc


@dataclass
class _Fault:
    remaining: int
    status: int
    retry_after: int | float | None
    path_contains: str | None


@dataclass(frozen=True, slots=True)
class _Snapshot:
    rv: int
    kind: str
    namespace: str | None
    items: tuple[_Obj, ...]
    counted: bool  # no label/field selector: remainingItemCount is known


class _Watcher:
    """One open watch stream: what it selects and the events queued for it."""

    def __init__(self, res: Resource, flt: _Filter, request: web.BaseRequest,
                 after: int) -> None:
        self.res = res
        self.flt = flt
        self.request = request
        self.after = after  # the requested resourceVersion: only later events are sent
        self.pending: deque[tuple[str, _Obj]] = deque()
        self.wake = asyncio.Event()
        self.done = asyncio.Event()
        self.closing = False
        self.dropped = False


# --------------------------------------------------------------------------- the server


class FakeKube:
    """A fake kube-apiserver on 127.0.0.1 for Namespaces, Services, Pods, EndpointSlices
    and ServiceImports.

    ``port=0`` picks a free port on the first :meth:`start`; later restarts reuse it.
    ``ssl_context`` (a server-side context, e.g. from ``trustme``) serves HTTPS.
    ``token``, when set, must arrive as ``Authorization: Bearer <token>`` (else 401).
    ``bookmark_interval`` is the seconds between BOOKMARK events on watches that asked
    for them. ``user`` appears in 403 messages. See the module docstring for threading.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0,
                 ssl_context: ssl.SSLContext | None = None, token: str | None = None,
                 bookmark_interval: float = 1.0, user: str = DEFAULT_USER,
                 max_snapshots: int = 256, call_timeout: float = 10.0) -> None:
        self.host = host
        self._port = port
        self.ssl_context = ssl_context
        self._token = token
        self.bookmark_interval = bookmark_interval
        self.user = user
        self._max_snapshots = max_snapshots
        self._call_timeout = call_timeout

        self._store: dict[str, dict[tuple[str, str], _Obj]] = {r.kind: {} for r in RESOURCES}
        self._rv = 0
        self._log: list[_Event] = []
        self._compacted_rv = 0
        self._too_new = "status"  # how a watch from a resourceVersion past ours is answered
        self._snapshots: OrderedDict[str, _Snapshot] = OrderedDict()
        self._snapshot_seq = 0
        self._watchers: set[_Watcher] = set()
        self._stalled = False
        self._forbidden: set[str] = set()
        self._uninstalled: set[str] = set()  # plurals whose CRD is not installed
        self._faults: list[_Fault] = []
        self._requests: list[RequestRecord] = []

        self._lifecycle = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._transports: weakref.WeakSet[asyncio.Transport] = weakref.WeakSet()

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        """The bound port (0 until the first start when constructed with port=0)."""
        return self._port

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self._port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    def start(self) -> FakeKube:
        """Listen (again) on the same host and port; state and RV counter are kept."""
        with self._lifecycle:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=run, name="fakekube", daemon=True)
                thread.start()
                ready.wait(timeout=self._call_timeout)
                self._loop, self._thread = loop, thread
            self._run_async(self._start_site)
        return self

    def stop(self) -> None:
        """Stop listening and abort every connection, like an apiserver going down."""
        with self._lifecycle:
            if self._loop is not None:
                self._run_async(self._stop_site)

    def close(self) -> None:
        """Stop, then end the server's event loop thread (a later start() makes a new one)."""
        self.stop()
        with self._lifecycle:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None:
                return
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=self._call_timeout)
            loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _start_site(self) -> None:
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                               shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._port, ssl_context=self.ssl_context,
                           reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        if self._port == 0:
            self._port = int(runner.addresses[0][1])
        self._runner = runner

    async def _stop_site(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        await self._drop_watches()
        await runner.cleanup()
        # A TLS connection closed gracefully waits for the peer's close_notify; abort
        # what is left so nothing outlives the listener (or the loop, on close()).
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()

    # ------------------------------------------------------------------ cross-thread calls

    def _on_loop(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the server loop (or inline when there is none) and return."""
        loop = self._loop
        if loop is None or self._on_loop() or not loop.is_running():
            return fn()
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return fut.result(timeout=self._call_timeout)

    def _run_async(self, fn: Callable[[], Coroutine[Any, Any, T]],
                   timeout: float | None = None) -> T:
        if self._on_loop():
            raise RuntimeError("blocking FakeKube control method called on the server loop")
        loop = self._loop
        if loop is None:
            raise RuntimeError("FakeKube is not started")
        return asyncio.run_coroutine_threadsafe(fn(), loop).result(
            timeout=self._call_timeout if timeout is None else timeout)

    # ------------------------------------------------------------------ state: mutations

    @property
    def resource_version(self) -> str:
        """The current (latest) resourceVersion."""
        return str(self._rv)

    def apply(self, obj: Mapping[str, Any]) -> str:
        """Create or update an object (needs kind, apiVersion, metadata.name). Returns RV.

        The object is deep-copied. Namespaced objects without a namespace go to
        ``default``. uid and creationTimestamp are kept from the previous version or made up.
        """
        owned = copy.deepcopy(dict(obj))
        return self._call(lambda: self._commit([owned])[-1])

    def bulk_load(self, objs: Iterable[Mapping[str, Any]]) -> int:
        """Create or update many objects fast; the caller gives up ownership (no deep copy).

        Each object still gets its own RV and watch event. Returns how many were stored.
        """
        batch = [o if isinstance(o, dict) else dict(o) for o in objs]
        return len(self._call(lambda: self._commit(batch)))

    def load_yaml(self, path: str | Path) -> int:
        """Load a multi-document or ``kind: List`` dump (``kubectl get ... -o yaml``).

        Objects of kinds this server doesn't serve are skipped. Returns how many were stored.
        """
        objs = [o for o in iter_yaml_objects(path) if o.get("kind") in _BY_KIND]
        return self.bulk_load(objs)

    def delete(self, kind: str, namespace: str | None, name: str) -> str:
        """Delete an object (``KeyError`` if absent); returns the DELETED event's RV."""
        res = resource_for(kind)
        ns = (namespace or "default") if res.namespaced else ""

        def run() -> str:
            store = self._store[res.kind]
            prev = store.pop((ns, name), None)
            if prev is None:
                raise KeyError(f"{res.plural} {ns}/{name} not found")
            self._rv += 1
            self._publish([_Event(self._rv, "DELETED", prev.restamped(self._rv), prev)])
            return str(self._rv)

        return self._call(run)

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """A deep copy of the stored object (with kind and apiVersion), or None."""
        res = resource_for(kind)
        ns = (namespace or "default") if res.namespaced else ""
        found = self._call(lambda: self._store[res.kind].get((ns, name)))
        if found is None:
            return None
        out: dict[str, Any] = json.loads(found.full_json())
        return out

    def _commit(self, objs: list[dict[str, Any]]) -> list[str]:
        events: list[_Event] = []
        rvs: list[str] = []
        now = _now_timestamp()
        for raw in objs:
            res = _BY_KIND.get(str(raw.get("kind", "")))
            if res is None:
                raise ValueError(f"fakekube does not serve kind {raw.get('kind')!r}")
            if raw.get("apiVersion", res.api_version) != res.api_version:
                raise ValueError(f"{res.kind} must have apiVersion {res.api_version}, "
                                 f"not {raw.get('apiVersion')!r}")
            meta = dict(raw.get("metadata") or {})
            name = meta.get("name")
            if not isinstance(name, str) or not name:
                raise ValueError(f"{res.kind} without metadata.name")
            if res.namespaced:
                ns = str(meta.get("namespace") or "default")
                meta["namespace"] = ns
            else:
                ns = ""
                meta.pop("namespace", None)
            store = self._store[res.kind]
            prev = store.get((ns, name))
            self._rv += 1
            meta["resourceVersion"] = str(self._rv)
            prev_meta = prev.data.get("metadata", {}) if prev is not None else {}
            meta.setdefault("uid", prev_meta.get("uid") or str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", prev_meta.get("creationTimestamp") or now)
            data = {k: v for k, v in raw.items() if k not in ("kind", "apiVersion")}
            data["metadata"] = meta
            new = _Obj(res, ns, name, data, self._rv)
            store[(ns, name)] = new
            events.append(_Event(self._rv, "ADDED" if prev is None else "MODIFIED", new, prev))
            rvs.append(str(self._rv))
        self._publish(events)
        return rvs

    def _publish(self, events: list[_Event]) -> None:
        """Append to the event log and to every matching watcher's queue, then wake them."""
        self._log.extend(events)
        woken: set[_Watcher] = set()
        for w in self._watchers:
            for ev in events:
                if ev.obj.res is not w.res or ev.rv <= w.after:
                    continue
                seen = w.flt.translate(ev)
                if seen is not None:
                    w.pending.append(seen)
                    woken.add(w)
        for w in woken:
            w.wake.set()

    def compact(self) -> str:
        """Forget the event log up to now and every continue snapshot taken so far.

        Watches from an older RV then get a 410 ERROR event; continue tokens issued before
        answer 410 Expired. A watch from the current RV (e.g. after a fresh list) is fine.
        Returns the compaction RV.
        """
        def run() -> str:
            self._log.clear()
            self._compacted_rv = self._rv
            self._snapshots.clear()
            return str(self._rv)

        return self._call(run)

    def restore(self, resource_version: str | int, too_new: str = "status") -> str:
        """Wind the server back to ``resource_version``, as restoring etcd from a backup
        does: every change after it is undone (from the event log, so not past the last
        compaction), the resourceVersion counter goes back to it, continue tokens are
        forgotten and every open watch is dropped (the API server restarts on a restore;
        the port stays). Returns the new, lower, resourceVersion.

        From then on a watch from a resourceVersion past the server's is answered as
        ``too_new`` says (one of ``TOO_NEW_MODES``): ``"status"`` an HTTP 504 Status with a
        ``ResourceVersionTooLarge`` cause and ``Retry-After: 1``; ``"error-event"`` that
        Status as the ERROR event of a 200 stream; ``"bookmarks"`` a stream that delivers
        nothing at or below the requested version but bookmarks carrying the server's own
        (lower) one; ``"silent"`` the same without those bookmarks, as the apiserver's watch
        cache does. Events past the requested version are delivered in every mode.
        """
        if too_new not in TOO_NEW_MODES:
            raise ValueError(f"too_new must be one of {', '.join(TOO_NEW_MODES)}")
        target = int(resource_version)

        def rewind() -> str:
            if not self._compacted_rv <= target <= self._rv:
                raise ValueError(f"cannot restore to resourceVersion {target}: the history "
                                 f"kept runs from {self._compacted_rv} to {self._rv}")
            first = bisect.bisect_right(self._log, target, key=lambda e: e.rv)
            for ev in reversed(self._log[first:]):
                store = self._store[ev.obj.res.kind]
                if ev.prev is None:
                    store.pop(ev.obj.key, None)
                else:
                    store[ev.prev.key] = ev.prev
            del self._log[first:]
            self._rv = target
            self._snapshots.clear()
            self._too_new = too_new
            return str(target)

        if self._loop is None:
            return rewind()

        async def restore() -> str:
            # Rewind and abort the watches with no await in between: no stream sees the
            # old history's end or a bookmark of the new one before it breaks.
            rv = rewind()
            await self._drop_watches()
            return rv

        return self._run_async(restore)

    # ------------------------------------------------------------------ faults and auth

    @property
    def token(self) -> str | None:
        return self._token

    @token.setter
    def token(self, value: str | None) -> None:
        self.set_token(value)

    def set_token(self, token: str | None) -> None:
        """Require a different bearer token from now on (None: no auth)."""
        def run() -> None:
            self._token = token
        self._call(run)

    def fail_next(self, n: int, status: int, retry_after: float | None = None,
                  path_contains: str | None = None) -> None:
        """Answer the next ``n`` requests whose path+query contains ``path_contains``
        (any request when None) with ``status`` and a Status body, plus a
        ``Retry-After`` header when given. Checked after auth, before routing."""
        if n <= 0:
            return
        fault = _Fault(n, status, retry_after, path_contains)
        self._call(lambda: self._faults.append(fault))

    def clear_faults(self) -> None:
        self._call(self._faults.clear)

    def forbid(self, resource: str) -> None:
        """Answer 403 Forbidden to every request for ``resource`` (plural or kind)."""
        plural = resource_for(resource).plural
        self._call(lambda: self._forbidden.add(plural))

    def allow(self, resource: str) -> None:
        plural = resource_for(resource).plural
        self._call(lambda: self._forbidden.discard(plural))

    def uninstall(self, resource: str) -> None:
        """Serve ``resource`` as if its CRD were not installed: every request for it (and
        its group's discovery document, when the group has nothing else) answers 404
        ``404 page not found`` in plain text, as kube-apiserver does for a group it does
        not know; the objects stay stored (a later ``install`` serves them again).
        Open watches on it end."""
        plural = resource_for(resource).plural

        def run() -> None:
            self._uninstalled.add(plural)
            for w in self._watchers:
                if w.res.plural == plural:
                    w.closing = True
                    w.wake.set()
        self._call(run)

    def install(self, resource: str) -> None:
        """Serve ``resource`` again after ``uninstall``."""
        plural = resource_for(resource).plural
        self._call(lambda: self._uninstalled.discard(plural))

    # ------------------------------------------------------------------ watch controls

    @property
    def watch_count(self) -> int:
        """How many watch streams are open right now."""
        return len(self._watchers)

    def watch_peers(self) -> list[tuple[str, int]]:
        """The client address (host, port) of every open watch stream's connection."""
        def run() -> list[tuple[str, int]]:
            peers = []
            for w in self._watchers:
                transport = w.request.transport
                peer = transport.get_extra_info("peername") if transport is not None else None
                if peer is not None:
                    peers.append((str(peer[0]), int(peer[1])))
            return peers
        return self._call(run)

    def wait_for_watches(self, n: int, timeout: float = 5.0) -> None:
        """Block until at least ``n`` watch streams are open (``TimeoutError`` if not)."""
        if self._on_loop():
            raise RuntimeError("wait_for_watches called on the server loop")
        deadline = time.monotonic() + timeout
        while len(self._watchers) < n:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{len(self._watchers)} watches open, wanted {n}")
            time.sleep(0.01)

    def end_watches(self) -> None:
        """End every open watch stream cleanly (final chunk); returns when all ended."""
        if self._loop is not None:
            self._run_async(self._end_watches)

    def drop_watches(self) -> None:
        """Abort the TCP connection of every open watch (the client sees a broken read)."""
        if self._loop is not None:
            self._run_async(self._drop_watches)

    def stall_watches(self, on: bool) -> None:
        """While on, watch streams (also new ones) send nothing, not even bookmarks or
        their end at ``timeoutSeconds``; queued events flow again when turned off."""
        def run() -> None:
            self._stalled = on
            for w in self._watchers:
                w.wake.set()
        self._call(run)

    async def _end_watches(self) -> None:
        watchers = list(self._watchers)
        for w in watchers:
            w.closing = True
            w.wake.set()
        await self._wait_done(watchers)

    async def _drop_watches(self) -> None:
        watchers = list(self._watchers)
        for w in watchers:
            w.closing = w.dropped = True
            transport = w.request.transport
            if transport is not None:
                transport.abort()
            w.wake.set()
        await self._wait_done(watchers)

    async def _wait_done(self, watchers: list[_Watcher]) -> None:
        if watchers:
            await asyncio.wait([asyncio.ensure_future(w.done.wait()) for w in watchers],
                               timeout=self._call_timeout)

    # ------------------------------------------------------------------ request log

    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of the request log, oldest first."""
        return list(self._requests)

    def clear_log(self) -> None:
        self._call(self._requests.clear)

    def _record(self, request: web.BaseRequest, status: int, watch: bool) -> None:
        if request.get(_LOGGED):
            return
        request[_LOGGED] = True
        started = float(request.get(_STARTED, time.monotonic()))
        self._requests.append(RequestRecord(started, request.method, request.path,
                                            dict(request.query), status, watch))

    # ------------------------------------------------------------------ kubeconfig

    def write_kubeconfig(self, path: str | Path, context: str = "fake",
                         token: str | None = None, ca_path: str | Path | None = None,
                         namespace: str = "default") -> Path:
        """Write a kubeconfig for this server and return its path.

        ``token=None`` writes the server's current token (if any); ``""`` writes none.
        With TLS and no ``ca_path`` the cluster is marked ``insecure-skip-tls-verify``.
        """
        if self._port == 0:
            raise RuntimeError("start the server before writing a kubeconfig")
        cluster: dict[str, Any] = {"server": self.url}
        if self.ssl_context is not None:
            if ca_path is not None:
                cluster["certificate-authority"] = str(Path(ca_path).resolve())
            else:
                cluster["insecure-skip-tls-verify"] = True
        user: dict[str, Any] = {}
        chosen = self._token if token is None else token
        if chosen:
            user["token"] = chosen
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": cluster}],
            "users": [{"name": context, "user": user}],
            "contexts": [{"name": context, "context": {
                "cluster": context, "user": context, "namespace": namespace}}],
            "current-context": context,
            "preferences": {},
        }
        out = Path(path)
        out.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        return out

    # ------------------------------------------------------------------ HTTP

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        request[_STARTED] = time.monotonic()
        if request.transport is not None:
            self._transports.add(request.transport)
        is_watch = _parse_bool(request.query.get("watch"))
        resp = await self._dispatch(request, is_watch)
        self._record(request, resp.status, is_watch)
        return resp

    async def _dispatch(self, request: web.Request, is_watch: bool) -> web.StreamResponse:
        if self._token is not None:
            # The scheme is case-insensitive (RFC 7235); the in-cluster loader sends "bearer".
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or given != self._token:
                return _status_response(401, "Unauthorized", "Unauthorized")
        fault = self._take_fault(request.path_qs)
        if fault is not None:
            return self._fault_response(fault)

        path = request.path.rstrip("/") or "/"
        static = self._static(path)
        if static is not None:
            return static
        parsed = self._parse_resource_path(path)
        if parsed is None:
            return _status_response(404, "NotFound",
                                    "the server could not find the requested resource", {})
        res, namespace, name = parsed
        if res.plural in self._uninstalled:
            return web.Response(status=404, text="404 page not found\n",
                                content_type="text/plain")
        if request.method != "GET":
            return _status_response(405, "MethodNotAllowed",
                                    "the server does not allow this method on the requested "
                                    "resource (fakekube is read-only over HTTP; use "
                                    "FakeKube.apply)", {})
        verb = "get" if name is not None else ("watch" if is_watch else "list")
        if res.plural in self._forbidden:
            return self._forbidden_response(res, verb, namespace, name)
        if name is not None:
            return self._get(res, namespace, name)
        try:
            flt = _Filter(namespace,
                          parse_label_selector(request.query.get("labelSelector", "")),
                          parse_field_selector(request.query.get("fieldSelector", ""), res))
        except SelectorError as exc:
            return _status_response(400, "BadRequest", str(exc))
        if is_watch:
            return await self._watch(request, res, flt)
        return self._list(request, res, flt)

    def _take_fault(self, path_qs: str) -> _Fault | None:
        for fault in self._faults:
            if fault.path_contains is None or fault.path_contains in path_qs:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    @staticmethod
    def _fault_response(fault: _Fault) -> web.Response:
        reason, message = _FAULT_REASONS.get(fault.status, ("InternalError",
                                                            "injected fault"))
        headers: dict[str, str] = {}
        details: dict[str, Any] | None = None
        if fault.retry_after is not None:
            seconds = fault.retry_after
            text = str(int(seconds)) if float(seconds).is_integer() else str(seconds)
            headers["Retry-After"] = text
            details = {"retryAfterSeconds": max(1, math.ceil(seconds))}
        return _status_response(fault.status, reason, message, details, headers)

    def _forbidden_response(self, res: Resource, verb: str, namespace: str | None,
                            name: str | None) -> web.Response:
        scope = (f'in the namespace "{namespace}"' if namespace is not None
                 else "at the cluster scope")
        what = f'{res.qualified} "{name}"' if name is not None else res.qualified
        message = (f'{what} is forbidden: User "{self.user}" cannot {verb} resource '
                   f'"{res.plural}" in API group "{res.group}" {scope}')
        details: dict[str, Any] = {"kind": res.plural}
        if res.group:
            details["group"] = res.group
        if name is not None:
            details["name"] = name
        return _status_response(403, "Forbidden", message, details)

    def _static(self, path: str) -> web.StreamResponse | None:
        if path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok", content_type="text/plain")
        if path == "/version":
            return _json_response(DEFAULT_VERSION)
        if path == "/api":
            return _json_response({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self._port}"}],
            })
        groups = sorted({r.group for r in RESOURCES
                         if r.group and r.plural not in self._uninstalled})
        if path == "/apis":
            return _json_response({"kind": "APIGroupList", "apiVersion": "v1",
                                   "groups": [self._group_doc(g) for g in groups]})
        if path.startswith("/apis/") and path.count("/") == 2 and path[6:] in groups:
            return _json_response({"kind": "APIGroup", "apiVersion": "v1",
                                   **self._group_doc(path[6:])})
        for group_version in {"v1"} | {f"{g}/{_VERSIONS[g]}" for g in groups}:
            prefix = "/api/" if group_version == "v1" else "/apis/"
            if path == prefix + group_version:
                return _json_response(self._resource_list_doc(group_version,
                                                              self._uninstalled))
        return None

    @staticmethod
    def _group_doc(group: str) -> dict[str, Any]:
        version = _VERSIONS[group]
        gv = {"groupVersion": f"{group}/{version}", "version": version}
        return {"name": group, "versions": [gv], "preferredVersion": gv}

    @staticmethod
    def _resource_list_doc(group_version: str,
                           uninstalled: set[str] | frozenset[str] = frozenset()
                           ) -> dict[str, Any]:
        # kubectl finds ``svc`` through shortNames and ``get all`` through categories.
        resources = [{
            "name": r.plural, "singularName": r.kind.lower(), "namespaced": r.namespaced,
            "kind": r.kind, "verbs": ["get", "list", "watch"],
            **({"shortNames": [short for short, plural in _SHORT_NAMES.items()
                               if plural == r.plural]}
               if r.plural in _SHORT_NAMES.values() else {}),
            **({"categories": ["all"]} if r.kind in ("Service", "Pod") else {}),
        } for r in RESOURCES if r.api_version == group_version and r.plural not in uninstalled]
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": group_version, "resources": resources}

    @staticmethod
    def _parse_resource_path(path: str) -> tuple[Resource, str | None, str | None] | None:
        segs = path.strip("/").split("/")
        if segs[:2] == ["api", "v1"]:
            group, rest = "", segs[2:]
        elif len(segs) >= 3 and segs[0] == "apis" and segs[2] == _VERSIONS.get(segs[1]):
            group, rest = segs[1], segs[3:]
        else:
            return None
        if not rest or "" in rest:
            return None
        if rest[0] == "namespaces" and len(rest) in (3, 4):
            res = _BY_GROUP_PLURAL.get((group, rest[2]))
            if res is None or not res.namespaced:
                return None
            return res, rest[1], rest[3] if len(rest) == 4 else None
        if len(rest) in (1, 2):
            res = _BY_GROUP_PLURAL.get((group, rest[0]))
            if res is None or (len(rest) == 2 and res.namespaced):
                return None
            return res, None, rest[1] if len(rest) == 2 else None
        return None

    def _get(self, res: Resource, namespace: str | None, name: str) -> web.Response:
        found = self._store[res.kind].get((namespace or "", name))
        if found is None:
            return _status_response(404, "NotFound", f'{res.qualified} "{name}" not found',
                                    {"name": name, "kind": res.plural,
                                     **({"group": res.group} if res.group else {})})
        return web.Response(body=found.full_json(), content_type="application/json")

    def _select(self, res: Resource, flt: _Filter) -> list[_Obj]:
        objs: Iterable[_Obj] = self._store[res.kind].values()
        if flt.namespace is not None or flt.labels or flt.fields:
            objs = [o for o in objs if flt.matches(o)]
        return sorted(objs, key=lambda o: o.key)

    def _list(self, request: web.Request, res: Resource, flt: _Filter) -> web.Response:
        query = request.query
        try:
            limit = int(query.get("limit") or 0)
            if limit < 0:
                raise ValueError
        except ValueError:
            return _status_response(400, "BadRequest",
                                    f"invalid limit: {query.get('limit')!r}")
        token = query.get("continue")
        snap_id: str | None = None
        if token:
            payload = _decode_token(token)
            if payload is None:
                return _status_response(400, "BadRequest",
                                        "continue key is not valid: illegal base64 data")
            snapshot = self._snapshots.get(payload["id"])
            if snapshot is None:
                return _status_response(410, "Expired", CONTINUE_EXPIRED_MESSAGE)
            if snapshot.kind != res.kind or snapshot.namespace != flt.namespace:
                return _status_response(400, "BadRequest",
                                        "continue key is not valid: it belongs to another "
                                        "resource or namespace")
            self._snapshots.move_to_end(payload["id"])
            snap_id, rv, items, start = payload["id"], snapshot.rv, snapshot.items, \
                int(payload["start"])
            counted = snapshot.counted
        else:
            rv, items, start = self._rv, tuple(self._select(res, flt)), 0
            counted = not (flt.labels or flt.fields)
        end = start + limit if limit else len(items)
        page = items[start:end]
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if end < len(items):
            if snap_id is None:
                snap_id = self._new_snapshot(
                    _Snapshot(rv, res.kind, flt.namespace, items, counted))
            meta["continue"] = _encode_token({"v": "fakekube/v1", "rv": rv, "id": snap_id,
                                              "start": end})
            if counted:  # like the real server: unknown (omitted) under selectors
                meta["remainingItemCount"] = len(items) - end
        body = b'{"kind":"%s","apiVersion":"%s","metadata":%s,"items":[%s]}' % (
            res.list_kind.encode(), res.api_version.encode(), _dumps(meta),
            b",".join(o.item_json() for o in page))
        return web.Response(body=body, content_type="application/json")

    def _new_snapshot(self, snapshot: _Snapshot) -> str:
        self._snapshot_seq += 1
        snap_id = f"s{self._snapshot_seq}"
        self._snapshots[snap_id] = snapshot
        while len(self._snapshots) > self._max_snapshots:
            self._snapshots.popitem(last=False)
        return snap_id

    @staticmethod
    def _event_line(type_: str, obj: _Obj) -> bytes:
        return b'{"type":"%s","object":%s}\n' % (type_.encode(), obj.full_json())

    async def _watch(self, request: web.Request, res: Resource,
                     flt: _Filter) -> web.StreamResponse:
        query = request.query
        rv_text = query.get("resourceVersion", "")
        try:
            rv = int(rv_text) if rv_text else 0
            timeout = int(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        except ValueError:
            return _status_response(400, "BadRequest",
                                    "resourceVersion and timeoutSeconds must be integers")
        bookmarks = _parse_bool(query.get("allowWatchBookmarks"))

        # Register and queue the replay with no await in between: no event can slip
        # between the replayed history and the live feed.
        watcher = _Watcher(res, flt, request, rv)
        expired: bytes | None = None  # an ERROR event ending the stream at once
        if rv == 0:
            watcher.pending.extend(("ADDED", o) for o in self._select(res, flt))
        elif rv < self._compacted_rv:
            expired = b'{"type":"ERROR","object":%s}\n' % _dumps(status_body(
                410, "Expired", f"too old resource version: {rv} ({self._compacted_rv})"))
        elif rv > self._rv and self._too_new == "status":
            status = too_large_status(rv, self._rv)
            return web.Response(status=504, body=_dumps(status), content_type="application/json",
                                headers={"Retry-After": "1"})
        elif rv > self._rv and self._too_new == "error-event":
            expired = b'{"type":"ERROR","object":%s}\n' % _dumps(too_large_status(rv, self._rv))
        else:
            first = bisect.bisect_right(self._log, rv, key=lambda e: e.rv)
            for ev in self._log[first:]:
                if ev.obj.res is res:
                    seen = flt.translate(ev)
                    if seen is not None:
                        watcher.pending.append(seen)
        if expired is None:
            self._watchers.add(watcher)

        resp = web.StreamResponse(status=200, headers={
            "Content-Type": "application/json", "Cache-Control": "no-cache, private"})
        resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)
            self._record(request, 200, True)
            if expired is not None:
                await resp.write(expired)
                await resp.write_eof()
                return resp
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout if timeout else None
            dropped = await self._pump(watcher, resp, deadline, bookmarks)
            self._watchers.discard(watcher)  # closed as far as watch_count is concerned
            if not dropped:
                await resp.write_eof()
        except ConnectionError:
            pass  # the connection went away (client closed it or drop_watches)
        finally:
            self._watchers.discard(watcher)
            watcher.done.set()
        return resp

    async def _pump(self, w: _Watcher, resp: web.StreamResponse, deadline: float | None,
                    bookmarks: bool) -> bool:
        """Write events, bookmarks; return at the deadline or on a control (True: dropped)."""
        loop = asyncio.get_running_loop()
        interval = self.bookmark_interval
        next_bookmark = loop.time() + interval if bookmarks else math.inf
        while not w.closing:
            now = loop.time()
            if not self._stalled:
                if w.pending:
                    batch = [w.pending.popleft()
                             for _ in range(min(_WRITE_BATCH, len(w.pending)))]
                    await resp.write(b"".join(self._event_line(t, o) for t, o in batch))
                    continue
                if deadline is not None and now >= deadline:
                    break
                silent = self._too_new == "silent" and self._rv < w.after
                if now >= next_bookmark and silent:
                    next_bookmark = now + interval  # the watch cache sends none below w.after
                elif now >= next_bookmark:
                    # Everything up to the current RV is already written (queue empty).
                    line = b'{"type":"BOOKMARK","object":%s}\n' % _dumps({
                        "kind": w.res.kind, "apiVersion": w.res.api_version,
                        "metadata": {"resourceVersion": str(self._rv)}})
                    next_bookmark = now + interval
                    await resp.write(line)
                    continue
            w.wake.clear()
            wait: float | None = None
            if not self._stalled:
                wait = min(next_bookmark, deadline if deadline is not None else math.inf) - now
                wait = None if math.isinf(wait) else max(wait, 0.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(w.wake.wait(), wait)
        return w.dropped
