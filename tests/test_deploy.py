"""The deployed form (bench.deploy): codes and scales carried over, integer kernels that give
the fake-quantized layer's outputs, and the latency task's record on the micro model."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from bench import BenchError
from bench.deploy import BACKENDS, Int4WeightLinear, Int8Linear, config_of, deploy
from bench.quant.fake import QuantSpec
from bench.quant.modules import QuantLinear
from bench.tasks.latency import ulp_noise
from tests.conftest import make_method
from tests.test_qat import _one_thread, calib  # noqa: F401  (fixtures: one thread, a tiny calibration set)


def _layer(w_bits: int, a_bits: int | None, k: int = 256, n: int = 96, symmetric: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    ql = QuantLinear(nn.Linear(k, n), QuantSpec(w_bits, symmetric=symmetric, granularity="channel"),
                     QuantSpec(a_bits) if a_bits else None)
    ql.calibrate_weight()
    x = torch.randn(300, k) * 2 + 0.5
    if a_bits:
        ql.aq.observe(x)
        ql.aq.calibrate_from_observed()
    return ql, x


@pytest.mark.parametrize("kernel", ["int8-intmm", "int8-onednn"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_w8a8_layer_equals_its_fake_quant_layer(kernel, symmetric):
    ql, x = _layer(8, 8, symmetric=symmetric)
    d = Int8Linear(ql, kernel)
    assert d.weight_centered == symmetric  # symmetric weights need no zero-point term
    with torch.no_grad():
        ref, out = ql(x), d(x)
    # integer products are exact; only the float epilogue rounds
    assert torch.allclose(out, ref, rtol=0, atol=1e-5 * ref.abs().max().item())
    # the same codes: re-deriving the weight from the kernel's int8 codes gives the layer's weight
    if kernel == "int8-intmm":
        w = (d.w_t.t().int() - d.zp_w[:, None]) * d.w_scale[:, None]
        assert torch.equal(w, ql.qweight().detach())
    assert d.s_x == float(ql.aq.scale) and d.zu_x == int(ql.aq.zero_point)


def test_w8a8_codes_match_the_fake_quantizer_exactly():
    ql, x = _layer(8, 8)
    d = Int8Linear(ql, "int8-onednn")
    u, _ = d._codes(x, signed=False)
    s, z = ql.aq.scale, ql.aq.zero_point
    expected = torch.clamp(torch.round(x / s) + z, 0, 255).to(torch.uint8)
    assert torch.equal(u, expected)


def test_w4_weight_only_layer_and_bytes():
    ql, x = _layer(4, None)
    d = Int4WeightLinear(ql)
    with torch.no_grad():
        ref, out = ql(x), d(x)
    # BF16 activations and scales (the kernel's format): a relative error of a few 2^-8
    assert (out - ref).abs().max() <= 0.02 * ref.abs().max()
    bf16 = 2 * ql.weight.numel()
    assert d.deployed_bytes() <= 0.3 * bf16
    xt = x.t().contiguous().t()  # channels-first storage, as a permuted input (SAM2's memory encoder)
    with torch.no_grad():
        assert torch.equal(d(xt), d(xt.contiguous()))


def test_configs_and_what_is_left():
    assert config_of(_layer(8, 8)[0]) == "W8A8"
    assert config_of(_layer(4, None)[0]) == "W4"
    assert "no integer backend" in config_of(_layer(4, 4)[0])
    model = nn.Sequential(_layer(8, 8)[0], nn.ReLU(), _layer(4, 4, k=96)[0])
    dep = deploy(model)
    assert dep.backend == "int8-onednn" and dep.converted == ["0"]
    assert dep.left == {"2": "W4A4: no integer backend"}
    assert isinstance(dep.model[0], Int8Linear) and isinstance(model[0], QuantLinear)  # a copy
    none = deploy(nn.Sequential(_layer(4, 4)[0]))
    assert none.model is None and none.backend is None
    with pytest.raises(BenchError, match="backend: unknown"):
        deploy(model, "int3-magic")
    assert set(BACKENDS) >= {"int8-intmm", "int8-onednn", "int4-tinygemm"}


def test_latency_task_record_on_micro(tmp_path):
    """RTN W8A8 on the micro model: deployed, timed, and its masks agree with the fake-quant
    model's (the issue's fidelity goal: mean mask IoU >= 0.98, |delta| <= 0.5)."""
    out = tmp_path / "rec.json"
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--method", "rtn", "--w-bits", "8", "--a-bits", "8",
                           "--task", "latency", "--out", str(out), "--set", "scope_preset=all"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads(out.read_text())["metrics"]
    assert m["deployed"] and m["backend"] == "int8-onednn" and m["layers_deployed"] > 0
    assert m["deployed_linear_bytes"] < 0.6 * m["deployed_linear_bf16_bytes"]
    for k in ("image_encoder_ms", "image_encoder_ms_fp", "decode_ms", "track_frame_ms"):
        assert m[k] > 0
    assert m["fidelity_instseg_mask_iou"] >= 0.98 and m["fidelity_vos_mask_iou"] >= 0.98
    assert abs(m["fidelity_delta_mIoU"]) <= 0.5 and abs(m["fidelity_delta_J&F"]) <= 0.5
    # the noise floor: the fake-quant model against itself under one-ulp noise, also measured
    for k in ("noise_instseg_mask_iou", "noise_vos_mask_iou"):
        assert 0.9 <= m[k] <= 1.0
    assert abs(m["noise_delta_mIoU"]) <= 0.5 and abs(m["noise_delta_J&F"]) <= 1.0


def test_ulp_noise_moves_each_output_one_ulp_and_is_removed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    x = torch.randn(4, 16)
    with torch.inference_mode():
        h = model[0](x)
        with ulp_noise(model, ["0"]):
            noisy = model[0](x)
            again = model[0](x)
        assert torch.equal(model[0](x), h)  # hook gone
    up = noisy > h
    inf = torch.tensor(torch.inf)
    # every element moved by exactly one unit in the last place, up or down
    assert torch.equal(noisy, torch.where(up, torch.nextafter(h, inf), torch.nextafter(h, -inf)))
    assert 0.3 < up.float().mean() < 0.7 and not torch.equal(noisy, again)  # random directions


def test_backend_benchmark_prints_every_variant_and_the_goals():
    """The backend benchmark (README "Deployed models") at a small input: every variant timed,
    the W4 bytes goal computed from the deployed layers."""
    proc = subprocess.run([sys.executable, "-m", "bench.benchmarks.deploy", "--repeats", "1", "--size", "256",
                           "--threads", "1"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for row in ("| fp32 |", "| BF16 Linears (reference) |", "| W8A8 int8-onednn |", "| W8A8 int8-intmm |",
                "| W4 int4-tinygemm |"):
        assert row in out
    ratio = float(re.search(r"goal W4 deployed weights <= 0.3x BF16: ([0-9.]+)x", out).group(1))
    assert 0.25 < ratio <= 0.3  # 4-bit codes packed two a byte plus a scale and zero point per group
    assert re.search(r"goal W8A8 deployed >= 1.3x faster than fp32: W8A8 int8-\w+ [0-9.]+x", out)


def test_latency_task_records_a_configuration_without_backend(tmp_path):
    out = tmp_path / "rec.json"
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--method", "rtn", "--w-bits", "4", "--a-bits", "4",
                           "--task", "latency", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads(out.read_text())
    assert rec["status"] == "ok"
    assert rec["metrics"]["deployed"] is False and "W4A4: no integer backend" in rec["metrics"]["no_backend"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_gpu_command_says_in_one_line_that_there_is_no_gpu():
    proc = subprocess.run([sys.executable, "-m", "bench.benchmarks.gpu"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "no CUDA GPU" in proc.stderr


def test_gpu_command_runs_its_cells(tmp_path):
    """The command's loop on the micro model on CPU (`--device cpu` checks the command only)."""
    proc = subprocess.run([sys.executable, "-m", "bench.benchmarks.gpu", "--models", "micro", "--device", "cpu",
                           "--methods", "rtn,lsq (3 steps)"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| micro |")]
    assert [r.split("|")[2].strip() for r in rows] == ["rtn", "lsq (3 steps)"]
    assert all("| ok |" in r for r in rows)


@pytest.mark.parametrize("backend", ["int8-intmm", "int8-onednn"])
def test_each_w8a8_backend_deploys_a_whole_model(micro_fp, calib, backend):  # noqa: F811
    """RTN W8A8 on the micro model: every quantized Linear goes onto the backend, and on the
    inputs each layer sees inside the fake-quantized model its deployed form gives the same
    output up to float rounding (the whole encoder then differs only where a rounding
    difference moves a later activation's code by one)."""
    from bench.run import apply_method

    model = apply_method(make_method("rtn", 8, 8), copy.deepcopy(micro_fp), calib, 0)
    dep = deploy(model, backend)
    assert dep.converted and not dep.left
    assert all(m.kernel == backend for m in dep.model.modules() if isinstance(m, Int8Linear))
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: seen.setdefault(n, (a[0].clone(), o.clone())) and None)
             for n, m in model.named_modules() if n in dep.converted]
    x = torch.randn(1, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.image_encoder(x)
        for h in hooks:
            h.remove()
        assert len(seen) > 10
        for name, (inp, out) in seen.items():
            err = (dep.model.get_submodule(name)(inp) - out).abs().max()
            assert err <= 1e-5 * out.abs().max(), name


def test_calibration_subclasses_deploy_but_qdrop_in_evaluation_does_not():
    """PTQ4SAM's observer quantizers compute like the plain one in evaluation and deploy; the
    official code's evaluation bug (QDrop mixing left on) makes outputs random: not deployed."""
    from bench.quant.observers import PTQQuantizer

    ql, x = _layer(8, 8)
    q = PTQQuantizer(ql.aq.spec)
    q.scale, q.zero_point = ql.aq.scale.clone(), ql.aq.zero_point.clone()
    ql.aq = q
    assert config_of(ql) == "W8A8"
    with torch.no_grad():
        ref = ql(x)
        assert torch.allclose(Int8Linear(ql, "int8-onednn")(x), ref, rtol=0, atol=1e-5 * ref.abs().max().item())
    q.drop_prob = 0.5
    assert config_of(ql) == "activation quantizer is not a uniform per-tensor one"


def test_w4_layer_the_cpu_kernel_cannot_take_is_left_with_its_reason():
    """tinygemm's CPU packing needs a multiple of 16 output channels: such a layer stays as it
    is, named with the reason, and the rest of the model is deployed."""
    model = nn.Sequential(_layer(4, None, n=96)[0], nn.ReLU(), _layer(4, None, k=96, n=40)[0])
    dep = deploy(model)
    assert dep.backend == "int4-tinygemm" and dep.converted == ["0"]
    assert dep.left == {"2": "deploy: the CPU int4 kernel needs n % 16 == 0, got 40"}
    assert isinstance(dep.model[2], QuantLinear)
