"""The model zoo: names, parameter counts, checkpoint lookup and loading errors."""

from __future__ import annotations

import pytest
import torch

from bench import BenchError
from bench.models import MODELS, build_model, checkpoint_path, count_params


@pytest.mark.parametrize("name, millions", [
    ("sam2.1-t", 38.96), ("sam2.1-s", 46.06), ("sam2.1-b+", 80.85), ("sam2.1-l", 224.45),
])
def test_random_init_parameter_counts(name, millions):
    model = build_model(name, random_init=True, device="cpu")
    assert round(count_params(model) / 1e6, 2) == millions
    assert type(model).__name__ == "SAM2VideoPredictor" and not model.training


def test_micro_is_the_sam2_architecture_at_256():
    model = build_model("micro", random_init=True, device="cpu")
    assert 2.0e6 < count_params(model) < 3.0e6
    assert model.image_size == 256
    trunk = model.image_encoder.trunk
    q_pool_blocks = {i for i, b in enumerate(trunk.blocks) if b.q_stride}
    global_blocks = {i for i, b in enumerate(trunk.blocks) if b.window_size == 0}
    assert global_blocks and not (global_blocks & q_pool_blocks)


def test_nine_sam2_models_with_official_file_names():
    assert len([e for e in MODELS.values() if e.family == "sam2"]) == 9
    assert MODELS["sam2.1-b+"].checkpoint == "sam2.1_hiera_base_plus.pt"
    assert MODELS["sam2-l"].checkpoint == "sam2_hiera_large.pt"


def test_checkpoint_round_trip_and_env_lookup(tmp_path, monkeypatch):
    src = build_model("micro", random_init=True, device="cpu", seed=5)
    torch.save({"model": src.state_dict()}, tmp_path / "sam2_micro.pt")
    monkeypatch.setenv("BENCH_CHECKPOINTS", str(tmp_path))
    assert checkpoint_path("micro") == tmp_path / "sam2_micro.pt"
    loaded = build_model("micro", device="cpu", seed=99)
    for (k, a), b in zip(src.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_missing_checkpoint_names_path_and_file(tmp_path):
    with pytest.raises(BenchError) as e:
        build_model("sam2.1-t", checkpoints=tmp_path, device="cpu")
    msg = str(e.value)
    assert str(tmp_path / "sam2.1_hiera_tiny.pt") in msg and "\n" not in msg


def test_no_checkpoint_folder_is_explained(monkeypatch):
    monkeypatch.delenv("BENCH_CHECKPOINTS", raising=False)
    with pytest.raises(BenchError, match=r"BENCH_CHECKPOINTS.*sam2.1_hiera_large.pt"):
        build_model("sam2.1-l", device="cpu")


def test_corrupt_and_wrong_checkpoints(tmp_path):
    (tmp_path / "sam2.1_hiera_tiny.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(BenchError, match="cannot be read"):
        build_model("sam2.1-t", checkpoints=tmp_path, device="cpu")
    micro = build_model("micro", random_init=True, device="cpu")
    torch.save({"model": micro.state_dict()}, tmp_path / "sam2.1_hiera_tiny.pt")
    with pytest.raises(BenchError, match=r"does not match model sam2.1-t"):
        build_model("sam2.1-t", checkpoints=tmp_path, device="cpu")
    torch.save({"weights": {}}, tmp_path / "sam2.1_hiera_tiny.pt")
    with pytest.raises(BenchError, match="no 'model' state dict"):
        build_model("sam2.1-t", checkpoints=tmp_path, device="cpu")


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": Evil()}, tmp_path / "sam2.1_hiera_tiny.pt")
    with pytest.raises(BenchError, match="cannot be read"):
        build_model("sam2.1-t", checkpoints=tmp_path, device="cpu")
