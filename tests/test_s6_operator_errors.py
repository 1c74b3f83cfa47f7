"""What an operator reads when something is wrong (issue 13: items 2, 3 and 5).

- **A socket that cannot be bound** names what it is for (DNS, HTTP /health, /ready,
  /metrics), its protocol and address, in one line, exit 2 -- with one process or with
  ``--workers`` -- and no "listening" line comes before it. A port below 1024 that needs
  privilege says the three ways to allow it.
- **A kubeconfig that cannot be used** (not YAML, a plain string, empty, missing, an
  unknown context) and an API server that cannot be reached by ``records`` are one line
  naming the file or the server and the problem, exit 2, never a traceback;
  ``check-config`` loads the kubeconfig ``serve`` would use and says what is wrong.
- **An API outage is told**: a line when it begins (what is served, as of when), a
  summary while it lasts (failed attempts, last error), a line when it ends (how long,
  and whether each watch resumed or relisted); a single dropped stream is no outage.

Everything runs for real: ``python -m clusterdns`` subprocesses on free loopback ports,
sockets held by the test to take a port, the real ``kubernetes`` client against
``tests/fakekube``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from clusterdns.binding import explain
from clusterdns.config import SourceSpec
from clusterdns.source.kube import KubeSource, Tuning
from conftest import ROOT, RunningServer, free_port, resolves_to, wait_until
from fakekube import FakeKube

TIMEOUT = 30.0
DEMO = "config/demo.yaml"
NO_HTTP = ("--health", "", "--ready", "", "--metrics", "")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any kubeconfig or in-cluster hint, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")}
    return {**env, **extra}


def clusterdns(*args: str, env: dict[str, str] | None = None,
               prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-m", "clusterdns", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=TIMEOUT, check=False,
                          env=env if env is not None else clean_env())


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " ERROR " in line]


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def taken(port: int, kind: socket.SocketKind) -> Iterator[None]:
    """Hold ``127.0.0.1:port`` (TCP listening, or UDP) as another program would."""
    with socket.socket(socket.AF_INET, kind) as sock:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        if kind == socket.SOCK_STREAM:
            sock.listen(8)
        yield


# ------------------------------------------------------------------- bind errors


@pytest.mark.parametrize("endpoint", ["health", "ready", "metrics"])
def test_a_taken_http_port_exits_2_with_one_line_naming_the_endpoint_tcp_and_the_address(
        endpoint: str) -> None:
    busy = free_tcp_port()
    http = {name: "" for name in ("health", "ready", "metrics")}
    http[endpoint] = f"127.0.0.1:{busy}"
    flags = [x for name, value in http.items() for x in (f"--{name}", value)]
    with taken(busy, socket.SOCK_STREAM):
        result = clusterdns("serve", "--config", DEMO, "--listen",
                            f"127.0.0.1:{free_port()}", *flags)
    assert result.returncode == 2, result.stderr
    (line,) = error_lines(result.stderr)
    assert f"HTTP /{endpoint} on 127.0.0.1:{busy} (TCP)" in line
    assert "address already in use" in line and f"--{endpoint}" in line
    assert "Traceback" not in result.stderr
    # No line said the server listens: it never served.
    assert "listening on" not in result.stderr, result.stderr


def test_two_endpoints_sharing_a_taken_port_are_both_named() -> None:
    busy = free_tcp_port()
    with taken(busy, socket.SOCK_STREAM):
        result = clusterdns("serve", "--config", DEMO, "--listen", f"127.0.0.1:{free_port()}",
                            "--health", "", "--ready", f"127.0.0.1:{busy}",
                            "--metrics", f"127.0.0.1:{busy}")
    assert result.returncode == 2
    (line,) = error_lines(result.stderr)
    assert f"HTTP /ready and /metrics on 127.0.0.1:{busy} (TCP)" in line


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM], ids=["udp", "tcp"])
def test_a_taken_dns_port_exits_2_naming_dns_the_protocol_taken_and_the_address(
        kind: socket.SocketKind) -> None:
    port = free_port()
    proto = "UDP" if kind == socket.SOCK_DGRAM else "TCP"
    with taken(port, kind):
        result = clusterdns("serve", "--config", DEMO, "--listen", f"127.0.0.1:{port}",
                            *NO_HTTP)
    assert result.returncode == 2, result.stderr
    (line,) = error_lines(result.stderr)
    assert f"cannot listen for DNS on 127.0.0.1:{port} ({proto})" in line
    assert "address already in use" in line and "--listen" in line
    assert f"sport = :{port}" in line  # how to find who has it
    assert "Traceback" not in result.stderr and "listening on" not in result.stderr


def test_with_workers_a_taken_http_port_stops_the_supervisor_before_any_worker_starts(
        ) -> None:
    busy = free_tcp_port()
    with taken(busy, socket.SOCK_STREAM):
        result = clusterdns("serve", "--config", DEMO, "--workers", "2",
                            "--listen", f"127.0.0.1:{free_port()}", "--health",
                            f"127.0.0.1:{busy}", "--ready", "", "--metrics", "")
    assert result.returncode == 2, result.stderr
    (line,) = error_lines(result.stderr)
    assert "clusterdns.workers" in line
    assert f"HTTP /health on 127.0.0.1:{busy} (TCP): address already in use" in line
    assert "started worker" not in result.stderr and "listening on" not in result.stderr


def test_with_workers_a_taken_dns_port_is_named_by_the_worker_and_the_supervisor_exits_2(
        ) -> None:
    port = free_port()
    with taken(port, socket.SOCK_DGRAM):
        result = clusterdns("serve", "--config", DEMO, "--workers", "2",
                            "--listen", f"127.0.0.1:{port}", *NO_HTTP)
    assert result.returncode == 2, result.stderr
    lines = error_lines(result.stderr)
    assert any(re.search(r"\[worker \d\]: cannot start: cannot listen for DNS on "
                         rf"127\.0\.0\.1:{port} \(UDP\): address already in use", line)
               for line in lines), result.stderr
    assert any("failed to start" in line and "logged above" in line for line in lines)
    assert "Traceback" not in result.stderr


def test_permission_denied_below_1024_says_how_to_allow_it() -> None:
    text = explain(OSError(errno.EACCES, "Permission denied"), "DNS", "UDP", "0.0.0.0", 53,
                   "--listen")
    assert text.startswith("cannot listen for DNS on 0.0.0.0:53 (UDP): permission denied")
    assert "CAP_NET_BIND_SERVICE" in text
    assert f"setcap cap_net_bind_service=+ep {os.path.realpath(sys.executable)}" in text
    assert "net.ipv4.ip_unprivileged_port_start=53" in text
    assert "(--listen)" in text and "\n" not in text


def test_permission_denied_above_1024_gives_no_privileged_port_advice() -> None:
    text = explain(OSError(errno.EACCES, "Permission denied"), "HTTP /metrics", "TCP",
                   "127.0.0.1", 9153, "--metrics")
    assert "HTTP /metrics on 127.0.0.1:9153 (TCP): permission denied" in text
    assert "setcap" not in text and "ip_unprivileged_port_start" not in text


def test_an_address_of_no_interface_says_so() -> None:
    text = explain(OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"), "DNS",
                   "TCP", "192.0.2.7", 1053, "--listen")
    assert text == ("cannot listen for DNS on 192.0.2.7:1053 (TCP): address not available: "
                    "no network interface of this host has 192.0.2.7; choose another address "
                    "with --listen")


def _privileged_free_port() -> int:
    """A port below 1024 that nothing holds right now (checked as root)."""
    for port in range(1000, 600, -7):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            try:
                udp.bind(("127.0.0.1", port))
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below 1024")


def test_an_unprivileged_user_binding_below_1024_is_told_the_ways_to_allow_it() -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run clusterdns as an unprivileged user")
    start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    port = _privileged_free_port()
    if port >= start:
        pytest.skip(f"ports from {start} up are unprivileged on this host")
    result = clusterdns("serve", "--config", DEMO, "--listen", f"127.0.0.1:{port}", *NO_HTTP,
                        prefix=("setpriv", "--reuid=65534", "--regid=65534",
                                "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"))
    assert result.returncode == 2, result.stderr
    (line,) = error_lines(result.stderr)
    assert f"cannot listen for DNS on 127.0.0.1:{port} (UDP): permission denied" in line
    assert "(uid 65534)" in line
    assert "CAP_NET_BIND_SERVICE" in line and "setcap" in line
    assert "ip_unprivileged_port_start" in line


# --------------------------------------------------------------------- kubeconfig


def kubeconfig_for(server: str, context: str = "test") -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": server}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": context, "context": {"cluster": "c", "user": "u"}}],
            "current-context": context}


BAD_KUBECONFIGS: dict[str, tuple[str, str]] = {
    # case: (file content, what the message must say after the file name)
    "not-yaml": ("apiVersion: v1\nclusters: [\n  - name: x\n",
                 "not valid YAML: line 3, column 3: expected the node content"),
    "a-plain-string": ("just a string\n", "expected a mapping with clusters, contexts, "
                                          "users and current-context; found a string"),
    "empty": ("", "the file is empty"),
    "clusters-not-a-list": ("clusters: oops\ncurrent-context: x\n",
                            "clusters: expected a list of entries"),
    "no-current-context": (yaml.safe_dump({**kubeconfig_for("http://127.0.0.1:1"),
                                           "current-context": ""}),
                           "no current-context"),
    "unknown-current-context": (yaml.safe_dump({**kubeconfig_for("http://127.0.0.1:1"),
                                                "current-context": "elsewhere"}),
                                "current-context 'elsewhere' is not one of its contexts "
                                "(test)"),
}


def one_line_exit_2(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("case", sorted(BAD_KUBECONFIGS))
def test_records_with_a_broken_kubeconfig_is_one_line_naming_the_file_and_exits_2(
        case: str, tmp_path: Path) -> None:
    content, problem = BAD_KUBECONFIGS[case]
    path = tmp_path / "kubeconfig"
    path.write_text(content, encoding="utf-8")
    line = one_line_exit_2(clusterdns("records", "--source", "kubernetes",
                                      "--kubeconfig", str(path)))
    assert line.startswith(f"clusterdns: kubeconfig {path}: {problem}"), line


def test_a_missing_kubeconfig_from_the_flag_is_one_line_saying_no_such_file(
        tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    line = one_line_exit_2(clusterdns("records", "--source", "kubernetes",
                                      "--kubeconfig", str(path)))
    assert line == f"clusterdns: kubeconfig {path}: no such file"


def test_a_missing_kubeconfig_from_the_environment_says_it_came_from_kubeconfig(
        tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    line = one_line_exit_2(clusterdns("records", "--source", "kubernetes",
                                      env=clean_env(KUBECONFIG=str(path))))
    assert line == f"clusterdns: kubeconfig {path} (from $KUBECONFIG): no such file"


def test_an_unknown_context_flag_is_named_with_the_contexts_there_are(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig_for("http://127.0.0.1:1")), encoding="utf-8")
    line = one_line_exit_2(clusterdns("records", "--source", "kubernetes", "--kubeconfig",
                                      str(path), "--context", "prod"))
    assert line == (f"clusterdns: kubeconfig {path}: --context 'prod' is not one of its "
                    "contexts (test)")


def test_serve_with_a_malformed_kubeconfig_exits_2_with_one_error_line(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(BAD_KUBECONFIGS["not-yaml"][0], encoding="utf-8")
    result = clusterdns("serve", "--source", "kubernetes", "--kubeconfig", str(path),
                        "--listen", f"127.0.0.1:{free_port()}", *NO_HTTP)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    assert f"kubeconfig {path}: not valid YAML: line 3, column 3" in line


def test_records_against_a_closed_port_is_one_line_naming_the_server_and_exits_2(
        tmp_path: Path) -> None:
    port = free_tcp_port()  # nothing listens there
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig_for(f"http://127.0.0.1:{port}")),
                    encoding="utf-8")
    line = one_line_exit_2(clusterdns("records", "--source", "kubernetes",
                                      "--kubeconfig", str(path)))
    assert line == (f"clusterdns: cannot list namespaces from the API server at "
                    f"http://127.0.0.1:{port} (kubeconfig {path}): cannot connect to "
                    f"127.0.0.1:{port}: connection refused")


def test_records_against_a_forbidden_kind_names_the_rbac_rule_it_needs(
        fake: FakeKube, tmp_path: Path) -> None:
    fake.forbid("services")
    path = fake.write_kubeconfig(tmp_path / "kubeconfig")
    line = one_line_exit_2(clusterdns("records", "--source", "kubernetes",
                                      "--kubeconfig", str(path)))
    assert line.startswith(f"clusterdns: cannot list services from the API server at "
                           f"{fake.url} (kubeconfig {path}): HTTP 403")
    assert 'resources: ["services"], verbs: ["list", "watch"]' in line


def write_config(tmp_path: Path, kubeconfig: Path) -> Path:
    path = tmp_path / "clusterdns.yaml"
    path.write_text(yaml.safe_dump({"source": "kubernetes", "kubeconfig": str(kubeconfig)}),
                    encoding="utf-8")
    return path


def test_check_config_reports_a_missing_kubeconfig_and_exits_2(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "nowhere.yaml"
    config = write_config(tmp_path, kubeconfig)
    line = one_line_exit_2(clusterdns("check-config", str(config)))
    assert line == (f"clusterdns: {config}: kubeconfig {kubeconfig}: no such file (to check "
                    f"the file alone: clusterdns check-config --file-only {config})")


def test_check_config_file_only_checks_the_file_without_the_kubeconfig(tmp_path: Path) -> None:
    config = write_config(tmp_path, tmp_path / "nowhere.yaml")
    result = clusterdns("check-config", "--file-only", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{config}: ok: ")
    assert "kubeconfig not checked (--file-only)" in result.stdout


def test_check_config_reports_a_malformed_kubeconfig_and_exits_2(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("just a string\n", encoding="utf-8")
    config = write_config(tmp_path, kubeconfig)
    result = clusterdns("check-config", str(config))
    line = one_line_exit_2(result)
    assert line.startswith(f"clusterdns: {config}: kubeconfig {kubeconfig}: expected a mapping")
    assert result.stdout == ""


def test_check_config_with_a_good_kubeconfig_says_which_api_server_it_points_at(
        tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(kubeconfig_for("https://10.0.0.1:6443")),
                          encoding="utf-8")
    config = write_config(tmp_path, kubeconfig)
    result = clusterdns("check-config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{config}: ok: ")
    assert f"API server https://10.0.0.1:6443 (kubeconfig {kubeconfig})" in result.stdout


# ------------------------------------------------------------------------ outages

REPORT = 0.5  # seconds between outage summaries in these tests
FAST = Tuning(watch_timeout=3.0, inactivity_timeout=1.0, request_timeout=5.0,
              backoff_base=0.1, backoff_cap_early=1.0, outage_report=REPORT)
WEB, WEB_IP = "web.default.svc.cluster.local.", "10.96.33.33"
KUBE_LOGGER = "clusterdns.source.kube"


@pytest.fixture
def kube_server(fake: FakeKube, make_server: Callable[..., RunningServer],
                tmp_path: Path) -> Callable[[], RunningServer]:
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")

    def start() -> RunningServer:
        return make_server(source=SourceSpec("kubernetes"), kubeconfig=str(kubeconfig),
                           kube=lambda cfg: KubeSource(cfg, tuning=FAST))
    return start


def messages(caplog: pytest.LogCaptureFixture, pattern: str) -> list[str]:
    return [r.getMessage() for r in list(caplog.records)
            if r.name == KUBE_LOGGER and re.search(pattern, r.getMessage())]


def wait_for_message(caplog: pytest.LogCaptureFixture, pattern: str, timeout: float,
                     count: int = 1) -> list[str]:
    wait_until(lambda: len(messages(caplog, pattern)) >= count, timeout,
               f"{count} log line(s) matching {pattern!r}", interval=0.05)
    return messages(caplog, pattern)


@pytest.mark.parametrize("compacted", [False, True], ids=["resumed", "relisted"])
def test_an_api_outage_is_logged_when_it_begins_while_it_lasts_and_when_it_ends(
        fake: FakeKube, kube_server: Callable[[], RunningServer],
        caplog: pytest.LogCaptureFixture, compacted: bool) -> None:
    caplog.set_level(logging.DEBUG, logger=KUBE_LOGGER)
    server = kube_server()
    wait_until(resolves_to(server, WEB, WEB_IP), 10, "clusterdns synced")
    fake.wait_for_watches(3)
    caplog.clear()

    stopped = time.monotonic()
    fake.stop()
    (lost,) = wait_for_message(caplog, r"unavailable since", 5)
    assert f"API server at {fake.url} unavailable since " in lost
    assert "cannot connect to" in lost
    assert re.search(r"serving the last data it gave, as of \d\d:\d\d:\d\d \(5 namespaces, "
                     r"\d+ services, \d+ endpointslices\)", lost), lost
    assert f"a summary every {REPORT:g} s" in lost

    summaries = wait_for_message(caplog, r"still unavailable", 5, count=2)
    match = re.search(r"still unavailable after \d+ s: (\d+) failed attempts \((.*)\), "
                      r"last error: (watch-\S+): (.*); serving the last data", summaries[0])
    assert match, summaries[0]
    assert int(match.group(1)) >= 3
    assert {part.split()[0] for part in match.group(2).split(", ")} == {
        "watch-endpointslices", "watch-namespaces", "watch-services"}
    assert "cannot connect to" in match.group(4)
    attempts = [int(re.search(r"(\d+) failed attempts", s).group(1))  # type: ignore[union-attr]
                for s in summaries]
    assert attempts == sorted(attempts) and attempts[-1] > attempts[0]

    # Each watch said its first failure at WARNING; the other attempts only at DEBUG.
    first_failures = [r for r in caplog.records if r.name == KUBE_LOGGER
                      and r.levelno == logging.WARNING and r.getMessage().endswith("; retrying")]
    assert sorted(r.getMessage().split(":")[0] for r in first_failures) == [
        "watch-endpointslices", "watch-namespaces", "watch-services"]

    if compacted:  # history moves on and is compacted: the resourceVersion every watch
        # resumes from is gone, so each gets 410 and relists
        fake.apply({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": "born-in-outage", "namespace": "default"},
                    "spec": {"type": "ClusterIP", "clusterIP": "10.96.54.1",
                             "clusterIPs": ["10.96.54.1"],
                             "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
        fake.compact()
    time.sleep(1.0)
    down_for = time.monotonic() - stopped
    fake.start()
    (back,) = wait_for_message(caplog, r"is back after", 5)
    match = re.search(r"API server at (\S+) is back after ([\d.]+) s \((\d+) failed "
                      r"attempts\): (.*)$", back)
    assert match, back
    assert match.group(1) == fake.url
    assert down_for - 0.5 <= float(match.group(2)) <= down_for + 3.0, (back, down_for)
    how = dict(part.split(" ", 1) for part in match.group(4).split(", "))
    assert sorted(how) == ["watch-endpointslices", "watch-namespaces", "watch-services"]
    if compacted:
        assert set(how.values()) == {"relisted"}, back
    else:
        assert all(h.startswith("resumed its watch at resourceVersion ") for h in how.values())
    count = len(messages(caplog, r"still unavailable"))
    time.sleep(3 * REPORT)
    assert len(messages(caplog, r"still unavailable")) == count, "no summary once it is back"


def test_an_api_server_down_from_the_start_is_told_as_nothing_served_yet(
        fake: FakeKube, kube_server: Callable[[], RunningServer],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=KUBE_LOGGER)
    fake.stop()
    server = kube_server()
    (lost,) = wait_for_message(caplog, r"unavailable since", 5)
    assert "serving nothing from it yet: not synced, so names in our zones answer SERVFAIL" \
        in lost
    assert "watch-services" in lost
    assert not server.app.ready()
    fake.start()
    (back,) = wait_for_message(caplog, r"is back after", 8)
    assert "watch-services listed" in back
    wait_until(resolves_to(server, WEB, WEB_IP), 5, "clusterdns synced")


def test_a_dropped_watch_that_resumes_at_once_is_no_outage(
        fake: FakeKube, kube_server: Callable[[], RunningServer],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=KUBE_LOGGER)
    server = kube_server()
    wait_until(resolves_to(server, WEB, WEB_IP), 10, "clusterdns synced")
    fake.wait_for_watches(3)
    caplog.clear()
    fake.drop_watches()
    fake.wait_for_watches(3)
    time.sleep(1.0)
    assert messages(caplog, r"unavailable|is back after") == []
