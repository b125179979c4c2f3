"""The one loader of the CP2K studies' data: a folder of ``<name>.json`` records beside their gzipped cubes.

Every study of examples/ (the vacancy pairs, the rattled rock salts, the NaCl pairs, the ESP set) keeps its
data as ``<folder>/<name>.json`` and the cubes that record names. A frame set's JSON holds ``zval``
(element → GTH valence count, e) and ``frames`` (one record per frame: ``frame``, ``name``, ``cube``,
``symbols``, ``positions`` (Å), ``cell`` (Å), energies and forces); cubes are read with
:func:`aiida_optddap.engine.io.read_density`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


def load_record(directory, name: str) -> dict:
    """The JSON record ``<directory>/<name>.json``; FileNotFoundError naming the file when it is missing."""
    path = Path(directory) / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such record (run the study's generate.py)")
    return json.loads(path.read_text())


def save_record(directory, name: str, record: dict, indent: int = 1) -> Path:
    """Write ``record`` as ``<directory>/<name>.json`` (frames sorted by index); returns the path."""
    if "frames" in record:
        record["frames"].sort(key=lambda f: f["frame"])
    path = Path(directory) / f"{name}.json"
    path.write_text(json.dumps(record, indent=indent) + "\n")
    return path


def read_cube(path, symbols=None):
    """The density of a cube (:class:`aiida_optddap.engine.io.density.Density`); ValueError naming the file when
    its atoms are not ``symbols`` (the record's)."""
    from aiida_optddap.engine.io import read_density

    density = read_density(path)
    if symbols is not None and list(density.symbols) != list(symbols):
        raise ValueError(f"{path}: symbols {list(density.symbols)} differ from the record's {list(symbols)}")
    return density


@dataclass
class FrameSet:
    """One system's frames: the JSON ``record`` of ``<directory>/<system>.json`` and the frames kept of it."""

    directory: Path
    system: str
    record: dict
    frames: list
    skipped: list

    @property
    def zval(self) -> dict:
        """Z_val (e) per element, as floats."""
        return {element: float(value) for element, value in self.record["zval"].items()}

    def densities(self) -> list:
        """Every kept frame's density, in order (the symbols checked against the record)."""
        return [read_cube(self.directory / f["cube"], f["symbols"]) for f in self.frames]

    def column(self, key: str):
        """``key`` of every kept frame; ValueError naming the frames without it."""
        missing = [f["name"] for f in self.frames if key not in f]
        if missing:
            raise ValueError(f"{self.directory / self.system}.json: no {key} for {missing}")
        return [f[key] for f in self.frames]


def load_frames(directory, system: str, *, skip_suspect: bool = False, count: int | None = None) -> FrameSet:
    """The frames of ``<directory>/<system>.json`` sorted by index: the first ``count`` (default all), without
    those whose record carries a ``suspect`` note when ``skip_suspect`` (listed in ``skipped``)."""
    directory = Path(directory)
    record = load_record(directory, system)
    frames = sorted(record["frames"], key=lambda f: f["frame"])[:count]
    skipped = [f["name"] for f in frames if skip_suspect and f.get("suspect")]
    return FrameSet(directory, system, record, [f for f in frames if f["name"] not in skipped], skipped)
