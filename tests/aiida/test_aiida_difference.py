"""``optddap.difference``: Δρ = ρ_defect − ρ_host from files or VASP runs, grid/cell checks, vacancy sites,
Δ-charges at the host sites and planar averages of Δρ (DFT and model), with the real ``optddap`` code.

The two-VASP-runs path replays two real recordings through aiida-vasp's VaspWorkChain and parser (only the
VASP binary is mock-vasp): the NO molecule with ISPIN = 2 as the "defect" and with ISPIN = 1 as the "host",
same cell and grid, so Δρ is the spin-polarisation density change (∫Δρ = 0, Δρ ≠ 0)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import run_get_node
from aiida.tools.graph.graph_traversers import traverse_graph
from helpers import CP2K_RADII, gaussian_density, rocksalt, vasp_rounded, write_chgcar

from aiida_optddap.engine.io import read_density
from aiida_optddap.workflows.difference import DifferenceWorkChain, match_sites

pytest.importorskip("aiida_vasp")

from test_aiida_vasp import (  # noqa: E402,F401,F811  (fixtures)
    CASE,
    CASE_POLARIZED,
    NO_FINAL,
    NO_INCAR_POLARIZED,
    NO_POLARIZED_FINAL,
    VASP_MOCK,
    mock_vasp_code,
    mock_vasp_registry,
    populate_vasp_inputs,
    potcar_family,
)

SHAPE = (24, 24, 24)
NO_FIT = {"optimize": False, "device": "cpu"}
VACANCY = 7  # the Cl at (½, ½, ½)


def _coefficients(symbols, rng):
    base = {"Na": [0.2, 0.3, 0.1], "Cl": [2.4, 3.1, 2.3]}
    return np.array([base[s] for s in symbols]) + rng.uniform(0.0, 0.05, (len(symbols), 3))


@pytest.fixture(scope="module")
def vacancy_pair(tmp_path_factory):
    """Host: rattled 8-atom rock-salt NaCl; defect: the same with the Cl at (½,½,½) removed and 0.05 e added
    on each Na neighbour. Both densities lie in the span of the fit basis (σ = 0.5, 0.75, 1.125 Å), so
    the Δ-populations are known exactly: −q(Cl) at the vacancy, +0.05 e on each neighbour, 0 elsewhere."""
    rng = np.random.default_rng(7)
    cell, symbols, positions = rocksalt(a=5.64, rattle=0.06, seed=2)
    cell, positions = vasp_rounded(cell, positions)
    q_host = _coefficients(symbols, rng)
    host = gaussian_density(cell, symbols, positions, q_host, CP2K_RADII, SHAPE)
    keep = [i for i in range(len(symbols)) if i != VACANCY]
    q_defect = q_host[keep].copy()
    frac = np.linalg.solve(cell.T, (positions - positions[VACANCY]).T).T
    frac -= np.round(frac)
    dist = np.linalg.norm(frac @ cell, axis=1)
    neighbours = [i for i in range(len(symbols)) if i != VACANCY and dist[i] < 3.2]
    expected = np.zeros(len(symbols))
    expected[VACANCY] = -q_host[VACANCY].sum()
    for i in neighbours:
        q_defect[keep.index(i), 0] += 0.05
        expected[i] = 0.05
    defect = gaussian_density(cell, [symbols[i] for i in keep], positions[keep], q_defect, CP2K_RADII, SHAPE)
    folder = tmp_path_factory.mktemp("vacancy")
    host_path = write_chgcar(folder / "host_CHGCAR", cell, symbols, positions, host.grid)
    defect_path = write_chgcar(folder / "defect_CHGCAR", cell, [symbols[i] for i in keep], positions[keep],
                               defect.grid)
    return {"host": host_path, "defect": defect_path, "expected": expected, "neighbours": neighbours,
            "cell": cell, "symbols": symbols, "positions": positions, "q_host": q_host, "folder": folder}


def _builder(optddap_code, host=None, defect=None, parameters=None):
    builder = DifferenceWorkChain.get_builder()
    if host is not None:
        builder.host_density = host
    if defect is not None:
        builder.defect_density = defect
    builder.optddap.fit.code = optddap_code
    builder.optddap.fit.parameters = orm.Dict(parameters or NO_FIT)
    return builder


def test_match_sites():
    host = {"cell": np.eye(3) * 4.0, "symbols": ["Na", "Cl", "Na"],
            "positions": [[0, 0, 0], [2, 2, 2], [0, 2, 2]]}
    defect = {"cell": np.eye(3) * 4.0, "symbols": ["K", "Na", "Li"],
              "positions": [[3.9, 0.1, 0], [0.2, 2, 2], [1, 1, 1]]}  # periodic image, relaxed, interstitial
    sites = match_sites(host, defect, 0.5)
    assert sites["vacancies"] == [1] and sites["vacancy_symbols"] == ["Cl"]
    assert sites["substitutions"] == [{"index": 0, "host": "Na", "defect": "K"}]
    assert sites["interstitials"] == [{"defect_index": 2, "symbol": "Li", "position": [1.0, 1.0, 1.0]}]
    assert sites["max_displacement"] == pytest.approx(0.2)


def test_vacancy_from_files(optddap_code, singlefile, vacancy_pair):
    builder = _builder(optddap_code, singlefile(vacancy_pair["host"]), singlefile(vacancy_pair["defect"]))
    results, node = run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)

    sites = results["defect_sites"].get_dict()
    assert sites["vacancies"] == [VACANCY] and sites["vacancy_symbols"] == ["Cl"]
    assert sites["substitutions"] == [] and sites["interstitials"] == []
    assert sites["n_host_atoms"] == 8 and sites["n_defect_atoms"] == 7

    charges = results["charges"]
    assert charges.base.attributes.get("mode") == "difference"
    assert charges.n_atoms == 8  # the vacancy site is a fit centre
    assert charges.net_charges is None
    np.testing.assert_allclose(charges.populations, vacancy_pair["expected"], atol=2e-4)
    summary = results["summary"].get_dict()
    assert summary["vacancies"][0]["index"] == VACANCY
    assert summary["vacancy_delta_population"] == pytest.approx(-vacancy_pair["q_host"][VACANCY].sum(), abs=2e-4)
    assert summary["delta_electrons"] == pytest.approx(vacancy_pair["expected"].sum(), abs=1e-6)
    assert summary["other_sites_delta_population"] == pytest.approx(0.05 * len(vacancy_pair["neighbours"]), abs=2e-4)
    assert len(vacancy_pair["neighbours"]) == 3  # its six Na neighbours are three atoms and their images

    # planar-averaged Δρ of DFT and model (e/Å): the model reproduces the (in-span) Δρ
    planar = results["planar_averages"]
    for axis in ("a1", "a2", "a3"):
        dft, model = planar.get_array(f"{axis}_dft"), planar.get_array(f"{axis}_model")
        assert dft.shape == (24,) and planar.get_array(f"{axis}_s").shape == (24,)
        assert dft.min() < -0.1  # the missing Cl shows as a dip
        np.testing.assert_allclose(model, dft, atol=2e-3 * np.abs(dft).max())
    # the host atoms are the structure of the fit
    np.testing.assert_allclose([s.position for s in results["structure"].sites], vacancy_pair["positions"],
                               atol=1e-5)


def test_grid_and_cell_mismatch(optddap_code, singlefile, vacancy_pair, tmp_path):
    cell, symbols, positions = vacancy_pair["cell"], vacancy_pair["symbols"], vacancy_pair["positions"]
    host = read_density(vacancy_pair["host"])
    coarse = write_chgcar(tmp_path / "coarse", cell, symbols, positions, host.grid[::2, ::2, ::2])
    _, node = run_get_node(_builder(optddap_code, singlefile(vacancy_pair["host"]), singlefile(coarse)))
    assert node.exit_status == 310, node.exit_message
    assert "[24, 24, 24]" in node.exit_message and "[12, 12, 12]" in node.exit_message
    assert not node.called  # stopped before any fit

    stretched = write_chgcar(tmp_path / "stretched", cell * 1.01, symbols, positions * 1.01, host.grid)
    _, node = run_get_node(_builder(optddap_code, singlefile(vacancy_pair["host"]), singlefile(stretched)))
    assert node.exit_status == 311, node.exit_message
    assert "0.0564" in node.exit_message


def test_inputs_validation(optddap_code, singlefile, vacancy_pair):
    builder = _builder(optddap_code, singlefile(vacancy_pair["host"]))  # no defect at all
    with pytest.raises(ValueError, match="defect"):
        run_get_node(builder)


def test_vacancy_with_the_host_from_vasp(optddap_code, mock_vasp_code, potcar_family, singlefile, tmp_path):
    """Host from a VASP run (mock-vasp replaying the recorded NO relaxation), defect from a file: the recorded
    CHGCAR with the N atom removed (its header) and 5 e in basis Gaussians taken away at the N site."""
    host_chgcar = read_density(VASP_MOCK / CASE / "out" / "CHGCAR.gz")
    n_site = host_chgcar.positions[0]
    removed = gaussian_density(host_chgcar.cell, ["N"], [n_site], [[1.5, 2.0, 1.5]], CP2K_RADII,
                               host_chgcar.grid.shape)
    defect = write_chgcar(tmp_path / "CHGCAR_no_N", host_chgcar.cell, ["O"], host_chgcar.positions[1:],
                          host_chgcar.grid - removed.grid)
    builder = _builder(optddap_code, defect=singlefile(defect))
    populate_vasp_inputs(builder.host_vasp, mock_vasp_code, potcar_family)
    results, node = run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    assert results["host_vasp"]["chgcar"].get_content(mode="rb") == \
        gzip.open(VASP_MOCK / CASE / "out" / "CHGCAR.gz", "rb").read()
    assert results["defect_sites"].get_dict()["vacancies"] == [0]
    np.testing.assert_allclose(results["charges"].populations, [-5.0, 0.0], atol=1e-4)
    assert results["summary"].get_dict()["vacancies"] == [{"index": 0, "symbol": "N",
                                                           "delta_population": pytest.approx(-5.0, abs=1e-4)}]
    fit_calc = [n for n in node.called_descendants if n.process_label == "OptDdapCalculation"][0]
    assert fit_calc.inputs.host_charge_density.uuid == results["host_vasp"]["chgcar"].uuid
    assert fit_calc.inputs.structure.uuid == results["host_vasp"]["structure"].uuid


def test_two_vasp_runs_same_run_exits_402(optddap_code, mock_vasp_code, potcar_family):
    """Host and defect both from VASP, but the same recorded run (Δρ = 0): both runs go at once, their CHGCARs
    pass the grid/cell checks, and the fit of a zero Δρ fails cleanly with the engine's message (402)."""
    builder = DifferenceWorkChain.get_builder()
    populate_vasp_inputs(builder.host_vasp, mock_vasp_code, potcar_family)
    populate_vasp_inputs(builder.defect_vasp, mock_vasp_code, potcar_family)
    builder.optddap.fit.code = optddap_code
    builder.optddap.fit.parameters = orm.Dict(NO_FIT)
    results, node = run_get_node(builder)
    vasp_runs = [n for n in node.called if n.process_label == "VaspWorkChain"]
    assert len(vasp_runs) == 2 and all(n.is_finished_ok for n in vasp_runs)
    # launched in one step: both exist before either finished
    assert max(n.ctime for n in vasp_runs) < min(n.mtime for n in vasp_runs)
    assert results["defect_sites"].get_dict()["vacancies"] == []
    assert node.exit_status == 402, (node.exit_status, node.exit_message)
    assert "OptDdapCalculation" in node.exit_message and "[302]" in node.exit_message  # an input error
    assert "no G ≠ 0 component" in node.exit_message  # Δρ = 0: nothing to fit


def _provenance_ancestors(node) -> set[int]:
    """PKs of every node ``node`` comes from: data provenance (CREATE, INPUT_CALC) plus the work chains that
    returned a data node (RETURN), followed backwards to the end."""
    found = traverse_graph([node.pk], links_backward=[LinkType.CREATE, LinkType.INPUT_CALC, LinkType.RETURN])
    return set(found["nodes"]) - {node.pk}


def test_two_vasp_runs_polarized_minus_unpolarized(optddap_code, mock_vasp_code, potcar_family):
    """Two different real VASP runs (mock-vasp replays each from its own INCAR): defect = NO with ISPIN = 2,
    host = NO with ISPIN = 1. Δρ integrates to 0 e but is not zero, so the fit succeeds: opposite
    Δ-populations on N and O, the summary, the planar averages, and both VaspWorkChains in the provenance of
    the charges."""
    builder = DifferenceWorkChain.get_builder()
    populate_vasp_inputs(builder.host_vasp, mock_vasp_code, potcar_family)
    populate_vasp_inputs(builder.defect_vasp, mock_vasp_code, potcar_family, incar=NO_INCAR_POLARIZED)
    builder.optddap.fit.code = optddap_code
    builder.optddap.fit.parameters = orm.Dict(NO_FIT)
    results, node = run_get_node(builder)
    assert node.is_finished_ok and node.exit_status == 0, (node.exit_status, node.exit_message)

    # the VASP side: two real VaspWorkChains, launched together, each replaying its own recording
    vasp_runs = {n.pk: n for n in node.called if n.process_label == "VaspWorkChain"}
    assert len(vasp_runs) == 2 and all(n.is_finished_ok for n in vasp_runs.values())
    assert max(n.ctime for n in vasp_runs.values()) < min(n.mtime for n in vasp_runs.values())
    recorded = {side: gzip.open(VASP_MOCK / case / "out" / "CHGCAR.gz", "rb").read()
                for side, case in (("host", CASE), ("defect", CASE_POLARIZED))}
    assert recorded["host"] != recorded["defect"]
    for side, ispin, final in (("host", 1, NO_FINAL), ("defect", 2, NO_POLARIZED_FINAL)):
        chgcar = results[f"{side}_vasp"]["chgcar"]
        assert chgcar.get_content(mode="rb") == recorded[side]  # byte for byte the recorded CHGCAR
        calc = chgcar.creator
        assert calc.process_label == "VaspCalculation" and calc.caller.pk in vasp_runs
        assert calc.inputs.parameters.get_dict()["ispin"] == ispin
        misc = results[f"{side}_vasp"]["misc"].get_dict()
        assert misc["total_energies"]["energy_extrapolated"] == pytest.approx(final["energy_extrapolated"])
        np.testing.assert_allclose(misc["forces"], final["forces"], atol=1e-8)
        np.testing.assert_allclose([s.position[2] for s in results[f"{side}_vasp"]["structure"].sites],
                                   final["positions_z"], atol=1e-6)
    assert read_density(VASP_MOCK / CASE_POLARIZED / "out" / "CHGCAR.gz").grid.shape == (32, 48, 64)

    # the same two atoms, relaxed to within 3e-5 Å of each other: no vacancy, substitution or interstitial
    sites = results["defect_sites"].get_dict()
    assert sites["vacancies"] == [] and sites["substitutions"] == [] and sites["interstitials"] == []
    assert sites["n_host_atoms"] == sites["n_defect_atoms"] == 2
    assert sites["max_displacement"] < 1e-4

    # the fit: Δρ at the host (ISPIN = 1) atoms
    fit_calc = [n for n in node.called_descendants if n.process_label == "OptDdapCalculation"]
    assert len(fit_calc) == 1 and fit_calc[0].is_finished_ok
    fit_calc = fit_calc[0]
    assert fit_calc.inputs.charge_density.uuid == results["defect_vasp"]["chgcar"].uuid
    assert fit_calc.inputs.host_charge_density.uuid == results["host_vasp"]["chgcar"].uuid
    assert fit_calc.inputs.structure.uuid == results["host_vasp"]["structure"].uuid

    charges = results["charges"]
    assert charges.base.attributes.get("mode") == "difference"
    assert charges.symbols == ["N", "O"] and charges.n_atoms == 2
    assert charges.net_charges is None  # Δ-populations only
    dq = np.asarray(charges.populations)
    assert np.all(np.isfinite(dq))
    assert charges.base.attributes.get("n_electrons") == pytest.approx(0.0, abs=1e-6)  # ∫Δρ = 11 e − 11 e
    assert dq.sum() == pytest.approx(0.0, abs=1e-6)
    assert dq[0] == pytest.approx(-dq[1], abs=1e-6)  # N and O opposite
    assert dq[0] < -1e-2  # not zero: the polarised run moves ~0.04 e from N to O
    # the default (restrained, zero reference for Δρ) against the pseudo-inverse `optddap diff` recording at the
    # classic DDAP radii: the restraint (τ = 1e-3 of the misfit) shrinks this weakly determined transfer by 2 %
    np.testing.assert_allclose(dq, [-0.040706, 0.040706], atol=5e-5)
    assert charges.base.attributes.get("charge_definition") == "auto"
    assert charges.base.attributes.get("charge_model") == "restrained"  # Δρ: no species model

    summary = results["summary"].get_dict()
    assert summary["delta_electrons"] == pytest.approx(0.0, abs=1e-6)
    assert summary["vacancies"] == [] and summary["substitutions"] == [] and summary["interstitials"] == []
    assert summary["vacancy_delta_population"] == 0.0
    assert summary["other_sites_delta_population"] == pytest.approx(0.0, abs=1e-6)
    assert summary["other_sites_max_abs"] == pytest.approx(np.abs(dq).max(), rel=1e-12)

    # planar-averaged Δρ (e/Å) of DFT and model: zero mean along every axis, not zero along the bond (a3)
    planar = results["planar_averages"]
    for axis, n in (("a1", 32), ("a2", 48), ("a3", 64)):
        s, dft, model = (planar.get_array(f"{axis}_{k}") for k in ("s", "dft", "model"))
        assert s.shape == dft.shape == model.shape == (n,)
        assert np.all(np.isfinite(dft)) and np.all(np.isfinite(model))
        assert dft.mean() == pytest.approx(0.0, abs=1e-6) and model.mean() == pytest.approx(0.0, abs=1e-6)
        # the 3-Gaussian-per-atom model follows the shape of the DFT Δρ (correlations 0.63, 0.94, 0.71)
        assert np.corrcoef(dft, model)[0, 1] > 0.5, axis
    # Δρ is not zero: up to 0.011 e/Å along the bond (a3), 0.008 e/Å for the model
    assert np.abs(planar.get_array("a3_dft")).max() > 5e-3
    assert np.abs(planar.get_array("a3_model")).max() > 2e-3

    # provenance: both VaspWorkChains (and their calculations) are ancestors of the charges node
    ancestors = _provenance_ancestors(charges)
    for pk, chain in vasp_runs.items():
        assert pk in ancestors, chain
        assert {c.pk for c in chain.called if c.process_label == "VaspCalculation"} <= ancestors
    assert fit_calc.pk in ancestors
    # and the data-provenance ancestors (QueryBuilder: CREATE and INPUT_CALC links) hold both CHGCARs and both
    # VaspCalculations (orm.Node: a SinglefileData filter would miss aiida-vasp's ChargedensityData node type)
    qb = orm.QueryBuilder().append(orm.Node, filters={"id": charges.pk}, tag="charges")
    qb.append(orm.Node, with_descendants="charges", project="uuid")
    data_ancestors = set(qb.all(flat=True))
    for side in ("host", "defect"):
        chgcar = results[f"{side}_vasp"]["chgcar"]
        assert chgcar.uuid in data_ancestors and chgcar.creator.uuid in data_ancestors
