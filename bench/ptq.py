"""The post-training pipeline of PTQ4SAM's official code (Lv et al., CVPR 2024, arXiv
2405.03144; github.com/chengtao-lv/PTQ4SAM) on SAM2, shared by the `ptq4sam` and `saqsam`
methods (SAQ-SAM's official code is a fork of PTQ4SAM's and keeps BIG and AGQ).

- Scope: the protocol's full-precision list (`scope_preset: ptq4sam`); weights per output
  channel, asymmetric, Lp (p = 2.4) grid-searched ranges (100 candidates x every zero point);
  activations per tensor, asymmetric, averaged min/max over the calibration calls
  (bench/quant/observers.py); the quantized attention's q, k, v and probabilities too.
- BIG, Bimodal Integration (`big`): in the mask decoder's token-to-image cross-attentions
  (both layers' `cross_attn_token_to_image` and `final_attn_token_to_image`), the k_proj
  outputs of the first calibration image (first batch element) are tested for bimodality:
  Gaussian KDE on a 128-point grid over [min, max], `find_peaks(height=0.01 * sum(y),
  distance=32)`, bimodal iff exactly 2 peaks. If so gamma_j = sign(mean K[:, j]) is folded
  into the q_proj and k_proj weights and biases (QK^T is unchanged; K's channels become
  non-negative-mean). As in the official code the decoder attentions' k quantizers then use
  the averaged Lp observer (`big_k_observer`).
- AGQ, Adaptive Granularity Quantization (`agq`): every post-softmax probability quantizer is
  the log2 quantizer of bench/quant/log2.py (tau in {1, 2, 4} and scale searched on
  ||AV - A_hat V||).
- Calibration order (official): BIG on image 0, then activations observed with everything in
  full precision (a method may set some quantizers before, `before_calibration`), then weights.
- Reconstruction (`recon`, PTQ4SAM-L): every unit of `bench.recon.block_units` in model order,
  within `recon_components` (default: image encoder and mask decoder, the parts the papers
  reconstruct and the image path reaches; memory modules keep their calibrated statistics),
  by `bench.recon` (QDrop, AdaRound, LSQ step sizes); 20,000 iterations per unit, batch 1.

On SAM (v1), as the official code runs it (ptq4sam/model/quant_model.py): the same BIG
targets (`bimodal_adjust`: decoder attentions named `*token_to_image`) and k observer (every
`QuantDecoderOurAttentionBlock`), AGQ on every softmax (encoder and decoder attention blocks),
the encoder attention's relative positions from the quantized q (`rel_pos_q`,
`QuantEncoderOurAttentionBlock.forward`), reconstruction units of `bench.recon.block_units`
(each ViT block's attention and MLP, the whole neck, the decoder's attentions and MLPs).

Choices where the paper and code are silent on SAM2 (config fields): the sign of a channel
whose mean is exactly 0 is +1 (the official code would zero it); a bimodality test on
`big_targets: decoder` extends BIG to every decoder attention; `recon_images` caps the
calibration images used for reconstruction (0: all); `recon_units` reconstructs only the
first units in model order (0: all; for measuring one unit, bench.benchmarks.memory);
`agq_max_calls` caps the calibration calls each AGQ search uses (0: all, the official);
`mse_zp_steps` / `hist_bins` see bench/quant/observers.py (these are budget knobs for CPU runs).
`eval_dropout_bug: true` reproduces the official evaluation bug (QDrop left on for the
Linear/Conv inputs of reconstructed units, see bench/recon.py), off by default.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bench import BenchError, progress
from bench.calib import CalibData, CalibImage
from bench.method import Method, QuantConfig
from bench.peak import map_large_allocations
from bench.quant import quant_attentions, quant_layers, wrap
from bench.quant.attention import QuantSamEncoderAttention
from bench.quant.calibrate import calibrate_activations, calibrate_weights
from bench.quant.log2 import Log2Quantizer
from bench.quant.observers import ACT_OBSERVERS, WEIGHT_OBSERVERS, LpSearch, PTQQuantizer, calibrate_weights_lp
from bench.quant.scope import COMPONENTS, component_of
from bench.recon import ReconSettings, block_units, frozen_params, recon_info, reconstruct_block, run_image_path
from bench.results import EVAL_BUG

BIG_TARGETS = ("token_to_image", "decoder")


def check(ok: bool, field: str, msg: str) -> None:
    if not ok:
        raise BenchError(f"{field}: {msg}")


def is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class PTQConfig(QuantConfig):
    """PTQ4SAM's switches (`big`, `agq`, `recon`, `eval_dropout_bug`) and knobs (see the
    module docstring); SAQ-SAM's config adds its own."""

    budgets = QuantConfig.budgets | {"agq_max_calls", "mse_grid", "mse_zp_steps", "hist_bins", "iters", "w_lr",
                                     "a_lr", "recon_images", "recon_units"}
    protocol = QuantConfig.protocol | {"recon_components"}  # the scope of reconstruction

    scope_preset: str = "ptq4sam"
    big: bool = True
    agq: bool = True
    recon: bool = False
    eval_dropout_bug: bool = False
    # BIG
    big_targets: str = "token_to_image"
    kde_grid: int = 128
    peak_distance: int = 32
    peak_height: float = 0.01
    big_k_observer: str = "avg_mse"
    # AGQ
    agq_taus: tuple[int, ...] = (1, 2, 4)
    agq_max_calls: int = 0
    # observers
    w_observer: str = "mse"
    act_observer: str = "avg_minmax"
    lp_norm: float = 2.4
    mse_grid: int = 100
    mse_zp_steps: int = 0
    hist_bins: int = 2048
    # reconstruction (defaults: the official ones, bench.recon.ReconSettings)
    iters: int = ReconSettings.iters
    w_lr: float = ReconSettings.w_lr
    a_lr: float = ReconSettings.a_lr
    drop_prob: float = ReconSettings.drop_prob
    round_reg: float = ReconSettings.round_reg
    warmup: float = ReconSettings.warmup
    recon_images: int = 0
    recon_units: int = 0  # reconstruct only the first N units (0: all): a cost cap for benchmarks, not the method
    recon_components: tuple[str, ...] = ("image_encoder", "mask_decoder")

    def __post_init__(self) -> None:
        super().__post_init__()
        for f in ("agq_taus", "recon_components"):
            object.__setattr__(self, f, tuple(getattr(self, f)))
        for f in ("big", "agq", "recon", "eval_dropout_bug"):
            check(isinstance(getattr(self, f), bool), f, f"expected true or false, got {getattr(self, f)!r}")
        check(self.big_targets in BIG_TARGETS, "big_targets", f"expected one of {', '.join(BIG_TARGETS)}")
        for f in ("act_observer", "big_k_observer"):
            check(getattr(self, f) in ACT_OBSERVERS, f, f"expected one of {', '.join(ACT_OBSERVERS)}")
        check(self.w_observer in WEIGHT_OBSERVERS, "w_observer", f"expected one of {', '.join(WEIGHT_OBSERVERS)}")
        for f, lo in (("kde_grid", 3), ("peak_distance", 1), ("mse_grid", 1), ("mse_zp_steps", 0),
                      ("hist_bins", 2), ("iters", 0), ("recon_images", 0), ("recon_units", 0),
                      ("agq_max_calls", 0)):
            v = getattr(self, f)
            ok = isinstance(v, int) and not isinstance(v, bool) and v >= lo
            check(ok, f, f"expected an integer >= {lo}, got {v!r}")
        for f in ("peak_height", "lp_norm", "w_lr", "a_lr", "round_reg", "warmup", "drop_prob"):
            check(is_number(getattr(self, f)), f, f"expected a number, got {getattr(self, f)!r}")
        check(self.lp_norm > 0 and self.w_lr > 0 and self.a_lr > 0, "lp_norm/w_lr/a_lr", "must be > 0")
        check(self.peak_height >= 0 and self.round_reg >= 0, "peak_height/round_reg", "must be >= 0")
        check(0 <= self.warmup < 1, "warmup", f"expected a fraction in [0, 1), got {self.warmup}")
        check(0 < self.drop_prob <= 1, "drop_prob", f"expected a probability in (0, 1], got {self.drop_prob}")
        check(bool(self.agq_taus) and all(is_number(t) and t > 0 for t in self.agq_taus), "agq_taus",
              f"expected a non-empty list of positive numbers, got {list(self.agq_taus)}")
        bad = [c for c in self.recon_components if c not in COMPONENTS]
        check(not bad, "recon_components", f"unknown component {bad[:1]}; known: {', '.join(COMPONENTS)}")
        check(self.recon or not self.eval_dropout_bug, "eval_dropout_bug", "only applies with recon: true")

    def search(self) -> LpSearch:
        return LpSearch(self.lp_norm, self.mse_grid, self.mse_zp_steps, self.hist_bins)

    def recon_settings(self) -> ReconSettings:
        return ReconSettings(
            iters=self.iters, w_lr=self.w_lr, a_lr=self.a_lr, drop_prob=self.drop_prob, round_reg=self.round_reg,
            warmup=self.warmup, eval_dropout_bug=self.eval_dropout_bug,
        )


# -- BIG -------------------------------------------------------------------------------------
def is_bimodal(values: np.ndarray | torch.Tensor, grid: int = 128, distance: int = 32, height: float = 0.01) -> bool:
    """Exactly two peaks in the Gaussian KDE of the values (the official test)."""
    from scipy.signal import find_peaks
    from scipy.stats import gaussian_kde

    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    data = np.asarray(values, dtype=np.float64).ravel()
    if data.size < 2 or np.ptp(data) == 0:
        return False
    try:
        kde = gaussian_kde(data)
    except (np.linalg.LinAlgError, ValueError):
        return False
    y = kde(np.linspace(data.min(), data.max(), grid))
    peaks, _ = find_peaks(y, height=height * y.sum(), distance=distance)
    return len(peaks) == 2


def channel_signs(k: torch.Tensor) -> torch.Tensor:
    """gamma_j = sign(mean over all but the last dim of K[..., j]); 0 -> +1."""
    mean = k.detach().float().reshape(-1, k.shape[-1]).mean(0)
    return torch.where(mean < 0, -1.0, 1.0).to(k.device)


@torch.no_grad()
def fold_signs(attn: nn.Module, gamma: torch.Tensor) -> None:
    """Multiply the q_proj and k_proj output channels by gamma (+-1): QK^T is unchanged."""
    for lin in (attn.q_proj, attn.k_proj):
        lin.weight.mul_(gamma.to(lin.weight.dtype)[:, None])
        if lin.bias is not None:
            lin.bias.mul_(gamma.to(lin.bias.dtype))


def big_targets(model: nn.Module, which: str) -> dict[str, nn.Module]:
    """The mask decoder's attentions BIG tests: SAM2's `Attention` (not memory attention's
    RoPE one) or SAM's; by default the token-to-image ones (official `bimodal_adjust`:
    `QuantDecoderOurAttentionBlock` named `*token_to_image`)."""
    from sam2.modeling.sam.transformer import Attention, RoPEAttention
    from segment_anything.modeling.transformer import Attention as SamAttention

    return {
        n: m for n, m in model.named_modules()
        if component_of(n) == "mask_decoder" and isinstance(m, (Attention, SamAttention))
        and not isinstance(m, RoPEAttention) and (which == "decoder" or n.endswith("token_to_image"))
    }


def bimodal_integration(model: nn.Module, image: CalibImage, cfg: PTQConfig) -> dict[str, bool]:
    """BIG on the first calibration image: test each target's k_proj output, fold if bimodal."""
    targets = big_targets(model, cfg.big_targets)
    keys: dict[str, torch.Tensor] = {}
    hooks = [
        m.k_proj.register_forward_hook(lambda _m, _a, out, n=n: keys.setdefault(n, out.detach().clone()))
        for n, m in targets.items()
    ]
    try:
        run_image_path(model, [image])
    finally:
        for h in hooks:
            h.remove()
    found = {}
    for n, m in targets.items():
        k = keys[n]
        found[n] = is_bimodal(k[0], cfg.kde_grid, cfg.peak_distance, cfg.peak_height)
        if found[n]:
            fold_signs(m, channel_signs(k))
    return found


# -- quantizers and calibration ----------------------------------------------------------------
def install_quantizers(model: nn.Module, cfg: PTQConfig) -> None:
    """Observer quantizers in every activation slot; the log2 quantizer for probabilities."""
    search = cfg.search()
    for layer in quant_layers(model).values():
        if layer.aq.spec is not None:
            layer.aq = PTQQuantizer(layer.aq.spec, cfg.act_observer, search)
    for name, attn in quant_attentions(model).items():
        for slot in ("q_quant", "k_quant", "v_quant"):
            spec = getattr(attn, slot).spec
            if spec is not None:
                big_k = cfg.big and slot == "k_quant" and component_of(name) == "mask_decoder"
                setattr(attn, slot, PTQQuantizer(spec, cfg.big_k_observer if big_k else cfg.act_observer, search))
        spec = attn.p_quant.spec
        if spec is not None:
            if cfg.agq:
                attn.p_quant = Log2Quantizer(spec, cfg.agq_taus, cfg.lp_norm, cfg.agq_max_calls)
            else:
                attn.p_quant = PTQQuantizer(spec, cfg.act_observer, search)


class PTQPipeline(Method):
    """The pipeline as a method base: `apply` runs it; a method names itself, its config and
    its variant, and may override `before_calibration` (quantizers it sets before the
    statistics pass) and `reconstruct` (its own reconstruction)."""

    Config = PTQConfig
    # SAM's encoder attention: the relative-position term from the quantized q, as PTQ4SAM's
    # `QuantEncoderOurAttentionBlock.forward` (ptq4sam/model/quant_model.py) computes it
    rel_pos_q = "quantized"

    def needs_data(self) -> bool:
        c = self.config
        return c.a_bits is not None or c.big or c.recon

    def keeps_inactive_quantizers(self) -> bool:
        return self.config.eval_dropout_bug  # the official evaluation bug, reproduced on purpose

    def statistics_label(self, head: str) -> tuple[str, tuple[str, ...]]:
        """`head` with the shared switches: "-noBIG", "-noAGQ", "+evalbug" (`switch_label`)."""
        c = self.config
        label = head + ("" if c.big else "-noBIG") + ("" if c.agq else "-noAGQ")
        return label + (EVAL_BUG if c.eval_dropout_bug else ""), ("big", "agq", "eval_dropout_bug")

    def images(self, calib: CalibData | None) -> list[CalibImage]:
        if calib is None or not calib.images:
            raise BenchError(f"{self.name}: BIG, PCC and reconstruction need calibration images with box prompts")
        return calib.images

    def apply(self, model: nn.Module, calib: CalibData | None) -> nn.Module:
        cfg = self.config
        fp_model = copy.deepcopy(model).eval() if cfg.recon else None
        if cfg.recon:
            map_large_allocations(model)  # freed captures and activations go back to the system (bench.peak)
        wrap(model, cfg.plan())
        for attn in quant_attentions(model).values():
            if isinstance(attn, QuantSamEncoderAttention):
                attn.rel_pos_q = self.rel_pos_q
        install_quantizers(model, cfg)
        if cfg.big:
            self.info["big_bimodal"] = bimodal_integration(model, self.images(calib)[0], cfg)
        fixed = self.before_calibration(model, calib)
        if cfg.a_bits is not None:
            self.info["act_quantizers"] = calibrate_activations(model, calib, frozenset(fixed))
        self.info["weight_quantizers"] = (
            calibrate_weights_lp(model, cfg.search()) if cfg.w_observer == "mse" else calibrate_weights(model))
        taus = [q.tau for q in model.modules() if isinstance(q, Log2Quantizer) and q.active]
        self.info["agq_tau_counts"] = {str(t): taus.count(t) for t in sorted(set(taus))}
        if cfg.recon:
            images = self.images(calib)[: cfg.recon_images or None]
            with frozen_params(model, fp_model):
                self.info["recon"] = self.reconstruct(model, fp_model, images)
        return model

    def before_calibration(self, model: nn.Module, calib: CalibData | None) -> set[int]:
        """Quantizers set before the statistics pass (ids); SAQ-SAM's PCC overrides this."""
        return set()

    def reconstruct(self, model: nn.Module, fp_model: nn.Module, images: list[CalibImage]) -> dict:
        """Block reconstruction of every unit (PTQ4SAM-L)."""
        s = self.config.recon_settings()
        results = {}
        units = block_units(model, self.config.recon_components, images)[: self.config.recon_units or None]
        for name in progress(units, "reconstruction"):
            results[name] = reconstruct_block(model, fp_model, name, images, s)
        return recon_info(results)
