"""Activation recomputation (checkpointing) that is safe for quantizers with running state.

`recomputed(fn)` runs `fn` under `torch.utils.checkpoint` (non-reentrant): its intermediate
tensors are dropped after the forward pass and made again in backward. A quantizer that
updates a statistic in its forward pass (Q-SAM2's LSC: an EMA of std(x) in training mode)
must, while `fn` is recomputed, use the value it used in the forward pass and not update it a
second time: the same layer may run several times in one forward pass (a decoder once per
video frame), so by backward its statistic has moved on. Such quantizers get their value
through `running_statistic`: in a forward pass it updates the statistic and every enclosing
recomputable region records the value; while a region is recomputed the recorded values are
given back in order. With that, gradients are the same as without recomputation (bit for bit
on CPU: same kernels, same inputs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint


class _Tape:
    """The running-statistic values used in one forward pass of a recomputable region, per
    owner in call order, and how many of them a recomputation has read back."""

    def __init__(self) -> None:
        self.values: dict[int, list[torch.Tensor]] = {}
        self.read: dict[int, int] = {}


_active: list[tuple[bool, _Tape]] = []  # (replaying, tape), innermost last


def running_statistic(owner: object, update: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The value of `owner`'s running statistic for this call: `update()` (which moves the
    statistic and returns a copy of its new value) in a forward pass; while a region is
    recomputed, the value recorded for this call in its forward pass, and nothing moves."""
    replay = next((tape for replaying, tape in reversed(_active) if replaying), None)
    if replay is None:
        value = update()
    else:
        i = replay.read.get(id(owner), 0)
        replay.read[id(owner)] = i + 1
        value = replay.values[id(owner)][i]
    for replaying, tape in _active:
        if not replaying:
            tape.values.setdefault(id(owner), []).append(value)
    return value


def recomputing() -> bool:
    """True while a recomputation runs."""
    return any(replaying for replaying, _ in _active)


def _within(replaying: bool, tape: _Tape, fn: Callable, *args, **kwargs):
    _active.append((replaying, tape))
    try:
        return fn(*args, **kwargs)
    finally:
        _active.pop()


def recomputed(fn: Callable) -> Callable:
    """`fn` with its activations recomputed in backward (when a gradient is wanted); running
    statistics used inside are recorded in the forward pass and replayed there."""

    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return fn(*args, **kwargs)
        tape = _Tape()
        first = [True]

        def body(*a, **k):
            if first[0]:
                first[0] = False
                return _within(False, tape, fn, *a, **k)
            tape.read.clear()
            return _within(True, tape, fn, *a, **k)

        return checkpoint(body, *args, use_reentrant=False, **kwargs)

    return run
