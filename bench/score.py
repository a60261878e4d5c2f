"""Score predictions already on disk, without running a model.

    python -m bench.score vos --davis-root ROOT --pred DIR [--split val] [--sequences a,b] [--max-frames N]

`vos`: DAVIS 2017 semi-supervised J&F (the official evaluator's numbers, x100) of palette PNGs
`DIR/<seq>/<frame>.png` against a DAVIS-2017-layout folder (MOSE / SA-V arranged the same way
also work). Prints one JSON object. Bad input: `error: <message>` on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bench import BenchError


def parse_sequences(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated sequence names, got {text!r}")
    return names


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_vos_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "vos", help="J&F of video object segmentation masks (DAVIS 2017 semi-supervised)",
        description="J&F of palette PNGs PRED/<seq>/<frame>.png against a DAVIS-2017-layout folder: objects "
                    "1..N of the first GT frame, first and last frames not scored, means over all objects. "
                    "Prints J&F, J, F, J/F recall and decay (x100), per object and per sequence.")
    p.add_argument("--davis-root", metavar="ROOT", help="DAVIS-2017-layout folder: JPEGImages/480p, "
                   "Annotations/480p, ImageSets/2017 (default: $BENCH_DAVIS)")
    p.add_argument("--pred", required=True, type=Path, metavar="DIR",
                   help="predictions folder: <seq>/<frame>.png palette PNGs")
    p.add_argument("--split", default="val", metavar="NAME", help="ImageSets/2017/<split>.txt (default: val)")
    p.add_argument("--sequences", type=parse_sequences, metavar="A,B",
                   help="comma-separated sequence names (default: the whole split)")
    p.add_argument("--max-frames", type=positive_int, metavar="N",
                   help="score only the first N frames of each sequence (then frame N-1 is the last, unscored, frame)")
    p.set_defaults(handler=score_vos)


def score_vos(args: argparse.Namespace) -> dict:
    from bench.data.davis import DavisSet
    from bench.metrics.davis import evaluate_vos

    root = args.davis_root or os.environ.get("BENCH_DAVIS")
    if not root:
        raise BenchError("no DAVIS root: pass --davis-root or set $BENCH_DAVIS")
    ds = DavisSet(root, split=args.split, sequences=args.sequences, max_frames=args.max_frames)
    return evaluate_vos(ds, args.pred)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.score", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    add_vos_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        scores = args.handler(args)
    except BenchError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(json.dumps(scores, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
