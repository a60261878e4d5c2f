"""The results layer: what a metric is, how records are written and read, and how much to trust
a number (per-item scores, bootstrap intervals, paired comparisons). Torch-free, so reports,
regression checks and plots read records without loading a model.

One place for each fact:

- `METRICS`: every metric a task reports, with its direction, unit, display scale, whether it
  is the task's headline, and its regression tolerance;
- `write_json_atomic` / `read_record` / `load_records`: the one writer and the one reader of
  records (of two records of a cell, the ok one, then the newest, is kept);
- `ITEMS`: how each task's per-item scores (`items` of a record) aggregate into its metrics,
  and which unit a bootstrap resamples (whole sequences for `vos`, whole images otherwise);
- `intervals` / `paired`: percentile bootstrap intervals of a cell's metrics and of the
  difference between two cells on the same items (Efron & Tibshirani, *An Introduction to the
  Bootstrap*, 1993, ch. 13: the percentile interval; resampling whole sequences or images
  keeps the objects of one unit together, since they are not independent).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench import BenchError

if TYPE_CHECKING:
    import pandas as pd

SCHEMA_VERSION = 2  # 2: top-level `items` and `intervals`; 1 (no items) is still read
READABLE_VERSIONS = (1, 2)
CELL_KEY = ("model", "method", "variant", "w_bits", "a_bits", "task")
MIB = 2**20
LEVEL = 0.95
RESAMPLES = 1000
BOOTSTRAP_SEED = 0


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


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """THE writer of records and references: JSON (sorted keys, non-finite numbers as null,
    anything else unknown as its str) to a temporary file in the same folder, fsync, mode 644,
    then rename over `path`: readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_finite(json.loads(json.dumps(obj, default=str))), indent=2, sort_keys=True, allow_nan=False)
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


# -- per-item scores -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ItemSpec:
    """How a task's items make its metrics: `unit` is the field a bootstrap resamples whole,
    `key` the fields that name one item (to pair two cells' items), `means` the metrics that
    are means of an item value (None: the item is not in that mean); `statistic` computes the
    rest (e.g. COCO AP) from a list of items, and `resampled(items, unit of each item, weights)`
    the same statistic under each row of unit weights (how often each unit is drawn) at once."""

    unit: str
    key: tuple[str, ...]
    means: dict[str, Callable[[dict], float | None]]
    statistic: Callable[[list[dict]], dict[str, float | None]] | None = None
    resampled: Callable[[list[dict], np.ndarray, np.ndarray], dict[str, np.ndarray]] | None = None
    empty: Callable[[dict], dict] | None = None  # an item one cell lacks, as that cell scored it


def _area_iou(area: str) -> Callable[[dict], float | None]:
    return lambda it: it["IoU"] if it["area"] == area else None


COCO_IOU_THRESHOLDS = 10  # 0.50:0.05:0.95
COCO_RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def coco_ap(items: list[dict]) -> dict[str, float | None]:
    """COCO segm AP (x100, area all, 100 detections per image) from per (image, category)
    items `{"gt": non-ignored GT objects, "dets": [[score, matched, ignored], ...]}`, where
    `matched` / `ignored` are bit masks over the 10 IoU thresholds: pycocotools
    `COCOeval.accumulate` and `summarize`'s first statistic, step by step."""
    by_cat: dict[Any, list[dict]] = {}
    for it in items:
        by_cat.setdefault(it["category"], []).append(it)
    bits = 1 << np.arange(COCO_IOU_THRESHOLDS)
    precisions = []
    for its in by_cat.values():
        n_gt = sum(int(it["gt"]) for it in its)
        if n_gt == 0:
            continue  # COCOeval leaves the category at -1: not in the mean
        dets = np.array([d for it in its for d in it["dets"]], dtype=float).reshape(-1, 3)
        order = np.argsort(-dets[:, 0], kind="mergesort")
        matched = (dets[order, 1].astype(np.int64)[None, :] & bits[:, None]) > 0
        ignored = (dets[order, 2].astype(np.int64)[None, :] & bits[:, None]) > 0
        tp = np.cumsum(matched & ~ignored, axis=1, dtype=float)
        fp = np.cumsum(~matched & ~ignored, axis=1, dtype=float)
        for t in range(COCO_IOU_THRESHOLDS):
            recall, prec = tp[t] / n_gt, tp[t] / (fp[t] + tp[t] + np.spacing(1))
            prec = np.maximum.accumulate(prec[::-1])[::-1]  # precision envelope
            at = np.searchsorted(recall, COCO_RECALL_POINTS, side="left")
            q = np.zeros(len(COCO_RECALL_POINTS))
            q[at < len(prec)] = prec[at[at < len(prec)]]
            precisions.append(q)
    return {"mAP": 100.0 * float(np.mean(precisions)) if precisions else None}


def coco_ap_resampled(items: list[dict], unit: np.ndarray, weights: np.ndarray,
                      chunk: int = 100) -> dict[str, np.ndarray]:
    """`coco_ap` under every row of `weights` (resamples x units) at once. A unit drawn k times
    counts its GT objects and detections k times: the detections are sorted once, and the
    cumulative true and false positives are weighted sums (a run of k copies of one detection
    moves precision monotonically, so the interpolated precision equals that of the copies
    laid out one by one)."""
    n_points = len(COCO_RECALL_POINTS)
    total, entries = np.zeros(len(weights)), np.zeros(len(weights))
    bits = 1 << np.arange(COCO_IOU_THRESHOLDS)
    by_cat: dict[Any, list[int]] = {}
    for i, it in enumerate(items):
        by_cat.setdefault(it["category"], []).append(i)
    for rows in by_cat.values():
        gt_w = weights[:, unit[rows]] @ np.array([float(items[i]["gt"]) for i in rows])
        dets = [(d, unit[i]) for i in rows for d in items[i]["dets"]]
        table = np.array([d for d, _ in dets], dtype=float).reshape(-1, 3)
        order = np.argsort(-table[:, 0], kind="mergesort")
        det_unit = np.array([u for _, u in dets], dtype=np.int64)[order]
        matched = (table[order, 1].astype(np.int64)[None, :] & bits[:, None]) > 0
        ignored = (table[order, 2].astype(np.int64)[None, :] & bits[:, None]) > 0
        n = len(order)
        for start in range(0, len(weights), chunk):
            w = weights[start:start + chunk]
            valid = gt_w[start:start + chunk] > 0
            wd = w[:, det_unit]
            b = np.arange(len(w))[:, None]
            for t in range(COCO_IOU_THRESHOLDS):
                tp = np.cumsum(wd * (matched[t] & ~ignored[t]), axis=1)
                fp = np.cumsum(wd * (~matched[t] & ~ignored[t]), axis=1)
                with np.errstate(invalid="ignore", divide="ignore"):
                    recall = tp / gt_w[start:start + chunk, None]
                prec = np.maximum.accumulate((tp / (tp + fp + np.spacing(1)))[:, ::-1], axis=1)[:, ::-1]
                # per row, as pycocotools does it (offsetting rows into one search would round the recalls)
                at = np.array([np.searchsorted(r, COCO_RECALL_POINTS, side="left") for r in recall])
                found = at < n
                q = np.where(found, prec[b, np.minimum(at, n - 1)], 0.0) if n else np.zeros((len(w), n_points))
                total[start:start + chunk] += np.where(valid, q.sum(axis=1), 0.0)
                entries[start:start + chunk] += np.where(valid, n_points, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"mAP": 100.0 * total / entries}


ITEMS: dict[str, ItemSpec] = {
    "vos": ItemSpec("sequence", ("sequence", "object"), {
        "J&F": lambda it: (it["J"] + it["F"]) / 2, "J": lambda it: it["J"], "F": lambda it: it["F"]}),
    "instseg": ItemSpec("image", ("image", "object"), {
        "mIoU": lambda it: it["IoU"], **{f"mIoU_{a}": _area_iou(a) for a in ("small", "medium", "large")}}),
    "coco-map": ItemSpec("image", ("image", "category"), {}, statistic=coco_ap, resampled=coco_ap_resampled,
                         empty=lambda it: {**it, "dets": []}),
}


def _values(spec: ItemSpec, items: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """metric -> (values, used) over `items`: the item value (0 where unused) and a 0/1 mask."""
    out = {}
    for name, fn in spec.means.items():
        raw = [fn(it) for it in items]
        out[name] = (np.array([0.0 if v is None else float(v) for v in raw]),
                     np.array([0.0 if v is None else 1.0 for v in raw]))
    return out


def aggregate(task: str, items: list[dict]) -> dict[str, float | None]:
    """The task's metrics recomputed from its items (what the record's metrics must equal)."""
    spec = ITEMS[task]
    out: dict[str, float | None] = {}
    for name, (v, used) in _values(spec, items).items():
        out[name] = float(v.sum() / used.sum()) if used.sum() else None
    if spec.statistic is not None:
        out.update(spec.statistic(items))
    return out


@functools.lru_cache(maxsize=64)
def _resample_weights(n_units: int, seed: int, resamples: int) -> np.ndarray:
    """(resamples, units): how often each unit is drawn in each bootstrap resample (the same
    draws for every cell of a report, so intervals are reproducible; read-only)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_units, size=(resamples, n_units))
    offsets = np.arange(resamples)[:, None] * n_units
    weights = np.bincount((draws + offsets).ravel(), minlength=resamples * n_units).reshape(resamples, n_units)
    weights.setflags(write=False)
    return weights


def _percentiles(samples: np.ndarray) -> tuple[float, float] | None:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return None
    lo, hi = np.percentile(samples, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return float(lo), float(hi)


def _unit_index(spec: ItemSpec, items: list[dict]) -> tuple[np.ndarray, int]:
    units = sorted({str(it[spec.unit]) for it in items})
    pos = {u: i for i, u in enumerate(units)}
    return np.array([pos[str(it[spec.unit])] for it in items], dtype=np.int64), len(units)


def _bootstrap(spec: ItemSpec, item_sets: list[list[dict]], combine: Callable[[list], float | None],
               seed: int, resamples: int) -> dict[str, tuple[float, float] | None]:
    """Percentile intervals of `combine(metric values of each item set)` under resampling of
    whole units; every item set holds the same items in the same order."""
    idx, n_units = _unit_index(spec, item_sets[0])
    weights = _resample_weights(n_units, seed, resamples).astype(float)
    out: dict[str, tuple[float, float] | None] = {}
    per_set = [_values(spec, s) for s in item_sets]
    for name in spec.means:
        used = per_set[0][name][1]
        counts = weights @ np.bincount(idx, weights=used, minlength=n_units)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = [weights @ np.bincount(idx, weights=v[name][0], minlength=n_units) / counts for v in per_set]
        out[name] = _percentiles(np.asarray(combine(means), dtype=float)) if used.sum() else None
    if spec.resampled is not None:
        per_set_stats = [spec.resampled(s, idx, weights) for s in item_sets]
        for name in per_set_stats[0]:
            out[name] = _percentiles(np.asarray(combine([st[name] for st in per_set_stats]), dtype=float))
    return out


def _first(values: list) -> Any:
    return values[0]


def _difference(values: list) -> Any:
    """a - b of two cells' resampled values."""
    return values[0] - values[1]


def intervals(task: str, items: list[dict], seed: int = BOOTSTRAP_SEED,
              resamples: int = RESAMPLES) -> dict[str, Any] | None:
    """The record's `intervals`: a 95% percentile-bootstrap interval of each metric that the
    items make, resampling whole units (sequences or images); None without items."""
    if task not in ITEMS or not items:
        return None
    spec = ITEMS[task]
    found = _bootstrap(spec, [items], _first, seed, resamples)
    _, n_units = _unit_index(spec, items)
    return {"level": LEVEL, "method": f"percentile bootstrap over whole {spec.unit}s", "resamples": resamples,
            "seed": seed, "n_items": len(items), "n_units": n_units,
            "metrics": {k: list(v) for k, v in found.items() if v is not None}}


def item_key(spec: ItemSpec, it: dict) -> tuple:
    return tuple(str(it[k]) for k in spec.key)


def common_items(task: str, a: list[dict], b: list[dict]) -> tuple[list[dict], list[dict]]:
    """The items both cells scored, in one order (pairs by the task's item key)."""
    spec = ITEMS[task]
    by_a = {item_key(spec, it): it for it in a}
    by_b = {item_key(spec, it): it for it in b}
    if spec.empty is None:
        keys = sorted(by_a.keys() & by_b.keys())
    else:  # an item one cell lacks is one it left empty (no detection on an image without that object)
        keys = sorted(by_a.keys() | by_b.keys())
        by_a.update({k: spec.empty(by_b[k]) for k in keys if k not in by_a})
        by_b.update({k: spec.empty(by_a[k]) for k in keys if k not in by_b})
    return [by_a[k] for k in keys], [by_b[k] for k in keys]


@dataclass(frozen=True)
class Paired:
    delta: float
    low: float
    high: float
    n_items: int

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.low > 0 or self.high < 0


def paired(task: str, metric_key: str, a: list[dict], b: list[dict], seed: int = BOOTSTRAP_SEED,
           resamples: int = RESAMPLES) -> Paired | None:
    """a - b on the items both scored, with a paired bootstrap interval (the same resampled
    units for both); None when they share no item or the metric has no value."""
    if task not in ITEMS:
        return None
    ca, cb = common_items(task, a, b)
    if not ca:
        return None
    va, vb = aggregate(task, ca).get(metric_key), aggregate(task, cb).get(metric_key)
    if va is None or vb is None:
        return None
    spec = ITEMS[task]
    found = _bootstrap(spec, [ca, cb], _difference, seed, resamples).get(metric_key)
    if found is None:
        return None
    return Paired(va - vb, found[0], found[1], len(ca))


def mean_items(task: str, replicates: Iterable[list[dict]]) -> list[dict]:
    """Items of replicate runs (seeds) of one cell averaged item by item (the items all runs
    scored), so that intervals and pairs of a replicated cell use its seed-mean."""
    reps = [r for r in replicates if r]
    if len(reps) <= 1:
        return reps[0] if reps else []
    spec = ITEMS[task]
    keys = set.intersection(*({item_key(spec, it) for it in r} for r in reps))
    by = [{item_key(spec, it): it for it in r} for r in reps]
    out = []
    for it in reps[0]:
        k = item_key(spec, it)
        if k in keys:
            out.append({**it, **{f: float(np.mean([b[k][f] for b in by])) for f, v in it.items()
                                 if isinstance(v, (int, float)) and not isinstance(v, bool) and f not in spec.key}})
    return out


# -- the cells of a sweep ------------------------------------------------------------------------
CELL_COLUMNS = [*CELL_KEY, "status", "error", "metrics", "items", "intervals", "seeds", "spread", "data",
                "dataset", "raw_variant", "tag"]


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
           "tag": first.get("tag") or ""}
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
