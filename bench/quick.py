"""A quick comparison on the built-in model and data: methods x tasks, one table.

    python -m bench.quick [--model micro] [--out results/quick]

Runs FP, RTN W8A8 and RTN W4A4 (or `--cells`) through `vos` (J&F; not on a SAM model, which
has no video path) and `instseg` (mIoU) on the synthetic sets (generated on first use) or on
`--davis-root/--coco-root`, writes one record per cell into `--out`, and prints a Markdown
table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import BenchError
from bench.cell import Cell
from bench.models import model_entry
from bench.results import cell_interval, cell_value, metric, write_json_atomic
from bench.run import parse_bits, run_cell

DEFAULT_CELLS = ("fp", "rtn:8:8", "rtn:4:4")
COLUMNS = {"vos": ("J&F", "J", "F"), "instseg": ("mIoU",)}


def parse_cell(text: str) -> tuple[str, int | None, int | None]:
    """`method[:w_bits[:a_bits]]`, e.g. `rtn:4:8`."""
    parts = text.split(":")
    bits = [parse_bits(b) for b in parts[1:3]] + [None, None]
    return parts[0], bits[0], bits[1]


def shown(record: dict, m) -> str:
    """The value with half the width of its 95% interval, e.g. `84.1 ±1.6`."""
    row = {"status": record["status"], "metrics": record["metrics"],
           "intervals": (record.get("intervals") or {}).get("metrics") or {}}
    value, ci = cell_value(row, m), cell_interval(row, m)
    text = "-" if value is None else f"{value:.{m.digits}f}"
    return text + (f" ±{(ci[1] - ci[0]) / 2:.{m.digits}f}" if ci and value is not None else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="micro")
    p.add_argument("--cells", default=",".join(DEFAULT_CELLS), help="method[:w[:a]],... (default %(default)s)")
    p.add_argument("--davis-root")
    p.add_argument("--coco-root")
    p.add_argument("--checkpoints")
    p.add_argument("--device")
    p.add_argument("--out", default="results/quick", help="folder for the records (default results/quick)")
    args = p.parse_args(argv)
    rows = []
    try:
        tasks = [t for t in COLUMNS if t in model_entry(args.model).tasks]
        for spec in args.cells.split(","):
            method, w, a = parse_cell(spec)
            row = {"method": spec}
            for task in tasks:
                cell = Cell(model=args.model, method=method, task=task, w_bits=w, a_bits=a,
                            davis_root=args.davis_root, coco_root=args.coco_root,
                            checkpoints=args.checkpoints, device=args.device)
                record = run_cell(cell)
                name = f"{args.model}_{spec.replace(':', '-')}_{task}.json"
                write_json_atomic(Path(args.out) / name, record)
                if record["status"] != "ok":
                    print(f"error: {spec} {task} failed: {record['error']}", file=sys.stderr)
                    return 1
                row.update({k: shown(record, metric(task, k)) for k in COLUMNS[task]})
            rows.append(row)
            print(f"done: {spec}", file=sys.stderr)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    keys = [k for t in tasks for k in COLUMNS[t]]
    print(f"| {args.model} | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for row in rows:
        print(f"| {row['method']} | " + " | ".join(row[k] for k in keys) + " |")
    print(f"records: {args.out}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
