"""Fake-quant overhead of an image encoder on CPU: SAM2.1-t's Hiera (default) or SAM ViT-B's.

Variants, timed round-robin in one process: the FP encoder; (a) W4A4 RTN on every Linear
(weights per channel, inputs per tensor); (b) (a) plus the encoder attention's q/k/v and
softmax probabilities at 4 bits (Hiera's windowed/global attention; SAM's ViT attention with
decomposed relative positions); and a peer built from torch.ao.quantization.FakeQuantize,
which fake-quantizes the weight at every forward as torch.ao's QAT modules do. Weights are
random (timing does not depend on them).

    python -m bench.benchmarks.overhead [--model sam2.1-t|sam-b] [--repeats 7] [--size 1024]
        [--threads N] [--calib-images 2]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao import quantization as tq

from bench.models import build_model
from bench.quant import QuantLinear, QuantPlan, QuantSpec, Scope, quant_attentions, wrap
from bench.quant.calibrate import activation_quantizers, calibrate_weights

# The encoder's Conv2d layers (patch embedding; SAM2's FPN neck, SAM's neck) stay float: only
# Linear layers count.
LINEAR_ONLY = {
    "sam2.1-t": Scope(components=("image_encoder",), include=("*",),
                      exclude=("image_encoder.trunk.patch_embed.*", "image_encoder.neck.*")),
    "sam-b": Scope(components=("image_encoder",), include=("*",),
                   exclude=("image_encoder.patch_embed.*", "image_encoder.neck.*")),
}
SAM_SIZE = 1024  # SAM's ViT has absolute position embeddings for 1024x1024 inputs only


def images(n: int, seed: int, size: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 3, size, size, generator=g) for _ in range(n)]


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The encoder's output: SAM2's `vision_features`, SAM's embedding tensor."""
    out = model.image_encoder(x)
    return out["vision_features"] if isinstance(out, dict) else out


def ours(fp: nn.Module, attention: bool, calib: list[torch.Tensor], scope: Scope, w_bits: int = 4,
         a_bits: int | None = 4) -> nn.Module:
    """A calibrated RTN copy, W4A4 by default (encoder-only observation of activation ranges;
    `a_bits` None: weight-only)."""
    model = copy.deepcopy(fp)
    a = QuantSpec(a_bits) if a_bits else None
    attn = a if attention else None
    wrap(model, QuantPlan(QuantSpec(w_bits, granularity="channel"), a, attn, attn, scope))
    calibrate_weights(model)
    quantizers = [q for _, q in activation_quantizers(model)]
    for q in quantizers:
        q.observing = True
    with torch.no_grad():
        for x in calib:
            model.image_encoder(x)
    for q in quantizers:
        q.observing = False
        q.calibrate_from_observed()
    return model


class AOFakeQuantLinear(nn.Module):
    """nn.Linear with torch.ao FakeQuantize on the weight (per channel) and the input."""

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        self.weight, self.bias = layer.weight, layer.bias
        kw = dict(quant_min=0, quant_max=15, dtype=torch.quint8)
        self.wq = tq.FakeQuantize(
            tq.PerChannelMinMaxObserver, qscheme=torch.per_channel_affine, ch_axis=0, **kw
        )
        self.aq = tq.FakeQuantize(tq.MinMaxObserver, qscheme=torch.per_tensor_affine, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.aq(x), self.wq(self.weight), self.bias)


def peer(fp: nn.Module, calib: list[torch.Tensor]) -> nn.Module:
    """A copy whose encoder Linears are AOFakeQuantLinear, calibrated by observing `calib`
    (fake quant off while observing, like ours), then observers off, fake quant on."""
    model = copy.deepcopy(fp)
    enc = model.image_encoder
    for name, m in list(enc.named_modules()):
        if type(m) is nn.Linear:
            parent, _, child = name.rpartition(".")
            setattr(enc.get_submodule(parent), child, AOFakeQuantLinear(m))
    fqs = [m for m in enc.modules() if isinstance(m, tq.FakeQuantize)]
    for fq in fqs:
        fq.disable_fake_quant()
    with torch.no_grad():
        for x in calib:
            enc(x)
    for fq in fqs:
        fq.disable_observer()
        fq.enable_fake_quant()
    return model


def check(fp: nn.Module, a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """Assert every encoder Linear is wrapped and active; return (a)'s max |diff| vs FP."""
    n_linear = sum(type(m) is nn.Linear for m in fp.image_encoder.modules())
    for model in (a, b):
        enc = model.image_encoder
        assert not any(type(m) is nn.Linear for m in enc.modules()), "unwrapped Linear"
        ql = [m for m in enc.modules() if isinstance(m, QuantLinear)]
        assert len(ql) == n_linear and all(m.wq.active and m.aq.active for m in ql)
    attns = quant_attentions(b.image_encoder).values()
    assert attns and all(getattr(m, s).active for m in attns for s in m.SLOTS)
    with torch.inference_mode():
        ref, out = features(fp, x), features(a, x)
    diff = (out - ref).abs().max().item()
    assert diff > 0, "(a) equals FP: the benchmark would time a no-op"
    return diff


def timed(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """One warm-up run each, then `repeats` rounds, rotating the start of each round."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for n in names:
            fns[n]()
        for r in range(repeats):
            for n in names[r % len(names):] + names[: r % len(names)]:
                t0 = time.perf_counter()
                fns[n]()
                times[n].append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7, help="timed rounds per variant (default 7)")
    p.add_argument("--size", type=int, default=1024, help="input side in pixels (default 1024)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's own choice)")
    p.add_argument("--model", choices=sorted(LINEAR_ONLY), default="sam2.1-t",
                   help="whose image encoder, random weights (default sam2.1-t)")
    p.add_argument("--calib-images", type=int, default=2,
                   help="random images that set the activation ranges (default 2)")
    args = p.parse_args()
    if args.model.startswith("sam-") and args.size != SAM_SIZE:
        p.error(f"--size: {args.model}'s encoder takes {SAM_SIZE}x{SAM_SIZE} inputs only")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{args.model} image encoder, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"input 1x3x{args.size}x{args.size}, repeats {args.repeats}")

    fp = build_model(args.model, random_init=True, device="cpu")
    calib = images(args.calib_images, seed=1, size=args.size)
    (x,) = images(1, seed=0, size=args.size)
    scope = LINEAR_ONLY[args.model]
    variants = {
        "fp": fp,
        "(a) W4A4 Linear": ours(fp, attention=False, calib=calib, scope=scope),
        "(b) (a) + attention": ours(fp, attention=True, calib=calib, scope=scope),
        "peer torch.ao": peer(fp, calib),
    }
    a, b = variants["(a) W4A4 Linear"], variants["(b) (a) + attention"]
    print(f"(a) vs FP encoder output max |diff| = {check(fp, a, b, x):.4g} (> 0)")

    times = timed({n: (lambda m=m: m.image_encoder(x)) for n, m in variants.items()}, args.repeats)
    med = {n: statistics.median(t) for n, t in times.items()}
    print(f"{'variant':<22}{'median s':>10}{'min s':>9}{'x FP':>8}")
    for n, t in times.items():
        print(f"{n:<22}{med[n]:>10.3f}{min(t):>9.3f}{med[n] / med['fp']:>8.3f}")
    ra, rb, rp = (med[n] / med["fp"] for n in list(variants)[1:])
    print(f"(a) goal <= 1.03x and below the torch.ao peer: {ra:.3f}x vs peer {rp:.3f}x -> "
          f"{'met' if ra <= 1.03 and ra < rp else 'NOT met'}")
    print(f"(b) goal <= 1.25x: {rb:.3f}x -> {'met' if rb <= 1.25 else 'NOT met'}")


if __name__ == "__main__":
    main()
