"""`size`: bytes of the real packed artifact, its theoretical bound and the BF16 model.

The artifact is exported, read back, and its dequantized weights are compared with the ones
the quantized model computes with; a mismatch fails the task.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.pack import export_packed, load_dequantized
from bench.quant.modules import QuantLayer
from bench.tasks import TaskContext


def run(model: nn.Module, ctx: TaskContext) -> dict:
    path = ctx.work_dir / f"{ctx.model_name}.packed.safetensors"
    sizes = export_packed(model, path)
    try:
        restored = load_dequantized(path)
        with torch.no_grad():
            for name, m in model.named_modules():
                if isinstance(m, QuantLayer) and m.wq.active:
                    expected = m.qweight().detach().float().cpu()
                    if not torch.equal(restored[f"{name}.weight"], expected):
                        err = (restored[f"{name}.weight"] - expected).abs().max().item()
                        raise RuntimeError(f"packed weight of {name} differs from the model's (max {err:g})")
    finally:
        if not ctx.options.get("keep_artifact"):
            path.unlink(missing_ok=True)
    return {
        **sizes,
        "x_smaller_than_bf16": sizes["bf16_bytes"] / sizes["size_bytes"],
        "overhead_vs_bound": sizes["size_bytes"] / sizes["size_bound_bytes"] - 1.0,
    }
