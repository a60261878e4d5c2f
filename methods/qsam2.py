"""`qsam2`: Q-SAM2 / QAT-SAM (arXiv 2506.09782), no public code: VRC + LSC.

VRC, Variance-Reduced Calibration (`vrc`), an initialization: each linear layer of the image
encoder is re-fitted on the calibration data so that its quantized input reproduces the FP
output with a minimum-norm weight. With X the layer's FP input (rows: tokens of every
calibration image and clip frame), Q(X) its input quantizer's output and W, b the FP weight
and bias, W' solves

    min ||Q(X) W'^T - X W^T||_F, and among the minimizers the one of least ||W'||_F,

i.e. W'^T = pinv(Q(X)) X W^T (Moore-Penrose), computed from the float64 Gram matrices
G = Q(X)^T Q(X) and H = Q(X)^T X (pinv(A) = pinv(A^T A) A^T, so this is exactly the
minimum-norm least-squares solution; singular values of Q(X) below `vrc_rcond` x the largest
are treated as zero, as numpy's lstsq does). Choices the paper leaves open, as config fields:
  - `vrc_bias`: "fit" (default) appends a column of ones to Q(X) and X and re-fits weight and
    bias together, min ||[Q(X) 1] [W' b']^T - (X W^T + b)||, so the bias absorbs the mean of
    the input quantization error; "keep" leaves the bias and fits W' alone;
  - `vrc_ridge` > 0: ridge regression (G + ridge * mean(diag G) * I)^-1 Q(X)^T X W^T instead
    of the pseudoinverse;
  - `vrc_blend`: W <- blend * W' + (1 - blend) * W (1: replace);
  - inputs: X comes from the FP model (all quantizers off, one pass over the data for every
    layer at once), Q is the layer's own input quantizer as calibrated (min/max, or LSC's
    initial clip); the statistics of the layers are gathered in groups that fit
    `vrc_memory_gb`, one pass per group. With `a_bits` fp, Q(X) = X and W' is W projected
    onto the row space of X (what the data do not excite is removed).
VRC changes only the image encoder's weights; activation ranges are calibrated before VRC, on
the model before the re-fit (VRC keeps the outputs close to the FP ones); every layer's X is
gathered before any weight is written (the passes all see the FP model); weight quantizers
are (re)initialized from the re-fitted weights, whose own quantization the fit does not see
(`vrc_ridge` trades the fit for smaller weights). `vrc: true, lsc: false, steps: 0` is VRC as
post-training calibration.

LSC, Learnable Statistical Clipping (`lsc`): every quantizer (weights per output channel,
activations per tensor, attention q/k/v/probabilities) becomes an `LSCQuantizer`
(bench.quant.learned; our reading of the paper's description): clip c = alpha * sigma_ema, sigma_ema an
EMA (momentum `lsc_momentum`) of the tensor's standard deviation, alpha learned through the
straight-through estimator, [-c, c] quantized uniformly (`lsc_narrow`: the symmetric grid
[-(2^(b-1) - 1), 2^(b-1) - 1]; unsigned tensors [0, c]); alpha starts at max|x| / sigma (the
RTN range) unless `lsc_alpha_init`. Then the whole model is trained by the shared QAT loop
(bench.qat: distillation from the FP model + GT loss). Without `lsc` the quantizers are RTN's:
weights with min/max ranges of the current weight (`RTNWeightQuantizer`, recomputed at every
training step), activation ranges fixed at their calibration.

Variant labels: VRC + LSC (default, ""), "vrc-only" (VRC, no LSC), "lsc-only", "rtn-qat"
(neither), then `field=value` for any other non-default switch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from bench import BenchError
from bench.calib import CalibData
from bench.qat import QATConfig, QATMethod, calibration_images
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

BIAS_MODES = ("fit", "keep")


@dataclass(frozen=True)
class QSAM2Config(QATConfig):
    budgets = QATConfig.budgets | {"vrc_memory_gb"}  # memory per pass, not the method

    vrc: bool = True
    lsc: bool = True
    vrc_bias: str = "fit"
    vrc_ridge: float = 0.0
    vrc_rcond: float = 1e-6
    vrc_blend: float = 1.0
    vrc_memory_gb: float = 2.0
    lsc_momentum: float = 0.9
    lsc_narrow: bool = True
    lsc_alpha_init: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for f in ("vrc", "lsc", "lsc_narrow"):
            if not isinstance(getattr(self, f), bool):
                raise BenchError(f"{f}: expected true or false, got {getattr(self, f)!r}")
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
    """G = A^T A and H = A^T B over the rows of one layer's inputs (A = Q(X), B = X, with a
    ones column when the bias is fitted), float64."""

    def __init__(self, layer: QuantLinear, fit_bias: bool, quantize_input: bool) -> None:
        self.layer, self.fit_bias, self.quantize_input = layer, fit_bias, quantize_input
        d = layer.in_features + int(fit_bias)
        dev = layer.weight.device
        self.G = torch.zeros(d, d, dtype=torch.float64, device=dev)
        self.H = torch.zeros(d, d, dtype=torch.float64, device=dev)

    def __call__(self, module: nn.Module, inputs: tuple) -> None:
        x = inputs[0].detach()
        xq = self.layer.aq.quantize(x) if self.quantize_input else x
        b = x.reshape(-1, x.shape[-1]).double()
        a = xq.reshape(-1, x.shape[-1]).double()
        if self.fit_bias:
            ones = b.new_ones(b.shape[0], 1)
            a, b = torch.cat([a, ones], 1), torch.cat([b, ones], 1)
        self.G += a.t() @ a
        self.H += a.t() @ b

    @staticmethod
    def nbytes(layer: QuantLinear) -> int:
        return 2 * 8 * (layer.in_features + 1) ** 2


def _groups(layers: dict[str, QuantLinear], budget: float) -> list[list[str]]:
    groups, current, used = [], [], 0
    for name, layer in layers.items():
        size = _Stats.nbytes(layer)
        if current and used + size > budget:
            groups.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    return groups + ([current] if current else [])


@torch.no_grad()
def vrc(model: nn.Module, calib: CalibData | None, cfg: QSAM2Config) -> dict:
    """Re-fit the image encoder's linear layers (see the module docstring); returns figures."""
    layers = encoder_linears(model)
    if not layers:
        return {"vrc_layers": 0}
    quantizers = [m for m in model.modules() if isinstance(m, FakeQuantizer)]
    enabled = [q.enabled for q in quantizers]
    input_quantized = {n: layer.aq.active for n, layer in layers.items()}
    device = next(model.parameters()).device
    solved = {}  # written once all passes are done: every pass sees the FP model
    try:
        for q in quantizers:
            q.enabled = False  # the FP model: X are FP inputs
        groups = _groups(layers, cfg.vrc_memory_gb * 2**30)
        for group in tqdm(groups, desc="vrc", disable=len(groups) == 1):
            stats, hooks = {}, []
            for name in group:
                layer = layers[name]
                fit = cfg.vrc_bias == "fit" and layer.bias is not None
                stats[name] = _Stats(layer, fit, input_quantized[name])
                hooks.append(layer.register_forward_pre_hook(stats[name]))
            try:
                for x in calibration_images(calib, model.image_size):
                    model.image_encoder(x.to(device))
            finally:
                for h in hooks:
                    h.remove()
            for name, st in stats.items():
                solved[name] = _solve(layers[name], st, cfg)
    finally:
        for q, e in zip(quantizers, enabled):
            q.enabled = e
    ratios = [_write(layers[name], new) for name, new in solved.items()]
    return {"vrc_layers": len(layers), "vrc_passes": len(groups),
            "vrc_weight_norm_ratio": float(sum(ratios) / len(ratios))}


def _solve(layer: QuantLinear, st: _Stats, cfg: QSAM2Config) -> torch.Tensor:
    """The layer's new [weight | bias] (bias column only when it is fitted)."""
    W = layer.weight.detach()
    full = torch.cat([W, layer.bias.detach()[:, None]], 1) if st.fit_bias else W
    sol = vrc_solve(st.G, st.H, full, cfg.vrc_rcond, cfg.vrc_ridge)
    return (cfg.vrc_blend * sol + (1 - cfg.vrc_blend) * full.double()).to(W.dtype)


def _write(layer: QuantLinear, new: torch.Tensor) -> float:
    """Write a solved weight (and bias) in place, as a tracked modification (cached quantized
    weights keyed on the tensor version see the change); returns ||W_new|| / ||W||."""
    old_norm = layer.weight.detach().norm().clamp_min(1e-12)
    d = layer.weight.shape[1]
    layer.weight.copy_(new[:, :d])
    if new.shape[1] > d:
        layer.bias.copy_(new[:, d])
    return float(layer.weight.detach().norm() / old_norm)


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
