"""Per-item scores and how much to trust a number: how each task's items (a record's `items`)
aggregate into its metrics, 95% percentile-bootstrap intervals that resample whole units
(sequences for `vos`, images otherwise: the objects of one unit are not independent), and
paired comparisons of two cells on the items both scored (the same resampled units for both,
so the items' difficulty cancels). Efron & Tibshirani, *An Introduction to the Bootstrap*
(1993), ch. 13 (the percentile interval). Torch-free.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

LEVEL = 0.95
RESAMPLES = 1000
BOOTSTRAP_SEED = 0


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
