"""``aiida-optddap launch mlip``: ``optddap.mlip``, fits → dataset (+ labels) → electrostatic baseline → MACE
training → evaluation, and the matching of a labels file's records to the densities."""

from __future__ import annotations

import pathlib

import click

from ..profile import load_profile
from ..utils import launch as launching  # launch_process looked up when called: tests capture the builder there
from ..utils.nodes import density_node, load_code
from ..utils.options import OUTPUT_GROUP, launch_options
from ..utils.parse import parse_param

__all__ = ("launch_mlip", "match_properties")

_COMPRESSED = (".gz", ".bz2", ".xz")
#: The scheduler options of ``launch`` that apply to the training job as well as to the fits.
_SHARED_SCHEDULER_OPTIONS = ("queue", "account", "qos", "memory", "scheduler_commands")


def _uncompressed(name: str) -> str:
    """``name`` without a compression suffix (``.gz``, ``.bz2``, ``.xz``)."""
    for suffix in _COMPRESSED:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _aliases(label: str, node) -> set[str]:
    """Names a labels file may use for a density: its label, its file name with and without compression suffix
    and without any suffix."""
    names = {label}
    for name in (getattr(node, "filename", None), node.label):
        if not name:
            continue
        names.add(name)
        stripped = _uncompressed(name)
        names.add(stripped)
        names.add(stripped.split(".")[0])
    return names


def _density_label(node, used: set) -> str:
    """A link label for ``node`` from its file's stem, unique among ``used`` (which it joins)."""
    from ...workflows.dataset import link_label

    name = _uncompressed(node.filename or node.label or f"density_{node.pk}")
    stem = name.split(".")[0] if "." in name and not name.startswith(".") else name
    label = link_label(stem)
    if label in used:
        parent = pathlib.Path(node.description.rsplit(" ", 1)[-1]).parent.name if node.description else ""
        label = link_label(f"{parent}_{stem}") if parent else label
    while label in used:
        label += "_"
    used.add(label)
    return label


def _listed(names, count: int) -> str:
    """The first ``count`` of ``names``, comma-separated, with `` …`` when there are more."""
    return ", ".join(names[:count]) + (" …" if len(names) > count else "")


def match_properties(records, densities: dict) -> dict:
    """``{density label: properties}`` for the ``(key, properties)`` of :func:`read_properties`: a key names a
    density (label, file name or stem); an int is the position among the densities. Records that name no given
    density are ignored with a note (a labels file may cover more frames than are launched); none matching
    raises."""
    labels = list(densities)
    lookup: dict[str, str] = {}
    for label, node in densities.items():
        for alias in _aliases(label, node):
            lookup.setdefault(alias, label)
    matched, unknown = {}, []
    for key, properties in records:
        if isinstance(key, int):
            label = labels[key] if key < len(labels) else None
        else:
            label = lookup.get(str(key)) or lookup.get(str(key).split(".")[0])
        if label is None:
            unknown.append(str(key))
        elif label in matched:
            raise click.UsageError(f"two records of the labels files name the density {label}")
        else:
            matched[label] = properties
    if unknown and not matched:
        raise click.UsageError(f"the labels name no given density: {_listed(unknown, 10)}"
                               f" (densities: {', '.join(labels[:10])})")
    if unknown:
        click.echo(f"note: {len(unknown)} record(s) of the labels name no given density, ignored: "
                   f"{_listed(unknown, 5)}", err=True)
    return matched


def _densities(sources) -> dict:
    """``{link label: SinglefileData}`` of the densities SOURCES names (files are stored)."""
    densities, used = {}, set()
    for source in sources:
        node = density_node(source)
        densities[_density_label(node, used)] = node
    return densities


def _labelled_properties(labels_files, densities: dict) -> tuple[dict, dict]:
    """The properties the ``--labels`` files give each density, and the Z_val they declare ({} if none)."""
    from ...workflows.mlip import read_properties

    records, zval = [], {}
    for path in labels_files:
        try:
            found, more = read_properties(path)
        except Exception as exc:  # noqa: BLE001 - JSON and ASE raise many kinds
            raise click.BadParameter(f"{path}: {exc}", param_hint="--labels") from exc
        records.extend(found)
        zval.update(more.get("zval") or {})
    if not records:
        return {}, zval
    properties = match_properties(records, densities)
    missing = sorted(set(densities) - set(properties))
    if missing:
        click.echo(f"warning: no labels for {len(missing)} densit{'y' if len(missing) == 1 else 'ies'}: "
                   f"{_listed(missing, 5)}", err=True)
    return properties, zval


def _split_fractions(split: str) -> list[float]:
    """``--split`` as train/valid/test fractions."""
    from ...data.dataset import parse_split

    try:
        return list(parse_split(split))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--split") from exc


def _mlip_overrides(overrides: dict, max_concurrent, output_group, split, use_baseline, baseline_charges,
                    mace_options, epochs) -> None:
    """Put the mlip command's own options into the work chain's ``overrides`` (in place)."""
    dataset_overrides = overrides.setdefault("dataset", {})
    if max_concurrent is not None:
        dataset_overrides["max_concurrent"] = max_concurrent
    if output_group:
        dataset_overrides["output_group"] = output_group
    if split:
        dataset_overrides.setdefault("dataset_parameters", {})["split"] = _split_fractions(split)
    if use_baseline is not None:
        overrides["use_baseline"] = use_baseline
    if baseline_charges is not None:
        overrides.setdefault("baseline", {})["charges"] = baseline_charges
    parameters = dict(parse_param(item) for item in mace_options)
    if epochs is not None:
        parameters["max_num_epochs"] = epochs
    if parameters:
        overrides.setdefault("train", {}).setdefault("train", {}).setdefault("parameters", {}).update(parameters)


@click.command("mlip")
@click.argument("sources", nargs=-1)
@click.option("--labels", "labels_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Energies/forces/stress per density: JSON ({'frames': [...]} or {label: {...}}) or a file ASE "
                   "reads (extxyz: by info['label'], else in order). Repeatable.")
@click.option("--mace-code", default="mace_run_train@localhost", show_default=True,
              help="The `mace_run_train` code (label@computer, PK or UUID).")
@click.option("--max-concurrent", type=click.IntRange(min=1), default=None,
              help="Fits running at the same time (default: the protocol's: fast 8, moderate/precise 4).")
@click.option("--baseline/--no-baseline", "use_baseline", default=None,
              help="Train on REF − electrostatics and add it back (default), or MACE alone on REF.")
@click.option("--baseline-charges", type=click.Choice(["per_element", "qeq"]), default=None,
              help="Charges of the baseline: fixed per element (the dataset's means; the protocol's default) or "
                   "predicted by a charge-equilibration model fitted to the dataset's charges.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="MACE max_num_epochs (default: the protocol's).")
@click.option("--mace-option", "mace_options", multiple=True, metavar="KEY=VALUE",
              help="MACE option of the training, e.g. `num_channels=16` (repeatable; JSON values).")
@click.option("--split", default=None, help="Train/valid/test fractions, e.g. 0.8,0.1,0.1.")
@OUTPUT_GROUP
@click.option("--train-walltime", default=None, help="Wall time of the training job (default: the protocol's).")
@click.option("--train-gpus", type=click.IntRange(min=0), default=None,
              help="GPUs of the training job (the scheduler's request line; MACE device cuda).")
@launch_options
@click.pass_context
def launch_mlip(ctx, sources, labels_files, mace_code, max_concurrent, use_baseline, baseline_charges, epochs,
                mace_options, split, output_group, train_walltime, train_gpus, **kw):
    """Run `optddap.mlip` on SOURCES (density files or PKs/UUIDs of densities): fits → dataset (+ --labels) →
    electrostatic baseline → MACE training → evaluation. The scheduler options above apply to every job (the
    fits and the training) except --walltime/--gpus, which are the fits'; --train-walltime/--train-gpus the
    training's."""
    load_profile(ctx.obj["profile"])
    from ...workflows.mlip import MlipWorkChain

    if not sources:
        raise click.UsageError("give the densities (files or node PKs/UUIDs)")
    daemon, wait, timeout = launching.run_options(kw)
    shared = [kw[key] for key in _SHARED_SCHEDULER_OPTIONS]
    common = launching.protocol_kwargs(kw, fit_path=("dataset", "optddap", "fit"))
    _mlip_overrides(common["overrides"], max_concurrent, output_group, split, use_baseline, baseline_charges,
                    mace_options, epochs)
    densities = _densities(sources)
    properties, labels_zval = _labelled_properties(labels_files, densities)
    if common["zval"] is None and labels_zval:
        common["zval"] = dict(labels_zval)
        click.echo(f"Z_val from the labels file: {', '.join(f'{k}={v}' for k, v in common['zval'].items())}")
    mace = load_code(mace_code, "--mace-code", "register mace_run_train as an InstalledCode")
    train_options = launching.scheduler_option_values(train_walltime, *shared)
    builder = launching.build(MlipWorkChain, densities, mace_code=mace, properties=properties,
                              train_options=train_options or None, train_gpus=train_gpus, **common)
    launching.launch_process(builder, daemon, wait, timeout)
