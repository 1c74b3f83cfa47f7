"""Command line: ``serve``, ``records`` and ``check-config``, with their exit codes.

Flags override the config file, which overrides the defaults. Exit codes: 0 success,
1 the server stopped because a task failed, 2 bad usage, bad config or a source that
cannot be read at start. ``clusterdns -conf FILE`` (CoreDNS's own command line, as
kubeadm's Deployment passes it) means ``clusterdns serve --corefile FILE``. With
``--workers N`` (N > 1) ``serve`` becomes the supervisor of N worker processes
(``clusterdns.workers``), which re-runs this same command line with hidden
``--worker-*`` flags for each worker.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from clusterdns import __version__, config, corefile, snapshot
from clusterdns.config import Config, ConfigError
from clusterdns.records import to_text
from clusterdns.source import KubeSourceError
from clusterdns.source.dump import SourceError, load_files

log = logging.getLogger("clusterdns")


# The built-in defaults, shown in --help; a config file or Corefile overrides them.
_D = Config()
_DEFAULTS_NOTE = ("Defaults shown are the built-in ones: a --config or --corefile file "
                  "overrides them, and flags override the file.")
_LOG_LEVELS = ["debug", "info", "warning", "error"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="YAML config file (flags override it)")
    p.add_argument("--corefile", type=Path, metavar="FILE",
                   help="CoreDNS Corefile to read instead of a YAML config (the subset "
                        "kubeadm/kind render; flags override it)")
    p.add_argument("--source", metavar="file:PATH[,PATH...]|kubernetes",
                   help=f"where the objects come from: dump files or the API server "
                        f"(default: {_D.source})")
    p.add_argument("--zone", action="append", default=None, metavar="ZONE",
                   help="zone to serve (repeat; the first forward zone is the cluster "
                        f"domain) (default: {', '.join(_D.zones)})")
    p.add_argument("--ttl", type=int, metavar="SECONDS",
                   help=f"TTL of every record (default: {_D.ttl})")
    p.add_argument("--pods", choices=[m.value for m in config.PodsMode],
                   help=f"pod records (default: {_D.pods.value})")
    p.add_argument("--namespaces", metavar="NS[,NS...]",
                   help="expose only these namespaces (default: every namespace)")
    p.add_argument("--endpoint-pod-names", action="store_true", default=None,
                   help="name endpoints without a hostname after their pod (default: off)")
    p.add_argument("--ignore-empty-service", action="store_true", default=None,
                   help="services without ready endpoints answer NXDOMAIN (default: off)")
    p.add_argument("--kubeconfig", metavar="PATH",
                   help="kubeconfig for --source kubernetes (default: $KUBECONFIG, "
                        "~/.kube/config, then the in-cluster service account)")
    p.add_argument("--context", metavar="NAME",
                   help="kubeconfig context (default: the current one)")
    p.add_argument("--labels", metavar="SELECTOR",
                   help="serve only services matching this label selector "
                        "(default: every service)")
    p.add_argument("--log-level", default="info", choices=_LOG_LEVELS,
                   help="log messages of this level and above (default: %(default)s)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="clusterdns", description="Authoritative DNS for Kubernetes cluster domains.",
        epilog="CoreDNS compatibility: 'clusterdns -conf FILE' is 'clusterdns serve "
               "--corefile FILE'.")
    p.add_argument("--version", action="version", version=f"clusterdns {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="answer DNS queries",
                           description=f"Answer DNS queries. {_DEFAULTS_NOTE}")
    _common(serve)
    serve.add_argument("--listen", action="append", default=None, metavar="HOST:PORT",
                       help="address to serve UDP and TCP on (repeat; [::1]:53 for IPv6) "
                            f"(default: {', '.join(str(a) for a in _D.listen)})")
    serve.add_argument("--upstream", action="append", default=None, metavar="ADDR|FILE",
                       help="forward other names here: IP[:PORT] or a resolv.conf path "
                            "(repeat) (default: none; other names are REFUSED)")
    serve.add_argument("--fallthrough", action="append", default=None, metavar="ZONE",
                       help="ask the upstreams instead of answering NXDOMAIN for names "
                            "in this zone (repeat) (default: none)")
    for name, default in (("health", _D.health), ("ready", _D.ready),
                          ("metrics", _D.metrics)):
        serve.add_argument(f"--{name}", metavar="ADDR",
                           help=f"HTTP /{name} address; empty: off (default: {default})")
    serve.add_argument("--lameduck", type=float, metavar="SECONDS",
                       help=f"keep answering this long after SIGTERM (default: "
                            f"{_D.lameduck:g})")
    serve.add_argument("--log-queries", action="store_true", default=None,
                       help="log every query (CoreDNS log format) to stdout (default: off)")
    serve.add_argument("--workers", type=int, metavar="N",
                       help="worker processes sharing the DNS port with SO_REUSEPORT, each "
                            f"with its own source and snapshot (default: {_D.workers})")
    # Set by the supervisor on the worker processes it starts (clusterdns.workers).
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--worker-pipe", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--worker-listen", action="append", default=None,
                       help=argparse.SUPPRESS)
    records = sub.add_parser("records", help="print every record served, as master-file text",
                             description="Print every record served, as master-file text. "
                                         f"{_DEFAULTS_NOTE}")
    _common(records)
    check = sub.add_parser("check-config", help="validate a config file and its source",
                           description="Validate a config file (YAML or Corefile) and load "
                                       "its file source, if it has one.")
    check.add_argument("file", type=Path,
                       help="YAML config, or a Corefile: when its name starts with "
                            "'Corefile', its first line opens a server block ('.:53 {') "
                            "or --corefile is given")
    check.add_argument("--corefile", action="store_true",
                       help="read FILE as a CoreDNS Corefile whatever its name and content "
                            "(default: off, decided by FILE's name and first line)")
    check.add_argument("--file-only", action="store_true",
                       help="check the file alone, without loading the kubeconfig the "
                            "kubernetes source would use (for a Corefile checked outside "
                            "the cluster it is meant for) (default: off)")
    check.add_argument("--log-level", default="warning", choices=_LOG_LEVELS,
                       help="log messages of this level and above (default: %(default)s)")
    return p


def build_config(args: argparse.Namespace) -> Config:
    """Defaults <- config file <- flags."""
    if args.config and args.corefile:
        raise ConfigError("", "--corefile", "give either --config or --corefile, not both")
    if args.corefile:
        cfg = _load_corefile(args.corefile)
    else:
        cfg = config.load(args.config) if args.config else Config()
    changes: dict[str, object] = {}
    if args.source:
        changes["source"] = config.parse_source(args.source, key="--source", base=Path.cwd())
    if args.zone:
        changes["zones"] = tuple(dict.fromkeys(config.parse_zone(z, key="--zone")
                                               for z in args.zone))
    if getattr(args, "listen", None):
        changes["listen"] = tuple(config.parse_listen(x, key="--listen") for x in args.listen)
    if args.ttl is not None:
        if not 0 <= args.ttl <= 3600:
            raise ConfigError("", "--ttl", f"{args.ttl}: expected a whole number from 0 to 3600")
        changes["ttl"] = args.ttl
    if args.pods:
        changes["pods"] = config.parse_pods(args.pods, key="--pods")
    if args.namespaces is not None:
        changes["namespaces"] = config.parse_namespaces(args.namespaces, key="--namespaces")
    if args.endpoint_pod_names:
        changes["endpoint_pod_names"] = True
    if args.ignore_empty_service:
        changes["ignore_empty_service"] = True
    if getattr(args, "upstream", None):
        changes["upstreams"] = tuple(config.parse_upstream(u, key="--upstream")
                                     for u in args.upstream)
    if getattr(args, "fallthrough", None):
        changes["fallthrough"] = frozenset(config.parse_zone(z, key="--fallthrough")
                                           for z in args.fallthrough)
    for key in ("health", "ready", "metrics"):
        if getattr(args, key, None) is not None:
            changes[key] = config.parse_endpoint(getattr(args, key), key=f"--{key}")
    if getattr(args, "lameduck", None) is not None:
        if not 0 <= args.lameduck <= 600:
            raise ConfigError("", "--lameduck", f"{args.lameduck}: expected 0 to 600 seconds")
        changes["lameduck"] = args.lameduck
    if getattr(args, "log_queries", None):
        changes["log_queries"] = True
    if getattr(args, "workers", None) is not None:
        if not 1 <= args.workers <= config.MAX_WORKERS:
            raise ConfigError("", "--workers", f"{args.workers}: expected a whole number from "
                                               f"1 to {config.MAX_WORKERS}")
        changes["workers"] = args.workers
    if getattr(args, "worker_listen", None):  # the supervisor's resolved addresses
        changes["listen"] = tuple(config.parse_listen(x, key="--worker-listen")
                                  for x in args.worker_listen)
    for key in ("kubeconfig", "context", "labels"):
        if getattr(args, key, None):
            changes[key] = getattr(args, key)
    cfg = cfg.replace(**changes)
    config.check_autopath(cfg, "", "--pods" if args.pods else "autopath")
    return cfg


def _records(cfg: Config) -> int:
    if cfg.source.kind == "file":
        result = load_files(cfg.source.paths)
        for warning in result.warnings:
            log.warning("%s", warning)
        cluster = result.cluster
    else:
        from clusterdns.source.kube import KubeSource

        # Its errors (no kubeconfig, a bad one, an API server that cannot be reached or
        # refuses) are one-line KubeSourceErrors naming the file or the server: exit 2.
        cluster = asyncio.run(KubeSource(cfg).list_once())
    snap = snapshot.build(cluster, cfg, serial=1)
    out = sys.stdout
    try:
        out.write(f"; clusterdns {__version__}: every record served from {cfg.source}\n")
        for rec in snap.records():
            out.write(to_text(rec) + "\n")
        out.flush()
    except BrokenPipeError:  # the reader stopped (`records | head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())  # so the interpreter's final flush cannot fail
        return 1
    return 0


def _reloading(args: argparse.Namespace) -> tuple[Callable[[], Config], list[Path]]:
    """How a reload re-reads the config (the file again, the same flags on top), and
    which files to watch for changes."""
    files = [f for f in (getattr(args, "config", None), getattr(args, "corefile", None)) if f]
    return (lambda: build_config(args)), files


def _load_corefile(path: Path) -> Config:
    """Read a Corefile, logging each of its warnings (unsupported plugins and options)."""
    cfg, warnings = corefile.load(path)
    for warning in warnings:
        log.warning("%s", warning)
    return cfg


def _check(path: Path, is_corefile: bool = False, file_only: bool = False) -> int:
    if is_corefile or corefile.looks_like_corefile(path):
        cfg, warnings = corefile.load(path)
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
    else:
        try:
            cfg = config.load(path)
        except ConfigError as exc:
            if exc.key not in ("(syntax)", "(top level)") or path.suffix in (".yaml", ".yml"):
                raise
            raise ConfigError(exc.where, exc.key, f"{exc.problem} (if it is a Corefile: "
                                                  f"clusterdns check-config --corefile "
                                                  f"{path})") from None
    multicluster = (f"; multicluster zones {', '.join(cfg.multicluster_zones)}"
                    if cfg.multicluster_zones else "")
    summary = (f"{path}: ok: zones {', '.join(cfg.zones)}{multicluster}; source {cfg.source}; "
               f"listen {', '.join(str(a) for a in cfg.listen)}")
    if cfg.source.kind == "file":
        result = load_files(cfg.source.paths)
        for warning in result.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        c = result.cluster
        summary += (f"; {len(c.namespaces)} namespaces, {len(c.services)} services, "
                    f"{len(c.endpoint_slices)} endpoint slices, {len(c.pods)} pods")
        if c.service_imports:
            summary += f", {len(c.service_imports)} service imports"
    elif file_only:
        summary += "; kubeconfig not checked (--file-only)"
    else:  # the kubeconfig (or in-cluster config) serve would use, loaded, not dialled
        from clusterdns.source.kube import KubeSource

        try:
            summary += "; " + asyncio.run(KubeSource(cfg).check())
        except KubeSourceError as exc:
            raise KubeSourceError(f"{path}: {exc} (to check the file alone: "
                                  f"clusterdns check-config --file-only {path})") from None
    print(summary)
    return 0


def coredns_argv(argv: Sequence[str]) -> list[str]:
    """CoreDNS's command line (``-conf FILE``, what kubeadm gives the container) as ours:
    ``serve --corefile FILE``; any other arguments are passed on to ``serve``."""
    argv = list(argv)
    if argv and argv[0].lstrip("-") == "conf" and argv[0].startswith("-"):
        if len(argv) < 2:
            return ["serve", "--corefile"]  # argparse reports the missing value
        return ["serve", "--corefile", argv[1], *argv[2:]]
    if argv and argv[0].startswith(("-conf=", "--conf=")):
        return ["serve", "--corefile", argv[0].split("=", 1)[1], *argv[1:]]
    return argv


_T = TypeVar("_T")


def _run(main: Coroutine[Any, Any, _T]) -> _T:
    """Run on uvloop when it is installed, on plain asyncio otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main(argv: Sequence[str] | None = None) -> int:
    argv = coredns_argv(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    worker = getattr(args, "worker_index", None)
    who = "" if worker is None else f" [worker {worker}]"
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s %(name)s{who}: %(message)s")
    try:
        if args.command == "check-config":
            return _check(args.file, args.corefile, args.file_only)
        cfg = build_config(args)
        if args.command == "records":
            return _records(cfg)
        from clusterdns import app, workers

        if worker is None and cfg.workers > 1:
            return _run(workers.supervise(cfg, argv))
        if args.worker_pipe is not None:
            workers.stop_with_supervisor(args.worker_pipe)
        return _run(app.run(cfg, *_reloading(args)))
    except (ConfigError, SourceError, KubeSourceError) as exc:
        print(f"clusterdns: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
