"""Range calibration shared by methods: min/max of weights and observed activations."""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from bench import BenchError
from bench.calib import CalibData, run_calibration
from bench.quant.fake import FakeQuantizer
from bench.quant.modules import QuantLayer
from bench.quant.scope import component_of


def activation_quantizers(model: nn.Module) -> Iterator[tuple[str, FakeQuantizer]]:
    """Every quantizer that sees activations (layer inputs, attention q/k/v/probabilities)."""
    for name, m in model.named_modules():
        if isinstance(m, FakeQuantizer) and m.spec is not None and not name.endswith(".wq"):
            yield name, m


def calibrate_weights(model: nn.Module) -> int:
    """Min/max ranges for every weight quantizer; returns how many were set."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer) and m.wq.spec is not None}
    for name, m in layers.items():
        try:
            m.calibrate_weight()
        except BenchError as e:
            raise BenchError(f"{name}: {e}") from None
    return len(layers)


def calibrate_activations(model: nn.Module, calib: CalibData | None, skip: frozenset[int] = frozenset()) -> int:
    """Observe every activation quantizer (but those whose id is in `skip`) over the calibration
    data with its observer, then set ranges. A quantizer that the data never reached is an error
    naming its component."""
    quantizers = {n: q for n, q in activation_quantizers(model) if id(q) not in skip}
    if not quantizers:
        return 0
    if calib is None or len(calib) == 0:
        raise BenchError("activation quantization needs calibration data (calibration images or clips)")
    for q in quantizers.values():
        q.observing = True
    try:
        run_calibration(model, calib)
    finally:
        for q in quantizers.values():
            q.observing = False
    unseen = [n for n, q in quantizers.items() if q.min_val.numel() == 0]
    if unseen:
        comps = sorted({component_of(n) for n in unseen})
        raise BenchError(
            f"calibration data never reached {len(unseen)} activation quantizers (components "
            f"{', '.join(comps)}; first {unseen[0]}): video clips are needed for memory modules"
        )
    for q in quantizers.values():
        q.calibrate_from_observed()
    return len(quantizers)
