"""``aiida-optddap dataset``: hand a charge dataset to MLIP training and to the other consumers.

::

    aiida-optddap dataset export GROUP_OR_PK -o DIR [--split 0.8,0.1,0.1] [--seed 0] [--mace-option key=value]
    aiida-optddap dataset show GROUP_OR_PK
    aiida-optddap dataset compare-latent GROUP_OR_PK PREDICTIONS.xyz -o merged.xyz   # REF_charges vs LES
    aiida-optddap dataset gaussians PK -o gaussians.json                            # Gaussian-charge model
    aiida-optddap dataset residual PK -o CHGCAR_residual                            # ρ_DFT − ρ_model

``GROUP_OR_PK`` is an ``optddap.dataset`` node, an ``optddap.dataset`` work chain, or a Group: one holding a
dataset node uses it; otherwise its ChargesData become the frames (with the energies, forces and stress of
the VASP calculation that wrote each density, found through the provenance graph, when there is one).
"""

from __future__ import annotations

import json
import pathlib
import tempfile

import click

from .profile import load_profile
from .text import article, plural

__all__ = ("dataset", "resolve_dataset", "misc_for_charges", "charges_results")


def _profile(ctx):
    root = ctx.find_root()
    return load_profile((root.obj or {}).get("profile"))


def misc_for_charges(charges):
    """The aiida-vasp ``misc`` Dict of the VASP calculation whose CHGCAR was fitted into ``charges``, or None."""
    from aiida import orm

    calc = charges.creator
    if calc is None or "charge_density" not in calc.inputs or "host_charge_density" in calc.inputs:
        return None
    density_creator = calc.inputs.charge_density.creator
    if isinstance(density_creator, orm.CalcJobNode) and "misc" in density_creator.outputs:
        return density_creator.outputs.misc
    return None


def resolve_dataset(identifier: str, fractions=None, seed: int = 0):
    """An ``optddap.dataset`` node (stored, or built in memory from a group's ChargesData) for ``identifier``."""
    from aiida import orm
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    from ..calculations.dataset import frame_from_charges, vasp_misc_properties
    from ..data.charges import ChargesData
    from ..data.dataset import DEFAULT_SPLIT, ChargeDatasetData

    node = None
    try:
        node = orm.load_node(identifier)
    except (NotExistent, MultipleObjectsError, ValueError):
        node = None
    if isinstance(node, ChargeDatasetData):
        return node
    if isinstance(node, orm.WorkflowNode) and "dataset" in node.outputs:
        return node.outputs.dataset
    if node is not None:
        raise click.BadParameter(f"node<{node.pk}> is {article(type(node).__name__)}, not a dataset or a dataset work chain",
                                 param_hint="GROUP_OR_PK")
    try:
        group = orm.load_group(label=identifier)
    except NotExistent as exc:
        raise click.BadParameter(f"{identifier!r} is neither a node nor a group label", param_hint="GROUP_OR_PK") from exc
    datasets = [n for n in group.nodes if isinstance(n, ChargeDatasetData)]
    if len(datasets) == 1:
        return datasets[0]
    if len(datasets) > 1:
        raise click.BadParameter(f"group {identifier!r} holds {len(datasets)} datasets; give the PK of one",
                                 param_hint="GROUP_OR_PK")
    frames = []
    for charges in sorted((n for n in group.nodes if isinstance(n, ChargesData)), key=lambda n: n.pk):
        if charges.base.attributes.get("mode") == "difference" or charges.net_charges is None:
            click.echo(f"skipping ChargesData<{charges.pk}>: no net charges", err=True)
            continue
        misc = misc_for_charges(charges)
        properties = vasp_misc_properties(misc.get_dict(), charges.n_atoms) if misc is not None else None
        frames.append(frame_from_charges(charges, properties))
    if not frames:
        raise click.BadParameter(f"group {identifier!r} holds no dataset and no ChargesData with net charges",
                                 param_hint="GROUP_OR_PK")
    return ChargeDatasetData.from_frames(frames, fractions=fractions or DEFAULT_SPLIT, seed=seed,
                                         source=f"group {identifier}")


def _mace_option(text: str):
    if "=" not in text:
        raise click.BadParameter(f"{text!r} is not key=value", param_hint="--mace-option")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


@click.group("dataset")
def dataset():
    """Export charge datasets for MLIP training (MACE/janus) and compare with LES latent charges."""


@dataset.command("show")
@click.argument("identifier", metavar="GROUP_OR_PK")
@click.pass_context
def show(ctx, identifier):
    """Frames, species, keys and splits of a dataset."""
    _profile(ctx)
    node = resolve_dataset(identifier)
    attrs = node.base.attributes
    click.echo(f"{type(node).__name__}<{node.pk}>: {plural(attrs.get('n_frames'), 'frame')}, "
               f"{plural(attrs.get('n_atoms_total'), 'atom')},"
               f" species {', '.join(attrs.get('species'))}")
    click.echo(f"per-atom keys: {', '.join(attrs.get('per_atom_keys'))}")
    click.echo(f"per-config keys: {', '.join(attrs.get('per_config_keys')) or '-'}")
    splits = attrs.get("splits")
    click.echo("splits: " + ", ".join(f"{name} {len(splits[name])}" for name in ("train", "valid", "test"))
               + f" (fractions {splits['fractions']}, seed {splits['seed']})")


@dataset.command("export")
@click.argument("identifier", metavar="GROUP_OR_PK")
@click.option("-o", "--output", "directory", type=click.Path(file_okay=False, path_type=pathlib.Path),
              required=True, help="Directory for train/valid/test.xyz, dataset.extxyz and mace_config.yml.")
@click.option("--split", default=None, help="Fractions train,valid,test (default: the dataset's own splits).")
@click.option("--seed", type=int, default=None, help="Seed of the random split (default: the dataset's).")
@click.option("--name", default="optddap_mace", show_default=True, help="Model name in the MACE/janus config.")
@click.option("--mace-option", "mace_options", multiple=True,
              help="Override a MACE option in the YAML, key=value (JSON values), e.g. max_num_epochs=50.")
@click.option("--target", type=click.Choice(["reference", "short-range"]), default="reference", show_default=True,
              help="Train on REF_* or on SR_* = REF − electrostatic baseline (optddap.electrostatic_baseline).")
@click.option("--charges-only", is_flag=True,
              help="Write the extxyz files without a training YAML (for a dataset with no energies/forces).")
@click.pass_context
def export(ctx, identifier, directory, split, seed, name, mace_options, target, charges_only):
    """Write train/valid/test extxyz files and a MACE (janus-compatible) training YAML naming their keys."""
    _profile(ctx)
    from ..data.dataset import MissingLabelsError, parse_split

    try:
        fractions = parse_split(split) if split is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--split") from exc
    node = resolve_dataset(identifier, fractions=fractions, seed=seed or 0)
    target = target.replace("-", "_")
    if not charges_only:
        try:  # refuse before writing anything
            node.training_keys(target)
        except MissingLabelsError as exc:
            raise click.ClickException(f"{exc} (--charges-only writes the extxyz files)") from exc
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    node.export(directory / "dataset.extxyz")
    files = node.write_splits(directory, fractions, seed)
    counts = {key: len(value) for key, value in node.split(fractions, seed).items()}
    for key, path in files.items():
        click.echo(f"{key}: {path} ({counts[key]} frames)")
    if charges_only:
        click.echo("charges only: no training YAML written")
        return
    overrides = dict(_mace_option(option) for option in mace_options)
    config = node.write_mace_config(directory / "mace_config.yml", files, name=name, target=target, **overrides)
    click.echo(f"MACE/janus config: {config}")
    attrs = node.base.attributes
    click.echo(f"keys: charges {attrs.get('charges_key')}, energy {attrs.get('energy_key')}, "
               f"forces {attrs.get('forces_key')}, stress {attrs.get('stress_key')}")


@dataset.command("compare-latent")
@click.argument("identifier", metavar="GROUP_OR_PK_OR_FILE")
@click.argument("predictions", type=click.Path(exists=True, dir_okay=False, path_type=pathlib.Path))
@click.option("--latent-key", default="MACE_latent_charges", show_default=True,
              help="Per-atom array of the latent charges (MACE's eval_configs writes MACE_latent_charges).")
@click.option("--ref-key", default="REF_charges", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=pathlib.Path), default=None,
              help="Write the frames with both arrays (extxyz).")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@click.pass_context
def compare_latent(ctx, identifier, predictions, latent_key, ref_key, output, as_json):
    """REF_charges (opt-DDAP) beside the latent charges of an LES model: correlation, scale, RMSE."""
    from ase.io import read, write

    from ..engine.exports import compare_latent_charges

    path = pathlib.Path(identifier)
    if path.is_file():
        reference = read(path, index=":")
    else:
        _profile(ctx)
        reference = resolve_dataset(identifier).read(":")
    try:
        frames, stats = compare_latent_charges(reference, read(predictions, index=":"), ref_key=ref_key,
                                               latent_key=latent_key)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    if output is not None:
        write(output, frames, format="extxyz", write_results=False)
    if as_json:
        click.echo(json.dumps(stats, indent=1))
        return
    click.echo(f"{stats['n_frames']} frames, {stats['n_atoms']} atoms: Pearson r {stats['pearson']:.4f}, "
               f"scale {stats['scale']:.4f} ({ref_key} ≈ scale × {latent_key}), RMSE {stats['rmse']:.4f} e, "
               f"after scaling {stats['rmse_scaled']:.4f} e")
    for element, row in stats["per_element"].items():
        click.echo(f"  {element:>3}: {row['count']:5d} atoms, mean {ref_key} {row['ref_mean']:+.4f}, "
                   f"mean {latent_key} {row['latent_mean']:+.4f}")
    if output is not None:
        click.echo(f"written to {output}")


def _charges_node(identifier):
    from aiida import orm

    from ..data.charges import ChargesData

    node = orm.load_node(identifier)
    if isinstance(node, orm.ProcessNode) and "charges" in node.outputs:
        node = node.outputs.charges
    if not isinstance(node, ChargesData):
        raise click.BadParameter(f"node<{node.pk}> is {article(type(node).__name__)}: give a ChargesData or a fit",
                                 param_hint="PK")
    return node


def charges_results(charges) -> dict:
    """The parts of a results dictionary that the engine exports need, from a ChargesData node."""
    attrs = charges.base.attributes
    results = {
        "symbols": charges.symbols,
        "mode": attrs.get("mode"),
        "populations": charges.populations.tolist(),
        "net_charges": None if charges.net_charges is None else charges.net_charges.tolist(),
    }
    for key in ("coefficients", "radii", "positions", "cell"):
        value = getattr(charges, key)
        if value is None:
            raise click.ClickException(f"ChargesData<{charges.pk}> stores no `{key}` array")
        results[key] = value.tolist()
    if charges.net_charges is not None:
        zval = {}
        for symbol, net, population in zip(charges.symbols, charges.net_charges, charges.populations):
            zval[symbol] = round(float(net + population), 6)
        results["zval"] = {"values": zval}
    return results


@dataset.command("gaussians")
@click.argument("identifier", metavar="PK")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=pathlib.Path),
              default=pathlib.Path("gaussians.json"), show_default=True)
@click.pass_context
def gaussians(ctx, identifier, output):
    """The per-atom Gaussian-charge model (coefficients, radii, charges) of a ChargesData or fit, as JSON."""
    _profile(ctx)
    from ..engine.exports import write_gaussian_model

    charges = _charges_node(identifier)
    write_gaussian_model(charges_results(charges), output)
    click.echo(f"Gaussian-charge model of ChargesData<{charges.pk}> ({plural(charges.n_atoms, 'atom')}) written to {output}")


@dataset.command("residual")
@click.argument("identifier", metavar="PK")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=pathlib.Path),
              default=pathlib.Path("CHGCAR_residual"), show_default=True)
@click.option("--model", "model_output", type=click.Path(dir_okay=False, path_type=pathlib.Path), default=None,
              help="Also write the model density here.")
@click.pass_context
def residual(ctx, identifier, output, model_output):
    """ρ_DFT − ρ_model of a ChargesData or fit on the grid of the density it was fitted to, as a CHGCAR."""
    _profile(ctx)
    from ..engine.io.density import difference_density
    from ..engine.exports import model_density, residual_density, write_chgcar
    from ..engine.io import read_density

    charges = _charges_node(identifier)
    calc = charges.creator
    if calc is None or "charge_density" not in calc.inputs:
        raise click.ClickException(f"ChargesData<{charges.pk}> was not made by an optddap fit of a density file")

    def local(node, folder):
        path = pathlib.Path(folder) / (node.filename or "CHGCAR")
        path.write_bytes(node.get_content(mode="rb"))
        return read_density(path)

    with tempfile.TemporaryDirectory() as folder:
        density = local(calc.inputs.charge_density, folder)
        if "host_charge_density" in calc.inputs:
            host_folder = pathlib.Path(folder) / "host"
            host_folder.mkdir()
            density = difference_density(density, local(calc.inputs.host_charge_density, host_folder))
    results = charges_results(charges)
    res = residual_density(results, density)
    write_chgcar(res, output, comment="opt-DDAP residual rho_DFT - rho_model")
    click.echo(f"residual written to {output}: grid {list(res.grid.shape)}, integral {res.n_electrons:.3e} e")
    if model_output is not None:
        write_chgcar(model_density(results, density), model_output, comment="opt-DDAP model density")
        click.echo(f"model density written to {model_output}")
