"""Tables, plots and a long-form CSV from a sweep's result records.

    python -m bench.report results/<sweep> [--out reports/<sweep>]

Reads only the JSON records `results/<sweep>/*.json` (never a model, never torch) and writes
into the out folder (default `reports/<sweep>`):

  tables/<task>_<metric>.md|.tex          one table per task metric (Markdown, LaTeX booktabs)
  tables/<task>_<metric>_delta.md|.tex    the same table as differences to the model's FP value
  tables/paper.md|.tex                    our values beside the published ones of the same cell
  plots/<task>_<metric>_vs_bits.png|.pdf  headline metric vs bit configuration, a panel per model
  plots/<task>_<metric>_vs_size.png|.pdf  headline metric vs packed size, Pareto front marked
                                          (both drawn by bench.plots)
  summary.csv                             one row per cell and metric (long form)
  README.md                               links to all of the above; failed and missing cells

Bad input (no such folder, no records, a corrupt record) is one `error:` line, exit 2, and
nothing written.

Table layout: rows are methods, with ablation variants as indented rows under their method;
columns are model x bit configuration (`W4A4`: 4-bit weights and activations, `W4Afp`:
activations not quantized). The FP row is on top and its value is repeated under every bit
configuration of its model: each column then holds the reference its quantized values are
read against (a separate FP column would be empty for every other row). Bold marks the best
value of a column among the quantized rows (FP excluded); the title's arrow gives the
direction. `-` is a failed or missing cell (README.md lists them); an empty cell is one the
sweep does not contain. One builder (`metric_table`) makes the rows and cells; the two writers
only render them. The outputs are byte-identical between runs on the same records (sorted
everywhere, no dates, PDF/PNG without creation dates); the report is built in a temporary
folder beside the out folder and renamed into place.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench import BenchError
from bench.paper import PAPER_CSV, load_paper, match

CELL_KEY = ["model", "method", "variant", "w_bits", "a_bits", "task"]
SIZE_RANK = {"micro": 0, "t": 1, "s": 2, "b+": 3, "l": 4}
MIB = 2**20


@dataclass(frozen=True)
class Metric:
    """How a task metric is tabled: label, direction, scale and decimals."""

    task: str
    key: str
    label: str
    higher: bool
    scale: float = 1.0
    digits: int = 1
    headline: bool = False

    @property
    def stem(self) -> str:
        return re.sub(r"[^a-z0-9]+", "_", f"{self.task}_{self.key}".replace("&", "").lower()).strip("_")


# directions as in the tasks' HIGHER_IS_BETTER (a test keeps them equal; importing the tasks imports torch)
METRICS = [
    Metric("vos", "J&F", "J&F", True, headline=True),
    Metric("vos", "J", "J", True),
    Metric("vos", "F", "F", True),
    Metric("instseg", "mIoU", "mIoU", True, headline=True),
    Metric("instseg", "mIoU_small", "mIoU small", True),
    Metric("instseg", "mIoU_medium", "mIoU medium", True),
    Metric("instseg", "mIoU_large", "mIoU large", True),
    Metric("coco-map", "mAP", "mAP", True, headline=True),
    Metric("size", "size_bytes", "packed size (MiB)", False, scale=1 / MIB, digits=2, headline=True),
    Metric("size", "x_smaller_than_bf16", "x smaller than BF16", True, digits=2),
]
SIZE = METRICS[-2]


# -- records -> DataFrame ------------------------------------------------------------------------
def read_record(path: Path) -> dict[str, Any]:
    """One record, checked enough to be tabled; a corrupt one is a BenchError naming the file."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BenchError(f"{path}: corrupt result record ({str(e).splitlines()[0]})") from None
    if not isinstance(rec, dict):
        raise BenchError(f"{path}: corrupt result record (expected a JSON object)")
    missing = [k for k in ("model", "method", "task", "status") if not isinstance(rec.get(k), str)]
    bad_bits = [k for k in ("w_bits", "a_bits") if rec.get(k) is not None and type(rec.get(k)) is not int]
    if missing or bad_bits or not isinstance(rec.get("metrics", {}), dict):
        what = f"missing or not a string: {', '.join(missing)}" if missing else "w_bits/a_bits/metrics of wrong type"
        raise BenchError(f"{path}: corrupt result record ({what})")
    return rec


def data_used(rec: dict[str, Any]) -> str:
    """The dataset a cell was measured on: last two parts of its root folder, and the split."""
    cell = (rec.get("config") or {}).get("cell") or {}
    root = cell.get("davis_root" if rec["task"] == "vos" else "coco_root")
    return f"{'/'.join(Path(root).parts[-2:])} {cell.get('split', 'val')}" if root else ""


def load_cells(folder: Path) -> pd.DataFrame:
    """One row per cell (the records of `folder/*.json`), sorted; of two records of the same
    cell the ok one, then the newest, is kept."""
    if not folder.is_dir():
        raise BenchError(f"{folder}: no such results folder")
    files = sorted(p for p in folder.glob("*.json") if not p.name.startswith("."))
    if not files:
        raise BenchError(f"{folder}: no result records (*.json) in this folder")
    rows = []
    for path in files:
        rec = read_record(path)
        error = str(rec.get("error") or "").strip()
        rows.append({"model": rec["model"], "method": rec["method"], "variant": rec.get("variant") or "",
                     "w_bits": rec.get("w_bits"), "a_bits": rec.get("a_bits"), "task": rec["task"],
                     "status": rec["status"], "error": error.splitlines()[0] if error else "",
                     "metrics": rec.get("metrics") or {}, "data": data_used(rec),
                     "rank": (rec["status"] == "ok", str(rec.get("date", "")), path.name)})
    best: dict[tuple, dict] = {}
    for r in rows:
        key = tuple(r[k] for k in CELL_KEY)
        if key not in best or r["rank"] > best[key]["rank"]:
            best[key] = r
    kept = sorted(best.values(), key=lambda r: cell_order(*(r[k] for k in CELL_KEY)))
    frame = pd.DataFrame(kept, columns=[*CELL_KEY, "status", "error", "metrics", "data"], dtype=object)
    frame.attrs["duplicates"] = len(rows) - len(kept)
    return frame


def model_order(model: str) -> tuple:
    family, _, size = model.rpartition("-")
    return (family, SIZE_RANK.get(size, len(SIZE_RANK)), model)


def bits_order(w: int | None, a: int | None) -> tuple[int, int]:
    return (w or 32, a or 32)


def cell_order(model, method, variant, w, a, task, metric: str = "") -> tuple:
    baseline = {"fp": 0, "rtn": 1}.get(method, 2)  # FP, then RTN, then the methods A-Z
    return (model_order(model), baseline, method, variant != "", variant, bits_order(w, a), task, metric)


def bits_label(method: str, w: int | None, a: int | None) -> str:
    return "FP" if method == "fp" else f"W{w or 'fp'}A{a or 'fp'}"


def expected_cells(cells: pd.DataFrame) -> list[tuple]:
    """The sweep's grid as the records show it: every model x task x (method, variant, bits)."""
    combos = {(r["method"], r["variant"], r["w_bits"], r["a_bits"]) for r in cells.to_dict("records")}
    grid = [(m, *c[:2], *c[2:], t) for m in set(cells["model"]) for c in combos for t in set(cells["task"])]
    return sorted(grid, key=lambda k: cell_order(*k))


def missing_cells(cells: pd.DataFrame) -> list[tuple]:
    have = {tuple(r) for r in cells[CELL_KEY].itertuples(index=False)}
    return [k for k in expected_cells(cells) if k not in have]


def numeric(v: Any) -> float | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def long_form(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per cell and metric (numeric metrics of ok cells; one row for a failed or missing
    cell, value empty), sorted."""
    rows = []
    for r in cells.to_dict("records"):
        base = {k: r[k] for k in CELL_KEY} | {"status": r["status"], "error": r["error"], "data": r["data"]}
        metrics = {k: v for k, v in r["metrics"].items() if v is None or numeric(v) is not None}
        if r["status"] != "ok" or not metrics:
            rows.append(base | {"metric": "", "value": None})
        rows += [base | {"metric": k, "value": numeric(v)} for k, v in metrics.items() if r["status"] == "ok"]
    for k in missing_cells(cells):
        rows.append(dict(zip(CELL_KEY, k)) | {"status": "missing", "error": "", "data": "", "metric": "",
                                              "value": None})
    rows.sort(key=lambda r: cell_order(*(r[k] for k in CELL_KEY), r["metric"]))
    return pd.DataFrame(rows, columns=[*CELL_KEY, "metric", "value", "status", "error", "data"], dtype=object)


def write_summary(long: pd.DataFrame, path: Path) -> None:
    """summary.csv: bits empty for full precision, values in full precision (repr)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow([*CELL_KEY[:5], "bits", "task", "metric", "value", "status", "error"])
        for r in long.to_dict("records"):
            value = "" if r["value"] is None else repr(r["value"])
            bits = ["" if r[k] is None else r[k] for k in ("w_bits", "a_bits")]
            w.writerow([r["model"], r["method"], r["variant"], *bits, bits_label(r["method"], r["w_bits"], r["a_bits"]),
                        r["task"], r["metric"], value, r["status"], r["error"]])


# -- one table builder, two writers --------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    text: str = ""  # a number as formatted, or a label
    bold: bool = False
    dash: bool = False  # failed or missing
    dagger: bool = False  # published value not checked against its source


@dataclass
class Table:
    title: str
    columns: list[tuple[str, str]]  # (group, label); the first column holds the row labels
    rows: list[tuple[int, list[Cell]]]  # (indent, cells)
    notes: list[str] = field(default_factory=list)
    higher: bool | None = None  # direction shown in the title
    align: str = ""  # "l" or "r" per column; default: labels left, the rest right

    def alignment(self) -> str:
        return self.align or "l" + "r" * (len(self.columns) - 1)


def fmt(v: float, digits: int, signed: bool = False) -> str:
    text = f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"
    return f"{0:.{digits}f}" if float(text) == 0 else text  # no "+0.0" / "-0.0"


def cell_value(rec: dict | None, metric: Metric) -> float | None:
    if rec is None or rec["status"] != "ok":
        return None
    v = numeric(rec["metrics"].get(metric.key))
    return None if v is None else v * metric.scale


def table_columns(cells: pd.DataFrame, task: str) -> list[tuple[str, int | None, int | None]]:
    """(model, w, a) per column: every quantized bit configuration of the model's grid, or one
    FP column for a model with only the FP row."""
    grid = [k for k in expected_cells(cells) if k[5] == task]
    cols = []
    for model in sorted({k[0] for k in grid}, key=model_order):
        bits = sorted({(k[3], k[4]) for k in grid if k[0] == model and k[1] != "fp"}, key=lambda b: bits_order(*b))
        cols += [(model, w, a) for w, a in bits] or [(model, None, None)]
    return cols


def table_rows(cells: pd.DataFrame, task: str) -> list[tuple[str, str | None]]:
    """(method, variant) per row, FP first; variant None is the heading of a method that only
    has variants."""
    series = sorted({(k[1], k[2]) for k in expected_cells(cells) if k[5] == task}, key=lambda s: cell_order(
        "", s[0], s[1], None, None, ""))
    rows = []
    for method, variant in series:
        if variant and (method, "") not in series and (method, None) not in rows:
            rows.append((method, None))
        rows.append((method, variant))
    return rows


def metric_table(cells: pd.DataFrame, metric: Metric, delta: bool = False) -> Table:
    """THE table builder: rows = methods (+ variants), columns = model x bits; `delta`: each
    quantized value minus the FP value of the same model."""
    index = {tuple(r[k] for k in CELL_KEY): r for r in cells.to_dict("records")}
    grid = set(expected_cells(cells))
    columns = table_columns(cells, metric.task)
    fp = {m: cell_value(index.get((m, "fp", "", None, None, metric.task)), metric) for m, _, _ in columns}
    body = []  # values: a number, None (failed or missing) or "" (not in the sweep)
    for method, variant in table_rows(cells, metric.task):
        values: list[float | None | str] = []
        for model, w, a in columns:
            key = (model, method, variant, *((None, None) if method == "fp" else (w, a)), metric.task)
            v = cell_value(index.get(key), metric) if key in grid else ""
            if delta and method != "fp" and v != "":
                v = None if v is None or fp[model] is None else v - fp[model]
            values.append(v)
        label = variant or (f"{method} (absolute)" if delta and method == "fp" else method)
        body.append({"indent": int(bool(variant)), "label": label, "fp": method == "fp", "values": values})
    best = column_best(body, metric, signed=delta)
    rows = []
    for i, b in enumerate(body):
        signed = delta and not b["fp"]
        rows.append((b["indent"], [Cell(b["label"])] + [
            Cell(dash=True) if v is None else Cell() if v == "" else
            Cell(fmt(v, metric.digits, signed), bold=(i, j) in best) for j, v in enumerate(b["values"])]))
    title = f"{metric.task}: {metric.label}" + (", difference to FP of the same model" if delta else "")
    head = [(m, bits_label("q", w, a) if w or a else "FP") for m, w, a in columns]
    return Table(title, [("", "method")] + head, rows, table_notes(delta), higher=metric.higher)


def column_best(body: list[dict], metric: Metric, signed: bool) -> set[tuple[int, int]]:
    """(row, column) of the best displayed value of each column among two or more quantized values."""
    best = set()
    for j in range(len(body[0]["values"]) if body else 0):
        cand = [(float(fmt(b["values"][j], metric.digits, signed)), i) for i, b in enumerate(body)
                if not b["fp"] and isinstance(b["values"][j], float)]
        if len(cand) >= 2:
            top = (max if metric.higher else min)(v for v, _ in cand)
            best |= {(i, j) for v, i in cand if v == top}
    return best


def table_notes(delta: bool) -> list[str]:
    notes = ["Rows: methods; indented rows are ablation variants of the method above. Columns: model and "
             "bit configuration (WxAy: x-bit weights, y-bit activations; fp: not quantized)."]
    if delta:
        notes.append("Each value is the method's value minus the fp value of the same model; the fp row shows "
                     "the absolute fp value.")
    else:
        notes.append("fp: the full-precision reference, repeated under every bit configuration of its model.")
    notes.append("Bold: best of a column among the quantized rows (fp excluded). -: failed or missing cell "
                 "(see README.md); empty: not in the sweep.")
    return notes


def arrow(higher: bool | None, latex: bool) -> str:
    if higher is None:
        return ""
    sign = ("$\\uparrow$" if higher else "$\\downarrow$") if latex else ("↑" if higher else "↓")
    return f" ({sign} {'higher' if higher else 'lower'} is better)"


def md_cell(c: Cell) -> str:
    text = "-" if c.dash else c.text + ("†" if c.dagger else "")
    return f"**{text}**" if c.bold and text else text


def to_markdown(t: Table) -> str:
    head = [f"{g} {label}".strip() for g, label in t.columns]
    lines = [f"### {t.title}{arrow(t.higher, latex=False)}", "", "| " + " | ".join(head) + " |",
             "|" + "".join("---:|" if a == "r" else "---|" for a in t.alignment())]
    for indent, cells in t.rows:
        texts = [md_cell(c) for c in cells]
        texts[0] = "&emsp;" * indent + texts[0]
        lines.append("| " + " | ".join(texts) + " |")
    return "\n".join(lines + [""] + [f"{n}  " for n in t.notes]).rstrip() + "\n"


TEX_ESCAPE = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}",
              "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def tex(text: str) -> str:
    return "".join(TEX_ESCAPE.get(ch, ch) for ch in text)


def tex_cell(c: Cell) -> str:
    if c.dash:
        return "--"
    text = tex(c.text)
    if re.fullmatch(r"[+-]?\d+(\.\d+)?", c.text):
        text = text.replace("-", "$-$", 1)
    text = f"\\textbf{{{text}}}" if c.bold and text else text
    return text + ("$^\\dagger$" if c.dagger else "")


def to_latex(t: Table) -> str:
    groups: list[tuple[str, int, int]] = []  # (group, first column, last column), 1-based
    for j, (g, _) in enumerate(t.columns[1:], start=2):
        if groups and groups[-1][0] == g:
            groups[-1] = (g, groups[-1][1], j)
        else:
            groups.append((g, j, j))
    lines = ["\\begin{table}[t]", "\\centering", f"\\caption{{{tex(t.title)}{arrow(t.higher, latex=True)}}}",
             f"\\begin{{tabular}}{{{t.alignment()}}}", "\\toprule"]
    if any(g for g, _, _ in groups):
        lines.append(" & ".join([""] + [f"\\multicolumn{{{b - a + 1}}}{{c}}{{{tex(g)}}}" for g, a, b in groups])
                     + " \\\\")
        lines.append(" ".join(f"\\cmidrule(lr){{{a}-{b}}}" for g, a, b in groups if g))
    lines += [" & ".join(tex(label) for _, label in t.columns) + " \\\\", "\\midrule"]
    for indent, cells in t.rows:
        texts = [tex_cell(c) for c in cells]
        texts[0] = "\\quad " * indent + texts[0]
        lines.append(" & ".join(texts) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    if t.notes:
        notes = " ".join(tex(note).replace("†", "$^\\dagger$").replace("-: ", "--: ") for note in t.notes)
        lines += ["\\par\\smallskip", f"{{\\footnotesize {notes}}}"]
    return "\n".join(lines + ["\\end{table}"]) + "\n"


def paper_table(cells: pd.DataFrame, paper: pd.DataFrame) -> Table:
    """Our value beside the published one of the same cell, and ours - published."""
    ours = long_form(cells)
    ours = ours[ours["value"].notna() & (ours["status"] == "ok")]
    found = match(ours, paper).to_dict("records")
    found.sort(key=lambda r: (cell_order(*(r[k] for k in CELL_KEY), r["metric"]), r["paper"], r["prompts_or_dataset"]))
    rows = []
    for r in found:
        method = f"{r['method']} ({r['variant']})" if r["variant"] else r["method"]
        label = [r["model"], method, bits_label(r["method"], r["w_bits"], r["a_bits"]), r["task"], r["metric"]]
        rows.append((0, [Cell(x) for x in label] + [
            Cell(r["data"]), Cell(r["prompts_or_dataset"]), Cell(f"{r['paper']}: {r['source']}"),
            Cell(fmt(r["value"], 1)), Cell(fmt(r["published"], 1), dagger=r["checked"] != "yes"),
            Cell(fmt(r["diff"], 1, signed=True))]))
    notes = ["Datasets differ: ours were measured on our data (column 'our data'), the published numbers on "
             "the paper's dataset, so the difference is not a reproduction gap."]
    if any(c.dagger for _, cells in rows for c in cells):
        notes.append("†: not checked against the paper itself (checked != yes in bench/data/paper_results.csv).")
    if not rows:
        notes = [f"No cell of this sweep matches a published number ({len(paper)} published rows in "
                 "bench/data/paper_results.csv; matched on model, method[-variant], bits, task and metric)."]
    head = ["model", "method", "bits", "task", "metric", "our data", "paper's dataset", "paper: source", "ours",
            "published", "ours - published"]
    return Table("Our numbers beside the published ones", [("", h) for h in head], rows, notes, align="l" * 8 + "rrr")


# -- the report folder ---------------------------------------------------------------------------
def table_metrics(cells: pd.DataFrame) -> list[Metric]:
    """Metrics with a table: the task is in the sweep and the metric is its headline or some
    record has it."""
    found = {(t, k) for t, m in zip(cells["task"], cells["metrics"]) for k in m}
    tasks = set(cells["task"])
    return [m for m in METRICS if m.task in tasks and (m.headline or (m.task, m.key) in found)]


def write_tables(cells: pd.DataFrame, folder: Path) -> list[str]:
    """Every metric table and its delta view, md + tex; returns README lines."""
    lines = []
    for metric in table_metrics(cells):
        for delta in (False, True):
            t = metric_table(cells, metric, delta=delta)
            stem = metric.stem + ("_delta" if delta else "")
            (folder / f"{stem}.md").write_text(to_markdown(t))
            (folder / f"{stem}.tex").write_text(to_latex(t))
        s = metric.stem
        lines.append(f"- {metric.task}: {metric.label}{arrow(metric.higher, latex=False)}: "
                     f"[md](tables/{s}.md), [tex](tables/{s}.tex); difference to FP: "
                     f"[md](tables/{s}_delta.md), [tex](tables/{s}_delta.tex)")
    known = {m.task for m in METRICS}
    lines += [f"- {task}: no table layout for this task; its values are in summary.csv"
              for task in sorted(set(cells["task"]) - known)]
    return lines


def readme(name: str, cells: pd.DataFrame, tables: list[str], plots: list[str], n_matches: int) -> str:
    failed = [r for r in cells.to_dict("records") if r["status"] != "ok"]
    missing = missing_cells(cells)
    ok = len(cells) - len(failed)
    out = [f"# Report: {name}", "",
           f"Made by `python -m bench.report` from the result records of sweep `{name}`: {len(cells)} cells, "
           f"{ok} ok, {len(failed)} failed, {len(missing)} missing (inferred from the grid of the records)."]
    if cells.attrs.get("duplicates"):
        out.append(f"{cells.attrs['duplicates']} duplicate records of a cell were set aside (kept: ok, then newest).")
    out += ["", "## Tables", "", *tables, "",
            f"- published numbers beside ours ({n_matches} matching values): [md](tables/paper.md), "
            "[tex](tables/paper.tex)", "",
            "All values, one row per cell and metric: [summary.csv](summary.csv).", "", "## Plots", ""]
    out += plots or ["No accuracy task in this sweep: no plots.", ""]
    out += ["## Failed cells", ""]
    out += [f"- {cell_name(r)}: {r['error'] or 'status ' + r['status']}" for r in failed] or ["None."]
    out += ["", "## Missing cells", ""]
    out += [f"- {cell_name(dict(zip(CELL_KEY, k)))}" for k in missing] or ["None."]
    return "\n".join(out) + "\n"


def cell_name(r: dict) -> str:
    variant = f" ({r['variant']})" if r["variant"] else ""
    return f"{r['model']} {r['method']}{variant} {bits_label(r['method'], r['w_bits'], r['a_bits'])} {r['task']}"


def build_report(cells: pd.DataFrame, name: str, folder: Path) -> None:
    """Write every file of the report into `folder` (which exists and is empty)."""
    from bench.plots import write_plots  # here, not at the top: bench.plots builds on this module

    (folder / "tables").mkdir()
    (folder / "plots").mkdir()
    tables = write_tables(cells, folder / "tables")
    paper = paper_table(cells, load_paper(PAPER_CSV))
    (folder / "tables" / "paper.md").write_text(to_markdown(paper))
    (folder / "tables" / "paper.tex").write_text(to_latex(paper))
    plots = write_plots(cells, folder / "plots")
    write_summary(long_form(cells), folder / "summary.csv")
    (folder / "README.md").write_text(readme(name, cells, tables, plots, len(paper.rows)))


def write_report(cells: pd.DataFrame, name: str, out: Path) -> None:
    """Build in a temporary folder beside `out`, then swap it in: never a half-written report."""
    if out.exists() and not out.is_dir():
        raise BenchError(f"{out}: exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        tmp.chmod(0o755)
        build_report(cells, name, tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("Table layout:")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="a sweep's results folder, e.g. results/smoke (its *.json records are read)")
    p.add_argument("--out", help="report folder (default: reports/<name of the results folder>); replaced whole")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    folder = Path(args.results)
    name = folder.resolve().name
    out = Path(args.out) if args.out else Path("reports") / name
    try:
        cells = load_cells(folder)
        write_report(cells, name, out)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.filename or out}: {e.strerror}", file=sys.stderr)
        return 2
    failed = int((cells["status"] != "ok").sum())
    print(f"report of {len(cells)} cells ({failed} failed) in {out}/ (start with {out / 'README.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

