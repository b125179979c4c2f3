"""What every fit checks before and after the solve, whatever the door (CLI, Python API, AiiDA): the density
is a charge density, the valence count adds up, and the charges are physically possible.

Each refusal is one line (``ValueError``/``DensityError``) that names the file; the valence refusals start with
:data:`~aiida_optddap.engine.io.zval.INVALID_VALENCE`, the population refusals with :data:`IMPLAUSIBLE` (the AiiDA
parser maps them to 307 ``ERROR_INVALID_VALENCE`` and 308 ``ERROR_IMPLAUSIBLE_CHARGES``).
"""

from __future__ import annotations

import numpy as np

from . import definitions
from .io.density import Density, DensityError, check_charge_density
from .io.zval import INVALID_VALENCE, ZvalInfo

#: Σ Z_val − N may differ from an integer (and from a declared charge) by this much, e.g. grid noise (e).
VALENCE_TOLERANCE = 0.05
#: A grid whose negative values hold more than this fraction of Σ|value| is mostly negative: not a density.
MOSTLY_NEGATIVE = 0.5
#: A population below this (e) is impossible (a Gaussian fit may dip a little below zero).
MIN_POPULATION = -0.05
#: A net charge below this (e) is impossible for one atom.
MIN_NET_CHARGE = -8.0
#: The first words of a refusal of impossible populations or net charges.
IMPLAUSIBLE = "implausible charges: "


def check_density_sign(density: Density) -> None:
    """Refuse a grid that is mostly negative (negative values hold more than :data:`MOSTLY_NEGATIVE` of
    Σ|value|) or whose integral is not positive — an electron count is — whatever the format (cubes
    included); VASP files must also pass :func:`~aiida_optddap.engine.io.density.check_charge_density` (a LOCPOT
    is refused there). A mean ≤ 0 makes the grid mostly negative, so one test covers both."""
    if density.metadata.get("format") == "chgcar":
        check_charge_density(density)
    grid = density.grid
    total = float(np.abs(grid).sum())
    negative = float(-grid[grid < 0].sum()) / total if total > 0 else 1.0
    mean = float(grid.mean())
    if negative > MOSTLY_NEGATIVE or not mean > 0:
        raise DensityError(
            f"{density.source}: not a charge density: the grid integrates to {mean:.4g} e (an electron count is "
            f"positive) and negative values hold {100 * negative:.0f} % of Σ|value|; a sign-flipped or signed "
            "(spin, difference) density? (for Δρ use `optddap diff`)")


def declared_charges(density: Density, total_charge: float | None = None) -> list[tuple[float, str]]:
    """Who declares the charge of the cell, first wins: ``--total-charge``; the OUTCAR beside a VASP file
    (Σ of its own ZVAL over the atoms − its NELECT); the ``CHARGE`` of the CP2K input beside a cube.
    Each as ``(charge in e, source)``; empty when nothing declares one."""
    from .io import cp2k_input_beside, find_beside, read_cp2k_input, read_outcar_header, split_species_label

    found = [] if total_charge is None else [(float(total_charge), "--total-charge")]
    path = density.metadata.get("path")
    if path is None:
        return found
    if density.metadata.get("format") == "cube":
        record = cp2k_input_beside(path)
        charge = None if record is None else read_cp2k_input(record).charge
        return found + ([] if charge is None else [(charge, "CP2K CHARGE")])
    outcar = find_beside(path, "OUTCAR")
    header = None if outcar is None else read_outcar_header(outcar)
    if header is None or header.nelect is None or len(header.labels) != len(header.zvals):
        return found
    own = {split_species_label(label)[0]: zval for label, zval in zip(header.labels, header.zvals)}
    if not set(density.symbols) <= set(own):
        return found
    return found + [(sum(own[s] for s in density.symbols) - header.nelect, "OUTCAR NELECT")]


def check_valence(density: Density, zval: ZvalInfo, declared: list[tuple[float, str]] = ()) -> dict:
    """Check Σ Z_val − N against the integers and against the first ``declared`` charge
    (:func:`declared_charges`); returns the record ``{"value": charge of the cell (e), "source": who declared
    it, or "neutral"}``.

    Raises:
        ~aiida_optddap.engine.io.density.DensityError: ``invalid valence: …`` naming every element, its Z_val and
            its source, when Σ Z_val − N is more than :data:`VALENCE_TOLERANCE` from an integer, differs from
            the declared charge, or is a charge (≠ 0) that nothing declared.
    """
    n = density.n_electrons
    excess = float(zval.per_atom(density.symbols).sum() - n)
    charge, declared_by = declared[0] if declared else (None, None)
    where = f"{density.source}: {INVALID_VALENCE}"
    counted = f"Σ Z_val − N = {excess:+.4f} e with N = {n:.4f} e ({zval.describe()})"
    if abs(excess - round(excess)) > VALENCE_TOLERANCE:
        raise DensityError(f"{where}{counted} is not an integer: these Z_val do not belong to this density's "
                           "potentials; give the right ones with --zval")
    if charge is not None and abs(charge - excess) > VALENCE_TOLERANCE:
        raise DensityError(f"{where}{counted} but the declared total charge is {charge:+g} e ({declared_by})")
    if charge is None and round(excess) != 0:
        raise DensityError(f"{where}{counted}: the cell comes out charged and nothing declared that charge; "
                           "give --total-charge if it is, else the right Z_val with --zval")
    return {"value": float(round(excess)) if charge is None else charge, "source": declared_by or "neutral"}


def implausible_populations(results: dict) -> list[dict]:
    """The atoms of an absolute fit whose population is below :data:`MIN_POPULATION` (a net charge above the
    element's Z_val) or whose net charge is below :data:`MIN_NET_CHARGE`; one dict per atom
    ``{"atom" (1-based), "symbol", "population", "net_charge"}``."""
    if results.get("mode") != "absolute":
        return []
    net = results.get("net_charges")
    found = []
    for i, (symbol, population) in enumerate(zip(results["symbols"], results["populations"])):
        charge = None if net is None else net[i]
        if population < MIN_POPULATION or (charge is not None and charge < MIN_NET_CHARGE):
            found.append({"atom": i + 1, "symbol": symbol, "population": population, "net_charge": charge})
    return found


def check_populations(results: dict, definition: str) -> None:
    """Record :func:`implausible_populations` as ``results["implausible_populations"]``; for a definition
    that does not only flag them (``Definition.flags_implausible``, engine/definitions.py), refuse them instead
    (DensityError ``implausible charges: …``)."""
    found = implausible_populations(results)
    results["implausible_populations"] = found
    if not found:
        return
    listed = ", ".join(
        f"{e['symbol']}{e['atom']} population {e['population']:+.3f} e"
        + ("" if e["net_charge"] is None else f" (net {e['net_charge']:+.3f} e)") for e in found)
    rule = f"a population must be ≥ {MIN_POPULATION:g} e and a net charge between {MIN_NET_CHARGE:g} e and Z_val"
    if not definitions.flags_implausible(definition):
        flaggers = " and ".join(n for n in definitions.names() if definitions.flags_implausible(n))
        raise DensityError(f"{results['source']['density']}: {IMPLAUSIBLE}{listed}: {rule}; the density or the "
                         f"fixed widths do not fit this model (the {flaggers} definitions only flag this)")
    results["warnings"].append(f"implausible populations: {listed} ({rule})")


def prepare_valence(density: Density, zval=None, *, total_charge: float | None = None,
                    guess_zval: bool = False) -> tuple[ZvalInfo | None, dict | None]:
    """Resolve Z_val (:func:`~aiida_optddap.engine.io.zval.resolve_zval`, from the files beside a density read
    from a file) unless ``zval`` already is a :class:`ZvalInfo`, then run the input checks of an absolute fit:
    :func:`check_density_sign` and, with Z_val, :func:`check_valence`.

    Args:
        zval: a :class:`ZvalInfo`, a user mapping / ``"Na=7,Cl=7"`` string (the other elements resolved), or
            None (every element resolved).
        total_charge: the declared charge of the cell (e), ``--total-charge``.
        guess_zval: allow the fallback table (``--guess-zval``).

    Returns:
        ``(zval or None, {"value", "source"} of the cell's charge or None when Z_val is unknown)``.
    """
    from .io.zval import resolve_zval

    check_density_sign(density)
    if not isinstance(zval, ZvalInfo):
        zval = resolve_zval(density, user=zval, guess=guess_zval)
    if zval is None:
        return None, None if total_charge is None else {"value": float(total_charge), "source": "--total-charge"}
    return zval, check_valence(density, zval, declared_charges(density, total_charge))
