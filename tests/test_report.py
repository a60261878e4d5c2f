"""Reports: tables, plots, summary.csv and README.md from hand-written result records."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.intervals import aggregate, intervals, paired
from bench.report import main

REPO = Path(__file__).resolve().parents[1]
MODEL = "sam2.1-t"
# (method, variant, w_bits, a_bits) -> task -> metrics; fp has no bits
VALUES = {
    ("fp", "", None, None): {"vos": {"J&F": 71.25, "J": 69.0, "F": 73.5},
                             "instseg": {"mIoU": 80.0, "mIoU_small": 60.0, "mIoU_medium": 82.0, "mIoU_large": 90.0},
                             "size": {"size_bytes": 80 * 2**20, "x_smaller_than_bf16": 1.0}},
    ("rtn", "", 4, 4): {"vos": {"J&F": 60.04, "J": 58.0, "F": 62.08},
                        "instseg": {"mIoU": 70.0, "mIoU_small": 40.0, "mIoU_medium": 72.0, "mIoU_large": 85.0},
                        "size": {"size_bytes": 21 * 2**20, "x_smaller_than_bf16": 3.81}},
    ("rtn", "", 2, 8): {"vos": {"J&F": 20.5, "J": 19.0, "F": 22.0},
                        "instseg": {"mIoU": 30.0, "mIoU_small": 10.0, "mIoU_medium": 31.0, "mIoU_large": 45.0},
                        "size": {"size_bytes": 11 * 2**20, "x_smaller_than_bf16": 7.27}},
    ("rtn", "decoder-only", 4, 4): {"vos": {"J&F": 68.4, "J": 66.0, "F": 70.8},
                                    "instseg": {"mIoU": 77.5, "mIoU_small": None, "mIoU_medium": 79.0,
                                                "mIoU_large": 88.0},
                                    "size": {"size_bytes": 78 * 2**20, "x_smaller_than_bf16": 1.03}},
    ("rtn", "decoder-only", 2, 8): {"vos": None,  # failed
                                    "instseg": {"mIoU": 50.0, "mIoU_small": 20.0, "mIoU_medium": 51.0,
                                                "mIoU_large": 66.0},
                                    "size": {"size_bytes": 77 * 2**20, "x_smaller_than_bf16": 1.04}},
}
ERROR = "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"


OFFSETS = [-3.0, -1.0, 1.0, 3.0, -2.0, 2.0, -0.5, 0.5]  # per item around the cell's value; mean 0


def items_for(task: str, metrics: dict, shift: int) -> list[dict]:
    """Items whose aggregate is `metrics` (vos: J, F; instseg: the size classes), spread by
    OFFSETS rotated by `shift`, so that two cells differ item by item."""
    offsets = OFFSETS[shift % 8:] + OFFSETS[: shift % 8]
    if task == "vos":
        return [{"sequence": f"seq{i // 2}", "object": i % 2 + 1, "J": metrics["J"] + o, "F": metrics["F"] + o / 2}
                for i, o in enumerate(offsets)]
    items = []
    for size in ("small", "medium", "large"):
        if metrics[f"mIoU_{size}"] is not None:
            items += [{"image": i + 1, "object": size, "IoU": metrics[f"mIoU_{size}"] + o, "area": size}
                      for i, o in enumerate(offsets[:4])]
    return items


def record(method: str, variant: str, w: int | None, a: int | None, task: str, metrics: dict | None,
           shift: int = 0) -> dict:
    items = items_for(task, metrics, shift) if metrics is not None and task in ("vos", "instseg") else []
    if task == "instseg" and items:
        metrics = {**metrics, "mIoU": aggregate("instseg", items)["mIoU"]}
    rec = {"model": MODEL, "method": method, "variant": variant, "w_bits": w, "a_bits": a, "task": task,
           "dataset": "synthetic val" if task != "size" else None,
           "status": "ok" if metrics is not None else "failed", "metrics": metrics or {}, "items": items,
           "config": {"cell": {"davis_root": "/home/u/.cache/sam-quant-bench/synth-v1/davis",
                               "coco_root": "/home/u/.cache/sam-quant-bench/synth-v1/coco", "split": "val"}},
           "timings": {}, "date": "2025-01-01T00:00:00+00:00", "cell_id": f"{method}{variant}{w}{a}{task}"}
    if metrics is None:
        rec.update(error=ERROR + "\nsecond line of the error", traceback="Traceback ...")
    if task == "instseg" and metrics is not None:
        rec["metrics"] = {**metrics, "n": 40, "multimask": False}
    return rec


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("results") / "mysweep"
    folder.mkdir()
    (folder / ".submitit").mkdir()  # executor logs: ignored
    for shift, ((method, variant, w, a), tasks) in enumerate(VALUES.items()):
        for task, metrics in tasks.items():
            rec = record(method, variant, w, a, task, metrics, shift)
            (folder / f"{rec['cell_id']}.json").write_text(json.dumps(rec, indent=2))
    return folder


@pytest.fixture(scope="module")
def report(results) -> Path:
    out = results.parent / "reports" / "mysweep"
    assert main([str(results), "--out", str(out)]) == 0
    return out


def md_rows(path: Path) -> dict[str, list[str]]:
    """Markdown table rows by their label (indent markup removed): label -> cells."""
    rows = {}
    for line in path.read_text().splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].replace("&emsp;", "")] = cells[1:]
    return rows


def test_files_exist(report):
    for name in ["README.md", "summary.csv", "tables/vos_jf.md", "tables/vos_jf.tex", "tables/vos_jf_delta.md",
                 "tables/instseg_miou.md", "tables/instseg_miou_small.tex", "tables/size_size_bytes.md",
                 "tables/size_x_smaller_than_bf16.tex", "tables/paper.md", "tables/paper.tex",
                 "tables/vos_jf_vs_rtn.md", "tables/instseg_miou_vs_rtn.tex", "paired.csv", "claims.md",
                 "plots/vos_jf_vs_bits.png", "plots/vos_jf_vs_bits.pdf", "plots/instseg_miou_vs_size.png",
                 "plots/instseg_miou_vs_size.pdf"]:
        assert (report / name).is_file(), name
    assert not list(report.parent.glob(".mysweep*")), "temporary folders left behind"


def pm(cell: dict, key: str, digits: int = 1) -> str:
    """The table's `±` of a hand-written cell: half its 95% interval, from bench.results."""
    lo, hi = intervals(cell["task"], cell["items"])["metrics"][key]
    return f"{(hi - lo) / 2:.{digits}f}"


def test_table_values_and_bold(report, results):
    text = (report / "tables" / "vos_jf.md").read_text()
    assert text.startswith("### vos: J&F (↑ higher is better)")
    rows = md_rows(report / "tables" / "vos_jf.md")
    assert rows["method"] == ["sam2.1-t W2A8", "sam2.1-t W4A4"]  # ordered by weight bits
    assert list(rows)[1:] == ["fp", "rtn", "decoder-only"]  # fp on top, variant under its method
    recs = {(r["method"], r["variant"], r["w_bits"], r["task"]): r
            for r in (json.loads(p.read_text()) for p in results.glob("*.json"))}
    fp_pm = pm(recs[("fp", "", None, "vos")], "J&F")
    assert rows["fp"] == [f"71.2 ±{fp_pm}"] * 2  # repeated under each bit column, never bold
    assert rows["rtn"] == [f"20.5 ±{pm(recs[('rtn', '', 2, 'vos')], 'J&F')}",
                           f"60.0 ±{pm(recs[('rtn', '', 4, 'vos')], 'J&F')}"]
    assert rows["decoder-only"] == ["-", f"**68.4** ±{pm(recs[('rtn', 'decoder-only', 4, 'vos')], 'J&F')}"]
    assert 0 < float(fp_pm) < 5
    assert "&emsp;decoder-only" in text and "±: half the width of the 95% bootstrap interval" in text
    size = md_rows(report / "tables" / "size_size_bytes.md")  # lower is better, no items: no interval
    assert size["rtn"] == ["**11.00**", "**21.00**"] and size["fp"] == ["80.00", "80.00"]
    head = (report / "tables" / "size_size_bytes.md").read_text().splitlines()[0]
    assert head == "### size: packed size (MiB) (↓ lower is better)"
    small = md_rows(report / "tables" / "instseg_miou_small.md")
    assert small["decoder-only"][1] == "-"  # a None metric is a dash, not a number
    assert small["decoder-only"][0].startswith("**20.0** ±")


def test_delta_tables_are_paired(report, results):
    recs = {(r["method"], r["variant"], r["w_bits"], r["task"]): r
            for r in (json.loads(p.read_text()) for p in results.glob("*.json"))}
    rows = md_rows(report / "tables" / "vos_jf_delta.md")
    fp = recs[("fp", "", None, "vos")]
    assert rows["fp (absolute)"][0].startswith("71.2 ±")
    for col, w in enumerate((2, 4)):
        rtn = recs[("rtn", "", w, "vos")]
        p = paired("vos", "J&F", rtn["items"], fp["items"])
        assert p.delta == pytest.approx(rtn["metrics"]["J&F"] - fp["metrics"]["J&F"])
        mark = "*" if p.significant else ""
        assert rows["rtn"][col] == f"{p.delta:+.1f} ±{(p.high - p.low) / 2:.1f}{mark}"
    assert rows["rtn"][0].endswith("*")  # -50.8 is far outside the noise
    vs_rtn = md_rows(report / "tables" / "vos_jf_vs_rtn.md")
    assert "rtn" not in vs_rtn and vs_rtn["rtn (absolute)"][1].startswith("60.0 ±")
    assert vs_rtn["decoder-only"][0] == "-"  # failed cell
    assert vs_rtn["decoder-only"][1].startswith(f"{68.4 - 60.04:+.1f} ±")  # one quantized row: no bold


def test_paired_csv(report, results):
    with open(report / "paired.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["model", "method", "variant", "w_bits", "a_bits", "task", "metric", "baseline", "delta",
                             "ci_low", "ci_high", "n_items"]
    recs = {(r["method"], r["variant"], r["w_bits"], r["task"]): r
            for r in (json.loads(p.read_text()) for p in results.glob("*.json"))}
    got = {(r["method"], r["variant"], r["w_bits"], r["task"], r["metric"], r["baseline"]): r for r in rows}
    r = got[("rtn", "decoder-only", "4", "instseg", "mIoU", "rtn")]
    a, b = recs[("rtn", "decoder-only", 4, "instseg")], recs[("rtn", "", 4, "instseg")]
    p = paired("instseg", "mIoU", a["items"], b["items"])
    assert p.n_items == 8  # the objects both scored (decoder-only has no small one)
    assert (float(r["delta"]), float(r["ci_low"]), float(r["ci_high"]), int(r["n_items"])) == pytest.approx(
        (p.delta, p.low, p.high, p.n_items))
    assert float(r["ci_low"]) <= float(r["delta"]) <= float(r["ci_high"])
    assert ("rtn", "", "4", "vos", "J&F", "fp") in got and ("rtn", "", "4", "vos", "J&F", "rtn") not in got
    assert not any(k[0] == "fp" for k in got)  # fp is a baseline only
    assert not any(k[3] == "size" for k in got)  # no items: no pairs


def test_latex_table(report):
    tex = (report / "tables" / "vos_jf.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "\\multicolumn{2}{c}{sam2.1-t}" in tex and "J\\&F ($\\uparrow$ higher is better)" in tex
    assert re.search(r"\\quad decoder-only & -- & \\textbf\{68\.4\}\{\\scriptsize\\,\$\\pm\$\d\.\d\} \\\\", tex)
    assert re.search(r"\$-\$50\.8\{\\scriptsize\\,\$\\pm\$[\d.]+\}\$\^\{\*\}\$",
                     (report / "tables" / "vos_jf_delta.tex").read_text())


def test_summary_matches_records(report, results):
    with open(report / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["model", "method", "variant", "w_bits", "a_bits", "bits", "task", "metric", "value",
                             "ci_low", "ci_high", "n_items", "seeds", "seed_sd", "status", "error"]
    by_key = {(r["method"], r["variant"], r["w_bits"], r["a_bits"], r["task"], r["metric"]): r for r in rows}
    n_expected = 0
    for path in results.glob("*.json"):
        rec = json.loads(path.read_text())
        bits = tuple("" if rec[k] is None else str(rec[k]) for k in ("w_bits", "a_bits"))
        key = (rec["method"], rec["variant"], *bits, rec["task"])
        if rec["status"] != "ok":
            r = by_key[(*key, "")]
            assert (r["status"], r["value"], r["error"]) == ("failed", "", ERROR)
            n_expected += 1
            continue
        numbers = {k: v for k, v in rec["metrics"].items() if not isinstance(v, bool)}
        ci = intervals(rec["task"], rec["items"])
        for metric, value in numbers.items():
            r = by_key[(*key, metric)]
            assert r["status"] == "ok" and r["value"] == ("" if value is None else repr(float(value)))
            if ci and metric in ci["metrics"]:
                assert (float(r["ci_low"]), float(r["ci_high"])) == pytest.approx(ci["metrics"][metric])
                assert float(r["ci_low"]) <= float(r["value"]) <= float(r["ci_high"])
                assert int(r["n_items"]) == len(rec["items"])
            else:
                assert r["ci_low"] == r["ci_high"] == r["n_items"] == ""
            n_expected += 1
    assert len(rows) == n_expected  # no other rows: nothing missing, non-numeric metrics left out
    assert rows[0]["method"] == "fp" and rows[0]["variant"] == "" and rows[0]["bits"] == "FP"


def test_readme_lists_failed_cell(report):
    text = (report / "README.md").read_text()
    assert f"- sam2.1-t rtn (decoder-only) W2A8 vos: {ERROR}\n" in text
    assert "second line" not in text
    assert "[md](tables/vos_jf.md)" in text and "plots/vos_jf_vs_bits.png" in text
    assert "1 failed, 0 missing" in text


def test_paper_match_needs_the_same_dataset(report, tmp_path):
    text = (report / "tables" / "paper.md").read_text()
    assert "No cell of this sweep matches a published number" in text  # synthetic data: the papers' are not
    folder = tmp_path / "r"
    folder.mkdir()
    for i, dataset in enumerate(("sa-v test", "mose val", "davis-2017 val")):
        rec = record("fp", "", None, None, "vos", VALUES[("fp", "", None, None)]["vos"]) | {"dataset": dataset}
        rec["config"]["cell"]["davis_root"] = f"/data/{dataset.split()[0]}"
        (folder / f"{i}.json").write_text(json.dumps(rec | {"model": f"sam2.1-{'tsl'[i]}"}))
    assert main([str(folder), "--out", str(tmp_path / "out")]) == 0
    rows = [line for line in (tmp_path / "out" / "tables" / "paper.md").read_text().splitlines()
            if line.startswith("| sam")]
    assert len(rows) == 2  # SA-V test for sam2.1-t, MOSE val for sam2.1-s; no published DAVIS figure
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[:7] == ["sam2.1-t", "fp", "FP", "vos", "J&F", "data/sa-v val", "sa-v test"]
    assert cells[8:] == ["71.2", "76.5", f"{71.25 - 76.5:+.1f}"]
    assert rows[1].startswith("| sam2.1-s | fp | FP | vos | J&F |") and "| mose val |" in rows[1]
    assert "†" not in "".join(rows)  # the SAM2 README numbers are checked


def test_paper_unchecked_and_empty(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    rec = record("ptq4sam", "L", 4, 4, "coco-map", {"mAP": 30.0})  # paper: instseg mAP, checked=no
    rec.update(model="sam-b", dataset="coco val2017")
    (folder / "a.json").write_text(json.dumps(rec))
    assert main([str(folder), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "tables" / "paper.md").read_text()
    assert "| sam-b | ptq4sam (L) | W4A4 | coco-map | mAP |" in text
    assert "| 30.0 | 18.4† | +11.6 |" in text and "†: not checked" in text
    rec["model"] = "micro"
    (folder / "a.json").write_text(json.dumps(rec))
    assert main([str(folder), "--out", str(tmp_path / "out")]) == 0
    assert "No cell of this sweep matches a published number" in (tmp_path / "out" / "tables" / "paper.md").read_text()


def test_deterministic(report, results):
    again = results.parent / "again"
    assert main([str(results), "--out", str(again)]) == 0
    files = sorted(p.relative_to(report) for p in report.rglob("*") if p.suffix in (".md", ".tex", ".csv", ".pdf"))
    assert len(files) > 20
    for name in files:
        assert (report / name).read_bytes() == (again / name).read_bytes(), name


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "not-a-record"])
def test_bad_input(tmp_path, results, capsys, case):
    folder = tmp_path / "bad"
    if case != "missing":
        folder.mkdir()
    if case in ("corrupt", "not-a-record"):
        shutil.copy(next(results.glob("*.json")), folder / "good.json")
        (folder / "x.json").write_text('{"model": "micro", "met' if case == "corrupt" else "[1, 2]")
    out = tmp_path / "reports" / "bad"
    assert main([str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert str(folder / "x.json" if case in ("corrupt", "not-a-record") else folder) in err
    assert not (tmp_path / "reports").exists()


def test_cli_without_torch(tmp_path, results):
    """The command line: help says what is written; a report never imports torch; bad input exits 2."""
    run = [sys.executable, "-c", "import sys, runpy; sys.argv = ['bench.report'] + sys.argv[1:]; "
           "code = 0\ntry: runpy.run_module('bench.report', run_name='__main__')\n"
           "except SystemExit as e: code = e.code\nassert 'torch' not in sys.modules, 'torch imported'\nsys.exit(code)"]
    help_text = subprocess.run(run + ["--help"], capture_output=True, text=True, cwd=REPO).stdout
    assert "summary.csv" in help_text and "README.md" in help_text and ".tex" in help_text
    done = subprocess.run(run + [str(results), "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    bad = subprocess.run(run + [str(tmp_path / "nope")], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr == f"error: {tmp_path / 'nope'}: no such results folder\n"
    assert not (tmp_path / "reports").exists()


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no LaTeX engine (pdflatex) on this machine")
def test_latex_compiles(report, tmp_path):
    """Every table of the report, and a published-number table with an unchecked (dagger) value."""
    folder = tmp_path / "r"
    folder.mkdir()
    rec = record("ptq4sam", "L", 4, 4, "coco-map", {"mAP": 30.0}) | {"model": "sam-b", "dataset": "coco val2017"}
    (folder / "a.json").write_text(json.dumps(rec))
    assert main([str(folder), "--out", str(tmp_path / "out")]) == 0
    tables = sorted((report / "tables").glob("*.tex")) + [tmp_path / "out" / "tables" / "paper.tex"]
    body = "\n".join(f"\\input{{{p.as_posix()}}}\n\\clearpage" for p in tables)
    (tmp_path / "doc.tex").write_text("\\documentclass{article}\n\\usepackage[utf8]{inputenc}\n\\usepackage{booktabs}\n"
                                      "\\usepackage[margin=1cm,landscape]{geometry}\n\\begin{document}\n"
                                      f"{body}\n\\end{{document}}\n")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 0
    assert not re.search(r"^! ", done.stdout, re.M)


def test_rows_put_fp_then_rtn_above_the_methods():
    from bench.results import cell_order
    methods = ["saqsam", "lsq", "rtn", "ptq4sam", "fp", "aaa"]
    ranked = sorted(methods, key=lambda m: cell_order(MODEL, m, "", 4, 4, "vos"))
    assert ranked == ["fp", "rtn", "aaa", "lsq", "ptq4sam", "saqsam"]


def test_per_layer_plots_of_a_weight_refit(tmp_path):
    """Cells whose `method_info` has per-layer figures get one plot per configuration (vos and
    instseg cells share it); cells without them get none."""
    from bench.results import LAYER_QUANTILES

    folder = tmp_path / "refit"
    folder.mkdir()
    layers = [{"layer": f"image_encoder.trunk.blocks.{i}.mlp", "norm_before": 2.0, "norm_after": 1.9,
               "var_before": 0.1, "var_after": 0.09, "q_before": [q - 0.5 for q in LAYER_QUANTILES],
               "q_after": [0.9 * (q - 0.5) for q in LAYER_QUANTILES], "qerr_before": 0.1 / (i + 1),
               "qerr_after": 0.05 / (i + 1)} for i in range(4)]
    for task in ("vos", "instseg"):
        for method, variant, w, a in (("fp", "", None, None), ("qsam2", "vrc-only", 2, 4), ("rtn", "", 2, 4)):
            rec = record(method, variant, w, a, task, VALUES[("fp", "", None, None)][task])
            rec["cell_id"] += "x"
            if method == "qsam2":
                rec["method_info"] = {"layers": layers}
            (folder / f"{rec['cell_id']}.json").write_text(json.dumps(rec))
    out = tmp_path / "report"
    assert main([str(folder), "--out", str(out)]) == 0
    plots = sorted(p.name for p in (out / "plots").glob("layers_*"))
    assert plots == ["layers_sam2.1-t_qsam2_vrc-only_W2A4.pdf", "layers_sam2.1-t_qsam2_vrc-only_W2A4.png"]
    assert "plots/layers_sam2.1-t_qsam2_vrc-only_W2A4.png" in (out / "README.md").read_text()


def test_accuracy_against_deployed_latency_and_bytes(tmp_path):
    """With `latency` records beside the accuracy cells, the report plots accuracy against the
    deployed latency and bytes (a configuration without a backend has no point)."""
    folder = tmp_path / "deploysweep"
    folder.mkdir()
    acc = {"mIoU": 70.0, "mIoU_small": 40.0, "mIoU_medium": 72.0, "mIoU_large": 85.0}
    lat = {"deployed": True, "image_encoder_ms": 1500.0, "deployed_model_bytes": 30 * 2**20,
           "image_encoder_speedup": 1.3}
    recs = [record("fp", "", None, None, "instseg", {**acc, "mIoU": 80.0}),
            record("rtn", "", 8, 8, "instseg", acc), record("rtn", "", 8, 8, "latency", lat),
            record("rtn", "", 4, 4, "instseg", acc), record("rtn", "", 4, 4, "latency", {"deployed": False})]
    for rec in recs:
        (folder / f"{rec['cell_id']}.json").write_text(json.dumps(rec))
    out = tmp_path / "out"
    assert main([str(folder), "--out", str(out)]) == 0
    for stem in ("instseg_miou_vs_latency", "instseg_miou_vs_deployed_bytes"):
        assert (out / "plots" / f"{stem}.png").is_file(), stem
        assert f"plots/{stem}.png" in (out / "README.md").read_text()
    assert not (out / "plots" / "latency_image_encoder_speedup_vs_bits.png").exists()
    assert (out / "tables" / "latency_image_encoder_ms.md").is_file()
    # no FP cell has a latency value: no "difference to FP" view of it; RTN has one: its view is there
    assert not (out / "tables" / "latency_image_encoder_ms_delta.md").exists()
    assert (out / "tables" / "latency_image_encoder_ms_vs_rtn.md").is_file()
    assert (out / "tables" / "instseg_miou_delta.md").is_file()
