"""The papers' setting on SAM ViT-B/L/H (sweeps/w6a6-w4a4.yaml): records of its cells, labelled as
the harness labels them, put the published PTQ4SAM / SAQ-SAM rows (bench/data/paper_results.csv)
beside ours in the report's tables/paper.md."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np

from bench.cell import dataset_label
from bench.intervals import aggregate
from bench.paper import PAPER_CSV, dataset_key
from bench.report import main
from bench.results import bits_label, data_used
from bench.sweepspec import load

REPO = Path(__file__).resolve().parents[1]
COCO = "/datasets/coco"  # not a synthetic set: the record's dataset is "coco val"
MODELS = ("sam-b", "sam-l")  # sam-h gets no records: its published rows must not appear
# the papers' name -> our (method, variant) rows of the sweep that carry it; `+evalbug` rows
# (the official code's evaluation, with which the figures were published) carry it too
OURS = {"fp": [("fp", "")], "minmax": [("rtn", "")], "ptq4sam-s": [("ptq4sam", "S")],
        "ptq4sam-l": [("ptq4sam", "L"), ("ptq4sam", "L+evalbug")],
        "saq-sam": [("saqsam", "PCC+PAR"), ("saqsam", "PCC+PAR+evalbug")],
        "saq-sam-pcc-only": [("saqsam", "PCC")], "saq-sam-par-only": [("saqsam", "PAR")],
        "qdrop": [("ptq4sam", "L-noBIG-noAGQ")]}


def coco_items(seed: int) -> list[dict]:
    """coco-map items as bench.metrics.coco.ap_items writes them: per (image, category) the GT
    count and each detection's [score, matched bits, ignored bits] over the 10 IoU thresholds."""
    rng = np.random.default_rng(seed)
    items = []
    for image in range(1, 13):
        for category in (1, 2):
            dets = [[round(float(rng.uniform(0.05, 1.0)), 4), int((1 << int(rng.integers(0, 11))) - 1), 0]
                    for _ in range(int(rng.integers(0, 4)))]
            items.append({"image": image, "category": category, "gt": int(rng.integers(1, 3)), "dets": dets})
    return items


def write_records(folder: Path, monkeypatch) -> list[dict]:
    """One ok record per cell of the shipped sweep on MODELS, as bench.run writes it."""
    monkeypatch.setenv("BENCH_COCO", COCO)
    monkeypatch.setenv("BENCH_CHECKPOINTS", "/ckpt")
    sweep = load(REPO / "sweeps" / "w6a6-w4a4.yaml")
    recs = []
    for i, sc in enumerate(c for c in sweep.cells if c.cell.model in MODELS):
        items = coco_items(i)
        cell = sc.cell
        rec = {"model": cell.model, "method": cell.method, "variant": sc.variant, "tag": cell.tag,
               "task": cell.task, "w_bits": cell.w_bits, "a_bits": cell.a_bits, "dataset": dataset_label(cell),
               "status": "ok", "config": {"cell": dict(cell.__dict__), "method": {}},
               "metrics": {"mAP": aggregate("coco-map", items)["mAP"], "AP50": None, "AP75": None, "APs": None,
                           "APm": None, "APl": None, "maxDets": [1, 10, 100], "detections": 48},
               "items": items, "timings": {}, "date": "2025-01-01T00:00:00+00:00", "cell_id": sc.cell_id,
               "schema_version": 2}
        (folder / f"{sc.cell_id}.json").write_text(json.dumps(rec, default=list))
        recs.append(rec)
    return recs


def table_rows(path: Path) -> list[tuple[str, ...]]:
    lines = [line for line in path.read_text().splitlines() if line.startswith("| sam")]
    return [tuple(c.strip() for c in line.strip("|").split("|")) for line in lines]


def test_sweep_is_the_papers_setting(monkeypatch):
    monkeypatch.setenv("BENCH_COCO", COCO)
    sweep = load(REPO / "sweeps" / "w6a6-w4a4.yaml")
    cells = [c.cell for c in sweep.cells]
    assert {c.model for c in cells} == {"sam-b", "sam-l", "sam-h"} and {c.task for c in cells} == {"coco-map"}
    assert {(c.w_bits, c.a_bits) for c in cells if c.method != "fp"} == {(6, 6), (4, 4)}
    rows = {(c.cell.method, c.variant) for c in sweep.cells}
    assert {r for names in OURS.values() for r in names} <= rows
    assert dataset_label(cells[0]) == "coco val" and dataset_key("coco val") == dataset_key("coco-val2017 x boxes")
    scopes = {(c.method, c.method_options.get("scope_preset", "ptq4sam")) for c in cells if c.method != "fp"}
    assert {s for _, s in scopes} == {"ptq4sam"}  # the protocol's full-precision list on every row
    sam2 = load(REPO / "sweeps" / "w6a6-w4a4-sam2.yaml")
    assert {c.cell.model for c in sam2.cells} == {"sam2.1-t", "sam2.1-s", "sam2.1-b+", "sam2.1-l"}
    assert {(c.cell.method, c.variant) for c in sam2.cells} == rows  # the same rows


def test_published_rows_beside_ours_on_sam(tmp_path, monkeypatch):
    results = tmp_path / "w6a6-w4a4"
    results.mkdir()
    recs = write_records(results, monkeypatch)
    assert main([str(results), "--out", str(tmp_path / "report")]) == 0
    got = table_rows(tmp_path / "report" / "tables" / "paper.md")

    with open(PAPER_CSV, newline="") as f:
        published = [r for r in csv.DictReader(f) if r["model"] in MODELS]
    assert {r["method"] for r in published} <= set(OURS) and {r["task"] for r in published} == {"instseg"}
    ours = {(r["model"], r["method"], r["variant"], r["w_bits"], r["a_bits"]): r for r in recs}
    assert len({r["metrics"]["mAP"] for r in recs}) == len(recs)  # a value per cell: no mix-up goes unseen
    expected = []
    for p in published:
        bits = (None, None) if p["w_bits"] == "32" else (int(p["w_bits"]), int(p["a_bits"]))
        for method, variant in OURS[p["method"]]:
            rec = ours[(p["model"], method, variant, *bits)]
            value, pub = rec["metrics"]["mAP"], float(p["value"])
            expected.append((p["model"], f"{method} ({variant})" if variant else method,
                             bits_label(method, *bits), "coco-map", "mAP", data_used(rec), p["prompts_or_dataset"],
                             f"{p['paper']}: {p['source']}", f"{value:.1f}",
                             f"{pub:.1f}" + ("" if p["checked"] == "yes" else "†"), f"{value - pub:+.1f}"))
    assert Counter(got) == Counter(expected)
    # a few of them spelled out: both detectors' rows, the evaluation-bug rows, MinMax, FP
    assert {(r[0], r[1], r[2], r[6]) for r in got} >= {
        ("sam-b", "saqsam (PCC+PAR)", "W4A4", "coco-val2017 YOLOX-l boxes"),
        ("sam-l", "ptq4sam (L+evalbug)", "W4A4", "coco-val2017 DINO(FocalNet-L) boxes"),
        ("sam-b", "rtn", "W6A6", "coco-val2017 DINO(FocalNet-L) boxes"),
        ("sam-b", "fp", "FP", "coco-val2017 YOLOX-l boxes")}
    assert len(got) == sum(len(OURS[p["method"]]) for p in published) > 40
    assert not any(r[1].startswith(("ptq4sam (S-no", "saqsam (recon")) for r in got)  # no published counterpart

