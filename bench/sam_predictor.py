"""Box prompts on a SAM (v1) model through the interface the harness uses for SAM2.

`segment_anything.SamPredictor.predict` takes one box; sam2's `SAM2ImagePredictor.predict`
takes N x 4 boxes and drops the batch axis when N is 1. Calibration and the image tasks call
`predict(box=N x 4, multimask_output=..., return_logits=...)`, so this subclass gives SAM the
same call: the boxes go through SAM's own `ResizeLongestSide` transform and `predict_torch`.

The quantization-aware training loop (bench.qat) trains SAM on image samples through the same
calls (`sam_forward`), on inputs made as `set_image` makes them (`sam_input`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything import SamPredictor
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide
from torch import nn


class SamBoxPredictor(SamPredictor):
    def predict(
        self, box: np.ndarray | None = None, multimask_output: bool = True, return_logits: bool = False, **unused
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(masks, IoU predictions, low-resolution logits) for N boxes (xyxy, image pixels):
        N x C x H x W, N x C, N x C x 256 x 256, the leading axis dropped when N is 1."""
        if unused:
            raise TypeError(f"SamBoxPredictor.predict takes box prompts only, got {sorted(unused)}")
        boxes = self.transform.apply_boxes(np.asarray(box, dtype=np.float32).reshape(-1, 4), self.original_size)
        boxes_t = torch.as_tensor(boxes, dtype=torch.float, device=self.device)
        masks, ious, low = self.predict_torch(None, None, boxes_t, None, multimask_output, return_logits)
        return tuple(t.squeeze(0).float().cpu().numpy() for t in (masks, ious, low))


# -- training forward (bench.qat) ----------------------------------------------------------------
# SAM has no object-score head: its heads carry this constant object logit (present), the
# same for student and teacher, so the object terms of the QAT loss give no gradient.
OBJECT_LOGIT = 20.0


def is_sam(model: nn.Module) -> bool:
    return isinstance(model, Sam)


def sam_input(model: Sam, image: np.ndarray) -> tuple[torch.Tensor, ResizeLongestSide]:
    """(1, 3, S, S) model input as `SamPredictor.set_image` makes it (longest side resized to
    S, normalized, padded), and the transform (for boxes and masks)."""
    transform = ResizeLongestSide(model.image_encoder.img_size)
    x = torch.as_tensor(transform.apply_image(image), device=model.device).permute(2, 0, 1)[None]
    return model.preprocess(x.float()), transform


def sam_masks(masks: np.ndarray, transform: ResizeLongestSide, size: int) -> torch.Tensor:
    """(k, H, W) bool masks -> (k, S, S) float, resized and padded as the image is."""
    h, w = transform.get_preprocess_shape(masks.shape[-2], masks.shape[-1], size)
    m = F.interpolate(torch.from_numpy(np.ascontiguousarray(masks)).float()[None], size=(h, w), mode="nearest")[0]
    return F.pad(m, (0, size - w, 0, size - h))


def sam_forward(model: Sam, image: torch.Tensor, boxes: torch.Tensor) -> dict:
    """{"feats": [image embedding], "heads": [(low-res mask logits (k, 1, h, w), IoU
    predictions (k, 1), object logits (k, 1))]} for k boxes (k x 2 x 2 corners in input
    pixels) on one preprocessed image: the calls of `SamPredictor.predict_torch` (single-mask
    output, as the image tasks prompt), differentiable."""
    emb = model.image_encoder(image)
    sparse, dense = model.prompt_encoder(points=None, boxes=boxes.reshape(-1, 4), masks=None)
    low, ious = model.mask_decoder(image_embeddings=emb, image_pe=model.prompt_encoder.get_dense_pe(),
                                   sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                   multimask_output=False)
    return {"feats": [emb], "heads": [(low, ious, low.new_full((len(low), 1), OBJECT_LOGIT))]}
