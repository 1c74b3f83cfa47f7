"""The README's Troubleshooting section quotes log lines and extended errors that the
code really produces.

Why: a troubleshooting entry is only useful if the user can find its line in their log.
Each quoted log line (``LEVEL LOGGER: MESSAGE``, ``…`` for what varies) must come from
that logger's module, its fixed pieces being string constants there; each quoted
extended error text must be one of the package's; and the port-in-use line is checked
against a real ``clusterdns serve`` whose port is taken.
"""

from __future__ import annotations

import ast
import re
import socket
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from conftest import DEMO_CLUSTER, ROOT

PACKAGE = ROOT / "clusterdns"
LOG_LINE = re.compile(r"(DEBUG|INFO|WARNING|ERROR) (clusterdns(?:\.\w+)*): (.+)")
EDE_LINE = re.compile(r"; EDE: \d+ \([\w ]+\): \((.+)\)")
BIND_LINE = "cannot listen for "  # checked by running serve, not against constants


def troubleshooting() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "\n## Troubleshooting\n" in readme
    return readme.split("\n## Troubleshooting\n", 1)[1].split("\n## ", 1)[0]


def quoted_lines() -> list[str]:
    """Every line of the section's code blocks, and every `inline` quote that is a
    whole log line or extended error."""
    text = troubleshooting()
    lines: list[str] = []
    for block in re.findall(r"```\n(.*?)```", text, re.DOTALL):
        lines += [line for line in block.splitlines() if line.strip()]
    prose = re.sub(r"```\n.*?```", "", text, flags=re.DOTALL)
    for inline in re.findall(r"`([^`]+)`", prose.replace("\n", " ")):
        if LOG_LINE.fullmatch(inline) or EDE_LINE.fullmatch(inline):
            lines.append(inline)
    return lines


def module_path(logger: str) -> Path:
    parts = logger.split(".")
    path = ROOT.joinpath(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


@cache
def constants(path: Path) -> tuple[str, ...]:
    """Every string constant of a module (implicitly joined literals as one; the fixed
    pieces of f-strings each on their own)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return tuple(node.value for node in ast.walk(tree)
                 if isinstance(node, ast.Constant) and isinstance(node.value, str))


def package_constants() -> tuple[str, ...]:
    return tuple(c for path in sorted(PACKAGE.rglob("*.py")) for c in constants(path))


def pieces(message: str) -> list[str]:
    """The fixed pieces of a quoted message, between the ``…`` placeholders."""
    return [piece for piece in message.split("…") if piece.strip()]


def missing_pieces(message: str, pool: tuple[str, ...]) -> list[str]:
    return [piece for piece in pieces(message) if not any(piece in c for c in pool)]


def test_the_section_covers_the_usual_problems() -> None:
    text = troubleshooting()
    for topic in ("**The port is in use.**", "**Permission denied on port 53.**",
                  "**SERVFAIL before the first sync.**", "**Forwarding loop detected.**",
                  "**Forwarding fails.**"):
        assert topic in text, topic
    for hint in ("setcap", "CAP_NET_BIND_SERVICE", "ip_unprivileged_port_start", "ss"):
        assert hint in text, hint


def test_every_quoted_log_line_comes_from_its_logger_s_module() -> None:
    logs = [LOG_LINE.fullmatch(line) for line in quoted_lines()]
    found = [m for m in logs if m is not None and BIND_LINE not in m.group(3)]
    assert len(found) >= 5, quoted_lines()
    wrong: list[str] = []
    for match in found:
        level, logger, message = match.groups()
        path = module_path(logger)
        if not path.exists():
            wrong.append(f"{logger}: no such module ({path})")
            continue
        missing = missing_pieces(message, constants(path))
        if missing:
            wrong.append(f"{logger}: not in {path.name}: {missing}")
        if f"log.{level.lower()}(" not in path.read_text(encoding="utf-8"):
            wrong.append(f"{logger}: {path.name} logs nothing at {level}")
    assert not wrong, "\n".join(wrong)


def test_every_quoted_extended_error_is_one_the_server_gives() -> None:
    texts = [m.group(1) for m in map(EDE_LINE.fullmatch, quoted_lines()) if m is not None]
    assert len(texts) >= 4, quoted_lines()
    pool = package_constants()
    wrong = {text: missing_pieces(text, pool) for text in texts}
    assert not any(wrong.values()), wrong


def test_the_port_in_use_line_is_what_serve_prints_when_its_port_is_taken() -> None:
    (line,) = [line for line in quoted_lines() if BIND_LINE in line]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "clusterdns", "serve", "--source", f"file:{DEMO_CLUSTER}",
             "--listen", f"127.0.0.1:{port}", "--health", "", "--ready", "",
             "--metrics", ""],
            cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2, result.stderr
    expected = line.replace("0.0.0.0:53", f"127.0.0.1:{port}")
    pattern = ".*".join(re.escape(piece) for piece in expected.split("…"))
    assert re.search(pattern, result.stderr), (expected, result.stderr)


@pytest.mark.parametrize("phrase", [
    "address already in use", "permission denied: ports below ",
    " need a privilege that this process (uid ", "CAP_NET_BIND_SERVICE",
    "setcap cap_net_bind_service=+ep ", "net.ipv4.ip_unprivileged_port_start=",
    "a pod-level sysctl in Kubernetes", "securityContext.capabilities.add: [NET_BIND_SERVICE]",
])
def test_the_bind_errors_the_section_describes_are_in_the_code(phrase: str) -> None:
    assert phrase.strip(" =") in troubleshooting().replace("\n", " "), phrase
    assert any(phrase in c for c in package_constants()), phrase
