"""The ``optddap.fit`` parser on recorded retrieved folders, one test per exit code it can return."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from aiida import orm

from aiida_optddap.parsers.fit import OptDdapParser, classify_stderr, killed_by_signal

RECORDED = pathlib.Path(__file__).parent / "recorded"


def _parse(generate_calc_job_node, files, inputs=None):
    node = generate_calc_job_node(inputs=inputs, files=files)
    results, calcfunction = OptDdapParser.parse_from_node(node, store_provenance=False)
    return results, calcfunction


def test_success(generate_calc_job_node, results_factory):
    results, calc = _parse(generate_calc_job_node, {"results.json": results_factory(), "optddap.err": ""})
    assert calc.is_finished_ok, calc.exit_message
    assert set(results) == {"charges", "structure", "output_parameters", "trajectory", "planar_averages"}
    out = results["output_parameters"].get_dict()
    for key in ("sigma_start", "factor", "gcut", "n_gauss", "condition_number", "rank", "loss", "loss_kind",
                "fit_residual", "unconstrained_total", "n_electrons", "converged", "stop_reason", "device",
                "engine_version", "timings_total", "timings_read"):
        assert key in out, key
    assert out["singular"] is False
    assert out["charge_error"] == pytest.approx(0.0)
    np.testing.assert_allclose(results["trajectory"].get_array("sigma_start"), [0.5, 0.51, 0.52, 0.53])
    assert set(results["trajectory"].get_arraynames()) >= {
        "step", "sigma_start", "factor", "gcut", "loss", "condition_number", "rank"}
    assert set(results["planar_averages"].get_arraynames()) == {
        f"{a}_{k}" for a in ("a1", "a2", "a3") for k in ("s", "dft", "model")}
    assert results["structure"].get_formula() == "ClNa"


def _recorded(name):
    return (RECORDED / name).read_text()


def test_recorded_engine_output(generate_calc_job_node):
    """A results.json written by the real engine CLI (tests/aiida/recorded/README.md)."""
    text = _recorded("nacl_results.json")
    results, calc = _parse(generate_calc_job_node, {"results.json": text, "optddap.err": ""})
    assert calc.is_finished_ok, calc.exit_message
    recorded = json.loads(text)
    np.testing.assert_allclose(results["charges"].populations, recorded["populations"])
    np.testing.assert_allclose(results["charges"].net_charges, [0.823731, -0.823731], atol=1e-6)
    out = results["output_parameters"].get_dict()
    assert out["condition_number"] == pytest.approx(recorded["condition_number"])
    assert out["converged"] is None and out["optimized"] is False
    assert "trajectory" not in results  # no optimisation, no history
    assert results["charges"].base.attributes.get("elements")["Na"]["mean"] == pytest.approx(0.823731, abs=1e-6)


def test_300_missing_output(generate_calc_job_node):
    _, calc = _parse(generate_calc_job_node, {"optddap.err": "Killed\n"})
    assert calc.exit_status == 300
    assert "Killed" in calc.exit_message


def test_301_unreadable_output(generate_calc_job_node, results_factory):
    _, calc = _parse(generate_calc_job_node, {"results.json": "{not json", "optddap.err": ""})
    assert calc.exit_status == 301
    results = results_factory()
    results["schema_version"] = 3
    _, calc = _parse(generate_calc_job_node, {"results.json": results})
    assert calc.exit_status == 301
    assert "schema_version 3" in calc.exit_message


def test_302_density_unreadable(generate_calc_job_node):
    _, calc = _parse(generate_calc_job_node, {"optddap.err": _recorded("truncated.err")})
    assert calc.exit_status == 302
    assert "truncated" in calc.exit_message


def test_303_structure_mismatch(generate_calc_job_node, results_factory):
    def structure(shift=0.0, symbols=("Na", "Cl"), cell_scale=1.0):
        s = orm.StructureData(cell=(np.eye(3) * 5.0 * cell_scale).tolist())
        s.append_atom(position=(0.0 + 5.0 + shift, 0.0, -5.0), symbols=symbols[0])  # shifted by lattice vectors
        s.append_atom(position=(2.5, 2.5, 2.5), symbols=symbols[1])
        return s

    files = {"results.json": results_factory()}
    _, calc = _parse(generate_calc_job_node, files, inputs={"structure": structure()})
    assert calc.is_finished_ok, calc.exit_message  # equal modulo lattice vectors
    _, calc = _parse(generate_calc_job_node, files, inputs={"structure": structure(shift=5e-4)})
    assert calc.is_finished_ok  # within 1e-3 Å
    _, calc = _parse(generate_calc_job_node, files, inputs={"structure": structure(shift=2e-3)})
    assert calc.exit_status == 303 and "position of atom 0" in calc.exit_message
    _, calc = _parse(generate_calc_job_node, files, inputs={"structure": structure(symbols=("Cl", "Na"))})
    assert calc.exit_status == 303 and "species differ" in calc.exit_message
    _, calc = _parse(generate_calc_job_node, files, inputs={"structure": structure(cell_scale=1.0001)})
    assert calc.exit_status == 303 and "cell vectors differ" in calc.exit_message
    one_atom = orm.StructureData(cell=(np.eye(3) * 5.0).tolist())
    one_atom.append_atom(position=(0, 0, 0), symbols="Na")
    results, calc = _parse(generate_calc_job_node, files, inputs={"structure": one_atom})
    assert calc.exit_status == 303 and "1 sites" in calc.exit_message
    assert "charges" in results  # outputs still attached


def test_304_numerical_failure(generate_calc_job_node, results_factory):
    files = {"results.json": results_factory(converged=False, stop_reason="non_finite")}
    _, calc = _parse(generate_calc_job_node, files)
    assert calc.exit_status == 304
    _, calc = _parse(generate_calc_job_node, {"optddap.err": _recorded("scale_zero_total.err")})
    assert calc.exit_status == 304 and "renormalisation is undefined" in calc.exit_message


def test_305_usage_error(generate_calc_job_node):
    _, calc = _parse(generate_calc_job_node, {"optddap.err": _recorded("usage.err")})
    assert calc.exit_status == 305 and "--bogus" in calc.exit_message


def test_400_not_converged_outputs_attached(generate_calc_job_node, results_factory):
    files = {"results.json": _recorded("nacl_not_converged.json")}
    results, calc = _parse(generate_calc_job_node, files)
    assert calc.exit_status == 400
    assert "max_steps" in calc.exit_message and "after 2 steps" in calc.exit_message
    assert {"charges", "output_parameters", "structure", "trajectory"} <= set(results)
    assert results["trajectory"].get_array("loss").shape == (2,)
    assert results["output_parameters"]["n_steps"] == 2
    # without optimisation `converged` is null: not a failure
    _, calc = _parse(generate_calc_job_node, {"results.json": results_factory(optimized=False)})
    assert calc.is_finished_ok


def test_rank_change_stop_is_not_a_failure(generate_calc_job_node):
    """The rank guard stopping the optimiser is by design: more steps cannot help, so no 400."""
    results = json.loads(_recorded("nacl_not_converged.json"))
    results["stop_reason"] = "rank_change"
    _, calc = _parse(generate_calc_job_node, {"results.json": json.dumps(results)})
    assert calc.is_finished_ok, calc.exit_message


def test_410_ill_conditioned(generate_calc_job_node, results_factory):
    # lagrange: default threshold 1e12
    files = {"results.json": results_factory(solver="lagrange", rtol=1e-14, condition_number=5e12)}
    _, calc = _parse(generate_calc_job_node, files)
    assert calc.exit_status == 410 and "1e+12" in calc.exit_message
    # pinv: no default threshold, even when singular
    _, calc = _parse(generate_calc_job_node, {"results.json": results_factory(singular=True)})
    assert calc.is_finished_ok
    # a user threshold applies to every solver; for pinv the effective κ min(κ, 1/rtol) is compared
    params = orm.Dict({"max_condition_number": 1e6})
    _, calc = _parse(generate_calc_job_node, {"results.json": results_factory(condition_number=1e9)},
                     inputs={"parameters": params})
    assert calc.exit_status == 410 and "effective" in calc.exit_message
    _, calc = _parse(generate_calc_job_node, {"results.json": results_factory(condition_number=1e9, rtol=1e-4)},
                     inputs={"parameters": orm.Dict({"max_condition_number": 1e6})})
    assert calc.is_finished_ok
    _, calc = _parse(generate_calc_job_node, {"results.json": results_factory(solver="kkt", condition_number=1e7)},
                     inputs={"parameters": orm.Dict({"max_condition_number": 1e6})})
    assert calc.exit_status == 410
    # the CLI's exit 5 on a singular matrix (no results.json)
    _, calc = _parse(generate_calc_job_node, {"optddap.err": _recorded("lih_lagrange.err")})
    assert calc.exit_status == 410 and "singular" in calc.exit_message


def test_420_charge_not_conserved(generate_calc_job_node, results_factory):
    doctored = json.loads(_recorded("nacl_results.json"))
    doctored["n_electrons"] += 2e-6
    results, calc = _parse(generate_calc_job_node, {"results.json": doctored})
    assert calc.exit_status == 420
    assert "charges" in results
    files = {"results.json": results_factory(populations=(0.2, 7.8), n_electrons=8.00001)}
    results, calc = _parse(generate_calc_job_node, files)
    assert calc.exit_status == 420
    assert "1e-05" in calc.exit_message
    assert results["output_parameters"]["charge_error"] == pytest.approx(-1e-5)
    files = {"results.json": results_factory(populations=(0.2, 7.8), n_electrons=8.0000005)}
    _, calc = _parse(generate_calc_job_node, files)
    assert calc.is_finished_ok


def test_430_gpu_out_of_memory(generate_calc_job_node):
    _, calc = _parse(generate_calc_job_node, {"optddap.err": _recorded("oom.err"), "optddap.out": ""})
    assert calc.exit_status == 430
    assert "CUDA out of memory" in calc.exit_message


def test_440_no_gpu(generate_calc_job_node):
    _, calc = _parse(generate_calc_job_node, {"optddap.err": _recorded("no_gpu.err")})
    assert calc.exit_status == 440


def test_302_nan_grid_is_bad_input_not_a_numerical_failure(generate_calc_job_node):
    """The engine's exit-1 message for a NaN grid names NaN; only the exit-5 prefix makes it numerical (304)."""
    for line in ("Error: CHGCAR: the density grid contains NaN or infinite values",
                 "Error: nan_overflow_CHGCAR: truncated file: a grid block holds 3 of its 8x8x8 = 512 values"):
        _, calc = _parse(generate_calc_job_node, {"optddap.err": line + "\n"})
        assert calc.exit_status == 302, (line, calc.exit_message)
    _, calc = _parse(generate_calc_job_node, {"optddap.err": "Error: numerical failure: singular_CHGCAR: the fit "
                                                             "produced non-finite values (NaN or ∞ charges)\n"})
    assert calc.exit_status == 304  # the prefix decides, not the word 'singular' in a file name


BASH_KILLED = ("/scratch/aiida/ab/cd/_aiidasubmit.sh: line 9: 12345 Killed                  '/usr/bin/optddap' "
               "'fit' 'CHGCAR' '-o' 'results.json' > 'optddap.out' 2> 'optddap.err'\n")


def test_306_engine_killed(generate_calc_job_node):
    """A killed engine (SIGKILL: OOM killer, scancel, wall time) leaves no results and an empty stderr; the
    scheduler's stderr says why. A caught SIGTERM is reported by the engine itself."""
    _, calc = _parse(generate_calc_job_node, {"optddap.err": "", "_scheduler-stderr.txt": BASH_KILLED})
    assert calc.exit_status == 306 and "Killed" in calc.exit_message and "stderr is empty" not in calc.exit_message
    slurm = "slurmstepd: error: *** JOB 4242 ON node7 CANCELLED AT 2026-12-02T06:00:00 DUE TO TIME LIMIT ***\n"
    _, calc = _parse(generate_calc_job_node, {"optddap.err": "", "_scheduler-stderr.txt": slurm})
    assert calc.exit_status == 306 and "TIME LIMIT" in calc.exit_message
    _, calc = _parse(generate_calc_job_node, {"optddap.err": "Error: terminated by signal SIGTERM\n"})
    assert calc.exit_status == 306 and "SIGTERM" in calc.exit_message
    # nothing in either stderr: still 300, quoting the (empty) stderr
    _, calc = _parse(generate_calc_job_node, {"optddap.err": "", "_scheduler-stderr.txt": "module loaded\n"})
    assert calc.exit_status == 300 and "stderr is empty" in calc.exit_message


def test_killed_by_signal():
    assert killed_by_signal("") is None and killed_by_signal("Killed_CHGCAR read\n") is None
    assert killed_by_signal(BASH_KILLED).endswith("Killed")
    assert "Segmentation fault" in killed_by_signal("x.sh: line 3:  77 Segmentation fault      (core dumped) a\n")
    assert killed_by_signal("slurmstepd: error: Detected 1 oom-kill event(s) in StepId=5.0.") is not None


def test_classify_stderr():
    assert classify_stderr("") is None
    assert classify_stderr("some warning\n") is None
    assert classify_stderr("Error: x: bad header\n")[0] == "ERROR_DENSITY_UNREADABLE"
    assert classify_stderr("Error: x: grid contains NaN\n")[0] == "ERROR_DENSITY_UNREADABLE"
    assert classify_stderr("Error: numerical failure: x: A is singular\n")[0] == "ERROR_ILL_CONDITIONED"
    assert classify_stderr("Error: terminated by signal SIGHUP\n") == ("ERROR_ENGINE_KILLED",
                                                                        "terminated by signal SIGHUP")
