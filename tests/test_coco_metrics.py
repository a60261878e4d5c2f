"""COCO-layout reader and COCO-style scores against hand-computed values and pycocotools itself.

The tiny set (written per test in tmp_path):
  image 1 (100 x 120): ann 11 cat 1 RLE 20x20 (small), ann 12 cat 2 polygon 40x40 (medium),
                       ann 13 cat 1 crowd (uncompressed RLE), ann 14 cat 2 with area field 0.5
  image 2 (110 x 130): ann 21 cat 1 RLE 100x100 (large), ann 22 cat 2 polygon 30x30 (small)
  image 3 (40 x 50):   no annotations
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bench import BenchError
from bench.data.coco import CocoSet
from bench.metrics.coco import (
    MaskIoUAccumulator,
    area_range,
    box_xywh_to_xyxy,
    coco_segm_map,
    encode_rle,
    mask_iou,
)

SIZES = {1: (100, 120), 2: (110, 130), 3: (40, 50)}  # image id -> (height, width)


def rect(image_id: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros(SIZES[image_id], dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def rle(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(r["size"]), "counts": r["counts"].decode()}


def uncompressed_rle(mask: np.ndarray) -> dict:
    flat, counts, value, run = mask.flatten(order="F"), [], False, 0
    for px in flat:
        if px != value:
            counts.append(run)
            value, run = px, 0
        run += 1
    return {"size": list(mask.shape), "counts": [*counts, run]}


def polygon(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def ann(ann_id, image_id, cat, segm, area, bbox, crowd=0) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "segmentation": segm, "area": area,
            "bbox": bbox, "iscrowd": crowd}


def coco_doc() -> dict:
    images = [{"id": i, "file_name": f"im{i}.png", "height": h, "width": w} for i, (h, w) in SIZES.items()]
    anns = [
        ann(11, 1, 1, rle(rect(1, 10, 30, 10, 30)), 400, [10, 10, 20, 20]),
        ann(12, 1, 2, polygon(50, 10, 90, 50), 1600, [50, 10, 40, 40]),
        ann(13, 1, 1, uncompressed_rle(rect(1, 60, 100, 0, 40)), 1600, [0, 60, 40, 40], crowd=1),
        ann(14, 1, 2, polygon(100, 80, 102, 82), 0.5, [100, 80, 2, 2]),
        ann(21, 2, 1, rle(rect(2, 5, 105, 10, 110)), 10000, [10, 5, 100, 100]),
        ann(22, 2, 2, polygon(0, 70, 30, 100), 900, [0, 70, 30, 30]),
    ]
    cats = [{"id": 1, "name": "thing"}, {"id": 2, "name": "stuff"}]
    return {"images": images, "annotations": anns, "categories": cats}


def write_set(root: Path, doc: dict | None = None, ann_name: str = "instances_val.json",
              image_dir: str = "images/val") -> Path:
    """Writes the set; returns the annotation file's path."""
    doc = coco_doc() if doc is None else doc
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    for img in coco_doc()["images"]:
        Image.new("RGB", (img["width"], img["height"]), (90, 120, 150)).save(root / image_dir / img["file_name"])
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    path = root / "annotations" / ann_name
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def ds(tmp_path) -> CocoSet:
    write_set(tmp_path)
    return CocoSet(tmp_path)


def test_layouts_and_subsets(tmp_path):
    for name, ann_name, image_dir in [("a", "instances_val.json", "images/val"), ("b", "instances_val.json", "images"),
                                      ("c", "instances_val2017.json", "val2017")]:
        write_set(tmp_path / name, ann_name=ann_name, image_dir=image_dir)
        s = CocoSet(tmp_path / name)
        assert s.image_ids == [1, 2, 3] and s.image_path(2) == tmp_path / name / image_dir / "im2.png"
    assert CocoSet(tmp_path / "a", max_images=2).image_ids == [1, 2]
    assert CocoSet(tmp_path / "a", image_ids=[3, 1]).image_ids == [1, 3]
    with pytest.raises(BenchError, match="not in"):
        CocoSet(tmp_path / "a", image_ids=[7])


def test_annotations_skip_crowd_and_tiny(ds):
    assert [a["id"] for a in ds.annotations(1)] == [11, 12]
    assert [a["id"] for a in ds.annotations(2)] == [21, 22] and ds.annotations(3) == []
    m = ds.gt_mask(ds.annotations(1)[1])
    assert m.dtype == bool and np.array_equal(m, rect(1, 10, 50, 50, 90))


def test_box_and_area_helpers():
    assert box_xywh_to_xyxy([1, 2, 3, 4]) == [1.0, 2.0, 4.0, 6.0]
    assert [area_range(a) for a in (1023.9, 1024, 9215.9, 9216)] == ["small", "medium", "medium", "large"]
    assert mask_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0


def test_miou_hand_computed(ds):
    preds = {11: rect(1, 10, 30, 20, 40),  # 200 / 600
             12: rect(1, 10, 50, 50, 90),  # exact
             21: rect(2, 5, 105, 10, 60),  # 5000 / 10000
             22: np.zeros(SIZES[2], bool)}  # missed
    acc = MaskIoUAccumulator()
    for image_id in ds.image_ids:
        for a in ds.annotations(image_id):
            acc.add(preds[a["id"]], ds.gt_mask(a), a["area"])
    r = acc.result()
    assert r["mIoU"] == pytest.approx(100 * (1 / 3 + 1 + 0.5 + 0) / 4, abs=1e-9)
    assert r["mIoU_small"] == pytest.approx(100 * (1 / 3 + 0) / 2, abs=1e-9)
    assert r["mIoU_medium"] == pytest.approx(100.0, abs=1e-9) and r["mIoU_large"] == pytest.approx(50.0, abs=1e-9)
    assert (r["n"], r["n_small"], r["n_medium"], r["n_large"]) == (4, 2, 1, 1)


def test_miou_empty_split_is_none():
    acc = MaskIoUAccumulator()
    assert acc.result()["mIoU"] is None
    assert acc.add(np.ones((2, 2), bool), np.ones((2, 2), bool), 0.5) is None  # area < 1: skipped
    acc.add(np.ones((100, 100), bool), np.ones((100, 100), bool), 10000)
    r = acc.result()
    assert r["mIoU"] == 100.0 and r["mIoU_small"] is None and r["mIoU_medium"] is None and r["n_small"] == 0


def test_encode_rle_round_trip():
    m = rect(2, 3, 40, 7, 99)
    r = encode_rle(m)
    assert isinstance(r["counts"], str) and json.loads(json.dumps(r)) == r
    assert np.array_equal(mask_utils.decode({"size": r["size"], "counts": r["counts"].encode()}), m)


def detection_results() -> list[dict]:
    """Imperfect masks, duplicates and false positives, with their true mask boxes."""
    def res(image_id, cat, mask, score):
        ys, xs = np.nonzero(mask)
        box = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
        return {"image_id": image_id, "category_id": cat, "segmentation": encode_rle(mask), "score": score,
                "bbox": box}
    return [res(1, 1, rect(1, 10, 30, 20, 40), 0.9), res(1, 1, rect(1, 10, 30, 10, 30), 0.5),
            res(1, 2, rect(1, 10, 50, 50, 90), 0.8), res(1, 2, rect(1, 80, 82, 100, 102), 0.7),
            res(2, 1, rect(2, 5, 105, 10, 60), 0.6), res(2, 1, rect(2, 0, 3, 0, 3), 0.95),
            res(2, 2, rect(2, 70, 100, 0, 33), 0.4), res(3, 1, rect(3, 0, 40, 0, 30), 0.3)]


def direct_cocoeval(ann_path: Path, results: list[dict], image_ids: list[int] | None = None) -> list[float | None]:
    """The plain pycocotools recipe, for comparison (-1, "no GT of this size", read as None)."""
    gt = COCO(str(ann_path))
    dt = gt.loadRes(copy.deepcopy(results))
    ev = COCOeval(gt, dt, "segm")
    if image_ids is not None:
        ev.params.imgIds = image_ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return [None if s == -1 else 100 * float(s) for s in ev.stats[:6]]


KEYS = ["mAP", "AP50", "AP75", "APs", "APm", "APl"]


def test_segm_map_equals_pycocotools(ds):
    results = [{k: v for k, v in r.items() if k != "bbox"} for r in detection_results()]
    got = coco_segm_map(ds.coco, results)
    assert [got[k] for k in KEYS] == direct_cocoeval(ds.ann_path, results) and got["maxDets"] == [1, 10, 100]
    assert 0 < got["mAP"] < 100
    only_1 = [r for r in results if r["image_id"] == 1]
    got = coco_segm_map(ds.coco, only_1, image_ids=[1])
    assert [got[k] for k in KEYS] == direct_cocoeval(ds.ann_path, only_1, image_ids=[1]) and got["APl"] is None


def test_bbox_key_does_not_change_areas(ds):
    with_box = detection_results()
    with_box[5]["bbox"] = [0, 0, 130, 110]  # a 9-pixel false positive with an image-sized box
    without = [{k: v for k, v in r.items() if k != "bbox"} for r in with_box]
    ours = coco_segm_map(ds.coco, with_box)
    assert ours == coco_segm_map(ds.coco, without)
    assert [ours[k] for k in KEYS] == direct_cocoeval(ds.ann_path, without)
    trap = direct_cocoeval(ds.ann_path, with_box)  # pycocotools would take the box area
    assert trap[3] > ours["APs"] and trap[5] < ours["APl"]


def test_perfect_empty_and_missing_ranges(ds):
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
                "segmentation": encode_rle(ds.gt_mask(a))} for a in ds.coco.dataset["annotations"] if not a["iscrowd"]]
    assert all(coco_segm_map(ds.coco, perfect)[k] == pytest.approx(100.0, abs=1e-9) for k in KEYS)
    empty = coco_segm_map(ds.coco, [])
    assert {k: v for k, v in empty.items() if k != "items"} == {**dict.fromkeys(KEYS, 0.0), "maxDets": [1, 10, 100]}
    assert all(it["dets"] == [] for it in empty["items"]) and sum(it["gt"] for it in empty["items"]) > 0
    assert coco_segm_map(ds.coco, [], image_ids=[2])["APm"] is None  # no medium GT in image 2


def assert_one_line(err: pytest.ExceptionInfo, path: Path) -> None:
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg, msg


def broken(doc_edit) -> dict:
    doc = coco_doc()
    doc_edit(doc)
    return doc


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.pop("annotations"), "no 'annotations'"),
    (lambda d: d.pop("images"), "no 'images'"),
    (lambda d: d["annotations"][0]["segmentation"].update(counts="!!bad"), "does not decode"),
    (lambda d: d["annotations"][0]["segmentation"].update(counts=rle(np.ones((5, 5), bool))["counts"]),
     "does not decode"),  # a truncated RLE: pycocotools would decode uninitialised memory
    (lambda d: d["annotations"][2]["segmentation"]["counts"].append(3), "does not decode"),
    (lambda d: d["annotations"][1].update(segmentation=[["a", "b", "c", "d", "e", "f"]]), "does not decode"),
    (lambda d: d["annotations"][0].update(segmentation=rle(np.ones((50, 60), bool))), "differs"),
    (lambda d: d["annotations"][3].pop("area"), "lacks area"),
])
def test_broken_annotation_file(tmp_path, edit, match):
    path = write_set(tmp_path, broken(edit))
    with pytest.raises(BenchError, match=match) as err:
        CocoSet(tmp_path)
    assert_one_line(err, path)


def test_missing_files_and_bad_json(tmp_path):
    with pytest.raises(BenchError) as err:
        CocoSet(tmp_path / "nope")
    assert_one_line(err, tmp_path / "nope")
    with pytest.raises(BenchError) as err:
        CocoSet(tmp_path)
    assert_one_line(err, tmp_path / "annotations" / "instances_val.json")
    path = write_set(tmp_path)
    (tmp_path / "images/val/im2.png").unlink()
    with pytest.raises(BenchError) as err:
        CocoSet(tmp_path)
    assert_one_line(err, tmp_path / "images/val/im2.png")
    path.write_text('{"images": [')
    with pytest.raises(BenchError, match="not valid JSON") as err:
        CocoSet(tmp_path)
    assert_one_line(err, path)


def test_load_detections(ds, tmp_path):
    path = tmp_path / "dets.json"
    dets = [{"image_id": i, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5} for i in (1, 2, 3, 9)]
    path.write_text(json.dumps(dets))
    assert [d["image_id"] for d in ds.load_detections(path)] == [1, 2, 3]
    assert [d["image_id"] for d in CocoSet(ds.root, max_images=1).load_detections(path)] == [1]
    for content, match in [('{"a": 1}', "JSON list"), ("[{", "not valid JSON"),
                           (json.dumps([{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}]), "lacks score"),
                           (json.dumps([{**dets[0], "bbox": [1, 2]}]), "bbox")]:
        path.write_text(content)
        with pytest.raises(BenchError, match=match) as err:
            ds.load_detections(path)
        assert_one_line(err, path)
    with pytest.raises(BenchError) as err:
        ds.load_detections(tmp_path / "none.json")
    assert_one_line(err, tmp_path / "none.json")
