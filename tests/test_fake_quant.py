"""The uniform fake quantizer: formula, granularities, STE gradients, fused path."""

from __future__ import annotations

import pytest
import torch

from bench import BenchError
from bench.quant import FakeQuantizer, QuantSpec, fake_quant


def calibrated(spec: QuantSpec, x: torch.Tensor) -> FakeQuantizer:
    q = FakeQuantizer(spec)
    lo, hi = q._reduce(x)
    q.set_range(lo, hi)
    return q


def test_asymmetric_formula_by_hand():
    # range [-1, 2] at 2 bits: s = 3/3 = 1, z = clamp(-round(-1/1), 0, 3) = 1
    x = torch.tensor([-1.0, -0.4, 0.2, 0.6, 1.4, 2.0, 5.0, -3.0])
    q = calibrated(QuantSpec(2), torch.tensor([-1.0, 2.0]))
    assert q.scale.item() == pytest.approx(1.0) and q.zero_point.item() == 1
    expected = torch.tensor([-1.0, 0.0, 0.0, 1.0, 1.0, 2.0, 2.0, -1.0])
    assert torch.equal(q(x), expected)


def test_symmetric_levels():
    q = calibrated(QuantSpec(3, symmetric=True), torch.tensor([-2.0, 1.0]))
    # levels -4..3, s = 2 / 3.5
    s = 2.0 / 3.5
    assert q.scale.item() == pytest.approx(s)
    y = q(torch.linspace(-3, 3, 101))
    assert torch.allclose(torch.unique(y), torch.arange(-4, 4) * s, atol=1e-6)
    narrow = calibrated(QuantSpec(3, symmetric=True, narrow=True), torch.tensor([-2.0, 1.0]))
    assert narrow.spec.qmin == -3 and narrow.spec.qmax == 3


@pytest.mark.parametrize("bits", [0, 1, 9, 2.5, True])
def test_bad_bit_width_is_rejected(bits):
    with pytest.raises(BenchError, match="bits"):
        QuantSpec(bits)


@pytest.mark.parametrize("gran", ["tensor", "channel", "group"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [False, True])
def test_error_bounded_by_step(gran, bits, sym):
    w = torch.randn(16, 64) * torch.linspace(0.1, 3, 16)[:, None]
    q = calibrated(QuantSpec(bits, symmetric=sym, granularity=gran, group_size=16), w)
    err = (q(w) - w).abs()
    scale = q.scale if gran != "group" else q.scale.reshape(16, -1).repeat_interleave(16, dim=1)
    # symmetric: within half a step; asymmetric: the rounded zero point may clip an edge by
    # up to half a step more
    bound = scale / 2 if sym else scale
    assert torch.all(err <= bound + 1e-4 * scale)
    levels = q(w)[3, :16]  # one channel, one group: at most 2^bits values
    assert len(torch.unique(levels)) <= 2**bits


def test_finer_granularity_lowers_error():
    w = torch.randn(32, 128) * torch.logspace(-2, 1, 32)[:, None]
    errs = [
        (calibrated(QuantSpec(4, granularity=g, group_size=32), w)(w) - w).pow(2).mean().item()
        for g in ("tensor", "channel", "group")
    ]
    assert errs[0] > errs[1] > errs[2]


def test_error_falls_with_bits():
    x = torch.randn(4096)
    errs = [(calibrated(QuantSpec(b), x)(x) - x).pow(2).mean().item() for b in range(2, 9)]
    assert all(a > 3 * b for a, b in zip(errs, errs[1:]))


def test_inference_path_equals_reference():
    x = torch.randn(10000) * 3
    q = calibrated(QuantSpec(4), x)
    with torch.no_grad():
        fast = q(x)
    ref = fake_quant(x, q.scale, q.zero_point, 0, 15)
    assert torch.equal(fast, ref)
    assert q(x.requires_grad_()).grad_fn is not None  # the autograd path when gradients are wanted
    # reassigning the range is seen by the cached scalar arguments
    q.set_range(torch.tensor(-1.0), torch.tensor(1.0))
    with torch.no_grad():
        assert torch.equal(q(x), fake_quant(x, q.scale, q.zero_point, 0, 15))
        assert q(x).abs().max() <= 1.0 + q.scale.item()  # [-1, 1] up to the zero point's rounding


def test_ste_gradients():
    # x: straight through inside the range, zero outside; scale: the LSQ gradient
    s = torch.tensor(0.5, requires_grad=True)
    x = torch.tensor([-3.0, -0.7, 0.2, 0.74, 0.9, 4.0], requires_grad=True)
    y = fake_quant(x, s, torch.tensor(0.0), -2, 1)
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1, 1, 1, 0, 0]))
    v = x.detach() / 0.5
    inside = (v.round() >= -2) & (v.round() <= 1)
    expected = torch.where(inside, -v + v.round(), torch.where(v < 0, torch.tensor(-2.0), torch.tensor(1.0)))
    assert s.grad.item() == pytest.approx(expected.sum().item(), abs=1e-6)


def test_observer_accumulates_over_batches_and_off_is_passthrough():
    q = FakeQuantizer(QuantSpec(8))
    q.observing = True
    a, b = torch.tensor([0.0, 1.0]), torch.tensor([-2.0, 0.5])
    assert q(a) is a and q(b) is b
    q.observing = False
    q.calibrate_from_observed()
    assert q.min_val.item() == -2.0 and q.max_val.item() == 1.0
    off = FakeQuantizer(None)
    assert off(a) is a and not off.active


def test_codes_round_trip():
    w = torch.randn(8, 32)
    q = calibrated(QuantSpec(3, granularity="channel"), w)
    codes = q.codes(w).float()
    assert codes.min() >= 0 and codes.max() <= 7
    assert torch.equal((codes + q.spec.qmin - q.zero_point) * q.scale, q(w))
