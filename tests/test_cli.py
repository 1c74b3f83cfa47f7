"""The command line, run as a user runs it: ``python -m clusterdns ...`` in the repo root.

``records`` prints every served record as master-file text (and the server answers
exactly those), ``check-config`` validates a file, bad input exits 2 with a message that
names the file and the key, flags override the config file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from clusterdns import __version__, cli, config
from conftest import ROOT, RunningServer, free_port

DEMO_CONFIG = ROOT / "config" / "demo.yaml"
TIMEOUT = 20.0


def run(*args: str, timeout: float = TIMEOUT,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clusterdns", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env=env)


@dataclass(frozen=True)
class Line:
    """One record line of ``clusterdns records``, parsed by dnspython."""

    text: str
    rrset: dns.rrset.RRset

    @property
    def key(self) -> tuple[str, str]:
        return (self.rrset.name.to_text().lower(), dns.rdatatype.to_text(self.rrset.rdtype))

    @property
    def rdata(self) -> str:
        (rd,) = self.rrset
        return str(rd.to_text())


def parse_records(stdout: str) -> list[Line]:
    """Every record line as an RRset of one record; comments and blank lines skipped."""
    lines: list[Line] = []
    for text in stdout.splitlines():
        if not text.strip() or text.startswith(";"):
            continue
        fields = text.split(None, 4)
        assert len(fields) == 5, f"not NAME TTL CLASS TYPE RDATA: {text!r}"
        name, ttl, rdclass, rdtype, rdata = fields
        assert rdclass == "IN", text
        assert name.endswith("."), f"owner is not absolute: {text!r}"
        rrset = dns.rrset.from_text(name, int(ttl), rdclass, rdtype, rdata)
        assert len(rrset) == 1, text
        lines.append(Line(text, rrset))
    return lines


def normalised(text: str) -> str:
    """A record line in dnspython's canonical text form, for comparing."""
    name, ttl, rdclass, rdtype, rdata = text.split(None, 4)
    return str(dns.rrset.from_text(name, int(ttl), rdclass, rdtype, rdata).to_text())


@pytest.fixture(scope="module")
def demo_records() -> list[Line]:
    result = run("records", "--config", str(DEMO_CONFIG.relative_to(ROOT)))
    assert result.returncode == 0, result.stderr
    return parse_records(result.stdout)


# ----------------------------------------------------------------------------- records


@pytest.mark.parametrize("expected", [
    "httpenv.default.svc.cluster.local. 5 IN A 10.108.189.10",
    "cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. "
    "1 7200 1800 86400 5",
    "cluster.local. 5 IN NS ns.dns.cluster.local.",
    "rabbitmq-0.rabbitmq.default.svc.cluster.local. 5 IN A 10.244.1.31",
    "_amqp._tcp.rabbitmq.default.svc.cluster.local. 5 IN SRV "
    "0 33 5672 rabbitmq-0.rabbitmq.default.svc.cluster.local.",
    "_http._tcp.web.default.svc.cluster.local. 5 IN SRV 0 100 8080 web.default.svc.cluster.local.",
    "10.189.108.10.in-addr.arpa. 5 IN PTR httpenv.default.svc.cluster.local.",
    "31.1.244.10.in-addr.arpa. 5 IN PTR rabbitmq-0.rabbitmq.default.svc.cluster.local.",
    "httpbin.default.svc.cluster.local. 5 IN CNAME httpbin.org.",
    "queue.default.svc.cluster.local. 5 IN CNAME rabbitmq.default.svc.cluster.local.",
    "dual.default.svc.cluster.local. 5 IN AAAA fd00:10:96::7c5",
    'dns-version.cluster.local. 5 IN TXT "1.1.0"',
])
def test_records_prints_the_expected_demo_records(demo_records: list[Line],
                                                  expected: str) -> None:
    printed = {normalised(line.text) for line in demo_records}
    assert normalised(expected) in printed


def test_records_prints_one_valid_line_per_record_and_nothing_twice(
        demo_records: list[Line]) -> None:
    texts = [normalised(line.text) for line in demo_records]
    assert len(texts) == len(set(texts)), "a record is printed twice"
    assert len(texts) > 100
    # Nothing that is not ready or not served: the not-ready web-headless endpoint, the
    # empty headless service.
    owners = {line.key[0] for line in demo_records}
    assert "empty-headless.default.svc.cluster.local." not in owners
    assert not any("10.244.1.53" in line.text or "10-244-1-53" in line.text
                   for line in demo_records)
    web_headless = {line.rdata for line in demo_records
                    if line.key == ("web-headless.default.svc.cluster.local.", "A")}
    assert web_headless == {"10.244.1.51", "10.244.2.52"}
    # Every zone's apex comes first, each with its SOA.
    soas = [line for line in demo_records if line.key[1] == "SOA"]
    assert {line.key[0] for line in soas} == {"cluster.local.", "in-addr.arpa.", "ip6.arpa."}
    assert demo_records[0].key[1] == "SOA"


def test_records_skips_no_line_and_has_a_comment_header() -> None:
    result = run("records", "--config", "config/demo.yaml")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(";") and __version__ in lines[0]
    assert all(line and not line.startswith(";") for line in lines[1:])
    assert len(parse_records(result.stdout)) == len(lines) - 1


def test_records_into_a_reader_that_stops_early_ends_quietly_without_a_traceback() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "clusterdns", "records", "--config",
                             "config/demo.yaml"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, bufsize=0)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()  # like `head -1`: read a line, then hang up
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=TIMEOUT) == 1
    assert first.startswith(b";")
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def _ask(server: RunningServer, name: str, rdtype: str) -> dns.message.Message:
    reply = server.ask(name, rdtype)
    if reply.flags & dns.flags.TC:
        reply = server.ask(name, rdtype, tcp=True)
    return reply


def test_the_server_answers_exactly_the_records_that_records_prints(
        make_server: Callable[..., RunningServer], demo_records: list[Line]) -> None:
    cfg = config.load(DEMO_CONFIG)
    server = make_server(source=cfg.source, zones=cfg.zones, ttl=cfg.ttl, pods=cfg.pods,
                         namespaces=cfg.namespaces)
    printed: dict[tuple[str, str], set[str]] = defaultdict(set)
    for line in demo_records:
        printed[line.key].add(line.rdata)
        assert line.rrset.ttl == cfg.ttl, line.text

    mismatches: list[str] = []
    for (owner, rdtype), expected in sorted(printed.items()):
        reply = _ask(server, owner, rdtype)
        want = dns.rdatatype.from_text(rdtype)
        answered = {str(rd.to_text()) for rrset in reply.answer
                    if rrset.name.to_text().lower() == owner and rrset.rdtype == want
                    for rd in rrset}
        ttls = {rrset.ttl for rrset in reply.answer if rrset.rdtype == want}
        if reply.rcode() != dns.rcode.NOERROR or answered != expected or ttls != {cfg.ttl}:
            mismatches.append(f"{owner} {rdtype}: printed {sorted(expected)}, served "
                              f"{dns.rcode.to_text(reply.rcode())} {sorted(answered)} {ttls}")
    assert not mismatches, "\n".join(mismatches)
    assert len(printed) > 50

    # The other way round: an owner has no served record of a type that is not printed.
    types = ("A", "AAAA", "SRV", "PTR", "TXT", "CNAME", "NS", "SOA")
    owners = {owner for owner, _ in printed}
    aliases = {owner for owner, rdtype in printed if rdtype == "CNAME"}
    extra: list[str] = []
    for owner in sorted(owners - aliases):
        for rdtype in types:
            if (owner, rdtype) in printed:
                continue
            reply = _ask(server, owner, rdtype)
            if reply.rcode() != dns.rcode.NOERROR or reply.answer:
                extra.append(f"{owner} {rdtype}: {dns.rcode.to_text(reply.rcode())} "
                             f"{[r.to_text() for r in reply.answer]}")
    assert not extra, "\n".join(extra)


# ------------------------------------------------------------------------ check-config


def test_check_config_on_the_demo_config_exits_0_with_a_summary() -> None:
    result = run("check-config", "config/demo.yaml")
    assert result.returncode == 0, result.stderr
    summary = result.stdout.strip()
    assert summary.startswith("config/demo.yaml: ok")
    for part in ("cluster.local", "in-addr.arpa", "ip6.arpa", "demo-cluster.yaml",
                 "127.0.0.1:5353", "5 namespaces", "12 services", "11 endpoint slices",
                 "18 pods"):
        assert part in summary, (part, summary)


BAD_CONFIGS = {
    "unknown-key": ("source: file:c.yaml\nttls: 5\n", "ttls"),
    "bad-ttl": ("ttl: -1\n", "ttl"),
    "ttl-not-a-number": ("ttl: five\n", "ttl"),
    "bad-listen": ("listen: ['127.0.0.1:99999']\n", "listen"),
    "listen-not-an-address": ("listen: ['dns.example:53']\n", "listen"),
    "yaml-syntax-error": ("ttl: 5\nzones: [cluster.local\nlisten: [':53']\n", "line"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_check_config_on_a_bad_config_exits_2_naming_the_file_and_the_key(
        tmp_path: Path, case: str) -> None:
    text, key = BAD_CONFIGS[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text, encoding="utf-8")
    result = run("check-config", str(path))
    assert result.returncode == 2, (result.stdout, result.stderr)
    message = result.stderr
    assert str(path) in message
    assert key in message
    assert "Traceback" not in message
    assert result.stdout == ""


def test_a_bad_config_file_given_to_serve_exits_2_naming_the_file_and_the_key(
        tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("listen: ['127.0.0.1:0']\npods: sometimes\n", encoding="utf-8")
    result = run("serve", "--config", str(path))
    assert result.returncode == 2
    assert str(path) in result.stderr and "pods" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_a_missing_source_file_exits_2_naming_the_file() -> None:
    result = run("serve", "--source", "file:/nonexistent", "--listen", "127.0.0.1:0")
    assert result.returncode == 2
    assert "/nonexistent" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["serve", "records"])
def test_the_kubernetes_source_without_a_kubeconfig_outside_a_cluster_exits_2_saying_so(
        command: str, tmp_path: Path) -> None:
    args = ["--listen", "127.0.0.1:0"] if command == "serve" else []
    env = {k: v for k, v in os.environ.items()
           if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")}
    env["HOME"] = str(tmp_path)  # no ~/.kube/config
    result = run(command, "--source", "kubernetes", *args, env=env)
    assert result.returncode == 2
    assert "--kubeconfig" in result.stderr
    assert "KUBERNETES_SERVICE_HOST" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_ttl_flag_out_of_range_exits_2_naming_the_flag() -> None:
    result = run("records", "--config", "config/demo.yaml", "--ttl", "99999")
    assert result.returncode == 2
    assert "--ttl" in result.stderr


# ------------------------------------------------------------- flags override the file


def test_the_ttl_flag_overrides_the_config_file() -> None:
    result = run("records", "--config", "config/demo.yaml", "--ttl", "42")
    assert result.returncode == 0, result.stderr
    lines = parse_records(result.stdout)
    assert len(lines) > 100
    assert {line.rrset.ttl for line in lines} == {42}
    assert normalised("httpenv.default.svc.cluster.local. 42 IN A 10.108.189.10") in {
        normalised(line.text) for line in lines}


def test_the_zone_flag_replaces_the_zones_of_the_config_file() -> None:
    result = run("records", "--config", "config/demo.yaml", "--zone", "example.internal")
    assert result.returncode == 0, result.stderr
    lines = parse_records(result.stdout)
    owners = {line.key[0] for line in lines}
    assert all(o == "example.internal." or o.endswith(".example.internal.") for o in owners)
    printed = {normalised(line.text) for line in lines}
    assert normalised("httpenv.default.svc.example.internal. 5 IN A 10.108.189.10") in printed
    assert normalised("example.internal. 5 IN SOA ns.dns.example.internal. "
                      "hostmaster.example.internal. 1 7200 1800 86400 5") in printed


@contextlib.contextmanager
def serving(*args: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "clusterdns", "serve", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        proc.communicate(timeout=5)


def _wait_answering(proc: subprocess.Popen[str], port: int, name: str) -> dns.message.Message:
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            _, err = proc.communicate(timeout=5)
            raise AssertionError(f"serve exited with {proc.returncode}: {err}")
        try:
            return dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port,
                                 timeout=0.2)
        except (dns.exception.Timeout, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise AssertionError("serve did not answer within 15 s") from None


def test_serve_listens_where_the_flag_says_and_serves_the_zone_the_flag_names() -> None:
    port = free_port()
    with serving("--config", "config/demo.yaml", "--listen", f"127.0.0.1:{port}",
                 "--zone", "example.internal") as proc:
        reply = _wait_answering(proc, port, "httpenv.default.svc.example.internal")
        assert reply.rcode() == dns.rcode.NOERROR
        assert reply.flags & dns.flags.AA
        assert [rd.to_text() for rrset in reply.answer for rd in rrset] == ["10.108.189.10"]
        # cluster.local is no longer ours, and nothing is forwarded: REFUSED.
        other = dns.query.udp(dns.message.make_query("httpenv.default.svc.cluster.local", "A"),
                              "127.0.0.1", port=port, timeout=2)
        assert other.rcode() == dns.rcode.REFUSED
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0


def test_python_m_clusterdns_version_prints_the_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"clusterdns {__version__}"


# ------------------------------------------------------------------- the event loop


async def _loop_class() -> type:
    return type(asyncio.get_running_loop())


def test_the_server_runs_on_uvloop_when_it_is_installed() -> None:
    # issue 5 item 2: uvloop is a dependency on Linux, and cli runs every command on it
    uvloop = pytest.importorskip("uvloop")
    assert cli._run(_loop_class()) is uvloop.Loop


def test_without_uvloop_the_server_runs_on_plain_asyncio(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` now fails
    loop_class = cli._run(_loop_class())
    assert issubclass(loop_class, asyncio.BaseEventLoop)
    assert loop_class.__module__.startswith("asyncio.")
