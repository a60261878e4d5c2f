"""A method that is wrong on purpose, for the regression-check test (loaded through $BENCH_PLUGINS).

`rtn-broken` is `rtn` with a classic bug in its weight fake-quantizer: it rounds the weight
itself instead of weight / scale (x_hat = s * (clamp(round(x) + z) - z)), so every weight with
|w| < 0.5 collapses to 0. It runs without error and its records look healthy; only the
numbers are wrong, which is what `bench.regress` must catch.
"""

from __future__ import annotations

import torch

from bench.method import METHODS
from bench.quant import wrap
from bench.quant.calibrate import calibrate_activations, calibrate_weights
from bench.quant.fake import FakeQuantizer
from bench.quant.modules import QuantLayer
from methods.rtn import RTN


class ScaleIgnoringQuantizer(FakeQuantizer):
    """The bug: round(x) where round(x / scale) belongs."""

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        z = self.zero_point.to(x.dtype)
        q = torch.clamp(torch.round(x) + z, s.qmin, s.qmax)
        return (q - z) * self.scale.to(x.dtype)


class BrokenRTN(RTN):
    name = "rtn-broken"

    def apply(self, model, calib):
        """RTN's own steps, with the buggy quantizer in every weight slot before any range is set."""
        wrap(model, self.config.plan())
        for m in model.modules():
            if isinstance(m, QuantLayer) and m.wq.spec is not None:
                m.wq.__class__ = ScaleIgnoringQuantizer  # same state and spec, the buggy `quantize`
        calibrate_weights(model)
        calibrate_activations(model, calib)
        return model


METHODS.register("rtn-broken", "tests.broken_methods:BrokenRTN")
