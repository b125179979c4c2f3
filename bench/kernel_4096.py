"""The kernel route of the potential model forced on the 4096-atom synthetic rock salt (issue 18, item 4).

`auto` does not take this route there: the kernel tables' cap (``kernel_tables.MAX_KERNEL_VALUES``, 2²⁸ values,
≈ 2 440 atoms) sends cells that large to the restrained model. This script lifts the cap in its own process only, to
measure what the route would cost: ``python -m bench.kernel_4096 [DIR]`` writes DIR/CHGCAR (bench/synthetic.py's
rock salt, 8×8×8 conventional cells, 0.1175 Å grid: 384³, 1.0 GB; kept when it is there), runs ``optddap fit`` on it
in this process with ``--zval Na=6.6,Cl=7.5``, and writes bench/results/kernel_4096.json (wall time, peak RSS,
the run's stage timings, widths and charges). Not part of ``bench/run.py``: it needs ≈ 9 GiB and ≈ 7 minutes.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from bench import harness


def main(folder: Path) -> dict:
    from aiida_optddap.engine.cli import main as optddap
    from aiida_optddap.engine.exports import write_chgcar
    from aiida_optddap.engine.species import kernel_tables
    from bench.synthetic import rocksalt_density

    path, out = folder / "CHGCAR", folder / "out.json"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        write_chgcar(rocksalt_density(8), path)
    kernel_tables.MAX_KERNEL_VALUES = 2**40  # this process only
    start, load = time.perf_counter(), harness.loadavg()
    sys.argv = ["optddap", "fit", str(path), "-o", str(out), "--quiet", "--zval", "Na=6.6,Cl=7.5"]
    try:
        optddap()
    except SystemExit as exc:
        code = exc.code
    result = json.loads(out.read_text())
    import torch

    return {"part": "kernel_4096", "machine": harness.machine_info(torch.get_num_threads()),
            "load_before": load, "load_after": harness.loadavg(), "exit": code,
            "wall_s": time.perf_counter() - start,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "charge_model": result["charge_model"], "fit_route": result["fit_route"],
            "timings": result["timings"], "species_widths": result["species_widths"],
            "net_charges_first_na_cl": [result["net_charges"][0], result["net_charges"][-1]],
            "uncertainty_max": result["uncertainty"]["max"]}


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="optddap-4096-"))
    record = main(folder)
    harness.RESULTS.joinpath("kernel_4096.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
