"""The `parameters`/`zval` schema: messages naming the key, and the CLI options it produces."""

from __future__ import annotations

import pytest
from aiida import orm

from aiida_optddap.calculations.schema import cli_arguments, engine_options, validate_parameters, validate_zval


def test_valid_parameters():
    parameters = {
        "solver": "lagrange", "sigma_start": 0.5, "factor": 1.5, "n_gauss": 3, "gcut": 4.0, "optimize": False,
        "loss": "coulomb", "steps": 10, "starts": 2, "device": "cpu", "rtol": 1e-8, "lr": 0.05, "seed": 3,
        "chunk_size": 512, "species": ["Na", "Cl"], "max_condition_number": 1e8, "format": "chgcar", "plot": True,
    }
    assert validate_parameters(parameters) is None
    assert validate_parameters({}) is None


@pytest.mark.parametrize(
    "parameters, fragment",
    [
        ({"sigma": 0.5}, "unknown key `sigma`"),
        ({"solver": "svd"}, "`solver` must be one of 'restrained', 'pinv', 'lagrange', 'scale', 'shift', 'kkt', got 'svd'"),
        ({"sigma_start": -1.0}, "`sigma_start` must be > 0"),
        ({"sigma_start": "0.5"}, "`sigma_start` must be a number"),
        ({"factor": 1.0}, "`factor` must be > 1"),
        ({"n_gauss": 2.5}, "`n_gauss` must be an integer"),
        ({"n_gauss": 0}, "`n_gauss` must be >= 1"),
        ({"steps": True}, "`steps` must be an integer"),
        ({"optimize": 1}, "`optimize` must be a boolean"),
        ({"device": "gpu"}, "`device` must be one of 'auto', 'cpu', 'cuda'"),
        ({"rtol": 1.5}, "`rtol` must be < 1"),
        ({"lr": float("nan")}, "`lr` must be finite"),
        ({"seed": -1}, "`seed` must be >= 0"),
        ({"chunk_size": 0}, "`chunk_size` must be >= 1"),
        ({"species": ["Na", "Qq"]}, "`species` contains unknown element symbol(s) ['Qq']"),
        ({"max_condition_number": 0.5}, "`max_condition_number` must be > 1"),
        ({"loss": "energy"}, "`loss` must be one of 'density', 'coulomb', 'planar'"),
    ],
)
def test_invalid_parameters_name_the_key(parameters, fragment):
    message = validate_parameters(parameters)
    assert message is not None and fragment in message, message


def test_several_errors_reported_together():
    message = validate_parameters({"steps": 0, "bogus": 1})
    assert "unknown key `bogus`" in message and "`steps` must be >= 1" in message


def test_zval_validation():
    assert validate_zval({"Na": 7, "Cl": 7.0}) is None
    assert "`Xx` is not an element symbol" in validate_zval({"Xx": 1})
    assert "`Na`: invalid valence -1, outside 0 < Z_val <= 11" in validate_zval({"Na": -1})
    assert "`Na`: invalid valence 100, outside 0 < Z_val <= 11 (its atomic number)" in validate_zval({"Na": 100})
    assert "`Na`: the valence must be a number" in validate_zval({"Na": "seven"})
    assert cli_arguments({"guess_zval": True, "total_charge": -1}) == [
        "--definition", "auto", "--guess-zval", "--total-charge", "-1"]
    assert "--guess-zval" not in cli_arguments({"guess_zval": False})
    assert "non-empty" in validate_zval({})


def test_cli_arguments():
    args = cli_arguments(
        {"solver": "kkt", "optimize": False, "sigma_start": 0.4, "n_gauss": 4, "species": "Na, Cl",
         "max_condition_number": 1e8, "plot": True, "device": "cuda", "chunk_size": 256},
        {"Na": 7, "Cl": 7.0},
    )
    joined = " ".join(args)
    assert "--solver kkt" in joined
    assert "--no-optimize" in args
    assert "--sigma-start 0.4" in joined
    assert "--n-gauss 4" in joined
    assert "--species Na,Cl" in joined
    assert "--plot plots" in joined
    assert "--device cuda" in joined
    assert "--chunk-size 256" in joined
    assert "--zval Cl=7.0,Na=7" in joined
    assert "max" not in joined  # parser-only key
    assert cli_arguments({"optimize": True, "plot": False}) == ["--definition", "auto", "--optimize"]
    assert cli_arguments({"definition": "restrained"}) == ["--definition", "restrained"]


def test_engine_options():
    options = engine_options({"species": "Na,Cl", "max_condition_number": 10.0, "plot": True, "steps": 3})
    assert options == {"species": ["Na", "Cl"], "steps": 3}


def test_port_validators_reject_bad_inputs(nacl_chgcar, singlefile, aiida_localhost):
    from aiida.engine import run_get_node

    from aiida_optddap.calculations.fit import OptDdapCalculation

    code = orm.InstalledCode(computer=aiida_localhost, filepath_executable="/bin/true", label="true-schema").store()
    density = singlefile(nacl_chgcar)
    with pytest.raises(ValueError, match="unknown key `nsteps`"):
        run_get_node(OptDdapCalculation, code=code, charge_density=density, parameters=orm.Dict({"nsteps": 3}))
    with pytest.raises(ValueError, match="`Xx` is not an element symbol"):
        run_get_node(OptDdapCalculation, code=code, charge_density=density, zval=orm.Dict({"Xx": 1}))
    with pytest.raises(ValueError, match="charge_density"):
        run_get_node(OptDdapCalculation, code=code, charge_density=orm.Int(3))


def test_fixed_shapes_reach_the_engine_unchanged():
    """A dataset's shape parameters (``species_widths``, ``species_shapes``) through the schema, the command line
    the CalcJob writes and the engine CLI's parsing: the same FitOptions as the engine's own call, bit for bit."""
    from aiida_optddap.engine import cli
    from aiida_optddap.engine.fit import FitOptions

    shapes = {"Cl": [0.1, 0.2, 0.5, 0.2], "Na": [1 / 3, 0.1, 0.6 - 1 / 3, 0.3]}
    parameters = {"definition": "shape", "species_widths": {"Na": 0.41, "Cl": 0.8 / 3}, "species_shapes": shapes}
    assert validate_parameters(parameters) is None
    args = cli_arguments(parameters)
    assert "--species-shapes" in args
    context = cli.fit.make_context("fit", [*args, "CHGCAR"])
    parsed = cli._options_from(context.params)
    assert parsed == FitOptions.for_definition(**parameters) == FitOptions.for_definition(**engine_options(parameters))
    assert dict(parsed.species_shapes)["Na"] == tuple(shapes["Na"])


@pytest.mark.parametrize("shapes, fragment", [
    ({"Na": [0.5, 0.6]}, "coefficients that sum to 1"),
    ({"Qq": [1.0]}, "unknown element symbol(s) ['Qq']"),
    ([0.5, 0.5], "must be a non-empty dictionary"),
])
def test_bad_fixed_shapes_name_the_key(shapes, fragment):
    message = validate_parameters({"definition": "shape", "species_widths": {"Na": 0.4}, "species_shapes": shapes})
    assert "`species_shapes`" in message and fragment in message
