"""The CP2K input beside a cube file: the valence of each kind (the ``-qN`` of a GTH ``POTENTIAL``) and the
total ``CHARGE`` of the cell (``&DFT``), so that a CP2K cube gets Z_val and its declared charge the way a
VASP file gets them from its POTCAR/OUTCAR.

Which input: the ``*.inp`` beside the cube whose name starts the cube's name (``mgo_003.inp`` for
``mgo_003.cube.gz``, ``nacl-ELECTRON_DENSITY-1_0.cube`` for ``nacl.inp``), else the only ``*.inp`` there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .common import error, split_species_label

_Q = re.compile(r"-Q(\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Cp2kInput:
    """What a CP2K input says about the valence.

    Attributes:
        zvals: kind's element → Z_val (electrons), from ``POTENTIAL GTH-…-qN`` (kinds without one are absent).
        potentials: element → the POTENTIAL name, for the Z_val source.
        charge: the ``CHARGE`` keyword (e), or None when the input leaves it at CP2K's default 0.
    """

    zvals: dict[str, float]
    potentials: dict[str, str]
    charge: float | None


def cp2k_input_beside(path) -> Path | None:
    """The CP2K input that wrote the cube ``path`` (see the module docstring), or None."""
    path = Path(path)
    inputs = sorted(path.parent.glob("*.inp"))
    named = [candidate for candidate in inputs if path.name.startswith(candidate.stem)]
    if named:
        return max(named, key=lambda candidate: len(candidate.stem))
    return inputs[0] if len(inputs) == 1 else None


def _element_of(kind: str, element: str | None, path: Path) -> str:
    try:
        return split_species_label((element or kind).capitalize())[0]
    except ValueError:
        raise error(path, f"&KIND {kind}: cannot tell its element (add ELEMENT)") from None


def read_cp2k_input(path) -> Cp2kInput:
    """Read the kinds' GTH valences and the ``CHARGE`` of a CP2K input (``@include`` files are not followed).

    Raises:
        ~aiida_optddap.engine.io.density.DensityError: unreadable, or one element with two valences.
    """
    path = Path(path)
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        raise error(path, f"cannot read the CP2K input ({exc.strerror or exc})") from None
    zvals: dict[str, float] = {}
    potentials: dict[str, str] = {}
    charge = None
    kind = element = potential = None
    for raw in lines:
        words = raw.split("!")[0].split("#")[0].split()
        if not words:
            continue
        key = words[0].upper()
        if key == "&KIND" and len(words) > 1:
            kind, element, potential = words[1], None, None
        elif key == "&END" and len(words) > 1 and words[1].upper() == "KIND" and kind is not None:
            match = _Q.search(potential or "")
            if match:
                name = _element_of(kind, element, path)
                value = float(match[1])
                if zvals.setdefault(name, value) != value:
                    raise error(path, f"{name} has two valences ({zvals[name]:g} and {value:g}) in its kinds")
                potentials[name] = potential
            kind = None
        elif kind is not None and key == "ELEMENT" and len(words) > 1:
            element = words[1]
        elif kind is not None and key == "POTENTIAL" and len(words) > 1:
            potential = words[-1]
        elif kind is None and key == "CHARGE" and len(words) > 1:
            try:
                charge = float(words[1])
            except ValueError:
                raise error(path, f"CHARGE {words[1]!r} is not a number") from None
    return Cp2kInput(zvals, potentials, charge)
