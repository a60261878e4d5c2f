"""Time cost of mapping large allocations apart (`bench.peak.map_large_allocations`, what
training and reconstruction do on CPU): SAM2.1-t's FP training step on an image sample
(recomputation as in training) and an evaluation frame, at its input size with random weights,
alternating in one process between glibc's 32 MiB ceiling (where its dynamic threshold ends
after a few large frees) and `MMAP_THRESHOLD`; the fastest of `--repeats` rounds of each.

    python -m bench.benchmarks.malloc [--model sam2.1-t] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import ctypes
import tempfile
import time
from pathlib import Path

import torch

from bench.calib import CalibData
from bench.data.synth import ensure_default
from bench.models import MODELS, build_model
from bench.peak import MMAP_THRESHOLD, set_mmap_threshold
from bench.qat import QATConfig, forward, make_optimizer, recomputation, recompute_mode, teacher_outputs, train_step
from bench.qat_samples import ImageSample, model_samples

GLIBC_CEILING = 32 << 20  # bytes: glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit systems


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="sam2.1-t", choices=sorted(MODELS))
    p.add_argument("--repeats", type=int, default=3, help="rounds of each rule (default 3)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not set_mmap_threshold(GLIBC_CEILING):
        raise SystemExit("error: needs glibc (mallopt)")
    libc = ctypes.CDLL("libc.so.6")
    with tempfile.TemporaryDirectory() as tmp:
        root = ensure_default()
        calib = CalibData.from_datasets(str(root / "davis"), str(root / "coco"), 2, Path(tmp))
        model = build_model(args.model, random_init=True, device="cpu")
        image = next(s for s in model_samples(calib, model, 2) if isinstance(s, ImageSample))
    (ref,) = teacher_outputs(model, [image])
    cfg = QATConfig(w_bits=4, a_bits=4)  # FP training: only the loss and recomputation settings count
    mode = recompute_mode(model, cfg)
    model.eval()
    opt, clip_sets = make_optimizer(model, cfg)
    rules = {f"glibc's ceiling ({GLIBC_CEILING >> 20} MiB)": GLIBC_CEILING,
             f"mapped apart ({MMAP_THRESHOLD >> 10} KiB)": MMAP_THRESHOLD}
    times: dict[str, list[tuple[float, float]]] = {r: [] for r in rules}
    for _ in range(args.repeats):
        for rule, size in rules.items():
            set_mmap_threshold(size)
            libc.malloc_trim(0)
            t = time.perf_counter()
            with recomputation(model, mode):
                train_step(model, [(image, ref)], cfg, opt, clip_sets)
            step = time.perf_counter() - t
            opt.zero_grad(set_to_none=True)
            t = time.perf_counter()
            with torch.no_grad():
                forward(model, image)
            times[rule].append((step, time.perf_counter() - t))
    print(f"{args.model} (random weights) at its input size, FP, threads {torch.get_num_threads()}, "
          f"torch {torch.__version__}, fastest of {args.repeats}, alternating in one process")
    print("| large allocations | training step s | evaluation frame s |\n|---|---:|---:|")
    for rule, ts in times.items():
        print(f"| {rule} | {min(t[0] for t in ts):.2f} | {min(t[1] for t in ts):.2f} |")


if __name__ == "__main__":
    main()
