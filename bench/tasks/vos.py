"""`vos`: semi-supervised video object segmentation, J&F on a video set in its own format
(`--vos-format davis | sav | mose`, `bench.data.vos`), scored by that benchmark's evaluator.

Inference is SAM2's `tools/vos_inference.py`:
- per sequence, `init_state` on all its frames, `add_new_mask` on frame 0 for every object of
  the first annotation (DAVIS: the ids present there, so an id of 1..N missing there is
  predicted empty and still scored; SA-V: every object folder, even an empty mask; MOSE: every
  non-zero id), `propagate_in_video`, logits thresholded at 0, post-processing off;
- with `track_later` (`--track_object_appearing_later_in_video`; SA-V and MOSE layouts) each
  object is tracked on its own from its first annotated non-empty frame forward, and a frame
  before that is empty for it; palette output then gives each pixel to the object with the
  highest logit (sam2's non-overlapping constraint), if that logit is > 0;
- palette formats write one PNG per frame (lower object ids drawn last; masks made
  non-overlapping by the predictor), SA-V one binary PNG per object and frame
  (`--per_obj_png_file`: the predictor runs with `non_overlap_masks=false`, masks overlap).

The model runs in float32 on every device (the official script autocasts to bf16 on CUDA):
every row of a comparison, FP and quantized, is computed in one dtype. The predictions are
then scored exactly as `python -m bench.score vos` scores a folder; the per-object J and F
(x100) are the record's `items`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bench import BenchError
from bench.data.davis import write_palette_png
from bench.data.video import VideoSet, image_size
from bench.data.vos import open_video_set
from bench.tasks import TaskContext

ITEM_KEYS = ("sequence", "object", "J", "F", "first_frame")
Write = Callable[[Path, np.ndarray], None]


def merge(per_obj: dict[int, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """One label map from binary object masks; lower ids win overlaps (official script)."""
    out = np.zeros(shape, np.uint8)
    for obj_id in sorted(per_obj, reverse=True):
        out[per_obj[obj_id]] = obj_id
    return out


def track_jointly(model: nn.Module, frames_dir: Path, prompts: dict[int, tuple[int, np.ndarray]]) -> Iterator:
    """(frame index, {object id: logits}) of every frame: all objects in one state, prompted on
    frame 0 (`vos_inference`)."""
    state = model.init_state(str(frames_dir))
    for obj_id, (_, mask) in prompts.items():
        model.add_new_mask(state, frame_idx=0, obj_id=obj_id, mask=mask)
    for idx, obj_ids, logits in model.propagate_in_video(state):
        yield idx, {obj: logits[k, 0] for k, obj in enumerate(obj_ids)}
    model.reset_state(state)


def track_separately(model: nn.Module, frames_dir: Path, prompts: dict[int, tuple[int, np.ndarray]]) -> Iterator:
    """(object id, frame index, logits) of each object alone, from its prompt frame forward
    (`vos_separate_inference_per_object`), objects in id order."""
    state = model.init_state(str(frames_dir))
    for obj_id in sorted(prompts):
        start, mask = prompts[obj_id]
        model.reset_state(state)
        model.add_new_mask(state, frame_idx=start, obj_id=obj_id, mask=mask)
        for idx, _, logits in model.propagate_in_video(state, start_frame_idx=start, reverse=False):
            yield obj_id, idx, logits[0, 0]
    model.reset_state(state)


def _binary(logits: torch.Tensor) -> np.ndarray:
    return (logits > 0.0).cpu().numpy()


def _frame_shape(ds: VideoSet, seq: str, prompts: dict[int, tuple[int, np.ndarray]]) -> tuple[int, int]:
    if prompts:
        return next(iter(prompts.values()))[1].shape
    return image_size(ds.image_path(seq, ds.frames(seq)[0]))


def write_palette(model, ds: VideoSet, seq: str, frames_dir: Path, out_dir: Path, write: Write, later: bool) -> None:
    names = ds.frames(seq)
    prompts = ds.prompts(seq, later)
    shape = _frame_shape(ds, seq, prompts)
    if not prompts:  # nothing to track (sam2 refuses to propagate without a prompt)
        for name in names:
            write(out_dir / f"{name}.png", np.zeros(shape, np.uint8))
        return
    if not later:
        for idx, logits in track_jointly(model, frames_dir, prompts):
            write(out_dir / f"{names[idx]}.png", merge({k: _binary(v) for k, v in logits.items()}, shape))
        return
    best = [np.full(shape, -np.inf, np.float32) for _ in names]  # highest logit so far, and whose
    labels = [np.zeros(shape, np.uint8) for _ in names]
    for obj_id, idx, logits in track_separately(model, frames_dir, prompts):
        score = logits.float().cpu().numpy()
        higher = score > best[idx]  # ties go to the lower id, as torch.argmax in sam2's constraint
        best[idx][higher], labels[idx][higher] = score[higher], obj_id
    for name, b, lab in zip(names, best, labels):
        write(out_dir / f"{name}.png", np.where(b > 0, lab, 0).astype(np.uint8))


def write_per_object(model, ds, seq: str, frames_dir: Path, out_dir: Path, write: Write, later: bool) -> None:
    """SA-V: `<obj folder>/<frame>.png` for every object and frame (empty where not tracked)."""
    names, folders = ds.frames(seq), ds.objects(seq)
    prompts = ds.prompts(seq, later)
    shape = _frame_shape(ds, seq, prompts)
    done: set[tuple[int, int]] = set()
    if later:
        tracked = track_separately(model, frames_dir, prompts)
    else:
        joint = track_jointly(model, frames_dir, prompts)
        tracked = ((obj, idx, v) for idx, logits in joint for obj, v in logits.items())
    for obj, idx, logits in tracked:
        write(out_dir / folders[obj] / f"{names[idx]}.png", _binary(logits))
        done.add((obj, idx))
    for obj, folder in folders.items():
        for idx, name in enumerate(names):
            if (obj, idx) not in done:
                write(out_dir / folder / f"{name}.png", np.zeros(shape, bool))


@torch.inference_mode()
def predict_sequence(model: nn.Module, ds: VideoSet, seq: str, frames_dir: Path, out_dir: Path, write: Write,
                     later: bool = False) -> int:
    """Predict one sequence; `write(path, labels)` saves each PNG. Returns the number of frames."""
    out_dir.mkdir(parents=True, exist_ok=True)
    predict = write_per_object if ds.per_object_png else write_palette
    predict(model, ds, seq, frames_dir, out_dir, write, later)
    return len(ds.frames(seq))


@contextlib.contextmanager
def overlapping_masks(model: nn.Module, allowed: bool) -> Iterator[None]:
    """sam2's output masks may overlap (`non_overlap_masks=false`, as `vos_inference.py` builds
    the predictor for per-object PNGs) for the duration; only the output masks change."""
    old = getattr(model, "non_overlap_masks", None)
    if old is not None:
        model.non_overlap_masks = not allowed
    try:
        yield
    finally:
        if old is not None:
            model.non_overlap_masks = old


def dataset(ctx: TaskContext) -> VideoSet:
    o = ctx.options
    fmt = o.get("vos_format") or "davis"
    if not o.get("davis_root"):
        raise BenchError(f"vos needs a video set folder in the {fmt} format: --davis-root or the "
                         "format's environment variable ($BENCH_DAVIS, $BENCH_SAV, $BENCH_MOSE)")
    return open_video_set(o["davis_root"], fmt, split=o.get("split", "val"), sequences=o.get("sequences"),
                          max_frames=o.get("max_frames"))


def score(ds: VideoSet, pred_dir: Path) -> dict:
    """The benchmark's own evaluator on the predictions of the set's selected sequences and frames."""
    if ds.layout == "davis":
        from bench.metrics.davis import evaluate_vos

        return evaluate_vos(ds, pred_dir)
    from bench.metrics.sav import evaluate_palette, evaluate_per_object

    for seq in ds.sequences:
        if len(ds.annotated_frames(seq)) < 3:
            raise BenchError(f"{ds.mask_dir(seq)}: {len(ds.annotated_frames(seq))} annotated frame(s), at least 3 are "
                             "needed (the first and last are not scored); a split annotated on its first frame only "
                             "(MOSE's valid) is scored by its benchmark's server")
    evaluate = evaluate_per_object if ds.per_object_png else evaluate_palette
    return evaluate(ds.annotation_root, pred_dir, ds.sequences, {s: set(ds.frames(s)) for s in ds.sequences})


def run(model: nn.Module, ctx: TaskContext) -> dict:
    ds = dataset(ctx)
    later = bool(ctx.options.get("track_later"))
    pred_dir = ctx.work_dir / "vos_predictions"
    frames = 0
    t0 = time.perf_counter()
    writes = []
    with ThreadPoolExecutor(max_workers=1) as pool, overlapping_masks(model, ds.per_object_png):

        def write(path: Path, labels: np.ndarray) -> None:  # PNG encoding overlaps with inference
            writes.append(pool.submit(write_palette_png, path, labels))

        for seq in tqdm(ds.sequences, desc="vos", unit="seq", disable=not ctx.options.get("progress", True)):
            folder = ds.link_frames(seq, ctx.work_dir / "vos_frames" / seq)
            frames += predict_sequence(model, ds, seq, folder, pred_dir / seq, write, later)
    for w in writes:
        w.result()  # re-raises a failed write
    seconds = time.perf_counter() - t0
    scores = score(ds, pred_dir)
    items = [{k: r[k] for k in ITEM_KEYS if k in r} for r in scores.pop("per_object")]
    scores.pop("per_sequence")  # the mean of each sequence's items
    return {**scores, "frames": frames, "fps": frames / seconds, "sequences": len(ds.sequences), "items": items}
