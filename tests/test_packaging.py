"""The package metadata and what the sdist carries, checked without building anything.

Why: ``.ci/package`` builds the sdist and wheel (and fails on any warning) and
``.ci/image`` builds and runs the image, but both take a while; these checks are instant
and catch the usual slips first: a license that is not an SPDX string or whose file is
missing, a new test data file that MANIFEST.in would leave out of the sdist, and a CI
script that ``.ci/run`` no longer calls.
"""

from __future__ import annotations

import fnmatch
import os
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def test_the_license_is_an_spdx_string_and_its_file_ships() -> None:
    doc = _pyproject()
    project = doc["project"]
    assert project["license"] == "Apache-2.0"
    # setuptools 77 is the first to take `license` as an SPDX expression.
    requires = doc["build-system"]["requires"]
    assert any(r.replace(" ", "").startswith("setuptools>=77") for r in requires), requires
    files = project["license-files"]
    assert isinstance(files, list) and files
    for pattern in files:
        assert list(ROOT.glob(pattern)), f"license-files {pattern!r} matches nothing"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0" in text
    # With an SPDX license, setuptools rejects the License :: classifiers.
    assert not any(c.startswith("License ::") for c in project["classifiers"])


def _manifest_rules() -> list[tuple[str, list[str]]]:
    """(folder, file name patterns) for each recursive-include and graft of MANIFEST.in."""
    rules: list[tuple[str, list[str]]] = []
    for line in (ROOT / "MANIFEST.in").read_text().splitlines():
        words = line.split()
        if words and words[0] == "recursive-include":
            rules.append((words[1], words[2:]))
        elif words and words[0] == "graft":
            rules.append((words[1], ["*"]))
    return rules


def test_manifest_in_carries_every_file_of_the_folders_it_ships() -> None:
    """Every file under tests/, config/, bench/ and docs/ matches a rule of MANIFEST.in,
    so that the sdist's test suite runs (a new kind of file needs a new rule)."""
    rules = _manifest_rules()
    assert {folder for folder, _ in rules} >= {"tests", "config", "bench", "docs"}, rules
    left_out = []
    for top in ("tests", "config", "bench", "docs"):
        for dirpath, dirnames, filenames in os.walk(ROOT / top):
            dirnames[:] = [d for d in dirnames
                           if d != "__pycache__" and not d.startswith(".")
                           and not (top == "bench" and d == "results")]
            for name in filenames:
                if name.endswith((".pyc", ".pyo")) or name.startswith("."):
                    continue
                path = Path(dirpath, name).relative_to(ROOT)
                if not any(path.is_relative_to(folder)
                           and any(fnmatch.fnmatchcase(name, p) for p in patterns)
                           for folder, patterns in rules):
                    left_out.append(str(path))
    assert not left_out, f"MANIFEST.in leaves these out of the sdist: {left_out}"


def test_ci_runs_the_package_and_image_checks() -> None:
    run = (ROOT / ".ci" / "run").read_text().splitlines()
    for script in (".ci/package", ".ci/image"):
        assert script in run, f".ci/run does not call {script}"
        assert os.access(ROOT / script, os.X_OK), f"{script} is not executable"
