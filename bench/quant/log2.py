"""PTQ4SAM's Adaptive Granularity Quantization (AGQ) of post-softmax probabilities.

    a_q   = clamp(round(-tau * log2(a / s)), 0, 2^b - 1)      (round_ste: straight-through)
    a_hat = s * 2^(-a_q / tau), and 0 where round(-tau * log2(a / s)) >= 2^b

with tau in {1, 2, 4} (the granularity: a larger tau puts the levels closer together near s).
Calibration (the official `LogAvgMSEFastObserver`): on every call the quantizer sees the
probabilities A with the values V they multiply; for each tau a bounded scalar search
(Brent, `scipy.optimize.minimize_scalar`, bounds [min(0.1, 0.01 max A), max A]) finds the
scale s minimizing mean |A_hat V - A V|^p (p = 2.4); the scales are averaged over calls and
the errors summed, and the tau with the least summed error is kept with its mean scale.
"""

from __future__ import annotations

import math

import torch
from scipy.optimize import minimize_scalar

from bench.quant.fake import FakeQuantizer, QuantSpec, clamp_inclusive, round_ste
from bench.quant.observers import qdrop

TAUS = (1, 2, 4)


def log2_quant(a: torch.Tensor, scale: torch.Tensor | float, tau: float, bits: int) -> torch.Tensor:
    """The AGQ fake quantization of probabilities `a` (see the module docstring)."""
    levels = 2**bits
    q = round_ste(-tau * torch.log2(a.clamp_min(1e-20) / scale))
    underflow = q >= levels
    q = clamp_inclusive(q, 0, levels - 1)  # the gradient passes at the top and bottom codes too
    return (scale * torch.pow(2.0, -q / tau)).masked_fill(underflow, 0.0)


@torch.no_grad()
def agq_search(
    probs: torch.Tensor, values: torch.Tensor, bits: int, taus: tuple[int, ...] = TAUS, p: float = 2.4
) -> tuple[list[float], list[float]]:
    """For each tau, the scale minimizing mean |A_hat V - A V|^p and that error."""
    probs, values = probs.float(), values.float()
    ref = probs @ values
    top = float(probs.max())
    if top <= 0:
        return [1.0] * len(taus), [0.0] * len(taus)
    log_a = torch.log2(probs.clamp_min(1e-20))  # once per call: each evaluation only shifts it
    levels = 2**bits
    scales, errors = [], []
    for tau in taus:
        def err(s: float, tau: int = tau) -> float:
            q = torch.round((math.log2(s) - log_a) * tau)  # = round(-tau * log2(a / s))
            a_hat = torch.exp2(q.clamp(0, levels - 1) / -tau).mul_(s).masked_fill_(q >= levels, 0.0)
            return float((a_hat @ values - ref).abs_().pow_(p).mean())

        res = minimize_scalar(err, bounds=(min(0.1, 0.01 * top), top), method="bounded")
        scales.append(float(res.x))
        errors.append(float(res.fun))
    return scales, errors


class Log2Quantizer(FakeQuantizer):
    """AGQ quantizer for the post-softmax probabilities (`p_quant` of quantized attention).

    Calibrated through `observe_attention(probs, v)` (called by the attention core while the
    quantizer observes); `tau` is a plain attribute, `scale` a buffer (an nn.Parameter while a
    block reconstruction learns it). `drop_prob` < 1 applies QDrop. `max_calls` > 0 limits the
    search to the first calls of the calibration (a budget knob; 0 = every call, the official)."""

    needs_values = True  # the attention core passes V to `observe_attention`

    def __init__(
        self, spec: QuantSpec | None, taus: tuple[int, ...] = TAUS, p: float = 2.4, max_calls: int = 0
    ) -> None:
        super().__init__(spec)
        self.taus = tuple(taus)
        self.p = p
        self.max_calls = max_calls  # > 0: search on the first `max_calls` calls only
        self.tau = 2.0  # the official default before calibration
        self.drop_prob = 1.0
        self._scale_sums = [0.0] * len(self.taus)
        self._err_sums = [0.0] * len(self.taus)
        self._calls = 0

    def observe_attention(self, probs: torch.Tensor, values: torch.Tensor) -> None:
        if probs.numel() == 0 or 0 < self.max_calls <= self._calls:
            return
        scales, errors = agq_search(probs, values, self.spec.bits, self.taus, self.p)
        self._scale_sums = [a + b for a, b in zip(self._scale_sums, scales)]
        self._err_sums = [a + b for a, b in zip(self._err_sums, errors)]
        self._calls += 1

    def calibrate_from_observed(self) -> None:
        device = self.min_val.device if self.min_val.numel() else None
        if self._calls == 0:  # never saw V: the largest probability, the default tau
            if self.min_val.numel() == 0:
                raise RuntimeError("quantizer observed no data")
            scale = float(self.max_val.max())
        else:
            best = min(range(len(self.taus)), key=lambda i: self._err_sums[i])
            self.tau = float(self.taus[best])
            scale = self._scale_sums[best] / self._calls
        self.set_log2(scale, self.tau, device)
        self._scale_sums, self._err_sums, self._calls = [0.0] * len(self.taus), [0.0] * len(self.taus), 0

    def set_log2(self, scale: float, tau: float, device: torch.device | None = None) -> None:
        self.tau = float(tau)
        self.scale = torch.tensor(float(scale), device=device)
        self.zero_point = torch.zeros((), device=device)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return log2_quant(x, self.scale.to(x.dtype), self.tau, self.spec.bits)

    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        y = super().forward(x)  # never in place: x is kept for QDrop
        if self.drop_prob < 1.0 and self.active:
            return qdrop(x, y, self.drop_prob)
        return y

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.round(-self.tau * torch.log2(x.clamp_min(1e-20) / self.scale))
        return q.clamp(0, 2**self.spec.bits - 1).to(torch.uint8)

    def extra_repr(self) -> str:
        return f"log2 bits={self.spec.bits if self.spec else None}, tau={self.tau}, active={self.active}"
