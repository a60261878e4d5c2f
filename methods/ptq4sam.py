"""`ptq4sam`: PTQ4SAM (Lv et al., CVPR 2024), as its official code does it, on SAM2 and on
SAM (v1), the models it was published on.

Paper: "PTQ4SAM: Post-Training Quantization for Segment Anything", arXiv 2405.03144; official
code: github.com/chengtao-lv/PTQ4SAM.

The pipeline (BIG, AGQ, the protocol's observers and full-precision list, block
reconstruction) is bench/ptq.py, shared with `saqsam`, whose official code is a fork of this
one. Switches, each an ablation row: `big` (Bimodal Integration), `agq` (Adaptive Granularity
Quantization), `recon` (off: PTQ4SAM-S, statistics only; on: PTQ4SAM-L, block
reconstruction, bench/recon.py), and `eval_dropout_bug` (the official code's QDrop left on at
test time, reproduced to set beside the published figures).

Variant labels: "S" or "L", then "-noBIG", "-noAGQ", "+evalbug" for the switches set off (on
for the bug).
"""

from __future__ import annotations

from bench.ptq import PTQConfig, PTQPipeline


class PTQ4SAM(PTQPipeline):
    name = "ptq4sam"
    Config = PTQConfig

    def switch_label(self) -> tuple[str, tuple[str, ...]]:
        label, named = self.statistics_label("L" if self.config.recon else "S")
        return label, ("recon", *named)
