"""SAM2's training forward and losses as library code: input conversion, backbone features,
one tracking step with the SAM head's outputs, and SAM2's mask losses.

Used by the micro model's training recipe (`bench.train_micro`) and by the quantization-aware
training loop (`bench.qat`), so both train through the same code as evaluation runs:
`SAM2Base._track_step` and `_encode_memory_in_output` (facebookresearch/sam2,
`sam2/modeling/sam2_base.py`), with the losses of SAM2's `training/loss_fns.py` (focal x 20 or
BCE, dice, IoU L1, object-presence BCE; the mask terms on the best of multiple masks).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


# -- inputs ------------------------------------------------------------------------------------
def to_input(frames: list[np.ndarray], size: int) -> torch.Tensor:
    """uint8 H x W x 3 frames -> normalized (T, 3, size, size), resized as the image predictor
    does (bilinear, antialiased); sam2's video loader resizes with PIL's bicubic instead."""
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (x - MEAN) / STD


def to_masks(labels: list[np.ndarray], k: int, size: int) -> torch.Tensor:
    """Label maps -> (T, k, size, size) float masks of objects 1..k."""
    lab = torch.from_numpy(np.stack(labels)).long()
    masks = torch.stack([(lab == i + 1) for i in range(k)], dim=1).float()
    return F.interpolate(masks, size=(size, size), mode="nearest")


# -- forward -----------------------------------------------------------------------------------
def features(model: nn.Module, x: torch.Tensor):
    backbone = model.forward_image(x)
    _, feats, pos, sizes = model._prepare_backbone_features(backbone)
    return feats, pos, sizes


def track(model, t, init, feats, pos, sizes, k, output_dict, num_frames, point_inputs=None, mask_inputs=None,
          memory: bool = True):
    """`SAM2Base.track_step` for frame t of a batch of k objects, also returning the SAM head
    outputs (all masks of a multimask output, IoU predictions, object-score logits).
    `memory` False skips encoding the frame into memory where no later frame reads it (a
    still, a clip's last frame): the losses and gradients are the same, the step is faster."""
    feats_t = [f[:, t : t + 1].expand(-1, k, -1) for f in feats]
    pos_t = [p[:, t : t + 1].expand(-1, k, -1) for p in pos]
    current, sam_out, _, _ = model._track_step(
        t, init, feats_t, pos_t, sizes,
        point_inputs, mask_inputs, output_dict, num_frames, False, None,
    )
    multi_logits, _, ious, low, high, obj_ptr, obj_logits = sam_out
    current.update(pred_masks=low, pred_masks_high_res=high, obj_ptr=obj_ptr)
    model._encode_memory_in_output(feats_t, sizes, point_inputs, memory, high, obj_logits, current)
    return current, multi_logits, ious, obj_logits


# -- losses (SAM2's weights) -------------------------------------------------------------------
def focal(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma * (alpha * target + (1 - alpha) * (1 - target))
    return loss.flatten(-2).mean(-1)


def dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = logits.sigmoid().flatten(-2)
    t = target.flatten(-2)
    return 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)


def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(-2).mean(-1)


def mask_losses(multi_logits: torch.Tensor, ious: torch.Tensor, obj_logits: torch.Tensor, target: torch.Tensor,
                kind: str = "bce") -> torch.Tensor:
    """multi_logits (k, M, h, w) low-res logits; target (k, H, W); `kind` "bce" or "focal" for
    the pixel term beside dice. Returns the summed loss."""
    logits = F.interpolate(multi_logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    tgt = target[:, None].expand_as(logits)
    first = 20 * focal(logits, tgt) if kind == "focal" else bce(logits, tgt)
    seg = first + dice(logits, tgt)  # (k, M)
    best = seg.argmin(dim=1, keepdim=True)
    present = (target.flatten(1).sum(1) > 0).float()
    with torch.no_grad():
        pred = logits > 0
        inter = (pred & (tgt > 0.5)).flatten(2).sum(-1)
        union = (pred | (tgt > 0.5)).flatten(2).sum(-1)
        true_iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter, dtype=torch.float))
    iou_loss = (ious - true_iou).abs().mean(1)
    mask = seg.gather(1, best).squeeze(1) + iou_loss
    obj = F.binary_cross_entropy_with_logits(obj_logits.squeeze(1), present, reduction="none")
    denom = present.sum().clamp(min=1)
    return (mask * present).sum() / denom + obj.mean()
