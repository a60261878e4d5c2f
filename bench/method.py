"""The method interface: a frozen, validated config dataclass and `apply(model, calib)`.

A method lives in one file of `methods/` and is registered by one line in
`methods/__init__.py`. The harness core finds methods only through that registry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from bench import BenchError
from bench.calib import CalibData
from bench.quant.fake import FakeQuantizer, QuantSpec, check_bits
from bench.quant.scope import COMPONENTS, QuantPlan, Scope


@dataclass(frozen=True)
class MethodConfig:
    """Knobs shared by every method. `None` bits mean full precision for that tensor kind.
    Subclasses add their own fields and validate them in `__post_init__` (calling super)."""

    w_bits: int | None = None
    a_bits: int | None = None

    def __post_init__(self) -> None:
        for f in ("w_bits", "a_bits"):
            v = getattr(self, f)
            if v is not None:
                check_bits(v, f)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "method") -> MethodConfig:
        """Build from YAML/CLI values; unknown keys are an error that names them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise BenchError(f"{where}: unknown option {unknown[0]!r}; allowed: {', '.join(sorted(names))}")
        try:
            return cls(**values)
        except TypeError as e:
            raise BenchError(f"{where}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Method:
    """Base class. `apply` quantizes `model` in place (using `calib` when the method needs data)
    and returns it; `variant` is the ablation label shown in reports (empty for the default);
    `info` holds what `apply` measured (e.g. training time, losses, peak memory), copied into
    the record as `method_info`."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    def __init__(self, config: MethodConfig) -> None:
        self.config = config
        self.info: dict[str, Any] = {}  # figures of `apply` (training time, losses, memory) for the record

    def needs_data(self) -> bool:
        """Whether `apply` needs calibration/training data."""
        return False

    @property
    def variant(self) -> str:
        return ""

    def apply(self, model: nn.Module, calib: CalibData | None) -> nn.Module:
        raise NotImplementedError


def inactive_quantizers(model: nn.Module) -> list[str]:
    """Quantizer slots with a spec that would not quantize their whole input in evaluation:
    uncalibrated, disabled, still observing, or dropping part of it (QDrop's `drop_prob` < 1)."""
    return [
        n for n, m in model.named_modules()
        if isinstance(m, FakeQuantizer) and m.spec is not None and (not m.active or getattr(m, "drop_prob", 1.0) < 1.0)
    ]


def check_quantizers_active(model: nn.Module, config: MethodConfig) -> None:
    """Run after every `apply`: each quantizer is active in evaluation. A method config with
    `eval_dropout_bug: true` (reproducing PTQ4SAM's official evaluation bug, see
    methods/ptq4sam.py) is exempt."""
    if getattr(config, "eval_dropout_bug", False):
        return
    bad = inactive_quantizers(model)
    if bad:
        raise RuntimeError(f"{len(bad)} quantizers are not active in evaluation after apply (first: {bad[0]})")


def method_registry():
    """The registry of methods (filled by the `methods` package's registry lines)."""
    from methods import METHODS

    return METHODS


@dataclass(frozen=True)
class QuantConfig(MethodConfig):
    """Config of a method that quantizes through `bench.quant`: bits plus the scope.

    Defaults follow the PTQ4SAM/SAQ-SAM protocol: weights per output channel, asymmetric;
    activations per tensor, asymmetric; attention q/k/v and probabilities quantized at
    `a_bits` when `quant_attention`."""

    scope_preset: str = "all"
    components: tuple[str, ...] = tuple(COMPONENTS)
    exclude: tuple[str, ...] = ()
    quant_attention: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for f in ("components", "exclude"):  # YAML gives lists
            object.__setattr__(self, f, tuple(getattr(self, f)))
        if self.w_bits is None and self.a_bits is None:
            raise BenchError("w_bits/a_bits: a quantization method needs at least one bit width")
        self.scope()  # validates components and preset

    def scope(self) -> Scope:
        return Scope(components=self.components, exclude=self.exclude, preset=self.scope_preset)

    def plan(self) -> QuantPlan:
        w = QuantSpec(self.w_bits, granularity="channel") if self.w_bits else None
        a = QuantSpec(self.a_bits) if self.a_bits else None
        attn = a if self.quant_attention else None
        return QuantPlan(weight=w, act=a, attn_qkv=attn, attn_probs=attn, scope=self.scope())
