"""COCO-layout instance segmentation sets (real COCO 2017 or the synthetic stand-in).

    ROOT/annotations/instances_<split>.json      or, for real COCO, instances_<split>2017.json
    ROOT/images/<file_name>, ROOT/images/<split>/<file_name> or ROOT/<split>2017/<file_name>

Everything the box-prompt tasks will read is checked when the set is built, so a broken file
fails in seconds with a one-line `BenchError` rather than hours into a run. RLE strings are
checked in Python because pycocotools decodes a truncated one into uninitialised memory
instead of raising.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from bench import BenchError

ANN_KEYS = ("id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd")
IMAGE_KEYS = ("id", "file_name", "height", "width")
DETECTION_KEYS = ("image_id", "category_id", "bbox", "score")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def read_json(path: Path, what: str):
    """Parsed JSON, or a one-line error naming the file (a traceback from `json` would not)."""
    if not path.is_file():
        raise BenchError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BenchError(f"{what} {path} is not valid JSON: {_one_line(e)}") from None


def rle_runs(counts: str) -> list[int]:
    """Run lengths of a compressed COCO RLE string (pycocotools' `rleFrString` in Python), so a
    string that would decode to garbage can be refused. Raises ValueError on a malformed one."""
    runs: list[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            if p >= len(counts):
                raise ValueError("RLE string ends inside a number")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"RLE string has an invalid character {counts[p]!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        runs.append(x + runs[-2] if len(runs) > 2 else x)
    return runs


def check_segmentation(segm, height: int, width: int) -> None:
    """Raise unless `segm` (polygons, RLE or uncompressed RLE) is a mask of this image's size."""
    if isinstance(segm, list):
        if not segm or not all(isinstance(p, list) and p for p in segm):
            raise ValueError("polygons must be a non-empty list of [x1, y1, x2, y2, ...]")
        mask_utils.frPyObjects(segm, height, width)  # raises where COCOeval would
        return
    if not isinstance(segm, dict) or "counts" not in segm or "size" not in segm:
        raise ValueError("segmentation is neither polygons nor an RLE dict with counts and size")
    if list(segm["size"]) != [height, width]:
        raise ValueError(f"RLE size {list(segm['size'])} differs from the image's [height, width] {[height, width]}")
    counts = segm["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs = rle_runs(counts) if isinstance(counts, str) else counts
    if not isinstance(runs, list) or not all(isinstance(r, int) and r >= 0 for r in runs):
        raise ValueError("RLE counts must be non-negative integers")
    if sum(runs) != height * width:
        raise ValueError(f"RLE runs cover {sum(runs)} pixels, the image has {height * width}")


def quiet_coco(dataset: dict) -> COCO:
    """A pycocotools COCO object over an already-parsed dict, without its prints."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoSet:
    """One split of a COCO-layout folder: image paths, GT annotations and detector boxes."""

    def __init__(self, root: str | Path, split: str = "val", max_images: int | None = None,
                 image_ids: Iterable[int] | None = None) -> None:
        self.root, self.split = Path(root), split
        if not self.root.is_dir():
            raise BenchError(f"COCO root not found: {self.root}")
        self.ann_path = self._find_annotations()
        doc = read_json(self.ann_path, "COCO annotation file")
        for key in ("images", "annotations"):
            if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
                raise BenchError(f"COCO annotation file {self.ann_path} has no '{key}' list")
        doc.setdefault("categories", [])
        self._check_keys(doc["images"], ("id",), "image")  # what pycocotools' index needs
        self._check_keys(doc["annotations"], ("id", "image_id", "category_id"), "annotation")
        self.coco = quiet_coco(doc)
        self.image_ids = self._select(image_ids, max_images)
        self._paths: dict[int, Path] = {}
        for image_id in self.image_ids:
            self._check_image(image_id)

    def _find_annotations(self) -> Path:
        folder = self.root / "annotations"
        names = (f"instances_{self.split}.json", f"instances_{self.split}2017.json")
        for name in names:
            if (folder / name).is_file():
                return folder / name
        raise BenchError(f"COCO annotation file not found: {folder / names[0]} (or {names[1]})")

    def _check_keys(self, entries: list, keys: tuple[str, ...], what: str) -> None:
        for i, entry in enumerate(entries):
            missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
            if missing:
                raise BenchError(f"COCO annotation file {self.ann_path}: {what} #{i} lacks {', '.join(missing)}")

    def _select(self, image_ids: Iterable[int] | None, max_images: int | None) -> list[int]:
        """Sorted ids, so `max_images` always takes the same images on every machine."""
        ids = sorted(self.coco.imgs)
        if image_ids is not None:
            wanted = set(image_ids)
            unknown = sorted(wanted - set(ids))
            if unknown:
                raise BenchError(f"image ids {unknown[:5]} are not in {self.ann_path}")
            ids = [i for i in ids if i in wanted]
        if max_images is not None:
            if int(max_images) < 1:
                raise BenchError(f"max_images must be >= 1, got {max_images}")
            ids = ids[: int(max_images)]
        return ids

    def _check_image(self, image_id: int) -> None:
        """The image file exists and every annotation on it decodes to a mask of its size."""
        img = self.coco.imgs[image_id]
        self._check_keys([img], IMAGE_KEYS, f"image {image_id}")
        self._paths[image_id] = self._find_image(img["file_name"])
        anns = self.coco.imgToAnns.get(image_id, [])
        self._check_keys(anns, ANN_KEYS, f"an annotation of image {image_id}")
        for ann in anns:
            try:
                check_segmentation(ann["segmentation"], img["height"], img["width"])
            except Exception as e:  # pycocotools raises bare Exception, TypeError, ValueError...
                raise BenchError(f"COCO annotation file {self.ann_path}: annotation {ann['id']} (image {image_id}) "
                                 f"does not decode: {_one_line(e)}") from None

    def _find_image(self, file_name: str) -> Path:
        candidates = [self.root / "images" / file_name, self.root / "images" / self.split / file_name,
                      self.root / f"{self.split}2017" / file_name]
        for path in candidates:
            if path.is_file():
                return path
        raise BenchError(f"image file not found: {candidates[1]} (also tried {candidates[0]}, {candidates[2]})")

    def image_path(self, image_id: int) -> Path:
        """Path of one of the set's images (checked to exist when the set was built)."""
        if image_id not in self._paths:
            raise BenchError(f"image {image_id} is not in this subset of {self.ann_path}")
        return self._paths[image_id]

    def annotations(self, image_id: int) -> list[dict]:
        """The annotations that get a box prompt: crowd regions and area < 1 are skipped, as the
        mIoU protocol says (crowd boxes cover many objects, so their IoU is meaningless)."""
        return [a for a in self.coco.imgToAnns.get(image_id, []) if not a["iscrowd"] and a["area"] >= 1]

    def gt_mask(self, ann: dict) -> np.ndarray:
        """The annotation's GT mask (H, W) bool, rasterised by pycocotools as COCOeval does."""
        return self.coco.annToMask(ann).astype(bool)

    def load_detections(self, path: str | Path) -> list[dict]:
        """Detector boxes for the set's images from a COCO detection-results JSON."""
        path = Path(path)
        dets = read_json(path, "detections file")
        if not isinstance(dets, list):
            raise BenchError(f"detections file {path} must hold a JSON list, got {type(dets).__name__}")
        for i, d in enumerate(dets):
            missing = [k for k in DETECTION_KEYS if not isinstance(d, dict) or k not in d]
            if missing:
                raise BenchError(f"detections file {path}: entry #{i} lacks {', '.join(missing)}")
            box = d["bbox"]
            if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
                raise BenchError(f"detections file {path}: entry #{i} bbox must be [x, y, w, h], got {box!r}")
        keep = set(self.image_ids)
        return [d for d in dets if d["image_id"] in keep]
