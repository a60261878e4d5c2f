"""The shipped built-in checkpoints (micro, sam-micro) on the full synthetic val split (the
default sets): their FP quality meets the bar the project promises, and quantization costs
what it should."""

from __future__ import annotations

import pytest
import torch

from bench.cell import Cell
from bench.models import ASSET_DIR, MODELS
from bench.run import run_cell

BUILTIN = [name for name, entry in MODELS.items() if entry.builtin]


def score(method: str, task: str, bits: int | None = None, model: str = "micro") -> float:
    record = run_cell(Cell(model=model, method=method, task=task, w_bits=bits, a_bits=bits, device="cpu"))
    assert record["status"] == "ok", record.get("error")
    return record["metrics"]["J&F" if task == "vos" else "mIoU"]


@pytest.mark.parametrize("model", BUILTIN)
def test_checkpoint_ships_with_its_provenance(model):
    meta = torch.load(ASSET_DIR / MODELS[model].checkpoint, map_location="cpu", weights_only=True)["meta"]
    assert meta["command"].startswith("python -m bench.train_micro ") and "--seed" in meta["command"]
    assert {"data_version", "train_minutes", "final_loss"} <= meta.keys()
    assert meta["train_minutes"] <= 45  # trained in at most 45 minutes on a 2-core CPU
    assert (f"--model {model}" in meta["command"]) == (model != "micro")


# The promised bars: micro FP J&F >= 75 and GT-box mIoU >= 80, sam-micro GT-box mIoU >= 75, on
# the synthetic val split.
@pytest.mark.slow
@pytest.mark.parametrize("model, task, floor", [("micro", "vos", 75.0), ("micro", "instseg", 80.0),
                                                ("sam-micro", "instseg", 75.0)])
def test_fp_quality_and_quantization_cost(model, task, floor):
    fp, w4, w2 = (score("fp", task, model=model), score("rtn", task, 4, model=model),
                  score("rtn", task, 2, model=model))
    assert fp >= floor
    assert w4 < fp
    assert w2 < fp - 20
