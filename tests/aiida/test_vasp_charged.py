"""A charged VASP run through ``optddap.vasp`` and through a VASP source of ``optddap.dataset`` (issue 19):
the retrieved OUTCAR reaches the fit as its ``outcar`` input (calcfunction ``outcar_from_retrieved``), so its
NELECT declares the charge of the cell as it does for ``optddap fit CHGCAR`` with the OUTCAR beside it.
Before, only a ``zval`` Dict read from the OUTCAR reached the fit, and a charged run ended 307 (a charge
nothing declared).

No charged VASP run is recorded in tests/data (VASP is licensed), so mock-vasp replays an NO⁺ stand-in made
here from the recorded ISPIN = 1 NO relaxation (tests/data/vasp_mock): its CHGCAR grid × 10/11 and NELECT 10
in its OUTCAR, the rest unchanged. That is not NO⁺'s self-consistent density, but its valence count is the
one of a charged run: Σ ZVAL − N = 11 − 10 = +1 e = Σ ZVAL − NELECT.
"""

from __future__ import annotations

import gzip
import re
import shutil

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import WorkflowFactory

from test_aiida_vasp import (  # noqa: E402,F401,F811  (fixtures)
    CASE,
    VASP_MOCK,
    _gunzip_into,
    called,
    mock_vasp_executable,
    potcar_family,
    vasp_builder,
)

SYSTEM = "NO+ stand-in"
#: Electrons of the stand-in (NELECT of its OUTCAR) and of the recorded NO run.
NELECT, NELECT_NO = 10.0, 11.0


def _scaled_chgcar(text: str, factor: float) -> str:
    """``text`` (a VASP 5 CHGCAR, one block) with every grid value × ``factor``; header, augmentation kept."""
    lines = text.splitlines(keepends=True)
    dims_at = next(i for i in range(8, len(lines)) if not lines[i].strip()) + 1
    count = int(np.prod([int(n) for n in lines[dims_at].split()]))
    values, end = [], dims_at + 1
    while len(values) < count:
        values.extend(lines[end].split())
        end += 1
    assert len(values) == count, "the grid block does not end on a line boundary"
    grid = np.array(values, dtype=float) * factor
    body = "".join(" " + " ".join(f"{v:.11E}" for v in grid[i:i + 5]) + "\n" for i in range(0, count, 5))
    return "".join(lines[:dims_at + 1]) + body + "".join(lines[end:])


@pytest.fixture(scope="module")
def charged_registry(tmp_path_factory):
    """A mock-vasp registry with one case: the recorded NO inputs with ``SYSTEM = NO+ stand-in``, replaying
    the recorded outputs with the CHGCAR scaled to 10 electrons and NELECT = 10 in the OUTCAR."""
    registry = tmp_path_factory.mktemp("mock_vasp_charged")
    case = registry / "nitric_oxide_cation_stand_in"
    shutil.copytree(VASP_MOCK / CASE / "inp_no_chgcar", case / "inp")
    incar = case / "inp" / "INCAR"
    incar.write_text(incar.read_text().replace("SYSTEM = NO without CHGCAR", f"SYSTEM = {SYSTEM}"))
    _gunzip_into(VASP_MOCK / CASE / "out", case / "out")
    outcar = case / "out" / "OUTCAR"
    text, replaced = re.subn(r"NELECT =\s+11\.0000", f"NELECT = {NELECT:12.4f}", outcar.read_text())
    assert replaced == 1
    outcar.write_text(text)
    chgcar = case / "out" / "CHGCAR"
    chgcar.write_text(_scaled_chgcar(chgcar.read_text(), NELECT / NELECT_NO))
    return case


@pytest.fixture
def charged_vasp_code(aiida_code_installed, charged_registry):
    return aiida_code_installed(
        label="mock-vasp-charged",
        default_calc_job_plugin="vasp.vasp",
        filepath_executable=str(mock_vasp_executable()),
        prepend_text=f"export MOCK_VASP_REG_BASE='{charged_registry.parent}'",
    )


def _check_fit(fit_calc, retrieved, charged_registry):
    """The fit got the retrieved OUTCAR (via outcar_from_retrieved) and the charge it declares."""
    outcar = fit_calc.inputs.outcar
    assert outcar.creator.process_label == "outcar_from_retrieved"
    assert outcar.creator.inputs.retrieved.uuid == retrieved.uuid
    assert outcar.get_content(mode="rb") == (charged_registry / "out" / "OUTCAR").read_bytes()
    params = fit_calc.outputs.output_parameters.get_dict()
    assert (params["total_charge"], params["total_charge_source"]) == (1.0, "OUTCAR NELECT")
    charges = fit_calc.outputs.charges
    assert charges.base.attributes.get("n_electrons") == pytest.approx(NELECT, abs=1e-3)
    assert charges.net_charges.sum() == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_allclose(charges.net_charges + charges.populations, [5.0, 6.0], atol=1e-9)


def test_charged_vasp_run_is_declared_by_its_outcar(optddap_code, charged_vasp_code, potcar_family,
                                                   charged_registry):
    """optddap.vasp on the NO⁺ stand-in, then optddap.dataset refitting its VaspWorkChain: both fits end 0
    with the cell's charge +1 e declared by the OUTCAR's NELECT, and keep the `zval` Dict from the OUTCAR."""
    builder = vasp_builder(optddap_code, charged_vasp_code, potcar_family, system=SYSTEM)
    results, node = run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    vasp_wc = called(node, "VaspWorkChain")
    retrieved = vasp_wc.outputs.retrieved
    fit_calc = called(node, "OptDdapBaseWorkChain").called[-1]
    assert results["zval"].get_dict() == {"N": 5.0, "O": 6.0}
    assert fit_calc.inputs.zval.uuid == results["zval"].uuid
    _check_fit(fit_calc, retrieved, charged_registry)

    builder = WorkflowFactory("optddap.dataset").get_builder()
    builder.sources = orm.List([vasp_wc.uuid])
    builder.optddap.fit.code = optddap_code
    builder.optddap.fit.parameters = orm.Dict({"optimize": False, "device": "cpu"})
    builder.joint = orm.Str("none")
    builder.dataset_parameters = orm.Dict({"split": [1.0, 0.0, 0.0]})
    results, node = run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    (refit,) = [n for n in node.called if n.process_label == "OptDdapBaseWorkChain"]
    _check_fit(refit.called[-1], retrieved, charged_registry)
    (frame,) = results["dataset"].read(":")
    assert frame.arrays["REF_charges"].sum() == pytest.approx(1.0, abs=1e-3)
