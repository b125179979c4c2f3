"""Exports of an opt-DDAP fit for the codes that consume it (pure numpy / pymatgen / ase, no torch).

* :func:`residual_density` — ρ_DFT − ρ_model on the density's own grid, the target of Δ-learning density
  models (Δ-SAED-like: learn what the atom-centred Gaussian model misses), written by :func:`write_chgcar`
  as a VASP CHGCAR (raw n·V convention, so its mean is N − Σq = 0 for a charge-conserving fit).
* :func:`gaussian_model` — the per-atom Gaussian-charge model (coefficients q_αk, radii σ_k, populations,
  net charges) as a JSON-ready dictionary for Gaussian-charge interatomic potentials.
* :func:`compare_latent_charges` — reference ``REF_charges`` beside the latent charges of a Latent Ewald
  Summation (LES) model (``MACE_latent_charges`` as written by MACE's ``eval_configs``), with statistics.

The Gaussians follow the engine's convention (docs/results-schema.md): an atom-centred Gaussian of radius σ
is g(r) = exp(−r²/σ²) / (π^{3/2} σ³), normalised to one electron; ``coefficients[α][k]`` electrons sit in
the Gaussian of radius ``radii[k]`` on atom α. Electrons are positive numbers: the electronic charge
density of atom α is −Σ_k q_αk g_k(r − R_α) in units of e.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .io.density import Density, DensityError
from .gaussian.reconstruct import model_grid

__all__ = (
    "GAUSSIAN_MODEL_FORMAT",
    "GAUSSIAN_MODEL_VERSION",
    "check_same_atoms",
    "model_density",
    "residual_density",
    "write_chgcar",
    "gaussian_model",
    "write_gaussian_model",
    "compare_latent_charges",
)

GAUSSIAN_MODEL_FORMAT = "optddap-gaussian-charge-model"
GAUSSIAN_MODEL_VERSION = 1

#: Positions (Å, modulo lattice vectors) and cell vectors (Å) must agree to this between results and density.
POSITION_TOLERANCE = 1e-3
CELL_TOLERANCE = 1e-4


def _as_array(results: dict, key: str, shape=None) -> np.ndarray:
    value = results.get(key)
    if value is None:
        raise ValueError(f"the results hold no `{key}`")
    array = np.asarray(value, dtype=float)
    return array if shape is None else array.reshape(shape)


def check_same_atoms(results: dict, density: Density, *, position_tolerance: float = POSITION_TOLERANCE,
                     cell_tolerance: float = CELL_TOLERANCE) -> None:
    """Raise :class:`DensityError` unless ``density`` has the atoms and cell the fit in ``results`` was made on."""
    symbols = [str(s) for s in results.get("symbols", [])]
    if len(symbols) != density.n_atoms:
        raise DensityError(f"{density.source}: {density.n_atoms} atoms, but the fit has {len(symbols)}")
    cell = _as_array(results, "cell", (3, 3))
    mismatch = float(np.abs(cell - density.cell).max())
    if mismatch > cell_tolerance:
        raise DensityError(f"{density.source}: cell differs from the fit's by {mismatch:.3g} Å")
    positions = _as_array(results, "positions", (len(symbols), 3))
    frac = np.linalg.solve(cell.T, (positions - density.positions).T).T
    frac -= np.round(frac)
    worst = float(np.linalg.norm(frac @ cell, axis=1).max())
    if worst > position_tolerance:
        raise DensityError(f"{density.source}: atom positions differ from the fit's by up to {worst:.3g} Å")
    if tuple(density.symbols) != tuple(symbols):
        raise DensityError(f"{density.source}: species {list(density.symbols)} differ from the fit's {symbols}")


def model_density(results: dict, density: Density) -> Density:
    """The fitted Gaussian model n_model on the grid (and atoms) of ``density`` (raw n·V, mean = Σq)."""
    check_same_atoms(results, density)
    n_atoms = density.n_atoms
    radii = _as_array(results, "radii").ravel()
    coefficients = _as_array(results, "coefficients", (n_atoms, len(radii)))
    grid = model_grid(density.cell, density.positions, coefficients, radii, density.grid.shape)
    return density.with_grid(grid, source=f"model of {density.source}")


def residual_density(results: dict, density: Density) -> Density:
    """ρ_DFT − ρ_model on the grid of ``density`` (raw n·V; its mean is N − Σq, zero when charge is conserved).

    For a difference fit (``mode == "difference"``), ``density`` must be the difference density
    Δρ = ρ_defect − ρ_host (see :func:`aiida_optddap.engine.io.density.difference_density`).
    """
    model = model_density(results, density)
    return density.with_grid(density.grid - model.grid, source=f"residual of {density.source}")


def write_chgcar(density: Density, path, comment: str | None = None) -> Path:
    """Write ``density`` as a VASP 5 CHGCAR with pymatgen (raw n·V values, x fastest); returns the path."""
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.vasp.inputs import Poscar
    from pymatgen.io.vasp.outputs import Chgcar

    structure = Structure(Lattice(density.cell), list(density.symbols), density.positions,
                          coords_are_cartesian=True)
    poscar = Poscar(structure, comment=comment or density.source[:70])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Chgcar(poscar, {"total": np.asarray(density.grid, dtype=float)}).write_file(str(path))
    return path


def gaussian_model(results: dict) -> dict:
    """The per-atom Gaussian-charge model of a fit as a JSON-ready dictionary.

    ``results`` is a ``results.json`` dictionary, or any mapping with ``symbols``, ``positions``, ``cell``,
    ``coefficients``, ``radii``, ``populations`` and optionally ``net_charges``, ``zval``, ``mode``
    (e.g. built from a ChargesData node). Per atom: ``net_charge`` (Z_val − population, e; null when
    Z_val is unknown), ``population`` (electrons), ``gaussians`` [{``sigma`` Å, ``electrons``}], and the
    electron cloud's radial moment ``sigma_rms`` = sqrt(Σ_k q_k σ_k² / Σ_k q_k) (Å; the width of the one
    Gaussian with the same ⟨r²⟩ = 3/2 σ², null when it is not real), for potentials that carry one Gaussian
    width per atom.
    """
    symbols = [str(s) for s in results["symbols"]]
    n_atoms = len(symbols)
    radii = _as_array(results, "radii").ravel()
    coefficients = _as_array(results, "coefficients", (n_atoms, len(radii)))
    positions = _as_array(results, "positions", (n_atoms, 3))
    cell = _as_array(results, "cell", (3, 3))
    populations = np.asarray(results.get("populations", coefficients.sum(axis=1)), dtype=float)
    net = results.get("net_charges")
    net = None if net is None else np.asarray(net, dtype=float)
    zval = results.get("zval") or {}
    zval_values = zval.get("values", zval) if isinstance(zval, dict) else {}
    atoms = []
    for i, symbol in enumerate(symbols):
        q = coefficients[i]
        second = float(np.dot(q, radii**2))
        sigma_rms = math.sqrt(second / populations[i]) if populations[i] > 0 and second > 0 else None
        atoms.append({
            "index": i,
            "symbol": symbol,
            "position": positions[i].tolist(),
            "population": float(populations[i]),
            "net_charge": None if net is None else float(net[i]),
            "zval": None if symbol not in zval_values else float(zval_values[symbol]),
            "gaussians": [{"sigma": float(s), "electrons": float(c)} for s, c in zip(radii, q)],
            "sigma_rms": sigma_rms,
        })
    return {
        "format": GAUSSIAN_MODEL_FORMAT,
        "version": GAUSSIAN_MODEL_VERSION,
        "convention": "g(r) = exp(-r^2/sigma^2) / (pi^(3/2) sigma^3) per electron; electron density of atom a = "
                      "sum_k electrons_k g_k(r - R_a); net_charge = zval - population (e); lengths in Angstrom",
        "mode": results.get("mode", "absolute"),
        "cell": cell.tolist(),
        "pbc": [True, True, True],
        "radii": radii.tolist(),
        "total_population": float(populations.sum()),
        "atoms": atoms,
    }


def write_gaussian_model(results: dict, path) -> Path:
    """Write :func:`gaussian_model` as JSON (indented); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(gaussian_model(results), indent=1, allow_nan=False) + "\n")
    return path


def compare_latent_charges(reference, predicted, *, ref_key: str = "REF_charges",
                           latent_key: str = "MACE_latent_charges", position_tolerance: float = 1e-4):
    """Put the latent charges of an LES model beside the reference opt-DDAP charges, frame by frame.

    Args:
        reference: ase.Atoms frames with ``arrays[ref_key]`` (e.g. an exported dataset).
        predicted: the same frames, in the same order, with ``arrays[latent_key]`` (e.g. the output of
            ``mace_eval_configs`` for a MACELES model, which writes ``MACE_latent_charges``).

    Returns:
        ``(frames, stats)``: copies of the reference frames carrying both arrays, and a dictionary with
        ``n_frames``, ``n_atoms``, ``pearson`` (correlation of all atoms), ``scale`` (the least-squares s
        in ref ≈ s·latent: LES charges are defined up to the scale absorbed by its Ewald prefactor),
        ``rmse`` (of ref − latent), ``rmse_scaled`` (of ref − s·latent) and per element ``{"ref_mean",
        "latent_mean", "count"}``.

    Raises:
        ValueError: different numbers of frames, or a frame whose atoms differ, or a missing array.
    """
    reference = list(reference)
    predicted = list(predicted)
    if len(reference) != len(predicted):
        raise ValueError(f"{len(reference)} reference frames but {len(predicted)} predicted frames")
    frames, refs, lats, symbols = [], [], [], []
    for i, (ref, pred) in enumerate(zip(reference, predicted)):
        if ref_key not in ref.arrays:
            raise ValueError(f"reference frame {i} has no per-atom array {ref_key!r}")
        if latent_key not in pred.arrays:
            raise ValueError(f"predicted frame {i} has no per-atom array {latent_key!r}")
        if list(ref.get_chemical_symbols()) != list(pred.get_chemical_symbols()) or (
            np.abs(ref.get_positions() - pred.get_positions()).max() > position_tolerance
        ):
            raise ValueError(f"frame {i}: the predicted atoms differ from the reference atoms")
        merged = ref.copy()
        merged.arrays[latent_key] = np.asarray(pred.arrays[latent_key], dtype=float).reshape(len(ref))
        frames.append(merged)
        refs.append(np.asarray(ref.arrays[ref_key], dtype=float).reshape(len(ref)))
        lats.append(merged.arrays[latent_key])
        symbols.extend(ref.get_chemical_symbols())
    ref_all = np.concatenate(refs) if refs else np.zeros(0)
    lat_all = np.concatenate(lats) if lats else np.zeros(0)
    denominator = float(np.dot(lat_all, lat_all))
    scale = float(np.dot(lat_all, ref_all) / denominator) if denominator > 0 else math.nan
    pearson = math.nan
    if ref_all.size > 1 and ref_all.std() > 0 and lat_all.std() > 0:
        pearson = float(np.corrcoef(ref_all, lat_all)[0, 1])
    per_element = {}
    symbols = np.array(symbols)
    for element in sorted(set(symbols.tolist())):
        mask = symbols == element
        per_element[element] = {"count": int(mask.sum()), "ref_mean": float(ref_all[mask].mean()),
                                "latent_mean": float(lat_all[mask].mean())}
    stats = {
        "n_frames": len(frames),
        "n_atoms": int(ref_all.size),
        "ref_key": ref_key,
        "latent_key": latent_key,
        "pearson": pearson,
        "scale": scale,
        "rmse": float(np.sqrt(np.mean((ref_all - lat_all) ** 2))) if ref_all.size else math.nan,
        "rmse_scaled": float(np.sqrt(np.mean((ref_all - scale * lat_all) ** 2))) if ref_all.size else math.nan,
        "per_element": per_element,
    }
    return frames, stats
