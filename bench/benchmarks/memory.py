"""Peak memory and time of the costly steps of a cell, on random weights at the model's real
resolution: one FP training step and one QAT step of each QAT method (an image sample and a
video window apart), one reconstruction unit of PTQ4SAM-L and of SAQ-SAM (the first unit in
model order: the image encoder's highest-resolution one), and one evaluation frame.

    python -m bench.benchmarks.memory --model sam2.1-t [--device cpu|cuda] [--bits 4]
        [--recompute auto|off|attention|blocks|all] [--compare-recompute] [--methods lsq,pact,qsam2]
        [--recon ptq4sam-L,saqsam] [--skip fp,fp-off,video,eval] [--malloc mapped|default]

Peak memory: on CPU the process's resident set (VmHWM, reset before each step; freed heap is
returned to the system first, so the figure is what the step needs on top of what is live;
large allocations mapped apart as in training, `--malloc default` for glibc's own rule), on
CUDA `max_memory_allocated`. Each row prints the peak, the rise over the memory live
before the step, and the time. Where the memory goes: the bytes of the weights, of the
optimizer state and gradients, of the FP teacher's outputs for the sample, and the tensors
the forward pass saves for backward, by where they are saved (inside a quantizer, inside
attention, elsewhere in the image encoder, elsewhere). Data: the synthetic calibration set
(`--calib-n` images and frames), resized to the model's input like real data.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from bench import BenchError
from bench.calib import CalibData
from bench.method import Method
from bench.models import MODELS, build_model
from bench.peak import Meter, map_large_allocations
from bench.qat import (
    RECOMPUTE,
    QATConfig,
    forward,
    make_optimizer,
    recomputation,
    recompute_mode,
    teacher_outputs,
    train_step,
)
from bench.qat_samples import ImageSample, model_samples
from bench.quant.attention import QuantAttentionMixin
from bench.quant.fake import FakeQuantizer
from bench.quant.learned import learned_quantizers
from bench.quant.recompute import recomputing
from bench.recon import tensor_bytes

QAT_METHODS = ("lsq", "pact", "qsam2")
RECON = {"ptq4sam-L": ("ptq4sam", {"recon": True}), "saqsam": ("saqsam", {})}  # parts by label
GiB = 2**30


class SavedTally:
    """Bytes of the tensors the forward pass saves for backward (each storage once), by the
    innermost module running when it is saved; and, on CPU, where the step's resident memory
    peaks (`peak_at`): a thread samples it every 2 ms and keeps, at the highest sample, whether
    the step was in its forward pass or in backward (recomputing, or not), and the module that
    was last entered or left (quantizers aside). Backward runs no module hooks except in
    recomputation, which may stop part-way through a module: hence the last event, not a stack."""

    def __init__(self, model: nn.Module, sample_rss: bool = False) -> None:
        self.model, self.bytes, self.stack, self.seen = model, Counter(), [], set()
        self.names = {id(m): name or type(m).__name__ for name, m in model.named_modules()}
        self.sample_rss, self.backward, self.event, self.peak_at = sample_rss, False, None, None
        encoder = {id(m) for m in model.image_encoder.modules()}
        self.kind = {id(m): ("quantizers" if isinstance(m, FakeQuantizer) else
                             "attention" if isinstance(m, QuantAttentionMixin) or "Attention" in type(m).__name__ else
                             "image encoder" if id(m) in encoder else "decoder, memory, prompts")
                     for m in model.modules()}

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in self.seen:
            self.seen.add(storage.data_ptr())
            kinds = [self.kind.get(id(m)) for m in self.stack]
            kind = next((k for k in ("quantizers", "attention") if k in kinds), kinds[-1] if kinds else "loss")
            self.bytes[kind] += storage.nbytes()
        return t

    def _unpack(self, t: torch.Tensor) -> torch.Tensor:
        self.backward = True
        return t

    def place(self) -> str:
        """Where the step is now (see the class docstring)."""
        phase = "backward, recomputing" if recomputing() else "backward" if self.backward else "forward"
        if self.event is None:
            return phase
        what, mod = self.event
        return f"{phase}: {what} {self.names[id(mod)]}"

    def _sample(self, stop: threading.Event) -> None:
        page, best = os.sysconf("SC_PAGE_SIZE"), 0
        with open("/proc/self/statm") as f:
            while not stop.wait(0.002):
                f.seek(0)
                rss = int(f.read().split()[1]) * page
                if rss > best:
                    best, self.peak_at = rss, self.place()

    @contextlib.contextmanager
    def __call__(self):
        def enter(mod, _inputs) -> None:
            self.stack.append(mod)
            if not isinstance(mod, FakeQuantizer):
                self.event = ("in", mod)

        def leave(mod, _inputs, _output) -> None:  # a hook's return value would replace the output
            self.stack.pop()
            if not isinstance(mod, FakeQuantizer):
                self.event = ("after", mod)

        hooks = []
        for m in self.model.modules():
            hooks += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
        stop = threading.Event()
        sampler = threading.Thread(target=self._sample, args=(stop,), daemon=True) if self.sample_rss else None
        if sampler:
            sampler.start()
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
                yield
        finally:
            stop.set()
            if sampler:
                sampler.join()
            for h in hooks:
                h.remove()


def _train_row(label: str, model: nn.Module, cfg: QATConfig, sample, ref, meter: Meter, mode: str,
               reg: Callable | None = None) -> dict:
    """One training step of `model` on one sample, measured."""
    model.eval()
    opt, clip_sets = make_optimizer(model, cfg)
    for q in learned_quantizers(model).values():
        q.train()
    tally = SavedTally(model, sample_rss=meter.device.type == "cpu")
    row = {"row": label, "recompute": mode}
    with meter.measure(row), recomputation(model, mode), tally():
        train_step(model, [(sample, ref)], cfg, opt, clip_sets, reg)
    row["peak_at"] = tally.peak_at
    row["weights"] = sum(tensor_bytes(p) for p in model.parameters()) + sum(tensor_bytes(b) for b in model.buffers())
    state = opt.state.values() if opt else []
    row["optimizer+grads"] = sum(tensor_bytes(list(s.values())) for s in state) + sum(
        tensor_bytes(p.grad) for p in model.parameters() if p.grad is not None)
    row["teacher"] = tensor_bytes(ref)
    row["saved"] = dict(tally.bytes)
    if opt:
        opt.zero_grad(set_to_none=True)
    return row


def _gib(v: float) -> str:
    return f"{v / GiB:.2f}"


HEADER = ("| step | recompute | peak GiB | rise GiB | time s | weights | opt+grads | teacher | saved: quantizers | "
          "attention | image encoder | rest | peak during (CPU) |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")


def row_line(r: dict) -> str:
    """One table row (GiB = 2^30 bytes)."""
    saved = r.get("saved", {})
    rest = sum(v for k, v in saved.items() if k not in ("quantizers", "attention", "image encoder"))
    cells = [r["row"], r.get("recompute", "-"), _gib(r["peak"]), _gib(r["peak"] - r["live"]), f"{r['s']:.1f}"]
    cells += [_gib(r[k]) if k in r else "-" for k in ("weights", "optimizer+grads", "teacher")]
    if saved:
        cells += [_gib(saved.get(k, 0)) for k in ("quantizers", "attention", "image encoder")] + [_gib(rest)]
    else:
        cells += ["-"] * 4
    cells.append(r.get("peak_at") or "-")
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="sam2.1-t", choices=sorted(MODELS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--bits", type=int, default=4, help="weight and activation bits (4)")
    p.add_argument("--calib-n", type=int, default=2, help="calibration images and frames (2)")
    p.add_argument("--clip-frames", type=int, default=QATConfig.clip_frames, help="frames of a video window")
    p.add_argument("--recompute", default="auto", choices=RECOMPUTE, help="the QAT steps' recomputation")
    p.add_argument("--compare-recompute", action="store_true",
                   help="also LSQ's image step under every recompute mode")
    p.add_argument("--methods", default=",".join(QAT_METHODS), help="QAT methods (comma-separated; '' for none)")
    p.add_argument("--recon", default=",".join(RECON), help="reconstruction parts (comma-separated; '' for none)")
    p.add_argument("--skip", default="",
                   help="comma-separated: fp, fp-off (FP without recomputation: the largest), video, eval")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--malloc", default=os.environ.get("BENCH_MALLOC", "mapped"), choices=("mapped", "default"),
                   help="CPU: mapped, large allocations mapped apart at the real resolution as in training "
                        "(bench.peak.map_large_allocations); default, glibc's own threshold (BENCH_MALLOC=default)")
    p.add_argument("--part", help=argparse.SUPPRESS)  # internal: one part, rows as JSON lines
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    try:
        run(args, argv)
    except BenchError as e:
        sys.exit(f"error: {e}")


def run(args: argparse.Namespace, argv: list[str]) -> None:
    """Each part (FP, each QAT method, each reconstruction method) in a fresh process, so no
    part's peak carries memory the allocator kept from an earlier one."""
    if args.part:
        return run_part(args)
    skip = set(filter(None, args.skip.split(",")))
    recon = [r for r in args.recon.split(",") if r]
    for r in recon:
        if r not in RECON:
            raise BenchError(f"--recon: unknown part {r!r}; known: {', '.join(RECON)}")
    parts = [*([] if "fp" in skip else ["fp"]), *filter(None, args.methods.split(",")), *recon]
    print(f"Memory and time, {args.model} (random weights) at its input size, {args.device}, "
          f"{args.threads or 'default'} thread(s), torch {torch.__version__}; a video window = {args.clip_frames} "
          f"frames; each part in its own process; GiB = 2^30 bytes"
          + (f"; malloc: {args.malloc}" if args.device == "cpu" else ""))
    print(HEADER, flush=True)
    for part in parts:
        proc = subprocess.run([sys.executable, "-m", "bench.benchmarks.memory", *argv, "--part", part],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "BENCH_MALLOC": args.malloc})
        for line in proc.stdout.splitlines():
            if line.startswith(ROW):
                print(row_line(json.loads(line[len(ROW):])), flush=True)
        if proc.returncode:
            raise BenchError(f"part {part}: exit status {proc.returncode}")


ROW = "ROW "


def run_part(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda: no CUDA device here")
    skip = set(filter(None, args.skip.split(",")))
    from bench.data.synth import ensure_default

    root = ensure_default()
    meter = Meter(device)

    def add(r: dict) -> None:
        print(ROW + json.dumps(r), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        calib = CalibData.from_datasets(str(root / "davis"), str(root / "coco"), args.calib_n, Path(tmp))
        model = build_model(args.model, random_init=True, device=args.device)
        map_large_allocations(model)  # training's rule; BENCH_MALLOC=default: glibc's
        bits = f"W{args.bits}A{args.bits}"
        if args.part in RECON:
            name, options = RECON[args.part]
            method = Method.from_options(name, args.bits, args.bits, {**options, "iters": 2, "recon_units": 1})
            return _recon_rows(method, model, calib, meter, f"{args.part} {bits}", add)
        samples = model_samples(calib, model, args.clip_frames)
        picks = {"image": next(s for s in samples if isinstance(s, ImageSample))}
        video = [s for s in samples if not isinstance(s, ImageSample)]
        if video and "video" not in skip:
            picks["video"] = video[0]
        picks = {k: s.to(device) for k, s in picks.items()}
        teacher = dict(zip(picks, teacher_outputs(model, list(picks.values()))))
        del samples
        cfg = QATConfig(w_bits=args.bits, a_bits=args.bits, recompute=args.recompute)  # FP: the same loss
        mode = recompute_mode(model, cfg)
        label, reg = "FP training", None
        if args.part != "fp":
            method = Method.from_options(args.part, args.bits, args.bits, {"recompute": args.recompute})
            method.prepare(model, calib)
            cfg, label, term = method.config, f"{args.part} {bits}", method.regularizer()
            reg = (lambda: term(model)) if term else None
        compare = args.compare_recompute and args.part in ("fp", args.methods.split(",")[0])
        plain = ("off", mode) if args.part == "fp" and "fp-off" not in skip else (mode,)
        for kind, s in picks.items():
            modes = RECOMPUTE[1:] if compare and kind == "image" else plain
            for md in dict.fromkeys(modes):
                add(_train_row(f"{label}, {kind}", model, cfg, s, teacher[kind], meter, md, reg))
        if "eval" not in skip and args.part != "fp":
            row = {"row": f"evaluation frame ({label}, image)"}
            with meter.measure(row), torch.no_grad():
                forward(model, picks["image"])
            add(row)


def _recon_rows(method: Method, model: nn.Module, calib: CalibData, meter: Meter, label: str, add) -> None:
    """Two rows: the statistics pass (observers, BIG, AGQ; SAQ-SAM's PCC), and the first
    reconstruction unit alone (capture of its inputs and targets, 2 iterations)."""
    stats = {"row": f"{label}: calibration (statistics)"}
    unit = {"row": f"{label}: first reconstruction unit, 2 iterations"}
    reconstruct, ctx = method.reconstruct, meter.measure(stats)

    def measured(*a, **k):
        ctx.__exit__(None, None, None)
        with meter.measure(unit):
            out = reconstruct(*a, **k)
        (name, mb), = out["cached_mb"].items()
        unit["row"] += f" ({name}: {mb / len(calib.images):.0f} MiB of cached inputs and targets per image)"
        return out

    method.reconstruct = measured
    ctx.__enter__()
    method.apply(model, calib)
    add(stats)
    add(unit)


if __name__ == "__main__":
    main()
