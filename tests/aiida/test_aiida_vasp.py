"""``optddap.vasp`` end to end with aiida-vasp's real VaspWorkChain, VaspCalculation and parser.

VASP is licensed, so aiida-vasp's own ``mock-vasp`` executable stands in for it: it hashes the INCAR, POSCAR
and KPOINTS that VaspCalculation wrote and copies the outputs recorded for those inputs from a registry
(``MOCK_VASP_REG_BASE``). The registry is assembled here from tests/data/vasp_mock/: the real outputs
(CHGCAR, OUTCAR, vasprun.xml, CONTCAR) of two VASP 6.4.3 relaxations of an NO molecule in the same box and
on the same grid, one with ISPIN = 1 and one with ISPIN = 2 (see its README.md), each keyed by the inputs
aiida-vasp writes for that run. POTCARs are licensed too: the family holds metadata-only stubs (TITEL/ZVAL
headers as the recorded OUTCARs repeat them).

The fixtures are imported by test_aiida_difference.py and test_aiida_dataset.py.
"""

from __future__ import annotations

import gzip
import pathlib
import shutil
import sys

import numpy as np
import pytest

aiida_vasp = pytest.importorskip("aiida_vasp")

from aiida import orm  # noqa: E402
from aiida.engine import run_get_node  # noqa: E402

VASP_MOCK = pathlib.Path(__file__).resolve().parents[1] / "data" / "vasp_mock"
CASE = "nitric_oxide_unpolarized"
CASE_POLARIZED = "nitric_oxide_polarized"
POTCAR_FAMILY = "optddap-test-PBE-stubs"

#: The recorded run's INCAR (tests/data/vasp_mock/nitric_oxide_unpolarized/INCAR), as VaspWorkChain parameters.
NO_INCAR = {
    "prec": "Accurate", "encut": 600, "algo": "Fast", "addgrid": True, "ismear": 1, "sigma": 0.1,
    "ispin": 1, "lwave": False, "lcharg": True, "lreal": "Auto", "ibrion": 2, "nsw": 1000,
    "ediff": 1e-6, "ediffg": -0.01,
}
#: Cell and initial Cartesian positions of the recorded POSCAR (N, O; Å).
NO_CELL = np.diag([2.0, 3.0, 4.0])
NO_POSITIONS = [("N", (1.0, 1.5, 2.241761128)), ("O", (1.0, 1.5, 1.047745038))]
#: What the recorded vasprun.xml says about the final ionic step.
NO_FINAL = {
    "energy_extrapolated": -10.58329128,  # e_0_energy, eV
    "energy_free": -10.59269437,  # e_fr_energy (TOTEN), eV
    "forces": [[0.0, 0.0, -0.00136709], [0.0, 0.0, 0.00136709]],  # eV/Å
    "stress_kbar": [497.69701739, 30.94990750, -218.88259441],  # diagonal, VASP sign
    "positions_z": [0.56647405 * 4.0, 0.25590249 * 4.0],  # Å
}
#: The spin-polarised run (tests/data/vasp_mock/nitric_oxide_polarized/INCAR): the same INCAR with ISPIN = 2,
#: and the same initial structure and k-points.
NO_INCAR_POLARIZED = dict(NO_INCAR, ispin=2)
#: What its vasprun.xml says about the final ionic step (7 steps, 68 electronic steps).
NO_POLARIZED_FINAL = {
    "energy_extrapolated": -11.03608086,  # e_0_energy, eV: 0.45 eV below the ISPIN = 1 run
    "energy_free": -11.03511454,  # e_fr_energy (TOTEN), eV
    "forces": [[0.0, 0.0, -0.00207678], [0.0, 0.0, 0.00207678]],  # eV/Å
    "stress_kbar": [500.66227732, 30.62898891, -225.07107909],  # diagonal, VASP sign
    "positions_z": [0.56647988 * 4.0, 0.25589667 * 4.0],  # Å
}


def mock_vasp_executable() -> pathlib.Path:
    candidate = pathlib.Path(sys.executable).parent / "mock-vasp"
    if not candidate.exists():
        pytest.skip("aiida-vasp's mock-vasp console script is not installed")
    return candidate


def _gunzip_into(source: pathlib.Path, folder: pathlib.Path, skip=()):
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.gz")):
        name = path.name[:-3]
        if name in skip:
            continue
        with gzip.open(path, "rb") as src, open(folder / name, "wb") as dst:
            shutil.copyfileobj(src, dst)


@pytest.fixture(scope="session")
def mock_vasp_registry(tmp_path_factory) -> pathlib.Path:
    """A mock-vasp registry: ``<case>/inp`` (what aiida-vasp writes) and ``<case>/out`` (recorded outputs).

    ``nitric_oxide_unpolarized`` and ``nitric_oxide_polarized`` replay the full ISPIN = 1 and ISPIN = 2 runs
    (their INCARs differ by ISPIN only, so the inputs pick the run); ``nitric_oxide_unpolarized_no_chgcar``
    (the ISPIN = 1 run with ``SYSTEM = NO without CHGCAR`` in the INCAR) replays everything except the CHGCAR.
    """
    registry = tmp_path_factory.mktemp("mock_vasp_registry")
    for case in (CASE, CASE_POLARIZED):
        shutil.copytree(VASP_MOCK / case / "inp", registry / case / "inp")
        _gunzip_into(VASP_MOCK / case / "out", registry / case / "out")
    source = VASP_MOCK / CASE
    partial = registry / f"{CASE}_no_chgcar"
    shutil.copytree(source / "inp_no_chgcar", partial / "inp")
    _gunzip_into(source / "out", partial / "out", skip={"CHGCAR"})
    return registry


@pytest.fixture
def mock_vasp_code(aiida_code_installed, mock_vasp_registry):
    """aiida-vasp's ``mock-vasp`` as the ``vasp.vasp`` code on localhost, reading the registry above."""
    return aiida_code_installed(
        label="mock-vasp",
        default_calc_job_plugin="vasp.vasp",
        filepath_executable=str(mock_vasp_executable()),
        prepend_text=f"export MOCK_VASP_REG_BASE='{mock_vasp_registry}'",
    )


@pytest.fixture
def potcar_family():
    """A POTCAR family of metadata-only N_s and O_s stubs (real POTCARs are licensed)."""
    from aiida_vasp.data.potcar import PotcarData

    if PotcarData.get_potcar_group(POTCAR_FAMILY) is None:
        PotcarData.upload_potcar_family(str(VASP_MOCK / "potcars"), POTCAR_FAMILY,
                                        "metadata-only POTCAR stubs for the aiida-optddap tests",
                                        stop_if_existing=False)
    return POTCAR_FAMILY


def no_structure() -> orm.StructureData:
    structure = orm.StructureData(cell=NO_CELL.tolist())
    for symbol, position in NO_POSITIONS:
        structure.append_atom(position=position, symbols=symbol)
    return structure


def no_kpoints() -> orm.KpointsData:
    kpoints = orm.KpointsData()
    kpoints.set_kpoints_mesh([2, 2, 1], offset=[0.5, 0.5, 0.0])  # = the recorded Monkhorst-Pack 2×2×1
    return kpoints


def populate_vasp_inputs(namespace, code, family, *, incar=None, system=None):
    """Fill a ``VaspWorkChain`` builder namespace with the recorded NO relaxations' inputs (``incar``:
    ``NO_INCAR`` by default, ``NO_INCAR_POLARIZED`` for the spin-polarised run)."""
    incar = dict(NO_INCAR if incar is None else incar)
    if system:
        incar["system"] = system
    namespace.code = code
    namespace.structure = no_structure()
    namespace.kpoints = no_kpoints()
    namespace.parameters = orm.Dict({"incar": incar})
    namespace.potential_family = orm.Str(family)
    namespace.potential_mapping = orm.Dict({"N": "N_s", "O": "O_s"})
    options = namespace.calc.metadata.options
    options.resources = {"num_machines": 1, "num_mpiprocs_per_machine": 1}
    options.withmpi = False
    options.max_wallclock_seconds = 600
    return namespace


def vasp_builder(optddap_code, mock_vasp_code, family, *, parameters=None, **kwargs):
    from aiida_optddap.workflows.vasp import VaspOptDdapWorkChain

    builder = VaspOptDdapWorkChain.get_builder()
    populate_vasp_inputs(builder.vasp, mock_vasp_code, family, **kwargs)
    builder.optddap.fit.code = optddap_code
    builder.optddap.fit.parameters = orm.Dict(parameters or {"optimize": False, "device": "cpu"})
    return builder


def called(node, process_label):
    """The one process called by ``node`` with that label."""
    found = [child for child in node.called if child.process_label == process_label]
    assert len(found) == 1, [child.process_label for child in node.called]
    return found[0]


# --------------------------------------------------------------------------------------------- unit tests
def test_chgcar_settings_and_parameters():
    from aiida_optddap.workflows.vasp import chgcar_parameters, chgcar_settings

    parameters, changed = chgcar_parameters({"incar": {"encut": 500, "lcharg": False}})
    assert changed and parameters == {"incar": {"encut": 500, "lcharg": True}}
    assert chgcar_parameters({"incar": {"lcharg": True}})[1] is False
    settings = chgcar_settings({"ADDITIONAL_RETRIEVE_LIST": ["AECCAR0"],
                                "parser_settings": {"exclude_node": ["chgcar", "bands"], "add_chgcar": True}})
    assert settings["ADDITIONAL_RETRIEVE_LIST"] == ["AECCAR0", "CHGCAR"]
    assert settings["parser_settings"]["include_node"] == ["chgcar"]
    assert settings["parser_settings"]["exclude_node"] == ["bands"]
    assert settings["parser_settings"]["energy_type"] == ["energy_extrapolated", "energy_free"]
    # aiida-vasp 5.x validates parser settings with pydantic: the merged settings must pass
    from aiida_vasp.parsers.vasp import ParserSettingsConfig

    config = ParserSettingsConfig(**settings["parser_settings"])
    assert "chgcar" in config.include_node


def test_zval_from_outcar_text():
    from aiida_optddap.workflows.vasp import zval_from_outcar_text

    text = gzip.open(VASP_MOCK / CASE / "out" / "OUTCAR.gz", "rt").read()
    assert zval_from_outcar_text(text) == {"N": 5.0, "O": 6.0}
    two = "   TITEL  = PAW_PBE Fe 06Sep2000\n   POMASS =   55.847; ZVAL   =    8.000\n" \
          "   TITEL  = PAW_PBE Fe_pv 02Aug2007\n   POMASS =   55.847; ZVAL   =   14.000\n"
    with pytest.raises(ValueError, match="two POTCARs for Fe"):
        zval_from_outcar_text(two)
    with pytest.raises(ValueError):
        zval_from_outcar_text("no potentials here")


# --------------------------------------------------------------------------------------------- end to end
def test_vasp_then_charges(optddap_code, mock_vasp_code, potcar_family):
    """VaspWorkChain (mock-vasp replaying the real run, aiida-vasp's parser) → CHGCAR → optddap.base."""
    builder = vasp_builder(optddap_code, mock_vasp_code, potcar_family,
                           incar={k: v for k, v in NO_INCAR.items() if k != "lcharg"})  # the chain adds it
    results, node = run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)

    # the VASP side: aiida-vasp's real work chain, calculation and parser produced these
    vasp_wc = called(node, "VaspWorkChain")
    assert vasp_wc.process_label == "VaspWorkChain" and vasp_wc.is_finished_ok
    calc = [n for n in vasp_wc.called if n.process_label == "VaspCalculation"][0]
    assert calc.is_finished_ok
    incar = calc.inputs.parameters.get_dict()
    assert incar["lcharg"] is True  # forced by optddap.vasp
    settings = calc.inputs.settings.get_dict()
    assert "CHGCAR" in settings["ADDITIONAL_RETRIEVE_LIST"]
    assert "chgcar" in settings["parser_settings"]["include_node"]
    assert "CHGCAR" in calc.outputs.retrieved.base.repository.list_object_names()

    chgcar = results["vasp"]["chgcar"]
    assert chgcar.node_type == "data.vasp.chargedensity.ChargedensityData."
    recorded = gzip.open(VASP_MOCK / CASE / "out" / "CHGCAR.gz", "rb").read()
    assert chgcar.get_content(mode="rb") == recorded  # byte for byte the recorded CHGCAR

    misc = results["vasp"]["misc"].get_dict()
    assert misc["total_energies"]["energy_extrapolated"] == pytest.approx(NO_FINAL["energy_extrapolated"])
    assert misc["total_energies"]["energy_free"] == pytest.approx(NO_FINAL["energy_free"])
    np.testing.assert_allclose(misc["forces"], NO_FINAL["forces"], atol=1e-8)
    np.testing.assert_allclose(np.diag(misc["stress"]), NO_FINAL["stress_kbar"], atol=1e-6)
    # a relaxation: the output structure is the final one, and the fit checked the CHGCAR against it
    structure = results["vasp"]["structure"]
    np.testing.assert_allclose([s.position[2] for s in structure.sites], NO_FINAL["positions_z"], atol=1e-6)

    # the fit side
    fit_wc = called(node, "OptDdapBaseWorkChain")
    assert fit_wc.process_label == "OptDdapBaseWorkChain" and fit_wc.is_finished_ok
    fit_calc = fit_wc.called[-1]
    assert fit_calc.inputs.charge_density.uuid == chgcar.uuid
    assert fit_calc.inputs.structure.uuid == structure.uuid
    assert results["zval"].get_dict() == {"N": 5.0, "O": 6.0}  # from the OUTCAR's POTCAR headers
    assert fit_calc.inputs.zval.uuid == results["zval"].uuid

    charges = results["charges"]
    assert charges.symbols == ["N", "O"]
    assert charges.base.attributes.get("n_electrons") == pytest.approx(11.0, abs=1e-4)  # NELECT
    net = charges.net_charges
    assert net.sum() == pytest.approx(0.0, abs=1e-4)  # a neutral molecule
    assert abs(net[0]) > 1e-3  # N and O are not equivalent
    np.testing.assert_allclose(charges.net_charges + charges.populations, [5.0, 6.0], atol=1e-9)
    params = results["output_parameters"].get_dict()
    assert params["device"] == "cpu" and params["optimized"] is False


def test_vasp_without_chgcar_exits_450(optddap_code, mock_vasp_code, potcar_family):
    """The recorded outputs without CHGCAR: VASP and its parser succeed, the chain stops with 450."""
    builder = vasp_builder(optddap_code, mock_vasp_code, potcar_family, system="NO without CHGCAR")
    results, node = run_get_node(builder)
    assert node.exit_status == 450, (node.exit_status, node.exit_message)
    assert node.process_class.exit_codes.ERROR_NO_CHGCAR_FROM_VASP.status == 450
    assert "without a `chgcar` output" in node.exit_message and "OUTCAR" in node.exit_message
    assert "charges" not in results
    assert "misc" in results["vasp"]  # the VASP outputs are attached for inspection
    assert not [n for n in node.called if n.process_label == "OptDdapBaseWorkChain"]


def test_vasp_failure_exits_401(optddap_code, mock_vasp_code, potcar_family):
    """Inputs the registry does not know: mock-vasp stops without outputs, VaspWorkChain fails, then 401."""
    builder = vasp_builder(optddap_code, mock_vasp_code, potcar_family, system="unrecorded inputs")
    builder.vasp.max_iterations = orm.Int(1)
    results, node = run_get_node(builder)
    assert node.exit_status == 401, (node.exit_status, node.exit_message)
    assert "VASP work chain" in node.exit_message
