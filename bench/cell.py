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
from bench.data.vos import ROOT_ENV, check_format, is_synthetic
from bench.data.vos import dataset_label as dataset_label_vos
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
    davis_root: str | None = None  # the vos set's root, in the layout `vos_format` names
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
    vos_format: str = "davis"  # davis | sav | mose (bench.data.vos)
    track_later: bool = False  # vos: objects join the tracker on the first frame they appear in

    def task_options(self) -> dict[str, Any]:
        return {
            "davis_root": self.davis_root, "coco_root": self.coco_root, "split": self.split,
            "sequences": list(self.sequences) if self.sequences else None, "max_frames": self.max_frames,
            "max_images": self.max_images, "detections": self.detections, "multimask": self.multimask,
            "vos_format": self.vos_format, "track_later": self.track_later,
        }


# Fields added after sweeps had written records: hashed only when set away from these defaults,
# so the cells of existing sweeps keep their ids (and their records).
LATER_FIELDS = {"vos_format": "davis", "track_later": False}


def with_data_roots(cell: Cell) -> Cell:
    """Dataset roots from the cell, else the environment ($BENCH_DAVIS, or $BENCH_SAV /
    $BENCH_MOSE for those vos formats, and $BENCH_COCO), else the synthetic sets' folder
    (`synth.default_root`: the path only; `ensure_data` writes the sets)."""
    davis = cell.davis_root or os.environ.get(ROOT_ENV[check_format(cell.vos_format)])
    coco = cell.coco_root or os.environ.get("BENCH_COCO")
    if davis is None and coco is None:
        root = synth.default_root()
        davis, coco = str(root / synth.VIDEO_DIRS[cell.vos_format]), str(root / "coco")
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
    if {cell.davis_root, cell.coco_root} & {str(root / name) for name in synth.SET_DIRS}:
        synth.ensure_default()


def dataset_label(cell: Cell) -> str | None:
    """The dataset a resolved cell is evaluated on, "<name> <split>" (the record's `dataset`):
    `bench.data.vos.dataset_label` for vos, "coco <split>" or "synthetic <split>" for the
    COCO tasks, None for a task that reads no data."""
    if cell.task == "vos":
        return dataset_label_vos(cell.vos_format, cell.davis_root, cell.split) if cell.davis_root else None
    if cell.task in DATA_FREE_TASKS or not cell.coco_root:
        return None
    return f"{'synthetic' if is_synthetic(cell.coco_root) else 'coco'} {cell.split}"


def cell_id(cell: Cell) -> str:
    """Hash of the resolved cell (every field of `Cell`, those of `LATER_FIELDS` only when set):
    its name in the results."""
    fields = {k: v for k, v in dataclasses.asdict(cell).items() if k not in LATER_FIELDS or v != LATER_FIELDS[k]}
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
