"""Every kind of bad input the `optddap` CLI is known to meet, run end to end and counted.

Each entry of :data:`BAD_INPUTS` is one kind: the command must stop with its documented exit status and one
line ``Error: …`` naming the culprit (file, option or value), before writing a results file, a temporary file
or a figure. The number of kinds is quoted in docs/production.md ("Reliability"); ``test_the_count_in_the_docs``
keeps the two equal. The fault side (SIGTERM, SIGKILL) is at the end.
"""

from __future__ import annotations

import gzip
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import DOCS, off_basis_density, rocksalt, write_chgcar

from aiida_optddap.engine.cli import main

SHAPE = (18, 18, 18)
PRODUCTION = DOCS / "production.md"
OPTDDAP = Path(sys.executable).parent / "optddap"
NO_FIT = ("--no-optimize", "--quiet")


class Files:
    """The valid inputs the bad ones are made from (built once per module)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.cell, self.symbols, self.positions = rocksalt(5.64, rattle=0.05, seed=5)
        pops = [6.6 if s == "Na" else 7.4 for s in self.symbols]
        self.grid = off_basis_density(self.cell, self.symbols, self.positions, pops, SHAPE).grid
        self.good = write_chgcar(folder / "CHGCAR", self.cell, self.symbols, self.positions, self.grid)
        self.text = self.good.read_text()

    def write(self, name: str, text: str | bytes) -> Path:
        path = self.folder / name
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
        return path

    def chgcar(self, name, grid=None, positions=None, cell=None, shape=None) -> Path:
        grid = self.grid if grid is None else grid
        if shape is not None:
            grid = np.full(shape, float(self.grid.mean()))
        return write_chgcar(self.folder / name, self.cell if cell is None else cell, self.symbols,
                            self.positions if positions is None else positions, grid)

    def cube(self, name: str, grid) -> Path:
        """A Gaussian cube of ``grid`` (raw n·V, written in e/bohr³ as cube files hold it)."""
        from ase import Atoms
        from ase.io.cube import write_cube
        from ase.units import Bohr

        atoms = Atoms(self.symbols, positions=self.positions, cell=self.cell, pbc=True)
        with open(self.folder / name, "w") as handle:
            write_cube(handle, atoms, data=np.asarray(grid) / (abs(np.linalg.det(self.cell)) / Bohr**3))
        return self.folder / name

    def negative_sodium(self, name: str) -> Path:
        """A CHGCAR whose Na atoms carry −0.3 e: no fit can give them a possible population."""
        pops = [-0.3 if s == "Na" else 8.3 for s in self.symbols]
        grid = off_basis_density(self.cell, self.symbols, self.positions, pops, SHAPE).grid
        return self.chgcar(name, grid=grid)

    def data_edit(self, name: str, row: int, column: int, token: str) -> Path:
        lines = self.text.splitlines(keepends=True)
        start = next(i for i, line in enumerate(lines) if line.split() == [str(n) for n in SHAPE]) + 1
        fields = lines[start + row].split()
        fields[column] = token
        lines[start + row] = " " + " ".join(fields) + "\n"
        return self.write(name, "".join(lines))

    def header_edit(self, name: str, line: int, text: str) -> Path:
        lines = self.text.splitlines(keepends=True)
        lines[line] = text + "\n"
        return self.write(name, "".join(lines))


def _duplicate_atoms(f: Files):
    positions = f.positions.copy()
    positions[1] = positions[0] + f.cell[2]  # the same site one lattice vector away
    return ["fit", f.chgcar("CHGCAR_same_site", positions=positions), *NO_FIT]


def _locpot_renamed(f: Files):
    # a potential (eV): mean 0, deep negative wells at the atoms, the shape of a VASP LOCPOT
    potential = f.grid.mean() - f.grid
    return ["fit", f.chgcar("G_CHGCAR", grid=potential), *NO_FIT]


def _results(f: Files, version) -> Path:
    data = {"schema_version": version, "symbols": list(f.symbols), "coefficients": [[1.0, 2.0, 3.0]] * 8,
            "radii": [0.5, 0.75, 1.125], "populations": [6.0] * 8, "net_charges": None}
    return f.write(f"results_v{version}.json", json.dumps(data))


#: (kind, arguments from the Files, exit status, text the one error line must contain).
BAD_INPUTS = [
    # the density file itself
    ("missing file", lambda f: ["fit", f.folder / "no_such_CHGCAR"], 1, "no_such_CHGCAR"),
    ("a directory", lambda f: ["fit", f.folder], 1, "directory"),
    ("empty file", lambda f: ["fit", f.write("CHGCAR_empty", "")], 1, "empty"),
    ("binary garbage", lambda f: ["fit", f.write("CHGCAR_garbage", bytes(range(256)) * 10)], 1, "CHGCAR_garbage"),
    ("truncated grid", lambda f: ["fit", f.write("CHGCAR_cut", f.text[: len(f.text) // 3])], 1, "truncated"),
    ("truncated gzip stream", lambda f: ["fit", f.write("CHGCAR.gz", gzip.compress(f.text.encode())[:4000])], 1,
     "CHGCAR.gz"),
    ("overflow field ***", lambda f: ["fit", f.data_edit("CHGCAR_stars", 7, 2, "*" * 17)], 1, "overflow"),
    ("NaN in the grid", lambda f: ["fit", f.data_edit("CHGCAR_nan", 3, 1, "NaN")], 1, "NaN"),
    ("atom counts against positions", lambda f: ["fit", f.header_edit("CHGCAR_counts", 6, "   4   5")], 1,
     "positions"),
    ("zero scale factor", lambda f: ["fit", f.header_edit("CHGCAR_scale", 1, "   0.0")], 1, "scale factor"),
    ("broken lattice vector", lambda f: ["fit", f.header_edit("CHGCAR_lattice", 3, "  0.0 5.64")], 1,
     "lattice vector"),
    ("unknown element", lambda f: ["fit", f.header_edit("CHGCAR_element", 5, "   Na   Qq")], 1, "Qq"),
    ("bad grid dimensions", lambda f: ["fit", f.data_edit("CHGCAR_dims", -1, 0, "-18")], 1, "grid dimensions"),
    ("zero-volume cell", lambda f: ["fit", f.header_edit("CHGCAR_flat", 4, "  0.0 0.0 0.0")], 1, "volume"),
    ("species given differ from the file's", lambda f: ["fit", f.good, "--species", "K,Br", *NO_FIT], 1, "species"),
    ("two atoms on one site", _duplicate_atoms, 1, "same position"),
    ("a potential (LOCPOT) renamed G_CHGCAR", _locpot_renamed, 1, "not a charge density"),
    ("a LOCPOT by name", lambda f: ["fit", f.write("LOCPOT", f.text)], 1, "LOCPOT"),
    # Z_val
    ("Z_val of an unknown element", lambda f: ["fit", f.good, "--zval", "Xx=3", *NO_FIT], 1, "Xx"),
    ("Z_val for an element not in the file", lambda f: ["fit", f.good, "--zval", "Li=1", *NO_FIT], 1, "Li"),
    ("Z_val not a number", lambda f: ["fit", f.good, "--zval", "Na=seven", *NO_FIT], 1, "seven"),
    # impossible densities, valence counts and charges (issue 19); the good file holds N = 56 e
    ("a sign-negated cube", lambda f: ["fit", f.cube("negated.cube", -f.grid), *NO_FIT], 1,
     "negated.cube: not a charge density"),
    ("Z_val beyond the atomic number", lambda f: ["fit", f.good, "--zval", "Na=100,Cl=7", *NO_FIT], 1,
     "invalid valence: Na Z_val 100 (user) is outside 0 < Z_val <= 11"),
    ("Σ Z_val − N not an integer", lambda f: ["fit", f.good, "--zval", "Na=7.1,Cl=7", *NO_FIT], 1,
     "Na Z_val 7.1 (user), Cl Z_val 7 (user)) is not an integer"),
    ("a charged cell nobody declared", lambda f: ["fit", f.good, "--zval", "Na=7.5,Cl=7", *NO_FIT], 1,
     "the cell comes out charged and nothing declared that charge"),
    ("--total-charge against the valence count",
     lambda f: ["fit", f.good, "--zval", "Na=7,Cl=7", "--total-charge", "1", *NO_FIT], 1,
     "declared total charge is +1 e (--total-charge)"),
    ("diff: a sign-negated cube as the host", lambda f: ["diff", f.cube("defect.cube", f.grid),
                                                         f.cube("host_negated.cube", -f.grid), *NO_FIT], 1,
     "host_negated.cube: not a charge density"),
    ("impossible populations", lambda f: ["fit", f.negative_sodium("CHGCAR_negative_na"), "--zval", "Na=1,Cl=7",
                                          *NO_FIT], 1, "CHGCAR_negative_na: implausible charges: Na1 population"),
    # difference densities
    ("diff: grids differ", lambda f: ["diff", f.good, f.chgcar("CHGCAR_16", shape=(16, 16, 16)), *NO_FIT], 1,
     "grid"),
    ("diff: cells differ", lambda f: ["diff", f.good, f.chgcar("CHGCAR_big", cell=f.cell * 1.01), *NO_FIT], 1,
     "cell"),
    # options: refused before reading (usage errors, exit 2)
    ("unknown solver", lambda f: ["fit", f.good, "--solver", "nope"], 2, "nope"),
    ("factor <= 1", lambda f: ["fit", f.good, "--factor", "1.0"], 2, "factor"),
    ("negative sigma_start", lambda f: ["fit", f.good, "--sigma-start", "-1"], 2, "sigma_start"),
    ("infinite sigma_start", lambda f: ["fit", f.good, "--sigma-start", "inf"], 2, "--sigma-start"),
    ("NaN sigma_start", lambda f: ["fit", f.good, "--sigma-start", "nan"], 2, "sigma_start"),
    ("infinite g_c", lambda f: ["fit", f.good, "--gcut", "inf"], 2, "--gcut"),
    ("negative tolerance", lambda f: ["fit", f.good, "--tolerance", "-1"], 2, "--tolerance"),
    ("zero learning rate", lambda f: ["fit", f.good, "--lr", "0"], 2, "lr"),
    ("rtol outside (0, 1)", lambda f: ["fit", f.good, "--rtol", "1"], 2, "rtol"),
    ("unknown free parameter", lambda f: ["fit", f.good, "--free", "radius"], 2, "--free"),
    ("zero Gaussians per atom", lambda f: ["fit", f.good, "--n-gauss", "0"], 2, "n-gauss"),
    ("unknown option", lambda f: ["fit", f.good, "--bogus"], 2, "--bogus"),
    # options that need the density to be judged
    ("no G vector inside g_c", lambda f: ["fit", f.good, "--gcut", "0.01", *NO_FIT], 1, "g_c"),
    ("diff: a neutral-atom reference for Δρ", lambda f: ["diff", f.good, f.good, "--reference", "neutral", *NO_FIT],
     1, "neutral"),
    ("lagrange on a singular A", lambda f: ["fit", f.chgcar("CHGCAR_perfect", positions=rocksalt(5.64)[2]),
                                            "--solver", "lagrange", *NO_FIT], 5, "singular"),
    # where the results go: checked before the fit
    ("-o below a file", lambda f: ["fit", f.good, "-o", f.good / "results.json", *NO_FIT], 1, "not a directory"),
    ("--plot below a file", lambda f: ["fit", f.good, "--plot", f.good / "plots", *NO_FIT], 1, "not a directory"),
    ("-o is a directory", lambda f: ["fit", f.good, "-o", f.folder, *NO_FIT], 2, "directory"),
    # optddap export
    ("export: not a results file", lambda f: ["export", "gaussians", f.good], 1, "results"),
    ("export: unknown schema_version", lambda f: ["export", "gaussians", _results(f, 99)], 1, "schema_version"),
    ("export: residual of a difference fit without --host",
     lambda f: ["export", "residual", f.write("diff.json", json.dumps(
         {"schema_version": 2, "mode": "difference", "symbols": [], "coefficients": []})), f.good], 1, "--host"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return Files(tmp_path_factory.mktemp("bad_inputs"))


@pytest.mark.parametrize("kind, make, code, text", BAD_INPUTS, ids=[entry[0] for entry in BAD_INPUTS])
def test_bad_input(files, tmp_path, kind, make, code, text):
    args = [str(a) for a in make(files)]
    extra = []
    if args[0] in ("fit", "diff"):
        if "-o" not in args:
            extra += ["-o", str(tmp_path / "out" / "results.json")]
        if "--plot" not in args:
            extra += ["--plot", str(tmp_path / "plots")]
    elif args[:2] == ["export", "gaussians"]:
        extra += ["-o", str(tmp_path / "out" / "gaussians.json")]
    result = CliRunner().invoke(main, args + extra)
    assert isinstance(result.exception, SystemExit), (kind, result.exception)  # a deliberate exit, not a crash
    assert result.exit_code == code, (kind, result.exit_code, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, (kind, result.stderr)
    if code != 2:  # click's usage errors add 'Usage:' and 'Try … -h' lines; ours are one line
        assert len(result.stderr.strip().splitlines()) == 1, (kind, result.stderr)
    assert text.lower() in errors[0].lower(), (kind, errors[0])
    assert "Traceback" not in result.output
    # nothing written: no results, no temporary file, no figure
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), kind
    assert not (tmp_path / "plots").exists(), kind


def test_the_count_in_the_docs():
    """docs/production.md quotes the number of kinds of bad input tested here."""
    text = PRODUCTION.read_text()
    match = re.search(r"(\d+) kinds of bad input are tested", text)
    assert match, "docs/production.md: the Reliability section lost its count"
    assert int(match.group(1)) == len(BAD_INPUTS)
    assert len({entry[0] for entry in BAD_INPUTS}) == len(BAD_INPUTS)


def test_json_never_gets_non_finite_values(files, tmp_path, monkeypatch):
    """Whatever produced NaN charges, the CLI refuses to write them (exit 5) and leaves no figure behind."""
    from aiida_optddap.engine import cli, fit

    real = fit.run_fit

    def poisoned(*args, **kwargs):
        results = real(*args, **kwargs)
        results["populations"][0] = float("nan")
        return results

    monkeypatch.setattr(fit, "run_fit", poisoned)
    out, plots = tmp_path / "r.json", tmp_path / "plots"
    result = CliRunner().invoke(cli.main, ["fit", str(files.good), *NO_FIT, "-o", str(out), "--plot", str(plots)])
    assert result.exit_code == 5, result.stderr
    assert result.stderr.startswith("Error: numerical failure: ") and "non-finite" in result.stderr
    assert not out.exists() and not plots.exists()


# ------------------------------------------------------------------------------------------------ faults


def test_sigterm_is_reported_and_leaves_nothing(files, tmp_path):
    """SIGTERM (scancel, wall time) during a fit: one line naming the signal, exit 143, no results file."""
    if not OPTDDAP.exists():
        pytest.skip("the optddap console script is not installed")
    out = tmp_path / "r.json"
    args = [str(OPTDDAP), "fit", str(files.good), "--definition", "paper", "--steps", "100000", "--starts", "4",
            "--tolerance", "1e-300", "--quiet", "-o", str(out)]
    for wait in (6.0, 12.0, 24.0):  # until the signal handlers are installed (imports take seconds here)
        process = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        time.sleep(wait)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
        if process.returncode != -signal.SIGTERM:  # -15: killed by the default handler, still importing
            break
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.strip().splitlines() == ["Error: terminated by signal SIGTERM"]
    assert not out.exists() and not list(tmp_path.glob(".r.json.*"))


def test_unwritable_folder_is_refused_before_the_fit(files, tmp_path, monkeypatch):
    """A folder without write permission (simulated: the tests may run as root, for whom os.access is always
    true) is refused before the density is read."""
    from aiida_optddap.engine import cli

    locked = tmp_path / "locked"
    locked.mkdir()
    real = cli.os.access
    monkeypatch.setattr(cli.os, "access", lambda path, mode: False if Path(path) == locked else real(path, mode))
    read = []
    monkeypatch.setattr(cli, "_read", lambda *args: read.append(args))
    targets = (("-o", locked / "r.json"), ("--plot", locked / "plots"), ("-o", locked / "sub" / "r.json"))
    for option, target in targets:
        result = CliRunner().invoke(cli.main, ["fit", str(files.good), *NO_FIT, option, str(target)])
        assert result.exit_code == 1, result.stderr
        assert "not writable" in result.stderr and str(locked) in result.stderr
    assert not read and not any(locked.iterdir())


@pytest.mark.parametrize("definition", ["paper", "classic"])
def test_paper_and_classic_flag_impossible_populations(files, tmp_path, definition):
    """The paper and classic definitions keep the charges they gave before and flag the impossible ones."""
    output = tmp_path / "results.json"
    density = files.negative_sodium("CHGCAR_negative_na_flag")
    result = CliRunner().invoke(main, ["fit", str(density), "--zval", "Na=1,Cl=7", "--definition", definition,
                                       "--no-optimize", "--quiet", "-o", str(output)])
    assert result.exit_code == 0, result.output
    results = json.loads(output.read_text())
    flagged = results["implausible_populations"]
    assert [entry["symbol"] for entry in flagged] == ["Na"] * 4
    assert all(entry["population"] < -0.05 and entry["net_charge"] > 1 for entry in flagged)
    assert any(warning.startswith("implausible populations: Na1 population") for warning in results["warnings"])


def test_a_good_density_flags_nothing(files, tmp_path):
    output = tmp_path / "results.json"
    result = CliRunner().invoke(main, ["fit", str(files.good), "--zval", "Na=7,Cl=7", *NO_FIT, "-o", str(output)])
    assert result.exit_code == 0, result.output
    results = json.loads(output.read_text())
    assert results["implausible_populations"] == []
    assert results["total_charge"] == {"value": 0.0, "source": "neutral"}
