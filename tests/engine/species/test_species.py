"""Species-width DDAP (engine/species/widths.py): perfect rock salts determined with the right sign, charges smooth in
geometry on the rattled CP2K frames (issue 9, items 3–5), one width set optimised jointly over many frames.

Uses examples/cp2k_rattled/data (20 NaCl + 20 MgO 8-atom frames with Bader charges; mgo_008 is skipped as
suspect, as in smoothness.py) and the LiH CHGCAR of the shared set (its copy in tests/data/vasp); skips with a
reason when the rattled data are missing.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aiida_optddap.engine.io import read_density
from aiida_optddap.validation import smoothness as smooth
from aiida_optddap.validation.frames import FrameSet
from aiida_optddap.engine.species.widths import (SpeciesEquations, constrained_minimum, fit_species, species_misfit,
                                          stack_frames)

from helpers import ROOT, rocksalt, vasp_file

RATTLED = ROOT / "examples" / "cp2k_rattled"
LIH = vasp_file("lih_atomate_pbesol/CHGCAR")  # the repository's copy (tests/data/README.md)
#: g_c (Å⁻¹) of the smoothness check: MgO's second odd shell (311) lies at 4.95 Å⁻¹, outside CP2K's 4.63.
GCUT = 5.5
#: The issue's criterion: max |ΔQ|/rms of the fit within 3× Bader's on the same frames.
QUOTIENT_MAX = 3.0


_CACHE: dict = {}


def _frames(system: str):
    """(record, frames without the suspect ones, their densities), read once per test session."""
    if system in _CACHE:
        return _CACHE[system]
    path = RATTLED / "data" / f"{system}.json"
    if not path.is_file():
        pytest.skip(f"rattled data missing: {path.relative_to(ROOT)}")
    records = json.loads(path.read_text())
    frames = [f for f in sorted(records["frames"], key=lambda f: f["frame"]) if not f.get("suspect")]
    missing = [f["cube"] for f in frames if not (path.parent / f["cube"]).is_file()]
    if missing or any("bader_net_charges" not in f for f in frames):
        pytest.skip(f"rattled cubes or Bader charges missing for {system}")
    densities = [read_density(path.parent / f["cube"]) for f in frames]
    _CACHE[system] = records, frames, densities
    return _CACHE[system]


def test_synthetic_species_gaussians_are_recovered():
    """A density that is exactly one Gaussian per atom with one width per species: widths and populations back."""
    from aiida_optddap.engine.io.density import Density
    from aiida_optddap.engine.gaussian.reconstruct import model_grid

    cell, symbols, positions = rocksalt(rattle=0.05, seed=2)
    widths = {"Cl": 0.8, "Na": 0.35}
    pops = np.array([8.1 if s == "Na" else 7.9 for s in symbols])
    grid = sum(model_grid(cell, positions, np.where(np.array(symbols) == s, pops, 0.0)[:, None], np.array([w]),
                          (40, 40, 40)) for s, w in widths.items())
    density = Density(cell=cell, symbols=symbols, positions=positions, grid=grid, source="<species>")
    result = fit_species(density, {"Na": 9.0, "Cl": 7.0})
    assert result.widths == pytest.approx(widths, abs=1e-4)
    np.testing.assert_allclose(result.frames[0]["populations"], pops, atol=1e-4)
    assert np.all(np.isfinite(result.frames[0]["uncertainty"]))


def test_synthetic_supercell_matches_its_8_atom_cell():
    """Issue 9 item 3: the synthetic rock salt (Na 6.6 / Cl 7.5 e, both on one three-Gaussian shape) gives the
    same populations in the 64-atom supercell as in the 8-atom cell. Both miss the truth by the same 0.38 e
    (Na 6.98 e at the default g_c 5.5 Å⁻¹): one Gaussian per atom cannot represent a shape the two species
    share (the model error, which neither uncertainty contains; docs/validation.md)."""
    from helpers import off_basis_density

    out = []
    for rep, shape in ((1, (36, 36, 36)), (2, (64, 64, 64))):
        cell, symbols, positions = rocksalt(rep=rep)
        pops = np.array([6.6 if s == "Na" else 7.5 for s in symbols])
        result = fit_species(off_basis_density(cell, symbols, positions, pops, shape), {"Na": 7.0, "Cl": 7.0})
        out.append((result.widths, result.frames[0]["populations"]))
    (w8, p8), (w64, p64) = out
    assert w64 == pytest.approx(w8, rel=1e-5)
    np.testing.assert_allclose(p64[:4], p8[0], atol=1e-4)
    np.testing.assert_allclose(p64[-4:], p8[-1], atol=1e-4)
    assert p8[0] - 6.6 == pytest.approx(0.38, abs=0.02)  # the documented model error


@pytest.mark.parametrize("system", ["nacl", "mgo"])
def test_perfect_rock_salt_has_determined_charges_of_the_right_sign(system):
    records, frames, densities = _frames(system)
    perfect = densities[0]
    result = fit_species(perfect, records["zval"])
    q = result.frames[0]["net_charges"]
    bader = np.array(frames[0]["bader_net_charges"])
    assert np.all(np.sign(q) == np.sign(bader))
    assert np.all(np.isfinite(result.frames[0]["uncertainty"]))
    assert result.frames[0]["uncertainty"].max() < 0.05
    assert np.all(result.frames[0]["uncertainty_with_widths"] >= result.frames[0]["uncertainty"] - 1e-9)
    assert result.frames[0]["rank"] == 8 and result.usable
    np.testing.assert_allclose(q[:4], q[0], atol=5e-3)  # the four cations agree
    again = fit_species(perfect, records["zval"])  # deterministic
    np.testing.assert_array_equal(again.frames[0]["net_charges"], q)


def test_lih_has_determined_charges_of_the_right_sign():
    density = read_density(LIH)
    result = fit_species(density, {"Li": 3.0, "H": 1.0})  # Li_sv
    q = dict(zip(density.symbols, result.frames[0]["net_charges"]))
    assert q["Li"] > 0.5 and q["H"] < -0.5
    assert np.all(np.isfinite(result.frames[0]["uncertainty"]))


@pytest.mark.parametrize("system", ["nacl", "mgo"])
def test_species_charges_are_smooth_in_geometry(system):
    """Issue 9 item 4: one width set optimised jointly over all frames (item 5), then every frame fitted with
    it: the largest |ΔQ|/rms is within 3× Bader's (measured 1.9 NaCl, 2.2 MgO; docs/validation.md)."""
    records, frames, densities = _frames(system)
    result = fit_species(densities, records["zval"], gcut=GCUT)
    rms = np.array([f["rms_displacement"] for f in frames])
    fit = np.array([f["net_charges"] for f in result.frames])
    bader = np.array([f["bader_net_charges"] for f in frames])
    fit_stats, bader_stats = smooth.ratio_stats(fit, rms), smooth.ratio_stats(bader, rms)
    quotient = fit_stats["max"] / bader_stats["max"]
    assert quotient <= QUOTIENT_MAX, f"{system}: fit {fit_stats['max']:.3f} e/Å vs Bader {bader_stats['max']:.3f}"
    assert np.all(np.sign(fit[0]) == np.sign(bader[0]))
    # the joint widths are a minimum of the summed misfit: a 1 % change of either width raises it
    species = sorted(result.widths)
    tables = [SpeciesEquations(d, GCUT) for d in densities[:4]]
    index = [np.array([species.index(s) for s in d.symbols]) for d in densities[:4]]
    refs = [torch.as_tensor([float(records["zval"][s]) for s in d.symbols], dtype=torch.float64) for d in densities[:4]]
    w = np.array([result.widths[s] for s in species])
    stacks = stack_frames(tables, index, refs)
    base = species_misfit(stacks, w)
    assert all(species_misfit(stacks, w * (1 + 0.01 * e)) > base for e in np.eye(len(w)))


def test_smoothness_reports_the_model_each_fit_used():
    """smoothness.py labels its rows by the model ``run_fit`` chose (``auto``: the potential model where usable), not by the
    requested definition."""
    from aiida_optddap.engine.fit import FitOptions

    records, frames, _ = _frames("nacl")
    two = FrameSet(RATTLED / "data", "nacl", records, frames[:2], [])
    _, _, models = smooth.fitted_charges(two, FitOptions(device="cpu"))
    assert models == ["potential", "potential"]
    _, _, models = smooth.fitted_charges(two, FitOptions(optimize=False, device="cpu"))
    assert models == ["restrained", "restrained"]


@pytest.mark.xfail(reason="issue 9 item 4 open for the shared-width K = 3 definitions: the 8-atom rock salt's "
                          "sublattice transfer is set at O(u²) by the mixed shells (quotient 490 NaCl, 6000 MgO "
                          "at σ_start 0.5 Å; docs/validation.md)", strict=True)
def test_restrained_default_is_smooth_at_fixed_parameters():
    from aiida_optddap.engine.fit import FitOptions

    _frames("nacl")
    result = smooth.smoothness(FitOptions(optimize=False, device="cpu"), systems=("nacl",), data=RATTLED / "data")
    assert result["nacl"]["quotient_max"] <= QUOTIENT_MAX


def test_species_model_flags_namgf3_as_unusable():
    """NaMgF₃ (VASP Na 1 e, Mg 2 e): the cations keep a fraction of an electron, their widths run to the bound,
    ``usable`` is False (the restrained default, determined to 0.01 e there, is the one to use)."""
    from aiida_optddap.engine.io.zval import resolve_zval

    path = ROOT / "examples" / "NaMgF3_CHG.gz"
    if not path.is_file():
        pytest.skip(f"missing {path}")
    density = read_density(path)
    result = fit_species(density, dict(resolve_zval(density, guess=True).values))
    assert sorted(result.at_bound) == ["Mg", "Na"] and not result.usable



def test_stacked_frames_give_the_per_frame_misfits_and_charges():
    """Issue 9 item 5: frames of one G set are stacked (one batched product and eigendecomposition per group); the
    misfits and charges equal the frame-by-frame ones, and frames of another cell form their own group."""
    records, _, densities = _frames("nacl")
    frames = densities[:6] + [read_density(ROOT / "examples" / "cp2k_validation" / "data" / "nacl_1x1x1_vna.cube.gz")]
    zval = {k: float(v) for k, v in records["zval"].items()}
    species = ["Cl", "Na"]
    tables = [SpeciesEquations(d, GCUT) for d in frames]
    index = [np.array([species.index(s) for s in d.symbols]) for d in frames]
    refs = [torch.as_tensor([zval[s] for s in d.symbols], dtype=torch.float64) for d in frames]
    widths = np.array([0.87, 0.37])
    alone = []
    for table, idx, ref in zip(tables, index, refs):
        a, b, norm = table.equations(torch.as_tensor(widths[idx]))
        alone.append(constrained_minimum(a, b, norm, table.n_electrons, ref))
    stacks = stack_frames(tables, index, refs)
    assert [s.frames for s in stacks] == [[0, 1, 2, 3, 4, 5], [6]]  # the vacancy cell has other atoms
    assert species_misfit(stacks, widths) == pytest.approx(sum(m for _, m in alone), rel=1e-12)
    stacked = {i: m for s in stacks for i, m in zip(s.frames, s.misfits(widths).tolist())}
    for i, (_, misfit) in enumerate(alone):
        assert stacked[i] == pytest.approx(misfit, rel=1e-12)
    assert [s.frames for s in stack_frames(tables, index, refs, stacked=False)] == [[i] for i in range(7)]
    joint = fit_species(frames[:6], zval, widths={"Cl": 0.87, "Na": 0.37}, gcut=GCUT)
    unstacked = fit_species(frames[:6], zval, widths={"Cl": 0.87, "Na": 0.37}, gcut=GCUT, stacked=False)
    for frame, other, (q, _) in zip(joint.frames, unstacked.frames, alone):
        np.testing.assert_allclose(frame["populations"], q.numpy(), atol=1e-12)
        np.testing.assert_allclose(other["populations"], q.numpy(), atol=1e-12)
