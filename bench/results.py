"""The results layer: what a metric is, how records are written and read, and the cells table
that reports, plots and checks are made from. Torch-free, so they read records without
loading a model.

One place for each fact:

- `METRICS`: every metric a task reports, with its direction, unit, display scale, whether it
  is the task's headline, and its regression tolerance;
- `write_json_atomic` / `read_record` / `load_records`: the one writer and the one reader of
  records (of two records of a cell, the ok one, then the newest, is kept);
- `load_cells`: one row per cell (replicate seeds folded), with its items and intervals; the
  per-item aggregation, intervals and paired comparisons themselves are `bench.intervals`'.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench import BenchError
from bench.intervals import ITEMS, Paired, intervals, mean_items, paired

if TYPE_CHECKING:
    import pandas as pd

SCHEMA_VERSION = 2  # 2: top-level `items` and `intervals`; 1 (no items) is still read
READABLE_VERSIONS = (1, 2)
CELL_KEY = ("model", "method", "variant", "w_bits", "a_bits", "task")
MIB = 2**20
# A method may report per-layer figures of a weight re-fit in `method_info["layers"]`: one dict
# per layer with "layer", "norm_before"/"norm_after", "var_before"/"var_after" (the weight's
# Frobenius norm and variance), "q_before"/"q_after" (its quantiles at LAYER_QUANTILES) and
# "qerr_before"/"qerr_after" (the quantized layer's initial relative output error); the report
# plots them.
LAYER_QUANTILES = (0.001, 0.01, 0.25, 0.5, 0.75, 0.99, 0.999)


# -- the metric schema ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    """A task metric: label, direction (None: neither, e.g. a count), unit of its displayed
    value, display scale and decimals, headline or not, and the regression tolerance (absolute,
    in the stored unit; None: a timing, never compared)."""

    task: str
    key: str
    label: str
    higher: bool | None
    unit: str = "%"
    scale: float = 1.0
    digits: int = 1
    headline: bool = False
    tolerance: float | None = 1.0
    table: bool = True  # gets a table in reports

    @property
    def stem(self) -> str:
        return re.sub(r"[^a-z0-9]+", "_", f"{self.task}_{self.key}".replace("&", "").lower()).strip("_")


def _score(task: str, key: str, label: str | None = None, headline: bool = False, table: bool = True) -> Metric:
    return Metric(task, key, label or key, True, headline=headline, table=table)


def _count(task: str, key: str) -> Metric:
    return Metric(task, key, key, None, unit="count", digits=0, tolerance=0, table=False)


METRICS: tuple[Metric, ...] = (
    _score("vos", "J&F", headline=True), _score("vos", "J"), _score("vos", "F"),
    _score("vos", "J_recall", "J recall", table=False), _score("vos", "F_recall", "F recall", table=False),
    Metric("vos", "J_decay", "J decay", False, table=False), Metric("vos", "F_decay", "F decay", False, table=False),
    Metric("vos", "fps", "frames/s", True, unit="frames/s", tolerance=None, table=False),
    _count("vos", "frames"), _count("vos", "sequences"),
    _score("instseg", "mIoU", headline=True), _score("instseg", "mIoU_small", "mIoU small"),
    _score("instseg", "mIoU_medium", "mIoU medium"), _score("instseg", "mIoU_large", "mIoU large"),
    _count("instseg", "n"), _count("instseg", "n_small"), _count("instseg", "n_medium"),
    _count("instseg", "n_large"), _count("instseg", "images"),
    _score("coco-map", "mAP", headline=True), _score("coco-map", "AP50", table=False),
    _score("coco-map", "AP75", table=False), _score("coco-map", "APs", table=False),
    _score("coco-map", "APm", table=False), _score("coco-map", "APl", table=False), _count("coco-map", "detections"),
    Metric("size", "size_bytes", "packed size", False, unit="MiB", scale=1 / MIB, digits=2, headline=True,
           tolerance=0),
    Metric("size", "size_bound_bytes", "bit bound", False, unit="MiB", scale=1 / MIB, digits=2, tolerance=0,
           table=False),
    Metric("size", "bf16_bytes", "BF16 size", False, unit="MiB", scale=1 / MIB, digits=2, tolerance=0, table=False),
    Metric("size", "x_smaller_than_bf16", "x smaller than BF16", True, unit="x", digits=2, tolerance=0.01),
    Metric("size", "overhead_vs_bound", "overhead vs bound", False, unit="x", digits=3, tolerance=0.01, table=False),
    # latency: timings (never regression-compared), bytes and the deployed-vs-fake-quant fidelity
    Metric("latency", "image_encoder_speedup", "encoder speed-up vs FP", True, unit="x", digits=2, tolerance=None,
           headline=True),
    Metric("latency", "image_encoder_ms", "encoder latency", False, unit="ms", digits=0, tolerance=None),
    Metric("latency", "decode_ms", "box decode latency", False, unit="ms", digits=1, tolerance=None),
    Metric("latency", "track_frame_ms", "tracked frame latency", False, unit="ms", digits=0, tolerance=None),
    Metric("latency", "peak_mem_mb", "peak memory", False, unit="MiB", digits=0, tolerance=None, table=False),
    Metric("latency", "deployed_linear_bytes", "deployed Linear weights", False, unit="MiB", scale=1 / MIB, digits=2,
           tolerance=0),
    Metric("latency", "deployed_model_bytes", "deployed model", False, unit="MiB", scale=1 / MIB, digits=2,
           tolerance=0, table=False),
    Metric("latency", "fidelity_instseg_mask_iou", "mask IoU deployed vs fake-quant (instseg)", True, unit="x",
           digits=3, tolerance=0.01),
    Metric("latency", "fidelity_vos_mask_iou", "mask IoU deployed vs fake-quant (vos)", True, unit="x", digits=3,
           tolerance=0.01),
    Metric("latency", "fidelity_delta_mIoU", "mIoU deployed - fake-quant", None, digits=2, tolerance=0.5),
    Metric("latency", "fidelity_delta_J&F", "J&F deployed - fake-quant", None, digits=2, tolerance=0.5),
    # the same comparisons between the fake-quant model and itself under one-ulp noise: their floor
    Metric("latency", "noise_instseg_mask_iou", "mask IoU fake-quant vs itself + ulp noise (instseg)", True,
           unit="x", digits=3, tolerance=0.01, table=False),
    Metric("latency", "noise_vos_mask_iou", "mask IoU fake-quant vs itself + ulp noise (vos)", True, unit="x",
           digits=3, tolerance=0.01),
    Metric("latency", "noise_delta_mIoU", "mIoU with ulp noise - without", None, digits=2, tolerance=0.5,
           table=False),
    Metric("latency", "noise_delta_J&F", "J&F with ulp noise - without", None, digits=2, tolerance=0.5),
)
_BY_KEY = {(m.task, m.key): m for m in METRICS}
HEADLINE = {m.task: m for m in METRICS if m.headline}
DEFAULT_TOLERANCE = 1.0
TIMING_RE = re.compile(r"fps|latency|throughput|time|(^|_)(s|ms|sec|seconds)$", re.IGNORECASE)


def metric(task: str, key: str) -> Metric | None:
    return _BY_KEY.get((task, key))


def is_timing(key: str) -> bool:
    """A timing is never compared by a regression check: declared so, or named like one."""
    declared = [m for m in METRICS if m.key == key]
    return any(m.tolerance is None for m in declared) or (not declared and bool(TIMING_RE.search(key)))


def tolerance(key: str) -> float:
    """The regression tolerance of a metric name (the first task that declares it)."""
    found = [m.tolerance for m in METRICS if m.key == key and m.tolerance is not None]
    return found[0] if found else DEFAULT_TOLERANCE


def label_with_unit(m: Metric) -> str:
    return f"{m.label} ({m.unit})" if m.unit not in ("%", "count") else m.label


# -- labels and order ----------------------------------------------------------------------------
SIZE_RANK = {"micro": 0, "t": 1, "s": 2, "b+": 3, "b": 3, "l": 4, "h": 5}


# the variant suffix of a row that reproduces the official PTQ4SAM code's evaluation bug
# (`eval_dropout_bug: true`): set by bench.ptq, matched by bench.paper
EVAL_BUG = "+evalbug"


def bits_label(method: str, w: int | None, a: int | None) -> str:
    """`FP` for the reference row, else `W4A4` (`W4Afp`: activations not quantized)."""
    return "FP" if method == "fp" else f"W{w or 'fp'}A{a or 'fp'}"


def variant_label(rec: dict[str, Any]) -> str:
    """The variant as tables show it: the method's canonical label, then a sweep's free tag."""
    variant, tag = rec.get("variant") or "", rec.get("tag") or ""
    return " ".join(filter(None, [variant, f"[{tag}]" if tag else ""]))


def cell_name(r: dict[str, Any]) -> str:
    variant = f" ({r['variant']})" if r.get("variant") else ""
    return f"{r['model']} {r['method']}{variant} {bits_label(r['method'], r['w_bits'], r['a_bits'])} {r['task']}"


def model_order(model: str) -> tuple:
    family, _, size = model.rpartition("-")
    return (family, SIZE_RANK.get(size, len(SIZE_RANK)), model)


def bits_order(w: int | None, a: int | None) -> tuple[int, int]:
    return (w or 32, a or 32)


def cell_order(model, method, variant, w, a, task, metric: str = "") -> tuple:
    baseline = {"fp": 0, "rtn": 1}.get(method, 2)  # FP, then RTN, then the methods A-Z
    return (model_order(model), baseline, method, variant != "", variant, bits_order(w, a), task, metric)


def numeric(v: Any) -> float | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


# -- writing and reading records -----------------------------------------------------------------
def _finite(obj: Any) -> Any:
    """JSON has no NaN or infinity: such a number is written as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def as_record(obj: Any) -> Any:
    """`obj` as a record holds it once read back: JSON types, non-finite numbers as None,
    anything else unknown as its str."""
    return _finite(json.loads(json.dumps(obj, default=str)))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """THE writer of records and references: JSON (sorted keys, non-finite numbers as null,
    anything else unknown as its str) to a temporary file in the same folder, fsync, mode 644,
    then rename over `path`: readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(as_record(obj), indent=2, sort_keys=True, allow_nan=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def try_read(path: Path) -> dict[str, Any] | None:
    """A record file as JSON, or None when it is absent or unreadable (for progress polling)."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def read_record(path: Path) -> dict[str, Any]:
    """One record, checked enough to be tabled; a corrupt one, or one of a schema version this
    code does not know, is a BenchError naming the file."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BenchError(f"{path}: corrupt result record ({str(e).splitlines()[0]})") from None
    if not isinstance(rec, dict):
        raise BenchError(f"{path}: corrupt result record (expected a JSON object)")
    version = rec.get("schema_version", 1)
    if version not in READABLE_VERSIONS:
        raise BenchError(f"{path}: result record of schema version {version!r}; this code reads "
                         f"{', '.join(map(str, READABLE_VERSIONS))}")
    missing = [k for k in ("model", "method", "task", "status") if not isinstance(rec.get(k), str)]
    bad_bits = [k for k in ("w_bits", "a_bits") if rec.get(k) is not None and type(rec.get(k)) is not int]
    bad_types = not isinstance(rec.get("metrics", {}), dict) or not isinstance(rec.get("items", []), list)
    if missing or bad_bits or bad_types:
        what = f"missing or not a string: {', '.join(missing)}" if missing else "bits, metrics or items of wrong type"
        raise BenchError(f"{path}: corrupt result record ({what})")
    return rec


def record_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise BenchError(f"{folder}: no such results folder")
    files = sorted(p for p in folder.glob("*.json") if not p.name.startswith("."))
    if not files:
        raise BenchError(f"{folder}: no result records (*.json) in this folder")
    return files


def cell_key(rec: dict[str, Any]) -> tuple:
    """(model, method, variant as tabled, w_bits, a_bits, task)."""
    return (rec["model"], rec["method"], variant_label(rec), rec.get("w_bits"), rec.get("a_bits"), rec["task"])


def load_records(folder: Path, key: Callable[[dict], tuple] | None = None) -> tuple[list[dict[str, Any]], int]:
    """The records of `folder/*.json`, one per cell and seed (of two records of one, the ok
    one, then the newest), sorted; and how many duplicates were set aside."""
    key = key or (lambda rec: (*cell_key(rec), seed_of(rec)))
    best: dict[tuple, tuple] = {}
    files = record_files(folder)
    for path in files:
        rec = read_record(path)
        rank = (rec["status"] == "ok", str(rec.get("date", "")), path.name)
        k = key(rec)
        if k not in best or rank > best[k][0]:
            best[k] = (rank, rec)
    kept = [rec for _, rec in best.values()]
    kept.sort(key=lambda r: (cell_order(*cell_key(r)), seed_of(r)))
    return kept, len(files) - len(kept)


def seed_of(rec: dict[str, Any]) -> int:
    seed = ((rec.get("config") or {}).get("cell") or {}).get("seed", 0)
    return seed if isinstance(seed, int) else 0


# -- the cells of a sweep ------------------------------------------------------------------------
CELL_COLUMNS = [*CELL_KEY, "status", "error", "metrics", "items", "intervals", "seeds", "spread", "data",
                "dataset", "raw_variant", "tag", "layers"]


def data_used(rec: dict[str, Any]) -> str:
    """The dataset a cell was measured on: last two parts of its root folder, and the split."""
    cell = (rec.get("config") or {}).get("cell") or {}
    root = cell.get("davis_root" if rec["task"] == "vos" else "coco_root")
    return f"{'/'.join(Path(root).parts[-2:])} {cell.get('split', 'val')}" if root else ""


def _cell_row(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row of the cells table from the records of one cell (one per seed): the metrics are
    the seeds' mean, the items their item-by-item mean, `spread` the seeds' standard deviation
    per metric; a cell with a failed seed is failed."""
    first = recs[0]
    failed = [r for r in recs if r["status"] != "ok"]
    error = str((failed[0] if failed else first).get("error") or "").strip()
    row = {"model": first["model"], "method": first["method"], "variant": variant_label(first),
           "w_bits": first.get("w_bits"), "a_bits": first.get("a_bits"), "task": first["task"],
           "status": failed[0]["status"] if failed else "ok", "error": error.splitlines()[0] if error else "",
           "metrics": {}, "items": [], "intervals": {}, "seeds": [seed_of(r) for r in recs], "spread": {},
           "data": data_used(first), "dataset": first.get("dataset") or "", "raw_variant": first.get("variant") or "",
           "tag": first.get("tag") or "", "layers": (first.get("method_info") or {}).get("layers") or []}
    if failed:
        return row
    if len(recs) == 1:
        row["metrics"], row["items"] = first.get("metrics") or {}, first.get("items") or []
        found = (first.get("intervals") or {}).get("metrics")
        row["intervals"] = found if found is not None else ((intervals(first["task"], row["items"]) or {}).get(
            "metrics") or {})
        return row
    keys = [k for k, v in (first.get("metrics") or {}).items() if numeric(v) is not None or v is None]
    for k in keys:
        values = [numeric((r.get("metrics") or {}).get(k)) for r in recs]
        ok = [v for v in values if v is not None]
        row["metrics"][k] = float(np.mean(ok)) if len(ok) == len(values) else None
        row["spread"][k] = float(np.std(ok, ddof=1)) if len(ok) == len(values) else None
    if first["task"] in ITEMS:
        row["items"] = mean_items(first["task"], [r.get("items") or [] for r in recs])
        row["intervals"] = (intervals(first["task"], row["items"]) or {}).get("metrics") or {}
    return row


def load_cells(folder: Path) -> pd.DataFrame:
    """One row per cell of the records in `folder` (replicate seeds of a cell folded into one
    row), sorted; `attrs["duplicates"]`: records set aside for a newer or ok one."""
    import pandas as pd

    records, duplicates = load_records(folder)
    groups: dict[tuple, list[dict]] = {}
    for rec in records:
        groups.setdefault(cell_key(rec), []).append(rec)
    rows = [_cell_row(recs) for recs in groups.values()]
    rows.sort(key=lambda r: cell_order(*(r[k] for k in CELL_KEY)))
    frame = pd.DataFrame(rows, columns=CELL_COLUMNS, dtype=object)
    frame.attrs["duplicates"] = duplicates
    return frame


def cell_index(cells: pd.DataFrame) -> dict[tuple, dict[str, Any]]:
    return {tuple(r[k] for k in CELL_KEY): r for r in cells.to_dict("records")}


class _Memo(dict):
    """Values derived from a cells table, kept in its `attrs`; pandas deep-copies `attrs` on
    every operation, so a copy is this same object."""

    def __deepcopy__(self, _memo: dict) -> _Memo:
        return self


def memo(cells: pd.DataFrame, name: str, make: Callable[[pd.DataFrame], Any]) -> Any:
    """`make(cells)`, computed once per cells table."""
    store = cells.attrs.setdefault("memo", _Memo())
    if name not in store:
        store[name] = make(cells)
    return store[name]


def expected_cells(cells: pd.DataFrame) -> list[tuple]:
    """The sweep's grid as the records show it: every model x task x (method, variant, bits)
    (computed once per cells table)."""
    return memo(cells, "grid", _grid)


def _grid(cells: pd.DataFrame) -> list[tuple]:
    combos = {(r["method"], r["variant"], r["w_bits"], r["a_bits"]) for r in cells.to_dict("records")}
    grid = [(m, *c[:2], *c[2:], t) for m in set(cells["model"]) for c in combos for t in set(cells["task"])]
    return sorted(grid, key=lambda k: cell_order(*k))


def missing_cells(cells: pd.DataFrame) -> list[tuple]:
    have = {tuple(r) for r in cells[list(CELL_KEY)].itertuples(index=False)}
    return [k for k in expected_cells(cells) if k not in have]


def table_columns(cells: pd.DataFrame, task: str) -> list[tuple[str, int | None, int | None]]:
    """(model, w, a) per table column: every quantized bit configuration of the model's grid,
    or one FP column for a model with only the FP row."""
    grid = [k for k in expected_cells(cells) if k[5] == task]
    cols = []
    for model in sorted({k[0] for k in grid}, key=model_order):
        bits = sorted({(k[3], k[4]) for k in grid if k[0] == model and k[1] != "fp"}, key=lambda b: bits_order(*b))
        cols += [(model, w, a) for w, a in bits] or [(model, None, None)]
    return cols


def cell_value(row: dict | None, m: Metric) -> float | None:
    """A cell's value of a metric in display units; None when failed, missing or without one."""
    if row is None or row["status"] != "ok":
        return None
    v = numeric(row["metrics"].get(m.key))
    return None if v is None else v * m.scale


def cell_interval(row: dict | None, m: Metric) -> tuple[float, float] | None:
    if row is None or row["status"] != "ok" or m.key not in (row["intervals"] or {}):
        return None
    lo, hi = row["intervals"][m.key]
    return lo * m.scale, hi * m.scale


def table_metrics(cells: pd.DataFrame) -> list[Metric]:
    """Metrics with a table: the task is in the sweep and the metric is its headline or some
    record has it."""
    found = {(t, k) for t, m in zip(cells["task"], cells["metrics"]) for k in m}
    tasks = set(cells["task"])
    return [m for m in METRICS if m.task in tasks and m.table and (m.headline or (m.task, m.key) in found)]


def baseline_row(index: dict[tuple, dict], key: tuple, baseline: str) -> dict | None:
    """The baseline cell a cell is compared with: FP of the same model and task, or RTN at the
    same model, bits and task (its default variant when the sweep has several)."""
    model, _, _, w, a, task = key
    if baseline == "fp":
        return index.get((model, "fp", "", None, None, task))
    rtn = [r for k, r in index.items() if k[0] == model and k[1] == "rtn" and k[3:] == (w, a, task)]
    if len(rtn) > 1:
        rtn = [r for r in rtn if r["variant"] == ""]
    return rtn[0] if len(rtn) == 1 else None


def compare(row: dict, base: dict, m: Metric) -> Paired | None:
    """`row - base` on the items both scored, with its paired interval (display units)."""
    if row["status"] != "ok" or base["status"] != "ok" or m.task not in ITEMS:
        return None
    p = paired(m.task, m.key, row["items"], base["items"])
    return None if p is None else Paired(p.delta * m.scale, p.low * m.scale, p.high * m.scale, p.n_items)
