"""Builders shared by the engine tests: cells, synthetic densities, CHGCAR writing, a reference fit.

Everything here is independent of the engine's fitting code. Synthetic densities are made either
with :func:`aiida_optddap.engine.gaussian.reconstruct.model_grid` (itself checked against a real-space
sampling in tests/engine/gaussian/test_gspace.py) or by sampling Gaussians in real space
(:func:`periodic_gaussian`).
The reference fit (:func:`reference_fit`) is a plain numpy full-sphere implementation of spec §5.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np

from aiida_optddap.engine.gaussian.ddap import SOLVERS as ENGINE_SOLVERS, Parameters
from aiida_optddap.engine.io.density import Density
from aiida_optddap.engine.gaussian.reconstruct import model_grid

BOHR = 0.529177210903  # Å
#: CP2K's DDAPC defaults (spec §3.2, §4.3): radii in Å, g_c = √6 bohr⁻¹ in Å⁻¹.
CP2K_RADII = np.array([0.5, 0.75, 1.125])
CP2K_GCUT = np.sqrt(6.0) / BOHR
#: The linear solvers of the K-Gaussian fit (the engine's SOLVERS less ``restrained``, which adds a restraint).
LINEAR_SOLVERS = tuple(s for s in ENGINE_SOLVERS if s != "restrained")
#: CP2K's DDAPC parameters as a fixed parameter set: σ_start 0.5 Å, f 1.5, three Gaussians, g_c = √6 bohr⁻¹.
CP2K_PARAMETERS = Parameters(0.5, 1.5, 3, float(CP2K_GCUT))

#: The repository's root, and its examples/ and docs/ folders. Test modules sit at several depths under
#: tests/ (tests/engine/gaussian/, tests/validation/, ...): they reach files through these, not ``__file__``.
ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DOCS = ROOT / "docs"
#: The shared data set beside the repository (../shared/data); OPTDDAP_SHARED=/nonexistent hides it, to check that
#: the tests need only the repository's copies (tests/data/README.md).
SHARED = Path(os.environ.get("OPTDDAP_SHARED") or ROOT.parent / "shared" / "data")
#: The committed fixtures (tests/data/README.md: origin and licence of each).
DATA = ROOT / "tests" / "data"
#: Files of the shared VASP set (``SHARED / "chgcar"``) that the repository holds under another name.
_VASP_ELSEWHERE = {
    "h2_pydefect/H2_CHGCAR": DATA / "H2_CHGCAR.gz",
    "si_aiidavasp/CHGCAR": DATA / "si_aiidavasp_CHGCAR.gz",
    "no_molecule_sisl/polarized/CHGCAR": DATA / "vasp_mock/nitric_oxide_polarized/out/CHGCAR.gz",
    "no_molecule_sisl/unpolarized/CHGCAR": DATA / "vasp_mock/nitric_oxide_unpolarized/out/CHGCAR.gz",
    "namgf3_pydefect/NaMgF3_CHG": EXAMPLES / "NaMgF3_CHG.gz",
}


def vasp_copy(dest: str) -> Path | None:
    """The repository's copy of ``dest`` of the shared VASP set (its path under ../shared/data/chgcar): gzipped
    under tests/data/vasp/ with the same folders (an OUTCAR beside where the original has one), or one of the
    older copies in tests/data; None when the repository has none."""
    dest = dest.removesuffix(".gz")
    for candidate in (DATA / "vasp" / f"{dest}.gz", DATA / "vasp" / dest, _VASP_ELSEWHERE.get(dest)):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def vasp_file(dest: str) -> Path:
    """:func:`vasp_copy` of ``dest``, else the file in the shared set; FileNotFoundError naming both."""
    found = vasp_copy(dest)
    if found is not None:
        return found
    for name in (dest, f"{dest}.gz", dest.removesuffix(".gz")):
        if (SHARED / "chgcar" / name).is_file():
            return SHARED / "chgcar" / name
    raise FileNotFoundError(f"{dest}: not in tests/data/vasp nor in {SHARED / 'chgcar'}")


#: A triclinic cell (rows, Å), about 10×11×12 Å with tilts.
TRICLINIC = np.array([[10.0, 0.0, 0.0], [1.3, 11.0, 0.0], [-0.9, 1.1, 12.0]])
#: Three atoms, no inversion centre, fractional coordinates in TRICLINIC.
TRICLINIC_FRAC = np.array([[0.11, 0.23, 0.31], [0.47, 0.19, 0.62], [0.28, 0.71, 0.44]])
TRICLINIC_SYMBOLS = ("O", "H", "N")
#: Coefficients q_αk (electrons) for the three atoms and the CP2K radii.
TRICLINIC_Q = np.array([[2.5, 3.1, 0.8], [0.3, 0.45, 0.2], [1.7, -0.6, 2.9]])


def rocksalt(a: float = 5.64, remove: int | None = None, rep: int = 1, rattle: float = 0.0, seed: int = 0):
    """Cubic rock-salt cell (a in Å) repeated rep×rep×rep, optionally without atom ``remove``.

    Atom order per cell: Na (0,0,0), (0,½,½), (½,0,½), (½,½,0), then Cl (½,0,0), (0,0,½), (0,½,0),
    (½,½,½) (the CP2K parity file's order for the first seven). Returns (cell, symbols, positions).
    """
    na = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
    cl = [[0.5, 0, 0], [0, 0, 0.5], [0, 0.5, 0], [0.5, 0.5, 0.5]]
    symbols, frac = [], []
    for shift in itertools.product(range(rep), repeat=3):
        for symbol, sites in (("Na", na), ("Cl", cl)):
            for site in sites:
                symbols.append(symbol)
                frac.append((np.asarray(site, dtype=float) + shift) / rep)
    frac = np.asarray(frac)
    if remove is not None:
        keep = [i for i in range(len(symbols)) if i != remove]
        symbols = [symbols[i] for i in keep]
        frac = frac[keep]
    cell = np.eye(3) * a * rep
    positions = frac @ cell
    if rattle:
        positions = positions + np.random.default_rng(seed).normal(scale=rattle, size=positions.shape)
    return cell, tuple(symbols), positions


def gaussian_density(cell, symbols, positions, coefficients, radii, shape, source="<synthetic>") -> Density:
    """A Density whose raw grid is Σ_αk q_αk g_k(r − R_α) (periodic, unit-normalised Gaussians)."""
    grid = model_grid(np.asarray(cell), np.asarray(positions), np.asarray(coefficients), np.asarray(radii), shape)
    return Density(cell=cell, symbols=symbols, positions=positions, grid=grid, source=source)


def off_basis_density(cell, symbols, positions, populations, shape, extra=None, radii=(0.35, 0.9, 1.6),
                      split=(0.3, 0.5, 0.2)) -> Density:
    """A density that is NOT in the span of the CP2K basis: Gaussians of other radii on the atoms,
    plus optional off-atom Gaussians ``extra = [(position, charge, radius), ...]`` (bond charges).

    The atoms carry ``populations[α]`` electrons split over ``radii`` as ``split``.
    """
    positions = np.asarray(positions, dtype=float)
    coefficients = np.outer(populations, split)
    grid = model_grid(cell, positions, coefficients, np.asarray(radii), shape)
    for position, charge, radius in extra or []:
        grid = grid + model_grid(cell, np.asarray([position]), np.array([[charge]]), np.array([radius]), shape)
    return Density(cell=cell, symbols=symbols, positions=positions, grid=grid, source="<off-basis>")


def periodic_gaussian(cell, centre, radius, shape, images: int = 2) -> np.ndarray:
    """Raw grid (n·V) of a unit Gaussian (π^{3/2} r³)⁻¹ exp(−|r−R|²/r²) summed over lattice images,
    sampled in REAL space at r_j = Σ_d (j_d/N_d) a_d. Independent of every FFT in the engine."""
    cell = np.asarray(cell, dtype=float)
    frac = np.stack(np.meshgrid(*(np.arange(n) / n for n in shape), indexing="ij"), axis=-1)
    centre_frac = np.linalg.solve(cell.T, np.asarray(centre, dtype=float))
    delta = frac - centre_frac
    delta -= np.round(delta)  # nearest image first; the sum below adds the others
    norm = 1.0 / (np.pi**1.5 * radius**3)
    total = np.zeros(shape)
    for n in itertools.product(range(-images, images + 1), repeat=3):
        d = (delta + np.asarray(n)) @ cell
        total += np.exp(-np.einsum("...i,...i->...", d, d) / radius**2)
    return norm * total * abs(np.linalg.det(cell))


def vasp_rounded(cell, positions):
    """Cell and Cartesian positions rounded as a CHGCAR header stores them (6 decimals: cell in Å,
    positions as fractions), so that a density built on them survives the file round trip exactly."""
    cell = np.round(np.asarray(cell, dtype=float), 6)
    frac = np.round(np.linalg.solve(cell.T, np.asarray(positions, dtype=float).T).T, 6)
    return cell, frac @ cell


def write_chgcar(path, cell, symbols, positions, raw) -> Path:
    """Write a VASP 5 CHGCAR with pymatgen (11 significant digits, x fastest; the header has 6
    decimals, see :func:`vasp_rounded`)."""
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.vasp.inputs import Poscar
    from pymatgen.io.vasp.outputs import Chgcar

    structure = Structure(Lattice(np.asarray(cell)), list(symbols), np.asarray(positions),
                          coords_are_cartesian=True)
    Chgcar(Poscar(structure), {"total": np.asarray(raw, dtype=float)}).write_file(str(path))
    return Path(path)


def full_sphere(cell, shape, gcut):
    """Miller indices m (n, 3) and G (n, 3) of every FFT-box G with 0 < |G| < gcut (both ±G)."""
    axes = [np.fft.fftfreq(n, 1.0 / n).astype(int) for n in shape]
    m = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    g = m @ (2.0 * np.pi * np.linalg.inv(cell).T)
    g2 = (g**2).sum(axis=1)
    keep = (g2 > 0) & (g2 < gcut**2)
    return m[keep], g[keep]


def reference_normal_equations(cell, positions, raw, radii, gcut):
    """A, b, N of spec §5.1 over the FULL sphere, straight from the formulas (numpy, complex)."""
    raw = np.asarray(raw, dtype=float)
    c_full = np.fft.fftn(raw) / raw.size
    m, g = full_sphere(np.asarray(cell), raw.shape, gcut)
    c = c_full[tuple((m % raw.shape).T)]
    g2 = (g**2).sum(axis=1)
    w = 4 * np.pi * (g2 - gcut**2) ** 2 / (g2 * gcut**2)
    phase = np.exp(-1j * g @ np.asarray(positions).T)  # (n, atoms)
    form = np.exp(-0.25 * g2[:, None] * np.asarray(radii)[None] ** 2)  # (n, K)
    f = (phase[:, :, None] * form[:, None, :]).reshape(len(g), -1)  # column α·K + k
    a = np.real(f.conj().T @ (w[:, None] * f))
    b = np.real(f.conj().T @ (w * c))
    return a, b, float(c_full.flat[0].real), len(g)


def reference_fit(cell, positions, raw, radii, gcut, rcond=None):
    """Lagrange-constrained DDAP populations (spec §5.2) from :func:`reference_normal_equations`.

    rcond None: explicit solve (A must be regular); else numpy's pseudo-inverse with that cutoff.
    Returns (coefficients (atoms, K), number of G vectors).
    """
    a, b, n_e, n_g = reference_normal_equations(cell, positions, raw, radii, gcut)
    inverse = np.linalg.inv(a) if rcond is None else np.linalg.pinv(a, rcond=rcond, hermitian=True)
    ones = np.ones(len(b))
    lam = (ones @ inverse @ b - n_e) / (ones @ inverse @ ones)
    q = inverse @ (b - lam * ones)
    return q.reshape(len(positions), len(radii)), n_g


def band_limited_shift(raw: np.ndarray, cell, shift) -> np.ndarray:
    """Raw grid of the density translated by the Cartesian vector ``shift`` (C_G → C_G e^{−iG·t}).

    Exact for odd grid sizes (no Nyquist plane); the result is real up to round-off."""
    raw = np.asarray(raw, dtype=float)
    assert all(n % 2 for n in raw.shape), "use odd grids: a Nyquist plane has no well-defined phase"
    axes = [np.fft.fftfreq(n, 1.0 / n) for n in raw.shape]
    m = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    t_frac = np.linalg.solve(np.asarray(cell, dtype=float).T, np.asarray(shift, dtype=float))
    phase = np.exp(-2j * np.pi * (m @ t_frac))
    shifted = np.fft.ifftn(np.fft.fftn(raw) * phase)
    assert np.abs(shifted.imag).max() < 1e-10 * np.abs(shifted.real).max()
    return shifted.real


def zero_pad(raw: np.ndarray, shape) -> np.ndarray:
    """Raw grid of the same band-limited density on a finer grid (C_G zero-padded); odd grids only."""
    raw = np.asarray(raw, dtype=float)
    assert all(n % 2 for n in raw.shape), "use odd grids: a Nyquist plane has no well-defined G"
    c = np.fft.fftn(raw) / raw.size
    padded = np.zeros(shape, dtype=complex)
    axes = [np.fft.fftfreq(n, 1.0 / n).astype(int) for n in raw.shape]
    m = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    padded[tuple((m % np.asarray(shape)).T)] = c[tuple((m % np.asarray(raw.shape)).T)]
    fine = np.fft.ifftn(padded) * padded.size
    assert np.abs(fine.imag).max() < 1e-10 * np.abs(fine.real).max()
    return fine.real


def fake_potcar(entries):
    """A POTCAR with just the header keywords pymatgen needs; entries are (label, element, ZVAL)."""
    return "".join(
        f"  PAW_PBE {label} 01Jan2000\n {zval:.10f}\n parameters from PSCTR are:\n"
        f"   VRHFIN ={element}: fake\n   LEXCH  = PE\n   TITEL  = PAW_PBE {label} 01Jan2000\n"
        f"   POMASS =   10.000; ZVAL   = {zval:8.3f}    mass and valenz\n"
        " END of PSCTR-controll parameters\n local part\n  1.0 2.0 3.0\n End of Dataset\n"
        for label, element, zval in entries
    )
