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

from bench.report import METRICS, main

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


def record(method: str, variant: str, w: int | None, a: int | None, task: str, metrics: dict | None) -> dict:
    rec = {"model": MODEL, "method": method, "variant": variant, "w_bits": w, "a_bits": a, "task": task,
           "status": "ok" if metrics is not None else "failed", "metrics": metrics or {},
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
    for (method, variant, w, a), tasks in VALUES.items():
        for task, metrics in tasks.items():
            rec = record(method, variant, w, a, task, metrics)
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
                 "plots/vos_jf_vs_bits.png", "plots/vos_jf_vs_bits.pdf", "plots/instseg_miou_vs_size.png",
                 "plots/instseg_miou_vs_size.pdf"]:
        assert (report / name).is_file(), name
    assert not list(report.parent.glob(".mysweep*")), "temporary folders left behind"


def test_table_values_and_bold(report):
    text = (report / "tables" / "vos_jf.md").read_text()
    assert text.startswith("### vos: J&F (↑ higher is better)")
    rows = md_rows(report / "tables" / "vos_jf.md")
    assert rows["method"] == ["sam2.1-t W2A8", "sam2.1-t W4A4"]  # ordered by weight bits
    assert list(rows)[1:] == ["fp", "rtn", "decoder-only"]  # fp on top, variant under its method
    assert rows["fp"] == ["71.2", "71.2"]  # repeated under each bit column, never bold
    assert rows["rtn"] == ["20.5", "60.0"]
    assert rows["decoder-only"] == ["-", "**68.4**"]  # failed cell: a dash
    assert "&emsp;decoder-only" in text
    size = md_rows(report / "tables" / "size_size_bytes.md")  # lower is better
    assert size["rtn"] == ["**11.00**", "**21.00**"] and size["fp"] == ["80.00", "80.00"]
    assert "↓ lower is better" in (report / "tables" / "size_size_bytes.md").read_text()
    small = md_rows(report / "tables" / "instseg_miou_small.md")
    assert small["decoder-only"] == ["**20.0**", "-"]  # a None metric is a dash, not a number


def test_delta_table(report):
    rows = md_rows(report / "tables" / "vos_jf_delta.md")
    fp = VALUES[("fp", "", None, None)]["vos"]["J&F"]
    assert rows["fp (absolute)"] == ["71.2", "71.2"]
    assert rows["rtn"] == [f"{20.5 - fp:+.1f}", f"{60.04 - fp:+.1f}"] == ["-50.8", "-11.2"]
    assert rows["decoder-only"] == ["-", f"**{68.4 - fp:+.1f}**"]


def test_latex_table(report):
    tex = (report / "tables" / "vos_jf.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "\\multicolumn{2}{c}{sam2.1-t}" in tex and "J\\&F ($\\uparrow$ higher is better)" in tex
    assert "\\quad decoder-only & -- & \\textbf{68.4} \\\\" in tex
    assert "$-$50.8" in (report / "tables" / "vos_jf_delta.tex").read_text()


def test_summary_matches_records(report, results):
    with open(report / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:10] == ["model", "method", "variant", "w_bits", "a_bits", "bits", "task", "metric", "value",
                                  "status"]
    by_key = {(r["method"], r["variant"], r["w_bits"], r["a_bits"], r["task"], r["metric"]): r for r in rows}
    n_expected = 0
    for (method, variant, w, a), tasks in VALUES.items():
        bits = ("" if w is None else str(w), "" if a is None else str(a))
        for task, metrics in tasks.items():
            if metrics is None:
                r = by_key[(method, variant, *bits, task, "")]
                assert (r["status"], r["value"], r["error"]) == ("failed", "", ERROR)
                n_expected += 1
                continue
            extra = {"n": 40} if task == "instseg" else {}
            for metric, value in {**metrics, **extra}.items():
                r = by_key[(method, variant, *bits, task, metric)]
                assert r["status"] == "ok" and r["value"] == ("" if value is None else repr(float(value)))
                n_expected += 1
    assert len(rows) == n_expected  # no other rows: nothing missing, non-numeric metrics left out
    assert rows[0]["method"] == "fp" and rows[0]["variant"] == "" and rows[0]["bits"] == "FP"


def test_readme_lists_failed_cell(report):
    text = (report / "README.md").read_text()
    assert f"- sam2.1-t rtn (decoder-only) W2A8 vos: {ERROR}\n" in text
    assert "second line" not in text
    assert "[md](tables/vos_jf.md)" in text and "plots/vos_jf_vs_bits.png" in text
    assert "1 failed, 0 missing" in text


def test_paper_match(report):
    rows = [line for line in (report / "tables" / "paper.md").read_text().splitlines() if line.startswith("| sam")]
    # sam2.1-t fp vos J&F is published for three datasets (SAM2 README, checked)
    assert len(rows) == 3
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[:5] == ["sam2.1-t", "fp", "FP", "vos", "J&F"]
    assert cells[5] == "synth-v1/davis val" and cells[6] == "lvos v2"
    assert cells[8:] == ["71.2", "77.3", f"{71.25 - 77.3:+.1f}"]
    assert "†" not in "".join(rows)  # the SAM2 README numbers are checked


def test_paper_unchecked_and_empty(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    rec = record("ptq4sam", "l", 4, 4, "coco-map", {"mAP": 30.0})  # paper: instseg mAP, checked=no
    rec["model"] = "sam-b"
    (folder / "a.json").write_text(json.dumps(rec))
    assert main([str(folder), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "tables" / "paper.md").read_text()
    assert "| sam-b | ptq4sam (l) | W4A4 | coco-map | mAP |" in text
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


def test_directions_match_tasks():
    """The report's metric directions are the tasks' own (`HIGHER_IS_BETTER`)."""
    from bench.tasks import coco_map, instseg, size, vos

    tasks = {"vos": vos, "instseg": instseg, "coco-map": coco_map, "size": size}
    for m in METRICS:
        assert tasks[m.task].HIGHER_IS_BETTER[m.key] == m.higher, m


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no LaTeX engine (pdflatex) on this machine")
def test_latex_compiles(report, tmp_path):
    """Every table of the report, and a published-number table with an unchecked (dagger) value."""
    folder = tmp_path / "r"
    folder.mkdir()
    rec = record("ptq4sam", "l", 4, 4, "coco-map", {"mAP": 30.0}) | {"model": "sam-b"}
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
    from bench.report import cell_order
    methods = ["saqsam", "lsq", "rtn", "ptq4sam", "fp", "aaa"]
    ranked = sorted(methods, key=lambda m: cell_order(MODEL, m, "", 4, 4, "vos"))
    assert ranked == ["fp", "rtn", "aaa", "lsq", "ptq4sam", "saqsam"]
