"""Integer backends for the deployed model: speed and bytes on SAM2.1-t's image encoder.

Variants, timed round-robin in one process (median of `--repeats`): the FP32 encoder; RTN
W8A8 on every encoder Linear (weights per channel, inputs per tensor; convolutions and the
attention core stay float, as in the issue's probe) fake-quantized, and deployed on each W8A8
backend of bench.deploy; weight-only W4 fake-quantized and deployed (int4-tinygemm); and,
where torchao is installed, its own configs on the same layers as candidates (they choose
their own scales: a speed reference, not the method's model); and the encoder's Linear layers
in BF16, unquantized, the reference for the BF16 weight-only kernels. Weights are random (timing
does not depend on them). Prints the deployed weights' bytes against BF16 for the layers
covered, and the goals: W8A8 deployed >= 1.3x faster than FP32, W4 weights <= 0.3x BF16.

    python -m bench.benchmarks.deploy [--repeats 5] [--threads N] [--size 1024]
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from torch import nn

from bench.benchmarks.overhead import LINEAR_ONLY, features, images, ours, timed
from bench.deploy import BACKENDS, deploy
from bench.models import build_model


class _InBF16(nn.Module):
    """A Linear run on BF16 activations inside an FP32 model (as int4-tinygemm runs)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear.bfloat16()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.bfloat16()).to(x.dtype)


def _linears_in_bf16(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, _InBF16(child))
        else:
            _linears_in_bf16(child)


def torchao_variants(fp: nn.Module) -> dict[str, nn.Module | str]:
    """torchao's own int8 and int4 configs on the encoder's Linear layers (or why not)."""
    try:
        import torchao
        from torchao.quantization import (
            Int4WeightOnlyConfig,
            Int8DynamicActivationInt8WeightConfig,
            IntxWeightOnlyConfig,
            quantize_,
        )
        from torchao.quantization.granularity import PerAxis
    except ImportError:
        return {"torchao": "not installed (pip install torchao)"}
    out: dict[str, nn.Module | str] = {}
    for name, cfg in (("torchao int8 dynamic", Int8DynamicActivationInt8WeightConfig),
                      ("torchao int4 weight-only", Int4WeightOnlyConfig),
                      ("torchao intx weight-only int4 per channel (one byte per code), bf16",
                       lambda: IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerAxis(0)))):
        label = f"{name} {torchao.__version__}"
        model = copy.deepcopy(fp)
        if name.endswith("bf16"):
            _linears_in_bf16(model.image_encoder)
        try:
            quantize_(model.image_encoder, cfg())
            with torch.inference_mode():
                model.image_encoder(torch.randn(1, 3, 256, 256))
            out[label] = model
        except Exception as e:  # a candidate that does not run here is reported, not fatal
            out[label] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per variant (default 5)")
    p.add_argument("--size", type=int, default=1024, help="input side in pixels (default 1024)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"sam2.1-t image encoder (random weights), torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, input 1x3x{args.size}x{args.size}, median of {args.repeats}")
    fp = build_model("sam2.1-t", random_init=True, device="cpu")
    calib = images(2, seed=1, size=args.size)
    (x,) = images(1, seed=0, size=args.size)
    scope = LINEAR_ONLY["sam2.1-t"]
    w8a8, w4 = (ours(fp, False, calib, scope, w, a) for w, a in ((8, 8), (4, None)))
    bf16 = copy.deepcopy(fp)
    _linears_in_bf16(bf16.image_encoder)  # what the BF16 weight-only kernels start from
    variants: dict[str, nn.Module] = {"fp32": fp, "BF16 Linears (reference)": bf16, "W8A8 fake-quant": w8a8,
                                      "W4 fake-quant": w4}
    sizes = {}
    for name, b in BACKENDS.items():
        dep = deploy(w8a8 if b.config == "W8A8" else w4, name)
        info = dep.info()
        variants[f"{b.config} {name}"] = dep.model
        sizes[name] = (info["layers_deployed"], info["deployed_linear_bytes"], info["deployed_linear_bf16_bytes"])
    skipped = {}
    for name, m in torchao_variants(fp).items():
        (variants.__setitem__ if isinstance(m, nn.Module) else skipped.__setitem__)(name, m)
    with torch.inference_mode():
        ref = {"W8A8": features(w8a8, x), "W4": features(w4, x)}
        for name, m in variants.items():
            for cfg in ref:
                if name.startswith(cfg) and "fake" not in name:
                    d = (features(m, x) - ref[cfg]).abs().max().item()
                    print(f"{name}: encoder output max |diff| vs its fake-quant model {d:.3g}")
    times = timed({n: (lambda m=m: m.image_encoder(x)) for n, m in variants.items()}, args.repeats)
    med = {n: statistics.median(t) for n, t in times.items()}
    print("| variant | median s | min s | speed-up vs fp32 |\n|---|---:|---:|---:|")
    for n, t in times.items():
        print(f"| {n} | {med[n]:.3f} | {min(t):.3f} | {med['fp32'] / med[n]:.2f}x |")
    for n, why in skipped.items():
        print(f"| {n} | not run: {why} | | |")
    for name, (n, nbytes, bf16) in sizes.items():
        print(f"{name}: {n} Linear layers deployed, weights {nbytes / 2**20:.2f} MiB = {nbytes / bf16:.3f}x "
              f"their BF16 bytes ({bf16 / 2**20:.2f} MiB)")
    best8 = max((n for n in med if n.startswith("W8A8 int8")), key=lambda n: med["fp32"] / med[n])
    r8 = med["fp32"] / med[best8]
    r4 = sizes["int4-tinygemm"][1] / sizes["int4-tinygemm"][2]
    print(f"goal W8A8 deployed >= 1.3x faster than fp32: {best8} {r8:.2f}x -> {'met' if r8 >= 1.3 else 'NOT met'}")
    print(f"goal W4 deployed weights <= 0.3x BF16: {r4:.3f}x -> {'met' if r4 <= 0.3 else 'NOT met'}")


if __name__ == "__main__":
    main()
