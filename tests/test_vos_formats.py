"""The vos task in the SA-V and MOSE formats: the layout readers and their checks, inference as
`vos_inference.py` does it (per-object PNGs, objects that appear later), and the task end to end
on the synthetic sets in those layouts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench import BenchError
from bench.cell import Cell, cell_id, dataset_label
from bench.data import synth
from bench.data.davis import read_label_png, write_palette_png
from bench.data.mose import MoseSet
from bench.data.sav import SavSet
from bench.run import run_cell
from tests.conftest import synth_set
from tests.test_tasks import assert_items_make_the_metrics

H, W = 24, 32
SMALL = replace(synth.SynthConfig(), frames=8, clips_train=2, clips_val=2, images_train=2, images_val=2)


def box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def jpg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(path)


def make_sav(root: Path, frames: int = 9) -> Path:
    """Video "a": 9 frames, annotated every 4th (0, 4, 8); object 000 from frame 0, object 001
    empty on frame 0 and present from frame 4."""
    for t in range(frames):
        jpg(root / "JPEGImages_24fps" / "a" / f"{t:05d}.jpg")
    for t in range(0, frames, 4):
        write_palette_png(root / "Annotations_6fps/a/000" / f"{t:05d}.png", box(2, 10, 2 + t, 10 + t))
        second = box(12, 20, t, 8 + t) if t else box(0, 0, 0, 0)
        write_palette_png(root / "Annotations_6fps/a/001" / f"{t:05d}.png", second)
    (root / "sav_val.txt").write_text("a\n")
    return root


def make_mose(root: Path) -> Path:
    """valid/ video "m": 6 frames; id 1 from frame 0, id 2 from frame 3."""
    for t in range(6):
        jpg(root / "valid/JPEGImages/m" / f"{t:05d}.jpg")
        labels = box(2, 10, 2 + t, 10 + t).astype(np.uint8)
        if t >= 3:
            labels[box(14, 22, 20, 28)] = 2
        write_palette_png(root / "valid/Annotations/m" / f"{t:05d}.png", labels)
    return root


class FakePredictor:
    """The VOS calls of SAM2VideoPredictor: logits are +1 inside a box that depends on the
    object (so outputs tell objects apart) and -1 elsewhere; records prompts and resets."""

    def __init__(self, frames: int):
        self.frames, self.prompts, self.resets, self.non_overlap_masks = frames, [], 0, True

    def init_state(self, folder):
        return {"objects": []}

    def add_new_mask(self, state, frame_idx, obj_id, mask):
        self.prompts.append((obj_id, frame_idx, bool(np.asarray(mask).any())))
        state["objects"].append((obj_id, frame_idx))

    def propagate_in_video(self, state, start_frame_idx=None, reverse=False):
        assert not reverse
        ids = [o for o, _ in state["objects"]]
        for t in range(start_frame_idx or 0, self.frames):
            logits = -torch.ones(len(ids), 1, H, W)
            for k, obj in enumerate(ids):
                logits[k, 0, obj : obj + 10, 2 * obj : 2 * obj + 12] = 1.0 + obj  # overlapping boxes
            yield t, ids, logits

    def reset_state(self, state):
        self.resets += 1
        state["objects"] = []


# -- readers ---------------------------------------------------------------------------------------
def test_sav_reader(tmp_path):
    ds = SavSet(make_sav(tmp_path / "sav"))
    assert ds.sequences == ["a"] and ds.frames("a") == [f"{t:05d}" for t in range(9)]
    assert ds.objects("a") == {0: "000", 1: "001"} and ds.annotated_frames("a") == ["00000", "00004", "00008"]
    joint = ds.prompts("a")
    assert {k: (t, m.any()) for k, (t, m) in joint.items()} == {0: (0, True), 1: (0, False)}  # even empty
    later = ds.prompts("a", later=True)
    assert {k: t for k, (t, _) in later.items()} == {0: 0, 1: 4}
    assert list(ds.first_masks("a")) == [0]
    assert SavSet(tmp_path / "sav", max_frames=5).annotated_frames("a") == ["00000", "00004"]


def test_mose_reader(tmp_path):
    root = make_mose(tmp_path / "mose")
    ds = MoseSet(root)  # split val -> the folder MOSE calls valid
    assert ds.sequences == ["m"] and ds.split_dir == root / "valid" and len(ds.frames("m")) == 6
    assert {k: t for k, (t, _) in ds.prompts("m").items()} == {1: 0}
    assert {k: t for k, (t, _) in ds.prompts("m", later=True).items()} == {1: 0, 2: 3}


def _sav_spoil(root: Path, case: str) -> Path:
    ann = root / "Annotations_6fps" / "a"
    if case == "no annotation folder":
        shutil.rmtree(ann)
        return ann
    if case == "no object folder":
        for d in list(ann.iterdir()):
            shutil.rmtree(d)
        return ann
    if case == "object id not a number":
        (ann / "001").rename(ann / "obj1")
        return ann / "obj1"
    if case == "annotation not a frame":
        write_palette_png(ann / "000" / "00003x.png", box(0, 2, 0, 2))
        return ann / "000" / "00003x.png"
    if case == "annotation past the last frame":
        write_palette_png(ann / "001" / "00012.png", box(0, 2, 0, 2))
        return ann / "001" / "00012.png"
    if case == "mask size":
        write_palette_png(ann / "000" / "00000.png", np.zeros((H + 1, W), np.uint8))
        return ann / "000" / "00000.png"
    if case == "no frame-0 mask":
        (ann / "001" / "00000.png").unlink()
        return ann / "001" / "00000.png"
    if case == "three values":
        write_palette_png(ann / "001" / "00000.png", np.arange(H * W).reshape(H, W) % 3)
        return ann / "001" / "00000.png"
    raise AssertionError(case)


SAV_CASES = ["no annotation folder", "no object folder", "object id not a number", "annotation not a frame",
             "annotation past the last frame", "mask size", "no frame-0 mask", "three values"]


@pytest.mark.parametrize("case", SAV_CASES)
def test_corrupt_sav_is_one_line_naming_the_file(tmp_path, case):
    root = make_sav(tmp_path / "sav")
    named = _sav_spoil(root, case)
    with pytest.raises(BenchError) as e:
        ds = SavSet(root)
        ds.prompts("a")  # frame-0 masks are read when the video is predicted
    assert "\n" not in str(e.value) and str(named) in str(e.value)


MOSE_CASES = ["no split folder", "annotation not a frame", "mask size", "no first annotation", "no objects"]


@pytest.mark.parametrize("case", MOSE_CASES)
def test_corrupt_mose_is_one_line_naming_the_file(tmp_path, case):
    root = make_mose(tmp_path / "mose")
    ann = root / "valid/Annotations/m"
    split = "val"
    if case == "no split folder":
        split, named = "test", root / "test" / "JPEGImages"
    elif case == "annotation not a frame":
        named = ann / "00099.png"
        write_palette_png(named, box(0, 2, 0, 2))
    elif case == "mask size":
        named = ann / "00004.png"
        write_palette_png(named, np.zeros((H, W + 3), np.uint8))
    elif case == "no first annotation":
        named = ann / "00000.png"
        named.unlink()
    else:
        named = ann / "00000.png"
        write_palette_png(named, np.zeros((H, W), np.uint8))
    with pytest.raises(BenchError) as e:
        ds = MoseSet(root, split=split)
        for t in ds.frames("m"):
            ds.read_mask("m", t)
        ds.prompts("m")
    assert "\n" not in str(e.value) and str(named) in str(e.value)


# -- inference ------------------------------------------------------------------------------------
def test_sav_inference_writes_every_object_and_frame(tmp_path):
    from bench.tasks.vos import predict_sequence

    ds = SavSet(make_sav(tmp_path / "sav"))
    fake = FakePredictor(9)
    out = tmp_path / "pred" / "a"
    assert predict_sequence(fake, ds, "a", tmp_path, out, write_palette_png) == 9
    assert fake.prompts == [(0, 0, True), (1, 0, False)]  # every object on frame 0, the empty one too
    for obj in (0, 1):
        masks = [read_label_png(out / f"{obj:03d}" / f"{t:05d}.png") for t in range(9)]
        assert all(np.array_equal(m, masks[0]) for m in masks) and masks[0].sum() == 10 * 12
    both = [read_label_png(out / f"{o:03d}" / "00004.png").astype(bool) for o in (0, 1)]
    assert (both[0] & both[1]).any()  # per-object masks overlap


def test_sav_later_objects_are_tracked_from_their_first_mask(tmp_path):
    from bench.tasks.vos import predict_sequence

    ds = SavSet(make_sav(tmp_path / "sav"))
    fake = FakePredictor(9)
    out = tmp_path / "pred" / "a"
    predict_sequence(fake, ds, "a", tmp_path, out, write_palette_png, later=True)
    assert fake.prompts == [(0, 0, True), (1, 4, True)] and fake.resets >= 2  # one object at a time
    present = [read_label_png(out / "001" / f"{t:05d}.png").any() for t in range(9)]
    assert present == [False] * 4 + [True] * 5  # empty before its first frame


def test_mose_later_objects_palette_gives_each_pixel_the_highest_logit(tmp_path):
    from bench.tasks.vos import predict_sequence

    ds = MoseSet(make_mose(tmp_path / "mose"))
    fake = FakePredictor(6)
    out = tmp_path / "pred" / "m"
    predict_sequence(fake, ds, "m", tmp_path, out, write_palette_png, later=True)
    assert fake.prompts == [(1, 0, True), (2, 3, True)]
    early, late = read_label_png(out / "00001.png"), read_label_png(out / "00004.png")
    assert set(np.unique(early)) == {0, 1}
    assert late[3, 5] == 2  # both boxes cover it: object 2's logit (3) beats object 1's (2)
    assert late[1, 2] == 1 and (late == 2).sum() == 10 * 12
    fake = FakePredictor(6)
    predict_sequence(fake, ds, "m", tmp_path, tmp_path / "joint" / "m", write_palette_png)
    assert fake.prompts == [(1, 0, True)]  # without later: the frame-0 objects only


def test_overlapping_masks_restores_the_setting():
    from bench.tasks.vos import overlapping_masks

    fake = FakePredictor(1)
    with overlapping_masks(fake, allowed=True):
        assert fake.non_overlap_masks is False
    assert fake.non_overlap_masks is True


# -- the task end to end ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synth_set(tmp_path_factory, SMALL)


def vos_cell(data, fmt: str, **kw) -> Cell:
    return Cell(model="micro", method="fp", task="vos", random_init=True, device="cpu",
                davis_root=str(data / fmt), coco_root=str(data / "coco"), vos_format=fmt, **kw)


@pytest.mark.parametrize("fmt, later", [("sav", False), ("mose", True)])
def test_vos_task_in_the_sav_and_mose_formats(data, tmp_path, fmt, later):
    rec = run_cell(vos_cell(data, fmt, track_later=later), work_dir=tmp_path)
    assert rec["status"] == "ok", rec.get("traceback")
    assert rec["dataset"] == "synthetic val" and rec["config"]["cell"]["vos_format"] == fmt
    m = rec["metrics"]
    frames = SMALL.frames if fmt == "mose" else synth.SAV_STEP * (SMALL.frames - 1) + 1
    assert m["frames"] == 2 * frames and m["sequences"] == 2 and set(m) == {"J&F", "J", "F", "frames", "fps",
                                                                          "sequences"}
    assert_items_make_the_metrics(rec)
    assert all({"sequence", "object", "J", "F", "first_frame"} <= it.keys() for it in rec["items"])
    pred = tmp_path / "vos_predictions"
    if fmt == "sav":
        gt = data / "sav" / "Annotations_6fps"
        n = len(list(pred.glob("val*/*/*.png")))
        assert n == sum(frames * len(list((gt / s).iterdir())) for s in ("val0000", "val0001"))
    else:
        gt = data / "mose" / "valid" / "Annotations"
        assert any(it["first_frame"] > "00001" for it in rec["items"])  # a later object, scored from then
    argv = ["--format", fmt, "--gt-root", str(gt), "--pred-root", str(pred), "--sequences", "val0000,val0001"]
    out = subprocess.run([sys.executable, "-m", "bench.score", "vos", *argv], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["J&F"] == pytest.approx(m["J&F"], abs=1e-9)


def test_track_later_needs_sav_or_mose(data, tmp_path):
    with pytest.raises(BenchError, match="sav or mose"):
        run_cell(vos_cell(data, "davis", track_later=True), work_dir=tmp_path)


def test_calibration_clips_in_the_sav_format(data, tmp_path):
    from bench.calib import CalibData

    calib = CalibData.from_datasets(str(data / "sav"), None, 40, tmp_path, "sav")
    assert [len(list(c.frames_dir.glob("*.jpg"))) for c in calib.clips] == [29, 11]
    assert all(c.labels is None and c.masks for c in calib.clips)  # 6 fps labels: no per-frame targets


# -- cells and records ---------------------------------------------------------------------------------
def test_dataset_label_and_cell_ids(data, tmp_path):
    base = Cell(model="micro", method="fp", task="vos", davis_root="/x/SA-V", split="test")
    assert dataset_label(replace(base, vos_format="sav")) == "sa-v test"
    assert dataset_label(replace(base, vos_format="mose", split="val")) == "mose val"
    assert dataset_label(replace(base, split="val")) == "davis-2017 val"
    assert dataset_label(replace(base, davis_root=str(data / "sav"), vos_format="sav")) == "synthetic test"
    assert dataset_label(replace(base, task="instseg", coco_root="/x/coco", split="val2017")) == "coco val2017"
    assert dataset_label(replace(base, task="size")) is None
    # the fields added for the formats change the identity only when set
    assert cell_id(base) == "aed347b43f9703bd"  # as before the fields existed
    assert len({cell_id(base), cell_id(replace(base, vos_format="sav")),
                cell_id(replace(base, vos_format="sav", track_later=True))}) == 3


def test_default_roots_by_format(tmp_path, monkeypatch):
    from bench.cell import with_data_roots

    monkeypatch.setenv("BENCH_SYNTH", str(tmp_path / "synth"))
    for var in ("BENCH_DAVIS", "BENCH_SAV", "BENCH_MOSE", "BENCH_COCO"):
        monkeypatch.delenv(var, raising=False)
    cell = Cell(model="micro", method="fp", task="vos", vos_format="sav")
    assert with_data_roots(cell).davis_root == str(tmp_path / "synth" / "sav")
    monkeypatch.setenv("BENCH_SAV", "/data/sav_test")
    monkeypatch.setenv("BENCH_DAVIS", "/data/davis")
    assert with_data_roots(cell).davis_root == "/data/sav_test"
    assert with_data_roots(replace(cell, vos_format="davis")).davis_root == "/data/davis"


def test_run_cli_refuses_later_objects_on_davis(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bench.run", "--model", "micro", "--random-init", "--task", "vos",
                          "--track-later-objects", "--device", "cpu", "--out", str(tmp_path / "r.json")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "sav or mose" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.json").exists()


def test_first_frame_only_annotations_cannot_be_scored(tmp_path):
    """MOSE's valid split ships the first frame's annotation only: the task says so."""
    from bench.tasks import TaskContext
    from bench.tasks.vos import run

    root = make_mose(tmp_path / "mose")
    for t in range(1, 6):
        (root / f"valid/Annotations/m/{t:05d}.png").unlink()
    ctx = TaskContext("micro", "cpu", tmp_path / "work", {"davis_root": str(root), "vos_format": "mose",
                                                           "progress": False})
    with pytest.raises(BenchError, match="first frame only") as e:
        run(FakePredictor(6), ctx)
    assert str(root / "valid/Annotations/m") in str(e.value)
