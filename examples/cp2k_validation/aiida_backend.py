"""analyse.py's ``--aiida`` backend: each fit an ``optddap.base`` work chain (``optddap.difference`` for Δρ when
installed, else ``optddap.base`` with ``host_charge_density``) on a project-local profile, created with
``verdi presto`` when missing; the results are read from the retrieved ``results.json`` and the PKs recorded."""

import json
import os
import subprocess
import sys
from pathlib import Path

from aiida_optddap.validation.frames import read_cube
from aiida_optddap.validation.vacancies import ZVAL


class AiidaBackend:
    """Fits through AiiDA (the same ``fit(defect, host, params)`` as the engine's backend)."""

    name = "aiida"

    def __init__(self, device: str, profile: str, aiida_path: Path):
        os.environ.setdefault("AIIDA_PATH", str(aiida_path))
        bin_dir = Path(sys.executable).parent
        if subprocess.run([str(bin_dir / "verdi"), "profile", "show", profile], capture_output=True).returncode:
            subprocess.run([str(bin_dir / "verdi"), "presto", "--profile-name", profile, "--use-zeromq"], check=True)
        subprocess.run([str(bin_dir / "aiida-optddap"), "-p", profile, "setup"], check=True)
        from aiida import load_profile, orm
        from aiida.plugins.entry_point import get_entry_point_names

        load_profile(profile)
        self.profile, self.orm, self.device = profile, orm, device
        self.code = orm.load_code("optddap@localhost")
        self.has_difference = "optddap.difference" in get_entry_point_names("aiida.workflows")
        self._files: dict = {}

    def _file(self, path: Path):
        if path not in self._files:
            self._files[path] = self.orm.SinglefileData(file=path, filename=path.name).store()
        return self._files[path]

    def _builder(self, defect: Path, host: Path | None, params: dict):
        from aiida.plugins import WorkflowFactory

        if host is not None and self.has_difference:
            builder = WorkflowFactory("optddap.difference").get_builder()
            builder.defect_density, builder.host_density = self._file(defect), self._file(host)
            base = builder.optddap
        else:
            builder = base = WorkflowFactory("optddap.base").get_builder()
            builder.fit.charge_density = self._file(defect)
            if host is not None:
                builder.fit.host_charge_density = self._file(host)
            else:
                builder.fit.zval = self.orm.Dict({el: ZVAL[el] for el in dict.fromkeys(read_cube(defect).symbols)})
        base.fit.code = self.code
        base.fit.parameters = self.orm.Dict({**params, "device": self.device})
        base.fit.metadata.options.max_wallclock_seconds = 6 * 3600
        base.max_iterations = self.orm.Int(2)
        return builder

    def fit(self, defect: Path, host: Path | None, params: dict) -> dict:
        from aiida.engine import run_get_node

        _, node = run_get_node(self._builder(defect, host, params))
        if not node.is_finished_ok:
            raise RuntimeError(f"{node.process_label}<{node.pk}> failed: {node.exit_status} {node.exit_message}")
        calcs = sorted((n for n in node.called_descendants if isinstance(n, self.orm.CalcJobNode)), key=lambda n: n.ctime)
        runs = [json.loads(n.outputs.retrieved.base.repository.get_object_content("results.json")) for n in calcs]
        results = runs[-1]
        results["aiida"] = {"profile": self.profile, "workchain": node.pk, "process_label": node.process_label,
                            "calcjobs": [n.pk for n in calcs], "charges": node.outputs.charges.pk}
        if len(runs) > 1 and runs[0]["starts"]:
            # optddap.base restarted a winner that hit the step limit (exit 400: twice the steps, from the reached
            # parameters, one start): the spread over the starts and the first part of the trajectory are the first
            # calculation's
            offset = len(runs[0]["history"])
            results["starts"], results["start_spread"] = runs[0]["starts"], runs[0]["start_spread"]
            results["history"] = runs[0]["history"] + [{**h, "step": h["step"] + offset} for h in results["history"]]
            results["aiida"]["restart_at_step"] = offset
        if "summary" in node.outputs:
            results["aiida"]["difference_summary"] = node.outputs.summary.get_dict()
        return results
