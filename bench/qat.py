"""The quantization-aware training loop shared by `lsq`, `pact` and `qsam2`.

A QAT method subclasses `QATMethod` and writes `prepare` (and maybe `regularizer`); its
`apply` is `quantize_and_train(model, calib, cfg, prepare, regularizer)`, which runs:

    samples = model_samples(calib, model, cfg.clip_frames)
    teacher = teacher_outputs(model, samples)       # the FP model, before quantizing it
    prepare(model)                                  # the method: wrap, quantizers, calibration
    info = train(model, samples, teacher, cfg)      # distillation (+ GT loss) on the samples
    freeze_quantizers(model)                        # learned quantizers -> plain ones

Training data are the cell's calibration data (`CalibData`, the same for every method):
  - images: each prompted by all of its GT boxes at once (one decoder batch), single-mask
    output, as the `instseg` task prompts them;
  - video: windows of `clip_frames` consecutive frames; the window's first frame gets every
    object's GT mask as a mask prompt (as `vos` does on frame 0), the others are tracked from
    memory. Clips with per-frame labels are cut into consecutive windows (objects: those
    present at the window's first frame); without labels only the window at frame 0 is used.
The student runs the same code as evaluation, SAM2Base's `_track_step` (see
bench.sam2_train), with the model in eval mode (no dropout or drop-path, eval-time memory
selection), so with its quantizers off it computes exactly the teacher's outputs.
A SAM (v1) model has images only: its samples are made and run as its predictor makes and
runs them (bench.sam_predictor: `sam_input`, `sam_forward`; longest side resized and padded,
single-mask output; the feature term on the image embedding; no object-score head, so the
object terms are constant).

Loss per sample: `distill_weight` x the mask-logit distillation (`distill="kl"`: per-pixel
Bernoulli KL(teacher || student) of the low-resolution mask logits, all masks of the output;
"mse": MSE of the logits) + `aux_weight` x (MSE of the predicted IoUs + KL of the object-score
logits) + `feature_weight` x the normalized MSE of the image encoder's backbone features (each
FPN level the decoder reads, ||s - t||^2 / ||t||^2, averaged over levels) + `seg_weight` x
SAM2's segmentation loss where ground truth exists (bench.sam2_train.mask_losses, after SAM2's
`training/loss_fns.py`: focal x 20 or BCE, plus dice, IoU L1 and object BCE; on the best of
multiple masks). Tracked frames of a window are averaged. The FP teacher's outputs are
computed once, before training, and kept on the CPU.

Budget: `steps` optimizer steps (default 600), chosen against 200 on the held-out dev set
(`sweeps/qat-dev.yaml`; its records hold the figures). The papers train for epochs on SA-1B /
SA-V subsets: real models need far larger budgets.

Optimization: AdamW (fused kernel where available); model weights at `lr` with
`weight_decay`; quantizer parameters (LSQ step sizes, PACT clipping levels in activation
units, LSC's dimensionless factors) without weight decay at a relative rate: a parameter
tensor's learning rate is `lr_quant` x its initial mean magnitude (rounded to a power of 2), so
every kind moves by about the same fraction per step (Adam's step is about lr whatever the
gradient's scale; the papers' single SGD rate does not carry over). Linear warm-up over
`warmup_frac` of the steps, then cosine decay to 0 (`schedule="cosine"`) or constant;
gradient-norm clipping (`grad_clip`) over every trained parameter at once
(`grad_clip_scope: joint`) or over the weights and the quantizer parameters apart (`separate`,
so a large weight gradient does not shrink the quantizers' step); `batch_size` samples per step (gradients accumulated),
drawn in seeded random order without replacement per epoch (`seed`, by default the cell's);
`video_share` is the share of video windows among the samples drawn: by default 0.5, so the
video path (J&F) and the image path (mIoU) get equal training, whatever the calibration data's
own mix (32 images and 8 windows of 4 frames: 20% video); `null` draws each sample equally
often (see `sample_order`). Chosen on the held-out dev set (`sweeps/qat-dev.yaml`: synthetic
sets of data seed 1, 0.5 against the data's own mix), not on the test split.

Memory (`recompute`, a cost setting: results are the same bit for bit, except that above
2^24 probabilities a recomputed attention runs in blocks of query rows, and above
TRAIN_MLP_ELEMENTS hidden values an image-encoder MLP in chunks of rows, whose gradients are
summed block by block: bench.quant.attention, `chunked_mlp`): "blocks" keeps only
the input of each image-encoder block (and SAM2 memory-attention layer, mask decoder and
memory encoder, and each tracked frame of a video window) for backward and recomputes it
there; "attention"
recomputes only the quantized attentions' probabilities (the image encoder's, the decoder's
and memory attention's, which in a video window attends over every earlier frame); "all"
both; "off" neither; "auto" (default) is "all" at the real models' resolution (input >=
512 px) and "off" below, where activations are small and recomputing costs time. The learned quantizers keep only
their input for backward (bench.quant.learned), the samples keep their masks as bool, and the
teacher's outputs are detached. Figures: `python -m bench.benchmarks.memory` (README).

CPU, or CUDA with bf16 autocast (quantizers compute in float32). On CPU, bit-identical for a
given seed and thread count; on CUDA up to the nondeterminism of some kernels (e.g. atomic
adds in backward).
"""

from __future__ import annotations

import contextlib
import math
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import increment_version
from tqdm import tqdm

from bench import BenchError
from bench.calib import CalibData
from bench.method import Method, QuantConfig
from bench.models import real_resolution
from bench.peak import map_large_allocations
from bench.qat_samples import ClipSample, ImageSample, Sample, model_samples
from bench.quant.attention import QuantAttentionMixin
from bench.quant.fake import FakeQuantizer
from bench.quant.learned import freeze_quantizers, learned_quantizers
from bench.quant.modules import QuantLayer, QuantLinear
from bench.quant.recompute import recomputed
from bench.sam2_train import features, mask_losses, track
from bench.sam_predictor import is_sam, sam_forward

SCHEDULES = ("cosine", "constant")
DISTILL = ("kl", "mse")
SEG_LOSSES = ("focal", "bce")
CLIP_SCOPES = ("joint", "separate")
RECOMPUTE = ("auto", "off", "attention", "blocks", "all")
# Hidden values per call above which training runs an image-encoder block's MLP in chunks of
# token rows (2^22 fp32 values = 16 MiB; SAM2.1's first Hiera stage makes 25M per frame).
TRAIN_MLP_ELEMENTS = 2**22


@dataclass(frozen=True)
class QATConfig(QuantConfig):
    """Training budget and losses shared by the QAT methods (see the module docstring)."""

    # cost, not method (`seed` None is the cell's; `report_loss` only measures)
    budgets = QuantConfig.budgets | {"steps", "batch_size", "lr", "lr_quant", "clip_frames", "report_loss", "seed",
                                     "recompute"}

    steps: int = 600  # chosen on the dev set, see the module docstring
    batch_size: int = 1
    lr: float = 1e-5  # model weights (AdamW)
    lr_quant: float = 1e-2  # quantizer parameters, relative to their magnitude (see the module docstring)
    weight_decay: float = 0.0
    warmup_frac: float = 0.05
    schedule: str = "cosine"
    grad_clip: float = 1.0  # 0: off
    grad_clip_scope: str = "joint"  # one norm over every parameter, or weights and quantizer parameters apart
    clip_frames: int = 4
    distill: str = "kl"
    distill_weight: float = 1.0
    aux_weight: float = 1.0
    feature_weight: float = 1.0
    seg_weight: float = 1.0
    seg_loss: str = "focal"
    train_weights: bool = True
    report_loss: bool = True  # loss over all samples before and after training, in `info`
    seed: int | None = None  # None: the cell's seed (bench.run seeds torch with it before `apply`)
    video_share: float | None = 0.5  # share of video windows among the samples drawn; None: as they come
    recompute: str = "auto"  # memory, not results: see `recomputation`

    def __post_init__(self) -> None:
        super().__post_init__()
        _integer(self, "steps", 0)
        _integer(self, "batch_size", 1)
        _integer(self, "clip_frames", 2)
        if self.seed is not None:
            _integer(self, "seed", 0)
        if self.video_share is not None:
            _number(self, "video_share", 0.0)
            if self.video_share > 1:
                raise BenchError(f"video_share: expected a number in [0, 1] or null, got {self.video_share!r}")
        for f in ("lr", "lr_quant", "weight_decay", "grad_clip", "distill_weight", "aux_weight",
                  "feature_weight", "seg_weight"):
            _number(self, f, 0.0)
        _number(self, "warmup_frac", 0.0, 1.0)
        _choice(self, "schedule", SCHEDULES)
        _choice(self, "distill", DISTILL)
        _choice(self, "seg_loss", SEG_LOSSES)
        _choice(self, "grad_clip_scope", CLIP_SCOPES)
        _choice(self, "recompute", RECOMPUTE)
        for f in ("train_weights", "report_loss"):
            if not isinstance(getattr(self, f), bool):
                raise BenchError(f"{f}: expected true or false, got {getattr(self, f)!r}")


def _integer(cfg, field: str, minimum: int) -> None:
    v = getattr(cfg, field)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise BenchError(f"{field}: expected an integer >= {minimum}, got {v!r}")


def _number(cfg, field: str, minimum: float, below: float | None = None) -> None:
    v = getattr(cfg, field)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < minimum:
        raise BenchError(f"{field}: expected a number >= {minimum}, got {v!r}")
    if below is not None and v >= below:
        raise BenchError(f"{field}: expected a number in [{minimum}, {below}), got {v!r}")


def _choice(cfg, field: str, allowed: tuple[str, ...]) -> None:
    v = getattr(cfg, field)
    if v not in allowed:
        raise BenchError(f"{field}: expected one of {', '.join(allowed)}, got {v!r}")


# -- forward passes ------------------------------------------------------------------------------
def _image_forward(model: nn.Module, s: ImageSample) -> dict:
    if is_sam(model):
        return sam_forward(model, s.image, s.boxes)
    feats, pos, sizes = features(model, s.image)
    k = len(s.boxes)
    points = {"point_coords": s.boxes, "point_labels": torch.tensor([[2, 3]] * k, dtype=torch.int32,
                                                                       device=s.boxes.device)}
    feats_k = [f.expand(-1, k, -1) for f in feats]
    pos_k = [p.expand(-1, k, -1) for p in pos]
    out = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    _, sam_out, _, _ = model._track_step(0, True, feats_k, pos_k, sizes, points, None, out, 1, False, None)
    multi, _, ious, _, _, _, obj = sam_out
    return {"feats": feats, "heads": [(multi, ious, obj)]}


def _clip_forward(model: nn.Module, s: ClipSample) -> dict:
    feats, pos, sizes = features(model, s.frames)
    k = len(s.prompts)
    out = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    heads = []
    step = recomputed(track) if getattr(model, "recompute_frames", False) else track
    for t in range(len(s.frames)):
        prompt = s.prompts if t == 0 else None
        current, multi, ious, obj = step(model, t, t == 0, feats, pos, sizes, k, out, len(s.frames),
                                         mask_inputs=prompt)
        out["cond_frame_outputs" if t == 0 else "non_cond_frame_outputs"][t] = current
        if t > 0:
            heads.append((multi, ious, obj))
    return {"feats": feats, "heads": heads}


def forward(model: nn.Module, sample: Sample) -> dict:
    """{"feats": backbone feature levels, "heads": [(mask logits (k, M, h, w), IoUs (k, M),
    object-score logits (k, 1)) per scored output]}; differentiable."""
    return _image_forward(model, sample) if isinstance(sample, ImageSample) else _clip_forward(model, sample)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _detach(out: dict, device: str | torch.device = "cpu") -> dict:
    return {
        "feats": [f.detach().float().to(device) for f in out["feats"]],
        "heads": [tuple(t.detach().float().to(device) for t in h) for h in out["heads"]],
    }


@torch.no_grad()
def teacher_outputs(model: nn.Module, samples: list[Sample]) -> list[dict]:
    """The FP model's outputs on every sample, computed once and kept on the CPU (call it
    before the model is quantized)."""
    device = _device(model)
    was_training = model.training
    model.eval()
    out = []
    with _autocast(device):
        for s in samples:
            out.append(_detach(forward(model, s.to(device))))
    model.train(was_training)
    return out


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# -- losses --------------------------------------------------------------------------------------
def _bernoulli_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean per-element KL(sigmoid(teacher) || sigmoid(student)) of two logit tensors."""
    p = teacher.sigmoid()
    return (F.binary_cross_entropy_with_logits(student, p) - F.binary_cross_entropy_with_logits(teacher, p))


def loss_terms(out: dict, ref: dict, sample: Sample, cfg: QATConfig) -> dict[str, torch.Tensor]:
    """The loss terms of one sample (unweighted), student `out` against teacher `ref`."""
    zero = out["heads"][0][0].new_zeros((), dtype=torch.float32)
    distill, aux, seg = zero, zero, zero
    targets = None
    if isinstance(sample, ImageSample):
        targets = None if sample.masks is None else [sample.masks]
    elif sample.targets is not None:
        targets = list(sample.targets[1:])
    for i, ((logits, ious, obj), (t_logits, t_ious, t_obj)) in enumerate(zip(out["heads"], ref["heads"])):
        logits, ious, obj = logits.float(), ious.float(), obj.float()
        if cfg.distill == "kl":
            distill = distill + _bernoulli_kl(logits, t_logits)
        else:
            distill = distill + F.mse_loss(logits, t_logits)
        aux = aux + F.mse_loss(ious, t_ious) + _bernoulli_kl(obj, t_obj)
        if targets is not None and cfg.seg_weight > 0:
            seg = seg + mask_losses(logits, ious, obj, targets[i], cfg.seg_loss)
    n = len(out["heads"])
    feature = zero
    if cfg.feature_weight > 0:
        levels = [((s.float() - t).square().mean() / t.square().mean().clamp_min(1e-12))
                  for s, t in zip(out["feats"], ref["feats"])]
        feature = torch.stack(levels).mean()
    return {"distill": distill / n, "aux": aux / n, "feature": feature, "seg": seg / n}


def total_loss(terms: dict[str, torch.Tensor], cfg: QATConfig) -> torch.Tensor:
    return (cfg.distill_weight * terms["distill"] + cfg.aux_weight * terms["aux"]
            + cfg.feature_weight * terms["feature"] + cfg.seg_weight * terms["seg"])


def _ref_to(ref: dict, device: torch.device) -> dict:
    return _detach(ref, device) if device.type != "cpu" else ref


@torch.no_grad()
def evaluate_loss(model: nn.Module, samples: list[Sample], teacher: list[dict], cfg: QATConfig) -> dict[str, float]:
    """Mean loss terms and total over all samples (no training side effects)."""
    device = _device(model)
    sums: dict[str, float] = {}
    with _autocast(device):
        for sample, ref in zip(samples, teacher):
            s = sample.to(device)
            terms = loss_terms(forward(model, s), _ref_to(ref, device), s, cfg)
            terms["total"] = total_loss(terms, cfg)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v)
    return {k: v / len(samples) for k, v in sums.items()}


# -- the loop ------------------------------------------------------------------------------------
def sample_order(samples: list[Sample], share: float | None, gen: torch.Generator) -> Iterator[int]:
    """Indices of the samples to train on, endlessly. `share` None: seeded permutations of all
    samples, one after another (each sample equally often, so the mix is the data's: 32
    images and 8 video windows give 20% video). A share: each draw is a video window with
    that probability, else an image, each kind taken from its own seeded permutations (the
    other kind when one has none)."""
    if share is None:
        while True:
            yield from torch.randperm(len(samples), generator=gen).tolist()
    kinds = ([i for i, s in enumerate(samples) if isinstance(s, ImageSample)],
             [i for i, s in enumerate(samples) if isinstance(s, ClipSample)])
    queues: tuple[list[int], list[int]] = ([], [])
    while True:
        k = int(float(torch.rand((), generator=gen)) < share)
        if not kinds[k]:
            k = 1 - k
        if not queues[k]:
            queues[k].extend(kinds[k][j] for j in torch.randperm(len(kinds[k]), generator=gen).tolist())
        yield queues[k].pop(0)


def lr_factor(step: int, cfg: QATConfig) -> float:
    warmup = int(round(cfg.warmup_frac * cfg.steps))
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, cfg.steps - warmup)))


def _quantizer_groups(params: list[nn.Parameter], lr_quant: float) -> list[dict]:
    """Quantizer parameters get the relative rate `lr_quant`: each tensor's Adam learning rate
    is lr_quant x its current mean magnitude, rounded to a power of 2 (one group per power)."""
    buckets: dict[int, list[nn.Parameter]] = {}
    for p in params:
        mag = float(p.detach().abs().mean()) if p.numel() else 1.0
        buckets.setdefault(round(math.log2(max(mag, 1e-12))), []).append(p)
    return [{"params": ps, "lr": lr_quant * 2.0**k, "weight_decay": 0.0, "base_lr": lr_quant * 2.0**k}
            for k, ps in sorted(buckets.items())]


def make_optimizer(model: nn.Module, cfg: QATConfig) -> tuple[torch.optim.Optimizer | None, list[list[nn.Parameter]]]:
    """AdamW over the quantizer parameters and (`train_weights`) the weights, and the sets of
    parameters whose gradient norm is clipped together (`grad_clip_scope`)."""
    quant = [p for q in learned_quantizers(model).values() for p in q.parameters(recurse=False)]
    ids = {id(p) for p in quant}
    weights = [p for p in model.parameters() if id(p) not in ids]
    for p in weights:
        p.requires_grad_(cfg.train_weights)
    for p in quant:
        p.requires_grad_(True)
    groups = _quantizer_groups(quant, cfg.lr_quant)
    if cfg.train_weights:
        groups.append({"params": weights, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "base_lr": cfg.lr})
    groups = [g for g in groups if g["params"]]
    params = [p for g in groups for p in g["params"]]
    trained = weights if cfg.train_weights else []
    clip_sets = [params] if cfg.grad_clip_scope == "joint" else [s for s in (quant, trained) if s]
    if not groups:
        return None, clip_sets
    try:  # the fused kernel: one pass over all parameters (hundreds of small quantizer ones)
        return torch.optim.AdamW(groups, fused=True), clip_sets
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups), clip_sets


def _peak_memory(device: torch.device) -> dict[str, float | str]:
    if device.type == "cuda":
        return {"peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20, "peak_mem_kind": "cuda_max_allocated"}
    return {"peak_mem_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak_mem_kind": "cpu_max_rss"}


def recompute_mode(model: nn.Module, cfg: QATConfig) -> str:
    """`cfg.recompute` with "auto" resolved by the model's input size."""
    if cfg.recompute != "auto":
        return cfg.recompute
    return "all" if real_resolution(model) else "off"


def checkpointed_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks `recompute: blocks` recomputes: the image encoder's transformer blocks (SAM's
    ViT, SAM2's Hiera), SAM2's memory-attention layers (in a video window they attend over
    every earlier frame's memory), its mask decoder and its memory encoder (so that a tracked
    frame, recomputed as a whole, holds the inside of one of them at a time in backward)."""
    if is_sam(model):
        return list(model.image_encoder.blocks)
    return [*model.image_encoder.trunk.blocks, *model.memory_attention.layers, model.sam_mask_decoder,
            model.memory_encoder]


def chunked_mlp(mlp: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """`mlp.forward` for training: above TRAIN_MLP_ELEMENTS hidden values, in chunks of token
    rows (the MLP acts on each row alone), each recomputed on its own, so backward holds one
    chunk's hidden activations. The values are the same; the gradients of the weights and of
    the quantizers' parameters are summed chunk by chunk, and LSQ's gradient scale counts the
    whole input (`covers`). A quantizer with a statistic of its whole tensor (Q-SAM2's LSC:
    `whole_statistic`) moves it once, before the chunks: a weight's from the weight, the first
    layer's input's from the input, a later layer's input's from a pass over the chunks
    without gradients; each chunk then quantizes with that value (`given`)."""
    forward = mlp.forward
    layers = [m for m in mlp.modules() if isinstance(m, (nn.Linear, QuantLinear))]
    hidden = max(m.out_features for m in layers)
    quant = [m for m in layers if isinstance(m, QuantLinear)]
    acts = [(m.aq, m.in_features) for m in quant]
    active = [q for q in mlp.modules() if isinstance(q, FakeQuantizer) and q.active]

    def chunk(x: torch.Tensor, rows: int) -> torch.Tensor:
        for q, k in acts:
            q.covers = rows * k
        try:
            return forward(x)
        finally:
            for q, _ in acts:
                del q.covers

    core = recomputed(chunk)

    def inputs_of(layer: nn.Module, chunks: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        seen = []
        hook = layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            with torch.no_grad():
                for c in chunks:
                    forward(c)
                    yield seen.pop()
        finally:
            hook.remove()

    def give(chunks: list[torch.Tensor]) -> list[FakeQuantizer]:
        given = []
        for i, layer in enumerate(quant):
            for q, blocks in ((layer.wq, lambda w=layer.weight: [w]),
                              (layer.aq, (lambda: chunks) if i == 0 else (lambda m=layer: inputs_of(m, chunks)))):
                if q.active and not q.elementwise:
                    q.given = q.whole_statistic(blocks)
                    given.append(q)
        return given

    def run(x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        splittable = all(q.elementwise or getattr(q, "whole_statistic", None) for q in active)
        if not (torch.is_grad_enabled() and splittable and rows * hidden > TRAIN_MLP_ELEMENTS):
            return forward(x)
        step = max(1, TRAIN_MLP_ELEMENTS // hidden)
        flat = x.reshape(rows, x.shape[-1])
        chunks = [flat[r : r + step] for r in range(0, rows, step)]
        given = give(chunks)
        try:
            out = torch.cat([core(c, rows) for c in chunks])
        finally:
            for q in given:
                q.given = None
        return out.reshape(*x.shape[:-1], out.shape[-1])

    return run


@contextlib.contextmanager
def recomputation(model: nn.Module, mode: str) -> Iterator[None]:
    """Within the block, training steps keep fewer activations for backward and make them
    again there (bench.quant.recompute; the gradients are unchanged): "attention", every
    quantized attention's probabilities; "blocks", everything inside each of
    `checkpointed_blocks` (only the blocks' inputs are kept) and inside each tracked frame of a
    SAM2 video window (decoder, memory attention, memory encoder: a frame reads only earlier
    frames' memory, so it is made again the same), with the image encoder's MLPs in chunks of
    rows (`chunked_mlp`); "all", both (inside a block being recomputed, its attention
    probabilities are made a third time rather than held); "off", nothing."""
    attentions = [m for m in model.modules() if isinstance(m, QuantAttentionMixin)] \
        if mode in ("attention", "all") else []
    blocks = checkpointed_blocks(model) if mode in ("blocks", "all") else []
    encoder = model.image_encoder.blocks if is_sam(model) else model.image_encoder.trunk.blocks
    mlps = [b.mlp for b in encoder] if blocks else []
    frames = bool(blocks) and not is_sam(model)
    for m in attentions:
        m.recompute = True
    for b in blocks:
        b.forward = recomputed(b.forward)
    for m in mlps:
        m.forward = chunked_mlp(m)
    if frames:
        model.recompute_frames = True
    try:
        yield
    finally:
        for m in attentions:
            del m.recompute
        for b in [*blocks, *mlps]:
            del b.forward
        if frames:
            del model.recompute_frames


def train_step(
    model: nn.Module,
    batch: list[tuple[Sample, dict]],
    cfg: QATConfig,
    opt: torch.optim.Optimizer | None,
    clip_sets: list[list[nn.Parameter]],
    regularizer: Callable[[], torch.Tensor] | None = None,
    quantizers: list | None = None,
) -> float:
    """One optimizer step on `batch` (sample, teacher output) pairs; returns the loss.
    `quantizers`: the model's learned quantizers (found when not given)."""
    device = _device(model)
    if opt:
        opt.zero_grad(set_to_none=True)
    step_loss = 0.0
    for sample, ref in batch:
        s = sample.to(device)
        with _autocast(device):
            loss = total_loss(loss_terms(forward(model, s), _ref_to(ref, device), s, cfg), cfg)
        (loss / len(batch)).backward()
        step_loss += float(loss.detach()) / len(batch)
    if regularizer is not None:
        reg = regularizer()
        reg.backward()
        step_loss += float(reg.detach())
    if opt:
        if cfg.grad_clip > 0:
            for params in clip_sets:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        if opt.defaults.get("fused"):  # the fused kernel does not count its in-place updates:
            increment_version([p for params in clip_sets for p in params])  # caches keyed on versions see them
    for q in learned_quantizers(model).values() if quantizers is None else quantizers:
        q.post_step()
    return step_loss


def train(
    model: nn.Module,
    samples: list[Sample],
    teacher: list[dict],
    cfg: QATConfig,
    regularizer: Callable[[], torch.Tensor] | None = None,
    desc: str = "qat",
) -> dict:
    """Train `model` (quantized, in place) for `cfg.steps` steps; returns figures for the
    record: steps, time, losses before/after (`report_loss`), peak memory."""
    device = _device(model)
    seed = torch.initial_seed() if cfg.seed is None else cfg.seed
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    info: dict = {"qat_steps": cfg.steps, "qat_samples": len(samples)}
    quantizers = list(learned_quantizers(model).values())
    plain = [m for m in model.modules() if isinstance(m, QuantLayer) and type(m.wq) is FakeQuantizer and m.wq.active]
    model.eval()  # the evaluation code path: no dropout, eval-time memory selection
    if cfg.report_loss:
        info["loss_before"] = evaluate_loss(model, samples, teacher, cfg)
    grad_state = {id(p): p.requires_grad for p in model.parameters()}
    opt, clip_sets = make_optimizer(model, cfg)
    if opt is None and cfg.steps > 0:
        raise BenchError(f"steps: {cfg.steps} training steps but nothing to train (no learned quantizer "
                         "parameters and train_weights: false); use steps: 0")
    for q in quantizers:
        q.train()  # LSC updates its EMA statistics in training mode
    order = sample_order(samples, cfg.video_share, torch.Generator().manual_seed(seed))
    info["recompute"] = recompute_mode(model, cfg)
    map_large_allocations(model)  # freed activations go back to the system: the resident peak is what is live
    t0 = time.perf_counter()
    ema = None
    bar = tqdm(range(cfg.steps), desc=desc, file=sys.stderr, mininterval=5, disable=cfg.steps == 0)
    with recomputation(model, info["recompute"]):
        for step in bar:
            for g in opt.param_groups if opt else ():
                g["lr"] = g["base_lr"] * lr_factor(step, cfg)
            batch = [next(order) for _ in range(cfg.batch_size)]
            step_loss = train_step(model, [(samples[i], teacher[i]) for i in batch], cfg, opt, clip_sets,
                                   regularizer, quantizers)
            for m in plain:  # plain weight quantizers follow the trained weights (min/max ranges)
                m.calibrate_weight()
            ema = step_loss if ema is None else 0.9 * ema + 0.1 * step_loss
            bar.set_postfix(loss=f"{ema:.4f}", refresh=False)
    info["qat_s"] = time.perf_counter() - t0
    info["qat_step_s"] = info["qat_s"] / max(1, cfg.steps)
    if opt:
        opt.zero_grad(set_to_none=True)  # no weight-sized gradients kept through evaluation
    for q in quantizers:
        q.eval()
    for p in model.parameters():
        p.requires_grad_(grad_state.get(id(p), True))
    if cfg.report_loss:
        info["loss_after"] = evaluate_loss(model, samples, teacher, cfg)
    info.update(_peak_memory(device))
    return info


def quantize_and_train(
    model: nn.Module,
    calib: CalibData | None,
    cfg: QATConfig,
    prepare: Callable[[nn.Module], None],
    regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
    desc: str = "qat",
) -> dict:
    """The whole QAT recipe of a method: cache the FP teacher's outputs (only when training),
    `prepare(model)` (wrap, initialize quantizers, calibrate), train, then replace learned
    quantizers by plain ones (`freeze_quantizers`). Returns the info for the record."""
    info: dict = {}
    samples, teacher = None, None
    if cfg.steps > 0:
        t = time.perf_counter()
        samples = model_samples(calib, model, cfg.clip_frames)
        teacher = teacher_outputs(model, samples)
        info["teacher_s"] = time.perf_counter() - t
    t = time.perf_counter()
    prepare(model)
    info["prepare_s"] = time.perf_counter() - t
    if samples is not None:
        reg = (lambda: regularizer(model)) if regularizer is not None else None
        info.update(train(model, samples, teacher, cfg, reg, desc))
    info["frozen_quantizers"] = freeze_quantizers(model)
    return info


class QATMethod(Method):
    """A method trained by this loop. `prepare(model, calib)` wraps the model, installs the
    method's quantizers and calibrates them; `regularizer()` is an extra loss term on the
    model (None: none), e.g. PACT's L2 on its clipping levels."""

    Config = QATConfig

    def needs_data(self) -> bool:
        return True

    def prepare(self, model: nn.Module, calib: CalibData | None) -> None:
        raise NotImplementedError

    def regularizer(self) -> Callable[[nn.Module], torch.Tensor] | None:
        return None

    def apply(self, model: nn.Module, calib: CalibData | None) -> nn.Module:
        self.info.update(quantize_and_train(model, calib, self.config, lambda m: self.prepare(m, calib),
                                            self.regularizer(), desc=f"{self.name} {self.variant}".strip()))
        return model
