"""Many small frames at fixed parameters in one call: padded, batched normal equations and solves.

Data sets for force fields hold hundreds of 10–200-atom frames. One :func:`.ddap.fit_coefficients` per frame
pays a full FFT of the grid and a few dozen small tensor operations whose fixed costs dominate at this size.
:func:`fit_frames` instead

1. takes per frame only the Fourier coefficients inside the fit sphere, by a pruned DFT (three small matrix
   products over the grid axes, restricted to |m_d| ≤ g_c|a_d|/2π: exact, and cheaper than the full FFT);
2. pads the frames of a sub-batch to the largest G set (weight 0) and the largest atom count, and moves them to
   the device in one transfer (one sub-batch holds every frame unless the padded scratch would exceed
   :data:`BATCH_ELEMENTS`);
3. builds A and b of all frames with batched matrix products, puts a scaled identity block s·I on the padded
   coefficients (s = tr A/M of the frame, inside [λ_max/M, λ_max], so that it changes neither the rank under
   the relative cutoff nor the pseudo-inverse of the real block), and solves all frames at once with the
   charge constraint on the real coefficients only (a mask u instead of 1: q = A⁺(b − λu)).

The populations equal those of :func:`.ddap.fit_coefficients` (same G set, conventions and solver formulas)
to ~1e-12 e (tests/engine/gaussian/test_batch.py checks 1e-10).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch

from .ddap import DEFAULT_RTOL, Parameters, SingularMatrixError, resolve_device
from ..io.density import Density
from .gspace import check_gmax, reciprocal_cell, sphere_extent, sphere_miller
from ..threads import SERIAL_COEFFICIENTS, single_thread, small_on_cpu

#: Solvers of :func:`fit_frames` (the formulas of :func:`.ddap.solve`).
BATCH_SOLVERS = ("pinv", "lagrange", "scale", "shift")
#: A sub-batch is cut where padding to its largest frame would cost more than this × the unpadded work.
PADDING_OVERHEAD = 1.5
#: Largest padded scratch of one sub-batch, in float64 elements (2²⁶ = 512 MiB).
BATCH_ELEMENTS = 1 << 26


def sphere_coefficients(density: Density, gmax: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Miller indices (n, 3), |G|² (n,), C_G (n,) of the half-space G with 0 < |G| < gmax (the G set of
    :func:`.gspace.sphere_gset`, sorted by |G|) and N, by a DFT pruned to the sphere's Miller box."""
    grid = density.grid
    m, g2, f1, f2, f3 = _sphere_geometry(density.cell.tobytes(), grid.shape, float(gmax))
    # C(m) = Σ_x raw(x) e^{−2πi Σ_d m_d x_d/N_d} / N_g over m_3 ∈ [0, e_3], m_2, m_1 ∈ [−e, e]: three products
    n1, n2, n3 = grid.shape
    k1, k2, k3 = f1.shape[1], f2.shape[1], f3.shape[1] // 2
    both = torch.from_numpy(grid.reshape(n1 * n2, n3)) @ f3  # one real product: [Re | Im] columns
    t = torch.complex(both[:, :k3], both[:, k3:]).reshape(n1, n2, k3)  # (N1, N2, m3)
    t = (t.transpose(1, 2).reshape(n1 * k3, n2) @ f2).reshape(n1, k3, k2)  # (N1, m3, m2)
    t = (f1.T @ t.reshape(n1, k3 * k2)).reshape(k1, k3, k2).numpy()  # (m1, m3, m2)
    c = t[m[:, 0] + (k1 - 1) // 2, m[:, 2], m[:, 1] + (k2 - 1) // 2] / grid.size
    n_electrons = float(t[(k1 - 1) // 2, 0, (k2 - 1) // 2].real) / grid.size  # C_0 = N = mean of the raw grid
    return m, g2, c, n_electrons


def _dft_matrix(n: int, freqs: np.ndarray) -> np.ndarray:
    """(n, len(freqs)) e^{−2πi x m/n}, angles reduced modulo 1 turn first (exact phases)."""
    turns = np.remainder(np.outer(np.arange(n), freqs), n) / n
    return np.exp(-2j * np.pi * turns)


@functools.lru_cache(maxsize=64)
def _sphere_geometry(cell_bytes: bytes, shape: tuple, gmax: float):
    """The sphere's Miller indices and |G|² (sorted as :func:`.gspace.sphere_gset`) and the three pruned DFT
    matrices, cached per cell, grid and g_c (the frames of a trajectory share them)."""
    cell = np.frombuffer(cell_bytes, dtype=np.float64).reshape(3, 3)
    check_gmax(cell, shape, gmax)
    extent = sphere_extent(cell, gmax)
    m = sphere_miller(cell, gmax)
    g = m @ reciprocal_cell(cell)
    g2 = np.einsum("ij,ij->i", g, g)
    order = np.argsort(g2, kind="stable")
    e1, e2, e3 = (int(e) for e in extent)
    f1 = _dft_matrix(shape[0], np.arange(-e1, e1 + 1))
    f2 = _dft_matrix(shape[1], np.arange(-e2, e2 + 1))
    f3 = _dft_matrix(shape[2], np.arange(0, e3 + 1))
    f3 = np.ascontiguousarray(np.concatenate([f3.real, f3.imag], axis=1))  # real (N3, 2·(e3+1))
    # torch CPU tensors: their products follow torch's thread setting (numpy's BLAS has its own threads)
    return m[order], g2[order], torch.from_numpy(f1), torch.from_numpy(f2), torch.from_numpy(f3)


def _parameters_list(parameters, n_frames: int) -> list[Parameters]:
    if isinstance(parameters, Parameters):
        return [parameters] * n_frames
    parameters = list(parameters)
    if len(parameters) != n_frames:
        raise ValueError(f"{len(parameters)} parameter sets for {n_frames} frames")
    if len({p.n_gauss for p in parameters}) > 1:
        raise ValueError("every frame of a batch needs the same number of Gaussians per atom (n_gauss)")
    return parameters


def fit_frames(
    densities: Sequence[Density],
    parameters: Parameters | Sequence[Parameters] = Parameters(),
    solver: str = "pinv",
    rtol: float = DEFAULT_RTOL,
    device: str = "cpu",
) -> list[dict]:
    """Fixed-parameter DDAP fits of many densities in one call (one set of parameters, or one per frame).

    Returns per frame the keys of :func:`.ddap.fit_coefficients` that a data set needs: ``coefficients``
    (atoms, K), ``populations``, ``radii``, ``condition_number``, ``rank``, ``n_coefficients``,
    ``smallest_eigenvalues``, ``unconstrained_total``, ``renormalisation``, ``n_gvectors``, ``fit_residual``.
    ``solver``: one of :data:`BATCH_SOLVERS` (the formulas of :func:`.ddap.solve`).
    """
    if solver not in BATCH_SOLVERS:
        raise ValueError(f"unknown solver {solver!r} for a batch of frames: use one of {', '.join(BATCH_SOLVERS)}")
    densities = list(densities)
    if not densities:
        return []
    params = _parameters_list(parameters, len(densities))
    dev = resolve_device(device)
    n_gauss = params[0].n_gauss
    frames = []
    with single_thread(max(d.n_atoms for d in densities) * n_gauss <= SERIAL_COEFFICIENTS):
        for density, p in zip(densities, params):
            m, g2, c, n_electrons = sphere_coefficients(density, p.gcut)
            frames.append({"m": m, "g2": g2, "c": c, "n": n_electrons, "cell": density.cell,
                           "positions": density.positions, "radii": p.radii(), "gcut": p.gcut})
    results: list[dict | None] = [None] * len(frames)
    for group in _sub_batches(frames, n_gauss):
        with single_thread(small_on_cpu(dev.type, max(len(frames[i]["positions"]) for i in group) * n_gauss)):
            for index, result in zip(group, _fit_group([frames[i] for i in group], n_gauss, solver, rtol, dev)):
                results[index] = result
    return results


def _sub_batches(frames: list[dict], n_gauss: int) -> list[list[int]]:
    """Frames sorted by size, cut where padding would cost more than :data:`PADDING_OVERHEAD` × the unpadded
    work (Σ G·M² per frame) or the padded scratch (2·G·M + 2·M² per frame) would pass BATCH_ELEMENTS."""
    order = sorted(range(len(frames)), key=lambda i: (len(frames[i]["positions"]), len(frames[i]["g2"])))
    groups, current, n_g, n_m, work = [], [], 0, 0, 0.0
    for i in order:
        gi, mi = len(frames[i]["g2"]), len(frames[i]["positions"]) * n_gauss
        g, mm = max(n_g, gi), max(n_m, mi)
        count = len(current) + 1
        if current and (count * (2 * g * mm + 2 * mm * mm) > BATCH_ELEMENTS
                        or count * g * mm * mm > PADDING_OVERHEAD * (work + gi * mi * mi)):
            groups.append(current)
            current, g, mm, work = [], gi, mi, 0.0
        current.append(i)
        n_g, n_m, work = g, mm, work + gi * mi * mi
    groups.append(current)
    return groups


def _pack(frames: list[dict], n_gauss: int, device: torch.device) -> dict:
    """The frames' G sets, coefficients and geometry padded to the largest, in one host buffer and one transfer:
    miller (F,G,3), g2, weight, c_re, c_im (F,G), frac (F,N,3) fractional positions, radii (F,K), gcut,
    n_electrons, n_coeff (F,). Padded G have |G|² = 1 and weight 0; padded atoms sit at 0."""
    n_frames = len(frames)
    n_g = max(len(f["g2"]) for f in frames)
    n_atoms = max(len(f["positions"]) for f in frames)
    sizes = [n_g * 3, n_g, n_g, n_g, n_g, n_atoms * 3, 9, n_gauss, 1, 1, 1]
    host = np.zeros((n_frames, sum(sizes)))
    o = np.cumsum([0] + sizes)
    host[:, o[1] : o[2]] = 1.0  # padded G: |G|² = 1, weight 0
    for i, f in enumerate(frames):
        k, n = len(f["g2"]), len(f["positions"])
        row = host[i]
        row[o[0] : o[0] + 3 * k] = f["m"].reshape(-1)
        row[o[1] : o[1] + k] = f["g2"]
        row[o[2] : o[2] + k] = 2.0
        row[o[3] : o[3] + k] = f["c"].real
        row[o[4] : o[4] + k] = f["c"].imag
        row[o[5] : o[5] + 3 * n] = f["positions"].reshape(-1)
        row[o[6] : o[7]] = f["cell"].reshape(-1)
        row[o[7] : o[8]] = f["radii"]
        row[o[8]], row[o[9]], row[o[10]] = f["gcut"], f["n"], n * n_gauss
    data = torch.from_numpy(host).to(device)
    parts = torch.split(data, sizes, dim=1)
    positions, cell = parts[5].reshape(n_frames, n_atoms, 3), parts[6].reshape(n_frames, 3, 3)
    # fractional coordinates s = L⁻ᵀR (Density.fractional_positions); padded atoms sit at 0 and are masked later
    frac = torch.linalg.solve(cell.transpose(1, 2), positions.transpose(1, 2)).transpose(1, 2)
    return {"miller": parts[0].reshape(n_frames, n_g, 3), "g2": parts[1], "weight": parts[2], "c_re": parts[3],
            "c_im": parts[4], "frac": frac, "radii": parts[7], "gcut": parts[8][:, 0],
            "n_electrons": parts[9][:, 0], "n_coeff": parts[10][:, 0], "n_g": n_g, "n_atoms": n_atoms}


def _fit_group(frames: list[dict], n_gauss: int, solver: str, rtol: float, device: torch.device) -> list[dict]:
    p = _pack(frames, n_gauss, device)
    n_frames, n_g, n_atoms = len(frames), p["n_g"], p["n_atoms"]
    m_max = n_atoms * n_gauss
    miller, g2, weight, c_re, c_im, frac, radii = (p[k] for k in ("miller", "g2", "weight", "c_re", "c_im", "frac",
                                                                   "radii"))
    gcut, n_electrons, n_coeff = p["gcut"], p["n_electrons"], p["n_coeff"]

    with torch.no_grad():
        # W (F, G): per-frame g_c, zero on the padding
        w = _weights(g2, gcut) * weight  # (F, G), zero on the padded G
        root = torch.sqrt(w)
        ghat = torch.exp(-0.25 * g2[:, :, None] * radii[:, None, :] ** 2) * root[..., None]  # √W ĝ (F, G, K)
        angle = (2.0 * math.pi) * torch.remainder(miller @ frac.transpose(1, 2), 1.0)  # (F, G, N)
        atoms = (torch.arange(n_atoms, device=device)[None, :] < (n_coeff / n_gauss)[:, None]).to(g2.dtype)
        mask = atoms.repeat_interleave(n_gauss, dim=1)  # u (F, M): 1 on the real coefficients
        # √W·[ĝ cos; ĝ sin] (F, 2G, M), zero in the columns of padded atoms (so that A = [[A_f, 0], [0, 0]])
        # rows (G, cos|sin) interleaved: e^{iθ} as (cos, sin) pairs, 0 for padded atoms
        phases = torch.stack([torch.cos(angle), torch.sin(angle)], dim=2) * atoms[:, None, None, :]  # (F, G, 2, N)
        # [F | t] with t = √W·(Re C, −Im C): one product gives A = FᵀF, b = Fᵀt and Σ W|C|² = tᵀt
        f = torch.empty(n_frames, 2 * n_g, m_max + 1, dtype=g2.dtype, device=device)
        torch.mul(phases[..., None], ghat[:, :, None, None, :], out=f[..., :m_max].view(n_frames, n_g, 2, n_atoms, n_gauss))
        f[..., m_max] = torch.stack([root * c_re, -root * c_im], dim=2).reshape(n_frames, 2 * n_g)
        gram = f.transpose(1, 2) @ f
        a, b, norm = gram[:, :m_max, :m_max], gram[:, :m_max, m_max], gram[:, m_max, m_max]
        del f, phases, angle
        pad = 1.0 - mask
        scale = torch.diagonal(a, dim1=1, dim2=2).sum(dim=1) / n_coeff  # tr A / M of the real block
        a = a + torch.diag_embed(pad * scale[:, None])
        eig = torch.linalg.eigvalsh(a).cpu().numpy()
        hi = eig[:, -1]
        n_real = n_coeff.long().cpu().numpy()
        scale_h = scale.cpu().numpy()
        real_eigs = [_drop_padding(eig[i], m_max - n_real[i], scale_h[i]) for i in range(n_frames)]
        rank = np.array([int((e > rtol * h).sum()) for e, h in zip(real_eigs, hi)])
        full_rank = rank == n_real
        if solver == "lagrange" and not full_rank.all():
            worst = max(h / e[0] if e[0] > 0 else np.inf for e, h in zip(real_eigs, hi))
            raise SingularMatrixError(
                f"A is singular (condition number {worst:.3g} beyond 1/rtol = {1 / rtol:.3g}); "
                "the explicit-inverse lagrange solver cannot be used, use --solver pinv"
            )
        rhs = torch.stack([b, mask], dim=-1)
        solution = _apply_inverse(a, rhs, full_rank, rtol)
        q_u, a_u = solution[..., 0] * mask, solution[..., 1] * mask
        total_u = q_u.sum(dim=1)
        if solver == "scale":
            if bool((total_u.abs() < 1e-8 * torch.clamp(n_electrons.abs(), min=1.0)).any()):
                raise SingularMatrixError(
                    "the unconstrained total 1ᵀA⁺b is zero, so the scale renormalisation is undefined "
                    "(difference or spin density with ΔN ≈ 0); use --solver pinv or shift"
                )
            q = q_u * (n_electrons / total_u)[:, None]
        elif solver == "shift":
            q = q_u + ((n_electrons - total_u) / n_coeff)[:, None] * mask
        else:
            lam = (total_u - n_electrons) / a_u.sum(dim=1)
            q = q_u - lam[:, None] * a_u
            q = q + ((n_electrons - q.sum(dim=1)) / n_coeff)[:, None] * mask
        quad = ((a @ q[..., None])[..., 0] * q).sum(dim=1)
        residual = ((norm - 2.0 * (b * q).sum(dim=1) + quad) / norm).cpu().numpy()
        q_h, total_h = q.cpu().numpy(), total_u.cpu().numpy()

    return _frame_results(frames, n_gauss, q_h, total_h, real_eigs, rank, n_real, residual)


def _frame_results(frames, n_gauss, q_h, total_h, real_eigs, rank, n_real, residual) -> list[dict]:
    """Per frame the keys of :func:`fit_frames` from the batched solve's host arrays."""
    results = []
    for i, f in enumerate(frames):
        e = real_eigs[i]
        coefficients = q_h[i, : n_real[i]].reshape(-1, n_gauss)
        with np.errstate(divide="ignore"):
            kappa = float(e[-1] / e[0]) if e[0] > 0 else math.inf
        results.append({
            "coefficients": coefficients,
            "populations": coefficients.sum(axis=1),
            "radii": f["radii"],
            "condition_number": kappa,
            "rank": int(rank[i]),
            "n_coefficients": int(n_real[i]),
            "smallest_eigenvalues": e[:3].tolist(),
            "unconstrained_total": float(total_h[i]),
            "renormalisation": f["n"] - float(total_h[i]),
            "n_gvectors": 2 * int(np.count_nonzero(f["g2"] < f["gcut"] ** 2)),
            "fit_residual": float(residual[i]),
        })
    return results


def _weights(g2: torch.Tensor, gcut: torch.Tensor) -> torch.Tensor:
    """Blöchl's W (F, G) with one g_c per frame (:func:`.ddap.bloechl_weight` row by row; padded G have |G|² = 1)."""
    gc2 = gcut[:, None] ** 2
    w = 4.0 * math.pi * (g2 - gc2) ** 2 / (g2 * gc2)
    return torch.where(g2 < gc2, w, torch.zeros_like(w))


def _drop_padding(eigenvalues: np.ndarray, n_pad: int, scale: float) -> np.ndarray:
    """The eigenvalues of the real block: those of the padded matrix less ``n_pad`` copies of s (closest first)."""
    if n_pad == 0:
        return eigenvalues
    drop = np.argsort(np.abs(eigenvalues - scale), kind="stable")[:n_pad]
    return np.delete(eigenvalues, drop)


def _apply_inverse(a: torch.Tensor, rhs: torch.Tensor, full_rank: np.ndarray, rtol: float) -> torch.Tensor:
    """A⁻¹·rhs by one batched Cholesky solve for the frames of full rank, A⁺·rhs (relative cutoff) for the others."""
    out = torch.empty_like(rhs)
    chol = np.flatnonzero(full_rank)
    other = np.flatnonzero(~full_rank)
    if len(chol) == len(a):
        factor, info = torch.linalg.cholesky_ex(a)
        if not bool(info.any()):
            return torch.cholesky_solve(rhs, factor)
    if len(chol):
        index = torch.as_tensor(chol, device=a.device)
        factor, info = torch.linalg.cholesky_ex(a[index])
        failed = info.cpu().numpy() != 0
        out[index] = torch.cholesky_solve(rhs[index], factor)
        other = np.concatenate([other, chol[failed]])
    if len(other):
        index = torch.as_tensor(np.sort(other), device=a.device)
        out[index] = torch.linalg.pinv(a[index], hermitian=True, rtol=rtol) @ rhs[index]
    return out
