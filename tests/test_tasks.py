"""The vos, instseg and coco-map tasks end to end on a small synthetic set, and the scoring
command on an existing prediction folder."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from bench.cell import Cell
from bench.data import synth
from bench.intervals import aggregate
from bench.results import metric
from bench.run import run_cell
from tests.conftest import synth_set

SMALL = replace(synth.SynthConfig(), frames=8, clips_train=2, clips_val=2, images_train=4, images_val=3)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synth_set(tmp_path_factory, SMALL)


def assert_items_make_the_metrics(rec: dict) -> None:
    """The record's headline metrics are the aggregate of its `items`; each metric is declared
    in the results schema; the intervals hold the value."""
    m = rec["metrics"]
    for key, value in aggregate(rec["task"], rec["items"]).items():
        assert value == pytest.approx(m[key], abs=1e-9) if value is not None else m[key] is None, key
    numbers = [k for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    assert all(metric(rec["task"], k) is not None for k in numbers), numbers
    ci = rec["intervals"]
    assert ci["n_items"] == len(rec["items"]) and ci["level"] == 0.95
    for key, (lo, hi) in ci["metrics"].items():
        assert lo <= m[key] + 1e-9 and m[key] <= hi + 1e-9, key


def cell(data, task: str, **kw) -> Cell:
    return Cell(model="micro", method="fp", task=task, random_init=True, device="cpu",
                davis_root=str(data / "davis"), coco_root=str(data / "coco"), **kw)


def test_vos_task_writes_predictions_and_scores_them(data, tmp_path):
    rec = run_cell(cell(data, "vos"), work_dir=tmp_path)
    assert rec["status"] == "ok", rec.get("traceback")
    m = rec["metrics"]
    assert m["J&F"] == pytest.approx((m["J"] + m["F"]) / 2)
    assert m["frames"] == 2 * 8 and m["sequences"] == 2 and m["fps"] > 0
    n_objects = sum(int(np.asarray(Image.open(p)).max())
                    for p in sorted((data / "davis/Annotations/480p").glob("val*/00000.png")))
    assert len(rec["items"]) == n_objects and "per_object" not in m
    assert_items_make_the_metrics(rec)
    pngs = sorted((tmp_path / "vos_predictions").rglob("*.png"))
    assert len(pngs) == 16
    with Image.open(pngs[0]) as im:
        assert im.mode == "P" and im.size == (SMALL.width, SMALL.height)
    # the scoring command on the same folder gives the same numbers
    out = subprocess.run([sys.executable, "-m", "bench.score", "vos", "--davis-root", str(data / "davis"),
                          "--pred", str(tmp_path / "vos_predictions")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    scored = json.loads(out.stdout)
    assert scored["J&F"] == pytest.approx(m["J&F"], abs=1e-9)


def test_ground_truth_as_predictions_scores_100(data):
    out = subprocess.run([sys.executable, "-m", "bench.score", "vos", "--davis-root", str(data / "davis"),
                          "--pred", str(data / "davis/Annotations/480p")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    scored = json.loads(out.stdout)
    assert scored["J&F"] == scored["J"] == scored["F"] == pytest.approx(100.0)


def test_vos_subsets(data, tmp_path):
    rec = run_cell(cell(data, "vos", sequences=("val0001",), max_frames=5), work_dir=tmp_path)
    assert rec["status"] == "ok", rec.get("traceback")
    assert rec["metrics"]["frames"] == 5 and rec["metrics"]["sequences"] == 1


def test_instseg_and_coco_map(data, tmp_path):
    rec = run_cell(cell(data, "instseg"), work_dir=tmp_path)
    assert rec["status"] == "ok", rec.get("traceback")
    m = rec["metrics"]
    doc = json.loads((data / "coco/annotations/instances_val.json").read_text())
    assert m["n"] == len(doc["annotations"]) and 0 <= m["mIoU"] <= 100 and m["multimask"] is False
    assert len(rec["items"]) == m["n"] and {it["area"] for it in rec["items"]} <= {"small", "medium", "large"}
    assert_items_make_the_metrics(rec)
    rec = run_cell(cell(data, "coco-map"), work_dir=tmp_path)
    assert rec["status"] == "ok", rec.get("traceback")
    m = rec["metrics"]
    assert {"mAP", "AP50", "AP75", "APs", "APm", "APl"} <= m.keys() and 0 <= m["mAP"] <= 100
    assert m["detections"] == len(json.loads((data / "coco/detections_val.json").read_text()))
    assert_items_make_the_metrics(rec)


def test_missing_dataset_is_a_one_line_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bench.run", "--model", "micro", "--random-init", "--task", "vos",
                          "--davis-root", str(tmp_path / "nope"), "--device", "cpu", "--out", str(tmp_path / "r.json")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and str(tmp_path / "nope") in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "r.json").exists()


def test_calibration_from_the_train_splits(data, tmp_path):
    from bench.calib import CalibData

    calib = CalibData.from_datasets(str(data / "davis"), str(data / "coco"), 10, tmp_path)
    assert len(calib.images) == 4  # every train image (fewer than 10)
    assert [len(list(c.frames_dir.glob("*.jpg"))) for c in calib.clips] == [8, 2]  # 10 frames in all
    assert all(c.frames_dir.is_relative_to(tmp_path) for c in calib.clips)
    again = CalibData.from_datasets(str(data / "davis"), str(data / "coco"), 10, tmp_path / "again")
    assert all(np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)
               for a, b in zip(calib.images, again.images))
    # RTN W4A4 calibrates every activation quantizer on them (it fails on an unreached one)
    rec = run_cell(replace(cell(data, "instseg"), method="rtn", w_bits=4, a_bits=4, calib_n=4), work_dir=tmp_path)
    assert rec["status"] == "ok", rec.get("traceback")
