"""Every pointer in a comment resolves to a section of a file in the repository.

The one pointer form (docs/conventions.md, 'Pointers in comments'): a path relative to
the repository root, a comma, the heading's text in single quotes, e.g.
``docs/method.md, 'The CSA layer: search'``. Pointers to documents that are not in the
repository (the background notes the project started from, numbered issues) must not
come back.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("src", "tests", "tools", "benchmarks", "configs", "docs", "README.md")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".txt", ".js", ".html", ".css", ".cfg", ".ini"}
SKIPPED_DIRS = {"__pycache__", ".pytest_cache", "node_modules"}

POINTER = re.compile(r"((?:[\w.-]+/)*[\w.-]+\.md), '([^'\n]+)'")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
# Written so that this file does not match itself.
OUTSIDE = {
    "a numbered section of the method notes": re.compile(r"\bSPEC(?: [0-9§]|\.md)"),
    "the architecture notes": re.compile("ARCHI" "TECTURE"),
    "a numbered issue": re.compile(r"\(issue [0-9]+\)|\bissue [0-9]+\b"),
}


def scanned_files(root: Path = REPO) -> list[Path]:
    files: list[Path] = []
    for name in SCANNED:
        top = root / name
        candidates = [top] if top.is_file() else sorted(top.rglob("*"))
        for path in candidates:
            parts = set(path.relative_to(root).parts)
            if parts & SKIPPED_DIRS or any(p.endswith(".egg-info") for p in parts):
                continue
            if path.is_file() and path.suffix in TEXT_SUFFIXES:
                files.append(path)
    return files


def headings(md: Path) -> set[str]:
    """The text of every ATX heading of a markdown file, outside fenced code blocks."""
    found, fenced = set(), False
    for line in md.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            found.add(match.group(1))
    return found


def pointer_problems(root: Path = REPO) -> tuple[int, list[str]]:
    """(number of pointers seen, one line per pointer that does not resolve)."""
    count, problems, cache = 0, [], {}
    for path in scanned_files(root):
        text = path.read_text(encoding="utf-8", errors="replace")
        for lineno, line in enumerate(text.splitlines(), 1):
            for target, section in POINTER.findall(line):
                count += 1
                where = f"{path.relative_to(root)}:{lineno}"
                md = root / target
                if not md.is_file():
                    problems.append(f"{where}: {target} is not a file of the repository")
                    continue
                if md not in cache:
                    cache[md] = headings(md)
                if section not in cache[md]:
                    problems.append(f"{where}: {target} has no heading {section!r}")
    return count, problems


def outside_pointers(root: Path = REPO) -> list[str]:
    """One line per pointer at a document outside the repository."""
    found = []
    for path in scanned_files(root):
        text = path.read_text(encoding="utf-8", errors="replace")
        for lineno, line in enumerate(text.splitlines(), 1):
            for what, pattern in OUTSIDE.items():
                if pattern.search(line):
                    found.append(f"{path.relative_to(root)}:{lineno}: points at {what}: {line.strip()}")
    return found


def test_every_pointer_resolves_to_a_heading():
    count, problems = pointer_problems()
    assert count >= 30, f"only {count} pointers found: has the pointer form changed?"
    assert not problems, "\n".join(problems)


def test_no_pointer_to_a_document_outside_the_repository():
    found = outside_pointers()
    assert not found, "\n".join(found)


def test_docs_exist_with_their_sections():
    for name, sections in {
        "docs/method.md": ("The two stages", "The CSA layer", "The CSA layer: search", "The CSA layer: generate",
                           "The CSA layer: modes", "Losses", "Differences from the release"),
        "docs/conventions.md": ("Tensors and arrays", "The mask rule", "Exit codes", "Errors"),
    }.items():
        assert set(sections) <= headings(REPO / name), name


def test_headings_hold_no_single_quote():
    # A quote would end the pointer's section text early.
    for md in (REPO / "docs").glob("*.md"):
        assert not [h for h in headings(md) if "'" in h], md


# --- the checker itself -------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\n## Real section\n\n```\n## Fenced, not a heading\n```\n")
    (tmp_path / "src").mkdir()
    return tmp_path


def test_checker_accepts_a_good_pointer(tree: Path):
    (tree / "src" / "m.py").write_text("# see docs/a.md" ", 'Real section'\n")  # split: not a pointer of this file
    assert pointer_problems(tree) == (1, [])


@pytest.mark.parametrize("comment, problem", [
    ("# docs/a.md" ", 'Missing section'", "no heading 'Missing section'"),
    ("# docs/a.md" ", 'Fenced, not a heading'", "no heading"),
    ("# docs/b.md" ", 'Real section'", "docs/b.md is not a file"),
])
def test_checker_reports_a_bad_pointer(tree: Path, comment: str, problem: str):
    (tree / "src" / "m.py").write_text(comment + "\n")
    count, problems = pointer_problems(tree)
    assert count == 1 and len(problems) == 1 and problem in problems[0]


@pytest.mark.parametrize("comment", [
    "# the feature mask (SP" "EC 4)",
    "# exit codes (ARCHI" "TECTURE.md)",
    "# the fast layer (iss" "ue 3)",
])
def test_checker_finds_outside_pointers(tree: Path, comment: str):
    (tree / "src" / "m.py").write_text(comment + "\n")
    assert len(outside_pointers(tree)) == 1
