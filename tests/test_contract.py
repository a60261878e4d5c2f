"""The method contract, checked for every registered method (as timm tests every model of
`list_models()`): a method is covered by registering it. Also the README's "Adding a method"
example, extracted from README.md and run as written."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.calib import CalibClip, CalibData, CalibImage
from bench.method import METHODS, Method, check_quantizers_active, inactive_quantizers
from bench.pack import export_packed
from tests.conftest import textured_image

REPO = Path(__file__).resolve().parents[1]

# The smallest budget of each kind, by config field name; applied where a method's config has
# the field. A method with a new budget field adds it here.
SMOKE = {"steps": 1, "clip_frames": 2, "report_loss": False, "iters": 1, "recon_images": 1,
         "final_iters_scale": 1.0, "mse_grid": 4, "mse_zp_steps": 2, "hist_bins": 16, "agq_max_calls": 1}


@pytest.fixture(scope="module")
def one_image(tmp_path_factory) -> CalibData:
    """One image with one box prompt, and one two-frame clip (the video path is the only way
    calibration reaches the memory modules)."""
    folder = tmp_path_factory.mktemp("clip")
    base = textured_image(7)
    for t in range(2):
        Image.fromarray(np.roll(base, 4 * t, axis=1)).save(folder / f"{t:05d}.jpg")
    mask = np.zeros((256, 256), bool)
    mask[60:160, 80:200] = True
    box = np.array([[30, 40, 200, 220]], np.float32)
    return CalibData(images=[CalibImage(textured_image(0), box, mask[None])], clips=[CalibClip(folder, {1: mask})])


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def smoke_method(name: str) -> Method:
    """`name` at W4A4 (fp: no bits) with the smoke budgets its config has."""
    fields = {f.name for f in dataclasses.fields(METHODS.get(name).Config)}
    bits = (None, None) if name == "fp" else (4, 4)
    return Method.from_options(name, *bits, {k: v for k, v in SMOKE.items() if k in fields})


def check_contract(name: str, model: torch.nn.Module, calib: CalibData, tmp_path: Path) -> Method:
    method = smoke_method(name)
    config = method.config
    assert isinstance(method, Method) and method.name == name
    assert isinstance(method.variant, str) and method.variant == smoke_method(name).variant
    assert type(config).from_dict(config.to_dict()) == config
    assert type(config).from_dict(json.loads(json.dumps(config.to_dict()))) == config  # as a record stores it
    assert isinstance(method.needs_data(), bool)
    fp_bytes = export_packed(model, tmp_path / "fp.safetensors")["bf16_bytes"]
    out = method.apply(model, calib if method.needs_data() else None)
    assert out is model  # quantized in place
    check_quantizers_active(model, method)
    if not method.keeps_inactive_quantizers():
        assert inactive_quantizers(model) == []
    json.dumps(method.info, default=str)  # the record can hold it
    if name != "fp":
        assert export_packed(model, tmp_path / "q.safetensors")["size_bytes"] < fp_bytes
    return method


@pytest.mark.parametrize("name", METHODS.names())
def test_every_registered_method_keeps_the_contract(name, micro_fp, one_image, tmp_path):
    check_contract(name, copy.deepcopy(micro_fp), one_image, tmp_path)


def readme_example(path: str) -> str:
    """The code block after the README's `<!-- example: PATH -->` marker."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.search(rf"<!-- example: {re.escape(path)} -->\s*```python\n(.*?)```", text, re.S)
    assert found, f"README.md has no example for {path}"
    return found.group(1)


@pytest.fixture
def readme_method(tmp_path, monkeypatch):
    """The README's example method as a module of the `methods` package, registered by the
    README's registry line; the registry and package are restored afterwards."""
    import methods

    folder = tmp_path / "methods"
    folder.mkdir()
    (folder / "mymethod.py").write_text(readme_example("methods/mymethod.py"))
    METHODS.names()  # the built-in methods first
    monkeypatch.setattr(METHODS, "_targets", dict(METHODS._targets))
    monkeypatch.setattr(METHODS, "_loaded", dict(METHODS._loaded))
    monkeypatch.setattr(methods, "__path__", [*methods.__path__, str(folder)])
    exec(readme_example("methods/__init__.py"), {"METHODS": METHODS})
    yield "mymethod"
    sys.modules.pop("methods.mymethod", None)


def test_the_readme_example_method_keeps_the_contract_and_runs_as_a_cell(readme_method, micro_fp, one_image,
                                                                         tmp_path):
    from bench.cell import Cell
    from bench.run import run_cell

    method = check_contract(readme_method, copy.deepcopy(micro_fp), one_image, tmp_path)
    assert method.variant == ""
    images = tmp_path / "calib"
    images.mkdir()
    Image.fromarray(textured_image(0)).save(images / "0.jpg")
    options = {"per_tensor_weights": True, "components": ["image_encoder", "mask_decoder"]}  # images reach these
    cell = Cell(model="micro", method=readme_method, task="size", w_bits=4, a_bits=8, random_init=True,
                device="cpu", calib_dir=str(images), calib_n=1, method_options=options)
    record = run_cell(cell)
    assert record["status"] == "ok", record.get("traceback")
    assert record["variant"] == "per-tensor-w" and record["config"]["method"]["per_tensor_weights"] is True
    assert record["metrics"]["size_bytes"] < record["metrics"]["bf16_bytes"]
