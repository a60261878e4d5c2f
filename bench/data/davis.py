"""DAVIS-2017-layout video sets (SA-V and MOSE have their own readers: `bench.data.sav`, `bench.data.mose`).

    ROOT/JPEGImages/480p/<seq>/<frame>.jpg
    ROOT/Annotations/480p/<seq>/<frame>.png     palette PNG: pixel = object id, 0 background, 255 void
    ROOT/ImageSets/2017/<split>.txt             one sequence name a line

Only the layout is assumed: any split name, any frame naming, any image size. Annotations may be
sparse (SA-V annotates every 4th frame) as long as the first frame has one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from bench import BenchError
from bench.data.video import VideoSet, image_size, one_line

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
        raise BenchError(f"cannot read label PNG {path}: {one_line(e)}") from None
    if labels is None:
        raise BenchError(f"{path}: expected a palette or 8-bit single-channel PNG, got mode {mode}")
    return labels.astype(np.uint8)


class DavisSet(VideoSet):
    """Sequences of one split of a DAVIS-2017-layout set."""

    layout = "davis"
    kind = "DAVIS"

    def __init__(self, root: str | Path, split: str = "val", sequences: Sequence[str] | None = None,
                 max_frames: int | None = None):
        self._object_ids: dict[str, list[int]] = {}
        super().__init__(root, split, sequences, max_frames)

    # -- layout ----------------------------------------------------------------------------
    @property
    def split_file(self) -> Path:
        return self.root / "ImageSets" / "2017" / f"{self.split}.txt"

    def image_dir(self, seq: str) -> Path:
        return self.root / "JPEGImages" / "480p" / seq

    def mask_dir(self, seq: str) -> Path:
        return self.root / "Annotations" / "480p" / seq

    def mask_path(self, seq: str, frame: str) -> Path:
        return self.mask_dir(seq) / f"{frame}.png"

    def _check_sequence(self, seq: str) -> None:
        """The first frame has an annotation, of the frame's size."""
        first = self._frames[seq][0]
        if not self.mask_path(seq, first).is_file():
            raise BenchError(f"annotation of the first frame not found: {self.mask_path(seq, first)}")
        self.check_size(seq, first, self.mask_path(seq, first), image_size(self.mask_path(seq, first)))

    # -- access ------------------------------------------------------------------------------
    def annotated_frames(self, seq: str) -> list[str]:
        """The frames that have a ground-truth PNG: all of them on DAVIS, a subset on SA-V."""
        return [f for f in self._frames[seq] if self.mask_path(seq, f).is_file()]

    def read_mask(self, seq: str, frame: str) -> np.ndarray:
        """Ground-truth label map, raw (255 = void is kept; the evaluator maps it to 0)."""
        path = self.mask_path(seq, frame)
        if not path.is_file():
            raise BenchError(f"annotation not found: {path}")
        labels = read_label_png(path)
        self.check_size(seq, frame, path, labels.shape)
        return labels

    def label_maps(self, seq: str, frames: Sequence[str]) -> list[np.ndarray] | None:
        annotated = set(self.annotated_frames(seq))
        return [self.read_mask(seq, f) for f in frames] if annotated.issuperset(frames) else None

    def first_masks(self, seq: str) -> dict[int, np.ndarray]:
        """The objects of `object_ids` present in the first frame, with their masks there: the
        prompts of the official protocol (an id absent from frame 0 is not tracked)."""
        first = self.read_mask(seq, self._frames[seq][0])
        masks = {i: first == i for i in self.object_ids(seq)}
        return {i: m for i, m in masks.items() if m.any()}

    def prompts(self, seq: str, later: bool = False) -> dict[int, tuple[int, np.ndarray]]:
        """`first_masks` on frame 0: the DAVIS 2017 evaluator scores only the objects of the
        first frame, so objects that appear later are neither tracked nor scored."""
        if later:
            raise BenchError("the DAVIS 2017 layout scores only the objects of the first frame; for objects "
                             "that appear later use a set in the MOSE or SA-V layout (--vos-format mose|sav)")
        return {i: (0, m) for i, m in self.first_masks(seq).items()}

    def object_ids(self, seq: str) -> list[int]:
        """1..N, N = the largest id in the first ground-truth frame (void counts as 0): the DAVIS
        semi-supervised rule, so objects that appear later are not tracked or scored."""
        if seq not in self._object_ids:
            first = self.read_mask(seq, self._frames[seq][0])
            n = int(np.where(first == VOID_LABEL, 0, first).max())
            self._object_ids[seq] = list(range(1, n + 1))
        return list(self._object_ids[seq])
