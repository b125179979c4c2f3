"""Kernel tables (engine/species/kernel_tables.py): the species and shape models of cells beyond the dense phase
tables. One concern per test: the radial basis spans the family, A/b/gradients/uncertainties and the shape model's
Gauss–Newton blocks equal the dense route's, a whole fit gives the dense route's charges, and ``auto`` takes the
route instead of refusing the potential model.

The densities carry three Gaussians per atom, so that the one-Gaussian fits leave a real misfit; atoms of the
three elements are interleaved, so that the tables' element sorting is exercised.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import gaussian_density, rocksalt

from aiida_optddap.engine.fit import FitOptions, run_fit
from aiida_optddap.engine.io.zval import ZvalInfo
from aiida_optddap.engine.species import kernel_tables, shape_definition, widths as widths_module
from aiida_optddap.engine.species.kernel_tables import KernelShapeData, KernelTables, RadialBasis, t_range
from aiida_optddap.engine.species.shape import MULTIPLIERS, ShapeData
from aiida_optddap.engine.species.widths import SpeciesEquations, fit_species, species_of, stack_frames, width_bounds

GCUT = 9.0
ZVAL = {"Na": 6.6, "Cl": 7.5, "K": 6.6}


@pytest.fixture(scope="module")
def salt():
    """A rattled 8-atom rock salt with one Na replaced by K (three elements, interleaved in the atom order)."""
    cell, symbols, positions = rocksalt(rattle=0.08, seed=3)
    symbols = list(symbols)
    symbols[2] = "K"
    order = [4, 0, 5, 2, 1, 6, 3, 7]  # Cl, Na, Cl, K, Na, …: not grouped by element
    symbols, positions = [symbols[i] for i in order], positions[order]
    q = np.array([[2.0, 3.0, 1.6] if s != "Cl" else [2.5, 2.5, 2.5] for s in symbols])
    return gaussian_density(cell, symbols, positions, q, np.array([0.35, 0.9, 1.6]), (40, 40, 40))


@pytest.fixture(scope="module")
def tables(salt):
    return (SpeciesEquations(salt, GCUT),
            KernelTables(salt, GCUT, t_range(width_bounds([salt]), MULTIPLIERS)))


def test_basis_spans_the_family_between_its_nodes():
    """e^{−tg²} at t and g off the sampled ones is reproduced by Σ_j c_j(t) u_j(g) to 1e-12 of its size; a t
    outside the tables' range is refused."""
    basis = RadialBasis(0.01, 2.0, GCUT)
    g2 = np.linspace(0.01, GCUT, 997) ** 2
    u = basis.functions(g2)
    for t in (0.0123, 0.31, 1.97):
        approx = u @ basis.coefficients(np.array(t))
        exact = np.exp(-t * g2)
        weight = np.sqrt(g2 * kernel_tables.weight(g2, GCUT))
        assert np.max(np.abs(approx - exact) * weight) < 1e-12 * np.max(exact * weight)
    with pytest.raises(ValueError, match="outside the kernel tables' range"):
        basis.coefficients(np.array(2.5))


def test_equations_equal_the_dense_route(salt, tables):
    """A, b and Σ W|C|² at per-element widths: to 1e-9 of max|A|, max|b| (NUFFT tolerance 1e-10)."""
    dense, kernel = tables
    per = {"Na": 0.45, "Cl": 0.85, "K": 0.6}
    w = torch.tensor([per[s] for s in salt.symbols], dtype=torch.float64)
    a1, b1, n1 = dense.equations(w)
    a2, b2, n2 = kernel.equations(w)
    assert float((a1 - a2).abs().max()) < 1e-9 * float(a1.abs().max())
    assert float((b1 - b2).abs().max()) < 1e-9 * float(b1.abs().max())
    assert float(n2) == pytest.approx(float(n1), rel=1e-14)
    with pytest.raises(ValueError, match="one width per element"):
        kernel.equations(w * torch.linspace(1.0, 1.1, len(w), dtype=torch.float64))


def test_pair_blocks_filled_alike_in_row_chunks(salt, tables, monkeypatch):
    """The element-pair blocks are filled from pair_sums' row chunks (β ≥ α, mirrored): with 5 pairs per chunk, so
    that chunks cross element boundaries, every block equals the one-chunk build's, the diagonal blocks are
    symmetric and pair_block(f, e) is the transpose of (e, f)."""
    from aiida_optddap.engine.gaussian import nufft

    _, whole = tables
    pair_sums = nufft.pair_sums
    monkeypatch.setattr(nufft, "pair_sums", lambda *args: pair_sums(*args, points_per_chunk=5))
    chunked = KernelTables(salt, GCUT, t_range(width_bounds([salt]), MULTIPLIERS))
    assert sorted(chunked.pairs) == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    for key, table in whole.pairs.items():
        assert float((chunked.pairs[key] - table).abs().max()) < 1e-13 * float(table.abs().max())
        if key[0] == key[1]:
            assert torch.equal(table, table.transpose(1, 2))
    assert torch.equal(whole.pair_block(2, 0), whole.pairs[0, 2].transpose(1, 2))


def test_misfits_and_gradients_equal_the_dense_route(salt, tables):
    """The width search's trials: relative misfits to 1e-9, gradients in log σ to 1e-7 relative."""
    species, index = species_of(list(salt.symbols))
    ref = torch.as_tensor([ZVAL[s] for s in salt.symbols], dtype=torch.float64)
    (dense,), (kernel,) = (stack_frames([t], [index], [ref]) for t in tables)
    assert kernel.kernel is not None and dense.kernel is None
    for trial in ([0.85, 0.6, 0.45], [0.5, 1.2, 0.4], [1.4, 0.35, 0.9]):
        m1, g1 = dense.misfits_and_gradients(np.array(trial))
        m2, g2 = kernel.misfits_and_gradients(np.array(trial))
        np.testing.assert_allclose(m2.numpy(), m1.numpy(), rtol=1e-9)
        np.testing.assert_allclose(g2.numpy(), g1.numpy(), rtol=1e-7, atol=1e-10 * float(g1.abs().max()))


def test_uncertainty_with_widths_equals_the_dense_route(salt, tables):
    dense, kernel = tables
    species, index = species_of(list(salt.symbols))
    per = {"Na": 0.45, "Cl": 0.85, "K": 0.6}
    w = torch.tensor([per[s] for s in salt.symbols], dtype=torch.float64)
    q = torch.linspace(6.0, 8.0, len(w), dtype=torch.float64)
    u1 = dense.uncertainty_with_widths(w, q, index, len(species), 1e-3)
    u2 = kernel.uncertainty_with_widths(w, q, index, len(species), 1e-3)
    np.testing.assert_allclose(u2, u1, rtol=1e-7)


def test_shape_blocks_equal_the_dense_route(salt, tables):
    """The shape model's Gauss–Newton blocks and misfit at arbitrary populations and shapes, also with a dataset's
    species numbering (a fourth species absent from this frame: zero rows and columns)."""
    dense, kernel = tables
    species, index = species_of(list(salt.symbols))
    for n_species, index_used in ((3, index), (4, np.where(index >= 1, index + 1, index))):
        widths = torch.tensor([0.8, 0.7, 0.6, 0.45][:n_species], dtype=torch.float64)
        rng = np.random.default_rng(n_species)
        p = torch.as_tensor(rng.uniform(6, 8, len(index)))
        s = torch.as_tensor(rng.normal(0.25, 0.1, (n_species, len(MULTIPLIERS))))
        d_data = ShapeData.from_table(dense, index_used, n_species)
        k_data = ShapeData.from_table(kernel, index_used, n_species)
        assert isinstance(k_data, KernelShapeData) and k_data.n_data == d_data.n_data
        for x, y in zip(d_data.normal_blocks(d_data.prepare(widths), p, s),
                        k_data.normal_blocks(k_data.prepare(widths), p, s)):
            assert x.shape == y.shape
            assert float((x - y).abs().max()) < 1e-9 * max(float(x.abs().max()), 1e-300)
        assert k_data.misfit(k_data.prepare(widths), p, s) == pytest.approx(
            d_data.misfit(d_data.prepare(widths), p, s), rel=1e-8)


def _kernel_route(monkeypatch):
    """Every cell beyond the dense tables: the kernel route for any size."""
    monkeypatch.setattr(widths_module, "MAX_TABLE_VALUES", 0)


def test_default_fit_on_the_kernel_route_equals_the_dense_one(salt, monkeypatch):
    """``auto`` (the potential model) on the kernel route: the same widths, shapes, charges and ± as the dense
    route (1e-7), ``fit_route`` ``kernel``."""
    zval = ZvalInfo(values={"Na": 6.6, "Cl": 7.5, "K": 6.6}, source={k: "user" for k in ("Na", "Cl", "K")})
    options = FitOptions.for_definition("auto", device="cpu")
    dense = run_fit(salt, options, zval=zval)
    _kernel_route(monkeypatch)
    kernel = run_fit(salt, options, zval=zval)
    assert dense["fit_route"] == "standard" and kernel["fit_route"] == "kernel"
    assert kernel["charge_model"] == dense["charge_model"] == "potential"
    for element, width in dense["species_widths"].items():
        assert kernel["species_widths"][element] == pytest.approx(width, rel=1e-7)
    np.testing.assert_allclose(kernel["net_charges"], dense["net_charges"], atol=1e-7)
    np.testing.assert_allclose(kernel["uncertainty"]["per_atom"], dense["uncertainty"]["per_atom"], atol=1e-7)
    for element, shape in dense["shape_coefficients"].items():
        np.testing.assert_allclose(kernel["shape_coefficients"][element], shape, atol=1e-7)


def test_auto_keeps_the_potential_model_beyond_the_dense_tables(salt, monkeypatch):
    """Beyond the dense tables the shape (and potential) model runs on kernel tables; only beyond those does
    ``auto`` name a reason."""
    options = FitOptions.for_definition("auto", device="cpu")
    _kernel_route(monkeypatch)
    assert shape_definition.check(salt, options, None, "absolute") is None
    monkeypatch.setattr(kernel_tables, "MAX_KERNEL_VALUES", 0)
    assert "too large for the shape model's kernel tables" in shape_definition.check(salt, options, None, "absolute")


@pytest.mark.skipif(not (torch.cuda.is_available() and __import__("aiida_optddap.engine.gaussian.nufft",
                                                                     fromlist=["available"]).available("cuda")),
                    reason="no CUDA device with cufinufft on this machine")
def test_kernel_route_on_cuda_equals_cpu(salt, monkeypatch):
    """The same code on CUDA tensors (cufinufft builds the tables): the default's charges equal the CPU's to 1e-7."""
    zval = ZvalInfo(values={"Na": 6.6, "Cl": 7.5, "K": 6.6}, source={k: "user" for k in ("Na", "Cl", "K")})
    _kernel_route(monkeypatch)
    runs = {device: run_fit(salt, FitOptions.for_definition("auto", device=device), zval=zval) for device in ("cpu", "cuda")}
    assert runs["cuda"]["fit_route"] == "kernel" and runs["cuda"]["device"].startswith("cuda")
    np.testing.assert_allclose(runs["cuda"]["net_charges"], runs["cpu"]["net_charges"], atol=1e-7)


def test_dataset_on_the_kernel_route_equals_the_dense_one(salt, monkeypatch):
    """A dataset (joint="auto": joint widths and shapes, every frame's populations its own) on kernel tables: the
    same joint widths and charges as the dense route (1e-7)."""
    from aiida_optddap.engine.joint import fit_frames

    cell, symbols, _ = rocksalt()
    frames = [salt]
    for seed in (4, 5):
        _, _, positions = rocksalt(rattle=0.08, seed=seed)
        order = [4, 0, 5, 2, 1, 6, 3, 7]
        q = np.array([[2.0, 3.0, 1.6] if s != "Cl" else [2.5, 2.5, 2.5] for s in salt.symbols])
        frames.append(gaussian_density(cell, list(salt.symbols), positions[order], q, np.array([0.35, 0.9, 1.6]),
                                       (40, 40, 40)))
    dense = fit_frames(frames, ZVAL, joint="auto")
    _kernel_route(monkeypatch)
    kernel = fit_frames(frames, ZVAL, joint="auto")
    d_par, k_par = dense["choice"]["fit_parameters"], kernel["choice"]["fit_parameters"]
    assert k_par["definition"] == d_par["definition"] == "potential"
    for element, width in d_par["species_widths"].items():
        assert k_par["species_widths"][element] == pytest.approx(width, rel=1e-7)
    for d, k in zip(dense["results"], kernel["results"]):
        assert k["fit_route"] == "kernel" and d["fit_route"] == "standard"
        np.testing.assert_allclose(k["net_charges"], d["net_charges"], atol=1e-7)
