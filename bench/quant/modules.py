"""Quantized drop-in replacements for nn.Linear, nn.Conv2d and nn.ConvTranspose2d.

Each holds the original layer's own Parameter objects (state-dict names stay the same), a
weight quantizer `wq` and an input-activation quantizer `aq`. In evaluation the fake-quantized
weight is computed once and cached until the weight or its quantizer changes, so an evaluation
forward costs only the input quantization on top of the float layer.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from bench.quant.fake import FakeQuantizer, QuantSpec, tensor_version


class QuantLayer(nn.Module):
    """Common part: weight/bias, the two quantizer slots and the cached quantized weight."""

    weight_ch_axis = 0  # output-channel axis of the weight

    def __init__(self, layer: nn.Module, w_spec: QuantSpec | None, a_spec: QuantSpec | None) -> None:
        super().__init__()
        self.weight = layer.weight
        self.bias = layer.bias
        if w_spec is not None and w_spec.granularity != "tensor":
            w_spec = _with_axis(w_spec, self.weight_ch_axis)
        self.wq = FakeQuantizer(w_spec)
        self.aq = FakeQuantizer(a_spec)
        self._cache: torch.Tensor | None = None
        self._cache_key: tuple | None = None

    def __setattr__(self, name: str, value: object) -> None:
        if name == "weight":
            self.__dict__["_assignments"] = self.__dict__.get("_assignments", 0) + 1
        super().__setattr__(name, value)

    def calibrate_weight(self) -> None:
        """Min/max range of the current weight (round-to-nearest)."""
        if self.wq.spec is not None:
            lo, hi = self.wq._reduce(self.weight)
            self.wq.set_range(lo, hi)

    def qweight(self) -> torch.Tensor:
        wq = self.wq
        if not wq.active:
            return self.weight
        learning = self.weight.requires_grad or any(p.requires_grad for p in wq.parameters())
        if torch.is_grad_enabled() and learning:
            return wq(self.weight)
        w = self.weight
        key = (self.__dict__.get("_assignments", 0), tensor_version(w), w.dtype, wq, wq.qparams_key())
        if key != self._cache_key:
            with torch.no_grad():
                self._cache = wq(self.weight)
            self._cache_key = key
        return self._cache

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(self.aq(x), self.qweight())

    def _forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _with_axis(spec: QuantSpec, axis: int) -> QuantSpec:
    return replace(spec, ch_axis=axis)


# Input elements per tile (4 MiB of fp32) in the CPU inference path of `QuantLinear.forward`.
TILE_ELEMENTS = 2**20


class QuantLinear(QuantLayer):
    def __init__(self, layer: nn.Linear, w_spec: QuantSpec | None, a_spec: QuantSpec | None) -> None:
        super().__init__(layer, w_spec, a_spec)
        self.in_features, self.out_features = layer.in_features, layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.qweight()
        fused = self.aq.integer_path(x) if x.device.type == "cpu" and x.numel() > 2 * TILE_ELEMENTS else None
        if fused is None or (torch.is_grad_enabled() and w.requires_grad):
            return F.linear(self.aq(x), w, self.bias)
        # CPU inference: quantize the input tile by tile into one reused buffer, keep its
        # integer part and let the matrix product apply the scale (addmm's alpha), so the
        # quantized input never exists at full size and costs three in-cache passes (divide,
        # round, clamp). Equals F.linear(self.aq(x), w, b) up to float rounding.
        scale, lo, hi = fused
        x2 = x.reshape(-1, x.shape[-1])
        rows = max(1, TILE_ELEMENTS // x.shape[-1])
        out = x2.new_empty(x2.shape[0], w.shape[0])
        buf = x2.new_empty(min(rows, x2.shape[0]), x2.shape[1])
        wt = w.t()
        for i in range(0, x2.shape[0], rows):
            chunk = x2[i : i + rows]
            q = torch.div(chunk, scale, out=buf[: chunk.shape[0]]).round_().clamp_(lo, hi)
            o = out[i : i + rows]
            if self.bias is None:
                torch.addmm(o, q, wt, beta=0, alpha=scale, out=o)
            else:
                torch.addmm(self.bias, q, wt, alpha=scale, out=o)
        return out.reshape(*x.shape[:-1], w.shape[0])

    def _forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class QuantConv2d(QuantLayer):
    def __init__(self, layer: nn.Conv2d, w_spec: QuantSpec | None, a_spec: QuantSpec | None) -> None:
        super().__init__(layer, w_spec, a_spec)
        self.conv = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
        if layer.padding_mode != "zeros":
            raise NotImplementedError(f"padding_mode={layer.padding_mode!r}")

    def _forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, self.bias, **self.conv)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, {self.conv}"


class QuantConvTranspose2d(QuantLayer):
    weight_ch_axis = 1  # ConvTranspose2d weights are (in, out / groups, kh, kw)

    def __init__(self, layer: nn.ConvTranspose2d, w_spec: QuantSpec | None, a_spec: QuantSpec | None) -> None:
        super().__init__(layer, w_spec, a_spec)
        if layer.groups != 1:
            raise NotImplementedError("grouped ConvTranspose2d")
        self.conv = dict(
            stride=layer.stride, padding=layer.padding, output_padding=layer.output_padding,
            dilation=layer.dilation,
        )

    def _forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x, w, self.bias, **self.conv)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, {self.conv}"


QUANT_LAYERS: dict[type[nn.Module], type[QuantLayer]] = {
    nn.Linear: QuantLinear,
    nn.Conv2d: QuantConv2d,
    nn.ConvTranspose2d: QuantConvTranspose2d,
}
