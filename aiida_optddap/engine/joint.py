"""One parameter set for many frames (issue 9 item 5): σ_start optimised jointly, then every frame fitted with it.

Per-frame optimisation lets σ_start follow each frame, so two frames of nearly equal geometry can be fitted
with different Gaussians and their charges differ by more than the geometry explains. Here σ_start minimises
the summed outer loss of all frames (:func:`.optimize.minimise_sigma_start_frames`, deterministic: a scan
and Brent's method), f and g_c stay at the options' values, and each frame is then fitted by
:func:`.fit.run_fit` at those fixed parameters, so its result (charges, uncertainty, warnings) is the
ordinary ``results.json`` dictionary. The whole is a function of the frames and the options only: the
same frames give the same labels.

For the species-width model (one Gaussian per atom, one width per species, widths joint over frames) see
:func:`.species.fit_species`. :func:`choose_joint_parameters` picks one for a set of frames (the rule of
``optddap.dataset``'s ``joint`` input): each definition's joint fit is its ``Definition.joint``
(engine/definitions.py), and ``auto`` tries the default definition's candidates in their order.
:func:`fit_frames` is the many-frame fit in one call: that choice (or none), then every frame fitted.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import definitions
from .io.density import Density

#: How :func:`choose_joint_parameters` chooses: ``auto`` (the default definition's candidates in order: species
#: where usable, else sigma_start) or one candidate's joint fit, forced.
JOINT_MODES = definitions.joint_modes()


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
    from .fit import FitOptions
    from .pipeline import joint_sigma_start as joint

    densities = list(densities)
    zvals = [None] * len(densities) if zvals is None else list(zvals)
    return joint(densities, FitOptions() if options is None else options, zvals)


def fit_frames_jointly(densities: Sequence[Density], options=None, zvals: Sequence | None = None) -> dict:
    """Optimise σ_start jointly over ``densities`` (:func:`joint_sigma_start`) and fit every frame with it.

    Returns the dict of :func:`joint_sigma_start` with ``results`` (one ``results.json`` dictionary per frame).
    """
    from .gaussian.ddap import resolve_device
    from .fit import FitOptions, run_fit
    from .threads import single_thread, small_on_cpu

    options = FitOptions() if options is None else options
    densities = list(densities)
    zvals = [None] * len(densities) if zvals is None else list(zvals)
    joint = joint_sigma_start(densities, options, zvals)
    fixed = options.with_changes(optimize=False, sigma_start=joint["parameters"]["sigma_start"])
    device = resolve_device(options.device).type
    with single_thread(small_on_cpu(device, max(d.n_atoms for d in densities) * fixed.n_gauss)):
        results = [run_fit(d, fixed, zval=z) for d, z in zip(densities, zvals)]
    return {**joint, "results": results}


def choose_joint_parameters(densities: Sequence[Density], zval: dict, mode: str = "auto", device: str = "cpu") -> dict:
    """One set of fit parameters for all ``densities`` (the frames of a dataset), chosen from the frames only.

    ``mode``: ``shape`` — the shape model with the species widths and one shape per element optimised jointly
    (each frame its own populations);
    ``species`` — the species-width model, widths optimised jointly (:func:`.species.fit_species`);
    ``sigma_start`` — the restrained definition at one joint σ_start (:func:`joint_sigma_start`); ``auto`` —
    the default definition's rule: ``shape`` when no joint width sits on a bound, else ``sigma_start``.
    ``zval``: Z_val (e) of every element of the frames.

    Returns ``{"mode", "n_frames", "model", "fit_parameters", "species"?, "sigma_start"?}``:
    ``fit_parameters`` are the options every frame is then fitted with
    (``FitOptions.for_definition(**fit_parameters)``), the rest the evidence of the choice.
    """
    from .fit import FitOptions

    if mode not in (modes := definitions.joint_modes()):  # the registry now (JOINT_MODES: at import)
        raise ValueError(f"joint mode {mode!r}: use one of {', '.join(modes)}")
    densities = list(densities)
    values = {element: float(value) for element, value in zval.items()}
    missing = sorted({s for d in densities for s in d.symbols} - set(values))
    if missing:
        raise ValueError(f"no Z_val for {', '.join(missing)}")
    joint = [d for d in map(definitions.get, definitions.default().candidates) if d.joint]
    forced = {d.joint_mode: d for d in definitions.joint_definitions()}.get(mode)
    out: dict = {"mode": mode, "n_frames": len(densities)}
    candidates = [forced] if forced else joint
    for definition in candidates:  # the last one is kept whatever its verdict
        fit = definition.joint(densities, values, FitOptions(device=device))
        out[definition.joint_mode] = fit.evidence
        if fit.usable:
            break
    out["model"] = definition.joint_mode
    out["fit_parameters"] = fit.fit_parameters
    return out


def _frame_zvals(densities: list[Density], zval: dict) -> list:
    """One :class:`.zval.ZvalInfo` per frame from ``zval`` (element → e); ValueError naming a missing element."""
    from .io.zval import resolve_zval

    values = {element: float(value) for element, value in zval.items()}
    out = []
    for index, density in enumerate(densities):
        missing = sorted(set(density.symbols) - set(values))
        if missing:
            where = density.metadata.get("path") or f"frame {index}"
            raise ValueError(f"{where}: no Z_val for {', '.join(missing)}")
        out.append(resolve_zval(density, user={s: values[s] for s in dict.fromkeys(density.symbols)}))
    return out


def fit_frames(densities: Sequence[Density], zval: dict, joint: str | None = "auto", options=None) -> dict:
    """Fit many frames: one parameter set chosen from all of them (``joint``), then every frame with it.

    Args:
        densities: the frames (:class:`.density.Density`), e.g. the rattled frames of a training set.
        zval: Z_val (e) of every element of the frames (the neutral reference; CP2K cubes carry none).
        joint: one of :data:`JOINT_MODES` — :func:`choose_joint_parameters` on all frames (``auto``: the rule of
            ``optddap.dataset``'s ``joint`` input), then each frame fitted with the chosen
            ``FitOptions.for_definition(**fit_parameters)``; None — each frame on its own with ``options``.
        options: :class:`.fit.FitOptions` of the frame-by-frame fits (default ``FitOptions()``); with a joint
            mode only its ``device`` is used.

    Returns:
        ``{"results", "model", "choice", "seconds"}``: one ``results.json`` dictionary per frame (in order),
        the model used (the joint mode chosen, or ``options.definition``), the evidence of the joint choice
        (None without one) and the wall seconds of each frame (the choice spread evenly over the frames).

    Raises:
        ValueError: no frames, an unknown ``joint`` mode, or an element of some frame without Z_val.
    """
    import time

    from .fit import FitOptions, run_fit
    from .gaussian.ddap import resolve_device

    densities = list(densities)
    if not densities:
        raise ValueError("fit_frames: no frames")
    options = FitOptions() if options is None else options
    zvals = _frame_zvals(densities, zval)
    start, choice, model = time.perf_counter(), None, options.definition
    if joint is not None:
        device = resolve_device(options.device).type  # "auto" resolved once, for the choice and every frame
        choice = choose_joint_parameters(densities, zval, joint, device=device)
        model, options = choice["model"], FitOptions.for_definition(**choice["fit_parameters"], device=device)
    share = (time.perf_counter() - start) / len(densities)
    results, seconds = [], []
    for density, frame_zval in zip(densities, zvals):
        clock = time.perf_counter()
        results.append(run_fit(density, options, zval=frame_zval))
        seconds.append(time.perf_counter() - clock + share)
    return {"results": results, "model": model, "choice": choice, "seconds": seconds}
