"""``optddap.fit_inline``: the engine in-process, with provenance and the CalcJob's exit codes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from aiida import orm
from aiida.common import LinkType
from aiida.plugins import CalculationFactory

fit_charge_density = CalculationFactory("optddap.fit_inline")


@pytest.fixture(autouse=True)
def _engine():
    pytest.importorskip("aiida_optddap.engine.fit")


def test_inline_fit_provenance(nacl_chgcar, nacl_system, singlefile):
    density = singlefile(nacl_chgcar)
    outputs, node = fit_charge_density.run_get_node(density, orm.Dict({"optimize": False}),
                                                   zval=orm.Dict(nacl_system["zval"]))
    assert node.is_finished_ok, node.exit_message
    assert {"charges", "structure", "output_parameters", "planar_averages"} <= set(outputs)
    np.testing.assert_allclose(outputs["charges"].net_charges, [0.8237, -0.8237], atol=2e-3)
    assert outputs["charges"].is_stored and outputs["charges"].creator.pk == node.pk
    assert node.base.links.get_incoming(link_type=LinkType.INPUT_CALC).get_node_by_label("charge_density").pk \
        == density.pk
    assert node.process_type == "aiida.calculations:optddap.fit_inline"


def test_inline_matches_calcjob_recording(nacl_chgcar, singlefile):
    """Same numbers as the CLI run recorded in tests/aiida/recorded/nacl_results.json.

    The recording was made when the CLI's default g_c was rounded to 4.6289 (now it is √6 bohr⁻¹ exactly,
    like FitOptions'), so the recorded value is passed explicitly.
    """
    import json
    import pathlib

    recorded = json.loads((pathlib.Path(__file__).parent / "recorded" / "nacl_results.json").read_text())
    parameters = {"definition": "paper", "optimize": False, "gcut": recorded["parameters"]["gcut"]}
    outputs, node = fit_charge_density.run_get_node(singlefile(nacl_chgcar), orm.Dict(parameters),
                                                   zval=orm.Dict({"Na": 1, "Cl": 7}))
    np.testing.assert_allclose(outputs["charges"].populations, recorded["populations"], atol=1e-8)


def test_inline_not_converged_keeps_outputs(nacl_chgcar, singlefile):
    _, node = fit_charge_density.run_get_node(singlefile(nacl_chgcar), orm.Dict({"definition": "paper", "steps": 2, "starts": 1}))
    assert node.exit_status == 400
    assert "charges" in node.outputs and "trajectory" in node.outputs


def test_inline_exit_codes_for_engine_errors(nacl_chgcar, lih_chgcar, singlefile, tmp_path):
    _, node = fit_charge_density.run_get_node(singlefile(lih_chgcar),
                                              orm.Dict({"optimize": False, "solver": "lagrange"}))
    assert node.exit_status == 410 and "singular" in node.exit_message
    truncated = tmp_path / "CHGCAR"
    truncated.write_bytes(nacl_chgcar.read_bytes()[:3000])
    _, node = fit_charge_density.run_get_node(singlefile(truncated), orm.Dict({"optimize": False}))
    assert node.exit_status == 302 and "truncated" in node.exit_message
    with pytest.raises(ValueError, match="unknown key `nsteps`"):
        fit_charge_density(singlefile(nacl_chgcar), orm.Dict({"nsteps": 1}))


def test_plugin_import_does_not_import_torch():
    """The AiiDA layer (entry points, verdi) never imports torch or the numerical engine."""
    code = (
        "import sys\n"
        "from aiida.plugins import CalculationFactory, ParserFactory, DataFactory, WorkflowFactory\n"
        "CalculationFactory('optddap.fit'); CalculationFactory('optddap.fit_inline'); ParserFactory('optddap.fit')\n"
        "DataFactory('optddap.charges'); WorkflowFactory('optddap.base')\n"
        "import aiida_optddap.cli.data, aiida_optddap.cli.root\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('aiida_optddap.engine.gaussian.ddap',"
        " 'aiida_optddap.engine.fit', 'aiida_optddap.engine.gaussian.optimize'))]\n"
        "print(bad)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_inline_refuses_a_potential_named_like_a_density(singlefile, tmp_path):
    """As `optddap fit` does (tests/engine/test_bad_input.py): a LOCPOT-shaped grid in a CHGCAR is not a
    density."""
    import numpy as np
    from helpers import gaussian_density, write_chgcar

    cell, positions = np.eye(3) * 4.0, np.array([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
    q = np.array([[0.1, 0.15, 0.05], [2.4, 3.0, 2.3]])
    density = gaussian_density(cell, ["Na", "Cl"], positions, q, np.array([0.5, 0.75, 1.125]), (16, 16, 16))
    path = write_chgcar(tmp_path / "G_CHGCAR", cell, ["Na", "Cl"], positions, density.grid.mean() - density.grid)
    _, node = fit_charge_density.run_get_node(singlefile(path), orm.Dict({"optimize": False}))
    assert node.exit_status == 302 and "not a charge density" in node.exit_message
