"""The model zoo: official SAM2 / SAM2.1 sizes, the built-in `micro` model, SAM (v1)
ViT-B / ViT-L / ViT-H, the models PTQ4SAM and SAQ-SAM were published on, and the built-in
`sam-micro` (SAM's architecture at low resolution).

Every SAM2 model is built as a `SAM2VideoPredictor` (a SAM2Base subclass), so the same object
serves video propagation and, wrapped in `SAM2ImagePredictor`, box-prompted images. Hydra is
used only here, through sam2's own config files. SAM models are `segment_anything`'s `Sam`,
built by its own `sam_model_registry` (the built-in `sam-micro` from the same modules, with
the sizes of bench/configs/sam_micro.yaml); they have no video path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bench import BenchError

CONFIG_DIR = Path(__file__).parent / "configs"
ASSET_DIR = Path(__file__).parent / "assets"


SAM2_TASKS = ("size", "vos", "instseg", "coco-map", "latency")
SAM_TASKS = ("size", "instseg", "coco-map", "latency")  # images only: SAM has no memory, so no vos


@dataclass(frozen=True)
class ModelEntry:
    name: str
    # sam2: config file relative to sam2's package dir, or an absolute path for our own
    # configs; sam: the key of segment_anything's `sam_model_registry` (vit_b, vit_l, vit_h),
    # or an absolute path to our own sizes (sam_micro.yaml)
    config: str
    checkpoint: str  # official file name, looked up in the checkpoint folder
    description: str
    family: str = "sam2"  # sam2 | sam
    tasks: tuple[str, ...] = SAM2_TASKS
    # ships with the project: the checkpoint defaults to bench/assets, in the format
    # bench.train_micro writes ({"model": state dict, "meta": {...}}, for both families)
    builtin: bool = False


def _official(name: str, version: str, size: str, long: str, params: str) -> ModelEntry:
    cfg = f"configs/{version}/{version}_hiera_{size}.yaml"
    return ModelEntry(name, cfg, f"{version}_hiera_{long}.pt", f"SAM {version[3:]} Hiera-{long} ({params})")


def _sam(size: str, checkpoint: str, params: str) -> ModelEntry:
    """SAM (v1) as segment_anything's build_sam.py builds it, with the official file name."""
    return ModelEntry(f"sam-{size}", f"vit_{size}", checkpoint, f"SAM ViT-{size.upper()} ({params}), 1024x1024",
                      family="sam", tasks=SAM_TASKS)


MODELS: dict[str, ModelEntry] = {
    e.name: e
    for e in [
        _official("sam2.1-t", "sam2.1", "t", "tiny", "38.9M"),
        _official("sam2.1-s", "sam2.1", "s", "small", "46.0M"),
        _official("sam2.1-b+", "sam2.1", "b+", "base_plus", "80.8M"),
        _official("sam2.1-l", "sam2.1", "l", "large", "224.4M"),
        _official("sam2-t", "sam2", "t", "tiny", "38.9M"),
        _official("sam2-s", "sam2", "s", "small", "46.0M"),
        _official("sam2-b+", "sam2", "b+", "base_plus", "80.8M"),
        _official("sam2-l", "sam2", "l", "large", "224.4M"),
        ModelEntry(
            "micro", str(CONFIG_DIR / "sam2_micro.yaml"), "sam2_micro.pt",
            "built-in SAM2.1-architecture model, 2.5M params, 256x256 input, ships with the project",
            builtin=True,
        ),
        _sam("b", "sam_vit_b_01ec64.pth", "93.7M"),
        _sam("l", "sam_vit_l_0b3195.pth", "312.3M"),
        _sam("h", "sam_vit_h_4b8939.pth", "641.1M"),
        ModelEntry(
            "sam-micro", str(CONFIG_DIR / "sam_micro.yaml"), "sam_micro.pt",
            "built-in SAM-architecture (ViT) model, 2.0M params, 256x256 input, ships with the project",
            family="sam", tasks=SAM_TASKS, builtin=True,
        ),
    ]
}

# Overrides of the official VOS evaluation (tools/vos_inference.py): one palette PNG per frame
# needs non-overlapping masks; post-processing (hole filling, dynamic multimask) stays off.
VIDEO_OVERRIDES = {
    "_target_": "sam2.sam2_video_predictor.SAM2VideoPredictor",
    "non_overlap_masks": True,
}


def model_entry(name: str) -> ModelEntry:
    if name not in MODELS:
        raise BenchError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name]


def check_task(name: str, task: str) -> None:
    """A one-line error when the model cannot run the task (vos on a SAM model)."""
    entry = model_entry(name)
    if task not in entry.tasks:
        raise BenchError(f"model {name} ({entry.family}) cannot run task {task!r}; its tasks: {', '.join(entry.tasks)}")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def checkpoint_path(name: str, checkpoints: str | os.PathLike | None = None) -> Path:
    """Where the checkpoint of `name` must be: `checkpoints`, else $BENCH_CHECKPOINTS; a
    built-in model's defaults to the one shipped in bench/assets."""
    entry = model_entry(name)
    folder = checkpoints or os.environ.get("BENCH_CHECKPOINTS")
    if folder is None:
        if entry.builtin:
            return ASSET_DIR / entry.checkpoint
        raise BenchError(
            f"model {name}: no checkpoint folder; pass --checkpoints DIR or set $BENCH_CHECKPOINTS "
            f"to the folder holding {entry.checkpoint}"
        )
    path = Path(folder) / entry.checkpoint
    if entry.builtin and not path.exists():
        path = ASSET_DIR / entry.checkpoint
    return path


def _config(entry: ModelEntry):
    import sam2
    from omegaconf import OmegaConf

    path = Path(entry.config)
    if not path.is_absolute():
        path = Path(sam2.__file__).parent / path
    cfg = OmegaConf.load(path)
    cfg.model.update(VIDEO_OVERRIDES)
    OmegaConf.resolve(cfg)
    return cfg


def load_state(path: Path, expected: str, family: str = "sam2", builtin: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint, loaded without unpickling code: a SAM2 checkpoint and
    a built-in model's hold it under `model`; an official SAM (v1) `.pth` is the bare state
    dict (segment_anything's build_sam.py, `_build_sam`, loads the file straight into
    `Sam.load_state_dict`)."""
    if not path.is_file():
        raise BenchError(f"checkpoint not found: {path} (expected the file {expected})")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickle with code, truncated download
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        label = "a SAM2" if family == "sam2" else "a SAM"
        raise BenchError(f"checkpoint {path}: cannot be read as {label} checkpoint ({expected}): {msg}") from None
    if family == "sam" and not builtin:
        return _sam_state(ckpt, path, expected)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise BenchError(f"checkpoint {path}: no 'model' state dict inside (expected the file {expected})")
    return ckpt["model"]


def _sam_state(ckpt: object, path: Path, expected: str) -> dict[str, torch.Tensor]:
    """A SAM (v1) checkpoint's bare state dict; a SAM2 checkpoint (`model` inside) or anything
    else that is not a dict of tensors is a one-line error."""
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        raise BenchError(f"checkpoint {path}: a SAM2-style checkpoint ('model' state dict inside), not a SAM "
                         f"(v1) state dict; expected the file {expected}")
    if not isinstance(ckpt, dict) or not ckpt or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise BenchError(f"checkpoint {path}: not a SAM (v1) state dict of tensors (expected the file {expected})")
    return ckpt


def build_model(
    name: str,
    checkpoints: str | os.PathLike | None = None,
    random_init: bool = False,
    device: str | None = None,
    seed: int = 0,
) -> nn.Module:
    """A SAM2VideoPredictor (SAM2 family) or a segment_anything `Sam` (SAM family) in eval
    mode, with the official weights unless `random_init`."""
    entry = model_entry(name)
    path = None if random_init else checkpoint_path(name, checkpoints)
    state = load_state(path, entry.checkpoint, entry.family, entry.builtin) if path is not None else None
    torch.manual_seed(seed)
    model = _instantiate(entry)
    if state is not None:
        _check_state(model, state, f"checkpoint {path}: does not match model {name}", entry.checkpoint)
        model.load_state_dict(state)
    return model.to(device or default_device()).eval()


def _instantiate(entry: ModelEntry) -> nn.Module:
    """The randomly initialized model of an entry: sam2's Hydra config, or segment_anything's
    `sam_model_registry` builder without a checkpoint (its own loader unpickles freely)."""
    if entry.family == "sam":
        if entry.config.endswith(".yaml"):
            return build_sam_from(entry.config)
        from segment_anything import sam_model_registry

        return sam_model_registry[entry.config](checkpoint=None)
    from hydra.utils import instantiate

    quiet_sam2_progress()
    return instantiate(_config(entry).model, _recursive_=True)


def build_sam_from(config: str | os.PathLike) -> nn.Module:
    """A randomly initialized SAM (v1) of the sizes in a YAML file: the modules, defaults and
    wiring of segment_anything's `_build_sam` (build_sam.py), whose image size (1024), patch
    size, prompt width, decoder MLP width and head count are fixed there."""
    from functools import partial

    import yaml
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    with open(config) as f:
        c = yaml.safe_load(f)
    enc, dec, width, size, patch = c["encoder"], c["decoder"], c["prompt_embed_dim"], c["image_size"], c["patch_size"]
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=enc["depth"], embed_dim=enc["embed_dim"], img_size=size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=enc["num_heads"], patch_size=patch,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=enc["global_attn_indexes"],
            window_size=enc["window_size"], out_chans=width,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=width, image_embedding_size=(size // patch, size // patch), input_image_size=(size, size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=width, mlp_dim=dec["mlp_dim"],
                                          num_heads=dec["num_heads"]),
            transformer_dim=width, iou_head_depth=3, iou_head_hidden_dim=width,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def quiet_sam2_progress() -> None:
    """Turn off sam2's own progress bars (frame loading and propagation, one pair per video):
    the harness draws one bar per task and per sweep instead."""
    import functools

    import sam2.sam2_video_predictor as video_predictor
    import sam2.utils.misc as misc
    from tqdm import tqdm

    quiet = functools.partial(tqdm, disable=True)
    video_predictor.tqdm = misc.tqdm = quiet


def _check_state(model: nn.Module, state: dict, what: str, expected: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        first = (missing and f"first missing: {missing[0]}") or (
            unexpected and f"first unexpected: {unexpected[0]}") or f"first shape mismatch: {shape[0]}"
        raise BenchError(
            f"{what} ({len(missing)} missing, {len(unexpected)} unexpected, {len(shape)} mis-shaped keys, "
            f"{first}); expected {expected}"
        )


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def image_predictor(model: nn.Module):
    """sam2's `SAM2ImagePredictor` for `model`, with backbone feature sizes derived from the
    model's input size (sam2 hard-codes those of the 1024x1024 models); for a SAM (v1) model,
    segment_anything's predictor with the same `predict(box=N x 4)` interface."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor
    from segment_anything.modeling import Sam

    if isinstance(model, Sam):
        from bench.sam_predictor import SamBoxPredictor

        return SamBoxPredictor(model)

    predictor = SAM2ImagePredictor(model)
    size = model.image_size
    predictor._bb_feat_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]
    return predictor


# Input size from which a model counts as real-sized (SAM2.1 and SAM take 1024; the built-in
# micro models far less): there memory matters, so training recomputes activations by default
# (`recompute: auto`) and maps large allocations apart on CPU.
REAL_FROM_SIZE = 512


def real_resolution(model: nn.Module) -> bool:
    """Whether the model's input is of the real models' size."""
    from bench.sam_predictor import is_sam

    size = model.image_encoder.img_size if is_sam(model) else model.image_size
    return size >= REAL_FROM_SIZE
