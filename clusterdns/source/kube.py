"""The live source: list+watch the Kubernetes API server, never lie, never give up.

The only module that imports ``kubernetes``. One reflector per watched kind (and per
namespace with ``namespaces``) runs the client-go loop in asyncio with raw JSON (no
model deserialisation): a paginated list that replaces the kind's objects atomically,
then watches from the list's resourceVersion with bookmarks and a jittered
``timeoutSeconds``. A clean end re-watches from the last resourceVersion without a
relist; 410 Gone relists; other failures back off exponentially with jitter (capped at
about a second for the first minute of an outage, so DNS catches up within two seconds
of the API server coming back, and at five seconds for a kind that has not listed yet,
so a granted RBAC rule makes the server ready within seconds), honouring
``Retry-After``; 403 is logged once with the RBAC rule that is missing. An outage is
told in the log when it begins, every ``outage_report`` seconds while it lasts, and when
it ends (``Outage``). A kubeconfig that cannot be used is one line naming the file and
the problem (``check_kubeconfig``), never the client library's traceback.

Silence is noticed: a watch asks to be ended well within ``watch_silence`` (60 s), so
one that brings nothing for that long (no event, no bookmark, no end) is stuck and is
re-watched; TCP keepalive on its connection fails the read of a vanished peer in about
30 s. History going backwards (etcd restored from a backup, a new cluster at the same
address) relists: a 504 ``ResourceVersionTooLarge``, or a list, event or bookmark lower
than the last resourceVersion seen, or -- after a watch that brought nothing, which is
all a watch cache says below its version -- a one-item list showing the API server
below ours. An object modified into a malformed one keeps its last good version, on a
relist as on the watch, until a good version or its deletion. A resource a CRD defines
(the MCS API's ServiceImport, watched only with multicluster zones) that the API server
does not have (404) counts as listed with no objects: one warning, and it is asked for
again every ``absent_retry`` seconds while everything else is served.

Until every reflector has listed once, ``changed`` is never called, so the server stays
unsynced (SERVFAIL) rather than answer NXDOMAIN.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from kubernetes.aio import client as kclient
from kubernetes.aio import config as kconfig
from kubernetes.aio.config.incluster_config import InClusterConfigLoader

from clusterdns.config import Config, PodsMode
from clusterdns.convert import ConvertError, convert
from clusterdns.objects import Cluster, KubeObject, Namespace
from clusterdns.source import KubeSourceError
from clusterdns.store import Key, Kind, Store, key_of

log = logging.getLogger(__name__)

TRIGGER_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"
INCLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
INCLUSTER_CA = Path("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")


@dataclass(frozen=True, slots=True)
class Resource:
    kind: Kind
    plural: str
    group: str  # "" for the core group
    version: str = "v1"
    # Defined by a CRD that may not be installed: a 404 means "none of these", not an
    # error (``Reflector.not_installed``).
    optional: bool = False

    def path(self, namespace: str) -> str:
        """The collection's API path, with a ``{namespace}`` parameter when namespaced."""
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        scope = "/namespaces/{namespace}" if namespace else ""
        return f"{prefix}{scope}/{self.plural}"

    def rbac_rule(self) -> str:
        group = f'"{self.group}"' if self.group else '""'
        return (f'apiGroups: [{group}], resources: ["{self.plural}"], '
                f'verbs: ["list", "watch"]')


RESOURCES = {
    Kind.NAMESPACE: Resource(Kind.NAMESPACE, "namespaces", ""),
    Kind.SERVICE: Resource(Kind.SERVICE, "services", ""),
    Kind.ENDPOINT_SLICE: Resource(Kind.ENDPOINT_SLICE, "endpointslices", "discovery.k8s.io"),
    Kind.POD: Resource(Kind.POD, "pods", ""),
    # KEP-1645's ServiceImport (the MCS API's CRD), watched with multicluster zones only.
    Kind.SERVICE_IMPORT: Resource(Kind.SERVICE_IMPORT, "serviceimports", "multicluster.x-k8s.io",
                                  "v1alpha1", optional=True),
}


@dataclass(frozen=True, slots=True)
class Tuning:
    """Timings of the watch loops; tests shrink them."""

    page_size: int = 500
    # EndpointSlices are up to 100 endpoints each: smaller pages keep the raw JSON of one
    # page (the peak of a relist at 100k endpoints) small.
    slice_page_size: int = 10
    # timeoutSeconds asked of the server, jittered +-20%, and at most WATCH_SHARE of the
    # silence limit.
    watch_timeout: float = 300.0
    # Nothing at all (not even a bookmark) this long: the stream is stuck. None: the
    # config's ``watch_silence``.
    inactivity_timeout: float | None = None
    request_timeout: float = 30.0  # one list page
    backoff_base: float = 0.1
    backoff_cap_early: float = 1.0  # for the first minute of an outage
    backoff_cap: float = 30.0
    early_window: float = 60.0
    # Before a reflector's first list (not ready: 403 until an RBAC rule is granted, or
    # an API server not up yet), however long that lasts: a fix shows within seconds.
    backoff_cap_unlisted: float = 5.0
    # TCP keepalive on watch connections (as client-go's dialer sets it): a peer that
    # vanished (host gone, partition, a dropped NAT entry) fails the read after
    # idle + interval * count seconds, however quiet the watch.
    keepalive_idle: int = 15
    keepalive_interval: int = 5
    keepalive_count: int = 3
    # While the API server is unavailable, a summary line at most this often (at the
    # next failed attempt once this much time has passed).
    outage_report: float = 30.0
    # How often a resource whose CRD is not installed (404) is asked for again.
    absent_retry: float = 10.0


# A watch asks the API server to end it after at most this share of the silence limit
# (before the +-20% jitter): API servers send a bookmark only about once a minute, and
# only when their resourceVersion moved, so a healthy quiet stream must end on its own
# before the silence limit takes it for stuck.
WATCH_SHARE = 0.75


class ApiError(Exception):
    def __init__(self, status: int, message: str, retry_after: float = 0.0) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.retry_after = retry_after


class Gone(ApiError):
    """410: the resourceVersion or continue token is too old."""


class TooLarge(ApiError):
    """504 ``ResourceVersionTooLarge``: the API server has not reached the resourceVersion
    asked for -- its history went back, or it lags behind the one we listed from."""


class WentBack(Exception):
    """The API server's resourceVersion is lower than one it gave us before."""


TOO_LARGE_MESSAGE = "Too large resource version"


def _status_error(code: int, status: Any, fallback: str, retry_after: float) -> ApiError:
    """The error for a failure ``Status`` (a response body or a watch ERROR event)."""
    message = fallback
    if isinstance(status, dict):
        message = str(status.get("message", fallback))
        details = status.get("details")
        seconds = details.get("retryAfterSeconds") if isinstance(details, dict) else None
        if not retry_after and isinstance(seconds, int | float) and seconds > 0:
            retry_after = float(seconds)
    if code == 410:
        return Gone(code, message, retry_after)
    if code == 504 and isinstance(status, dict) and _too_large(status):
        return TooLarge(code, message, retry_after)
    return ApiError(code, message, retry_after)


def _too_large(status: Mapping[str, Any]) -> bool:
    """As client-go tells it: a ``ResourceVersionTooLarge`` cause, or (older servers) the
    message saying so."""
    details = status.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    if isinstance(causes, list) and any(isinstance(c, dict) and c.get("reason")
                                        == "ResourceVersionTooLarge" for c in causes):
        return True
    return TOO_LARGE_MESSAGE.lower() in str(status.get("message", "")).lower()


def _revision(rv: str | None) -> int | None:
    """A resourceVersion as the etcd revision it is in practice, or None if it is not
    one (the API contract keeps them opaque)."""
    return int(rv) if rv and rv.isascii() and rv.isdigit() else None


def older(rv: str | None, than: str | None) -> bool:
    """Whether resourceVersion ``rv`` is lower than ``than`` (both integers, else no)."""
    a, b = _revision(rv), _revision(than)
    return a is not None and b is not None and a < b


@dataclass(slots=True)
class Pending:
    """A change not yet published: when it reached us, and when Kubernetes made it."""

    received: float  # monotonic
    triggered: float | None  # wall clock, from the EndpointSlice annotation
    service: tuple[str, str] | None = None  # (namespace, service) of a changed slice


class Backoff:
    """Exponential backoff with full jitter; the cap stays low early in an outage, and
    stays at most ``backoff_cap_unlisted`` until the reflector has listed once."""

    def __init__(self, tuning: Tuning, clock: Callable[[], float],
                 rng: Callable[[], float]) -> None:
        self.tuning = tuning
        self.clock = clock
        self.rng = rng
        self.failures = 0
        self.since: float | None = None

    def reset(self) -> None:
        self.failures = 0
        self.since = None

    def next_delay(self, retry_after: float = 0.0, *, listed: bool = True) -> float:
        """Seconds to wait before the next attempt; ``listed``: the reflector has listed
        successfully before (until then it is not ready, and retries stay frequent).
        ``retry_after`` (the server's word) wins over the cap."""
        now = self.clock()
        if self.since is None:
            self.since = now
        t = self.tuning
        cap = t.backoff_cap_early if now - self.since < t.early_window else t.backoff_cap
        if not listed:
            cap = min(cap, t.backoff_cap_unlisted)
        ceiling = min(cap, t.backoff_base * 2.0 ** min(self.failures, 30))
        self.failures += 1
        delay = ceiling * (0.5 + 0.5 * self.rng())
        return max(delay, retry_after)


def set_keepalive(sock: Any, idle: int, interval: int, count: int) -> None:
    """Turn TCP keepalive on for ``sock`` with these timings (seconds, probes)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    # TCP_KEEPIDLE is TCP_KEEPALIVE on macOS; other systems may lack an option.
    idle_option = getattr(socket, "TCP_KEEPIDLE", getattr(socket, "TCP_KEEPALIVE", None))
    for option, value in ((idle_option, idle),
                          (getattr(socket, "TCP_KEEPINTVL", None), interval),
                          (getattr(socket, "TCP_KEEPCNT", None), count)):
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _retry_after(headers: Mapping[str, str]) -> float:
    value = headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return 0.0


def _trigger_time(raw: Mapping[str, Any]) -> float | None:
    meta = raw.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, dict) else None
    text = annotations.get(TRIGGER_ANNOTATION) if isinstance(annotations, dict) else None
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _slice_service(raw: Mapping[str, Any]) -> tuple[str, str] | None:
    """(namespace, service name) an EndpointSlice belongs to, from its label."""
    meta = raw.get("metadata")
    labels = meta.get("labels") if isinstance(meta, dict) else None
    service = labels.get("kubernetes.io/service-name") if isinstance(labels, dict) else None
    if not isinstance(service, str) or not isinstance(meta, dict):
        return None
    ns = meta.get("namespace")
    return ((ns if isinstance(ns, str) else "default").lower(), service.lower())


def _raw_key(kind: Kind, raw: Mapping[str, Any]) -> Key | None:
    meta = raw.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        return None
    if kind is Kind.NAMESPACE:
        return ("", meta["name"].lower())
    ns = meta.get("namespace")
    return ((ns if isinstance(ns, str) and ns else "default").lower(), meta["name"].lower())


def _key_text(key: Key | None) -> str:
    if key is None:
        return "?"
    return f"{key[0]}/{key[1]}" if key[0] else key[1]


def error_text(exc: BaseException) -> str:
    """An exception as one line: its type and what it says."""
    if isinstance(exc, json.JSONDecodeError):
        return f"the answer is not JSON ({exc.msg}): is this an API server?"
    text = " ".join(str(exc).split())
    cause = getattr(exc, "os_error", None)  # aiohttp's ClientConnectorError
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(cause, OSError) and \
            cause.errno:
        return f"cannot connect to {exc.host}:{exc.port}: {os.strerror(cause.errno).lower()}"
    if isinstance(exc, TimeoutError) and not text:
        return "timed out"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _clock_time(seconds_ago: float) -> str:
    """The wall-clock time (HH:MM:SS, as the log lines show it) ``seconds_ago``."""
    return time.strftime("%H:%M:%S", time.localtime(time.time() - seconds_ago))


class Outage:
    """Tells the log when the API server is lost, how it goes while it lasts, and when
    it is back.

    Each reflector reports its failed attempts (connections, timeouts, 5xx and 429;
    not 403, which is logged on its own, nor 410 and its kin, which are answers), when
    the API server answers it again (a list, or a watch that started), and when it works
    again (a list, or a watch that brought its first line or ended cleanly: a watch from
    a compacted resourceVersion starts, then says 410 and relists). The outage begins
    with the first failure and is announced once a reflector's retry has failed too (a
    single dropped stream that resumes at once stays a one-line blip); while it lasts a
    summary is logged at most every ``outage_report`` seconds, at a failed attempt; it
    ends when every reflector that failed works again, with a line saying how long the
    API server was away and how each reflector came back: resumed its watch, or
    relisted.
    """

    def __init__(self, source: KubeSource) -> None:
        self.source = source
        self.failing: dict[str, int] = {}  # reflector name -> failures in a row
        self.attempts: Counter[str] = Counter()  # failed attempts in this outage
        self.began: float | None = None  # clock time of its first failure
        self.back: float | None = None  # clock time the API server last answered again
        self.announced = False
        self.reported = 0.0  # clock time of the last line about it
        self.last_error = ""
        self.came_back: dict[str, str] = {}  # reflector name -> how it came back

    def failed(self, reflector: Reflector, error: str) -> None:
        now = self.source.clock()
        if self.began is None:
            self.began = now
        self.failing[reflector.name] = self.failing.get(reflector.name, 0) + 1
        self.attempts[reflector.name] += 1
        self.came_back.pop(reflector.name, None)
        self.last_error = f"{reflector.name}: {error}"
        if not self.announced:
            if self.failing[reflector.name] >= 2:
                self.announced = True
                self.reported = now
                log.warning("API server at %s unavailable since %s (%s); %s; retrying, "
                            "with a summary every %g s until it is back",
                            self.source.server, _clock_time(now - self.began),
                            self.last_error, self.source.serving(),
                            self.source.tuning.outage_report)
        elif now - self.reported >= self.source.tuning.outage_report:
            self.reported = now
            log.warning("API server at %s still unavailable after %.0f s: %d failed "
                        "attempts (%s), last error: %s; %s", self.source.server,
                        now - self.began, self.attempts.total(),
                        ", ".join(f"{n} {c}" for n, c in sorted(self.attempts.items())),
                        self.last_error, self.source.serving())

    def answered(self, reflector: Reflector) -> None:
        """The API server answered ``reflector`` (a list, a watch that started)."""
        if self.failing.pop(reflector.name, None) is not None:
            self.back = self.source.clock()

    def recovered(self, reflector: Reflector, how: str) -> None:
        """``reflector`` works again, as ``how`` says ("relisted", "resumed ...")."""
        self.answered(reflector)
        if reflector.name not in self.attempts or reflector.name in self.came_back:
            return
        self.came_back[reflector.name] = how
        if self.failing or any(name not in self.came_back for name in self.attempts):
            return
        if self.announced and self.began is not None:
            back = self.back if self.back is not None else self.source.clock()
            log.info("API server at %s is back after %.1f s (%d failed attempts): %s",
                     self.source.server, back - self.began, self.attempts.total(),
                     ", ".join(f"{n} {h}" for n, h in sorted(self.came_back.items())))
        self.attempts.clear()
        self.came_back.clear()
        self.began = self.back = None
        self.announced = False


KUBECONFIG_LISTS = ("clusters", "contexts", "users")


def _describe_value(value: Any) -> str:
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool | int | float):
        return f"a number ({value!r})"
    return f"a {type(value).__name__}"


def _read_kubeconfig(path: str) -> dict[str, Any]:
    """One kubeconfig file as a mapping; KubeSourceError (naming the file) otherwise."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise KubeSourceError(f"kubeconfig {path}: cannot read it: "
                              f"{exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise KubeSourceError(f"kubeconfig {path}: not text (UTF-8)") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f"line {mark.line + 1}, column {mark.column + 1}: "
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        detail = f"{problem} ({context})" if context else problem
        raise KubeSourceError(f"kubeconfig {path}: not valid YAML: {where}"
                              f"{' '.join(str(detail).split())}") from None
    if doc is None:
        raise KubeSourceError(f"kubeconfig {path}: the file is empty")
    if not isinstance(doc, dict):
        raise KubeSourceError(f"kubeconfig {path}: expected a mapping with clusters, "
                              f"contexts, users and current-context; found "
                              f"{_describe_value(doc)}")
    for key in KUBECONFIG_LISTS:
        entries = doc.get(key)
        if entries is not None and not (isinstance(entries, list) and all(
                isinstance(e, dict) and isinstance(e.get("name"), str) for e in entries)):
            raise KubeSourceError(f"kubeconfig {path}: {key}: expected a list of entries, "
                                  f"each a mapping with a name; found "
                                  f"{_describe_value(entries)}")
    return doc


def check_kubeconfig(paths: str, context: str = "", origin: str = "") -> None:
    """Raise KubeSourceError, one line naming the file and the problem, for what the
    kubernetes client would fail on with a traceback or a puzzling message: no file, not
    YAML, not a kubeconfig, no such context.

    ``paths`` is one path or several joined with ``:`` (as ``$KUBECONFIG``; missing ones
    are skipped, as kubectl does); ``origin`` says where it came from.
    """
    files = [os.path.expanduser(p) for p in paths.split(os.pathsep) if p]
    present = [p for p in files if os.path.exists(p)]
    if not present:
        if len(files) == 1:
            raise KubeSourceError(f"kubeconfig {files[0]}{origin}: no such file")
        raise KubeSourceError(f"kubeconfig {paths}{origin}: none of these files exists")
    contexts: list[str] = []
    current = ""
    for path in present:
        doc = _read_kubeconfig(path)
        contexts += [e["name"] for e in doc.get("contexts") or ()]
        if "current-context" in doc:  # the last file saying it wins, as the client reads
            value = doc["current-context"]
            current = value if isinstance(value, str) else ""
    where = ", ".join(present)
    wanted = context or current
    known = ", ".join(contexts) if contexts else "none"
    if not wanted:
        raise KubeSourceError(f"kubeconfig {where}: no current-context (set one with "
                              f"kubectl config use-context, or pass --context; contexts: "
                              f"{known})")
    if wanted not in contexts:
        how = "--context" if context else "current-context"
        raise KubeSourceError(f"kubeconfig {where}: {how} {wanted!r} is not one of its "
                              f"contexts ({known})")


class Reflector:
    """List, then watch, one resource in one scope, forever."""

    def __init__(self, source: KubeSource, resource: Resource, namespace: str) -> None:
        self.source = source
        self.resource = resource
        self.namespace = namespace
        self.name = f"watch-{resource.plural}" + (f"-{namespace}" if namespace else "")
        self.synced = False
        self.rv: str | None = None  # where the next watch starts; None: list first
        # The latest resourceVersion the API server gave us (list, event, bookmark): a
        # lower one later means its history went back. None: nothing to compare with.
        self.seen: str | None = None
        self.last_contact: float | None = None  # monotonic time of the last sign of life
        self.restarts: Counter[str] = Counter()
        # Objects whose latest version from the API server is malformed, so their last
        # good version is still served (key -> what is wrong, naming the field).
        self.held: dict[Key, str] = {}
        self.backoff = Backoff(source.tuning, source.clock, source.rng)
        self._forbidden_logged = False
        self.absent = False  # an optional resource the API server says it does not have

    async def _call(self, request_timeout: float, query: dict[str, Any]) -> Any:
        """GET the collection with ``query`` (list/watch options as the API server
        spells them); the raw response.

        Through the kubernetes client's ``ApiClient`` (its configuration, auth and HTTP
        session), not its generated ``CoreV1Api``/``DiscoveryV1Api``: those import a
        model class for every object of their API group (~250 modules, ~25 MB RSS),
        and clusterdns reads the JSON itself.
        """
        if self.resource.kind is Kind.SERVICE and self.source.config.labels:
            query["labelSelector"] = self.source.config.labels
        client = self.source.client()
        request = await client.param_serialize(
            method="GET", resource_path=self.resource.path(self.namespace),
            path_params={"namespace": self.namespace} if self.namespace else None,
            query_params=list(query.items()),
            header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
        response = await client.call_api(*request, _request_timeout=request_timeout)
        return response.response  # the aiohttp response, body unread

    async def run(self) -> None:
        while True:
            try:
                if self.rv is None:
                    self.rv = await self.list()
                if not await self._watch():
                    await self._check_history()
            except Gone as exc:
                self.restarts["gone"] += 1
                log.info("%s: %s; relisting", self.name, exc)
                self.rv = None
            except TooLarge as exc:
                self.restarts["rv_too_large"] += 1
                log.warning("%s: the API server does not have resourceVersion %s (%s): its "
                            "history went back (etcd restored from a backup, or a new cluster "
                            "at the same address) or it lags behind another API server; "
                            "relisting", self.name, self.rv, exc)
                self.rv = None
                # Its Retry-After (1 s) paces relists against an API server that lags.
                await self.source.sleep(min(exc.retry_after, self.source.tuning.backoff_cap))
            except WentBack as exc:
                self.restarts["rv_went_back"] += 1
                log.warning("%s: %s: the API server's history went back (etcd restored "
                            "from a backup, or a new cluster at the same address); relisting",
                            self.name, exc)
                self.rv = self.seen = None
            except ApiError as exc:
                if exc.status == 404 and self.resource.optional:
                    self.not_installed(exc)
                    await self.source.sleep(self.source.tuning.absent_retry)
                    continue
                self._failed(exc)
                await self.source.sleep(self.backoff.next_delay(exc.retry_after,
                                                                listed=self.synced))
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                self.restarts["error"] += 1
                # The first failure in a row is logged; the rest of an outage is told by
                # its announcement, summaries and end (``Outage``).
                level = logging.WARNING if self.backoff.failures == 0 else logging.DEBUG
                log.log(level, "%s: %s; retrying", self.name, error_text(exc))
                self.source.outage.failed(self, error_text(exc))
                await self.source.sleep(self.backoff.next_delay(listed=self.synced))

    def not_installed(self, exc: ApiError, *, again: bool = True) -> None:
        """A 404 for an optional resource: its CRD is not installed (or was removed).
        There are none of its objects, which is an answer, so the kind counts as listed
        (empty) and the rest keeps serving; with ``again`` (a running source, not a
        one-off list) it is asked for again every ``absent_retry`` seconds. Logged once
        until it is found."""
        r = self.resource
        if not self.absent:
            self.absent = True
            later = (f", and asking again every {self.source.tuning.absent_retry:g} s"
                     if again else "")
            log.warning("%s: the API server has no %s.%s/%s (%s): is the CRD installed? "
                        "Serving as if there were none%s", self.name, r.plural, r.group,
                        r.version, " ".join(str(exc).split()), later)
        self.rv = None
        self.held.clear()
        if self.source.store.replace(r.kind, (), self.namespace):
            self.source.note_change(None)
        self.backoff.reset()
        self.source.outage.recovered(self, "found no CRD")
        self.last_contact = self.source.clock()
        if not self.synced:
            self.synced = True
            self.source.reflector_synced(self)

    def _failed(self, exc: ApiError) -> None:
        self.restarts[f"http_{exc.status}"] += 1
        if exc.status == 403:
            if not self._forbidden_logged:
                self._forbidden_logged = True
                scope = f'in namespace "{self.namespace}"' if self.namespace else "cluster-wide"
                log.error("%s: forbidden: clusterdns may not list/watch %s %s; grant it with "
                          "this RBAC rule: {%s} (%s)", self.name, self.resource.plural, scope,
                          self.resource.rbac_rule(), exc)
            return
        level = logging.WARNING if self.backoff.failures == 0 else logging.DEBUG
        log.log(level, "%s: %s; backing off", self.name, exc)
        self.source.outage.failed(self, str(exc))

    async def _request(self, request_timeout: float, query: dict[str, Any]) -> Any:
        """One API request; its (aiohttp) response when the status is 200."""
        resp = await self._call(request_timeout, query)
        if resp.status == 200:
            return resp
        body = await resp.read()
        resp.release()
        status: Any = None
        with contextlib.suppress(ValueError):
            status = json.loads(body)
        raise _status_error(resp.status, status, body.decode("utf-8", "replace")[:300],
                            _retry_after(resp.headers))

    async def list(self) -> str:
        """A complete paginated list; replaces the scope's objects; the list's RV."""
        t = self.source.tuning
        objs: list[KubeObject] = []
        cont: str | None = None
        limit = t.page_size
        if self.resource.kind is Kind.ENDPOINT_SLICE:
            limit = min(limit, t.slice_page_size)
        while True:
            query: dict[str, Any] = {"limit": limit}
            if cont:
                query["continue"] = cont
            try:
                response = await self._request(t.request_timeout, query)
            except Gone:
                if not cont:
                    raise
                self.restarts["continue_expired"] += 1
                log.info("%s: continue token expired; restarting the list", self.name)
                objs, cont = [], None
                continue
            body = json.loads(await response.read())
            meta = body.get("metadata") or {}
            store, kind = self.source.store, self.resource.kind
            for raw in body.get("items") or ():
                obj = self._convert(raw)
                if obj is not None:
                    # An object as we have it already is kept, and the new copy dropped
                    # at once: a relist of 100k endpoints then holds one page of new
                    # objects at a time, not a second copy of the cluster.
                    old = store.get(kind, key_of(obj))
                    objs.append(old if old is not None and old == obj else obj)
            del body
            cont = meta.get("continue") or None
            if cont is None:
                break
        if self.held:  # forget what was deleted while held back
            listed = {key_of(o) for o in objs}
            for key in [k for k in self.held if k not in listed]:
                del self.held[key]
        rv = str(meta.get("resourceVersion", ""))
        if older(rv, self.seen):
            self.restarts["rv_went_back"] += 1
            log.warning("%s: listed at resourceVersion %s, lower than the %s seen before: the "
                        "API server's history went back (etcd restored from a backup, or a new "
                        "cluster at the same address); serving what it has now", self.name,
                        rv, self.seen)
        self.seen = rv
        if self.absent:
            self.absent = False
            log.info("%s: the API server serves %s now; listed %d", self.name,
                     self.resource.plural, len(objs))
        if self.source.store.replace(self.resource.kind, objs, self.namespace):
            self.source.note_change(None)
        self.backoff.reset()
        self.source.outage.recovered(self, "relisted" if self.synced else "listed")
        self._forbidden_logged = False  # a later loss of the permission is news again
        self.last_contact = self.source.clock()
        if not self.synced:
            self.synced = True
            self.source.reflector_synced(self)
        return rv

    def _convert(self, raw: Any) -> KubeObject | None:
        """``raw`` as an object; when it is malformed, the object's last good version
        (held back) or None (skipped: there is none). The list and the watch both come
        here, so a malformed version never takes a name away that the other path keeps.
        """
        kind = self.resource.kind
        try:
            obj = convert(kind.value, raw)
        except ConvertError as exc:
            return self._hold(raw, exc)
        key = key_of(obj)
        if self.held.pop(key, None) is not None:
            log.info("%s: %s %s is well-formed again; serving its new version", self.name,
                     kind.value, _key_text(key))
        return obj

    def _hold(self, raw: Any, exc: ConvertError) -> KubeObject | None:
        kind = self.resource.kind
        key = _raw_key(kind, raw) if isinstance(raw, dict) else None
        good = self.source.store.get(kind, key) if key is not None else None
        if key is None or good is None:
            log.warning("%s: skipped malformed %s %s: %s", self.name, kind.value,
                        _key_text(key), exc)
            return None
        problem = str(exc)
        if self.held.get(key) != problem:
            log.warning("%s: %s %s is malformed (%s); keeping its last good version until a "
                        "well-formed one comes or it is deleted", self.name, kind.value,
                        _key_text(key), problem)
        self.held[key] = problem
        return good

    def silence(self) -> float:
        """Seconds a watch may bring nothing at all before it is taken for stuck."""
        override = self.source.tuning.inactivity_timeout
        return override if override is not None else self.source.config.watch_silence

    def _keepalive(self, response: Any) -> None:
        """TCP keepalive on the watch response's connection."""
        t = self.source.tuning
        connection = getattr(response, "connection", None)
        transport = getattr(connection, "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None:
            return
        try:
            set_keepalive(sock, t.keepalive_idle, t.keepalive_interval, t.keepalive_count)
        except OSError as exc:
            log.debug("%s: cannot set TCP keepalive on the watch connection: %s",
                      self.name, exc)

    async def _watch(self) -> bool:
        """Watch from ``self.rv`` until the stream ends, advancing ``self.rv``; whether
        anything at all (an event, a bookmark) arrived."""
        t = self.source.tuning
        silence = self.silence()
        timeout = min(t.watch_timeout, silence * WATCH_SHARE) * (0.8 + 0.4 * self.source.rng())
        response = await self._request(timeout + 30, {
            "watch": True, "resourceVersion": self.rv, "allowWatchBookmarks": True,
            "timeoutSeconds": max(1, int(timeout))})
        self._keepalive(response)
        self.backoff.reset()
        self.source.outage.answered(self)
        resumed = f"resumed its watch at resourceVersion {self.rv}"
        self.last_contact = self.source.clock()
        heard = False
        try:
            while True:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                # cancellation that lands as the line arrives (CPython gh-86296).
                try:
                    async with asyncio.timeout(silence):
                        line = await response.content.readline()
                except TimeoutError:
                    self.restarts["stalled"] += 1
                    log.warning("%s: the watch was silent for %g s (no event, no bookmark, "
                                "and it did not end when asked to); re-watching from "
                                "resourceVersion %s", self.name, silence, self.rv)
                    return heard
                if not line:
                    self.restarts["watch_end"] += 1
                    self.source.outage.recovered(self, resumed)
                    return heard
                if line.strip():
                    self._event(json.loads(line))
                    if not heard:  # the watch works (a 410 would have raised)
                        self.source.outage.recovered(self, resumed)
                    heard = True
        finally:
            response.close()

    async def _check_history(self) -> None:
        """After a watch that brought nothing at all: where is the API server's history?

        One whose history went back below our resourceVersion may not say so: the watch
        cache sends nothing at or below the version watched from, bookmarks included. A
        one-item list (cheap at any size) tells its resourceVersion.
        """
        response = await self._request(self.source.tuning.request_timeout, {"limit": 1})
        body = json.loads(await response.read())
        meta = body.get("metadata") if isinstance(body, dict) else None
        rv = str(meta.get("resourceVersion", "")) if isinstance(meta, dict) else ""
        if older(rv, self.rv):
            raise WentBack(f"a watch from resourceVersion {self.rv} brought nothing, and the "
                           f"API server lists at {rv}")

    def _event(self, event: Any) -> None:
        kind = self.resource.kind
        if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
            raise ValueError(f"malformed watch event: {str(event)[:200]}")
        etype = event.get("type")
        raw = event["object"]
        if etype == "ERROR":
            raise _status_error(int(raw.get("code") or 500), raw, "watch error", 0.0)
        rv = (raw.get("metadata") or {}).get("resourceVersion")
        rv = str(rv) if rv else self.rv
        if older(rv, self.rv):
            what = "a bookmark" if etype == "BOOKMARK" else f"a {etype} event"
            raise WentBack(f"{what} carries resourceVersion {rv}, lower than the {self.rv} "
                           f"watched from")
        self.rv = self.seen = rv
        self.last_contact = self.source.clock()
        if etype == "BOOKMARK":
            return
        store = self.source.store
        changed = False
        if etype in ("ADDED", "MODIFIED"):
            obj = self._convert(raw)
            changed = obj is not None and store.apply(kind, obj)
        elif etype == "DELETED":
            key = _raw_key(kind, raw)
            if key is not None and self.held.pop(key, None) is not None:
                log.info("%s: %s %s, held back at its last good version, is deleted",
                         self.name, kind.value, _key_text(key))
            changed = key is not None and store.delete(kind, key)
        if changed:
            if kind is Kind.ENDPOINT_SLICE:
                self.source.note_change(_trigger_time(raw), _slice_service(raw))
            else:
                self.source.note_change(None)


@dataclass
class KubeSource:
    """Every reflector the config needs, the store they fill, and readiness."""

    config: Config
    tuning: Tuning = field(default_factory=Tuning)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rng: Callable[[], float] = random.random
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    incluster_files: tuple[Path, Path] = (INCLUSTER_TOKEN, INCLUSTER_CA)

    def __post_init__(self) -> None:
        self.store = Store()
        self.reflectors = [Reflector(self, RESOURCES[kind], ns)
                           for kind, ns in self.watches()]
        self.pending: list[Pending] = []
        self.synced = False
        self._changed: Callable[[], None] = lambda: None
        self._client: Any = None
        self._started = self.clock()
        self.outage = Outage(self)
        self.server = "?"  # the API server's URL, once connected
        self.origin = "?"  # where its address and credentials came from, once connected

    def watches(self) -> list[tuple[Kind, str]]:
        """(kind, namespace) pairs to list and watch; "" means every namespace."""
        kinds = [Kind.SERVICE, Kind.ENDPOINT_SLICE]
        if self.config.pods is PodsMode.VERIFIED:
            kinds.append(Kind.POD)
        if self.config.multicluster_zones:
            kinds.append(Kind.SERVICE_IMPORT)
        if not self.config.namespaces:
            return [(Kind.NAMESPACE, ""), *((k, "") for k in kinds)]
        # Namespaces are cluster-scoped: a namespace-scoped Role cannot list them, so
        # the configured namespaces are taken to exist.
        return [(k, ns) for k in kinds for ns in sorted(self.config.namespaces)]

    def describe(self) -> str:
        return "kubernetes API"

    def missing(self) -> list[str]:
        return [r.name for r in self.reflectors if not r.synced]

    def data_age(self) -> float | None:
        """Seconds since the stalest reflector last heard from the API server."""
        contacts = [r.last_contact for r in self.reflectors]
        if any(c is None for c in contacts):
            return None
        return self.clock() - min(c for c in contacts if c is not None)

    def client(self) -> Any:
        """The kubernetes client's ``ApiClient`` (after ``connect``)."""
        if self._client is None:
            raise KubeSourceError("not connected to the API server")
        return self._client

    def cluster(self) -> Cluster:
        cluster = self.store.cluster()
        if self.config.namespaces:
            extra = tuple(Namespace(ns) for ns in sorted(self.config.namespaces))
            cluster = Cluster(extra, cluster.services, cluster.endpoint_slices, cluster.pods,
                              cluster.service_imports)
        return cluster

    def take_pending(self) -> list[Pending]:
        pending, self.pending = self.pending, []
        return pending

    def note_change(self, triggered: float | None,
                    service: tuple[str, str] | None = None) -> None:
        self.pending.append(Pending(self.clock(), triggered, service))
        if self.synced:
            self._changed()

    def counts(self) -> str:
        """How many objects of each watched kind are held: "12 services, ..."."""
        return ", ".join(f"{self.store.count(k)} {RESOURCES[k].plural}"
                         for k in dict.fromkeys(r.resource.kind for r in self.reflectors))

    def serving(self) -> str:
        """What is answered from while the API server is away, and as of when."""
        if not self.synced:
            return ("serving nothing from it yet: not synced, so names in our zones answer "
                    "SERVFAIL (not listed yet: " + ", ".join(self.missing()) + ")")
        age = self.data_age()
        when = f"as of {_clock_time(age)}" if age is not None else "as last listed"
        return f"serving the last data it gave, {when} ({self.counts()})"

    def reflector_synced(self, reflector: Reflector) -> None:
        if self.synced or self.missing():
            return
        self.synced = True
        log.info("synced with the API server in %.2f s: %s", self.clock() - self._started,
                 self.counts())
        self._changed()

    async def connect(self) -> None:
        self._started = self.clock()
        configuration = kclient.Configuration()
        path = self.config.kubeconfig or self.environ.get("KUBECONFIG", "")
        default = Path.home() / ".kube" / "config"
        if not path and "KUBERNETES_SERVICE_HOST" not in self.environ and default.exists():
            path = str(default)
        if not path and "KUBERNETES_SERVICE_HOST" not in self.environ:
            raise KubeSourceError(
                "no kubeconfig (pass --kubeconfig, set $KUBECONFIG or create ~/.kube/config) "
                "and not running in a cluster (KUBERNETES_SERVICE_HOST is not set)")
        token, ca = self.incluster_files
        if path:
            from_env = not self.config.kubeconfig and path == self.environ.get("KUBECONFIG")
            check_kubeconfig(path, self.config.context, " (from $KUBECONFIG)" if from_env
                             else "")
            origin = f"kubeconfig {path}"
        else:
            origin = f"the in-cluster service account ({token.parent})"
        try:
            if path:
                await kconfig.load_kube_config(config_file=path,
                                               context=self.config.context or None,
                                               client_configuration=configuration)
            else:
                InClusterConfigLoader(token_filename=str(token), cert_filename=str(ca),
                                      environ=self.environ).load_and_set(configuration)
        except Exception as exc:
            # The client's loader fails on odd files with whatever its code happens to hit
            # (KeyError, AttributeError...): all of them mean "this config cannot be
            # used", which is a one-line start error.
            raise KubeSourceError(f"cannot load {origin}: {error_text(exc)}") from None
        self.server = str(configuration.host)
        self.origin = origin + (f", context {self.config.context}" if self.config.context
                                else "")
        self._client = kclient.ApiClient(configuration=configuration)

    async def check(self) -> str:
        """Load the config ``connect`` would (KubeSourceError if it cannot), without
        contacting the API server; where it points, for ``check-config``."""
        await self.connect()
        await self.close()
        return f"API server {self.server} ({self.origin})"

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def list_once(self) -> Cluster:
        """Connect, list every watched kind once, disconnect (``clusterdns records``)."""
        await self.connect()
        try:
            for reflector in self.reflectors:
                try:
                    await reflector.list()
                except ApiError as exc:
                    if exc.status == 404 and reflector.resource.optional:
                        reflector.not_installed(exc, again=False)
                        continue
                    hint = (f"; it needs this RBAC rule: {{{reflector.resource.rbac_rule()}}}"
                            if exc.status == 403 else "")
                    raise KubeSourceError(f"{self._cannot_list(reflector)}: {exc}{hint}"
                                          ) from None
                except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                    raise KubeSourceError(f"{self._cannot_list(reflector)}: "
                                          f"{error_text(exc)}") from None
        finally:
            await self.close()
        return self.cluster()

    def _cannot_list(self, reflector: Reflector) -> str:
        return (f"cannot list {reflector.resource.plural} from the API server at "
                f"{self.server} ({self.origin})")

    async def run(self, changed: Callable[[], None]) -> None:
        """Run every reflector until cancelled; ``changed`` is called after sync."""
        self._changed = changed
        if self._client is None:
            await self.connect()
        try:
            async with asyncio.TaskGroup() as group:
                for reflector in self.reflectors:
                    group.create_task(reflector.run(), name=reflector.name)
        finally:
            await self.close()
