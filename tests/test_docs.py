"""The documentation lives in the repository and stays true to it.

A clone must be complete: no file may send readers (or code) to a path outside the
repository, every relative link in the Markdown pages must reach a file that exists, a
document named by its file name must be one the repository has, and every test that
``docs/contract.md`` names under a rule must exist where it says. Each checker is a plain
function of a root directory and a list of files, run here on the repository itself and,
by the ``test_the_checker_…`` tests, on small made-up trees that break each rule, so that
a checker that stopped finding anything would fail too.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = ROOT / "docs" / "contract.md"
DOCS = ROOT / "docs"

TEXT_SUFFIXES = frozenset({".md", ".py", ".toml", ".yaml", ".yml", ".cfg", ".ini", ".txt",
                           ".sh", ".json", ".in"})
TEXT_NAMES = frozenset({"Dockerfile", "Corefile", ".dockerignore", ".gitignore"})

GENERATED = frozenset({"bench/results/latest.md"})
"""Documents the code writes (``bench.run_all``): named, but not kept in the repository."""

# Spelled in pieces, so that the made-up trees of the self-tests below do not put bad
# references into this file itself.
UP = ".." + "/"
MD = "." + "md"
FILE_URL = "file" + "://"
URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://\S+")
MD_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
MD_REFERENCE = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
CLIMB = re.compile(r"(?:(?<=[\s`'\"(\[<=:,])|^)((?:\.\./)+[^\s`'\"()\[\]<>,;*]*)")
MD_MENTION = re.compile(r"(?<![\w./-])([\w./-]*[\w-]\.md)\b")
TEST_FILE = re.compile(r"\btests/[\w/]+\.py\b")
TEST_NAME = re.compile(r"(?<![\w/])(test_\w+)\b(?!\.py|…|\.\.\.)")  # not a name's start
RULE = re.compile(r"^\*\*S(\d+)\.(\d+)\b", re.MULTILINE)


# --------------------------------------------------------------------------- the files


def repository_files(root: Path = ROOT) -> list[str]:
    """Text files of the repository, relative to ``root``: what git tracks, plus new files
    it would track (not ignored); without git, every file outside the usual caches."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root, capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
                ".hypothesis", "build", "dist"}
        listed = [str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and not skip & set(p.relative_to(root).parts)]
    return sorted(path for path in set(listed) if path and is_text(path)
                  and (root / path).is_file())  # a file moved away but not yet staged


def is_text(path: str) -> bool:
    name = Path(path)
    return (name.suffix in TEXT_SUFFIXES or name.name in TEXT_NAMES
            or name.name.startswith("Corefile") or path.startswith(".ci/"))


def _lines(root: Path, files: Iterable[str]) -> Iterable[tuple[str, int, str]]:
    for path in files:
        try:
            text = (root / path).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            yield path, number, line


def _link_targets(line: str, markdown: bool) -> list[str]:
    targets = MD_LINK.findall(line)
    if markdown:
        ref = MD_REFERENCE.match(line)
        if ref:
            targets.append(ref.group(1))
    return targets


def _is_external(target: str) -> bool:
    """A web address or a link inside the same page: nothing on disk to check."""
    return target.startswith(("#", "http://", "https://", "mailto:"))


def _inside(root: Path, path: str) -> bool:
    root_text = os.path.normpath(root)
    return os.path.normpath(path) == root_text or os.path.normpath(path).startswith(
        root_text + os.sep)


def _resolve(root: Path, source: str, target: str) -> str:
    """Where a link or path written in ``source`` leads (a leading slash: the repository
    root, as GitHub reads it)."""
    target = target.split("#", 1)[0].split("?", 1)[0]
    if target.startswith("/"):
        return os.path.normpath(os.path.join(root, target.lstrip("/")))
    return os.path.normpath(os.path.join(root, os.path.dirname(source), target))


# -------------------------------------------------------------------------- the checks


def references_outside(root: Path, files: Iterable[str]) -> list[str]:
    """``file:line: what`` for each link or path that leaves the repository."""
    found = []
    for path, number, line in _lines(root, files):
        targets = _link_targets(line, markdown=path.endswith(".md"))
        for target in targets:
            if target.startswith("file:"):
                found.append(f"{path}:{number}: {target} (a file on one machine)")
            elif not _is_external(target) and not _inside(root, _resolve(root, path, target)):
                found.append(f"{path}:{number}: {target} (a link out of the repository)")
        for climb in CLIMB.findall(URL.sub(" ", line)):
            if climb not in targets and not _inside(root, _resolve(root, path, climb)):
                found.append(f"{path}:{number}: {climb} (a path out of the repository)")
    return found


def broken_links(root: Path, files: Iterable[str]) -> list[str]:
    """``file:line: target`` for each relative Markdown link to a file that is not there."""
    found = []
    for path, number, line in _lines(root, (f for f in files if f.endswith(".md"))):
        for target in _link_targets(line, markdown=True):
            if _is_external(target) or target.startswith("file:"):
                continue
            if not os.path.exists(_resolve(root, path, target)):
                found.append(f"{path}:{number}: {target}")
    return found


def unknown_documents(root: Path, files: list[str]) -> list[str]:
    """``file:line: name`` for each ``*.md`` document named that the repository lacks."""
    known = {f for f in files if f.endswith(".md")} | GENERATED
    found = []
    for path, number, line in _lines(root, files):
        for name in MD_MENTION.findall(URL.sub(" ", line)):
            if "/" in name:  # a path: from the file's folder, or from the repository root
                here = os.path.relpath(_resolve(root, path, name), root)
                if here in known or os.path.normpath(name) in known:
                    continue
            elif any(k == name or k.endswith("/" + name) for k in known):
                continue  # a bare file name: some folder has it
            found.append(f"{path}:{number}: {name}")
    return found


def _defined_tests(tests_dir: Path) -> dict[str, set[str]]:
    """Test function name -> the files (``tests/...py``) that define it."""
    where: dict[str, set[str]] = {}
    for file in tests_dir.rglob("*.py"):
        rel = f"tests/{file.relative_to(tests_dir).as_posix()}"
        for name in re.findall(r"^\s*(?:async\s+)?def\s+(test_\w+)\s*\(", file.read_text(
                encoding="utf-8"), re.MULTILINE):
            where.setdefault(name, set()).add(rel)
    return where


def missing_tests(contract: str, tests_dir: Path) -> list[str]:
    """What ``contract`` names that ``tests_dir`` lacks: test files, and test functions
    (in the file named on the same line, when one is)."""
    defined = _defined_tests(tests_dir)
    found = []
    for number, line in enumerate(contract.splitlines(), 1):
        files = TEST_FILE.findall(line)
        for file in files:
            if not (tests_dir.parent / file).is_file():
                found.append(f"line {number}: {file} does not exist")
        for name in TEST_NAME.findall(line):
            homes = defined.get(name, set())
            if not homes:
                found.append(f"line {number}: {name} is defined nowhere in tests/")
            elif len(files) == 1 and files[0] not in homes:
                found.append(f"line {number}: {name} is not in {files[0]} "
                             f"(it is in {', '.join(sorted(homes))})")
    return found


def rules_without_tests(contract: str) -> list[str]:
    """Rules (``**S2.3 …**`` paragraphs) that name no test, and §S2 rules none of whose
    tests carries the rule's number (``test_s2_3_…``)."""
    found = []
    rules: list[tuple[str, str, list[str]]] = []
    for line in contract.splitlines():
        match = RULE.match(line)
        if match:
            rules.append((match.group(1), match.group(2), []))
        elif line.startswith("## ") and rules:
            rules.append(("", "", []))  # a section heading ends the rule before it
        if rules:
            rules[-1][2].append(line)
    for section, sub, body in rules:
        if not section:
            continue
        names = TEST_NAME.findall("\n".join(body))
        if not names:
            found.append(f"S{section}.{sub} names no test")
        elif section == "2" and not any(n.startswith(f"test_s2_{sub}_") for n in names):
            found.append(f"S2.{sub} names no test_s2_{sub}_... test")
    return found


# ---------------------------------------------------------------- on the repository


def test_no_file_in_the_repository_links_or_points_outside_it() -> None:
    found = references_outside(ROOT, repository_files())
    assert not found, "references that leave the repository:\n" + "\n".join(found)


def test_every_relative_markdown_link_reaches_a_file_of_the_repository() -> None:
    found = broken_links(ROOT, repository_files())
    assert not found, "links to files that do not exist:\n" + "\n".join(found)


def test_every_document_named_by_its_file_name_is_in_the_repository() -> None:
    found = unknown_documents(ROOT, repository_files())
    assert not found, "documents named that the repository does not have:\n" + "\n".join(
        found)


def test_every_test_the_contract_names_exists_where_it_says() -> None:
    contract = CONTRACT.read_text(encoding="utf-8")
    assert len(set(TEST_NAME.findall(contract))) >= 300, "the contract names too few tests"
    found = missing_tests(contract, ROOT / "tests")
    assert not found, "docs/contract.md names tests that do not exist:\n" + "\n".join(found)


def test_every_rule_of_the_contract_names_the_tests_that_hold_it() -> None:
    contract = CONTRACT.read_text(encoding="utf-8")
    assert len(RULE.findall(contract)) >= 40, "the contract has too few numbered rules"
    found = rules_without_tests(contract)
    assert not found, "\n".join(found)


def test_the_readme_links_the_contract_the_architecture_and_the_limits() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = set(MD_LINK.findall(readme))
    for page in ("docs/contract.md", "docs/architecture.md", "docs/limits.md"):
        assert page in links, f"README.md does not link {page}"


def test_the_docs_index_lists_every_page_in_docs() -> None:
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    listed = set(MD_LINK.findall(index))
    pages = {p.name for p in DOCS.glob("*.md") if p.name != "README.md"}
    assert pages, "docs/ has no pages"
    assert pages <= listed, f"docs/README.md does not list {sorted(pages - listed)}"


# ------------------------------------------------------- the checkers can fail at all


def _tree(root: Path, files: dict[str, str]) -> list[str]:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return sorted(files)


def test_the_checker_flags_links_and_paths_that_climb_out_of_the_repository(
        tmp_path: Path) -> None:
    root = tmp_path / "repo"
    files = _tree(root, {
        f"README{MD}": (f"See [the spec]({UP}shared/SPEC{MD}) and [us](docs/a{MD}).\n"
                        f"`{UP}shared/DESIGN{MD}` has the rest.\n"
                        f"[web](https://example.com/{UP}x{MD}) [here](#top)\n"
                        f"[local]({FILE_URL}/home/me/notes.txt)\n"),
        f"docs/a{MD}": f"[home]({UP}README{MD}) and [far]({UP}{UP}elsewhere{MD})\n",
        "pkg/mod.py": f'"""Read {UP}{UP}notes/plan.txt first; {UP}README{MD} is fine."""\n',
        "config/x.yaml": "path: /etc/resolv.conf\n",
    })
    assert references_outside(root, files) == [
        f"README{MD}:1: {UP}shared/SPEC{MD} (a link out of the repository)",
        f"README{MD}:2: {UP}shared/DESIGN{MD} (a path out of the repository)",
        f"README.md:4: {FILE_URL}/home/me/notes.txt (a file on one machine)",
        f"docs/a{MD}:1: {UP}{UP}elsewhere{MD} (a link out of the repository)",
        f"pkg/mod.py:1: {UP}{UP}notes/plan.txt (a path out of the repository)",
    ]


def test_the_checker_flags_links_to_files_that_do_not_exist(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    files = _tree(root, {
        f"README{MD}": f"[a](docs/a{MD}#part) [gone](docs/gone{MD}) [root](/docs/a{MD})\n",
        f"docs/a{MD}": f"[back]({UP}README{MD}) [limits](limits{MD})\n[ref]: missing{MD}\n",
    })
    assert broken_links(root, files) == [
        f"README{MD}:1: docs/gone{MD}", f"docs/a{MD}:1: limits{MD}",
        f"docs/a{MD}:2: missing{MD}"]


def test_the_checker_flags_documents_named_that_the_repository_lacks(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    files = _tree(root, {
        f"README{MD}": (f"See docs/a{MD} and a{MD}, bench/results/latest.md, "
                        f"https://x.org/b{MD}\n"),
        f"docs/a{MD}": f"As README{MD} and {UP}README{MD} say; not {UP}shared/SPEC{MD}.\n",
        "tests/test_x.py": f'"""As DESIGN{MD} promises; see docs/b{MD}, not *{MD}."""\n',
    })
    assert unknown_documents(root, files) == [
        f"docs/a{MD}:1: {UP}shared/SPEC{MD}",
        f"tests/test_x.py:1: DESIGN{MD}", f"tests/test_x.py:1: docs/b{MD}"]


def test_the_checker_flags_tests_the_contract_names_that_do_not_exist(tmp_path: Path) -> None:
    tests = tmp_path / "tests"
    _tree(tmp_path, {
        "tests/test_s2_a.py": "def test_s2_1_real() -> None: ...\n",
        "tests/test_s2_b.py": "async def test_other() -> None: ...\n",
    })
    contract = (
        "- `tests/test_s2_a.py`: `test_s2_1_real`, `test_other`\n"
        "- `tests/test_s2_b.py`: `test_other`, `test_s2_1_invented`\n"
        "- `tests/test_gone.py`: `test_s2_1_real`\n"
        "Anywhere: `test_other`, `test_s2_1_real`.\n")
    assert missing_tests(contract, tests) == [
        "line 1: test_other is not in tests/test_s2_a.py (it is in tests/test_s2_b.py)",
        "line 2: test_s2_1_invented is defined nowhere in tests/",
        "line 3: tests/test_gone.py does not exist",
        "line 3: test_s2_1_real is not in tests/test_gone.py (it is in tests/test_s2_a.py)",
    ]


def test_the_checker_flags_rules_that_name_no_test_or_no_numbered_one() -> None:
    contract = (
        "## §S1\n**S1.1 Zones.** text\n*Tests:* `test_s1_zones`\n"
        "**S1.2 Case.** text without tests\n"
        "## §S2\n**S2.1 Version.** `test_s2_1_version`\n"
        "**S2.2 Services.** `test_s2_3_wrong_number`\n")
    assert rules_without_tests(contract) == [
        "S1.2 names no test", "S2.2 names no test_s2_2_... test"]
