"""Sweeps through a real Slurm cluster (submitit job arrays), started by .ci/slurm-up.sh.

`.ci/run` brings the cluster up (as root, from Debian's packages) and sets BENCH_SLURM=1;
elsewhere these tests skip and say why."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _cluster_answers() -> bool:
    if shutil.which("scontrol") is None:
        return False
    return subprocess.run(["scontrol", "ping"], capture_output=True, text=True).returncode == 0


pytestmark = pytest.mark.skipif(
    os.environ.get("BENCH_SLURM") != "1" and not _cluster_answers(),
    reason="no Slurm cluster: run `bash .ci/slurm-up.sh` as root on Debian (CI does), then set BENCH_SLURM=1",
)


@pytest.fixture(autouse=True)
def _micro(micro_weights):
    """Random micro weights in $BENCH_CHECKPOINTS, which the Slurm jobs inherit."""


def write_sweep(tmp_path: Path, methods: str) -> Path:
    path = tmp_path / "slurm.yaml"
    path.write_text(f"""
name: slurm
models: [micro]
methods: {methods}
bits: [[4, fp]]
tasks: [size]
device: cpu
executor:
  kind: slurm
  timeout_min: 10
  slurm: {{partition: debug, time_min: 10, cpus_per_task: 1, array_parallelism: 2}}
""")
    return path


def run_sweep(path: Path, results: Path, *extra: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "BENCH_PLUGINS": "tests.faulty_methods",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, "-m", "bench.sweep", str(path), "--results", str(results), *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def records(folder: Path) -> dict[str, dict]:
    return {r["method"]: r for r in (json.loads(p.read_text()) for p in folder.glob("*.json"))}


def test_sweep_runs_on_slurm(tmp_path):
    proc = run_sweep(write_sweep(tmp_path, "[fp, rtn]"), tmp_path / "results")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    recs = records(tmp_path / "results" / "slurm")
    assert set(recs) == {"fp", "rtn"} and all(r["status"] == "ok" for r in recs.values())
    assert recs["rtn"]["metrics"]["size_bytes"] < recs["fp"]["metrics"]["size_bytes"]
    assert "2 ok, 0 failed" in err


def test_cancelled_job_is_recorded_and_the_rest_still_run(tmp_path):
    """`sleepy` runs first in the model's job; scancel that job: its cell is recorded as
    failed with the reason, and the cells after it run in a new job."""
    proc = run_sweep(write_sweep(tmp_path, "[sleepy, fp, rtn]"), tmp_path / "results")
    job = None
    deadline = time.time() + 300
    while job is None and time.time() < deadline:
        q = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i %j"], capture_output=True, text=True)
        running = [line.split()[0] for line in q.stdout.splitlines() if line.endswith("bench-slurm")]
        job = running[0] if running else None
        time.sleep(1)
    assert job is not None, "no sweep job ever ran"
    time.sleep(15)  # well inside the sleeping cell
    subprocess.run(["scancel", job], check=True)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err
    recs = records(tmp_path / "results" / "slurm")
    assert recs["fp"]["status"] == recs["rtn"]["status"] == "ok"
    assert recs["sleepy"]["status"] == "failed" and "CANCELLED" in recs["sleepy"]["error"]
    assert recs["sleepy"]["job_id"].startswith(job.split("_")[0])
