"""`rtn`: naive round-to-nearest, the floor every other method must beat.

Weights: per-output-channel min/max ranges. Activations (layer inputs and, with
`quant_attention`, attention q/k/v and probabilities): per-tensor min/max over all
calibration batches. No learning, no search.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from bench.calib import CalibData
from bench.method import Method, QuantConfig
from bench.quant import wrap
from bench.quant.calibrate import calibrate_activations, calibrate_weights


@dataclass(frozen=True)
class RTNConfig(QuantConfig):
    pass


class RTN(Method):
    name = "rtn"
    Config = RTNConfig

    def needs_data(self) -> bool:
        return self.config.a_bits is not None

    def apply(self, model: nn.Module, calib: CalibData | None) -> nn.Module:
        wrap(model, self.config.plan())
        calibrate_weights(model)
        calibrate_activations(model, calib)
        return model
