"""Explicit, quantizable attention for SAM2's three attention classes and SAM's two.

SAM2 calls `F.scaled_dot_product_attention`, which hides QK^T, softmax and AV. The classes
here subclass SAM2's own (`MultiScaleAttention` in Hiera, `Attention` in the mask decoder,
`RoPEAttention` in memory attention), keep every submodule and attribute of the original, and
route the attention core through `attend`, which can quantize the matmul inputs q, k, v
(after RoPE, i.e. exactly what enters QK^T) and the post-softmax probabilities. A probability
quantizer with `needs_values` (PTQ4SAM's AGQ) observes through `observe_attention(probs, v)`,
on whole (unblocked) probability tensors.

When neither probabilities are quantized nor `explicit` is set, SDPA is still used, so a
wrapped model with quantizers off is the original computation. In training, `recompute` (set
by bench.qat's `recompute` option) keeps q, k and v instead of the probabilities and makes
the core again in backward (bench.quant.recompute).

SAM (v1, `segment_anything`) has the ViT encoder's `image_encoder.Attention` (windowed or
global, with decomposed relative positions added to the logits) and the decoder's
`transformer.Attention` (SAM2's without dropout); they get the same slots, as PTQ4SAM's
`QuantEncoderOurAttentionBlock` and `QuantDecoderOurAttentionBlock` (ptq4sam/model/
quant_model.py) quantize them: q, k, v and the post-softmax probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from sam2.modeling.backbones.hieradet import MultiScaleAttention, do_pool
from sam2.modeling.position_encoding import apply_rotary_enc
from sam2.modeling.sam.transformer import Attention, RoPEAttention
from segment_anything.modeling.image_encoder import Attention as SamEncoderAttention
from segment_anything.modeling.image_encoder import get_rel_pos
from segment_anything.modeling.transformer import Attention as SamAttention
from torch import nn

from bench.quant.fake import FakeQuantizer, QuantSpec
from bench.quant.recompute import recomputed

# Probabilities per block in the explicit inference path (2^20 fp32 values = 4 MiB).
BLOCK_ELEMENTS = 2**20
# Probabilities per block of query rows when training recomputes the core (2^24 fp32 values =
# 64 MiB): memory attention over a video window's memories holds hundreds of MiB per object.
TRAIN_BLOCK_ELEMENTS = 2**24

# Decomposed relative-position terms of SAM's ViT attention: (rel_h, rel_w), of shapes
# (..., Nq, k_h) and (..., Nq, k_w); and the function that makes them from the quantized q.
Rel = tuple[torch.Tensor, torch.Tensor]
RelPos = Callable[[torch.Tensor], Rel]


def add_rel_pos(logits: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """logits (..., Nq, k_h * k_w) + rel_h over key rows + rel_w over key columns: the sum
    segment_anything's `add_decomposed_rel_pos` forms, on any block of query rows."""
    grid = logits.view(*logits.shape[:-1], rel_h.shape[-1], rel_w.shape[-1])
    if inplace:
        return grid.add_(rel_h.unsqueeze(-1)).add_(rel_w.unsqueeze(-2)).view(logits.shape)
    return (grid + rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).view(logits.shape)


class QuantAttentionMixin:
    """Adds the q/k/v/probability quantizer slots and the explicit attention core."""

    SLOTS = ("q_quant", "k_quant", "v_quant", "p_quant")
    recompute = False  # in training: probabilities made again in backward instead of kept (set by bench.qat)

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

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0,
        rel_pos: RelPos | Rel | None = None,
    ) -> torch.Tensor:
        """softmax(q k^T / sqrt(d) + rel) v on (B, heads, N, d) tensors, with the quantizer
        slots. q, k, v are the callers' temporaries (fresh projections): in inference the
        quantizers write into them. `rel_pos`: the decomposed relative-position terms added to
        the logits (SAM's ViT encoder), or the function that makes them from the quantized,
        unscaled q."""
        q, k, v = self.q_quant(q, inplace=True), self.k_quant(k, inplace=True), self.v_quant(v, inplace=True)
        rel = rel_pos(q) if callable(rel_pos) else rel_pos
        if rel is None and not (self.explicit or self.keep_probs or self.p_quant.active or self.p_quant.observing):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        q = q * (1.0 / math.sqrt(q.shape[-1]))  # scale the (N, d) queries, not the (N, N) logits
        learning = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        lead = q.shape[:-2]
        if learning and self.recompute:
            return self._recomputed_core(q, k, v, dropout_p, rel)
        if (
            self.keep_probs or learning or dropout_p > 0.0 or k.shape[:-2] != lead or v.shape[:-2] != lead
            or self.p_quant.observing or math.prod(q.shape[:-1]) * k.shape[-2] <= BLOCK_ELEMENTS
        ):
            return self._core(q, k, v, dropout_p, rel=rel)
        return self._blocked(q, k, v, rel)

    def _recomputed_core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float,
                         rel: Rel | None) -> torch.Tensor:
        """The core in training, recomputed in backward; above TRAIN_BLOCK_ELEMENTS
        probabilities, in blocks of query rows, each recomputed on its own, so backward holds one
        block's probabilities (softmax is row-wise; with an elementwise probability quantizer and
        no dropout the values are the same, the gradients of k, v and the quantizer's
        parameters summed block by block). A probability quantizer with a statistic of the whole
        tensor (Q-SAM2's LSC: `whole_statistic`) gets it from a first pass over the blocks'
        probabilities without gradients, and quantizes every block with it (`given`)."""
        core = recomputed(self._core)
        nq, per_row = q.shape[-2], math.prod(q.shape[:-2]) * k.shape[-2]
        rows = max(1, TRAIN_BLOCK_ELEMENTS // per_row)
        pq = self.p_quant
        whole = None if pq.elementwise or pq.spec.granularity != "tensor" else getattr(pq, "whole_statistic", None)
        if rows >= nq or dropout_p > 0.0 or not (pq.elementwise or whole):
            return core(q, k, v, dropout_p, rel=rel)
        starts = range(0, nq, rows)

        def rel_block(r: int) -> Rel | None:
            return None if rel is None else tuple(t[..., r : r + rows, :] for t in rel)

        def block_probs():  # the whole tensor's probabilities, a block at a time, for its statistic
            with torch.no_grad():
                for r in starts:
                    yield torch.softmax(self._logits(q[..., r : r + rows, :], k, rel_block(r)), dim=-1)

        pq.given = None if whole is None else whole(block_probs)
        try:
            blocks = [core(q[..., r : r + rows, :], k, v, rel=rel_block(r), covers=nq * per_row) for r in starts]
        finally:
            pq.given = None
        return torch.cat(blocks, dim=-2)

    def _blocked(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel: Rel | None = None) -> torch.Tensor:
        """Inference in blocks of (batch x head, query rows) whose probabilities stay in cache:
        the same values as `_core` (softmax is row-wise, the probability quantizer elementwise),
        without the memory traffic of the full probability tensor."""
        lead, (nq, nk) = q.shape[:-2], (q.shape[-2], k.shape[-2])
        qf, kf, vf = (t.reshape(-1, *t.shape[-2:]) for t in (q, k, v))
        relf = None if rel is None else tuple(t.reshape(-1, nq, t.shape[-1]) for t in rel)
        out = qf.new_empty(qf.shape[0], nq, vf.shape[-1])
        heads = max(1, BLOCK_ELEMENTS // (nq * nk))  # whole (batch x head) slices per block
        rows = nq if heads > 1 else max(1, BLOCK_ELEMENTS // nk)
        for h in range(0, qf.shape[0], heads):
            hs = slice(h, h + heads)
            for r in range(0, nq, rows):
                rel_block = None if relf is None else tuple(t[hs, r : r + rows] for t in relf)
                self._core(qf[hs, r : r + rows], kf[hs], vf[hs], rel=rel_block, out=out[hs, r : r + rows])
        return out.reshape(*lead, nq, vf.shape[-1])

    @staticmethod
    def _logits(q: torch.Tensor, k: torch.Tensor, rel: Rel | None) -> torch.Tensor:
        logits = q @ k.transpose(-2, -1)
        if rel is not None:
            logits = add_rel_pos(logits, *rel, inplace=not torch.is_grad_enabled())
        return logits

    def _core(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0, rel: Rel | None = None,
        out: torch.Tensor | None = None, covers: int | None = None,
    ) -> torch.Tensor:
        """softmax(q k^T + rel) v for pre-scaled q (the probabilities are temporaries of this
        call, so in inference they are normalized and quantized in place). `covers`: the size
        of the whole probability tensor when q is a block of its rows."""
        logits = self._logits(q, k, rel)
        if self.keep_probs or torch.is_grad_enabled():
            probs = logits.softmax(dim=-1)
            if self.keep_probs:
                self.last_probs = probs.detach().clone()
        else:
            probs = torch.softmax(logits, dim=-1, out=logits)
        if self.p_quant.observing and getattr(self.p_quant, "needs_values", False):
            self.p_quant.observe_attention(probs, v)  # e.g. AGQ: error measured on probs @ v
        self.p_quant.covers = covers
        try:
            probs = self.p_quant(probs, inplace=True)
        finally:
            del self.p_quant.covers
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


class QuantSamEncoderAttention(QuantAttentionMixin, SamEncoderAttention):
    """SAM's ViT attention (windowed or global) with decomposed relative positions.

    `rel_pos_q` says which q the relative-position term is computed from: "quantized"
    (PTQ4SAM, `QuantEncoderOurAttentionBlock.forward`: `add_decomposed_rel_pos` on the q that
    went through `q_post_act_fake_quantize`) or "fp" (SAQ-SAM's fork of that class: on the q
    before quantization)."""

    rel_pos_q = "quantized"
    REL_POS_Q = ("quantized", "fp")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rel_pos_q not in self.REL_POS_Q:
            raise ValueError(f"rel_pos_q must be one of {self.REL_POS_Q}, got {self.rel_pos_q!r}")
        B, H, W, _ = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, B * self.num_heads, H * W, -1).unbind(0)
        rel_pos = None
        if self.use_rel_pos:  # the terms of the FP q are made before attend quantizes q in place
            rel_pos = self.rel_terms(q, H, W) if self.rel_pos_q == "fp" else partial(self.rel_terms, H=H, W=W)
        x = self.attend(q, k, v, rel_pos=rel_pos)
        x = x.view(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
        return self.proj(x)

    def rel_terms(self, q: torch.Tensor, H: int, W: int) -> Rel:
        """(rel_h, rel_w) of (B * heads, H * W, H) and (B * heads, H * W, W): the two terms
        `add_decomposed_rel_pos` adds to the logits, from the unscaled q."""
        Rh, Rw = get_rel_pos(H, H, self.rel_pos_h), get_rel_pos(W, W, self.rel_pos_w)
        r_q = q.reshape(q.shape[0], H, W, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, Rh).reshape(q.shape[0], H * W, H)
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, Rw).reshape(q.shape[0], H * W, W)
        return rel_h, rel_w


class QuantSamAttention(QuantAttentionMixin, SamAttention):
    """SAM's two-way transformer attention (mask decoder): SAM2's `Attention` without dropout."""

    dropout_p = 0.0
    forward = QuantAttention.forward


# Order matters: RoPEAttention is a subclass of Attention, so it is looked up first.
QUANT_ATTENTION: dict[type[nn.Module], type[QuantAttentionMixin]] = {
    RoPEAttention: QuantRoPEAttention,
    Attention: QuantAttention,
    MultiScaleAttention: QuantMultiScaleAttention,
    SamEncoderAttention: QuantSamEncoderAttention,
    SamAttention: QuantSamAttention,
}


def quant_attention_class(module: nn.Module) -> type[QuantAttentionMixin] | None:
    if isinstance(module, QuantAttentionMixin):
        return None
    return QUANT_ATTENTION.get(type(module))
