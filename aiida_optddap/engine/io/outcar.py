"""The VASP files beside a density that say which potentials were used: POTCAR (labels, ZVAL; read by
pymatgen) and the start of an OUTCAR (TITEL labels, ZVAL, NELECT; read here)."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from .common import READ_ERRORS, compression, error, find_beside, open_text, zopen_path

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[EeDd][-+]?\d+)?"


def read_potcar(path) -> list[tuple[str, str, float]]:
    """``(label, element, ZVAL)`` per species of a POTCAR (read by pymatgen), e.g. ``("Na_pv", "Na", 7.0)``.

    Raises:
        ~aiida_optddap.engine.io.density.DensityError: the POTCAR cannot be parsed.
    """
    from pymatgen.io.vasp.inputs import Potcar

    path = Path(path)
    kind = compression(path)
    try:
        with zopen_path(path, kind) as readable, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pymatgen warns about POTCARs not in its hash database
            potcar = Potcar.from_file(str(readable))
        entries = [(single.symbol, single.element, float(single.zval)) for single in potcar]
    except Exception as exc:  # pymatgen raises many types for a broken POTCAR
        raise error(path, f"cannot read the POTCAR ({type(exc).__name__}: {exc})") from None
    if not entries:
        raise error(path, "no POTCAR data sets found")
    return entries


@dataclass(frozen=True)
class OutcarHeader:
    """What the start of an OUTCAR says about the potentials.

    Attributes:
        labels: POTCAR labels from the ``TITEL`` lines, in species order (``Li_sv``).
        zvals: ``ZVAL`` from the ``POMASS = ...; ZVAL = ...`` lines, in species order (electrons).
        nelect: ``NELECT`` (electrons), or None if the OUTCAR stops before it.
    """

    labels: tuple[str, ...]
    zvals: tuple[float, ...]
    nelect: float | None


_TITEL = re.compile(r"^\s*TITEL\s*=\s*(.*)$")
_POMASS_ZVAL = re.compile(rf"POMASS\s*=\s*{_NUMBER}\s*;\s*ZVAL\s*=\s*({_NUMBER})")
_NELECT = re.compile(rf"^\s*NELECT\s*=\s*({_NUMBER})")


# Hand-written rather than pymatgen's Outcar, which parses the whole file: this reader stops at NELECT,
# near the top. Measured (time.perf_counter, median of 7 vs 3, 2 shared cores; issue 13): 0.63 ms vs 29 ms
# on shared/data/chgcar/lih_atomate_pbesol/OUTCAR, 0.46 vs 20 ms on si_atomate/OUTCAR.gz, 0.24 vs 13 ms on
# graphene_sisl/OUTCAR (43-55x; the gap grows with the ionic steps an OUTCAR holds).
def read_outcar_header(path) -> OutcarHeader:
    """Read TITEL labels, ZVALs and NELECT from an OUTCAR (plain or compressed), stopping at NELECT.

    Raises:
        ~aiida_optddap.engine.io.density.DensityError: the OUTCAR cannot be read.
    """
    path = Path(path)
    labels: list[str] = []
    zvals: list[float] = []
    nelect = None
    try:
        with open_text(path, compression(path)) as handle:
            for text in handle:
                if match := _TITEL.match(text):
                    words = match[1].split()
                    labels.append(words[1] if len(words) > 1 else words[0])
                elif match := _POMASS_ZVAL.search(text):
                    zvals.append(float(match[1]))
                elif match := _NELECT.match(text):
                    nelect = float(match[1])
                    break
    except (*READ_ERRORS, IndexError) as exc:
        raise error(path, f"cannot read the OUTCAR ({type(exc).__name__}: {exc})") from None
    return OutcarHeader(tuple(labels), tuple(zvals), nelect)


def nelect_beside(path: Path) -> float | None:
    outcar = find_beside(path, "OUTCAR")
    return None if outcar is None else read_outcar_header(outcar).nelect
