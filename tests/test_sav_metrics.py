"""SA-V evaluator rules (`bench.metrics.sav`): equal to SAM2's official `sav_evaluator.py` on
stress cases (numbers below), hand-worked cases, the two layouts agreeing, and
`python -m bench.score vos --format sav|mose` end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import BenchError
from bench.data.davis import write_palette_png
from bench.metrics.sav import evaluate_palette, evaluate_per_object
from bench.score import main


# -- the stress cases ----------------------------------------------------------------------------
def disk_mask(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def blob(shape: tuple[int, int], seed: int, fill: float = 0.35) -> np.ndarray:
    """An irregular mask with holes and ragged edges (smoothed noise above a threshold)."""
    from scipy import ndimage

    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 2.0)
    return noise > np.quantile(noise, 1 - fill)


def save_png(path: Path, mask: np.ndarray, mode: str) -> None:
    """A mask as a PNG: "01" palette 0/1 (what vos_inference.py writes), "255" 8-bit 0/255."""
    if mode == "01":
        write_palette_png(path, mask.astype(np.uint8))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def sav_v1(t: int) -> dict[str, tuple[np.ndarray | None, np.ndarray | None]]:
    """48x64, 8 annotated frames; object -> (gt, pred) at frame t (None: no PNG)."""
    s, e = (48, 64), np.zeros((48, 64), bool)
    gt0 = disk_mask(s, 20, 12 + 5 * t, 9)
    pred0 = disk_mask(s, 21, 14 + 5 * t, 8 + t % 3)
    if t == 3:
        gt0, pred0 = e, e  # both empty: J = F = 1
    if t == 4:
        gt0 = e  # a false positive
    if t == 5:
        pred0 = e  # a miss
    gt1 = disk_mask(s, 24, 20 + 4 * t, 7) if t >= 3 else e  # appears on frame 3, over object 0
    pred1 = disk_mask(s, 25, 21 + 4 * t, 7) | gt0 if t >= 4 else e  # overlaps object 0's mask
    if t == 2:
        gt1 = None  # no PNG on this frame
    gt2 = disk_mask(s, 36, 50, 6) if 4 <= t <= 5 else e  # in the GT on frames 4-5 only
    pred2 = disk_mask(s, 37, 49, 6) if t >= 2 else e  # predicted from frame 2 on
    gt4 = disk_mask(s, 10, 55, 5) if t <= 1 else e  # in the GT of frames 0-1 only
    pred4 = disk_mask(s, 11, 54, 4) if t <= 2 else e  # then both empty from frame 3: J = F = 1
    return {"000": (gt0, pred0), "001": (gt1, pred1), "002": (gt2, pred2), "004": (gt4, pred4)}


def sav_v2(t: int) -> dict[str, tuple[np.ndarray | None, np.ndarray | None]]:
    """37x53 (odd), ragged shapes, 5 frames; object 001 touches the right and bottom edges."""
    s = (37, 53)
    gt0, gt1 = blob(s, 10 + t), blob(s, 20 + t, 0.2)
    pred0 = np.roll(gt0, (1, t - 2), axis=(0, 1)) & ~blob(s, 30 + t, 0.1)
    pred1 = gt1 | blob(s, 40 + t, 0.05)
    gt1[-3:, :] |= t % 2 == 0
    gt1[:, -2:] = True
    return {"000": (gt0, pred0), "001": (gt1, pred1)}


def sav_v3(t: int) -> dict[str, tuple[np.ndarray | None, np.ndarray | None]]:
    """120x160 (boundary tolerance 2 px), 4 frames: a mask with holes, a whole-frame mask."""
    s = (120, 160)
    gt = disk_mask(s, 60, 80, 40) & ~disk_mask(s, 60, 80, 10 + t)
    pred = disk_mask(s, 62, 79, 41) & ~disk_mask(s, 58, 81, 12)
    if t == 2:
        gt, pred = np.ones(s, bool), np.ones(s, bool) & ~disk_mask(s, 0, 0, 30)
    return {"007": (gt, pred)}


SAV_VIDEOS = {"v1": (sav_v1, 8), "v2": (sav_v2, 5), "v3": (sav_v3, 4)}


def palette_p1(t: int) -> tuple[np.ndarray, np.ndarray]:
    """48x64, 10 frames: ids 1, 2 from frame 0; 1 leaves the GT on frame 6; 3 appears on
    frame 3; 5 is predicted from frame 2, in the GT from frame 4; 4 only predicted; 255 is an
    object like any other id."""
    s = (48, 64)
    gt, pred = np.zeros(s, np.uint8), np.zeros(s, np.uint8)
    if t < 6:
        gt[disk_mask(s, 12, 10 + 3 * t, 7)] = 1
    pred[disk_mask(s, 13, 11 + 3 * t, 7)] = 1
    gt[disk_mask(s, 35, 40 - 2 * t, 8)] = 2
    pred[disk_mask(s, 34, 41 - 2 * t, 7 + t % 2)] = 2
    if t >= 3:
        gt[disk_mask(s, 20, 50, 5 + t // 3)] = 3
    if t >= 5:
        pred[disk_mask(s, 21, 49, 6)] = 3
    if t >= 4:
        gt[disk_mask(s, 40, 12, 4)] = 5
    if t >= 2:
        pred[disk_mask(s, 41, 13, 4)] = 5
    if t in (1, 7):
        pred[disk_mask(s, 5, 58, 3)] = 4
    if t in (2, 3, 8):
        gt[40:46, 50:60] = 255
        pred[41:46, 52:60] = 255
    return gt, pred


def palette_p2(t: int) -> tuple[np.ndarray, np.ndarray]:
    """37x53, 6 frames: id 1 only on frames 0-1 (then both empty: scores 1); id 2 only in the
    last frame's GT; id 3 ragged throughout."""
    s = (37, 53)
    gt, pred = np.zeros(s, np.uint8), np.zeros(s, np.uint8)
    if t <= 1:
        gt[disk_mask(s, 10, 10, 6)] = 1
        pred[disk_mask(s, 11, 10, 6)] = 1
    if t == 5:
        gt[disk_mask(s, 30, 40, 5)] = 2
    gt[blob(s, 50 + t, 0.25) & (gt == 0)] = 3
    pred[blob(s, 60 + t, 0.25) & (pred == 0)] = 3
    return gt, pred


PALETTE_VIDEOS = {"p1": (palette_p1, 10), "p2": (palette_p2, 6)}


def write_stress_cases(root: Path) -> tuple[Path, Path, Path, Path]:
    """SA-V layout under root/sav/{gt,pred}, palette layout under root/palette/{gt,pred}."""
    for video, (fn, n) in SAV_VIDEOS.items():
        for t in range(n):
            for obj, (gt, pred) in fn(t).items():
                name = f"{4 * t:05d}.png"  # 6 fps annotations of 24 fps frames
                if gt is not None:
                    save_png(root / "sav/gt" / video / obj / name, gt, "255" if obj == "000" else "01")
                save_png(root / "sav/pred" / video / obj / name, pred, "01")
    for video, (fn, n) in PALETTE_VIDEOS.items():
        for t in range(n):
            gt, pred = fn(t)
            write_palette_png(root / "palette/gt" / video / f"{t:05d}.png", gt)
            write_palette_png(root / "palette/pred" / video / f"{t:05d}.png", pred)
    return root / "sav/gt", root / "sav/pred", root / "palette/gt", root / "palette/pred"


@pytest.fixture(scope="module")
def stress(tmp_path_factory) -> tuple[Path, Path, Path, Path]:
    return write_stress_cases(tmp_path_factory.mktemp("stress"))


# -- the official evaluator ----------------------------------------------------------------------
# Printed by SAM2's official evaluator, facebookresearch/sam2 commit
# 2b90b9f5ceec907a1c18123530e92e794ad901a4 (sav_dataset/ last changed in 7e1596c0b6462eb1d1ba7e1492430fed95023598),
# on the files `write_stress_cases` writes, at full precision through the script's own function:
#   cd sam2/sav_dataset && python -c "from utils.sav_benchmark import benchmark; print(benchmark(
#       [GT], [PRED], True, 1, verbose=False, skip_first_and_last=SKIP))"
# with GT, PRED = sav/gt, sav/pred or palette/gt, palette/pred and SKIP = True / False (the
# same as `python sav_evaluator.py --gt_root GT --pred_root PRED [--do_not_skip_first_and_last_frame]`,
# which prints one decimal). Values: (J&F, J, F) and per object (J, F), x100.
OFFICIAL = {
    ("sav", True): ((59.18733761665108, 60.32539783804653, 58.04927739525562), {
        "v1/0": (51.96989009188046, 43.64318150018065), "v1/1": (44.01844070961718, 43.21837462185766),
        "v1/2": (29.53846153846154, 34.61538461538461), "v1/4": (76.10441767068274, 77.08333333333334),
        "v2/0": (58.71785212846202, 85.68669633961014), "v2/1": (68.8804947098363, 84.59797135642292),
        "v3/7": (93.0482280173855, 37.5)}),
    ("sav", False): ((58.8725685468341, 59.20603822339284, 58.539098870275375), {
        "v1/0": (56.5584387414243, 46.17269872930601), "v1/1": (45.45530239587244, 43.345698813312836),
        "v1/2": (24.615384615384617, 28.84615384615385), "v1/4": (76.6566265060241, 78.125),
        "v2/0": (53.25487999628905, 75.05811814827635), "v2/1": (66.62711532677031, 83.09793381757274),
        "v3/7": (91.27451998198508, 55.12808873730579)}),
    ("palette", True): ((63.350902839556255, 59.00105069271304, 67.70075498639947), {
        "p1/1": (48.36309523809524, 53.125), "p1/2": (75.61510628674807, 75.41360294117648),
        "p1/255": (85.71428571428571, 91.9327731092437), "p1/3": (47.37262737262738, 48.39200347674924),
        "p1/5": (45.23809523809524, 61.5079365079365), "p2/1": (94.84126984126983, 100.0),
        "p2/3": (15.862875157869802, 43.533968869690426)}),
    ("palette", False): ((55.65477819536285, 51.86716515203909, 59.44239123868661), {
        "p1/1": (46.42857142857143, 51.0), "p1/2": (75.68766675380397, 75.70772058823529),
        "p1/255": (87.5, 92.94117647058823), "p1/3": (48.7994529038764, 47.431241075308876),
        "p1/5": (47.5, 64.58333333333334), "p2/1": (93.12169312169311, 100.0), "p2/2": (0.0, 0.0),
        "p2/3": (15.899937008367832, 43.875658442027124)}),
}


@pytest.mark.parametrize("layout, skip", list(OFFICIAL))
def test_equals_the_official_evaluator(stress, layout, skip):
    gt, pred = stress[:2] if layout == "sav" else stress[2:]
    evaluate = evaluate_per_object if layout == "sav" else evaluate_palette
    scores = evaluate(gt, pred, skip_first_last=skip)
    (jf, j, f), objects = OFFICIAL[layout, skip]
    assert (scores["J&F"], scores["J"], scores["F"]) == pytest.approx((jf, j, f), abs=1e-4)
    got = {f"{r['sequence']}/{r['object']}": (r["J"], r["F"]) for r in scores["per_object"]}
    assert got.keys() == objects.keys()
    for key, value in objects.items():
        assert got[key] == pytest.approx(value, abs=1e-4), key


def test_stress_cases_cover_the_rules(stress):
    """What the cases above exercise, read back from the per-object rows."""
    rows = {f"{r['sequence']}/{r['object']}": r for r in evaluate_per_object(*stress[:2])["per_object"]}
    assert rows["v1/1"]["first_frame"] == "00012"  # absent from GT and prediction before frame 3
    assert rows["v1/2"]["first_frame"] == "00008"  # predicted (frame 2) before it is in the GT
    assert rows["v1/4"]["frames"] == 6  # in the GT on frame 1 only, then both empty: still scored
    assert rows["v1/1"]["frames"] == 4  # its own frame list: no PNG on frame 2, own first/last skipped
    rows = {f"{r['sequence']}/{r['object']}": r for r in evaluate_palette(*stress[2:])["per_object"]}
    assert "p1/4" not in rows and rows["p1/5"]["first_frame"] == "00002" and rows["p1/3"]["first_frame"] == "00003"
    assert "p2/2" not in rows  # in the GT of the last (skipped) frame only


# -- properties (no official script needed) ------------------------------------------------------
def test_hand_worked_object():
    """Frames: both empty (not counted: not yet seen), GT only (J 0), both equal (1), both empty
    (1, after the start), prediction only (0): J = 2/4."""
    from bench.metrics.sav import ObjectTrack

    e, m = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    m[2:5, 2:5] = True
    track = ObjectTrack()
    for name, gt, pred in (("a", e, e), ("b", m, e), ("c", m, m), ("d", e, e), ("e", e, m)):
        track.feed(name, gt, pred)
    row = track.row("v", 3)
    assert row["J"] == pytest.approx(50.0) and row["F"] == pytest.approx(50.0)
    assert row["first_frame"] == "b" and row["frames"] == 4
    assert ObjectTrack().row("v", 1) is None  # never in the GT: not scored


def test_ground_truth_as_prediction_scores_100(stress):
    for gt, evaluate in ((stress[0], evaluate_per_object), (stress[2], evaluate_palette)):
        for skip in (True, False):
            scores = evaluate(gt, gt, skip_first_last=skip)
            assert scores["J&F"] == scores["J"] == scores["F"] == pytest.approx(100.0)


def test_the_two_layouts_agree(stress, tmp_path):
    """A palette set split into one folder per GT object scores the same per object (every
    object has a PNG on every frame, so the per-video and per-object frame lists are one)."""
    gt_root, pred_root = stress[2], stress[3]
    for video in ("p1", "p2"):
        frames = sorted(p.stem for p in (gt_root / video).glob("*.png"))
        gts = {f: np.asarray(Image.open(gt_root / video / f"{f}.png")) for f in frames}
        preds = {f: np.asarray(Image.open(pred_root / video / f"{f}.png")) for f in frames}
        for obj in sorted(set(np.unique(np.stack(list(gts.values())))) - {0}):
            for f in frames:
                save_png(tmp_path / "gt" / video / f"{obj:03d}" / f"{f}.png", gts[f] == obj, "01")
                save_png(tmp_path / "pred" / video / f"{obj:03d}" / f"{f}.png", preds[f] == obj, "01")
    palette = evaluate_palette(gt_root, pred_root, skip_first_last=False)
    per_object = evaluate_per_object(tmp_path / "gt", tmp_path / "pred", skip_first_last=False)
    assert [(r["sequence"], r["object"]) for r in palette["per_object"]] == \
        [(r["sequence"], r["object"]) for r in per_object["per_object"]]
    for a, b in zip(palette["per_object"], per_object["per_object"]):
        assert (a["J"], a["F"], a["first_frame"]) == pytest.approx((b["J"], b["F"], b["first_frame"]))
    assert palette["J&F"] == pytest.approx(per_object["J&F"])
    assert palette["J&F"] == pytest.approx(np.mean([(r["J"] + r["F"]) / 2 for r in palette["per_object"]]))


def test_videos_subset_and_frames_filter(stress):
    gt, pred = stress[:2]
    only = evaluate_per_object(gt, pred, videos=["v3"])
    assert [r["sequence"] for r in only["per_object"]] == ["v3"]
    first3 = evaluate_per_object(gt, pred, videos=["v3"], frames={"v3": {"00000", "00004", "00008"}})
    assert first3["per_object"][0]["frames"] == 1  # 3 frames, first and last skipped


# -- bad input: one line naming the file ---------------------------------------------------------
def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


SAV_ERRORS = {
    "missing object folder": (lambda g, p: shutil.rmtree(p / "v2" / "001"), "pred", "v2/001"),
    "missing prediction frame": (lambda g, p: (p / "v3/007/00004.png").unlink(), "pred", "v3/007/00004.png"),
    "missing prediction video": (lambda g, p: shutil.rmtree(p / "v2"), "pred", "v2"),
    "size": (lambda g, p: save_png(p / "v3/007/00008.png", np.zeros((12, 16), bool), "01"), "pred",
             "v3/007/00008.png"),
    "three values": (lambda g, p: write_palette_png(g / "v2/000/00004.png", np.arange(37 * 53).reshape(37, 53) % 3),
                     "gt", "v2/000/00004.png"),
    "object id not a number": (lambda g, p: (g / "v3/007").rename(g / "v3/obj7"), "gt", "v3/obj7"),
    "object never in the GT": (lambda g, p: [save_png(f, np.zeros((48, 64), bool), "01")
                                             for f in (g / "v1/004").glob("*.png")], "gt", "v1/004"),
}


@pytest.mark.parametrize("case", SAV_ERRORS)
def test_bad_sav_input_is_one_line_naming_the_file(stress, tmp_path, case, capsys):
    gt, pred = _copy(stress[0], tmp_path / "gt"), _copy(stress[1], tmp_path / "pred")
    spoil, side, name = SAV_ERRORS[case]
    spoil(gt, pred)
    with pytest.raises(BenchError) as e:
        evaluate_per_object(gt, pred)
    assert "\n" not in str(e.value) and str((gt if side == "gt" else pred) / name) in str(e.value)
    assert main(["vos", "--format", "sav", "--gt-root", str(gt), "--pred-root", str(pred)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and name in err


# -- command line ----------------------------------------------------------------------------------
def test_cli_sav_and_mose(stress, capsys):
    for fmt, gt, pred, key in (("sav", *stress[:2], "sav"), ("mose", *stress[2:], "palette")):
        for skip in (True, False):
            argv = ["vos", "--format", fmt, "--gt-root", str(gt), "--pred-root", str(pred)]
            assert main(argv + ([] if skip else ["--no-skip-first-last"])) == 0
            scores = json.loads(capsys.readouterr().out)
            assert {"J&F", "J", "F", "per_object", "per_sequence"} <= scores.keys()
            assert scores["J&F"] == pytest.approx(OFFICIAL[key, skip][0][0], abs=1e-4)
    assert main(["vos", "--format", "sav", "--gt-root", str(stress[0]), "--pred-root", str(stress[1]),
                 "--sequences", "v2"]) == 0
    assert [r["sequence"] for r in json.loads(capsys.readouterr().out)["per_sequence"]] == ["v2"]


@pytest.mark.parametrize("argv, message", [
    (["--format", "sav", "--pred-root", "x"], "--gt-root"),
    (["--format", "sav", "--gt-root", "x", "--pred-root", "y", "--max-frames", "3"], "--max-frames"),
    (["--davis-root", "x", "--pred", "y", "--no-skip-first-last"], "--no-skip-first-last"),
])
def test_cli_option_mismatch(argv, message, capsys):
    assert main(["vos", *argv]) == 2
    assert message in capsys.readouterr().err
