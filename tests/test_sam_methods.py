"""Every registered method on a SAM (v1) model (the small model of SAM's classes at 128x128,
tests/test_sam_models.py) at W4A4 with tiny budgets: it runs, every quantizer is active at
evaluation, and the official code's choices on SAM hold (PTQ4SAM's ptq4sam/model/
quant_model.py and ptq4sam/solver/test_quant.py, SAQ-SAM's fork of them)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from bench.calib import CalibData, CalibImage
from bench.method import inactive_quantizers
from bench.quant import quant_attentions
from bench.quant.attention import QuantSamEncoderAttention
from bench.quant.log2 import Log2Quantizer
from bench.quant.observers import PTQQuantizer
from bench.recon import block_units
from tests.conftest import make_method, textured_image
from tests.test_sam_models import small_sam

SMALL = dict(mse_grid=10, mse_zp_steps=4, hist_bins=64, agq_max_calls=1)
DECODER_ATTNS = [f"mask_decoder.transformer.layers.{i}.{a}" for i in range(2)
                 for a in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token")]
DECODER_ATTNS.append("mask_decoder.transformer.final_attn_token_to_image")


@pytest.fixture(scope="module")
def sam_fp():
    return small_sam()


@pytest.fixture(scope="module")
def calib():
    """Two images (160x128, not square: SAM's resize-longest-side and padding), GT boxes and masks."""
    images = []
    for i in range(2):
        img = textured_image(i, 160)[:128]
        masks = np.zeros((2, 128, 160), bool)
        masks[0, 20:90, 10:80], masks[1, 40:110, 70:150] = True, True
        boxes = np.array([[10, 20, 80, 90], [70, 40, 150, 110]], np.float32)
        images.append(CalibImage(img, boxes, masks))
    return CalibData(images=images)


def applied(sam_fp, calib, name: str, **options):
    model = copy.deepcopy(sam_fp)
    method = make_method(name, w_bits=4, a_bits=4, **options)
    model = method.apply(model, calib)
    assert inactive_quantizers(model) == [], name
    return model, method


def test_rtn(sam_fp, calib):
    model, _ = applied(sam_fp, calib, "rtn")
    attns = quant_attentions(model)
    assert len(attns) == 2 + 7 and all(a.p_quant.active for a in attns.values())


def test_ptq4sam_statistics_big_agq_and_rel_pos_from_quantized_q(sam_fp, calib):
    """BIG tests the three token-to-image attentions (official `bimodal_adjust`); AGQ on every
    softmax, the encoder's and the decoder's (`QuantEncoderOurAttentionBlock`,
    `QuantDecoderOurAttentionBlock`); every decoder attention's k uses BIG's observer; the
    encoder's relative positions from the quantized q."""
    model, method = applied(sam_fp, calib, "ptq4sam", **SMALL)
    assert sorted(method.info["big_bimodal"]) == sorted(n for n in DECODER_ATTNS if n.endswith("token_to_image"))
    attns = quant_attentions(model)
    assert all(isinstance(a.p_quant, Log2Quantizer) and a.p_quant.active for a in attns.values())
    assert sum(method.info["agq_tau_counts"].values()) == 9
    for name in DECODER_ATTNS:
        assert isinstance(attns[name].k_quant, PTQQuantizer) and attns[name].k_quant.observer == "avg_mse"
    encoder = [a for a in attns.values() if isinstance(a, QuantSamEncoderAttention)]
    assert len(encoder) == 2 and all(a.rel_pos_q == "quantized" for a in encoder)
    assert encoder[0].k_quant.observer == "avg_minmax"


def test_ptq4sam_reconstruction_units_as_the_official_code(sam_fp, calib):
    """PTQ4SAM-L: the units are the official QuantizedBlocks: each ViT block's attention and
    MLP (`QuantEncoderOurAttentionBlock`, `QuantMLPBlock`), the whole neck (`QuantNeck`), the
    decoder layers' attentions and MLPs and the final attention, in the order they run."""
    model, method = applied(sam_fp, calib, "ptq4sam", recon=True, iters=2, recon_images=1, **SMALL)
    expected = [f"image_encoder.blocks.{b}.{u}" for b in range(2) for u in ("attn", "mlp")]
    expected.append("image_encoder.neck")
    for i in range(2):
        layer = f"mask_decoder.transformer.layers.{i}."
        expected += [layer + u for u in ("self_attn", "cross_attn_token_to_image", "mlp", "cross_attn_image_to_token")]
    expected.append("mask_decoder.transformer.final_attn_token_to_image")
    assert block_units(model, ("image_encoder", "mask_decoder"), calib.images) == expected
    assert method.info["recon"]["units"] == len(expected) and method.variant == "L"
    with torch.no_grad():  # the reconstructed model still predicts
        from bench.models import image_predictor

        pred = image_predictor(model)
        pred.set_image(calib.images[0].image)
        masks, ious, _ = pred.predict(box=calib.images[0].boxes, multimask_output=False)
    assert masks.shape == (2, 1, 128, 160) and np.isfinite(ious).all()


def test_saqsam_pcc_par_stages_and_rel_pos_from_fp_q(sam_fp, calib):
    """SAQ-SAM: PCC on the decoder attentions' q/k inputs and outputs; PAR units as its
    official code forms them on the ViT (`QuantImageEncoderOurViT`: a stage is the blocks up
    to a global-attention block; the neck; the decoder's transformer layers; the final
    attention); the encoder's relative positions from the FP q."""
    model, method = applied(sam_fp, calib, "saqsam", iters=2, recon_images=1, **SMALL)
    assert method.variant == "PCC+PAR"
    assert len(method.info["pcc_percentile"]) == 4 * 7
    assert sorted(method.info["recon"]["last_loss"]) == sorted([
        "image_encoder.blocks.0-1", "image_encoder.neck", "mask_decoder.transformer.layers.0",
        "mask_decoder.transformer.layers.1", "mask_decoder.transformer.final_attn_token_to_image"])
    encoder = [a for a in quant_attentions(model).values() if isinstance(a, QuantSamEncoderAttention)]
    assert encoder and all(a.rel_pos_q == "fp" for a in encoder)


def test_saqsam_par_skips_the_later_blocks(sam_fp, calib):
    """The official layer skipping: a stage's keys are its output through the FP neck and the
    FP two-way transformer, not through the later blocks; for the last stage that is the FP
    model's own image-token output."""
    from bench.recon import capture
    from methods.saqsam import SamPARContext, par_context, trunk_stages

    vit = sam_fp.image_encoder
    vit_4 = copy.deepcopy(sam_fp)  # four blocks, globals at 1 and 3: two stages
    vit_4.image_encoder.blocks.extend(copy.deepcopy(vit_4.image_encoder.blocks))
    assert [list(s) for s in trunk_stages(vit_4.image_encoder)] == [[0, 1], [2, 3]]
    par = par_context(vit_4, calib.images[:1])
    assert isinstance(par, SamPARContext)
    with torch.no_grad():
        x = capture(vit_4, vit_4.image_encoder.blocks[2], calib.images[:1])[0].args[0]
        skip = par.keys_of(x, 0)
        assert torch.allclose(par.stage_targets(vit_4, range(0, 2), calib.images[:1])[0], skip, atol=1e-5)
        last = par.stage_keys(vit_4.image_encoder, range(2, 4), x, 0)
    assert torch.allclose(last, par.targets[0][1], atol=1e-4)
    assert not torch.allclose(skip, last, atol=1e-3)
    assert len(vit.blocks) == 2


QAT = dict(steps=2, report_loss=True)


def test_sam_training_forward_is_the_predictors(sam_fp, calib):
    """The QAT samples and forward of a SAM model give the predictor's low-res logits and IoUs."""
    from bench.models import image_predictor
    from bench.qat import forward
    from bench.qat_samples import model_samples

    sample = model_samples(calib, sam_fp, 4)[0]
    assert sample.image.shape == (1, 3, 128, 128) and sample.masks.shape == (2, 128, 128)
    assert sample.masks[:, 102:].sum() == 0  # 160x128 -> 128x102, padded at the bottom
    with torch.no_grad():
        low, ious, _ = forward(sam_fp, sample)["heads"][0]
        pred = image_predictor(sam_fp)
        pred.set_image(calib.images[0].image)
        _, ref_ious, ref_low = pred.predict(box=calib.images[0].boxes, multimask_output=False, return_logits=True)
    assert torch.allclose(low[:, 0], torch.as_tensor(ref_low[:, 0]), atol=1e-4)
    assert torch.allclose(ious, torch.as_tensor(ref_ious), atol=1e-5)


@pytest.mark.parametrize("name, options", [("lsq", {}), ("pact", {}), ("qsam2", {})])
def test_qat_methods_train_on_sam(sam_fp, calib, name, options):
    model, method = applied(sam_fp, calib, name, **QAT, **options)
    info = method.info
    assert info["qat_steps"] == 2 and info["qat_samples"] == 2 and info["frozen_quantizers"] > 0
    assert info["loss_before"]["total"] > 0 and np.isfinite(info["loss_after"]["total"])


def test_qsam2_vrc_refits_the_vit_linear_layers(sam_fp, calib):
    """VRC on SAM's ViT: every linear layer of the blocks (qkv, proj, lin1, lin2) re-fitted on
    the calibration images as SAM's predictor preprocesses them."""
    model, method = applied(sam_fp, calib, "qsam2", steps=0, lsc=False)
    layers = [r["layer"] for r in method.info["layers"]]
    assert sorted(layers) == sorted(f"image_encoder.blocks.{b}.{n}" for b in range(2)
                                    for n in ("attn.qkv", "attn.proj", "mlp.lin1", "mlp.lin2"))
    fp = dict(sam_fp.named_parameters())
    assert any(not torch.equal(p, fp[n]) for n, p in model.named_parameters() if n.startswith("image_encoder.blocks"))
