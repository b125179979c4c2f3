"""The nodes a command's argument names: a file (stored as a new node) or a node PK/UUID of the right type."""

from __future__ import annotations

import pathlib

import click

from ..text import article

__all__ = ("density_node", "structure_node", "valence_nodes", "load_node_of", "load_code")


def load_node_of(value: str, node_class):
    """The node ``value`` (PK or UUID) names, which must be a ``node_class``; else a one-line BadParameter."""
    from aiida import orm

    try:
        node = orm.load_node(value)
    except Exception as exc:  # noqa: BLE001 - report any failure to load in one message
        raise click.BadParameter(f"{value!r} is neither a file nor a node identifier ({exc})") from exc
    if not isinstance(node, node_class):
        raise click.BadParameter(f"node<{node.pk}> is {article(type(node).__name__)}, not a {node_class.__name__}")
    return node


def load_code(identifier: str, param_hint: str, advice: str | None = None):
    """The code ``identifier`` (label@computer, PK or UUID) names; a BadParameter naming ``param_hint`` (with
    ``advice`` after the error) when there is none."""
    from aiida import orm

    try:
        return orm.load_code(identifier)
    except Exception as exc:  # noqa: BLE001 - NotExistent, MultipleObjectsError, ...
        raise click.BadParameter(f"{exc} ({advice})" if advice else str(exc), param_hint=param_hint) from exc


def density_node(value: str):
    """A node for FILE_OR_PK: an existing path becomes a new SinglefileData (keeping the file's name, labelled
    with it and described by its absolute path), else a PK/UUID is loaded."""
    from aiida import orm

    from ...workflows.protocols import density_node as file_node

    path = pathlib.Path(value)
    if path.is_file():
        return file_node(path).store()
    return load_node_of(value, orm.SinglefileData)


def structure_node(value: str):
    """A StructureData for STRUCTURE: a file ASE can read (stored), or a PK/UUID."""
    from aiida import orm

    path = pathlib.Path(value)
    if path.is_file():
        from ase.io import read

        try:
            atoms = read(path)
        except Exception as exc:  # noqa: BLE001 - ASE raises many kinds
            raise click.BadParameter(f"{value}: ASE cannot read a structure ({exc})") from exc
        return orm.StructureData(ase=atoms, label=path.name, description=f"structure read from {path.resolve()}").store()
    return load_node_of(value, orm.StructureData)


def valence_nodes(density: str) -> dict:
    """The files beside the density file ``density`` that the engine takes Z_val and the declared charge from,
    stored as SinglefileData for ``optddap.fit``'s ``potcar``/``outcar`` (VASP files) or ``cp2k_input`` (cubes),
    so that the CalcJob resolves Z_val as ``optddap fit`` does on the same folder; {} for a node identifier."""
    from ...workflows.dataset import valence_files

    path = pathlib.Path(density)
    return {kind: node.store() for kind, node in valence_files(path).items()} if path.is_file() else {}
