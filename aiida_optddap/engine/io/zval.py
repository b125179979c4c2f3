"""Valence charges Z_val per element, so that net charges Q = Z_val − p can be reported (docs/conventions.md,
"Populations, net charges and electronic charges"). One resolver for every door: the ``optddap`` CLI, the
Python API (:func:`~aiida_optddap.engine.fit.run_fit` with ``zval=None`` on a density read from a file), the
``optddap.fit`` CalcJob (it copies the POTCAR/OUTCAR/CP2K input it was given beside the density) and the dataset.

Precedence, per element:

1. the user's mapping (``--zval``, the ``zval`` input) — source ``user``;
2. a POTCAR beside the density file (VASP files) — ``POTCAR``;
3. an OUTCAR beside it (VASP files) — ``OUTCAR``;
4. the CP2K input beside a cube file (``POTENTIAL GTH-…-qN`` of each kind) — ``CP2K input (<potential>)``;
5. only when asked (``guess=True``: ``--guess-zval``, ``guess_zval``), pymatgen's bundled POTCAR summary for
   VASP files (keyed by the POTCAR label the file names, such as ``Na_pv``, else by the element's standard
   POTCAR) — ``pymatgen POTCAR summary (<label>)``, listed in :attr:`ZvalInfo.guessed`.

Every value must lie in 0 < Z_val ≤ Z (the atomic number); anything else is refused with a one-line
``invalid valence:`` message (:data:`INVALID_VALENCE`).
"""

from __future__ import annotations

import bz2
import functools
import importlib.util
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase.data import atomic_numbers

from .density import Density
from . import (
    cp2k_input_beside, find_beside, read_cp2k_input, read_outcar_header, read_potcar, split_species_label,
)

# newest PBE sets first: the summary disagrees between sets only for a few GW potentials
_FUNCTIONAL_ORDER = ("PBE_64", "PBE_54", "PBE_52", "PBE")
#: The first words of every refusal of a valence count (the AiiDA parser maps them to 307 ERROR_INVALID_VALENCE).
INVALID_VALENCE = "invalid valence: "
#: The source prefix of a guessed value (the fallback table, only with ``guess=True``).
GUESSED_SOURCE = "pymatgen POTCAR summary"


@dataclass(frozen=True)
class ZvalInfo:
    """Valence charge per element and where each value came from.

    Attributes:
        values: element symbol → Z_val (electrons).
        source: element symbol → "user", "POTCAR", "OUTCAR", "CP2K input (<potential>)" or
            "pymatgen POTCAR summary (<label>)" (guessed).
    """

    values: dict[str, float]
    source: dict[str, str]

    @property
    def guessed(self) -> list[str]:
        """The elements whose Z_val came from the fallback table (``guess=True``)."""
        return [element for element, source in self.source.items() if source.startswith(GUESSED_SOURCE)]

    def describe(self) -> str:
        """``Li Z_val 3 (OUTCAR), H Z_val 1 (OUTCAR)``: each element, its Z_val and its source."""
        return ", ".join(f"{el} Z_val {self.values[el]:g} ({self.source[el]})" for el in self.values)

    def per_atom(self, symbols) -> np.ndarray:
        """Z_val (electrons) for each atom of ``symbols``; ValueError naming an element without one."""
        missing = [symbol for symbol in dict.fromkeys(symbols) if symbol not in self.values]
        if missing:
            raise ValueError(f"no Z_val known for {', '.join(missing)}")
        return np.array([self.values[symbol] for symbol in symbols], dtype=np.float64)


def _element(symbol: str) -> str:
    """The element symbol with standard capitalisation, or ValueError."""
    name = symbol.strip().capitalize()
    if name not in atomic_numbers or name == "X":
        raise ValueError(f"unknown element {symbol.strip()!r} for --zval")
    return name


def _positive(element: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"Z_val for {element} must be a positive number, got {value!r}")
    return number


def check_range(element: str, value: float, source: str) -> None:
    """ValueError (``invalid valence: …``) unless 0 < Z_val ≤ Z, the atomic number of ``element``."""
    limit = atomic_numbers[element]
    if not 0 < value <= limit:
        raise ValueError(f"{INVALID_VALENCE}{element} Z_val {value:g} ({source}) is outside 0 < Z_val <= {limit} "
                         f"(its atomic number)")


def parse_zval_option(text: str) -> dict[str, float]:
    """Parse ``"Na=7,Cl=7"`` (commas, semicolons or spaces between entries) into ``{"Na": 7.0, "Cl": 7.0}``.

    Raises:
        ValueError: empty text, an entry that is not SYMBOL=VALUE, an unknown element, a value that is
            not a positive number, or an element given twice.
    """
    entries = [entry for entry in re.split(r"[,;\s]+", re.sub(r"\s*=\s*", "=", text.strip())) if entry]
    if not entries:
        raise ValueError("empty --zval option: expected SYMBOL=VALUE pairs such as 'Na=7,Cl=7'")
    values: dict[str, float] = {}
    for entry in entries:
        symbol, equals, value = entry.partition("=")
        if not equals or not symbol or not value or "=" in value:
            raise ValueError(f"bad --zval entry {entry!r}: expected SYMBOL=VALUE pairs such as 'Na=7,Cl=7'")
        element = _element(symbol)
        if element in values:
            raise ValueError(f"--zval gives {element} twice")
        values[element] = _positive(element, value)
    return values


def potcar_stats_path() -> Path:
    """pymatgen's POTCAR summary file (``pymatgen.io.vasp.inputs.POTCAR_STATS_PATH``), found without importing
    pymatgen.io.vasp, whose import costs 1.2-1.4 s (see :func:`.vasp._read_blocks`)."""
    spec = importlib.util.find_spec("pymatgen")
    return Path(spec.submodule_search_locations[0]) / "io" / "vasp" / "potcar-summary-stats.json.bz2"


#: Where :func:`_summary_zvals` keeps its label → ZVAL table (under ``$XDG_CACHE_HOME``, default ``~/.cache``).
CACHE_FOLDER = "aiida-optddap"


@functools.cache
def _summary_zvals() -> dict[str, float]:
    """POTCAR label → ZVAL from pymatgen's potcar-summary-stats.json.bz2 (first set in _FUNCTIONAL_ORDER).

    Kept after the first read as a small JSON file in the user's cache folder, named by the summary's size and
    modification time (another pymatgen gives another file): decompressing and parsing the summary costs 0.23 s,
    40 % of the in-process time of ``optddap fit examples/NaMgF3_CHG.gz --guess-zval``; the cached table loads
    in < 1 ms. A cache that cannot be read or written is ignored."""
    source = potcar_stats_path()
    stat = source.stat()
    cache = _cache_folder() / f"potcar-zvals-{stat.st_size}-{stat.st_mtime_ns}.json"
    try:
        return {str(label): float(zval) for label, zval in json.loads(cache.read_text(encoding="utf-8")).items()}
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    zvals = _zvals_of_summary(source)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=cache.parent, suffix=".tmp", delete=False,
                                         encoding="utf-8") as handle:
            json.dump(zvals, handle)
        os.replace(handle.name, cache)  # atomic: a concurrent reader sees the whole table or none
    except OSError:
        pass
    return zvals


def _cache_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / CACHE_FOLDER


def _zvals_of_summary(source: Path) -> dict[str, float]:
    """POTCAR label → ZVAL read from the summary file itself (first set in _FUNCTIONAL_ORDER)."""
    with bz2.open(source, "rt", encoding="utf-8") as handle:
        stats = json.load(handle)
    order = [*_FUNCTIONAL_ORDER, *(name for name in stats if name not in _FUNCTIONAL_ORDER)]
    zvals: dict[str, float] = {}
    for functional in order:
        for variants in stats.get(functional, {}).values():
            for variant in variants:
                zvals.setdefault(variant["symbol"], float(variant["ZVAL"]))
    return zvals


def _per_element(entries, elements: list[str], origin, kind: str) -> dict[str, tuple[float, str]]:
    """Map (label, element, ZVAL) per species onto the density's elements, checking they agree."""
    found: dict[str, tuple[float, str]] = {}
    for label, element, zval in entries:
        if element in found and found[element][0] != zval:
            raise ValueError(
                f"{origin}: {element} appears with Z_val {found[element][0]:g} and {zval:g} ({label}); "
                "give one with --zval"
            )
        found[element] = (zval, kind)
    if set(found) != set(elements):
        raise ValueError(
            f"{origin}: {kind} species ({', '.join(found)}) do not match "
            f"the density's ({', '.join(elements)})"
        )
    return found


def _from_cp2k(path, elements: list[str]) -> dict[str, tuple[float, str]] | None:
    """Z_val from the CP2K input beside the cube ``path`` (its kinds' GTH ``-qN``); None without one."""
    found = cp2k_input_beside(path)
    if found is None:
        return None
    record = read_cp2k_input(found)
    return {el: (record.zvals[el], f"CP2K input ({record.potentials[el]})")
            for el in elements if el in record.zvals}


def _from_files(path, elements: list[str]) -> dict[str, tuple[float, str]] | None:
    """Z_val from a POTCAR, else an OUTCAR, beside ``path``; None when neither is there."""
    potcar = find_beside(path, "POTCAR")
    if potcar is not None:
        return _per_element(read_potcar(potcar), elements, potcar, "POTCAR")
    outcar = find_beside(path, "OUTCAR")
    if outcar is None:
        return None
    header = read_outcar_header(outcar)
    if not header.zvals:
        return None
    if len(header.labels) != len(header.zvals):
        raise ValueError(f"{outcar}: {len(header.labels)} TITEL lines but {len(header.zvals)} ZVAL values")
    entries = [
        (label, split_species_label(label)[0], zval)
        for label, zval in zip(header.labels, header.zvals, strict=True)
    ]
    return _per_element(entries, elements, outcar, "OUTCAR")


def _from_summary(density: Density, elements: list[str]) -> dict[str, tuple[float, str]]:
    """Z_val from pymatgen's POTCAR summary, by the file's POTCAR label or the bare element symbol."""
    labels = density.potcar_labels or density.symbols
    zvals = _summary_zvals()
    found: dict[str, tuple[float, str]] = {}
    for element in elements:
        wanted = sorted(
            {label for symbol, label in zip(density.symbols, labels, strict=True) if symbol == element}
        )
        known = {label: zvals[label] for label in wanted if label in zvals}
        if len(known) != len(wanted):
            continue
        if len(set(known.values())) > 1:
            raise ValueError(
                f"{density.source}: POTCARs {', '.join(known)} of {element} have different Z_val; "
                "give one with --zval"
            )
        found[element] = (known[wanted[0]], f"{GUESSED_SOURCE} ({', '.join(wanted)})")
    return found


def resolve_zval(
    density: Density, *, path=None, user: Mapping[str, float] | str | None = None, guess: bool = False
) -> ZvalInfo | None:
    """Valence charges for the elements of ``density``, by the precedence in the module docstring.

    Args:
        density: the density whose elements need Z_val.
        path: the density file, whose folder holds the POTCAR/OUTCAR (VASP) or CP2K input (cube); default:
            where :func:`~aiida_optddap.engine.io.read_density` read ``density`` from (``metadata["path"]``).
            An AECCAR0 (the frozen core density) takes nothing from its folder: those Z_val count valence
            electrons, not its core electrons.
        user: element → Z_val (electrons), or a string such as ``"Na=7,Cl=7"``; may cover some elements
            only, the others then come from the next source.
        guess: allow the fallback table (pymatgen's POTCAR summary, VASP files) for elements nothing else gives.

    Returns:
        A :class:`ZvalInfo` covering every element, or None when nothing at all is known.

    Raises:
        ValueError: an element in ``user`` that the structure lacks ("unknown species for --zval: Xx"),
            a bad ``user`` value, a Z_val outside 0 < Z_val ≤ Z, an element no source knows while others are
            known, or a POTCAR/OUTCAR that does not match the structure.
    """
    elements = list(dict.fromkeys(density.symbols))
    path = path if path is not None else density.metadata.get("path")
    if path is not None and "AECCAR0" in Path(path).name.upper():
        path = None  # the frozen core density: the POTCAR's valence does not count its electrons
    given = parse_zval_option(user) if isinstance(user, str) else dict(user or {})
    values: dict[str, float] = {}
    source: dict[str, str] = {}
    for symbol, value in given.items():
        if symbol not in elements:
            raise ValueError(
                f"unknown species for --zval: {symbol} (the structure has {', '.join(elements)})"
            )
        values[symbol] = _positive(symbol, value)
        source[symbol] = "user"
    missing = [element for element in elements if element not in values]
    cube = density.metadata.get("format") == "cube"
    if missing and path is not None:
        found = (_from_cp2k(path, elements) if cube else _from_files(path, elements)) or {}
        for element in missing:
            if element in found:
                values[element], source[element] = found[element]
    missing = [element for element in elements if element not in values]
    if missing and guess and not cube:
        found = _from_summary(density, missing)
        for element in missing:
            if element in found:
                values[element], source[element] = found[element]
    if not values:
        return None
    unknown = [element for element in elements if element not in values]
    if unknown:
        hint = "" if guess or cube else " or --guess-zval (pymatgen's POTCAR summary)"
        raise ValueError(
            f"no Z_val known for {', '.join(unknown)}: "
            f"give it with --zval, e.g. --zval {unknown[0]}=<electrons>{hint}"
        )
    for element in elements:
        check_range(element, values[element], source[element])
    return ZvalInfo(values={e: values[e] for e in elements}, source={e: source[e] for e in elements})
