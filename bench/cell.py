"""The experiment cell: everything that determines one result, and its identity.

`bench.run` runs a cell; `bench.sweepspec` expands a sweep file into cells. A cell's identity
(`cell_id`, the name of its record in a sweep's results) is a hash of its resolved inputs, so
the data roots are resolved first (`resolve`): the same sweep pointed at another dataset makes
other cells instead of reusing the records of the first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from bench.data import synth
from bench.tasks import DATA_FREE_TASKS


@dataclass(frozen=True)
class Cell:
    """Everything that determines one result. `tag` is a free label of the cell (e.g. the
    budget of a dev-set row); the method's variant label comes from its options."""

    model: str
    method: str
    task: str
    w_bits: int | None = None
    a_bits: int | None = None
    method_options: dict[str, Any] = field(default_factory=dict)
    tag: str = ""
    random_init: bool = False
    checkpoints: str | None = None
    device: str | None = None
    davis_root: str | None = None
    coco_root: str | None = None
    split: str = "val"
    sequences: tuple[str, ...] | None = None
    max_frames: int | None = None
    max_images: int | None = None
    detections: str | None = None
    multimask: bool = False
    calib_dir: str | None = None
    calib_n: int = 32
    seed: int = 0

    def task_options(self) -> dict[str, Any]:
        return {
            "davis_root": self.davis_root, "coco_root": self.coco_root, "split": self.split,
            "sequences": list(self.sequences) if self.sequences else None, "max_frames": self.max_frames,
            "max_images": self.max_images, "detections": self.detections, "multimask": self.multimask,
        }


def with_data_roots(cell: Cell) -> Cell:
    """Dataset roots from the cell, else $BENCH_DAVIS / $BENCH_COCO, else the synthetic sets'
    folder (`synth.default_root`: the path only; `ensure_data` writes the sets)."""
    davis = cell.davis_root or os.environ.get("BENCH_DAVIS")
    coco = cell.coco_root or os.environ.get("BENCH_COCO")
    if davis is None and coco is None:
        root = synth.default_root()
        davis, coco = str(root / "davis"), str(root / "coco")
    return dataclasses.replace(cell, davis_root=davis, coco_root=coco)


def reads_data(cell: Cell, needs_calibration: bool) -> bool:
    """Whether the cell reads a dataset: its task does, or its method calibrates on the
    datasets' train splits (`needs_calibration`, from `Method.needs_data`) without `calib_dir`."""
    return cell.task not in DATA_FREE_TASKS or (needs_calibration and cell.calib_dir is None)


def resolve(cell: Cell, needs_calibration: bool) -> Cell:
    """The cell with the data roots it reads resolved (`with_data_roots`); one that reads no
    dataset keeps none, so its identity does not depend on the data."""
    return with_data_roots(cell) if reads_data(cell, needs_calibration) else cell


def ensure_data(cell: Cell) -> None:
    """Write the synthetic sets when a resolved cell reads them and they are not there yet."""
    root = synth.default_root()
    if {cell.davis_root, cell.coco_root} & {str(root / "davis"), str(root / "coco")}:
        synth.ensure_default()


def cell_id(cell: Cell) -> str:
    """Hash of the resolved cell (every field of `Cell`): its name in the results."""
    text = json.dumps(dataclasses.asdict(cell), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
