"""The `optddap` command line end to end: results.json against docs/results-schema.md, figures,
`optddap diff`, and every bad input (one-line message naming the file, exit status, no results)."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import CP2K_RADII, DATA, DOCS, gaussian_density, off_basis_density, rocksalt, vasp_rounded, write_chgcar

from aiida_optddap.engine.cli import main

H2 = DATA / "H2_CHGCAR.gz"
SCHEMA = DOCS / "results-schema.md"
OPTDDAP = Path(sys.executable).parent / "optddap"
SHAPE = (18, 18, 18)


def schema_keys() -> list[str]:
    rows = re.findall(r"^\| `([a-z_0-9]+)` \|", SCHEMA.read_text(), flags=re.MULTILINE)
    assert len(rows) > 30
    return rows


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_failed(result, output: Path, code: int, names: str):
    """Exit status ``code``, exactly one stderr line 'Error: … <names> …', no results file."""
    assert isinstance(result.exception, SystemExit), result.exception  # a deliberate exit, not a crash
    assert result.exit_code == code, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and names in lines[0], lines[0]
    assert not output.exists()
    assert not list(output.parent.glob(f".{output.name}.*"))  # no temporary file left either


# ---------------------------------------------------------------------------------- good runs


@pytest.fixture(scope="module")
def h2_run(tmp_path_factory):
    if not H2.is_file():
        pytest.skip(f"{H2} is not in the repository")
    folder = tmp_path_factory.mktemp("h2")
    out, plots = folder / "results.json", folder / "plots"
    result = invoke("fit", H2, "--definition", "paper", "--steps", 6, "--starts", 2, "-o", out, "--plot", plots,
                    "--device", "cpu", "--guess-zval")  # Z_val of H from pymatgen's POTCAR summary (no POTCAR)
    return result, out, plots


def test_fit_writes_every_schema_key(h2_run):
    result, out, _ = h2_run
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    missing = [key for key in schema_keys() if key not in data]
    assert not missing, missing
    assert data["schema_version"] == 2
    assert data["mode"] == "absolute" and data["optimized"] is True
    assert set(data["program"]) >= {"name", "version", "torch"}
    assert set(data["source"]) == {"density", "host", "format"} and data["source"]["format"] == "chgcar"
    assert data["source"]["density"].endswith("H2_CHGCAR.gz")
    assert data["grid_shape"] == [20, 20, 36]
    assert data["n_electrons"] == pytest.approx(2.0, abs=1e-5)
    assert sum(data["populations"]) == pytest.approx(data["n_electrons"], abs=1e-10)
    assert set(data["parameters"]) == set(data["initial_parameters"]) == {"sigma_start", "factor", "n_gauss", "gcut"}
    assert len(data["coefficients"]) == 2 and len(data["coefficients"][0]) == 3 == len(data["radii"])
    assert len(data["smallest_eigenvalues"]) == 3
    assert len(data["starts"]) == 2
    for start in data["starts"]:
        assert set(start) == {"initial_parameters", "parameters", "loss", "populations", "steps", "stop_reason"}
    assert set(data["start_spread"]) == {"max_abs", "per_atom"}
    assert set(data["history"][0]) == {"step", "sigma_start", "factor", "gcut", "loss", "condition_number", "rank",
                                       "unconstrained_total"}
    assert set(data["dipole"]) == {"populations", "density"}
    assert set(data["planar_averages"]) == {"a1", "a2", "a3"}
    assert all(set(v) == {"s", "dft", "model"} for v in data["planar_averages"].values())
    assert data["device"] == "cpu"
    assert data["loss_kind"] == "density" and data["solver"] == "pinv"
    # H2: Z_val 1 from pymatgen's POTCAR summary; neutral, so the net charges sum to 0
    assert data["zval"]["values"] == {"H": 1.0}
    assert sum(data["net_charges"]) == pytest.approx(2.0 - data["n_electrons"], abs=1e-10)
    np.testing.assert_allclose(data["electronic_charges"], -np.array(data["populations"]))


def test_fit_timings_as_documented(h2_run):
    """docs/results-schema.md: timings has read, setup (FFT and G sets), optimize, fit, reconstruct, total."""
    _, out, _ = h2_run
    timings = json.loads(out.read_text())["timings"]
    documented = {"read", "setup", "optimize", "fit", "reconstruct", "total"}
    assert documented <= set(timings), sorted(documented - set(timings))


def test_fit_writes_figures_and_summary(h2_run):
    result, out, plots = h2_run
    for name in ("planar_averages.png", "trajectory.png"):
        path = plots / name
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "results written to" in result.stdout
    assert not list(out.parent.glob(".results.json.*"))


def test_installed_script_subprocess(tmp_path):
    """One real process of the installed console script: exit 0, JSON written; and a bad input gives
    exactly one stderr line in a real process too (no stray warnings or tracebacks)."""
    if not H2.is_file():
        pytest.skip(f"{H2} is not in the repository")
    assert OPTDDAP.is_file(), f"console script not installed at {OPTDDAP}"
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    out = tmp_path / "r.json"
    done = subprocess.run([str(OPTDDAP), "fit", str(H2), "--no-optimize", "--quiet", "-o", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["optimized"] is False
    missing = tmp_path / "nowhere" / "CHGCAR"
    bad = subprocess.run([str(OPTDDAP), "fit", str(missing), "-o", str(tmp_path / "x.json")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0], bad.stderr
    assert not (tmp_path / "x.json").exists()


# ------------------------------------------------------------------------------------------- diff


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Host (rattled NaCl, basis Gaussians) and the same with atom 5 removed, as CHGCARs."""
    folder = tmp_path_factory.mktemp("pair")
    cell, symbols, positions = rocksalt(5.64, rattle=0.05, seed=2)
    cell, positions = vasp_rounded(cell, positions)
    q = np.random.default_rng(3).uniform(0.5, 3.0, size=(len(symbols), 3))
    host = gaussian_density(cell, symbols, positions, q, CP2K_RADII, SHAPE)
    keep = [i for i in range(len(symbols)) if i != 5]
    defect = gaussian_density(cell, tuple(symbols[i] for i in keep), positions[keep], q[keep], CP2K_RADII, SHAPE)
    (folder / "host").mkdir()
    (folder / "defect").mkdir()
    host_path = write_chgcar(folder / "host" / "CHGCAR", cell, symbols, positions, host.grid)
    defect_path = write_chgcar(folder / "defect" / "CHGCAR", cell, defect.symbols, defect.positions, defect.grid)
    return host_path, defect_path, q, symbols


def test_diff_end_to_end(pair, tmp_path):
    host, defect, q, symbols = pair
    out = tmp_path / "diff.json"
    result = invoke("diff", defect, host, "--definition", "paper", "--no-optimize", "--quiet", "-o", out,
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["mode"] == "difference"
    assert data["source"]["host"] == str(host) and data["source"]["density"] == f"{defect} - {host}"
    assert data["symbols"] == list(symbols) and data["net_charges"] is None
    p = np.array(data["populations"])
    assert p[5] == pytest.approx(-q[5].sum(), abs=1e-7)  # CHGCAR round trip: 11 digits
    assert np.abs(np.delete(p, 5)).max() <= 1e-7
    assert data["n_electrons"] == pytest.approx(-q[5].sum(), abs=1e-8)


def test_diff_with_optimisation(pair, tmp_path):
    host, defect, q, _ = pair
    out = tmp_path / "diff.json"
    result = invoke("diff", defect, host, "--definition", "paper", "--steps", 3, "--starts", 2, "--quiet", "-o", out,
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["optimized"] is True and len(data["starts"]) == 2
    assert sum(data["populations"]) == pytest.approx(-q[5].sum(), abs=1e-8)


# ------------------------------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def good_chgcar(tmp_path_factory):
    """A small valid CHGCAR (rattled NaCl, 18³) and its text."""
    cell, symbols, positions = rocksalt(5.64, rattle=0.05, seed=5)
    d = off_basis_density(cell, symbols, positions, [6.6 if s == "Na" else 7.4 for s in symbols], SHAPE)
    path = write_chgcar(tmp_path_factory.mktemp("good") / "CHGCAR", cell, symbols, positions, d.grid)
    return path, path.read_text()


def _data_lines(text):
    """Index range of the grid data lines (after the 'NX NY NZ' line)."""
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.split() == [str(n) for n in SHAPE]) + 1
    return lines, start


def _variant(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_chgcar_fits(good_chgcar, tmp_path):
    out = tmp_path / "ok.json"
    assert invoke("fit", good_chgcar[0], "--no-optimize", "--quiet", "-o", out).exit_code == 0
    assert out.is_file()


def test_missing_file(tmp_path):
    path, out = tmp_path / "no_such_CHGCAR", tmp_path / "out.json"
    assert_failed(invoke("fit", path, "-o", out), out, 1, str(path))


def test_directory_instead_of_file(tmp_path):
    folder, out = tmp_path / "adir", tmp_path / "out.json"
    folder.mkdir()
    assert_failed(invoke("fit", folder, "-o", out), out, 1, str(folder))


def test_empty_and_garbage_files(tmp_path):
    out = tmp_path / "out.json"
    empty = _variant(tmp_path, "CHGCAR_empty", "")
    assert_failed(invoke("fit", empty, "-o", out), out, 1, str(empty))
    garbage = tmp_path / "CHGCAR_garbage"
    garbage.write_bytes(bytes(range(256)) * 10)
    assert_failed(invoke("fit", garbage, "-o", out), out, 1, str(garbage))


def test_truncated_file(good_chgcar, tmp_path):
    lines, start = _data_lines(good_chgcar[1])
    path, out = _variant(tmp_path, "CHGCAR_truncated", "".join(lines[: start + 100])), tmp_path / "out.json"
    assert_failed(invoke("fit", path, "-o", out), out, 1, str(path))


def test_truncated_gzip_stream(good_chgcar, tmp_path):
    blob = gzip.compress(good_chgcar[1].encode())
    path, out = tmp_path / "CHGCAR.gz", tmp_path / "out.json"
    path.write_bytes(blob[: len(blob) // 2])
    assert_failed(invoke("fit", path, "-o", out), out, 1, str(path))


def test_overflow_fields(good_chgcar, tmp_path):
    lines, start = _data_lines(good_chgcar[1])
    fields = lines[start + 7].split()
    fields[2] = "*" * len(fields[2])
    lines[start + 7] = " " + " ".join(fields) + "\n"
    path, out = _variant(tmp_path, "CHGCAR_stars", "".join(lines)), tmp_path / "out.json"
    assert_failed(invoke("fit", path, "-o", out), out, 1, str(path))


def test_nan_in_grid(good_chgcar, tmp_path):
    lines, start = _data_lines(good_chgcar[1])
    fields = lines[start + 3].split()
    fields[1] = "NaN"
    lines[start + 3] = " " + " ".join(fields) + "\n"
    path, out = _variant(tmp_path, "CHGCAR_nan", "".join(lines)), tmp_path / "out.json"
    assert_failed(invoke("fit", path, "-o", out), out, 1, str(path))


def test_atom_counts_do_not_match(good_chgcar, tmp_path):
    lines = good_chgcar[1].splitlines(keepends=True)
    assert lines[5].split() == ["Na", "Cl"] and lines[6].split() == ["4", "4"]
    lines[6] = "   4   5\n"
    path, out = _variant(tmp_path, "CHGCAR_counts", "".join(lines)), tmp_path / "out.json"
    assert_failed(invoke("fit", path, "-o", out), out, 1, str(path))


def test_diff_grids_differ(pair, tmp_path):
    host, defect, _, _ = pair
    cell, symbols, positions = rocksalt(5.64)
    other = write_chgcar(tmp_path / "CHGCAR_grid", cell, symbols, positions, np.full((16, 16, 16), 7.0))
    out = tmp_path / "out.json"
    assert_failed(invoke("diff", defect, other, "--no-optimize", "-o", out), out, 1, str(defect))


def test_diff_cells_differ(pair, tmp_path):
    host, defect, _, symbols = pair
    cell, _, positions = rocksalt(5.70)
    other = write_chgcar(tmp_path / "CHGCAR_cell", cell, symbols, positions, np.full(SHAPE, 7.0))
    out = tmp_path / "out.json"
    result = invoke("diff", defect, other, "--no-optimize", "-o", out)
    assert_failed(result, out, 1, str(defect))
    assert str(other) in result.stderr


@pytest.mark.parametrize("zval", ["Xx=3", "Li=1", "Na=seven"])
def test_bad_zval(good_chgcar, tmp_path, zval):
    out = tmp_path / "out.json"
    result = invoke("fit", good_chgcar[0], "--no-optimize", "--zval", zval, "-o", out)
    assert_failed(result, out, 1, str(good_chgcar[0]))
    assert zval.split("=")[0] in result.stderr or "seven" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available: --device cuda is valid here")
def test_cuda_requested_without_gpu(good_chgcar, tmp_path):
    out = tmp_path / "out.json"
    result = invoke("fit", good_chgcar[0], "--no-optimize", "--device", "cuda", "-o", out)
    assert isinstance(result.exception, SystemExit) and result.exit_code == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA" in lines[0]
    assert not out.exists()


def test_lagrange_on_singular_perfect_crystal(tmp_path):
    cell, symbols, positions = rocksalt(5.64)
    d = off_basis_density(cell, symbols, positions, [6.6 if s == "Na" else 7.4 for s in symbols], SHAPE)
    path = write_chgcar(tmp_path / "CHGCAR", cell, symbols, positions, d.grid)
    out = tmp_path / "out.json"
    result = invoke("fit", path, "--no-optimize", "--solver", "lagrange", "-o", out)
    assert_failed(result, out, 5, str(path))
    assert "singular" in result.stderr
    # pinv handles the same file
    assert invoke("fit", path, "--no-optimize", "--quiet", "-o", out).exit_code == 0


def test_usage_errors_exit_2(good_chgcar, tmp_path):
    out = tmp_path / "out.json"
    for args in (["--solver", "nope"], ["--factor", "1.0"], ["--sigma-start", "-1"]):
        result = invoke("fit", good_chgcar[0], "--no-optimize", "-o", out, *args)
        assert result.exit_code == 2, (args, result.output)
        assert not out.exists()


# ------------------------------------------------------------------------------------------ CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cpu_and_cuda_agree():
    from helpers import TRICLINIC, TRICLINIC_FRAC, TRICLINIC_SYMBOLS

    from aiida_optddap.engine.gaussian import ddap

    positions = TRICLINIC_FRAC @ TRICLINIC
    d = off_basis_density(TRICLINIC, TRICLINIC_SYMBOLS, positions, [6.3, 1.1, 4.2], (40, 45, 48))
    params = ddap.Parameters(0.5, 1.5, 3, 4.62886475894023)
    for solver in ("pinv", "lagrange", "kkt", "shift", "scale"):
        cpu = ddap.fit_coefficients(ddap.problem_for(d, params, device="cpu"), params, solver)
        gpu = ddap.fit_coefficients(ddap.problem_for(d, params, device="cuda"), params, solver)
        np.testing.assert_allclose(gpu["populations"], cpu["populations"], atol=1e-10)
    cell, symbols, pos = rocksalt(5.64)
    perfect = off_basis_density(cell, symbols, pos, [6.6 if s == "Na" else 7.4 for s in symbols], (25, 25, 25))
    cpu = ddap.fit_coefficients(ddap.problem_for(perfect, params, device="cpu"), params, "pinv")
    gpu = ddap.fit_coefficients(ddap.problem_for(perfect, params, device="cuda"), params, "pinv")
    np.testing.assert_allclose(gpu["populations"], cpu["populations"], atol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cpu_and_cuda_agree_in_the_optimisation():
    """The optimiser's shell tables and overlap sums on CUDA follow the CPU trajectory."""
    from helpers import TRICLINIC, TRICLINIC_FRAC, TRICLINIC_SYMBOLS

    from aiida_optddap.engine.fit import FitOptions, run_fit

    d = off_basis_density(TRICLINIC, TRICLINIC_SYMBOLS, TRICLINIC_FRAC @ TRICLINIC, [6.3, 1.1, 4.2], (40, 45, 48))
    runs = {device: run_fit(d, FitOptions.for_definition("paper", device=device, steps=8, starts=2)) for device in ("cpu", "cuda")}
    assert runs["cuda"]["device"].startswith("cuda")
    for key in ("loss", "sigma_start", "factor", "gcut"):
        np.testing.assert_allclose([h[key] for h in runs["cuda"]["history"]], [h[key] for h in runs["cpu"]["history"]],
                                   rtol=1e-8)
    np.testing.assert_allclose(runs["cuda"]["populations"], runs["cpu"]["populations"], atol=1e-8)


def test_console_script_freezes_before_exit(monkeypatch):
    """``optddap`` is :func:`~aiida_optddap.engine.cli.run`: main, then gc.freeze() however main ends (it exits
    through SystemExit), so that the interpreter's final collections skip torch's objects."""
    from importlib.metadata import entry_points

    from aiida_optddap.engine import cli

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "optddap"]
    assert script.value == "aiida_optddap.engine.cli:run"
    frozen = []
    monkeypatch.setattr(cli.gc, "freeze", lambda: frozen.append(True))
    monkeypatch.setattr(sys, "argv", ["optddap", "--version"])
    with pytest.raises(SystemExit) as info:
        cli.run()
    assert info.value.code == 0 and frozen == [True]
