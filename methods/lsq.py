"""`lsq`: Learned Step Size Quantization (Esser et al., ICLR 2020), whole-model QAT.

Paper: arXiv 1902.08153; trained by the shared quantization-aware training loop (bench.qat).

Every quantizer of the plan (layer weights, layer inputs and, with `quant_attention`,
attention q/k/v and probabilities) becomes an `LSQQuantizer` (bench.quant.learned): a learned
step size s, v_hat = round(clip(v / s, -Q_N, Q_P)) * s, the paper's straight-through gradient
for s (-v/s + round(v/s) inside the range, -Q_N or Q_P outside) scaled by
g = 1 / sqrt(N * Q_P), init s = 2 * mean(|v|) / sqrt(Q_P).

Where the paper is silent or does not fit SAM2 (each a config field or documented):
  - weights: per output channel (`weight_granularity`, "tensor" is the paper's), symmetric
    signed [-2^(b-1), 2^(b-1) - 1], N = the weights one step size covers;
  - activations: per tensor, zero point 0, unsigned [0, 2^b - 1] when the calibration minimum
    is >= 0 (the paper's post-ReLU case; here softmax probabilities and ReLU outputs), else
    signed; N = the elements of the tensor in the forward call; init from the calibration
    data's mean |x| (`init="minmax"` starts every quantizer from the RTN range instead);
  - attention probabilities (the paper has no softmax quantizer): `prob_init`, default
    "minmax". The paper's init, made for post-ReLU features, clips softmax probabilities
    (mean 1/N) to a few times their mean, so most of the probability mass the attention
    relies on is cut before training starts; `prob_init: lsq` applies it there too;
  - the paper trains from a full-precision model with SGD for many epochs; here AdamW on the
    calibration data against the FP model's outputs, with the shared budget (bench.qat).

Variant labels: "" (the paper's init), "minmax-init" (`init: minmax`), then `field=value` for
any other non-default switch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from bench import BenchError
from bench.calib import CalibData
from bench.qat import QATConfig, QATMethod
from bench.quant import wrap
from bench.quant.calibrate import calibrate_activations
from bench.quant.fake import FakeQuantizer
from bench.quant.learned import LSQQuantizer, replace_quantizers

INITS = ("lsq", "minmax")
GRANULARITIES = ("channel", "tensor")


@dataclass(frozen=True)
class LSQConfig(QATConfig):
    init: str = "lsq"  # step-size init: the paper's 2 mean|v| / sqrt(Q_P), or max|v| / Q_P
    prob_init: str = "minmax"  # the same choice for attention probabilities (see the docstring)
    weight_granularity: str = "channel"

    def __post_init__(self) -> None:
        super().__post_init__()
        for f in ("init", "prob_init"):
            if getattr(self, f) not in INITS:
                raise BenchError(f"{f}: expected one of {', '.join(INITS)}, got {getattr(self, f)!r}")
        if self.weight_granularity not in GRANULARITIES:
            raise BenchError(f"weight_granularity: expected one of {', '.join(GRANULARITIES)}, "
                             f"got {self.weight_granularity!r}")


class LSQ(QATMethod):
    name = "lsq"
    Config = LSQConfig

    def switch_label(self) -> tuple[str, tuple[str, ...]]:
        return ("minmax-init", ("init",)) if self.config.init == "minmax" else ("", ())

    def _quantizer(self, name: str, old: FakeQuantizer, kind: str) -> LSQQuantizer:
        spec = old.spec
        if kind == "weight":
            spec = replace(spec, granularity=self.config.weight_granularity)
        probs = name.endswith(".p_quant")
        return LSQQuantizer(spec, init=self.config.prob_init if probs else self.config.init)

    def prepare(self, model: nn.Module, calib: CalibData | None) -> None:
        wrap(model, self.config.plan())
        replace_quantizers(model, self._quantizer)
        calibrate_activations(model, calib)
