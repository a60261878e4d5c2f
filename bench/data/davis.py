"""DAVIS-2017-layout video sets (also MOSE / SA-V once arranged in the same folders).

    ROOT/JPEGImages/480p/<seq>/<frame>.jpg
    ROOT/Annotations/480p/<seq>/<frame>.png     palette PNG: pixel = object id, 0 background, 255 void
    ROOT/ImageSets/2017/<split>.txt             one sequence name a line

Only the layout is assumed: any split name, any frame naming, any image size. Annotations may be
sparse (SA-V annotates every 4th frame) as long as the first frame has one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from bench import BenchError

VOID_LABEL = 255
LABEL_MODES = ("P", "L", "1")


def _voc_palette() -> tuple[int, ...]:
    """The PASCAL VOC colour map that DAVIS annotations use: bit k of the label goes to bit 7-k//3
    of the red, green or blue channel (in that rotation), so 1 = dark red, 2 = dark green, ..."""
    palette = []
    for label in range(256):
        rgb = [0, 0, 0]
        for shift in range(8):
            for channel in range(3):
                rgb[channel] |= ((label >> (3 * shift + channel)) & 1) << (7 - shift)
        palette.extend(rgb)
    return tuple(palette)


DAVIS_PALETTE: tuple[int, ...] = _voc_palette()


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def write_palette_png(path: str | Path, labels: np.ndarray) -> None:
    """Save a label map as a DAVIS palette PNG (the format the official evaluator reads)."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or not (labels.dtype == bool or np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"labels must be a 2-D integer array, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"labels must lie in 0..255, got {labels.min()}..{labels.max()}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(labels.astype(np.uint8))
    im.putpalette(DAVIS_PALETTE)  # turns the 'L' image into 'P' with the same index values
    im.save(path, format="PNG", compress_level=1)  # lossless at any level; 1 is the fastest


def read_label_png(path: str | Path) -> np.ndarray:
    """Palette indices (uint8, H x W) of a label PNG. Colour images are refused rather than
    guessed at: their pixel values are not object ids."""
    try:
        with Image.open(path) as im:
            mode = im.mode
            labels = np.array(im) if mode in LABEL_MODES else None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BenchError(f"cannot read label PNG {path}: {_one_line(e)}") from None
    if labels is None:
        raise BenchError(f"{path}: expected a palette or 8-bit single-channel PNG, got mode {mode}")
    return labels.astype(np.uint8)


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the header only: cheap enough to check every frame."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BenchError(f"cannot read image {path}: {_one_line(e)}") from None
    return h, w


class DavisSet:
    """Sequences of one split; validated up front so a long run does not fail halfway."""

    def __init__(self, root: str | Path, split: str = "val", sequences: Sequence[str] | None = None,
                 max_frames: int | None = None):
        self.root = Path(root)
        self.split = split
        self.max_frames = max_frames
        if max_frames is not None and max_frames < 1:
            raise BenchError(f"max_frames must be >= 1, got {max_frames}")
        if not self.root.is_dir():
            raise BenchError(f"DAVIS root not found: {self.root}")
        self.sequences = self._select(self._read_split(), sequences)
        self._frames: dict[str, list[str]] = {}
        self._object_ids: dict[str, list[int]] = {}
        for seq in self.sequences:
            self._frames[seq] = self._list_frames(seq)
            self._check_first_annotation(seq)

    # -- layout ----------------------------------------------------------------------------
    @property
    def split_file(self) -> Path:
        return self.root / "ImageSets" / "2017" / f"{self.split}.txt"

    def image_dir(self, seq: str) -> Path:
        return self.root / "JPEGImages" / "480p" / seq

    def mask_dir(self, seq: str) -> Path:
        return self.root / "Annotations" / "480p" / seq

    def image_path(self, seq: str, frame: str) -> Path:
        return self.image_dir(seq) / f"{frame}.jpg"

    def mask_path(self, seq: str, frame: str) -> Path:
        return self.mask_dir(seq) / f"{frame}.png"

    # -- validation --------------------------------------------------------------------------
    def _read_split(self) -> list[str]:
        if not self.split_file.is_file():
            raise BenchError(f"split file not found: {self.split_file}")
        names = [line.strip() for line in self.split_file.read_text().splitlines()]
        names = list(dict.fromkeys(n for n in names if n))
        if not names:
            raise BenchError(f"split file lists no sequences: {self.split_file}")
        return names

    def _select(self, listed: list[str], requested: Sequence[str] | None) -> list[str]:
        if requested is None:
            return listed
        requested = list(dict.fromkeys(requested))
        missing = [s for s in requested if s not in set(listed)]
        if missing:
            raise BenchError(f"sequence {missing[0]!r} is not in the split file {self.split_file}")
        if not requested:
            raise BenchError("an empty list of sequences was requested")
        return requested

    def _list_frames(self, seq: str) -> list[str]:
        folder = self.image_dir(seq)
        if not folder.is_dir():
            raise BenchError(f"sequence folder not found: {folder} (listed in {self.split_file})")
        frames = sorted(p.stem for p in folder.glob("*.jpg"))
        if all(f.isdigit() for f in frames):  # sam2's order: by number ("2" before "10")
            frames.sort(key=int)
        if not frames:
            raise BenchError(f"sequence folder has no .jpg frames: {folder}")
        return frames[: self.max_frames]

    def _check_first_annotation(self, seq: str) -> None:
        first = self._frames[seq][0]
        if not self.mask_path(seq, first).is_file():
            raise BenchError(f"annotation of the first frame not found: {self.mask_path(seq, first)}")
        self._check_size(seq, first, image_size(self.mask_path(seq, first)))

    def _check_size(self, seq: str, frame: str, mask_hw: tuple[int, int]) -> None:
        img_hw = image_size(self.image_path(seq, frame))
        if mask_hw != img_hw:
            raise BenchError(f"annotation {self.mask_path(seq, frame)} is {mask_hw[1]}x{mask_hw[0]} but its image "
                             f"{self.image_path(seq, frame)} is {img_hw[1]}x{img_hw[0]}")

    # -- access ------------------------------------------------------------------------------
    def frames(self, seq: str) -> list[str]:
        """Frame names (.jpg stems, in sam2's order: by number when all are numbers), the first
        `max_frames` of them."""
        return list(self._frames[seq])

    def annotated_frames(self, seq: str) -> list[str]:
        """The frames that have a ground-truth PNG: all of them on DAVIS, a subset on SA-V."""
        return [f for f in self._frames[seq] if self.mask_path(seq, f).is_file()]

    def read_mask(self, seq: str, frame: str) -> np.ndarray:
        """Ground-truth label map, raw (255 = void is kept; the evaluator maps it to 0)."""
        path = self.mask_path(seq, frame)
        if not path.is_file():
            raise BenchError(f"annotation not found: {path}")
        labels = read_label_png(path)
        self._check_size(seq, frame, labels.shape)
        return labels

    def link_frames(self, seq: str, folder: Path, frames: Sequence[str] | None = None) -> Path:
        """A folder of links to the sequence's selected frames (default: `frames(seq)`), named
        as the originals: sam2's `init_state` reads every JPEG of the folder it is given, so
        links to other frames (a folder reused with another selection) are removed."""
        folder.mkdir(parents=True, exist_ok=True)
        names = self.frames(seq) if frames is None else list(frames)
        keep = {f"{name}.jpg" for name in names}
        for old in folder.glob("*.jpg"):
            if old.name not in keep:
                old.unlink()
        for name in names:
            link = folder / f"{name}.jpg"
            if not link.exists():
                os.symlink(self.image_path(seq, name).resolve(), link)
        return folder

    def first_masks(self, seq: str) -> dict[int, np.ndarray]:
        """The objects of `object_ids` present in the first frame, with their masks there: the
        prompts of the official protocol (an id absent from frame 0 is not tracked)."""
        first = self.read_mask(seq, self._frames[seq][0])
        masks = {i: first == i for i in self.object_ids(seq)}
        return {i: m for i, m in masks.items() if m.any()}

    def object_ids(self, seq: str) -> list[int]:
        """1..N, N = the largest id in the first ground-truth frame (void counts as 0): the DAVIS
        semi-supervised rule, so objects that appear later are not tracked or scored."""
        if seq not in self._object_ids:
            first = self.read_mask(seq, self._frames[seq][0])
            n = int(np.where(first == VOID_LABEL, 0, first).max())
            self._object_ids[seq] = list(range(1, n + 1))
        return list(self._object_ids[seq])
