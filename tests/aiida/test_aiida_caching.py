"""Caching of ``optddap.fit``: the same density (as parsed: grid, cell, atoms) with the same parameters is
served from AiiDA's cache, whatever the file's name, title line, number format or compression; another grid
or other parameters are not (aiida_optddap/calculations/caching.py)."""

from __future__ import annotations

import gzip

import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.manage.caching import enable_caching

from aiida_optddap.calculations.caching import EXTRA_KEY, density_fingerprint
from aiida_optddap.calculations.fit import OptDdapCalculation
from aiida_optddap.workflows.base import OptDdapBaseWorkChain

IDENTIFIER = "aiida.calculations:optddap.fit"
PARAMETERS = {"optimize": False, "definition": "classic"}


@pytest.fixture
def same_grid_other_bytes(nacl_chgcar, tmp_path):
    """The NaCl CHGCAR with another title line, another name and gzip-compressed: other bytes, same grid."""
    lines = nacl_chgcar.read_text().splitlines(keepends=True)
    lines[0] = "a different title written by another tool\n"
    path = tmp_path / "renamed_density.vasp.gz"
    with gzip.open(path, "wt") as handle:
        handle.writelines(lines)
    return path


def _calc(code, density, parameters=PARAMETERS):
    builder = OptDdapCalculation.get_builder()
    builder.code = code
    builder.charge_density = density
    builder.parameters = orm.Dict(parameters)
    builder.zval = orm.Dict({"Na": 1, "Cl": 7})
    return builder


def test_fingerprint_is_of_the_grid_not_the_bytes(nacl_chgcar, nacl_defect_chgcar, same_grid_other_bytes, singlefile,
                                                  tmp_path):
    first, second = singlefile(nacl_chgcar), singlefile(same_grid_other_bytes)
    assert first.base.caching.compute_hash() != second.base.caching.compute_hash()  # AiiDA's hash: the bytes
    assert density_fingerprint(first) == density_fingerprint(second)
    assert density_fingerprint(first).startswith("grid:")
    assert first.base.extras.get(EXTRA_KEY)["sha256"] == density_fingerprint(first)  # parsed once, kept
    assert density_fingerprint(singlefile(nacl_defect_chgcar)) != density_fingerprint(first)
    broken = tmp_path / "CHGCAR"
    broken.write_text("not a density\n")
    assert density_fingerprint(singlefile(broken)).startswith("bytes:")


def test_same_density_and_parameters_are_served_from_the_cache(optddap_code, nacl_chgcar, nacl_defect_chgcar,
                                                               same_grid_other_bytes, singlefile):
    _, original = run_get_node(_calc(optddap_code, singlefile(nacl_chgcar)))
    assert original.is_finished_ok, original.exit_message
    with enable_caching(identifier=IDENTIFIER):
        # the same grid in another file, through the restart work chain: its CalcJob comes from the cache
        builder = OptDdapBaseWorkChain.get_builder()
        builder.fit.code = optddap_code
        builder.fit.charge_density = singlefile(same_grid_other_bytes)
        builder.fit.parameters = orm.Dict(PARAMETERS)
        builder.fit.zval = orm.Dict({"Na": 1, "Cl": 7})
        _, workchain = run_get_node(builder)
        assert workchain.is_finished_ok
        # provenance: a work chain built without a protocol still labels and describes itself from its input
        assert workchain.label == "ClNa renamed_density.vasp.gz"
        assert "grid 24×24×24" in workchain.description and "charge definition classic" in workchain.description
        (cached,) = workchain.called
        assert cached.base.caching.is_created_from_cache
        assert cached.base.caching.get_cache_source() == original.uuid
        assert cached.outputs.charges.base.attributes.get("n_atoms") == 2
        # other parameters, or another grid: computed again
        _, other_parameters = run_get_node(_calc(optddap_code, singlefile(nacl_chgcar), {**PARAMETERS, "n_gauss": 2}))
        _, other_grid = run_get_node(_calc(optddap_code, singlefile(nacl_defect_chgcar)))
    for node in (other_parameters, other_grid):
        assert node.is_finished_ok and not node.base.caching.is_created_from_cache
