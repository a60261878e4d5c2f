"""Quantization core: fake quantizers, quantized layers, quantizable attention, scopes."""

from bench.quant.attention import QuantAttentionMixin
from bench.quant.fake import FakeQuantizer, QuantSpec, check_bits, fake_quant, round_ste
from bench.quant.modules import QuantConv2d, QuantConvTranspose2d, QuantLayer, QuantLinear
from bench.quant.scope import COMPONENTS, PRESETS, QuantPlan, Scope, quant_attentions, quant_layers, wrap

__all__ = [
    "COMPONENTS", "PRESETS", "FakeQuantizer", "QuantAttentionMixin", "QuantConv2d",
    "QuantConvTranspose2d", "QuantLayer", "QuantLinear", "QuantPlan", "QuantSpec", "Scope",
    "check_bits", "fake_quant", "quant_attentions", "quant_layers", "round_ste", "wrap",
]
