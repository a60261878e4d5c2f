"""J&F with the rules of SAM2's own evaluator (facebookresearch/sam2 `sav_dataset/sav_evaluator.py`
and `sav_dataset/utils/sav_benchmark.py`), the one SA-V val/test numbers are published with. It
reads two layouts, the same two the official script tells apart:

- per-object (SA-V): `GT/<video>/<obj>/<frame>.png`, one binary PNG per object and annotated
  frame (`evaluate_per_object`);
- palette (DAVIS-like, also MOSE / LVOS / YouTube-VOS): `GT/<video>/<frame>.png`, pixel value =
  object id (`evaluate_palette`).

Its rules, which differ from the DAVIS 2017 evaluator (`bench.metrics.davis`):

- Only frames with a GT PNG count; the first and last of them are skipped unless
  `skip_first_last=False` (`--do_not_skip_first_and_last_frame`). Per object in the per-object
  layout (each object folder's own frame list), per video in the palette layout.
- An object is scored from the first counted frame where its GT or its prediction is non-empty,
  and on every counted frame after it (a frame where both are empty then scores 1 for J and F);
  the frames before are not scored at all. In the palette layout an object whose GT is empty on
  every counted frame is not scored (left out of the means), whatever was predicted; in the
  per-object layout the official script stops on such an object (an assertion in
  `VideoEvaluator.consolidate`), and so do we, with an error naming its folder.
- Objects are every non-zero value of the GT (palette layout: 255 is an object, not void) or
  every object folder (per-object layout); a predicted id never in the GT is ignored. Masks of
  one frame may overlap in the per-object layout.
- J is the IoU (both empty: 1); F is the DAVIS boundary measure (bound_th 0.008 of the
  diagonal; one boundary empty: 0; both: 1). Per object the mean over its scored frames;
  J, F = means over all objects of all videos; J&F = (J + F) / 2.
- Per-object masks: any value > 0 is the object; a PNG with more than two values is refused.

Where we differ on purpose: a GT video without a prediction folder is an error (the official
`--strict`; by default it silently scores only the videos both folders have), a prediction
video the GT does not have is ignored, and bad input (missing files, mismatched sizes,
non-numeric object folders) is one BenchError line naming the file instead of an assertion.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench import BenchError
from bench.data.davis import read_label_png
from bench.data.sav import object_id, read_object_png
from bench.metrics.davis import db_eval_iou, f_measure, sequence_summary


@dataclass
class ObjectTrack:
    """One object's per-frame J and F under the SA-V rules (fed frame by frame in order)."""

    j: list[float] = field(default_factory=list)
    f: list[float] = field(default_factory=list)
    in_gt: bool = False
    first_frame: str | None = None

    def feed(self, frame: str, gt: np.ndarray, pred: np.ndarray) -> None:
        gt_any, pred_any = bool(gt.any()), bool(pred.any())
        self.in_gt = self.in_gt or gt_any
        if self.first_frame is None and not (gt_any or pred_any):
            return  # not yet seen in the GT or the prediction: this frame does not count
        if self.first_frame is None:
            self.first_frame = frame
        self.j.append(float(db_eval_iou(gt, pred)))
        self.f.append(f_measure(pred, gt))

    def row(self, video: str, obj: int) -> dict | None:
        """The item of this object (x100), or None when its GT was never seen."""
        if not self.in_gt:
            return None
        j, f = 100 * float(np.mean(self.j)), 100 * float(np.mean(self.f))
        return {"sequence": video, "object": obj, "J": j, "F": f, "J&F": (j + f) / 2,
                "first_frame": self.first_frame, "frames": len(self.j)}


def png_frames(folder: Path, keep: Collection[str] | None = None) -> list[str]:
    """Frame names of a folder's PNGs in the official order (sorted by name), those in `keep`."""
    names = sorted(p.stem for p in folder.glob("*.png"))
    return [n for n in names if keep is None or n in keep]


def counted(frames: list[str], skip_first_last: bool) -> list[str]:
    return frames[1:-1] if skip_first_last else frames


def read_pair(gt_path: Path, pred_path: Path, binary: bool) -> tuple[np.ndarray, np.ndarray]:
    if not pred_path.is_file():
        raise BenchError(f"missing prediction file: {pred_path} (the ground truth has {gt_path})")
    read = read_object_png if binary else read_label_png
    gt, pred = read(gt_path), read(pred_path)
    if gt.shape != pred.shape:
        raise BenchError(f"prediction {pred_path} is {pred.shape[1]}x{pred.shape[0]} but the ground truth "
                         f"{gt_path} is {gt.shape[1]}x{gt.shape[0]}")
    return gt, pred


def score_object_folder(gt_dir: Path, pred_dir: Path, frames: Collection[str] | None,
                        skip_first_last: bool) -> ObjectTrack:
    """One object of the per-object layout over its own annotated frames."""
    if not pred_dir.is_dir():
        raise BenchError(f"missing prediction object folder: {pred_dir} (the ground truth has {gt_dir})")
    track = ObjectTrack()
    for frame in counted(png_frames(gt_dir, frames), skip_first_last):
        gt, pred = read_pair(gt_dir / f"{frame}.png", pred_dir / f"{frame}.png", binary=True)
        track.feed(frame, gt, pred)
    return track


def score_palette_video(gt_dir: Path, pred_dir: Path, frames: Collection[str] | None,
                        skip_first_last: bool) -> dict[int, ObjectTrack]:
    """Every object of one palette-layout video: an object's track starts on the first counted
    frame where its id is in the GT or the prediction."""
    tracks: dict[int, ObjectTrack] = {}
    for frame in counted(png_frames(gt_dir, frames), skip_first_last):
        gt, pred = read_pair(gt_dir / f"{frame}.png", pred_dir / f"{frame}.png", binary=False)
        for obj in sorted((set(np.unique(gt).tolist()) | set(np.unique(pred).tolist())) - {0}):
            tracks.setdefault(int(obj), ObjectTrack())
        for obj, track in tracks.items():
            track.feed(frame, gt == obj, pred == obj)
    return tracks


def _videos(gt_root: Path, pred_root: Path, videos: Iterable[str] | None) -> list[str]:
    if not gt_root.is_dir():
        raise BenchError(f"ground-truth folder not found: {gt_root}")
    if not pred_root.is_dir():
        raise BenchError(f"prediction folder not found: {pred_root}")
    names = sorted(p.name for p in gt_root.iterdir() if p.is_dir()) if videos is None else list(videos)
    if not names:
        raise BenchError(f"no video folders in {gt_root}")
    for name in names:
        if not (gt_root / name).is_dir():
            raise BenchError(f"ground-truth video folder not found: {gt_root / name}")
        if not (pred_root / name).is_dir():
            raise BenchError(f"missing prediction video folder: {pred_root / name} (the ground truth has "
                             f"{gt_root / name})")
    return names


def _summary(rows: list[dict], sequences: list[dict], where: Path) -> dict:
    if not rows:
        raise BenchError(f"no object to score in {where}: every object's ground truth is empty on the counted frames")
    j = float(np.mean([r["J"] for r in rows]))
    f = float(np.mean([r["F"] for r in rows]))
    return {"J&F": (j + f) / 2, "J": j, "F": f, "per_object": rows, "per_sequence": sequences}


def evaluate_per_object(gt_root: str | Path, pred_root: str | Path, videos: Iterable[str] | None = None,
                        frames: Mapping[str, Collection[str]] | None = None, skip_first_last: bool = True) -> dict:
    """J&F (x100) of `pred_root/<video>/<obj>/<frame>.png` against the SA-V layout `gt_root`
    (`Annotations_6fps`). `videos`: default every folder of `gt_root`; `frames`: per video, the
    frame names that may count (default all)."""
    gt_root, pred_root = Path(gt_root), Path(pred_root)
    rows, sequences = [], []
    for video in _videos(gt_root, pred_root, videos):
        objects = sorted((p for p in (gt_root / video).iterdir() if p.is_dir()), key=object_id)
        if not objects:
            raise BenchError(f"video {gt_root / video} has no object folders")
        keep = None if frames is None else frames[video]
        found = []
        for d in objects:
            row = score_object_folder(d, pred_root / video / d.name, keep, skip_first_last).row(video, object_id(d))
            if row is None:
                skipped = "; the first and last annotated frames are not scored" if skip_first_last else ""
                raise BenchError(f"object folder {d}: the ground truth is empty on every scored frame (the SA-V "
                                 f"evaluator cannot score such an object{skipped})")
            found.append(row)
        rows.extend(found)
        sequences.append(sequence_summary(video, found))
    return _summary(rows, sequences, gt_root)


def evaluate_palette(gt_root: str | Path, pred_root: str | Path, videos: Iterable[str] | None = None,
                     frames: Mapping[str, Collection[str]] | None = None, skip_first_last: bool = True) -> dict:
    """J&F (x100) of palette PNGs `pred_root/<video>/<frame>.png` against `gt_root/<video>/<frame>.png`
    with the SA-V evaluator's rules for that layout (objects may appear after the first frame)."""
    gt_root, pred_root = Path(gt_root), Path(pred_root)
    rows, sequences = [], []
    for video in _videos(gt_root, pred_root, videos):
        keep = None if frames is None else frames[video]
        tracks = score_palette_video(gt_root / video, pred_root / video, keep, skip_first_last)
        found = [r for obj, t in sorted(tracks.items()) if (r := t.row(video, obj)) is not None]
        rows.extend(found)
        sequences.append(sequence_summary(video, found))
    return _summary(rows, sequences, gt_root)
