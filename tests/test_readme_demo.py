"""The README's first command works: serve the demo, ask it with the real dig, stop it.

    clusterdns serve --config config/demo.yaml
    dig @127.0.0.1 -p 5353 httpenv.default.svc.cluster.local

The demo listens on the fixed port 5353, so a busy port fails this test with a message
saying so (a skip would hide that the README's command does not work on this machine).
"""

from __future__ import annotations

import errno
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

from conftest import ROOT

DEMO_PORT = 5353
NAME = "httpenv.default.svc.cluster.local"


def _readme_first_command() -> list[str]:
    """The ``clusterdns serve ...`` part of the README's first command."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```sh\n(.*?)```", readme, re.DOTALL)
    assert block is not None, "README has no sh block"
    commands = [line for line in block.group(1).splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    match = re.search(r"clusterdns (serve [^&;|]*)", commands[0])
    assert match is not None, f"README's first command does not run clusterdns serve: {commands[0]}"
    return match.group(1).split()


def _port_free(port: int) -> str | None:
    """None if 127.0.0.1:port is free for UDP and TCP, else what is in the way."""
    for kind, name in ((socket.SOCK_DGRAM, "UDP"), (socket.SOCK_STREAM, "TCP")):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return f"{name} 127.0.0.1:{port} is already in use"
                raise
    return None


@pytest.fixture
def demo_process() -> Iterator[subprocess.Popen[str]]:
    busy = _port_free(DEMO_PORT)
    if busy is not None:
        pytest.fail(f"cannot run the README demo: {busy} (the demo config listens on "
                    f"127.0.0.1:{DEMO_PORT}); stop whatever uses it and run again")
    args = _readme_first_command()
    assert args[:3] == ["serve", "--config", "config/demo.yaml"]
    proc = subprocess.Popen([sys.executable, "-m", "clusterdns", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=5)


def _wait_until_answering(proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 15
    query = dns.message.make_query(NAME, "A")
    while True:
        if proc.poll() is not None:
            _, err = proc.communicate(timeout=5)
            pytest.fail(f"clusterdns serve exited with {proc.returncode} before answering:\n{err}")
        try:
            dns.query.udp(query, "127.0.0.1", port=DEMO_PORT, timeout=0.2)
            return
        except (dns.exception.Timeout, ConnectionRefusedError):
            if time.monotonic() > deadline:
                pytest.fail("clusterdns serve did not answer on 127.0.0.1:5353 within 15 s")


def test_the_readme_demo_answers_dig_and_stops_cleanly_on_sigterm(
        demo_process: subprocess.Popen[str]) -> None:
    dig = shutil.which("dig")
    assert dig is not None, "dig is not installed (apt-get install -y dnsutils)"
    _wait_until_answering(demo_process)

    out = subprocess.run([dig, "@127.0.0.1", "-p", str(DEMO_PORT), NAME],
                         capture_output=True, text=True, timeout=15, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    header = re.search(r"->>HEADER<<- opcode: QUERY, status: (\w+)", out.stdout)
    assert header is not None and header.group(1) == "NOERROR", out.stdout
    flags = re.search(r";; flags: ([a-z ]+);", out.stdout)
    assert flags is not None and "aa" in flags.group(1).split(), out.stdout
    answer = re.search(r";; ANSWER SECTION:\n(.*?)\n\n", out.stdout, re.DOTALL)
    assert answer is not None, out.stdout
    assert re.fullmatch(rf"{re.escape(NAME)}\.\s+5\s+IN\s+A\s+10\.108\.189\.10",
                        answer.group(1).strip()), answer.group(1)

    demo_process.send_signal(signal.SIGTERM)
    try:
        code = demo_process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pytest.fail("clusterdns serve did not exit within 5 s of SIGTERM")
    _, err = demo_process.communicate(timeout=5)
    assert code == 0, f"exit code {code} after SIGTERM:\n{err}"
    assert "Traceback" not in err, err
