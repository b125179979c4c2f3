"""Coulomb energies of atomic charges in a cell: Ewald sums (torch-pme) with forces and stress, and the
Coulomb matrix.

For a frame (cell Å, positions Å, net charges e) :func:`ewald` gives the electrostatic energy (eV), forces
(eV/Å, −∂E/∂r by autograd) and stress (eV/Å³, ASE convention σ = (1/V) ∂E/∂ε, positive is tensile, by
autograd through a homogeneous strain of cell and positions) of

* **point charges** (``width=None``, the default): the Ewald sum of torch-pme's ``EwaldCalculator`` with a
  Coulomb potential split by a Gaussian of ``smearing`` (a convergence parameter only: the result does not
  depend on it). Real-space cutoff and reciprocal cutoff are set from ``accuracy`` (default 1e-12):
  erfc(r_c/(√2 s)) and exp(−k_c² s²/2) are both ≈ ``accuracy``, so the sum is converged to ~1e-12 relative
  (tested against the Madelung constant of rock salt to 1e-10 and against a direct sum).
* **Gaussian charges** ``q_i exp(−r²/a²)/(π^{3/2} a³)`` of one width ``a`` (Å; the engine's Gaussian
  convention): their interaction is q_i q_j erf(r/(√2 a))/r, exactly torch-pme's long-range kernel with
  ``smearing = a``, so the energy is the reciprocal-space sum alone (k_c from ``accuracy``), **without** the
  constant self-energy Σ q_i²/(√(2π) a) of the Gaussians (which does not depend on positions).

A frame with ``pbc`` all False is summed directly (no images); mixed periodicity is refused. A non-neutral
periodic frame gets torch-pme's uniform neutralising background. :func:`coulomb_matrix` gives the matrix A
with E = ½ qᵀAq of the same interaction (the charge-equilibration model of :mod:`.qeq` needs it).

This module imports nothing from AiiDA (and torch only inside the functions).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ("COULOMB_EV_A", "MADELUNG_ROCKSALT", "ewald", "coulomb_matrix", "frame_total_charge")

#: e²/(4π ε0) in eV·Å (torch-pme's ``prefactors.eV_A``).
COULOMB_EV_A = 14.399645478425667
#: Rock salt's Madelung constant (for the tests and the documentation).
MADELUNG_ROCKSALT = 1.747564594633182190636212035544397403481


def _x_for(accuracy: float) -> float:
    """x with erfc(x) ≈ exp(−x²)/(x√π) ≤ accuracy."""
    x = math.sqrt(-math.log(accuracy))
    while math.erfc(x) > accuracy:
        x += 0.05
    return x


def _neighbors(cell: np.ndarray, positions: np.ndarray, cutoff: float):
    from ase.neighborlist import primitive_neighbor_list

    i, j, shifts = primitive_neighbor_list("ijS", (True, True, True), cell, positions, cutoff,
                                           self_interaction=False)
    return i, j, shifts


def _check_frame(cell, positions, n_charges: int, pbc, width):
    """(cell, positions) as float arrays and whether the frame is periodic; ValueError on bad input."""
    cell_np = np.asarray(cell, dtype=float).reshape(3, 3)
    pos_np = np.asarray(positions, dtype=float).reshape(-1, 3)
    if n_charges != pos_np.shape[0]:
        raise ValueError(f"{n_charges} charges for {pos_np.shape[0]} atoms")
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    if pbc.any() and not pbc.all():
        raise ValueError("mixed periodicity is not supported: pbc must be all True or all False")
    if width is not None and width <= 0:
        raise ValueError(f"width {width}: must be positive")
    return cell_np, pos_np, bool(pbc.all())


def _potentials(cell_np, pos_np, pos, cell_t, q, *, width, periodic: bool, smearing, accuracy: float, dtype):
    """Per-atom potentials φ (n × channels, eV/e) of the charge columns ``q`` (n × channels) with
    E = Σ_i q_i φ_i: half the Coulomb potential of the other charges (and images). ``pos``/``cell_t`` are the
    torch tensors to differentiate through; ``cell_np``/``pos_np`` their values (neighbour list, k-vectors)."""
    import torch

    x = _x_for(accuracy)
    n = pos_np.shape[0]
    if not periodic:
        diff = pos.unsqueeze(0) - pos.unsqueeze(1)
        iu = torch.triu_indices(n, n, offset=1)
        r = torch.linalg.norm(diff[iu[0], iu[1]], dim=-1)
        kernel = 1.0 / r if width is None else torch.erf(r / (math.sqrt(2.0) * width)) / r
        pair = torch.zeros((n, n), dtype=dtype)
        pair = pair.index_put((iu[0], iu[1]), COULOMB_EV_A * kernel)
        return 0.5 * (pair + pair.T) @ q
    from torchpme import CoulombPotential, EwaldCalculator
    from torchpme.lib import generate_kvectors_for_ewald

    volume = abs(np.linalg.det(cell_np))
    if width is None:
        s = smearing if smearing is not None else max(1.0, 0.3 * (volume / n) ** (1 / 3) * n ** (1 / 6))
    else:
        s = float(width)
    k_cut = math.sqrt(2.0) * x / s
    potential = CoulombPotential(smearing=s, prefactor=COULOMB_EV_A).to(dtype=dtype)
    calculator = EwaldCalculator(potential, lr_wavelength=2 * math.pi / k_cut, full_neighbor_list=True)
    calculator = calculator.to(dtype=dtype)
    if width is None:
        r_cut = math.sqrt(2.0) * x * s
        i, j, shifts = _neighbors(cell_np, pos_np, r_cut)
        i_t, j_t = torch.tensor(i, dtype=torch.long), torch.tensor(j, dtype=torch.long)
        vectors = pos[j_t] - pos[i_t] + torch.tensor(shifts, dtype=dtype) @ cell_t
        distances = torch.linalg.norm(vectors, dim=-1)
        indices = torch.stack([i_t, j_t], dim=1)
    else:  # Gaussian charges: the long-range kernel is the whole interaction
        indices = torch.zeros((0, 2), dtype=torch.long)
        distances = torch.zeros((0,), dtype=dtype)
    # |n_i| ≤ k_c |a_i| / 2π along b_i; torch-pme's ns counts them all (fftfreq: −ns/2 … ns/2)
    n_max = np.ceil(k_cut * np.linalg.norm(cell_np, axis=1) / (2 * math.pi)).astype(int)
    ns = torch.tensor(2 * n_max + 1, dtype=torch.long)
    kvectors = generate_kvectors_for_ewald(ns=ns, cell=cell_t)
    return calculator.forward(charges=q, cell=cell_t, positions=pos, neighbor_indices=indices,
                              neighbor_distances=distances, kvectors=kvectors)


def ewald(cell, positions, charges, *, width: float | None = None, pbc=True, smearing: float | None = None,
          accuracy: float = 1e-12, forces: bool = True, stress: bool = True, dtype=None) -> dict:
    """Electrostatic energy (eV), forces (eV/Å) and stress (eV/Å³, ASE sign, 3×3) of charges in a cell.

    ``width`` None: point charges; a float: Gaussian charges exp(−r²/a²) of that width (Å). ``smearing``:
    the Ewald splitting width for point charges (default: 1 Å, or larger for big cells); it changes the
    cost, not the result. Returns ``{"energy", "forces", "stress"}`` (numpy; stress None when not periodic).
    """
    import torch

    dtype = dtype or torch.float64
    q_np = np.asarray(charges, dtype=float).ravel()
    cell_np, pos_np, periodic = _check_frame(cell, positions, q_np.shape[0], pbc, width)
    pos0 = torch.tensor(pos_np, dtype=dtype, requires_grad=forces)
    q = torch.tensor(q_np, dtype=dtype).unsqueeze(-1)
    strain = torch.zeros((3, 3), dtype=dtype, requires_grad=stress and periodic)
    deformation = torch.eye(3, dtype=dtype) + strain
    pos = pos0 @ deformation
    cell_t = torch.tensor(cell_np, dtype=dtype) @ deformation
    phi = _potentials(cell_np, pos_np, pos, cell_t, q, width=width, periodic=periodic, smearing=smearing,
                      accuracy=accuracy, dtype=dtype)
    energy = torch.sum(q * phi)

    wrt = [t for t, want in ((pos0, forces), (strain, stress and periodic)) if want]
    grads = list(torch.autograd.grad(energy, wrt)) if wrt else []
    out = {"energy": float(energy.detach()), "forces": None, "stress": None}
    if forces:
        out["forces"] = -grads.pop(0).detach().numpy()
    if stress and periodic:
        sigma = grads.pop(0).detach().numpy() / abs(np.linalg.det(cell_np))
        out["stress"] = 0.5 * (sigma + sigma.T)
    return out


def coulomb_matrix(cell, positions, *, width: float | None = None, pbc=True, smearing: float | None = None,
                   accuracy: float = 1e-12) -> np.ndarray:
    """The symmetric matrix A (n × n, eV/e²) with E = ½ qᵀ A q for any charges q, the interaction of
    :func:`ewald` (point or Gaussian charges, images included, no self-energy of the Gaussians): one torch-pme
    call with the n unit charge vectors as channels."""
    import torch

    dtype = torch.float64
    cell_np, pos_np, periodic = _check_frame(cell, positions, np.asarray(positions).reshape(-1, 3).shape[0],
                                             pbc, width)
    pos, cell_t = torch.tensor(pos_np, dtype=dtype), torch.tensor(cell_np, dtype=dtype)
    unit = torch.eye(pos_np.shape[0], dtype=dtype)
    with torch.no_grad():
        phi = _potentials(cell_np, pos_np, pos, cell_t, unit, width=width, periodic=periodic, smearing=smearing,
                          accuracy=accuracy, dtype=dtype).numpy()
    return phi + phi.T  # φ_ij = ½ A_ij: symmetrised


def frame_total_charge(atoms, key: str = "REF_charges") -> float:
    """A frame's total charge (e): ``info["total_charge"]`` where given, else the integer nearest to Σ ``key``
    (Σ Z_val − N: fitted charges add up to the system's charge to ~1e-6)."""
    if "total_charge" in atoms.info:
        return float(atoms.info["total_charge"])
    return float(round(float(np.sum(atoms.arrays[key]))))
