"""Which modules of a SAM2 or SAM model get quantized, and the function that wraps them.

A `Scope` selects by component (the five parts of SAM2 plus `other`, SAM2Base's own small
heads; SAM has three of them, under its own attribute names) and by fnmatch patterns on
module names. Presets name published choices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from torch import nn

from bench import BenchError
from bench.quant.attention import QuantAttentionMixin, quant_attention_class
from bench.quant.fake import QuantSpec
from bench.quant.modules import QUANT_LAYERS, QuantLayer

# component name -> attribute prefixes in sam2's SAM2Base and in segment_anything's Sam
COMPONENTS: dict[str, tuple[str, ...]] = {
    "image_encoder": ("image_encoder.",),
    "memory_attention": ("memory_attention.",),
    "memory_encoder": ("memory_encoder.",),
    "mask_decoder": ("sam_mask_decoder.", "mask_decoder."),
    "prompt_encoder": ("sam_prompt_encoder.", "prompt_encoder."),
    "other": (),  # SAM2's obj_ptr_proj, obj_ptr_tpos_proj, mask_downsample; SAM has none
}

# PTQ4SAM / SAQ-SAM protocol: layers left in full precision. LayerNorm/GELU are never wrapped.
# On SAM, as both official codes set it (`quantize_model` in ptq4sam/solver/test_quant.py and
# SAQ-SAM's test_quant_SAQ_m.py): only `image_encoder` and `mask_decoder` are wrapped, so the
# prompt encoder stays FP; the encoder's `patch_embed` (and `pos_embed`, a parameter) are kept
# by `QuantImageEncoderOurViT`, while every block (qkv, proj, q/k/v, softmax, MLP) and the
# neck's two convolutions are quantized; the decoder's children named `output_upscaling`,
# `iou_prediction_head` and `output_hypernetworks_mlps` are skipped. On SAM2 the same list
# under SAM2's names.
PTQ4SAM_FP_SAM = (
    "image_encoder.patch_embed.*",
    "mask_decoder.output_upscaling.*",
    "mask_decoder.iou_prediction_head.*",
    "mask_decoder.output_hypernetworks_mlps.*",
    "prompt_encoder.*",
)
PTQ4SAM_FP_SAM2 = (
    "image_encoder.trunk.patch_embed.*",
    "sam_mask_decoder.output_upscaling.*",
    "sam_mask_decoder.iou_prediction_head.*",
    "sam_mask_decoder.output_hypernetworks_mlps.*",
    "sam_prompt_encoder.*",
)
PRESETS: dict[str, tuple[str, ...]] = {
    "all": (),
    "ptq4sam": PTQ4SAM_FP_SAM2 + PTQ4SAM_FP_SAM,
}

# Layers that no task runs, so calibration could never set their input ranges: SAM's
# mask-prompt branch (its tasks prompt with boxes only, and it has no video path that feeds
# masks back, as SAM2's does). Never wrapped; kept in BF16 by the packed artifact.
NEVER_RUN = ("prompt_encoder.mask_downscaling.*",)


def component_of(name: str) -> str:
    for comp, prefixes in COMPONENTS.items():
        if prefixes and name.startswith(prefixes):
            return comp
    return "other"


@dataclass(frozen=True)
class Scope:
    """Modules quantized: in `components`, matching some `include`, matching no `exclude`,
    no pattern of `preset` and none of `NEVER_RUN`."""

    components: tuple[str, ...] = tuple(COMPONENTS)
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    preset: str = "all"

    def __post_init__(self) -> None:
        for c in self.components:
            if c not in COMPONENTS:
                raise BenchError(f"scope.components: unknown component {c!r}; known: {', '.join(COMPONENTS)}")
        if self.preset not in PRESETS:
            raise BenchError(f"scope.preset: unknown preset {self.preset!r}; known: {', '.join(PRESETS)}")

    def matches(self, name: str) -> bool:
        if component_of(name) not in self.components:
            return False
        if not any(fnmatchcase(name, p) for p in self.include):
            return False
        return not any(fnmatchcase(name, p) for p in self.exclude + PRESETS[self.preset] + NEVER_RUN)


@dataclass(frozen=True)
class QuantPlan:
    """What to quantize: weight and input-activation specs for Linear/Conv layers, and the
    attention matmul inputs (q, k, v) and post-softmax probabilities."""

    weight: QuantSpec | None = None
    act: QuantSpec | None = None
    attn_qkv: QuantSpec | None = None
    attn_probs: QuantSpec | None = None
    scope: Scope = field(default_factory=Scope)


def _set_child(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def wrap(model: nn.Module, plan: QuantPlan) -> list[str]:
    """Replace in-scope layers and attention modules by their quantized versions, in place.
    Returns the names of the wrapped modules. Quantizers start uncalibrated (pass-through)."""
    wrapped = []
    want_attn = plan.attn_qkv is not None or plan.attn_probs is not None
    for name, module in list(model.named_modules()):
        if not name or not plan.scope.matches(name):
            continue
        layer_cls = QUANT_LAYERS.get(type(module))
        attn_cls = quant_attention_class(module) if want_attn else None
        if layer_cls is not None and (plan.weight is not None or plan.act is not None):
            _set_child(model, name, layer_cls(module, plan.weight, plan.act))
            wrapped.append(name)
        elif attn_cls is not None:
            _set_child(model, name, attn_cls.from_float(module, plan.attn_qkv, plan.attn_probs))
            wrapped.append(name)
    return wrapped


def quant_layers(model: nn.Module) -> dict[str, QuantLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}


def quant_attentions(model: nn.Module) -> dict[str, QuantAttentionMixin]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantAttentionMixin)}
