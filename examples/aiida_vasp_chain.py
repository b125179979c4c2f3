"""VASP → opt-DDAP charges with ``optddap.vasp`` (aiida-vasp's VaspWorkChain, then ``optddap.base``).

    verdi run examples/aiida_vasp_chain.py POSCAR --vasp-code vasp@cluster --family PBE.54 \\
        --mapping Na=Na_pv --mapping Cl=Cl --encut 520 --kspacing 0.25 [--daemon]

The structure is any file ase reads (POSCAR, CIF, extxyz). The chain forces LCHARG and the CHGCAR retrieval,
passes the VASP structure to the fit (checked against the CHGCAR) and the ZVALs of the OUTCAR (net charges of
the POTCARs actually used). Requires a configured VASP code and an uploaded POTCAR family
(``aiida-vasp potcar uploadfamily``).
"""

import argparse
import time

from aiida import orm
from aiida.engine import run_get_node, submit
from aiida.plugins import WorkflowFactory
from ase.io import read

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("structure", help="structure file (POSCAR, CIF, …)")
parser.add_argument("--vasp-code", required=True, help="label of the vasp.vasp code, e.g. vasp@cluster")
parser.add_argument("--optddap-code", default="optddap@localhost")
parser.add_argument("--family", required=True, help="POTCAR family label")
parser.add_argument("--mapping", action="append", default=[], help="element=POTCAR, e.g. Na=Na_pv (repeatable)")
parser.add_argument("--encut", type=float, default=520.0)
parser.add_argument("--kspacing", type=float, default=0.25, help="k-point spacing, 2π/Å")
parser.add_argument("--relax", action="store_true", help="relax the ions first (IBRION=2, NSW=100)")
parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
parser.add_argument("--machines", type=int, default=1)
parser.add_argument("--daemon", action="store_true", help="submit to the daemon instead of running here")
args = parser.parse_args()

structure = orm.StructureData(ase=read(args.structure))
mapping = dict(item.split("=", 1) for item in args.mapping) or {el: el for el in structure.get_kind_names()}
incar = {"encut": args.encut, "prec": "Accurate", "ediff": 1e-6, "ismear": 0, "sigma": 0.05, "lreal": False}
if args.relax:
    incar.update(ibrion=2, nsw=100, ediffg=-0.01, isif=2)

builder = WorkflowFactory("optddap.vasp").get_builder()
builder.vasp.code = orm.load_code(args.vasp_code)
builder.vasp.structure = structure
builder.vasp.parameters = orm.Dict({"incar": incar})
builder.vasp.kpoints_spacing = orm.Float(args.kspacing)
builder.vasp.potential_family = orm.Str(args.family)
builder.vasp.potential_mapping = orm.Dict(mapping)
builder.vasp.calc.metadata.options = {"resources": {"num_machines": args.machines}, "max_wallclock_seconds": 7200}
builder.optddap.fit.code = orm.load_code(args.optddap_code)
builder.optddap.fit.parameters = orm.Dict({"device": args.device})

if args.daemon:
    node = submit(builder)
    print(f"submitted {node.process_label}<{node.pk}>; waiting (Ctrl-C leaves it running)")
    while not node.is_terminated:
        time.sleep(5)
else:
    _, node = run_get_node(builder)

print(f"{node.process_label}<{node.pk}>: exit status {node.exit_status} {node.exit_message or ''}")
if "vasp" in node.outputs and "misc" in node.outputs.vasp:
    energies = node.outputs.vasp.misc["total_energies"]
    print(f"VASP energy (σ→0): {energies.get('energy_extrapolated')} eV")
if "zval" in node.outputs:
    print(f"Z_val from the OUTCAR: {node.outputs.zval.get_dict()}")
if "charges" in node.outputs:
    print(node.outputs.charges.table())
