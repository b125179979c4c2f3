"""One parameter set for many frames (issue 9 item 5): σ_start optimised jointly, then every frame fitted with it.

Per-frame optimisation lets σ_start follow each frame, so two frames of nearly equal geometry can be fitted
with different Gaussians and their charges differ by more than the geometry explains. Here σ_start minimises
the summed outer loss of all frames (:func:`.optimize.minimise_sigma_start_frames`, deterministic: a scan
and Brent's method), f and g_c stay at the options' values, and each frame is then fitted by
:func:`.fit.run_fit` at those fixed parameters, so its result (charges, uncertainty, warnings) is the
ordinary ``results.json`` dictionary. The whole is a function of the frames and the options only: the
same frames give the same labels.

For the species-width model (one Gaussian per atom, one width per species, widths joint over frames) see
:func:`.species.fit_species`.
"""

from __future__ import annotations

from collections.abc import Sequence

from .density import Density


def joint_sigma_start(densities: Sequence[Density], options=None, zvals: Sequence | None = None) -> dict:
    """σ_start minimising the summed outer loss of ``densities`` (f and g_c held at the options' values).

    Args:
        densities: the frames (each a :class:`.density.Density`).
        options: :class:`.fit.FitOptions` (default: the ``restrained`` definition); only σ_start may be free.
        zvals: one :class:`.zval.ZvalInfo` (or None) per frame (the restraint's neutral reference).

    Returns:
        A dict with ``parameters`` (the joint σ_start, f, n_gauss, g_c), ``loss`` (the summed outer loss),
        ``bounds`` (the joint σ_start bounds, Å) and ``history`` (the evaluations).
    """
    from .batch import SERIAL_COEFFICIENTS, _single_thread
    from .ddap import Problem, resolve_device
    from .fit import FitOptions
    from .optimize import joint_bounds, minimise_sigma_start_frames
    from .pipeline import reference_populations

    options = FitOptions() if options is None else options
    densities = list(densities)
    if not densities:
        raise ValueError("no frames")
    zvals = [None] * len(densities) if zvals is None else list(zvals)
    if len(zvals) != len(densities):
        raise ValueError("one Z_val entry per frame")
    if tuple(options.free_parameters) != ("sigma_start",):
        raise NotImplementedError("the joint optimisation frees σ_start only (f and g_c held at the options' values)")
    start = options.parameters
    device = resolve_device(options.device)
    problems = [Problem.build(d, start.gcut, device=device, with_loss_set=True, chunk_size=options.chunk_size,
                              cache_loss_phases=False if options.loss == "density" else None) for d in densities]
    references = None
    if options.solver == "restrained":
        references = [reference_populations(d, z, "absolute", options.reference, options.reference_charges)[0]
                      for d, z in zip(densities, zvals)]
    bounds = joint_bounds(densities, problems, start.n_gauss)
    # Small frames on one CPU thread, as in .batch (measured: 2 frames of 8 atoms, 0.8 s instead of 18 s on two
    # busy cores).
    serial = device.type == "cpu" and max(d.n_atoms for d in densities) * start.n_gauss <= SERIAL_COEFFICIENTS
    with _single_thread(serial):
        chosen = minimise_sigma_start_frames(problems, start, bounds=bounds, loss=options.loss,
                                             solver=options.solver, rtol=options.rtol, references=references,
                                             tau=options.tau)
    return {
        "parameters": chosen.final.as_dict(),
        "loss": chosen.loss,
        "bounds": list(bounds.sigma_start),
        "history": chosen.history,
    }


def fit_frames_jointly(densities: Sequence[Density], options=None, zvals: Sequence | None = None) -> dict:
    """Optimise σ_start jointly over ``densities`` (:func:`joint_sigma_start`) and fit every frame with it.

    Returns the dict of :func:`joint_sigma_start` with ``results`` (one ``results.json`` dictionary per frame).
    """
    from .batch import SERIAL_COEFFICIENTS, _single_thread
    from .ddap import resolve_device
    from .fit import FitOptions, run_fit

    options = FitOptions() if options is None else options
    densities = list(densities)
    zvals = [None] * len(densities) if zvals is None else list(zvals)
    joint = joint_sigma_start(densities, options, zvals)
    fixed = options.with_changes(optimize=False, sigma_start=joint["parameters"]["sigma_start"])
    serial = resolve_device(options.device).type == "cpu" and max(d.n_atoms for d in densities) * fixed.n_gauss <= SERIAL_COEFFICIENTS
    with _single_thread(serial):
        results = [run_fit(d, fixed, zval=z) for d, z in zip(densities, zvals)]
    return {**joint, "results": results}
