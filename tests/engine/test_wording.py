"""Messages count correctly (issue 19 item 6: "1 atoms")."""

from __future__ import annotations

import json

from click.testing import CliRunner
from helpers import vasp_file

from aiida_optddap.engine.cli import main
from aiida_optddap.engine.fit import FitOptions, run_fit
from aiida_optddap.engine.io import read_density


def test_gaussian_export_of_one_atom(tmp_path):
    """bcc Fe has one atom per cell: the export says "1 atom"."""
    results = run_fit(read_density(vasp_file("fe_pyiron/CHGCAR_no_spin")), FitOptions(device="cpu", optimize=False))
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results, default=float))
    out = CliRunner().invoke(main, ["export", "gaussians", str(path), "-o", str(tmp_path / "g.json")])
    assert out.exit_code == 0, out.output
    assert "Gaussian-charge model of 1 atom written to" in out.output
