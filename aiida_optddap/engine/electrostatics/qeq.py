"""Charge equilibration (QEq): charges predicted from the geometry, fitted to a dataset's reference charges.

The model (Rappé and Goddard 1991; the charge part of third/fourth-generation neural-network potentials):
for a frame of total charge Q the charges minimise

    E(q) = Σ_i (χ_i q_i + ½ (J_i + s) q_i²) + ½ qᵀ A q   subject to   Σ_i q_i = Q,

with χ (electronegativity, eV/e) and J (hardness, eV/e², ≥ 0) one value per element, A the Coulomb matrix of
Gaussian charges exp(−r²/a²) of one width ``a`` (:func:`.coulomb.coulomb_matrix`: periodic images
included, no self-energy) and s = k √(2/π)/a their self-energy (k = e²/4πε₀). Gaussian charges with J ≥ 0 make
the quadratic form positive definite, so the minimiser is unique: the linear system
[A + diag(J + s), 1; 1ᵀ, 0] [q; −μ] = [−χ; Q].

The solve is dense (the n × n Coulomb matrix from one torch-pme call with n unit-charge channels, then an
O(n³) linear solve): meant for training cells of up to a few thousand atoms.

Forces and stress of E(q*) need no ∂q/∂r: q* is stationary under a constraint that does not depend on the
positions, so they are those of the Coulomb energy at fixed q* (:func:`.coulomb.ewald`; tested against
finite differences of E(q*(r))).

:func:`fit_qeq` fits χ and J to the ``REF_charges`` of a set of frames (least squares over all atoms,
through the linear solve, scipy's least_squares with torch's Jacobian; χ of the first element fixed at 0, since
only differences of χ change q*). Used by
:func:`.electrostatics.add_baseline` and :class:`.electrostatics.ElectrostaticsCalculator` as the
"predicted charges" of the electrostatic baseline. Imports nothing from AiiDA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .coulomb import COULOMB_EV_A, coulomb_matrix, ewald, frame_total_charge

#: Default Gaussian width a (Å) of the QEq charges.
DEFAULT_QEQ_WIDTH = 1.0


def self_energy(width: float) -> float:
    """s = k √(2/π)/a (eV/e²): the self-energy ½ s q² of a Gaussian charge exp(−r²/a²) of width ``a`` (Å)."""
    return COULOMB_EV_A * math.sqrt(2.0 / math.pi) / width


def _solve(hessian, chi, total_charge: float):
    """q* (n,) of min ½ qᵀ H q + χᵀ q subject to Σ q = Q: the KKT system solved in torch (differentiable)."""
    import torch

    n = hessian.shape[0]
    kkt = torch.zeros((n + 1, n + 1), dtype=hessian.dtype)
    kkt[:n, :n] = hessian
    kkt[:n, n] = 1.0
    kkt[n, :n] = 1.0
    rhs = torch.cat([-chi, torch.tensor([float(total_charge)], dtype=hessian.dtype)])
    return torch.linalg.solve(kkt, rhs)[:n]


@dataclass(frozen=True)
class ChargeEquilibration:
    """A QEq model: ``electronegativity`` χ (eV/e) and ``hardness`` J (eV/e², ≥ 0) per element, Gaussian
    ``width`` (Å). ``report`` holds the fit's statistics when it came from :func:`fit_qeq`."""

    electronegativity: dict
    hardness: dict
    width: float = DEFAULT_QEQ_WIDTH
    report: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.width <= 0:
            raise ValueError(f"QEq width {self.width}: must be positive (Å)")
        negative = {k: v for k, v in self.hardness.items() if v < 0}
        if negative:
            raise ValueError(f"QEq hardness must be >= 0 (eV/e²): {negative}")

    def _parameters(self, symbols):
        missing = sorted({s for s in symbols if s not in self.electronegativity or s not in self.hardness})
        if missing:
            raise ValueError(f"no QEq parameters for {', '.join(missing)}")
        chi = np.array([self.electronegativity[s] for s in symbols], dtype=float)
        hard = np.array([self.hardness[s] for s in symbols], dtype=float)
        return chi, hard

    def charges(self, atoms, total_charge: float | None = None) -> np.ndarray:
        """q* (e) of an ase.Atoms; ``total_charge`` default ``atoms.info["total_charge"]`` or 0."""
        import torch

        if total_charge is None:
            total_charge = float(atoms.info.get("total_charge", 0.0))  # a prediction has no reference charges
        chi, hard = self._parameters(atoms.get_chemical_symbols())
        a = coulomb_matrix(atoms.cell[:], atoms.positions, width=self.width, pbc=atoms.pbc)
        h = torch.tensor(a + np.diag(hard + self_energy(self.width)))
        return _solve(h, torch.tensor(chi), total_charge).numpy()

    def energy_forces_stress(self, atoms, accuracy: float = 1e-12) -> dict:
        """E(q*) (eV), forces (eV/Å), stress (eV/Å³, ASE sign; periodic frames) and ``charges`` q* (e)."""
        q = self.charges(atoms)
        chi, hard = self._parameters(atoms.get_chemical_symbols())
        result = ewald(atoms.cell[:], atoms.positions, q, width=self.width, pbc=atoms.pbc, accuracy=accuracy,
                       stress=bool(np.all(atoms.pbc)))
        result["energy"] += float(chi @ q + 0.5 * np.sum((hard + self_energy(self.width)) * q**2))
        result["charges"] = q
        return result

    def as_dict(self) -> dict:
        return {"model": "qeq", "electronegativity": dict(self.electronegativity), "hardness": dict(self.hardness),
                "width": self.width, "units": {"electronegativity": "eV/e", "hardness": "eV/e^2", "width": "Å"},
                "report": self.report}

    @classmethod
    def from_dict(cls, data: dict) -> "ChargeEquilibration":
        return cls(dict(data["electronegativity"]), dict(data["hardness"]), float(data["width"]),
                   dict(data.get("report", {})))


def fit_qeq(frames, *, key: str = "REF_charges", width: float = DEFAULT_QEQ_WIDTH, max_iter: int = 200
            ) -> ChargeEquilibration:
    """χ and J per element minimising Σ (q* − q_ref)² over every atom of ``frames`` (ase.Atoms with ``key``).

    The total charge of a frame is its ``info["total_charge"]`` or the integer nearest Σ q_ref. Returns a
    :class:`ChargeEquilibration` whose ``report`` has ``rmse`` (e), ``rmse_per_element``, ``pearson_r``
    (q* against q_ref over all atoms), ``n_frames``, ``evaluations``, ``converged`` and ``reference_std``
    (the spread of q_ref about its per-element means: what fixed per-element charges leave).
    """
    import torch

    frames = list(frames)
    if not frames:
        raise ValueError("no frames to fit QEq to")
    elements = sorted({s for a in frames for s in a.get_chemical_symbols()})
    s_self = self_energy(width)
    data = []
    for atoms in frames:
        if key not in atoms.arrays:
            raise ValueError(f"frame {atoms.info.get('label', '?')}: no {key}")
        ref = np.asarray(atoms.arrays[key], dtype=float)
        total = frame_total_charge(atoms, key)
        a = coulomb_matrix(atoms.cell[:], atoms.positions, width=width, pbc=atoms.pbc)
        index = torch.tensor([elements.index(s) for s in atoms.get_chemical_symbols()])
        data.append((torch.tensor(a), index, torch.tensor(ref), total))
    n_atoms = sum(len(ref) for _, _, ref, _ in data)
    reference_t = torch.cat([ref for _, _, ref, _ in data])

    def predict(params):
        """Concatenated q* of the frames at params = (χ of elements[1:], ln J of every element)."""
        chi = torch.cat([torch.zeros(1, dtype=torch.float64), params[:len(elements) - 1]])
        hard = torch.exp(params[len(elements) - 1:])
        return torch.cat([_solve(a + torch.diag(hard[idx] + s_self), chi[idx], total) for a, idx, _, total in data])

    # Levenberg–Marquardt-type least squares (scipy's trust-region reflective) with torch's exact Jacobian:
    # the charges depend on J_A + J_B far more than on J_A − J_B, a valley first-order methods crawl along
    # (L-BFGS stopped at 5e-5 e rms on a 6-frame synthetic set; this reaches 1e-12).
    from scipy.optimize import least_squares

    def residuals(x):
        return (predict(torch.tensor(x)) - reference_t).numpy()

    def jacobian(x):
        return torch.autograd.functional.jacobian(predict, torch.tensor(x)).numpy()

    start = np.concatenate([np.zeros(len(elements) - 1), np.full(len(elements), math.log(10.0))])
    solution = least_squares(residuals, start, jac=jacobian, method="trf", x_scale="jac", xtol=1e-15,
                             ftol=1e-15, gtol=1e-15, max_nfev=max_iter)
    params = torch.tensor(solution.x)
    chi = torch.cat([torch.zeros(1, dtype=torch.float64), params[:len(elements) - 1]])
    hard = torch.exp(params[len(elements) - 1:])
    with torch.no_grad():
        q = predict(params)
    predicted = q.numpy()
    reference = np.concatenate([ref.numpy() for _, _, ref, _ in data])
    symbols = np.concatenate([np.array(a.get_chemical_symbols()) for a in frames])
    means = {e: reference[symbols == e].mean() for e in elements}
    residual = reference - np.array([means[s] for s in symbols])
    report = {
        "n_frames": len(frames), "n_atoms": int(n_atoms),
        "rmse": float(np.sqrt(np.mean((predicted - reference) ** 2))),
        "rmse_per_element": {e: float(np.sqrt(np.mean((predicted - reference)[symbols == e] ** 2)))
                             for e in elements},
        "pearson_r": float(np.corrcoef(predicted, reference)[0, 1]),
        "reference_std": float(np.sqrt(np.mean(residual**2))),
        "evaluations": int(solution.nfev),
        "converged": bool(solution.success),
    }
    return ChargeEquilibration({e: float(x) for e, x in zip(elements, chi)},
                               {e: float(x) for e, x in zip(elements, hard)}, width, report)
