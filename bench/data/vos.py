"""The video set formats of the `vos` task (`--vos-format`), one place for their names:

    davis   DAVIS 2017 layout, DAVIS 2017 evaluator                      (bench.data.davis)
    sav     SA-V val/test layout, per-object PNGs, SA-V evaluator         (bench.data.sav)
    mose    MOSE layout (also LVOS / YouTube-VOS), SA-V evaluator rules   (bench.data.mose)

A record names its dataset as "<name> <split>" (`dataset_label`), in the vocabulary of
`bench/data/paper_results.csv` (`sa-v test`, `mose val`); the built-in synthetic sets are
"synthetic <split>" in every format.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench import BenchError

VOS_FORMATS = ("davis", "sav", "mose")
DATASET_NAMES = {"davis": "davis-2017", "sav": "sa-v", "mose": "mose"}
ROOT_ENV = {"davis": "BENCH_DAVIS", "sav": "BENCH_SAV", "mose": "BENCH_MOSE"}  # default roots
SYNTH_MARKER = "synth.json"  # in the parent folder of each synthetic set (bench.data.synth)


def check_format(fmt: str) -> str:
    if fmt not in VOS_FORMATS:
        raise BenchError(f"unknown vos format {fmt!r}; allowed: {', '.join(VOS_FORMATS)}")
    return fmt


def open_video_set(root: str | Path, fmt: str = "davis", split: str = "val", sequences: Sequence[str] | None = None,
                   max_frames: int | None = None):
    """The reader of `fmt` on `root` (a `bench.data.video.VideoSet`)."""
    check_format(fmt)
    if fmt == "sav":
        from bench.data.sav import SavSet as cls
    elif fmt == "mose":
        from bench.data.mose import MoseSet as cls
    else:
        from bench.data.davis import DavisSet as cls
    return cls(root, split=split, sequences=sequences, max_frames=max_frames)


def is_synthetic(root: str | Path) -> bool:
    return (Path(root).parent / SYNTH_MARKER).is_file()


def dataset_label(fmt: str, root: str | Path, split: str) -> str:
    """"<name> <split>": e.g. `sa-v test`, `mose val`, `davis-2017 val`, `synthetic val`."""
    name = "synthetic" if is_synthetic(root) else DATASET_NAMES[check_format(fmt)]
    return f"{name} {split}"
