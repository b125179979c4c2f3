"""bench/default_cost.py: the process runner, the results.json reader and the summary, on tiny inputs (no timing is
asserted: speed is checked by the bench itself)."""

from __future__ import annotations

import sys

from bench import default_cost  # the repository's bench/ package (python -m pytest runs from the root)


def test_run_process_reports_the_childs_peak_memory_and_exit(tmp_path):
    touch = "x = bytearray(200 * 2**20); x[::4096] = b'1' * len(x[::4096])"
    big = default_cost.run_process([sys.executable, "-c", touch], tmp_path)
    assert big["returncode"] == 0 and big["stopped"] is None
    assert big["peak_rss_bytes"] > 200 * 2**20  # the child's high-water mark, not this process's
    failed = default_cost.run_process([sys.executable, "-c", "import sys; sys.exit('no such file')"], tmp_path)
    assert failed["returncode"] == 1 and "no such file" in failed["stderr_tail"]


def test_run_process_stops_a_run_past_its_limits(tmp_path):
    slow = default_cost.run_process([sys.executable, "-c", "import time; time.sleep(30)"], tmp_path, timeout=0.5)
    assert slow["stopped"] == "timeout" and slow["returncode"] != 0 and slow["wall_s"] < 10
    greedy = default_cost.run_process(
        [sys.executable, "-c", "import time; x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096]); "
         "time.sleep(30)"], tmp_path, max_rss=100 * 2**20)
    assert greedy["stopped"] == "memory guard" and greedy["wall_s"] < 10


def test_model_record_and_summary():
    results = {"charge_definition": "auto", "charge_model": "restrained", "timings": {"total": 2.0},
               "model_choice": {"reason": "the width of Na sits on a bound"}, "populations": [1.0, 7.0]}
    model = default_cost.model_record(results)
    assert model["charge_model"] == "restrained" and model["timings"] == {"total": 2.0}
    assert model["reason"] == results["model_choice"]["reason"]
    assert default_cost.model_record({"charge_model": "shape"})["reason"] is None
    runs = [{"wall_s": w, "peak_rss_bytes": m, "returncode": rc, "stopped": s}
            for w, m, rc, s in [(3.0, 10, 0, None), (1.0, 30, 0, None), (2.0, 20, 0, None), (9.0, 99, -9, "timeout")]]
    summary = default_cost.summarise(runs)
    assert summary == {"wall_s": 2.0, "peak_rss_bytes": 20, "n_ok": 3, "n_runs": 4}
    assert default_cost.summarise(runs[3:])["wall_s"] is None
    assert default_cost.ratio(1.0, 4.0) == 0.25 and default_cost.ratio(None, 4.0) is None


def test_rows_and_table_size():
    run = {"wall_s": 2.0, "peak_rss_bytes": 2**20, "returncode": 0, "stopped": None,
           "model": {"charge_model": "shape", "reason": "the shape model places every element"}}
    record = {"label": "tiny", "baderkit_first": run, "baderkit": [run], "default": [run], "shape": [run],
              "baderkit_summary": default_cost.summarise([run]), "default_summary": default_cost.summarise([run]),
              "shape_summary": default_cost.summarise([run]), "ratio_wall": 1.0, "ratio_shape_wall": 1.0}
    rows = default_cost.rows_for({"tiny": record})
    assert len(rows) == 4 and "shape: the shape model places every element" in rows[2][-1]
    default_cost.table_check(record, "nacl512")
    assert record["shape_table_values"] > record["max_table_values"]  # why auto falls back at 512 atoms
    default_cost.table_check(record, "nacl64")
    assert record["shape_table_values"] < record["max_table_values"]
