"""The environment part of a result record: what is needed to trust and reproduce it (git commit,
library versions, device, host, date). Records are written and read by `bench.results`."""

from __future__ import annotations

import datetime as _dt
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from bench.results import SCHEMA_VERSION

PACKAGES = ("torch", "torchvision", "rf-sam-2", "numpy", "pycocotools", "safetensors")


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            found[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            found[p] = None
    return found


def device_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"device": device, "threads": torch.get_num_threads()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info


def environment(device: str) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "git_commit": git_commit(),
        "versions": versions(),
        "device": device_info(device),
        "host": socket.gethostname(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
