"""QAT methods: the learned quantizers' gradients and statistics against their formulas, VRC
against numpy's least squares, and the shared training loop on the random-init micro model."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from bench import BenchError
from bench.calib import CalibData, read_rgb
from bench.data.synth import SynthConfig
from bench.pack import export_packed, load_dequantized
from bench.qat import evaluate_loss, sample_order, teacher_outputs, train
from bench.qat_samples import ClipSample, ImageSample, build_samples
from bench.quant import QuantSpec, quant_layers
from bench.quant.fake import FakeQuantizer
from bench.quant.learned import LearnedQuantizer, LSCQuantizer, LSQQuantizer, PACTQuantizer, RTNWeightQuantizer
from bench.sam2_train import to_input
from tests.conftest import make_method, synth_set

TINY = SynthConfig(frames=5, clips_train=1, clips_val=1, images_train=2, images_val=1, max_objects=2)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def present_fp(micro_fp):
    """The random-init micro model with its object-score head biased to "present": otherwise
    SAM2 replaces the mask logits by its no-object constant (-1024) in teacher and student
    alike, and the mask-logit distillation term is identically 0."""
    model = copy.deepcopy(micro_fp)
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
    return model


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> CalibData:
    """Two train images (GT boxes and masks) and one 5-frame train clip (all frames labelled)."""
    root = synth_set(tmp_path_factory, TINY)
    return CalibData.from_datasets(str(root / "davis"), str(root / "coco"), 5, tmp_path_factory.mktemp("work"))


def calibrated(q: LearnedQuantizer, data: torch.Tensor) -> LearnedQuantizer:
    q.observing = True
    q(data)
    q.observing = False
    q.calibrate_from_observed()
    return q


# -- LSQ -----------------------------------------------------------------------------------------
def test_lsq_step_gradient_and_init_follow_the_paper():
    x = torch.tensor([-3.1, -1.26, -0.4, 0.05, 0.3, 0.74, 1.1, 1.62, 2.9])  # 1.62 / 0.5 rounds into range
    q = calibrated(LSQQuantizer(QuantSpec(3)), x)
    q_p, q_n = 3, 4  # signed 3 bits: levels -4..3
    assert q.spec.symmetric and q.q_p == q_p
    assert q.scale.item() == pytest.approx(2 * x.abs().mean().item() / math.sqrt(q_p), rel=1e-6)
    with torch.no_grad():
        q.scale.fill_(0.5)
    up = torch.linspace(-1, 1, len(x))  # upstream gradient
    (q(x) * up).sum().backward()
    v = x / 0.5
    term = torch.where(v <= -q_n, -float(q_n), torch.where(v >= q_p, float(q_p), v.round() - v))
    assert term[7].item() == q_p  # the range test is on x / s before rounding (the paper's)
    g = 1 / math.sqrt(len(x) * q_p)
    assert q.scale.grad.item() == pytest.approx(g * (up * term).sum().item(), rel=1e-5)
    # forward: round(clip(v / s)) * s
    assert torch.equal(q(x).detach(), (v.round().clamp(-q_n, q_p) * 0.5))


def test_lsq_unsigned_activations_and_per_channel_weights():
    probs = torch.rand(64)
    q = calibrated(LSQQuantizer(QuantSpec(4)), probs)
    assert not q.spec.symmetric and q.q_p == 15 and q.spec.qmin == 0
    w = torch.randn(6, 10)
    wq = LSQQuantizer(QuantSpec(2, granularity="channel"))
    wq.init_weight(w)
    assert wq.scale.shape == (6, 1) and wq.q_p == 1
    assert torch.allclose(wq.scale, 2 * w.abs().mean(1, keepdim=True))
    (wq(w) * w).sum().backward()  # per-channel N = 10 weights per step size
    v = w / wq.scale.detach()
    term = torch.where(v <= -2, -2.0, torch.where(v >= 1, 1.0, v.round() - v))
    expected = (w * term).sum(1, keepdim=True) / math.sqrt(10 * 1)
    assert torch.allclose(wq.scale.grad, expected, rtol=1e-5, atol=1e-7)


# -- PACT ----------------------------------------------------------------------------------------
def test_pact_alpha_gradient_is_one_exactly_where_x_reaches_alpha():
    q = calibrated(PACTQuantizer(QuantSpec(4)), torch.tensor([0.0, 2.0]))  # unsigned, alpha = 2
    assert not q.spec.symmetric and q.alpha.item() == 2.0
    x = torch.tensor([-1.0, 0.0, 0.3, 1.99, 2.0, 2.01, 5.0])
    jac = torch.autograd.functional.jacobian(lambda a: _with_alpha(q, a)(x), q.alpha.detach().clone())
    assert torch.equal(jac, (x >= 2.0).float())
    # forward: quantized clip(x, 0, alpha) on 15 steps
    y = q(x).detach()
    assert torch.allclose(y, (x.clamp(0, 2) / (2 / 15)).round() * (2 / 15))


def test_pact_signed_clip_is_symmetric():
    q = calibrated(PACTQuantizer(QuantSpec(3), alpha_init=1.5), torch.tensor([-4.0, 1.0]))
    assert q.spec.symmetric and q.spec.narrow and (q.spec.qmin, q.spec.qmax) == (-3, 3)
    x = torch.tensor([-2.0, -1.5, -1.0, 0.2, 1.49, 1.5, 3.0])
    jac = torch.autograd.functional.jacobian(lambda a: _with_alpha(q, a)(x), q.alpha.detach().clone())
    assert torch.equal(jac, (x >= 1.5).float() - (x <= -1.5).float())
    # the frozen plain quantizer computes the same values
    assert torch.equal(q.freeze()(x), q(x).detach())


@pytest.mark.parametrize("signed", [True, False])
def test_pact_mse_init_is_the_least_error_clip_level(signed):
    g = torch.Generator().manual_seed(0)
    u = torch.rand(3000, generator=g)
    x = torch.log(2 * u.clamp(1e-6, 0.5)) - torch.log(2 * (1 - u).clamp(1e-6, 0.5)) if signed else u**3  # Laplace(0, 1)
    x[7] = 12.0 if signed else 3.0  # one outlier: the RTN range spends the grid on it
    q = calibrated(PACTQuantizer(QuantSpec(4), alpha_init="mse"), x)
    assert q.spec.symmetric == signed and not q.sample  # the sample is freed
    amax = x.abs().max().item()

    def mse(alpha: float) -> float:
        with torch.no_grad():
            return (_with_alpha(q, torch.tensor(alpha))(x) - x).square().mean().item()

    candidates = [amax * i / PACTQuantizer.MSE_GRID for i in range(1, PACTQuantizer.MSE_GRID + 1)]
    errors = [mse(a) for a in candidates]
    best = candidates[min(range(len(errors)), key=errors.__getitem__)]
    assert q.alpha.item() == pytest.approx(best, rel=1e-6)
    assert q.alpha.item() < 0.6 * amax and mse(q.alpha.item()) < 0.75 * mse(amax)  # the outlier is clipped


def test_pact_mse_init_samples_each_call_with_a_fixed_seed():
    calls = [torch.randn(20000) * (1 + i) for i in range(3)]

    def init() -> float:
        q = PACTQuantizer(QuantSpec(4), alpha_init="mse")
        q.observing = True
        for c in calls:
            q(c)
        assert [len(t) for t in q.sample] == [PACTQuantizer.MSE_SAMPLE] * 3
        q.observing = False
        q.calibrate_from_observed()
        return q.alpha.item()

    a = init()
    assert a == init() and 0 < a < max(c.abs().max().item() for c in calls)


def test_pact_two_sided_clip_learns_both_levels_on_the_rtn_grid():
    data = torch.tensor([-0.5, 1.0, 3.0])
    q = calibrated(PACTQuantizer(QuantSpec(3), two_sided=True), data)
    assert not q.spec.symmetric and (q.spec.qmin, q.spec.qmax) == (0, 7)
    assert (q.alpha.item(), q.beta.item()) == (3.0, 0.5)  # the min/max range
    x = torch.tensor([-2.0, -0.5, -0.3, 0.2, 2.99, 3.0, 4.0], requires_grad=True)
    up = torch.linspace(1, 2, len(x))
    (q(x) * up).sum().backward()
    assert q.alpha.grad.item() == pytest.approx(up[x.detach() >= 3.0].sum().item())
    assert q.beta.grad.item() == pytest.approx(-up[x.detach() <= -0.5].sum().item())
    inside = ((x > -0.5) & (x < 3.0)).float()
    assert torch.equal(x.grad, up * inside)
    # forward and the frozen quantizer: RTN's asymmetric grid on the same range
    rtn = calibrated(FakeQuantizer(QuantSpec(3)), data)
    assert torch.allclose(q(x).detach(), rtn(x.detach()), atol=1e-6)
    assert torch.equal(q.freeze()(x.detach()), q(x).detach())
    # unsigned tensors keep the one-sided clip
    u = calibrated(PACTQuantizer(QuantSpec(3), two_sided=True), torch.tensor([0.0, 1.0]))
    assert u.beta.numel() == 0 and u.spec.qmin == 0 and u.alpha.item() == 1.0


def _with_alpha(q: PACTQuantizer, alpha: torch.Tensor):
    def f(x):
        saved = q.alpha
        q._parameters["alpha"] = alpha
        try:
            return q(x)
        finally:
            q._parameters["alpha"] = saved
    return f


# -- LSC -----------------------------------------------------------------------------------------
def test_lsc_statistic_follows_its_ema():
    torch.manual_seed(0)
    calib_x = torch.randn(1000) * 2
    q = calibrated(LSCQuantizer(QuantSpec(4), momentum=0.8, narrow=True), calib_x)
    sigma0 = calib_x.std(correction=0).item()
    assert q.sigma.item() == pytest.approx(sigma0, rel=1e-5)
    assert q.alpha.item() == pytest.approx(calib_x.abs().max().item() / sigma0, rel=1e-5)  # RTN range
    x1, x2 = torch.randn(300) * 3, torch.randn(200) * 0.5 + 1
    q.train()
    with torch.no_grad():
        q(x1)  # no gradient wanted: no update
    assert q.sigma.item() == pytest.approx(sigma0, rel=1e-6)
    q(x1).sum().backward()
    q(x2)
    s1, s2 = x1.std(correction=0).item(), x2.std(correction=0).item()
    assert q.sigma.item() == pytest.approx(0.8 * (0.8 * sigma0 + 0.2 * s1) + 0.2 * s2, rel=1e-5)
    assert q.alpha.grad is not None and q.alpha.grad.abs().item() > 0
    q.eval()
    q(x1)
    assert q.sigma.item() == pytest.approx(0.8 * (0.8 * sigma0 + 0.2 * s1) + 0.2 * s2, rel=1e-5)
    # clip c = alpha * sigma on the narrow symmetric grid; freezing keeps the forward
    c = q.alpha.item() * q.sigma.item()
    assert torch.allclose(q.freeze()(x1), (x1.clamp(-c, c) / (c / 7)).round() * (c / 7), atol=1e-5)


def test_lsc_weights_per_channel():
    w = torch.randn(5, 12) * torch.arange(1, 6)[:, None]
    q = LSCQuantizer(QuantSpec(4, granularity="channel"), momentum=0.5)
    q.init_weight(w)
    assert torch.allclose(q.sigma, w.std(1, keepdim=True, correction=0))
    q.train()
    w2 = w * 1.5
    q(w2.requires_grad_())
    assert torch.allclose(q.sigma, 0.5 * w.std(1, keepdim=True, correction=0) + 0.5 * w2.detach().std(1, keepdim=True,
                                                                                                       correction=0))


def test_rtn_weights_follow_the_current_weight():
    w = torch.nn.Parameter(torch.randn(4, 9))
    q = RTNWeightQuantizer(QuantSpec(3, granularity="channel"))
    q.init_weight(w)
    ref = FakeQuantizer(q.spec)

    def expected():
        ref.set_range(*ref._reduce(w))
        return ref(w.detach())

    y = q(w)
    assert torch.equal(y.detach(), expected())
    y.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # straight-through
    with torch.no_grad():
        w.mul_(1.7)  # an optimizer step: the cached difference must not be reused
    assert torch.equal(q(w).detach(), expected())
    opt = torch.optim.AdamW([w], lr=0.1, fused=True)
    opt.step()  # the fused kernel does not bump versions: the QAT loop does it
    torch.autograd.graph.increment_version([w])
    assert torch.equal(q(w).detach(), expected())


# -- VRC -----------------------------------------------------------------------------------------
def test_vrc_solve_is_the_minimum_norm_least_squares_solution():
    from methods.qsam2 import vrc_solve

    rng = np.random.default_rng(0)
    A = rng.normal(size=(200, 9))
    A[:, 8] = A[:, 3]  # rank deficient: the minimum-norm solution is the unique answer
    B = A + 0.1 * rng.normal(size=A.shape)
    W = rng.normal(size=(4, 9))
    At, Bt, Wt = (torch.from_numpy(m) for m in (A, B, W))
    ours = vrc_solve(At.t() @ At, At.t() @ Bt, Wt).numpy()
    ref, *_ = np.linalg.lstsq(A, B @ W.T, rcond=1e-6)
    res = lambda Wn: np.linalg.norm(A @ Wn.T - B @ W.T)  # noqa: E731
    assert res(ours) == pytest.approx(res(ref.T), rel=1e-9)
    assert np.allclose(ours, ref.T, atol=1e-8)
    assert abs(ours[:, 3] - ours[:, 8]).max() < 1e-8  # min norm splits the duplicated column


def test_vrc_solve_with_channels_that_are_always_zero():
    """A 4-bit GELU output leaves most of fc2's input channels at 0 on every calibration row:
    LAPACK's eigh of such a Gram matrix can fail to converge (this one did with the PyPI torch
    2.14 CPU path: 768 channels of which 65 live, sparse small integers); the solve is the
    least-norm one all the same."""
    from methods.qsam2 import vrc_solve

    torch.manual_seed(1)
    A = torch.zeros(4096, 769, dtype=torch.float64)
    live = torch.randperm(768)[:65]
    A[:, live] = (torch.rand(4096, 65) < 0.05).double() * torch.randint(1, 3, (4096, 65)).double()
    A[:, -1] = 1  # the bias column
    B = A + 0.01 * torch.randn(A.shape, dtype=torch.float64)
    W = torch.randn(5, 769, dtype=torch.float64)
    ours = vrc_solve(A.t() @ A, A.t() @ B, W).numpy()
    ref, *_ = np.linalg.lstsq(A.numpy(), (B @ W.t()).numpy(), rcond=1e-6)
    assert np.allclose(ours, ref.T, atol=1e-8)
    dead = np.ones(769, bool)
    dead[live.numpy()], dead[-1] = False, False
    assert (ours[:, dead] == 0).all()
    zero = vrc_solve(torch.zeros(3, 3, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64), W[:, :3])
    assert (zero == 0).all()  # nothing to fit: the least-norm weights are 0


def _encoder_inputs(model, layers, images):
    """FP inputs of each layer on `images` (all quantizers off)."""
    xs = {n: [] for n in layers}
    hooks = [layers[n].register_forward_pre_hook(lambda m, i, n=n: xs[n].append(i[0].reshape(-1, i[0].shape[-1])))
             for n in layers]
    qs = [m for m in model.modules() if isinstance(m, FakeQuantizer)]
    states = [q.enabled for q in qs]
    for q in qs:
        q.enabled = False
    with torch.no_grad():
        for img in images:
            model.image_encoder(to_input([img], 256))
    for q, s in zip(qs, states):
        q.enabled = s
    for h in hooks:
        h.remove()
    return {n: torch.cat(v).double() for n, v in xs.items()}


def test_vrc_refit_solves_least_squares_and_beats_rtn_on_held_out_data(micro_fp, calib):
    from methods.qsam2 import encoder_linears

    torch.manual_seed(0)
    calib_imgs = CalibData(images=calib.images)
    rtn = copy.deepcopy(micro_fp)
    make_method("rtn", w_bits=4, a_bits=4, components=["image_encoder"]).apply(rtn, calib_imgs)
    model = copy.deepcopy(micro_fp)
    method = make_method("qsam2", w_bits=4, a_bits=4, components=["image_encoder"], lsc=False, steps=0,
                         vrc_input="quantized")
    method.apply(model, calib_imgs)
    assert method.info["vrc_layers"] == len(encoder_linears(model)) > 10
    layers, rtn_layers = encoder_linears(model), encoder_linears(rtn)
    from bench.qat_samples import calibration_images

    # 1. each re-fitted layer solves min ||[Q(X) 1][W' b']^T - (X W^T + b)|| (numpy lstsq residual)
    X = _encoder_inputs(rtn, rtn_layers, [(img.image) for img in calib.images])
    assert len(list(calibration_images(calib_imgs, 256))) == 2
    for name in list(layers)[:: max(1, len(layers) // 6)]:
        layer, ref = layers[name], rtn_layers[name]
        x = X[name]
        a = np.c_[layer.aq.quantize(x.float()).double().numpy(), np.ones(len(x))]  # Q(X), the layer's own
        y = x.numpy() @ ref.weight.double().detach().numpy().T + ref.bias.double().detach().numpy()
        ours = np.c_[layer.weight.double().detach().numpy(), layer.bias.double().detach().numpy()]
        lst, *_ = np.linalg.lstsq(a, y, rcond=1e-6)
        r_ours, r_lst = np.linalg.norm(a @ ours.T - y), np.linalg.norm(a @ lst - y)
        assert r_ours == pytest.approx(r_lst, rel=1e-4, abs=1e-6 * np.linalg.norm(y)), name
        # the same fit from the (unchanged) RTN weights is worse
        rtn_w = np.c_[ref.weight.double().detach().numpy(), ref.bias.double().detach().numpy()]
        assert np.linalg.norm(a @ rtn_w.T - y) >= r_lst * (1 - 1e-9)
    # 2. held-out calibration data (the clip's frames, not used by the fit): the quantized layers'
    # output error (W4 weights, A4 inputs) against the FP layers drops
    held = [read_rgb(p) for p in sorted(calib.clips[0].frames_dir.glob("*.jpg"))]
    assert len(held) == 5
    Xh = _encoder_inputs(rtn, rtn_layers, held)
    err_vrc = err_rtn = 0.0
    with torch.no_grad():
        for name, x in Xh.items():
            x = x.float()
            ref = rtn_layers[name]
            y = x @ ref.weight.t() + ref.bias
            err_rtn += (ref(x) - y).square().sum().item()
            err_vrc += (layers[name](x) - y).square().sum().item()
    assert err_vrc < 0.9 * err_rtn, (err_vrc, err_rtn)


def test_vrc_passes_see_the_fp_model_and_quantized_weights_follow_the_refit(micro_fp, calib):
    """A small `vrc_memory_gb` (one pass per layer) gives the one-pass weights; after VRC the
    RTN weight quantizers of the QAT loop quantize the re-fitted weights, not cached old ones."""
    calib_imgs = CalibData(images=calib.images)
    runs = {}
    for budget in (2.0, 1e-9):
        model = copy.deepcopy(micro_fp)
        method = make_method("qsam2", w_bits=4, a_bits=4, components=["image_encoder"], lsc=False, steps=0,
                      vrc_memory_gb=budget)
        method.prepare(model, calib_imgs)
        runs[budget] = (model, method.info)
    (one, info1), (many, info_many) = runs[2.0], runs[1e-9]
    assert info1["vrc_passes"] == 1 and info_many["vrc_passes"] == info1["vrc_layers"] > 10
    w1, wm = one.state_dict(), many.state_dict()
    assert all(torch.allclose(w1[k], wm[k], rtol=1e-5, atol=1e-6) for k in w1 if k.endswith((".weight", ".bias")))
    for layer in quant_layers(many).values():
        assert isinstance(layer.wq, RTNWeightQuantizer)
        ref = FakeQuantizer(layer.wq.spec)
        ref.set_range(*ref._reduce(layer.weight))
        with torch.no_grad():
            assert torch.equal(layer.wq(layer.weight), ref(layer.weight))
        assert torch.equal(layer.wq(layer.weight).detach(), ref(layer.weight.detach()))  # the training path


# -- the training loop ---------------------------------------------------------------------------
FAST = dict(steps=8, lr=1e-4, lr_quant=1e-2, seg_weight=0.0, warmup_frac=0.0, clip_frames=3)


def test_qat_loop_is_deterministic_and_reduces_the_distillation_loss(present_fp, calib, tmp_path):
    runs = []
    for cell_seed in (7, 7, 8):  # bench.run seeds torch with the cell's seed; QAT's `seed` defaults to it
        torch.manual_seed(cell_seed)
        model = copy.deepcopy(present_fp)
        method = make_method("lsq", w_bits=4, a_bits=4, **FAST)
        method.apply(model, calib)
        runs.append((model, method.info))
    (m1, info), (m2, _), (m3, _) = runs
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)  # another seed: another sample order
    assert info["qat_steps"] == 8 and info["qat_samples"] == 2 + 2  # 2 images, 5 frames in windows of 3
    # seg_weight 0: the total is the distillation objective (mask logits + IoU/object scores +
    # backbone features); the mask-logit term alone drops too
    before, after = info["loss_before"], info["loss_after"]
    assert after["total"] < 0.8 * before["total"], info
    assert 0 < after["distill"] < 0.95 * before["distill"], info
    assert info["peak_mem_mb"] > 0 and info["peak_mem_kind"] == "cpu_max_rss"
    # after training: plain quantizers, every one calibrated; the model changed
    qs = [q for layer in quant_layers(m1).values() for q in (layer.wq, layer.aq)]
    assert qs and all(type(q) is FakeQuantizer and q.active for q in qs)
    # the frozen quantizers pack exactly (symmetric learned steps, zero point 0)
    export_packed(m1, tmp_path / "m.safetensors")
    restored = load_dequantized(tmp_path / "m.safetensors")
    with torch.no_grad():
        assert all(torch.equal(restored[f"{n}.weight"], layer.qweight()) for n, layer in quant_layers(m1).items())
    fp = present_fp.state_dict()
    assert not all(torch.equal(v, fp[k]) for k, v in s1.items() if k in fp)
    # the reported loss is the loss of the frozen model
    samples = build_samples(calib, 256, 3)
    cfg = method.config
    assert evaluate_loss(m1, samples, teacher_outputs(present_fp, samples), cfg)["total"] == pytest.approx(
        after["total"], rel=1e-4)


@pytest.mark.parametrize("prob_init", ["minmax", "lsq"])
def test_lsq_init_of_attention_probabilities(present_fp, calib, prob_init):
    """`init` sets the step of layer inputs from the paper's 2 mean|x| / sqrt(Q_P); attention
    probabilities follow `prob_init` (default: max|x| / Q_P, the RTN range)."""
    from bench.quant.scope import quant_attentions

    model = copy.deepcopy(present_fp)
    method = make_method("lsq", w_bits=4, a_bits=4, prob_init=prob_init)
    method.prepare(model, calib)
    probs = [a.p_quant for a in quant_attentions(model).values()]
    inputs = [layer.aq for layer in quant_layers(model).values()]
    assert probs and inputs
    for q in probs + inputs:
        mean_abs, _, amax = q.observed()
        rule = "lsq" if q in inputs or prob_init == "lsq" else "minmax"
        want = 2 * mean_abs / math.sqrt(q.q_p) if rule == "lsq" else amax / q.q_p
        assert q.scale.item() == pytest.approx(want, rel=1e-5)
    assert all(q.spec.qmin == 0 for q in probs)  # probabilities are unsigned


@pytest.mark.parametrize("name, options", [("pact", {}), ("pact", {"signed_clip": "two_sided"}), ("qsam2", {}),
                                           ("qsam2", {"vrc": False})])
def test_other_qat_methods_train(present_fp, calib, name, options):
    model = copy.deepcopy(present_fp)
    method = make_method(name, w_bits=4, a_bits=4, **{**FAST, "steps": 4, **options})
    method.apply(model, calib)
    info = method.info
    assert info["loss_after"]["total"] < info["loss_before"]["total"], info
    layers = quant_layers(model)
    assert all(type(q) is FakeQuantizer for layer in layers.values() for q in (layer.wq, layer.aq))
    if name == "pact":  # frozen RTN weights: the min/max range of the final weights
        for layer in list(layers.values())[::10]:
            ref = FakeQuantizer(layer.wq.spec)
            ref.set_range(*ref._reduce(layer.weight))
            with torch.no_grad():
                assert torch.equal(layer.qweight(), ref(layer.weight))


def test_training_with_nothing_to_train_is_a_one_line_error(present_fp, calib):
    with pytest.raises(BenchError) as e:  # Q-SAM2 knows it from its config, before any work
        make_method("qsam2", w_bits=4, a_bits=4, **{**FAST, "steps": 2}, vrc=False, lsc=False, train_weights=False)
    assert str(e.value).startswith("steps: 2 training steps but nothing to train") and "\n" not in str(e.value)
    cfg = make_method("lsq", w_bits=4, a_bits=4, **{**FAST, "steps": 2}, train_weights=False).config
    samples = build_samples(calib, 256, 3)
    with pytest.raises(BenchError) as e:  # a model without learned quantizers: the loop itself refuses
        train(copy.deepcopy(present_fp), samples, teacher_outputs(present_fp, samples), cfg)
    assert str(e.value).startswith("steps: 2 training steps but nothing to train") and "\n" not in str(e.value)


def test_config_errors_are_one_line_and_name_the_field():
    cases = [
        ("lsq", {"steps": -1}, "steps"), ("lsq", {"batch_size": 0}, "batch_size"), ("lsq", {"lr": -1e-3}, "lr"),
        ("lsq", {"schedule": "linear"}, "schedule"), ("lsq", {"init": "zero"}, "init"),
        ("lsq", {"prob_init": "max"}, "prob_init"),
        ("lsq", {"warmup_frac": 1.0}, "warmup_frac"), ("pact", {"alpha_l2": -1}, "alpha_l2"),
        ("pact", {"signed_clip": "wide"}, "signed_clip"),
        ("qsam2", {"vrc_bias": "drop"}, "vrc_bias"), ("qsam2", {"lsc_momentum": 1.5}, "lsc_momentum"),
        ("qsam2", {"vrc": "yes"}, "vrc"), ("lsq", {"video_share": 1.5}, "video_share"),
        ("pact", {"video_share": -0.1}, "video_share"), ("qsam2", {"video_share": "half"}, "video_share"),
    ]
    for name, opts, field in cases:
        with pytest.raises(BenchError) as e:
            make_method(name, w_bits=4, a_bits=4, **opts)
        msg = str(e.value)
        assert msg.startswith(f"{field}: ") and "\n" not in msg, msg
    assert make_method("qsam2", w_bits=2, a_bits=4, lsc=False, steps=0).variant == "vrc-only"
    assert make_method("qsam2", w_bits=2, a_bits=4, vrc=False).variant == "lsc-only"
    assert make_method("pact", w_bits=2, a_bits=4, signed_clip="two_sided").variant == "two-sided"


def test_sample_order_mixes_images_and_video_windows_as_asked():
    img, clip = ImageSample(None, None, None), ClipSample(None, None, None)
    samples = [img] * 6 + [clip] * 2  # indices 0-5 images, 6-7 video windows
    take = lambda order, n: [next(order) for _ in range(n)]  # noqa: E731
    # no share: whole permutations one after another, as the loop always drew them
    gen = torch.Generator().manual_seed(3)
    expected = [i for _ in range(5) for i in torch.randperm(8, generator=gen).tolist()]
    assert take(sample_order(samples, None, torch.Generator().manual_seed(3)), 40) == expected
    # a share: that fraction of video draws; each kind cycles through all of its samples
    drawn = take(sample_order(samples, 0.5, torch.Generator().manual_seed(0)), 4000)
    videos = [i for i in drawn if i >= 6]
    assert 0.46 < len(videos) / len(drawn) < 0.54
    images = [i for i in drawn if i < 6]
    assert all(sorted(images[k : k + 6]) == list(range(6)) for k in range(0, len(images) - 5, 6))
    assert all(sorted(videos[k : k + 2]) == [6, 7] for k in range(0, len(videos) - 1, 2))
    assert set(take(sample_order(samples, 0.0, torch.Generator()), 50)) == set(range(6))
    assert set(take(sample_order(samples[:6], 1.0, torch.Generator()), 20)) == set(range(6))  # no video: images
