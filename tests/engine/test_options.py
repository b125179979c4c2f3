"""engine/options.py: every fit option declared once, and FitOptions built from the declarations."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from aiida_optddap.engine import options
from aiida_optddap.engine.fit import FitOptions
from aiida_optddap.engine.options import BY_NAME, OPTIONS, Option, value_text


def test_options_module_imports_no_engine_numerics():
    """The AiiDA side reads the declarations: importing them must not load torch, numpy or an engine module."""
    code = ("import sys, aiida_optddap.engine.options\n"
            "bad = [m for m in sys.modules if m in ('torch', 'numpy') or m.startswith('aiida_optddap.engine.')"
            " and m != 'aiida_optddap.engine.options']\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fit_options_fields_are_the_declarations():
    fields = dataclasses.fields(FitOptions)
    assert [f.name for f in fields] == [o.name for o in OPTIONS]
    assert {f.name: f.default for f in fields} == options.defaults()
    assert dataclasses.asdict(FitOptions()) == options.defaults()


def test_defaults_agree_with_the_engine_constants():
    """The declarations are torch-free copies of constants that live beside the numerics."""
    from aiida_optddap.engine.gaussian import ddap, gspace, losses, restraint

    assert options.SOLVERS == ddap.SOLVERS
    assert options.LOSSES == losses.LOSSES
    assert BY_NAME["tau"].default == restraint.DEFAULT_TAU
    assert BY_NAME["gcut"].default == gspace.DEFAULT_GCUT == pytest.approx(4.62886, abs=1e-5)
    assert BY_NAME["rtol"].default == ddap.DEFAULT_RTOL


@pytest.mark.parametrize("changes, message", [
    ({"sigma_start": -1.0}, "sigma_start must be > 0 (Å)"),
    ({"sigma_start": float("nan")}, "sigma_start must be a finite number (Å)"),
    ({"factor": 1.0}, "factor must be > 1"),
    ({"n_gauss": 0}, "n_gauss must be >= 1 and <= 12"),
    ({"n_gauss": 13}, "n_gauss must be >= 1 and <= 12"),
    ({"n_gauss": 2.5}, "n_gauss must be a finite integer"),
    ({"rtol": 1.0}, "rtol must be > 0 and < 1"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"optimize": 1}, "optimize must be true or false"),
    ({"loss": "energy"}, "loss must be one of density, coulomb, planar"),
    ({"device": "gpu"}, "device must be one of auto, cpu, cuda"),
    ({"free_parameters": ("sigma_start", "width")}, "free_parameters must name sigma_start, factor, gcut"),
    ({"free_parameters": ()}, "free_parameters must name"),
    ({"chunk_size": 0}, "chunk_size must be >= 1"),
    ({"reference": "user"}, "reference_charges go with reference='user'"),
    ({"solver": "svd"}, "solver must be one of restrained, pinv, lagrange, scale, shift, kkt, species, shape or potential"),
    ({"definition": "best"}, "definition must be one of auto, restrained, paper, classic, species, shape, potential or custom"),
])
def test_fit_options_refuse_what_the_declarations_refuse(changes, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        FitOptions(**changes)


def test_lists_become_tuples_and_widths_sorted_pairs():
    options_ = FitOptions(free_parameters=["sigma_start", "gcut"], solver="species", species_widths={"Na": 0.4, "Cl": 0.9})
    assert options_.free_parameters == ("sigma_start", "gcut")
    assert options_.species_widths == (("Cl", 0.9), ("Na", 0.4))
    for widths in ({"Na": -0.4}, {"Na": True}, {"Na": float("inf")}, {}):
        with pytest.raises(ValueError, match="species_widths must be finite positive widths"):
            FitOptions(solver="species", species_widths=widths)


def test_option_problem_and_texts():
    option = Option("x", "float", 1.0, "a length", "Å", gt=0, le=2)
    assert option.problem(1.5) is None and option.problem(2.0) is None
    assert option.problem(0.0) == "x must be > 0 and <= 2 (Å)"
    assert option.problem(True) == "x must be a finite number (Å)"
    assert option.problem(None) == "x must be given"
    assert option.cli_flag == "--x" and BY_NAME["free_parameters"].cli_flag == "--free"
    assert BY_NAME["reference"].offered == ("auto", "neutral", "zero", "uniform")  # 'user': Python API only
    assert [value_text(v) for v in (True, 4.628864758, 1e-10, ("a", "b"), 3)] == ["yes", "4.6289", "1e-10", "a,b", "3"]


def test_help_texts_hold_no_defaults():
    """Defaults are written by the generators (CLI help, schema), from ``default``: never typed into a help."""
    for option in OPTIONS:
        assert "default" not in option.help.lower(), option.name
        assert option.help and not option.help.endswith("."), option.name  # the generators add the stop
