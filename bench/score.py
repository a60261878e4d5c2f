"""Score predictions already on disk, without running a model.

    python -m bench.score vos --davis-root ROOT --pred DIR [--split val] [--sequences a,b] [--max-frames N]
    python -m bench.score vos --format sav --gt-root GT --pred-root PRED [--no-skip-first-last]
    python -m bench.score vos --format mose --gt-root GT --pred-root PRED [--no-skip-first-last]

`vos` (`--format davis`, the default): DAVIS 2017 semi-supervised J&F (the official evaluator's
numbers, x100) of palette PNGs `DIR/<seq>/<frame>.png` against a DAVIS-2017-layout folder.
`--format sav`: the SA-V evaluator's J&F (sam2 `sav_dataset/sav_evaluator.py`) of per-object
PNGs `PRED/<video>/<obj>/<frame>.png` against `GT` in the same layout (SA-V's
`Annotations_6fps`); `--format mose`: the same evaluator's rules on palette PNGs
`PRED/<video>/<frame>.png` against `GT/<video>/<frame>.png` (MOSE's `Annotations`): objects may
appear after the first frame. Prints one JSON object. Bad input: `error: <message>` on stderr,
exit status 2.
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
        "vos", help="J&F of video object segmentation masks (DAVIS 2017, SA-V, MOSE)",
        description="davis: J&F of palette PNGs PRED/<seq>/<frame>.png against a DAVIS-2017-layout folder: "
                    "objects 1..N of the first GT frame, first and last frames not scored, means over all objects; "
                    "prints J&F, J, F, J/F recall and decay (x100), per object and per sequence. sav / mose: the "
                    "SA-V evaluator's J&F, J, F (x100) of per-object (sav) or palette (mose) PNGs against GT "
                    "folders of the same layout: only annotated frames, first and last skipped, each object "
                    "scored from the first frame it is in the GT or the prediction, per object and per sequence.")
    p.add_argument("--format", default="davis", choices=("davis", "sav", "mose"),
                   help="davis (default): --davis-root and --pred; sav, mose: --gt-root and --pred-root")
    p.add_argument("--davis-root", metavar="ROOT", help="davis: DAVIS-2017-layout folder: JPEGImages/480p, "
                   "Annotations/480p, ImageSets/2017 (default: $BENCH_DAVIS)")
    p.add_argument("--gt-root", type=Path, metavar="GT", help="sav, mose: ground-truth folder of videos "
                   "(SA-V: Annotations_6fps; MOSE: Annotations)")
    p.add_argument("--pred", "--pred-root", dest="pred", required=True, type=Path, metavar="DIR",
                   help="predictions folder: <seq>/<frame>.png palette PNGs (davis, mose) or "
                        "<video>/<obj>/<frame>.png (sav)")
    p.add_argument("--no-skip-first-last", dest="skip_first_last", action="store_false",
                   help="sav, mose: score the first and last annotated frames too "
                        "(sav_evaluator.py --do_not_skip_first_and_last_frame)")
    p.add_argument("--split", default="val", metavar="NAME", help="ImageSets/2017/<split>.txt (default: val)")
    p.add_argument("--sequences", type=parse_sequences, metavar="A,B",
                   help="comma-separated sequence names (default: the whole split)")
    p.add_argument("--max-frames", type=positive_int, metavar="N",
                   help="score only the first N frames of each sequence (then frame N-1 is the last, unscored, frame)")
    p.set_defaults(handler=score_vos)


def score_vos(args: argparse.Namespace) -> dict:
    if args.format != "davis":
        return score_sav_rules(args)
    from bench.data.davis import DavisSet
    from bench.metrics.davis import evaluate_vos

    if args.gt_root is not None or not args.skip_first_last:
        raise BenchError("--gt-root and --no-skip-first-last go with --format sav or mose; the DAVIS 2017 "
                         "evaluator reads --davis-root and always skips the first and last frames")
    root = args.davis_root or os.environ.get("BENCH_DAVIS")
    if not root:
        raise BenchError("no DAVIS root: pass --davis-root or set $BENCH_DAVIS")
    ds = DavisSet(root, split=args.split, sequences=args.sequences, max_frames=args.max_frames)
    return evaluate_vos(ds, args.pred)


def score_sav_rules(args: argparse.Namespace) -> dict:
    """The SA-V evaluator on GT and prediction folders (every GT video, or `--sequences`)."""
    from bench.metrics.sav import evaluate_palette, evaluate_per_object

    if args.gt_root is None:
        raise BenchError(f"--format {args.format} needs --gt-root (the ground-truth folder of videos)")
    if args.davis_root is not None or args.max_frames is not None:
        raise BenchError(f"--davis-root and --max-frames go with --format davis, not {args.format}")
    evaluate = evaluate_per_object if args.format == "sav" else evaluate_palette
    return evaluate(args.gt_root, args.pred, args.sequences, skip_first_last=args.skip_first_last)


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
