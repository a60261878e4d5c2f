"""What the papers say: published numbers (`bench/data/paper_results.csv`) matched to our cells,
and the papers' claims (`bench/data/paper_claims.csv`) checked on a sweep's cells.

Both CSVs keep their provenance (`paper`, `source`; `checked: yes` when a number was read in
the named source itself). Matching rules, so that a number is only set beside ours when it is
the same cell:

- model, task and metric names must be equal, with one translation: the papers' `instseg`
  `mAP` (PTQ4SAM / SAQ-SAM: masks prompted by detector boxes, COCO segm AP) is our `coco-map`
  task (our `instseg` prompts with GT boxes and reports mIoU);
- our (method, canonical variant) is translated into the paper's name by `PAPER_NAMES`; a
  cell with a sweep `tag` (a budget study) never matches; a `+evalbug` row (the official
  code's evaluation bug reproduced, `eval_dropout_bug: true`) matches the published name of
  the same configuration without it: the published figures were made with that code, so the
  table shows them beside the correct row and beside the reproduction of the bug;
- model names are the same on both sides (`sam-b`, `sam-l`, `sam-h`: SAM ViT-B/L/H, the
  models both PTQ papers measured; `sam2.1-t`, ...);
- bits must be equal, the CSV's 32 meaning full precision (our null);
- the dataset must be the same: the record's `dataset` (e.g. `sa-v test`, `mose val`, `coco
  val`) equals the paper's `prompts_or_dataset`, whose detector (`coco-val2017 YOLOX-l
  boxes`) is carried into the table (the boxes are the cell's `--detections`, which the record
  does not name), so a reader sees which boxes the published number used. A COCO split is
  compared with its year: the harness reads only COCO 2017 (`instances_<split>2017.json`), so
  a record's `coco val` (the split as the sweep names it) is `coco val2017`.
"""

from __future__ import annotations

import csv
import fnmatch
import re
from pathlib import Path
from typing import Any

import pandas as pd

from bench import BenchError
from bench.intervals import Paired
from bench.results import EVAL_BUG, bits_order, cell_index, cell_value, compare, metric

DATA = Path(__file__).parent / "data"
PAPER_CSV = DATA / "paper_results.csv"
CLAIMS_CSV = DATA / "paper_claims.csv"
COLUMNS = ("paper", "model", "prompts_or_dataset", "task", "metric", "method", "w_bits", "a_bits", "value",
           "source", "checked")
CLAIM_COLUMNS = ("paper", "claim_id", "claim", "method", "variant", "against", "models", "w_bits", "a_bits", "task",
                 "metric", "kind", "paper_value", "proxy_task", "proxy_metric", "source")
CLAIM_KINDS = ("gain_over", "relative_gain_over", "drop_at_most", "ratio_at_least")
TASK_ALIASES = {("instseg", "mAP"): "coco-map"}  # (paper task, metric) -> our task
FULL_PRECISION = 32
# (our method, canonical variant) -> the papers' name of that configuration
PAPER_NAMES = {
    ("fp", ""): "fp",
    ("rtn", ""): "minmax",  # min/max ranges (the scope, e.g. the protocol's full-precision list, is not a variant)
    ("ptq4sam", "S"): "ptq4sam-s",
    ("ptq4sam", "L"): "ptq4sam-l",
    ("ptq4sam", "L-noBIG-noAGQ"): "qdrop",  # QDrop block reconstruction without PTQ4SAM's additions
    ("saqsam", "PCC+PAR"): "saq-sam",
    ("saqsam", "PCC"): "saq-sam-pcc-only",
    ("saqsam", "PAR"): "saq-sam-par-only",
}
VERDICTS = ("reproduced", "contradicted", "inconclusive", "not measured by this sweep")


def read_csv(path: Path, columns: tuple[str, ...], what: str) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise BenchError(f"{path}: cannot read the {what} ({e.strerror})") from None
    if rows and set(columns) - set(rows[0]):
        raise BenchError(f"{path}: missing columns {sorted(set(columns) - set(rows[0]))}")
    return rows


def load_paper(path: Path = PAPER_CSV) -> pd.DataFrame:
    """The published rows with `task` in our names and bits as int or None (full precision)."""
    rows = read_csv(path, COLUMNS, "published numbers")
    for r in rows:
        r["task"] = TASK_ALIASES.get((r["task"], r["metric"]), r["task"])
        for key in ("w_bits", "a_bits"):
            r[key] = None if int(r[key]) == FULL_PRECISION else int(r[key])
        r["value"] = float(r["value"])
    return pd.DataFrame(rows, columns=list(COLUMNS), dtype=object)


def paper_method(method: str, variant: str, tag: str = "") -> str | None:
    """How the papers name our method and canonical variant (None: no published counterpart);
    a `+evalbug` variant is named as the same configuration without the bug."""
    return None if tag else PAPER_NAMES.get((method, variant.removesuffix(EVAL_BUG)))


def dataset_key(text: str) -> str:
    """A dataset name as both sides are compared: lower case; a COCO split with its year, so the
    papers' `coco-val2017 <detector> boxes`, our `coco val2017` and our `coco val` (a sweep's
    `split: val`, which reads val2017) are all `coco val2017`."""
    t = " ".join(str(text).lower().split())
    m = re.match(r"coco[- ]([a-z]+)(?:2017)?\b", t)
    return f"coco {m.group(1)}2017" if m else t


def match(ours: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """One row per (our value, published value) pair of the same cell on the same dataset: our
    long-form columns (with `raw_variant`, `tag` and `dataset`) plus the paper's `paper,
    prompts_or_dataset, source, checked` and `published`, and `diff` = ours - published."""
    published: dict[tuple, list[dict]] = {}
    for r in paper.to_dict("records"):
        key = (r["model"], r["method"], r["w_bits"], r["a_bits"], r["task"], r["metric"],
               dataset_key(r["prompts_or_dataset"]))
        published.setdefault(key, []).append(r)
    rows = []
    for r in ours.to_dict("records"):
        name = paper_method(r["method"], r["raw_variant"], r["tag"])
        key = (r["model"], name, r["w_bits"], r["a_bits"], r["task"], r["metric"], dataset_key(r["dataset"]))
        for p in published.get(key, []) if name else []:
            rows.append({**r, "paper": p["paper"], "prompts_or_dataset": p["prompts_or_dataset"],
                         "source": p["source"], "checked": p["checked"], "published": p["value"],
                         "diff": r["value"] - p["value"]})
    return pd.DataFrame(rows, dtype=object)  # bits stay int or None beside FP rows (not float, NaN)


# -- claims --------------------------------------------------------------------------------------
def load_claims(path: Path = CLAIMS_CSV) -> list[dict[str, Any]]:
    """The claims ledger; each row a comparison the harness can evaluate."""
    rows = read_csv(path, CLAIM_COLUMNS, "claims")
    for i, r in enumerate(rows, start=2):
        if r["kind"] not in CLAIM_KINDS:
            raise BenchError(f"{path}: line {i}: kind {r['kind']!r}; allowed: {', '.join(CLAIM_KINDS)}")
        r["paper_value"] = float(r["paper_value"]) if r["paper_value"] else None
        r["against"] = [tuple((a.split(":", 1) + [""])[:2]) for a in r["against"].split(";") if a]
    return rows


def _bits_match(spec: str, bits: int | None) -> bool:
    return spec == "any" or (bits is not None and str(bits) in spec.split(";"))


def _places(claim: dict, index: dict[tuple, dict]) -> list[tuple[str, tuple, bool]]:
    """(task, key of our claimed cell, proxy or not) for every model and bits the sweep has the
    claimed method at: on the claim's task, else on its proxy task."""
    places = []
    for task, proxy in ((claim["task"], False), (claim["proxy_task"], True)):
        found = [k for k in index if task and k[1] == claim["method"] and index[k]["raw_variant"] == claim["variant"]
                 and not index[k]["tag"] and k[5] == task and _bits_match(claim["w_bits"], k[3])
                 and _bits_match(claim["a_bits"], k[4])]
        if found:
            return [(task, k, proxy) for k in sorted(found, key=lambda k: (k[0], bits_order(k[3], k[4])))]
    return places


def _baseline(index: dict[tuple, dict], key: tuple, against: list[tuple[str, str]], m) -> tuple[dict | None, str]:
    """The comparison cell: the named one at the same model, bits (FP: none) and task; of
    several (`lsq;pact`), the best by value."""
    model, _, _, w, a, task = key
    found = []
    for method, variant in against:
        bits = (None, None) if method == "fp" else (w, a)
        for k, r in index.items():
            if k[:2] == (model, method) and k[3:] == (*bits, task) and r["raw_variant"] == variant and not r["tag"]:
                found.append((cell_value(r, m), f"{method} {variant}".strip(), r))
    found = [f for f in found if f[0] is not None]
    if not found:
        return None, ""
    value, name, row = (max if m.higher else min)(found, key=lambda f: f[0])
    return row, name


def evaluate_claims(cells: pd.DataFrame, claims: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per claim and place it can be checked (model, bits, task): ours with its interval and a
    verdict; a claim the sweep cannot check gets one row 'not measured by this sweep'."""
    index = cell_index(cells)
    out = []
    for c in claims:
        rows = []
        for task, key, proxy in _places(c, index):
            m = metric(task, c["proxy_metric"] if proxy else c["metric"])
            if m is None:
                continue
            row = index[key]
            if c["kind"] == "ratio_at_least":
                value = cell_value(row, m)
                verdict = VERDICTS[3] if value is None else VERDICTS[0] if value >= c["paper_value"] else VERDICTS[1]
                rows.append({**c, "where": key, "metric_used": m, "proxy": proxy, "baseline": "bf16", "ours": value,
                             "low": None, "high": None, "n_items": None, "verdict": verdict})
                continue
            base, name = _baseline(index, key, c["against"], m)
            p = compare(row, base, m) if base is not None else None
            if p is None:
                continue
            rows.append({**c, "where": key, "metric_used": m, "proxy": proxy, "baseline": name,
                         **claim_verdict(c, p, cell_value(base, m))})
        out += rows or [{**c, "where": None, "verdict": VERDICTS[3]}]
    return out


def claim_verdict(c: dict, p: Paired, base_value: float | None) -> dict[str, Any]:
    """Ours as the claim states it (a gain, a relative gain in % of the baseline, or a drop),
    its interval, and the verdict: reproduced when the interval lies on the claim's side,
    contradicted when it lies on the other, else inconclusive. A claimed size ('up to +9.7') is
    shown beside ours, not required: the papers' figures are their best cases."""
    if c["kind"] == "drop_at_most":
        drop, low, high = -p.delta, -p.high, -p.low
        bound = c["paper_value"]
        verdict = VERDICTS[0] if high <= bound else VERDICTS[1] if low > bound else VERDICTS[2]
        return {"ours": drop, "low": low, "high": high, "n_items": p.n_items, "verdict": verdict}
    scale = 100.0 / base_value if c["kind"] == "relative_gain_over" and base_value else 1.0
    verdict = VERDICTS[0] if p.low > 0 else VERDICTS[1] if p.high < 0 else VERDICTS[2]
    return {"ours": p.delta * scale, "low": p.low * scale, "high": p.high * scale, "n_items": p.n_items,
            "verdict": verdict}


def model_matches(claim: dict, model: str) -> bool:
    return any(fnmatch.fnmatch(model, pat) for pat in claim["models"].split(";"))

