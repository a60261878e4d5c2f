"""Shared fixtures: models are built once per session (random init unless stated)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from bench.method import Method
from bench.models import build_model


def make_method(name: str, w_bits: int | None = None, a_bits: int | None = None, **options) -> Method:
    """The registered method `name` built from bits and options, as the harness builds it."""
    return Method.from_options(name, w_bits, a_bits, options)


@pytest.fixture(scope="session")
def tiny_fp():
    """SAM2.1-tiny, random init, CPU (do not modify: deep-copy it)."""
    return build_model("sam2.1-t", random_init=True, device="cpu")


@pytest.fixture(scope="session")
def micro_fp():
    return build_model("micro", random_init=True, device="cpu")


@pytest.fixture
def tiny(tiny_fp):
    return copy.deepcopy(tiny_fp)


@pytest.fixture
def micro(micro_fp):
    return copy.deepcopy(micro_fp)


def textured_image(seed: int, size: int = 256) -> np.ndarray:
    """A deterministic RGB image with smooth shapes and texture (not white noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size, 3))
    for _ in range(6):
        cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.3)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        img[inside] = rng.uniform(0, 1, 3)
    img += 0.1 * np.sin(40 * xx * rng.uniform(0.5, 2))[..., None]
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def synth_set(tmp_path_factory, cfg):
    """Generate the synthetic sets of `cfg` into a fresh temporary folder; returns its root."""
    from bench.data import synth

    root = tmp_path_factory.mktemp("synth") / "set"
    synth.generate(cfg, root)
    return root


@pytest.fixture
def micro_weights(tmp_path_factory, monkeypatch):
    """A micro checkpoint (random weights) in $BENCH_CHECKPOINTS: the sweep machinery is under
    test, not the model's quality."""
    folder = tmp_path_factory.getbasetemp() / "micro_ckpt"
    if not (folder / "sam2_micro.pt").is_file():
        folder.mkdir(exist_ok=True)
        torch.save({"model": build_model("micro", random_init=True, device="cpu").state_dict()},
                   folder / "sam2_micro.pt")
    monkeypatch.setenv("BENCH_CHECKPOINTS", str(folder))
