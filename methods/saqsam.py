"""`saqsam`: SAQ-SAM (arXiv 2503.06515), as its official code does it, on SAM2 and SAM.

The official code is a fork of PTQ4SAM's; this method runs the same pipeline (bench/ptq.py:
BIG, AGQ, observers, block reconstruction) with its own settings. Switches `pcc`, `recon`,
`par`:

- PCC, Perceptual-Consistency Clipping: for every mask-decoder attention, the ranges of its
  q_proj and k_proj inputs and of its q and k (the projections' outputs) are chosen, one
  after the other and in `pcc_rounds` = 2 passes over the first calibration image, among
  [quantile(1 - p), quantile(p)] of the tensor for the 29 p of `PCC_PERCENTILES`, by the
  overlap of the attention's focus masks M_A = 1{A > theta * max_row(A)} (theta 0.5) with
  the full-precision model's: minimize 1 - |M ∩ M_hat| / |M ∪ M_hat| (per batch and head,
  averaged). The search runs inside the forward pass (a pre-hook per attention, as the
  official code), so each attention sees its inputs with the ranges already chosen upstream;
  the reference maps come from a full-precision pass. These four quantizers are then left
  out of the statistics pass.
- PAR, Prompt-Aware Reconstruction (with `recon`): the image encoder is reconstructed stage
  by stage, a stage being the Hiera blocks up to and including a global-attention block
  (the blocks after the last one form the last stage). The loss is |keys_hat - keys|^2
  (summed over channels, averaged), keys being the image-token output of the FP two-way
  transformer with the image's box prompts (<= 16 per calibration image), fed the stage's
  quantized output continued through the FP rest of the trunk, the FP neck and the FP
  `no_mem_embed` (SAM2's trunk is hierarchical: a stage's output reaches the decoder only
  through the later stages), against the same with the FP stage (which FP model: see the
  targets below). Mask-decoder layers
  (`transformer.layers.i`) use beta * (0.01 |q_hat - q|^2 + |k_hat - k|^2) + alpha * PAR,
  PAR comparing the quantized decoder's token outputs with the FP decoder's on the
  quantized image embedding, alpha = beta = 1. `final_attn_token_to_image` gets plain block
  reconstruction with `final_iters_scale` (5) times the iterations (the official 10,000);
  other quantized layers (neck, conv_s0/s1, the object-score head) plain block
  reconstruction. 2,000 iterations per unit; step sizes Adam lr 2e-3 cosine, rounding lr
  1e-3; activations observed with the averaged Lp (p 2.4) observer; the AdaRound rounding
  regularizer off (`round_reg: 0`, as the official loss never adds it).
- PAR's targets (`par_targets: official`, the default), as the official code builds them
  (`ptq4sam/solver/test_quant_SAQ_m.py`: `recon_model`; `ptq4sam/solver/recon.py`:
  `reconstruction_IE`, `reconstruction_MD`, `reconstruction_blk`):
  1. a decoder layer's FP inputs and q/k targets come from the FP decoder fed the quantized
     model's decoder inputs (its image embedding): `reconstruction_MD` takes the quantized
     model's embedding (`get_q_image_embedding`) and feeds it to both the quantized and the
     FP layer (`save_inp_oup_data_MD`) and to the FP PAR target (`save_dc_Qout_list`);
  2. a unit runs in full precision until its turn: `recon_model` switches every quantizer
     off (`disable_all`) and each unit's on when it is reconstructed (`enable_quantization`),
     so inside the PAR term (`get_dc_Qout`, the quantized model's decoder) the decoder layers
     after the one being reconstructed and `final_attn_token_to_image` are FP;
  3. after each image-encoder unit (stage, neck) is reconstructed, `_recon_model_IE` (in
     `recon_model`) puts a copy of it into the FP model, so a later stage's FP input and its
     PAR target (`save_inp_oup_data_en`, `save_CIT_list` on the FP model) come from the
     quantized earlier stages (the stage's FP input is then its quantized input, and QDrop's
     mix changes nothing), and so do the FP inputs and targets of the neck and of
     `final_attn_token_to_image` (`reconstruction_blk` runs the FP model's image encoder).
     Decoder units stay FP in the FP model (`_recon_model_MD` puts nothing back).
  `par_targets: fp` keeps every target pure full precision: FP inputs and targets from the
  FP model's own image path (the PAR term of a decoder layer still on the quantized
  embedding), every quantizer on throughout, the stages' PAR targets computed once from
  the FP model.
- `recon` without `par`: the baseline, PTQ4SAM-style block reconstruction with these
  settings. `recon: false, par: false`: SAQ-SAM* (PCC only, statistics).

Variant labels: "PCC+PAR" (default), "PCC", "PAR", "recon" (neither), "stats" (no PCC, no
reconstruction), then PTQ4SAM's "-noBIG", "-noAGQ", "+evalbug", and "+par_targets=fp".

On SAM (v1), the models the official code runs on, its own choices hold where they differ from
the SAM2 adaptation above: a stage is the ViT blocks up to a global-attention block
(`QuantImageEncoderOurViT` in its ptq4sam/model/quant_model.py, built from `Stage`s); PAR
skips the later blocks (`SamPARContext`: the stage's output goes straight to the FP neck and
the FP two-way transformer, `transform_image_token` / `get_CIT` in ptq4sam/solver/recon.py,
and the target is that path from the FP stage's output); the neck is one unit with plain
block reconstruction (`reconstruction_IE` hands `neck` to `reconstruction_blk`); the encoder
attention's relative positions come from the FP q (`rel_pos_q`: its
`QuantEncoderOurAttentionBlock.forward`).

Choices where the code is silent on SAM2 (config fields): the PAR path through the later FP
stages (above); under the official targets the FP model also gets the reconstructed neck
convolutions (SAM2's image encoder is trunk and neck), not conv_s0/s1 (mask-decoder
modules); levels of the FPN before the stage are its input (when the block before the
stage ends a level) or zeros (levels the FPN's top-down path never carries to the image
embedding: with SAM2's `fpn_top_down_levels: [2, 3]` and `scalp: 1` the embedding reads levels
2 and 3, and level 2 is the input of the last stage); memory modules are not reconstructed.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from bench import progress
from bench.calib import CalibData, CalibImage
from bench.ptq import PTQConfig, PTQPipeline, check, is_number
from bench.quant import quant_attentions
from bench.quant.fake import FakeQuantizer
from bench.quant.recompute import recomputed
from bench.quant.scope import component_of
from bench.recon import (
    Call,
    ReconSettings,
    Stop,
    block_units,
    capture,
    detach,
    lp_loss,
    recon_info,
    reconstruct_block,
    run_image_path,
    train,
)
from bench.sam_predictor import is_sam

PCC_PERCENTILES = (
    0.85, 0.87, 0.88, 0.89, 0.90, 0.91, 0.92, 0.93, 0.94, 0.95, 0.960, 0.965, 0.970, 0.975, 0.980,
    0.983, 0.985, 0.987, 0.989, 0.99, 0.993, 0.995, 0.997, 0.999, 0.9993, 0.9995, 0.9997, 0.9999, 0.99999,
)
TRUNK = "image_encoder.trunk.blocks."  # SAM2's Hiera blocks; SAM's ViT blocks: image_encoder.blocks.
LAYER = re.compile(r"((?:sam_)?mask_decoder\.transformer\.layers\.\d+)(\.|$)")
FINAL = "sam_mask_decoder.transformer.final_attn_token_to_image"
FINAL_SUFFIX = "mask_decoder.transformer.final_attn_token_to_image"  # SAM2's and SAM's
PAR_TARGETS = ("official", "fp")


@dataclass(frozen=True)
class SAQSAMConfig(PTQConfig):
    budgets = PTQConfig.budgets | {"final_iters_scale"}

    pcc: bool = True
    recon: bool = True
    par: bool = True
    act_observer: str = "avg_mse"
    iters: int = 2000
    a_lr: float = 2e-3
    round_reg: float = 0.0
    pcc_theta: float = 0.5
    pcc_rounds: int = 2
    pcc_percentiles: tuple[float, ...] = PCC_PERCENTILES
    par_alpha: float = 1.0
    par_beta: float = 1.0
    final_iters_scale: float = 5.0
    par_targets: str = "official"

    def __post_init__(self) -> None:
        object.__setattr__(self, "pcc_percentiles", tuple(self.pcc_percentiles))
        super().__post_init__()
        for f in ("pcc", "par"):
            check(isinstance(getattr(self, f), bool), f, f"expected true or false, got {getattr(self, f)!r}")
        check(self.recon or not self.par, "par", "prompt-aware reconstruction needs recon: true")
        check(is_number(self.pcc_theta) and 0 < self.pcc_theta <= 1, "pcc_theta", "expected a number in (0, 1]")
        check(isinstance(self.pcc_rounds, int) and self.pcc_rounds >= 1, "pcc_rounds", "expected an integer >= 1")
        check(bool(self.pcc_percentiles) and all(is_number(p) and 0.5 < p <= 1 for p in self.pcc_percentiles),
              "pcc_percentiles", "expected a non-empty list of numbers in (0.5, 1]")
        for f in ("par_alpha", "par_beta", "final_iters_scale"):
            check(is_number(getattr(self, f)) and getattr(self, f) >= 0, f, "expected a number >= 0")
        check(self.par_targets in PAR_TARGETS, "par_targets",
              f"expected one of {', '.join(PAR_TARGETS)}, got {self.par_targets!r}")
        check(self.par or self.par_targets == "official", "par_targets", "only applies with par: true")

    def recon_settings(self) -> ReconSettings:
        import dataclasses

        return dataclasses.replace(super().recon_settings(), loss_dim=-1)


# -- PCC ---------------------------------------------------------------------------------------
def focus_mask(a: torch.Tensor, theta: float) -> torch.Tensor:
    return a > theta * a.amax(dim=-1, keepdim=True)


def attention_iou(a: torch.Tensor, b: torch.Tensor, theta: float = 0.5) -> float:
    """Mean over (batch, head) of the IoU of the two attentions' focus masks."""
    ma, mb = focus_mask(a.float(), theta), focus_mask(b.float(), theta)
    inter = (ma & mb).flatten(-2).sum(-1).float()
    union = (ma | mb).flatten(-2).sum(-1).float()
    return float((inter / (union + 1e-6)).mean())


def quantiles(x: torch.Tensor, ps: torch.Tensor) -> torch.Tensor:
    """Linear-interpolated quantiles (torch.quantile's and numpy's rule, without torch's size
    limit), the ranks and the interpolation in float64 as both do: in float32 a rank above
    2^24 is off by whole elements and the interpolation weight by up to an ulp of the rank."""
    v = x.detach().flatten().sort().values.double()
    pos = ps.to(device=v.device, dtype=torch.float64) * (v.numel() - 1)
    lo = pos.floor().long()
    hi = pos.ceil().long()
    return (v[lo] + (v[hi] - v[lo]) * (pos - lo)).to(torch.float32)


def pcc_search(
    x: torch.Tensor, attention_at: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], reference: torch.Tensor,
    theta: float = 0.5, percentiles: tuple[float, ...] = PCC_PERCENTILES,
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """The clipping range [quantile(1-p), quantile(p)] of x whose attention (`attention_at(lo, hi)`)
    best overlaps the reference: (lo, hi, p, IoU)."""
    ps = torch.tensor(percentiles, dtype=torch.float64)
    his, los = quantiles(x, ps), quantiles(x, 1 - ps)
    best = None
    for p, lo, hi in zip(percentiles, los, his):
        iou = attention_iou(attention_at(lo, hi), reference, theta)
        if best is None or 1 - iou < 1 - best[3]:
            best = (lo, hi, p, iou)
    return best


def attention_probs(attn: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
    """Post-softmax probabilities (before their quantizer) of one call of a quantized attention."""
    attn.keep_probs = True
    try:
        with torch.no_grad():
            attn(*args, **kwargs)
        return attn.last_probs
    finally:
        attn.keep_probs, attn.last_probs = False, None


def quantizer_input(attn: nn.Module, q: FakeQuantizer, args: tuple, kwargs: dict) -> torch.Tensor:
    """What `q` sees in one call of `attn`, with `q` itself switched off."""
    seen = []
    h = q.register_forward_pre_hook(lambda _m, a: seen.append(a[0].detach().clone()))
    q.enabled = False
    try:
        with torch.no_grad():
            attn(*args, **kwargs)
    finally:
        q.enabled = True
        h.remove()
    return seen[0]


def pcc_slots(attn: nn.Module) -> list[tuple[str, FakeQuantizer]]:
    slots = [("q_proj.aq", getattr(attn.q_proj, "aq", None)), ("k_proj.aq", getattr(attn.k_proj, "aq", None)),
             ("q_quant", attn.q_quant), ("k_quant", attn.k_quant)]
    return [(n, q) for n, q in slots if q is not None and q.spec is not None]


def pcc_calibrate(model: nn.Module, image: CalibImage, cfg: SAQSAMConfig) -> tuple[set[int], dict[str, float]]:
    """PCC on every mask-decoder attention (see the module docstring); returns the ids of the
    quantizers it set and the chosen percentile per quantizer."""
    targets = {n: m for n, m in quant_attentions(model).items() if component_of(n) == "mask_decoder"}
    refs: dict[str, torch.Tensor] = {}
    chosen: dict[str, float] = {}
    busy = set()

    def reference(m, args, kwargs, n):
        if n not in busy and n not in refs:
            busy.add(n)
            refs[n] = attention_probs(m, args, kwargs)
            busy.discard(n)

    def search(m, args, kwargs, n):
        if n in busy:
            return
        busy.add(n)
        for slot, q in pcc_slots(m):
            x = quantizer_input(m, q, args, kwargs)

            def attention_at(lo, hi, q=q):
                q.set_range(lo, hi)
                return attention_probs(m, args, kwargs)

            lo, hi, p, _ = pcc_search(x, attention_at, refs[n], cfg.pcc_theta, cfg.pcc_percentiles)
            q.set_range(lo, hi)
            chosen[f"{n}.{slot}"] = p
        busy.discard(n)

    for hook in [reference] + [search] * cfg.pcc_rounds:
        handles = [m.register_forward_pre_hook(lambda m, a, kw, n=n, f=hook: f(m, a, kw, n), with_kwargs=True)
                   for n, m in targets.items()]
        try:
            run_image_path(model, [image])
        finally:
            for h in handles:
                h.remove()
    return {id(q) for m in targets.values() for _, q in pcc_slots(m)}, chosen


# -- PAR ---------------------------------------------------------------------------------------
def trunk_stages(trunk: nn.Module) -> list[range]:
    """Hiera blocks up to and including each global-attention block; the rest last."""
    stages, start = [], 0
    for i, blk in enumerate(trunk.blocks):
        if blk.window_size == 0:
            stages.append(range(start, i + 1))
            start = i + 1
    if start < len(trunk.blocks):
        stages.append(range(start, len(trunk.blocks)))
    return stages


def decoder_call(decoder: nn.Module, module: nn.Module, kwargs: dict) -> Call:
    """Inputs and output of `module`'s first call when the decoder runs on `kwargs`; the
    decoder stops right after it."""
    box = []

    def grab(_m, args, kw, out):
        box.append(Call(args, kw, out))
        raise Stop

    h = module.register_forward_hook(grab, with_kwargs=True)
    try:
        decoder(**kwargs)
    except Stop:
        pass
    finally:
        h.remove()
    return box[0]


def transformer_out(decoder: nn.Module, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(token outputs, image-token outputs) of the decoder's two-way transformer."""
    return decoder_call(decoder, decoder.transformer, kwargs).out


def decoder_of(model: nn.Module) -> nn.Module:
    return model.mask_decoder if is_sam(model) else model.sam_mask_decoder


def blocks_of(model: nn.Module) -> nn.Module:
    """The module holding the encoder's `blocks`: SAM2's Hiera trunk, SAM's ViT."""
    return model.image_encoder if is_sam(model) else model.image_encoder.trunk


def blocks_prefix(model: nn.Module) -> str:
    return "image_encoder.blocks." if is_sam(model) else TRUNK


class PARContext:
    """Per-image data of the prompt-aware losses: the FP decoder's inputs (prompt embeddings,
    image PE) and the FP transformer's outputs, and the FP trunk's level shapes."""

    def __init__(self, fp_model: nn.Module, images: list[CalibImage]) -> None:
        self.fp = fp_model
        self.kwargs: list[dict] = []
        self.targets: list[tuple[torch.Tensor, torch.Tensor]] = []
        dec = decoder_of(fp_model)
        hooks = [
            dec.register_forward_pre_hook(lambda _m, _a, kw: self.kwargs.append(detach(kw)), with_kwargs=True),
            dec.transformer.register_forward_hook(lambda _m, _a, out: self.targets.append(detach(out))),
        ]
        if not is_sam(fp_model):
            hooks.append(fp_model.image_encoder.trunk.register_forward_hook(
                lambda _m, _a, out: setattr(self, "levels", [o.shape for o in out])))
        try:
            run_image_path(fp_model, images)
        finally:
            for h in hooks:
                h.remove()

    def stage_keys(self, q_trunk: nn.Module, stage: range, x: torch.Tensor, i: int) -> torch.Tensor:
        """Image-token outputs of the FP transformer for stage output x continued in FP. Every
        block, the stage's and the FP ones after it, is recomputed in backward
        (bench.quant.recompute: the same gradients; QDrop's random masks are drawn again from
        the saved generator state) so that a stage's reconstruction does not hold the whole
        encoder's activations at the model's resolution."""
        trunk, enc = self.fp.image_encoder.trunk, self.fp.image_encoder
        ends = [e for e in trunk.stage_ends if e == trunk.stage_ends[-1] or trunk.return_interm_layers]
        levels = {}
        if stage.start - 1 in ends:  # the stage's input is itself a level (the last stage's feeds the embedding)
            levels[stage.start - 1] = x.permute(0, 3, 1, 2)
        for b in range(stage.start, len(trunk.blocks)):
            x = recomputed((q_trunk if b in stage else trunk).blocks[b])(x)
            if b in ends:
                levels[b] = x.permute(0, 3, 1, 2)
        feats = [levels[e] if e in levels else x.new_zeros(s) for e, s in zip(ends, self.levels)]
        features, _ = enc.neck(feats)
        if enc.scalp > 0:
            features = features[: -enc.scalp]
        emb = features[-1]
        if self.fp.directly_add_no_mem_embed:
            emb = emb + self.fp.no_mem_embed.reshape(1, -1, 1, 1)
        return transformer_out(self.fp.sam_mask_decoder, {**self.kwargs[i], "image_embeddings": emb})[1]

    def stage_targets(self, fp_model: nn.Module, stage: range, images: list[CalibImage]) -> list[torch.Tensor]:
        """The FP image tokens each stage's keys are compared with: the FP model's own."""
        return [t[1] for t in self.targets]


class SamPARContext(PARContext):
    """PAR on SAM's ViT with the official layer skipping (SAQ-SAM's ptq4sam/solver/recon.py,
    `transform_image_token`, used by `reconstruction_IE`): a stage's output goes straight to
    the FP neck, skipping the later blocks, and on to the FP two-way transformer (`get_CIT`);
    the target is the same path from the FP stage's output in the FP model (`fp_oup` of
    `save_inp_oup_data_en` through `transform_image_token` and `save_CIT_list`)."""

    def stage_keys(self, q_vit: nn.Module, stage: range, x: torch.Tensor, i: int) -> torch.Tensor:
        for b in stage:
            x = q_vit.blocks[b](x)
        return self.keys_of(x, i)

    def keys_of(self, x: torch.Tensor, i: int) -> torch.Tensor:
        emb = self.fp.image_encoder.neck(x.permute(0, 3, 1, 2))
        return transformer_out(self.fp.mask_decoder, {**self.kwargs[i], "image_embeddings": emb})[1]

    @torch.no_grad()
    def stage_targets(self, fp_model: nn.Module, stage: range, images: list[CalibImage]) -> list[torch.Tensor]:
        outs = capture(fp_model, fp_model.image_encoder.blocks[stage.stop - 1], images, outputs=True)
        return [self.keys_of(c.out, i) for i, c in enumerate(outs)]


def par_context(fp_model: nn.Module, images: list[CalibImage]) -> PARContext:
    return (SamPARContext if is_sam(fp_model) else PARContext)(fp_model, images)


def saq_units(model: nn.Module, cfg: SAQSAMConfig, images: list[CalibImage]) -> list[tuple[str, str | range]]:
    """(kind, unit) in model order: ("stage", blocks), ("layer", name), ("final", name), ("block", name)."""
    units: list[tuple[str, str | range]] = []
    stages, prefix = trunk_stages(blocks_of(model)), blocks_prefix(model)
    for name in block_units(model, cfg.recon_components, images):
        if not cfg.par:
            units.append(("block", name))
        elif name.startswith(prefix):
            stage = next(s for s in stages if int(name[len(prefix):].split(".")[0]) in s)
            if ("stage", stage) not in units:
                units.append(("stage", stage))
        elif LAYER.match(name):
            layer = LAYER.match(name).group(1)
            if ("layer", layer) not in units:
                units.append(("layer", layer))
        else:
            units.append(("final" if name.endswith(FINAL_SUFFIX) else "block", name))
    return units


class SAQSAM(PTQPipeline):
    name = "saqsam"
    Config = SAQSAMConfig
    # SAM's encoder attention: the relative-position term from the FP q (SAQ-SAM's
    # `QuantEncoderOurAttentionBlock.forward` in its ptq4sam/model/quant_model.py passes the
    # q before `q_post_act_fake_quantize` to `add_decomposed_rel_pos`)
    rel_pos_q = "fp"

    def switch_label(self) -> tuple[str, tuple[str, ...]]:
        c = self.config
        parts = (["PCC"] if c.pcc else []) + ([("PAR" if c.par else "recon")] if c.recon else [])
        label, named = self.statistics_label("+".join(parts) or "stats")
        return label, ("pcc", "par", "recon", *named)

    def before_calibration(self, model: nn.Module, calib: CalibData | None) -> set[int]:
        if not self.config.pcc or self.config.a_bits is None:
            return set()
        fixed, chosen = pcc_calibrate(model, self.images(calib)[0], self.config)
        self.info["pcc_percentile"] = chosen
        return fixed

    def reconstruct(self, model: nn.Module, fp_model: nn.Module, images: list[CalibImage]) -> dict:
        """Every unit in model order; the official targets (module docstring, 1-3) switch each
        unit's quantizers off until its turn and put each reconstructed image-encoder unit
        into the FP model."""
        cfg, s = self.config, self.config.recon_settings()
        official = cfg.par and cfg.par_targets == "official"
        units, prefix = saq_units(model, cfg, images)[: cfg.recon_units or None], blocks_prefix(model)
        waiting = {u: enabled_quantizers(model, unit_modules(*u, prefix)) for u in units} if official else {}
        set_enabled((q for qs in waiting.values() for q in qs), False)
        par, results = None, {}
        try:
            for kind, unit in progress(units, "reconstruction"):
                set_enabled(waiting.pop((kind, unit), []), True)
                if kind == "stage":
                    if par is None or official:  # official: the FP model with the earlier stages in it
                        par = par_context(fp_model, images)
                    key = f"{prefix}{unit.start}-{unit.stop - 1}"
                    results[key] = reconstruct_stage(model, fp_model, unit, images, s, par)
                elif kind == "layer":
                    results[unit] = reconstruct_layer(model, fp_model, unit, images, s, cfg.par_alpha, cfg.par_beta,
                                                      official)
                else:
                    scale = cfg.final_iters_scale if kind == "final" else 1.0
                    results[unit] = reconstruct_block(model, fp_model, unit, images, s, round(s.iters * scale))
                names = unit_modules(kind, unit, prefix)
                if official and names[0].startswith("image_encoder."):
                    put_into(fp_model, model, names)
        finally:
            set_enabled((q for qs in waiting.values() for q in qs), True)
        return recon_info(results)


def unit_modules(kind: str, unit: str | range, prefix: str = TRUNK) -> list[str]:
    """The module names of one unit of `saq_units` (a stage: its blocks, under `prefix`)."""
    return [f"{prefix}{b}" for b in unit] if kind == "stage" else [unit]


def enabled_quantizers(model: nn.Module, names: list[str]) -> list[FakeQuantizer]:
    return [q for n in names for q in model.get_submodule(n).modules() if isinstance(q, FakeQuantizer) and q.enabled]


def set_enabled(quantizers: Iterable[FakeQuantizer], on: bool) -> None:
    for q in quantizers:
        q.enabled = on


def put_into(fp_model: nn.Module, model: nn.Module, names: list[str]) -> None:
    """Copies of the quantized model's modules replace the FP model's (official target 3)."""
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(fp_model.get_submodule(parent), child, copy.deepcopy(model.get_submodule(name)))


def reconstruct_stage(model: nn.Module, fp_model: nn.Module, stage: range, images: list[CalibImage],
                      s: ReconSettings, par: PARContext) -> dict[str, float]:
    """PAR on one encoder stage: the loss is on the FP transformer's image tokens only."""
    q_trunk, fp_trunk = blocks_of(model), blocks_of(fp_model)
    q_calls = capture(model, q_trunk.blocks[stage.start], images)
    fp_calls = capture(fp_model, fp_trunk.blocks[stage.start], images)
    unit = nn.ModuleList([q_trunk.blocks[b] for b in stage])
    targets = par.stage_targets(fp_model, stage, images)

    def forward(call: Call, i: int) -> torch.Tensor:
        return par.stage_keys(q_trunk, stage, call.args[0], i)

    def loss(keys: torch.Tensor, i: int) -> torch.Tensor:
        return lp_loss(keys, targets[i], 2.0, dim=-1)

    return train(unit, q_calls, fp_calls, s, loss, forward)


def reconstruct_layer(model: nn.Module, fp_model: nn.Module, name: str, images: list[CalibImage],
                      s: ReconSettings, alpha: float, beta: float, official: bool) -> dict[str, float]:
    """A two-way transformer layer: beta * (0.01 |q_hat - q|^2 + |k_hat - k|^2) + alpha * PAR.
    `official`: the FP layer's inputs and outputs come from the FP decoder on the quantized
    decoder inputs (official target 1), else from the FP model's own image path."""
    unit, fp_unit, fp_dec = model.get_submodule(name), fp_model.get_submodule(name), decoder_of(fp_model)
    q_calls = capture(model, unit, images)
    q_dec = capture(model, decoder_of(model), images)  # the quantized image embeddings
    with torch.no_grad():
        if official:
            fp_calls = [decoder_call(fp_dec, fp_unit, c.kwargs) for c in q_dec]
        else:
            fp_calls = capture(fp_model, fp_unit, images, outputs=True)
        hs_fp = [transformer_out(fp_dec, c.kwargs)[0] for c in q_dec]

    def loss(out: tuple, i: int) -> torch.Tensor:
        fp_q, fp_k = fp_calls[i].out
        rec = 0.01 * lp_loss(out[0], fp_q, s.p, -1) + lp_loss(out[1], fp_k, s.p, -1)
        if alpha == 0:
            return beta * rec
        hs = transformer_out(decoder_of(model), q_dec[i].kwargs)[0]
        return beta * rec + alpha * lp_loss(hs, hs_fp[i], 2.0, -1)

    return train(unit, q_calls, fp_calls, s, loss)

