"""Activation recomputation (checkpointing) that is safe for quantizers with running state.

`recomputed(fn)` runs `fn` under `torch.utils.checkpoint` (non-reentrant): its intermediate
tensors are dropped after the forward pass and made again in backward. A quantizer that
updates a statistic in its forward pass (Q-SAM2's LSC: an EMA of std(x) in training mode)
must not update it a second time while `fn` is recomputed, or the recomputed activations
would differ from the forward pass's and the statistic would move twice per step; such
quantizers skip their update while `statistics_frozen()` is true, which it is exactly during
a recomputation. With that, gradients are the same as without recomputation (bit for bit on
CPU: same kernels, same inputs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch.utils.checkpoint import checkpoint

_frozen = 0


def statistics_frozen() -> bool:
    """True while a recomputation runs: quantizers keep their running statistics."""
    return _frozen > 0


@contextlib.contextmanager
def frozen_statistics() -> Iterator[None]:
    global _frozen
    _frozen += 1
    try:
        yield
    finally:
        _frozen -= 1


def recomputed(fn: Callable) -> Callable:
    """`fn` with its activations recomputed in backward (when a gradient is wanted); the
    recomputation runs with frozen statistics."""

    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return fn(*args, **kwargs)
        first = [True]

        def body(*a, **k):
            if first[0]:
                first[0] = False
                return fn(*a, **k)
            with frozen_statistics():
                return fn(*a, **k)

        return checkpoint(body, *args, use_reentrant=False, **kwargs)

    return run
