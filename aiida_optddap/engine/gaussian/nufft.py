"""A and b of the DDAP normal equations by type-2 non-uniform FFTs: cost ~ N_atoms² + N_G log N_G.

The chunked sums of :func:`.ddap.normal_equations` cost N_G·M² (M = K·N_atoms): cubic in the number of atoms,
because N_G grows like the volume. But A depends on the atoms only through their pair differences:

    A_{αk,βl} = Σ_{0<|G|<g_c} W(G) ĝ_k(G) ĝ_l(G) cos(G·(R_α − R_β))        (full sphere)
              = Σ_m c_kl(m) e^{i m·x_αβ},   x_αβ = 2π(s_α − s_β),   c_kl(m) = W ĝ_k ĝ_l on the Miller box,

a type-2 NUFFT (uniform modes → non-uniform points) of the K(K+1)/2 coefficient arrays c_kl at the N(N+1)/2
fractional pair differences with β ≥ α (A_βα = A_αβ and the cosine is even), and likewise

    b_{αk} = Σ_S W ĝ_k Re(C_G e^{+iG·R_α}) = Σ_m W ĝ_k C_m e^{+i m·2πs_α}   (the coefficients are Hermitian)

at the N atoms. These are the conventions of :func:`.ddap.normal_equations` (full sphere: each stored
half-space G of weight 2 stands for G and −G; the phase of the basis is e^{−iG·R}). Two real transforms share
one complex one (c_1 + i c_2: the coefficients are even, or Hermitian for b, so both outputs are real).

Accuracy: the NUFFT error is relative to the size of the sums, so the tolerance :data:`EPS` = 1e-14 gives
A and b equal to the chunked sums to ~1e-13 of max|A|, max|b| (tests/engine/gaussian/test_nufft.py checks
1e-10).

Backends: ``finufft`` for CPU tensors, ``cufinufft`` for CUDA tensors (optional extra ``cuda``).
Differentiability: none. The NUFFT path serves fixed-parameter fits (no gradient with respect to σ_start,
f, g_c); :func:`.ddap.normal_equations` routes here only when no gradient is needed, see :func:`use_nufft`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: NUFFT tolerance: finufft's relative accuracy request (1e-14 is about the float64 limit of its kernel).
EPS = 1e-12
#: Non-uniform points per NUFFT call (bounds the scratch memory: K(K+1)/4 complex outputs per point).
POINTS_PER_CHUNK = 1 << 20
#: Route :func:`.ddap.normal_equations` to the NUFFT from this many atoms. Measured by ``python -m
#: bench.large_cells`` (bench/results/large_cells.json, docs/benchmarks.md "Large cells") on two cores, rock salt
#: at 0.1175 Å, K = 3, default g_c, chunked sums vs NUFFT: 8 atoms 1.4 vs 10 ms, 64 atoms 9 vs 26 ms, 216
#: atoms 175 vs 163 ms (1.07×), 512 atoms 1.6 vs 0.71 s (2.3×), 1000 atoms 24 vs 6.9 s (3.5×). The crossing
#: is at ~210 atoms; the threshold sits just above it, so that small cells keep the chunked sums.
MIN_ATOMS = 250
#: finufft's upsampling factor σ is chosen by :func:`upsampling`: 1.25 (a 4.1× smaller fine grid, wider kernels)
#: where the FFT outweighs the spreading. Measured (finufft 2.4, 2 cores, 135³ modes, 4 transforms, s per call,
#: σ = 2 vs 1.25): 1e3 points at 1e-10 1.13 vs 0.35, 1e5 points 1.45 vs 0.81, 1e6 points 3.10 vs 5.01; 1e6 points
#: at 1e-8 2.28 vs 3.32, at 1e-4 1.66 vs 0.91 (finufft's own choice takes 2 below 1e-9 and 1.25 above, whatever
#: the points). At σ = 1.25 requests from 1e-10 to :data:`WIDEST_KERNEL_EPS` are planned at the latter, finufft's
#: widest kernel (16 points; below it finufft clips to 16 and prints a warning): measured 1.6e-11 of max|sum| at
#: 2000 points (1.4e-10 at 5e-10, 15 points). Tighter requests keep σ = 2.
FEW_POINTS_PER_MODE = 1.0 / 8.0
LOOSE_EPS = 1e-5
SMALLEST_EPS_AT_1_25 = 1e-10
WIDEST_KERNEL_EPS = 3e-10


def available(device: torch.device | str = "cpu") -> bool:
    """Whether the NUFFT backend for ``device`` can be imported (finufft on CPU, cufinufft on CUDA)."""
    try:
        if torch.device(device).type == "cuda":
            import cufinufft  # noqa: F401
        else:
            import finufft  # noqa: F401
    except ImportError:
        return False
    return True


def use_nufft(n_atoms: int, *tensors: torch.Tensor, device: torch.device | str = "cpu") -> bool:
    """The routing rule of :func:`.ddap.normal_equations`: the NUFFT for ≥ :data:`MIN_ATOMS` atoms when no
    gradient is required (grad mode off, or no input that requires one) and the backend is installed."""
    if n_atoms < MIN_ATOMS:
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return available(device)


def upsampling(n_points: int, n_modes: tuple[int, int, int], eps: float) -> float:
    """finufft's upsampling factor for a type-2 transform of ``n_modes`` at ``n_points`` points to ``eps``: 1.25
    where there are few points per mode (≤ :data:`FEW_POINTS_PER_MODE`, eps ≥ 1e-10) or the request is loose
    (eps ≥ :data:`LOOSE_EPS`), else 2 (measurements at :data:`FEW_POINTS_PER_MODE`)."""
    if eps < SMALLEST_EPS_AT_1_25:
        return 2.0
    few = n_points <= FEW_POINTS_PER_MODE * math.prod(n_modes)
    return 1.25 if few or eps >= LOOSE_EPS else 2.0


class _Backend:
    """Type-2 plans on one device: ``finufft`` (numpy arrays) or ``cufinufft`` (CUDA torch tensors, cufinufft's
    own defaults); ``n_points`` is the largest point set one call will get (it sets the CPU upsampling)."""

    def __init__(self, device: torch.device, n_modes: tuple[int, int, int], n_trans: int, eps: float, isign: int,
                 n_points: int):
        self.cuda = device.type == "cuda"
        if self.cuda:
            import cufinufft

            self.plan = cufinufft.Plan(2, n_modes, n_trans=n_trans, eps=eps, isign=isign, dtype="complex128")
        else:
            import finufft

            sigma = upsampling(n_points, n_modes, eps)
            if sigma == 1.25:
                eps = max(eps, WIDEST_KERNEL_EPS)
            self.plan = finufft.Plan(2, n_modes, n_trans=n_trans, eps=eps, isign=isign, dtype="complex128",
                                     nthreads=torch.get_num_threads(), upsampfac=sigma)
        self.n_trans = n_trans

    def __call__(self, coefficients, points: torch.Tensor) -> torch.Tensor:
        """(n_trans, n_points) complex sums Σ_m c_m e^{±i m·x} at ``points`` (n_points, 3) in [−π, π)."""
        if self.cuda:
            x, y, z = (points[:, d].contiguous() for d in range(3))
            self.plan.setpts(x, y, z)
            out = self.plan.execute(coefficients)
            return torch.as_tensor(out, device=points.device).reshape(self.n_trans, -1)
        x, y, z = (np.ascontiguousarray(points[:, d].numpy()) for d in range(3))
        self.plan.setpts(x, y, z)
        return torch.from_numpy(np.asarray(self.plan.execute(coefficients)).reshape(self.n_trans, -1))


def _angles(delta: torch.Tensor) -> torch.Tensor:
    """2π·(fractional difference reduced to [−½, ½)): NUFFT points in [−π, π)."""
    return (2.0 * math.pi) * (torch.remainder(delta + 0.5, 1.0) - 0.5)


def _full_box(miller: torch.Tensor, values: torch.Tensor, conjugate_values: torch.Tensor) -> tuple:
    """Dense Miller boxes (T, n1, n2, n3) holding ``values`` (T, n) at m and ``conjugate_values`` at −m."""
    extent = miller.abs().amax(dim=0) if len(miller) else torch.zeros(3, dtype=miller.dtype, device=miller.device)
    n_modes = tuple(int(2 * e + 1) for e in extent.tolist())
    box = torch.zeros((values.shape[0],) + n_modes, dtype=torch.complex128, device=values.device)
    plus = (miller + extent).T
    minus = (extent - miller).T
    box[:, plus[0], plus[1], plus[2]] = values
    box[:, minus[0], minus[1], minus[2]] = conjugate_values
    return box, n_modes


def _pack(real_arrays: torch.Tensor) -> torch.Tensor:
    """Pairs of arrays (T, ...) as T/2 complex arrays a_2j + i·a_2j+1 (T odd: the last one alone)."""
    t = real_arrays.shape[0]
    packed = real_arrays[0::2].to(torch.complex128)
    packed[: t // 2] += 1j * real_arrays[1::2]
    return packed


def _unpack(out: torch.Tensor, t: int) -> torch.Tensor:
    """Inverse of :func:`_pack` on transform outputs whose parts are real: (ceil(T/2), n) → (T, n)."""
    result = out.real.new_empty((t, out.shape[1]))
    result[0::2] = out.real
    result[1::2] = out.imag[: t // 2]
    return result


def normal_equations_nufft(problem, radii: torch.Tensor, gcut: torch.Tensor, eps: float = EPS,
                           points_per_chunk: int = POINTS_PER_CHUNK) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A (B, M, M), b (B, M), Σ_S W|C|² (B,) of a :class:`.ddap.Problem` by NUFFTs; the values of
    :func:`.ddap.normal_equations` (same conventions, full-sphere sums) without gradients."""
    gs = problem.fit
    n_batch, n_gauss = radii.shape
    n_atoms = problem.n_atoms
    m = n_atoms * n_gauss
    largest = float(gcut.detach().max())
    if largest > problem.gcut_max * (1 + 1e-12):
        raise ValueError(f"g_c = {largest:.6g} Å⁻¹ exceeds the G set of this problem (built to {problem.gcut_max:.6g} Å⁻¹)")
    device = radii.device
    a = radii.new_zeros(n_batch, m, m)
    b = radii.new_zeros(n_batch, m)
    norm = radii.new_zeros(n_batch)
    frac = gs._frac.to(device)
    pairs = [(k, l) for k in range(n_gauss) for l in range(k, n_gauss)]
    with torch.no_grad():
        for i in range(n_batch):
            stop = gs.count_below(float(gcut[i]))
            miller = gs.miller[:stop].round().long()
            g2 = gs.g2[:stop]
            gc2 = float(gcut[i]) ** 2
            # Blöchl's W (as ddap.bloechl_weight; every stored G is below g_c) on each of ±G, and ĝ_k
            w = 4.0 * math.pi * (g2 - gc2) ** 2 / (g2 * gc2) * (0.5 * gs.weight[:stop])
            ghat = torch.exp(-0.25 * g2[:, None] * radii[i].detach()[None, :] ** 2)  # (n, K)
            c = torch.complex(gs.c_re[:stop], gs.c_im[:stop])
            norm[i] = (2.0 * w * c.abs() ** 2).sum()
            _fill_a(a[i], miller, w, ghat, pairs, frac, eps, points_per_chunk)
            b[i] = _b_vector(miller, w, ghat, c, frac, eps)
    return a, b, norm


def _b_vector(miller, w, ghat, c, frac, eps) -> torch.Tensor:
    """b_{αk} (N·K,) = Σ_m W ĝ_k C_m e^{+i m·2πs_α}, K real transforms packed into ceil(K/2) complex ones."""
    n_gauss = ghat.shape[1]
    values = (w[:, None] * ghat).T * c  # (K, n) complex: at +m
    box, n_modes = _full_box(miller, values, values.conj())  # Hermitian: the sums are real
    t = n_gauss
    packed = box[0::2].clone()
    packed[: t // 2] += 1j * box[1::2]
    del box
    backend = _Backend(frac.device, n_modes, packed.shape[0], eps, +1, len(frac))
    out = backend(_coefficients(packed, backend), _angles(frac))
    values = _unpack(out, t)  # (K, N)
    return values.T.reshape(-1)


def _coefficients(box: torch.Tensor, backend: _Backend):
    """The (T, n1, n2, n3) boxes as the backend takes them (a CUDA tensor, or a numpy array; T = 1 squeezed)."""
    box = box.contiguous()
    if backend.cuda:
        return box if box.shape[0] > 1 else box[0]
    return box.numpy() if box.shape[0] > 1 else box[0].numpy()


def pair_sums(miller, values, frac, eps, points_per_chunk=POINTS_PER_CHUNK):
    """Σ_m c_t(m) e^{i m·x_αβ} for T real arrays ``values`` (T, n_G) given on the half-space Miller indices
    ``miller`` (n_G, 3) and even in m, at the fractional pair differences of ``frac`` (N, 3) with β ≥ α.

    Yields (i0, i1, sums (T, i1 − i0, N − i0)): row blocks of atoms α ∈ [i0, i1) against β ≥ i0, each at most
    ``points_per_chunk`` pairs (real: two arrays share one complex transform)."""
    n_atoms, t = len(frac), values.shape[0]
    packed = _pack(values)
    box, n_modes = _full_box(miller, packed, packed)
    n_pairs = n_atoms * (n_atoms + 1) // 2
    backend = _Backend(frac.device, n_modes, box.shape[0], eps, +1, min(n_pairs, max(points_per_chunk, n_atoms)))
    coefficients = _coefficients(box, backend)
    del box
    i0 = 0
    while i0 < n_atoms:
        n_cols = n_atoms - i0
        i1 = i0 + max(1, min(n_cols, points_per_chunk // max(n_cols, 1)))
        delta = frac[i0:i1, None, :] - frac[None, i0:, :]  # (rows, cols, 3)
        out = backend(coefficients, _angles(delta.reshape(-1, 3)))
        yield i0, i1, _unpack(out, t).reshape(t, i1 - i0, n_cols)
        i0 = i1


def _fill_a(a, miller, w, ghat, pairs, frac, eps, points_per_chunk) -> None:
    """A (M, M) in place, row blocks of atoms α ∈ [i0, i1) against β ≥ i0, mirrored into the lower half."""
    n_gauss = ghat.shape[1]
    kk = torch.tensor([p[0] for p in pairs], device=w.device)
    ll = torch.tensor([p[1] for p in pairs], device=w.device)
    values = w[None, :] * ghat.T[kk] * ghat.T[ll]  # (P, n): c_kl = W ĝ_k ĝ_l, even in m
    lookup = {p: j for j, p in enumerate(pairs)}
    order = torch.tensor([lookup[(min(k, l), max(k, l))] for k in range(n_gauss) for l in range(n_gauss)],
                         device=w.device)
    for i0, i1, kernel in pair_sums(miller, values, frac, eps, points_per_chunk):
        rows, n_cols = i1 - i0, kernel.shape[2]
        # (K·K, rows, cols) → (rows, K, cols, K): block[α, k, β, l] = K_kl(R_α − R_β)
        block = kernel[order].reshape(n_gauss, n_gauss, rows, n_cols).permute(2, 0, 3, 1)
        block = block.reshape(rows * n_gauss, n_cols * n_gauss)
        r0, r1 = i0 * n_gauss, i1 * n_gauss
        a[r0:r1, r0:] = block
        a[r0:, r0:r1] = block.T
        square = a[r0:r1, r0:r1]
        a[r0:r1, r0:r1] = 0.5 * (square + square.T)
        del kernel, block
