"""`latency`: the deployed model (bench.deploy) against FP, measured, and its fidelity.

The quantized model's Linear layers go onto the integer backend for its bit configuration
(bench.deploy's default for the configuration and device; `python -m bench.benchmarks.deploy`
compares the backends); a configuration no backend runs is recorded
as `deployed: false` with the reason, not as a failure. Timed in one process, FP and deployed
alternating, median of REPEATS after a warm-up: the image encoder at the
model's resolution, one box-prompted decode on the set image, and (SAM2) one tracked video
frame of a synthetic clip (`propagate_in_video`, per frame after the prompted one). FP is the
same model with every quantizer off. Also: the peak memory of one deployed image-encoder
forward (CUDA max allocated, or on Linux the resident set's high-water mark after a reset;
`peak_mem_kind` says which), the bytes of the deployed Linear layers against their BF16 bytes and
of the whole deployed model's tensors, the backend and its version.

Fidelity (with a COCO-layout set, `coco_root`): on the instseg boxes, the deployed model's
masks against the fake-quantized model's (mean IoU over objects) and the mIoU difference;
with a video set (`davis_root`), the same per object and frame, and the J&F difference.
This checks that the fake-quant accuracy the harness reports is what the deployed model gives.
The same comparison between the fake-quantized model and itself with one-ulp noise at the
deployed layers' outputs (`noise_*`) is the floor of what float rounding alone moves.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from bench import BenchError
from bench.data.coco import CocoSet
from bench.deploy import Deployment, deploy
from bench.peak import Meter
from bench.quant.fake import FakeQuantizer
from bench.tasks import TaskContext

REPEATS = 5  # timed rounds per variant (the tracked frame: half as many clips)
CLIP_FRAMES = 4  # frames of the synthetic clip a tracked frame is timed on
NOISE_SEED = 0  # of the one-ulp noise the fidelity's noise floor is measured under


def float_model(model: nn.Module) -> nn.Module:
    """`model` with every quantizer off: the FP computation on the same weights."""
    fp = copy.deepcopy(model)
    for m in fp.modules():
        if isinstance(m, FakeQuantizer):
            m.enabled = False
    return fp


def _is_sam2(model: nn.Module) -> bool:
    return hasattr(model, "memory_attention")


def _size(model: nn.Module) -> int:
    return model.image_size if _is_sam2(model) else model.image_encoder.img_size


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _alternating(fns: dict[str, Callable[[], float | None]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each function (a function may return its own per-unit time)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()  # warm-up
    for r in range(repeats):
        names = list(fns)[r % len(fns):] + list(fns)[: r % len(fns)]
        for k in names:
            _sync(device)
            t0 = time.perf_counter()
            own = fns[k]()
            _sync(device)
            times[k].append(own if own is not None else time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _clip(work: Path, size: int, frames: int) -> Path:
    """A synthetic clip: a bright square drifting over noise, as JPEG frames."""
    folder = work / "latency_clip"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for t in range(frames):
        img = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
        o = size // 4 + t * size // 32
        img[o : o + size // 4, o : o + size // 4] = 230
        Image.fromarray(img).save(folder / f"{t:05d}.jpg", quality=95)
    return folder


def _track(model: nn.Module, folder: Path, size: int) -> float:
    """Seconds per tracked frame after the prompted one."""
    state = model.init_state(str(folder))
    mask = np.zeros((size, size), bool)
    mask[size // 4 : size // 2, size // 4 : size // 2] = True
    model.add_new_mask(state, frame_idx=0, obj_id=1, mask=mask)
    stamps = [time.perf_counter() for _ in model.propagate_in_video(state)]
    model.reset_state(state)
    return (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)


def _no_value(_output: object) -> None:
    return None


def timings(fp: nn.Module, dep: nn.Module, ctx: TaskContext) -> dict:
    from bench.models import image_predictor

    device = next(dep.parameters()).device
    size, repeats = _size(dep), REPEATS
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    image = (np.random.default_rng(0).random((size, size, 3)) * 255).astype(np.uint8)
    box = np.array([[size * 0.25, size * 0.25, size * 0.6, size * 0.7]], np.float32)
    out = {}
    with torch.inference_mode():
        med = _alternating({k: (lambda m=m: _no_value(m.image_encoder(x))) for k, m in (("fp", fp), ("deployed", dep))},
                           repeats, device)
        out.update(image_encoder_ms_fp=1e3 * med["fp"], image_encoder_ms=1e3 * med["deployed"])
        preds = {"fp": image_predictor(fp), "deployed": image_predictor(dep)}
        for p in preds.values():
            p.set_image(image)
        med = _alternating({k: (lambda p=p: _no_value(p.predict(box=box, multimask_output=False)))
                            for k, p in preds.items()}, repeats, device)
        out.update(decode_ms_fp=1e3 * med["fp"], decode_ms=1e3 * med["deployed"])
        if _is_sam2(dep):
            folder = _clip(ctx.work_dir, size, CLIP_FRAMES)
            med = _alternating({"fp": lambda: _track(fp, folder, size), "deployed": lambda: _track(dep, folder, size)},
                               max(1, repeats // 2), device)
            out.update(track_frame_ms_fp=1e3 * med["fp"], track_frame_ms=1e3 * med["deployed"])
    for k in ("image_encoder", "decode", "track_frame"):
        if f"{k}_ms" in out:
            out[f"{k}_speedup"] = out[f"{k}_ms_fp"] / out[f"{k}_ms"]
    with torch.inference_mode():
        out.update(_peak(lambda: dep.image_encoder(x), device))
    return out


def _peak(fn: Callable[[], object], device: torch.device) -> dict:
    """Peak memory (MiB) while `fn` runs (bench.peak; none off Linux on CPU)."""
    try:
        meter = Meter(device)
    except BenchError:
        return {}
    row: dict = {}
    with meter.measure(row):
        fn()
    return {"peak_mem_mb": row["peak"] / 2**20,
            "peak_mem_kind": "cuda_max_allocated" if device.type == "cuda" else "cpu_vm_hwm"}


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@contextlib.contextmanager
def ulp_noise(model: nn.Module, names: list[str], seed: int = NOISE_SEED) -> Iterator[None]:
    """Each named module's output moved by one float unit in the last place, up or down at
    random: rounding-level noise at the layers a deployment replaces."""
    gen = torch.Generator().manual_seed(seed)

    def hook(_module: nn.Module, _inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        up = torch.rand(out.shape, generator=gen) < 0.5
        return torch.nextafter(out, torch.where(up.to(out.device), torch.inf, -torch.inf).to(out.dtype))

    handles = [model.get_submodule(n).register_forward_hook(hook) for n in names]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _outputs(model: nn.Module, ctx: TaskContext, tag: str, coco: CocoSet | None) -> dict:
    """The model's instseg masks and mIoU on `coco` (the instseg set, read once), and its VOS
    prediction folder and J&F (with a video set)."""
    from bench.tasks import instseg, vos

    opts = {**ctx.options, "progress": False}
    out = {}
    if coco is not None:
        preds = list(instseg.predictions(model, TaskContext(ctx.model_name, ctx.device, ctx.work_dir, opts), coco))
        out["instseg"] = ([m for _, m in preds], instseg.score(coco, preds)["mIoU"])
    if opts.get("davis_root") and _is_sam2(model):
        work = ctx.work_dir / f"fidelity_{tag}"
        work.mkdir(parents=True, exist_ok=True)
        jf = vos.run(model, TaskContext(ctx.model_name, ctx.device, work, opts))["J&F"]
        out["vos"] = (work / "vos_predictions", jf)
    return out


def _agreement(a: dict, b: dict, prefix: str) -> dict:
    """Mask IoU between two models' outputs (mean over instseg objects; over VOS objects and
    frames) and the metric differences b - a."""
    out = {}
    if "instseg" in a:
        ious = [_mask_iou(ma, mb) for ma, mb in zip(a["instseg"][0], b["instseg"][0])]
        out[f"{prefix}_instseg_mask_iou"] = float(np.mean(ious)) if ious else None
        out[f"{prefix}_delta_mIoU"] = b["instseg"][1] - a["instseg"][1]
    if "vos" in a:
        ious = []
        for png in sorted(a["vos"][0].rglob("*.png")):
            la = np.array(Image.open(png))
            lb = np.array(Image.open(b["vos"][0] / png.relative_to(a["vos"][0])))
            ious += [_mask_iou(la == i, lb == i) for i in np.union1d(np.unique(la), np.unique(lb)) if i]
        out[f"{prefix}_vos_mask_iou"] = float(np.mean(ious)) if ious else None
        out[f"{prefix}_delta_J&F"] = b["vos"][1] - a["vos"][1]
    return out


def fidelity(fake: nn.Module, dep: Deployment, ctx: TaskContext) -> dict:
    """Deployed vs fake-quantized on the task data, and the noise floor of that comparison: the
    fake-quantized model against itself with one-ulp noise at the deployed layers' outputs
    (`noise_*`). A deployed layer differs from its fake-quantized one by float rounding, which
    can move a later activation's code by one; where tracking amplifies that, the noise floor
    shows how far two equally valid roundings of the same model disagree."""
    from bench.tasks import instseg

    coco = instseg.dataset(ctx) if ctx.options.get("coco_root") else None
    ref = _outputs(fake, ctx, "fake", coco)
    out = _agreement(ref, _outputs(dep.model, ctx, "deployed", coco), "fidelity")
    with ulp_noise(fake, dep.converted):
        out.update(_agreement(ref, _outputs(fake, ctx, "fake_ulp", coco), "noise"))
    return out


def run(model: nn.Module, ctx: TaskContext) -> dict:
    dep: Deployment = deploy(model)
    if dep.model is None:
        reasons = sorted(set(dep.left.values()))
        return {"deployed": False, "backend": dep.backend, "no_backend": "; ".join(reasons) or "nothing quantized"}
    model.eval()
    dep.model.eval()
    out = {"deployed": True, **dep.info()}
    out["deployed_model_bytes"] = out["deployed_linear_bytes"] + sum(
        t.numel() * t.element_size() for n, t in dep.model.state_dict().items()
        if n.rpartition(".")[0] not in dep.converted)
    out.update(timings(float_model(model), dep.model, ctx))
    out.update(fidelity(model, dep, ctx))
    return out
