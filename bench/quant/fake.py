"""Uniform fake quantization: the spec of a quantizer and the nn.Module that applies it.

Conventions shared by every method:
  asymmetric: s = (max(x_max, 0) - min(x_min, 0)) / (2^b - 1), z = clamp(-round(x_min / s), 0, 2^b - 1),
              levels [0, 2^b - 1];
  symmetric:  z = 0, levels [-2^(b-1), 2^(b-1) - 1] (or the narrow range [-(2^(b-1) - 1), ...]),
              s = max|x| / ((q_max - q_min) / 2), the torch.ao convention;
  x_hat = s * (clamp(round(x / s) + z, q_min, q_max) - z), with a straight-through `round`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench import BenchError

GRANULARITIES = ("tensor", "channel", "group")
MIN_BITS, MAX_BITS = 2, 8


def check_bits(value: object, field: str) -> int:
    """Validate a bit width; `field` names the offending setting in the error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BenchError(f"{field}: bit width must be an integer in {MIN_BITS}..{MAX_BITS}, got {value!r}")
    if not MIN_BITS <= value <= MAX_BITS:
        raise BenchError(f"{field}: bit width must be in {MIN_BITS}..{MAX_BITS}, got {value}")
    return value


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized. `ch_axis` is the channel axis for channel/group granularity;
    groups split the flattened non-channel dimensions into runs of `group_size`."""

    bits: int
    symmetric: bool = False
    granularity: str = "tensor"
    ch_axis: int = 0
    group_size: int = 128
    narrow: bool = False

    def __post_init__(self) -> None:
        check_bits(self.bits, "bits")
        if self.granularity not in GRANULARITIES:
            raise BenchError(f"granularity: expected one of {GRANULARITIES}, got {self.granularity!r}")
        if self.granularity == "group" and self.group_size < 1:
            raise BenchError(f"group_size: must be >= 1, got {self.group_size}")

    @property
    def qmin(self) -> int:
        if not self.symmetric:
            return 0
        return -(2 ** (self.bits - 1)) + (1 if self.narrow else 0)

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1 if not self.symmetric else 2 ** (self.bits - 1) - 1


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round() in the forward pass (exact integers), identity in the backward pass.
    (`(x.round() - x).detach() + x` is not exact in float and shifts values at the range edge.)"""
    return _RoundSTE.apply(x)


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Reference uniform fake quantization; gradients reach `x` (inside the range) and `scale`
    (the LSQ gradient -x/s + round(x/s) inside, q_min - z or q_max - z outside)."""
    q = clamp_inclusive(round_ste(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def clamp_inclusive(q: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """clamp(q, lo, hi) whose gradient passes where lo <= q <= hi, the bounds included:
    torch.clamp drops it at the bounds themselves. The mask of torch's fused fake-quant
    kernels, and what torch 1.10's clamp did in the official PTQ4SAM code."""
    return torch.where(q < lo, lo, torch.where(q > hi, hi, q))


def tensor_version(t: torch.Tensor) -> int:
    """In-place modification counter (inference tensors have none: they cannot be modified
    outside inference mode)."""
    return -1 if t.is_inference() else t._version


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point that cover [lo, hi] (elementwise, any shape)."""
    tiny = torch.finfo(torch.float32).eps
    if spec.symmetric:
        amax = torch.maximum(lo.abs(), hi.abs())
        scale = (amax / ((spec.qmax - spec.qmin) / 2)).clamp_min(tiny)
        return scale, torch.zeros_like(scale)
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    scale = ((hi - lo) / (spec.qmax - spec.qmin)).clamp_min(tiny)
    zero_point = torch.clamp(-torch.round(lo / scale), spec.qmin, spec.qmax)
    return scale, zero_point


class FakeQuantizer(nn.Module):
    """A uniform quantizer slot. `spec=None` makes it a pass-through.

    States: `observing` (records running min/max, returns its input unchanged), calibrated
    (`scale` set; quantizes when `enabled`), or uncalibrated (passes through). Subclasses
    (learned scales, clipping, log2 quantizers) override `quantize`.
    """

    # True when its training-time output on x is a function of each element alone (given its
    # parameters), so a block of rows of x quantizes as the whole would; False for a quantizer
    # that takes a statistic of the whole tensor as it trains (Q-SAM2's LSC)
    elementwise = True
    # set while the call quantizes one block of a larger tensor: that tensor's size (LSQ's
    # gradient scale counts every value its step covers; see QuantAttentionMixin)
    covers: int | None = None
    # set while the call quantizes one block of a tensor whose statistic the quantizer takes
    # over the whole (not elementwise: its `whole_statistic`): the value every block uses
    given: torch.Tensor | None = None

    def __init__(self, spec: QuantSpec | None) -> None:
        super().__init__()
        self.spec = spec
        self.enabled = spec is not None
        self.observing = False
        self.register_buffer("scale", torch.empty(0))
        self.register_buffer("zero_point", torch.empty(0))
        self.register_buffer("min_val", torch.empty(0))
        self.register_buffer("max_val", torch.empty(0))

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, torch.Tensor):
            self.__dict__["_assignments"] = self.__dict__.get("_assignments", 0) + 1
        super().__setattr__(name, value)

    def qparams_key(self) -> tuple:
        """Changes whenever a tensor of this quantizer (scale, zero point, a subclass's learned
        parameters) is reassigned or modified in place, or its switches change: the key of the
        caches built on it."""
        tensors = (*self._parameters.values(), *self._buffers.values())
        versions = tuple(tensor_version(t) for t in tensors if t is not None)
        return self.__dict__.get("_assignments", 0), versions, self.enabled, self.observing

    @property
    def calibrated(self) -> bool:
        return self.scale.numel() > 0

    @property
    def active(self) -> bool:
        """True when a forward pass changes its input."""
        return self.enabled and self.spec is not None and self.calibrated and not self.observing

    def extra_repr(self) -> str:
        s = self.spec
        if s is None:
            return "off"
        kind = "sym" if s.symmetric else "asym"
        return f"bits={s.bits}, {kind}, {s.granularity}, active={self.active}"

    # -- layout: per-tensor scalars, per-channel broadcastable vectors, per-group blocks ------
    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        """View x as (channels, groups, group_size) for group granularity."""
        s = self.spec
        c = x.movedim(s.ch_axis, 0).reshape(x.shape[s.ch_axis], -1)
        if c.shape[1] % s.group_size:
            raise BenchError(f"group_size: {s.group_size} does not divide {c.shape[1]} (tensor {tuple(x.shape)})")
        return c.reshape(c.shape[0], -1, s.group_size)

    def _unblocks(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        ax = self.spec.ch_axis
        moved = like.movedim(ax, 0).shape
        return y.reshape(moved).movedim(0, ax)

    def _reduce(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Min and max of x at this quantizer's granularity."""
        x = x.detach().float()
        g = self.spec.granularity
        if g == "tensor":
            return x.amin(), x.amax()
        if g == "channel":
            dims = [d for d in range(x.dim()) if d != self.spec.ch_axis % x.dim()]
            return x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
        b = self._blocks(x)
        return b.amin(dim=-1, keepdim=True), b.amax(dim=-1, keepdim=True)

    # -- calibration -------------------------------------------------------------------------
    def observe(self, x: torch.Tensor) -> None:
        lo, hi = self._reduce(x)
        if self.min_val.numel() == 0:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val = torch.minimum(self.min_val, lo)
            self.max_val = torch.maximum(self.max_val, hi)

    def set_range(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Set scale and zero point so that [lo, hi] is covered."""
        self.scale, self.zero_point = qparams_from_range(lo.float(), hi.float(), self.spec)

    def calibrate_from_observed(self) -> None:
        if self.min_val.numel() == 0:
            raise RuntimeError("quantizer observed no data")
        self.set_range(self.min_val, self.max_val)

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """Quantize `x`. `inplace=True` lets the caller give up `x` (a temporary it owns): in
        inference the result may then be written into it."""
        if self.observing:
            self.observe(x)
            return x
        if not self.active:
            return x
        if inplace and self._inference_path(x) and type(self).quantize is FakeQuantizer.quantize:
            scale, lo, hi = self._scalars()
            return x.div_(scale).round_().clamp_(lo, hi).mul_(scale)
        return self.quantize(x)

    def _inference_path(self, x: torch.Tensor) -> bool:
        """Per-tensor and no gradient wanted: the elementwise path with scalar arguments."""
        if self.spec.granularity != "tensor":
            return False
        return not (torch.is_grad_enabled() and (x.requires_grad or self.scale.requires_grad))

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        if s.granularity == "group":
            b = self._blocks(x)
            return self._unblocks(fake_quant(b, self.scale, self.zero_point, s.qmin, s.qmax), x)
        if self._inference_path(x):
            # The same arithmetic as `fake_quant` (clamp(round(x/s) + z) - z equals
            # clamp(round(x/s), q_min - z, q_max - z)), in place on one fresh tensor.
            scale, lo, hi = self._scalars()
            return x.div(scale).round_().clamp_(lo, hi).mul_(scale)
        return fake_quant(x, self.scale.to(x.dtype), self.zero_point.to(x.dtype), s.qmin, s.qmax)

    def integer_path(self, x: torch.Tensor) -> tuple[float, float, float] | None:
        """(scale, q_min - z, q_max - z) when this quantizer's output on `x` is exactly
        `scale * clamp(round(x / scale), q_min - z, q_max - z)` and no gradient is wanted, so a
        consumer may keep the integer part and fold `scale` into its own arithmetic (as
        `QuantLinear` folds it into the matrix product); None otherwise."""
        if not self.active or type(self).quantize is not FakeQuantizer.quantize or not self._inference_path(x):
            return None
        return self._scalars()

    def _scalars(self) -> tuple[float, float, float]:
        """Per-tensor (scale, q_min - z, q_max - z) as Python numbers (scalar kernel arguments
        are cheaper than 0-dim tensors), read once per change of the quantization parameters."""
        key = self.qparams_key()
        if getattr(self, "_scalars_key", None) != key:
            z = float(self.zero_point)
            self._scalars_cache = (float(self.scale), self.spec.qmin - z, self.spec.qmax - z)
            self._scalars_key = key
        return self._scalars_cache

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes in [0, q_max - q_min] (unsigned, for packing) of a quantized tensor."""
        s = self.spec
        if s.granularity == "group":
            b = self._blocks(x)
            q = torch.clamp(torch.round(b / self.scale) + self.zero_point, s.qmin, s.qmax)
            q = self._unblocks(q, x)
        else:
            q = torch.clamp(torch.round(x / self.scale) + self.zero_point, s.qmin, s.qmax)
        return (q - s.qmin).to(torch.uint8)
