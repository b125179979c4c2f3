"""Messages, help texts and docs name no internal "spec §" sections (issue 12): a user cannot look them up.

Scans the package, the docs, the examples and the README (text files only) for "§" and "spec §"-style
references; docs/ and the package point to docs/method.md and docs/conventions.md instead.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = {".py", ".md", ".rst", ".txt", ".yaml", ".yml", ".toml", ".cfg", ".sh"}
PATTERN = re.compile(r"§|\bspec(?:ification)? \"|\bthe spec\b|\bspec's\b|of the specification|specification's test",
                     re.IGNORECASE)


def _files():
    for top in ("aiida_optddap", "docs", "examples"):
        for path in sorted((ROOT / top).rglob("*")):
            if path.suffix in SUFFIXES and path.is_file() and "_build" not in path.parts:
                yield path
    yield ROOT / "README.md"


def test_no_internal_spec_sections():
    hits = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
            for path in _files()
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1)
            if PATTERN.search(line)]
    assert not hits, "\n".join(hits)
