"""Protocols (``fast``, ``moderate``, ``precise``) of optddap.base, .vasp, .difference and .dataset: every one
builds, overrides merge, an unknown protocol raises, and no protocol changes the charge definition."""

from __future__ import annotations

import pathlib

import pytest
from aiida import orm

from aiida_optddap.workflows.base import OptDdapBaseWorkChain
from aiida_optddap.workflows.dataset import ChargeDatasetWorkChain
from aiida_optddap.workflows.difference import DifferenceWorkChain
from aiida_optddap.workflows.protocols import PROTOCOLS, load_protocol_file, recursive_merge
from aiida_optddap.workflows.vasp import VaspOptDdapWorkChain

WORKCHAINS = (OptDdapBaseWorkChain, VaspOptDdapWorkChain, DifferenceWorkChain, ChargeDatasetWorkChain)


@pytest.fixture
def fake_code(aiida_code_installed):
    """An ``optddap`` code that is never run (protocol tests only build)."""
    return aiida_code_installed(label="optddap-protocols", default_calc_job_plugin="optddap.fit",
                                filepath_executable="/bin/true")


@pytest.fixture
def vasp_code(aiida_code_installed):
    return aiida_code_installed(label="vasp-protocols", default_calc_job_plugin="vasp.vasp",
                                filepath_executable="/bin/true")


VASP_MOCK = pathlib.Path(__file__).resolve().parents[1] / "data" / "vasp_mock"
POTCAR_FAMILY = "optddap-test-PBE-stubs"


@pytest.fixture
def vasp_stubs():
    """``vasp_overrides`` naming a POTCAR family of metadata-only N_s and O_s stubs (as test_aiida_vasp.py)."""
    pytest.importorskip("aiida_vasp")
    from aiida_vasp.data.potcar import PotcarData

    if PotcarData.get_potcar_group(POTCAR_FAMILY) is None:
        PotcarData.upload_potcar_family(str(VASP_MOCK / "potcars"), POTCAR_FAMILY, "metadata-only POTCAR stubs",
                                        stop_if_existing=False)
    return {"potential_family": POTCAR_FAMILY, "potential_mapping": {"N": "N_s", "O": "O_s"}}


@pytest.fixture
def no_structure():
    structure = orm.StructureData(cell=(6 * __import__("numpy").eye(3)).tolist())
    structure.append_atom(position=(0, 0, 0), symbols="N")
    structure.append_atom(position=(1.15, 0, 0), symbols="O")
    return structure


def test_recursive_merge():
    left = {"a": 1, "b": {"c": 2, "d": [1, 2]}}
    merged = recursive_merge(left, {"b": {"c": 3, "d": [3]}, "e": 4})
    assert merged == {"a": 1, "b": {"c": 3, "d": [3]}, "e": 4}
    assert left == {"a": 1, "b": {"c": 2, "d": [1, 2]}}  # unchanged


@pytest.mark.parametrize("workchain", WORKCHAINS, ids=lambda w: w.__name__)
def test_protocol_files(workchain):
    assert set(workchain.get_available_protocols()) == set(PROTOCOLS)
    assert workchain.get_default_protocol() == "moderate"
    assert workchain.get_protocol_filepath().parent.name == "protocols"
    assert all(v["description"] for v in workchain.get_available_protocols().values())
    with pytest.raises(ValueError, match="unknown protocol 'stringent'"):
        workchain.get_protocol_inputs("stringent")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_protocols_keep_the_charge_definition(protocol):
    """The fit parameters of every protocol leave every named definition intact (no setting it fixes is
    touched: FitOptions.for_definition keeps its name), so protocols change effort, not the charges' meaning."""
    from aiida_optddap.calculations.schema import engine_options, validate_parameters
    from aiida_optddap.engine.fit import DEFINITIONS, FitOptions

    parameters = OptDdapBaseWorkChain.get_protocol_inputs(protocol)["fit"]["parameters"]
    assert validate_parameters(parameters) is None
    assert "definition" not in parameters
    options = engine_options(parameters)
    for definition in DEFINITIONS:
        assert FitOptions.for_definition(definition, **options).definition == definition


def test_protocols_differ_as_documented():
    inputs = {p: OptDdapBaseWorkChain.get_protocol_inputs(p) for p in PROTOCOLS}
    assert [inputs[p]["max_iterations"] for p in PROTOCOLS] == [2, 5, 10]
    walltimes = [inputs[p]["fit"]["metadata"]["options"]["max_wallclock_seconds"] for p in PROTOCOLS]
    assert walltimes == sorted(walltimes) and len(set(walltimes)) == 3
    assert inputs["fast"]["fit"]["parameters"]["steps"] < inputs["precise"]["fit"]["parameters"]["steps"]
    assert "steps" not in inputs["moderate"]["fit"]["parameters"]  # the engine's own value
    difference = {p: DifferenceWorkChain.get_protocol_inputs(p) for p in PROTOCOLS}
    assert [difference[p]["cell_tolerance"] for p in PROTOCOLS] == [1e-3, 1e-4, 1e-5]
    assert ChargeDatasetWorkChain.get_protocol_inputs("precise")["skip_failed"] is False
    assert load_protocol_file("base")["default_protocol"] == "moderate"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_base_builder(fake_code, nacl_chgcar, protocol):
    builder = OptDdapBaseWorkChain.get_builder_from_protocol(fake_code, nacl_chgcar, protocol=protocol)
    expected = OptDdapBaseWorkChain.get_protocol_inputs(protocol)
    assert builder.max_iterations.value == expected["max_iterations"]
    assert builder.fit.parameters.get_dict() == expected["fit"]["parameters"]
    assert builder.fit.code.pk == fake_code.pk
    options = builder.fit.metadata.options
    assert options.max_wallclock_seconds == expected["fit"]["metadata"]["options"]["max_wallclock_seconds"]
    density = builder.fit.charge_density
    # provenance: the density keeps its file name, is labelled with it and says where it was read from
    assert density.filename == nacl_chgcar.name and density.label == nacl_chgcar.name
    assert str(nacl_chgcar.resolve()) in density.description
    assert builder.metadata.label == f"ClNa {nacl_chgcar.name}"
    assert f"protocol {protocol}" in builder.metadata.description
    assert "ClNa" in builder.metadata.description and "grid 24×24×24" in builder.metadata.description


def test_base_builder_overrides(fake_code, nacl_chgcar, singlefile):
    density = singlefile(nacl_chgcar)
    overrides = {"max_iterations": 3, "fit": {"parameters": {"definition": "classic", "seed": 3},
                                              "metadata": {"options": {"queue_name": "gpu"}}}}
    builder = OptDdapBaseWorkChain.get_builder_from_protocol(
        fake_code, density, protocol="precise", overrides=overrides, zval={"Na": 1, "Cl": 7},
        options={"account": "proj1", "max_wallclock_seconds": 600})
    assert builder.fit.charge_density.pk == density.pk
    assert builder.max_iterations.value == 3
    # merged: the protocol's steps and plot stay beside the overridden definition
    assert builder.fit.parameters.get_dict() == {"steps": 1000, "plot": True, "definition": "classic", "seed": 3}
    options = builder.fit.metadata.options
    assert (options.queue_name, options.account, options.max_wallclock_seconds) == ("gpu", "proj1", 600)
    assert options.resources == {"num_machines": 1, "num_mpiprocs_per_machine": 1}
    assert builder.fit.zval.get_dict() == {"Na": 1, "Cl": 7}
    assert "charge definition classic" in builder.metadata.description
    # overrides from a YAML file, and invalid values refused at build time
    with pytest.raises(ValueError, match="unknown key `stepz`"):
        OptDdapBaseWorkChain.get_builder_from_protocol(fake_code, density, overrides={"fit": {"parameters": {"stepz": 1}}})
    with pytest.raises(ValueError, match="unknown protocol"):
        OptDdapBaseWorkChain.get_builder_from_protocol(fake_code, density, protocol="balanced")
    with pytest.raises(TypeError, match="optddap.vasp"):
        OptDdapBaseWorkChain.get_builder_from_protocol(fake_code, orm.StructureData(cell=[[1, 0, 0], [0, 1, 0], [0, 0, 1]]))


def test_overrides_from_yaml_file(fake_code, nacl_chgcar, tmp_path):
    path = tmp_path / "overrides.yaml"
    path.write_text("max_iterations: 7\nfit:\n  parameters:\n    n_gauss: 4\n")
    builder = OptDdapBaseWorkChain.get_builder_from_protocol(fake_code, nacl_chgcar, protocol="fast", overrides=path)
    assert builder.max_iterations.value == 7
    assert builder.fit.parameters.get_dict() == {"steps": 100, "n_gauss": 4}


def test_gpu_request_follows_the_scheduler(aiida_computer, nacl_chgcar):
    from aiida_optddap.workflows.protocols import scheduler_options

    assert scheduler_options({}, "core.slurm", 2) == {"custom_scheduler_commands": "#SBATCH --gres=gpu:2"}
    assert scheduler_options({"custom_scheduler_commands": "module load cuda"}, "core.slurm", 1)[
        "custom_scheduler_commands"] == "module load cuda\n#SBATCH --gres=gpu:1"
    assert scheduler_options({}, "core.direct", 1) == {}
    with pytest.raises(ValueError, match="custom scheduler command"):
        scheduler_options({}, "my.scheduler", 1)
    computer = aiida_computer(label="slurm-protocols", scheduler_type="core.slurm")
    code = orm.InstalledCode(computer=computer, filepath_executable="/bin/true", label="optddap-slurm",
                             default_calc_job_plugin="optddap.fit").store()
    builder = OptDdapBaseWorkChain.get_builder_from_protocol(code, nacl_chgcar, gpus=1)
    assert builder.fit.metadata.options.custom_scheduler_commands == "#SBATCH --gres=gpu:1"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_difference_builder(fake_code, nacl_chgcar, nacl_defect_chgcar, protocol):
    builder = DifferenceWorkChain.get_builder_from_protocol(fake_code, (nacl_chgcar, nacl_defect_chgcar),
                                                            protocol=protocol)
    expected = DifferenceWorkChain.get_protocol_inputs(protocol)
    assert builder.cell_tolerance.value == expected["cell_tolerance"]
    assert builder.site_tolerance.value == expected["site_tolerance"]
    base = OptDdapBaseWorkChain.get_protocol_inputs(protocol)
    assert builder.optddap.max_iterations.value == base["max_iterations"]
    assert builder.optddap.fit.parameters.get_dict() == base["fit"]["parameters"]
    assert "charge_density" not in builder.optddap.fit
    assert builder.host_density.filename == nacl_chgcar.name
    assert builder.defect_density.filename == nacl_defect_chgcar.name
    assert builder.metadata.label == f"Δρ {nacl_defect_chgcar.name} − {nacl_chgcar.name}"


def test_difference_builder_overrides_and_vasp_side(fake_code, vasp_code, nacl_chgcar, no_structure, vasp_stubs):
    builder = DifferenceWorkChain.get_builder_from_protocol(
        fake_code, {"host": no_structure, "defect": nacl_chgcar}, protocol="fast", vasp_code=vasp_code,
        vasp_overrides=vasp_stubs, overrides={"site_tolerance": 0.2, "optddap": {"fit": {"parameters": {"tau": 0.01}}}})
    assert builder.site_tolerance.value == 0.2 and builder.cell_tolerance.value == 1e-3
    assert builder.optddap.fit.parameters.get_dict() == {"steps": 100, "tau": 0.01}
    assert builder.host_vasp.code.pk == vasp_code.pk
    assert builder.host_vasp.structure is no_structure
    assert builder.host_vasp.potential_family.value == POTCAR_FAMILY
    assert "host_density" not in builder
    assert builder.metadata.label == f"Δρ {nacl_chgcar.name} − NO"
    with pytest.raises(ValueError, match="vasp_code"):
        DifferenceWorkChain.get_builder_from_protocol(fake_code, (no_structure, nacl_chgcar))
    with pytest.raises(TypeError, match="pair"):
        DifferenceWorkChain.get_builder_from_protocol(fake_code, nacl_chgcar)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_vasp_builder(fake_code, vasp_code, no_structure, vasp_stubs, protocol):
    builder = VaspOptDdapWorkChain.get_builder_from_protocol(
        fake_code, no_structure, protocol=protocol, vasp_code=vasp_code, vasp_overrides=vasp_stubs,
        overrides={"check_structure": False, "optddap": {"max_iterations": 1}})
    base = OptDdapBaseWorkChain.get_protocol_inputs(protocol)
    assert builder.optddap.max_iterations.value == 1
    assert builder.optddap.fit.parameters.get_dict() == base["fit"]["parameters"]
    assert builder.check_structure.value is False and builder.zval_from_outcar.value is True
    assert builder.vasp.code.pk == vasp_code.pk and builder.vasp.structure is no_structure
    assert "incar" in builder.vasp.parameters.get_dict()
    assert builder.metadata.label == "NO VASP + opt-DDAP"
    assert f"protocol {protocol}" in builder.metadata.description
    with pytest.raises(TypeError, match="StructureData"):
        VaspOptDdapWorkChain.get_builder_from_protocol(fake_code, "CHGCAR", vasp_code=vasp_code)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_dataset_builder(fake_code, nacl_chgcar, nacl_defect_chgcar, lih_chgcar, protocol):
    builder = ChargeDatasetWorkChain.get_builder_from_protocol(
        fake_code, [nacl_chgcar, nacl_defect_chgcar, lih_chgcar], protocol=protocol)
    expected = ChargeDatasetWorkChain.get_protocol_inputs(protocol)
    assert builder.max_concurrent.value == expected["max_concurrent"]
    assert builder.skip_failed.value == expected["skip_failed"]
    assert sorted(builder.densities) == ["LiH_CHGCAR", "NaCl_CHGCAR", "NaCl_defect_CHGCAR"]
    base = OptDdapBaseWorkChain.get_protocol_inputs(protocol)
    assert builder.optddap.fit.parameters.get_dict() == base["fit"]["parameters"]
    assert builder.metadata.label == "optddap dataset (3 densities)"


def test_dataset_builder_sources(fake_code, nacl_chgcar, singlefile):
    group = orm.Group(label="protocol-test-sources").store()
    builder = ChargeDatasetWorkChain.get_builder_from_protocol(fake_code, group, overrides={"max_concurrent": 1,
                                                                                           "output_group": "out"})
    assert builder.group.value == "protocol-test-sources" and builder.max_concurrent.value == 1
    assert builder.output_group.value == "out"
    node = singlefile(nacl_chgcar)
    builder = ChargeDatasetWorkChain.get_builder_from_protocol(fake_code, [node.pk])
    assert builder.sources.get_list() == [node.uuid]
    builder = ChargeDatasetWorkChain.get_builder_from_protocol(fake_code, {"frame 1": node})
    assert list(builder.densities) == ["frame_1"]


def _instantiate(builder):
    """The process of ``builder`` created (node stored, ``on_create`` run) but not run."""
    from aiida.engine.utils import instantiate_process
    from aiida.manage import get_manager

    return instantiate_process(get_manager().get_runner(), builder)


def test_work_chains_label_themselves_from_their_input(fake_code, vasp_code, nacl_chgcar, nacl_defect_chgcar,
                                                       no_structure, vasp_stubs, singlefile):
    """Without a label from the caller (a plain ``get_builder``), the node is labelled and described from its
    input; a caller's label is kept."""
    density, defect = singlefile(nacl_chgcar), singlefile(nacl_defect_chgcar)
    builders = {
        "base": OptDdapBaseWorkChain.get_builder_from_protocol(fake_code, density),
        "difference": DifferenceWorkChain.get_builder_from_protocol(fake_code, (density, defect)),
        "vasp": VaspOptDdapWorkChain.get_builder_from_protocol(fake_code, no_structure, vasp_code=vasp_code,
                                                              vasp_overrides=vasp_stubs),
        "dataset": ChargeDatasetWorkChain.get_builder_from_protocol(fake_code, [density, defect]),
    }
    expected = {
        "base": ("ClNa NaCl_CHGCAR", f"opt-DDAP charges of NaCl_CHGCAR<{density.pk}> (ClNa, grid 24×24×24)"),
        "difference": ("Δρ NaCl_defect_CHGCAR − NaCl_CHGCAR",
                       f"ρ(NaCl_defect_CHGCAR<{defect.pk}>) − ρ(NaCl_CHGCAR<{density.pk}>)"),
        "vasp": ("NO VASP + opt-DDAP", "VASP (aiida-vasp) on StructureData NO<"),
        "dataset": ("optddap dataset (2 densities)", "opt-DDAP charge dataset of 2 densities"),
    }
    for name, builder in builders.items():
        builder.metadata.label = ""
        builder.metadata.description = ""
        node = _instantiate(builder).node
        label, description = expected[name]
        assert node.label == label, name
        assert description in node.description, (name, node.description)
    builder = OptDdapBaseWorkChain.get_builder_from_protocol(fake_code, density)
    builder.metadata.label = "my fit"
    node = _instantiate(builder).node
    assert node.label == "my fit" and "protocol moderate" in node.description
