"""One parameter set for many frames (issue 9 item 5): σ_start optimised jointly, then every frame fitted with it.

Per-frame optimisation lets σ_start follow each frame, so two frames of nearly equal geometry can be fitted
with different Gaussians and their charges differ by more than the geometry explains. Here σ_start minimises
the summed outer loss of all frames (:func:`.optimize.minimise_sigma_start_frames`, deterministic: a scan
and Brent's method), f and g_c stay at the options' values, and each frame is then fitted by
:func:`.fit.run_fit` at those fixed parameters, so its result (charges, uncertainty, warnings) is the
ordinary ``results.json`` dictionary. The whole is a function of the frames and the options only: the
same frames give the same labels.

For the species-width model (one Gaussian per atom, one width per species, widths joint over frames) see
:func:`.species.fit_species`. :func:`choose_joint_parameters` picks between the two for a set of frames (the
rule of ``optddap.dataset``'s ``joint`` input).
"""

from __future__ import annotations

from collections.abc import Sequence

from .density import Density

#: How :func:`choose_joint_parameters` chooses: ``auto`` (species where usable, else sigma_start) or forced.
JOINT_MODES = ("auto", "species", "sigma_start")


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


def choose_joint_parameters(densities: Sequence[Density], zval: dict, mode: str = "auto", device: str = "cpu") -> dict:
    """One set of fit parameters for all ``densities`` (the frames of a dataset), chosen from the frames only.

    ``mode``: ``species`` — the species-width model, widths optimised jointly (:func:`.species.fit_species`);
    ``sigma_start`` — the restrained definition at one joint σ_start (:func:`joint_sigma_start`); ``auto`` —
    ``species`` when that model places every element (``SpeciesFit.usable``: no width on a bound), else
    ``sigma_start``. ``zval``: Z_val (e) of every element of the frames.

    Returns ``{"mode", "n_frames", "model", "fit_parameters", "species"?, "sigma_start"?}``:
    ``fit_parameters`` are the options every frame is then fitted with
    (``FitOptions.for_definition(**fit_parameters)``), the rest the evidence of the choice.
    """
    from .fit import FitOptions
    from .species import fit_species
    from .zval import resolve_zval

    if mode not in JOINT_MODES:
        raise ValueError(f"joint mode {mode!r}: use one of {', '.join(JOINT_MODES)}")
    densities = list(densities)
    values = {element: float(value) for element, value in zval.items()}
    missing = sorted({s for d in densities for s in d.symbols} - set(values))
    if missing:
        raise ValueError(f"no Z_val for {', '.join(missing)}")
    out: dict = {"mode": mode, "n_frames": len(densities)}
    if mode in ("auto", "species"):
        fit = fit_species(densities, values, device=device)
        out["species"] = {"widths": fit.widths, "misfit": fit.misfit, "at_bound": fit.at_bound, "usable": fit.usable}
        if fit.usable or mode == "species":
            out["model"] = "species"
            out["fit_parameters"] = {"definition": "species", "species_widths": fit.widths}
            return out
    zvals = [resolve_zval(d, user={s: values[s] for s in dict.fromkeys(d.symbols)}) for d in densities]
    joint = joint_sigma_start(densities, FitOptions(device=device), zvals)
    out["model"] = "sigma_start"
    out["sigma_start"] = {"parameters": joint["parameters"], "loss": joint["loss"], "bounds": joint["bounds"]}
    out["fit_parameters"] = {"definition": "restrained", "optimize": False,
                             "sigma_start": float(joint["parameters"]["sigma_start"])}
    return out
