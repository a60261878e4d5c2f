"""The results layer: bootstrap intervals, paired comparisons, COCO AP from items, claims and
published-number matching, record reading and writing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench import BenchError
from bench.intervals import RESAMPLES, _resample_weights, aggregate, coco_ap, coco_ap_resampled, intervals, paired
from bench.paper import PAPER_NAMES, dataset_key, evaluate_claims, load_claims, load_paper, match
from bench.results import load_cells, read_record, write_json_atomic


def vos_items(rng: np.random.Generator, n_seq: int = 8, shift: float = 0.0) -> list[dict]:
    return [{"sequence": f"s{s}", "object": o, "J": float(rng.uniform(40, 95)) + shift,
             "F": float(rng.uniform(40, 95)) + shift} for s in range(n_seq) for o in range(1, 1 + s % 3 + 1)]


def test_bootstrap_equals_a_plain_loop_over_resamples():
    """The vectorized interval equals resampling whole sequences one by one with the same draws."""
    items = vos_items(np.random.default_rng(1))
    got = intervals("vos", items)
    seqs = sorted({it["sequence"] for it in items})
    weights = _resample_weights(len(seqs), 0, RESAMPLES)
    values = []
    for w in weights:
        chosen = [it for s, c in zip(seqs, w) for _ in range(c) for it in items if it["sequence"] == s]
        values.append(np.mean([(it["J"] + it["F"]) / 2 for it in chosen]))
    assert got["metrics"]["J&F"] == pytest.approx(list(np.percentile(values, [2.5, 97.5])), abs=1e-9)
    assert got["n_items"] == len(items) and got["n_units"] == 8 and got["level"] == 0.95
    lo, hi = got["metrics"]["J&F"]
    assert lo < aggregate("vos", items)["J&F"] < hi and 1 < hi - lo < 30


def test_interval_is_fixed_by_its_seed_and_narrows_with_more_units():
    rng = np.random.default_rng(2)
    few, many = vos_items(rng, 8), vos_items(rng, 64)
    assert intervals("vos", few) == intervals("vos", few)
    width = [np.diff(intervals("vos", x)["metrics"]["J"])[0] for x in (few, many)]
    assert width[1] < 0.75 * width[0]


def test_paired_difference_uses_the_same_items():
    rng = np.random.default_rng(3)
    base = vos_items(rng)
    better = [{**it, "J": it["J"] + 2.0 + float(rng.normal(0, 0.5)), "F": it["F"] + 2.0} for it in base]
    p = paired("vos", "J&F", better, base)
    assert p.delta == pytest.approx(aggregate("vos", better)["J&F"] - aggregate("vos", base)["J&F"])
    assert p.significant and 0 < p.low < p.delta < p.high < 4 and p.n_items == len(base)
    # unpaired noise of the items (tens of points) would hide a 2-point gain; pairing does not
    lo, hi = intervals("vos", base)["metrics"]["J&F"]
    assert hi - lo > 4 * (p.high - p.low)
    same = paired("vos", "J&F", base, base)
    assert (same.delta, same.low, same.high) == (0, 0, 0) and not same.significant
    # only the common items count
    p2 = paired("vos", "J", better[:-3], base)
    assert p2.n_items == len(base) - 3


def test_coco_ap_from_items_equals_cocoeval_and_pairs_missing_items_as_empty():
    from bench.data.coco import quiet_coco
    from bench.metrics.coco import coco_segm_map, encode_rle

    rng = np.random.default_rng(4)
    images, anns, results = [], [], []
    for i in range(1, 7):
        images.append({"id": i, "width": 40, "height": 40, "file_name": f"{i}.jpg"})
        for k in range(3):
            m = np.zeros((40, 40), np.uint8)
            y, x = rng.integers(0, 25, 2)
            m[y:y + 12, x:x + 12] = 1
            crowd = int(k == 2 and i == 3)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1 + k % 2, "iscrowd": crowd,
                         "segmentation": encode_rle(m), "area": float(m.sum()), "bbox": [float(x), float(y), 12., 12.]})
            for _ in range(2):  # a near hit and a miss per object
                p = np.roll(m, int(rng.integers(-4, 5)), axis=int(rng.integers(0, 2)))
                results.append({"image_id": i, "category_id": 1 + k % 2, "segmentation": encode_rle(p),
                                "score": float(rng.uniform())})
    gt = quiet_coco({"images": images, "annotations": anns, "categories": [{"id": 1}, {"id": 2}]})
    out = coco_segm_map(gt, results)
    assert coco_ap(out["items"])["mAP"] == pytest.approx(out["mAP"], abs=1e-12)
    subset = coco_segm_map(gt, results, image_ids=[1, 2, 5])
    assert coco_ap([it for it in out["items"] if it["image"] in (1, 2, 5)])["mAP"] == pytest.approx(subset["mAP"])
    # a cell with no detection on an image is paired as that image left empty
    fewer = [it for it in out["items"] if it["image"] != 4]
    p = paired("coco-map", "mAP", fewer, out["items"])
    empty = [it if it["image"] != 4 else {**it, "dets": []} for it in out["items"]]
    assert p.delta == pytest.approx(coco_ap(empty)["mAP"] - out["mAP"])
    lo, hi = intervals("coco-map", out["items"])["metrics"]["mAP"]
    assert lo < out["mAP"] < hi
    # the vectorized resampling equals AP of the resampled items laid out one by one
    units = sorted({it["image"] for it in out["items"]})
    unit = np.array([units.index(it["image"]) for it in out["items"]])
    weights = np.vstack([np.ones(len(units), int), _resample_weights(len(units), 7, 20)])
    fast = coco_ap_resampled(out["items"], unit, weights)["mAP"]
    for w, got in zip(weights, fast):
        drawn = [it for u, c in enumerate(w) for _ in range(c) for it in out["items"] if it["image"] == units[u]]
        assert got == pytest.approx(coco_ap(drawn)["mAP"], abs=1e-9)
    assert fast[0] == pytest.approx(out["mAP"], abs=1e-12)


def test_writer_turns_non_finite_numbers_into_null_and_reader_refuses_unknown_schema(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"model": "micro", "method": "rtn", "task": "vos", "status": "ok",
                             "metrics": {"J": math.nan, "F": math.inf}, "schema_version": 2})
    rec = json.loads(path.read_text())
    assert rec["metrics"] == {"J": None, "F": None} and oct(path.stat().st_mode)[-3:] == "644"
    assert not list(tmp_path.glob(".*"))  # no temporary file left
    assert read_record(path)["method"] == "rtn"
    path.write_text(json.dumps({**rec, "schema_version": 99}))
    with pytest.raises(BenchError, match=r"r\.json: result record of schema version 99"):
        read_record(path)


def record(model, method, variant, w, a, task, items, seed=0, tag=""):
    metrics = {k: v for k, v in aggregate(task, items).items()} if items else {}
    return {"model": model, "method": method, "variant": variant, "tag": tag, "w_bits": w, "a_bits": a,
            "task": task, "status": "ok", "metrics": metrics, "items": items, "config": {"cell": {"seed": seed}},
            "date": "2026-01-01T00:00:00+00:00", "schema_version": 2}


def write(folder, recs):
    folder.mkdir(exist_ok=True)
    for i, r in enumerate(recs):
        write_json_atomic(folder / f"{i:04d}.json", r)
    return load_cells(folder)


def test_seeds_fold_into_one_cell_with_their_spread(tmp_path):
    rng = np.random.default_rng(5)
    base = vos_items(rng)
    reps = [[{**it, "J": it["J"] + s, "F": it["F"] + s} for it in base] for s in (0.0, 1.0, 2.0)]
    cells = write(tmp_path / "r", [record("micro", "lsq", "", 4, 4, "vos", r, seed=i) for i, r in enumerate(reps)])
    assert len(cells) == 1
    row = cells.iloc[0]
    assert row["seeds"] == [0, 1, 2]
    assert row["metrics"]["J"] == pytest.approx(aggregate("vos", base)["J"] + 1.0)
    assert row["spread"]["J"] == pytest.approx(1.0)  # sd of +0, +1, +2
    assert row["intervals"]["J"][0] < row["metrics"]["J"] < row["intervals"]["J"][1]


def claim_cells(tmp_path, gain: float):
    rng = np.random.default_rng(6)
    recs = []
    for task in ("vos", "instseg"):
        base = vos_items(rng, 16) if task == "vos" else [
            {"image": i, "object": o, "IoU": float(rng.uniform(30, 90)), "area": "medium"}
            for i in range(20) for o in range(3)]

        def noisy(items, g):
            return [{**it, **{k: it[k] + g + float(rng.normal(0, 0.3)) for k in ("J", "F", "IoU") if k in it}}
                    for it in items]

        recs += [record("micro", "lsq", "", 2, 4, task, noisy(base, 0.0)),
                 record("micro", "pact", "", 2, 4, task, noisy(base, 0.5)),
                 record("micro", "qsam2", "", 2, 4, task, noisy(base, 0.5 + gain)),
                 record("micro", "rtn", "", 2, 4, task, noisy(base, -10.0)),
                 record("micro", "qsam2", "vrc-only", 2, 4, task, noisy(base, -10.0 + gain))]
    return write(tmp_path / f"c{gain}", recs)


@pytest.mark.parametrize("gain, verdict", [(5.0, "reproduced"), (-5.0, "contradicted"), (0.0, "inconclusive")])
def test_claim_verdicts(tmp_path, gain, verdict):
    rows = {r["claim_id"]: r for r in evaluate_claims(claim_cells(tmp_path, gain), load_claims())}
    for claim in ("qsam2-vs-qat-jf", "qsam2-vs-qat-miou", "vrc-ptq"):
        r = rows[claim]
        assert r["where"][0] == "micro" and r["verdict"] == verdict, (claim, r)
    r = rows["qsam2-vs-qat-miou"]
    assert r["baseline"] == "pact"  # the best of lsq and pact
    assert r["ours"] == pytest.approx(gain, abs=0.2) and r["low"] <= r["ours"] <= r["high"]
    assert rows["qsam2-size"]["verdict"] == "not measured by this sweep"  # no size task
    assert rows["ptq4sam-l-over-s"]["where"] is None


def test_claims_md_in_the_report(tmp_path):
    from bench.report import main

    claim_cells(tmp_path, 5.0)
    assert main([str(tmp_path / "c5.0"), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "claims.md").read_text()
    assert "| qsam2-vs-qat-jf: " in text and "(paper: sam2.1-*)" in text and "**reproduced**" in text
    assert "**not measured by this sweep**" in text
    assert "reproduced" in (tmp_path / "out" / "README.md").read_text()


def test_every_published_row_is_matched_by_records_the_harness_makes(tmp_path):
    """Records named as our methods and variants carry them (PAPER_NAMES), one per (model,
    method, bits, task, metric) of the CSV: every published row finds its cell."""
    paper = load_paper()
    ours = {v: k for k, v in PAPER_NAMES.items()}
    assert set(paper["method"]) <= set(ours), set(paper["method"]) - set(ours)
    rows = []
    for r in paper.to_dict("records"):
        method, variant = ours[r["method"]]
        rows.append({"model": r["model"], "method": method, "raw_variant": variant, "tag": "", "variant": variant,
                     "w_bits": r["w_bits"], "a_bits": r["a_bits"], "task": r["task"], "metric": r["metric"],
                     "value": 1.0, "data": "", "dataset": dataset_key(r["prompts_or_dataset"])})
    import pandas as pd

    unique = {tuple(r.values()): r for r in rows}.values()  # one of our cells per key
    found = match(pd.DataFrame(list(unique), dtype=object), paper)
    assert len(found) == len(paper)
    tagged = pd.DataFrame([{**rows[0], "tag": "i8"}], dtype=object)
    assert match(tagged, paper).empty  # a budget study is not the paper's cell
    elsewhere = pd.DataFrame([{**rows[0], "dataset": "synthetic val"}], dtype=object)
    assert match(elsewhere, paper).empty  # nor a cell on other data
    assert dataset_key("coco-val2017 YOLOX-l boxes") == dataset_key("coco val2017") == "coco val2017"


# the options under which each method's canonical variant is the one PAPER_NAMES translates
PAPER_OPTIONS = {("fp", ""): {}, ("rtn", ""): {"scope_preset": "ptq4sam"}, ("ptq4sam", "S"): {},
                 ("ptq4sam", "L"): {"recon": True}, ("ptq4sam", "L-noBIG-noAGQ"): {"recon": True, "big": False,
                                                                                  "agq": False},
                 ("saqsam", "PCC+PAR"): {}, ("saqsam", "PCC"): {"recon": False, "par": False},
                 ("saqsam", "PAR"): {"pcc": False}}


def test_paper_names_are_variants_the_methods_give():
    from bench.method import Method

    assert set(PAPER_OPTIONS) == set(PAPER_NAMES)
    for (name, variant), options in PAPER_OPTIONS.items():
        bits = (None, None) if name == "fp" else (4, 4)
        assert Method.from_options(name, *bits, options).variant == variant, (name, options)
