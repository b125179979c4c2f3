"""ChargesData: construction from results.json, attributes, conversions and QueryBuilder queries."""

from __future__ import annotations

import io
import math
import uuid

import numpy as np
import pytest
from aiida import orm

from aiida_optddap.data.charges import CONDITION_NUMBER_INFINITE, ChargesData


def test_from_results_attributes(results_factory):
    node = ChargesData.from_results(results_factory(populations=(0.15, 7.85)))
    node.store()
    attrs = node.base.attributes.all
    assert attrs["n_atoms"] == 2
    assert attrs["symbols"] == ["Na", "Cl"]
    assert attrs["formula"] == "ClNa"
    assert attrs["formula_reduced"] == "ClNa"
    assert attrs["solver"] == "pinv"
    assert attrs["loss_kind"] == "density"
    assert attrs["condition_number"] == pytest.approx(1234.5)
    assert attrs["singular"] is False
    assert attrs["rank"] == 6
    assert attrs["sigma_start"] == pytest.approx(0.53)
    assert attrs["factor"] == pytest.approx(1.5)
    assert attrs["gcut"] == pytest.approx(4.6)
    assert attrs["n_gauss"] == 3
    assert attrs["optimized"] is True
    assert attrs["device"] == "cpu"
    assert attrs["engine_version"] == "0.1.0"
    assert attrs["n_electrons"] == pytest.approx(8.0)
    assert attrs["summary_of"] == "net_charges"
    assert attrs["elements"]["Na"] == {"count": 1, "mean": pytest.approx(0.85), "min": pytest.approx(0.85),
                                       "max": pytest.approx(0.85)}
    assert attrs["elements"]["Cl"]["mean"] == pytest.approx(-0.85)
    loaded = orm.load_node(node.pk)
    np.testing.assert_allclose(loaded.populations, [0.15, 7.85])
    np.testing.assert_allclose(loaded.net_charges, [0.85, -0.85])
    assert loaded.coefficients.shape == (2, 3)
    np.testing.assert_allclose(loaded.radii, [0.5, 0.75, 1.125])


def test_singular_condition_number_sentinel(results_factory):
    node = ChargesData.from_results(results_factory(singular=True, solver="lagrange")).store()
    assert node.base.attributes.get("condition_number") == CONDITION_NUMBER_INFINITE == 1e300
    assert node.base.attributes.get("singular") is True
    assert math.isinf(node.condition_number)
    # an inf written by an engine that allows it is mapped the same way
    node2 = ChargesData.from_results(results_factory(condition_number=float("inf"))).store()
    assert node2.base.attributes.get("singular") is True


def test_summary_of_populations_when_net_unknown(results_factory):
    results = results_factory(symbols=("Xe", "Xe"), populations=(4.0, 4.0))
    assert results["net_charges"] is None
    node = ChargesData.from_results(results).store()
    assert node.base.attributes.get("summary_of") == "populations"
    assert node.base.attributes.get("has_net_charges") is False
    assert node.base.attributes.get("elements")["Xe"]["mean"] == pytest.approx(4.0)
    assert node.net_charges is None
    with pytest.warns(UserWarning, match="REF_charges holds the electron populations"):
        atoms = node.to_ase()
    np.testing.assert_allclose(atoms.arrays["REF_charges"], [4.0, 4.0])
    assert atoms.info["charges_kind"] == "populations"


def test_to_ase_and_structure(results_factory):
    node = ChargesData.from_results(results_factory()).store()
    atoms = node.to_ase()
    assert atoms.get_chemical_symbols() == ["Na", "Cl"]
    np.testing.assert_allclose(atoms.arrays["REF_charges"], [0.8, -0.8])
    np.testing.assert_allclose(atoms.arrays["REF_populations"], [0.2, 7.8])
    np.testing.assert_allclose(atoms.cell[:], np.eye(3) * 5.0)
    structure = node.to_structure()
    assert isinstance(structure, orm.StructureData)
    assert structure.get_formula() == "ClNa"
    np.testing.assert_allclose(structure.sites[1].position, [2.5, 2.5, 2.5])


def test_extxyz_round_trip(results_factory, tmp_path):
    from ase.io import read, write

    node = ChargesData.from_results(results_factory()).store()
    write(tmp_path / "c.xyz", node.to_ase(), format="extxyz")
    back = read(tmp_path / "c.xyz")
    np.testing.assert_allclose(back.arrays["REF_charges"], [0.8, -0.8])


def test_cif_round_trip_ase_and_pymatgen(results_factory, tmp_path):
    # a triclinic cell so that the CIF's cell parameters are exercised
    cell = [[5.0, 0.0, 0.0], [1.0, 4.5, 0.0], [0.5, 0.7, 6.0]]
    positions = [[0.1, 0.2, 0.3], (np.array([0.5, 0.4, 0.6]) @ np.array(cell)).tolist()]
    node = ChargesData.from_results(results_factory(cell=cell, positions=positions)).store()
    text = node.to_cif(as_node=False)
    assert "_atom_site_charge" in text
    path = tmp_path / "charges.cif"
    path.write_text(text)

    from ase.io import read

    atoms = read(path)
    assert atoms.get_chemical_symbols() == ["Na", "Cl"]
    np.testing.assert_allclose(atoms.cell.cellpar(), node.to_ase().cell.cellpar(), atol=1e-6)
    frac_expected = np.linalg.solve(np.array(cell).T, np.array(positions).T).T
    np.testing.assert_allclose(atoms.get_scaled_positions(wrap=False), frac_expected, atol=1e-8)

    from ase.io.cif import parse_cif

    block = next(iter(parse_cif(str(path))))
    np.testing.assert_allclose(block.get("_atom_site_charge"), [0.8, -0.8])

    from pymatgen.io.cif import CifFile, CifParser

    structure = CifParser(str(path)).parse_structures(primitive=False)[0]
    assert [str(s.specie) for s in structure] == ["Na", "Cl"]
    np.testing.assert_allclose(structure.lattice.abc, atoms.cell.lengths(), atol=1e-6)
    data = next(iter(CifFile.from_file(str(path)).data.values())).data
    np.testing.assert_allclose([float(x) for x in data["_atom_site_charge"]], [0.8, -0.8])

    cif_node = node.to_cif()
    assert isinstance(cif_node, orm.CifData)
    cif_node.store()
    with cif_node.open() as handle:
        assert "_atom_site_charge" in handle.read()


def test_table(results_factory):
    node = ChargesData.from_results(results_factory()).store()
    text = node.table()
    lines = text.splitlines()
    # atoms numbered from 1, as in the engine CLI's table; charges rounded to 4 decimals (``decimals``)
    assert lines[0].split() == ["#", "symbol", "population", "(e)", "net", "charge", "(e)", "±", "(e)"]
    assert lines[2].split() == ["1", "Na", "0.2000", "+0.8000", "n/a"]
    assert lines[3].split() == ["2", "Cl", "7.8000", "-0.8000", "n/a"]
    assert node.table(decimals=6).splitlines()[2].split() == ["1", "Na", "0.200000", "+0.800000", "n/a"]
    assert [row[0] for row in node.table_rows()] == [1, 2]
    results = results_factory()
    results["uncertainty"] = {"per_atom": [0.0123, None], "max": None, "determined": False}
    node = ChargesData.from_results(results).store()
    assert node.base.attributes.get("determined") is False
    lines = node.table().splitlines()
    assert lines[2].split()[-1] == "0.0123" and lines[3].split()[-1] == "free"
    assert np.isinf(node.uncertainty[1])
    from rich.console import Console

    console = Console(file=io.StringIO(), width=120)
    console.print(node.table(rich=True))
    assert "Na" in console.file.getvalue()


def test_non_finite_loss_is_stored_as_none(results_factory):
    node = ChargesData.from_results(results_factory(loss=float("nan"))).store()
    assert node.base.attributes.get("loss") is None


def _grouped(results_list):
    group = orm.Group(label=f"test-query-{uuid.uuid4().hex}").store()
    nodes = [ChargesData.from_results(r).store() for r in results_list]
    group.add_nodes(nodes)
    return group, nodes


def test_queries(results_factory):
    """κ < 1e6 containing Na ordered by loss; every Na with a mean net charge above 0.8 e; singular ones."""
    group, nodes = _grouped([
        results_factory(populations=(0.1, 7.9), condition_number=1e3, loss=3e-3),   # Na +0.9
        results_factory(populations=(0.3, 7.7), condition_number=1e5, loss=1e-3),   # Na +0.7
        results_factory(populations=(0.15, 7.85), condition_number=1e8, loss=2e-3),  # Na +0.85, κ too big
        results_factory(symbols=("Li", "H"), populations=(0.2, 1.8), condition_number=10.0, loss=5e-4),
        results_factory(populations=(0.05, 7.95), singular=True, solver="lagrange", loss=1e-4),  # Na +0.95
    ])

    qb = orm.QueryBuilder()
    qb.append(orm.Group, filters={"id": group.pk}, tag="group")
    qb.append(ChargesData, with_group="group", tag="charges",
              filters={"attributes.condition_number": {"<": 1e6}, "attributes.elements.Na.count": {">": 0}})
    qb.order_by({"charges": [{"attributes.loss": {"order": "asc", "cast": "f"}}]})
    assert [row[0].pk for row in qb.all()] == [nodes[1].pk, nodes[0].pk]

    qb = orm.QueryBuilder()
    qb.append(orm.Group, filters={"id": group.pk}, tag="group")
    qb.append(ChargesData, with_group="group", filters={"attributes.elements.Na.mean": {">": 0.8}})
    assert sorted(row[0].pk for row in qb.all()) == sorted([nodes[0].pk, nodes[2].pk, nodes[4].pk])

    qb = orm.QueryBuilder()
    qb.append(orm.Group, filters={"id": group.pk}, tag="group")
    qb.append(ChargesData, with_group="group", filters={"attributes.singular": True},
              project=["attributes.condition_number"])
    assert qb.all() == [[1e300]]

    qb = orm.QueryBuilder()
    qb.append(orm.Group, filters={"id": group.pk}, tag="group")
    qb.append(ChargesData, with_group="group",
              filters={"attributes.formula": "ClNa", "attributes.summary_of": "net_charges",
                       "attributes.solver": "pinv", "attributes.device": "cpu", "attributes.optimized": True})
    assert qb.count() == 3


def test_provenance_attributes_are_queryable(results_factory):
    """Z_val per element and its source, the start spread, the warnings and the uncertainty are attributes
    (and arrays) of ChargesData, and the QueryBuilder selects on them."""
    tag = uuid.uuid4().hex
    results = results_factory()
    results["zval"]["source"] = {"Na": "POTCAR", "Cl": "user"}
    results["start_spread"] = {"max_abs": 0.031, "per_atom": [0.031, 0.002]}
    results["warnings"] = ["populations differ by up to 0.031 e across the 4 starting points"]
    results["uncertainty"] = {"per_atom": [0.01, 0.02], "max": 0.02, "determined": True}
    results["charge_definition"] = tag
    node = ChargesData.from_results(results).store()
    attrs = node.base.attributes
    assert attrs.get("zval") == {"Na": 1.0, "Cl": 7.0}
    assert attrs.get("zval_source") == {"Na": "POTCAR", "Cl": "user"}
    assert attrs.get("start_spread_max_abs") == 0.031 and attrs.get("n_warnings") == 1
    np.testing.assert_allclose(node.get_array("start_spread"), [0.031, 0.002])
    clean = results_factory()
    clean["charge_definition"] = tag
    other = ChargesData.from_results(clean).store()
    assert other.base.attributes.get("n_warnings") == 0 and other.base.attributes.get("start_spread_max_abs") is None

    def pks(filters):
        qb = orm.QueryBuilder().append(ChargesData, filters={"attributes.charge_definition": tag, **filters},
                                       project="id")
        return sorted(qb.all(flat=True))

    assert pks({"attributes.zval_source.Na": "POTCAR"}) == [node.pk]
    assert pks({"attributes.zval.Cl": 7.0}) == sorted([node.pk, other.pk])
    assert pks({"attributes.start_spread_max_abs": {">": 0.02}}) == [node.pk]
    assert pks({"attributes.n_warnings": {">": 0}}) == [node.pk]
    assert pks({"attributes.uncertainty_max": {"<=": 0.05}, "attributes.determined": True}) == [node.pk]
