"""`vos`: semi-supervised video object segmentation, J&F on a DAVIS-2017-layout set.

The official SAM2 protocol (`tools/vos_inference.py`): per sequence, `init_state` on its
frames, `add_new_mask` on frame 0 for every object present in the first GT frame (an id of
1..N missing there is not tracked, so it is predicted empty, and still scored),
`propagate_in_video`, logits thresholded at 0, post-processing off, one palette PNG per frame
(lower object ids drawn last, as the official script does). The model runs in float32 on every
device (the official script autocasts to bf16 on CUDA): every row of a comparison, FP and
quantized, is computed in one dtype. The predictions are then scored by
`bench.metrics.davis.evaluate_vos` exactly as `python -m bench.score vos` scores a folder; the
per-object J and F (x100) are the record's `items`.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bench import BenchError
from bench.data.davis import DavisSet, write_palette_png
from bench.metrics.davis import evaluate_vos
from bench.tasks import TaskContext


def merge(per_obj: dict[int, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """One label map from binary object masks; lower ids win overlaps (official script)."""
    out = np.zeros(shape, np.uint8)
    for obj_id in sorted(per_obj, reverse=True):
        out[per_obj[obj_id]] = obj_id
    return out


@torch.inference_mode()
def predict_sequence(model: nn.Module, ds: DavisSet, seq: str, frames_dir: Path, out_dir: Path, write) -> int:
    """Predict one sequence; `write(path, labels)` saves each frame's palette PNG. Returns
    the number of frames."""
    names = ds.frames(seq)
    out_dir.mkdir(parents=True, exist_ok=True)
    prompts = ds.first_masks(seq)
    if not prompts:  # nothing to track (sam2 refuses to propagate without a prompt)
        shape = ds.read_mask(seq, names[0]).shape
        for name in names:
            write(out_dir / f"{name}.png", np.zeros(shape, np.uint8))
        return len(names)
    shape = next(iter(prompts.values())).shape
    state = model.init_state(str(frames_dir))
    for obj_id, mask in prompts.items():
        model.add_new_mask(state, frame_idx=0, obj_id=obj_id, mask=mask)
    for idx, obj_ids, logits in model.propagate_in_video(state):
        masks = (logits > 0.0).cpu().numpy()[:, 0]
        write(out_dir / f"{names[idx]}.png", merge(dict(zip(obj_ids, masks)), shape))
    model.reset_state(state)
    return len(names)


def dataset(ctx: TaskContext) -> DavisSet:
    o = ctx.options
    if not o.get("davis_root"):
        raise BenchError("vos needs a DAVIS-layout folder: --davis-root or $BENCH_DAVIS")
    return DavisSet(o["davis_root"], split=o.get("split", "val"), sequences=o.get("sequences"),
                    max_frames=o.get("max_frames"))


def run(model: nn.Module, ctx: TaskContext) -> dict:
    ds = dataset(ctx)
    pred_dir = ctx.work_dir / "vos_predictions"
    frames = 0
    t0 = time.perf_counter()
    writes = []
    with ThreadPoolExecutor(max_workers=1) as pool:  # PNG encoding overlaps with inference

        def write(path: Path, labels: np.ndarray) -> None:
            writes.append(pool.submit(write_palette_png, path, labels))

        for seq in tqdm(ds.sequences, desc="vos", unit="seq", disable=not ctx.options.get("progress", True)):
            folder = ds.link_frames(seq, ctx.work_dir / "vos_frames" / seq)
            frames += predict_sequence(model, ds, seq, folder, pred_dir / seq, write)
    for w in writes:
        w.result()  # re-raises a failed write
    seconds = time.perf_counter() - t0
    scores = evaluate_vos(ds, pred_dir)
    items = [{k: r[k] for k in ("sequence", "object", "J", "F")} for r in scores.pop("per_object")]
    scores.pop("per_sequence")  # the mean of each sequence's items
    return {**scores, "frames": frames, "fps": frames / seconds, "sequences": len(ds.sequences), "items": items}
