"""DAVIS J&F: metric values against hand-worked cases and a loop / distance-transform reference,
the dataset reader's checks, and `python -m bench.score vos` end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from bench import BenchError
from bench.data.davis import DAVIS_PALETTE, DavisSet, read_label_png, write_palette_png
from bench.metrics.davis import db_eval_iou, db_statistics, evaluate_vos, f_measure, seg2bmap
from bench.score import main

H, W = 48, 64  # bound_pix = ceil(0.008 * 80) = 1


# -- independent references ------------------------------------------------------------------
def loop_bmap(seg: np.ndarray) -> np.ndarray:
    """seg2bmap written pixel by pixel: compare with the right / bottom / bottom-right neighbours
    (0 outside); last row: right only; last column: bottom only; never the last pixel."""
    seg = seg.astype(bool)
    h, w = seg.shape

    def at(y: int, x: int) -> bool:
        return bool(seg[y, x]) if y < h and x < w else False

    out = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            if y == h - 1 and x == w - 1:
                continue
            if y == h - 1:
                neighbours = [at(y, x + 1)]
            elif x == w - 1:
                neighbours = [at(y + 1, x)]
            else:
                neighbours = [at(y, x + 1), at(y + 1, x), at(y + 1, x + 1)]
            out[y, x] = any(n != seg[y, x] for n in neighbours)
    return out


def ref_f(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None, th: float = 0.008) -> float:
    """Boundary F from Euclidean distances between boundary pixels (a disk of integer radius r holds
    exactly the offsets with dx^2 + dy^2 <= r^2)."""
    keep = np.ones(gt.shape, bool) if void is None else ~void
    r = th if th >= 1 else math.ceil(th * math.hypot(*gt.shape))
    bp, bg = loop_bmap(pred & keep), loop_bmap(gt & keep)
    if not bp.any() and not bg.any():
        return 1.0
    if not bp.any() or not bg.any():
        return 0.0
    precision = np.mean(ndimage.distance_transform_edt(~bg)[bp] <= r + 1e-9)
    recall = np.mean(ndimage.distance_transform_edt(~bp)[bg] <= r + 1e-9)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def box(y0: int, y1: int, x0: int, x1: int, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    """Rows y0..y1-1, columns x0..x1-1."""
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def blobs(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    m = np.zeros(shape, bool)
    for _ in range(rng.integers(1, 4)):  # centres may lie outside: blobs cut by the border
        cy, cx, r = rng.uniform(-5, shape[0] + 5), rng.uniform(-5, shape[1] + 5), rng.uniform(3, 18)
        m |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    return m


# -- J -------------------------------------------------------------------------------------------
def test_iou_hand_cases():
    empty = np.zeros((H, W), bool)
    sq = box(10, 20, 10, 20)
    assert db_eval_iou(empty, empty) == 1.0
    assert db_eval_iou(sq, empty) == 0.0 and db_eval_iou(empty, sq) == 0.0
    assert db_eval_iou(sq, box(10, 20, 10, 15)) == pytest.approx(0.5, abs=1e-12)
    assert db_eval_iou(sq, box(15, 25, 10, 20)) == pytest.approx(50 / 150, abs=1e-12)
    void = box(10, 14, 25, 30)  # 20 pixels, predicted as object
    assert db_eval_iou(sq, sq | void) == pytest.approx(100 / 120, abs=1e-12)
    assert db_eval_iou(sq, sq | void, void) == 1.0
    assert db_eval_iou(empty, void, void) == 1.0  # everything left is void: empty union


def test_iou_stacked_frames():
    gt = np.stack([box(10, 20, 10, 20), np.zeros((H, W), bool)])
    pred = np.stack([box(10, 20, 10, 15), np.zeros((H, W), bool)])
    assert np.allclose(db_eval_iou(gt, pred), [0.5, 1.0], atol=1e-12)


# -- boundaries and F -----------------------------------------------------------------------------
def test_seg2bmap_square_and_borders():
    b = seg2bmap(box(10, 20, 10, 20))
    expect = np.zeros((H, W), bool)
    expect[9, 9:20] = expect[9:20, 9] = True  # outside, above and left of the square
    expect[19, 10:20] = expect[10:20, 19] = True  # inside, its last row and last column
    assert (b == expect).all() and b.sum() == 40
    # touching the top-left corner: nothing outside above or left of it
    b = seg2bmap(box(0, 10, 0, 10))
    assert set(zip(*np.nonzero(b))) == {(9, x) for x in range(10)} | {(y, 9) for y in range(10)}
    # the right half: only the column left of it; the image border makes no boundary
    assert set(zip(*np.nonzero(seg2bmap(box(0, H, 32, W))))) == {(y, 31) for y in range(H)}
    assert not seg2bmap(np.ones((H, W), bool)).any()


@pytest.mark.parametrize("seed", range(6))
def test_seg2bmap_matches_loops(seed):
    m = blobs(np.random.default_rng(seed), (23, 31))
    assert (seg2bmap(m) == loop_bmap(m)).all()


def test_f_hand_cases():
    empty, full = np.zeros((H, W), bool), np.ones((H, W), bool)
    sq = box(10, 20, 10, 20)
    assert f_measure(empty, empty) == 1.0
    assert f_measure(sq, empty) == 0.0 and f_measure(empty, sq) == 0.0  # exactly one boundary empty
    assert f_measure(full, full) == 1.0  # no boundary in either: the border is not one
    assert f_measure(sq, full) == 0.0
    assert f_measure(box(30, 40, 40, 50), sq) == 0.0  # far apart: P = R = 0
    assert f_measure(box(10, 20, 11, 21), sq) == 1.0  # 1 pixel off, tolerance 1 pixel
    left = box(0, H, 0, 32)  # touches three borders: its boundary is column 31 only
    assert f_measure(box(0, H, 0, 33), left) == 1.0
    assert f_measure(box(0, H, 0, 30), left) == 0.0  # column 29: 2 pixels away
    assert f_measure(box(0, H, 0, 30), left, bound_th=2) == 1.0


def test_f_partial_match_by_hand():
    # GT boundary: the 40 pixels of test_seg2bmap_square_and_borders. The prediction is the
    # square's left half (rows 10..19, cols 10..14): its boundary is row 9 cols 9..14 (6), col 9
    # rows 10..19 (10), row 19 cols 10..14 (5), col 14 rows 10..18 (9) = 30 pixels. Within 1 px
    # (a 4-neighbour) of the GT boundary: all but col 14 rows 11..17 (7) -> P = 23/30. GT pixels
    # within 1 px of the prediction's boundary: row 9 cols 9..15 (7), col 9 rows 10..19 (10),
    # row 19 cols 10..15 (6) -> R = 23/40.
    p, r = 23 / 30, 23 / 40
    got = f_measure(box(10, 20, 10, 15), box(10, 20, 10, 20))
    assert got == pytest.approx(2 * p * r / (p + r), abs=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_f_matches_distance_reference(seed):
    rng = np.random.default_rng(100 + seed)
    shape = [(H, W), (60, 100), (17, 90), (120, 40), (150, 220)][seed % 5]  # the last: small objects, cut inside
    gt, pred = blobs(rng, shape), blobs(rng, shape)
    if seed % 2:
        pred = gt.copy()
        pred[rng.integers(0, shape[0]):, : rng.integers(0, shape[1])] ^= True
    void = blobs(rng, shape) if seed % 3 == 0 else None
    for th in (0.008, 0.03, 3):
        assert f_measure(pred, gt, void, th) == pytest.approx(ref_f(pred, gt, void, th), abs=1e-6)


def test_void_is_cut_out_of_both_boundaries():
    sq, void = box(10, 20, 10, 20), box(10, 14, 25, 30)
    assert f_measure(sq | void, sq) < 1.0
    assert f_measure(sq | void, sq, void) == 1.0


# -- per-object statistics -----------------------------------------------------------------------
def test_statistics_by_hand():
    v = np.array([1.0, 5 / 6, 0.6, 0.4, 0.3])
    m, r, d = db_statistics(v)
    assert m == pytest.approx(v.sum() / 5, abs=1e-12)
    assert r == pytest.approx(3 / 5, abs=1e-12)  # 0.5 itself would not count
    # 5 frames: bin edges round(linspace(1, 5, 5)) - 1 = 0,1,2,3,4; bins [0:2], [1:3], [2:4], [3:5]
    assert d == pytest.approx((1.0 + 5 / 6) / 2 - (0.4 + 0.3) / 2, abs=1e-12)
    # 8 frames: edges 0,2,4,5,7 -> first bin v[0:3], last v[5:8] (np.array_split would give v[0:2], v[6:8])
    v = np.arange(8, dtype=float)[::-1] / 8
    assert db_statistics(v)[2] == pytest.approx(v[0:3].mean() - v[5:8].mean(), abs=1e-12)
    assert db_statistics(np.array([0.5, 1.0]))[1:] == pytest.approx((0.5, -0.5), abs=1e-12)
    assert db_statistics(np.array([0.7]))[1:] == pytest.approx((1.0, 0.0), abs=1e-12)


# -- a small DAVIS-layout folder -----------------------------------------------------------------
ALPHA_J1 = [1.0, 100 / 120, 0.6, 0.4, 0.3]  # object 1 of alpha, scored frames 1..5
ALPHA_J2 = [1.0, 1.0, 1.0, 1.0, 0.0]  # object 2: GT gone from frame 4 on, predicted again in 5
BETA_J1 = [0.5, 1.0]


def alpha_frame(t: int) -> tuple[np.ndarray, np.ndarray]:
    """GT and prediction of frame t of 'alpha' (7 frames, objects 1 and 2, void in frame 2)."""
    gt, pred = np.zeros((H, W), np.uint8), np.zeros((H, W), np.uint8)
    gt[box(10, 20, 10, 20)] = 1
    if t <= 3:
        gt[box(30, 40, 40, 50)] = 2
    if t == 2:
        gt[box(10, 14, 25, 30)] = 255
    cols = {1: 20, 2: 20, 3: 16, 4: 14, 5: 13}  # object 1 predicted on cols 10..cols-1
    if t in cols:
        pred[box(10, 20, 10, cols[t])] = 1
    if t == 2:
        pred[box(10, 14, 25, 30)] = 1  # the void region, predicted as object 1
    if t in (1, 2, 3, 5):
        pred[box(30, 40, 40, 50)] = 2
    if t == 0:
        pred[0, 0] = 9  # the first and last frames are not read: not an error
    return gt, pred


def beta_frame(t: int) -> tuple[np.ndarray, np.ndarray]:
    """GT and prediction of frame t of 'beta' (4 frames, one object; a second one appears later)."""
    gt, pred = np.zeros((H, W), np.uint8), np.zeros((H, W), np.uint8)
    gt[box(5, 15, 30, 50)] = 1
    if t >= 2:
        gt[box(30, 40, 5, 15)] = 2  # not in the first frame: not an object
    pred[box(5, 15, 30, 40 if t == 1 else 50)] = 1
    return gt, pred


def make_set(root: Path) -> tuple[Path, Path]:
    pred = root / "pred"
    for seq, n, frame in (("alpha", 7, alpha_frame), ("beta", 4, beta_frame)):
        (root / "JPEGImages" / "480p" / seq).mkdir(parents=True)
        for t in range(n):
            gt, p = frame(t)
            Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(root / "JPEGImages" / "480p" / seq / f"{t:05d}.jpg")
            write_palette_png(root / "Annotations" / "480p" / seq / f"{t:05d}.png", gt)
            write_palette_png(pred / seq / f"{t:05d}.png", p)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("alpha\nbeta\n")
    (root / "ImageSets" / "2017" / "train.txt").write_text("beta\n")
    return root, pred


@pytest.fixture
def davis(tmp_path) -> tuple[Path, Path]:
    return make_set(tmp_path / "davis")


def frame_f(frame, t: int, obj: int) -> float:
    gt, pred = frame(t)
    gt = np.where(gt == 255, 0, gt)  # the official evaluator's void handling: background
    return ref_f(pred == obj, gt == obj)


def expected_scores() -> dict:
    """Per-object J lists are worked out by hand above; F comes from the distance reference."""
    objects = [("alpha", 1, ALPHA_J1, [frame_f(alpha_frame, t, 1) for t in range(1, 6)]),
               ("alpha", 2, ALPHA_J2, [frame_f(alpha_frame, t, 2) for t in range(1, 6)]),
               ("beta", 1, BETA_J1, [frame_f(beta_frame, t, 1) for t in (1, 2)])]
    assert objects[1][3][3:] == [1.0, 0.0]  # object 2: absent in both, then a false positive
    jm = [np.mean(j) for *_, j, _ in objects]
    fm = [np.mean(f) for *_, f in objects]
    recall = [lambda v: np.mean(np.array(v) > 0.5)] * 3
    decay = [lambda v: (v[0] + v[1]) / 2 - (v[3] + v[4]) / 2] * 2 + [lambda v: v[0] - v[1]]
    return {
        "J": 100 * np.mean(jm), "F": 100 * np.mean(fm), "J&F": 50 * (np.mean(jm) + np.mean(fm)),
        "J_recall": 100 * np.mean([rc(o[2]) for rc, o in zip(recall, objects)]),
        "F_recall": 100 * np.mean([rc(o[3]) for rc, o in zip(recall, objects)]),
        "J_decay": 100 * np.mean([dc(o[2]) for dc, o in zip(decay, objects)]),
        "F_decay": 100 * np.mean([dc(o[3]) for dc, o in zip(decay, objects)]),
        "per_object": [(s, o, 100 * j, 100 * f) for (s, o, *_), j, f in zip(objects, jm, fm)],
    }


def test_dataset_scores_by_hand(davis):
    scores = evaluate_vos(DavisSet(davis[0]), davis[1])
    expect = expected_scores()
    for key in ("J&F", "J", "F", "J_recall", "J_decay", "F_recall", "F_decay"):
        assert scores[key] == pytest.approx(expect[key], abs=1e-6), key
    assert scores["J_recall"] == pytest.approx(100 * (3 / 5 + 4 / 5 + 1 / 2) / 3, abs=1e-6)
    assert scores["J_decay"] == pytest.approx(100 * ((1 + 5 / 6) / 2 - 0.35 + 0.5 - 0.5) / 3, abs=1e-6)
    got = [(r["sequence"], r["object"], r["J"], r["F"]) for r in scores["per_object"]]
    assert [g[:2] for g in got] == [e[:2] for e in expect["per_object"]]
    assert np.allclose([g[2:] for g in got], [e[2:] for e in expect["per_object"]], atol=1e-6)
    for row in scores["per_object"]:
        assert row["J&F"] == pytest.approx((row["J"] + row["F"]) / 2, abs=1e-9)


def test_means_are_object_weighted(davis):
    scores = evaluate_vos(DavisSet(davis[0]), davis[1])
    j = [np.mean(ALPHA_J1), np.mean(ALPHA_J2), np.mean(BETA_J1)]
    assert scores["J"] == pytest.approx(100 * np.mean(j), abs=1e-6)
    assert abs(scores["J"] - 100 * np.mean([(j[0] + j[1]) / 2, j[2]])) > 0.5  # not per sequence
    seqs = {r["sequence"]: r for r in scores["per_sequence"]}
    assert seqs["alpha"]["objects"] == 2 and seqs["beta"]["objects"] == 1
    assert seqs["alpha"]["J"] == pytest.approx(100 * (j[0] + j[1]) / 2, abs=1e-6)
    assert seqs["beta"]["J&F"] == pytest.approx((seqs["beta"]["J"] + seqs["beta"]["F"]) / 2, abs=1e-9)


def test_first_and_last_frames_are_not_scored(davis):
    root, pred = davis
    before = evaluate_vos(DavisSet(root), pred)
    for t in (0, 6):  # perfect predictions there change nothing; missing ones are not read
        write_palette_png(pred / "alpha" / f"{t:05d}.png", alpha_frame(t)[0] % 255)
    assert evaluate_vos(DavisSet(root), pred)["J&F"] == pytest.approx(before["J&F"], abs=1e-9)
    (pred / "alpha" / "00000.png").unlink()
    (pred / "alpha" / "00006.png").unlink()
    assert evaluate_vos(DavisSet(root), pred)["J&F"] == pytest.approx(before["J&F"], abs=1e-9)


def test_max_frames_and_sequences(davis):
    ds = DavisSet(davis[0], sequences=["alpha"], max_frames=4)
    assert ds.sequences == ["alpha"] and ds.frames("alpha") == ["00000", "00001", "00002", "00003"]
    assert ds.object_ids("alpha") == [1, 2]
    scores = evaluate_vos(ds, davis[1])  # frames 1 and 2 scored, frame 3 is now the last
    assert scores["per_object"][0]["J"] == pytest.approx(100 * (1 + 100 / 120) / 2, abs=1e-6)
    assert DavisSet(davis[0], split="train").sequences == ["beta"]


def test_palette_round_trip(tmp_path):
    assert len(DAVIS_PALETTE) == 768 and all(0 <= c <= 255 for c in DAVIS_PALETTE)
    assert DAVIS_PALETTE[:15] == (0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128)
    assert DAVIS_PALETTE[-3:] == (224, 224, 192)
    labels = np.arange(H * W).reshape(H, W).astype(np.uint8)
    write_palette_png(tmp_path / "a" / "x.png", labels)
    with Image.open(tmp_path / "a" / "x.png") as im:
        assert im.mode == "P" and tuple(im.getpalette()[:768]) == DAVIS_PALETTE
    assert (read_label_png(tmp_path / "a" / "x.png") == labels).all()


# -- command line ----------------------------------------------------------------------------------
def test_cli_end_to_end(davis):
    root, pred = davis
    env = {**os.environ, "BENCH_DAVIS": str(root)}
    out = subprocess.run([sys.executable, "-m", "bench.score", "vos", "--pred", str(pred)],
                         capture_output=True, text=True, env=env, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr
    scores = json.loads(out.stdout)
    assert set(scores) == {"J&F", "J", "F", "J_recall", "J_decay", "F_recall", "F_decay", "per_object",
                           "per_sequence"}
    assert scores["J&F"] == pytest.approx(expected_scores()["J&F"], abs=1e-6)
    assert out.stdout.startswith("{\n  ")  # indented


def test_cli_options_in_process(davis, capsys):
    root, pred = davis
    assert main(["vos", "--davis-root", str(root), "--pred", str(pred), "--sequences", "beta",
                 "--max-frames", "3"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert [r["sequence"] for r in scores["per_sequence"]] == ["beta"]
    assert scores["J"] == pytest.approx(50.0, abs=1e-6)  # only frame 1 scored
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "vos" in capsys.readouterr().out


def run_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.err
    return lines[0]


def save_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


PRED_ERRORS = {
    "missing": ("alpha/00003.png", lambda p: p.unlink()),
    "size": ("alpha/00002.png", lambda p: write_palette_png(p, np.zeros((H - 8, W), np.uint8))),
    "id above N": ("beta/00001.png", lambda p: write_palette_png(p, np.full((H, W), 2, np.uint8))),
    "id 255": ("alpha/00004.png", lambda p: write_palette_png(p, np.full((H, W), 255, np.uint8))),
    "not a png": ("alpha/00001.png", lambda p: p.write_bytes(b"not a png at all")),
    "rgb png": ("alpha/00005.png", lambda p: save_png(p, np.zeros((H, W, 3), np.uint8))),
}


@pytest.mark.parametrize("case", PRED_ERRORS)
def test_prediction_errors(davis, capsys, case):
    root, pred = davis
    name, spoil = PRED_ERRORS[case]
    spoil(pred / name)
    line = run_error(["vos", "--davis-root", str(root), "--pred", str(pred)], capsys)
    assert str(pred / name) in line


def spoil_dataset(root: Path, case: str) -> tuple[list[str], Path]:
    """Breaks the folder; returns extra CLI arguments and the path the message must name."""
    ann, jpg, split = root / "Annotations" / "480p", root / "JPEGImages" / "480p", root / "ImageSets" / "2017"
    if case == "no root":
        return ["--davis-root", str(root / "nope")], root / "nope"
    if case == "no split file":
        return ["--split", "test"], split / "test.txt"
    if case in ("no sequence folder", "no frames"):
        (split / "val.txt").write_text("alpha\nbeta\ngamma\n")
        if case == "no frames":
            (jpg / "gamma").mkdir()
        return [], jpg / "gamma"
    if case == "no first annotation":
        (ann / "beta" / "00000.png").unlink()
        return [], ann / "beta" / "00000.png"
    if case in ("first annotation size", "later annotation size"):
        t = "00000" if case.startswith("first") else "00002"
        write_palette_png(ann / "beta" / f"{t}.png", np.zeros((H, W + 2), np.uint8))
        return [], ann / "beta" / f"{t}.png"
    if case == "not in split":
        return ["--sequences", "alpha,zeta"], split / "val.txt"
    if case == "too few frames":
        return ["--max-frames", "2"], ann / "alpha"
    raise AssertionError(case)


DATA_ERRORS = ["no root", "no split file", "no sequence folder", "no frames", "no first annotation",
               "first annotation size", "later annotation size", "not in split", "too few frames"]


@pytest.mark.parametrize("case", DATA_ERRORS)
def test_dataset_errors(davis, capsys, case):
    root, pred = davis
    extra, named = spoil_dataset(root, case)
    line = run_error(["vos", "--davis-root", str(root), "--pred", str(pred), *extra], capsys)
    assert str(named) in line
    if case == "not in split":
        assert "zeta" in line


def test_missing_root_argument(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("BENCH_DAVIS", raising=False)
    assert "BENCH_DAVIS" in run_error(["vos", "--pred", str(tmp_path)], capsys)


def test_read_label_png_errors(tmp_path):
    save_png(tmp_path / "rgba.png", np.zeros((4, 5, 4), np.uint8))
    with pytest.raises(BenchError, match="mode RGBA") as e:
        read_label_png(tmp_path / "rgba.png")
    assert str(tmp_path / "rgba.png") in str(e.value)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    with pytest.raises(BenchError, match="cannot read label PNG") as e:
        read_label_png(tmp_path / "bad.png")
    assert "\n" not in str(e.value) and str(tmp_path / "bad.png") in str(e.value)
    save_png(tmp_path / "gray.png", np.full((4, 5), 3, np.uint8))  # 8-bit grayscale: ids as is
    assert (read_label_png(tmp_path / "gray.png") == 3).all()


def test_frames_in_numeric_order_and_stale_links_removed(tmp_path):
    root, _ = make_set(tmp_path / "d")
    seq, ann = root / "JPEGImages" / "480p" / "beta", root / "Annotations" / "480p" / "beta"
    for t in range(4):  # unpadded names: "10" sorts before "2" as text, after it as a number
        os.rename(seq / f"{t:05d}.jpg", seq / f"{[0, 2, 10, 11][t]}.jpg")
        os.rename(ann / f"{t:05d}.png", ann / f"{[0, 2, 10, 11][t]}.png")
    ds = DavisSet(root, split="train")
    assert ds.frames("beta") == ["0", "2", "10", "11"]
    links = tmp_path / "links"
    ds.link_frames("beta", links)
    ds.link_frames("beta", links, ["0", "2"])  # a reused folder keeps only the selection
    assert sorted(p.name for p in links.iterdir()) == ["0.jpg", "2.jpg"]
    assert (links / "2.jpg").resolve() == (seq / "2.jpg").resolve()


class FakePredictor:
    """The VOS calls of SAM2VideoPredictor: records the prompts; every tracked object covers the
    whole frame (positive logits)."""

    def __init__(self, frames: int, shape: tuple[int, int]):
        self.frames, self.shape, self.prompted, self.inits = frames, shape, [], 0

    def init_state(self, folder):
        self.inits += 1
        return {}

    def add_new_mask(self, state, frame_idx, obj_id, mask):
        self.prompted.append(obj_id)

    def propagate_in_video(self, state):
        import torch

        for t in range(self.frames):
            yield t, list(self.prompted), torch.ones(len(self.prompted), 1, *self.shape)

    def reset_state(self, state):
        pass


@pytest.mark.parametrize("first_ids, prompted", [((2,), [2]), ((), [])])
def test_vos_prompts_only_the_objects_of_the_first_frame(tmp_path, first_ids, prompted):
    from bench.tasks.vos import predict_sequence

    root, _ = make_set(tmp_path / "d")
    first = np.zeros((H, W), np.uint8)
    for i in first_ids:
        first[box(30, 40, 40, 50)] = i
    write_palette_png(root / "Annotations" / "480p" / "alpha" / "00000.png", first)
    ds = DavisSet(root, sequences=["alpha"])
    assert ds.object_ids("alpha") == list(range(1, max(first_ids, default=0) + 1))
    fake = FakePredictor(7, (H, W))
    n = predict_sequence(fake, ds, "alpha", tmp_path, tmp_path / "pred", write_palette_png)
    assert n == 7 and fake.prompted == prompted and fake.inits == (1 if prompted else 0)
    for t in range(7):  # object 1, absent from frame 0, is never predicted
        assert np.array_equal(read_label_png(tmp_path / "pred" / f"{t:05d}.png"),
                              np.full((H, W), prompted[0] if prompted else 0, np.uint8))
