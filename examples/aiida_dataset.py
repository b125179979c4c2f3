"""A charge dataset for MLIP training with ``optddap.dataset``, exported for MACE / janus-core.

    verdi run examples/aiida_dataset.py CHGCAR_1 CHGCAR_2 … [--group my-vasp-runs] [--max-concurrent 4] \\
        [--zval Na=1 --zval Mg=2 --zval F=7] [--export train_dir]

Sources are density files and/or a Group of VASP work chains (their energies, forces and stress become
REF_energy/REF_forces/REF_stress). Without arguments the NaMgF3 density of this folder is used (with
Z_val Na=1, Mg=2, F=7). With
``--export`` the train/valid/test files and ``mace_config.yml`` are written, as
``aiida-optddap dataset export`` does; then ``mace_run_train --config train_dir/mace_config.yml``.
"""

import argparse
import pathlib
import sys

from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import WorkflowFactory

HERE = pathlib.Path(sys.argv[0]).resolve().parent

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("densities", nargs="*", default=[str(HERE / "NaMgF3_CHG.gz")])
parser.add_argument("--group", default=None, help="label of a Group of VASP work chains / density files")
parser.add_argument("--code", default="optddap@localhost")
parser.add_argument("--zval", action="append", default=[], help="El=Z valence (repeatable; VASP runs use the OUTCAR)")
parser.add_argument("--steps", type=int, default=100)
parser.add_argument("--max-concurrent", type=int, default=4)
parser.add_argument("--output-group", default=None)
parser.add_argument("--split", default="0.8,0.1,0.1")
parser.add_argument("--export", default=None, help="directory for train/valid/test.xyz and mace_config.yml")
args = parser.parse_args()
if args.densities == parser.get_default("densities") and not args.zval:
    # the NaMgF3 density of this folder has no POTCAR/OUTCAR beside it, and a dataset takes Z_val only from
    # those or the user: its standard PAW potentials' values (examples/README.md)
    args.zval = ["Na=1", "Mg=2", "F=7"]

builder = WorkflowFactory("optddap.dataset").get_builder()
if args.densities:
    files = {}
    for i, name in enumerate(args.densities):
        path = pathlib.Path(name).resolve()
        files[f"density_{i:03d}"] = orm.SinglefileData(file=path, filename=path.name).store()
    builder.densities = files
if args.group:
    builder.group = orm.Str(args.group)
builder.optddap.fit.code = orm.load_code(args.code)
builder.optddap.fit.parameters = orm.Dict({"steps": args.steps, "starts": 2})
if args.zval:
    builder.optddap.fit.zval = orm.Dict({k: float(v) for k, v in (item.split("=", 1) for item in args.zval)})
builder.max_concurrent = orm.Int(args.max_concurrent)
if args.output_group:
    builder.output_group = orm.Str(args.output_group)
builder.dataset_parameters = orm.Dict({"split": [float(x) for x in args.split.split(",")], "seed": 0})

results, node = run_get_node(builder)
print(f"{node.process_label}<{node.pk}>: exit status {node.exit_status} {node.exit_message or ''}")
print(f"batches: {node.base.extras.get('summary', {}).get('batches')}")
if "dataset" not in results:
    sys.exit(1)
dataset = results["dataset"]
attrs = dataset.base.attributes
print(f"dataset<{dataset.pk}>: {attrs.get('n_frames')} frames, species {attrs.get('species')}, "
      f"per-atom {attrs.get('per_atom_keys')}, per-config {attrs.get('per_config_keys')}")
for frame in dataset.read(":"):
    print(f"  {frame.info['label']}: " + ", ".join(f"{s} {q:+.3f}" for s, q in
                                                    zip(frame.get_chemical_symbols(), frame.arrays["REF_charges"])))
if args.export:
    out = pathlib.Path(args.export)
    files = dataset.write_splits(out)
    config = dataset.write_mace_config(out / "mace_config.yml", files)
    print(f"wrote {', '.join(str(p) for p in files.values())} and {config}")
