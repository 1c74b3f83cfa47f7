"""Run the fake Kubernetes API server by hand: ``python -m tests.fakekube``.

Why: to poke at clusterdns's kubernetes source (or kubectl) against a known, scriptable
cluster without running one. It loads YAML dumps, listens, writes a kubeconfig and serves
until Ctrl-C. ``--tls`` makes a throwaway CA with ``trustme`` and trusts it in the
kubeconfig.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import ssl
import sys
import threading
from pathlib import Path
from types import FrameType

from .server import FakeKube


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tests.fakekube",
        description="Serve YAML dumps as a fake Kubernetes API (list/watch only).")
    p.add_argument("--load", action="append", type=Path, default=[], metavar="YAML",
                   help="multi-doc or 'kind: List' dump to load (repeatable)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=6443)
    p.add_argument("--kubeconfig", type=Path, default=Path("fakekube.kubeconfig"),
                   help="where to write the kubeconfig (default: %(default)s)")
    p.add_argument("--tls", action="store_true",
                   help="serve HTTPS with a CA made by trustme (pip install trustme)")
    p.add_argument("--token", default=None, help="require this bearer token")
    p.add_argument("--bookmark-interval", type=float, default=1.0, metavar="SECONDS")
    return p


def _tls_context(host: str, ca_path: Path) -> ssl.SSLContext:
    trustme = importlib.import_module("trustme")  # optional test dependency
    ca = trustme.CA()
    cert = ca.issue_cert(host, "localhost", "127.0.0.1")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    ca.cert_pem.write_to_path(str(ca_path))
    return ctx


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    ca_path: Path | None = None
    ssl_context: ssl.SSLContext | None = None
    if args.tls:
        ca_path = args.kubeconfig.with_name(args.kubeconfig.stem + "-ca.pem")
        try:
            ssl_context = _tls_context(args.host, ca_path)
        except ImportError:
            print("--tls needs trustme: pip install trustme", file=sys.stderr)
            return 2
    server = FakeKube(host=args.host, port=args.port, ssl_context=ssl_context,
                      token=args.token, bookmark_interval=args.bookmark_interval)
    for path in args.load:
        print(f"loaded {server.load_yaml(path)} objects from {path}")
    try:
        server.start()
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    kubeconfig = server.write_kubeconfig(args.kubeconfig, ca_path=ca_path)
    print(f"fake Kubernetes API at {server.url} (resourceVersion {server.resource_version})")
    print(f"kubeconfig written to {kubeconfig}")
    if ca_path is not None:
        print(f"CA certificate written to {ca_path}")
    print("try:")
    print(f"  clusterdns serve --source kubernetes --kubeconfig {kubeconfig} "
          f"--listen 127.0.0.1:5353")
    print(f"  kubectl --kubeconfig {kubeconfig} get svc -A")
    print("Ctrl-C to stop.")

    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
