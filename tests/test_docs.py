"""The user's documentation stands alone and holds no leftovers of a terminal session."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_docs_link_nowhere_outside_the_repository_and_hold_no_pasted_tracebacks():
    for path in DOCS:
        text = path.read_text()
        assert not re.search(r"\]\((https?:)?//", text), f"{path.name} links outside the repository"
        assert "Traceback (most recent call last)" not in text and not re.search(r'File "/', text), path.name
        assert "/work/" not in text, f"{path.name} names a path of a development machine"


def test_docs_name_files_that_exist():
    """Every `uld/...` or `benchmarks/...` or `tests/...` path the docs name is a file of the repository."""
    missing = []
    for path in DOCS:
        for name in re.findall(r"`((?:src/)?(?:uld|benchmarks|tests|docs)/[\w/.-]+\.(?:py|md))", path.read_text()):
            candidates = [ROOT / name, ROOT / "src" / name]
            if not any(candidate.is_file() for candidate in candidates):
                missing.append(f"{path.name}: {name}")
    assert not missing, missing
