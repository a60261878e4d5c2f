"""SAQ-SAM's PAR targets (`par_targets`): the official code's three rules against pure FP targets.

Each run reconstructs the random-init micro model (2 trunk stages, 2 decoder layers) for a few
iterations on one image and records what every reconstruction unit was trained against."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

import bench.recon
import methods.saqsam
from bench import BenchError
from bench.method import inactive_quantizers
from bench.quant.fake import FakeQuantizer
from bench.recon import capture
from methods.saqsam import FINAL, decoder_call
from tests.conftest import make_method
from tests.test_rtn import make_calib

LAYERS = "sam_mask_decoder.transformer.layers."
STAGE_2 = "image_encoder.trunk.blocks.5"  # the micro trunk's stages: blocks 0-4, block 5
BUDGET = dict(pcc=False, iters=2, recon_images=1, mse_grid=10, mse_zp_steps=4, hist_bins=64, agq_max_calls=1,
              components=["image_encoder", "mask_decoder"])


@dataclass
class Run:
    model: nn.Module
    calls: dict = field(default_factory=dict)  # unit name -> (quantized calls, FP calls)
    later_active: list = field(default_factory=list)  # quantizers of later decoder units in layer 0's PAR term
    fp_trunk_quantized: list = field(default_factory=list)  # per PARContext: stage 1 of its FP model quantized


def active(module: nn.Module) -> list[bool]:
    return [q.active for q in module.modules() if isinstance(q, FakeQuantizer) and q.spec is not None]


def reconstruct(fp: nn.Module, calib, par_targets: str) -> Run:
    run = Run(copy.deepcopy(fp))
    real_train, real_context = bench.recon.train, methods.saqsam.PARContext

    def train(unit, q_calls, fp_calls, *args, **kwargs):
        names = {id(m): n for n, m in run.model.named_modules()}
        name = names[id(unit[0] if isinstance(unit, nn.ModuleList) else unit)]
        run.calls[name] = (q_calls, fp_calls)
        if name != LAYERS + "0":
            return real_train(unit, q_calls, fp_calls, *args, **kwargs)
        later = [run.model.get_submodule(n) for n in (LAYERS + "1", FINAL)]
        hooks = [m.register_forward_pre_hook(lambda m, _a: run.later_active.extend(active(m))) for m in later]
        try:
            return real_train(unit, q_calls, fp_calls, *args, **kwargs)
        finally:
            for h in hooks:
                h.remove()

    def context(fp_model, images):
        run.fp_trunk_quantized.append(any(active(fp_model.image_encoder.trunk.blocks[0])))
        return real_context(fp_model, images)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench.recon, "train", train)
        mp.setattr(methods.saqsam, "train", train)
        mp.setattr(methods.saqsam, "PARContext", context)
        make_method("saqsam", w_bits=4, a_bits=4, par_targets=par_targets, **BUDGET).apply(run.model, calib)
    assert inactive_quantizers(run.model) == []  # every quantizer is on again afterwards
    return run


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    return make_calib(tmp_path_factory.mktemp("calib"), n_images=1, with_clip=False)


@pytest.fixture(scope="module")
def runs(micro_fp, calib):
    return {t: reconstruct(micro_fp, calib, t) for t in ("official", "fp")}


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_fp_decoder_layer_is_fed_the_quantized_image_embedding(runs):
    """Official rule 1: the FP layer 0 sees what the quantized one sees (the quantized image
    embedding as its keys); with pure FP targets it sees the FP model's embedding."""
    for targets, expected in (("official", True), ("fp", False)):
        q_calls, fp_calls = runs[targets].calls[LAYERS + "0"]
        assert same(q_calls[0].kwargs["keys"], fp_calls[0].kwargs["keys"]) == expected, targets
        assert same(q_calls[0].kwargs["queries"], fp_calls[0].kwargs["queries"])  # the prompt tokens


def test_later_decoder_units_are_full_precision_in_the_prompt_term(runs):
    """Official rule 2: while layer 0 is reconstructed, layer 1 and the final attention run with
    their quantizers off in the PAR term; with pure FP targets they run quantized."""
    official, fp = runs["official"].later_active, runs["fp"].later_active
    assert official and not any(official)
    assert fp and all(fp)


def test_fp_model_carries_the_reconstructed_encoder_units(runs, micro_fp, calib):
    """Official rule 3: after stage 1 the FP model holds its quantized copy, so stage 2's FP
    input is its quantized input and its PAR targets are recomputed on that model; the neck's
    FP input is the quantized trunk's output and the final attention's FP target comes from
    the quantized image embedding through the FP decoder layers."""
    official, fp = runs["official"], runs["fp"]
    assert official.fp_trunk_quantized == [False, True] and fp.fp_trunk_quantized == [False]
    for run, expected in ((official, True), (fp, False)):
        q_calls, fp_calls = run.calls[STAGE_2]
        assert same(q_calls[0].args[0], fp_calls[0].args[0]) == expected
    necks = [n for n in official.calls if n.startswith("image_encoder.neck.")]
    assert necks
    for name in necks:
        q_calls, fp_calls = official.calls[name]
        assert same(q_calls[0].args[0], fp_calls[0].args[0]), name
    model = official.model  # its image encoder is as it was when the final attention was reconstructed
    q_dec = capture(model, model.sam_mask_decoder, calib.images)
    fp_model = copy.deepcopy(micro_fp)
    with torch.no_grad():
        expected = decoder_call(fp_model.sam_mask_decoder, fp_model.get_submodule(FINAL), q_dec[0].kwargs)
    _, fp_calls = official.calls[FINAL]
    assert same(fp_calls[0].kwargs["q"], expected.kwargs["q"]) and same(fp_calls[0].kwargs["k"], expected.kwargs["k"])


def test_par_targets_switch_is_validated_and_labelled():
    assert make_method("saqsam", w_bits=4, a_bits=4).config.par_targets == "official"
    assert make_method("saqsam", w_bits=4, a_bits=4).variant == "PCC+PAR"
    assert make_method("saqsam", w_bits=4, a_bits=4, par_targets="fp").variant == "PCC+PAR+par_targets=fp"
    for options in ({"par_targets": "quantized"}, {"par_targets": "fp", "par": False}):
        with pytest.raises(BenchError, match="par_targets") as e:
            make_method("saqsam", w_bits=4, a_bits=4, **options)
        assert "\n" not in str(e.value)
