"""Run one cell: build a model, apply a method, evaluate a task, print one JSON record.

    python -m bench.run --model micro --method rtn --w-bits 4 --a-bits fp --task size
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from bench import BenchError
from bench.calib import CalibData
from bench.cell import Cell, dataset_label, ensure_data, resolve
from bench.data.vos import VOS_FORMATS, check_format
from bench.intervals import intervals
from bench.method import Method, check_quantizers_active
from bench.models import build_model, check_task, default_device, model_entry
from bench.record import environment
from bench.results import write_json_atomic
from bench.tasks import TASKS, TaskContext


def validate(cell: Cell) -> Method:
    """Check the cell's model, task, method and options; returns the method instance."""
    model_entry(cell.model)
    TASKS.target(cell.task)
    check_task(cell.model, cell.task)
    check_format(cell.vos_format)
    if cell.track_later and cell.vos_format == "davis":
        raise BenchError("--track-later-objects needs a set in the sav or mose format: the DAVIS 2017 evaluator "
                         "scores only the objects of the first frame")
    return Method.from_options(cell.method, cell.w_bits, cell.a_bits, cell.method_options)


def load_calibration(cell: Cell, work_dir: Path) -> CalibData:
    """`--calib-dir` images, else `calib_n` images and `calib_n` frames from the train splits
    of the cell's datasets (the same for every method of the cell); images only for a model
    without a video path (SAM)."""
    if cell.calib_dir is not None:
        return CalibData.from_image_dir(cell.calib_dir, cell.calib_n)
    video_root = cell.davis_root if "vos" in model_entry(cell.model).tasks else None
    return CalibData.from_datasets(video_root, cell.coco_root, cell.calib_n, work_dir, cell.vos_format)


class SharedWork:
    """Work shared by the cells of one model in one process: the model as built (each cell
    gets its own copy to quantize), the calibration data, made once and reused, and the last
    quantized model, so the tasks of one method and bit configuration quantize once."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = Path(work_dir)
        self._models: dict[tuple, Any] = {}
        self._calib: dict[tuple, CalibData] = {}
        self._applied: tuple | None = None  # (key, model, info, seconds) or (key, exception)

    def applied(self, cell: Cell, method, device: str, calib: CalibData | None) -> tuple[Any, dict, float, bool]:
        """(quantized model, method info, apply seconds, reused) for the cell; an exception
        raised by `apply` is raised again for the next cells of the same configuration."""
        key = (cell.model, cell.checkpoints, cell.random_init, device, cell.seed, cell.method,
               json.dumps(method.config.to_dict(), sort_keys=True, default=str),
               cell.davis_root, cell.vos_format, cell.coco_root, cell.calib_dir, cell.calib_n)
        reused = self._applied is not None and self._applied[0] == key
        if not reused:
            self._applied = None  # free the previous model first
            model = self.model(cell, device)
            t = time.perf_counter()
            try:
                model = apply_method(method, model, calib, cell.seed)
            except Exception as e:
                self._applied = (key, e)
                raise
            self._applied = (key, model, dict(method.info), time.perf_counter() - t)
        if len(self._applied) == 2:
            raise self._applied[1]
        _, model, info, seconds = self._applied
        return model, info, seconds, reused

    def model(self, cell: Cell, device: str):
        import copy

        key = (cell.model, cell.checkpoints, cell.random_init, device, cell.seed)
        if key not in self._models:
            self._models[key] = build_model(cell.model, cell.checkpoints, cell.random_init, device, seed=cell.seed)
        return copy.deepcopy(self._models[key])

    def calibration(self, cell: Cell) -> CalibData:
        key = (cell.davis_root, cell.vos_format, cell.coco_root, cell.calib_dir, cell.calib_n)
        if key not in self._calib:
            folder = self.work_dir / f"calib{len(self._calib)}"
            folder.mkdir(parents=True, exist_ok=True)
            self._calib[key] = load_calibration(cell, folder)
        return self._calib[key]


def apply_method(method, model, calib: CalibData | None, seed: int):
    torch.manual_seed(seed)
    model = method.apply(model, calib)
    check_quantizers_active(model, method)
    return model


def run_cell(cell: Cell, work_dir: Path | None = None, shared: SharedWork | None = None) -> dict[str, Any]:
    """Run a validated cell. Errors inside the method or task give a record with status
    'failed' and the traceback; BenchError from bad input propagates. `shared` reuses the
    model build, the calibration data and the quantized model across the cells of one process."""
    method = validate(cell)
    cell = resolve(cell, method.needs_data())
    ensure_data(cell)
    device = cell.device or default_device()
    record: dict[str, Any] = {
        "model": cell.model, "method": cell.method, "variant": method.variant, "tag": cell.tag,
        "task": cell.task, "w_bits": cell.w_bits, "a_bits": cell.a_bits, "dataset": dataset_label(cell),
        "status": "running",
        "config": {"cell": cell.__dict__, "method": method.config.to_dict()},
        "metrics": {}, "timings": {}, **environment(device),
    }
    timings = record["timings"]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cell.seed)
        if shared is None:
            model = build_model(cell.model, cell.checkpoints, cell.random_init, device, seed=cell.seed)
            calib = load_calibration(cell, work) if method.needs_data() else None
        else:
            calib = shared.calibration(cell) if method.needs_data() else None
        timings["build_s"] = time.perf_counter() - t0
        try:
            t = time.perf_counter()
            if shared is None:
                model = apply_method(method, model, calib, cell.seed)
                info, timings["apply_s"] = dict(method.info), time.perf_counter() - t
            else:  # apply_s: the time the (maybe earlier) apply took
                model, info, timings["apply_s"], timings["apply_reused"] = shared.applied(cell, method, device, calib)
            record["method_info"] = info
            torch.manual_seed(cell.seed)
            t = time.perf_counter()
            metrics = TASKS.get(cell.task)(model, TaskContext(cell.model, device, work, cell.task_options()))
            timings["task_s"] = time.perf_counter() - t
            record["items"] = metrics.pop("items", [])
            record["intervals"] = intervals(cell.task, record["items"])
            record["metrics"] = metrics
            record["status"] = "ok"
        except BenchError:
            raise
        except Exception as e:
            record["status"] = "failed"
            record["error"] = f"{type(e).__name__}: {e}"
            record["traceback"] = traceback.format_exc()
    timings["total_s"] = time.perf_counter() - t0
    return record


def parse_bits(text: str) -> int | None:
    if text.lower() in ("fp", "none", "32", "16"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer bit width or 'fp', got {text!r}") from None


def parse_option(text: str) -> tuple[str, Any]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="micro", help="model name (python -m bench.list); default: micro")
    p.add_argument("--method", default="fp", help="method name (python -m bench.list); default: fp")
    p.add_argument("--w-bits", type=parse_bits, default=None, help="weight bits 2..8, or fp (default)")
    p.add_argument("--a-bits", type=parse_bits, default=None, help="activation bits 2..8, or fp (default)")
    p.add_argument("--task", default="size", help="task name (python -m bench.list); default: size")
    p.add_argument("--tag", default="", help="a free label of the cell, kept in the record (e.g. a budget)")
    p.add_argument("--set", dest="options", type=parse_option, action="append", default=[],
                   metavar="KEY=VALUE", help="a method option (YAML value), repeatable")
    p.add_argument("--checkpoints", help="folder with official checkpoints (default: $BENCH_CHECKPOINTS)")
    p.add_argument("--random-init", action="store_true", help="build without loading weights")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when present, else cpu)")
    p.add_argument("--davis-root", help="vos: the video set's folder, in the layout --vos-format names (default "
                   "$BENCH_DAVIS, $BENCH_SAV or $BENCH_MOSE by format, else the synthetic set)")
    p.add_argument("--vos-format", default="davis", choices=VOS_FORMATS,
                   help="vos: davis (DAVIS 2017 layout and evaluator, the default), sav (SA-V layout, per-object "
                        "PNGs, SA-V evaluator) or mose (MOSE layout, SA-V evaluator's rules)")
    p.add_argument("--track-later-objects", action="store_true",
                   help="vos (sav, mose): add each object on the first frame it appears in and track it alone "
                        "from there (vos_inference.py --track_object_appearing_later_in_video)")
    p.add_argument("--coco-root", help="COCO-layout folder (default $BENCH_COCO, else the synthetic set)")
    p.add_argument("--split", default="val", help="evaluation split (default val; calibration uses train)")
    p.add_argument("--sequences", type=lambda s: tuple(x for x in s.split(",") if x),
                   help="vos: comma-separated sequence names (default: the whole split)")
    p.add_argument("--max-frames", type=int, help="vos: first N frames of each sequence")
    p.add_argument("--max-images", type=int, help="instseg/coco-map: first N images (by id)")
    p.add_argument("--detections", help="coco-map: detection-results JSON (default ROOT/detections_<split>.json)")
    p.add_argument("--multimask", action="store_true", help="instseg: best of 3 masks by predicted IoU")
    p.add_argument("--calib-dir", help="folder of calibration images (default: the datasets' train splits)")
    p.add_argument("--calib-n", type=int, default=32,
                   help="calibration images, and video frames, from the train splits (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the record to this JSON file (atomically)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cell = Cell(
        model=args.model, method=args.method, task=args.task, w_bits=args.w_bits, a_bits=args.a_bits,
        method_options=dict(args.options), tag=args.tag, random_init=args.random_init, checkpoints=args.checkpoints,
        device=args.device, davis_root=args.davis_root, coco_root=args.coco_root, split=args.split,
        sequences=args.sequences, max_frames=args.max_frames, max_images=args.max_images,
        detections=args.detections, multimask=args.multimask, calib_dir=args.calib_dir, calib_n=args.calib_n,
        seed=args.seed, vos_format=args.vos_format, track_later=args.track_later_objects,
    )
    try:
        record = run_cell(cell)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(record, indent=2, sort_keys=True, default=str)
    print(text)
    if args.out:
        write_json_atomic(args.out, json.loads(text))
    if record["status"] != "ok":
        print(f"error: cell failed: {record['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
