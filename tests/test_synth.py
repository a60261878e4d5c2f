"""The synthetic data generator: official layouts, determinism, and the scene properties the
VOS task needs (occlusion, objects leaving and re-entering)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from bench import BenchError
from bench.data import synth
from tests.conftest import synth_set

SMALL = replace(synth.SynthConfig(), frames=10, clips_train=2, clips_val=5, images_train=3, images_val=4)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return synth_set(tmp_path_factory, SMALL)


def test_davis_layout(root):
    davis = root / "davis"
    val = (davis / "ImageSets/2017/val.txt").read_text().split()
    train = (davis / "ImageSets/2017/train.txt").read_text().split()
    assert len(val) == 5 and len(train) == 2 and not set(val) & set(train)
    for seq in val:
        jpgs = sorted((davis / "JPEGImages/480p" / seq).glob("*.jpg"))
        pngs = sorted((davis / "Annotations/480p" / seq).glob("*.png"))
        assert [p.stem for p in jpgs] == [p.stem for p in pngs] == [f"{t:05d}" for t in range(10)]
        with Image.open(pngs[0]) as im:
            assert im.mode == "P" and im.size == (SMALL.width, SMALL.height)
            first = np.asarray(im)
        # every object of the clip is visible in frame 0 (DAVIS counts objects from it)
        n = max(np.asarray(Image.open(p)).max() for p in pngs)
        assert set(np.unique(first)) == set(range(n + 1))


def test_objects_leave_reenter_and_occlude():
    left_and_came_back, occluded = False, False
    for i in range(6):
        objs, _, _ = synth.scene(SMALL, "val", i, SMALL.frames)
        _, labels = synth.clip(SMALL, "val", i)
        for j in range(1, len(objs) + 1):
            present = [bool((lab == j).any()) for lab in labels]
            gone = [t for t, p in enumerate(present) if not p]
            if gone and any(present[t] for t in range(gone[-1] + 1, len(present))):
                left_and_came_back = True
        # an object's drawn shape covered by a later one: visible area < shape area
        yy, xx = np.mgrid[0 : SMALL.height, 0 : SMALL.width].astype(float)
        for j, o in enumerate(objs[:-1]):
            u, v = synth._local(o, 0, yy, xx)
            if (synth._shape(o, u, v) & (labels[0] != j + 1)).sum() > 20:
                occluded = True
    assert left_and_came_back and occluded


def test_deterministic_and_splits_differ(tmp_path):
    a, b = synth.clip(SMALL, "val", 3), synth.clip(SMALL, "val", 3)
    assert all(np.array_equal(x, y) for x, y in zip(a[0] + a[1], b[0] + b[1]))
    assert not np.array_equal(synth.clip(SMALL, "train", 3)[0][0], a[0][0])
    assert not np.array_equal(synth.clip(replace(SMALL, seed=1), "val", 3)[0][0], a[0][0])


def test_coco_layout_and_detections(root):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    coco_root = root / "coco"
    for split, n in (("train", 3), ("val", 4)):
        doc = json.loads((coco_root / f"annotations/instances_{split}.json").read_text())
        assert len(doc["images"]) == n and doc["annotations"] and doc["categories"]
        for img in doc["images"]:
            assert (coco_root / "images" / split / img["file_name"]).is_file()
    gt = COCO(str(coco_root / "annotations/instances_val.json"))
    for ann in gt.loadAnns(gt.getAnnIds()):
        m = gt.annToMask(ann)
        assert m.sum() == ann["area"] and mask_utils.area(ann["segmentation"]) == ann["area"]
        x, y, w, h = ann["bbox"]
        ys, xs = np.nonzero(m)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
    dets = json.loads((coco_root / "detections_val.json").read_text())
    assert dets and all({"image_id", "category_id", "bbox", "score"} <= d.keys() for d in dets)
    assert all(0 < d["score"] < 1 and d["bbox"][2] > 0 and d["bbox"][3] > 0 for d in dets)
    assert gt.loadRes(dets)  # loads as a detection result file


def test_refuses_non_empty_out_and_cli(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    with pytest.raises(BenchError, match="not empty"):
        synth.generate(SMALL, tmp_path / "x")
    out = subprocess.run([sys.executable, "-m", "bench.data.synth", "--out", str(tmp_path / "x")],
                         capture_output=True, text=True)
    assert out.returncode != 0 and out.stderr.strip().splitlines()[-1].startswith("error:")
    assert not list(tmp_path.glob("x.partial*"))


def test_as_stored_gives_the_pixels_the_tasks_read(root):
    for i in range(SMALL.images_val):
        image, _ = synth.still(SMALL, "val", i)
        with Image.open(root / "coco" / "images" / "val" / f"val{i:06d}.jpg") as im:
            read = np.asarray(im.convert("RGB"))
        stored = synth.as_stored(image)
        assert stored.dtype == np.uint8 and np.array_equal(stored, read)
        assert not np.array_equal(stored, image)  # the round trip is lossy: training must see it
    frames, _ = synth.clip(SMALL, "val", 0)
    with Image.open(root / "davis" / "JPEGImages" / "480p" / "val0000" / "00003.jpg") as im:
        assert np.array_equal(synth.as_stored(frames[3]), np.asarray(im.convert("RGB")))


def test_sav_layout_is_the_davis_clips_at_24_fps(root):
    """Frame 4t of the SA-V layout is DAVIS frame t byte for byte; per-object PNGs every 4th
    frame, object folders 000.. for the DAVIS ids 1..; some masks empty (objects that leave)."""
    sav, davis = root / "sav", root / "davis"
    val = (sav / "sav_val.txt").read_text().split()
    assert val == (davis / "ImageSets/2017/val.txt").read_text().split()
    assert (sav / "sav_train.txt").read_text().split() == (davis / "ImageSets/2017/train.txt").read_text().split()
    empty_somewhere = False
    for seq in val:
        jpgs = sorted(p.stem for p in (sav / "JPEGImages_24fps" / seq).glob("*.jpg"))
        assert jpgs == [f"{k:05d}" for k in range(synth.SAV_STEP * (SMALL.frames - 1) + 1)]
        for t in range(SMALL.frames):
            k = synth.SAV_STEP * t
            assert (sav / f"JPEGImages_24fps/{seq}/{k:05d}.jpg").read_bytes() == \
                (davis / f"JPEGImages/480p/{seq}/{t:05d}.jpg").read_bytes()
        labels = [np.asarray(Image.open(davis / f"Annotations/480p/{seq}/{t:05d}.png")) for t in range(SMALL.frames)]
        folders = sorted(p.name for p in (sav / "Annotations_6fps" / seq).iterdir())
        assert folders == [f"{i:03d}" for i in range(labels[0].max())]
        for i, folder in enumerate(folders):
            pngs = sorted((sav / "Annotations_6fps" / seq / folder).glob("*.png"))
            assert [p.stem for p in pngs] == [f"{synth.SAV_STEP * t:05d}" for t in range(SMALL.frames)]
            for t, png in enumerate(pngs):
                mask = np.asarray(Image.open(png))
                assert set(np.unique(mask)) <= {0, 1} and np.array_equal(mask == 1, labels[t] == i + 1)
                empty_somewhere |= not mask.any()
    assert empty_somewhere


def test_frames_between_show_the_motion_between():
    frames, labels = synth.clip_24fps(SMALL, "val", 1)
    davis_frames, davis_labels = synth.clip(SMALL, "val", 1)
    assert all(np.array_equal(a, b) for a, b in zip(labels, davis_labels))
    assert all(np.array_equal(frames[synth.SAV_STEP * t], f) for t, f in enumerate(davis_frames))
    assert not np.array_equal(frames[1], frames[0]) and not np.array_equal(frames[1], frames[4])


def test_mose_layout_has_objects_that_appear_later(root):
    mose = root / "mose"
    assert sorted(p.name for p in mose.iterdir()) == ["train", "valid"]
    for i in range(SMALL.clips_val):
        seq = f"val{i:04d}"
        labels = [np.asarray(Image.open(mose / f"valid/Annotations/{seq}/{t:05d}.png")) for t in range(SMALL.frames)]
        davis0 = np.asarray(Image.open(root / f"davis/Annotations/480p/{seq}/00000.png"))
        late = int(davis0.max()) + 1
        first = next(t for t, lab in enumerate(labels) if (lab == late).any())
        assert not (labels[0] == late).any() and SMALL.frames // 4 <= first <= SMALL.frames // 2
        assert np.array_equal(labels[0], davis0)  # the rest is the DAVIS clip
        assert (mose / f"valid/JPEGImages/{seq}/{first:05d}.jpg").is_file()


def test_an_older_folder_gets_the_new_sets(tmp_path, monkeypatch):
    """A folder written before the SA-V and MOSE sets existed gets them, with its own settings,
    and its DAVIS and COCO sets are left as they are."""
    cfg = replace(SMALL, frames=4, clips_train=1, clips_val=1, images_train=1, images_val=1, seed=3)
    synth.generate(cfg, tmp_path / "s")
    shutil.rmtree(tmp_path / "s" / "sav")
    shutil.rmtree(tmp_path / "s" / "mose")
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "s" / "davis").rglob("*.png")}
    monkeypatch.setenv("BENCH_SYNTH", str(tmp_path / "s"))
    assert synth.ensure_default() == tmp_path / "s"
    assert (tmp_path / "s/sav/sav_val.txt").is_file() and (tmp_path / "s/mose/valid").is_dir()
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "s" / "davis").rglob("*.png")} == before
    frames, _ = synth.clip_24fps(cfg, "val", 0)
    with Image.open(tmp_path / "s/sav/JPEGImages_24fps/val0000/00001.jpg") as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), synth.as_stored(frames[1]))  # seed 3, not 0
    assert not list((tmp_path / "s").glob("*.partial*"))
