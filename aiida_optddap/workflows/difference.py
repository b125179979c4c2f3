"""``optddap.difference``: opt-DDAP charges of a difference density Δρ = ρ_defect − ρ_host.

Each side is given either as a density file (``host_density`` / ``defect_density``, SinglefileData: CHGCAR,
CHG, cube, optionally compressed) or as a VASP run (``host_vasp`` / ``defect_vasp``: the inputs of aiida-vasp's
``VaspWorkChain``; the CHGCAR is forced on as in ``optddap.vasp``, and both runs go at once). Then:

1. the two density headers are checked: identical FFT grids (exit 310) and cells (311, ``cell_tolerance`` Å);
2. the atoms are matched (``site_tolerance`` Å, periodic): host sites without a defect atom are
   **vacancies**, matched sites of another species **substitutions**, unmatched defect atoms
   **interstitials** (output ``defect_sites``);
3. ``optddap.base`` fits Δρ at the **host** sites (``optddap diff``), so a vacancy keeps its fit centre and
   carries the density that left it;
4. ``summary`` gives the Δ-populations per category (e.g. the electrons lost at each vacancy site).

Outputs: those of ``optddap.base`` (``charges`` — Δ-populations, ``mode = difference`` —, ``output_parameters``,
``structure`` — the host atoms —, ``planar_averages`` — Δρ of DFT and model per lattice axis, e/Å —,
``trajectory``), ``defect_sites``, ``summary`` and, for VASP sides, the VASP outputs under ``host_vasp`` /
``defect_vasp``.
"""

from __future__ import annotations


import numpy as np
from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import ToContext, WorkChain, calcfunction, if_

from .base import OptDdapBaseWorkChain
from .headers import BOHR, density_header, density_summary  # noqa: F401 (BOHR: public name)
from .protocols import ProtocolMixin, base_inputs, density_node
from .vasp import (
    FIT_EXCLUDE,
    VaspWorkChain,
    failure_message,
    forward_fit,
    structure_name,
    vasp_builder_inputs,
    vasp_inputs_for_chgcar,
    vasp_outputs,
)

__all__ = ("DifferenceWorkChain", "density_header", "match_sites", "defect_sites", "difference_summary")

_SIDES = ("host", "defect")


def match_sites(host: dict, defect: dict, tolerance: float) -> dict:
    """Match defect atoms to host sites (nearest first, periodic in the host cell, within ``tolerance`` Å).

    Returns ``vacancies`` (host indices without a defect atom), ``substitutions`` ([{index, host, defect}]),
    ``interstitials`` ([{defect_index, symbol, position}]), ``matched`` ({host index: defect index}) and
    ``max_displacement`` (Å, over the matched pairs).
    """
    cell = np.asarray(host["cell"], dtype=float)
    hpos = np.asarray(host["positions"], dtype=float).reshape(-1, 3)
    dpos = np.asarray(defect["positions"], dtype=float).reshape(-1, 3)
    delta = dpos[None, :, :] - hpos[:, None, :]
    frac = np.linalg.solve(cell.T, delta.reshape(-1, 3).T).T
    frac -= np.round(frac)
    dist = np.linalg.norm(frac @ cell, axis=1).reshape(len(hpos), len(dpos))
    pairs = sorted((dist[i, j], i, j) for i in range(len(hpos)) for j in range(len(dpos)) if dist[i, j] <= tolerance)
    matched, used = {}, set()
    for d, i, j in pairs:
        if i not in matched and j not in used:
            matched[i] = j
            used.add(j)
    hsym = host.get("symbols")
    dsym = defect.get("symbols")
    substitutions = []
    if hsym is not None and dsym is not None:
        substitutions = [{"index": int(i), "host": hsym[i], "defect": dsym[j]}
                         for i, j in sorted(matched.items()) if hsym[i] != dsym[j]]
    vacancies = [int(i) for i in range(len(hpos)) if i not in matched]
    interstitials = [{"defect_index": int(j), "symbol": None if dsym is None else dsym[j],
                      "position": dpos[j].tolist()} for j in range(len(dpos)) if j not in used]
    displacement = max((float(dist[i, j]) for i, j in matched.items()), default=0.0)
    return {
        "vacancies": vacancies,
        "vacancy_symbols": [None if hsym is None else hsym[i] for i in vacancies],
        "substitutions": substitutions,
        "interstitials": interstitials,
        "matched": {str(i): int(j) for i, j in sorted(matched.items())},
        "max_displacement": displacement,
        "tolerance": float(tolerance),
        "n_host_atoms": int(len(hpos)),
        "n_defect_atoms": int(len(dpos)),
    }


@calcfunction
def defect_sites(host: orm.SinglefileData, defect: orm.SinglefileData, site_tolerance: orm.Float) -> orm.Dict:
    """Vacancies, substitutions and interstitials of ``defect`` relative to ``host`` (from the file headers)."""
    return orm.Dict(match_sites(density_header(host), density_header(defect), site_tolerance.value))


@calcfunction
def difference_summary(defect_sites: orm.Dict, charges: orm.ArrayData) -> orm.Dict:
    """Δ-populations (electrons of ρ_defect − ρ_host) per category of site."""
    sites = defect_sites.get_dict()
    populations = np.asarray(charges.get_array("populations"), dtype=float)
    symbols = list(charges.base.attributes.get("symbols"))
    vacancies = [{"index": i, "symbol": symbols[i], "delta_population": float(populations[i])}
                 for i in sites["vacancies"]]
    substitutions = [dict(s, delta_population=float(populations[s["index"]])) for s in sites["substitutions"]]
    special = {v["index"] for v in vacancies} | {s["index"] for s in substitutions}
    others = [float(populations[i]) for i in range(len(populations)) if i not in special]
    return orm.Dict({
        "delta_electrons": float(populations.sum()),
        "vacancies": vacancies,
        "vacancy_delta_population": float(sum(v["delta_population"] for v in vacancies)),
        "substitutions": substitutions,
        "interstitials": sites["interstitials"],
        "other_sites_delta_population": float(sum(others)),
        "other_sites_max_abs": float(max((abs(x) for x in others), default=0.0)),
    })


# ----------------------------------------------------------------------------------------------- work chain
def _validate_inputs(inputs, _ctx):
    for side in _SIDES:
        has_file = f"{side}_density" in inputs
        has_vasp = bool(inputs.get(f"{side}_vasp"))
        if has_file == has_vasp:
            return f"give the {side} either as `{side}_density` (a density file) or as `{side}_vasp` (a VASP run)"
    return None


def _pair(value) -> tuple:
    """(host, defect) from a pair or a mapping with the keys ``host`` and ``defect``."""
    if isinstance(value, dict):
        try:
            return value["host"], value["defect"]
        except KeyError as exc:
            raise ValueError(f"the mapping must have the keys `host` and `defect` (missing {exc})") from None
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return tuple(value)
    raise TypeError("optddap.difference takes a (host, defect) pair or {'host': ..., 'defect': ...}, each a density "
                    "(SinglefileData or file path) or a StructureData (run with VASP)")


def _side_name(value) -> str:
    if isinstance(value, orm.StructureData):
        return structure_name(value)
    summary = density_summary(value)
    return summary["name"] if summary["pk"] is None else f"{summary['name']}<{summary['pk']}>"


class DifferenceWorkChain(ProtocolMixin, WorkChain):
    """Δρ = ρ_defect − ρ_host (files or VASP runs) → checks → Δ-charges at the host sites, vacancies included."""

    _protocol_file = "difference"

    @classmethod
    def get_builder_from_protocol(cls, code, density_or_structure, protocol=None, overrides=None, *, vasp_code=None,
                                  vasp_protocol=None, vasp_overrides=None, vasp_options=None, zval=None,
                                  options=None, gpus=None):
        """A builder for Δρ = ρ_defect − ρ_host; ``density_or_structure`` is ``(host, defect)`` or
        ``{'host': ..., 'defect': ...}``, each side a density (SinglefileData or file path) or a StructureData,
        which is run with VASP (aiida-vasp's protocol ``vasp_protocol``, ``vasp_overrides``, ``vasp_options``;
        ``vasp_code`` needed).

        ``protocol`` (``fast``, ``moderate``, ``precise``) selects protocols/difference.yaml (header checks) and, for
        the fit (namespace ``optddap``), the same protocol of ``optddap.base``; ``overrides`` follow the inputs
        (``{'site_tolerance': 0.4, 'optddap': {'fit': {'parameters': {...}}}}``).
        """
        host, defect = _pair(density_or_structure)
        inputs = cls.get_protocol_inputs(protocol, overrides)
        builder = cls.get_builder()
        sides = {}
        for side, value in (("host", host), ("defect", defect)):
            if isinstance(value, orm.StructureData):
                builder[f"{side}_vasp"]._update(vasp_builder_inputs(vasp_code, value, vasp_protocol, vasp_overrides,
                                                                    vasp_options))
                sides[side] = value
            else:
                sides[side] = density_node(value, f"{side} density")
                builder[f"{side}_density"] = sides[side]
        builder.optddap._update(base_inputs(code, None, protocol, inputs.get("optddap"), zval=zval, options=options,
                                            gpus=gpus, with_density=False))
        builder.cell_tolerance = orm.Float(inputs["cell_tolerance"])
        builder.site_tolerance = orm.Float(inputs["site_tolerance"])
        metadata = cls._describe(sides["host"], sides["defect"], protocol or cls.get_default_protocol())
        builder.metadata.label = (inputs.get("metadata") or {}).get("label", metadata["label"])
        builder.metadata.description = (inputs.get("metadata") or {}).get("description", metadata["description"])
        return builder

    @staticmethod
    def _describe(host, defect, protocol=None) -> dict:
        def short(value):
            return value.get_formula(mode="hill") if isinstance(value, orm.StructureData) else density_summary(value)["name"]

        description = f"opt-DDAP Δ-charges of ρ({_side_name(defect)}) − ρ({_side_name(host)}) at the host sites"
        if protocol:
            description += f"; protocol {protocol}"
        return {"label": f"Δρ {short(defect)} − {short(host)}", "description": description}

    def _provenance_metadata(self):
        sides = []
        for side in _SIDES:
            if f"{side}_density" in self.inputs:
                sides.append(self.inputs[f"{side}_density"])
            elif self.inputs.get(f"{side}_vasp") and "structure" in self.inputs[f"{side}_vasp"]:
                sides.append(self.inputs[f"{side}_vasp"]["structure"])
            else:
                return None
        return self._describe(*sides)

    @classmethod
    def define(cls, spec):
        super().define(spec)
        for side in _SIDES:
            spec.input(f"{side}_density", valid_type=orm.SinglefileData, required=False,
                       help=f"The {side} density file (CHGCAR/CHG/cube, optionally compressed).")
            spec.expose_inputs(VaspWorkChain, namespace=f"{side}_vasp",
                               namespace_options={"required": False, "populate_defaults": False,
                                                  "help": f"A VASP run that gives the {side} CHGCAR."})
        spec.expose_inputs(OptDdapBaseWorkChain, namespace="optddap", exclude=FIT_EXCLUDE)
        spec.input("cell_tolerance", valid_type=orm.Float, default=lambda: orm.Float(1e-4),
                   serializer=orm.to_aiida_type, help="Largest difference of the cell vectors, Å.")
        spec.input("site_tolerance", valid_type=orm.Float, default=lambda: orm.Float(0.5),
                   serializer=orm.to_aiida_type,
                   help="A defect atom within this distance (Å, periodic) of a host site occupies it.")
        spec.inputs.validator = _validate_inputs
        spec.outline(
            if_(cls.should_run_vasp)(cls.run_vasp, cls.inspect_vasp),
            cls.check_densities,
            cls.run_fit,
            cls.inspect_fit,
        )
        spec.expose_outputs(OptDdapBaseWorkChain)
        for side in _SIDES:
            spec.expose_outputs(VaspWorkChain, namespace=f"{side}_vasp",
                                namespace_options={"required": False})
        spec.output("defect_sites", valid_type=orm.Dict,
                    help="Vacancies, substitutions, interstitials (indices of the host atoms).")
        spec.output("summary", valid_type=orm.Dict, required=False, help="Δ-populations per kind of site.")
        spec.exit_code(310, "ERROR_GRID_MISMATCH",
                       message="The densities have different FFT grids: host {host}, defect {defect}")
        spec.exit_code(311, "ERROR_CELL_MISMATCH",
                       message="The cells differ by {difference:.3g} Å (tolerance {tolerance:g} Å)")
        spec.exit_code(312, "ERROR_DENSITY_HEADER", message="A density file cannot be read: {details}")
        spec.exit_code(401, "ERROR_VASP_FAILED",
                       message="The {side} VASP work chain<{pk}> failed with exit status {status}: {message}")
        spec.exit_code(402, "ERROR_FIT_FAILED",
                       message="The optddap.base work chain<{pk}> failed with exit status {status}: {message}")
        spec.exit_code(450, "ERROR_NO_CHGCAR_FROM_VASP",
                       message="The {side} VASP work chain<{pk}> finished without a `chgcar` output")

    # ------------------------------------------------------------------ VASP
    def should_run_vasp(self):
        return any(self.inputs.get(f"{side}_vasp") for side in _SIDES)

    def run_vasp(self):
        launched = {}
        for side in _SIDES:
            if not self.inputs.get(f"{side}_vasp"):
                continue
            inputs = vasp_inputs_for_chgcar(self.exposed_inputs(VaspWorkChain, f"{side}_vasp"), self.report)
            node = self.submit(VaspWorkChain, **inputs)
            self.report(f"launched the {side} VaspWorkChain<{node.pk}>")
            launched[f"{side}_vasp"] = node
        return ToContext(**launched)

    def inspect_vasp(self):
        for side in _SIDES:
            node = self.ctx.get(f"{side}_vasp")
            if node is None:
                continue
            if not node.is_finished_ok:
                return self.exit_codes.ERROR_VASP_FAILED.format(side=side, pk=node.pk, status=node.exit_status,
                                                                message=failure_message(node))
            self.out_many(self.exposed_outputs(node, VaspWorkChain, namespace=f"{side}_vasp"))
            found = vasp_outputs(node)
            if found.chgcar is None:
                return self.exit_codes.ERROR_NO_CHGCAR_FROM_VASP.format(side=side, pk=node.pk)
            self.ctx[f"{side}_density"] = found.chgcar
            self.ctx[f"{side}_structure"] = found.structure
        return None

    # ------------------------------------------------------------------ checks
    def _density(self, side):
        return self.ctx.get(f"{side}_density") or self.inputs[f"{side}_density"]

    def check_densities(self):
        headers = {}
        for side in _SIDES:
            try:
                headers[side] = density_header(self._density(side))
            except ValueError as exc:
                return self.exit_codes.ERROR_DENSITY_HEADER.format(details=f"{side}: {exc}")
        if headers["host"]["shape"] != headers["defect"]["shape"]:
            return self.exit_codes.ERROR_GRID_MISMATCH.format(host=headers["host"]["shape"],
                                                              defect=headers["defect"]["shape"])
        difference = float(np.abs(np.asarray(headers["host"]["cell"]) - np.asarray(headers["defect"]["cell"])).max())
        tolerance = self.inputs.cell_tolerance.value
        if difference > tolerance:
            return self.exit_codes.ERROR_CELL_MISMATCH.format(difference=difference, tolerance=tolerance)
        sites = defect_sites(self._density("host"), self._density("defect"), self.inputs.site_tolerance)
        self.out("defect_sites", sites)
        found = sites.get_dict()
        self.report(
            f"grid {headers['host']['shape']}, {found['n_host_atoms']} host / {found['n_defect_atoms']} defect atoms: "
            f"vacancies {found['vacancies']}, substitutions {[s['index'] for s in found['substitutions']]}, "
            f"{len(found['interstitials'])} interstitial(s), largest displacement {found['max_displacement']:.3f} Å"
        )
        if found["interstitials"]:
            self.report("interstitial atoms have no fit centre: their Δρ goes to the nearby host sites")
        self.ctx.defect_sites = sites
        return None

    # ------------------------------------------------------------------ fit
    def run_fit(self):
        inputs = AttributeDict(self.exposed_inputs(OptDdapBaseWorkChain, "optddap"))
        inputs.fit = AttributeDict(inputs.fit)
        inputs.fit.charge_density = self._density("defect")
        inputs.fit.host_charge_density = self._density("host")
        host_structure = self.ctx.get("host_structure")
        if host_structure is not None:
            inputs.fit.structure = host_structure
        node = self.submit(OptDdapBaseWorkChain, **inputs)
        self.report(f"launched OptDdapBaseWorkChain<{node.pk}> on Δρ")
        return ToContext(fit=node)

    def inspect_fit(self):
        failed = forward_fit(self, self.ctx.fit)
        if failed:
            return failed
        self.out("summary", difference_summary(self.ctx.defect_sites, self.ctx.fit.outputs.charges))
        return None
