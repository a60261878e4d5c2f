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

from bench import BenchError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class CalibImage:
    image: np.ndarray  # H x W x 3 uint8 RGB
    boxes: np.ndarray  # N x 4 float, xyxy in image pixels (N >= 1)


@dataclass
class CalibClip:
    frames_dir: Path  # a folder of <frame>.jpg, as sam2's video predictor reads them
    masks: dict[int, np.ndarray]  # object id -> H x W bool mask on the first frame


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
    for item in images:
        predictor.set_image(item.image)
        predictor.predict(box=item.boxes, multimask_output=False)


@torch.no_grad()
def run_clips(model: nn.Module, clips: list[CalibClip]) -> None:
    """The VOS path on each clip: first-frame masks of every object, then propagation."""
    for clip in clips:
        state = model.init_state(str(clip.frames_dir))
        for obj_id, mask in clip.masks.items():
            model.add_new_mask(state, frame_idx=0, obj_id=obj_id, mask=mask)
        for _ in model.propagate_in_video(state):
            pass


def run_calibration(model: nn.Module, calib: CalibData) -> None:
    run_images(model, calib.images)
    run_clips(model, calib.clips)
