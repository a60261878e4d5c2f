"""Block reconstruction with QDrop, AdaRound and learned activation step sizes (PTQ4SAM-L,
SAQ-SAM), as the official PTQ4SAM code (`ptq4sam/solver/recon.py`) does it:

- data: for one unit (a module of the quantized model), its inputs when the quantized model
  (everything before it already quantized and reconstructed) runs the calibration images, and
  the inputs and outputs of the same module in the full-precision model (`capture`);
- QDrop: each iteration takes one calibration image (batch 1) and mixes the unit's quantized
  and FP inputs elementwise (the quantized one with probability `drop_prob` = 0.5); inside
  the unit every activation quantizer also quantizes each element with probability 0.5;
- AdaRound: weights w_hat = s * (clamp(floor(w / s) + h(alpha) + z) - z) with the rectified
  sigmoid h = clamp(sigmoid(alpha) * (zeta - gamma) + gamma, 0, 1), zeta 1.1, gamma -0.1,
  alpha initialized so that h equals the rounding remainder; regularizer
  `round_reg` * sum(1 - |2h - 1|^beta) after `warmup` of the iterations, beta decaying
  linearly from 20 to 2 after the warm-up; Adam, lr `w_lr` (1e-3);
- activation step sizes learned with LSQ's gradient (Adam, lr `a_lr`, cosine to 0);
- loss: |out - out_fp|^p (p = 2) summed over dim 1 and averaged (the official `lp_loss`),
  or a method's own loss (SAQ-SAM's prompt-aware loss);
- after the unit: weights set to their hard-rounded values (so the plain weight quantizer with
  the same scale reproduces them exactly), learned step sizes frozen, QDrop off.

`eval_dropout_bug` reproduces the official code's evaluation bug: QDrop is switched off
again only on the post-activation quantizers (here: attention q/k/v/probabilities), so the
layer-input quantizers of reconstructed units (Linear/Conv inputs) keep dropping half of
their elements at test time. Off by default.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bench import BenchError
from bench.calib import CalibImage
from bench.quant.attention import QuantAttentionMixin
from bench.quant.fake import FakeQuantizer
from bench.quant.modules import QuantLayer
from bench.quant.scope import component_of


@dataclass(frozen=True)
class ReconSettings:
    iters: int = 20000
    w_lr: float = 1e-3
    a_lr: float = 4e-5
    drop_prob: float = 0.5
    round_reg: float = 0.01
    b_start: float = 20.0
    b_end: float = 2.0
    warmup: float = 0.2
    p: float = 2.0
    loss_dim: int = 1  # lp_loss sums over this dim (PTQ4SAM: 1, SAQ-SAM: -1)
    learn_act_scale: bool = True
    eval_dropout_bug: bool = False


class Stop(Exception):
    """Raised by capture hooks to end a forward pass early."""


@dataclass
class Call:
    """One call of a module: positional and keyword inputs, and its output when captured."""

    args: tuple
    kwargs: dict
    out: Any = None


def detach(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, (tuple, list)):
        return type(obj)(detach(o) for o in obj)
    if isinstance(obj, dict):
        return {k: detach(v) for k, v in obj.items()}
    return obj


def run_image_path(model: nn.Module, images: Sequence[CalibImage]) -> None:
    """SAM's box-prompted image path on each image; a `Stop` ends that image's pass."""
    from bench.models import image_predictor

    predictor = image_predictor(model)
    with torch.no_grad():
        for item in images:
            try:
                predictor.set_image(item.image)
                predictor.predict(box=item.boxes, multimask_output=False)
            except Stop:
                pass


def capture(model: nn.Module, module: nn.Module, images: Sequence[CalibImage], outputs: bool = False) -> list[Call]:
    """The first call of `module` per image (inputs, and outputs when asked); each pass stops
    right after it."""
    calls: list[Call] = []

    def pre(_m, args, kwargs):
        if not outputs:
            calls.append(Call(detach(args), detach(kwargs)))
            raise Stop

    def post(_m, args, kwargs, out):
        calls.append(Call(detach(args), detach(kwargs), detach(out)))
        raise Stop

    handles = [module.register_forward_pre_hook(pre, with_kwargs=True)]
    if outputs:
        handles.append(module.register_forward_hook(post, with_kwargs=True))
    try:
        run_image_path(model, images)
    finally:
        for h in handles:
            h.remove()
    return calls


class AdaRoundQuantizer(FakeQuantizer):
    """Weight quantizer with learned rounding (see the module docstring); same scale and zero
    point as the quantizer it replaces."""

    ZETA, GAMMA = 1.1, -0.1

    def __init__(self, base: FakeQuantizer, weight: torch.Tensor) -> None:
        if base.spec.granularity == "group":
            raise BenchError("AdaRound: group-wise weight quantizers are not supported (tensor or channel)")
        super().__init__(base.spec)
        self.scale, self.zero_point = base.scale.detach().clone(), base.zero_point.detach().clone()
        w = weight.detach().float()
        rest = w / self.scale - torch.floor(w / self.scale)
        self.alpha = nn.Parameter(-torch.log((self.ZETA - self.GAMMA) / (rest - self.GAMMA) - 1))
        self.hard = False

    def h(self) -> torch.Tensor:
        return ((self.ZETA - self.GAMMA) * torch.sigmoid(self.alpha) + self.GAMMA).clamp(0, 1)

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        s, z = self.scale.to(w.dtype), self.zero_point.to(w.dtype)
        up = (self.alpha >= 0).to(w.dtype) if self.hard else self.h()
        q = torch.clamp(torch.floor(w / s) + up + z, self.spec.qmin, self.spec.qmax)
        return (q - z) * s

    def plain(self) -> FakeQuantizer:
        q = FakeQuantizer(self.spec)
        q.scale, q.zero_point = self.scale.clone(), self.zero_point.clone()
        return q


def learn_scale(q: FakeQuantizer) -> nn.Parameter:
    q.scale = nn.Parameter(q.scale.detach().clone())
    return q.scale


def freeze_scale(q: FakeQuantizer) -> None:
    s = q.scale.detach().abs().clamp_min(torch.finfo(torch.float32).eps)
    del q.scale
    q.register_buffer("scale", s)
    q.__dict__["_assignments"] = q.__dict__.get("_assignments", 0) + 1  # invalidates caches


@dataclass
class UnitState:
    adaround: list[tuple[QuantLayer, AdaRoundQuantizer]] = field(default_factory=list)
    acts: list[FakeQuantizer] = field(default_factory=list)
    inputs: list[FakeQuantizer] = field(default_factory=list)  # Linear/Conv input quantizers
    scales: list[nn.Parameter] = field(default_factory=list)


def prepare(unit: nn.Module, s: ReconSettings) -> UnitState:
    """AdaRound on the unit's active weight quantizers, QDrop and learnable step sizes on its
    active activation quantizers."""
    st = UnitState()
    for layer in unit.modules():
        if isinstance(layer, QuantLayer):
            if layer.wq.active:
                ada = AdaRoundQuantizer(layer.wq, layer.weight)
                layer.wq = ada
                st.adaround.append((layer, ada))
            st.inputs.append(layer.aq)
    for q in unit.modules():
        if isinstance(q, FakeQuantizer) and q.active and hasattr(q, "drop_prob"):  # activation quantizers
            q.drop_prob = s.drop_prob
            st.acts.append(q)
            if s.learn_act_scale:
                st.scales.append(learn_scale(q))
    return st


@torch.no_grad()
def finish(st: UnitState, s: ReconSettings) -> None:
    """Hard-rounded weights with plain quantizers, frozen step sizes, QDrop off (except the
    layer inputs under `eval_dropout_bug`)."""
    for layer, ada in st.adaround:
        ada.hard = True
        layer.weight.copy_(ada.quantize(layer.weight.detach()).to(layer.weight.dtype))
        layer.wq = ada.plain()
    for q in st.acts:
        if isinstance(q.scale, nn.Parameter):
            freeze_scale(q)
        if not (s.eval_dropout_bug and any(q is i for i in st.inputs)):
            q.drop_prob = 1.0


def beta_at(t: int, s: ReconSettings) -> float:
    """The official LinearTempDecay: b_start during warm-up, then linear to b_end."""
    start = s.warmup * s.iters
    if t < start:
        return s.b_start
    rel = (t - start) / max(1e-12, s.iters - start)
    return s.b_end + (s.b_start - s.b_end) * max(0.0, 1 - rel)


def round_loss(st: UnitState, t: int, s: ReconSettings) -> torch.Tensor | float:
    if s.round_reg == 0 or t < s.warmup * s.iters or not st.adaround:
        return 0.0
    b = beta_at(t, s)
    return s.round_reg * sum((1 - (ada.h() - 0.5).abs().mul(2).pow(b)).sum() for _, ada in st.adaround)


def lp_loss(pred: Any, tgt: Any, p: float = 2.0, dim: int = 1) -> torch.Tensor:
    """|pred - tgt|^p summed over `dim` and averaged (tuples: summed over elements)."""
    if isinstance(pred, (tuple, list)):
        return sum(lp_loss(a, b, p, dim) for a, b in zip(pred, tgt) if isinstance(a, torch.Tensor))
    d = (pred - tgt).abs().pow(p)
    return d.sum(dim).mean() if d.dim() > 1 else d.mean()


def mix(q: Any, f: Any, prob: float) -> Any:
    """QDrop on a unit's inputs: elementwise the quantized input with probability `prob`."""
    if isinstance(q, torch.Tensor):
        if prob < 1.0 and q.is_floating_point() and isinstance(f, torch.Tensor) and f.shape == q.shape:
            return torch.where(torch.rand_like(q) < prob, q, f)
        return q
    if isinstance(q, (tuple, list)):
        return type(q)(mix(a, b, prob) for a, b in zip(q, f))
    if isinstance(q, dict):
        return {k: mix(v, f.get(k), prob) for k, v in q.items()}
    return q


LossFn = Callable[[Any, int], torch.Tensor]


def train(
    unit: nn.Module, q_calls: list[Call], fp_calls: list[Call], s: ReconSettings,
    loss_fn: LossFn | None = None, forward: Callable[[Call, int], Any] | None = None, iters: int | None = None,
) -> dict[str, float]:
    """Reconstruct one unit in place: prepare, `iters` (default `s.iters`) Adam steps on
    `loss_fn(output, image index)` (default: `lp_loss` against the FP output) plus the
    rounding regularizer, finish. `forward(call, image index)` runs the unit (default:
    unit(*args, **kwargs)).
    Returns the reconstruction loss (without the regularizer) of the first and last iteration
    (`first_loss`, `last_loss`: soft rounding, QDrop on), the share of AdaRound weights still
    between the two rounding choices before hard rounding (`undecided`; high when the budget
    is too short for the regularizer to settle them), and `final_loss`: the mean over all
    images after `finish` (hard rounding, QDrop off), the state that is evaluated, and
    `cached_mb`: the unit's captured inputs and targets, the memory reconstruction holds for
    one unit at a time (it grows with the images, and is the largest for the image encoder's
    first, highest-resolution units)."""
    iters = s.iters if iters is None else iters
    if iters <= 0 or not q_calls:
        return {}
    n = min(len(q_calls), len(fp_calls))
    loss_fn = loss_fn or (lambda out, i: lp_loss(out, fp_calls[i].out, s.p, s.loss_dim))
    forward = forward or (lambda c, _i: unit(*c.args, **c.kwargs))
    s = dataclasses.replace(s, iters=iters)
    st = prepare(unit, s)
    w_opt = torch.optim.Adam([a.alpha for _, a in st.adaround], lr=s.w_lr) if st.adaround else None
    a_opt = torch.optim.Adam(st.scales, lr=s.a_lr) if st.scales else None
    a_sched = torch.optim.lr_scheduler.CosineAnnealingLR(a_opt, T_max=iters, eta_min=0.0) if a_opt else None
    first = last = math.nan
    with torch.enable_grad():
        for t in range(1, iters + 1):
            i = int(torch.randint(0, n, (1,)))
            q, f = q_calls[i], fp_calls[i]
            call = Call(mix(q.args, f.args, s.drop_prob), mix(q.kwargs, f.kwargs, s.drop_prob))
            rec = loss_fn(forward(call, i), i)
            loss = rec + round_loss(st, t, s)
            for opt in (w_opt, a_opt):
                if opt is not None:
                    opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in (w_opt, a_opt):
                if opt is not None:
                    opt.step()
            if a_sched is not None:
                a_sched.step()
            with torch.no_grad():
                for p in st.scales:
                    p.abs_().clamp_(min=torch.finfo(torch.float32).eps)
            last = float(rec.detach())
            first = last if t == 1 else first
    with torch.no_grad():
        hs = [ada.h() for _, ada in st.adaround]
        soft = sum(int(((h > 0) & (h < 1)).sum()) for h in hs)
        undecided = soft / max(1, sum(h.numel() for h in hs))
        finish(st, s)
        final = sum(float(loss_fn(forward(Call(q_calls[i].args, q_calls[i].kwargs), i), i)) for i in range(n)) / n
    return {"first_loss": first, "last_loss": last, "final_loss": final, "undecided": undecided,
            "cached_mb": (tensor_bytes(q_calls) + tensor_bytes(fp_calls)) / 2**20}


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nest of calls, tuples, lists and dicts."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Call):
        return tensor_bytes(obj.args) + tensor_bytes(obj.kwargs) + tensor_bytes(obj.out)
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (tuple, list)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


@torch.no_grad()
def unit_error(unit: nn.Module, q_calls: list[Call], fp_calls: list[Call], p: float = 2.0, dim: int = 1) -> float:
    """Mean `lp_loss` of the unit on its quantized inputs against the FP outputs."""
    errs = [float(lp_loss(unit(*q.args, **q.kwargs), f.out, p, dim)) for q, f in zip(q_calls, fp_calls)]
    return sum(errs) / max(1, len(errs))


class frozen_params:
    """Context: every parameter of the given modules has requires_grad False (restored after)."""

    def __init__(self, *modules: nn.Module) -> None:
        self.params = [p for m in modules for p in m.parameters()]

    def __enter__(self) -> frozen_params:
        self.flags = [p.requires_grad for p in self.params]
        for p in self.params:
            p.requires_grad_(False)
        return self

    def __exit__(self, *exc) -> None:
        for p, f in zip(self.params, self.flags):
            p.requires_grad_(f)


# -- units -------------------------------------------------------------------------------------
def is_block(name: str, m: nn.Module) -> bool:
    """A module the official code reconstructs as one `QuantizedBlock` (PTQ4SAM's
    ptq4sam/model/quant_model.py; `recon_model` in ptq4sam/solver/test_quant.py takes every
    QuantizedLayer/QuantizedBlock child): an attention, an MLP (SAM2's `MLP`, SAM's `MLPBlock`:
    `QuantMLPBlock`), SAM's ViT neck as a whole (`QuantNeck`: conv, LayerNorm2d, conv,
    LayerNorm2d; SAM2's FPN neck is not a Sequential), or a quantized Linear/Conv."""
    from sam2.modeling.sam2_utils import MLP
    from segment_anything.modeling.common import MLPBlock

    sam_neck = name == "image_encoder.neck" and isinstance(m, nn.Sequential)
    return isinstance(m, (QuantAttentionMixin, MLP, MLPBlock, QuantLayer)) or sam_neck


def block_units(model: nn.Module, components: tuple[str, ...], images: list[CalibImage]) -> list[str]:
    """Reconstruction units at the official QuantizedBlock/QuantizedLayer granularity
    (`is_block`) holding active quantizers, within `components`. Sorted in the order they
    first run on the image path (one pass over the first image; registration order differs,
    e.g. a Hiera block's `proj` shortcut runs before its `attn` but is registered after its
    `mlp`). On SAM's ViT: each block's `attn` and `mlp`, then the neck; in the decoder each
    layer's attentions and MLP, then `final_attn_token_to_image`."""

    def quantized(m: nn.Module) -> bool:
        return any(isinstance(q, FakeQuantizer) and q.active for q in m.modules())

    names: list[str] = []
    for name, m in model.named_modules():
        if not name or component_of(name) not in components or any(name.startswith(u + ".") for u in names):
            continue
        if is_block(name, m) and quantized(m):
            names.append(name)
    first_call: dict[str, int] = {}

    def seen(name: str):
        def hook(*_) -> None:  # a pre-hook returning a value would replace the inputs
            first_call.setdefault(name, len(first_call))
        return hook

    hooks = [model.get_submodule(n).register_forward_pre_hook(seen(n)) for n in names]
    try:
        run_image_path(model, images[:1])
    finally:
        for h in hooks:
            h.remove()
    return sorted(names, key=lambda n: (n not in first_call, first_call.get(n, 0)))  # stable for the rest


def reconstruct_block(model: nn.Module, fp_model: nn.Module, name: str, images: list[CalibImage],
                      s: ReconSettings, iters: int | None = None) -> dict[str, float]:
    """Capture a unit's quantized and FP calls on the images and reconstruct it (`train`)."""
    unit = model.get_submodule(name)
    q_calls = capture(model, unit, images)
    fp_calls = capture(fp_model, fp_model.get_submodule(name), images, outputs=True)
    return train(unit, q_calls, fp_calls, s, iters=iters)


def recon_info(results: dict[str, dict[str, float]]) -> dict:
    """A method's `info["recon"]`: per unit, `train`'s figures (one map each)."""
    keys = ("last_loss", "final_loss", "undecided", "cached_mb")
    return {"units": len(results), **{k: {u: r.get(k) for u, r in results.items()} for k in keys}}
