"""The deployed form of a fake-quantized model: its quantized Linear layers on integer kernels.

A fake-quantized Linear computes y = (s_x (q_x - z_x)) (s_w (q_w - z_w))^T + b from integer
codes q that it keeps in float. The deployed layer keeps the same codes, scales and zero points
(the method's own: nothing is quantized afresh) and runs the product on an integer kernel:

- W8A8 (8-bit weights per output channel or tensor, 8-bit per-tensor activations): the codes
  are held as int8 c = q - q_min - 128, so with z' = z - q_min - 128 the product is
  sum_k (c_x - z'_x)(c_w - z'_w) = C - z'_w R_x - z'_x R_w + K z'_x z'_w, C the int32 matrix
  product and R the code sums over k; the epilogue applies the scales and the bias in float.
  Kernels: `int8-intmm` (`torch._int_mm`, CPU and CUDA) and `int8-onednn` (oneDNN's
  `qlinear_pointwise`, x86 CPU; weights symmetric in the kernel, the zero point's term added).
- Weight-only W4 (4-bit weights per output channel, activations not quantized): `int4-tinygemm`
  (`_weight_int4pack_mm_for_cpu` / `_weight_int4pack_mm` on CUDA), whose weight is
  (q - 8) * scale + zero per group: scale s_w and zero (8 + q_min - z_w) s_w give
  s_w (q_w - z_w). Activations, scales and zeros in BF16: the kernel's fast path (in FP32 it
  runs a reference loop, far slower; README "Deployed models").

Everything else (convolutions, attention's matrix products, layers whose quantizers are not
plain uniform ones) stays as it was: `deploy` reports what it converted and why it left the
rest. A bit configuration no backend runs is reported as such, not as a failure.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from bench import BenchError
from bench.quant.fake import FakeQuantizer
from bench.quant.modules import TILE_ELEMENTS, QuantLinear

INT4_GROUPS = (128, 64, 32)  # tinygemm's groups along k, largest dividing k first (a per-channel
# scale is repeated over the groups)


def _uniform(q: FakeQuantizer) -> bool:
    """Active, and in evaluation exactly s (clamp(round(x / s) + z) - z): the plain quantizer's
    arithmetic (subclasses that only calibrate differently, like PTQ4SAM's observers, included;
    QDrop's random mixing in evaluation, the official code's bug when reproduced, is not)."""
    return q.active and type(q).quantize is FakeQuantizer.quantize and getattr(q, "drop_prob", 1.0) >= 1.0


def _weight_codes(layer: QuantLinear) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(integer codes q_w - q_min as int32 (N, K), scale (N,), zero point - q_min (N,)); the
    codes are checked to give back the weight the fake-quantized layer computes with."""
    wq = layer.wq
    with torch.no_grad():
        w = layer.weight.detach().float()
        u = wq.codes(w).to(torch.int32)
        n = w.shape[0]
        scale = wq.scale.detach().float().reshape(-1).expand(n).contiguous()
        zero = (wq.zero_point.detach().float().reshape(-1) - wq.spec.qmin).expand(n).contiguous()
        if not torch.equal((u - zero[:, None]) * scale[:, None], layer.qweight().detach().float()):
            raise BenchError(f"deploy: codes of {tuple(w.shape)} weight do not give back its quantized weight")
    return u, scale, zero


def config_of(layer: QuantLinear) -> str:
    """"W8A8", "W4" (weight-only), or why the layer has no integer form here."""
    wq, aq = layer.wq, layer.aq  # the weight's codes are checked against its quantized weight
    if wq.spec.granularity == "group":
        return "group-wise weights"
    if aq.active:
        if not _uniform(aq) or aq.spec.granularity != "tensor":
            return "activation quantizer is not a uniform per-tensor one"
        if wq.spec.bits == 8 and aq.spec.bits == 8:
            return "W8A8"
        return f"W{wq.spec.bits}A{aq.spec.bits}: no integer backend"
    return "W4" if wq.spec.bits == 4 else f"W{wq.spec.bits} weight-only: no integer backend"


class Int8Linear(nn.Module):
    """W8A8 Linear on an int8 x int8 -> int32 kernel (see the module docstring)."""

    def __init__(self, layer: QuantLinear, kernel: str) -> None:
        super().__init__()
        u, s_w, zu_w = _weight_codes(layer)
        aq = layer.aq
        self.kernel = kernel
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.s_x = float(aq.scale)
        self.zu_x = int(round(float(aq.zero_point))) - aq.spec.qmin  # activation zero point in code space
        if self.zu_x != float(aq.zero_point) - aq.spec.qmin or not 0 <= self.zu_x <= 255:
            raise BenchError("deploy: activation zero point is not an integer code")
        self.q_hi = aq.spec.qmax - aq.spec.qmin  # codes u_x in [0, q_hi]
        c_w = (u - 128).to(torch.int8)
        zp_w = zu_w - 128  # z'_w
        k = c_w.shape[1]
        self.register_buffer("w_scale", s_w)  # the weight's scales, as the method set them
        self.register_buffer("scale", self.s_x * s_w)
        self.register_buffer("zp_w", zp_w)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        self.weight_centered = bool(torch.all(zp_w == 0))
        if kernel == "int8-intmm":
            if layer.weight.is_cuda and (k % 8 or c_w.shape[0] % 8):
                raise BenchError(f"deploy: _int_mm on CUDA needs k and n multiples of 8, got {k} and {c_w.shape[0]}")
            # C - z'_x R_w + K z'_x z'_w per output channel, z'_x = zu_x - 128
            zp_x = self.zu_x - 128
            self.register_buffer("w_t", c_w.t().contiguous())
            const = -zp_x * c_w.sum(1, dtype=torch.int32).double() + k * zp_x * zp_w.double()
            self.register_buffer("const", const.float())
        else:  # oneDNN: activations u_x with zero point zu_x, weights c_w symmetric
            self.register_buffer("w_zero", torch.zeros(c_w.shape[0], dtype=torch.int64))
            self.w_packed = torch.ops.onednn.qlinear_prepack(c_w, None)

    def _codes(self, x: torch.Tensor, signed: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The activation's codes u_x = clamp(round(x / s) + z) as uint8 (or as int8 u_x - 128)
        and, when the weights' zero points need it, their sums over k (u_x - 128, or
        u_x - zu_x). Made tile by tile in one reused float buffer: the passes stay in cache."""
        m, k = x.shape
        codes = torch.empty(m, k, dtype=torch.int8 if signed else torch.uint8, device=x.device)
        sums = None if self.weight_centered else x.new_empty(m)
        rows = max(1, TILE_ELEMENTS // k) if x.device.type == "cpu" else m
        buf = x.new_empty(min(rows, m), k)
        shift = 128 if signed else 0
        for i in range(0, m, rows):
            b = torch.div(x[i : i + rows], self.s_x, out=buf[: min(rows, m - i)])
            b.round_().add_(self.zu_x - shift).clamp_(-shift, self.q_hi - shift)
            codes[i : i + rows].copy_(b)
            if sums is not None:
                torch.sum(b, 1, out=sums[i : i + rows])
        if sums is not None and not signed:
            sums -= k * self.zu_x
        return codes, sums

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float()
        if self.kernel == "int8-intmm":
            c, sums = self._codes(x2, signed=True)
            m = c.shape[0]
            if c.is_cuda and m <= 16:  # CUDA's _int_mm wants more than 16 rows
                c = torch.cat([c, c.new_zeros(17 - m, c.shape[1])])
            out = torch._int_mm(c, self.w_t)[:m].float()
            out += self.const
            if sums is not None:
                out.addr_(sums, self.zp_w, alpha=-1.0)
            out.mul_(self.scale)
            if self.bias is not None:
                out += self.bias
        else:
            u, sums = self._codes(x2, signed=False)
            out = torch.ops.onednn.qlinear_pointwise(
                u, self.s_x, self.zu_x, self.w_packed, self.w_scale, self.w_zero, self.bias,
                1.0, 0, torch.float32, "none", [], "")
            if sums is not None:  # - s_x s_w z'_w sum_k (u_x - zu_x)
                out.addr_(sums, self.scale * self.zp_w, alpha=-1.0)
        return out.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def deployed_bytes(self) -> int:
        w = self.in_features * self.out_features  # one byte a weight
        return w + 4 * (2 * self.out_features + 2) + (0 if self.bias is None else 4 * self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel}"


class Int4WeightLinear(nn.Module):
    """Weight-only W4 Linear on tinygemm's int4 kernel (activations in float)."""

    def __init__(self, layer: QuantLinear, kernel: str = "int4-tinygemm") -> None:
        super().__init__()
        u, s_w, zu_w = _weight_codes(layer)
        n, k = u.shape
        group = next((g for g in INT4_GROUPS if k % g == 0), None)
        if group is None:
            raise BenchError(f"deploy: int4 kernel needs k divisible by {INT4_GROUPS[-1]}, got {k}")
        self.kernel, self.group = kernel, group
        self.in_features, self.out_features = k, n
        self.device = layer.weight.device
        zero = (8 - zu_w) * s_w  # w = (u - 8) s + zero = s (u - zu)
        sz = torch.stack([s_w, zero], -1).unsqueeze(0).expand(k // group, n, 2)
        self.register_buffer("scales_zeros", sz.to(torch.bfloat16).contiguous())
        if self.device.type == "cuda":
            tiles = next((t for t in (8, 4, 2) if k % (16 * t) == 0), None)
            if tiles is None or n % 8:
                raise BenchError(f"deploy: the CUDA int4 kernel needs k % 32 == 0 and n % 8 == 0, got {k}, {n}")
            packed_u8 = (u[:, ::2] << 4 | u[:, 1::2]).to(torch.uint8)
            self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack(packed_u8, tiles))
        else:
            if n % 16:
                raise BenchError(f"deploy: the CPU int4 kernel needs n % 16 == 0, got {n}")
            self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(u, 1))
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(torch.bfloat16).contiguous()  # .to keeps a permuted input's strides
        mm = torch.ops.aten._weight_int4pack_mm if self.device.type == "cuda" else \
            torch.ops.aten._weight_int4pack_mm_for_cpu
        out = mm(x2, self.packed, self.group, self.scales_zeros).float()
        if self.bias is not None:
            out += self.bias
        return out.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def deployed_bytes(self) -> int:
        return self.in_features * self.out_features // 2 + self.scales_zeros.numel() * 2 + (
            0 if self.bias is None else 4 * self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel}"


@dataclass(frozen=True)
class Backend:
    name: str
    config: str  # the bit configuration it runs: "W8A8" or "W4"
    devices: tuple[str, ...]
    layer: type[nn.Module]


BACKENDS = {
    "int8-intmm": Backend("int8-intmm", "W8A8", ("cpu", "cuda"), Int8Linear),
    "int8-onednn": Backend("int8-onednn", "W8A8", ("cpu",), Int8Linear),
    "int4-tinygemm": Backend("int4-tinygemm", "W4", ("cpu", "cuda"), Int4WeightLinear),
}
# The default per configuration and device (README "Deployed models": measured against the others)
DEFAULT_BACKEND = {("W8A8", "cpu"): "int8-onednn", ("W8A8", "cuda"): "int8-intmm",
                   ("W4", "cpu"): "int4-tinygemm", ("W4", "cuda"): "int4-tinygemm"}
CONFIGS = ("W8A8", "W4")


@dataclass
class Deployment:
    model: nn.Module | None  # None when no layer has an integer form with this backend
    backend: str | None
    converted: list[str] = field(default_factory=list)
    left: dict[str, str] = field(default_factory=dict)  # layer -> why it stays fake-quantized

    def info(self) -> dict:
        deployed = [m for m in self.model.modules() if hasattr(m, "deployed_bytes")] if self.model else []
        return {
            "backend": self.backend, "backend_version": f"torch {torch.__version__}",
            "layers_deployed": len(self.converted), "layers_left": len(self.left),
            "deployed_linear_bytes": sum(m.deployed_bytes() for m in deployed),
            "deployed_linear_bf16_bytes": sum(2 * m.in_features * m.out_features for m in deployed),
        }


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (model.get_submodule(path) if path else model), leaf


def deploy(model: nn.Module, backend: str | None = None) -> Deployment:
    """A copy of `model` with each quantized Linear the backend runs replaced by its integer
    form; `backend` None picks the default for the model's bit configuration."""
    device = next(model.parameters()).device.type
    configs = {n: config_of(m) for n, m in model.named_modules() if isinstance(m, QuantLinear) and m.wq.active}
    runnable = [c for c in CONFIGS if c in configs.values()]
    if backend is None:
        if not runnable or (runnable[0], device) not in DEFAULT_BACKEND:
            return Deployment(None, None, left=configs)
        backend = DEFAULT_BACKEND[runnable[0], device]
    if backend not in BACKENDS:
        raise BenchError(f"backend: unknown {backend!r}; known: {', '.join(BACKENDS)}")
    b = BACKENDS[backend]
    if device not in b.devices:
        return Deployment(None, backend, left={n: f"{backend} does not run on {device}" for n in configs})
    out = copy.deepcopy(model)
    dep = Deployment(out, backend)
    for name, cfg in configs.items():
        if cfg != b.config:
            dep.left[name] = cfg if cfg not in CONFIGS else f"{cfg}: not run by {backend}"
            continue
        try:
            new = b.layer(out.get_submodule(name), backend)
        except BenchError as e:
            dep.left[name] = str(e)
            continue
        parent, leaf = _parent(out, name)
        setattr(parent, leaf, new)
        dep.converted.append(name)
    if not dep.converted:
        dep.model = None
    return dep
