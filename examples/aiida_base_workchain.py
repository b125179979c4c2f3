"""Run the ``optddap.base`` work chain (automatic restarts) and query the results.

    verdi run examples/aiida_base_workchain.py                   # in this process, examples/NaMgF3_CHG.gz
    verdi run examples/aiida_base_workchain.py --daemon          # submit to the daemon (`verdi daemon start`)
    verdi run examples/aiida_base_workchain.py --device cuda     # no GPU? the work chain restarts on the CPU

On a SLURM GPU cluster, request the GPU through the options (see docs/plugin.md, "GPU")::

    builder.fit.metadata.options.custom_scheduler_commands = '#SBATCH --gres=gpu:1'
    builder.fit.metadata.options.prepend_text = 'module load cuda'
"""

import argparse
import pathlib
import sys
import time

from aiida import orm
from aiida.engine import run_get_node, submit
from aiida.plugins import DataFactory, WorkflowFactory

# `verdi run` sets __file__ to the bare file name; sys.argv[0] is the path it was given
HERE = pathlib.Path(sys.argv[0]).resolve().parent
ChargesData = DataFactory("optddap.charges")
OptDdapBaseWorkChain = WorkflowFactory("optddap.base")

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("density", nargs="?", default=str(HERE / "NaMgF3_CHG.gz"))
parser.add_argument("--code", default="optddap@localhost")
parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
parser.add_argument("--solver", default="pinv", choices=["pinv", "lagrange", "scale", "shift", "kkt"])
parser.add_argument("--steps", type=int, default=20, help="Adam steps; too few → 400, the work chain doubles them")
parser.add_argument("--daemon", action="store_true", help="submit to the daemon instead of running here")
args = parser.parse_args()

path = pathlib.Path(args.density).resolve()
builder = OptDdapBaseWorkChain.get_builder()
builder.fit.code = orm.load_code(args.code)
builder.fit.charge_density = orm.SinglefileData(file=path, filename=path.name).store()
builder.fit.parameters = orm.Dict({"device": args.device, "solver": args.solver, "steps": args.steps, "starts": 1})
builder.fit.metadata.options.max_wallclock_seconds = 3600
builder.max_iterations = orm.Int(4)

if args.daemon:
    node = submit(builder)
    print(f"submitted {node.process_label}<{node.pk}>; waiting (Ctrl-C leaves it running)")
    while not node.is_terminated:
        time.sleep(2)
else:
    _, node = run_get_node(builder)

print(f"{node.process_label}<{node.pk}>: exit status {node.exit_status} {node.exit_message or ''}")
for child in sorted(node.called, key=lambda n: n.ctime):
    print(f"  {child.process_label}<{child.pk}> exit {child.exit_status}: {child.inputs.parameters.get_dict()}")
if "charges" in node.outputs:
    print(node.outputs.charges.table())

# Queries: every well-conditioned fit containing Na, ordered by loss; every Na above +0.8 e on average.
qb = orm.QueryBuilder()
qb.append(ChargesData, tag="charges", project=["id", "attributes.formula", "attributes.loss"],
          filters={"attributes.condition_number": {"<": 1e6}, "attributes.elements.Na.count": {">": 0}})
qb.order_by({"charges": [{"attributes.loss": {"order": "asc", "cast": "f"}}]})
print("κ < 1e6 with Na, by loss:", qb.all())
qb = orm.QueryBuilder().append(ChargesData, filters={"attributes.elements.Na.mean": {">": 0.8}}, project="id")
print("mean Na net charge > 0.8 e:", qb.all(flat=True))
