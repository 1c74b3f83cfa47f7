"""A running server follows edits of its cluster file (§S6.6 of docs/contract.md).

Each test serves a temporary copy of a small cluster and edits it while a real server
(polling every 0.1 s) answers over UDP: good edits are served within 2 s with a higher
SOA serial, a broken edit is logged (naming the file) and the old answers keep being
served, a malformed object is skipped with a warning and the rest is served.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from clusterdns.config import SourceSpec
from conftest import RunningServer, addresses

LOGGER = "clusterdns.source.file"
ZONE = "cluster.local"
WEB = f"web.default.svc.{ZONE}"
API = f"api.default.svc.{ZONE}"
DB = f"db.default.svc.{ZONE}"
BAD = f"bad.default.svc.{ZONE}"
DEADLINE = 2.0  # an edit is served within this many seconds
STEADY = 1.5  # how long a broken edit is watched for

NAMESPACE = "kind: Namespace\nmetadata: {name: default}\n"


def service(name: str, ip: str) -> str:
    return (f"kind: Service\nmetadata: {{name: {name}, namespace: default}}\n"
            f"spec:\n  clusterIP: '{ip}'\n  ports: [{{name: http, port: 80, protocol: TCP}}]\n")


def cluster_yaml(*services: tuple[str, str]) -> str:
    return "---\n".join([NAMESPACE, *(service(name, ip) for name, ip in services)])


ORIGINAL = cluster_yaml(("web", "10.96.0.10"), ("api", "10.96.0.20"))
BROKEN = ORIGINAL + "---\nkind: Service\nmetadata: {name: db, namespace: default\nspec: {}\n"


def write(path: Path, text: str, *, atomic: bool = False) -> None:
    """Save like an editor: in place, or to a temporary file renamed over the old one."""
    if atomic:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    else:
        path.write_text(text, encoding="utf-8")


@pytest.fixture
def cluster_file(tmp_path: Path) -> Path:
    path = tmp_path / "c.yaml"
    write(path, ORIGINAL)
    return path


@pytest.fixture
def serve(make_server: Callable[..., RunningServer],
          cluster_file: Path) -> Callable[[], RunningServer]:
    def start() -> RunningServer:
        server = make_server(source=SourceSpec("file", (cluster_file,)), poll_interval=0.1)
        assert server.app.config.poll_interval == 0.1
        return server
    return start


def soa_serial(server: RunningServer) -> int:
    reply = server.ask(ZONE, "SOA")
    assert reply.rcode() == dns.rcode.NOERROR
    (rrset,) = reply.answer
    return int(rrset[0].serial)


def wait_for(server: RunningServer, name: str, rdtype: str,
             done: Callable[[dns.message.Message], bool],
             deadline: float = DEADLINE) -> dns.message.Message:
    """Ask until ``done(reply)``; fail after ``deadline`` seconds with the last reply."""
    started = time.monotonic()
    while True:
        reply = server.ask(name, rdtype)
        if done(reply):
            return reply
        if time.monotonic() - started > deadline:
            pytest.fail(f"not served within {deadline} s: {name} {rdtype}; last reply:\n{reply}")
        time.sleep(0.02)


def has_addresses(*ips: str) -> Callable[[dns.message.Message], bool]:
    def check(reply: dns.message.Message) -> bool:
        return reply.rcode() == dns.rcode.NOERROR and sorted(addresses(reply)) == sorted(ips)
    return check


def is_nxdomain(reply: dns.message.Message) -> bool:
    return reply.rcode() == dns.rcode.NXDOMAIN


def file_messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


def assert_original_served(server: RunningServer) -> None:
    assert has_addresses("10.96.0.10")(server.ask(WEB))
    assert has_addresses("10.96.0.20")(server.ask(API))
    assert is_nxdomain(server.ask(DB))


# ------------------------------------------------------------------------- good edits


@pytest.mark.parametrize("atomic", [False, True], ids=["in-place", "renamed"])
def test_a_changed_cluster_ip_is_served_within_two_seconds(
        serve: Callable[[], RunningServer], cluster_file: Path, atomic: bool) -> None:
    server = serve()
    assert_original_served(server)
    write(cluster_file, cluster_yaml(("web", "10.96.0.11"), ("api", "10.96.0.20")),
          atomic=atomic)
    wait_for(server, WEB, "A", has_addresses("10.96.0.11"))
    # The reverse name moved with it.
    wait_for(server, "11.0.96.10.in-addr.arpa", "PTR",
             lambda r: [rd.to_text() for rs in r.answer for rd in rs] == [f"{WEB}."])
    assert is_nxdomain(server.ask("10.0.96.10.in-addr.arpa", "PTR"))
    assert has_addresses("10.96.0.20")(server.ask(API))


def test_an_added_service_is_served_within_two_seconds(
        serve: Callable[[], RunningServer], cluster_file: Path) -> None:
    server = serve()
    assert is_nxdomain(server.ask(DB))
    write(cluster_file, cluster_yaml(("web", "10.96.0.10"), ("api", "10.96.0.20"),
                                     ("db", "10.96.0.30")))
    wait_for(server, DB, "A", has_addresses("10.96.0.30"))
    srv = server.ask(f"_http._tcp.{DB}", "SRV")
    assert [rd.to_text() for rs in srv.answer for rd in rs] == [f"0 100 80 {DB}."]
    assert has_addresses("10.96.0.10")(server.ask(WEB))


def test_a_deleted_service_is_nxdomain_within_two_seconds(
        serve: Callable[[], RunningServer], cluster_file: Path) -> None:
    server = serve()
    assert has_addresses("10.96.0.20")(server.ask(API))
    write(cluster_file, cluster_yaml(("web", "10.96.0.10")))
    wait_for(server, API, "A", is_nxdomain)
    assert is_nxdomain(server.ask(f"_http._tcp.{API}", "SRV"))
    assert is_nxdomain(server.ask("20.0.96.10.in-addr.arpa", "PTR"))
    assert has_addresses("10.96.0.10")(server.ask(WEB))


def test_the_soa_serial_increases_with_each_publish(
        serve: Callable[[], RunningServer], cluster_file: Path) -> None:
    server = serve()
    serials = [soa_serial(server)]
    for n in range(1, 4):
        write(cluster_file, cluster_yaml(("web", f"10.96.0.{10 + n}"), ("api", "10.96.0.20")))
        wait_for(server, WEB, "A", has_addresses(f"10.96.0.{10 + n}"))
        serials.append(soa_serial(server))
    assert serials == sorted(set(serials)), f"serials do not increase: {serials}"
    # The serial in a negative answer's SOA is the same generation.
    reply = server.ask(f"nope.default.svc.{ZONE}")
    (soa,) = reply.authority
    assert int(soa[0].serial) == serials[-1]


# ------------------------------------------------------------------------ broken edits


def test_a_broken_edit_keeps_the_old_answers_and_logs_why(
        serve: Callable[[], RunningServer], cluster_file: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    server = serve()
    serial = soa_serial(server)
    write(cluster_file, BROKEN)
    started = time.monotonic()
    while time.monotonic() - started < STEADY:
        assert_original_served(server)
        time.sleep(0.05)
    assert soa_serial(server) == serial, "a broken edit must not publish"
    errors = file_messages(caplog, logging.ERROR)
    assert len(errors) == 1, errors  # logged once per change, not once per poll
    assert str(cluster_file) in errors[0]
    assert "not valid YAML" in errors[0] and "line" in errors[0]
    assert "previous snapshot" in errors[0]


def test_fixing_a_broken_edit_is_picked_up(
        serve: Callable[[], RunningServer], cluster_file: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    server = serve()
    serial = soa_serial(server)
    write(cluster_file, BROKEN)
    started = time.monotonic()
    while not file_messages(caplog, logging.ERROR):
        assert time.monotonic() - started < DEADLINE, "the broken edit was not noticed"
        time.sleep(0.02)
    assert_original_served(server)
    write(cluster_file, cluster_yaml(("web", "10.96.0.10"), ("api", "10.96.0.20"),
                                     ("db", "10.96.0.30")))
    wait_for(server, DB, "A", has_addresses("10.96.0.30"))
    assert soa_serial(server) > serial


def test_a_deleted_file_keeps_the_old_answers_and_logs_the_file(
        serve: Callable[[], RunningServer], cluster_file: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    server = serve()
    cluster_file.unlink()
    started = time.monotonic()
    while not file_messages(caplog, logging.ERROR):
        assert time.monotonic() - started < DEADLINE, "the missing file was not noticed"
        time.sleep(0.02)
    assert str(cluster_file) in file_messages(caplog, logging.ERROR)[0]
    assert_original_served(server)
    write(cluster_file, cluster_yaml(("web", "10.96.0.12")))
    wait_for(server, WEB, "A", has_addresses("10.96.0.12"))


# ----------------------------------------------------------------- malformed objects


def test_a_malformed_object_is_skipped_with_a_warning_and_the_rest_is_served(
        make_server: Callable[..., RunningServer], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    path = tmp_path / "c.yaml"
    write(path, cluster_yaml(("web", "10.96.0.10"), ("bad", "10.96.0.999"),
                             ("api", "10.96.0.20")))
    server = make_server(source=SourceSpec("file", (path,)), poll_interval=0.1)
    assert has_addresses("10.96.0.10")(server.ask(WEB))
    assert has_addresses("10.96.0.20")(server.ask(API))
    assert is_nxdomain(server.ask(BAD))
    (warning,) = file_messages(caplog, logging.WARNING)
    assert str(path) in warning
    assert "document 3" in warning
    assert "Service default/bad" in warning
    assert "spec.clusterIP" in warning and "10.96.0.999" in warning


def test_a_malformed_object_in_an_edit_is_skipped_and_the_edit_is_served(
        serve: Callable[[], RunningServer], cluster_file: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    server = serve()
    serial = soa_serial(server)
    text = cluster_yaml(("web", "10.96.0.10"), ("db", "10.96.0.30"))
    text += "---\n" + service("bad", "not-an-ip")
    write(cluster_file, text)
    wait_for(server, DB, "A", has_addresses("10.96.0.30"))
    assert is_nxdomain(server.ask(API))
    assert is_nxdomain(server.ask(BAD))
    assert soa_serial(server) > serial
    warnings = file_messages(caplog, logging.WARNING)
    assert len(warnings) == 1, warnings
    assert str(cluster_file) in warnings[0]
    assert "document 4" in warnings[0] and "Service default/bad" in warnings[0]
    assert "spec.clusterIP" in warnings[0] and "not-an-ip" in warnings[0]


# ------------------------------------------------------------- half-written dumps


MANY = [(f"svc{i}", f"10.96.1.{i}") for i in range(60)]


def test_a_dump_truncated_then_written_slowly_in_place_is_loaded_only_once_complete(
        serve: Callable[[], RunningServer], cluster_file: Path) -> None:
    """What ``kubectl get ... > dump.yaml`` and slow writers do: the file is empty, then
    half written, for a while. No query may see that: every name keeps its answer until
    the complete file has settled, and then the change is served."""
    write(cluster_file, cluster_yaml(*MANY))
    server = serve()
    wait_for(server, "svc59.default.svc.cluster.local", "A", has_addresses("10.96.1.59"))
    text = cluster_yaml(*MANY, ("late", "10.96.1.200")).encode()
    wrong: list[str] = []
    done = threading.Event()

    def writer() -> None:
        with cluster_file.open("wb") as out:  # truncated here
            time.sleep(0.3)
            for start in range(0, len(text), 400):
                out.write(text[start:start + 400])
                out.flush()
                time.sleep(0.04)  # pauses well under the 0.5 s settle interval
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    checked = 0
    while not done.is_set():
        name, ip = MANY[checked % len(MANY)]
        reply = server.ask(f"{name}.default.svc.cluster.local", "A")
        if not has_addresses(ip)(reply):
            wrong.append(f"{name}: {dns.rcode.to_text(reply.rcode())} {addresses(reply)}")
        checked += 1
    thread.join()
    assert checked > 100
    assert wrong == [], wrong[:5]
    wait_for(server, f"late.default.svc.{ZONE}", "A", has_addresses("10.96.1.200"),
             deadline=DEADLINE + 1.0)
    assert has_addresses("10.96.1.0")(server.ask(f"svc0.default.svc.{ZONE}"))


@pytest.mark.parametrize("text", ["", "\n", "kind: ConfigMap\nmetadata: {name: x}\n",
                                  "kind: List\nitems: []\n"],
                         ids=["empty", "blank", "no-supported-kind", "empty-list"])
def test_a_dump_with_no_objects_after_one_with_objects_is_refused_and_answers_stay(
        serve: Callable[[], RunningServer], cluster_file: Path,
        caplog: pytest.LogCaptureFixture, text: str) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    server = serve()
    assert_original_served(server)
    write(cluster_file, text)
    started = time.monotonic()
    while time.monotonic() - started < STEADY:
        assert_original_served(server)
        time.sleep(0.05)
    (warning,) = file_messages(caplog, logging.WARNING)
    assert warning == (f"{cluster_file}: no objects in it (empty, or still being written?); "
                       "keeping the previous 3 objects")
    write(cluster_file, cluster_yaml(("web", "10.96.0.12")))  # a real edit still works
    wait_for(server, WEB, "A", has_addresses("10.96.0.12"))
    wait_for(server, API, "A", is_nxdomain)
