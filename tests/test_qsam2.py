"""Q-SAM2's choices (methods/qsam2.py): VRC's inputs and rows, its per-layer figures, LSC's
2-bit grid and initial clip, and where the gradient-norm clip applies."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from bench import BenchError
from bench.calib import CalibData
from bench.qat import make_optimizer
from bench.quant import QuantSpec
from bench.quant.learned import LSCQuantizer, learned_quantizers
from bench.results import LAYER_QUANTILES
from tests.conftest import make_method, synth_set
from tests.test_qat import TINY, _encoder_inputs, _one_thread  # noqa: F401  (autouse: one thread)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> CalibData:
    root = synth_set(tmp_path_factory, TINY)
    calib = CalibData.from_datasets(str(root / "davis"), str(root / "coco"), 5, tmp_path_factory.mktemp("work"))
    return CalibData(images=calib.images)


def vrc_only(model, calib, **options):
    method = make_method("qsam2", w_bits=2, a_bits=4, components=["image_encoder"], lsc=False, steps=0, **options)
    method.prepare(model, calib)
    return method


def test_vrc_default_fits_fp_inputs_keeping_fp_outputs_with_smaller_weights(micro_fp, images):
    """The paper's VRC: Y ~ X W'^T with X the FP input. On the calibration data every layer's FP
    output is kept, and W' is the least-norm weight that does so (W projected on the row space
    of [X 1]): never larger than W, smaller where the data leave directions unexcited."""
    from methods.qsam2 import encoder_linears

    fp = copy.deepcopy(micro_fp)
    ref_model = copy.deepcopy(micro_fp)
    vrc_only(ref_model, images, vrc=False)
    ref_layers = encoder_linears(ref_model)
    model = copy.deepcopy(micro_fp)
    method = vrc_only(model, images)
    layers = encoder_linears(model)
    X = _encoder_inputs(fp, {n: dict(fp.named_modules())[n] for n in layers}, [im.image for im in images.images])
    shrunk = 0
    for name, layer in layers.items():
        x, ref = X[name], ref_layers[name]
        a = np.c_[x.numpy(), np.ones(len(x))]
        w_fp = np.c_[ref.weight.double().detach().numpy(), ref.bias.double().detach().numpy()]
        w_new = np.c_[layer.weight.double().detach().numpy(), layer.bias.double().detach().numpy()]
        y = a @ w_fp.T
        assert np.linalg.norm(a @ w_new.T - y) <= 1e-4 * np.linalg.norm(y), name  # FP outputs kept
        lst, *_ = np.linalg.lstsq(a, y, rcond=1e-6)  # the minimum-norm solution
        assert np.allclose(w_new, lst.T, rtol=1e-3, atol=1e-4 * np.abs(w_fp).max()), name
        assert np.linalg.norm(w_new) <= np.linalg.norm(w_fp) * (1 + 1e-6)
        shrunk += np.linalg.norm(w_new) < 0.999 * np.linalg.norm(w_fp)
    assert shrunk > 0  # LayerNorm'd inputs leave a direction unexcited: some weights shrink
    assert method.info["vrc_weight_norm_ratio"] < 1.0


def test_vrc_rows_below_the_input_width_make_an_underdetermined_fit(micro_fp, images):
    """`vrc_rows: 8`: the fit sees 8 tokens, so each re-fitted [W' b'] lies in the span of those
    8 rows of [X 1] (rank <= 8) while W had full rank."""
    from methods.qsam2 import encoder_linears

    model = copy.deepcopy(micro_fp)
    vrc_only(model, images, vrc_rows=8)
    wide = [(n, l) for n, l in encoder_linears(model).items() if l.in_features >= 24]
    assert wide
    fp_layers = dict(micro_fp.named_modules())
    for name, layer in wide:
        full = torch.cat([layer.weight, layer.bias[:, None]], 1).detach().double()
        assert torch.linalg.matrix_rank(full, rtol=1e-6) <= 8, name
        assert torch.linalg.matrix_rank(fp_layers[name].weight.detach().double()) > 8
    with pytest.raises(BenchError, match="vrc_rows"):
        make_method("qsam2", w_bits=2, a_bits=4, vrc_rows=0)
    with pytest.raises(BenchError, match="vrc_input"):
        make_method("qsam2", w_bits=2, a_bits=4, vrc_input="int")
    assert make_method("qsam2", w_bits=2, a_bits=4, vrc_input="quantized").variant == "vrc_input=quantized"


def test_vrc_per_layer_figures_equal_direct_computation(micro_fp, images):
    """Per-layer norm, variance, quantiles and the initial output error of the quantized layer
    (from the Gram matrices) against the same computed on the layer's inputs directly."""
    from methods.qsam2 import _quantized_weight, encoder_linears

    fp = copy.deepcopy(micro_fp)
    model = copy.deepcopy(micro_fp)
    method = vrc_only(model, images, vrc_input="quantized")
    rows = {r["layer"]: r for r in method.info["layers"]}
    layers = encoder_linears(model)
    assert set(rows) == set(layers)
    fp_layers = {n: dict(fp.named_modules())[n] for n in layers}
    X = _encoder_inputs(fp, fp_layers, [im.image for im in images.images])
    for name in list(layers)[:: max(1, len(layers) // 5)]:
        layer, r = layers[name], rows[name]
        w0, w1 = fp_layers[name].weight.detach(), layer.weight.detach()
        assert r["norm_before"] == pytest.approx(w0.double().norm().item(), rel=1e-9)
        assert r["norm_after"] == pytest.approx(w1.double().norm().item(), rel=1e-9)
        assert r["var_after"] == pytest.approx(w1.double().var(correction=0).item(), rel=1e-9)
        assert r["q_before"] == pytest.approx(np.quantile(w0.double().numpy(), LAYER_QUANTILES).tolist(), rel=1e-9)
        x = X[name].float()
        y = x.double() @ w0.double().t() + fp_layers[name].bias.double()
        xq = layer.aq.quantize(x).double()
        for tag, w, b in (("before", w0, fp_layers[name].bias), ("after", w1, layer.bias)):
            out = xq @ _quantized_weight(layer, w).double().t() + b.double()
            direct = ((out - y).square().sum() / y.square().sum()).item()
            assert r[f"qerr_{tag}"] == pytest.approx(direct, rel=1e-6, abs=1e-12), (name, tag)
    # the quantized-input fit lowers the quantized layers' error on the data it fitted
    assert method.info["vrc_qerr_after"] < method.info["vrc_qerr_before"]


def test_lsc_two_bit_grid_and_initial_clip():
    """`lsc_narrow`: 3 levels at 2 bits (narrow symmetric) or 4 (full: the 4th at -2c); `lsc_alpha_init`: the
    initial clip c = alpha * sigma, else max|x| (no clipping at step 0)."""
    w = torch.randn(6, 40)
    for narrow, levels in ((True, 3), (False, 4)):
        q = LSCQuantizer(QuantSpec(2, granularity="channel"), narrow=narrow)
        q.init_weight(w)
        assert q.spec.qmax - q.spec.qmin + 1 == levels
        wide = 3 * w  # beyond the clip: every level of the grid is reached
        assert len(torch.unique(q.eval()(wide)[0].detach())) == levels
    q = LSCQuantizer(QuantSpec(2, granularity="channel"))
    q.init_weight(w)
    assert torch.allclose(q.alpha * q.sigma, w.abs().amax(1, keepdim=True), rtol=1e-5)
    q = LSCQuantizer(QuantSpec(2, granularity="channel"), alpha_init=3.0)
    q.init_weight(w)
    assert torch.allclose(q.alpha * q.sigma, 3 * w.std(1, keepdim=True, correction=0), rtol=1e-5)


def test_gradient_clip_scope_joint_or_separate(micro_fp, images):
    """`grad_clip_scope: separate`: the quantizer parameters' gradient norm is clipped on its own,
    so a large weight gradient does not shrink it; `joint` (one norm) does."""
    norms = {}
    for scope in ("joint", "separate"):
        model = copy.deepcopy(micro_fp)
        method = make_method("qsam2", w_bits=4, a_bits=4, components=["image_encoder"], vrc=False,
                             grad_clip_scope=scope, grad_clip=1.0)
        method.prepare(model, images)
        opt, clip_sets = make_optimizer(model, method.config)
        assert len(clip_sets) == (1 if scope == "joint" else 2)
        quant = [p for q in learned_quantizers(model).values() for p in q.parameters(recurse=False)]
        ids = {id(p) for p in quant}
        weights = [p for p in model.parameters() if id(p) not in ids]
        assert quant and weights
        for p in quant:
            p.grad = torch.full_like(p, 0.01)
        for p in weights:
            p.grad = torch.full_like(p, 10.0)
        for params in clip_sets:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        norms[scope] = torch.cat([p.grad.flatten() for p in quant]).norm().item()
    assert norms["separate"] > 100 * norms["joint"]
    with pytest.raises(BenchError, match="grad_clip_scope"):
        make_method("lsq", w_bits=4, a_bits=4, grad_clip_scope="each")
