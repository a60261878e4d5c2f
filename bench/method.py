"""The method interface: a frozen, validated config dataclass and `apply(model, calib)`.

A method lives in one file of `methods/` and is registered by one line in
`methods/__init__.py` (`METHODS.register(...)`, the registry defined here). The harness core
finds methods only through that registry: it imports the `methods` package by name, never a
method module directly.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from bench import BenchError
from bench.calib import CalibData
from bench.quant.fake import FakeQuantizer, QuantSpec, check_bits
from bench.quant.scope import COMPONENTS, QuantPlan, Scope
from bench.registry import Registry


@dataclass(frozen=True)
class MethodConfig:
    """Knobs shared by every method. `None` bits mean full precision for that tensor kind.
    Subclasses add their own fields and validate them in `__post_init__` (calling super).

    `budgets` names the fields that size the work rather than choose the method (steps,
    iterations, images, search grids, learning rates): a sweep's `training:` block sets them,
    and the variant label leaves them out, as it leaves out the `protocol` fields (bits, scope)
    that every method of a comparison shares. Every other field is an ablation switch."""

    budgets: ClassVar[frozenset[str]] = frozenset()
    protocol: ClassVar[frozenset[str]] = frozenset({"w_bits", "a_bits"})

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

    def ablations(self) -> dict[str, Any]:
        """The fields set away from their defaults that are neither budgets nor protocol, in
        field order: what the variant label must name."""
        skip = self.budgets | self.protocol
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in skip and getattr(self, f.name) != _default(f)}


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def option_text(value: Any) -> str:
    """An option value as the variant label writes it: strings bare, the rest as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(list(value) if isinstance(value, tuple) else value, separators=(",", ":"))


class Method:
    """Base class. `apply` quantizes `model` in place (using `calib` when the method needs data)
    and returns it; `variant` is the ablation label shown in reports; `info` holds what `apply`
    measured (e.g. training time, losses, peak memory), copied into the record as
    `method_info`."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, config: MethodConfig) -> None:
        self.config = config
        self.info: dict[str, Any] = {}  # figures of `apply` (training time, losses, memory) for the record

    @staticmethod
    def from_options(name: str, w_bits: int | None = None, a_bits: int | None = None,
                     options: dict[str, Any] | None = None, where: str | None = None) -> Method:
        """The registered method `name` with its config built from bits and options (YAML or
        CLI values): the one way the harness makes a method. A bad name or option is a
        `BenchError`; unknown options are named after `where` (default "method NAME")."""
        cls = METHODS.get(name)
        values = {"w_bits": w_bits, "a_bits": a_bits, **(options or {})}
        return cls(cls.Config.from_dict(values, where=where or f"method {name}"))

    def needs_data(self) -> bool:
        """Whether `apply` needs calibration/training data."""
        return False

    def keeps_inactive_quantizers(self) -> bool:
        """True when `apply` leaves quantizers inactive in evaluation on purpose (a method
        reproducing a published evaluation bug); otherwise every run checks that all are active."""
        return False

    def switch_label(self) -> tuple[str, tuple[str, ...]]:
        """The method's own name for its known switches and the fields that name covers; the
        variant adds `field=value` for every other ablation (`MethodConfig.ablations`)."""
        return "", ()

    @property
    def variant(self) -> str:
        """The canonical ablation label, a function of the config alone (so a cell started from
        the command line and one from a sweep file carry the same): the method's name for its
        switches, then `field=value` for each other non-default ablation field, joined by '+';
        empty for the default configuration."""
        head, named = self.switch_label()
        rest = [f"{k}={option_text(v)}" for k, v in self.config.ablations().items() if k not in named]
        return "+".join(([head] if head else []) + rest)

    def apply(self, model: nn.Module, calib: CalibData | None) -> nn.Module:
        raise NotImplementedError


def _import_methods() -> None:
    """Fill `METHODS`: the built-in `methods` package (imported by name, so no bench module
    imports a method), then the modules named in $BENCH_PLUGINS (comma-separated; sweep
    workers inherit the variable), which register methods kept outside the package."""
    plugins = [m.strip() for m in os.environ.get("BENCH_PLUGINS", "").split(",")]
    for module in ["methods", *filter(None, plugins)]:
        importlib.import_module(module)


METHODS = Registry("method", load=_import_methods, base=Method)


def inactive_quantizers(model: nn.Module) -> list[str]:
    """Quantizer slots with a spec that would not quantize their whole input in evaluation:
    uncalibrated, disabled, still observing, or dropping part of it (QDrop's `drop_prob` < 1)."""
    return [
        n for n, m in model.named_modules()
        if isinstance(m, FakeQuantizer) and m.spec is not None and (not m.active or getattr(m, "drop_prob", 1.0) < 1.0)
    ]


def check_quantizers_active(model: nn.Module, method: Method) -> None:
    """Run after every `apply`: each quantizer is active in evaluation, unless the method
    keeps some inactive on purpose (`Method.keeps_inactive_quantizers`)."""
    if method.keeps_inactive_quantizers():
        return
    bad = inactive_quantizers(model)
    if bad:
        raise RuntimeError(f"{len(bad)} quantizers are not active in evaluation after apply (first: {bad[0]})")


@dataclass(frozen=True)
class QuantConfig(MethodConfig):
    """Config of a method that quantizes through `bench.quant`: bits plus the scope.

    Defaults follow the PTQ4SAM/SAQ-SAM protocol: weights per output channel, asymmetric;
    activations per tensor, asymmetric; attention q/k/v and probabilities quantized at
    `a_bits` when `quant_attention`. The scope (`scope_preset`, `components`, `exclude`) is
    part of the protocol, not of the variant label."""

    protocol = MethodConfig.protocol | {"scope_preset", "components", "exclude"}

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
