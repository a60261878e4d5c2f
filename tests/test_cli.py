"""Command lines: bench.list and bench.run, including bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import textured_image


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=full_env)


def test_list_shows_the_models_of_both_families_and_methods():
    out = cli("bench.list")
    assert out.returncode == 0
    models = out.stdout.split("methods:")[0].splitlines()[1:]
    assert len(models) == 13  # 9 SAM2 (micro included) + 4 SAM (sam-micro included)
    for name in ("sam2.1-t", "sam2.1-s", "sam2.1-b+", "sam2.1-l", "sam2-t", "sam2-l", "micro", "sam-b", "sam-l",
                 "sam-h", "sam-micro"):
        assert any(line.split()[0] == name for line in models)
    assert "family sam;" in next(line for line in models if line.split()[0] == "sam-h")
    micro_line = next(line for line in models if line.split()[0] == "sam-micro")
    assert "family sam; tasks size, instseg, coco-map" in micro_line
    methods = out.stdout.split("methods:")[1].split("tasks:")[0]
    assert {line.split()[0] for line in methods.strip().splitlines()} >= {"fp", "rtn"}
    assert "size" in out.stdout.split("tasks:")[1]


def test_run_prints_a_record_and_writes_it(tmp_path):
    out_file = tmp_path / "rec.json"
    out = cli("bench.run", "--model", "micro", "--random-init", "--method", "rtn", "--w-bits", "4",
              "--a-bits", "fp", "--task", "size", "--device", "cpu", "--out", str(out_file), "--tag", "t1")
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout)
    assert rec == json.loads(out_file.read_text())
    for key in ("model", "method", "w_bits", "a_bits", "task", "status", "metrics", "versions", "timings"):
        assert key in rec
    assert (rec["model"], rec["method"], rec["w_bits"], rec["a_bits"], rec["status"]) == ("micro", "rtn", 4, None, "ok")
    assert (rec["variant"], rec["tag"], rec["config"]["cell"]["davis_root"]) == ("", "t1", None)  # size: no data
    assert rec["metrics"]["size_bytes"] < rec["metrics"]["bf16_bytes"] / 3


def test_run_with_activation_bits_and_calibration_images(tmp_path):
    for i in range(3):
        Image.fromarray(textured_image(i)).save(tmp_path / f"{i}.jpg")
    out = cli("bench.run", "--model", "micro", "--random-init", "--method", "rtn", "--w-bits", "8",
              "--a-bits", "8", "--calib-dir", str(tmp_path), "--calib-n", "2", "--device", "cpu",
              "--set", "components=[image_encoder, mask_decoder]")
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout)
    assert rec["config"]["method"]["components"] == ["image_encoder", "mask_decoder"]
    assert rec["metrics"]["packed_layers"] > 20


@pytest.mark.parametrize("args, message", [
    (["--model", "sam3-t"], "unknown model 'sam3-t'"),
    (["--method", "rtm", "--w-bits", "4"], "unknown method 'rtm' (did you mean 'rtn'?)"),
    (["--method", "rtn", "--w-bits", "0"], "w_bits: bit width must be in 2..8, got 0"),
    (["--method", "rtn", "--w-bits", "9"], "w_bits: bit width must be in 2..8, got 9"),
    (["--method", "fp", "--w-bits", "4"], "fp: full precision takes no bit widths"),
    (["--method", "rtn", "--w-bits", "4", "--a-bits", "4", "--calib-dir", "/nonexistent"],
     "calibration folder not found: /nonexistent"),
    (["--task", "instseg", "--coco-root", "/nonexistent"], "/nonexistent"),
    (["--task", "vqa"], "unknown task 'vqa'"),
    (["--model", "sam2.1-t", "--checkpoints", "/nonexistent"],
     "checkpoint not found: /nonexistent/sam2.1_hiera_tiny.pt (expected the file sam2.1_hiera_tiny.pt)"),
])
def test_bad_input_one_line_error_and_no_output(tmp_path, args, message):
    out_file = tmp_path / "rec.json"
    random = [] if "--checkpoints" in args else ["--random-init"]
    out = cli("bench.run", *random, "--device", "cpu", "--out", str(out_file), *args)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert out.stdout == "" and not out_file.exists() and list(tmp_path.iterdir()) == []


def test_unparseable_bits_are_an_argparse_error():
    out = cli("bench.run", "--w-bits", "four")
    assert out.returncode == 2 and "--w-bits" in out.stderr


def test_help_describes_usage():
    out = cli("bench.run", "--help")
    assert out.returncode == 0 and "--random-init" in out.stdout and "--checkpoints" in out.stdout
    assert np.all([flag in out.stdout for flag in ("--w-bits", "--a-bits", "--task", "--out")])
