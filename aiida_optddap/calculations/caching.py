"""The cache key of ``optddap.fit``: the parsed density grid and the options, not the bytes of the file.

AiiDA's hash of a CalcJob combines the hashes of its inputs, and that of a SinglefileData is the hash of its
bytes and file name. Two files holding the same density then differ by what does not change the fit: the
name, the title line of a CHGCAR, the number format, the compression (gzip even writes a time stamp), the
augmentation occupancies VASP appends. aiida-vasp found raw density files unreliable for hashing for these
reasons. Here the density inputs (``charge_density``, ``host_charge_density``) enter the hash of the
calculation through :func:`density_fingerprint` instead: a SHA-256 of what the engine reads (the reader of
``optddap fit``, :func:`aiida_optddap.engine.io.read_density`): grid shape and values, cell, symbols,
positions and the numeric metadata (block count, cube origin), with cell and positions rounded to 1e-8 Å.
``parameters``, ``zval``, ``structure``, the code and the CalcJob's options enter as AiiDA hashes them.

The fingerprint of a stored density is kept in its extra ``optddap_density_fingerprint`` (with the version
of this recipe and the ``species`` it was read with), so each density is parsed once. A file the reader
refuses is hashed by its bytes (its fit fails anyway).

With caching enabled for ``aiida.calculations:optddap.fit`` (``verdi config set caching.enabled_for
aiida.calculations:optddap.fit``, or ``enable_caching(identifier=...)``), a fit of the same density with the
same parameters is then served from the cache. The hash is stored on the CalcJobNode when it is created;
``verdi node rehash`` recomputes it with AiiDA's default (file bytes), after which such a node is found only
by an identical file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

from aiida.common.links import LinkType
from aiida.orm.nodes.process.calculation.calcjob import CalcJobNodeCaching

__all__ = ("DENSITY_INPUTS", "EXTRA_KEY", "FINGERPRINT_VERSION", "DensityGridCaching", "density_fingerprint",
           "use_density_grid_caching")

#: Inputs of ``optddap.fit`` that are density files.
DENSITY_INPUTS = ("charge_density", "host_charge_density")
#: Extra of a density node that keeps its fingerprint.
EXTRA_KEY = "optddap_density_fingerprint"
#: Version of the fingerprint recipe (a change invalidates the stored fingerprints, not the cache).
FINGERPRINT_VERSION = 1


def _update(hasher, label: str, value) -> None:
    import numpy as np

    hasher.update(label.encode())
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        hasher.update(f"{array.dtype.str}{array.shape}".encode())
        hasher.update(array.tobytes())
    else:
        hasher.update(repr(value).encode())


def _grid_digest(path: str, species) -> str:
    import numpy as np

    from ..engine.io import read_density

    density = read_density(path, species=species)
    hasher = hashlib.sha256()
    _update(hasher, "symbols", tuple(density.symbols))
    _update(hasher, "cell", np.round(density.cell, 8) + 0.0)
    _update(hasher, "positions", np.round(density.positions, 8) + 0.0)
    _update(hasher, "grid", np.asarray(density.grid, dtype=np.float64))
    for key in sorted(density.metadata):  # numbers and arrays (block count, cube origin, ...); not the title
        value = density.metadata[key]
        if isinstance(value, np.ndarray):
            _update(hasher, f"metadata.{key}", value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            _update(hasher, f"metadata.{key}", float(value))
    for name, value in sorted(vars(density).items()):  # any other array a reader adds (e.g. a spin density)
        if isinstance(value, np.ndarray) and name not in ("cell", "positions", "grid"):
            _update(hasher, f"field.{name}", value)
    return "grid:" + hasher.hexdigest()


def density_fingerprint(node, species=None) -> str:
    """``grid:<sha256>`` of the density in ``node`` as the engine reads it (see the module docs), or
    ``bytes:<sha256>`` of the file when the reader refuses it. Stored nodes keep it in an extra."""
    species_key = None if species is None else (species if isinstance(species, str) else ",".join(species))
    if node.is_stored:
        cached = node.base.extras.get(EXTRA_KEY, None)
        if isinstance(cached, dict) and cached.get("version") == FINGERPRINT_VERSION \
                and cached.get("species") == species_key and cached.get("sha256"):
            return cached["sha256"]
    suffix = os.path.basename(node.filename or "CHGCAR").strip(".") or "CHGCAR"
    with tempfile.TemporaryDirectory(prefix="optddap-hash-") as directory:
        path = os.path.join(directory, suffix)
        hasher = hashlib.sha256()
        with node.open(mode="rb") as source, open(path, "wb") as target:
            for chunk in iter(lambda: source.read(1 << 20), b""):
                hasher.update(chunk)
                target.write(chunk)
        try:
            fingerprint = _grid_digest(path, species)
        except Exception:  # noqa: BLE001 - an unreadable file is the engine's to report; hash its bytes
            fingerprint = "bytes:" + hasher.hexdigest()
    if node.is_stored:
        node.base.extras.set(EXTRA_KEY, {"version": FINGERPRINT_VERSION, "species": species_key,
                                         "sha256": fingerprint})
    return fingerprint


class DensityGridCaching(CalcJobNodeCaching):
    """AiiDA's CalcJob hash with the density inputs replaced by :func:`density_fingerprint`."""

    def get_objects_to_hash(self):
        objects = super().get_objects_to_hash()
        incoming = {entry.link_label: entry.node
                    for entry in self._node.base.links.get_incoming(link_type=LinkType.INPUT_CALC)}
        parameters = incoming.get("parameters")
        species = parameters.get_dict().get("species") if parameters is not None else None
        inputs = objects.setdefault("inputs", {})
        for label in DENSITY_INPUTS:
            if label in incoming:
                inputs[label] = density_fingerprint(incoming[label], species)
        objects["density_fingerprint_version"] = FINGERPRINT_VERSION
        return objects


def use_density_grid_caching(node) -> None:
    """Make ``node`` (a new, unstored ``optddap.fit`` CalcJobNode) hash its densities by their grids."""
    node._CLS_NODE_CACHING = DensityGridCaching
    node.base.__dict__.pop("caching", None)  # NodeBase.caching is a cached_property
