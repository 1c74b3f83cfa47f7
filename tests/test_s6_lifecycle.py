"""SPEC §S6 lifecycle, on the real process: SIGTERM drain, reload on change and SIGHUP.

Each test runs ``python -m clusterdns serve --config FILE`` as a child process on free
loopback ports, with the demo cluster as a file source, and talks to it as a user would:
DNS queries with dnspython, ``/ready`` over HTTP, signals with ``os.kill``, config edits
by rewriting the file (atomically, as editors and ConfigMap updates do).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
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

from conftest import DEMO_CLUSTER, free_port

NAME = "httpenv.default.svc.cluster.local"
HTTPENV_IP = "10.108.189.10"


@dataclass
class Child:
    proc: subprocess.Popen[bytes]
    config: Path
    stderr: Path
    dns_port: int
    ready_port: int

    def ask(self, name: str = NAME, rdtype: str = "A", timeout: float = 2.0) -> dns.message.Message:
        q = dns.message.make_query(name, rdtype)
        return dns.query.udp(q, "127.0.0.1", port=self.dns_port, timeout=timeout)

    def ready(self) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.ready_port}/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()

    def log(self) -> str:
        return self.stderr.read_text(encoding="utf-8", errors="replace")

    def write_config(self, **options: object) -> None:
        """Replace the config file atomically (write a sibling, rename over)."""
        write_yaml(self.config, {**base_options(self.dns_port, self.ready_port), **options})


def base_options(dns_port: int, ready_port: int) -> dict[str, object]:
    return {"source": f"file:{DEMO_CLUSTER}", "listen": [f"127.0.0.1:{dns_port}"],
            "ready": f"127.0.0.1:{ready_port}", "health": "", "metrics": "",
            "pods": "insecure", "ttl": 5, "lameduck": 2, "reload": 0.2}


def write_yaml(path: Path, options: dict[str, object]) -> None:
    import yaml

    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(options), encoding="utf-8")
    os.replace(tmp, path)


def wait_for(condition: Callable[[], bool], what: str, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}")
        time.sleep(0.05)


def answers(child: Child) -> bool:
    try:
        return child.ask(timeout=0.5).rcode() == dns.rcode.NOERROR
    except (dns.exception.Timeout, OSError):
        return False


@pytest.fixture
def child(tmp_path: Path) -> Iterator[Child]:
    config = tmp_path / "clusterdns.yaml"
    stderr = tmp_path / "stderr.log"
    dns_port, ready_port = free_port(), free_port()
    write_yaml(config, base_options(dns_port, ready_port))
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clusterdns", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    c = Child(proc, config, stderr, dns_port, ready_port)
    try:
        wait_for(lambda: answers(c) or proc.poll() is not None, "the server to answer")
        assert proc.poll() is None, f"clusterdns exited early:\n{c.log()}"
        yield c
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def ttl_of(msg: dns.message.Message) -> int:
    assert msg.rcode() == dns.rcode.NOERROR and msg.answer, msg.to_text()
    return int(msg.answer[0].ttl)


class Prober:
    """Ask continuously from a thread; remember every failure."""

    def __init__(self, child: Child) -> None:
        self.child = child
        self.failures: list[str] = []
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.child.ask(timeout=1.0)
                if msg.rcode() != dns.rcode.NOERROR or not msg.answer:
                    self.failures.append(msg.to_text())
            except (dns.exception.Timeout, OSError) as exc:
                self.failures.append(repr(exc))
            self.count += 1
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ----------------------------------------------------------------------------- SIGTERM


def test_sigterm_fails_ready_at_once_keeps_answering_for_the_lameduck_window_then_exits_cleanly(
        child: Child) -> None:
    wait_for(lambda: child.ready()[0] == 200, "/ready to say 200")
    assert child.ready() == (200, "OK")

    sent = time.monotonic()
    child.proc.send_signal(signal.SIGTERM)
    status, body = child.ready()
    assert status == 503 and "draining" in body, (status, body)

    answered = 0
    while time.monotonic() - sent < 1.5:  # lameduck is 2 s
        msg = child.ask()
        assert msg.rcode() == dns.rcode.NOERROR and msg.answer, msg.to_text()
        answered += 1
        time.sleep(0.02)
    assert answered > 10
    assert child.proc.wait(timeout=15) == 0, child.log()
    took = time.monotonic() - sent
    assert took >= 1.9, f"exited {took:.2f} s after SIGTERM, before the lameduck window ended"
    assert "SIGTERM" in child.log()


def test_a_second_sigterm_stops_at_once(child: Child) -> None:
    child.write_config(lameduck=60)
    wait_for(lambda: "config reloaded" in child.log(), "the reload")
    child.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: child.ready()[0] == 503, "draining")
    child.proc.send_signal(signal.SIGTERM)
    assert child.proc.wait(timeout=10) == 0, child.log()


# ----------------------------------------------------------------------------- reload


def test_a_changed_config_file_takes_effect_without_dropping_a_query(child: Child) -> None:
    assert ttl_of(child.ask()) == 5
    prober = Prober(child)
    try:
        child.write_config(ttl=7)
        wait_for(lambda: ttl_of(child.ask()) == 7, "the new TTL", within=10)
        time.sleep(0.3)
    finally:
        prober.stop()
    assert prober.count > 20
    assert prober.failures == [], prober.failures[:3]
    assert "config reloaded (the config file changed)" in child.log()


def test_a_bad_config_is_rejected_naming_file_and_key_and_the_old_one_keeps_serving(
        child: Child) -> None:
    child.write_config(ttl=7)
    wait_for(lambda: ttl_of(child.ask()) == 7, "the new TTL")
    child.write_config(ttl="seven")
    wait_for(lambda: "rejected" in child.log(), "the rejection")
    line = next(x for x in child.log().splitlines() if "rejected" in x)
    assert str(child.config) in line and "ttl" in line and "'seven'" in line, line
    time.sleep(0.5)  # a few more reload intervals: still the old config
    assert ttl_of(child.ask()) == 7
    assert child.proc.poll() is None

    # A config whose source cannot be read is refused as a whole, too.
    child.write_config(ttl=9, source="file:/nonexistent/cluster.yaml")
    wait_for(lambda: child.log().count("rejected") >= 2, "the second rejection")
    assert ttl_of(child.ask()) == 7

    child.write_config(ttl=9)  # and a good one is taken again
    wait_for(lambda: ttl_of(child.ask()) == 9, "the fixed config")


def test_sighup_reloads_when_polling_is_off(child: Child, tmp_path: Path) -> None:
    child.write_config(reload=0)
    wait_for(lambda: "config reloaded" in child.log(), "the switch to SIGHUP-only reloads")
    child.write_config(reload=0, ttl=11)
    time.sleep(0.8)
    assert ttl_of(child.ask()) == 5, "with reload 0 a change waits for SIGHUP"
    child.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: ttl_of(child.ask()) == 11, "the SIGHUP reload")
    assert "config reloaded (SIGHUP)" in child.log()


def test_a_reload_that_changes_the_source_serves_the_new_files(
        child: Child, tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: fresh, namespace: default}\n"
        "spec: {type: ClusterIP, clusterIP: 10.96.77.7, ports: [{port: 80}]}\n",
        encoding="utf-8")
    fresh = "fresh.default.svc.cluster.local"
    assert child.ask(fresh).rcode() == dns.rcode.NXDOMAIN
    child.write_config(source=f"file:{DEMO_CLUSTER},{other}")
    wait_for(lambda: child.ask(fresh).rcode() == dns.rcode.NOERROR, "the new source")
    assert [rd.to_text() for rrset in child.ask(fresh).answer for rd in rrset] == ["10.96.77.7"]
    assert ttl_of(child.ask()) == 5  # the old records are still there
    # ...and the new source is watched: editing its file shows up too.
    other.write_text(other.read_text().replace("10.96.77.7", "10.96.77.8"), encoding="utf-8")
    wait_for(lambda: [rd.to_text() for rrset in child.ask(fresh).answer for rd in rrset]
             == ["10.96.77.8"], "the edit of the new source")


def test_a_changed_listen_address_is_reported_as_needing_a_restart(child: Child) -> None:
    child.write_config(listen=[f"127.0.0.1:{child.dns_port}", "127.0.0.1:1"], ttl=6)
    wait_for(lambda: "restart clusterdns to apply" in child.log(), "the warning")
    assert "listen" in child.log()
    wait_for(lambda: ttl_of(child.ask()) == 6, "the rest of the config applied")


def test_a_reload_that_sets_or_clears_upstreams_starts_or_stops_forwarding(child: Child) -> None:
    from upstream import FakeUpstream

    up = FakeUpstream(["example.com. 300 IN A 192.0.2.1"])
    try:
        assert child.ask("example.com").rcode() == dns.rcode.REFUSED
        child.write_config(upstreams=[up.address], loop_detect=False)
        wait_for(lambda: child.ask("example.com").rcode() == dns.rcode.NOERROR, "forwarding")
        assert [rd.to_text() for rrset in child.ask("example.com").answer for rd in rrset] \
            == ["192.0.2.1"]
        assert up.count("example.com") >= 1
        assert ttl_of(child.ask()) == 5  # our own zone untouched, never sent upstream
        assert all("cluster.local" not in n for n in up.names_seen())
        child.write_config()
        wait_for(lambda: child.ask("example.com").rcode() == dns.rcode.REFUSED,
                 "forwarding switched off")
    finally:
        up.close()


def test_a_broken_corefile_reload_names_the_line_and_keeps_the_old_config(
        tmp_path: Path) -> None:
    dns_port, ready_port = free_port(), free_port()

    def corefile(ttl: str) -> str:
        return (f".:{dns_port} {{\n    bind 127.0.0.1\n    ready 127.0.0.1:{ready_port}\n"
                "    kubernetes cluster.local in-addr.arpa ip6.arpa {\n"
                f"        pods insecure\n        ttl {ttl}\n    }}\n    reload 1s\n}}\n")

    path = tmp_path / "Corefile"
    path.write_text(corefile("5"), encoding="utf-8")
    stderr = tmp_path / "stderr.log"
    with stderr.open("wb") as err:
        # The Corefile as kubeadm writes it, with the demo dump as the source (a flag).
        proc = subprocess.Popen(
            [sys.executable, "-m", "clusterdns", "serve", "--corefile", str(path),
             "--source", f"file:{DEMO_CLUSTER}"],
            stdout=subprocess.DEVNULL, stderr=err)
    c = Child(proc, path, stderr, dns_port, ready_port)
    try:
        wait_for(lambda: answers(c) or proc.poll() is not None, "the server to answer")
        assert ttl_of(c.ask()) == 5, c.log()
        path.write_text(corefile("8"), encoding="utf-8")
        wait_for(lambda: ttl_of(c.ask()) == 8, "the Corefile change")
        path.write_text(corefile("eight"), encoding="utf-8")
        wait_for(lambda: "rejected" in c.log(), "the rejection")
        line = next(x for x in c.log().splitlines() if "rejected" in x)
        assert f"{path}:6" in line and "ttl" in line, line  # file:line and directive
        time.sleep(1.5)
        assert ttl_of(c.ask()) == 8 and proc.poll() is None
    finally:
        proc.kill()
        proc.wait(timeout=10)
