"""The micro training script: a few steps write a checkpoint the model zoo can load, with
its provenance."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import train_micro
from bench.data import synth
from bench.models import build_model, load_state

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("processes", [1, 2])
def test_few_steps_write_a_loadable_checkpoint(tmp_path, processes):
    out = tmp_path / "micro.pt"
    train_micro.main(["--out", str(out), "--steps", "4", "--warmup", "1", "--clip-frames", "3", "--seed", "3",
                      "--processes", str(processes), "--half"])
    ckpt = torch.load(out, weights_only=True)
    meta = ckpt["meta"]
    assert meta["args"]["seed"] == 3 and meta["data_version"] >= 1 and "--steps 4" in meta["command"]
    assert meta["args"]["processes"] == processes and "float16" in meta["storage"]
    assert ckpt["model"]["sam_mask_decoder.iou_token.weight"].dtype == torch.float16
    assert math.isfinite(meta["final_loss"])
    fresh = build_model("micro", random_init=True, device="cpu", seed=3)
    state = load_state(out, "micro")
    assert state.keys() == fresh.state_dict().keys()
    changed = [k for k, v in state.items() if v.is_floating_point() and not torch.equal(v, fresh.state_dict()[k])]
    assert len(changed) > 50  # the optimizer moved the weights
    assert not list(tmp_path.glob("*.tmp"))


def test_sam_micro_trains_on_images_through_sams_heads(tmp_path, monkeypatch):
    out = tmp_path / "sam_micro.pt"
    train_micro.main(["--model", "sam-micro", "--out", str(out), "--steps", "3", "--warmup", "1", "--prompts", "2",
                      "--seed", "1"])
    meta = torch.load(out, weights_only=True)["meta"]
    assert "--model sam-micro" in meta["command"] and meta["args"]["video_fraction"] == 0.0
    assert math.isfinite(meta["final_loss"]) and meta["final_loss"] > 0
    fresh = build_model("sam-micro", random_init=True, device="cpu", seed=1).state_dict()
    monkeypatch.setenv("BENCH_CHECKPOINTS", str(tmp_path))
    trained = build_model("sam-micro", device="cpu").state_dict()
    moved = {k.split(".")[0] for k, v in trained.items() if v.is_floating_point() and not torch.equal(v, fresh[k])}
    assert moved == {"image_encoder", "prompt_encoder", "mask_decoder"}


def test_sam_micro_has_no_video_steps(tmp_path, capsys):
    with pytest.raises(SystemExit, match="--video-fraction: sam-micro is a SAM model"):
        train_micro.main(["--model", "sam-micro", "--out", str(tmp_path / "x.pt"), "--video-fraction", "0.5"])
    assert not list(tmp_path.iterdir())


def _sync_worker(rank: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        layer, extra, idle = torch.nn.Linear(3, 2), torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
        grads = train_micro.FlatGrads([*layer.parameters(), *extra.parameters(), *idle.parameters()])
        results = []
        for skip in (None, 1):  # both ranks learn; then rank 1's sample had nothing to learn
            grads.zero()
            loss = None
            if rank != skip:
                loss = (rank + 1) * layer(torch.ones(1, 3)).sum()
                loss.backward()
                loss = (rank + 1) * layer(torch.ones(1, 3)).sum() / 2  # accumulates: 1.5x in all
                if rank == 1:  # a module only rank 1's sample reaches
                    loss = loss + 4 * extra(torch.ones(1, 3)).sum()
                loss.backward()
            value, n = grads.all_reduce(loss)
            results.append((value, n, layer.weight.grad.clone(), layer.bias.grad.clone(),
                            None if extra.weight.grad is None else extra.weight.grad.clone(),
                            idle.weight.grad is None and idle.bias.grad is None))
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_data_parallel_gradients_are_the_mean_over_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_sync_worker, args=(str(tmp_path / "init"), str(tmp_path / "grads")), nprocs=2)
    for rank in (0, 1):
        (v0, n0, w0, b0, e0, idle0), (v1, n1, w1, b1, e1, idle1) = torch.load(tmp_path / f"grads.{rank}",
                                                                             weights_only=True)
        # d loss / d W = 1.5 (rank + 1) for every entry: the mean over ranks 1 and 2 is 2.25
        assert n0 == 2 and torch.equal(w0, torch.full((2, 3), 2.25)) and torch.equal(b0, torch.full((2,), 2.25))
        # only rank 0 learned: its gradient, not halved by the rank that had none
        assert n1 == 1 and torch.equal(w1, torch.full((2, 3), 1.5)) and torch.equal(b1, torch.full((2,), 1.5))
        # a module one rank reached: the batch mean (rank 1's 4, rank 0's 0); then no rank did
        assert torch.equal(e0, torch.full((1, 3), 2.0)) and e1 is None
        assert idle0 and idle1  # no rank reached it: no gradient, so the optimizer skips it
    losses = [torch.load(tmp_path / f"grads.{r}", weights_only=True)[0][0] for r in (0, 1)]
    assert losses[0] == losses[1]


def test_image_only_data_parallel_steps_leave_the_memory_modules_alone(tmp_path):
    """As in one process, where their gradient is None: no Adam momentum, no weight decay."""
    out = tmp_path / "micro.pt"
    train_micro.main(["--out", str(out), "--steps", "3", "--warmup", "1", "--video-fraction", "0", "--seed", "2",
                      "--processes", "2"])
    fresh = build_model("micro", random_init=True, device="cpu", seed=2).state_dict()
    state = load_state(out, "micro")
    moved = {k.split(".")[0] for k, v in state.items() if v.is_floating_point() and not torch.equal(v, fresh[k])}
    assert {"image_encoder", "sam_mask_decoder"} <= moved
    assert not moved & {"memory_attention", "memory_encoder", "obj_ptr_proj", "maskmem_tpos_enc"}


def _children(pid: int) -> list[int]:
    """Live child processes of `pid` (from /proc; zombies excluded)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_stopping_a_data_parallel_run_stops_its_workers(tmp_path):
    """SIGTERM to the command ends its worker processes and writes no checkpoint."""
    out = tmp_path / "m.pt"
    proc = subprocess.Popen([sys.executable, "-m", "bench.train_micro", "--out", str(out), "--steps", "100000",
                             "--processes", "2"], cwd=REPO, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    children: list[int] = []
    try:
        deadline = time.time() + 120
        while len(_children(proc.pid)) < 2 and time.time() < deadline:
            time.sleep(0.5)
        children = _children(proc.pid)
        assert len(children) >= 2, "the workers did not start"
        time.sleep(5)  # inside training
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        deadline = time.time() + 10
        while any(_alive(c) for c in children) and time.time() < deadline:
            time.sleep(0.2)
        assert not [c for c in children if _alive(c)], "a worker is still running"
        assert not out.exists() and not out.with_suffix(".tmp").exists()
    finally:  # on failure, leave nothing running
        for pid in set(children + _children(proc.pid)) | ({proc.pid} if proc.poll() is None else set()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _image_step(model, clicks=None, seed=0):
    image, labels = synth.still(synth.SynthConfig(seed=0), "train", seed)
    model.zero_grad(set_to_none=True)
    loss = train_micro.image_loss(model, image, labels, int(labels.max()), np.random.default_rng(seed),
                                  prompts=2, clicks=clicks)
    loss.backward()
    return loss.item(), _grads(model)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_frames_no_later_frame_reads_skip_the_memory_encoder_and_nothing_else_changes(monkeypatch):
    model = build_model("micro", device="cpu")
    model.train()
    frames, labels, k = train_micro.sample_clip(synth.SynthConfig(seed=0), 3, 4, np.random.default_rng(3))
    torch.manual_seed(0)  # memory attention has dropout: the same draws in both runs
    model.zero_grad(set_to_none=True)
    loss = train_micro.video_loss(model, frames, labels, k)
    loss.backward()
    grads = _grads(model)
    asked = []
    original = model._encode_memory_in_output
    monkeypatch.setattr(model, "_encode_memory_in_output",
                        lambda *a: (asked.append(a[3]), original(*a[:3], True, *a[4:]))[1])
    torch.manual_seed(0)
    model.zero_grad(set_to_none=True)
    forced = train_micro.video_loss(model, frames, labels, k)  # every frame encoded, as before
    forced.backward()
    assert asked == [True, True, True, False]  # only the last frame skips it
    assert loss.item() == forced.item() and grads.keys() == _grads(model).keys()
    assert all(torch.equal(g, _grads(model)[n]) for n, g in grads.items())
    asked.clear()
    _image_step(model)
    assert asked == [False, False]  # a still's boxes and clicks: nothing reads their memory


def test_boxes_and_clicks_are_drawn_in_the_order_of_earlier_versions(monkeypatch):
    """--clicks unset must draw the same random numbers as before it existed (per object, per
    prompt: a box jitter, then a click), so a recorded command still makes its checkpoint."""
    model = build_model("micro", device="cpu")
    model.train()
    sent = []
    original = train_micro.track
    monkeypatch.setattr(train_micro, "track", lambda *a, **k: (sent.append(
        (a[6], k["point_inputs"]["point_labels"][0].tolist(), k["point_inputs"]["point_coords"])),
        original(*a, **k))[1])
    image, labels = synth.still(synth.SynthConfig(seed=0), "train", 0)
    k = int(labels.max())
    for clicks in (None, 1, 0):
        model.zero_grad(set_to_none=True)
        train_micro.image_loss(model, image, labels, k, np.random.default_rng(0), prompts=2, clicks=clicks)
    assert [(n, lab) for n, lab, _ in sent] == [(2 * k, [2, 3]), (2 * k, [1]), (2 * k, [2, 3]), (k, [1]),
                                                (2 * k, [2, 3])]
    # the earlier loop, written out: per object, per prompt, normal(4) then integers
    rng, boxes, clicks = np.random.default_rng(0), [], []
    masks = train_micro.to_masks([labels], k, model.image_size)[0]
    for m in masks:
        ys, xs = torch.nonzero(m > 0.5, as_tuple=True)
        x0, y0, x1, y1 = xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1
        for _ in range(2):
            j = rng.normal(0, 0.05, 4) * [x1 - x0, y1 - y0, x1 - x0, y1 - y0]
            boxes.append([[x0 + j[0], y0 + j[1]], [x1 + j[2], y1 + j[3]]])
            i = rng.integers(len(xs))
            clicks.append([[xs[i].item() + 0.5, ys[i].item() + 0.5]])
    assert torch.equal(sent[0][2], torch.tensor(boxes, dtype=torch.float32))
    assert torch.equal(sent[1][2], torch.tensor(clicks, dtype=torch.float32))
    with pytest.raises(ValueError, match="--prompts and --clicks"):
        train_micro.image_loss(model, image, labels, k, np.random.default_rng(0), prompts=0, clicks=0)


@pytest.mark.parametrize("flags", [["--prompts", "0", "--clicks", "0"], ["--clicks", "-1"], ["--prompts", "0"]])
def test_no_prompts_or_negative_counts_are_refused(tmp_path, flags):
    out = tmp_path / "micro.pt"
    with pytest.raises(SystemExit, match="--prompts and --clicks"):
        train_micro.main(["--out", str(out), "--steps", "1", *flags])
    assert not out.exists()


def test_jpeg_quality_out_of_range_is_refused(tmp_path):
    out = tmp_path / "micro.pt"
    with pytest.raises(SystemExit, match="--jpeg-quality"):
        train_micro.main(["--out", str(out), "--steps", "1", "--jpeg-quality", "101"])
    assert not out.exists()


def test_jpeg_quality_sends_every_training_input_through_the_round_trip(tmp_path, monkeypatch):
    asked, received = [], []
    monkeypatch.setattr(synth, "as_stored", lambda image, quality=95: (asked.append((image.shape, quality)),
                                                                         np.full_like(image, 7))[1])
    image_loss, video_loss = train_micro.image_loss, train_micro.video_loss
    monkeypatch.setattr(train_micro, "image_loss", lambda model, image, *a, **k: (
        received.append(bool((image == 7).all())), image_loss(model, image, *a, **k))[1])
    monkeypatch.setattr(train_micro, "video_loss", lambda model, frames, *a, **k: (
        received.append(all((f == 7).all() for f in frames)), video_loss(model, frames, *a, **k))[1])
    train_micro.main(["--out", str(tmp_path / "a.pt"), "--steps", "2", "--warmup", "1", "--clip-frames", "3",
                      "--image-steps", "1", "--video-fraction", "1", "--jpeg-quality", "80"])
    # one still, then one clip of 3 frames, each at the asked quality, and the losses get them
    assert asked == [((192, 256, 3), 80)] * 4 and received == [True, True]
    asked.clear(), received.clear()
    train_micro.main(["--out", str(tmp_path / "b.pt"), "--steps", "2", "--warmup", "1", "--clip-frames", "3"])
    assert asked == [] and len(received) == 2 and not any(received)  # off by default


def test_a_clip_window_is_the_same_whether_or_not_later_frames_are_rendered():
    """sample_clip renders frames only up to its window's end: the same window, pixels and
    labels as slicing the whole clip with the same random draws."""
    cfg = synth.SynthConfig(seed=0)
    for index, seed in ((3, 0), (5, 1), (8, 2)):
        frames, labels, k = train_micro.sample_clip(cfg, index, 4, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        stride = int(rng.integers(1, 3))
        start = int(rng.integers(0, cfg.frames - 3 * stride))
        full_frames, full_labels = synth.clip(cfg, "train", index)
        sel = list(range(start, start + 4 * stride, stride))
        assert len(frames) == 4 and all(np.array_equal(a, full_frames[t]) for a, t in zip(frames, sel))
        ids = [i for i in np.unique(full_labels[sel[0]]) if i and (full_labels[sel[0]] == i).sum() >= 64]
        assert k == len(ids) and all(np.array_equal(a > 0, np.isin(full_labels[t], ids)) for a, t in zip(labels, sel))
