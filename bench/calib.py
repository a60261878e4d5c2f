"""Calibration data and the forward passes that feed quantizer observers.

`CalibData` holds images with box prompts (the image path: encoder, prompt encoder, mask
decoder) and video clips with first-frame masks (the video path, which also runs memory
attention and the memory encoder). The same object is shared by every method of a cell.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from bench import BenchError, progress

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class CalibImage:
    image: np.ndarray  # H x W x 3 uint8 RGB
    boxes: np.ndarray  # N x 4 float, xyxy in image pixels (N >= 1)
    masks: np.ndarray | None = None  # N x H x W bool GT masks of the boxes' objects, when known


@dataclass
class CalibClip:
    frames_dir: Path  # a folder of <frame>.jpg, as sam2's video predictor reads them
    masks: dict[int, np.ndarray]  # object id -> H x W bool mask on the first frame (present objects)
    labels: list[np.ndarray] | None = None  # per-frame GT label maps (H x W, object ids), when known


@dataclass
class CalibData:
    images: list[CalibImage] = field(default_factory=list)
    clips: list[CalibClip] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images) + len(self.clips)

    @classmethod
    def from_image_dir(cls, folder: str | Path, n: int) -> CalibData:
        """The first `n` images of a folder (sorted by name), each prompted with its full box."""
        folder = Path(folder)
        if not folder.is_dir():
            raise BenchError(f"calibration folder not found: {folder}")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:n]
        if not files:
            raise BenchError(f"calibration folder {folder}: no .jpg/.png images")
        images = []
        for p in files:
            img = read_rgb(p)
            h, w = img.shape[:2]
            images.append(CalibImage(img, np.array([[0, 0, w, h]], dtype=np.float32)))
        return cls(images=images)


    @classmethod
    def from_datasets(cls, davis_root: str | None, coco_root: str | None, n: int, work_dir: Path,
                      vos_format: str = "davis") -> CalibData:
        """`n` images (with their GT boxes and masks) from the COCO train split and `n` frames
        from the first sequences of the video set's train split, read in its format (whole
        clips from frame 0 with their frame-0 masks and, where every frame is annotated, all
        frames' label maps, the last clip cut to make `n`); deterministic, sorted by id / name."""
        calib = cls()
        if coco_root is not None:
            calib.images = coco_images(coco_root, n)
        if davis_root is not None:
            calib.clips = video_clips(davis_root, n, Path(work_dir) / "calib_frames", vos_format)
        return calib


def coco_images(root: str, n: int, max_boxes: int = 16) -> list[CalibImage]:
    from bench.data.coco import CocoSet
    from bench.metrics.coco import box_xywh_to_xyxy

    ds = CocoSet(root, split="train")
    images = []
    for image_id in ds.image_ids:
        anns = ds.annotations(image_id)[:max_boxes]
        if anns:
            boxes = np.array([box_xywh_to_xyxy(a["bbox"]) for a in anns], dtype=np.float32)
            masks = np.stack([ds.gt_mask(a) for a in anns])
            images.append(CalibImage(read_rgb(ds.image_path(image_id)), boxes, masks))
        if len(images) == n:
            break
    return images


def video_clips(root: str, n: int, links: Path, vos_format: str = "davis") -> list[CalibClip]:
    from bench.data.vos import open_video_set

    ds = open_video_set(root, vos_format, split="train")
    clips, left = [], n
    for seq in ds.sequences:
        names = ds.frames(seq)[:left]
        if len(names) < 2:
            break
        folder = ds.link_frames(seq, links / seq, names)
        clips.append(CalibClip(folder, ds.first_masks(seq), ds.label_maps(seq, names)))
        left -= len(names)
        if left <= 0:
            break
    return clips


def read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as e:
        raise BenchError(f"cannot read image {path}: {e}") from None


@torch.no_grad()
def run_images(model: nn.Module, images: list[CalibImage]) -> None:
    """SAM's box-prompted image path on each image (single-mask output)."""
    from bench.models import image_predictor

    predictor = image_predictor(model)
    for item in progress(images, "calibration images"):
        predictor.set_image(item.image)
        predictor.predict(box=item.boxes, multimask_output=False)


@torch.no_grad()
def run_clips(model: nn.Module, clips: list[CalibClip]) -> None:
    """The VOS path on each clip: first-frame masks of every object, then propagation."""
    for clip in progress(clips, "calibration clips"):
        if not clip.masks:
            continue  # no object in frame 0: nothing to propagate
        state = model.init_state(str(clip.frames_dir))
        for obj_id, mask in clip.masks.items():
            model.add_new_mask(state, frame_idx=0, obj_id=obj_id, mask=mask)
        for _ in model.propagate_in_video(state):
            pass


def run_calibration(model: nn.Module, calib: CalibData) -> None:
    run_images(model, calib.images)
    run_clips(model, calib.clips)
