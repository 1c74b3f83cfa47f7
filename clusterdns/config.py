"""Typed, frozen configuration and its YAML loader.

One ``Config`` value describes everything the server does; the CLI builds one from a
YAML file plus flags, and a reload builds a whole new one (or rejects the file and keeps
the old one). Option names follow the CoreDNS ``kubernetes`` plugin where one exists
(``pods``, ``namespaces``, ``endpoint_pod_names``, ``ttl``, ``ignore_empty_service``), so
a Corefile translates by eye. Every validation error names the file and the key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from clusterdns import names


class ConfigError(Exception):
    """A configuration value is wrong; the message names the file and the key."""

    def __init__(self, where: str, key: str, problem: str) -> None:
        self.where = where
        self.key = key
        self.problem = problem
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}{key}: {problem}")


class PodsMode(Enum):
    DISABLED = "disabled"
    INSECURE = "insecure"
    VERIFIED = "verified"


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """Where objects come from: ``file`` with paths, or ``kubernetes``."""

    kind: str
    paths: tuple[Path, ...] = ()

    def __str__(self) -> str:
        if self.kind == "file":
            return "file:" + ",".join(str(p) for p in self.paths)
        return self.kind


@dataclass(frozen=True, slots=True)
class ListenAddr:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


DEFAULT_ZONES = ("cluster.local", "in-addr.arpa", "ip6.arpa")
MAX_WORKERS = 64


@dataclass(frozen=True, slots=True)
class Config:
    zones: tuple[str, ...] = DEFAULT_ZONES
    source: SourceSpec = SourceSpec("kubernetes")
    listen: tuple[ListenAddr, ...] = (ListenAddr("0.0.0.0", 53),)
    ttl: int = 5
    pods: PodsMode = PodsMode.DISABLED
    namespaces: frozenset[str] = frozenset()  # empty: every namespace
    endpoint_pod_names: bool = False
    ignore_empty_service: bool = False
    # Autopath (CoreDNS ``autopath @kubernetes``): a query for ``NAME.<ns>.svc.<zone>``
    # from the one running ClusterFirst pod at its source address, of namespace <ns>,
    # has that pod's search list walked here. Needs ``pods: verified`` (the pods watch).
    autopath: bool = False
    autopath_zones: tuple[str, ...] = ()  # forward zones it applies to; empty: all
    autopath_resolv_conf: str = "/etc/resolv.conf"  # its search domains follow <zone>
    max_udp_size: int = 1232
    tcp_idle_timeout: float = 10.0
    tcp_max_connections: int = 1000
    poll_interval: float = 0.5
    kubeconfig: str = ""  # "" -> $KUBECONFIG, ~/.kube/config, then in-cluster config
    context: str = ""  # kubeconfig context; "" -> the current context
    labels: str = ""  # label selector: only services matching it are served
    # Seconds a watch may bring nothing at all (no event, no bookmark) before it is taken
    # for stuck and re-watched; watches ask the API server to end them well before this.
    watch_silence: float = 60.0
    # Zones answered from ServiceImports and imported EndpointSlices by the Kubernetes
    # DNS-Based Multicluster Service Discovery spec (KEP-1645; CoreDNS ``multicluster``),
    # normally ``clusterset.local``. Empty: none, and ServiceImports are not watched.
    multicluster_zones: tuple[str, ...] = ()
    # Forwarding (SPEC S5). Each upstream is IP, IP:PORT, [V6]:PORT, or the path of a
    # resolv.conf file whose nameservers are used (our own listen addresses are skipped).
    # Empty: no forwarding, out-of-zone names are REFUSED.
    upstreams: tuple[str, ...] = ()
    forward_timeout: float = 1.0  # seconds per upstream try
    forward_deadline: float = 2.0  # seconds per client query, all tries together
    forward_max_concurrent: int = 1000  # upstream queries in flight; beyond: REFUSED
    forward_policy: str = "random"  # random | round_robin | sequential (CoreDNS ``policy``)
    forward_max_fails: int = 2  # failures in a row that mark an upstream down; 0: never
    forward_health_check: float = 0.5  # seconds between probes of an upstream marked down
    forward_expire: float = 10.0  # seconds an idle upstream socket is kept for reuse
    forward_force_tcp: bool = False  # always TCP to upstreams
    forward_prefer_udp: bool = False  # UDP first even for queries that came over TCP
    loop_detect: bool = True  # probe the upstreams for a forwarding loop at start
    # Zones whose unknown names go upstream instead of NXDOMAIN (CoreDNS ``fallthrough``).
    fallthrough: frozenset[str] = frozenset()
    cache_size: int = 10_000  # positive forwarded answers kept; 0 turns the cache off
    cache_negative_size: int = 10_000  # negative ones (NXDOMAIN, NODATA); 0: none
    cache_ttl: int = 3600  # cap on a cached positive answer's TTL (CoreDNS ``cache N``)
    cache_negative_ttl: int = 1800  # cap on a cached negative answer's TTL (RFC 2308)
    cache_min_ttl: int = 0  # floor on a cached positive answer's TTL (CoreDNS MINTTL)
    cache_negative_min_ttl: int = 0  # floor on a cached negative answer's TTL
    # CoreDNS ``prefetch AMOUNT DURATION PERCENTAGE%``: an answer asked for at least
    # ``cache_prefetch`` times within ``cache_prefetch_window`` seconds is fetched again
    # in the background once less than ``cache_prefetch_percentage`` % of its TTL is left.
    cache_prefetch: int = 0  # 0: no prefetching
    cache_prefetch_window: float = 60.0
    cache_prefetch_percentage: int = 10
    serve_stale: float = 3600.0  # seconds an expired answer may be served if upstreams fail
    # Zone transfers (AXFR; IXFR answered in full) over TCP, for clients at these IP
    # addresses or CIDR networks, or "*" for anyone (CoreDNS ``transfer { to ... }``).
    # Empty: off, and every transfer is REFUSED.
    transfer_to: tuple[str, ...] = ()
    transfer_zones: tuple[str, ...] = ()  # zones that may be transferred; empty: all ours
    # Operations (SPEC S6); None turns an endpoint off.
    health: ListenAddr | None = ListenAddr("0.0.0.0", 8080)
    ready: ListenAddr | None = ListenAddr("0.0.0.0", 8181)
    metrics: ListenAddr | None = ListenAddr("0.0.0.0", 9153)
    lameduck: float = 5.0  # seconds of answering after SIGTERM, with /ready failing
    reload: float = 2.0  # seconds between config-file change checks; 0: SIGHUP only
    log_queries: bool = False  # one CoreDNS ``log``-format line per query, on stdout
    # Worker processes sharing the DNS port with SO_REUSEPORT (clusterdns.workers); each
    # runs its own source and snapshot. Changing it needs a restart.
    workers: int = 1
    origin: str = field(default="", compare=False)  # file it came from, for messages

    def __post_init__(self) -> None:
        if self.multicluster_zones:
            problem = multicluster_problem(self.zones, self.multicluster_zones)
            if problem:
                raise ConfigError(self.origin, "multicluster_zones", problem)

    @property
    def cluster_domain(self) -> str:
        """The first forward zone: where services live and PTR targets point."""
        for zone in self.zones:
            if not names.is_reverse_zone(zone):
                return zone
        return "cluster.local"

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def _list_keys() -> frozenset[str]:
    """The Config fields that hold several values (tuples and sets), by their types."""
    hints = typing.get_type_hints(Config)
    return frozenset(f.name for f in dataclasses.fields(Config)
                     if typing.get_origin(hints[f.name]) in (tuple, list, frozenset, set))


# YAML keys whose value is a list; a single string there is a list of that one string.
LIST_KEYS = _list_keys()


def multicluster_problem(zones: tuple[str, ...], multicluster: tuple[str, ...]) -> str:
    """What is wrong with these multicluster zones beside ``zones``, or "".

    A multicluster zone is a forward zone of its own: not a reverse zone, and neither
    one of the other zones nor inside or around one (its names would be two zones'
    names at once)."""
    for i, zone in enumerate(multicluster):
        if names.is_reverse_zone(zone):
            return f"{zone}: a reverse zone cannot be a multicluster zone"
        for other in (*zones, *multicluster[:i]):
            if zone == other and other in zones:
                return (f"{zone} is in zones too: a zone serves either the cluster's "
                        "services or its ServiceImports")
            if names.is_subdomain(zone, other) or names.is_subdomain(other, zone):
                return (f"{zone} overlaps {other}: a multicluster zone must be a zone of its "
                        "own, neither inside nor around another served zone")
    return ""


# ---------------------------------------------------------------------- parsing helpers


def parse_zone(text: str, where: str = "", key: str = "zones") -> str:
    zone = names.normalise(text)
    if not zone or any(not label or len(label) > 63 for label in zone.split(".")):
        raise ConfigError(where, key, f"{text!r} is not a valid zone name")
    return zone


def parse_listen(text: str, where: str = "", key: str = "listen") -> ListenAddr:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (all IPv4 addresses)."""
    text = str(text).strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ConfigError(where, key, f"{text!r}: expected [ADDRESS]:PORT")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ConfigError(where, key, f"{text!r}: expected HOST:PORT")
        host = host or "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ConfigError(where, key, f"{text!r}: {host!r} is not an IP address") from None
        host = "127.0.0.1"
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(where, key, f"{text!r}: port must be a number from 0 to 65535")
    return ListenAddr(host, int(port_text))


def parse_endpoint(value: Any, where: str = "", key: str = "health") -> ListenAddr | None:
    """An HTTP endpoint's ``HOST:PORT`` / ``:PORT``; empty or null turns it off."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return parse_listen(str(value), where, key)


def parse_upstream(raw: Any, where: str = "", key: str = "upstreams") -> str:
    """``IP``, ``IP:PORT``, ``[V6]:PORT`` (normalised to HOST:PORT text) or a file path."""
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(where, key, f"{raw!r}: expected an address or a resolv.conf path")
    text = raw.strip()
    if text.startswith(("/", ".")):
        return text
    try:
        return str(ListenAddr(str(ipaddress.ip_address(text)), 53))
    except ValueError:
        pass
    addr = parse_listen(text, where, key)
    if addr.port == 0:
        raise ConfigError(where, key, f"{text!r}: port 0 is not an upstream port")
    return str(addr)


def parse_transfer_peer(raw: Any, where: str = "", key: str = "transfer_to") -> str:
    """``*`` (anyone), an IP address or a CIDR network (``10.0.0.0/8``), normalised."""
    text = str(raw).strip() if isinstance(raw, str | int) else ""
    if text == "*":
        return text
    try:
        if "/" in text:
            return str(ipaddress.ip_network(text))
        return str(ipaddress.ip_address(text))
    except ValueError as exc:
        problem = str(exc) if "host bits" in str(exc) else "expected an IP address, a " \
            "CIDR network such as 10.0.0.0/8, or * for anyone"
        raise ConfigError(where, key, f"{raw!r}: {problem}") from None


def parse_source(
    text: str, where: str = "", key: str = "source", base: Path | None = None,
) -> SourceSpec:
    """``kubernetes`` or ``file:PATH[,PATH...]``; relative paths are taken from ``base``."""
    text = str(text).strip()
    if text == "kubernetes":
        return SourceSpec("kubernetes")
    if text.startswith("file:"):
        parts = [p.strip() for p in text[5:].split(",") if p.strip()]
        if not parts:
            raise ConfigError(where, key, "file: needs at least one path")
        paths = tuple((base / p) if base is not None and not Path(p).is_absolute() else Path(p)
                      for p in parts)
        return SourceSpec("file", paths)
    raise ConfigError(where, key, f"{text!r}: expected 'kubernetes' or 'file:PATH[,PATH...]'")


def parse_pods(text: str, where: str = "", key: str = "pods") -> PodsMode:
    try:
        return PodsMode(str(text).strip().lower())
    except ValueError:
        choices = ", ".join(m.value for m in PodsMode)
        raise ConfigError(where, key, f"{text!r}: expected one of {choices}") from None


def parse_namespaces(value: Any, where: str = "", key: str = "namespaces") -> frozenset[str]:
    """A list of namespace names, or ``NS[,NS...]`` (also as a list item)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(where, key, "expected a list of namespace names")
    items = [part for item in items
             for part in (item.split(",") if isinstance(item, str) else [item])]
    out = set()
    for item in items:
        if not isinstance(item, str) or not names.is_dns_label(item.strip().lower()):
            raise ConfigError(where, key, f"{item!r} is not a namespace name")
        out.add(item.strip().lower())
    return frozenset(out)


def _int(value: Any, where: str, key: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(where, key, f"{value!r}: expected a whole number from {low} to {high}")
    return value


def _number(value: Any, where: str, key: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ConfigError(where, key, f"{value!r}: expected a number from {low} to {high}")
    return float(value)


def _bool(value: Any, where: str, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(where, key, f"{value!r}: expected true or false")
    return value


def _str(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(where, key, f"{value!r}: expected a string")
    return value


FORWARD_POLICIES = ("random", "round_robin", "sequential")


def _path(value: Any, where: str, key: str, base: Path | None) -> str:
    """A file path; a relative one is taken from the config file's directory."""
    text = _str(value, where, key)
    if base is not None and text and not Path(text).is_absolute():
        return str(base / text)
    return text


def _choice(value: Any, where: str, key: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(where, key, f"{value!r} is not one of {', '.join(choices)}")
    return value


def _zones(value: Any, where: str, key: str) -> tuple[str, ...]:
    """A list of zones (possibly empty), normalised, each once, in the order given."""
    return tuple(dict.fromkeys(parse_zone(str(z), where, key) for z in (value or [])))


def _list(value: Any, where: str, key: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise ConfigError(where, key, "expected a non-empty list")
    return value


def _options(where: str, base: Path | None) -> dict[str, Callable[[Any], Any]]:
    """How each option's YAML value becomes a Config field value."""
    return {
        "zones": lambda v: tuple(dict.fromkeys(
            parse_zone(str(z), where) for z in _list(v, where, "zones"))),
        "source": lambda v: parse_source(v, where, base=base),
        "listen": lambda v: tuple(parse_listen(x, where) for x in _list(v, where, "listen")),
        "ttl": lambda v: _int(v, where, "ttl", 0, 3600),
        "pods": lambda v: parse_pods(v, where),
        "namespaces": lambda v: parse_namespaces(v or [], where),
        "endpoint_pod_names": lambda v: _bool(v, where, "endpoint_pod_names"),
        "ignore_empty_service": lambda v: _bool(v, where, "ignore_empty_service"),
        "autopath": lambda v: _bool(v, where, "autopath"),
        "autopath_zones": lambda v: _zones(v, where, "autopath_zones"),
        "autopath_resolv_conf": lambda v: _path(v, where, "autopath_resolv_conf", base),
        "max_udp_size": lambda v: _int(v, where, "max_udp_size", 512, 65535),
        "tcp_idle_timeout": lambda v: _number(v, where, "tcp_idle_timeout", 0.1, 3600),
        "tcp_max_connections": lambda v: _int(v, where, "tcp_max_connections", 1, 1_000_000),
        "poll_interval": lambda v: _number(v, where, "poll_interval", 0.05, 3600),
        "kubeconfig": lambda v: str(base / v) if base is not None and v and not Path(
            str(v)).is_absolute() else _str(v, where, "kubeconfig"),
        "context": lambda v: _str(v, where, "context"),
        "labels": lambda v: _str(v, where, "labels"),
        "watch_silence": lambda v: _number(v, where, "watch_silence", 1, 3600),
        "multicluster_zones": lambda v: _zones(v, where, "multicluster_zones"),
        "upstreams": lambda v: tuple(parse_upstream(x, where) for x in (v or [])),
        "forward_timeout": lambda v: _number(v, where, "forward_timeout", 0.05, 60),
        "forward_deadline": lambda v: _number(v, where, "forward_deadline", 0.05, 60),
        "forward_max_concurrent": lambda v: _int(v, where, "forward_max_concurrent", 1,
                                                 1_000_000),
        "forward_policy": lambda v: _choice(v, where, "forward_policy", FORWARD_POLICIES),
        "forward_max_fails": lambda v: _int(v, where, "forward_max_fails", 0, 1000),
        "forward_health_check": lambda v: _number(v, where, "forward_health_check", 0.05,
                                                  3600),
        "forward_expire": lambda v: _number(v, where, "forward_expire", 0, 3600),
        "forward_force_tcp": lambda v: _bool(v, where, "forward_force_tcp"),
        "forward_prefer_udp": lambda v: _bool(v, where, "forward_prefer_udp"),
        "loop_detect": lambda v: _bool(v, where, "loop_detect"),
        "fallthrough": lambda v: frozenset(
            parse_zone(str(z), where, "fallthrough") for z in (v or [])),
        "cache_size": lambda v: _int(v, where, "cache_size", 0, 10_000_000),
        "cache_negative_size": lambda v: _int(v, where, "cache_negative_size", 0, 10_000_000),
        "cache_ttl": lambda v: _int(v, where, "cache_ttl", 0, 86400),
        "cache_negative_ttl": lambda v: _int(v, where, "cache_negative_ttl", 0, 86400),
        "cache_min_ttl": lambda v: _int(v, where, "cache_min_ttl", 0, 86400),
        "cache_negative_min_ttl": lambda v: _int(v, where, "cache_negative_min_ttl", 0, 86400),
        "cache_prefetch": lambda v: _int(v, where, "cache_prefetch", 0, 1_000_000),
        "cache_prefetch_window": lambda v: _number(v, where, "cache_prefetch_window", 1, 86400),
        "cache_prefetch_percentage": lambda v: _int(v, where, "cache_prefetch_percentage", 1,
                                                    100),
        "serve_stale": lambda v: _number(v, where, "serve_stale", 0, 7 * 86400),
        "transfer_to": lambda v: tuple(dict.fromkeys(
            parse_transfer_peer(x, where) for x in (v or []))),
        "transfer_zones": lambda v: _zones(v, where, "transfer_zones"),
        "health": lambda v: parse_endpoint(v, where, "health"),
        "ready": lambda v: parse_endpoint(v, where, "ready"),
        "metrics": lambda v: parse_endpoint(v, where, "metrics"),
        "lameduck": lambda v: _number(v, where, "lameduck", 0, 600),
        "reload": lambda v: _number(v, where, "reload", 0, 3600),
        "log_queries": lambda v: _bool(v, where, "log_queries"),
        "workers": lambda v: _int(v, where, "workers", 1, MAX_WORKERS),
    }


def from_mapping(data: Any, where: str = "", base: Path | None = None) -> Config:
    """Build a Config from a parsed YAML mapping; unknown keys are errors (typos bite)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(where, "(top level)", "expected a mapping of option: value")
    options = _options(where, base)
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key not in options:
            raise ConfigError(where, str(key), f"unknown option (known: {', '.join(options)})")
        if key in LIST_KEYS and isinstance(value, str):
            # ``upstreams: /etc/resolv.conf`` is a list of one (not of its characters);
            # an empty string is an empty list.
            value = [value] if value.strip() else []
        changes[key] = options[key](value)
    cfg = Config(origin=where).replace(**changes)
    check_autopath(cfg, where)
    return cfg


def check_autopath(cfg: Config, where: str = "", key: str = "autopath") -> None:
    """Autopath needs to know which pod asks, so it needs the pods watch (``pods:
    verified``, as CoreDNS's ``autopath @kubernetes`` needs ``pods verified``), and its
    zones must be forward zones that are served."""
    if not cfg.autopath:
        return
    if cfg.pods is not PodsMode.VERIFIED:
        raise ConfigError(where, key, "needs pods: verified (the pods watch tells which pod "
                                      f"a query comes from), not pods: {cfg.pods.value}")
    forward = [z for z in cfg.zones if not names.is_reverse_zone(z)]
    for zone in cfg.autopath_zones:
        if zone not in forward:
            raise ConfigError(where, "autopath_zones", f"{zone} is not a forward zone served "
                                                       f"({', '.join(forward) or 'none'})")


def load(path: Path) -> Config:
    """Read a YAML config file; relative source paths are relative to the file."""
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(where, "(file)", f"cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(where, "(syntax)", yaml_problem(exc)) from None
    return from_mapping(data, where, base=path.parent)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error as one line: where, what is wrong, and in what it was found, e.g.
    ``not valid YAML at line 2, column 6: mapping values are not allowed here``."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return f"not valid YAML: {exc}"
    mark = exc.problem_mark or exc.context_mark
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = exc.problem or exc.context or "unreadable"
    text = f"not valid YAML{at}: {problem}"
    if exc.problem and exc.context:
        cmark = exc.context_mark
        text += f" ({exc.context}" + (f" at line {cmark.line + 1}" if cmark is not None
                                        and mark is not None and cmark.line != mark.line
                                        else "") + ")"
    return text
