"""`fp` and `rtn` methods on the micro model, with calibration images and a video clip."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from bench import BenchError
from bench.calib import CalibClip, CalibData, CalibImage, run_calibration
from bench.quant import quant_attentions, quant_layers
from bench.quant.calibrate import activation_quantizers
from tests.conftest import make_method, textured_image


def make_calib(tmp_path, n_images: int = 2, with_clip: bool = True) -> CalibData:
    images = [CalibImage(textured_image(i), np.array([[30, 40, 200, 220]], np.float32)) for i in range(n_images)]
    clips = []
    if with_clip:
        d = tmp_path / "clip"
        d.mkdir()
        base = textured_image(7)
        for t in range(3):
            Image.fromarray(np.roll(base, 4 * t, axis=1)).save(d / f"{t:05d}.jpg")
        mask = np.zeros((256, 256), bool)
        mask[60:160, 80:200] = True
        clips.append(CalibClip(d, {1: mask}))
    return CalibData(images=images, clips=clips)


def encoder_error(model, ref_model, image) -> float:
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        a = model.image_encoder(x)["vision_features"]
        b = ref_model.image_encoder(x)["vision_features"]
    return ((a - b).pow(2).mean() / b.pow(2).mean()).item()


def test_fp_rejects_bits_and_changes_nothing(micro):
    with pytest.raises(BenchError, match="fp"):
        make_method("fp", w_bits=4)
    before = {k: v.clone() for k, v in micro.state_dict().items()}
    make_method("fp").apply(micro, None)
    assert all(torch.equal(before[k], v) for k, v in micro.state_dict().items())


def test_rtn_config_validation():
    with pytest.raises(BenchError, match="w_bits"):
        make_method("rtn", w_bits=0)
    with pytest.raises(BenchError, match="a_bits"):
        make_method("rtn", w_bits=4, a_bits=9)
    with pytest.raises(BenchError, match="at least one bit width"):
        make_method("rtn")
    with pytest.raises(BenchError, match=r"unknown option 'bogus'"):
        make_method("rtn", w_bits=4, bogus=1)


def test_rtn_w4a4_calibrates_every_quantizer(micro_fp, tmp_path):
    calib = make_calib(tmp_path)
    model = copy.deepcopy(micro_fp)
    make_method("rtn", w_bits=4, a_bits=4).apply(model, calib)
    acts = dict(activation_quantizers(model))
    assert len(quant_layers(model)) > 50 and len(quant_attentions(model)) > 10
    assert acts and all(q.active for q in acts.values())
    assert all(m.wq.active and m.aq.active for m in quant_layers(model).values())
    # ranges are min/max over all calibration batches: a probability quantizer spans [0, <=1]
    p = next(q for n, q in acts.items() if n.endswith("p_quant"))
    assert p.min_val.item() >= 0 and 0 < p.max_val.item() <= 1
    # the quantized model still runs the whole video path
    run_calibration(model, calib)


def test_rtn_without_clips_cannot_calibrate_memory_modules(micro, tmp_path):
    calib = make_calib(tmp_path, with_clip=False)
    with pytest.raises(BenchError, match="memory_attention"):
        make_method("rtn", w_bits=8, a_bits=8).apply(micro, calib)


def test_rtn_image_scope_with_images_only(micro_fp, tmp_path):
    calib = make_calib(tmp_path, with_clip=False)
    errs = {}
    for bits in (8, 4, 2):
        model = copy.deepcopy(micro_fp)
        make_method("rtn", w_bits=bits, a_bits=bits, components=["image_encoder", "mask_decoder"]).apply(model, calib)
        errs[bits] = encoder_error(model, micro_fp, textured_image(11))
    assert errs[8] * 10 < errs[4] < errs[2], errs
