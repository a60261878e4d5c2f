"""Synthetic data in the official layouts, deterministic from a seed.

    python -m bench.data.synth --out data/synth [--seed 0] [--scale 1]

writes
  OUT/davis/  JPEGImages/480p/<seq>/00000.jpg, Annotations/480p/<seq>/00000.png (palette),
              ImageSets/2017/{train,val}.txt  -- the DAVIS 2017 layout;
  OUT/coco/   images/<split>/<id>.jpg, annotations/instances_{train,val}.json (RLE masks),
              detections_val.json (noisy boxes with scores, as a detector gives)
              -- the COCO layout;
  OUT/sav/    JPEGImages_24fps/<seq>/00000.jpg, Annotations_6fps/<seq>/000/00000.png (one binary
              PNG per object, every 4th frame), sav_{train,val}.txt  -- the SA-V layout, the
              same clips as davis/ at 4x the frame rate: frame 4t is davis/ frame t, pixel for
              pixel, and the frames between show the motion at t + 1/4, t + 1/2, t + 3/4;
  OUT/mose/   {train,valid}/JPEGImages/<seq>/00000.jpg, {train,valid}/Annotations/<seq>/00000.png
              -- the MOSE layout, the davis/ clips plus one object that first appears on a
              later frame (between a quarter and half of the clip), every frame annotated;
  OUT/synth.json  the generator version and settings (the data version of a trained model).

Scenes: a smooth textured background and several objects (ellipses, boxes, triangles, stars),
each with its own colours and pattern (stripes, checks, dots, rings) drawn in the object's own
coordinates, so appearance moves, scales and rotates with it. In the clips objects move,
scale, occlude one another by depth order, and some leave the frame and come back (their
SA-V masks are then empty on some annotated frames). Every object of davis/ and sav/ is visible
in the first frame (DAVIS counts objects from frame 0); mose/ adds the later ones.

Splits draw from disjoint seed streams, so training on the train stream never sees val.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bench import BenchError

VERSION = 1
SHAPES = ("ellipse", "box", "triangle", "star")
PATTERNS = ("stripes", "checks", "dots", "rings")
SPLIT_STREAMS = {"train": 1, "val": 2}
SAV_STEP = 4  # SA-V: frames at 24 fps, annotations at 6 fps
SAV_STREAM, LATE_STREAM = 24, 7  # seed streams of the SA-V in-between frames and the late objects
MOSE_SPLITS = {"train": "train", "val": "valid"}  # MOSE's split folders
VIDEO_DIRS = {"davis": "davis", "sav": "sav", "mose": "mose"}  # vos format -> folder under OUT
SET_DIRS = ("davis", "coco", "sav", "mose")
JPEG_QUALITY = 95  # of the written frames and images


@dataclass(frozen=True)
class SynthConfig:
    seed: int = 0
    height: int = 192
    width: int = 256
    frames: int = 16
    clips_train: int = 16
    clips_val: int = 8
    images_train: int = 32
    images_val: int = 24
    min_objects: int = 2
    max_objects: int = 4


# -- scene description ---------------------------------------------------------------------
@dataclass
class Obj:
    shape: str
    pattern: str
    colors: np.ndarray  # 2 x 3 in [0, 1]
    freq: float  # pattern frequency in object units
    aspect: float
    pos: np.ndarray  # centre (x, y) in pixels at frame 0
    vel: np.ndarray  # pixels per frame
    radius: float  # pixels at frame 0
    growth: float  # radius factor per frame
    angle: float
    spin: float
    leaves_at: int | None  # frame after which the velocity turns back (leave and re-enter)
    size: tuple[int, int]  # frame (width, height): non-leaving objects bounce inside it
    appears_at: int | None = None  # first frame it is drawn on (None: from frame 0)


def _colors(rng: np.random.Generator) -> np.ndarray:
    hue = rng.uniform(0, 1)
    c1 = _hsv(hue, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))
    c2 = _hsv((hue + rng.uniform(0.25, 0.75)) % 1, rng.uniform(0.3, 1.0), rng.uniform(0.2, 0.9))
    return np.stack([c1, c2])


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


def random_object(rng: np.random.Generator, cfg: SynthConfig, frames: int) -> Obj:
    h, w = cfg.height, cfg.width
    radius = rng.uniform(0.12, 0.28) * min(h, w)
    pos = np.array([rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h])
    leaves_at = int(rng.integers(frames // 4, frames // 2 + 1)) if frames > 6 and rng.uniform() < 0.3 else None
    if leaves_at is None:
        speed, heading = rng.uniform(0.5, 2.0) * min(h, w) / 96, rng.uniform(0, 2 * math.pi)
        vel = speed * np.array([math.cos(heading), math.sin(heading)])
    else:  # head for the nearest border, be fully out at `leaves_at`, then come back
        gaps = np.array([pos[0], w - pos[0], pos[1], h - pos[1]])
        side = int(gaps.argmin())
        vel = np.zeros(2)
        vel[side // 2] = (1 if side % 2 else -1) * (gaps[side] + 1.3 * radius) / leaves_at
    return Obj(
        shape=SHAPES[rng.integers(len(SHAPES))],
        pattern=PATTERNS[rng.integers(len(PATTERNS))],
        colors=_colors(rng),
        freq=rng.uniform(2.0, 5.0),
        aspect=rng.uniform(0.6, 1.0),
        pos=pos,
        vel=vel,
        radius=radius,
        growth=math.exp(rng.uniform(-0.03, 0.03)),
        angle=rng.uniform(0, 2 * math.pi),
        spin=rng.uniform(-0.06, 0.06),
        leaves_at=leaves_at,
        size=(w, h),
    )


def _reflect(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Fold x into [lo, hi] as a ball bouncing between two walls."""
    period = 2 * (hi - lo)
    y = np.mod(x - lo, period)
    return lo + np.where(y > hi - lo, period - y, y)


def obj_at(o: Obj, t: int) -> tuple[np.ndarray, float, float]:
    """Centre, radius and angle at frame t. Objects bounce inside the central 80% of the
    frame, except those that leave: they go out until `leaves_at`, then turn back."""
    if o.leaves_at is None:
        size = np.array(o.size, dtype=np.float64)
        pos = _reflect(o.pos + o.vel * t, 0.1 * size, 0.9 * size)
    elif t <= o.leaves_at:
        pos = o.pos + o.vel * t
    else:
        pos = o.pos + o.vel * (2 * o.leaves_at - t)
    return pos, o.radius * o.growth**t, o.angle + o.spin * t


# -- rendering -------------------------------------------------------------------------------
def _local(o: Obj, t: int, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos, r, a = obj_at(o, t)
    dx, dy = xx - pos[0], yy - pos[1]
    u = (math.cos(a) * dx + math.sin(a) * dy) / r
    v = (-math.sin(a) * dx + math.cos(a) * dy) / (r * o.aspect)
    return u, v


def _shape(o: Obj, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if o.shape == "ellipse":
        return u**2 + v**2 <= 1
    if o.shape == "box":
        return (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)
    if o.shape == "triangle":  # equilateral, circumradius 1
        sides = (0.5 * math.pi, 7 / 6 * math.pi, 11 / 6 * math.pi)
        return np.all([u * math.cos(a) + v * math.sin(a) <= 0.5 for a in sides], axis=0)
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    return rho <= 0.72 + 0.28 * np.cos(5 * phi)


def _pattern(o: Obj, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    f = o.freq * math.pi
    if o.pattern == "stripes":
        return np.sin(f * (u + 0.5 * v)) > 0
    if o.pattern == "checks":
        return (np.floor(f * u / math.pi) + np.floor(f * v / math.pi)) % 2 == 0
    if o.pattern == "dots":
        return (np.sin(f * u) * np.sin(f * v)) > 0.35
    return np.sin(f * np.hypot(u, v)) > 0


def background(rng: np.random.Generator, cfg: SynthConfig) -> np.ndarray:
    """Smooth low-frequency colour field plus a faint texture: H x W x 3 in [0, 1]."""
    coarse = rng.uniform(0.2, 0.7, size=(4, 5, 3))
    img = Image.fromarray((coarse * 255).astype(np.uint8)).resize((cfg.width, cfg.height), Image.BICUBIC)
    bg = np.asarray(img, dtype=np.float64) / 255
    yy, xx = np.mgrid[0 : cfg.height, 0 : cfg.width]
    fx, fy = rng.uniform(0.05, 0.3, size=2)
    return np.clip(bg + 0.06 * np.sin(fx * xx + fy * yy)[..., None], 0, 1)


def render(objs: list[Obj], bg: np.ndarray, t: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 image and label map (object i+1 where it is visible) of frame t (a fraction:
    the motion between two frames); objects are drawn in list order, so later ones occlude
    earlier ones."""
    h, w = bg.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img, labels = bg.copy(), np.zeros((h, w), np.uint8)
    for i, o in enumerate(objs):
        if o.appears_at is not None and t < o.appears_at:
            continue
        u, v = _local(o, t, yy, xx)
        inside = _shape(o, u, v)
        if not inside.any():
            continue
        pat = _pattern(o, u[inside], v[inside])
        shade = 0.85 + 0.15 * np.clip(1 - (u[inside] ** 2 + v[inside] ** 2), 0, 1)
        img[inside] = np.where(pat[:, None], o.colors[0], o.colors[1]) * shade[:, None]
        labels[inside] = i + 1
    img = np.clip(img + rng.normal(0, 0.015, img.shape), 0, 1)
    return (img * 255).round().astype(np.uint8), labels


def scene(cfg: SynthConfig, split: str, index: int, frames: int) -> tuple[list[Obj], np.ndarray, np.random.Generator]:
    """Objects, background and noise generator of one clip/image; retried until every object
    shows at least 1.5% of the frame in frame 0."""
    rng = np.random.default_rng([cfg.seed, SPLIT_STREAMS[split], index])
    bg = background(rng, cfg)
    while True:
        objs = [random_object(rng, cfg, frames) for _ in range(rng.integers(cfg.min_objects, cfg.max_objects + 1))]
        _, labels = render(objs, bg, 0, np.random.default_rng(0))
        areas = np.bincount(labels.ravel(), minlength=len(objs) + 1)[1:]
        if areas.min() >= 0.015 * labels.size:
            return objs, bg, rng


def clip(cfg: SynthConfig, split: str, index: int,
         upto: int | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames (uint8 RGB) and label maps of one clip; `upto` renders only the first `upto`
    frames (the same pixels: frames are drawn in order from one noise stream)."""
    objs, bg, rng = scene(cfg, split, index, cfg.frames)
    pairs = [render(objs, bg, t, rng) for t in range(cfg.frames if upto is None else min(upto, cfg.frames))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def clip_24fps(cfg: SynthConfig, split: str, index: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """`clip` at SAV_STEP times its frame rate: frames at t = k / SAV_STEP, and the label maps
    of every SAV_STEP-th (k = SAV_STEP t): those frames are `clip`'s, pixel for pixel (their
    noise comes from the same stream in the same order; the frames between have their own)."""
    objs, bg, rng = scene(cfg, split, index, cfg.frames)
    between = np.random.default_rng([cfg.seed, SPLIT_STREAMS[split], index, SAV_STREAM])
    frames, labels = [], []
    for k in range(SAV_STEP * (cfg.frames - 1) + 1):
        t, sub = divmod(k, SAV_STEP)
        img, lab = render(objs, bg, t, rng) if sub == 0 else render(objs, bg, k / SAV_STEP, between)
        frames.append(img)
        if sub == 0:
            labels.append(lab)
    return frames, labels


def late_object(cfg: SynthConfig, split: str, index: int, objs: list[Obj], bg: np.ndarray) -> Obj:
    """An object first drawn on a frame between a quarter and half of the clip, on top of the
    others, showing at least 1.5% of the frame there (its own seed stream)."""
    rng = np.random.default_rng([cfg.seed, SPLIT_STREAMS[split], index, LATE_STREAM])
    while True:
        o = random_object(rng, cfg, cfg.frames)
        o.appears_at = int(rng.integers(max(1, cfg.frames // 4), cfg.frames // 2 + 1))
        _, labels = render([*objs, o], bg, o.appears_at, np.random.default_rng(0))
        if (labels == len(objs) + 1).mean() >= 0.015:
            return o


def late_clip(cfg: SynthConfig, split: str, index: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """`clip` with one more object (the highest id) that appears after frame 0."""
    objs, bg, rng = scene(cfg, split, index, cfg.frames)
    objs = [*objs, late_object(cfg, split, index, objs, bg)]
    pairs = [render(objs, bg, t, rng) for t in range(cfg.frames)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def still(cfg: SynthConfig, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """One image and its label map (the instance-segmentation stream)."""
    objs, bg, rng = scene(cfg, split, 10_000 + index, 1)
    return render(objs, bg, 0, rng)


def object_shapes(cfg: SynthConfig, split: str, index: int) -> list[str]:
    """Shape names of a still's objects (its COCO categories)."""
    objs, _, _ = scene(cfg, split, 10_000 + index, 1)
    return [o.shape for o in objs]


def as_stored(image: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """The image as the writers store it and the tasks read it back: a JPEG round trip."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return np.array(Image.open(buf).convert("RGB"))  # writable, as torch's converters expect


# -- writers ---------------------------------------------------------------------------------
def _write_clip(jpg: Path, ann: Path, frames: list[np.ndarray], labels: list[np.ndarray]) -> None:
    """`<t>.jpg` and palette `<t>.png` of every frame (names: 5 digits)."""
    from bench.data.davis import write_palette_png

    jpg.mkdir(parents=True, exist_ok=True)
    ann.mkdir(parents=True, exist_ok=True)
    for t, (img, lab) in enumerate(zip(frames, labels)):
        Image.fromarray(img).save(jpg / f"{t:05d}.jpg", quality=JPEG_QUALITY)
        write_palette_png(ann / f"{t:05d}.png", lab)


def _clip_names(cfg: SynthConfig) -> list[tuple[str, list[str]]]:
    return [(split, [f"{split}{i:04d}" for i in range(n)]) for split, n in (("train", cfg.clips_train),
                                                                           ("val", cfg.clips_val))]


def write_davis(cfg: SynthConfig, root: Path) -> None:
    sets = root / "ImageSets" / "2017"
    sets.mkdir(parents=True, exist_ok=True)
    for split, names in _clip_names(cfg):
        for i, name in enumerate(names):
            _write_clip(root / "JPEGImages" / "480p" / name, root / "Annotations" / "480p" / name, *clip(cfg, split, i))
        (sets / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))


def write_sav(cfg: SynthConfig, root: Path) -> None:
    """The davis/ clips in the SA-V layout (`clip_24fps`); object folders 000, 001, ... hold the
    modal masks (visible pixels), empty where an object is hidden or out of the frame."""
    from bench.data.davis import write_palette_png

    for split, names in _clip_names(cfg):
        for i, name in enumerate(names):
            frames, labels = clip_24fps(cfg, split, i)
            (root / "JPEGImages_24fps" / name).mkdir(parents=True, exist_ok=True)
            for k, img in enumerate(frames):
                Image.fromarray(img).save(root / "JPEGImages_24fps" / name / f"{k:05d}.jpg", quality=JPEG_QUALITY)
            for obj in range(1, int(labels[0].max()) + 1):  # every object shows in frame 0
                folder = root / "Annotations_6fps" / name / f"{obj - 1:03d}"
                for t, lab in enumerate(labels):
                    write_palette_png(folder / f"{SAV_STEP * t:05d}.png", lab == obj)
        (root / f"sav_{split}.txt").write_text("".join(f"{n}\n" for n in names))


def write_mose(cfg: SynthConfig, root: Path) -> None:
    """The davis/ clips with one late object each (`late_clip`) in the MOSE layout."""
    for split, names in _clip_names(cfg):
        folder = root / MOSE_SPLITS[split]
        for i, name in enumerate(names):
            _write_clip(folder / "JPEGImages" / name, folder / "Annotations" / name, *late_clip(cfg, split, i))


def _box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def write_coco(cfg: SynthConfig, root: Path) -> None:
    from pycocotools import mask as mask_utils

    categories = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", cfg.images_train), ("val", cfg.images_val)):
        images, anns, dets = [], [], []
        det_rng = np.random.default_rng([cfg.seed, 99, SPLIT_STREAMS[split]])
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, labels = still(cfg, split, i)
            image_id = i + 1
            file_name = f"{split}{i:06d}.jpg"
            Image.fromarray(img).save(root / "images" / split / file_name, quality=JPEG_QUALITY)
            images.append({"id": image_id, "file_name": file_name, "height": cfg.height, "width": cfg.width})
            for k, shape in enumerate(object_shapes(cfg, split, i)):
                m = labels == k + 1
                if m.sum() < 1:
                    continue
                rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                box = _box(m)
                cat = SHAPES.index(shape) + 1
                anns.append({
                    "id": len(anns) + 1, "image_id": image_id, "category_id": cat, "segmentation": rle,
                    "area": float(m.sum()), "bbox": box, "iscrowd": 0,
                })
                dets.extend(_detections(det_rng, image_id, cat, box, cfg))
        doc = {"info": {"description": f"bench synthetic v{VERSION}"}, "images": images,
               "annotations": anns, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
        if split == "val":
            (root / "detections_val.json").write_text(json.dumps(dets))


def _detections(rng: np.random.Generator, image_id: int, cat: int, box: list[float], cfg: SynthConfig) -> list[dict]:
    """A detector's view of one object: usually found with a jittered box and a high score,
    sometimes missed, sometimes with an extra low-scoring duplicate or a wrong class."""
    out = []
    if rng.uniform() < 0.05:
        return out
    x, y, w, h = box
    for dup in range(2 if rng.uniform() < 0.2 else 1):
        jitter = rng.normal(0, 0.06 + 0.06 * dup, 4) * [w, h, w, h]
        nx, ny = np.clip([x + jitter[0], y + jitter[1]], 0, [cfg.width - 2, cfg.height - 2])
        nw = float(np.clip(w + jitter[2], 2, cfg.width - nx))
        nh = float(np.clip(h + jitter[3], 2, cfg.height - ny))
        c = cat if rng.uniform() > 0.1 else int(rng.integers(1, len(SHAPES) + 1))
        score = float(np.clip(rng.normal(0.85 - 0.4 * dup, 0.1), 0.05, 0.99))
        out.append({"image_id": image_id, "category_id": c, "bbox": [float(nx), float(ny), nw, nh], "score": score})
    return out


def generate(cfg: SynthConfig, out: Path) -> None:
    """Write both sets into a temporary folder, then rename it into place: nothing is ever
    half-written, and of two processes generating the same folder, the first rename wins."""
    import os

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise BenchError(f"--out {out}: folder exists and is not empty")
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name, writer in WRITERS.items():
            writer(cfg, tmp / name)
        (tmp / "synth.json").write_text(json.dumps({"version": VERSION, **asdict(cfg)}, indent=2) + "\n")
        if out.exists() and not any(out.iterdir()):
            out.rmdir()
        tmp.rename(out)
    except OSError:
        if not (out / "synth.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


WRITERS = {"davis": write_davis, "coco": write_coco, "sav": write_sav, "mose": write_mose}


def config_of(root: Path) -> SynthConfig:
    """The settings a generated folder was written with (its synth.json)."""
    doc = json.loads((Path(root) / "synth.json").read_text())
    return SynthConfig(**{k: v for k, v in doc.items() if k in SynthConfig.__dataclass_fields__})


def add_missing(root: Path) -> None:
    """Write the sets a folder from an earlier generator lacks (sav/, mose/), with its own
    settings, each through a temporary folder and a rename; the others are left as they are."""
    import os

    root = Path(root)
    missing = [name for name in SET_DIRS if not (root / name).is_dir()]
    cfg = config_of(root) if missing else None
    for name in missing:
        tmp = root / f"{name}.partial-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            WRITERS[name](cfg, tmp)
            tmp.rename(root / name)
        except OSError:
            if not (root / name).is_dir():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def default_root() -> Path:
    """Where the synthetic sets used when no dataset is given live: `$BENCH_SYNTH`, else
    ~/.cache/sam-quant-bench/synth-v<VERSION>. Only the path (a sweep's dry run resolves it
    without writing anything); `ensure_default` writes the sets."""
    import os

    return Path(os.environ.get("BENCH_SYNTH") or Path.home() / ".cache" / "sam-quant-bench" / f"synth-v{VERSION}")


def ensure_default() -> Path:
    """`default_root()`, generated on first use (default settings); sets added to the generator
    since a folder was written are added to it (`add_missing`)."""
    import sys

    root = default_root()
    if not (root / "synth.json").is_file():
        print(f"generating the synthetic data sets into {root} (once)", file=sys.stderr)
        generate(SynthConfig(), root)
    elif any(not (root / name).is_dir() for name in SET_DIRS):
        print(f"adding the new synthetic data sets to {root} (once)", file=sys.stderr)
        add_missing(root)
    return root


def scaled(cfg: SynthConfig, scale: float) -> SynthConfig:
    n = lambda k: max(1, round(k * scale))  # noqa: E731
    return SynthConfig(**{**asdict(cfg), "clips_train": n(cfg.clips_train), "clips_val": n(cfg.clips_val),
                          "images_train": n(cfg.images_train), "images_val": n(cfg.images_val)})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Write the synthetic sets: DAVIS, COCO, SA-V and MOSE layouts.")
    p.add_argument("--out", required=True, type=Path, help="output folder (must not exist or be empty)")
    p.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiplies the number of clips and images (default 1: 16+8 clips, 32+24 images)")
    p.add_argument("--frames", type=int, default=SynthConfig.frames, help="frames per clip (default 16)")
    args = p.parse_args(argv)
    if args.scale <= 0 or args.frames < 3:
        raise SystemExit("error: --scale must be > 0 and --frames >= 3")
    cfg = scaled(SynthConfig(seed=args.seed, frames=args.frames), args.scale)
    try:
        generate(cfg, args.out)
    except BenchError as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps({"out": str(args.out), **asdict(cfg)}))


if __name__ == "__main__":
    main()
