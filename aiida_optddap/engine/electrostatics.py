"""Electrostatic baseline of atomic charges: Ewald energy, forces and stress (torch-pme), and an ASE calculator.

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

Why point charges are the default for the baseline: they are the exact long-range limit, need no width, and
Gaussian charges differ from them only by q_i q_j erfc(r/(√2 a))/r, a short-ranged pair term that is
< 1e-4 of the point-charge term beyond r ≈ 5.5 a, i.e. inside a MACE cutoff of 5 Å for a ≤ 0.9 Å, so the
short-range model learns either. Gaussian charges are offered for models whose short-range part must stay
smooth at very short distances (no 1/r divergence).

A frame with ``pbc`` all False is summed directly (no images); mixed periodicity is refused.
A non-neutral periodic frame gets torch-pme's uniform neutralising background.

:class:`ElectrostaticsCalculator` is an ASE calculator with charges fixed per element (e.g. the mean per
element of a dataset, :func:`per_element_charges`); :func:`with_electrostatics` adds it to another calculator
(a MACE model trained on the short-range residual REF − E_elec) with ASE's ``SumCalculator``.

This module imports nothing from AiiDA.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = (
    "COULOMB_EV_A",
    "ewald",
    "frame_electrostatics",
    "per_element_charges",
    "charges_for",
    "add_baseline",
    "ElectrostaticsCalculator",
    "with_electrostatics",
)

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


def ewald(cell, positions, charges, *, width: float | None = None, pbc=True, smearing: float | None = None,
          accuracy: float = 1e-12, forces: bool = True, stress: bool = True, dtype=None) -> dict:
    """Electrostatic energy (eV), forces (eV/Å) and stress (eV/Å³, ASE sign, 3×3) of charges in a cell.

    ``width`` None: point charges; a float: Gaussian charges exp(−r²/a²) of that width (Å). ``smearing``:
    the Ewald splitting width for point charges (default: 1 Å, or larger for big cells); it changes the
    cost, not the result. Returns ``{"energy", "forces", "stress"}`` (numpy; stress None when not periodic).
    """
    import torch

    dtype = dtype or torch.float64
    cell_np = np.asarray(cell, dtype=float).reshape(3, 3)
    pos_np = np.asarray(positions, dtype=float).reshape(-1, 3)
    q_np = np.asarray(charges, dtype=float).ravel()
    if q_np.shape[0] != pos_np.shape[0]:
        raise ValueError(f"{q_np.shape[0]} charges for {pos_np.shape[0]} atoms")
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    if pbc.any() and not pbc.all():
        raise ValueError("mixed periodicity is not supported: pbc must be all True or all False")
    periodic = bool(pbc.all())
    if width is not None and width <= 0:
        raise ValueError(f"width {width}: must be positive")

    pos0 = torch.tensor(pos_np, dtype=dtype, requires_grad=forces)
    cell0 = torch.tensor(cell_np, dtype=dtype)
    q = torch.tensor(q_np, dtype=dtype).unsqueeze(-1)
    strain = torch.zeros((3, 3), dtype=dtype, requires_grad=stress and periodic)
    deformation = torch.eye(3, dtype=dtype) + strain
    pos = pos0 @ deformation
    cell_t = cell0 @ deformation
    x = _x_for(accuracy)

    if not periodic:
        diff = pos.unsqueeze(0) - pos.unsqueeze(1)
        n = len(q_np)
        iu = torch.triu_indices(n, n, offset=1)
        r = torch.linalg.norm(diff[iu[0], iu[1]], dim=-1)
        kernel = 1.0 / r if width is None else torch.erf(r / (math.sqrt(2.0) * width)) / r
        energy = COULOMB_EV_A * torch.sum(q[iu[0], 0] * q[iu[1], 0] * kernel)
    else:
        from torchpme import CoulombPotential, EwaldCalculator
        from torchpme.lib import generate_kvectors_for_ewald

        volume = abs(np.linalg.det(cell_np))
        if width is None:
            s = smearing if smearing is not None else max(1.0, 0.3 * (volume / len(q_np)) ** (1 / 3)
                                                          * len(q_np) ** (1 / 6))
        else:
            s = float(width)
        k_cut = math.sqrt(2.0) * x / s
        potential = CoulombPotential(smearing=s, prefactor=COULOMB_EV_A)
        potential = potential.to(dtype=dtype)
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
        phi = calculator.forward(charges=q, cell=cell_t, positions=pos, neighbor_indices=indices,
                                 neighbor_distances=distances, kvectors=kvectors)
        energy = torch.sum(q * phi)

    wrt = [t for t, want in ((pos0, forces), (strain, stress and periodic)) if want]
    grads = torch.autograd.grad(energy, wrt) if wrt else []
    out = {"energy": float(energy.detach()), "forces": None, "stress": None}
    grads = list(grads)
    if forces:
        out["forces"] = -grads.pop(0).detach().numpy()
    if stress and periodic:
        volume = abs(np.linalg.det(cell_np))
        sigma = grads.pop(0).detach().numpy() / volume
        out["stress"] = 0.5 * (sigma + sigma.T)
    return out


def frame_electrostatics(atoms, charges=None, **kwargs) -> dict:
    """:func:`ewald` for an ase.Atoms (charges default to its ``REF_charges``)."""
    if charges is None:
        charges = atoms.arrays["REF_charges"]
    return ewald(atoms.cell[:], atoms.positions, charges, pbc=atoms.pbc, **kwargs)


def per_element_charges(frames, key: str = "REF_charges") -> dict:
    """Per element over all frames: ``{"Na": {"mean", "std", "min", "max", "count"}, ...}`` (e)."""
    values: dict[str, list] = {}
    for atoms in frames:
        for symbol, q in zip(atoms.get_chemical_symbols(), atoms.arrays[key]):
            values.setdefault(symbol, []).append(float(q))
    return {symbol: {"mean": float(np.mean(v)), "std": float(np.std(v)), "min": float(np.min(v)),
                     "max": float(np.max(v)), "count": len(v)} for symbol, v in sorted(values.items())}


def charges_for(atoms, charges: dict) -> np.ndarray:
    """Per-atom charges from ``{"Na": 0.8, ...}`` or ``{"Na": {"mean": 0.8, ...}, ...}``."""
    table = {k: (v["mean"] if isinstance(v, dict) else float(v)) for k, v in charges.items()}
    missing = sorted(set(atoms.get_chemical_symbols()) - set(table))
    if missing:
        raise ValueError(f"no charge for {', '.join(missing)} (charges known for {', '.join(sorted(table))})")
    return np.array([table[s] for s in atoms.get_chemical_symbols()])


def add_baseline(frames, *, charges: str | dict = "per_element", width: float | None = None,
                 accuracy: float = 1e-12) -> tuple[list, dict]:
    """Copies of ``frames`` with ``E_elec`` (info, eV), ``F_elec`` (arrays, eV/Å), ``S_elec`` (info, 9 numbers,
    eV/Å³, ASE sign; periodic frames) and the short-range residual ``SR_energy``/``SR_forces``/``SR_stress``
    = REF − elec where the frame has REF_energy/REF_forces/REF_stress.

    ``charges``: ``"per_element"`` (default: each element's mean ``REF_charges`` over the frames — what
    :class:`ElectrostaticsCalculator` uses at inference, so training target and inference agree),
    ``"frame"`` (each frame's own fitted charges: for analysis or a charge-predicting model) or a dict of
    fixed charges per element. Returns ``(frames, summary)``; ``summary`` has the per-element statistics
    and the settings.
    """
    frames = [a.copy() for a in frames]
    stats = per_element_charges(frames)
    fixed = None
    if isinstance(charges, dict):
        fixed = charges
    elif charges == "per_element":
        fixed = stats
    elif charges != "frame":
        raise ValueError(f"charges {charges!r}: 'per_element', 'frame' or a dict per element")
    for atoms in frames:
        q = atoms.arrays["REF_charges"] if fixed is None else charges_for(atoms, fixed)
        result = frame_electrostatics(atoms, q, width=width, accuracy=accuracy)
        atoms.info["E_elec"] = result["energy"]
        atoms.arrays["F_elec"] = result["forces"]
        if "REF_energy" in atoms.info:
            atoms.info["SR_energy"] = float(atoms.info["REF_energy"]) - result["energy"]
        if "REF_forces" in atoms.arrays:
            atoms.arrays["SR_forces"] = atoms.arrays["REF_forces"] - result["forces"]
        if result["stress"] is not None:
            atoms.info["S_elec"] = result["stress"].ravel()
            if "REF_stress" in atoms.info:
                atoms.info["SR_stress"] = np.asarray(atoms.info["REF_stress"], dtype=float).ravel() \
                    - result["stress"].ravel()
    summary = {
        "method": "ewald (torch-pme)" if width is None else "gaussian charges (torch-pme reciprocal sum)",
        "charges": charges if isinstance(charges, str) else "fixed",
        "width": width,
        "accuracy": accuracy,
        "per_element": stats,
        "element_charges": {k: (v["mean"] if isinstance(v, dict) else float(v)) for k, v in fixed.items()}
        if fixed is not None else None,
    }
    return frames, summary


try:
    from ase.calculators.calculator import Calculator as _AseCalculator
    from ase.calculators.calculator import all_changes as _all_changes
except ImportError:  # pragma: no cover - ase is a dependency
    _AseCalculator, _all_changes = object, None


class ElectrostaticsCalculator(_AseCalculator):
    """ASE calculator: the Ewald energy/forces/stress of charges fixed per element.

    ``charges``: ``{"Na": 0.81, "Cl": -0.81}`` or the output of :func:`per_element_charges` (its means are
    used); ``width``: None (point charges) or a Gaussian width (Å), as in :func:`ewald`.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, charges: dict, width: float | None = None, accuracy: float = 1e-12, **kwargs):
        super().__init__(**kwargs)
        self.element_charges = {k: (v["mean"] if isinstance(v, dict) else float(v)) for k, v in charges.items()}
        self.width = width
        self.accuracy = accuracy

    def calculate(self, atoms=None, properties=("energy",), system_changes=_all_changes):
        super().calculate(atoms, properties, system_changes)
        q = charges_for(self.atoms, self.element_charges)
        want_stress = "stress" in properties and bool(np.all(self.atoms.pbc))
        result = ewald(self.atoms.cell[:], self.atoms.positions, q, width=self.width, pbc=self.atoms.pbc,
                       accuracy=self.accuracy, stress=want_stress)
        self.results["energy"] = self.results["free_energy"] = result["energy"]
        self.results["forces"] = result["forces"]
        if result["stress"] is not None:
            s = result["stress"]
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


def with_electrostatics(calculator, charges: dict, width: float | None = None, **kwargs):
    """``calculator`` (e.g. a MACECalculator trained on SR_* = REF − E_elec) plus the electrostatics of
    ``charges`` per element: an ASE ``SumCalculator``."""
    from ase.calculators.mixing import SumCalculator

    return SumCalculator([calculator, ElectrostaticsCalculator(charges, width=width, **kwargs)])
