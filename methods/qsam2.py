"""`qsam2`: Q-SAM2 / QAT-SAM (arXiv 2506.09782), no public code: VRC + LSC.

VRC, Variance-Reduced Calibration (`vrc`), an initialization: each linear layer of the image
encoder is re-fitted on the calibration data to reproduce its FP output with a minimum-norm
weight. The paper: inputs X and outputs Y "obtained from forwarding the original
full-precision model on the calibration batch", W' the minimum-Frobenius-norm solution of
Y ~ X W'^T by the Moore-Penrose pseudoinverse. With A the fit's input and W, b the FP weight
and bias, W' solves

    min ||A W'^T - X W^T||_F, and among the minimizers the one of least ||W'||_F,

i.e. W'^T = pinv(A) X W^T, computed from the float64 Gram matrices G = A^T A and H = A^T X
(pinv(A) = pinv(A^T A) A^T, so this is exactly the minimum-norm least-squares solution;
singular values of A below `vrc_rcond` x the largest are treated as zero, as numpy's lstsq
does).
  - `vrc_input`: "fp" (default, the paper's): A = X, the FP input. Then W' = W P, P the
    projection onto the row space of X: the re-fit keeps every FP output on the calibration
    data and removes the weight components along input directions the data never excite (the
    mean direction a LayerNorm removes, dead GELU channels), which lowers the weight's norm and
    variance. "quantized": A = Q(X), the layer's input quantizer's output, so the re-fit also
    compensates the input quantization error (what this method did before; an ablation row).
  - `vrc_rows`: the rows of the fit, null (default) every token of every calibration image and
    clip frame, or N: a seeded random sample of N tokens spread evenly over the calibration
    inputs. The paper's "small calibration batch" is still many more tokens than input
    channels (SAM2's Hiera: thousands of tokens per image against 96..1152 channels), so its
    reading is the default: only with N below a layer's input width does the fit become
    underdetermined and shrink W' further (a documented switch, not the paper's).
  - `vrc_bias`: "fit" (default) appends a column of ones to both sides and re-fits weight and
    bias together, min ||[A 1] [W' b']^T - (X W^T + b)||; "keep" leaves the bias and fits W'
    alone. The paper does not say.
  - `vrc_ridge` > 0: ridge regression (G + ridge * mean(diag G) * I)^-1 H W^T instead of the
    pseudoinverse; `vrc_blend`: W <- blend * W' + (1 - blend) * W (1: replace). Not the paper's.
  - X comes from the FP model (all quantizers off, one pass over the data for every layer at
    once; the statistics of the layers are gathered in groups that fit `vrc_memory_gb`, one
    pass per group); every layer's X is gathered before any weight is written.
VRC changes only the image encoder's weights (the paper's scope); activation ranges are
calibrated before VRC, on the model before the re-fit; weight quantizers are (re)initialized
from the re-fitted weights. The record's `method_info` has, per layer (`layers`), the weight's
norm, variance and quantiles before and after the re-fit and the quantized layer's initial
relative output error ||Q(X) Q(W)^T - X W^T||^2 / ||X W^T||^2 with either weight (all tokens),
as the paper's analysis of VRC; `python -m bench.report` plots them. `vrc: true, lsc: false,
steps: 0` is VRC as post-training calibration.

LSC, Learnable Statistical Clipping (`lsc`): every quantizer (weights per output channel,
activations per tensor, attention q/k/v/probabilities) becomes an `LSCQuantizer`
(bench.quant.learned; our reading of the paper's description): clip c = alpha * sigma_ema, sigma_ema an
EMA (momentum `lsc_momentum`) of the tensor's standard deviation, alpha learned through the
straight-through estimator, [-c, c] quantized uniformly (unsigned tensors [0, c]). Then the
whole model is trained by the shared QAT loop (bench.qat: distillation from the FP model + GT
loss). The paper supports the statistical (sigma-based) clip, its momentum and the learned
factor ("learns momentum-stabilized clipping factors to manage outliers in weights and
activations"); it says nothing of the three choices below, which are switches whose defaults
were chosen on the held-out dev set (`sweeps/qat-dev.yaml`: W2A4, micro model, synthetic sets
of data seed 1; rule: an alternative becomes the default when it is better in both J&F and
mIoU; the paired differences are in the README, "Choices made on the dev set"):
  - `lsc_narrow`: signed tensors on the full grid [-2^(b-1), 2^(b-1) - 1] (false, the default:
    4 levels at 2 bits, LSQ's; the extra level lies at -(2^(b-1)) / (2^(b-1) - 1) x c, beyond
    the clip) or the narrow symmetric grid [-(2^(b-1) - 1), 2^(b-1) - 1] (true: 3 levels at 2
    bits, the grid ends exactly at +-c);
  - `lsc_alpha_init`: alpha starts at max|x| / sigma (null, the default: the RTN range, no
    clipping at step 0) or at this number (a clip of that many standard deviations from the
    start);
  - `grad_clip_scope` (bench.qat): the gradient-norm clip over weights and clipping factors
    together ("joint", the default) or apart ("separate").
Without `lsc` the quantizers are RTN's: weights with min/max ranges of the current weight
(`RTNWeightQuantizer`, recomputed at every training step), activation ranges fixed at their
calibration.

Variant labels: VRC + LSC (default, ""), "vrc-only" (VRC, no LSC), "lsc-only", "rtn-qat"
(neither), then `field=value` for any other non-default switch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from statistics import fmean

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bench import BenchError
from bench.calib import CalibData
from bench.qat import QATConfig, QATMethod
from bench.qat_samples import encoder_input_count, encoder_inputs
from bench.quant import wrap
from bench.quant.calibrate import calibrate_activations
from bench.quant.fake import FakeQuantizer
from bench.quant.learned import (
    FixedQuantizer,
    LearnedQuantizer,
    LSCQuantizer,
    RTNWeightQuantizer,
    replace_quantizers,
)
from bench.quant.modules import QuantLayer, QuantLinear
from bench.results import LAYER_QUANTILES

BIAS_MODES = ("fit", "keep")
VRC_INPUTS = ("fp", "quantized")


@dataclass(frozen=True)
class QSAM2Config(QATConfig):
    budgets = QATConfig.budgets | {"vrc_memory_gb"}  # memory per pass, not the method

    vrc: bool = True
    lsc: bool = True
    vrc_input: str = "fp"
    vrc_rows: int | None = None
    vrc_bias: str = "fit"
    vrc_ridge: float = 0.0
    vrc_rcond: float = 1e-6
    vrc_blend: float = 1.0
    vrc_memory_gb: float = 2.0
    lsc_momentum: float = 0.9
    lsc_narrow: bool = False
    lsc_alpha_init: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for f in ("vrc", "lsc", "lsc_narrow"):
            if not isinstance(getattr(self, f), bool):
                raise BenchError(f"{f}: expected true or false, got {getattr(self, f)!r}")
        if self.vrc_input not in VRC_INPUTS:
            raise BenchError(f"vrc_input: expected one of {', '.join(VRC_INPUTS)}, got {self.vrc_input!r}")
        r = self.vrc_rows
        if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < 1):
            raise BenchError(f"vrc_rows: expected a positive integer or null, got {r!r}")
        if self.vrc_bias not in BIAS_MODES:
            raise BenchError(f"vrc_bias: expected one of {', '.join(BIAS_MODES)}, got {self.vrc_bias!r}")
        for f, lo, hi in (("vrc_ridge", 0.0, None), ("vrc_rcond", 0.0, 1.0), ("vrc_blend", 0.0, 1.0),
                          ("lsc_momentum", 0.0, 1.0)):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < lo or (hi is not None and v > hi):
                rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
                raise BenchError(f"{f}: expected a number {rng}, got {v!r}")
        if isinstance(self.vrc_memory_gb, bool) or not isinstance(self.vrc_memory_gb, (int, float)) \
                or self.vrc_memory_gb <= 0:
            raise BenchError(f"vrc_memory_gb: expected a positive number, got {self.vrc_memory_gb!r}")
        a = self.lsc_alpha_init
        if a is not None and (isinstance(a, bool) or not isinstance(a, (int, float)) or a <= 0):
            raise BenchError(f"lsc_alpha_init: expected a positive number or null, got {a!r}")
        if not self.lsc and not self.train_weights and self.steps > 0:  # known before any work
            raise BenchError(f"steps: {self.steps} training steps but nothing to train (lsc: false, "
                             "train_weights: false); use steps: 0")


# -- VRC -----------------------------------------------------------------------------------------
def vrc_solve(G: torch.Tensor, H: torch.Tensor, W: torch.Tensor, rcond: float = 1e-6,
              ridge: float = 0.0) -> torch.Tensor:
    """W' (d_out x d) minimizing ||A W'^T - B W^T|| with least ||W'||, from G = A^T A and
    H = A^T B (d x d, float64). `ridge` > 0: (G + ridge * mean(diag G) I)^-1 H W^T."""
    C = H @ W.double().t()
    if ridge > 0:
        eye = torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
        return torch.linalg.solve(G + ridge * G.diagonal().mean() * eye, C).t()
    # An input channel that is always 0 (common for a 4-bit quantized GELU output) is a zero row
    # and column of G, and its weights are 0 in the least-norm solution; the eigendecomposition
    # runs on the other channels only (LAPACK's fails to converge on some Gram matrices with
    # hundreds of such channels; the eigenvalues dropped are zeros, so the cut-off is the same).
    live = G.diagonal() > 0
    sol = torch.zeros_like(C)
    if not live.any():  # every input 0: any W' fits, the least-norm one is 0
        return sol.t()
    lam, V = torch.linalg.eigh(G[live][:, live])
    keep = lam > (rcond**2) * lam.max().clamp_min(0)
    inv = torch.where(keep, 1.0 / lam.where(keep, torch.ones_like(lam)), torch.zeros_like(lam))
    sol[live] = V @ (inv[:, None] * (V.t() @ C[live]))
    return sol.t()


def encoder_linears(model: nn.Module) -> dict[str, QuantLinear]:
    """The image encoder's quantized linear layers whose weight or input is quantized."""
    return {
        n: m for n, m in model.named_modules()
        if n.startswith("image_encoder.") and isinstance(m, QuantLinear) and (m.wq.active or m.aq.active)
    }


class _Stats:
    """Float64 Gram matrices of one layer's rows, each row with a ones column when the layer
    has a bias: over every row, xx = X^T X, qq = Q(X)^T Q(X), qx = Q(X)^T X (the layer's output
    error for any weights, see `output_error`); over the `rows` sampled rows (when set), the
    fit's G = A^T A and H = A^T X, A = X or Q(X) (`vrc_input`)."""

    def __init__(self, layer: QuantLinear, quantize_input: bool, cfg: QSAM2Config, rows: list[int] | None,
                 seed: int) -> None:
        self.layer, self.quantize_input = layer, quantize_input
        self.quantized_fit, self.rows = cfg.vrc_input == "quantized", rows
        self.gen = torch.Generator().manual_seed(seed)
        d = layer.in_features + int(layer.bias is not None)
        self.xx, self.qq, self.qx = (torch.zeros(d, d, dtype=torch.float64, device=layer.weight.device)
                                     for _ in range(3))
        self.G = self.H = None
        self.calls = 0

    def __call__(self, module: nn.Module, inputs: tuple) -> None:
        x = inputs[0].detach()
        xq = self.layer.aq.quantize(x) if self.quantize_input else x
        b = x.reshape(-1, x.shape[-1]).double()
        a = xq.reshape(-1, x.shape[-1]).double()
        if self.layer.bias is not None:
            ones = b.new_ones(b.shape[0], 1)
            a, b = torch.cat([a, ones], 1), torch.cat([b, ones], 1)
        self.xx += b.t() @ b
        self.qq += a.t() @ a
        self.qx += a.t() @ b
        if self.rows is not None:  # the fit's own rows: a seeded sample of this call's
            k = self.rows[self.calls] if self.calls < len(self.rows) else 0
            pick = torch.randperm(b.shape[0], generator=self.gen)[:k].to(b.device)
            fa = (a if self.quantized_fit else b)[pick]
            g, h = fa.t() @ fa, fa.t() @ b[pick]
            self.G, self.H = (g, h) if self.G is None else (self.G + g, self.H + h)
        self.calls += 1

    def fit(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(G, H) of the fit: the sampled rows', or every row's."""
        if self.rows is not None:
            return self.G, self.H
        return (self.qq, self.qx) if self.quantized_fit else (self.xx, self.xx)

    @staticmethod
    def nbytes(layer: QuantLinear, sampled: bool) -> int:
        return (5 if sampled else 3) * 8 * (layer.in_features + 1) ** 2


def _groups(layers: dict[str, QuantLinear], budget: float, sampled: bool) -> list[list[str]]:
    groups, current, used = [], [], 0
    for name, layer in layers.items():
        size = _Stats.nbytes(layer, sampled)
        if current and used + size > budget:
            groups.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    return groups + ([current] if current else [])


def rows_per_call(total: int | None, calls: int) -> list[int] | None:
    """`total` rows spread over `calls` forward calls as evenly as they divide."""
    if total is None:
        return None
    return [total // calls + (i < total % calls) for i in range(calls)]


@torch.no_grad()
def vrc(model: nn.Module, calib: CalibData | None, cfg: QSAM2Config) -> dict:
    """Re-fit the image encoder's linear layers (see the module docstring); returns figures,
    with per-layer ones under "layers"."""
    layers = encoder_linears(model)
    if not layers:
        return {"vrc_layers": 0}
    quantizers = [m for m in model.modules() if isinstance(m, FakeQuantizer)]
    enabled = [q.enabled for q in quantizers]
    input_quantized = {n: layer.aq.active for n, layer in layers.items()}
    device = next(model.parameters()).device
    rows = rows_per_call(cfg.vrc_rows, encoder_input_count(calib, model))
    solved, stats_of = {}, {}  # written once all passes are done: every pass sees the FP model
    try:
        for q in quantizers:
            q.enabled = False  # the FP model: X are FP inputs
        groups = _groups(layers, cfg.vrc_memory_gb * 2**30, rows is not None)
        for group in tqdm(groups, desc="vrc", disable=len(groups) == 1):
            stats, hooks = {}, []
            for name in group:
                stats[name] = _Stats(layers[name], input_quantized[name], cfg, rows, seed=list(layers).index(name))
                hooks.append(layers[name].register_forward_pre_hook(stats[name]))
            try:
                for x in encoder_inputs(calib, model):
                    model.image_encoder(x.to(device))
            finally:
                for h in hooks:
                    h.remove()
            for name, st in stats.items():
                solved[name] = _solve(layers[name], st, cfg)
                stats_of[name] = (st.xx, st.qq, st.qx)
    finally:
        for q, e in zip(quantizers, enabled):
            q.enabled = e
    per_layer = [_layer_figures(name, layers[name], solved[name], *stats_of[name]) for name in layers]
    for name, new in solved.items():
        _write(layers[name], new)
    return {"vrc_layers": len(layers), "vrc_passes": len(groups), "vrc_rows": cfg.vrc_rows,
            "vrc_weight_norm_ratio": fmean([r["norm_after"] / max(r["norm_before"], 1e-30) for r in per_layer]),
            "vrc_weight_var_ratio": fmean([r["var_after"] / max(r["var_before"], 1e-30) for r in per_layer]),
            "vrc_qerr_before": fmean([r["qerr_before"] for r in per_layer]),
            "vrc_qerr_after": fmean([r["qerr_after"] for r in per_layer]),
            "layers": per_layer}


def _solve(layer: QuantLinear, st: _Stats, cfg: QSAM2Config) -> torch.Tensor:
    """The layer's new [weight | bias] (bias column only when it is fitted)."""
    W = layer.weight.detach()
    G, H = st.fit()
    if layer.bias is not None and cfg.vrc_bias == "keep":  # fit W' alone: drop the ones column
        G, H = G[:-1, :-1], H[:-1, :-1]
    fit_bias = layer.bias is not None and cfg.vrc_bias == "fit"
    full = torch.cat([W, layer.bias.detach()[:, None]], 1) if fit_bias else W
    sol = vrc_solve(G, H, full, cfg.vrc_rcond, cfg.vrc_ridge)
    return (cfg.vrc_blend * sol + (1 - cfg.vrc_blend) * full.double()).to(W.dtype)


def output_error(wq: torch.Tensor, w: torch.Tensor, xx: torch.Tensor, qq: torch.Tensor,
                 qx: torch.Tensor) -> float:
    """||Q(X) wq^T - X w^T||^2 / ||X w^T||^2 from the Gram matrices (weights with their bias
    column when the Grams have a ones column)."""
    wq, w = wq.double(), w.double()
    ref = (w @ xx * w).sum()
    err = (wq @ qq * wq).sum() - 2 * (wq @ qx * w).sum() + ref
    return float(err.clamp_min(0) / ref.clamp_min(1e-300))


def _quantized_weight(layer: QuantLinear, w: torch.Tensor) -> torch.Tensor:
    """The layer's weight quantizer as it would start from `w` (LSC's or RTN's initial range)."""
    if not (layer.wq.enabled and layer.wq.spec is not None):  # LSC's weight ranges start after VRC
        return w
    q = copy.deepcopy(layer.wq).eval()
    q.init_weight(w)
    return q.quantize(w)


def _layer_figures(name: str, layer: QuantLinear, new: torch.Tensor, xx: torch.Tensor, qq: torch.Tensor,
                   qx: torch.Tensor) -> dict:
    """A layer's weight statistics before and after the re-fit, and the quantized layer's
    initial output error with either weight (the paper's analysis of VRC)."""
    d = layer.in_features
    w0, w1 = layer.weight.detach(), new[:, :d]
    b0 = None if layer.bias is None else layer.bias.detach()
    b1 = b0 if new.shape[1] == d else new[:, d]
    full = lambda w, b: w if b is None else torch.cat([w, b[:, None]], 1)  # noqa: E731
    ref = full(w0, b0)
    out = {"layer": name}
    for tag, w, b in (("before", w0, b0), ("after", w1, b1)):
        flat = w.double().flatten()
        out[f"norm_{tag}"] = float(flat.norm())
        out[f"var_{tag}"] = float(flat.var(correction=0))
        out[f"q_{tag}"] = [float(v) for v in np.quantile(flat.cpu().numpy(), LAYER_QUANTILES)]
        out[f"qerr_{tag}"] = output_error(full(_quantized_weight(layer, w), b), ref, xx, qq, qx)
    return out


def _write(layer: QuantLinear, new: torch.Tensor) -> None:
    """Write a solved weight (and bias) in place, as a tracked modification (cached quantized
    weights keyed on the tensor version see the change)."""
    d = layer.weight.shape[1]
    layer.weight.copy_(new[:, :d])
    if new.shape[1] > d:
        layer.bias.copy_(new[:, d])


# -- the method ----------------------------------------------------------------------------------
class QSAM2(QATMethod):
    name = "qsam2"
    Config = QSAM2Config

    def switch_label(self) -> tuple[str, tuple[str, ...]]:
        c = self.config
        labels = {(True, True): "", (True, False): "vrc-only", (False, True): "lsc-only"}
        return labels.get((c.vrc, c.lsc), "rtn-qat"), ("vrc", "lsc")

    def _quantizer(self, name: str, old: FakeQuantizer, kind: str) -> FakeQuantizer:
        c = self.config
        if c.lsc:
            return LSCQuantizer(old.spec, momentum=c.lsc_momentum, narrow=c.lsc_narrow, alpha_init=c.lsc_alpha_init)
        return RTNWeightQuantizer(old.spec) if kind == "weight" else FixedQuantizer(old.spec)

    def prepare(self, model: nn.Module, calib: CalibData | None) -> None:
        wrap(model, self.config.plan())
        replace_quantizers(model, self._quantizer)
        calibrate_activations(model, calib)
        if self.config.vrc:
            self.info.update(vrc(model, calib, self.config))
        for m in model.modules():  # weight quantizers from the (re-fitted) weights
            if isinstance(m, QuantLayer) and isinstance(m.wq, LearnedQuantizer):
                m.wq.init_weight(m.weight)
