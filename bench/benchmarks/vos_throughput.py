"""VOS evaluation throughput: the harness's `vos` task vs a bare SAM2VideoPredictor loop.

Both run the same model on the same sequences: the bare loop is `init_state`, `add_new_mask`
for every first-frame object, `propagate_in_video` and nothing else; the task adds what an
evaluation needs (frame selection, thresholding, palette PNGs, J&F scoring). Timed
round-robin in one process. Figures: frames / fastest run of each (the goal's ratio: other
load only ever adds time, and on a shared CPU single runs vary by 10-30%, enough to swing a
ratio of medians by more than the 5% being measured) and frames / median run.

    python -m bench.benchmarks.vos_throughput [--model micro] [--davis-root ROOT] [--repeats 11] [--random-init]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.cell import Cell, ensure_data, with_data_roots
from bench.models import build_model
from bench.tasks import TaskContext, vos


@torch.inference_mode()
def bare_loop(model, ds, folders: dict[str, Path]) -> int:
    frames = 0
    for seq, folder in folders.items():
        state = model.init_state(str(folder))
        for obj_id, mask in ds.first_masks(seq).items():
            model.add_new_mask(state, frame_idx=0, obj_id=obj_id, mask=mask)
        for _ in model.propagate_in_video(state):
            frames += 1
        model.reset_state(state)
    return frames


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="micro")
    p.add_argument("--checkpoints")
    p.add_argument("--random-init", action="store_true", help="build without weights")
    p.add_argument("--davis-root")
    p.add_argument("--device")
    p.add_argument("--repeats", type=int, default=11)
    args = p.parse_args(argv)
    cell = with_data_roots(Cell(model=args.model, method="fp", task="vos", davis_root=args.davis_root))
    ensure_data(cell)
    model = build_model(args.model, args.checkpoints, random_init=args.random_init, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = TaskContext(args.model, str(model.device), Path(tmp), {**cell.task_options(), "progress": False})
        ds = vos.dataset(ctx)
        folders = {s: ds.link_frames(s, Path(tmp) / "bare" / s) for s in ds.sequences}
        runs = {"bare loop": lambda: bare_loop(model, ds, folders), "vos task": lambda: vos.run(model, ctx)["frames"]}
        times: dict[str, list[float]] = {n: [] for n in runs}
        frames = {n: f() for n, f in runs.items()}  # warm-up
        for _ in range(args.repeats):
            for n, f in runs.items():
                t0 = time.perf_counter()
                f()
                times[n].append(time.perf_counter() - t0)
    fps = {n: frames[n] / statistics.median(t) for n, t in times.items()}
    print(f"{args.model} on {cell.davis_root} ({len(ds.sequences)} sequences, {frames['bare loop']} frames), "
          f"device {model.device}, torch threads {torch.get_num_threads()}, repeats {args.repeats}")
    for n in runs:
        print(f"{n:<10} {fps[n]:8.1f} frames/s  (median {statistics.median(times[n]):.2f} s, "
              f"fastest {min(times[n]):.2f} s)")
    median = fps["vos task"] / fps["bare loop"]
    best = min(times["bare loop"]) / min(times["vos task"]) * frames["vos task"] / frames["bare loop"]
    print(f"ratio task / bare, fastest runs = {best:.3f} (goal >= 0.95: {'met' if best >= 0.95 else 'NOT met'}); "
          f"medians: {median:.3f}")


if __name__ == "__main__":
    main()
