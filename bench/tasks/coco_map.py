"""`coco-map`: instance segmentation from detector boxes, COCO segm mAP (PTQ4SAM/SAQ-SAM).

Boxes come from a detection-results JSON (`[{"image_id", "category_id", "bbox": [x, y, w, h],
"score"}]`); each box prompts one mask (single-mask output); the result's score is the
detector score x the predicted IoU; masks are encoded as RLE and evaluated with pycocotools
`COCOeval(iouType="segm")` (`bench.metrics.coco.coco_segm_map`). The record's `items` hold,
per image and category, what AP on any subset of the images needs (`bench.intervals.coco_ap`).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from torch import nn
from tqdm import tqdm

from bench.calib import read_rgb
from bench.metrics.coco import box_xywh_to_xyxy, coco_segm_map, encode_rle
from bench.tasks import TaskContext
from bench.tasks.instseg import dataset, predict_boxes


def detections_path(ctx: TaskContext, root) -> str:
    """`detections` option, else the set's own `detections_<split>.json`."""
    from pathlib import Path

    given = ctx.options.get("detections")
    return str(given) if given else str(Path(root) / f"detections_{ctx.options.get('split', 'val')}.json")


def run(model: nn.Module, ctx: TaskContext) -> dict:
    from bench.models import image_predictor

    ds = dataset(ctx)
    by_image: dict[int, list[dict]] = defaultdict(list)
    for det in ds.load_detections(detections_path(ctx, ctx.options["coco_root"])):
        by_image[det["image_id"]].append(det)
    predictor = image_predictor(model)
    results = []
    for image_id in tqdm(ds.image_ids, desc="coco-map", unit="img", disable=not ctx.options.get("progress", True)):
        dets = by_image.get(image_id, [])
        if not dets:
            continue
        predictor.set_image(read_rgb(ds.image_path(image_id)))
        boxes = np.array([box_xywh_to_xyxy(d["bbox"]) for d in dets], dtype=np.float32)
        masks, ious = predict_boxes(predictor, boxes, multimask=False)
        for det, mask, iou in zip(dets, masks, ious):
            results.append({"image_id": image_id, "category_id": det["category_id"],
                            "segmentation": encode_rle(mask), "score": float(det["score"]) * float(iou)})
    return {**coco_segm_map(ds.coco, results, image_ids=ds.image_ids), "detections": len(results)}
