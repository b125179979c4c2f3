"""Shared fixtures: an AiiDA profile with the ZeroMQ broker (daemon tests need no services), the real
``optddap`` code, synthetic CHGCARs, recorded results and helpers to build CalcJob nodes for parser and
handler tests."""

from __future__ import annotations

import copy
import json
import pathlib
import shutil
import sys

import numpy as np
import pytest
from helpers import SHARED

pytest_plugins = ["aiida.tools.pytest_fixtures"]

DATA_DIR = pathlib.Path(__file__).parent / "data"
#: The shared data set beside the repository (tests/helpers.py: OPTDDAP_SHARED hides or moves it).
SHARED_CHGCAR_DIR = SHARED / "chgcar"


@pytest.fixture(scope="session", autouse=True)
def aiida_profile(aiida_config, aiida_profile_factory):
    """A test profile with SQLite storage and the built-in ZeroMQ broker, so `submit` works with the daemon."""
    with aiida_profile_factory(aiida_config, broker_backend="core.zeromq") as profile:
        yield profile


# ----------------------------------------------------------------------------------------- the real code
def optddap_executable_path() -> pathlib.Path | None:
    """The ``optddap`` console script of this environment (next to the interpreter, or on PATH)."""
    candidate = pathlib.Path(sys.executable).parent / "optddap"
    if candidate.exists():
        return candidate
    found = shutil.which("optddap")
    return pathlib.Path(found) if found else None


def engine_cli_available() -> bool:
    path = optddap_executable_path()
    if path is None:
        return False
    try:
        import aiida_optddap.engine.cli  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
def optddap_code(aiida_code_installed):
    """The real ``optddap`` CLI as an InstalledCode on the ``localhost`` computer (core.local + core.direct)."""
    path = optddap_executable_path()
    if path is None or not engine_cli_available():
        pytest.skip("the optddap engine CLI is not installed")
    return aiida_code_installed(
        label="optddap",
        default_calc_job_plugin="optddap.fit",
        filepath_executable=str(path),
    )


# ----------------------------------------------------------------------------------------- synthetic densities
def gaussian_density(cell, shape, atoms) -> np.ndarray:
    """VASP raw grid (n·V, mean = electron count) of spherical Gaussians exp(−r²/σ²).

    ``atoms`` is a list of (fractional position, [(electrons, σ Å), ...]). Each Gaussian is summed over
    the 27 nearest images and normalised on the grid to its electron count exactly.
    """
    cell = np.asarray(cell, dtype=float)
    axes = [np.arange(n) / n for n in shape]
    frac = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # (N1, N2, N3, 3)
    grid = np.zeros(shape)
    images = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], dtype=float)
    n_points = float(np.prod(shape))
    for position, gaussians in atoms:
        delta = frac - np.asarray(position, dtype=float)
        delta -= np.round(delta)
        r2_images = []
        for image in images:
            cart = (delta + image) @ cell
            r2_images.append(np.einsum("...i,...i->...", cart, cart))
        for electrons, sigma in gaussians:
            shape_fn = sum(np.exp(-r2 / sigma**2) for r2 in r2_images)
            grid += electrons * shape_fn / (shape_fn.sum() / n_points)
    return grid


def write_chgcar(path, cell, symbols, frac_positions, grid) -> pathlib.Path:
    """Write a VASP5 CHGCAR with pymatgen."""
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.vasp import Chgcar, Poscar

    structure = Structure(Lattice(np.asarray(cell, dtype=float)), list(symbols), frac_positions)
    Chgcar(Poscar(structure), {"total": np.asarray(grid, dtype=float)}).write_file(str(path))
    return pathlib.Path(path)


#: A CsCl-type "NaCl" (Na at 0, Cl at the body centre) in a 5 Å cube; with zval Na=1, Cl=7 the net
#: charges of the model are Na +0.8, Cl −0.8.
NACL = {
    "cell": np.eye(3) * 5.0,
    "symbols": ["Na", "Cl"],
    "positions": [[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]],
    "gaussians": [[(0.2, 0.6)], [(4.0, 0.7), (3.8, 1.0)]],
    "zval": {"Na": 1.0, "Cl": 7.0},
}

#: Rock-salt LiH, FCC primitive cell (a = 4 Å): a perfect crystal whose A is singular (few G shells).
LIH = {
    "cell": np.array([[0.0, 2.0, 2.0], [2.0, 0.0, 2.0], [2.0, 2.0, 0.0]]),
    "symbols": ["Li", "H"],
    "positions": [[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]],
    "gaussians": [[(0.3, 0.6)], [(1.7, 0.8)]],
    "zval": {"Li": 1.0, "H": 1.0},
}


def make_chgcar(path, system=NACL, shape=(24, 24, 24)) -> pathlib.Path:
    atoms = list(zip(system["positions"], system["gaussians"]))
    grid = gaussian_density(system["cell"], shape, atoms)
    return write_chgcar(path, system["cell"], system["symbols"], system["positions"], grid)


@pytest.fixture(scope="session")
def nacl_system():
    """The synthetic NaCl system (cell, symbols, fractional positions, Gaussians, zval)."""
    return NACL


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    """Synthetic CHGCARs written once per session."""
    directory = tmp_path_factory.mktemp("chgcars")
    make_chgcar(directory / "NaCl_CHGCAR", NACL)
    make_chgcar(directory / "LiH_CHGCAR", LIH)
    defect = copy.deepcopy(NACL)
    defect["gaussians"] = [[(0.25, 0.6)], [(4.0, 0.7), (3.8, 1.0)]]  # 0.05 e more on Na
    make_chgcar(directory / "NaCl_defect_CHGCAR", defect)
    return directory


@pytest.fixture
def nacl_chgcar(synthetic_dir) -> pathlib.Path:
    return synthetic_dir / "NaCl_CHGCAR"


@pytest.fixture
def nacl_defect_chgcar(synthetic_dir) -> pathlib.Path:
    """NaCl with 0.05 e added on Na: Δρ against ``nacl_chgcar`` is a small Gaussian on the Na site."""
    return synthetic_dir / "NaCl_defect_CHGCAR"


@pytest.fixture
def lih_chgcar(synthetic_dir) -> pathlib.Path:
    return synthetic_dir / "LiH_CHGCAR"


@pytest.fixture
def h2_chgcar() -> pathlib.Path:
    """The real H2 CHGCAR (pydefect), from tests/data or the shared data directory."""
    for candidate in (DATA_DIR / "H2_CHGCAR.gz", DATA_DIR / "H2_CHGCAR", SHARED_CHGCAR_DIR / "h2_pydefect/H2_CHGCAR"):
        if candidate.exists():
            return candidate
    pytest.skip("no H2 CHGCAR available")


@pytest.fixture
def singlefile():
    """Store a file as SinglefileData (or a subclass), keeping its name."""
    from aiida import orm

    def factory(path, cls=orm.SinglefileData, filename=None):
        path = pathlib.Path(path)
        return cls(file=path.resolve(), filename=filename or path.name).store()

    return factory


# ----------------------------------------------------------------------------------------- recorded results
def fake_results(
    symbols=("Na", "Cl"),
    populations=(0.2, 7.8),
    zval=None,
    *,
    condition_number=1234.5,
    singular=False,
    solver="pinv",
    rtol=1e-10,
    optimized=True,
    converged=True,
    stop_reason="converged",
    n_electrons=None,
    loss=1e-3,
    device="cpu",
    cell=None,
    positions=None,
) -> dict:
    """A results.json dictionary following docs/results-schema.md (version 1)."""
    symbols = list(symbols)
    populations = [float(p) for p in populations]
    n = len(symbols)
    zval = zval if zval is not None else {"Na": 1.0, "Cl": 7.0, "Li": 1.0, "H": 1.0, "Mg": 2.0, "F": 7.0}
    net = [zval[s] - p for s, p in zip(symbols, populations)] if all(s in zval for s in symbols) else None
    cell = cell if cell is not None else (np.eye(3) * 5.0).tolist()
    if positions is None:
        positions = [list(np.asarray([0.5 * (i % 2)] * 3) @ np.asarray(cell)) for i in range(n)]
    history = [
        {"step": i, "sigma_start": 0.5 + 0.01 * i, "factor": 1.5, "gcut": 4.6, "loss": 1e-2 / (i + 1),
         "condition_number": 1000.0 + i, "rank": 2 * 3, "unconstrained_total": sum(populations)}
        for i in range(4)
    ] if optimized else []
    return {
        "schema_version": 1,
        "program": {"name": "aiida-optddap", "version": "0.1.0", "torch": "2.x"},
        "mode": "absolute",
        "source": {"density": "CHGCAR", "host": None, "format": "chgcar"},
        "symbols": symbols,
        "positions": positions,
        "cell": cell,
        "grid_shape": [24, 24, 24],
        "n_electrons": float(sum(populations)) if n_electrons is None else float(n_electrons),
        "nelect": None,
        "populations": populations,
        "net_charges": net,
        "electronic_charges": [-p for p in populations],
        "zval": None if net is None else {"values": {s: zval[s] for s in set(symbols)},
                                          "source": {s: "user" for s in set(symbols)}},
        "coefficients": [[p / 3] * 3 for p in populations],
        "radii": [0.5, 0.75, 1.125],
        "parameters": {"sigma_start": 0.53, "factor": 1.5, "n_gauss": 3, "gcut": 4.6},
        "initial_parameters": {"sigma_start": 0.5, "factor": 1.5, "n_gauss": 3, "gcut": 4.6},
        "optimized": optimized,
        "solver": solver,
        "rtol": rtol,
        "condition_number": None if singular else condition_number,
        "singular": singular,
        "rank": 3 * n,
        "n_coefficients": 3 * n,
        "smallest_eigenvalues": [1e-3, 1e-2, 1e-1],
        "unconstrained_total": float(sum(populations)),
        "renormalisation": 0.0,
        "n_gvectors": 500,
        "fit_residual": 1e-4,
        "loss": loss,
        "loss_kind": "density",
        "converged": converged if optimized else None,
        "stop_reason": stop_reason if optimized else None,
        "history": history,
        "starts": [],
        "start_spread": None,
        "dipole": {"populations": [0.0, 0.0, 0.0], "density": [0.0, 0.0, 0.0]},
        "planar_averages": {
            axis: {"s": [0.0, 0.5], "dft": [1.0, 2.0], "model": [1.1, 1.9]} for axis in ("a1", "a2", "a3")
        },
        "warnings": [],
        "device": device,
        "timings": {"read": 0.1, "setup": 0.2, "fit": 0.3, "total": 0.6},
    }


@pytest.fixture
def results_factory():
    """Build a results dictionary (see :func:`fake_results`); recorded engine output when available."""

    def factory(**kwargs):
        return copy.deepcopy(fake_results(**kwargs))

    return factory


# ----------------------------------------------------------------------------------------- nodes for unit tests
@pytest.fixture
def generate_calc_job_node(aiida_localhost):
    """A stored ``optddap.fit`` CalcJobNode with inputs, a ``retrieved`` folder and optional outputs.

    ``files`` maps names in the retrieved folder to text (dict values are written as JSON);
    ``exit_status`` marks the node finished with that status (for handler tests).
    """
    from aiida import orm
    from aiida.common import LinkType
    from plumpy import ProcessState

    def factory(inputs=None, files=None, exit_status=None, outputs=None):
        node = orm.CalcJobNode(computer=aiida_localhost, process_type="aiida.calculations:optddap.fit")
        node.set_option("resources", {"num_machines": 1, "num_mpiprocs_per_machine": 1})
        node.set_option("parser_name", "optddap.fit")
        for label, value in (inputs or {}).items():
            if not value.is_stored:
                value.store()
            node.base.links.add_incoming(value, link_type=LinkType.INPUT_CALC, link_label=label)
        if exit_status is not None:
            node.set_process_state(ProcessState.FINISHED)
            node.set_exit_status(exit_status)
        node.store()

        retrieved = orm.FolderData()
        for name, content in (files or {}).items():
            text = json.dumps(content) if isinstance(content, dict) else content
            retrieved.base.repository.put_object_from_bytes(text.encode(), name)
        retrieved.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label="retrieved")
        retrieved.store()
        for label, value in (outputs or {}).items():
            value.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label=label)
            value.store()
        return node

    return factory


@pytest.fixture
def generate_workchain():
    """Instantiate a work chain (not run), as aiida-quantumespresso's tests do, to call its steps directly."""

    def factory(entry_point, inputs):
        from aiida.engine.utils import instantiate_process
        from aiida.manage import get_manager
        from aiida.plugins import WorkflowFactory

        process_class = WorkflowFactory(entry_point)
        runner = get_manager().get_runner()
        return instantiate_process(runner, process_class, **inputs)

    return factory
