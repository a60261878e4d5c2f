"""Peak memory of a stretch of code: CUDA's max allocated, or on Linux the process's resident
set high-water mark (VmHWM) after a reset (freed heap is returned to the system first, so the
figure is what the stretch needs on top of what is live). Used by the memory benchmark and the
`latency` task; `map_large_allocations` keeps training's resident memory near what is live.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import time
from pathlib import Path

import torch
from torch import nn

from bench import BenchError

MMAP_THRESHOLD = 256 << 10  # bytes: larger allocations get their own mapping (glibc's M_MMAP_THRESHOLD)


def map_large_allocations(model: nn.Module | None = None) -> bool:
    """On Linux with glibc: from now on every allocation above MMAP_THRESHOLD gets its own
    memory mapping, returned to the system when freed. glibc's default threshold starts at
    128 KiB and rises to the size of each large block freed, up to 32 MiB, so most tensors of
    a training step come from the heap, where freed holes stay resident until the heap's top
    is free: a step's resident peak is then set by fragmentation more than by live tensors
    (the README's memory figures measure both). Process-wide and lasting; returns whether
    it took effect: not without glibc, nor with the environment variable BENCH_MALLOC=default
    (glibc's own behaviour, e.g. to compare). With `model`: only for a model on CPU at the
    real resolution (`bench.models.real_resolution`; the micro models' allocations are small and
    mapping each costs their runs time), the rule training and reconstruction follow."""
    if os.environ.get("BENCH_MALLOC", "mapped") == "default":
        return False
    if model is not None:
        from bench.models import real_resolution

        if next(model.parameters()).device.type != "cpu" or not real_resolution(model):
            return False
    return set_mmap_threshold(MMAP_THRESHOLD)


def set_mmap_threshold(size: int) -> bool:
    """glibc's M_MMAP_THRESHOLD (fixed from then on: no dynamic rise); False without glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(-3, size))  # M_MMAP_THRESHOLD


class Meter:
    """Peak memory of a stretch of code on one device: `with meter.measure(row):` fills row
    ["live"] (bytes live before), ["peak"] (bytes) and ["s"] (seconds)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.libc = ctypes.CDLL("libc.so.6") if device.type == "cpu" else None
        if device.type == "cpu" and not Path("/proc/self/clear_refs").exists():
            raise BenchError("memory benchmark on CPU: needs Linux (/proc/self/clear_refs to reset the peak)")

    def current(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        return _status("VmRSS")

    @contextlib.contextmanager
    def measure(self, row: dict):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.libc.malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")
        row["live"] = self.current()
        t = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            row["peak"] = torch.cuda.max_memory_allocated(self.device)
        else:
            row["peak"] = _status("VmHWM")
        row["s"] = time.perf_counter() - t


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024.0
    raise BenchError(f"/proc/self/status has no {field}")


