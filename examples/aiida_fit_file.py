"""Fit opt-DDAP charges to a density file with the ``optddap.fit`` CalcJob and print them.

Run with ``verdi run`` in a profile where ``aiida-optddap setup`` has registered the ``optddap`` code::

    verdi run examples/aiida_fit_file.py                       # examples/NaMgF3_CHG.gz, no optimisation
    verdi run examples/aiida_fit_file.py CHGCAR --optimize     # your file, with the parameter optimisation

The density is stored as a SinglefileData (an aiida-vasp ``chgcar`` output node works the same way).
"""

import argparse
import pathlib
import sys

from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import CalculationFactory

# `verdi run` sets __file__ to the bare file name; sys.argv[0] is the path it was given
HERE = pathlib.Path(sys.argv[0]).resolve().parent

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("density", nargs="?", default=str(HERE / "NaMgF3_CHG.gz"), help="CHGCAR/CHG/cube, .gz ok")
parser.add_argument("--code", default="optddap@localhost", help="the InstalledCode of the optddap CLI")
parser.add_argument("--optimize", action="store_true", help="optimise σ_start, f and g_c (slower)")
parser.add_argument("--steps", type=int, default=50)
args = parser.parse_args()

path = pathlib.Path(args.density).resolve()
density = orm.SinglefileData(file=path, filename=path.name).store()

builder = CalculationFactory("optddap.fit").get_builder()
builder.code = orm.load_code(args.code)
builder.charge_density = density
parameters = {"optimize": args.optimize}
if args.optimize:
    parameters.update(steps=args.steps, starts=2)
builder.parameters = orm.Dict(parameters)
builder.metadata.options.max_wallclock_seconds = 3600

results, node = run_get_node(builder)
print(f"{node.process_label}<{node.pk}> finished with exit status {node.exit_status} {node.exit_message or ''}")
if "charges" in results:
    charges = results["charges"]
    out = results["output_parameters"].get_dict()
    print(f"ChargesData<{charges.pk}>  κ = {out['condition_number']:.3g}  loss = {out['loss']:.3g}  "
          f"device = {out['device']}")
    print(charges.table())
    for element, summary in charges.base.attributes.get("elements").items():
        print(f"{element}: {summary['count']} atoms, mean {charges.base.attributes.get('summary_of')} "
              f"{summary['mean']:+.4f} e")
