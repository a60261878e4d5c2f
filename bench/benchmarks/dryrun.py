"""How fast `bench.sweep --dry-run` answers on a large grid: the whole command (interpreter
start, imports, YAML, validation, expansion, hashing, the skip scan of an existing results
folder and the listing) timed as a subprocess. Goal: < 3 s for 100+ cells.

    python -m bench.benchmarks.dryrun [--models 9] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.models import MODELS

SAM2_MODELS = [name for name, entry in MODELS.items() if entry.family == "sam2"]  # the README's grid


def grid(n_models: int) -> str:
    models = ", ".join(SAM2_MODELS[:n_models])
    return f"""
name: dryrun
models: [{models}]
methods: [fp, rtn, {{name: rtn, tag: decoder-only, options: {{components: [mask_decoder]}}}}]
bits: [[8, 8], [4, 4], [4, 8], [2, 4], [2, 8]]
tasks: [size, vos, instseg, coco-map]
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=len(SAM2_MODELS), help="how many SAM2 zoo models in the grid")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dryrun.yaml"
        path.write_text(grid(args.models))
        cmd = [sys.executable, "-m", "bench.sweep", str(path), "--dry-run", "--results", str(Path(tmp) / "results")]
        times, cells = [], 0
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            times.append(time.perf_counter() - t0)
            cells = sum(line.startswith("  run ") for line in out.stdout.splitlines())
    print(f"dry-run of {cells} cells: median {statistics.median(times):.2f} s, "
          f"min {min(times):.2f} s, max {max(times):.2f} s over {args.repeats} runs (goal < 3 s)")


if __name__ == "__main__":
    main()
