"""The packed artifact: bit packing, round trip to the same weights, real sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.pack import export_packed, load_dequantized, pack_bits, unpack_bits
from bench.quant import QuantPlan, QuantSpec, Scope, quant_layers, wrap
from bench.quant.calibrate import calibrate_weights
from bench.tasks import TaskContext
from bench.tasks.size import run as run_size
from tests.conftest import make_method


@pytest.mark.parametrize("bits", range(2, 9))
def test_pack_unpack_round_trip(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2**bits, size=1001, dtype=np.uint8)
    packed = pack_bits(codes, bits)
    assert packed.nbytes == -(-1001 * bits // 8)
    assert np.array_equal(unpack_bits(packed, bits, 1001), codes)


@pytest.mark.parametrize("gran", ["channel", "group"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_artifact_reproduces_dequantized_weights(micro, tmp_path, gran, bits):
    # layers whose inputs per channel split into groups of 8 (not the 3x7x7 patch embedding)
    scope = Scope(components=("image_encoder", "mask_decoder"), preset="ptq4sam")
    wrap(micro, QuantPlan(weight=QuantSpec(bits, granularity=gran, group_size=8), scope=scope))
    calibrate_weights(micro)
    sizes = export_packed(micro, tmp_path / "m.safetensors")
    restored = load_dequantized(tmp_path / "m.safetensors")
    for name, layer in quant_layers(micro).items():
        with torch.no_grad():
            assert torch.equal(restored[f"{name}.weight"], layer.qweight()), name
    assert restored["sam_mask_decoder.iou_token.weight"].dtype == torch.bfloat16
    assert sizes["size_bytes"] >= sizes["size_bound_bytes"]


def test_size_task_on_tiny_w2(tiny, tmp_path):
    """sam2.1-t W2 weights: within 2% of the bound and >= 7x smaller than BF16."""
    make_method("rtn", w_bits=2).apply(tiny, None)
    m = run_size(tiny, TaskContext("sam2.1-t", "cpu", tmp_path))
    assert m["bf16_bytes"] == 2 * sum(v.numel() for k, v in tiny.state_dict().items()
                                      if not k.endswith((".scale", ".zero_point", ".min_val", ".max_val")))
    assert m["size_bytes"] <= 1.02 * m["size_bound_bytes"]
    assert m["x_smaller_than_bf16"] >= 7.0
    assert not list(tmp_path.iterdir())  # the artifact is not left behind


def test_size_task_fp_model_is_bf16(micro, tmp_path):
    m = run_size(micro, TaskContext("micro", "cpu", tmp_path))
    assert m["packed_layers"] == 0
    assert m["size_bound_bytes"] == m["bf16_bytes"]
    assert m["size_bytes"] <= 1.05 * m["bf16_bytes"]
