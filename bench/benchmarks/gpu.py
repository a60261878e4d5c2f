"""Every method on a CUDA GPU at real model sizes: time and peak memory per method.

    python -m bench.benchmarks.gpu [--models sam2.1-t,sam2.1-l] [--methods ...] [--bits 4]

Per model (random weights; the synthetic sets, resized to the model's 1024x1024 input): RTN,
PTQ4SAM-S, PTQ4SAM-L reconstructing one block (`recon_units` 1, 20 iterations), SAQ-SAM with
one reconstruction unit, and a few QAT steps of LSQ, PACT and Q-SAM2 (3 steps, 2-frame
windows, bf16 autocast: bench.qat on CUDA), each then scored on VOS (the synthetic val
sequences' first 8 frames). Each is a `bench.run` cell run in this process; its peak is CUDA's
max_memory_allocated over the cell, its times the record's (method, task, total). The
`latency` task on CUDA (`python -m bench.run --task latency --device cuda`) runs the deployed
model's kernels there. Without a CUDA device the command says so in one line (exit 2).
"""

from __future__ import annotations

import argparse
import sys

import torch

from bench.cell import Cell
from bench.run import run_cell

CELLS: dict[str, tuple[str, dict]] = {  # label -> (method, options)
    "rtn": ("rtn", {}),
    "ptq4sam-S": ("ptq4sam", {}),
    "ptq4sam-L (1 block)": ("ptq4sam", {"recon": True, "iters": 20, "recon_units": 1}),
    "saqsam (1 unit)": ("saqsam", {"iters": 20, "recon_units": 1}),
    "lsq (3 steps)": ("lsq", {"steps": 3, "clip_frames": 2, "report_loss": False}),
    "pact (3 steps)": ("pact", {"steps": 3, "clip_frames": 2, "report_loss": False}),
    "qsam2 (3 steps)": ("qsam2", {"steps": 3, "clip_frames": 2, "report_loss": False}),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="sam2.1-t,sam2.1-l", help="comma-separated (default sam2.1-t,sam2.1-l)")
    p.add_argument("--methods", default=",".join(CELLS), help=f"comma-separated labels of: {', '.join(CELLS)}")
    p.add_argument("--bits", type=int, default=4, help="weight and activation bits (default 4)")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N; cpu only to check the command itself")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    if on_gpu and not torch.cuda.is_available():
        print("error: no CUDA GPU here: this command measures every method on one (see --help)", file=sys.stderr)
        return 2
    labels = [m for m in args.methods.split(",") if m]
    unknown = [m for m in labels if m not in CELLS]
    if unknown:
        p.error(f"--methods: unknown {', '.join(unknown)}; known: {', '.join(CELLS)}")
    where = torch.cuda.get_device_name(device) if on_gpu else "CPU (a check of the command)"
    print(f"{where}, torch {torch.__version__}, W{args.bits}A{args.bits}, "
          "random weights, synthetic data at the model's input size")
    print("| model | method | status | peak GiB | method s | task s | total s | J&F (8 frames) |\n"
          "|---|---|---|---:|---:|---:|---:|---:|")
    failed = 0
    for model in filter(None, args.models.split(",")):
        for label in labels:
            method, options = CELLS[label]
            cell = Cell(model=model, method=method, task="vos", w_bits=args.bits, a_bits=args.bits,
                        method_options=options, random_init=True, device=args.device, max_frames=8,
                        calib_n=4)
            if on_gpu:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            rec = run_cell(cell)
            peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f}" if on_gpu else "-"
            t = rec["timings"]
            jf = rec["metrics"].get("J&F")
            failed += rec["status"] != "ok"
            status = rec["status"] if rec["status"] == "ok" else f"failed: {rec.get('error', '')[:80]}"
            print(f"| {model} | {label} | {status} | {peak} | {t.get('apply_s', 0):.1f} | "
                  f"{t.get('task_s', 0):.1f} | {t.get('total_s', 0):.1f} | "
                  f"{'-' if jf is None else f'{jf:.1f}'} |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
