"""`fp`: the full-precision reference row (no quantization)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from bench import BenchError
from bench.calib import CalibData
from bench.method import Method, MethodConfig


@dataclass(frozen=True)
class FPConfig(MethodConfig):
    def __post_init__(self) -> None:
        if self.w_bits is not None or self.a_bits is not None:
            raise BenchError("fp: full precision takes no bit widths (w_bits/a_bits must be fp)")


class FullPrecision(Method):
    name = "fp"
    Config = FPConfig

    def apply(self, model: nn.Module, calib: CalibData | None) -> nn.Module:
        return model
