"""Charge sets to compare, from the command line: ``NAME=PATH`` or ``NAME=q1,q2,...`` (net charges, e).

A file may be

* an ``optddap fit`` results.json (its ``net_charges``, docs/results-schema.md);
* a JSON list of numbers, or an object with ``net_charges``, ``charges`` or ``bader.net_charges`` (the
  Bader records of the examples' JSON files);
* plain text: numbers separated by spaces, commas or new lines (``#`` starts a comment).

Charges are net atomic charges (e, nucleus or core counted positive), one per atom in the potential's order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .potential import PotentialError


def _numbers(text: str) -> list[float] | None:
    """The numbers of ``q1,q2,...`` (or whitespace separated), or None if any token is not a number."""
    tokens = text.replace(",", " ").split()
    try:
        return [float(token) for token in tokens] if tokens else None
    except ValueError:
        return None


def _from_json(path: Path, data) -> list:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        for key in ("net_charges", "charges"):
            if key in data:
                if data[key] is None:
                    raise PotentialError(f"{path}: '{key}' is null (a difference fit has no net charges)")
                return data[key]
        if isinstance(data.get("bader"), dict) and "net_charges" in data["bader"]:
            return data["bader"]["net_charges"]
    raise PotentialError(f"{path}: no charges found (expected a list, or 'net_charges', 'charges' or "
                         "'bader.net_charges')")


def read_charges(path) -> np.ndarray:
    """Net charges (e) from a JSON or plain-text file (module docstring); PotentialError naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise PotentialError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PotentialError(f"{path}: cannot read the charges ({exc})") from None
    if text.lstrip()[:1] in ("[", "{"):
        try:
            values = _from_json(path, json.loads(text))
        except json.JSONDecodeError as exc:
            raise PotentialError(f"{path}: not valid JSON ({exc})") from None
    else:
        values = _numbers("\n".join(line.split("#")[0] for line in text.splitlines()))
        if values is None:
            raise PotentialError(f"{path}: expected numbers (net charges, e) separated by spaces or commas")
    try:
        charges = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise PotentialError(f"{path}: the charges are not all numbers") from None
    if charges.ndim != 1 or not np.all(np.isfinite(charges)):
        raise PotentialError(f"{path}: the charges must be a flat list of finite numbers")
    return charges


def parse_charge_option(text: str) -> tuple[str, np.ndarray]:
    """``NAME=PATH`` or ``NAME=q1,q2,...`` → (name, charges e); ValueError when malformed."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise ValueError(f"expected NAME=FILE or NAME=q1,q2,..., got {text!r}")
    numbers = _numbers(value)
    if numbers is not None and ("," in value or not Path(value).exists()):
        return name.strip(), np.asarray(numbers)
    return name.strip(), read_charges(value.strip())


def check_count(name: str, charges: np.ndarray, n_atoms: int, where: str) -> None:
    """PotentialError unless ``charges`` has one value per atom (``where``: the potential file)."""
    if charges.shape != (n_atoms,):
        raise PotentialError(f"{where}: charge set {name!r} has {charges.size} charges for {n_atoms} atoms")
