"""Quantized layers and attention: identity when off, exact fake-quant when on, scopes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.models import image_predictor
from bench.quant import (
    QuantPlan,
    QuantSpec,
    Scope,
    attention,
    quant_attentions,
    quant_layers,
    wrap,
)
from bench.quant.attention import QuantMultiScaleAttention
from bench.quant.calibrate import calibrate_weights
from bench.quant.fake import fake_quant
from bench.quant.modules import QuantConv2d, QuantConvTranspose2d, QuantLinear
from tests.conftest import textured_image

FULL = QuantPlan(weight=QuantSpec(4, granularity="channel"), act=QuantSpec(4),
                 attn_qkv=QuantSpec(4), attn_probs=QuantSpec(4))


@pytest.mark.parametrize("layer, cls, x", [
    (nn.Linear(8, 5), QuantLinear, torch.randn(3, 8)),
    (nn.Conv2d(4, 6, 3, padding=1, stride=2), QuantConv2d, torch.randn(2, 4, 9, 9)),
    (nn.ConvTranspose2d(4, 6, 2, stride=2), QuantConvTranspose2d, torch.randn(2, 4, 5, 5)),
])
def test_layers_off_identity_and_on_exact(layer, cls, x):
    q = cls(layer, QuantSpec(3, granularity="channel"), None)
    assert torch.equal(q(x), layer(x))  # uncalibrated quantizer: pass-through
    q.calibrate_weight()
    axis = 1 if cls is QuantConvTranspose2d else 0
    dims = [d for d in range(layer.weight.dim()) if d != axis]
    lo, hi = layer.weight.amin(dims, keepdim=True), layer.weight.amax(dims, keepdim=True)
    s = (hi.clamp(min=0) - lo.clamp(max=0)) / 7
    z = torch.clamp(-torch.round(lo.clamp(max=0) / s), 0, 7)
    wq = fake_quant(layer.weight, s, z, 0, 7)
    with torch.no_grad():
        expected = q._forward(x, wq)
        assert torch.allclose(q(x), expected, atol=1e-6)
        assert not torch.allclose(q(x), layer(x), atol=1e-3)


def test_weight_cache_follows_in_place_updates():
    lin = nn.Linear(16, 4)
    q = QuantLinear(lin, QuantSpec(4, granularity="channel"), None)
    q.calibrate_weight()
    with torch.no_grad():
        first = q.qweight().clone()
        assert q.qweight() is q.qweight()  # cached in evaluation
        lin.weight.mul_(0.5)
        second = q.qweight().clone()
        assert not torch.equal(second, first)
        q.wq.set_range(torch.full((4, 1), -0.01), torch.full((4, 1), 0.01))  # a new range object
        assert q.qweight().abs().max() <= 0.01 + q.wq.scale.max().item()
        q.weight = nn.Parameter(torch.zeros(4, 16))  # a new weight object
        assert q.qweight().abs().max() == 0
    # with autograd on, the weight is re-quantized and gradients reach it
    q(torch.randn(2, 16)).sum().backward()
    assert q.weight.grad is not None and q.weight.grad.abs().sum() > 0


def _decoder_outputs(model, image, boxes):
    pred = image_predictor(model)
    pred.set_image(image)
    feats = pred._features["image_embed"]
    masks, ious, low = pred.predict(box=boxes, multimask_output=True, return_logits=True)
    return feats, torch.as_tensor(low), torch.as_tensor(ious)


def test_wrapped_tiny_with_quantizers_off_is_identical(tiny_fp, tiny):
    """SAM2.1-tiny: every Linear/Conv and attention wrapped, all quantizers off (also with the
    explicit attention path forced): image encoder and mask decoder outputs within 1e-5."""
    torch.manual_seed(1)
    x = torch.randn(1, 3, 1024, 1024)
    image, boxes = textured_image(0, 1024), np.array([[100, 200, 700, 900]], dtype=np.float32)
    with torch.no_grad():
        ref_enc = tiny_fp.image_encoder(x)
        ref_dec = _decoder_outputs(tiny_fp, image, boxes)
    names = wrap(tiny, FULL)
    assert len(quant_layers(tiny)) == 171 and len(quant_attentions(tiny)) == 27
    assert len(names) == 171 + 27
    for explicit in (False, True):
        for m in quant_attentions(tiny).values():
            m.explicit = explicit
        with torch.no_grad():
            enc = tiny.image_encoder(x)
            dec = _decoder_outputs(tiny, image, boxes)
        for key in ("vision_features",):
            assert (enc[key] - ref_enc[key]).abs().max() <= 1e-5
        for a, b in zip(enc["backbone_fpn"], ref_enc["backbone_fpn"]):
            assert (a - b).abs().max() <= 1e-5
        for a, b in zip(dec, ref_dec):
            assert (a - b).abs().max() <= 1e-5


def test_memory_attention_identity_and_quantized_change(micro_fp, micro):
    """RoPEAttention path (memory attention) equals the original when off, differs when on."""
    wrap(micro, FULL)
    for m in quant_attentions(micro).values():
        m.explicit = True
    torch.manual_seed(2)
    curr = [torch.randn(256, 1, micro.hidden_dim)]
    curr_pos = [torch.randn(256, 1, micro.hidden_dim)]
    memory, memory_pos = torch.randn(2 * 256 + 4, 1, 32), torch.randn(2 * 256 + 4, 1, 32)
    with torch.no_grad():
        ref = micro_fp.memory_attention(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=4)
        out = micro.memory_attention(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=4)
        assert (out - ref).abs().max() <= 1e-5
        attn = micro.memory_attention.layers[0].cross_attn_image
        for slot in ("q_quant", "k_quant", "v_quant", "p_quant"):
            getattr(attn, slot).observing = True
        micro.memory_attention(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=4)
        for slot in ("q_quant", "k_quant", "v_quant", "p_quant"):
            q = getattr(attn, slot)
            q.observing = False
            q.calibrate_from_observed()
        assert attn.p_quant.min_val.item() >= 0 and attn.p_quant.max_val.item() <= 1
        out_q = micro.memory_attention(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=4)
        assert (out_q - ref).abs().max() > 1e-3


def test_explicit_attention_quantizes_probabilities(monkeypatch):
    from sam2.modeling.backbones.hieradet import MultiScaleAttention

    base = MultiScaleAttention(16, 16, num_heads=2)
    q = QuantMultiScaleAttention.from_float(base, None, QuantSpec(2))
    x = torch.randn(1, 4, 4, 16)
    q.p_quant.observing = True
    with torch.no_grad():
        q(x)
    q.p_quant.observing = False
    q.p_quant.calibrate_from_observed()
    q.keep_probs = True
    with torch.no_grad():
        out = q(x)
    qkv = base.qkv(x).reshape(1, 16, 3, 2, -1)
    qq, k, v = (t.transpose(1, 2) for t in torch.unbind(qkv, 2))
    probs = F.softmax(qq @ k.transpose(-2, -1) / np.sqrt(8), dim=-1)
    assert torch.allclose(q.last_probs, probs, atol=1e-6)
    p_hat = q.p_quant(probs)
    assert len(torch.unique(p_hat)) <= 4
    expected = base.proj((p_hat @ v).transpose(1, 2).reshape(1, 4, 4, -1))
    assert torch.allclose(out, expected, atol=1e-5)
    # the inference path in blocks of query rows gives the same result
    q.keep_probs = False
    monkeypatch.setattr(attention, "BLOCK_ELEMENTS", 3 * 16)  # 3 query rows of one head per block
    blocks = []
    core = q._core
    monkeypatch.setattr(q, "_core", lambda *a, **kw: blocks.append(a[0].shape[-2]) or core(*a, **kw))
    with torch.no_grad():
        assert torch.allclose(q(x), out, atol=1e-6)
    assert blocks == [3, 3, 3, 3, 3, 1] * 2  # 2 heads


def test_scope_components_patterns_and_preset(micro):
    plan = QuantPlan(weight=QuantSpec(4), scope=Scope(components=("mask_decoder",), preset="ptq4sam"))
    names = wrap(micro, plan)
    assert names and all(n.startswith("sam_mask_decoder.") for n in names)
    for excluded in ("output_upscaling", "iou_prediction_head", "output_hypernetworks_mlps"):
        assert not any(f".{excluded}." in n for n in names)
    assert "sam_mask_decoder.transformer.layers.0.self_attn.q_proj" in names
    m2 = Scope(include=("image_encoder.trunk.blocks.0.*",), exclude=("*.proj",))
    assert m2.matches("image_encoder.trunk.blocks.0.attn.qkv")
    assert not m2.matches("image_encoder.trunk.blocks.0.attn.proj")
    assert not m2.matches("image_encoder.trunk.blocks.1.attn.qkv")
    assert Scope(preset="ptq4sam").matches("image_encoder.trunk.patch_embed.proj") is False


def test_unknown_component_or_preset_is_an_error():
    from bench import BenchError

    with pytest.raises(BenchError, match="components"):
        Scope(components=("decoder",))
    with pytest.raises(BenchError, match="preset"):
        Scope(preset="nope")


def test_rtn_weight_error_falls_with_bits(tiny_fp):
    """A real forward of SAM2.1-tiny's image encoder: W8 << W4 << W2."""
    import copy

    torch.manual_seed(3)
    x = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        ref = tiny_fp.image_encoder(x)["vision_features"]
    errs = {}
    for bits in (8, 4, 2):
        m = copy.deepcopy(tiny_fp)
        wrap(m, QuantPlan(weight=QuantSpec(bits, granularity="channel"), scope=Scope(components=("image_encoder",))))
        assert calibrate_weights(m) > 0
        with torch.no_grad():
            out = m.image_encoder(x)["vision_features"]
        errs[bits] = ((out - ref).pow(2).mean() / ref.pow(2).mean()).item()
    assert errs[8] * 20 < errs[4] and errs[4] * 3 < errs[2], errs


@pytest.mark.parametrize("budget, calls", [(2 * 256, 3), (5 * 16, 6 * 4)])
def test_blocked_attention_equals_whole(monkeypatch, budget, calls):
    from sam2.modeling.backbones.hieradet import MultiScaleAttention

    q = QuantMultiScaleAttention.from_float(MultiScaleAttention(16, 16, num_heads=2), QuantSpec(4), QuantSpec(3))
    x = torch.randn(3, 4, 4, 16)  # 3 windows x 2 heads, 16 tokens each
    for slot in q.SLOTS:
        getattr(q, slot).observing = True
    with torch.no_grad():
        q(x)
    for slot in q.SLOTS:
        getattr(q, slot).observing = False
        getattr(q, slot).calibrate_from_observed()
    with torch.no_grad():
        whole = q(x)
        monkeypatch.setattr(attention, "BLOCK_ELEMENTS", budget)
        shapes = []
        core = q._core
        monkeypatch.setattr(q, "_core", lambda *a, **kw: shapes.append(a[0].shape) or core(*a, **kw))
        blocked = q(x)
    assert len(shapes) == calls
    assert torch.allclose(blocked, whole, atol=1e-6)


@pytest.mark.parametrize("bias", [True, False])
def test_tiled_linear_equals_untiled(monkeypatch, bias):
    from bench.quant import modules

    q = QuantLinear(nn.Linear(12, 5, bias=bias), QuantSpec(4, granularity="channel"), QuantSpec(3))
    q.calibrate_weight()
    x = torch.randn(2, 9, 12)
    q.aq.set_range(x.min(), x.max())
    with torch.no_grad():
        expected = F.linear(q.aq(x), q.qweight(), q.bias)
        monkeypatch.setattr(modules, "TILE_ELEMENTS", 4 * 12)  # 4 rows per tile, 5 tiles
        tiles = []
        addmm = torch.addmm
        monkeypatch.setattr(torch, "addmm", lambda *a, **kw: tiles.append(a[1].shape[0]) or addmm(*a, **kw))
        out = q(x)
    assert tiles == [4, 4, 4, 4, 2]
    assert out.shape == (2, 9, 5) and torch.allclose(out, expected, atol=1e-6)
    assert not torch.equal(out, F.linear(x, q.weight, q.bias))
