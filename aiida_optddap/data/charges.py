"""``optddap.charges``: opt-DDAP atomic charges as a queryable AiiDA node.

Per-atom data live in arrays (the file repository); everything a user filters on lives in attributes
(the database), so ``QueryBuilder`` can select e.g. every Na with a mean net charge above 0.8 e::

    qb.append(ChargesData, filters={'attributes.elements.Na.mean': {'>': 0.8}})

JSON cannot hold ``inf``: an infinite condition number (a singular matrix, e.g. ``lagrange`` on a perfect
crystal) is stored as :data:`CONDITION_NUMBER_INFINITE` (``1e300``) together with ``singular = True``.
Other non-finite numbers (a ``nan`` loss) are stored as ``None``.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from aiida.orm import ArrayData

__all__ = (
    "CONDITION_NUMBER_INFINITE",
    "ChargesData",
    "finite_or_none",
    "condition_number_for_db",
    "results_condition_number",
)

#: What an infinite condition number is stored as in attributes (JSON has no ``inf``).
CONDITION_NUMBER_INFINITE = 1e300


def finite_or_none(value):
    """``float(value)`` if finite, else ``None`` (JSON-safe)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def condition_number_for_db(value) -> tuple[float | None, bool]:
    """(condition number safe for the database, singular flag).

    ``inf`` (and anything at or above the sentinel) becomes ``(1e300, True)``; ``nan``/``None`` becomes
    ``(None, False)``.
    """
    if value is None:
        return None, False
    value = float(value)
    if math.isnan(value):
        return None, False
    if math.isinf(value) or value >= CONDITION_NUMBER_INFINITE:
        return CONDITION_NUMBER_INFINITE, True
    return value, False


def results_condition_number(results: dict) -> float:
    """κ of a results dictionary as a float: ``inf`` when the engine flags ``singular`` (it writes
    ``condition_number: null`` then, JSON having no ``inf``), ``nan`` when unknown."""
    if results.get("singular"):
        return math.inf
    value = results.get("condition_number")
    return math.nan if value is None else float(value)


def _hill_formula(symbols) -> str:
    from aiida.orm.nodes.data.structure import get_formula

    return get_formula(list(symbols), mode="hill")


def _reduced_formula(symbols) -> str:
    from aiida.orm.nodes.data.structure import get_formula

    return get_formula(list(symbols), mode="hill_compact")


def _symbols_and_populations(results: dict) -> tuple[list[str], np.ndarray]:
    """The atoms' symbols and populations (e) of ``results``; a ValueError when they are missing or disagree."""
    try:
        symbols = [str(s) for s in results["symbols"]]
        populations = np.asarray(results["populations"], dtype=float)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"results lack a usable `symbols`/`populations` entry: {exc}") from exc
    if populations.shape != (len(symbols),):
        raise ValueError(f"`populations` has shape {populations.shape}, expected ({len(symbols)},)")
    return symbols, populations


def _result_arrays(results: dict, populations: np.ndarray) -> dict[str, np.ndarray]:
    """The per-atom and per-Gaussian arrays of ``results`` that it holds, shaped for the node (see
    :class:`ChargesData`); a ValueError when ``net_charges`` does not have one value per atom."""
    n_atoms = len(populations)
    arrays = {"populations": populations}
    net = results.get("net_charges")
    if net is not None:
        net = np.asarray(net, dtype=float)
        if net.shape != (n_atoms,):
            raise ValueError(f"`net_charges` has shape {net.shape}, expected ({n_atoms},)")
        arrays["net_charges"] = net
    shapes = {"coefficients": (n_atoms, -1), "radii": (-1,), "positions": (n_atoms, 3), "cell": (3, 3)}
    for name, shape in shapes.items():
        if results.get(name) is not None:
            arrays[name] = np.asarray(results[name], dtype=float).reshape(shape)
    spread = (results.get("start_spread") or {}).get("per_atom")
    if spread is not None:  # e; max − min of each atom's population over the optimiser's starts
        arrays["start_spread"] = np.asarray(spread, dtype=float).ravel()
    uncertainty = (results.get("uncertainty") or {}).get("per_atom")
    if uncertainty is not None:  # e; ∞ (stored as inf in the array) where the density leaves it free
        arrays["uncertainty"] = np.array([np.inf if u is None else u for u in uncertainty], dtype=float)
    moments = (results.get("spin") or {}).get("moments")
    if moments is not None:  # μB per atom, from the magnetisation of a spin-polarised file
        arrays["magnetic_moments"] = np.asarray(moments, dtype=float).ravel()
    return arrays


def _element_summary(symbols: list[str], values: np.ndarray) -> dict[str, dict]:
    """``{element: {count, mean, min, max}}`` of ``values`` (one per atom) over each element's atoms."""
    elements: dict[str, dict] = {}
    for element in sorted(set(symbols)):
        mask = np.array([s == element for s in symbols])
        vals = values[mask]
        elements[element] = {
            "count": int(mask.sum()),
            "mean": float(vals.mean()),
            "min": float(vals.min()),
            "max": float(vals.max()),
        }
    return elements


def _result_attributes(results: dict, symbols: list[str], populations: np.ndarray, net) -> dict:
    """The node's queryable attributes (see :class:`ChargesData`), JSON-safe; ``net`` is the net-charge array
    or None."""
    params = results.get("parameters") or {}
    kappa, singular = condition_number_for_db(results_condition_number(results))
    spin = results.get("spin") or {}
    uncertainty = results.get("uncertainty") or {}
    zval = results.get("zval") or {}
    rank, n_gauss = results.get("rank"), params.get("n_gauss")
    return {
        "schema_version": results.get("schema_version"),
        "mode": results.get("mode"),
        "n_atoms": len(symbols),
        "symbols": symbols,
        "formula": _hill_formula(symbols),
        "formula_reduced": _reduced_formula(symbols),
        "n_electrons": finite_or_none(results.get("n_electrons")),
        "total_population": float(populations.sum()),
        "solver": results.get("solver"),
        "rtol": finite_or_none(results.get("rtol")),
        "loss": finite_or_none(results.get("loss")),
        "loss_kind": results.get("loss_kind"),
        "fit_residual": finite_or_none(results.get("fit_residual")),
        "condition_number": kappa,
        "singular": singular,
        "rank": int(rank) if rank is not None else None,
        "sigma_start": finite_or_none(params.get("sigma_start")),
        "factor": finite_or_none(params.get("factor")),
        "gcut": finite_or_none(params.get("gcut")),
        "n_gauss": int(n_gauss) if n_gauss is not None else None,
        "optimized": bool(results.get("optimized", False)),
        "converged": results.get("converged"),
        "device": results.get("device"),
        "engine_version": (results.get("program") or {}).get("version"),
        "has_net_charges": net is not None,
        "charge_definition": results.get("charge_definition"),
        "charge_model": results.get("charge_model", results.get("charge_definition")),
        "uncertainty_max": finite_or_none(uncertainty.get("max")),
        "determined": uncertainty.get("determined"),
        "restraint_reference": (results.get("restraint") or {}).get("reference"),
        "species_widths": results.get("species_widths"),
        "start_spread_max_abs": finite_or_none((results.get("start_spread") or {}).get("max_abs")),
        "zval": dict(zval.get("values") or {}) or None,
        "zval_source": dict(zval.get("source") or {}) or None,
        "warnings": [str(w) for w in results.get("warnings") or []],
        "n_warnings": len(results.get("warnings") or []),
        "summary_of": "net_charges" if net is not None else "populations",
        "elements": _element_summary(symbols, net if net is not None else populations),
        "has_magnetic_moments": spin.get("moments") is not None,
        "total_magnetic_moment": finite_or_none(spin.get("total_moment")),
    }


class ChargesData(ArrayData):
    """Atomic populations and net charges of one opt-DDAP fit.

    Arrays: ``populations`` (e), ``net_charges`` (e, only when Z_val is known), ``coefficients``
    (atoms × K, e), ``radii`` (K, Å), ``positions`` (atoms × 3, Å) and ``cell`` (3 × 3, Å, rows); when the
    engine reported them, ``uncertainty`` (e per atom, ``inf`` where the density leaves a charge free) and
    ``start_spread`` (e per atom, max − min over the optimiser's starts).

    Attributes (all queryable): ``n_atoms``, ``symbols``, ``formula`` (Hill), ``formula_reduced``,
    ``n_electrons``, ``total_population``, ``solver``, ``loss``, ``loss_kind``, ``condition_number``
    (``1e300`` when infinite), ``singular``, ``rank``, ``sigma_start``, ``factor``, ``gcut``, ``n_gauss``,
    ``optimized``, ``converged``, ``device``, ``engine_version``, ``mode``, ``has_net_charges``,
    ``charge_definition``, ``charge_model`` (the definition that produced the charges: ``species`` or ``restrained``
    under ``auto``, else the definition itself), ``start_spread_max_abs`` (e, None with one start), ``uncertainty_max`` (e),
    ``determined``, ``restraint_reference``, ``species_widths`` (element → Å, the ``species`` definition only;
    otherwise None), ``warnings`` (the engine's) and ``n_warnings``,
    ``summary_of`` (``'net_charges'`` or ``'populations'``), ``zval`` / ``zval_source`` (element → e, and
    where it came from: ``user``, ``POTCAR``, ``OUTCAR`` or ``pymatgen POTCAR summary (<label>)``) and ``elements.<El>.{count,mean,min,max}``
    summarising the quantity named by ``summary_of``; for a spin-polarised density the array
    ``magnetic_moments`` (μB per atom) and the attributes ``has_magnetic_moments`` and
    ``total_magnetic_moment`` (μB).

    For example, the fits whose Z_val of Na came from the run's own POTCAR and that gave no warning::

        qb.append(ChargesData, filters={'attributes.zval_source.Na': 'POTCAR', 'attributes.n_warnings': 0})
    """

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_results(cls, results: dict, **kwargs) -> ChargesData:
        """Build an (unstored) node from a ``results.json`` dictionary (docs/results-schema.md)."""
        symbols, populations = _symbols_and_populations(results)
        arrays = _result_arrays(results, populations)
        node = cls(**kwargs)
        for name, array in arrays.items():
            node.set_array(name, array)
        for key, value in _result_attributes(results, symbols, populations, arrays.get("net_charges")).items():
            node.base.attributes.set(key, value)
        return node

    # ------------------------------------------------------------------ accessors
    def _get_optional_array(self, name):
        return self.get_array(name) if name in self.get_arraynames() else None

    @property
    def symbols(self) -> list[str]:
        return list(self.base.attributes.get("symbols"))

    @property
    def n_atoms(self) -> int:
        return int(self.base.attributes.get("n_atoms"))

    @property
    def populations(self) -> np.ndarray:
        """Electron populations p_α (e)."""
        return self.get_array("populations")

    @property
    def magnetic_moments(self) -> np.ndarray | None:
        """Per-atom spin populations (μB) of a spin-polarised density, else None."""
        return self._get_optional_array("magnetic_moments")

    @property
    def net_charges(self) -> np.ndarray | None:
        """Net charges Q_α = Z_val,α − p_α (e), or None when Z_val was unknown (and for Δρ)."""
        return self._get_optional_array("net_charges")

    @property
    def coefficients(self) -> np.ndarray | None:
        return self._get_optional_array("coefficients")

    @property
    def radii(self) -> np.ndarray | None:
        return self._get_optional_array("radii")

    @property
    def positions(self) -> np.ndarray | None:
        return self._get_optional_array("positions")

    @property
    def cell(self) -> np.ndarray | None:
        return self._get_optional_array("cell")

    @property
    def condition_number(self) -> float:
        """κ as a float; ``inf`` when singular (the database holds 1e300)."""
        if self.base.attributes.get("singular", False):
            return math.inf
        value = self.base.attributes.get("condition_number", None)
        return math.nan if value is None else float(value)

    @property
    def charges(self) -> np.ndarray:
        """Net charges when known, else populations (what ``summary_of`` names)."""
        net = self.net_charges
        return net if net is not None else self.populations

    # ------------------------------------------------------------------ conversions
    def _require_geometry(self):
        if self.positions is None or self.cell is None:
            raise ValueError(f"{self.__class__.__name__}<{self.pk}> stores no positions/cell")
        return self.positions, self.cell

    def to_ase(self):
        """``ase.Atoms`` with ``arrays['REF_charges']`` = net charges (populations, with a warning, if unknown).

        ``arrays['REF_populations']`` always holds the populations; ``info['charges_kind']`` says which
        quantity ``REF_charges`` holds.
        """
        from ase import Atoms

        positions, cell = self._require_geometry()
        atoms = Atoms(symbols=self.symbols, positions=positions, cell=cell, pbc=True)
        net = self.net_charges
        if net is None:
            warnings.warn(
                f"ChargesData<{self.pk}> has no net charges (Z_val unknown or a difference density); "
                "REF_charges holds the electron populations instead",
                UserWarning,
                stacklevel=2,
            )
            atoms.arrays["REF_charges"] = np.array(self.populations, dtype=float)
            atoms.info["charges_kind"] = "populations"
        else:
            atoms.arrays["REF_charges"] = np.array(net, dtype=float)
            atoms.info["charges_kind"] = "net_charges"
        atoms.arrays["REF_populations"] = np.array(self.populations, dtype=float)
        return atoms

    def to_structure(self):
        """The atoms as a (new, unstored) ``StructureData``."""
        from aiida.orm import StructureData

        positions, cell = self._require_geometry()
        structure = StructureData(cell=cell.tolist(), pbc=(True, True, True))
        for symbol, position in zip(self.symbols, positions):
            structure.append_atom(position=tuple(float(x) for x in position), symbols=symbol)
        return structure

    def cif_text(self) -> str:
        """A P1 CIF with ``_atom_site_charge`` (net charges; populations with a warning if unknown).

        Readable by ase (``ase.io.read``), pymatgen (``CifParser``) and RASPA
        (``UseChargesFromCIFFile``), the same convention as aiida-ddec's ``structure_ddec``.
        """
        positions, cell = self._require_geometry()
        charges = self.net_charges
        if charges is None:
            warnings.warn(
                f"ChargesData<{self.pk}> has no net charges; _atom_site_charge holds populations",
                UserWarning,
                stacklevel=2,
            )
            charges = self.populations
        lengths = np.linalg.norm(cell, axis=1)

        def angle(i, j):
            cos = float(np.dot(cell[i], cell[j]) / (lengths[i] * lengths[j]))
            return math.degrees(math.acos(max(-1.0, min(1.0, cos))))

        fractional = np.linalg.solve(cell.T, positions.T).T
        lines = [
            f"data_{self.base.attributes.get('formula_reduced', 'optddap')}",
            "_audit_creation_method 'aiida-optddap opt-DDAP charges'",
            f"_cell_length_a {lengths[0]:.8f}",
            f"_cell_length_b {lengths[1]:.8f}",
            f"_cell_length_c {lengths[2]:.8f}",
            f"_cell_angle_alpha {angle(1, 2):.8f}",
            f"_cell_angle_beta {angle(0, 2):.8f}",
            f"_cell_angle_gamma {angle(0, 1):.8f}",
            "_symmetry_space_group_name_H-M 'P 1'",
            "_symmetry_Int_Tables_number 1",
            "loop_",
            "_symmetry_equiv_pos_as_xyz",
            "  'x, y, z'",
            "loop_",
            "_atom_site_label",
            "_atom_site_type_symbol",
            "_atom_site_fract_x",
            "_atom_site_fract_y",
            "_atom_site_fract_z",
            "_atom_site_occupancy",
            "_atom_site_charge",
        ]
        counters: dict[str, int] = {}
        for symbol, frac, charge in zip(self.symbols, fractional, charges):
            counters[symbol] = counters.get(symbol, 0) + 1
            lines.append(
                f"  {symbol}{counters[symbol]} {symbol} {frac[0]:.10f} {frac[1]:.10f} {frac[2]:.10f} "
                f"1.0 {float(charge):.8f}"
            )
        return "\n".join(lines) + "\n"

    def to_cif(self, as_node: bool = True):
        """The CIF of :meth:`cif_text` as an (unstored) ``CifData`` node, or as text with ``as_node=False``."""
        text = self.cif_text()
        if not as_node:
            return text
        from aiida.orm import CifData

        return CifData(file=io.BytesIO(text.encode()), filename="charges.cif", parse_policy="lazy")

    # ------------------------------------------------------------------ display
    @property
    def uncertainty(self) -> np.ndarray | None:
        """Per-atom uncertainty of the populations (e; inf where the density leaves it free), or None."""
        return self._get_optional_array("uncertainty")

    def table_rows(self) -> list[tuple]:
        """Rows ``(number, symbol, population, net charge or None, uncertainty or None)``; atoms are numbered
        from 1 in the order of the density file, as in every table of the package (``optddap fit`` too)."""
        net, unc = self.net_charges, self.uncertainty
        rows = []
        for i, (symbol, pop) in enumerate(zip(self.symbols, self.populations)):
            rows.append((i + 1, symbol, float(pop), None if net is None else float(net[i]),
                         None if unc is None else float(unc[i])))
        return rows

    def table(self, rich: bool = False, decimals: int = 4):
        """A printable table: ``#`` (atom number from 1), symbol, population, net charge, uncertainty, the
        charges rounded to ``decimals`` decimals.

        Returns plain text, or a ``rich.table.Table`` with ``rich=True``.
        """
        headers = ("#", "symbol", "population (e)", "net charge (e)", "± (e)")
        rows = [
            (str(i), s, f"{p:.{decimals}f}", "n/a" if q is None else f"{q:+.{decimals}f}",
             "n/a" if u is None else ("free" if not np.isfinite(u) else f"{u:.{decimals}f}"))
            for i, s, p, q, u in self.table_rows()
        ]
        if rich:
            from rich.table import Table

            table = Table(title=f"opt-DDAP charges ({self.base.attributes.get('formula', '')})")
            for header in headers:
                table.add_column(header, justify="right" if header != "symbol" else "left")
            for row in rows:
                table.add_row(*row)
            return table
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
        out = ["  ".join(h.rjust(w) if i != 1 else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
        out.append("  ".join("-" * w for w in widths))
        for row in rows:
            out.append("  ".join(c.rjust(w) if i != 1 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        return "\n".join(out)

    def __str__(self) -> str:  # pragma: no cover - convenience
        return f"{super().__str__()} [{self.base.attributes.get('formula', '?')}]"
