"""Train the built-in models on the synthetic train stream: `micro` (SAM2) and `sam-micro`
(SAM v1, images only).

    python -m bench.train_micro --out bench/assets/sam2_micro.pt [--steps 9000] [--seed 0]
        [--processes 2] [--half]
    python -m bench.train_micro --model sam-micro --out bench/assets/sam_micro.pt ...

(each shipped checkpoint's meta holds its exact command).

sam-micro trains on image steps only (SAM has no memory), through SAM's own input path and
heads (`sam_image_loss`): the same prompts and mask losses as micro's image steps, with SAM's
box (single mask) and click (three masks) outputs.

The same SAM2 architecture and forward code as the official models (`SAM2Base.track_step`);
the recipe is a small version of SAM2's own training:
  - video steps: a clip of `--clip-frames` frames; frame 0 gets every object's GT mask as a
    mask prompt (as VOS evaluation does), the other frames are tracked from memory; losses on
    the tracked frames;
  - image steps: one still, each object prompted by `--prompts` jittered GT boxes (single mask)
    and by `--clicks` single positive clicks (three masks, the loss on the best, as SAM trains
    ambiguity); a still is not encoded into memory (nothing reads it);
  - losses: SAM2's, except that the mask term is BCE (1) + dice (1) by default instead of
    focal (20) + dice (1) (`--mask-loss focal` for SAM2's): from random initialization the
    focal loss drove this model to empty masks in our runs. On the best mask of a multimask
    output; L1 between predicted and true IoU (1); object-presence BCE (1); mask terms only
    where the object is present;
  - AdamW, linear warm-up then cosine decay, gradient clipping;
  - `--processes N`: N data-parallel processes (torch.distributed, gloo), one sample each per
    step, gradients averaged (a batch of N). Every process takes a step of the same kind, so
    none waits on a longer one. A parameter that no process's sample reached (the memory
    modules in an image step) is not updated, as in one process (its gradient is None);
    stepping it on Adam's momentum and weight decay multiplies the memory modules' effective
    learning rate, and tracking then did not form at --lr 1e-3. On a 2-core CPU, 2 processes
    of 1 thread train twice the samples of one process in the same time (one process with 2
    threads is slower than with 1: this model's operations are too small to split).
Data are drawn on the fly from the generator's train stream (`bench.data.synth`, a seed
stream disjoint from val), so no file is read. The tasks read the written sets, whose frames
and images are JPEGs (quality 95); `--jpeg-quality 95` trains on the same round trip (a model
trained on the rendered pixels meets JPEG artifacts only at evaluation).
The checkpoint is saved as {"model": state dict} (float16 with `--half`) with the command,
seed, data version, minutes and final training loss in "meta".
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bench.data import synth
from bench.models import MODELS, build_model, model_entry
from bench.sam2_train import features, mask_losses, to_input, to_masks, track
from bench.sam_predictor import OBJECT_LOGIT, is_sam, sam_input, sam_masks

BUILTIN = [name for name, entry in MODELS.items() if entry.builtin]


# -- losses of one training step ----------------------------------------------------------------
def video_loss(model: nn.Module, frames: list[np.ndarray], labels: list[np.ndarray], k: int,
               kind: str = "bce") -> torch.Tensor:
    size = model.image_size
    x, masks = to_input(frames, size), to_masks(labels, k, size)
    feats, pos, sizes = features(model, x)
    out = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    total = x.new_zeros(())
    for t in range(len(frames)):
        prompt = masks[0][:, None] if t == 0 else None
        current, multi, ious, obj = track(model, t, t == 0, feats, pos, sizes, k, out, len(frames), mask_inputs=prompt,
                                          memory=t < len(frames) - 1)
        out["cond_frame_outputs" if t == 0 else "non_cond_frame_outputs"][t] = current
        if t > 0:
            total = total + mask_losses(multi, ious, obj, masks[t], kind)
    return total / (len(frames) - 1)


def prompt_counts(prompts: int, clicks: int | None) -> int:
    """The click count (`clicks`, or `prompts` when unset); ValueError unless both are >= 0
    and not both 0."""
    clicks = prompts if clicks is None else clicks
    if min(prompts, clicks) < 0 or prompts + clicks == 0:
        raise ValueError(f"--prompts and --clicks must be >= 0, and not both 0 (got {prompts}, {clicks})")
    return clicks


def sample_prompts(masks: torch.Tensor, rng: np.random.Generator, prompts: int, clicks: int):
    """Per object of `masks` (k, H, W): `prompts` jittered boxes ([[x0, y0], [x1, y1]], noise
    5% of the box size per corner coordinate) and `clicks` single positive clicks (pixel
    centres), in the masks' pixel frame; returns (boxes, box objects, clicks, click objects)."""
    boxes, points, box_obj, point_obj = [], [], [], []
    for o, m in enumerate(masks):
        ys, xs = torch.nonzero(m > 0.5, as_tuple=True)
        x0, y0, x1, y1 = xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1
        w, h = x1 - x0, y1 - y0
        for p in range(max(prompts, clicks)):  # drawn interleaved: --clicks = --prompts keeps old streams
            if p < prompts:
                j = rng.normal(0, 0.05, 4) * [w, h, w, h]
                boxes.append([[x0 + j[0], y0 + j[1]], [x1 + j[2], y1 + j[3]]])
                box_obj.append(o)
            if p < clicks:
                i = rng.integers(len(xs))
                points.append([[xs[i].item() + 0.5, ys[i].item() + 0.5]])
                point_obj.append(o)
    return boxes, box_obj, points, point_obj


def image_loss(model: nn.Module, image: np.ndarray, labels: np.ndarray, k: int, rng: np.random.Generator,
               prompts: int = 1, kind: str = "bce", clicks: int | None = None) -> torch.Tensor:
    """Box and click prompts on one still: `prompts` jittered boxes and `clicks` (default:
    `prompts`) single positive clicks per object, each kind decoded as one batch against the
    image's features (computed once); the loss is the mean of the two kinds' losses."""
    if is_sam(model):
        return sam_image_loss(model, image, labels, k, rng, prompts, kind, clicks)
    size = model.image_size
    x, masks = to_input([image], size), to_masks([labels], k, size)[0]
    feats, pos, sizes = features(model, x)
    boxes, box_obj, points, point_obj = sample_prompts(masks, rng, prompts, prompt_counts(prompts, clicks))
    total, kinds = x.new_zeros(()), 0
    for coords, label, objs in ((boxes, [2, 3], box_obj), (points, [1], point_obj)):
        if not coords:
            continue
        n = len(coords)
        inputs = {
            "point_coords": torch.tensor(coords, dtype=torch.float32),
            "point_labels": torch.tensor([label] * n, dtype=torch.int32),
        }
        out = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        _, multi, ious, obj = track(model, 0, True, feats, pos, sizes, n, out, 1, point_inputs=inputs, memory=False)
        total, kinds = total + mask_losses(multi, ious, obj, masks[objs], kind), kinds + 1
    return total / kinds


def sam_image_loss(model: nn.Module, image: np.ndarray, labels: np.ndarray, k: int, rng: np.random.Generator,
                   prompts: int = 1, kind: str = "bce", clicks: int | None = None) -> torch.Tensor:
    """`image_loss` for a SAM (v1) model, through SAM's own input path (`SamPredictor`: longest
    side resized to the input size, padded): boxes decode one mask, clicks three (the loss on
    the best, as SAM trains ambiguity). SAM has no object-score head: its constant logit
    (`OBJECT_LOGIT`) gives the object term no gradient."""
    size = model.image_encoder.img_size
    x, transform = sam_input(model, image)
    objects = np.stack([labels == i + 1 for i in range(k)])
    masks = sam_masks(objects, transform, size)
    boxes, box_obj, points, point_obj = sample_prompts(torch.from_numpy(objects), rng, prompts,
                                                       prompt_counts(prompts, clicks))
    emb = model.image_encoder(x)
    pe = model.prompt_encoder.get_dense_pe()
    total, kinds = x.new_zeros(()), 0
    for coords, objs, multimask in ((boxes, box_obj, False), (points, point_obj, True)):
        if not coords:
            continue
        xy = torch.as_tensor(transform.apply_coords(np.asarray(coords, dtype=np.float32), image.shape[:2]))
        if multimask:
            prompt = {"points": (xy, torch.ones(len(xy), 1, dtype=torch.int)), "boxes": None}
        else:
            prompt = {"points": None, "boxes": xy.reshape(-1, 4)}
        sparse, dense = model.prompt_encoder(masks=None, **prompt)
        low, ious = model.mask_decoder(image_embeddings=emb, image_pe=pe, sparse_prompt_embeddings=sparse,
                                       dense_prompt_embeddings=dense, multimask_output=multimask)
        obj = low.new_full((len(low), 1), OBJECT_LOGIT)
        total, kinds = total + mask_losses(low, ious, obj, masks[objs], kind), kinds + 1
    return total / kinds


# -- data stream -------------------------------------------------------------------------------
def sample_clip(cfg: synth.SynthConfig, index: int, frames: int, rng: np.random.Generator):
    """A random window of `frames` frames (stride 1 or 2) from a train-stream clip; objects
    are those visible in the window's first frame, renumbered 1..k."""
    stride = int(rng.integers(1, 3))
    start = int(rng.integers(0, cfg.frames - (frames - 1) * stride))
    sel = range(start, start + frames * stride, stride)
    imgs, labs = synth.clip(cfg, "train", index, upto=sel[-1] + 1)  # no frame after the window
    imgs, labs = [imgs[i] for i in sel], [labs[i] for i in sel]
    ids = [i for i in np.unique(labs[0]) if i != 0 and (labs[0] == i).sum() >= 64]
    remap = np.zeros(256, np.uint8)
    remap[ids] = np.arange(1, len(ids) + 1)
    return imgs, [remap[lab] for lab in labs], len(ids)


@torch.inference_mode()
def quick_val(model: nn.Module, cfg: synth.SynthConfig, clips: int = 4, stills: int = 8) -> dict[str, float]:
    """Progress figures on the val stream through the evaluation code paths (video predictor
    from frame-0 masks; image predictor from GT boxes): mean IoU over objects (scored frames
    1..T-2; not for SAM, which has no video path) and mean box-prompt IoU. The real metrics
    come from the `vos` and `instseg` tasks."""
    import tempfile

    from PIL import Image

    from bench.models import image_predictor

    was_training = model.training
    model.eval()
    ious = []
    for i in range(0 if is_sam(model) else clips):
        frames, labels = synth.clip(cfg, "val", i)
        with tempfile.TemporaryDirectory() as tmp:
            for t, f in enumerate(frames):
                Image.fromarray(f).save(Path(tmp) / f"{t:05d}.jpg", quality=synth.JPEG_QUALITY)
            state = model.init_state(tmp)
            ids = [int(j) for j in np.unique(labels[0]) if j]
            for j in ids:
                model.add_new_mask(state, frame_idx=0, obj_id=j, mask=labels[0] == j)
            for t, obj_ids, logits in model.propagate_in_video(state):
                if 0 < t < len(frames) - 1:
                    for j, m in zip(obj_ids, (logits[:, 0] > 0).numpy()):
                        ious.append(_iou(m, labels[t] == j))
    pred = image_predictor(model)
    box_ious = []
    for i in range(stills):
        image, labels = synth.still(cfg, "val", i)
        pred.set_image(synth.as_stored(image))  # as the instseg task reads the written set
        for j in range(1, int(labels.max()) + 1):
            ys, xs = np.nonzero(labels == j)
            box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)
            masks, _, _ = pred.predict(box=box, multimask_output=False)
            box_ious.append(_iou(masks[0] > 0, labels == j))
    model.train(was_training)
    out = {"vos_iou": 100 * float(np.mean(ious))} if ious else {}
    return out | {"box_iou": 100 * float(np.mean(box_ious))}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def lr_at(step: int, steps: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


class FlatGrads:
    """The gradients of `params` as views into one flat buffer, for data-parallel averaging:
    backward accumulates straight into the buffer, so one all_reduce averages every gradient,
    no copies. Leading slots carry the loss, the count of contributing ranks and, per
    parameter, the count of ranks whose backward reached it: a parameter that no rank's
    sample reached (the memory modules in an image step) gets no gradient (None), so the
    optimizer leaves it alone, as in a single process, instead of moving it on Adam's
    momentum and weight decay."""

    def __init__(self, params: list[nn.Parameter]):
        self.params = params
        n = len(params)
        self.flat = torch.zeros(2 + n + sum(p.numel() for p in params))
        self.used, self.grads = self.flat[2 : 2 + n], self.flat[2 + n :]
        self.views, offset = [], 0
        for i, p in enumerate(params):
            self.views.append(self.grads[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
            p.register_post_accumulate_grad_hook(self._mark(i))

    def _mark(self, i: int):
        def hook(_: torch.Tensor) -> None:
            self.used[i] = 1.0

        return hook

    def zero(self) -> None:
        """Zero gradients (instead of the optimizer's zero_grad) and point every parameter's
        gradient at its view again (all_reduce sets those no rank reached to None)."""
        self.flat.zero_()
        for p, v in zip(self.params, self.views):
            p.grad = v

    def all_reduce(self, loss: torch.Tensor | None) -> tuple[float, int]:
        """Average the gradients over the data-parallel processes (a rank whose sample had
        nothing to learn contributes none) and return (mean loss, contributing ranks)."""
        import torch.distributed as dist

        if any(p.grad is not v for p, v in zip(self.params, self.views)):
            raise RuntimeError("a gradient was replaced instead of accumulated into the flat buffer")
        if loss is not None:
            self.flat[0], self.flat[1] = loss.item(), 1.0
        dist.all_reduce(self.flat)
        n = int(self.flat[1].item())
        if n:
            self.grads /= n
        for p, used in zip(self.params, self.used.tolist()):
            if not used:
                p.grad = None
        return self.flat[0].item() / max(n, 1), n


def train(args: argparse.Namespace, rank: int = 0, world: int = 1) -> dict:
    """Train on one process (`world` 1) or as rank `rank` of `world` data-parallel processes:
    every rank takes a step of the same kind (image or video, so no rank waits on a longer
    one) on its own samples, and the gradients are averaged before each optimizer step."""
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    kinds = np.random.default_rng(args.seed)  # step kinds: the same on every rank
    rng = np.random.default_rng([args.seed, rank]) if world > 1 else kinds  # samples: per rank
    model = build_model(args.model, random_init=True, device="cpu", seed=args.seed)
    if args.init is not None:  # continue from an earlier checkpoint of this script
        from bench.models import load_state, model_entry

        entry = model_entry(args.model)
        model.load_state_dict(load_state(args.init, f"a {args.model} checkpoint written by bench.train_micro",
                                         entry.family, entry.builtin))
    if world > 1:
        torch.manual_seed(args.seed * 1000 + rank)  # dropout differs per rank, the weights do not
    model.train()
    cfg = replace(synth.SynthConfig(seed=args.data_seed), frames=16)
    try:  # the fused kernel: one pass over all parameters, ~10 ms a step less on CPU than the loop
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05, fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    grads = FlatGrads(list(model.parameters())) if world > 1 else None
    ema = None
    t0 = time.time()
    bar = tqdm(range(args.steps), desc=f"train {args.model}", file=sys.stderr, mininterval=5, disable=rank != 0)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        if grads is not None:
            grads.zero()
        else:
            opt.zero_grad(set_to_none=True)
        if step >= args.image_steps and kinds.uniform() < args.video_fraction:
            frames, labels, k = sample_clip(cfg, int(rng.integers(1 << 30)), args.clip_frames, rng)
            if args.jpeg_quality:
                frames = [synth.as_stored(f, args.jpeg_quality) for f in frames]
            loss = video_loss(model, frames, labels, k, args.mask_loss) if k else None
        else:
            image, labels = synth.still(cfg, "train", int(rng.integers(1 << 30)))
            if args.jpeg_quality:
                image = synth.as_stored(image, args.jpeg_quality)
            k = int(labels.max())  # every object of a still is visible (synth.scene)
            loss = image_loss(model, image, labels, k, rng, prompts=args.prompts, kind=args.mask_loss,
                              clicks=args.clicks)
        if loss is not None:
            loss.backward()
        if grads is not None:
            value, n = grads.all_reduce(loss)
        else:
            value, n = (0.0, 0) if loss is None else (loss.item(), 1)
        if not n:
            continue
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        ema = value if ema is None else 0.98 * ema + 0.02 * value
        bar.set_postfix(loss=f"{ema:.3f}", refresh=False)
        if rank == 0 and args.eval_every and (step + 1) % args.eval_every == 0:
            tqdm.write(f"step {step + 1}: loss {ema:.4f} " + " ".join(
                f"{k} {v:.1f}" for k, v in quick_val(model, replace(cfg, frames=16)).items()), file=sys.stderr)
    model.eval()
    if world > 1:  # every rank took the same optimizer steps from the same weights
        import torch.distributed as dist

        sums = torch.stack([p.detach().double().sum() for p in model.parameters()])
        first = sums.clone()
        dist.broadcast(first, 0)
        if not torch.equal(sums, first):
            raise RuntimeError(f"data-parallel rank {rank} ended with other weights than rank 0")
    return {"model": model, "final_loss": ema, "minutes": (time.time() - t0) / 60, "data": asdict(cfg)}


def _worker(rank: int, args: argparse.Namespace, init_file: str, command: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=args.processes)
    try:
        result = train(args, rank, args.processes)
        if rank == 0:
            save(args, command, result)
    finally:
        dist.destroy_process_group()


def save(args: argparse.Namespace, command: str, result: dict) -> None:
    meta = {
        "command": command,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "data_version": synth.VERSION, "data": result["data"],
        "final_loss": result["final_loss"], "train_minutes": round(result["minutes"], 1),
        "torch": str(torch.__version__),
    }
    if args.half:
        meta["storage"] = "float16 (trained in float32, stored at half precision to keep the file small)"
    state = {k: (v.half() if args.half and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in result["model"].state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    torch.save({"model": state, "meta": meta}, tmp)
    tmp.replace(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) after {meta['train_minutes']} min, "
          f"final loss {meta['final_loss']:.4f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train a built-in model (micro SAM2, sam-micro SAM) on the synthetic "
                                            "train stream (CPU or GPU).")
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    p.add_argument("--model", choices=BUILTIN, default="micro", help="the built-in model to train (micro)")
    p.add_argument("--steps", type=int, default=9000, help="optimizer steps, video or image (9000)")
    p.add_argument("--seed", type=int, default=0, help="model init and sampling seed (0)")
    p.add_argument("--init", type=Path, default=None, help="start from this checkpoint instead of random weights")
    p.add_argument("--data-seed", type=int, default=0, help="synthetic data seed (0, as the shipped sets)")
    p.add_argument("--video-fraction", type=float, default=None,
                   help="share of video steps, the rest image (0.5; SAM models have no video path: 0)")
    p.add_argument("--image-steps", type=int, default=0,
                   help="image-only steps first (box/click prompts), then the video/image mix (0)")
    p.add_argument("--prompts", type=int, default=1, help="jittered boxes per object in image steps (1)")
    p.add_argument("--clicks", type=int, default=None,
                   help="positive clicks per object in image steps (default: as --prompts)")
    p.add_argument("--jpeg-quality", type=int, default=0,
                   help="train on frames and stills sent through JPEG at this quality, as the written sets "
                        f"store them ({synth.JPEG_QUALITY}); 0: the rendered pixels (default)")
    p.add_argument("--clip-frames", type=int, default=6, help="frames per training clip (6)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (1e-3)")
    p.add_argument("--warmup", type=int, default=100, help="warm-up steps (100)")
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clip (1.0)")
    p.add_argument("--mask-loss", choices=("bce", "focal"), default="bce",
                   help="mask loss with dice: bce (default) or SAM2's focal x20")
    p.add_argument("--eval-every", type=int, default=0, help="quick val figures every N steps (0: off)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per process (default 1: faster than 2 for this small model on CPU)")
    p.add_argument("--half", action="store_true", help="store the weights at float16 (half the file size)")
    p.add_argument("--processes", type=int, default=1,
                   help="data-parallel processes (default 1); each takes its own sample per step and the "
                        "gradients are averaged, so N processes on N cores train N samples per step")
    args = p.parse_args(argv)
    if args.processes < 1 or args.threads < 1:
        raise SystemExit("error: --processes and --threads must be >= 1")
    try:
        prompt_counts(args.prompts, args.clicks)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    family = model_entry(args.model).family
    if args.video_fraction is None:
        args.video_fraction = 0.5 if family == "sam2" else 0.0
    if family == "sam" and args.video_fraction > 0:
        raise SystemExit(f"error: --video-fraction: {args.model} is a SAM model (no video path); use 0")
    if not 0 <= args.jpeg_quality <= 100:
        raise SystemExit("error: --jpeg-quality must be in 0..100 (0: off)")
    command = "python -m bench.train_micro " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.processes == 1:
        torch.set_num_threads(args.threads)
        save(args, command, train(args))
        return
    import signal
    import tempfile

    import torch.multiprocessing as mp

    # stopping this process (SIGTERM, Ctrl-C) stops the workers too: they would otherwise
    # train on, and rank 0 would still write the checkpoint
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    with tempfile.TemporaryDirectory() as tmp:
        workers = mp.start_processes(_worker, args=(args, str(Path(tmp) / "init"), command),
                                     nprocs=args.processes, join=False, start_method="spawn")
        try:
            while not workers.join():
                pass
        finally:
            for w in workers.processes:
                if w.is_alive():
                    w.terminate()
                w.join()


if __name__ == "__main__":
    main()
