"""``optddap.joint_parameters``: one set of fit parameters for all frames of a dataset (issue 9, item 5).

Per-frame optimisation lets the Gaussians follow each frame, so two frames of nearly equal geometry can be
fitted with different models and their charges jump (docs/validation.md, "Smoothness in geometry"). This
calcfunction reads every frame's density and chooses the parameters once, as a function of the frames only
(:func:`aiida_optddap.engine.joint.choose_joint_parameters`):

* ``species`` — the species-width model (:func:`aiida_optddap.engine.species.widths.fit_species`): one Gaussian per
  atom, one width per element, the widths optimised jointly over the frames;
* ``sigma_start`` — the restrained default with one σ_start for all frames
  (:func:`aiida_optddap.engine.joint.joint_sigma_start`);
* ``auto`` (default) — ``species`` when that model places every element (no width on a bound:
  ``SpeciesFit.usable``), else ``sigma_start``.

The output Dict holds ``fit_parameters``, the ``optddap.fit`` parameters every frame is then fitted with
(``{"definition": "species", "species_widths": {...}}`` or ``{"definition": "restrained", "optimize":
False, "sigma_start": ...}``), and the evidence of the choice (model, widths or σ_start, misfit, bounds); densities that cannot be read are
left out of the choice and listed under ``unreadable`` (their own fits then fail and are reported).
Like ``optddap.fit_inline`` it runs in this Python process (the engine is imported lazily).
"""

from __future__ import annotations

import pathlib
import tempfile

from aiida import orm
from aiida.engine import calcfunction

from ..engine.joint import JOINT_MODES
from .inline import density_file

__all__ = ("JOINT_MODES", "joint_parameters")


def _read(node: orm.SinglefileData, directory: pathlib.Path, index: int):
    from aiida_optddap.engine.io import read_density  # lazy: the engine imports torch

    return read_density(density_file(node, directory, prefix=f"{index:04d}_"))


@calcfunction
def joint_parameters(parameters: orm.Dict, zval: orm.Dict, **densities: orm.SinglefileData) -> orm.Dict:
    """The fit parameters shared by the frames ``densities`` (see the module docstring).

    :param parameters: ``mode`` (``auto``, ``species`` or ``sigma_start``) and optionally ``device``.
    :param zval: Z_val (e) of every element of the frames (the neutral reference; no fallback table).
    """
    from aiida_optddap.engine.joint import choose_joint_parameters

    params = parameters.get_dict()
    mode = params.get("mode", "auto")
    if mode not in JOINT_MODES:
        raise ValueError(f"joint mode {mode!r}: use one of {', '.join(JOINT_MODES)}")
    frames, unreadable = [], {}
    with tempfile.TemporaryDirectory(prefix="optddap-joint-") as tmpdir:
        for i, (label, node) in enumerate(sorted(densities.items())):
            try:
                frames.append(_read(node, pathlib.Path(tmpdir), i))
            except ValueError as exc:  # DensityError too: that frame's own fit fails and reports it
                unreadable[label] = str(exc)
    if not frames:  # nothing to choose from: every frame's own fit will fail and say why
        return orm.Dict({"mode": mode, "n_frames": 0, "unreadable": unreadable, "model": None, "fit_parameters": {}})
    choice = choose_joint_parameters(frames, zval.get_dict(), mode, params.get("device", "cpu"))
    return orm.Dict({**choice, "unreadable": unreadable})
