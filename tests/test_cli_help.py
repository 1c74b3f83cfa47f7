"""``--help`` and the README's command-line synopsis, as a user reads them.

Why: the README's synopsis lacked ``--workers``, ``--fallthrough`` and ``--log-level``,
and ``--help`` did not say what an option does when it is left out (that ``serve``
listens on 0.0.0.0:53, for one). These tests run ``python -m clusterdns ... --help``
and hold the README and the help to each other and to the built-in ``Config``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from clusterdns.config import Config
from conftest import ROOT

COMMANDS = ["serve", "records", "check-config"]
# Options with no default to show: the help itself, and no file unless one is given.
NO_DEFAULT = {"serve": {"-h", "--config", "--corefile"},
              "records": {"-h", "--config", "--corefile"},
              "check-config": {"-h"}}


def help_text(*command: str) -> str:
    """``clusterdns [COMMAND] --help`` on a terminal wide enough that nothing wraps."""
    env = {**os.environ, "COLUMNS": "1000"}
    result = subprocess.run([sys.executable, "-m", "clusterdns", *command, "--help"],
                            cwd=ROOT, capture_output=True, text=True, timeout=30,
                            check=False, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def usage_of(*command: str) -> str:
    """The usage line of ``--help``, without ``usage:``, whitespace collapsed."""
    first = help_text(*command).split("\n\n", 1)[0]
    assert first.startswith("usage: "), first
    return " ".join(first.removeprefix("usage: ").split())


def options_of(*command: str) -> dict[str, str]:
    """Each option of ``--help`` (its first spelling, e.g. ``--ttl``) and its help text,
    whitespace collapsed."""
    text = help_text(*command)
    section = text.split("\noptions:\n", 1)[1]
    entries: dict[str, str] = {}
    name = ""
    for line in section.splitlines():
        if not line.strip():
            break
        match = re.match(r"  (-[^\s,]+)(?:, -\S+)?(?: \S+)?(?:\s{2,}(.*))?$", line)
        if match and not line.startswith("   "):
            name = match.group(1)
            entries[name] = match.group(2) or ""
        else:
            entries[name] = (entries[name] + " " + line.strip()).strip()
    return entries


def readme_synopsis() -> dict[str, str]:
    """The README's "Command line" block: each ``clusterdns ...`` command (continuation
    lines joined, ``#`` comment lines skipped), keyed by its subcommand ("" for none)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```\n(.*?)```", section, re.DOTALL)
    assert block is not None, "the Command line section has no synopsis block"
    commands: dict[str, str] = {}
    key = None
    for line in block.group(1).splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.startswith("clusterdns "):
            word = line.split()[1]
            key = word if not word.startswith("[") else ""
            assert key not in commands, f"{line!r} twice in the synopsis"
            commands[key] = line
        else:
            assert key is not None and line.startswith(" "), line
            commands[key] += " " + line
    return {k: " ".join(v.split()) for k, v in commands.items()}


def test_the_readme_synopsis_has_every_command_and_coredns_s_command_line() -> None:
    assert set(readme_synopsis()) == {"", *COMMANDS, "-conf"}
    assert readme_synopsis()["-conf"] == "clusterdns -conf FILE"


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_the_readme_synopsis_of_each_command_is_the_usage_line_of_its_help(
        command: str) -> None:
    args = [command] if command else []
    assert readme_synopsis()[command] == usage_of(*args)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_with_a_default_shows_it_in_help(command: str) -> None:
    options = options_of(command)
    assert len(options) >= 3, options
    missing = [f"{name}: {text}" for name, text in options.items()
               if name not in NO_DEFAULT[command] and "(default: " not in text]
    assert not missing, "\n".join(missing)


def test_serve_help_shows_the_built_in_defaults_of_the_config() -> None:
    cfg = Config()
    options = options_of("serve")
    expected = {
        "--listen": "0.0.0.0:53",
        "--ttl": str(cfg.ttl),
        "--source": "kubernetes",
        "--zone": ", ".join(cfg.zones),
        "--pods": cfg.pods.value,
        "--health": str(cfg.health),
        "--ready": str(cfg.ready),
        "--metrics": str(cfg.metrics),
        "--lameduck": f"{cfg.lameduck:g}",
        "--workers": str(cfg.workers),
        "--log-level": "info",
        "--log-queries": "off",
    }
    for name, default in expected.items():
        assert name in options, (name, sorted(options))
        assert options[name].endswith(f"(default: {default})"), (name, options[name])


def test_check_config_help_shows_its_own_log_level_default() -> None:
    assert options_of("check-config")["--log-level"].endswith("(default: warning)")
