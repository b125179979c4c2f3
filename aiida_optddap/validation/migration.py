"""What the new default changes: the previous ``auto`` (the potential model where Z_val is known and no width sits
on a bound of its search, else restrained; commit 648afab) against the new one (the potential model on every
absolute density, ``FitOptions()``), density by density (docs/validation.md, "What the new default changes
(migration)").

The previous default is reproduced with today's explicit definitions, which it ran unchanged: ``potential`` where
Z_val is known, kept where no width sits on a bound of its search, else ``restrained`` (also where the potential
definition refuses the density). Z_val is resolved as the engine does (files beside the density), with the fallback
table only where a :class:`Case` asks for it (``guess``). The migrations before it (species → shape, commit 843c1f1
→ b36eecd; shape → potential, 770c13c → 4d01fcc) are kept in bench/results/migration-species-to-shape.md and
bench/results/migration-shape-to-potential.md.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aiida_optddap.engine.fit import FitOptions, run_fit
from aiida_optddap.engine.io import read_cp2k_input, read_density
from aiida_optddap.engine.io.zval import ZvalInfo, resolve_zval

#: Table columns (:func:`markdown`), in order.
COLUMNS = ("density", "atoms", "Z_val", "old model", "new model", "max ΔQ (e)", "atom", "old Q (e)",
           "new Q (e)", "new model's reason")
#: Shared VASP files (paths under ``shared/data/chgcar``) that the repository holds under another name.
ELSEWHERE = {
    "h2_pydefect/H2_CHGCAR": "tests/data/H2_CHGCAR.gz",
    "si_aiidavasp/CHGCAR": "tests/data/si_aiidavasp_CHGCAR.gz",
    "no_molecule_sisl/polarized/CHGCAR": "tests/data/vasp_mock/nitric_oxide_polarized/out/CHGCAR.gz",
    "no_molecule_sisl/unpolarized/CHGCAR": "tests/data/vasp_mock/nitric_oxide_unpolarized/out/CHGCAR.gz",
    "namgf3_pydefect/NaMgF3_CHG": "examples/NaMgF3_CHG.gz",
}
#: Densities whose Z_val the tests guess (no POTCAR/OUTCAR beside them): NaMgF3 and H2.
GUESSED = ("NaMgF3_CHG", "H2_CHGCAR")


@dataclass(frozen=True)
class Case:
    """One density of the table: its name, file, and Z_val (None: resolved from the files beside ``path``)."""

    name: str
    path: Path
    zval: ZvalInfo | None = None
    guess: bool = False


def shared_cases(root: Path, shared: Path | None = None) -> list[Case]:
    """The shared VASP densities (CHGCAR/CHG/AECCAR of the set's manifest, then ``examples/NaMgF3_CHG.gz``):
    the repository's copy of each (tests/data) where it has one, else the file under ``shared`` (the folder
    ``shared/data/chgcar``); files at neither place are left out. ``root`` is the repository."""
    manifest = shared / "manifest.json" if shared is not None and (shared / "manifest.json").is_file() else \
        root / "tests" / "data" / "vasp" / "manifest.json"
    cases, seen = [], set()
    for entry in sorted(json.loads(manifest.read_text()), key=lambda e: e["dest"]):
        dest = entry["dest"].removesuffix(".gz")
        stem = dest.split("/")[-1].upper()
        if "LOCPOT" in stem or not any(kind in stem for kind in ("CHG", "AECCAR")):
            continue
        candidates = [root / "tests" / "data" / "vasp" / f"{dest}.gz", root / ELSEWHERE.get(dest, "-"),
                      *([shared / entry["dest"], shared / dest] if shared is not None else [])]
        path = next((c for c in candidates if c.is_file()), None)
        if path is not None and path.resolve() not in seen:
            seen.add(path.resolve())
            cases.append(Case(dest, path, guess=any(g in dest for g in GUESSED)))
    example = root / "examples" / "NaMgF3_CHG.gz"
    if example.resolve() not in seen:
        cases.append(Case("examples/NaMgF3_CHG.gz", example, guess=True))
    return cases


def cp2k_cases(root: Path) -> list[Case]:
    """The repository's CP2K densities: examples/cp2k_validation (Z_val from the run's input in ``inputs/``)
    and examples/cp2k_esp (Z_val and GTH potentials from each record's JSON)."""
    cases = []
    validation = root / "examples" / "cp2k_validation"
    for path in sorted((validation / "data").glob("*.cube.gz")):
        name = path.name.removesuffix(".cube.gz")
        record = read_cp2k_input(validation / "inputs" / f"{name}.inp")
        zval = ZvalInfo(dict(record.zvals), {el: f"CP2K input ({p})" for el, p in record.potentials.items()})
        cases.append(Case(f"cp2k_validation/{name}", path, zval))
    esp = root / "examples" / "cp2k_esp" / "data"
    for path in sorted(esp.glob("*_density.cube.gz")):
        name = path.name.removesuffix("_density.cube.gz")
        record = json.loads((esp / f"{name}.json").read_text())
        source = {el: f"CP2K input ({record['kinds'][el][1]})" for el in record["zval"]}
        cases.append(Case(f"cp2k_esp/{name}", path, ZvalInfo({k: float(v) for k, v in record["zval"].items()},
                                                                 source)))
    return cases


#: The fitting definition the previous default tried first (then ``restrained``).
OLD_FIRST = "potential"


def old_default(density, zval, device: str = "cpu") -> dict:
    """The default of commit 648afab: :data:`OLD_FIRST` where Z_val is known and no width sits on a bound of its
    search, else the restrained model."""
    from aiida_optddap.engine.species.shape_definition import bound_reason

    reason = "no Z_val (the potential model's neutral reference): give --zval or a POTCAR"
    if zval is not None:
        try:
            first = run_fit(density, FitOptions.for_definition(OLD_FIRST, device=device), zval=zval)
        except ValueError as refusal:
            first, reason = None, str(refusal)
        if first is not None and not first["species_at_bound"]:
            return {**first, "old_rule": "the shape model places every element"}
        if first is not None:
            reason = bound_reason(first["species_at_bound"], first["species_widths"],
                                   (first.get("bounds") or {}).get("species_width"))
    restrained = run_fit(density, FitOptions.for_definition("restrained", device=device), zval=zval)
    return {**restrained, "old_rule": reason}


def _charges(results: dict) -> tuple[np.ndarray, bool]:
    """Net charges Q = Z_val − p (e) where Z_val is known, else −p; and whether they are net charges."""
    if results.get("net_charges") is not None:
        return np.asarray(results["net_charges"], dtype=float), True
    return -np.asarray(results["populations"], dtype=float), False


def compare(case: Case, root: Path, device: str = "cpu") -> dict:
    """One row: old and new default on ``case``, the atom whose charge moves most, and the models' reasons;
    ``file`` is relative to ``root`` (the repository)."""
    density, file = read_density(case.path), os.path.relpath(case.path, root)
    zval = case.zval or resolve_zval(density, path=case.path, guess=case.guess)
    clock = time.perf_counter()
    try:
        old = old_default(density, zval, device)
        new = run_fit(density, FitOptions(device=device), zval=zval)
    except ValueError as refusal:  # both defaults refuse it (the valence checks run before either model)
        return {"density": case.name, "file": file, "atoms": density.n_atoms, "zval": _zval_note(zval),
                "refused": str(refusal).replace(str(case.path), file)}
    (q_old, net), (q_new, _) = _charges(old), _charges(new)
    delta = np.abs(q_new - q_old)
    worst = int(np.argmax(delta))
    return {
        "density": case.name, "file": file, "atoms": density.n_atoms, "zval": _zval_note(zval),
        "net_charges": net, "old_model": old["charge_model"], "old_rule": old["old_rule"],
        "new_model": new["charge_model"], "new_reason": (new.get("model_choice") or {}).get("reason"),
        "max_abs_dq": float(delta[worst]), "atom": f"{density.symbols[worst]}{worst + 1}",
        "old_charge": float(q_old[worst]), "new_charge": float(q_new[worst]),
        "old_charges": q_old.tolist(), "new_charges": q_new.tolist(), "seconds": time.perf_counter() - clock,
    }


def migration_table(cases: list[Case], root: Path, device: str = "cpu", progress=None) -> list[dict]:
    """:func:`compare` on every case; ``progress(row)`` is called after each."""
    rows = []
    for case in cases:
        rows.append(compare(case, root, device))
        if progress is not None:
            progress(rows[-1])
    return rows


def _zval_note(zval: ZvalInfo | None) -> str:
    """``Li 3, H 1 (OUTCAR)``, ``guessed`` where any value came from the fallback table, or ``none``."""
    if zval is None:
        return "none"
    values = ", ".join(f"{el} {v:g}" for el, v in zval.values.items())
    sources = sorted({s.split(" (")[0] for s in zval.source.values()})
    return f"{values} ({'guessed: ' if zval.guessed else ''}{', '.join(sources)})"


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table (:data:`COLUMNS`; max ΔQ = max over atoms of abs(Q_new − Q_old));
    charges are −p (marked) where Z_val is unknown."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        if "refused" in row:
            cells = [row["density"], row["atoms"], row["zval"], "refused", "refused", "", "", "", "",
                     row["refused"]]
        else:
            mark = "" if row["net_charges"] else " (−p)"
            cells = [row["density"], row["atoms"], row["zval"], row["old_model"], row["new_model"],
                     f"{row['max_abs_dq']:.3f}", row["atom"], f"{row['old_charge']:+.3f}{mark}",
                     f"{row['new_charge']:+.3f}{mark}", row["new_reason"] or ""]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"
