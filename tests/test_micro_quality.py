"""The shipped micro checkpoint on the full synthetic val split (the default sets): its FP
quality meets the bar the project promises, and quantization costs what it should."""

from __future__ import annotations

import pytest
import torch

from bench.cell import Cell
from bench.models import ASSET_DIR, MODELS
from bench.run import run_cell

CKPT = ASSET_DIR / MODELS["micro"].checkpoint


def score(method: str, task: str, bits: int | None = None) -> float:
    record = run_cell(Cell(model="micro", method=method, task=task, w_bits=bits, a_bits=bits, device="cpu"))
    assert record["status"] == "ok", record.get("error")
    return record["metrics"]["J&F" if task == "vos" else "mIoU"]


def test_checkpoint_ships_with_its_provenance():
    meta = torch.load(CKPT, map_location="cpu", weights_only=True)["meta"]
    assert meta["command"].startswith("python -m bench.train_micro ") and "--seed" in meta["command"]
    assert {"data_version", "train_minutes", "final_loss"} <= meta.keys()


# The promised bars: FP J&F >= 75 and GT-box mIoU >= 80 on the synthetic val split.
@pytest.mark.slow
@pytest.mark.parametrize("task, floor", [("vos", 75.0), ("instseg", 80.0)])
def test_fp_quality_and_quantization_cost(task, floor):
    fp, w4, w2 = score("fp", task), score("rtn", task, 4), score("rtn", task, 2)
    assert fp >= floor
    assert w4 < fp
    assert w2 < fp - 20
