"""Range observers of the PTQ4SAM / SAQ-SAM protocol and the quantizer that uses them.

- Lp grid search (PTQ4SAM's `MSEObserver`, p = 2.4, 100 candidates): for asymmetric specs
  whose data straddle zero, candidate ranges r_i = i / grid * (max - min), i = 1..grid, each
  with every integer zero point z (scale r_i / (2^b - 1), range [-z s, r_i - z s]); for
  symmetric specs or one-sided data, the 1-D grid t_i = i / grid * max(|min|, max) with the
  range [-t_i, t_i] ([0, t_i] or [-t_i, 0] one-sided). The range with the least mean
  |x_hat - x|^p wins, per row (per output channel for weights).
- Activations, per call of the quantizer (one image, one frame, one block call), averaged over
  calls: `avg_minmax` (PTQ4SAM's AvgMinMaxObserver: the mean of each call's min and max),
  `avg_mse` (SAQ-SAM's AvgMSEFastObserver: the mean of each call's Lp-optimal range), or the
  plain running `minmax` of `FakeQuantizer`.

Choices where the official code differs in mechanics, not in the objective (config fields of
the methods): `avg_mse` evaluates the same grid as the weight search on a histogram of the
call's tensor (`hist_bins` bins, bin centres weighted by counts) instead of a golden-section
search on the raw tensor, so its cost does not grow with the tensor; `zp_steps > 0` evaluates,
for each width r_i, `zp_steps` zero points instead of all 2^b (0 = all, the official grid):
those of windows [lo, lo + r_i] placed evenly from the low end (lo = min) to the high end
(lo + r_i = max) of the data range, rounded to integer zero points, so the min/max range
(r = max - min) is always a candidate and every width gets its best-placed windows. A fixed
set of evenly spaced zero points would not: at 8 bits a handful of them misses the min/max
zero point and forces a clipped range.

`PTQQuantizer` adds QDrop (`drop_prob` < 1: each element is quantized with that probability,
else left in full precision) and a learnable LSQ step size for block reconstruction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bench import BenchError, progress
from bench.quant.fake import FakeQuantizer, QuantSpec, fake_quant, qparams_from_range
from bench.quant.modules import QuantLayer

ACT_OBSERVERS = ("minmax", "avg_minmax", "avg_mse")
WEIGHT_OBSERVERS = ("mse", "minmax")
CACHE_ELEMENTS = 2**17  # candidate x value elements a range search evaluates at once (fits in cache)


@dataclass(frozen=True)
class LpSearch:
    """Grid of the Lp range search (see the module docstring)."""

    p: float = 2.4
    grid: int = 100
    zp_steps: int = 0  # 0: every integer zero point
    hist_bins: int = 2048  # activations: histogram of each call

    def range_of_rows(self, x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
        """Best (lo, hi) per row of a 2-D tensor (rows = channels)."""
        return self._best(x.detach().float(), spec)

    def range_of_tensor(self, x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
        """Best per-tensor (lo, hi) of one activation call, on its histogram."""
        x = x.detach().float().reshape(-1)
        xmin, xmax = x.min(), x.max()
        if not bool(xmax > xmin):
            return xmin, xmax
        counts = torch.histc(x, self.hist_bins, float(xmin), float(xmax))
        width = (xmax - xmin) / self.hist_bins
        centres = xmin + width * (torch.arange(self.hist_bins, device=x.device, dtype=torch.float32) + 0.5)
        keep = counts > 0
        lo, hi = self._best(centres[keep][None], spec, xmin[None], xmax[None], counts[keep][None])
        return lo[0], hi[0]

    def _best(self, x, spec, xmin=None, xmax=None, weights=None) -> tuple[torch.Tensor, torch.Tensor]:
        kind, a, b = _grid(x, spec, self.grid, self.zp_steps, xmin, xmax)
        if kind == "1d":
            lo, hi = a, b
            err = lp_errors(x, lo, hi, spec, self.p, weights)
        else:
            lo, hi = _grid_ranges(a, b, spec)
            err = grid_errors(x, a, b, spec, self.p, weights).reshape(lo.shape)
        best = err.argmin(dim=0, keepdim=True)
        return lo.gather(0, best)[0], hi.gather(0, best)[0]


def _grid(x, spec, grid, zp_steps, xmin=None, xmax=None) -> tuple[str, torch.Tensor, torch.Tensor]:
    """("1d", lo, hi) with (grid, rows) ranges, or ("2d", r, zps): the (grid, rows) range widths
    and the zero points of the 2-D search, (2^b,) or (zp_steps, grid, rows)."""
    xmin = x.amin(dim=1) if xmin is None else xmin
    xmax = x.amax(dim=1) if xmax is None else xmax
    steps = torch.arange(1, grid + 1, device=x.device, dtype=torch.float32)[:, None] / grid
    one_side = "pos" if bool(xmin.min() >= 0) else "neg" if bool(xmax.max() <= 0) else "no"
    if spec.symmetric or one_side != "no":
        t = torch.maximum(xmin.abs(), xmax)[None] * steps
        lo = torch.zeros_like(t) if one_side == "pos" else -t
        hi = torch.zeros_like(t) if one_side == "neg" else t
        return "1d", lo, hi
    full = xmax.clamp(min=0) - xmin.clamp(max=0)
    r = full[None] * steps
    if zp_steps and zp_steps < spec.qmax - spec.qmin + 1:
        # windows of width r from the low end to the high end: z = -lo / s, (zp_steps, widths, rows)
        t = torch.linspace(0, 1, zp_steps, device=x.device)[:, None, None]
        lo = xmin.clamp(max=0)[None, None] + t * (full[None] - r)[None]
        s = (r / (spec.qmax - spec.qmin)).clamp_min(torch.finfo(torch.float32).eps)
        zps = torch.round(-lo / s[None]).clamp(spec.qmin, spec.qmax)
    else:  # every integer zero point, (2^b,)
        zps = torch.arange(spec.qmin, spec.qmax + 1, device=x.device, dtype=torch.float32)
    return "2d", r, zps


def _zero_points(zps: torch.Tensor, k: int, widths: slice) -> torch.Tensor | float:
    """The k-th zero point of the grid for a chunk of widths: a number, or (widths, rows, 1)."""
    return zps[k].item() if zps.dim() == 1 else zps[k, widths, :, None]


def _grid_ranges(r: torch.Tensor, zps: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2-D grid's ranges, (zero points x widths, rows): [-z r / L, r - z r / L]."""
    z = zps[:, None, None] if zps.dim() == 1 else zps
    lo = -(z * (r / (spec.qmax - spec.qmin))[None])
    hi = r[None] + lo
    return lo.reshape(-1, r.shape[1]), hi.reshape(-1, r.shape[1])


def lp_candidates(
    x: torch.Tensor, spec: QuantSpec, grid: int, zp_steps: int = 0,
    xmin: torch.Tensor | None = None, xmax: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every candidate range (lo, hi) of the search on x (rows, n), each (candidates, rows)."""
    kind, a, b = _grid(x, spec, grid, zp_steps, xmin, xmax)
    return (a, b) if kind == "1d" else _grid_ranges(a, b, spec)


def lp_errors(
    x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec, p: float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean |fake_quant(x) - x|^p per candidate and row, (candidates, rows), with the scale and
    zero point each range gets from `qparams_from_range` (what `set_range` installs). Chunks of
    candidates small enough to stay in cache, each worked on in place (one temporary)."""
    x = x.float()
    scale, zp = qparams_from_range(lo, hi, spec)
    shifted = bool((zp != 0).any())  # else adding and taking off the zero point changes nothing
    per = max(1, CACHE_ELEMENTS // max(1, x.numel()))
    out = []
    for i in range(0, scale.shape[0], per):
        s, z = scale[i : i + per, :, None], zp[i : i + per, :, None]
        q = torch.div(x[None], s).round_()
        if shifted:
            q.add_(z).clamp_(spec.qmin, spec.qmax).sub_(z)
        else:
            q.clamp_(spec.qmin, spec.qmax)
        out.append(_mean(q.mul_(s).sub_(x[None]).abs_().pow_(p), weights))
    return torch.cat(out)


def grid_errors(
    x: torch.Tensor, r: torch.Tensor, zps: torch.Tensor, spec: QuantSpec, p: float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """`lp_errors` of the 2-D grid, (zero points, widths, rows); `zps` as `_grid` gives them.
    The ranges of one width share the scale s = r / L, so x / s and its rounding are computed
    once per width and only the clamp changes with the zero point:
    clamp(round(x/s) + z) - z = clamp(round(x/s), q_min - z, q_max - z).
    Chunks of widths small enough to stay in cache."""
    x = x.float()
    scale = (r / (spec.qmax - spec.qmin)).clamp_min(torch.finfo(torch.float32).eps)
    out = x.new_empty(len(zps), *scale.shape)
    per = max(1, CACHE_ELEMENTS // max(1, x.numel()))
    for i in range(0, scale.shape[0], per):
        s = scale[i : i + per, :, None]
        t = x[None] / s
        rt = torch.round(t)
        sp = s[..., 0].pow(p)
        for k in range(len(zps)):
            z = _zero_points(zps, k, slice(i, i + per))
            e = (torch.clamp(rt, spec.qmin - z, spec.qmax - z) - t).abs_().pow_(p)
            out[k, i : i + per] = _mean(e, weights) * sp
    return out


def _mean(e: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    return (e * weights[None]).sum(-1) / weights.sum(-1) if weights is not None else e.mean(-1)


def _rows(w: torch.Tensor, q: FakeQuantizer) -> torch.Tensor:
    """A weight as (rows, n): one row per range of its quantizer."""
    g = q.spec.granularity
    if g == "tensor":
        return w.reshape(1, -1)
    if g == "channel":
        return w.movedim(q.spec.ch_axis, 0).reshape(w.shape[q.spec.ch_axis], -1)
    b = q._blocks(w)
    return b.reshape(-1, b.shape[-1])


@torch.no_grad()
def calibrate_weights_lp(model: nn.Module, search: LpSearch) -> int:
    """Lp-optimal ranges (per row of each weight quantizer) for every QuantLayer."""
    layers = [m for m in model.modules() if isinstance(m, QuantLayer) and m.wq.spec is not None]
    for m in progress(layers, "weight ranges"):
        w = m.weight.detach().float()
        shape = m.wq._reduce(w)[0].shape
        lo, hi = search.range_of_rows(_rows(w, m.wq), m.wq.spec)
        m.wq.set_range(lo.reshape(shape), hi.reshape(shape))
    return len(layers)


def qdrop(x: torch.Tensor, xq: torch.Tensor, prob: float) -> torch.Tensor:
    """QDrop: each element quantized with probability `prob`, else full precision."""
    return torch.where(torch.rand_like(xq) < prob, xq, x)


class GradScale(torch.autograd.Function):
    """Identity forward; the gradient multiplied by `g` (LSQ's step-size gradient scale)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, g: float) -> torch.Tensor:
        ctx.g = g
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.g, None


class PTQQuantizer(FakeQuantizer):
    """Uniform quantizer with an averaging observer, QDrop and an optional learned step size.

    `observer`: see `ACT_OBSERVERS`. `drop_prob` < 1 turns on QDrop (block reconstruction;
    at evaluation only under the official code's bug). A `scale` that is an nn.Parameter is
    learned with LSQ's gradient, scaled by 1 / sqrt(numel * q_max) as in the official code.
    """

    def __init__(self, spec: QuantSpec | None, observer: str = "avg_minmax", search: LpSearch | None = None) -> None:
        super().__init__(spec)
        if observer not in ACT_OBSERVERS:
            raise BenchError(f"act_observer: expected one of {', '.join(ACT_OBSERVERS)}, got {observer!r}")
        if observer == "avg_mse" and spec is not None and spec.granularity != "tensor":
            raise BenchError("act_observer: avg_mse supports per-tensor activation quantizers only")
        self.observer = observer
        self.search = search or LpSearch()
        self.drop_prob = 1.0
        self._sums: list[torch.Tensor] | None = None
        self._calls = 0

    def observe(self, x: torch.Tensor) -> None:
        if x.numel() == 0:
            return
        super().observe(x)
        if self.observer == "minmax":
            return
        lo, hi = self._reduce(x) if self.observer == "avg_minmax" else self.search.range_of_tensor(x, self.spec)
        self._sums = [lo, hi] if self._sums is None else [self._sums[0] + lo, self._sums[1] + hi]
        self._calls += 1

    def calibrate_from_observed(self) -> None:
        if self.observer == "minmax" or self._sums is None:
            super().calibrate_from_observed()
        else:
            self.set_range(self._sums[0] / self._calls, self._sums[1] / self._calls)
        self._sums, self._calls = None, 0

    @property
    def learning(self) -> bool:
        return self.scale.requires_grad and torch.is_grad_enabled()

    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        if self.observing or not self.active or (self.drop_prob >= 1.0 and not self.learning):
            return super().forward(x, inplace)
        xq = self._learned(x) if self.learning else self.quantize(x)
        return qdrop(x, xq, self.drop_prob) if self.drop_prob < 1.0 else xq

    def _learned(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        n = x.numel() if s.granularity == "tensor" else x.numel() / max(1, x.shape[s.ch_axis])
        scale = GradScale.apply(self.scale, 1.0 / math.sqrt(n * s.qmax))
        return fake_quant(x, scale.to(x.dtype), self.zero_point.to(x.dtype), s.qmin, s.qmax)

    def integer_path(self, x: torch.Tensor) -> tuple[float, float, float] | None:
        if self.drop_prob < 1.0 or self.scale.requires_grad:
            return None
        return super().integer_path(x)

    def extra_repr(self) -> str:
        drop = f", drop_prob={self.drop_prob}" if self.drop_prob < 1.0 else ""
        return f"{super().extra_repr()}, observer={self.observer}{drop}"
