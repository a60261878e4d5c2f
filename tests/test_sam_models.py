"""SAM (v1) ViT-B/L/H: the zoo entries, checkpoint loading and its one-line errors, the
quantizable attention of SAM's encoder and decoder (identity when off, the official order of
operations when on), the PTQ4SAM full-precision list on SAM's names, and the size task.

Most tests use a small model of the same classes (`small_sam`, put in place of ViT-B's
builder where a test goes through `build_model`); sam-b itself is built only for the packed
size, whose bound depends on the real layer shapes."""

from __future__ import annotations

import copy
from functools import partial

import numpy as np
import pytest
import segment_anything
import torch
from PIL import Image
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.modeling.image_encoder import Attention as SamEncoderAttention
from segment_anything.modeling.image_encoder import Block, add_decomposed_rel_pos
from segment_anything.modeling.transformer import Attention as SamAttention
from torch import nn

from bench import BenchError
from bench.models import ASSET_DIR, MODELS, build_model, checkpoint_path, count_params, image_predictor
from bench.quant import QuantPlan, QuantSpec, Scope, attention, quant_attentions, quant_layers, wrap
from bench.quant.attention import QuantSamAttention, QuantSamEncoderAttention
from bench.quant.scope import component_of
from tests.conftest import textured_image

FULL = QuantPlan(weight=QuantSpec(4, granularity="channel"), act=QuantSpec(4),
                 attn_qkv=QuantSpec(4), attn_probs=QuantSpec(4))
OFFICIAL = {"sam-b": "sam_vit_b_01ec64.pth", "sam-l": "sam_vit_l_0b3195.pth", "sam-h": "sam_vit_h_4b8939.pth"}


def small_sam(img: int = 128) -> Sam:
    """SAM's classes at 128x128 (8x8 tokens; windows of 3, so padded; block 1 global), with
    random relative-position and absolute-position tables (SAM initializes them to zero)."""
    encoder = ImageEncoderViT(
        img_size=img, patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2, out_chans=32,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=3, global_attn_indexes=(1,),
    )
    decoder = MaskDecoder(transformer_dim=32, iou_head_hidden_dim=32,
                          transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=2))
    prompt = PromptEncoder(embed_dim=32, image_embedding_size=(img // 16, img // 16),
                           input_image_size=(img, img), mask_in_chans=16)
    sam = Sam(encoder, prompt, decoder, pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    with torch.no_grad():
        for name, p in sam.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.normal_(0, 0.5)
    return sam.eval()


@pytest.fixture
def small_as_sam_b(monkeypatch):
    """`sam-b` builds the small model (segment_anything's registry is the one build_model reads)."""
    monkeypatch.setitem(segment_anything.sam_model_registry, "vit_b", lambda checkpoint=None: small_sam())


def test_entries_official_names_family_and_tasks(capsys):
    from bench import list as bench_list

    for name, file in OFFICIAL.items():
        entry = MODELS[name]
        tasks = ("size", "instseg", "coco-map", "latency")
        assert (entry.checkpoint, entry.family, entry.tasks) == (file, "sam", tasks)
    assert "vos" in MODELS["sam2.1-t"].tasks and MODELS["micro"].family == "sam2"
    bench_list.main([])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("sam-l "))
    assert "family sam; tasks size, instseg, coco-map" in line and "sam_vit_l_0b3195.pth" in line


@pytest.mark.parametrize("name, millions", [("sam-b", 93.74), ("sam-l", 312.34), ("sam-h", 641.09)])
def test_random_init_builds_each_size(name, millions):
    """Built on the meta device: the builder and parameter count without 2.5 GB of ViT-H."""
    with torch.device("meta"):
        model = build_model(name, random_init=True, device="meta")
    assert isinstance(model, Sam) and not model.training
    assert round(count_params(model) / 1e6, 2) == millions
    assert model.image_encoder.img_size == 1024


def _one_line_error(name: str, folder, match: str) -> str:
    with pytest.raises(BenchError, match=match) as e:
        build_model(name, checkpoints=folder, device="cpu")
    msg = str(e.value)
    assert "\n" not in msg and str(folder / OFFICIAL[name]) in msg
    return msg


def test_missing_and_truncated_checkpoints(tmp_path):
    _one_line_error("sam-h", tmp_path, "checkpoint not found")
    path = tmp_path / OFFICIAL["sam-b"]
    torch.save({f"w{i}": torch.randn(64, 64) for i in range(4)}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _one_line_error("sam-b", tmp_path, "cannot be read as a SAM checkpoint")


def test_sam2_checkpoint_or_another_model_given_for_sam_b(tmp_path, small_as_sam_b):
    micro = build_model("micro", random_init=True, device="cpu").state_dict()
    torch.save({"model": micro}, tmp_path / OFFICIAL["sam-b"])  # a SAM2 checkpoint, renamed
    _one_line_error("sam-b", tmp_path, "SAM2-style checkpoint")
    torch.save(micro, tmp_path / OFFICIAL["sam-b"])  # a bare state dict of another model
    _one_line_error("sam-b", tmp_path, "does not match model sam-b")
    torch.save({"model_size": "b"}, tmp_path / OFFICIAL["sam-b"])
    _one_line_error("sam-b", tmp_path, "not a SAM .v1. state dict")


def test_checkpoint_round_trip(tmp_path, small_as_sam_b):
    torch.manual_seed(5)
    src = small_sam()
    torch.save(src.state_dict(), tmp_path / OFFICIAL["sam-b"])  # the official layout: a bare state dict
    loaded = build_model("sam-b", checkpoints=tmp_path, device="cpu", seed=99)
    for (k, a), b in zip(src.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_sam_micro_is_sams_architecture_at_low_resolution(monkeypatch):
    from segment_anything.modeling.image_encoder import window_partition

    monkeypatch.delenv("BENCH_CHECKPOINTS", raising=False)
    entry = MODELS["sam-micro"]
    assert (entry.family, entry.builtin, entry.tasks) == ("sam", True, ("size", "instseg", "coco-map", "latency"))
    assert checkpoint_path("sam-micro") == ASSET_DIR / "sam_micro.pt"
    model = build_model("sam-micro", random_init=True, device="cpu")
    assert 1.9e6 < count_params(model) < 2.1e6
    enc = model.image_encoder
    assert (enc.img_size, enc.patch_embed.proj.stride, model.prompt_encoder.embed_dim) == (256, (16, 16), 96)
    windows = [b.window_size for b in enc.blocks]
    assert windows == [6, 6, 0, 6, 6, 0]  # global attention every third block, as ViT-B..H
    assert all(b.attn.use_rel_pos for b in enc.blocks)
    _, pad = window_partition(torch.zeros(1, 16, 16, 1), 6)
    assert pad == (18, 18)  # windows that do not divide the 16 x 16 grid: the padding path runs
    assert model.mask_decoder.transformer.layers[0].cross_attn_token_to_image.num_heads == 8
    pred = image_predictor(model)
    pred.set_image(textured_image(0)[:192])  # 192 x 256, as the synthetic stills
    masks, ious, _ = pred.predict(box=np.array([[10, 20, 120, 150]]), multimask_output=False)
    assert masks.shape == (1, 192, 256) and ious.shape == (1,)


def test_sam_micro_checkpoint_format(tmp_path):
    """A built-in model's checkpoint is bench.train_micro's {"model", "meta"}; a bare state
    dict (the official SAM layout) in its place is a one-line error."""
    src = build_model("sam-micro", random_init=True, device="cpu", seed=4).state_dict()
    torch.save({"model": src, "meta": {}}, tmp_path / "sam_micro.pt")
    loaded = build_model("sam-micro", checkpoints=tmp_path, device="cpu", seed=9).state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in src.items())
    torch.save(src, tmp_path / "sam_micro.pt")
    with pytest.raises(BenchError, match="no 'model' state dict inside") as e:
        build_model("sam-micro", checkpoints=tmp_path, device="cpu")
    assert "\n" not in str(e.value)


def test_vos_on_a_sam_model_is_one_line_and_writes_nothing(tmp_path, capsys):
    from bench.run import main

    out = tmp_path / "record.json"
    assert main(["--model", "sam-l", "--random-init", "--task", "vos", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model sam-l (sam) cannot run task 'vos'") and "\n" not in err
    assert not out.exists()


def _predict(model: Sam, image: np.ndarray, boxes: np.ndarray) -> list[torch.Tensor]:
    pred = image_predictor(model)
    pred.set_image(image)
    return [pred.features, *(torch.as_tensor(t) for t in pred.predict(box=boxes, return_logits=True))]


def test_wrapped_small_sam_with_quantizers_off_is_identical():
    """Every Linear/Conv and attention of SAM's classes wrapped, all quantizers off (also with
    the explicit path forced): image embedding, masks, IoUs, low-res logits within 1e-5."""
    fp = small_sam()
    model = copy.deepcopy(fp)
    image, boxes = textured_image(0, 160), np.array([[10, 20, 90, 120], [40, 30, 150, 100]], np.float32)
    with torch.no_grad():
        ref = _predict(fp, image, boxes)
    names = wrap(model, FULL)
    attns = quant_attentions(model)
    assert sorted({type(m).__name__ for m in attns.values()}) == ["QuantSamAttention", "QuantSamEncoderAttention"]
    assert len(attns) == 2 + 7 and len(names) == len(attns) + len(quant_layers(model))
    for explicit in (False, True):
        for m in attns.values():
            m.explicit = explicit
        with torch.no_grad():
            out = _predict(model, image, boxes)
        assert out[1].shape == (2, 3, 160, 160)
        for a, b in zip(out, ref):
            assert (a.float() - b.float()).abs().max() <= 1e-5


@pytest.mark.parametrize("window, tokens", [(14, 20), (0, 20)])
def test_vit_b_block_wrapped_identity(window, tokens):
    """One ViT-B block (768 wide, 12 heads) on a 20x20 token grid: windowed (padded to 28) and
    global, random relative positions, wrapped with quantizers off: within 1e-5."""
    block = Block(768, 12, use_rel_pos=True, window_size=window, input_size=(tokens, tokens)).eval()
    with torch.no_grad():
        block.attn.rel_pos_h.normal_(0, 0.5)
        block.attn.rel_pos_w.normal_(0, 0.5)
    x = torch.randn(1, tokens, tokens, 768)
    with torch.no_grad():
        ref = block(x)
        wrap(block, FULL)
        assert isinstance(block.attn, QuantSamEncoderAttention)
        assert (block(x) - ref).abs().max() <= 1e-5


def _calibrated(module: nn.Module, *inputs: torch.Tensor) -> None:
    for slot in module.SLOTS:
        getattr(module, slot).observing = True
    with torch.no_grad():
        module(*inputs)
    for slot in module.SLOTS:
        getattr(module, slot).observing = False
        getattr(module, slot).calibrate_from_observed()
        assert getattr(module, slot).active


@pytest.mark.parametrize("rel_pos_q", ["quantized", "fp"])
def test_encoder_attention_quantizes_as_the_official_code(rel_pos_q):
    """q, k, v and the probabilities quantized; the relative-position term from the quantized
    q (PTQ4SAM's QuantEncoderOurAttentionBlock) or from the FP q (SAQ-SAM's)."""
    base = SamEncoderAttention(16, num_heads=2, use_rel_pos=True, input_size=(4, 4))
    with torch.no_grad():
        base.rel_pos_h.normal_(0, 0.5)
        base.rel_pos_w.normal_(0, 0.5)
    q = QuantSamEncoderAttention.from_float(base, QuantSpec(4), QuantSpec(3))
    q.rel_pos_q = rel_pos_q
    x = torch.randn(3, 4, 4, 16)
    _calibrated(q, x)
    with torch.no_grad():
        out = q(x)
        qkv = base.qkv(x).reshape(3, 16, 3, 2, -1).permute(2, 0, 3, 1, 4).reshape(3, 6, 16, -1)
        qq, k, v = (quant(t) for quant, t in zip((q.q_quant, q.k_quant, q.v_quant), qkv.unbind(0)))
        logits = (qq * base.scale) @ k.transpose(-2, -1)
        rel_q = qq if rel_pos_q == "quantized" else qkv[0]
        logits = add_decomposed_rel_pos(logits, rel_q, base.rel_pos_h, base.rel_pos_w, (4, 4), (4, 4))
        probs = q.p_quant(logits.softmax(dim=-1))
        expected = base.proj((probs @ v).view(3, 2, 4, 4, -1).permute(0, 2, 3, 1, 4).reshape(3, 4, 4, -1))
        assert torch.allclose(out, expected, atol=1e-5)
        assert not torch.allclose(out, base(x), atol=1e-3)


def test_decoder_attention_quantizes_q_k_v_and_probabilities():
    base = SamAttention(16, num_heads=2, downsample_rate=2)
    q = QuantSamAttention.from_float(base, QuantSpec(4), QuantSpec(3))
    qi, ki = torch.randn(1, 5, 16), torch.randn(1, 12, 16)
    _calibrated(q, qi, ki, ki)
    with torch.no_grad():
        out = q(qi, ki, ki)
        qq, k, v = (base._separate_heads(proj(t), 2) for proj, t in zip((base.q_proj, base.k_proj, base.v_proj),
                                                                            (qi, ki, ki)))
        qq, k, v = q.q_quant(qq), q.k_quant(k), q.v_quant(v)
        probs = q.p_quant(torch.softmax(qq @ k.transpose(-2, -1) / np.sqrt(4), dim=-1))
        expected = base.out_proj(base._recombine_heads(probs @ v))
        assert torch.allclose(out, expected, atol=1e-5)
        assert not torch.allclose(out, base(qi, ki, ki), atol=1e-3)


def test_blocked_attention_with_relative_positions_equals_whole(monkeypatch):
    base = SamEncoderAttention(16, num_heads=2, use_rel_pos=True, input_size=(4, 4))
    with torch.no_grad():
        base.rel_pos_h.normal_(0, 0.5)
    q = QuantSamEncoderAttention.from_float(base, QuantSpec(4), QuantSpec(3))
    x = torch.randn(3, 4, 4, 16)  # 3 windows x 2 heads, 16 tokens each
    _calibrated(q, x)
    with torch.no_grad():
        whole = q(x)
        monkeypatch.setattr(attention, "BLOCK_ELEMENTS", 5 * 16)  # 5 query rows of one head per block
        rows = []
        core = q._core
        monkeypatch.setattr(q, "_core", lambda *a, **kw: rows.append(a[0].shape[-2]) or core(*a, **kw))
        blocked = q(x)
    assert rows == [5, 5, 5, 1] * 6
    assert torch.allclose(blocked, whole, atol=1e-6)


def test_ptq4sam_full_precision_list_on_sam_names():
    """As `quantize_model` in PTQ4SAM's ptq4sam/solver/test_quant.py (and SAQ-SAM's) sets it:
    patch embedding, output upscaling, IoU head, hypernetwork MLPs and the prompt encoder in
    FP; the encoder's blocks and neck, the two-way transformer quantized."""
    model = small_sam()
    names = wrap(model, QuantPlan(weight=QuantSpec(4), attn_qkv=QuantSpec(4), scope=Scope(preset="ptq4sam")))
    for fp in ("image_encoder.patch_embed", "output_upscaling", "iou_prediction_head", "output_hypernetworks_mlps",
               "prompt_encoder"):
        assert not any(fp in n for n in names), fp
    for quantized in ("image_encoder.blocks.1.attn", "image_encoder.blocks.0.attn.qkv",
                      "image_encoder.blocks.0.mlp.lin2", "image_encoder.neck.0", "image_encoder.neck.2",
                      "mask_decoder.transformer.final_attn_token_to_image",
                      "mask_decoder.transformer.layers.1.cross_attn_image_to_token.v_proj"):
        assert quantized in names, quantized
    assert component_of("mask_decoder.transformer.layers.0.mlp.lin1") == "mask_decoder"
    assert component_of("prompt_encoder.point_embeddings.0") == "prompt_encoder"
    everything = wrap(small_sam(), FULL)  # scope `all`: the mask-prompt branch no task runs stays out
    assert "prompt_encoder.mask_downscaling.0" not in everything and "mask_decoder.output_upscaling.0" in everything


def test_rtn_w4a4_cell_runs_on_sam_with_image_calibration(tmp_path, small_as_sam_b):
    """The run plumbing for a SAM model: calibration through the box predictor on images only
    (SAM has no video path), every quantizer active, a packed artifact that reads back."""
    from bench.cell import Cell
    from bench.run import run_cell

    for i in range(2):
        Image.fromarray(textured_image(i, 96)).save(tmp_path / f"{i}.png")
    cell = Cell(model="sam-b", method="rtn", task="size", w_bits=4, a_bits=4, random_init=True, device="cpu",
                calib_dir=str(tmp_path), calib_n=2)
    record = run_cell(cell, work_dir=tmp_path / "work")
    assert record["status"] == "ok", record.get("traceback")
    expected = small_sam()
    wrap(expected, FULL)
    assert record["metrics"]["packed_layers"] == len(quant_layers(expected))


def test_sam_b_w4_packed_size_within_2_percent_of_the_bound(tmp_path):
    """Real ViT-B shapes (random init), RTN W4: the artifact is within 2% of its bit bound."""
    from bench.cell import Cell
    from bench.run import run_cell

    record = run_cell(Cell(model="sam-b", method="rtn", task="size", w_bits=4, random_init=True, device="cpu"),
                      work_dir=tmp_path)
    m = record["metrics"]
    assert record["status"] == "ok" and m["packed_layers"] == 100  # all but the 3 mask-prompt convs
    assert 0 <= m["overhead_vs_bound"] < 0.02 and m["x_smaller_than_bf16"] > 3.5
