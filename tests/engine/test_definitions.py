"""engine/definitions.py: the registry of charge definitions, and a new definition added as one unit."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import gaussian_density

from aiida_optddap.engine import definitions, pipeline
from aiida_optddap.engine.cli import main
from aiida_optddap.engine.definitions import Definition
from aiida_optddap.engine.fit import DEFINITIONS, FitOptions, run_fit
from aiida_optddap.engine.io.zval import ZvalInfo

ZVAL = ZvalInfo({"Na": 1.0, "Cl": 7.0}, {"Na": "user", "Cl": "user"})


@pytest.fixture(scope="module")
def pair():
    """Two Gaussian atoms in a 4 Å cube (16³ grid): a fit in well under a second."""
    cell, positions = np.eye(3) * 4.0, np.array([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
    q = np.array([[0.1, 0.15, 0.05], [2.4, 3.0, 2.3]])
    return gaussian_density(cell, ["Na", "Cl"], positions, q, np.array([0.5, 0.75, 1.125]), (16, 16, 16))


@pytest.fixture
def registry(monkeypatch):
    """The registry as it is; whatever a test registers is gone after it."""
    monkeypatch.setattr(definitions, "_REGISTRY", dict(definitions._REGISTRY))
    return definitions


def count_atoms(state) -> None:
    """A stage of the toy definition: what it reports."""
    state.reported["toy_atoms"] = state.density.n_atoms


TOY = Definition("toy", "pinv at fixed parameters, plus an atom count", {"solver": "pinv", "optimize": False},
                 stages=(pipeline.prepare, pipeline.solve, count_atoms, pipeline.diagnose, pipeline.reconstruct),
                 solvers=("pinv",), reports=("toy_atoms",), verdict=lambda results: (False, "toys are never kept"))


def test_builtins_are_registered_with_the_default_first():
    assert definitions.names() == ("auto", "restrained", "paper", "classic", "species", "shape", "potential")
    assert definitions.default().name == "auto" and definitions.default().candidates == ("potential", "restrained")
    assert tuple(DEFINITIONS) == definitions.names()
    assert definitions.joint_modes() == ("auto", "potential", "sigma_start", "species", "shape")
    assert definitions.report_keys() == ("species_widths", "species_usable", "species_at_bound",
                                         "species_bound_shift", "shape_coefficients", "shape_prior", "outside_potential")
    assert definitions.get("potential").fixed == {"solver": "potential", "gcut": 15.0}
    assert definitions.get("shape").fixed == {"solver": "shape", "gcut": 15.0}
    assert definitions.get("species").fixed == {"solver": "species", "gcut": 5.5}
    with pytest.raises(ValueError, match="unknown charge definition 'best': use one of auto, restrained"):
        definitions.get("best")


def test_registry_imports_without_torch():
    """The AiiDA schema reads the registry: importing it must not load torch (stages import it lazily)."""
    code = "import sys, aiida_optddap.engine.definitions\nassert 'torch' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_definition_is_checked_when_declared(registry):
    with pytest.raises(ValueError, match="fixes unknown options width"):
        Definition("bad", "x", {"width": 1.0}, stages=(count_atoms,))
    with pytest.raises(ValueError, match="needs stages or candidates"):
        Definition("bad", "x")
    with pytest.raises(ValueError, match="registered already"):
        registry.register(dataclasses.replace(TOY, name="restrained"))
    with pytest.raises(ValueError, match="register its candidates nope first"):
        registry.register(Definition("choosy", "x", candidates=("nope", "restrained")))
    assert dict(definitions.get("paper").fixed)["starts"] == 4
    with pytest.raises(TypeError):
        definitions.get("paper").fixed["starts"] = 1  # read-only


def test_stages_run_for_the_named_definition_or_the_solver(registry):
    assert definitions.for_options(FitOptions()).name == "restrained"  # a chooser's own fallback
    assert definitions.for_options(FitOptions.for_definition("classic")).name == "classic"
    assert definitions.for_options(FitOptions.for_definition("species", gcut=5.0)).name == "species"  # custom
    assert definitions.for_options(FitOptions(solver="kkt", definition="custom")).name == "restrained"


def test_a_new_definition_runs_and_reports(registry, pair):
    registry.register(TOY)
    toy = run_fit(pair, FitOptions.for_definition("toy", device="cpu"), zval=ZVAL)
    assert (toy["charge_definition"], toy["charge_model"], toy["solver"]) == ("toy", "toy", "pinv")
    assert toy["toy_atoms"] == 2 and toy["optimized"] is False
    assert toy["species_widths"] is None  # other definitions' keys: null
    restrained = run_fit(pair, FitOptions.for_definition("restrained", device="cpu", optimize=False), zval=ZVAL)
    assert restrained["toy_atoms"] is None
    assert FitOptions.for_definition("toy", optimize=True).definition == "custom"


def test_a_chooser_tries_its_candidates_in_order(registry, pair):
    """Making a new model the default: put it first in the default chooser's candidates."""
    registry.register(TOY)
    registry.register(dataclasses.replace(definitions.default(), candidates=("toy", "restrained")), replace=True)
    result = run_fit(pair, FitOptions(device="cpu", optimize=False), zval=ZVAL)
    assert (result["charge_definition"], result["charge_model"]) == ("auto", "restrained")
    assert result["model_choice"]["reason"] == "toys are never kept" and result["timings"]["toy_attempt"] > 0
    kept = dataclasses.replace(TOY, name="keeper", verdict=lambda results: (True, "kept"))
    registry.register(kept)
    registry.register(dataclasses.replace(definitions.default(), candidates=("keeper", "restrained")), replace=True)
    result = run_fit(pair, FitOptions(device="cpu"), zval=ZVAL)
    assert (result["charge_definition"], result["charge_model"], result["toy_atoms"]) == ("auto", "keeper", 2)
    assert result["model_choice"] == {"seconds": result["model_choice"]["seconds"], "reason": "kept"}


def test_applicability_and_refusal_come_from_the_flags(pair):
    species = definitions.get("species")
    options = FitOptions(device="cpu")
    assert species.applicable(pair, options, ZVAL, "absolute") is None
    assert "no Z_val" in species.applicable(pair, options, None, "absolute")
    assert "difference density" in species.applicable(pair, options, ZVAL, "difference")
    assert "three-Gaussian model" in species.applicable(pair, options.with_changes(n_gauss=4), ZVAL, "absolute")
    assert "needs Z_val" in species.refusal(None, "absolute")
    assert "use restrained, paper, classic for Δρ" in species.refusal(ZVAL, "difference")
    assert definitions.get("restrained").refusal(None, "difference") is None
    with pytest.raises(ValueError, match="needs Z_val"):
        run_fit(pair, FitOptions.for_definition("species", device="cpu"))


@pytest.mark.parametrize("name", ["shape", "species", "classic", "paper"])
def test_a_named_definition_with_other_fixed_options_is_refused(name):
    """``FitOptions(definition="shape")`` keeps the default solver and g_c, which the shape definition fixes
    otherwise: it is refused in one line that names both and the constructor that builds them, instead of
    running one model under another's name."""
    with pytest.raises(ValueError, match=rf"definition '{name}' fixes solver=.*FitOptions.for_definition\('{name}'"):
        FitOptions(definition=name)
    options = FitOptions.for_definition(name)
    assert options.definition == name and definitions.for_options(options).name == name
    assert FitOptions(**{**dataclasses.asdict(options)}).definition == name  # the same values pass


def test_for_definition_runs_what_it_names(pair):
    results = run_fit(pair, FitOptions.for_definition("shape", device="cpu"), zval=ZVAL)
    assert results["charge_model"] == "shape" and results["charge_definition"] == "shape"
    # a 16³ grid in a 4 Å cube holds |G| up to π·16/4 = 12.6 Å⁻¹ along an axis: g_c is lowered below 15
    assert results["parameters"]["gcut"] < 15.0
    assert any(warning.startswith("g_c lowered from 15") for warning in results["warnings"])


def test_options_of_one_model_are_refused_where_they_would_be_ignored():
    """esp_weight (potential model) and shape_prior (shape and potential models) set for a definition that does not
    read them: a clear error, not a silently ignored option; auto passes them on to the potential model it runs."""
    for name, value in (("esp_weight", 100.0), ("shape_prior", 0.3)):
        for definition in ("restrained", "species", "classic", "paper"):
            with pytest.raises(ValueError, match=f"{name} is read by the .*the {definition} definition would ignore"):
                FitOptions.for_definition(definition, **{name: value})
        assert getattr(FitOptions(**{name: value}), name) == value  # auto
        assert getattr(FitOptions.for_definition("potential", **{name: value}), name) == value
    assert FitOptions.for_definition("shape", shape_prior=0.3).shape_prior == 0.3
    with pytest.raises(ValueError, match="esp_weight is read by the potential definition"):
        FitOptions.for_definition("shape", esp_weight=100.0)
    result = CliRunner().invoke(main, ["fit", "nothing.cube", "--definition", "restrained", "--esp-weight", "100"])
    assert result.exit_code != 0 and "esp_weight is read by the potential definition" in " ".join(result.output.split())
