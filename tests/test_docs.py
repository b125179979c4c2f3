"""The documentation builds without a single Sphinx warning (``sphinx-build -W --keep-going -b html``).

Skipped, with the reason, when Sphinx, furo or myst-parser is not installed (they are the ``docs`` extra:
``pip install -e ".[docs]"``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MISSING = [name for name in ("sphinx", "furo", "myst_parser") if importlib.util.find_spec(name) is None]
PAGES = ("index", "installation", "tutorial", "conventions", "method", "results-schema", "plugin-reference", "api")


@pytest.mark.skipif(
    bool(MISSING), reason=f"the docs build needs {', '.join(MISSING)} (install the docs extra: pip install -e '.[docs]')"
)
def test_docs_build_without_warnings(tmp_path):
    out = tmp_path / "html"
    # A private AiiDA configuration folder: conf.py loads a temporary (SqliteTempBackend) profile, and the
    # build must neither need nor touch the user's AiiDA configuration.
    env = {**os.environ, "AIIDA_PATH": str(tmp_path / "aiida")}
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", str(DOCS), str(out)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
    for page in PAGES:
        assert (out / f"{page}.html").is_file(), page
    for figure in ("planar_averages.png", "trajectory.png", "diff_planar_averages.png"):
        assert (out / "_images" / figure).is_file(), figure
    # the process specifications are generated from the code by aiida.sphinxext
    reference = (out / "plugin-reference.html").read_text(encoding="utf-8")
    assert "ERROR_NOT_CONVERGED" in reference and "OptDdapBaseWorkChain" in reference


def test_caching_section_says_the_daemon_needs_a_restart():
    """Issue 19: `verdi config set caching…` reaches the daemon's workers only after `verdi daemon restart`."""
    caching = (DOCS / "plugin.md").read_text().split("\n## Caching\n")[1].split("\n## ")[0]
    assert "verdi config set caching.enabled_for" in caching
    assert "verdi daemon restart" in caching


def test_every_named_test_file_exists():
    """Every ``tests/….py`` that the docs, READMEs, CONTRIBUTING.md, examples or the package name exists (the test
    tree moved to mirror the package; a stale path sends a reader nowhere)."""
    import re

    texts = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *DOCS.glob("*.md"), *(ROOT / "examples").rglob("*.md"),
             *(ROOT / "examples").rglob("*.py"), *(ROOT / "aiida_optddap").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]
    named = {m for path in texts for m in re.findall(r"\btests/[\w/]+\.py", path.read_text(errors="replace"))}
    assert len(named) > 20  # the pattern finds them
    missing = sorted(name for name in named if not (ROOT / name).is_file())
    assert not missing, missing
