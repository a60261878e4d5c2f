"""Peak memory of a stretch of code: CUDA's max allocated, or on Linux the process's resident
set high-water mark (VmHWM) after a reset (freed heap is returned to the system first, so the
figure is what the stretch needs on top of what is live). Used by the memory benchmark and the
`latency` task.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import time
from pathlib import Path

import torch

from bench import BenchError


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


