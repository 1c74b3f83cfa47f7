"""Read the CoreDNS Corefile that kubeadm and kind render into our ``Config``.

Why: clusterdns is a drop-in for CoreDNS in small clusters, and the Deployment kubeadm
makes runs ``-conf /etc/coredns/Corefile`` with a ConfigMap it wrote. This module turns
that file (the subset kubeadm/kind use plus what people commonly add) into the same
frozen ``Config`` the YAML loader makes. It is pure: text in, ``(Config, warnings)`` out.
Plugins we do not implement become one warning each, naming the line; broken input
raises ``ConfigError`` whose ``where`` is ``<path>:<line>``.

Semantics follow CoreDNS where they map onto ours: an absent ``health``/``ready``/
``prometheus`` turns that endpoint off, an absent ``loop`` turns loop detection off, an
absent ``reload`` means SIGHUP only, an absent ``cache`` turns the forward cache off,
an absent ``forward`` means no upstreams. Only one server block is accepted: a second
one (a stub domain) is an error, because dropping it would silently change answers.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clusterdns import config, names
from clusterdns.config import Config, ConfigError, ListenAddr, SourceSpec

log = logging.getLogger("clusterdns.corefile")

# CoreDNS defaults for a plugin given without an address.
DEFAULT_HEALTH = ListenAddr("0.0.0.0", 8080)
DEFAULT_READY = ListenAddr("0.0.0.0", 8181)
DEFAULT_METRICS = ListenAddr("127.0.0.1", 9153)  # CoreDNS: localhost:9153
DEFAULT_RELOAD = 30.0  # seconds
DEFAULT_SERVE_STALE = 3600.0
CACHE_CAPACITY = 9984  # CoreDNS's default per cache (success and denial)
CACHE_MIN_TTL = 5  # CoreDNS's default minimum TTL of both caches


# A server block's opening line: one or more keys (``.:53``, ``cluster.local:53``,
# ``dns://.:53``, ``10.0.0.0/8``), separated by spaces or commas, then ``{``. A YAML key
# ends with ':' and a YAML list item starts with '-', so neither matches.
_SERVER_KEY = r"(?:dns://)?[\w.\-*\[\]/]*[\w.*\]](?::\d+)?"
_SERVER_BLOCK_LINE = re.compile(rf"{_SERVER_KEY}(?:[\s,]+{_SERVER_KEY})*\s*\{{\s*(?:#.*)?")


def looks_like_corefile(path: Path) -> bool:
    """Whether a config file is a Corefile: by its name (``Corefile``, ``Corefile.kind``)
    or, whatever its name, by its first line that is not blank or a comment opening a
    server block (``.:53 {``, ``cluster.local:53 {``)."""
    if path.name.startswith("Corefile"):
        return True
    try:
        with path.open(encoding="utf-8", errors="replace") as file:
            for line in file:
                text = line.strip()
                if text and not text.startswith("#"):
                    return is_server_block_line(text)
    except OSError:
        return False  # the YAML loader says why it cannot be read
    return False


def is_server_block_line(line: str) -> bool:
    """Whether one line of text opens a Corefile server block (``.:53 {``)."""
    return _SERVER_BLOCK_LINE.fullmatch(line.strip()) is not None


def load(path: Path) -> tuple[Config, list[str]]:
    """Read a Corefile; relative paths in it are taken from the file's directory."""
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(where, "(file)", f"cannot read: {exc.strerror or exc}") from None
    return parse(text, where, base=path.parent)


def parse(text: str, where: str = "Corefile", *, base: Path | None = None,
          env: Mapping[str, str] | None = None) -> tuple[Config, list[str]]:
    """Corefile text -> (Config, warnings). ``env`` fills ``{$VAR}`` (default os.environ)."""
    warnings: list[str] = []
    text = _substitute(text, where, os.environ if env is None else env, warnings)
    tokens = _tokenize(text, where)
    blocks = _Parser(tokens, where, warnings).server_blocks()
    if not blocks:
        raise ConfigError(f"{where}:1", "(server block)", "no server block (expected .:53 { ... })")
    if len(blocks) > 1:
        extra = blocks[1]
        raise ConfigError(
            f"{where}:{extra.line}", "(server block)",
            f"a second server block ({' '.join(extra.keys)}) is not supported: clusterdns "
            f"serves one block (the first is at line {blocks[0].line}); merge it or "
            "remove it")
    cfg = _Builder(where, base, warnings).build(blocks[0])
    return cfg, warnings


# ------------------------------------------------------------------------------ lexing


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    line: int
    quoted: bool = False

    def is_brace(self, brace: str) -> bool:
        return not self.quoted and self.text == brace


@dataclass(frozen=True, slots=True)
class Directive:
    name: str
    args: tuple[str, ...]
    line: int
    block: tuple[Directive, ...] | None  # None: written without { }


@dataclass(frozen=True, slots=True)
class ServerBlock:
    keys: tuple[str, ...]
    line: int
    body: tuple[Directive, ...]


_ENV = re.compile(r"\{\$([A-Za-z_][A-Za-z0-9_]*)\}|\{%([A-Za-z_][A-Za-z0-9_]*)%\}")


def _substitute(text: str, where: str, env: Mapping[str, str], warnings: list[str]) -> str:
    """``{$VAR}`` (and ``{%VAR%}``) -> the variable's value, line by line, as CoreDNS does."""
    out: list[str] = []
    for number, line in enumerate(text.split("\n"), start=1):
        def value(match: re.Match[str], number: int = number) -> str:
            var = match.group(1) or match.group(2)
            if var not in env:
                warnings.append(f"{where}:{number}: environment variable {var} is not set; "
                                "using an empty value")
                return ""
            return env[var].replace("\n", " ")
        out.append(_ENV.sub(value, line))
    return "\n".join(out)


def _tokenize(text: str, where: str) -> list[Token]:
    """Caddyfile words: whitespace separates, ``"..."`` quotes (``\\"`` escapes), ``#``
    at the start of a word comments out the rest of the line."""
    tokens: list[Token] = []
    i, n, line = 0, len(text), 1
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
            i += 1
        elif ch.isspace():
            i += 1
        elif ch == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif ch == '"':
            start_line, i, buf = line, i + 1, []
            while True:
                if i >= n:
                    raise ConfigError(f"{where}:{start_line}", "(syntax)",
                                      "a quoted string is never closed")
                c = text[i]
                if c == "\\" and i + 1 < n and text[i + 1] in '"\\':
                    buf.append(text[i + 1])
                    i += 2
                    continue
                if c == '"':
                    i += 1
                    break
                if c == "\n":
                    line += 1
                buf.append(c)
                i += 1
            tokens.append(Token("".join(buf), start_line, quoted=True))
        else:
            start = i
            while i < n and not text[i].isspace():
                i += 1
            tokens.append(Token(text[start:i], line))
    return tokens


class _Parser:
    """Tokens -> server blocks of directives (each with optional nested block)."""

    def __init__(self, tokens: list[Token], where: str, warnings: list[str]) -> None:
        self.t = tokens
        self.i = 0
        self.where = where
        self.warnings = warnings

    def _at(self, line: int) -> str:
        return f"{self.where}:{line}"

    def _line_words(self) -> list[Token]:
        """Tokens from here to the end of the line, stopping before a brace."""
        first = self.t[self.i]
        words: list[Token] = []
        while (self.i < len(self.t) and self.t[self.i].line == first.line
               and not self.t[self.i].is_brace("{") and not self.t[self.i].is_brace("}")):
            words.append(self.t[self.i])
            self.i += 1
        return words

    def _opens_block(self) -> bool:
        return self.i < len(self.t) and self.t[self.i].is_brace("{")

    def server_blocks(self) -> list[ServerBlock]:
        blocks: list[ServerBlock] = []
        while self.i < len(self.t):
            tok = self.t[self.i]
            if tok.is_brace("{") or tok.is_brace("}"):
                raise ConfigError(self._at(tok.line), "(syntax)",
                                  f"unexpected {tok.text!r} (unbalanced braces)")
            keys = self._line_words()
            # Keys may continue on the next line after a trailing comma.
            while keys[-1].text.endswith(",") and self.i < len(self.t) \
                    and not self._opens_block():
                more = self._line_words()
                if not more:
                    break
                keys += more
            key_texts = tuple(k for tok in keys for k in tok.text.split(",") if k)
            if key_texts[0] == "import":
                self.warnings.append(f"{self._at(tok.line)}: import: not supported; ignored "
                                     f"({' '.join(key_texts[1:])})")
                continue
            if self._opens_block():
                self.i += 1
                body = self._body(tok.line, closed=True)
            elif not blocks:  # a single server block may omit its braces
                body = self._body(tok.line, closed=False)
            else:
                raise ConfigError(self._at(tok.line), "(syntax)",
                                  f"server block {' '.join(key_texts)} needs {{ ... }}")
            if key_texts[0].startswith("(") and key_texts[0].endswith(")"):
                self.warnings.append(f"{self._at(tok.line)}: snippet {key_texts[0]}: "
                                     "snippets are not supported; ignored")
                continue
            blocks.append(ServerBlock(key_texts, tok.line, body))
        return blocks

    def _body(self, opened_at: int, *, closed: bool) -> tuple[Directive, ...]:
        out: list[Directive] = []
        while self.i < len(self.t):
            tok = self.t[self.i]
            if tok.is_brace("}"):
                if not closed:
                    raise ConfigError(self._at(tok.line), "(syntax)",
                                      "unexpected '}' (unbalanced braces)")
                self.i += 1
                return tuple(out)
            if tok.is_brace("{"):
                raise ConfigError(self._at(tok.line), "(syntax)",
                                  "unexpected '{' (a block must follow a directive)")
            words = self._line_words()
            block: tuple[Directive, ...] | None = None
            if self._opens_block():  # on the same line or at the start of the next
                self.i += 1
                block = self._body(tok.line, closed=True)
            out.append(Directive(words[0].text, tuple(w.text for w in words[1:]),
                                 tok.line, block))
        if closed:
            raise ConfigError(self._at(opened_at), "(syntax)",
                              "unbalanced braces: the '{' opened on this line is never closed")
        return tuple(out)


# -------------------------------------------------------------------------- meaning

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """A Go duration (``5s``, ``1m30s``, ``500ms``) in seconds; None if it is not one."""
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION.match(text, pos)
        if m is None:
            return None
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total if text else None


def reverse_zone_of_cidr(text: str) -> str | None:
    """``10.0.0.0/8`` -> ``10.in-addr.arpa``; None if not a CIDR on a label boundary."""
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    step = 8 if net.version == 4 else 4
    if net.prefixlen % step:
        return None
    labels = net.network_address.reverse_pointer.split(".")
    host_labels = (net.max_prefixlen - net.prefixlen) // step
    return ".".join(labels[host_labels:])


class _Builder:
    """One server block's directives -> Config field changes (plus warnings)."""

    def __init__(self, where: str, base: Path | None, warnings: list[str]) -> None:
        self.where = where
        self.base = base
        self.warnings = warnings
        self.seen: dict[str, int] = {}
        self.changes: dict[str, Any] = {}
        self.fallthrough_all = False  # ``fallthrough`` without zones: every zone of ours
        self.binds: tuple[str, ...] = ()  # ``bind`` addresses
        self.disabled: list[tuple[int, str, str]] = []  # cache ``disable``: line, key, zone
        self.autopath_zones: tuple[str, ...] = ()  # ``autopath ZONE... @kubernetes``
        # Multicluster zones (SPEC S7): (line, zones) of the kubernetes plugin's
        # ``multicluster`` option, those of the ``multicluster`` plugin, and the zones
        # the latter's ``fallthrough`` names.
        self.kube_multicluster: tuple[int, tuple[str, ...]] | None = None
        self.plugin_multicluster: tuple[int, tuple[str, ...]] | None = None
        self.multicluster_fallthrough: frozenset[str] = frozenset()

    # helpers
    def at(self, line: int) -> str:
        return f"{self.where}:{line}"

    def warn(self, line: int, key: str, problem: str) -> None:
        self.warnings.append(f"{self.at(line)}: {key}: {problem}")

    def fail(self, line: int, key: str, problem: str) -> ConfigError:
        return ConfigError(self.at(line), key, problem)

    def nargs(self, d: Directive, key: str, low: int, high: int | None) -> tuple[str, ...]:
        count = len(d.args)
        if count < low:
            raise self.fail(d.line, key, "missing argument" + ("s" if low - count > 1 else ""))
        if high is not None and count > high:
            if high == 0:
                raise self.fail(d.line, key, f"takes no arguments (got {' '.join(d.args)!r})")
            raise self.fail(d.line, key, f"too many arguments: {' '.join(d.args)!r} "
                                         f"(at most {high})")
        return d.args

    def no_block(self, d: Directive, key: str) -> None:
        if d.block is not None:
            raise self.fail(d.line, key, "takes no { } block")

    def integer(self, text: str, line: int, key: str, low: int, high: int) -> int:
        if not re.fullmatch(r"\d+", text) or not low <= int(text) <= high:
            raise self.fail(line, key, f"{text!r}: expected a whole number from {low} to {high}")
        return int(text)

    def duration(self, text: str, line: int, key: str, high: float) -> float:
        value = parse_duration(text)
        if value is None or value > high:
            raise self.fail(line, key, f"{text!r}: expected a duration such as 5s, 1m or 1h "
                                       f"(at most {high:g} s)")
        return value

    def address(self, text: str, line: int, key: str) -> ListenAddr:
        try:
            return config.parse_listen(text, key=key)
        except ConfigError as exc:
            raise self.fail(line, key, exc.problem) from None

    def zone(self, text: str, line: int, key: str) -> str:
        if "/" in text:
            rev = reverse_zone_of_cidr(text)
            if rev is None:
                raise self.fail(line, key, f"{text!r}: a CIDR zone must end on an octet "
                                           "(IPv4) or nibble (IPv6) boundary")
            return rev
        if text == ".":
            return "."
        try:
            return config.parse_zone(text, key=key)
        except ConfigError as exc:
            raise self.fail(line, key, exc.problem) from None

    # the block
    def build(self, block: ServerBlock) -> Config:
        port, key_zones = self.server_keys(block)
        handlers: dict[str, Callable[[Directive], None]] = {
            "errors": lambda d: None,
            "health": self.health,
            "ready": self.ready,
            "prometheus": self.prometheus,
            "kubernetes": self.kubernetes,
            "autopath": self.autopath,
            "multicluster": lambda d: self.multicluster(d, key_zones),
            "forward": self.forward,
            "cache": self.cache,
            "loop": self.loop,
            "reload": self.reload,
            "loadbalance": self.loadbalance,
            "log": self.log_,
            "bind": self.bind,
            "transfer": lambda d: self.transfer(d, key_zones),
        }
        once = set(handlers) - {"errors", "log"}
        self.changes.update(health=None, ready=None, metrics=None, lameduck=0.0,
                            loop_detect=False, reload=0.0, upstreams=(), cache_size=0,
                            serve_stale=0.0, log_queries=False)
        for d in block.body:
            if d.name == "import":
                self.warn(d.line, "import", f"not supported; ignored ({' '.join(d.args)})")
                continue
            handler = handlers.get(d.name)
            if handler is None:
                self.warn(d.line, d.name, "plugin not supported by clusterdns; ignored")
                continue
            if d.name in once and d.name in self.seen:
                raise self.fail(d.line, d.name,
                                f"given twice (first at line {self.seen[d.name]})")
            self.seen.setdefault(d.name, d.line)
            handler(d)
        if "kubernetes" not in self.seen:
            raise self.fail(block.line, "kubernetes",
                            "the server block has no kubernetes directive; clusterdns serves "
                            "a cluster domain (add: kubernetes cluster.local in-addr.arpa "
                            "ip6.arpa)")
        zones = self.changes.get("zones")
        if zones is None:  # ``kubernetes`` without zones: the server block's zones
            zones = tuple(z for z in key_zones if z != ".")
            if not zones:
                self.warn(self.seen["kubernetes"], "kubernetes",
                          "no zones given and the server block is '.': serving "
                          + ", ".join(config.DEFAULT_ZONES))
                zones = config.DEFAULT_ZONES
            self.changes["zones"] = zones
        if self.fallthrough_all:  # the multicluster zones the kubernetes plugin serves too
            self.multicluster_fallthrough |= frozenset(zones)
        zones = self.multicluster_settle(zones)
        if self.changes.get("autopath"):
            self.autopath_settle(zones)
        if self.fallthrough_all:
            self.changes["fallthrough"] = frozenset(zones)
        for line, key, zone in self.disabled:
            if any(names.is_subdomain(zone, own)
                   for own in (*zones, *self.changes.get("multicluster_zones", ()))):
                log.debug("%s: %s %s: satisfied by design (our own zones are never cached)",
                          self.at(line), key, zone)
            else:
                self.warn(line, key, f"{zone}: not supported for zones that are not ours; "
                                     "forwarded answers for it are still cached")
        others = [z for z in key_zones if z != "."]
        if others and self.changes["upstreams"]:
            self.warn(block.line, "(server block)",
                      f"zones {', '.join(others)}: clusterdns forwards every name outside "
                      "its kubernetes zones, not only names in the server block's zones")
        if self.multicluster_fallthrough & frozenset(self.changes.get("multicluster_zones", ())):
            self.changes["fallthrough"] = self.changes.get("fallthrough", frozenset()) | (
                self.multicluster_fallthrough & frozenset(self.changes["multicluster_zones"]))
        hosts = self.binds or ("0.0.0.0", "::")
        self.changes["listen"] = tuple(ListenAddr(h, port) for h in hosts)
        return Config(origin=self.where, source=SourceSpec("kubernetes")).replace(**self.changes)

    def server_keys(self, block: ServerBlock) -> tuple[int, tuple[str, ...]]:
        ports: set[int] = set()
        zones: list[str] = []
        for key in block.keys:
            text = key
            scheme, sep, rest = text.partition("://")
            if sep:
                if scheme != "dns":
                    raise self.fail(block.line, "(server block)",
                                    f"{key!r}: only plain DNS (dns://) is supported, "
                                    f"not {scheme}://")
                text = rest
            zone_text, sep, port_text = text.rpartition(":")
            if not sep:
                zone_text, port_text = text, "53"
            port = self.integer(port_text, block.line, "(server block)", 0, 65535)
            ports.add(port)
            zones.append(self.zone(zone_text or ".", block.line, "(server block)"))
        if len(ports) > 1:
            raise self.fail(block.line, "(server block)",
                            f"keys on different ports ({', '.join(block.keys)}); clusterdns "
                            "serves one port")
        return ports.pop(), tuple(dict.fromkeys(zones))

    def health(self, d: Directive) -> None:
        args = self.nargs(d, "health", 0, 1)
        self.changes["health"] = (self.address(args[0], d.line, "health") if args
                                  else DEFAULT_HEALTH)
        for opt in d.block or ():
            if opt.name == "lameduck":
                (value,) = self.nargs(opt, "health lameduck", 1, 1)
                self.changes["lameduck"] = self.duration(value, opt.line, "health lameduck", 600)
            else:
                self.warn(opt.line, f"health {opt.name}", "option not supported; ignored")

    def ready(self, d: Directive) -> None:
        args = self.nargs(d, "ready", 0, 1)
        self.no_block(d, "ready")
        self.changes["ready"] = self.address(args[0], d.line, "ready") if args else DEFAULT_READY

    def prometheus(self, d: Directive) -> None:
        args = self.nargs(d, "prometheus", 0, 1)
        self.no_block(d, "prometheus")
        self.changes["metrics"] = (self.address(args[0], d.line, "prometheus") if args
                                   else DEFAULT_METRICS)

    def kubernetes(self, d: Directive) -> None:
        if d.args:
            self.changes["zones"] = tuple(dict.fromkeys(
                self.zone(z, d.line, "kubernetes") for z in d.args))
        for opt in d.block or ():
            key = f"kubernetes {opt.name}"
            self.no_block(opt, key)
            if opt.name == "pods":
                (mode,) = self.nargs(opt, key, 1, 1)
                try:
                    self.changes["pods"] = config.parse_pods(mode, key=key)
                except ConfigError as exc:
                    raise self.fail(opt.line, key, exc.problem) from None
            elif opt.name == "fallthrough":
                if opt.args:
                    self.changes["fallthrough"] = frozenset(
                        self.zone(z, opt.line, key) for z in opt.args)
                else:
                    self.fallthrough_all = True
            elif opt.name == "ttl":
                (value,) = self.nargs(opt, key, 1, 1)
                self.changes["ttl"] = self.integer(value, opt.line, key, 0, 3600)
            elif opt.name == "namespaces":
                self.nargs(opt, key, 1, None)
                try:
                    self.changes["namespaces"] = config.parse_namespaces(list(opt.args),
                                                                         key=key)
                except ConfigError as exc:
                    raise self.fail(opt.line, key, exc.problem) from None
            elif opt.name == "endpoint_pod_names":
                self.nargs(opt, key, 0, 0)
                self.changes["endpoint_pod_names"] = True
            elif opt.name == "kubeconfig":
                path, *context = self.nargs(opt, key, 1, 2)
                if self.base is not None and not Path(path).is_absolute():
                    path = str(self.base / path)
                self.changes["kubeconfig"] = path
                self.changes["context"] = context[0] if context else ""
            elif opt.name == "labels":
                self.nargs(opt, key, 1, None)
                self.changes["labels"] = " ".join(opt.args)
            elif opt.name == "ignore":
                (what,) = self.nargs(opt, key, 1, 1)
                if what != "empty_service":
                    raise self.fail(opt.line, key, f"{what!r}: expected empty_service")
                self.changes["ignore_empty_service"] = True
            elif opt.name == "noendpoints":
                self.warn(opt.line, key, "not supported; endpoint records are still served")
            elif opt.name == "multicluster":
                # CoreDNS 1.12.2+: ``kubernetes cluster.local clusterset.local {
                # multicluster clusterset.local }``; the zones must be the plugin's too.
                self.nargs(opt, key, 1, None)
                self.kube_multicluster = (opt.line, tuple(dict.fromkeys(
                    self.zone(z, opt.line, key) for z in opt.args)))
            else:
                self.warn(opt.line, key, "option not supported by clusterdns; ignored")

    def multicluster(self, d: Directive, key_zones: tuple[str, ...]) -> None:
        """The external ``multicluster [ZONES...] { kubeconfig, noendpoints, fallthrough }``
        plugin (github.com/coredns/multicluster): its zones are the arguments, else the
        server block's. It shares the kubernetes plugin's connection here."""
        zones = tuple(dict.fromkeys(self.zone(z, d.line, "multicluster") for z in d.args))
        zones = zones or tuple(z for z in key_zones if z != ".")
        if not zones or "." in zones:
            raise self.fail(d.line, "multicluster", "needs the zone it serves, such as "
                                                    "'multicluster clusterset.local'")
        self.plugin_multicluster = (d.line, zones)
        for opt in d.block or ():
            key = f"multicluster {opt.name}"
            self.no_block(opt, key)
            if opt.name == "fallthrough":
                self.multicluster_fallthrough |= frozenset(
                    self.zone(z, opt.line, key) for z in opt.args) if opt.args else frozenset(
                    zones)
            elif opt.name == "kubeconfig":
                self.nargs(opt, key, 1, 2)
                self.warn(opt.line, key, "not supported: ServiceImports are watched through "
                                         "the kubernetes plugin's connection")
            elif opt.name == "noendpoints":
                self.nargs(opt, key, 0, 0)
                self.warn(opt.line, key, "not supported; endpoint records are still served")
            else:
                self.warn(opt.line, key, "option not supported by clusterdns; ignored")

    def multicluster_settle(self, zones: tuple[str, ...]) -> tuple[str, ...]:
        """Once the kubernetes zones are known: the multicluster zones (SPEC S7), taken
        out of the kubernetes zones where the kubernetes plugin's own ``multicluster``
        option named them (CoreDNS wants them there); the kubernetes zones left."""
        chosen: list[str] = []
        if self.kube_multicluster is not None:
            line, named = self.kube_multicluster
            for zone in named:
                if zone not in zones:
                    raise self.fail(line, "kubernetes multicluster",
                                    f"{zone} is not one of the kubernetes plugin's zones "
                                    f"({', '.join(zones)}); CoreDNS wants it there too "
                                    f"(kubernetes {' '.join((*zones, zone))} {{ ... }})")
            chosen += named
            zones = tuple(z for z in zones if z not in named)
            if not any(not names.is_reverse_zone(z) for z in zones):
                raise self.fail(line, "kubernetes multicluster",
                                "no cluster zone is left (such as cluster.local)")
            self.changes["zones"] = zones
        if self.plugin_multicluster is not None:
            line, named = self.plugin_multicluster
            for zone in named:
                if zone in zones:
                    raise self.fail(line, "multicluster",
                                    f"{zone} is a zone of the kubernetes plugin too: a zone "
                                    "serves either the cluster's services or its "
                                    "ServiceImports")
            chosen += named
        if chosen:
            chosen = list(dict.fromkeys(chosen))
            problem = config.multicluster_problem(zones, tuple(chosen))
            if problem:
                line = (self.kube_multicluster or self.plugin_multicluster or (0, ()))[0]
                raise self.fail(line, "multicluster", problem)
            self.changes["multicluster_zones"] = tuple(chosen)
        return zones

    def autopath(self, d: Directive) -> None:
        """``autopath [ZONE...] @kubernetes``: the search list of the pod that asks. The
        other form, ``autopath [ZONE...] RESOLV-CONF``, walks one search list for every
        client (and only for names under its first domain): not what a cluster's pods
        have, so it is ignored with a warning."""
        *zones, source = self.nargs(d, "autopath", 1, None)
        self.no_block(d, "autopath")
        if source != "@kubernetes":
            self.warn(d.line, "autopath", f"{source}: only 'autopath @kubernetes' (each "
                                          "pod's own search list) is supported, not one "
                                          "search list for every client; ignored")
            return
        self.changes["autopath"] = True
        self.autopath_zones = tuple(dict.fromkeys(self.zone(z, d.line, "autopath")
                                                  for z in zones))

    def autopath_settle(self, zones: tuple[str, ...]) -> None:
        """Once the kubernetes zones are known: autopath's own zones among them, and the
        ``pods verified`` it needs (CoreDNS's ``@kubernetes`` needs it too)."""
        line = self.seen["autopath"]
        if "pods" not in self.changes or self.changes["pods"] is not config.PodsMode.VERIFIED:
            mode = self.changes.get("pods", config.PodsMode.DISABLED).value
            raise self.fail(line, "autopath", "@kubernetes needs 'pods verified' in the "
                                              "kubernetes block (the pods watch tells which "
                                              f"pod asks), not pods {mode}")
        forward = tuple(z for z in zones if not names.is_reverse_zone(z))
        given = self.autopath_zones
        if not given or "." in given:
            return  # every forward zone of ours
        kept = tuple(z for z in given if z in forward)
        for zone in given:
            if zone not in kept:
                self.warn(line, "autopath", f"{zone}: not a forward zone of the kubernetes "
                                            f"plugin ({', '.join(forward)}); ignored")
        if kept:
            self.changes["autopath_zones"] = kept
        else:
            self.warn(line, "autopath", "none of its zones is served; autopath is off")
            self.changes["autopath"] = False

    def forward(self, d: Directive) -> None:
        frm, *to = self.nargs(d, "forward", 2, None)
        if self.zone(frm, d.line, "forward") != ".":
            self.warn(d.line, "forward", f"forwarding only {frm} is not supported (only "
                                         "'forward . ...'); ignored")
            self.seen.pop("forward", None)
            return
        upstreams: list[str] = []
        for target in to:
            scheme, sep, rest = target.partition("://")
            if sep:
                if scheme != "dns":
                    raise self.fail(d.line, "forward",
                                    f"{target!r}: only plain DNS upstreams are supported, "
                                    f"not {scheme}://")
                target = rest
            try:
                upstreams.append(config.parse_upstream(target, key="forward"))
            except ConfigError as exc:
                raise self.fail(d.line, "forward", exc.problem) from None
        self.changes["upstreams"] = tuple(upstreams)
        for opt in d.block or ():
            key = f"forward {opt.name}"
            if opt.name == "max_concurrent":
                (value,) = self.nargs(opt, key, 1, 1)
                self.changes["forward_max_concurrent"] = self.integer(
                    value, opt.line, key, 1, 1_000_000)
            elif opt.name == "max_fails":
                (value,) = self.nargs(opt, key, 1, 1)
                self.changes["forward_max_fails"] = self.integer(value, opt.line, key, 0, 1000)
            elif opt.name == "health_check":
                value, *extra = self.nargs(opt, key, 1, None)
                self.changes["forward_health_check"] = self.duration(value, opt.line, key, 3600)
                if extra:
                    self.warn(opt.line, key, f"{' '.join(extra)}: not supported; the health "
                                             "check asks '. IN NS' with recursion desired")
                if self.changes["forward_health_check"] <= 0:
                    raise self.fail(opt.line, key, f"{value!r}: expected a positive duration")
            elif opt.name == "policy":
                (value,) = self.nargs(opt, key, 1, 1)
                if value not in config.FORWARD_POLICIES:
                    raise self.fail(opt.line, key, f"{value!r}: expected one of "
                                                   f"{', '.join(config.FORWARD_POLICIES)}")
                self.changes["forward_policy"] = value
            elif opt.name == "expire":
                (value,) = self.nargs(opt, key, 1, 1)
                self.changes["forward_expire"] = self.duration(value, opt.line, key, 3600)
            elif opt.name in ("force_tcp", "prefer_udp"):
                self.nargs(opt, key, 0, 0)
                self.changes[f"forward_{opt.name}"] = True
            else:
                self.warn(opt.line, key, "option not supported by clusterdns; ignored")
        if self.changes.get("forward_force_tcp") and self.changes.get("forward_prefer_udp"):
            self.warn(d.line, "forward", "force_tcp and prefer_udp together: force_tcp wins")
            self.changes["forward_prefer_udp"] = False

    def cache(self, d: Directive) -> None:
        args = list(d.args)
        ttl_cap: int | None = None
        if args and args[0].isdigit():
            ttl_cap = self.integer(args.pop(0), d.line, "cache", 0, 86400)
        zones = [self.zone(z, d.line, "cache") for z in args]
        if any(z != "." for z in zones):
            self.warn(d.line, "cache", "zones ignored: clusterdns caches every forwarded "
                                       "answer and never its own zones")
        success_ttl = denial_ttl = ttl_cap
        success_cap = denial_cap = CACHE_CAPACITY
        success_min = denial_min = CACHE_MIN_TTL
        serve_stale = 0.0
        for opt in d.block or ():
            key = f"cache {opt.name}"
            if opt.name in ("success", "denial"):
                cap_text, *rest = self.nargs(opt, key, 1, 3)
                cap = self.integer(cap_text, opt.line, key, 0, 10_000_000)
                ttl = self.integer(rest[0], opt.line, key, 0, 86400) if rest else None
                floor = self.integer(rest[1], opt.line, key, 0, 86400) if len(rest) > 1 else None
                if opt.name == "success":
                    success_cap, success_ttl = cap, ttl if ttl is not None else success_ttl
                    success_min = floor if floor is not None else success_min
                else:
                    denial_cap, denial_ttl = cap, ttl if ttl is not None else denial_ttl
                    denial_min = floor if floor is not None else denial_min
            elif opt.name == "prefetch":
                self.prefetch(opt, key)
            elif opt.name == "disable":
                kind, *disabled = self.nargs(opt, key, 1, None)
                if kind not in ("success", "denial"):
                    raise self.fail(opt.line, key, f"{kind!r}: expected success or denial")
                self.disabled += [(opt.line, key, self.zone(z, opt.line, key))
                                  for z in disabled]
            elif opt.name == "serve_stale":
                args_ = self.nargs(opt, key, 0, 2)
                serve_stale = (self.duration(args_[0], opt.line, key, 7 * 86400) if args_
                               else DEFAULT_SERVE_STALE)
                if len(args_) > 1 and args_[1] != "immediate":
                    self.warn(opt.line, key, f"{args_[1]}: refresh mode not supported; "
                                             "stale answers are served immediately")
            else:
                self.warn(opt.line, key, "option not supported by clusterdns; ignored")
        self.changes["cache_size"] = success_cap
        self.changes["cache_negative_size"] = denial_cap
        if success_ttl is not None:
            self.changes["cache_ttl"] = success_ttl
        if denial_ttl is not None:
            self.changes["cache_negative_ttl"] = denial_ttl
        self.changes["cache_min_ttl"] = success_min
        self.changes["cache_negative_min_ttl"] = denial_min
        self.changes["serve_stale"] = serve_stale

    def prefetch(self, opt: Directive, key: str) -> None:
        """``prefetch AMOUNT [[DURATION] [PERCENTAGE%]]``: CoreDNS's defaults are 1, 1m
        and 10%; the percentage must be from 10 to 90."""
        args = list(self.nargs(opt, key, 1, 3))
        self.changes["cache_prefetch"] = self.integer(args.pop(0), opt.line, key, 1, 1_000_000)
        if args and not args[0].endswith("%"):
            window = self.duration(args.pop(0), opt.line, key, 86400)
            if window < 1:
                raise self.fail(opt.line, key, f"{window:g} s: the duration must be at least 1s")
            self.changes["cache_prefetch_window"] = window
        if args:
            text = args.pop(0)
            percent = self.integer(text[:-1], opt.line, key, 10, 90) if text.endswith(
                "%") else None
            if percent is None or args:
                raise self.fail(opt.line, key, f"{text!r}: expected a percentage such as 10%")
            self.changes["cache_prefetch_percentage"] = percent

    def loop(self, d: Directive) -> None:
        self.nargs(d, "loop", 0, 0)
        self.no_block(d, "loop")
        self.changes["loop_detect"] = True

    def reload(self, d: Directive) -> None:
        args = self.nargs(d, "reload", 0, 2)
        self.no_block(d, "reload")
        self.changes["reload"] = (self.duration(args[0], d.line, "reload", 3600) if args
                                  else DEFAULT_RELOAD)
        if len(args) > 1:
            self.warn(d.line, "reload", "jitter not supported; ignored")

    def loadbalance(self, d: Directive) -> None:
        args = self.nargs(d, "loadbalance", 0, 1)
        if args and args[0] != "round_robin":
            self.warn(d.line, "loadbalance", f"policy {args[0]} not supported; ignored")

    def log_(self, d: Directive) -> None:
        self.changes["log_queries"] = True
        if (d.args and d.args != (".",)) or d.block:
            self.warn(d.line, "log", "names, format and classes not supported: every "
                                     "query is logged")

    def bind(self, d: Directive) -> None:
        self.nargs(d, "bind", 1, None)
        self.no_block(d, "bind")
        hosts: list[str] = []
        for text in d.args:
            try:
                hosts.append(str(ipaddress.ip_address(text)))
            except ValueError:
                raise self.fail(d.line, "bind", f"{text!r}: expected an IP address "
                                                "(interface names are not supported)") from None
        self.binds = tuple(dict.fromkeys(hosts))

    def transfer(self, d: Directive, key_zones: tuple[str, ...]) -> None:
        """``transfer [ZONES...] { to ADDRESS... }``: zone transfers to those clients
        (``*``: anyone; a CIDR network is our extension) of those zones, else of the
        server block's (every zone of ours for ``.``). CoreDNS also sends NOTIFY to the
        ``to`` addresses, to their port, from the ``source`` address; clusterdns sends no
        NOTIFY, so a port and ``source`` change nothing here."""
        zones = [self.zone(z, d.line, "transfer") for z in d.args] or list(key_zones)
        peers: list[str] = []
        for opt in d.block or ():
            key = f"transfer {opt.name}"
            self.no_block(opt, key)
            if opt.name == "to":
                peers += [self.transfer_peer(text, opt.line, key)
                          for text in self.nargs(opt, key, 1, None)]
            elif opt.name == "source":
                (value,) = self.nargs(opt, key, 1, 1)
                try:
                    ipaddress.ip_address(value)
                except ValueError:
                    raise self.fail(opt.line, key, f"{value!r}: expected an IP address") \
                        from None
            else:
                self.warn(opt.line, key, "option not supported by clusterdns; ignored")
        if not peers:
            raise self.fail(d.line, "transfer", "needs 'to ADDRESS...' (or 'to *') in its "
                                                "{ } block")
        self.changes["transfer_to"] = tuple(dict.fromkeys(peers))
        self.changes["transfer_zones"] = tuple(dict.fromkeys(z for z in zones if z != "."))

    def transfer_peer(self, text: str, line: int, key: str) -> str:
        """``*``, an IP address or CIDR network, or ``IP:PORT`` / ``[V6]:PORT`` (the port
        is where CoreDNS would send NOTIFY)."""
        try:
            return config.parse_transfer_peer(text, key=key)
        except ConfigError as exc:
            problem = exc.problem
        try:
            return config.parse_transfer_peer(config.parse_listen(text, key=key).host, key=key)
        except ConfigError:
            raise self.fail(line, key, problem) from None
