"""Evaluation tasks. Adding one: a file here plus one registry line below.

A task is a function `run(model, ctx) -> dict` of metric name -> value (plus optional
tables), given the quantized model and a `TaskContext`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.registry import Registry

TASKS = Registry("task")
TASKS.register("size", "bench.tasks.size:run")
TASKS.register("vos", "bench.tasks.vos:run")
TASKS.register("instseg", "bench.tasks.instseg:run")
TASKS.register("coco-map", "bench.tasks.coco_map:run")
TASKS.register("latency", "bench.tasks.latency:run")

DATA_FREE_TASKS = frozenset({"size"})  # tasks that read no dataset


@dataclass
class TaskContext:
    model_name: str
    device: str
    work_dir: Path  # scratch space for artifacts of this cell
    options: dict[str, Any] = field(default_factory=dict)
