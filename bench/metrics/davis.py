"""DAVIS 2017 semi-supervised J&F, numerically the same as the official evaluator
(davisvideochallenge/davis2017-evaluation: `davis2017/metrics.py`, `utils.db_statistics`,
`evaluation.py`), so our numbers can sit next to published ones.

Behaviour of the official code that we keep on purpose:
- Objects are 1..N, N = the largest id of the first GT frame after 255 -> 0; GT ids > N are ignored.
- Void (255) is set to 0 in the GT *before* the per-object masks are built, and the official void
  mask is then taken from those boolean masks (`mask == 255`), so it is always empty: void pixels
  count as background, and a prediction over them is a false positive. `db_eval_iou` and
  `f_measure` still accept an explicit void mask, excluded as in `metrics.py`.
- The first and the last frame are not scored, and their prediction PNGs are not read.
- A predicted id > N (255 included) in a scored frame is an error (the official code exits).
- Decay uses the official 4 overlapping bins from `np.linspace`, not `np.array_split`.

Where we differ (no effect on DAVIS 2017 numbers):
- An object never predicted in any scored frame is scored as empty; the official code exits
  because the prediction has fewer objects than the GT.
- Decay bin edges are plain integers; the official code keeps them as uint8, which wraps for
  objects with 257 or more scored frames (DAVIS has at most 102; MOSE / SA-V can have more).
- Sparse annotations (SA-V): the frames scored are those with a GT PNG, less the first and last
  of them (SAM2's `sav_benchmark` rule); on DAVIS every frame has one, so nothing changes.
- `seg2bmap` has no resize arguments (the evaluator never uses them).
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import cv2
import numpy as np

from bench import BenchError
from bench.data.davis import VOID_LABEL, DavisSet, read_label_png


def db_eval_iou(annotation: np.ndarray, segmentation: np.ndarray, void: np.ndarray | None = None):
    """Region similarity J: IoU over the last two axes, void pixels left out; an empty union
    (both masks empty) scores 1, since predicting "absent" for an absent object is right."""
    if annotation.shape != segmentation.shape:
        raise ValueError(f"annotation {annotation.shape} and segmentation {segmentation.shape} differ in shape")
    gt, pred = annotation.astype(bool), segmentation.astype(bool)
    keep = np.ones_like(gt) if void is None else ~void.astype(bool)
    inter = np.sum(gt & pred & keep, axis=(-2, -1))
    union = np.sum((gt | pred) & keep, axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        j = inter / union
    if np.ndim(j) == 0:
        return 1.0 if union == 0 else float(j)
    j[union == 0] = 1.0
    return j


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """1-pixel boundary map (D. Martin's rule used by DAVIS): a pixel is on the boundary when it
    differs from its right, bottom or bottom-right neighbour (outside counts as 0); on the last
    row only the right neighbour counts, on the last column only the bottom one, and the
    bottom-right corner never counts. So the image border itself makes no boundary."""
    seg = np.asarray(seg).astype(bool)
    if seg.ndim != 2:
        raise ValueError(f"seg2bmap needs a 2-D mask, got shape {seg.shape}")
    right, down, diag = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    right[:, :-1] = seg[:, 1:]
    down[:-1, :] = seg[1:, :]
    diag[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ right) | (seg ^ down) | (seg ^ diag)
    b[-1, :] = seg[-1, :] ^ right[-1, :]
    b[:, -1] = seg[:, -1] ^ down[:, -1]
    b[-1, -1] = False
    return b


@functools.lru_cache(maxsize=16)
def _disk(radius: float) -> np.ndarray:
    from skimage.morphology import disk  # imported late: skimage is slow to import

    kernel = disk(radius).astype(np.uint8)
    kernel.setflags(write=False)
    return kernel


def f_measure(foreground_mask: np.ndarray, gt_mask: np.ndarray, void_pixels: np.ndarray | None = None,
              bound_th: float = 0.008) -> float:
    """Boundary F: boundary pixels match when within `bound_pix` of the other boundary (disk
    dilation); bound_th < 1 is a fraction of the image diagonal, >= 1 a pixel count."""
    if foreground_mask.ndim != 2 or foreground_mask.shape != gt_mask.shape:
        raise ValueError(f"f_measure needs two 2-D masks of one shape, got {foreground_mask.shape}, {gt_mask.shape}")
    fg, gt = foreground_mask.astype(bool), gt_mask.astype(bool)
    if void_pixels is not None:
        keep = ~void_pixels.astype(bool)
        fg, gt = fg & keep, gt & keep
    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(foreground_mask.shape))
    kernel = _disk(float(bound_pix))
    fg, gt = _crop_around(fg, gt, kernel.shape[0] + 1)
    if fg.size == 0:
        return 1.0  # both empty
    fg_b, gt_b = seg2bmap(fg), seg2bmap(gt)
    n_fg, n_gt = int(fg_b.sum()), int(gt_b.sum())
    if n_fg == 0 or n_gt == 0:
        return 1.0 if n_fg == n_gt else 0.0  # both empty: right; one empty: P or R is 0
    fg_dil = cv2.dilate(fg_b.astype(np.uint8), kernel).astype(bool)
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), kernel).astype(bool)
    precision = np.sum(fg_b & gt_dil) / n_fg
    recall = np.sum(gt_b & fg_dil) / n_gt
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


def _crop_around(a: np.ndarray, b: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the box around their pixels plus `margin` (> the dilation kernel) on
    each side, clipped to the image. Boundaries and dilations computed on the cut equal those
    of the whole image there: a boundary pixel lies at most one pixel above/left of a mask
    pixel, the rows and columns past the box are empty, and the image's own last row and
    column keep their rule when the cut reaches them. Empty masks give empty cuts."""
    union = a | b
    rows, cols = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
    if rows.size == 0:
        return a[:0, :0], b[:0, :0]
    y0, x0 = max(int(rows[0]) - margin, 0), max(int(cols[0]) - margin, 0)
    y1, x1 = int(rows[-1]) + margin + 1, int(cols[-1]) + margin + 1
    return a[y0:y1, x0:x1], b[y0:y1, x0:x1]


def db_statistics(values: np.ndarray) -> tuple[float, float, float]:
    """Per-object (M, R, D): nan-mean, fraction above 0.5, and decay = mean of the first minus
    mean of the last of 4 overlapping bins whose edges are round(linspace(1, n, 5)) - 1 and
    which include their right edge (the official rule; e.g. n=5 gives [0:2] vs [3:5])."""
    values = np.asarray(values, dtype=float)
    edges = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(int)
    bins = [values[edges[i]: edges[i + 1] + 1] for i in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        m = float(np.nanmean(values))
        r = float(np.nanmean(values > 0.5))
        d = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    return m, r, d


def scored_frames(dataset: DavisSet, seq: str) -> list[str]:
    """Annotated frames less the first and the last (those are not scored)."""
    frames = dataset.annotated_frames(seq)
    if len(frames) < 3:
        raise BenchError(f"sequence {seq} has {len(frames)} annotated frame(s) in {dataset.mask_dir(seq)}; "
                         "at least 3 are needed (the first and last are not scored)")
    return frames[1:-1]


def read_prediction(path: Path, shape: tuple[int, ...], n_objects: int, seq: str) -> np.ndarray:
    """A predicted label map, checked against the GT: same size, only ids 0..N."""
    if not path.is_file():
        raise BenchError(f"missing prediction file: {path}")
    pred = read_label_png(path)
    if pred.shape != shape:
        raise BenchError(f"prediction {path} is {pred.shape[1]}x{pred.shape[0]} but the ground truth is "
                         f"{shape[1]}x{shape[0]}")
    if pred.size and int(pred.max()) > n_objects:
        raise BenchError(f"prediction {path} has object id {int(pred.max())} but sequence {seq} has "
                         f"objects 1..{n_objects} in its first ground-truth frame")
    return pred


def score_sequence(dataset: DavisSet, seq: str, pred_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame J and F, each of shape (objects, scored frames)."""
    ids = dataset.object_ids(seq)
    frames = scored_frames(dataset, seq)
    j = np.zeros((len(ids), len(frames)))
    f = np.zeros((len(ids), len(frames)))
    for t, frame in enumerate(frames):
        gt = dataset.read_mask(seq, frame)
        gt = np.where(gt == VOID_LABEL, 0, gt)
        pred = read_prediction(pred_dir / seq / f"{frame}.png", gt.shape, len(ids), seq)
        for k, obj in enumerate(ids):
            gt_k, pred_k = gt == obj, pred == obj
            j[k, t] = db_eval_iou(gt_k, pred_k)
            f[k, t] = f_measure(pred_k, gt_k)
    return j, f


def evaluate_vos(dataset: DavisSet, pred_dir: Path) -> dict:
    """Dataset J&F (x100) from `pred_dir/<seq>/<frame>.png`. Means are over all objects of all
    sequences (object weighted), as in the official evaluator and papers."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise BenchError(f"prediction folder not found: {pred_dir}")
    per_object, per_sequence, stats = [], [], []
    for seq in dataset.sequences:
        j, f = score_sequence(dataset, seq, pred_dir)
        rows = []
        for k, obj in enumerate(dataset.object_ids(seq)):
            (jm, jr, jd), (fm, fr, fd) = db_statistics(j[k]), db_statistics(f[k])
            stats.append((jm, jr, jd, fm, fr, fd))
            rows.append({"sequence": seq, "object": obj, "J": 100 * jm, "F": 100 * fm, "J&F": 50 * (jm + fm)})
        per_object.extend(rows)
        per_sequence.append(sequence_summary(seq, rows))
    if not stats:
        raise BenchError(f"no objects to score: every first ground-truth frame is empty ({dataset.split_file})")
    jm, jr, jd, fm, fr, fd = (100 * float(v) for v in np.mean(np.array(stats), axis=0))
    return {"J&F": (jm + fm) / 2, "J": jm, "F": fm, "J_recall": jr, "J_decay": jd, "F_recall": fr,
            "F_decay": fd, "per_object": per_object, "per_sequence": per_sequence}


def sequence_summary(seq: str, rows: list[dict]) -> dict:
    """Mean of a sequence's objects (for reading only; the dataset score does not use it).
    A sequence with no object in its first frame has None scores."""
    if not rows:
        return {"sequence": seq, "J": None, "F": None, "J&F": None, "objects": 0}
    j = float(np.mean([r["J"] for r in rows]))
    f = float(np.mean([r["F"] for r in rows]))
    return {"sequence": seq, "J": j, "F": f, "J&F": (j + f) / 2, "objects": len(rows)}
