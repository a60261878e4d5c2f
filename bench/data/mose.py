"""MOSE layout (henghuiding/MOSE-api README), read as it ships; LVOS and YouTube-VOS use the same
per-split folders:

    ROOT/<split>/JPEGImages/<video>/<frame>.jpg
    ROOT/<split>/Annotations/<video>/<frame>.png    palette PNG: pixel = object id, 0 background

`<split>` is the folder of the split (MOSE ships `train` and `valid`: `--split val` reads
`valid` when there is no `val`); its videos are the folders of `JPEGImages` (no list file).
Inference follows `tools/vos_inference.py`: frame-0 objects are every non-zero id of the first
annotation, or, with `later` (`--track_object_appearing_later_in_video`), each object from its
first annotated non-empty frame. Scoring: `bench.metrics.sav.evaluate_palette`, the SA-V
evaluator's rules for this layout (objects are scored from the frame they first appear in).

MOSE's own `valid` split ships the first frame's annotation only: its J&F comes from the MOSE
server, so scoring it here stops with an error naming the sequence.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench import BenchError
from bench.data.davis import DavisSet

SPLIT_FOLDERS = {"val": "valid"}  # the split name -> MOSE's folder for it, when ROOT/<split> is absent


class MoseSet(DavisSet):
    """Videos of one MOSE-layout split folder: a DAVIS set without the 480p level and list file."""

    layout = "mose"
    kind = "MOSE"

    @property
    def split_dir(self) -> Path:
        own = self.root / self.split
        other = self.root / SPLIT_FOLDERS.get(self.split, self.split)
        return own if own.is_dir() or not other.is_dir() else other

    @property
    def annotation_root(self) -> Path:
        return self.split_dir / "Annotations"

    def _where(self) -> str:
        return f"the split folder {self.split_dir / 'JPEGImages'}"

    def _read_split(self) -> list[str]:
        folder = self.split_dir / "JPEGImages"
        if not folder.is_dir():
            raise BenchError(f"split folder not found: {folder} (MOSE layout: ROOT/<split>/JPEGImages/<video>)")
        names = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if not names:
            raise BenchError(f"no video folders in {folder}")
        return names

    def image_dir(self, seq: str) -> Path:
        return self.split_dir / "JPEGImages" / seq

    def mask_dir(self, seq: str) -> Path:
        return self.annotation_root / seq

    def _check_sequence(self, seq: str) -> None:
        """Every annotation names a frame of the video; the first frame has one, of its size."""
        folder = self.mask_dir(seq)
        if not folder.is_dir():
            raise BenchError(f"annotation folder not found: {folder}")
        for png in folder.glob("*.png"):
            self._check_is_frame(seq, png)
        super()._check_sequence(seq)

    def prompts(self, seq: str, later: bool = False) -> dict[int, tuple[int, np.ndarray]]:
        """Every non-zero id of the first annotation on frame 0 (the official script's rule, so
        255 is an object here), or with `later` every id from its first annotated frame."""
        frames = self._frames[seq]
        out: dict[int, tuple[int, np.ndarray]] = {}
        for t, frame in enumerate(frames):
            if not self.mask_path(seq, frame).is_file():
                continue
            labels = self.read_mask(seq, frame)
            for obj in np.unique(labels).tolist():
                if obj != 0 and obj not in out:
                    out[int(obj)] = (t, labels == obj)
            if t == 0 and not later:
                if not out:
                    raise BenchError(f"no object in the first annotation {self.mask_path(seq, frame)}; for objects "
                                     "that appear later: --track-later-objects")
                break
        return out
