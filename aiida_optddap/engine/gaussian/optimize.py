"""opt-DDAP: Adam over (σ_start, f, g_c) from several starting points at once (docs/method.md, "opt-DDAP").

Each parameter is a bounded map of an unconstrained variable, x = lo + (hi − lo)·sigmoid(u), so the
optimiser can never leave the valid region (f → 1 makes A singular; g_c must stay inside the FFT
box and hold enough G vectors). All starts run as one batch. A start stops when its loss changed
by less than ``tolerance`` (relative) over ``patience`` steps, when the rank of A changes (the
pseudo-inverse is not differentiable there: the step is rejected), or on a non-finite loss. The
learning rate decays along a cosine from ``lr`` to ``lr``/1000 over ``steps``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from .ddap import DEFAULT_RTOL, Parameters, Problem, normal_equations, radii_from, solve_charges, spectrum
from .gspace import DEFAULT_GCUT, box_gmax
from .losses import LossTerms
from .restraint import restraint_metric
from .shells import DensityLoss, FitShells

#: Ranges the random starting points are drawn from (clipped to the bounds).
START_RANGES = {"sigma_start": (0.3, 1.0), "factor": (1.2, 2.2), "gcut": (3.0, 6.5)}
NAMES = ("sigma_start", "factor", "gcut")


@dataclass(frozen=True)
class Bounds:
    """Lower and upper limits of σ_start (Å), f and g_c (Å⁻¹)."""

    sigma_start: tuple[float, float]
    factor: tuple[float, float]
    gcut: tuple[float, float]

    def tensors(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        lo = torch.tensor([getattr(self, n)[0] for n in NAMES], dtype=torch.float64, device=device)
        hi = torch.tensor([getattr(self, n)[1] for n in NAMES], dtype=torch.float64, device=device)
        return lo, hi

    def as_dict(self) -> dict:
        return {n: list(getattr(self, n)) for n in NAMES}


def default_bounds(cell: np.ndarray, shape, n_coefficients: int, fit_g2: np.ndarray) -> Bounds:
    """Bounds for a density: σ_start ≥ max(0.2 Å, 2 grid spacings) (no aliasing),
    1.1 ≤ f ≤ 3, g_c below the FFT box and 2× CP2K's default, and above the |G| that the
    M-th G vector reaches (fewer G than coefficients make A rank-deficient)."""
    spacing = float(np.max(np.linalg.norm(cell, axis=1) / np.asarray(shape)))
    g_hi = min(2.0 * DEFAULT_GCUT, 0.98 * box_gmax(cell, shape))
    index = min(len(fit_g2) - 1, math.ceil(n_coefficients / 2))  # half-space count
    g_lo = max(2.0, math.sqrt(float(fit_g2[index])) * 1.01) if len(fit_g2) else 2.0
    return Bounds(sigma_start=(max(0.2, 2.0 * spacing), 1.5), factor=(1.1, 3.0), gcut=(min(g_lo, 0.5 * g_hi), g_hi))


@dataclass
class StartResult:
    """One starting point's outcome: the best parameters it reached and its trajectory."""

    initial: Parameters
    final: Parameters
    loss: float
    populations: np.ndarray
    steps: int
    stop_reason: str
    history: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "initial_parameters": self.initial.as_dict(),
            "parameters": self.final.as_dict(),
            "loss": self.loss,
            "populations": self.populations.tolist(),
            "steps": self.steps,
            "stop_reason": self.stop_reason,
        }


def starting_points(
    first: Parameters,
    bounds: Bounds,
    n_starts: int,
    seed: int,
    accept: Callable[[np.ndarray], bool] | None = None,
    tries: int = 20,
) -> np.ndarray:
    """(n_starts, 3) starting (σ_start, f, g_c): the given parameters, then seeded random draws.

    A random draw that ``accept`` rejects is drawn again (at most ``tries`` times; the last draw
    is kept): :func:`optimize` rejects points where A is rank-deficient, which the rank guard would
    stop at their first step.
    """
    rng = np.random.default_rng(seed)

    def clip(point):
        for j, name in enumerate(NAMES):
            lo, hi = getattr(bounds, name)
            margin = 1e-3 * (hi - lo)
            point[j] = np.clip(point[j], lo + margin, hi - margin)
        return point

    points = [clip(np.array([first.sigma_start, first.factor, first.gcut], dtype=np.float64))]
    for _ in range(n_starts - 1):
        for _ in range(tries):
            point = clip(np.array([rng.uniform(*START_RANGES[n]) for n in NAMES]))
            if accept is None or accept(point):
                break
        points.append(point)
    return np.asarray(points, dtype=np.float64)


def _loss_and_equations(problem: Problem, loss: str, batch: int, n_gauss: int):
    """The outer loss and the normal equations (A, b, norm) of ``problem`` for a batch of ``batch`` parameter sets.

    Shell tables and real-space overlaps (see .shells) give the same A, b and density loss as the chunked G
    sums at a fraction of the cost per step; the chunked sums remain for large cells."""
    fast_loss = loss == "density" and DensityLoss.fits(problem, batch, n_gauss)
    loss_terms = DensityLoss(problem) if fast_loss else LossTerms(problem, loss)
    equations = FitShells(problem).normal_equations if FitShells.fits(problem) else partial(normal_equations, problem)
    return loss_terms, equations


def _full_rank(equations, n_gauss: int, rtol: float, device, point: np.ndarray) -> bool:
    """Whether A is of full rank at the parameters ``point`` (σ_start, f, g_c)."""
    theta = torch.as_tensor(point, device=device)[None]
    with torch.no_grad():
        a = equations(radii_from(theta[:, 0], theta[:, 1], n_gauss), theta[:, 2])[0]
    return int(spectrum(a, rtol).rank[0]) == a.shape[-1]


class _Starts:
    """The bookkeeping of a batch of starts: which still run, why each stopped, its trajectory and best point.

    A start stops on a non-finite loss or (unless ``restrained``) a change of rank of A, and then the step that
    led there is undone; or when its loss changed by less than ``tolerance`` (relative) over ``patience`` steps.
    """

    def __init__(self, starts: int, patience: int, tolerance: float, restrained: bool):
        self.patience, self.tolerance, self.restrained = patience, tolerance, restrained
        self.active = np.ones(starts, dtype=bool)
        self.reasons = ["max_steps"] * starts
        self.histories: list[list[dict]] = [[] for _ in range(starts)]
        self.best = [(math.inf, None, None) for _ in range(starts)]  # (loss, θ, populations)
        self.initial_rank = None

    def best_loss(self) -> float:
        return min(b[0] for b in self.best)

    def record(self, step: int, rows: np.ndarray, theta, values, diag, sol, shape: tuple[int, int],
               unconstrained: torch.Tensor, previous_u: torch.Tensor) -> None:
        """Enter one step of the starts ``rows`` (θ, loss ``values``, spectrum ``diag``, solution ``sol``;
        ``shape`` is (atoms, K)); a start that must stop is put back to ``previous_u``."""
        if self.initial_rank is None:
            self.initial_rank = diag.rank.copy()
        finite = torch.isfinite(values).cpu().numpy()
        theta_np = theta.detach().cpu().numpy()
        values_np = values.detach().cpu().numpy()
        populations = sol.q.detach().reshape(len(rows), *shape).sum(-1).cpu().numpy()
        for r, i in enumerate(rows):
            if not finite[r] or (diag.rank[r] != self.initial_rank[i] and not self.restrained):
                # Reject the step that led here: restore the previous parameters and stop.
                with torch.no_grad():
                    unconstrained[i] = previous_u[i]
                self.active[i] = False
                self.reasons[i] = "non_finite" if not finite[r] else "rank_change"
                continue
            self.histories[i].append(
                {
                    "step": step,
                    **{n: float(theta_np[r, j]) for j, n in enumerate(NAMES)},
                    "loss": float(values_np[r]),
                    "condition_number": float(diag.condition_number[r]),
                    "rank": int(diag.rank[r]),
                    "unconstrained_total": float(sol.unconstrained_total[r].detach()),
                }
            )
            if values_np[r] < self.best[i][0]:
                self.best[i] = (float(values_np[r]), theta_np[r].copy(), populations[r].copy())
            if len(self.histories[i]) > self.patience:
                old = self.histories[i][-1 - self.patience]["loss"]
                if abs(old - values_np[r]) <= self.tolerance * abs(values_np[r]):
                    self.active[i] = False
                    self.reasons[i] = "converged"

    def results(self, points: torch.Tensor, n_gauss: int) -> list[StartResult]:
        """One :class:`StartResult` per start (``points``: the starting parameters)."""
        results = []
        for i, (loss_i, theta_i, pops_i) in enumerate(self.best):
            if theta_i is None:
                raise ArithmeticError(f"start {i}: the loss is not finite at the starting parameters {points[i].tolist()}")
            results.append(
                StartResult(
                    initial=Parameters(*points[i, :2].tolist(), n_gauss, float(points[i, 2])),
                    final=Parameters(float(theta_i[0]), float(theta_i[1]), n_gauss, float(theta_i[2])),
                    loss=loss_i,
                    populations=pops_i,
                    steps=len(self.histories[i]),
                    stop_reason=self.reasons[i],
                    history=self.histories[i],
                )
            )
        return results


def _adam_step(optimizer, schedule, unconstrained: torch.Tensor, values, active: np.ndarray, rows: np.ndarray,
               frozen: torch.Tensor) -> torch.Tensor:
    """One Adam step on the loss of the starts still active (the frozen parameters keep their value); returns
    the variables before the step."""
    device = unconstrained.device
    (values * torch.as_tensor(active[rows], device=device)).sum().backward()
    unconstrained.grad[:, frozen] = 0.0
    previous_u = unconstrained.detach().clone()
    optimizer.step()
    schedule.step()
    with torch.no_grad():  # Adam's momentum would move the stopped starts
        stopped = torch.as_tensor(~active, device=device)
        unconstrained[stopped] = previous_u[stopped]
    return previous_u


def optimize(
    problem: Problem,
    start: Parameters,
    *,
    bounds: Bounds,
    loss: str = "density",
    solver: str = "pinv",
    rtol: float = DEFAULT_RTOL,
    steps: int = 300,
    starts: int = 4,
    lr: float = 0.02,
    tolerance: float = 1e-7,
    patience: int = 10,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
    reference: np.ndarray | None = None,
    tau: float | None = None,
    free: tuple[str, ...] = NAMES,
) -> list[StartResult]:
    """Run Adam from ``starts`` starting points in one batch; returns one result per start.

    With the ``restrained`` solver (``reference`` populations, e, and τ), λ is found by the
    discrepancy principle at every step and held fixed for the gradient; its solution is smooth in
    θ, so rank changes of A neither stop a start nor reject a random starting point. Parameters not
    in ``free`` keep their value from ``start`` in every start.
    """
    restrained = solver == "restrained"
    ref = None if reference is None else torch.as_tensor(np.asarray(reference, dtype=np.float64), device=problem.device)
    device = problem.device
    n_gauss = start.n_gauss
    loss_terms, equations = _loss_and_equations(problem, loss, starts, n_gauss)
    lo, hi = bounds.tensors(device)
    accept = None if restrained else partial(_full_rank, equations, n_gauss, rtol, device)
    frozen = np.array([name not in free for name in NAMES])
    points_np = starting_points(start, bounds, starts, seed, accept=accept)
    points_np[:, frozen] = points_np[0, frozen]
    points = torch.as_tensor(points_np, device=device)
    frozen_t = torch.as_tensor(frozen, device=device)
    unconstrained = torch.logit((points - lo) / (hi - lo)).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([unconstrained], lr=lr)
    # Cosine decay to lr/1000 over the step budget: Adam at a constant rate keeps oscillating about a
    # minimum, so the stopping rule could never be met; decaying steps let each start settle.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=lr / 1000)
    tracker = _Starts(starts, patience, tolerance, restrained)
    previous_u = unconstrained.detach().clone()
    for step in range(steps):
        optimizer.zero_grad()
        rows = np.flatnonzero(tracker.active)  # stopped starts leave the batch
        theta = lo + (hi - lo) * torch.sigmoid(unconstrained[torch.as_tensor(rows, device=device)])
        radii = radii_from(theta[:, 0], theta[:, 1], n_gauss)
        a, b, norm = equations(radii, theta[:, 2])
        diag = spectrum(a, rtol)
        sol = solve_charges(a, b, norm, problem.n_electrons, n_gauss, solver, rtol, diag, ref, tau,
                            with_diagnostics=False)
        values = loss_terms(problem, sol.q, radii)
        tracker.record(step, rows, theta, values, diag, sol, (problem.n_atoms, n_gauss), unconstrained, previous_u)
        if progress is not None:
            progress(step + 1, steps, tracker.best_loss())
        if not tracker.active.any():
            break
        previous_u = _adam_step(optimizer, schedule, unconstrained, values, tracker.active, rows, frozen_t)
    return tracker.results(points, n_gauss)


#: Points of the log-spaced σ_start scan that brackets the global minimum before Brent's method.
SCAN_POINTS = 16
#: Brent's tolerance on σ_start (Å).
SIGMA_XTOL = 1e-7


def minimise_sigma_start(
    problem: Problem,
    start: Parameters,
    *,
    bounds: Bounds,
    loss: str = "density",
    solver: str = "restrained",
    rtol: float = DEFAULT_RTOL,
    reference: np.ndarray | None = None,
    tau: float | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> StartResult:
    """The global minimum of the outer loss over σ_start within its bounds, f and g_c held at ``start``'s.

    A log-spaced scan of :data:`SCAN_POINTS` values brackets the best point, then Brent's bounded method
    (scipy) refines it to :data:`SIGMA_XTOL`. Deterministic and independent of any starting value, so
    the result is a function of the density and (f, g_c) alone; ``history`` holds every evaluation.
    The one-frame case of :func:`minimise_sigma_start_frames`.
    """
    return minimise_sigma_start_frames([problem], start, bounds=bounds, loss=loss, solver=solver, rtol=rtol,
                                       references=[reference], tau=tau, progress=progress)


def _frame_fits(problems: list[Problem], references: list, loss: str, solver: str, n_gauss: int) -> list[tuple]:
    """Per frame: (problem, loss, normal equations, reference populations as a tensor or None, the restraint's
    metric for the ``restrained`` solver or None), for one parameter set at a time."""
    frames = []
    for problem, reference in zip(problems, references):
        like = torch.empty(0, dtype=torch.float64, device=problem.device)
        frames.append((
            problem,
            *_loss_and_equations(problem, loss, 1, n_gauss),
            None if reference is None else torch.as_tensor(np.asarray(reference, dtype=np.float64), device=problem.device),
            restraint_metric(problem.n_atoms * n_gauss, n_gauss, like) if solver == "restrained" else None,
        ))
    return frames


def _scan_then_brent(evaluate: Callable[[float], float], limits: tuple[float, float]) -> bool:
    """Minimise ``evaluate`` over σ_start in ``limits``: a log-spaced scan of :data:`SCAN_POINTS` values brackets
    the best point, then Brent's bounded method (scipy) refines it to :data:`SIGMA_XTOL`. Returns whether Brent
    converged; the caller keeps every evaluation."""
    from scipy.optimize import minimize_scalar

    grid = np.geomspace(*limits, SCAN_POINTS)
    values = [evaluate(x) for x in grid]
    best = int(np.argmin(values))
    if not math.isfinite(values[best]):
        raise ArithmeticError("the loss is not finite anywhere on the σ_start scan")
    left, right = grid[max(best - 1, 0)], grid[min(best + 1, SCAN_POINTS - 1)]
    result = minimize_scalar(evaluate, bounds=(left, right), method="bounded",
                             options={"xatol": SIGMA_XTOL, "maxiter": 40})
    return bool(result.success)


def minimise_sigma_start_frames(
    problems: list[Problem],
    start: Parameters,
    *,
    bounds: Bounds,
    loss: str = "density",
    solver: str = "restrained",
    rtol: float = DEFAULT_RTOL,
    references: list[np.ndarray | None] | None = None,
    tau: float | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> StartResult:
    """One σ_start for many frames: the global minimum of the summed outer loss Σ_frames L_frame(σ_start) within
    ``bounds``, f and g_c held at ``start``'s (issue 9 item 5: one parameter set per dataset).

    The same deterministic search as :func:`minimise_sigma_start` (a log-spaced scan of :data:`SCAN_POINTS`
    values, then Brent's bounded method to :data:`SIGMA_XTOL`), on the sum of every frame's loss at its own
    fit. ``references`` are the restraint's reference populations per frame (e). Returns a
    :class:`StartResult` whose ``loss`` is the summed loss and whose ``populations`` are those of the first
    frame; ``history`` rows carry the summed loss and the first frame's κ(A) and rank.
    """
    if not problems:
        raise ValueError("no frames to optimise over")
    n_gauss = start.n_gauss
    references = references if references is not None else [None] * len(problems)
    if len(references) != len(problems):
        raise ValueError("one reference per frame")
    frames = _frame_fits(problems, references, loss, solver, n_gauss)
    history: list[dict] = []
    cache: dict[float, tuple[float, np.ndarray]] = {}
    total = SCAN_POINTS + 40

    def evaluate(sigma: float) -> float:
        sigma = float(sigma)
        if sigma in cache:
            return cache[sigma][0]
        value, first, first_diag = 0.0, None, None
        for problem, loss_terms, equations, ref, metric in frames:
            opts = {"dtype": torch.float64, "device": problem.device}
            with torch.no_grad():
                radii = radii_from(torch.tensor([sigma], **opts), torch.tensor([start.factor], **opts), n_gauss)
                a, b, norm = equations(radii, torch.tensor([start.gcut], **opts))
                diag = spectrum(a, rtol)
                sol = solve_charges(a, b, norm, problem.n_electrons, n_gauss, solver, rtol, diag, ref, tau,
                                    with_diagnostics=False, metric=metric)
                value += float(loss_terms(problem, sol.q, radii)[0])
            if first is None:
                first = sol.q.reshape(problem.n_atoms, n_gauss).sum(-1).cpu().numpy()
                first_diag = diag
        cache[sigma] = (value if math.isfinite(value) else math.inf, first)
        history.append({"step": len(history), "sigma_start": sigma, "factor": start.factor, "gcut": start.gcut,
                        "loss": value, "condition_number": float(first_diag.condition_number[0]),
                        "rank": int(first_diag.rank[0]), "unconstrained_total": None})
        if progress is not None:
            progress(min(len(history), total), total, min(v for v, _ in cache.values()))
        return cache[sigma][0]

    converged = _scan_then_brent(evaluate, bounds.sigma_start)
    sigma = min(cache, key=lambda s: cache[s][0])
    return StartResult(
        initial=start,
        final=Parameters(sigma, start.factor, n_gauss, start.gcut),
        loss=cache[sigma][0],
        populations=cache[sigma][1],
        steps=len(history),
        stop_reason="converged" if converged else "max_steps",
        history=history,
    )


def joint_bounds(densities, problems: list[Problem], n_gauss: int) -> Bounds:
    """The intersection of :func:`default_bounds` over frames (each frame's σ_start and g_c limits hold)."""
    each = [default_bounds(d.cell, d.grid.shape, d.n_atoms * n_gauss, p.fit.g2.cpu().numpy())
            for d, p in zip(densities, problems)]
    pick = {}
    for name in NAMES:
        lo = max(getattr(b, name)[0] for b in each)
        hi = min(getattr(b, name)[1] for b in each)
        if lo > hi:
            raise ValueError(f"the frames admit no common {name} (bounds {lo:.4g} > {hi:.4g})")
        pick[name] = (lo, hi)
    return Bounds(**pick)
