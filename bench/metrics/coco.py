"""COCO-style instance segmentation scores: box-prompted mIoU and pycocotools segm mAP.

mIoU (GT-box prompts): per annotation, IoU of the predicted with the GT mask, averaged over all
annotations and per COCO area range, the range taken from the annotation's `area` field
(small < 32^2 <= medium < 96^2 <= large), as the SAM quantization papers report it.

mAP (detector-box prompts, PTQ4SAM / SAQ-SAM): pycocotools `COCOeval(iouType="segm")` itself,
with two of its traps handled: `loadRes` takes a result's area from its `bbox` when one is
present (so small/medium/large would follow the detector box, not the mask), and
`summarize()` mixes maxDets, so the default `[1, 10, 100]` is kept and recorded.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Iterable, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bench.data.coco import quiet_coco

SMALL_MAX, MEDIUM_MAX = 32**2, 96**2
AREA_RANGES = ("small", "medium", "large")
MAX_DETS = [1, 10, 100]
SEGM_STATS = ("mAP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0:6]


def box_xywh_to_xyxy(box: Sequence[float]) -> list[float]:
    """COCO's [x, y, w, h] as the [x0, y0, x1, y1] that SAM's box prompt takes."""
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


def area_range(area: float) -> str:
    """COCO's size class of an object of this area."""
    return "small" if area < SMALL_MAX else "medium" if area < MEDIUM_MAX else "large"


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of two boolean masks; two empty masks agree perfectly (1.0), as in DAVIS J."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"predicted mask {pred.shape} and GT mask {gt.shape} differ in shape")
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, gt).sum()) / float(union)


class MaskIoUAccumulator:
    """Collects per-annotation IoUs and reports their means (x100) overall and per size class."""

    def __init__(self) -> None:
        self.ious: dict[str, list[float]] = {name: [] for name in AREA_RANGES}

    def add(self, pred: np.ndarray, gt: np.ndarray, area: float) -> float | None:
        """Score one annotation; `area` is its GT `area` field. Area < 1 is skipped (the
        protocol's rule), returning None; otherwise the IoU is returned."""
        if area < 1:
            return None
        iou = mask_iou(pred, gt)
        self.ious[area_range(area)].append(iou)
        return iou

    def result(self) -> dict:
        """`mIoU`, `mIoU_small`, ... x100 (None where a class is empty) and counts `n`, `n_small`, ..."""
        every = [v for name in AREA_RANGES for v in self.ious[name]]
        out = {"mIoU": _mean100(every), "n": len(every)}
        for name in AREA_RANGES:
            out[f"mIoU_{name}"] = _mean100(self.ious[name])
            out[f"n_{name}"] = len(self.ious[name])
        return out


def _mean100(values: list[float]) -> float | None:
    return 100.0 * float(np.mean(values)) if values else None


def encode_rle(mask: np.ndarray) -> dict:
    """Compressed RLE of a (H, W) mask, `counts` as str so the result is JSON-serialisable."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode_rle takes one (H, W) mask, got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _load_results(coco_gt: COCO, results: list[dict]) -> COCO:
    """`loadRes` on copies without `bbox` (areas then come from the masks); an empty result list,
    which `loadRes` cannot take, becomes an empty result set, so COCOeval scores it 0."""
    if not results:
        return quiet_coco({"images": coco_gt.dataset["images"], "categories": copy.deepcopy(
            coco_gt.dataset.get("categories", [])), "annotations": []})
    stripped = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        return coco_gt.loadRes(stripped)


def coco_segm_map(coco_gt: COCO, results: list[dict], image_ids: Iterable[int] | None = None) -> dict:
    """pycocotools segm AP over `image_ids` (default: every GT image), x100, from results
    `[{"image_id", "category_id", "segmentation": RLE, "score"}]`. A range pycocotools marks -1
    (no GT object of that size in these images) is None; `maxDets` is recorded."""
    coco_dt = _load_results(coco_gt, results)
    ev = COCOeval(coco_gt, coco_dt, iouType="segm")
    ev.params.maxDets = list(MAX_DETS)
    if image_ids is not None:
        ev.params.imgIds = sorted(set(image_ids))
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out: dict = {name: (None if v < 0 else 100.0 * float(v)) for name, v in zip(SEGM_STATS, ev.stats[:6])}
    return {**out, "maxDets": list(MAX_DETS), "items": ap_items(ev)}


def ap_items(ev: COCOeval) -> list[dict]:
    """What AP over any subset of the images needs (`bench.intervals.coco_ap`): per image and
    category, the non-ignored GT count and each kept detection's score with its match and
    ignore flags at the 10 IoU thresholds as bit masks (area all, the last maxDets)."""
    bits = 1 << np.arange(len(ev.params.iouThrs))
    items = []
    for e in ev.evalImgs:
        if e is None or list(e["aRng"]) != list(ev.params.areaRng[0]) or e["maxDet"] != ev.params.maxDets[-1]:
            continue
        matched = (np.asarray(e["dtMatches"]) > 0).T @ bits if len(e["dtScores"]) else []
        ignored = np.asarray(e["dtIgnore"], dtype=bool).T @ bits if len(e["dtScores"]) else []
        dets = [[float(s), int(m), int(i)] for s, m, i in zip(e["dtScores"], matched, ignored)]
        items.append({"image": int(e["image_id"]), "category": int(e["category_id"]),
                      "gt": int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)), "dets": dets})
    return items
