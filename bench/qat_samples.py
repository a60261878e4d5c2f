"""Training samples of the QAT loop (bench.qat), made from the calibration data: images with
their GT boxes and masks, video windows with first-frame prompts and per-frame targets (SAM2),
SAM (v1) images as its predictor preprocesses them; and the image encoder's inputs for
statistics passes (e.g. Q-SAM2's VRC)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench import BenchError
from bench.calib import CalibData, read_rgb
from bench.sam2_train import to_input
from bench.sam_predictor import is_sam, sam_input, sam_masks


@dataclass
class ImageSample:
    image: torch.Tensor  # (1, 3, S, S) normalized
    boxes: torch.Tensor  # (k, 2, 2) box corners in model-input pixels
    masks: torch.Tensor | None  # (k, S, S) GT masks, when known (kept as bool; float from `to`)

    def to(self, device: torch.device) -> ImageSample:
        return ImageSample(self.image.to(device), self.boxes.to(device), _float(self.masks, device))


@dataclass
class ClipSample:
    frames: torch.Tensor  # (T, 3, S, S) normalized
    prompts: torch.Tensor  # (k, 1, S, S) masks of the first frame (bool; float from `to`)
    targets: torch.Tensor | None  # (T, k, S, S) GT masks, when known (bool; float from `to`)

    def to(self, device: torch.device) -> ClipSample:
        return ClipSample(self.frames.to(device), _float(self.prompts, device), _float(self.targets, device))


Sample = ImageSample | ClipSample


def _float(masks: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """Binary masks as the model and the losses take them. Samples keep them as bool: at
    1024x1024 a float mask is 4 MiB, and 32 images of up to 16 objects hold 2 GiB of them."""
    return None if masks is None else masks.to(device, torch.float32)


def _binary(masks: torch.Tensor) -> torch.Tensor:
    """A float 0/1 mask tensor as bool (nothing is lost: checked)."""
    b = masks.bool()
    if not torch.equal(b.float(), masks):
        raise ValueError("masks are not binary")
    return b


def _resize_masks(masks: np.ndarray, size: int) -> torch.Tensor:
    m = torch.from_numpy(np.ascontiguousarray(masks)).float()[None]
    return _binary(F.interpolate(m, size=(size, size), mode="nearest")[0])


def _frame_files(folder: Path) -> list[Path]:
    """JPEG frames in sam2's order (numeric stems)."""
    files = [p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg")]
    return sorted(files, key=lambda p: (int(p.stem), p.name) if p.stem.isdigit() else (math.inf, p.name))


def image_samples(calib: CalibData, size: int) -> list[ImageSample]:
    out = []
    for item in calib.images:
        h, w = item.image.shape[:2]
        boxes = torch.from_numpy(item.boxes.astype(np.float32)) * torch.tensor([size / w, size / h] * 2)
        masks = None if item.masks is None else _resize_masks(item.masks, size)
        out.append(ImageSample(to_input([item.image], size), boxes.reshape(-1, 2, 2), masks))
    return out


def clip_samples(calib: CalibData, size: int, window: int) -> list[ClipSample]:
    out = []
    for clip in calib.clips:
        files = _frame_files(clip.frames_dir)
        ids = sorted(clip.masks)
        labels = clip.labels if clip.labels is not None and len(clip.labels) == len(files) else None
        starts = range(0, len(files) - 1, window) if labels is not None else [0]
        for start in starts:
            sel = list(range(start, min(start + window, len(files))))
            if len(sel) < 2:
                continue
            first = [labels[start] == i for i in ids] if labels is not None else [clip.masks[i] for i in ids]
            present = [i for i, m in zip(ids, first) if m.any()]
            if not present:
                continue
            prompts = _resize_masks(np.stack([m for m in first if m.any()]), size)[:, None]
            targets = None
            if labels is not None:
                targets = torch.stack([_resize_masks(np.stack([labels[t] == i for i in present]), size) for t in sel])
            frames = to_input([read_rgb(files[t]) for t in sel], size)
            out.append(ClipSample(frames, prompts, targets))
    return out


def sam_image_samples(calib: CalibData, model: nn.Module) -> list[ImageSample]:
    """SAM (v1): image samples made as its predictor makes them (longest side resized, padded;
    boxes and GT masks in that frame, bench.sam_predictor); SAM has no video path."""
    out = []
    for item in calib.images:
        x, transform = sam_input(model, item.image)
        boxes = torch.from_numpy(transform.apply_boxes(item.boxes.astype(np.float32), item.image.shape[:2]))
        size = x.shape[-1]
        masks = None if item.masks is None else _binary(sam_masks(item.masks, transform, size))
        out.append(ImageSample(x.cpu(), boxes.float().reshape(-1, 2, 2), masks))
    if not out:
        raise BenchError("quantization-aware training of a SAM model needs calibration images")
    return out


def model_samples(calib: CalibData | None, model: nn.Module, clip_frames: int) -> list[Sample]:
    """`build_samples` at the model's input size, or SAM's image samples."""
    if is_sam(model):
        if calib is None:
            raise BenchError("quantization-aware training needs calibration data (images)")
        return sam_image_samples(calib, model)
    return build_samples(calib, model.image_size, clip_frames)


def build_samples(calib: CalibData | None, size: int, clip_frames: int) -> list[Sample]:
    """Training samples of the calibration data: images first, then video windows."""
    if calib is None or len(calib) == 0:
        raise BenchError("quantization-aware training needs calibration data (images or video clips)")
    samples: list[Sample] = [*image_samples(calib, size), *clip_samples(calib, size, clip_frames)]
    if not samples:
        raise BenchError("quantization-aware training: the calibration data gave no usable sample")
    return samples


def calibration_images(calib: CalibData | None, size: int) -> Iterator[torch.Tensor]:
    """Every calibration image and every frame of the calibration clips, as (1, 3, S, S)
    model inputs (made one at a time)."""
    if calib is None or len(calib) == 0:
        raise BenchError("calibration data needed (images or video clips)")
    for item in calib.images:
        yield to_input([item.image], size)
    for clip in calib.clips:
        for f in _frame_files(clip.frames_dir):
            yield to_input([read_rgb(f)], size)


def encoder_input_count(calib: CalibData | None, model: nn.Module) -> int:
    """How many inputs `encoder_inputs` yields."""
    if calib is None:
        return 0
    if is_sam(model):
        return len(calib.images)
    return len(calib.images) + sum(len(_frame_files(c.frames_dir)) for c in calib.clips)


def encoder_inputs(calib: CalibData | None, model: nn.Module) -> Iterator[torch.Tensor]:
    """`calibration_images` as the model's image encoder takes them (SAM: as its predictor
    preprocesses them)."""
    if not is_sam(model):
        yield from calibration_images(calib, model.image_size)
        return
    for item in calib.images if calib is not None else ():
        yield sam_input(model, item.image)[0]
