"""SA-V val / test layout (facebookresearch/sam2 `sav_dataset/README.md`), read as it ships:

    ROOT/JPEGImages_24fps/<video>/<frame>.jpg            every frame (24 fps)
    ROOT/Annotations_6fps/<video>/<obj>/<frame>.png      one binary PNG per object and annotated
                                                         frame (every 4th: 6 fps); <obj> = "000", ...
    ROOT/sav_<split>.txt                                 one video name a line (sav_val.txt, sav_test.txt)

Inference follows `tools/vos_inference.py --per_obj_png_file`: every 24 fps frame is predicted,
each object folder's frame-0 mask is added on frame 0 (even an empty one, as the script does),
masks may overlap, and the predictions go to `<video>/<obj>/<frame>.png` for every frame.
Scoring: `bench.metrics.sav.evaluate_per_object`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench import BenchError
from bench.data.davis import read_label_png
from bench.data.video import VideoSet, image_size


def object_id(folder: Path) -> int:
    """An object folder's id: its name as a number (SA-V: "000", "001", ...)."""
    if not folder.name.isdigit():
        raise BenchError(f"object folder {folder}: the name must be a number (an object id)")
    return int(folder.name)


def read_object_png(path: Path) -> np.ndarray:
    """A per-object mask: values > 0 are the object; more than two values is an error (the
    official evaluator's check)."""
    mask = read_label_png(path)
    if np.unique(mask).size > 2:
        raise BenchError(f"{path}: a per-object mask has at most two values (SA-V: one object per PNG), "
                         f"found {np.unique(mask).size}")
    return mask > 0


class SavSet(VideoSet):
    """Videos of one SA-V split, each with its object folders (ids from the folder names)."""

    layout = "sav"
    kind = "SA-V"
    per_object_png = True

    def __init__(self, root: str | Path, split: str = "val", sequences: Sequence[str] | None = None,
                 max_frames: int | None = None):
        self._objects: dict[str, dict[int, str]] = {}  # video -> object id -> folder name
        super().__init__(root, split, sequences, max_frames)

    @property
    def split_file(self) -> Path:
        return self.root / f"sav_{self.split}.txt"

    @property
    def annotation_root(self) -> Path:
        return self.root / "Annotations_6fps"

    def image_dir(self, seq: str) -> Path:
        return self.root / "JPEGImages_24fps" / seq

    def mask_dir(self, seq: str) -> Path:
        return self.annotation_root / seq

    def object_dir(self, seq: str, obj: int) -> Path:
        return self.mask_dir(seq) / self._objects[seq][obj]

    def _check_sequence(self, seq: str) -> None:
        """Object folders named by numbers, each PNG named after a frame of the video, the
        first annotation of each object of its frame's size."""
        folder = self.mask_dir(seq)
        if not folder.is_dir():
            raise BenchError(f"annotation folder not found: {folder} (video {seq} of {self.split_file})")
        objects = {}
        for d in sorted(p for p in folder.iterdir() if p.is_dir()):
            if object_id(d) in objects:
                raise BenchError(f"object folder {d}: object {object_id(d)} has two folders in {folder}")
            objects[object_id(d)] = d.name
            pngs = sorted(d.glob("*.png"))
            for png in pngs:
                self._check_is_frame(seq, png)
            if pngs:
                self.check_size(seq, pngs[0].stem, pngs[0], image_size(pngs[0]))
        if not objects:
            raise BenchError(f"no object folders in {folder}")
        self._objects[seq] = dict(sorted(objects.items()))

    # -- access ----------------------------------------------------------------------------------
    def objects(self, seq: str) -> dict[int, str]:
        """object id -> its folder name."""
        return dict(self._objects[seq])

    def object_frames(self, seq: str, obj: int) -> list[str]:
        """The selected frames that have a PNG of the object, in frame order."""
        folder = self.object_dir(seq, obj)
        return [f for f in self._frames[seq] if (folder / f"{f}.png").is_file()]

    def annotated_frames(self, seq: str) -> list[str]:
        """Frames with a PNG of at least one object."""
        found = {f for obj in self._objects[seq] for f in self.object_frames(seq, obj)}
        return [f for f in self._frames[seq] if f in found]

    def read_object(self, seq: str, obj: int, frame: str) -> np.ndarray:
        """One object's mask on one frame: values > 0 (at most two values in the PNG)."""
        path = self.object_dir(seq, obj) / f"{frame}.png"
        if not path.is_file():
            raise BenchError(f"annotation not found: {path}")
        mask = read_object_png(path)
        self.check_size(seq, frame, path, mask.shape)
        return mask

    def prompts(self, seq: str, later: bool = False) -> dict[int, tuple[int, np.ndarray]]:
        """Every object's frame-0 mask, even an empty one (`vos_inference.py`; a missing frame-0
        PNG is an error), or with `later` its first non-empty annotated mask (objects never
        annotated non-empty are not tracked)."""
        first = self._frames[seq][0]
        out = {}
        for obj in self._objects[seq]:
            if not later:
                if not (self.object_dir(seq, obj) / f"{first}.png").is_file():
                    raise BenchError(f"annotation of the first frame not found: {self.object_dir(seq, obj)}/"
                                     f"{first}.png (for objects that appear later: --track-later-objects)")
                out[obj] = (0, self.read_object(seq, obj, first))
                continue
            index = {f: t for t, f in enumerate(self._frames[seq])}
            for frame in self.object_frames(seq, obj):
                mask = self.read_object(seq, obj, frame)
                if mask.any():
                    out[obj] = (index[frame], mask)
                    break
        return out
