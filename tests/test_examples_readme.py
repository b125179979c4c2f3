"""examples/README.md lists every example script, with what it needs and how long it takes (issue 12)."""

from __future__ import annotations

import re
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_every_script_is_listed_with_needs_and_time():
    text = (EXAMPLES / "README.md").read_text()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([^`]+\.py)` \|.*$", text, flags=re.MULTILINE)}
    scripts = sorted(str(p.relative_to(EXAMPLES)) for p in EXAMPLES.rglob("*.py") if "data" not in p.parts)
    assert scripts and set(scripts) <= set(rows), sorted(set(scripts) - set(rows))
    for script in scripts:
        cells = [cell.strip() for cell in rows[script].strip("|").split("|")]
        assert len(cells) == 4 and all(cells), rows[script]  # script, what, needs, time
        assert re.search(r"\d+(\.\d+)? ?(s|min|h)\b|not measured", cells[3]), rows[script]
