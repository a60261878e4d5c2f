"""`instseg`: box-prompted instance segmentation on a COCO-layout set, mIoU.

Each non-crowd GT annotation (area >= 1) is prompted with its own GT box; the predicted mask
is compared with the GT mask (IoU), and IoUs are averaged over all annotations and per COCO
area range (small < 32^2 <= medium < 96^2 <= large). The per-object IoUs (x100) are the
record's `items`. Single-mask output by default
(`multimask: true` keeps the mask with the highest predicted IoU of three); the record says
which.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bench import BenchError
from bench.calib import read_rgb
from bench.data.coco import CocoSet
from bench.metrics.coco import MaskIoUAccumulator, area_range, box_xywh_to_xyxy
from bench.tasks import TaskContext


@torch.inference_mode()
def predict_boxes(predictor, boxes_xyxy: np.ndarray, multimask: bool) -> tuple[np.ndarray, np.ndarray]:
    """Masks (N, H, W) bool and predicted IoUs (N,) for N boxes on the predictor's image;
    with `multimask`, the mask of highest predicted IoU of the three."""
    masks, ious, _ = predictor.predict(box=boxes_xyxy, multimask_output=multimask)
    n = len(boxes_xyxy)
    masks = masks.reshape(n, -1, *masks.shape[-2:])
    ious = ious.reshape(n, -1)
    best = ious.argmax(axis=1)
    return masks[np.arange(n), best] > 0, ious[np.arange(n), best]


def dataset(ctx: TaskContext) -> CocoSet:
    o = ctx.options
    if not o.get("coco_root"):
        raise BenchError("instseg and coco-map need a COCO-layout folder: --coco-root or $BENCH_COCO")
    return CocoSet(o["coco_root"], split=o.get("split", "val"), max_images=o.get("max_images"))


def predictions(model: nn.Module, ctx: TaskContext, ds: CocoSet):
    """((image id, annotation), predicted mask (H, W) bool) for every annotation with a box."""
    from bench.models import image_predictor

    multimask = bool(ctx.options.get("multimask", False))
    predictor = image_predictor(model)
    for image_id in tqdm(ds.image_ids, desc="instseg", unit="img", disable=not ctx.options.get("progress", True)):
        anns = ds.annotations(image_id)
        if not anns:
            continue
        predictor.set_image(read_rgb(ds.image_path(image_id)))
        boxes = np.array([box_xywh_to_xyxy(a["bbox"]) for a in anns], dtype=np.float32)
        masks, _ = predict_boxes(predictor, boxes, multimask)
        for ann, mask in zip(anns, masks):
            yield (int(image_id), ann), mask


def score(ds: CocoSet, preds) -> dict:
    """mIoU (all and per area range) and the per-object items of ((image id, annotation), mask) pairs."""
    acc = MaskIoUAccumulator()
    items = []  # one per scored object: what mIoU and its interval are computed from
    for (image_id, ann), mask in preds:
        iou = acc.add(mask, ds.gt_mask(ann), ann["area"])
        if iou is not None:
            items.append({"image": image_id, "object": int(ann["id"]), "IoU": 100.0 * iou,
                          "area": area_range(ann["area"])})
    return {**acc.result(), "images": len(ds.image_ids), "items": items}


def run(model: nn.Module, ctx: TaskContext) -> dict:
    ds = dataset(ctx)
    return {**score(ds, predictions(model, ctx, ds)), "multimask": bool(ctx.options.get("multimask", False))}
