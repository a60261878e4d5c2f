"""`pact`: PACT, Parameterized Clipping Activation (Choi et al., 2018), whole-model QAT.

Paper: arXiv 1805.06085; trained by the shared quantization-aware training loop (bench.qat).

Activations (layer inputs and, with `quant_attention`, attention q/k/v and probabilities):
a `PACTQuantizer` per tensor (bench.quant.learned) with a learned clipping level alpha,
y = clip(x, 0, alpha) quantized uniformly on [0, alpha]; d y_q / d alpha = 1 where x >= alpha,
else 0 (the rounding is straight-through); the loss gets `alpha_l2` * sum(alpha^2) over all
clipping levels (the paper's L2 regularization of alpha).

Choices where the paper does not fit SAM2 (documented here and in the quantizer):
  - signed tensors (calibration minimum < 0: LayerNorm outputs, GELU, attention inputs) use
    the symmetric clip [-alpha, alpha] with the narrow symmetric levels
    [-(2^(b-1) - 1), 2^(b-1) - 1]; d y_q / d alpha = -1 where x <= -alpha;
  - `signed_clip: two_sided` (an ablation switch; default `symmetric`): signed tensors get a
    second learned level beta for the negative side, clip(x, -beta, alpha) on asymmetric
    levels, with the same PACT gradients and L2 penalty on beta. The symmetric clip spends
    half the levels on the short negative side of GELU and LayerNorm outputs; the two-sided
    clip starts exactly at RTN's ranges (sweeps/qat-micro.yaml has both as rows);
  - `alpha_init` (the paper's alpha = 10 assumes post-ReLU activations of another scale):
    "mse" (default), the clipping level of least mean squared quantization error on the
    calibration data (100 candidates up to max|x|, `PACTQuantizer`); null, max|x| (the RTN
    range); or a number. Chosen on the held-out dev set (sweeps/qat-dev.yaml, the `max-init`
    rows). From max|x| no value reaches alpha, so only the L2 term moves it until it clips;
    the least-MSE level starts where clipping and rounding balance;
  - weights: the paper pairs PACT with DoReFa weights, whose tanh normalization to [-1, 1]
    relies on a batch norm after every layer; SAM2 has none, so weights are quantized per
    output channel with min/max ranges (RTN, asymmetric, the harness default), recomputed from
    the current weights at every forward pass and straight-through for the weight gradient
    (`RTNWeightQuantizer`).

Variant labels: "" (default), "two-sided", "no-l2" (`alpha_l2: 0`), "max-init"
(`alpha_init: null`), joined by '+', then `field=value` for any other non-default switch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bench import BenchError
from bench.calib import CalibData
from bench.qat import QATConfig, QATMethod
from bench.quant import wrap
from bench.quant.calibrate import calibrate_activations
from bench.quant.fake import FakeQuantizer
from bench.quant.learned import PACTQuantizer, RTNWeightQuantizer, learned_quantizers, replace_quantizers


@dataclass(frozen=True)
class PACTConfig(QATConfig):
    alpha_l2: float = 2e-4  # L2 coefficient on the clipping levels (the paper's lambda_alpha)
    alpha_init: float | str | None = "mse"  # "mse": least-MSE level; None: max|x| over the calibration data
    signed_clip: str = "symmetric"  # symmetric: [-alpha, alpha]; two_sided: [-beta, alpha]

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.alpha_l2, bool) or not isinstance(self.alpha_l2, (int, float)) or self.alpha_l2 < 0:
            raise BenchError(f"alpha_l2: expected a number >= 0, got {self.alpha_l2!r}")
        a = self.alpha_init
        if a is not None and a != "mse" and (isinstance(a, bool) or not isinstance(a, (int, float)) or a <= 0):
            raise BenchError(f"alpha_init: expected a positive number, 'mse' or null, got {a!r}")
        if self.signed_clip not in ("symmetric", "two_sided"):
            raise BenchError(f"signed_clip: expected 'symmetric' or 'two_sided', got {self.signed_clip!r}")


def alpha_penalty(model: nn.Module, coefficient: float) -> torch.Tensor:
    levels = [p for q in learned_quantizers(model).values() if isinstance(q, PACTQuantizer)
              for p in (q.alpha, q.beta) if p.numel()]
    return coefficient * torch.stack([p.square() for p in levels]).sum()


class PACT(QATMethod):
    name = "pact"
    Config = PACTConfig

    def switch_label(self) -> tuple[str, tuple[str, ...]]:
        c = self.config
        names = {"signed_clip": "two-sided" if c.signed_clip == "two_sided" else "",
                 "alpha_l2": "no-l2" if c.alpha_l2 == 0 else "",
                 "alpha_init": "max-init" if c.alpha_init is None else ""}
        named = {f: label for f, label in names.items() if label}
        return "+".join(named.values()), tuple(named)

    def _quantizer(self, name: str, old: FakeQuantizer, kind: str) -> FakeQuantizer:
        if kind == "weight":
            return RTNWeightQuantizer(old.spec)
        return PACTQuantizer(old.spec, alpha_init=self.config.alpha_init,
                             two_sided=self.config.signed_clip == "two_sided")

    def prepare(self, model: nn.Module, calib: CalibData | None) -> None:
        wrap(model, self.config.plan())
        replace_quantizers(model, self._quantizer)  # weight ranges from the weights
        calibrate_activations(model, calib)

    def regularizer(self) -> Callable[[nn.Module], torch.Tensor] | None:
        c = self.config
        if c.a_bits is None or c.alpha_l2 <= 0:
            return None
        return lambda m: alpha_penalty(m, c.alpha_l2)
