"""Which modules of a SAM2 model get quantized, and the function that wraps them.

A `Scope` selects by component (the five parts of SAM2 plus `other`, SAM2Base's own small
heads) and by fnmatch patterns on module names. Presets name published choices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from torch import nn

from bench import BenchError
from bench.quant.attention import QuantAttentionMixin, quant_attention_class
from bench.quant.fake import QuantSpec
from bench.quant.modules import QUANT_LAYERS, QuantLayer

# component name -> attribute prefix in sam2's SAM2Base
COMPONENTS = {
    "image_encoder": "image_encoder.",
    "memory_attention": "memory_attention.",
    "memory_encoder": "memory_encoder.",
    "mask_decoder": "sam_mask_decoder.",
    "prompt_encoder": "sam_prompt_encoder.",
    "other": "",  # obj_ptr_proj, obj_ptr_tpos_proj, mask_downsample
}

# PTQ4SAM / SAQ-SAM protocol: layers left in full precision (the patch embedding, the mask
# decoder's output upscaling, IoU head and hypernetwork MLPs, the whole prompt encoder).
# LayerNorm/GELU are never wrapped.
PRESETS: dict[str, tuple[str, ...]] = {
    "all": (),
    "ptq4sam": (
        "image_encoder.trunk.patch_embed.*",
        "sam_mask_decoder.output_upscaling.*",
        "sam_mask_decoder.iou_prediction_head.*",
        "sam_mask_decoder.output_hypernetworks_mlps.*",
        "sam_prompt_encoder.*",
    ),
}


def component_of(name: str) -> str:
    for comp, prefix in COMPONENTS.items():
        if prefix and name.startswith(prefix):
            return comp
    return "other"


@dataclass(frozen=True)
class Scope:
    """Modules quantized: in `components`, matching some `include`, matching no `exclude`
    and no pattern of `preset`."""

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
        return not any(fnmatchcase(name, p) for p in self.exclude + PRESETS[self.preset])


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
