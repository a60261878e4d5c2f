"""Benchmark and ablation harness for low-bit quantization of SAM2.

Importing `bench` is cheap: models, methods and tasks are loaded on first use.
"""

__version__ = "0.1.0"


class BenchError(Exception):
    """A user-facing error: the CLI prints its message as one line and exits non-zero."""


def progress(items, desc: str):
    """A progress bar on stderr over a long loop (hidden once it ends, absent for one item)."""
    import sys

    from tqdm import tqdm

    return tqdm(items, desc=desc, file=sys.stderr, mininterval=5, leave=False, disable=len(items) < 2)
