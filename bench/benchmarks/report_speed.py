"""How fast `python -m bench.report` turns a large sweep into its report: N records (default
1,000: vos and instseg cells with per-item scores like the synthetic val split's, and size
cells) written into a temporary folder, then the whole command (interpreter start, imports,
reading, intervals, paired comparisons, claims, tables, plots) timed as a subprocess, which
also checks that torch was never imported. Goal: seconds, not minutes, and no torch.

    python -m bench.benchmarks.report_speed [--records 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.intervals import aggregate, intervals
from bench.results import write_json_atomic

MODELS = ("sam2.1-t", "sam2.1-s", "sam2.1-b+", "sam2.1-l")
METHODS = (("fp", ""), ("rtn", ""), ("lsq", ""), ("pact", ""), ("pact", "two-sided"), ("qsam2", ""),
           ("qsam2", "vrc-only"), ("ptq4sam", "S"), ("ptq4sam", "L"), ("saqsam", "PCC+PAR"))
BITS = ((2, 4), (2, 8), (4, 4), (4, 8), (6, 6), (8, 8), (2, 2), (3, 4), (3, 8), (4, 6), (5, 5), (6, 8))
RUN = ("import sys, runpy; sys.argv = ['bench.report'] + sys.argv[1:]\ntry: runpy.run_module('bench.report', "
       "run_name='__main__')\nexcept SystemExit as e: code = e.code\nelse: code = 0\n"
       "assert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(code)")


def items(task: str, rng: np.random.Generator, level: float) -> list[dict]:
    """Items shaped like the synthetic val split's: 8 sequences / 18 objects, 24 images / 75 objects."""
    if task == "vos":
        return [{"sequence": f"val{s:04d}", "object": o, "J": float(np.clip(rng.normal(level, 8), 0, 100)),
                 "F": float(np.clip(rng.normal(level, 8), 0, 100))} for s in range(8) for o in range(1, 3 + s % 2)]
    return [{"image": i, "object": 10 * i + o, "IoU": float(np.clip(rng.normal(level, 15), 0, 100)),
             "area": "small" if o == 0 else "medium"} for i in range(24) for o in range(3 + i % 2)]


def write_records(folder: Path, n: int) -> int:
    rng = np.random.default_rng(0)
    written = 0
    for model, (method, variant), (w, a), task in itertools.product(MODELS, METHODS, BITS, ("vos", "instseg", "size")):
        if written >= n:
            break
        bits = (None, None) if method == "fp" else (w, a)
        if method == "fp" and (w, a) != BITS[0]:
            continue
        rec = {"model": model, "method": method, "variant": variant, "w_bits": bits[0], "a_bits": bits[1],
               "task": task, "status": "ok", "schema_version": 2, "date": "2026-01-01T00:00:00+00:00"}
        if task == "size":
            size = 2**20 * (40 if method == "fp" else 40 * (w or 16) / 16)
            rec.update(metrics={"size_bytes": size, "x_smaller_than_bf16": 40 * 2**20 / size}, items=[])
        else:
            its = items(task, rng, 80 - 30 / (w or 16))
            rec.update(metrics=aggregate(task, its), items=its, intervals=intervals(task, its))
        write_json_atomic(folder / f"{written:05d}.json", rec)
        written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "big"
        n = write_records(folder, args.records)
        times = []
        for i in range(args.repeats):
            t = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", RUN, str(folder), "--out", str(Path(tmp) / f"out{i}")],
                                  capture_output=True, text=True)
            times.append(time.perf_counter() - t)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return 1
        print(f"bench.report on {n} records: fastest {min(times):.2f} s, slowest {max(times):.2f} s "
              f"({args.repeats} runs, whole command); torch not imported")
    return 0


if __name__ == "__main__":
    sys.exit(main())
