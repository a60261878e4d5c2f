"""The micro training script: a few steps write a checkpoint the model zoo can load, with
its provenance."""

from __future__ import annotations

import math

import torch

from bench import train_micro
from bench.models import build_model, load_state


def test_few_steps_write_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "micro.pt"
    train_micro.main(["--out", str(out), "--steps", "4", "--warmup", "1", "--clip-frames", "3", "--seed", "3"])
    ckpt = torch.load(out, weights_only=True)
    meta = ckpt["meta"]
    assert meta["args"]["seed"] == 3 and meta["data_version"] >= 1 and "--steps 4" in meta["command"]
    assert math.isfinite(meta["final_loss"])
    fresh = build_model("micro", random_init=True, device="cpu", seed=3)
    state = load_state(out, "micro")
    assert state.keys() == fresh.state_dict().keys()
    changed = [k for k, v in state.items() if v.is_floating_point() and not torch.equal(v, fresh.state_dict()[k])]
    assert len(changed) > 50  # the optimizer moved the weights
    assert not list(tmp_path.glob("*.tmp"))
