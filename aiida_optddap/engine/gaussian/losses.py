"""Outer losses of opt-DDAP (docs/conventions.md, "The three losses"). None depends on g_c.

Each is a relative weighted residual over G ≠ 0 of the FFT box (Nyquist planes excluded, see
:func:`.gspace.box_gset`):

    loss = Σ_G κ(G) |M_G − C_G|² / Σ_G κ(G) |C_G|²

``density``: κ = 1 (Parseval: the real-space mean squared error of the reconstruction; the
optimiser's fast form in :mod:`.shells` also counts the model's G beyond the FFT box);
``coulomb``: κ = 4π/G² (the electrostatic self-energy of the residual density);
``planar``: κ = 1 on the three lines G ∥ b_i only (the mean squared error of the planar averages).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .ddap import Problem, gaussian_form_factor
from .gspace import inner_box_mask, reciprocal_cell

LOSSES = ("density", "coulomb", "planar")
#: The model's form factor is dropped where exp(−G²σ²/4) < 1e-16 for the smallest radius.
FORM_FACTOR_FLOOR = 1e-16


class LossTerms:
    """Kernel, normaliser and tail sums of one loss on a problem's loss set."""

    def __init__(self, problem: Problem, kind: str):
        if kind not in LOSSES:
            raise ValueError(f"unknown loss {kind!r}: use one of {', '.join(LOSSES)}")
        gs = problem.loss_set
        if kind == "planar":
            gs = gs.subset((gs.miller != 0).sum(dim=1) == 1)
        self.kind = kind
        self.gset = gs
        kernel = gs.weight.clone()
        if kind == "coulomb":
            kernel = kernel * (4.0 * math.pi) / gs.g2
        self.kernel = kernel
        c2 = kernel * (gs.c_re**2 + gs.c_im**2)
        # tail[i] = Σ_{j ≥ i} κ|C|²: the residual of G beyond the truncation, where the model is 0.
        self.tail = torch.cat([torch.flip(torch.cumsum(torch.flip(c2, [0]), 0), [0]), c2.new_zeros(1)])
        self.norm = float(self.tail[0])
        if self.norm <= 0:
            raise ValueError(f"the {kind} loss is undefined: the density has no G ≠ 0 component")

    def __call__(self, problem: Problem, q: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
        """Loss (B,) for coefficients q (B, M) and radii (B, K)."""
        gs = self.gset
        n_batch, n_gauss = radii.shape
        smallest = float(radii.detach().min())
        g_limit = math.sqrt(-4.0 * math.log(FORM_FACTOR_FLOOR)) / smallest
        stop = gs.count_below(g_limit)
        # Q[α, (b, k)]: S_bk(G) = Σ_α q_αk e^{−iG·R_α} = Σ_α q (cos − i sin).
        charges = q.reshape(n_batch, problem.n_atoms, n_gauss).permute(1, 0, 2).reshape(problem.n_atoms, -1)
        total = q.new_zeros(n_batch)
        for start, end in gs.chunks(stop, 4 * n_batch * n_gauss + problem.n_atoms, problem.chunk_size):
            kernel = self.kernel[start:end]
            cos, sin = gs.phases(start, end)
            form = gaussian_form_factor(gs.g2[start:end], radii)  # (c, B, K)
            m_re = ((cos @ charges).view(-1, n_batch, n_gauss) * form).sum(-1)
            m_im = -((sin @ charges).view(-1, n_batch, n_gauss) * form).sum(-1)
            residual = (m_re - gs.c_re[start:end, None]) ** 2 + (m_im - gs.c_im[start:end, None]) ** 2
            total = total + (kernel[:, None] * residual).sum(0)
        return (total + self.tail[stop]) / self.norm


def loss_on_grid(model: np.ndarray, density: np.ndarray, cell: np.ndarray, kind: str,
                 model_power_outside: float = 0.0) -> float:
    """The same loss from full-box coefficient arrays M_G and C_G (numpy, no truncation).

    Used for the reported value at the final parameters. ``model_power_outside`` (the model's
    Σ|M_G|² beyond the box, :func:`.shells.power_outside_box`) is added to the ``density`` loss,
    which the optimiser measures over every G (:class:`.shells.DensityLoss`); with it the two agree
    to round-off, as do :class:`LossTerms` and this function for ``coulomb`` and ``planar``.
    """
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}: use one of {', '.join(LOSSES)}")
    shape = density.shape
    keep = inner_box_mask(shape)
    m = None if kind == "density" else np.meshgrid(*[np.fft.fftfreq(n, 1.0 / n) for n in shape], indexing="ij")
    if kind == "planar":
        keep &= sum((md != 0).astype(int) for md in m) == 1
    kernel = keep.astype(np.float64)
    if kind == "coulomb":
        g = np.stack(m, axis=-1) @ reciprocal_cell(cell)
        g2 = np.einsum("...i,...i->...", g, g)
        kernel[keep] = 4.0 * math.pi / g2[keep]
    norm = float(np.sum(kernel * np.abs(density) ** 2))
    if norm <= 0:
        raise ValueError(f"the {kind} loss is undefined: the density has no G ≠ 0 component")
    outside = model_power_outside if kind == "density" else 0.0
    return (float(np.sum(kernel * np.abs(model - density) ** 2)) + outside) / norm
