"""Regression checks: results against a reference, within per-metric tolerances.

Hand-written records for the rules (no model runs), and one real tiny sweep in this process
that a deliberately broken method must fail."""

from __future__ import annotations

import copy
import importlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from bench.regress import main
from tests.conftest import synth_set

REPO = Path(__file__).resolve().parents[1]
# (method, w_bits, a_bits) -> task -> metrics, as the tasks write them (fps is a timing)
VALUES = {
    ("fp", None, None): {"vos": {"J&F": 71.25, "J": 69.0, "F": 73.5, "frames": 24, "sequences": 3, "fps": 2.2},
                         "instseg": {"mIoU": 80.0, "mIoU_small": 60.0, "mIoU_large": None, "n": 26, "images": 8,
                                     "multimask": False}},
    ("rtn", 4, 4): {"vos": {"J&F": 60.04, "J": 58.0, "F": 62.08, "frames": 24, "sequences": 3, "fps": 1.7},
                    "instseg": {"mIoU": 70.3, "mIoU_small": 40.0, "mIoU_large": None, "n": 26, "images": 8,
                                "multimask": False}},
}
CHECKED = ["F", "J", "J&F", "frames", "images", "mIoU", "mIoU_large", "mIoU_small", "n", "sequences"]
TOLERANCE = {"J&F": 1.0, "J": 1.0, "F": 1.0, "mIoU": 1.0, "mIoU_small": 1.0, "n": 0, "images": 0, "frames": 0,
             "sequences": 0}


def record(method: str, w: int | None, a: int | None, task: str, metrics: dict | None = None) -> dict:
    metrics = copy.deepcopy(VALUES[(method, w, a)][task]) if metrics is None else metrics
    return {"model": "micro", "method": method, "variant": "", "w_bits": w, "a_bits": a, "task": task,
            "status": "ok", "metrics": metrics, "timings": {"task_s": 3.0, "total_s": 4.0},
            "config": {"cell": {"seed": 0}}, "date": "2025-01-01T00:00:00+00:00", "cell_id": f"{method}{w}{a}{task}"}


def write_records(folder: Path, edit=None) -> Path:
    """One record per cell of VALUES; `edit(record)` may change one (return None to drop it)."""
    folder.mkdir(parents=True, exist_ok=True)
    for (method, w, a), tasks in VALUES.items():
        for task in tasks:
            rec = record(method, w, a, task)
            rec = edit(rec) if edit else rec
            if rec is not None:
                (folder / f"{rec['cell_id']}.json").write_text(json.dumps(rec, indent=2))
    return folder


def reference_doc() -> dict:
    """The reference format, written out by hand."""
    cells = [{"model": "micro", "method": m, "variant": "", "w_bits": w, "a_bits": a, "task": task,
              "metrics": {k: v for k, v in metrics.items() if k in CHECKED}}
             for (m, w, a), tasks in VALUES.items() for task, metrics in tasks.items()]
    return {"format": 1, "checked_metrics": CHECKED, "tolerance": TOLERANCE, "default_tolerance": 1.0,
            "cells": cells}


@pytest.fixture
def reference(tmp_path) -> Path:
    folder = tmp_path / "reference" / "ci"
    folder.mkdir(parents=True)
    (folder / "reference.json").write_text(json.dumps(reference_doc(), indent=2))
    return folder


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def fails(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("FAIL")]


@pytest.mark.parametrize("form", ["json", "yaml"])
def test_identical_results_pass(tmp_path, reference, capsys, form):
    if form == "yaml":  # the same reference as YAML (safe_load)
        (reference / "reference.yaml").write_text(yaml.safe_dump(reference_doc()))
        (reference / "reference.json").unlink()
    results = write_records(tmp_path / "results" / "regress")
    code, out, err = run(capsys, results, "--against", reference)
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0].split() == ["cell", "metric", "reference", "ours", "delta", "tol", "result"]
    assert lines[-1] == f"regress: 20 metrics of 4 cells within tolerance of {reference}"
    row = next(line for line in lines if line.startswith("micro rtn W4A4 instseg") and " mIoU " in line)
    assert row.split()[-5:] == ["70.3", "70.3", "+0.0", "1.0", "OK"]
    row = next(line for line in lines if line.startswith("micro rtn W4A4 instseg") and " mIoU_large " in line)
    assert row.split()[-4:] == ["null", "null", "1.0", "OK"]  # no value on either side (no delta)
    assert not fails(out) and err == ""


def test_metric_beyond_tolerance_fails_naming_cell_and_metric(tmp_path, reference, capsys):
    def edit(rec):
        if (rec["method"], rec["task"]) == ("rtn", "instseg"):
            rec["metrics"]["mIoU"] = 61.2
        return rec

    results = write_records(tmp_path / "r", edit)
    code, out, _ = run(capsys, results, "--against", reference)
    assert code == 1
    assert fails(out) == ["FAIL micro rtn W4A4 instseg mIoU: 61.2 vs reference 70.3 (|delta| 9.1 > tol 1.0)"]
    assert out.splitlines()[-1] == f"regress: 1 failures in 1 of 4 reference cells of {reference}"
    row = next(line for line in out.splitlines() if line.startswith("micro rtn W4A4 instseg") and " mIoU " in line)
    assert row.split()[-5:] == ["70.3", "61.2", "-9.1", "1.0", "FAIL"]


@pytest.mark.parametrize("metric,task,delta,code", [
    ("mIoU", "instseg", 0.9, 0), ("mIoU", "instseg", -1.0, 0), ("mIoU", "instseg", 1.01, 1),
    ("J&F", "vos", -0.99, 0), ("n", "instseg", 1, 1), ("frames", "vos", -1, 1),  # counts: tolerance 0
    ("J_recall", "vos", 50.0, 0),  # not a checked metric
])
def test_tolerance_is_absolute_per_metric(tmp_path, reference, capsys, metric, task, delta, code):
    def edit(rec):
        if (rec["method"], rec["task"]) == ("fp", task):
            rec["metrics"][metric] = rec["metrics"].get(metric, 0) + delta
        return rec

    got, out, _ = run(capsys, write_records(tmp_path / "r", edit), "--against", reference)
    assert got == code, out
    assert [line.split(":")[0] for line in fails(out)] == ([f"FAIL micro fp FP {task} {metric}"] if code else [])


def test_missing_and_failed_cells_fail(tmp_path, reference, capsys):
    def edit(rec):
        if (rec["method"], rec["task"]) == ("rtn", "vos"):
            return None
        if (rec["method"], rec["task"]) == ("fp", "instseg"):
            rec.update(status="failed", metrics={}, error="RuntimeError: out of memory\nTraceback ...")
        return rec

    code, out, _ = run(capsys, write_records(tmp_path / "r", edit), "--against", reference)
    assert code == 1
    assert fails(out) == ["FAIL micro fp FP instseg: failed in the results (RuntimeError: out of memory)",
                          "FAIL micro rtn W4A4 vos: missing from the results (the reference has it)"]


def test_metric_missing_from_a_record_or_null_fails(tmp_path, reference, capsys):
    def edit(rec):
        if (rec["method"], rec["task"]) == ("rtn", "instseg"):
            del rec["metrics"]["mIoU_small"]
            rec["metrics"]["mIoU_large"] = 12.0  # the reference says null: no value
        return rec

    code, out, _ = run(capsys, write_records(tmp_path / "r", edit), "--against", reference)
    assert code == 1
    assert fails(out) == ["FAIL micro rtn W4A4 instseg mIoU_large: 12.0 vs reference null",
                          "FAIL micro rtn W4A4 instseg mIoU_small: missing from the record (reference 40.0)"]


def test_timings_are_never_compared(tmp_path, reference, capsys):
    def edit(rec):
        rec["timings"] = {"task_s": 999.0, "total_s": 1e6}
        if rec["task"] == "vos":
            rec["metrics"]["fps"] = 1000.0
        return rec

    doc = reference_doc()  # even a reference cell that holds fps does not compare it
    doc["cells"][0]["metrics"]["fps"] = 2.2
    (reference / "reference.json").write_text(json.dumps(doc))
    code, out, _ = run(capsys, write_records(tmp_path / "r", edit), "--against", reference)
    assert code == 0 and "fps" not in out and "_s " not in out


def test_cells_not_in_the_reference_are_warnings(tmp_path, reference, capsys):
    results = write_records(tmp_path / "r")
    extra = record("rtn", 4, 4, "vos") | {"method": "lsq", "cell_id": "lsq"}
    (results / "lsq.json").write_text(json.dumps(extra))
    code, out, err = run(capsys, results, "--against", reference)
    assert code == 0
    assert err == "warning: micro lsq W4A4 vos: not in the reference (not checked)\n"


def test_write_reference_round_trips(tmp_path, capsys):
    def edit(rec):
        if (rec["method"], rec["task"]) == ("rtn", "vos"):
            rec.update(status="failed", metrics={}, error="boom")
        return rec

    results = write_records(tmp_path / "results" / "regress", edit)
    folder = tmp_path / "reference" / "regress"
    code, out, err = run(capsys, results, "--write-reference", folder, "--tolerance", "J&F=0.5,default=2")
    assert code == 0, err
    assert "warning: micro rtn W4A4 vos: failed in the results; left out of the reference" in err
    assert [p.name for p in folder.iterdir()] == ["reference.json"]  # nothing temporary left
    doc = json.loads((folder / "reference.json").read_text())
    assert doc["format"] == 1 and doc["checked_metrics"] == CHECKED  # no fps, no booleans
    assert doc["tolerance"]["J&F"] == 0.5 and doc["tolerance"]["mIoU"] == 1.0 and doc["tolerance"]["n"] == 0
    assert doc["default_tolerance"] == 2.0
    assert [(c["method"], c["task"]) for c in doc["cells"]] == [("fp", "instseg"), ("fp", "vos"), ("rtn", "instseg")]
    inst = doc["cells"][2]
    assert inst == {"model": "micro", "method": "rtn", "variant": "", "w_bits": 4, "a_bits": 4, "task": "instseg",
                    "metrics": {"images": 8, "mIoU": 70.3, "mIoU_large": None, "mIoU_small": 40.0, "n": 26}}
    assert run(capsys, results, "--against", folder)[0] == 0
    # an update keeps the stated tolerances; --tolerance overrides one
    assert run(capsys, write_records(tmp_path / "results" / "regress"), "--write-reference", folder,
               "--tolerance", "mIoU=0.25")[0] == 0
    doc = json.loads((folder / "reference.json").read_text())
    assert (doc["tolerance"]["J&F"], doc["tolerance"]["mIoU"], doc["default_tolerance"]) == (0.5, 0.25, 2.0)
    assert len(doc["cells"]) == 4


def test_write_reference_refuses_timings_and_unknown_metrics(tmp_path, capsys):
    results = write_records(tmp_path / "r")
    code, _, err = run(capsys, results, "--write-reference", tmp_path / "ref", "--metrics", "mIoU,nope")
    assert code == 2 and err.startswith("error: --metrics: nope is in no ok record") and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:
        main([str(results), "--write-reference", str(tmp_path / "ref"), "--metrics", "J&F,fps"])
    assert e.value.code == 2 and "fps is a timing" in capsys.readouterr().err
    assert not (tmp_path / "ref").exists()


MALFORMED = [
    ("not json", '{"format": 1, "cells": [', "malformed reference"),
    ("not a mapping", "[1, 2]", "expected a mapping"),
    ("no tolerance", {k: v for k, v in reference_doc().items() if k != "tolerance"}, "missing key tolerance"),
    ("format", reference_doc() | {"format": 2}, "format: expected 1, got 2"),
    ("negative tolerance", reference_doc() | {"tolerance": {"mIoU": -1}}, "tolerance.mIoU: expected a number >= 0"),
    ("timing checked", reference_doc() | {"checked_metrics": ["J&F", "fps"]}, "fps is a timing"),
    ("no model", reference_doc() | {"cells": [{"method": "fp", "task": "vos", "metrics": {}}]}, "cells[0].model"),
    ("bits", reference_doc() | {"cells": [{"model": "micro", "method": "rtn", "w_bits": "4", "a_bits": 4,
                                           "task": "vos", "metrics": {}}]}, "cells[0].w_bits"),
    ("value", reference_doc() | {"cells": [{"model": "micro", "method": "fp", "task": "vos",
                                            "metrics": {"J&F": "high"}}]}, "cells[0].metrics.J&F"),
    ("twice", reference_doc() | {"cells": reference_doc()["cells"][:1] * 2}, "micro fp FP vos appears twice"),
]


@pytest.mark.parametrize("text,expected", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_reference_is_one_error_line(tmp_path, reference, capsys, text, expected):
    (reference / "reference.json").write_text(text if isinstance(text, str) else json.dumps(text))
    code, out, err = run(capsys, write_records(tmp_path / "r"), "--against", reference)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {reference / 'reference.json'}: malformed reference (") and err.count("\n") == 1
    assert expected in err


@pytest.mark.parametrize("case", ["no results", "corrupt record", "no reference", "empty reference folder"])
def test_bad_input_is_one_error_line(tmp_path, reference, capsys, case):
    results = tmp_path / "nope" if case == "no results" else write_records(tmp_path / "r")
    if case == "corrupt record":
        (results / "x.json").write_text('{"model": "micro", "met')
    against = {"no reference": tmp_path / "missing", "empty reference folder": tmp_path}.get(case, reference)
    code, out, err = run(capsys, results, "--against", against)
    assert code == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1
    named = {"no results": results, "corrupt record": results / "x.json"}.get(case, against)
    assert f"error: {named}: " in err


# -- a real sweep and a broken method -----------------------------------------------------------
TINY = {"frames": 3, "clips_train": 1, "clips_val": 1, "images_train": 2, "images_val": 2}


def tiny_sweep(folder: Path, data: Path, methods: str) -> Path:
    path = folder / f"{methods.strip('[]').replace(', ', '-')}.yaml"
    path.write_text(f"""
name: tiny
models: [micro]
methods: {methods}
bits: [[8, fp], [4, fp]]
tasks: [instseg]
data: {{davis_root: {data / 'davis'}, coco_root: {data / 'coco'}, max_images: 2}}
device: cpu
seed: 0
executor: {{kind: debug}}
""")
    return path


def test_broken_method_fails_against_a_real_reference(tmp_path, tmp_path_factory, micro_weights, monkeypatch, capsys):
    """fp and rtn on a random-init micro model make the reference (instseg only, weights only:
    the random model's instseg masks respond to its weights, while its vos score on a tiny set
    is 0 whatever the weights; weight-only RTN needs no calibration pass); then
    `rtn-broken` (tests/broken_methods.py: its weight quantizer rounds w, not w / scale) runs
    in the same results folder and, compared in rtn's place with `--as rtn-broken=rtn`, must
    fail on each of its cells while the fp cells pass."""
    from bench.data import synth
    from bench.sweep import main as sweep_main

    monkeypatch.setenv("BENCH_PLUGINS", "tests.broken_methods")  # what a worker process would import
    import methods

    if "rtn-broken" not in methods.METHODS:  # this process imported `methods` before the variable was set
        importlib.import_module("tests.broken_methods")
    data = synth_set(tmp_path_factory, replace(synth.SynthConfig(), **TINY))
    results = tmp_path / "results"
    assert sweep_main([str(tiny_sweep(tmp_path, data, "[fp, rtn]")), "--results", str(results)]) == 0
    ref = tmp_path / "reference" / "tiny"
    assert main([str(results / "tiny"), "--write-reference", str(ref)]) == 0
    doc = json.loads((ref / "reference.json").read_text())
    assert [(c["method"], c["w_bits"]) for c in doc["cells"]] == [("fp", None), ("rtn", 4), ("rtn", 8)]
    assert all(c["metrics"]["mIoU"] > 2 * doc["tolerance"]["mIoU"] for c in doc["cells"])  # room to fall
    assert main([str(results / "tiny"), "--against", str(ref)]) == 0
    # the broken method, in the same results folder: the fp cells are done and skipped
    assert sweep_main([str(tiny_sweep(tmp_path, data, "[fp, rtn-broken]")), "--results", str(results)]) == 0
    capsys.readouterr()
    code, out, err = run(capsys, results / "tiny", "--against", ref, "--as", "rtn-broken=rtn")
    assert code == 1, out
    for w in (8, 4):
        assert any(line.startswith(f"FAIL micro rtn W{w}Afp instseg [ours: rtn-broken] mIoU: ") for line in fails(out))
    assert all("[ours: rtn-broken]" in line for line in fails(out))  # fp is untouched and passes
    assert "note: records of method rtn set aside: --as compares rtn-broken in its place" in err
    # without --as the healthy rtn records pass; the broken cells are not in the reference
    code, out, err = run(capsys, results / "tiny", "--against", ref)
    assert code == 0 and "warning: micro rtn-broken W4Afp instseg: not in the reference (not checked)" in err
