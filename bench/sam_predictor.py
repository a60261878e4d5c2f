"""Box prompts on a SAM (v1) model through the interface the harness uses for SAM2.

`segment_anything.SamPredictor.predict` takes one box; sam2's `SAM2ImagePredictor.predict`
takes N x 4 boxes and drops the batch axis when N is 1. Calibration and the image tasks call
`predict(box=N x 4, multimask_output=..., return_logits=...)`, so this subclass gives SAM the
same call: the boxes go through SAM's own `ResizeLongestSide` transform and `predict_torch`.
"""

from __future__ import annotations

import numpy as np
import torch
from segment_anything import SamPredictor


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
