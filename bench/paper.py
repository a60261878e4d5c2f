"""Published numbers (`bench/data/paper_results.csv`) and their match with our result cells.

The CSV is a verbatim copy of the project's curated list: one published figure per row, with
its provenance (`paper`, `source`, `checked`: `yes` when read in the named source itself).
Matching rules, so that a number is only set beside ours when it is the same cell:

- model, task and metric names must be equal, with one translation: the papers' `instseg`
  `mAP` (PTQ4SAM / SAQ-SAM: masks prompted by detector boxes, COCO segm AP) is our `coco-map`
  task (our `instseg` prompts with GT boxes and reports mIoU);
- the method name must be equal; an ablation variant matches the paper's `<method>-<variant>`
  (our `saq-sam` variant `pcc-only` is the paper's `saq-sam-pcc-only`);
- bits must be equal, the CSV's 32 meaning full precision (our null).

Datasets are not matched: the paper's set (`prompts_or_dataset`) is carried into the table
so that a reader sees what was measured on what.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from bench import BenchError

PAPER_CSV = Path(__file__).parent / "data" / "paper_results.csv"
COLUMNS = ("paper", "model", "prompts_or_dataset", "task", "metric", "method", "w_bits", "a_bits", "value",
           "source", "checked")
TASK_ALIASES = {("instseg", "mAP"): "coco-map"}  # (paper task, metric) -> our task
FULL_PRECISION = 32


def load_paper(path: Path = PAPER_CSV) -> pd.DataFrame:
    """The published rows with `task` in our names and bits as int or None (full precision)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise BenchError(f"{path}: cannot read the published numbers ({e.strerror})") from None
    if rows and set(COLUMNS) - set(rows[0]):
        raise BenchError(f"{path}: missing columns {sorted(set(COLUMNS) - set(rows[0]))}")
    for r in rows:
        r["task"] = TASK_ALIASES.get((r["task"], r["metric"]), r["task"])
        for key in ("w_bits", "a_bits"):
            r[key] = None if int(r[key]) == FULL_PRECISION else int(r[key])
        r["value"] = float(r["value"])
    return pd.DataFrame(rows, columns=list(COLUMNS), dtype=object)


def paper_method(method: str, variant: str) -> str:
    """How the CSV names our method (and ablation variant)."""
    return f"{method}-{variant}" if variant else method


def match(ours: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """One row per (our value, published value) pair of the same cell: our columns `model,
    method, variant, w_bits, a_bits, task, metric, value, data` plus the paper's `paper,
    prompts_or_dataset, source, checked` and `published`, and `diff` = ours - published."""
    published = {}
    for r in paper.to_dict("records"):
        key = (r["model"], r["method"], r["w_bits"], r["a_bits"], r["task"], r["metric"])
        published.setdefault(key, []).append(r)
    rows = []
    for r in ours.to_dict("records"):
        key = (r["model"], paper_method(r["method"], r["variant"]), r["w_bits"], r["a_bits"], r["task"], r["metric"])
        for p in published.get(key, []):
            rows.append({**r, "paper": p["paper"], "prompts_or_dataset": p["prompts_or_dataset"],
                         "source": p["source"], "checked": p["checked"], "published": p["value"],
                         "diff": r["value"] - p["value"]})
    return pd.DataFrame(rows)
