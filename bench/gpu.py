"""Part 4: the fixed fit and the optimisation on cuda vs cpu (speed-up), when torch sees a CUDA device;
otherwise it says so and records that nothing was run.
"""

from __future__ import annotations

import sys

from bench import harness
from bench.harness import console, fmt_ratio, fmt_s, gpu_available, median, table
from bench.synthetic import optimize_systems


def run(args) -> dict:
    con = console()
    con.rule("[bold]Part 4: CPU → GPU")
    if not gpu_available():
        import torch

        con.print(
            "[yellow]No CUDA device: torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}). Nothing was run on a GPU."
        )
        return {"part": "gpu", "cuda_available": False, "torch_cuda_build": torch.version.cuda,
                "note": "torch.cuda.is_available() is False on this machine; the GPU runs were skipped"}
    import torch

    from aiida_optddap.engine import fit

    repeats = args.repeats or (1 if args.quick else 3)
    steps = args.steps or (20 if args.quick else fit.FitOptions().steps)
    rows, systems = [], []
    for _key, label, make in optimize_systems(args.quick):
        density = make()
        entry = {"system": label, "atoms": density.n_atoms}
        for device in ("cpu", "cuda"):
            fixed_options = fit.FitOptions(optimize=False, device=device)
            opt_options = fit.FitOptions(device=device, steps=steps)
            fit.run_fit(density, fixed_options)  # warm-up (CUDA context, kernels)
            fixed, opt = [], []
            for _ in range(repeats):
                res = fit.run_fit(density, fixed_options)
                fixed.append(res["timings"]["setup"] + res["timings"]["fit"])
                res = fit.run_fit(density, opt_options)
                opt.append(res["timings"]["total"])
            entry[device] = {"fixed_fit_s": median(fixed), "optimize_total_s": median(opt),
                             "fixed_all": fixed, "optimize_all": opt}
            if device == "cuda":
                entry[device]["cuda_max_allocated"] = torch.cuda.max_memory_allocated()
        entry["speedup_fixed_fit"] = entry["cpu"]["fixed_fit_s"] / entry["cuda"]["fixed_fit_s"]
        entry["speedup_optimize"] = entry["cpu"]["optimize_total_s"] / entry["cuda"]["optimize_total_s"]
        systems.append(entry)
        rows.append([label, fmt_s(entry["cpu"]["fixed_fit_s"]), fmt_s(entry["cuda"]["fixed_fit_s"]),
                     fmt_ratio(entry["speedup_fixed_fit"]), fmt_s(entry["cpu"]["optimize_total_s"]),
                     fmt_s(entry["cuda"]["optimize_total_s"]), fmt_ratio(entry["speedup_optimize"])])
    con.print(
        table(
            f"Part 4 — CPU ({args.threads} threads) vs {torch.cuda.get_device_name(0)}, medians of {repeats}",
            ["system", "fixed fit cpu", "fixed fit cuda", "speed-up", "optimisation cpu", "optimisation cuda",
             "speed-up"],
            rows,
        )
    )
    return {"part": "gpu", "cuda_available": True, "device_name": torch.cuda.get_device_name(0),
            "repeats": repeats, "steps": steps, "systems": systems}


def add_arguments(p) -> None:
    p.add_argument("--steps", type=int, default=None)


if __name__ == "__main__":
    harness.part_main("gpu", sys.modules[__name__])
