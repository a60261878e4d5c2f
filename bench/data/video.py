"""What every video set layout shares (DAVIS 2017, SA-V, MOSE): a list of sequences, each a
folder of `<frame>.jpg` in sam2's order, checked up front so a long run does not fail halfway.
Each layout (`bench.data.davis`, `bench.data.sav`, `bench.data.mose`) says where its frames,
its sequence list and its annotations are, and which objects are prompted on which frame.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from bench import BenchError


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the header only: cheap enough to check every frame."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BenchError(f"cannot read image {path}: {one_line(e)}") from None
    return h, w


class VideoSet:
    """Sequences of one split of a video set. A layout subclass sets `layout` (its `--vos-format`
    name) and `kind` (for messages), and implements `split_file` or `_read_split`, `image_dir`,
    `_check_sequence` and `prompts`."""

    layout = ""
    kind = "video set"
    per_object_png = False  # predictions: one binary PNG per object (SA-V) or one palette PNG per frame

    def __init__(self, root: str | Path, split: str = "val", sequences: Sequence[str] | None = None,
                 max_frames: int | None = None):
        self.root = Path(root)
        self.split = split
        self.max_frames = max_frames
        if max_frames is not None and max_frames < 1:
            raise BenchError(f"max_frames must be >= 1, got {max_frames}")
        if not self.root.is_dir():
            raise BenchError(f"{self.kind} root not found: {self.root}")
        self.sequences = self._select(self._read_split(), sequences)
        self._all_frames: dict[str, list[str]] = {}
        self._frames: dict[str, list[str]] = {}
        for seq in self.sequences:
            self._all_frames[seq] = self._list_frames(seq)
            self._frames[seq] = self._all_frames[seq][: self.max_frames]
            self._check_sequence(seq)

    # -- layout (subclasses) ---------------------------------------------------------------------
    @property
    def split_file(self) -> Path:
        raise NotImplementedError

    def image_dir(self, seq: str) -> Path:
        raise NotImplementedError

    def _check_sequence(self, seq: str) -> None:
        """Layout checks of one sequence, run once up front."""
        raise NotImplementedError

    def prompts(self, seq: str, later: bool = False) -> dict[int, tuple[int, np.ndarray]]:
        """object id -> (frame index, mask) it is added to the tracker with: frame 0 for every
        object, or with `later` each object's first frame where it is annotated non-empty
        (`vos_inference.py --track_object_appearing_later_in_video`)."""
        raise NotImplementedError

    def first_masks(self, seq: str) -> dict[int, np.ndarray]:
        """The objects present (non-empty) in the first frame, with their masks there."""
        return {obj: mask for obj, (t, mask) in self.prompts(seq).items() if t == 0 and mask.any()}

    def annotated_frames(self, seq: str) -> list[str]:
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------------
    def image_path(self, seq: str, frame: str) -> Path:
        return self.image_dir(seq) / f"{frame}.jpg"

    def _read_split(self) -> list[str]:
        if not self.split_file.is_file():
            raise BenchError(f"split file not found: {self.split_file}")
        names = [line.strip() for line in self.split_file.read_text().splitlines()]
        names = list(dict.fromkeys(n for n in names if n))
        if not names:
            raise BenchError(f"split file lists no sequences: {self.split_file}")
        return names

    def _where(self) -> str:
        """Where the sequence list comes from (for messages)."""
        return f"the split file {self.split_file}"

    def _select(self, listed: list[str], requested: Sequence[str] | None) -> list[str]:
        if requested is None:
            return listed
        requested = list(dict.fromkeys(requested))
        missing = [s for s in requested if s not in set(listed)]
        if missing:
            raise BenchError(f"sequence {missing[0]!r} is not in {self._where()}")
        if not requested:
            raise BenchError("an empty list of sequences was requested")
        return requested

    def _list_frames(self, seq: str) -> list[str]:
        """Every .jpg stem of the sequence folder, in sam2's order (by number when all are numbers)."""
        folder = self.image_dir(seq)
        if not folder.is_dir():
            raise BenchError(f"sequence folder not found: {folder} (listed in {self._where()})")
        frames = sorted(p.stem for p in folder.glob("*.jpg"))
        if all(f.isdigit() for f in frames):  # sam2's order: by number ("2" before "10")
            frames.sort(key=int)
        if not frames:
            raise BenchError(f"sequence folder has no .jpg frames: {folder}")
        return frames

    def _check_is_frame(self, seq: str, png: Path) -> None:
        if png.stem not in set(self._all_frames[seq]):
            raise BenchError(f"annotation {png} is not a frame of the video: no {png.stem}.jpg in "
                             f"{self.image_dir(seq)}")

    def check_size(self, seq: str, frame: str, path: Path, mask_hw: tuple[int, ...]) -> None:
        img_hw = image_size(self.image_path(seq, frame))
        if tuple(mask_hw) != img_hw:
            raise BenchError(f"annotation {path} is {mask_hw[1]}x{mask_hw[0]} but its image "
                             f"{self.image_path(seq, frame)} is {img_hw[1]}x{img_hw[0]}")

    def frames(self, seq: str) -> list[str]:
        """Frame names (.jpg stems, in sam2's order: by number when all are numbers), the first
        `max_frames` of them."""
        return list(self._frames[seq])

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

    def label_maps(self, seq: str, frames: Sequence[str]) -> list[np.ndarray] | None:
        """Per-frame GT label maps of `frames` when every one is annotated (calibration targets);
        None otherwise."""
        return None
