"""Local sweep jobs share the cores: each of `max_parallel` jobs runs torch with its share."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.sweep import job_threads
from bench.sweepspec import Executor

REPO = Path(__file__).resolve().parents[1]


class FakeSweep:
    def __init__(self, slurm: dict | None = None) -> None:
        self.executor = Executor(kind="local", slurm=slurm or {})


def test_job_threads_split_the_cores():
    cores = len(os.sched_getaffinity(0))
    assert job_threads(FakeSweep(), "local", 1) == cores
    assert job_threads(FakeSweep(), "local", 2) == max(1, cores // 2)
    assert job_threads(FakeSweep(), "local", 10 * cores) == 1
    assert job_threads(FakeSweep({"cpus_per_task": 3}), "slurm", 4) == 3
    assert job_threads(FakeSweep(), "slurm", 4) is None and job_threads(FakeSweep(), "debug", 4) is None


def test_a_job_runs_torch_with_its_share(tmp_path):
    code = (f"import torch, os; from bench.sweep import run_group; run_group([], {str(tmp_path)!r}, 's', 'r', "
            "threads=1); print(torch.get_num_threads(), os.environ['OMP_NUM_THREADS'])")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1"]
