"""``serve --workers N`` on real processes: a supervisor and workers sharing one port.

Each test runs ``python -m clusterdns serve --config FILE`` with ``workers: 2`` and the
demo cluster as a file source on loopback, finds the worker processes as the
supervisor's children in /proc, and checks what a user would: both workers hold the DNS
sockets and answer (counted by each worker's own request counter, read through the
supervisor's merged /metrics), UDP and TCP, SIGHUP reaching every worker, SIGTERM
draining them all, and a killed worker being restarted.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from clusterdns.config import ConfigError, ListenAddr
from clusterdns.config import from_mapping as config_from_mapping
from clusterdns.workers import merge_metrics, overall_readiness, worker_argv
from conftest import DEMO_CLUSTER, free_port

NAME = "httpenv.default.svc.cluster.local"
HTTPENV_IP = "10.108.189.10"


def wait_for(condition: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}")
        time.sleep(0.05)


def children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (from /proc/*/stat)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return sorted(out)


def socket_inodes(pid: int) -> set[int]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with_target = os.readlink(f"/proc/{pid}/fd/{fd}")
        if with_target.startswith("socket:["):
            out.add(int(with_target[8:-1]))
    return out


def inodes_on_port(table: str, port: int, tcp_listen: bool = False) -> set[int]:
    """Socket inodes bound to 127.0.0.1:port in /proc/net/udp or /proc/net/tcp."""
    out = set()
    for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        if local == f"0100007F:{port:04X}" and (not tcp_listen or state == "0A"):
            out.add(int(fields[9]))
    return out


@dataclass
class Cluster:
    """The supervisor process and how to reach it."""

    proc: subprocess.Popen[bytes]
    config: Path
    stderr: Path
    dns_port: int
    http_port: int
    options: dict[str, object]

    def ask(self, rdtype: str = "A", *, tcp: bool = False,
            timeout: float = 5.0) -> dns.message.Message:
        q = dns.message.make_query(NAME, rdtype)
        if tcp:
            return dns.query.tcp(q, "127.0.0.1", port=self.dns_port, timeout=timeout)
        return dns.query.udp(q, "127.0.0.1", port=self.dns_port, timeout=timeout)

    def get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.http_port}/{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()

    def ready_ok(self) -> bool:
        try:
            return self.get("ready")[0] == 200
        except OSError:
            return False

    def workers(self) -> dict[int, int]:
        """{worker index: pid} of the supervisor's live children."""
        out = {}
        for pid in children(self.proc.pid):
            with_args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"--worker-index" in with_args:
                out[int(with_args[with_args.index(b"--worker-index") + 1])] = pid
        return out

    def requests(self) -> dict[tuple[str, str], float]:
        """{(worker, proto): DNS requests counted by that worker}, from /metrics."""
        status, text = self.get("metrics")
        assert status == 200, text
        out: dict[tuple[str, str], float] = {}
        for family in text_string_to_metric_families(text):
            if family.name == "coredns_dns_requests":
                for s in family.samples:
                    key = (s.labels["worker"], s.labels["proto"])
                    out[key] = out.get(key, 0.0) + s.value
        return out

    def log(self) -> str:
        return self.stderr.read_text(encoding="utf-8", errors="replace")

    def write_config(self, **changes: object) -> None:
        self.options.update(changes)
        write_yaml(self.config, self.options)


def write_yaml(path: Path, options: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(options), encoding="utf-8")
    os.replace(tmp, path)


def answers(c: Cluster) -> bool:
    try:
        return c.ask(timeout=0.5).rcode() == dns.rcode.NOERROR
    except (dns.exception.Timeout, OSError):
        return False


def start(tmp_path: Path, listen_port: int | None = None, **options: object) -> Cluster:
    config, stderr = tmp_path / "clusterdns.yaml", tmp_path / "stderr.log"
    dns_port = free_port() if listen_port is None else listen_port
    http_port = free_port()
    opts: dict[str, object] = {
        "source": f"file:{DEMO_CLUSTER}", "listen": [f"127.0.0.1:{dns_port}"],
        "ready": f"127.0.0.1:{http_port}", "metrics": f"127.0.0.1:{http_port}",
        "health": f"127.0.0.1:{http_port}", "ttl": 5, "lameduck": 1.5, "reload": 0,
        "workers": 2, **options}
    write_yaml(config, opts)
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clusterdns", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return Cluster(proc, config, stderr, dns_port, http_port, opts)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = start(tmp_path)
    try:
        wait_for(lambda: c.proc.poll() is not None or c.ready_ok(), "/ready to say 200")
        assert c.proc.poll() is None, f"clusterdns exited early:\n{c.log()}"
        yield c
    finally:
        stop(c)


def stop(c: Cluster) -> None:
    workers = list(c.workers().values()) if c.proc.poll() is None else []
    if c.proc.poll() is None:
        c.proc.send_signal(signal.SIGINT)
        try:
            c.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait(timeout=10)
    for pid in workers:  # never leave a worker behind, whatever the test did
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------------------- serving


def test_two_workers_hold_the_dns_port_and_both_answer_udp_and_tcp(cluster: Cluster) -> None:
    workers = cluster.workers()
    assert sorted(workers) == [0, 1]
    udp = inodes_on_port("udp", cluster.dns_port)
    tcp = inodes_on_port("tcp", cluster.dns_port, tcp_listen=True)
    assert len(udp) == 2 and len(tcp) == 2  # one UDP and one listening TCP socket each
    for pid in workers.values():
        mine = socket_inodes(pid)
        assert mine & udp and mine & tcp, f"worker pid {pid} does not hold the DNS port"

    before = cluster.requests()
    for _ in range(200):  # a fresh socket, so a fresh source port, per query
        reply = cluster.ask()
        assert [rd.to_text() for rrset in reply.answer for rd in rrset] == [HTTPENV_IP]
    for _ in range(40):  # a fresh connection per query
        reply = cluster.ask(tcp=True)
        assert [rd.to_text() for rrset in reply.answer for rd in rrset] == [HTTPENV_IP]
    after = cluster.requests()

    def delta(worker: str, proto: str) -> float:
        return after.get((worker, proto), 0.0) - before.get((worker, proto), 0.0)

    assert delta("0", "udp") + delta("1", "udp") == 200
    assert delta("0", "tcp") + delta("1", "tcp") == 40
    for worker in ("0", "1"):  # the kernel spread the load: both answered both ways
        assert delta(worker, "udp") > 0 and delta(worker, "tcp") > 0, (worker, after)


def test_port_zero_is_picked_once_by_the_supervisor_and_bound_by_every_worker(
        tmp_path: Path) -> None:
    c = start(tmp_path, listen_port=0)
    try:
        wait_for(lambda: "2 workers serving" in c.log() or c.proc.poll() is not None,
                 "the workers to start")
        found = re.findall(r"\[worker (\d)\]: listening on 127\.0\.0\.1 port (\d+)", c.log())
        assert sorted(w for w, _ in found) == ["0", "1"], c.log()
        ports = {int(p) for _, p in found}
        assert len(ports) == 1 and 0 not in ports
        c.dns_port = ports.pop()
        wait_for(lambda: answers(c), "an answer on the picked port")
    finally:
        stop(c)


def test_the_supervisor_serves_health_and_merged_metrics_labelled_by_worker(
        cluster: Cluster) -> None:
    assert cluster.get("health") == (200, "OK")
    status, text = cluster.get("metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    serials = {s.labels["worker"] for s in families["clusterdns_snapshot_serial"].samples}
    assert serials == {"0", "1"}
    running = {s.labels["state"]: s.value for s in families["clusterdns_workers"].samples}
    assert running == {"configured": 2.0, "running": 2.0}
    assert text.count("# TYPE coredns_dns_requests_total counter") == 1


# ---------------------------------------------------------------------- signals


def test_sighup_reaches_every_worker(cluster: Cluster) -> None:
    assert cluster.ask().answer[0].ttl == 5
    cluster.write_config(ttl=7)  # reload: 0, so only SIGHUP makes the workers read it
    cluster.proc.send_signal(signal.SIGHUP)
    # A worker that missed the SIGHUP would keep answering half the queries with TTL 5.
    wait_for(lambda: all(cluster.ask().answer[0].ttl == 7 for _ in range(64)),
             "every worker to answer with the new TTL")
    assert cluster.log().count("config reloaded (SIGHUP)") == 2


def test_sigterm_drains_every_worker_then_the_supervisor_exits_zero(cluster: Cluster) -> None:
    pids = list(cluster.workers().values())
    assert len(pids) == 2
    cluster.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: cluster.get("ready") == (503, "draining"), "/ready to fail")
    for _ in range(20):  # still answering in the lameduck window, from both workers
        assert cluster.ask().rcode() == dns.rcode.NOERROR
    assert cluster.proc.wait(timeout=20) == 0, cluster.log()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"worker pid {pid} outlived the supervisor"
    assert cluster.log().count("SIGTERM: reporting not ready; answering for 1.5 s") == 2
    assert "all workers have exited" in cluster.log()


def test_a_killed_worker_is_restarted_with_a_log_line_and_ready_fails_meanwhile(
        cluster: Cluster) -> None:
    old = cluster.workers()
    os.kill(old[1], signal.SIGKILL)
    status, why = cluster.get("ready")
    assert status == 503 and "worker 1" in why and "worker 0" not in why
    wait_for(lambda: cluster.workers().get(1, old[1]) != old[1], "a new worker 1")
    assert cluster.workers()[0] == old[0]  # the other worker was left alone
    assert re.search(rf"worker 1 \(pid {old[1]}\) died \(killed by SIGKILL\).*restarting",
                     cluster.log())
    wait_for(lambda: cluster.get("ready")[0] == 200, "/ready to recover")
    assert 'clusterdns_worker_restarts_total{worker="1"} 1.0' in cluster.get("metrics")[1]
    for _ in range(20):
        assert cluster.ask().rcode() == dns.rcode.NOERROR


def test_workers_drain_and_exit_when_the_supervisor_is_killed(cluster: Cluster) -> None:
    pids = list(cluster.workers().values())
    cluster.proc.kill()
    cluster.proc.wait(timeout=10)
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids),
             "the orphaned workers to exit")
    assert cluster.log().count("the supervisor is gone") == 2


def test_a_worker_that_cannot_bind_stops_the_start_with_exit_code_2(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))  # without SO_REUSEPORT: nobody may share it
        squatter.listen()
        c = start(tmp_path, listen_port=squatter.getsockname()[1])
        try:
            assert c.proc.wait(timeout=30) == 2, c.log()
        finally:
            stop(c)
    assert "failed to start" in c.log()
    assert children(c.proc.pid) == []


# ------------------------------------------------------------------ pure pieces


def test_workers_must_be_a_whole_number_from_1_to_64_naming_the_key() -> None:
    assert config_from_mapping({"workers": 3}).workers == 3
    for bad in (0, 65, "two", True):
        with pytest.raises(ConfigError, match="workers"):
            config_from_mapping({"workers": bad}, "c.yaml")


def test_worker_arguments_override_listen_and_http_after_the_users_own() -> None:
    argv = worker_argv(["serve", "--config", "c.yaml", "--ready", ":8181"], 1,
                       [ListenAddr("::1", 5353)], 4242, 9)
    assert argv[:5] == ["serve", "--config", "c.yaml", "--ready", ":8181"]
    rest = argv[5:]
    assert rest[rest.index("--ready") + 1] == "127.0.0.1:4242"
    assert rest[rest.index("--health") + 1] == ""
    assert rest[rest.index("--worker-listen") + 1] == "[::1]:5353"
    assert rest[rest.index("--worker-index") + 1] == "1"


def test_ready_needs_every_worker_and_names_the_ones_that_are_not() -> None:
    assert overall_readiness(False, [(0, 200, "OK"), (1, 200, "OK")]) == (True, "OK")
    ok, why = overall_readiness(False, [(0, 200, "OK"), (1, None, "not running")])
    assert not ok and why == "worker 1: not running"
    assert overall_readiness(True, [(0, 200, "OK")]) == (False, "draining")


def test_merged_metrics_keep_one_family_per_name_with_a_worker_label() -> None:
    text = ('# HELP x_total Things.\n# TYPE x_total counter\nx_total{a="1"} 2.0\n'
            '# HELP h Sizes.\n# TYPE h histogram\nh_bucket{le="1.0"} 1.0\n'
            'h_bucket{le="+Inf"} 1.0\nh_count 1.0\nh_sum 0.5\n')
    merged = merge_metrics([(0, text), (1, text)]).decode()
    assert merged.count("# TYPE x_total counter") == 1
    assert merged.count("# TYPE h histogram") == 1
    families = {f.name: f for f in text_string_to_metric_families(merged)}
    assert {(s.labels["worker"], s.value) for s in families["x"].samples} == {
        ("0", 2.0), ("1", 2.0)}
    assert len(families["h"].samples) == 8
