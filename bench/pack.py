"""A real packed artifact of a quantized model, as a safetensors file.

Layout: for each active weight quantizer, `<layer>.weight.codes` (uint8, the unsigned integer
codes bit-packed at the quantizer's width, little-endian bit stream), `<layer>.weight.scale`
(float32) and `<layer>.weight.zero` (uint8, the zero point in code space); activation
quantizers' scales/zero points likewise; every other tensor of the state dict in BF16. The
header metadata records each packed tensor's shape, bits and layout, so `load_dequantized`
rebuilds exactly the weights the model computes with: w = (codes - zero) * scale.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from bench.quant.fake import FakeQuantizer
from bench.quant.modules import QuantLayer

QPARAM_SUFFIXES = (".scale", ".zero_point", ".min_val", ".max_val")


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack uint8 values < 2**bits into a bit stream of ceil(n * bits / 8) bytes."""
    flat = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1, 1)
    stream = np.unpackbits(flat, axis=1, bitorder="little")[:, :bits]
    return np.packbits(stream.reshape(-1), bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    stream = np.unpackbits(packed, bitorder="little")[: n * bits].reshape(n, bits)
    return np.packbits(stream, axis=1, bitorder="little").reshape(-1)


def _layer_entries(name: str, layer: QuantLayer) -> tuple[dict[str, torch.Tensor], dict]:
    wq = layer.wq
    spec = wq.spec
    with torch.no_grad():
        codes = wq.codes(layer.weight.detach().float()).cpu().numpy()
    zero = (wq.zero_point - spec.qmin).round().to(torch.uint8)
    tensors = {
        f"{name}.weight.codes": torch.from_numpy(pack_bits(codes, spec.bits)),
        f"{name}.weight.scale": wq.scale.detach().float().cpu().contiguous(),
        f"{name}.weight.zero": zero.cpu().contiguous(),
    }
    meta = {
        "shape": list(layer.weight.shape), "bits": spec.bits, "granularity": spec.granularity,
        "ch_axis": spec.ch_axis, "group_size": spec.group_size,
    }
    return tensors, meta


def export_packed(model: nn.Module, path: str | Path) -> dict[str, int]:
    """Write the packed artifact; returns its byte counts (file, theoretical bound, BF16)."""
    packed_layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer) and m.wq.active}
    act_quantizers = {
        n: m for n, m in model.named_modules()
        if isinstance(m, FakeQuantizer) and m.active and not n.endswith(".wq")
    }
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, dict] = {}
    bound_bits = 0
    bf16_bytes = 0
    for name, layer in packed_layers.items():
        t, m = _layer_entries(name, layer)
        tensors.update(t)
        meta[name] = m
        bound_bits += layer.weight.numel() * layer.wq.spec.bits
        bound_bits += 8 * (t[f"{name}.weight.scale"].nbytes + t[f"{name}.weight.zero"].nbytes)
    for name, q in act_quantizers.items():
        tensors[f"{name}.scale"] = q.scale.detach().float().cpu().reshape(-1).contiguous()
        tensors[f"{name}.zero_point"] = q.zero_point.detach().float().cpu().reshape(-1).contiguous()
        bound_bits += 8 * (tensors[f"{name}.scale"].nbytes + tensors[f"{name}.zero_point"].nbytes)
    skip = {f"{n}.weight" for n in packed_layers}
    for key, value in model.state_dict().items():
        if key.endswith(QPARAM_SUFFIXES) and _is_quantizer_key(model, key):
            continue
        bf16_bytes += value.numel() * 2
        if key in skip:
            continue
        v = value.detach().cpu()
        tensors[key] = (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous()
        bound_bits += v.numel() * 16
    save_file(tensors, str(path), metadata={"bench.packed": json.dumps(meta, sort_keys=True)})
    return {
        "size_bytes": Path(path).stat().st_size,
        "size_bound_bytes": math.ceil(bound_bits / 8),
        "bf16_bytes": bf16_bytes,
        "packed_layers": len(packed_layers),
    }


def _is_quantizer_key(model: nn.Module, key: str) -> bool:
    owner = key.rsplit(".", 1)[0]
    try:
        return isinstance(model.get_submodule(owner), FakeQuantizer)
    except AttributeError:
        return False


def load_dequantized(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a packed artifact back: dequantized float32 weights of the packed layers
    (keyed `<layer>.weight`) and every other stored tensor as stored."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["bench.packed"])
    raw = load_file(str(path))
    out = {k: v for k, v in raw.items() if not any(k.startswith(f"{n}.weight.") for n in meta)}
    for name, m in meta.items():
        n = math.prod(m["shape"])
        codes = unpack_bits(raw[f"{name}.weight.codes"].numpy(), m["bits"], n)
        q = torch.from_numpy(codes.astype(np.float32))
        scale, zero = raw[f"{name}.weight.scale"], raw[f"{name}.weight.zero"].float()
        if m["granularity"] == "group":
            ax = m["ch_axis"]
            shape = list(m["shape"])
            moved = [shape[ax]] + [s for i, s in enumerate(shape) if i != ax % len(shape)]
            blocks = q.reshape(moved[0], -1, m["group_size"])
            w = ((blocks - zero) * scale).reshape(moved).movedim(0, ax)
        else:
            w = (q.reshape(m["shape"]) - zero) * scale
        out[f"{name}.weight"] = w
    return out
