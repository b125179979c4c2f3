"""``optddap.base``: every process handler on failed CalcJobNodes built by hand, and real restarts."""

from __future__ import annotations

import pytest
from aiida import orm
from aiida.engine import ProcessHandlerReport, run_get_node
from aiida.plugins import WorkflowFactory

OptDdapBaseWorkChain = WorkflowFactory("optddap.base")


@pytest.fixture
def base_inputs(aiida_localhost, nacl_chgcar, singlefile):
    def factory(parameters=None):
        code = orm.InstalledCode(computer=aiida_localhost, filepath_executable="/bin/true", label="fake").store()
        inputs = {
            "fit": {
                "code": code,
                "charge_density": singlefile(nacl_chgcar),
                "parameters": orm.Dict(parameters or {}),
            }
        }
        return inputs

    return factory


@pytest.fixture
def failed_process(generate_workchain, generate_calc_job_node, base_inputs):
    """(work chain instance after setup, failed CalcJobNode with ``exit_status`` and ``output_parameters``)."""

    def factory(exit_status, parameters=None, output_parameters=None):
        process = generate_workchain("optddap.base", base_inputs(parameters))
        process.setup()
        outputs = {"output_parameters": orm.Dict(output_parameters)} if output_parameters is not None else None
        node = generate_calc_job_node(exit_status=exit_status, outputs=outputs)
        process.ctx.children = [node]
        process.ctx.iteration = 1
        return process, node

    return factory


def _params(process) -> dict:
    return process.ctx.inputs.parameters.get_dict()


def test_exposed_ports():
    spec = OptDdapBaseWorkChain.spec()
    assert "fit" in spec.inputs and "charge_density" in spec.inputs["fit"]
    assert {"charges", "structure", "output_parameters"} <= set(spec.outputs)
    names = {h.__name__ for h in OptDdapBaseWorkChain.get_process_handlers()}
    assert names == {"handle_input_rejected", "handle_no_gpu", "handle_gpu_out_of_memory", "handle_ill_conditioned",
                     "handle_not_converged"}


def test_handler_440_no_gpu(failed_process):
    process, node = failed_process(440, {"device": "cuda", "optimize": False})
    report = process.handle_no_gpu(node)
    assert isinstance(report, ProcessHandlerReport) and report.do_break and report.exit_code.status == 0
    assert _params(process) == {"device": "cpu", "optimize": False}
    # a handler ignores other exit codes
    process, node = failed_process(430)
    assert process.handle_no_gpu(node) is None


def test_handler_430_halves_chunk_size_then_cpu(failed_process):
    process, node = failed_process(430, {"device": "cuda"})
    sizes = []
    for _ in range(2):
        assert process.handle_gpu_out_of_memory(node).do_break
        sizes.append(_params(process)["chunk_size"])
        assert _params(process)["device"] == "cuda"
    assert sizes == [512, 256]  # from the default 1024
    process.handle_gpu_out_of_memory(node)
    assert _params(process)["device"] == "cpu" and _params(process)["chunk_size"] == 256
    # a user chunk size is the starting point
    process, node = failed_process(430, {"chunk_size": 4096})
    process.handle_gpu_out_of_memory(node)
    assert _params(process)["chunk_size"] == 2048


def test_handler_410_lagrange_to_pinv_then_rtol(failed_process):
    process, node = failed_process(410, {"solver": "lagrange"})
    process.handle_ill_conditioned(node)
    assert _params(process)["solver"] == "pinv"
    # pinv: rtol × 1e3, from the parameters or from the failed run's output_parameters
    process, node = failed_process(410, {"solver": "pinv", "rtol": 1e-12, "max_condition_number": 1e6})
    process.handle_ill_conditioned(node)
    assert _params(process)["rtol"] == pytest.approx(1e-9)
    process, node = failed_process(410, {"max_condition_number": 1e6}, {"solver": "pinv", "rtol": 1e-10})
    process.handle_ill_conditioned(node)
    assert _params(process)["rtol"] == pytest.approx(1e-7)
    # capped at 0.1, then the work chain gives up
    process, node = failed_process(410, {"rtol": 1e-2})
    process.handle_ill_conditioned(node)
    assert _params(process)["rtol"] == pytest.approx(0.1)
    process, node = failed_process(410, {"rtol": 0.1})
    report = process.handle_ill_conditioned(node)
    assert report.exit_code.status == 410 and report.exit_code.message.endswith("rtol = 0.1.")
    # other solvers fall back to pinv
    process, node = failed_process(410, {"solver": "kkt", "max_condition_number": 1e6})
    process.handle_ill_conditioned(node)
    assert _params(process)["solver"] == "pinv"


def test_handler_400_doubles_steps_and_restarts(failed_process):
    last = {"sigma_start": 0.61, "factor": 1.42, "gcut": 5.1, "n_steps": 2}
    process, node = failed_process(400, {"steps": 2, "starts": 4, "seed": 7}, last)
    process.handle_not_converged(node)
    assert _params(process) == {"steps": 4, "starts": 1, "seed": 7, "sigma_start": 0.61, "factor": 1.42,
                                "gcut": 5.1}
    # steps unset: the number taken (history length) is doubled
    process, node = failed_process(400, {}, {"sigma_start": 0.5, "factor": 1.5, "gcut": 4.6, "n_steps": 300})
    process.handle_not_converged(node)
    assert _params(process)["steps"] == 600


def test_inspect_process_restarts_and_aborts_on_unhandled(failed_process):
    process, _ = failed_process(440, {"device": "cuda"})
    assert process.inspect_process().status == 0  # handled: restart
    assert not process.ctx.is_finished and _params(process)["device"] == "cpu"
    process, _ = failed_process(420)
    result = process.inspect_process()
    assert result.status == OptDdapBaseWorkChain.exit_codes.ERROR_UNHANDLED_FAILURE.status
    process, _ = failed_process(0, output_parameters={})
    assert process.inspect_process() is None and process.ctx.is_finished


# ----------------------------------------------------------------------------------------- real runs
def _builder(optddap_code, density, parameters, max_iterations=3):
    builder = OptDdapBaseWorkChain.get_builder()
    builder.fit.code = optddap_code
    builder.fit.charge_density = density
    builder.fit.parameters = orm.Dict(parameters)
    builder.max_iterations = orm.Int(max_iterations)
    return builder


def _calcs(node):
    return sorted(node.called, key=lambda n: n.ctime)


@pytest.mark.daemon
def test_daemon_no_gpu_falls_back_to_cpu(optddap_code, nacl_chgcar, singlefile, submit_and_await):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    density = singlefile(nacl_chgcar)
    node = submit_and_await(_builder(optddap_code, density, {"device": "cuda", "optimize": False}), timeout=240)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    first, second = _calcs(node)
    assert first.exit_status == 440 and second.is_finished_ok
    assert second.inputs.parameters["device"] == "cpu"
    assert node.outputs.output_parameters["device"] == "cpu"
    assert node.outputs.charges.pk == second.outputs.charges.pk
    # provenance: density → calculation → charges, returned by the work chain
    assert second.inputs.charge_density.pk == density.pk


def test_run_lagrange_singular_switches_to_pinv(optddap_code, lih_chgcar, singlefile, caplog):
    with caplog.at_level(23, logger="aiida"):  # AiiDA's REPORT level: the work chain's report as it is emitted
        _, node = run_get_node(_builder(optddap_code, singlefile(lih_chgcar), {"solver": "lagrange", "optimize": False}))
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    first, second = _calcs(node)
    assert first.exit_status == 410 and second.inputs.parameters["solver"] == "pinv"
    assert node.outputs.charges.base.attributes.get("solver") == "pinv"
    # nothing hidden by the restart: both attempts on the final ChargesData and in the report
    attempts = node.outputs.charges.base.extras.get("attempts")
    assert [a["calcjob"] for a in attempts] == [first.pk, second.pk]
    assert [a["exit_status"] for a in attempts] == [410, 0] and "singular" in attempts[0]["exit_message"]
    assert any(w for w in attempts[1]["warnings"])  # the pinv fit of the rank-deficient LiH warns
    report = "\n".join(record.getMessage() for record in caplog.records)
    assert f"attempt 1: OptDdapCalculation<{first.pk}> exit 410" in report
    assert f"attempt 2: OptDdapCalculation<{second.pk}> exit 0" in report
    # the final ChargesData is returned by the work chain; the first attempt made none
    assert "charges" not in first.outputs


def test_run_not_converged_restarts_from_last_parameters(optddap_code, nacl_chgcar, singlefile):
    builder = _builder(optddap_code, singlefile(nacl_chgcar), {"definition": "paper", "steps": 2, "starts": 1},
                       max_iterations=2)
    _, node = run_get_node(builder)
    first, second = _calcs(node)
    assert first.exit_status == 400
    previous = first.outputs.output_parameters.get_dict()
    restarted = second.inputs.parameters.get_dict()
    assert restarted["steps"] == 4 and restarted["starts"] == 1
    for key in ("sigma_start", "factor", "gcut"):
        assert restarted[key] == pytest.approx(previous[key])
    assert second.outputs.output_parameters["initial_sigma_start"] == pytest.approx(previous["sigma_start"])
    # converged at the second try, or gave up after max_iterations
    assert node.exit_status in (0, OptDdapBaseWorkChain.exit_codes.ERROR_MAXIMUM_ITERATIONS_EXCEEDED.status)
