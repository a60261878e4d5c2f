"""Explicit, quantizable attention for SAM2's three attention classes.

SAM2 calls `F.scaled_dot_product_attention`, which hides QK^T, softmax and AV. The classes
here subclass SAM2's own (`MultiScaleAttention` in Hiera, `Attention` in the mask decoder,
`RoPEAttention` in memory attention), keep every submodule and attribute of the original, and
route the attention core through `attend`, which can quantize the matmul inputs q, k, v
(after RoPE, i.e. exactly what enters QK^T) and the post-softmax probabilities. A probability
quantizer with `needs_values` (PTQ4SAM's AGQ) observes through `observe_attention(probs, v)`,
on whole (unblocked) probability tensors.

When neither probabilities are quantized nor `explicit` is set, SDPA is still used, so a
wrapped model with quantizers off is the original computation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from sam2.modeling.backbones.hieradet import MultiScaleAttention, do_pool
from sam2.modeling.position_encoding import apply_rotary_enc
from sam2.modeling.sam.transformer import Attention, RoPEAttention
from torch import nn

from bench.quant.fake import FakeQuantizer, QuantSpec

# Probabilities per block in the explicit inference path (2^20 fp32 values = 4 MiB).
BLOCK_ELEMENTS = 2**20


class QuantAttentionMixin:
    """Adds the q/k/v/probability quantizer slots and the explicit attention core."""

    SLOTS = ("q_quant", "k_quant", "v_quant", "p_quant")

    @classmethod
    def from_float(cls, module: nn.Module, qkv_spec: QuantSpec | None, p_spec: QuantSpec | None):
        new = cls.__new__(cls)
        new.__dict__.update(module.__dict__)
        for d in ("_parameters", "_buffers", "_modules"):
            new.__dict__[d] = dict(module.__dict__[d])
        new.q_quant = FakeQuantizer(qkv_spec)
        new.k_quant = FakeQuantizer(qkv_spec)
        new.v_quant = FakeQuantizer(qkv_spec)
        new.p_quant = FakeQuantizer(p_spec)
        new.explicit = False
        new.last_probs = None  # set when `keep_probs` is True (methods that inspect attention)
        new.keep_probs = False
        return new

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) v on (B, heads, N, d) tensors, with the quantizer slots.
        q, k, v are the callers' temporaries (fresh projections): in inference the quantizers
        write into them."""
        q, k, v = self.q_quant(q, inplace=True), self.k_quant(k, inplace=True), self.v_quant(v, inplace=True)
        if not (self.explicit or self.keep_probs or self.p_quant.active or self.p_quant.observing):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        q = q * (1.0 / math.sqrt(q.shape[-1]))  # scale the (N, d) queries, not the (N, N) logits
        learning = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        lead = q.shape[:-2]
        if (
            self.keep_probs or learning or dropout_p > 0.0 or k.shape[:-2] != lead or v.shape[:-2] != lead
            or self.p_quant.observing or math.prod(q.shape[:-1]) * k.shape[-2] <= BLOCK_ELEMENTS
        ):
            return self._core(q, k, v, dropout_p)
        return self._blocked(q, k, v)

    def _blocked(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Inference in blocks of (batch x head, query rows) whose probabilities stay in cache:
        the same values as `_core` (softmax is row-wise, the probability quantizer elementwise),
        without the memory traffic of the full probability tensor."""
        lead, (nq, nk) = q.shape[:-2], (q.shape[-2], k.shape[-2])
        qf, kf, vf = (t.reshape(-1, *t.shape[-2:]) for t in (q, k, v))
        out = qf.new_empty(qf.shape[0], nq, vf.shape[-1])
        heads = max(1, BLOCK_ELEMENTS // (nq * nk))  # whole (batch x head) slices per block
        rows = nq if heads > 1 else max(1, BLOCK_ELEMENTS // nk)
        for h in range(0, qf.shape[0], heads):
            hs = slice(h, h + heads)
            for r in range(0, nq, rows):
                self._core(qf[hs, r : r + rows], kf[hs], vf[hs], out=out[hs, r : r + rows])
        return out.reshape(*lead, nq, vf.shape[-1])

    def _core(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """softmax(q k^T) v for pre-scaled q (the probabilities are temporaries of this call,
        so in inference they are normalized and quantized in place)."""
        logits = q @ k.transpose(-2, -1)
        if self.keep_probs or torch.is_grad_enabled():
            probs = logits.softmax(dim=-1)
            if self.keep_probs:
                self.last_probs = probs.detach().clone()
        else:
            probs = torch.softmax(logits, dim=-1, out=logits)
        if self.p_quant.observing and getattr(self.p_quant, "needs_values", False):
            self.p_quant.observe_attention(probs, v)  # e.g. AGQ: error measured on probs @ v
        probs = self.p_quant(probs, inplace=True)
        if dropout_p > 0.0:
            probs = F.dropout(probs, p=dropout_p)
        return torch.matmul(probs, v, out=out)


class QuantMultiScaleAttention(QuantAttentionMixin, MultiScaleAttention):
    """Hiera's windowed/global attention with optional q pooling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1)
        q, k, v = torch.unbind(qkv, 2)
        if self.q_pool:
            q = do_pool(q.reshape(B, H, W, -1), self.q_pool)
            H, W = q.shape[1:3]
            q = q.reshape(B, H * W, self.num_heads, -1)
        x = self.attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x.transpose(1, 2).reshape(B, H, W, -1)
        return self.proj(x)


class QuantAttention(QuantAttentionMixin, Attention):
    """The two-way transformer's attention (mask decoder)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = self._separate_heads(self.q_proj(q), self.num_heads)
        k = self._separate_heads(self.k_proj(k), self.num_heads)
        v = self._separate_heads(self.v_proj(v), self.num_heads)
        dropout_p = self.dropout_p if self.training else 0.0
        out = self.attend(q, k, v, dropout_p)
        return self.out_proj(self._recombine_heads(out))


class QuantRoPEAttention(QuantAttentionMixin, RoPEAttention):
    """Memory attention's attention with rotary position encoding (q, k quantized after RoPE)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_k_exclude_rope: int = 0) -> torch.Tensor:
        q = self._separate_heads(self.q_proj(q), self.num_heads)
        k = self._separate_heads(self.k_proj(k), self.num_heads)
        v = self._separate_heads(self.v_proj(v), self.num_heads)
        w = h = math.sqrt(q.shape[-2])
        self.freqs_cis = self.freqs_cis.to(q.device)
        if self.freqs_cis.shape[0] != q.shape[-2]:
            self.freqs_cis = self.compute_cis(end_x=w, end_y=h).to(q.device)
        if q.shape[-2] != k.shape[-2]:
            assert self.rope_k_repeat
        num_k_rope = k.size(-2) - num_k_exclude_rope
        q, k[:, :, :num_k_rope] = apply_rotary_enc(
            q, k[:, :, :num_k_rope], freqs_cis=self.freqs_cis, repeat_freqs_k=self.rope_k_repeat
        )
        dropout_p = self.dropout_p if self.training else 0.0
        out = self.attend(q, k, v, dropout_p)
        return self.out_proj(self._recombine_heads(out))


# Order matters: RoPEAttention is a subclass of Attention, so it is looked up first.
QUANT_ATTENTION: dict[type[nn.Module], type[QuantAttentionMixin]] = {
    RoPEAttention: QuantRoPEAttention,
    Attention: QuantAttention,
    MultiScaleAttention: QuantMultiScaleAttention,
}


def quant_attention_class(module: nn.Module) -> type[QuantAttentionMixin] | None:
    if isinstance(module, QuantAttentionMixin):
        return None
    return QUANT_ATTENTION.get(type(module))
