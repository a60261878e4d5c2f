"""QAT step time of each QAT method divided by the FP training step time (goal <= 1.5x).

    python -m bench.benchmarks.qat_step [--repeats 5] [--bits 4] [--random-init] [--threads 1]

The same training step (bench.qat.train_step: forward of the evaluation code path, the loss
against cached FP teacher outputs, backward, AdamW step, quantizer upkeep) on the micro model,
over a fixed round of samples from the synthetic train split (images with their GT boxes and
video windows); FP = the unquantized model with the same step. Variants run round-robin in one
process; each figure is the median over repeats of the mean step time of a round.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.calib import CalibData
from bench.method import Method
from bench.models import build_model
from bench.qat import make_optimizer, teacher_outputs, train_step
from bench.qat_samples import ImageSample, build_samples
from bench.quant.learned import learned_quantizers

VARIANTS = {
    "lsq": ("lsq", {}),
    "pact": ("pact", {}),
    "qsam2 (vrc+lsc)": ("qsam2", {}),
    "qsam2 (rtn quantizers)": ("qsam2", {"lsc": False, "vrc": False}),
}


def prepared(fp: torch.nn.Module, name: str, options: dict, bits: int, calib: CalibData):
    """A copy of `fp` quantized by the method's `prepare` (wrap, quantizers, calibration)."""
    method = Method.from_options(name, bits, bits, options)
    model = copy.deepcopy(fp)
    method.prepare(model, calib)
    return model, method


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--bits", type=int, default=4, help="weight and activation bits (4)")
    p.add_argument("--images", type=int, default=4, help="images per round (4)")
    p.add_argument("--windows", type=int, default=2, help="video windows per round (2)")
    p.add_argument("--clip-frames", type=int, default=4)
    p.add_argument("--random-init", action="store_true", help="random weights instead of the shipped checkpoint")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from bench.data.synth import ensure_default

    root = ensure_default()
    with tempfile.TemporaryDirectory() as tmp:
        calib = CalibData.from_datasets(str(root / "davis"), str(root / "coco"), 8, Path(tmp))
        fp = build_model("micro", random_init=args.random_init, device=args.device)
        samples = build_samples(calib, fp.image_size, args.clip_frames)
        images = [s for s in samples if isinstance(s, ImageSample)][: args.images]
        windows = [s for s in samples if not isinstance(s, ImageSample)][: args.windows]
        round_ = images + windows
        teacher = teacher_outputs(fp, round_)
        models = {"FP": (copy.deepcopy(fp), None)}
        for label, (name, options) in VARIANTS.items():
            models[label] = prepared(fp, name, options, args.bits, calib)
    cfg0 = next(m.config for _, m in models.values() if m is not None)
    runners = {}
    for label, (model, method) in models.items():
        cfg = method.config if method else cfg0
        model.eval()
        opt, params = make_optimizer(model, cfg)
        for q in learned_quantizers(model).values():
            q.train()
        term = method.regularizer() if method else None
        reg = (lambda m=model, t=term: t(m)) if term else None
        runners[label] = (model, cfg, opt, params, reg)
        step_round(*runners[label], round_, teacher)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(args.repeats):
        for label, runner in runners.items():
            t = time.perf_counter()
            step_round(*runner, round_, teacher)
            times[label].append((time.perf_counter() - t) / len(round_))
    fp_med = statistics.median(times["FP"])
    print(f"QAT step time, micro, W{args.bits}A{args.bits}, {len(images)} images + {len(windows)} windows of "
          f"{args.clip_frames} frames per round, {args.device}, {args.threads} thread(s), median of {args.repeats}")
    print("| variant | median s/step | x FP | goal |")
    print("|---|---:|---:|---|")
    for label, ts in times.items():
        med = statistics.median(ts)
        goal = "" if label == "FP" else ("<= 1.5: met" if med / fp_med <= 1.5 else "<= 1.5: not met")
        print(f"| {label} | {med:.4f} | {med / fp_med:.3f} | {goal} |")
    sys.stdout.flush()


def step_round(model, cfg, opt, params, reg, samples, teacher) -> None:
    for s, ref in zip(samples, teacher):
        train_step(model, [(s, ref)], cfg, opt, params, reg)


if __name__ == "__main__":
    main()
