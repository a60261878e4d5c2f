"""The image tasks on a SAM (v1) model: `instseg` (GT-box prompts), `coco-map` (detector-box
prompts, single-mask output, score = detector score x predicted IoU, the PTQ4SAM / SAQ-SAM
protocol) and `size`, through `run_cell` and the same records as SAM2.

`sam-b` builds the small model of SAM's classes at 128x128 (tests/test_sam_models.py)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import segment_anything

from bench.cell import Cell
from bench.data import synth
from bench.run import run_cell
from bench.tasks import TaskContext
from tests.conftest import synth_set
from tests.test_sam_models import small_sam
from tests.test_tasks import assert_items_make_the_metrics

SMALL = replace(synth.SynthConfig(), frames=4, clips_train=1, clips_val=1, images_train=2, images_val=3)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synth_set(tmp_path_factory, SMALL)


@pytest.fixture
def small_as_sam_b(monkeypatch):
    monkeypatch.setitem(segment_anything.sam_model_registry, "vit_b", lambda checkpoint=None: small_sam())


def cell(data, task: str, method: str = "fp", **kw) -> Cell:
    return Cell(model="sam-b", method=method, task=task, random_init=True, device="cpu",
                coco_root=str(data / "coco"), **kw)


def test_instseg_on_sam(data, tmp_path, small_as_sam_b):
    rec = run_cell(cell(data, "instseg"), work_dir=tmp_path)
    assert rec["status"] == "ok", rec.get("traceback")
    m = rec["metrics"]
    doc = json.loads((data / "coco/annotations/instances_val.json").read_text())
    assert rec["model"] == "sam-b" and rec["dataset"] == "synthetic val"
    assert m["n"] == len(doc["annotations"]) and 0 <= m["mIoU"] <= 100 and m["multimask"] is False
    assert len(rec["items"]) == m["n"]
    assert_items_make_the_metrics(rec)


def test_coco_map_on_sam_quantized(data, tmp_path, small_as_sam_b):
    """RTN W4A4 (calibrated on the train stills only) through coco-map: every detection scored."""
    rec = run_cell(cell(data, "coco-map", "rtn", w_bits=4, a_bits=4, calib_n=2), work_dir=tmp_path)
    assert rec["status"] == "ok", rec.get("traceback")
    m = rec["metrics"]
    assert {"mAP", "AP50", "AP75", "APs", "APm", "APl"} <= m.keys() and 0 <= m["mAP"] <= 100
    assert m["detections"] == len(json.loads((data / "coco/detections_val.json").read_text()))
    assert_items_make_the_metrics(rec)


def test_coco_map_scores_are_detector_score_times_predicted_iou(data, tmp_path, monkeypatch):
    """The protocol on SAM: single-mask output, one mask per detection, score = det x IoU."""
    from bench.metrics import coco as coco_metrics
    from bench.tasks import coco_map

    seen, calls = {}, []
    monkeypatch.setattr(coco_map, "coco_segm_map", lambda gt, results, image_ids: seen.update(r=results) or {})
    model = small_sam()
    from bench.sam_predictor import SamBoxPredictor

    original = SamBoxPredictor.predict
    monkeypatch.setattr(SamBoxPredictor, "predict",
                        lambda self, **kw: calls.append(kw["multimask_output"]) or original(self, **kw))
    ctx = TaskContext("sam-b", "cpu", tmp_path, {"coco_root": str(data / "coco"), "progress": False})
    coco_map.run(model, ctx)
    dets = json.loads((data / "coco/detections_val.json").read_text())
    assert calls and not any(calls) and len(seen["r"]) == len(dets)
    first = next(d for d in dets if d["image_id"] == seen["r"][0]["image_id"])
    pred = SamBoxPredictor(model)
    from bench.calib import read_rgb
    from bench.data.coco import CocoSet

    pred.set_image(read_rgb(CocoSet(str(data / "coco"), "val").image_path(first["image_id"])))
    _, iou, _ = original(pred, box=np.array([coco_metrics.box_xywh_to_xyxy(first["bbox"])], np.float32),
                         multimask_output=False)
    assert seen["r"][0]["score"] == pytest.approx(first["score"] * float(iou[0]), rel=1e-5)


def test_size_on_sam(tmp_path, small_as_sam_b):
    rec = run_cell(Cell(model="sam-b", method="rtn", task="size", w_bits=4, random_init=True, device="cpu"),
                   work_dir=tmp_path)
    assert rec["status"] == "ok", rec.get("traceback")
    assert rec["items"] == [] and rec["metrics"]["size_bytes"] < rec["metrics"]["bf16_bytes"]


@pytest.mark.parametrize("method, options", [
    ("ptq4sam", {"recon": True}), ("saqsam", {}), ("lsq", {"steps": 2}),
])
def test_method_cells_on_sam(data, tmp_path, small_as_sam_b, method, options):
    """A reconstruction or QAT method through a whole cell on SAM (calibration on the train
    stills, every quantizer active after apply, the record's method info)."""
    budget = {"iters": 2, "recon_images": 1, "mse_grid": 10, "mse_zp_steps": 4, "hist_bins": 64,
              "agq_max_calls": 1} if method != "lsq" else {}
    rec = run_cell(cell(data, "instseg", method, w_bits=4, a_bits=4, calib_n=2,
                        method_options={**budget, **options}), work_dir=tmp_path)
    assert rec["status"] == "ok", rec.get("traceback")
    assert rec["method_info"] and 0 <= rec["metrics"]["mIoU"] <= 100
    assert_items_make_the_metrics(rec)
