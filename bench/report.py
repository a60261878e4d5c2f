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
from bench.intervals import ITEMS, Paired
from bench.layer_plots import write_layer_plots
from bench.paper import PAPER_CSV, VERDICTS, evaluate_claims, load_claims, load_paper, match, model_matches
from bench.plots import write_plots
from bench.results import (
    CELL_KEY,
    METRICS,
    Metric,
    baseline_row,
    bits_label,
    cell_index,
    cell_interval,
    cell_name,
    cell_order,
    cell_value,
    compare,
    expected_cells,
    load_cells,
    memo,
    missing_cells,
    numeric,
    table_columns,
    table_metrics,
)

BASELINES = ("fp", "rtn")


# -- cells -> long form --------------------------------------------------------------------------
def long_form(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per cell and metric (numeric metrics of ok cells, with the interval and number
    of items where the cell has items; one row for a failed or missing cell, value empty),
    sorted."""
    rows = []
    for r in cells.to_dict("records"):
        base = {k: r[k] for k in CELL_KEY} | {"status": r["status"], "error": r["error"], "data": r["data"],
                                               "seeds": len(r["seeds"])}
        metrics = {k: v for k, v in r["metrics"].items() if v is None or numeric(v) is not None}
        if r["status"] != "ok" or not metrics:
            rows.append(base | {"metric": "", "value": None})
        for k, v in metrics.items():
            if r["status"] != "ok":
                continue
            lo_hi = r["intervals"].get(k) if r["intervals"] else None
            rows.append(base | {"metric": k, "value": numeric(v), "ci_low": lo_hi[0] if lo_hi else None,
                                "ci_high": lo_hi[1] if lo_hi else None,
                                "n_items": len(r["items"]) if lo_hi else None, "seed_sd": r["spread"].get(k)})
    for k in missing_cells(cells):
        rows.append(dict(zip(CELL_KEY, k)) | {"status": "missing", "error": "", "data": "", "metric": "",
                                              "value": None, "seeds": 0})
    rows.sort(key=lambda r: cell_order(*(r[k] for k in CELL_KEY), r["metric"]))
    columns = [*CELL_KEY, "metric", "value", "ci_low", "ci_high", "n_items", "seeds", "seed_sd", "status", "error",
               "data"]
    return pd.DataFrame(rows, columns=columns, dtype=object)


def blank(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else repr(v) if isinstance(v, float) else str(v)


def write_summary(long: pd.DataFrame, path: Path) -> None:
    """summary.csv: bits empty for full precision, values in full precision (repr); `ci_low`,
    `ci_high`: the 95% bootstrap interval, `n_items` the items it resamples; `seeds`, `seed_sd`:
    replicate runs of the cell and the standard deviation of their values."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow([*CELL_KEY[:5], "bits", "task", "metric", "value", "ci_low", "ci_high", "n_items", "seeds",
                    "seed_sd", "status", "error"])
        for r in long.to_dict("records"):
            bits = ["" if r[k] is None else r[k] for k in ("w_bits", "a_bits")]
            w.writerow([r["model"], r["method"], r["variant"], *bits, bits_label(r["method"], r["w_bits"], r["a_bits"]),
                        r["task"], r["metric"], *(blank(r[k]) for k in ("value", "ci_low", "ci_high", "n_items")),
                        r["seeds"], blank(r["seed_sd"]), r["status"], r["error"]])


# -- paired comparisons --------------------------------------------------------------------------
PAIRED_COLUMNS = ["model", "method", "variant", "w_bits", "a_bits", "task", "metric", "baseline", "delta", "ci_low",
                  "ci_high", "n_items"]


def paired_rows(cells: pd.DataFrame) -> list[dict[str, Any]]:
    """Every method cell against FP of its model and RTN at its bits (not itself), on the items
    both scored: the difference and its paired bootstrap interval, per metric with items.
    Computed once per cells table (the delta tables read the same numbers)."""
    return memo(cells, "paired", _paired_rows)


def _paired_rows(cells: pd.DataFrame) -> list[dict[str, Any]]:
    index = cell_index(cells)
    rows = []
    for key, r in index.items():
        if r["method"] == "fp" or r["task"] not in ITEMS or r["status"] != "ok":
            continue
        for baseline in BASELINES:
            base = baseline_row(index, key, baseline)
            if base is None or base is r:
                continue
            for m in [m for m in METRICS if m.task == r["task"] and m.key in r["intervals"]]:
                p = compare(r, base, m)
                if p is not None:
                    rows.append({**{k: r[k] for k in CELL_KEY}, "metric": m.key, "baseline": baseline,
                                 "delta": p.delta, "ci_low": p.low, "ci_high": p.high, "n_items": p.n_items})
    return rows


def write_paired(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(PAIRED_COLUMNS)
        for r in rows:
            w.writerow([blank(r[k]) if k in ("delta", "ci_low", "ci_high") else "" if r[k] is None else r[k]
                        for k in PAIRED_COLUMNS])


# -- one table builder, two writers --------------------------------------------------------------
@dataclass(frozen=True)
class TableCell:
    """One cell of a rendered table (not an experiment cell)."""

    text: str = ""  # a number as formatted, or a label
    pm: str = ""  # half the width of its 95% interval, formatted
    bold: bool = False
    dash: bool = False  # failed or missing
    dagger: bool = False  # published value not checked against its source
    mark: bool = False  # a difference whose interval excludes 0


@dataclass
class Table:
    title: str
    columns: list[tuple[str, str]]  # (group, label); the first column holds the row labels
    rows: list[tuple[int, list[TableCell]]]  # (indent, cells)
    notes: list[str] = field(default_factory=list)
    higher: bool | None = None  # direction shown in the title
    align: str = ""  # "l" or "r" per column; default: labels left, the rest right

    def alignment(self) -> str:
        return self.align or "l" + "r" * (len(self.columns) - 1)


def fmt(v: float, digits: int, signed: bool = False) -> str:
    text = f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"
    return f"{0:.{digits}f}" if float(text) == 0 else text  # no "+0.0" / "-0.0"


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


@dataclass
class Value:
    """What one table cell shows: a number (None: failed or missing; "": not in the sweep),
    the half-width of its interval, and whether a difference's interval excludes 0."""

    v: float | None | str
    pm: float | None = None
    mark: bool = False


def cell_entry(row: dict | None, base: dict | None, m: Metric, baseline: str | None = None,
               pairs: dict[tuple, Paired] | None = None) -> Value:
    """A cell's value (or with `baseline`, its difference to `base`, paired on the items both
    scored: `pairs` holds those of paired.csv)."""
    v = cell_value(row, m)
    pairs = pairs or {}
    delta = baseline is not None
    if not delta or row is None or row["method"] == "fp" and base is None:
        ci = cell_interval(row, m)
        return Value(v, None if ci is None or v is None else (ci[1] - ci[0]) / 2)
    b = cell_value(base, m)
    if v is None or b is None:
        return Value(None)
    p: Paired | None = pairs.get((tuple(row[k] for k in CELL_KEY), baseline, m.key))
    if p is None:
        return Value(v - b)
    return Value(p.delta, (p.high - p.low) / 2, p.significant)  # metrics with items are shown unscaled


def metric_table(cells: pd.DataFrame, m: Metric, baseline: str | None = None) -> Table:
    """THE table builder: rows = methods (+ variants), columns = model x bits; with `baseline`
    ("fp" or "rtn"), each value is the difference to that baseline of the same model (and bits),
    paired on the items both scored."""
    index = cell_index(cells)
    grid = set(expected_cells(cells))
    columns = table_columns(cells, m.task)
    pairs = {(tuple(r[k] for k in CELL_KEY), r["baseline"], r["metric"]): Paired(r["delta"], r["ci_low"],
             r["ci_high"], r["n_items"]) for r in paired_rows(cells)} if baseline else {}
    body = []
    for method, variant in table_rows(cells, m.task):
        if baseline == "rtn" and (method, variant) in (("rtn", ""), ("rtn", None)):
            continue  # RTN against itself
        values: list[Value] = []
        for model, w, a in columns:
            key = (model, method, variant, *((None, None) if method == "fp" else (w, a)), m.task)
            if key not in grid:
                values.append(Value(""))
                continue
            base = None
            if baseline and method != "fp":
                base = baseline_row(index, key, baseline) or {"status": "missing"}
            elif baseline == "rtn":  # the fp row of an RTN table shows RTN's own value
                base_key = (model, "rtn", "", w, a, m.task)
                values.append(cell_entry(baseline_row(index, base_key, "rtn"), None, m))
                continue
            values.append(cell_entry(index.get(key), base, m, baseline, pairs))
        if baseline == "rtn" and method == "fp":
            label = "rtn (absolute)"
        else:
            label = variant or (f"{method} (absolute)" if baseline and method == "fp" else method)
        body.append({"indent": int(bool(variant)), "label": label, "ref": method == "fp", "values": values})
    best = column_best(body, m, signed=bool(baseline))
    rows = []
    for i, b in enumerate(body):
        signed = bool(baseline) and not b["ref"]
        rows.append((b["indent"], [TableCell(b["label"])] + [
            TableCell(dash=True) if x.v is None else TableCell() if x.v == "" else
            TableCell(fmt(x.v, m.digits, signed), pm="" if x.pm is None else fmt(x.pm, m.digits), mark=x.mark,
                      bold=(i, j) in best) for j, x in enumerate(b["values"])]))
    what = {None: "", "fp": ", difference to FP of the same model", "rtn": ", difference to RTN at the same bits"}
    title = f"{m.task}: {m.label}" + (f" ({m.unit})" if m.unit not in ("%", "count") else "") + what[baseline]
    head = [(model, bits_label("q", w, a) if w or a else "FP") for model, w, a in columns]
    return Table(title, [("", "method")] + head, rows, table_notes(baseline, m), higher=m.higher)


def column_best(body: list[dict], m: Metric, signed: bool) -> set[tuple[int, int]]:
    """(row, column) of the best displayed value of each column among two or more quantized values."""
    best = set()
    for j in range(len(body[0]["values"]) if body else 0):
        cand = [(float(fmt(b["values"][j].v, m.digits, signed)), i) for i, b in enumerate(body)
                if not b["ref"] and isinstance(b["values"][j].v, float)]
        if len(cand) >= 2:
            top = (max if m.higher else min)(v for v, _ in cand)
            best |= {(i, j) for v, i in cand if v == top}
    return best


def table_notes(baseline: str | None, m: Metric) -> list[str]:
    notes = ["Rows: methods; indented rows are ablation variants of the method above. Columns: model and "
             "bit configuration (WxAy: x-bit weights, y-bit activations; fp: not quantized)."]
    if baseline == "fp":
        notes.append("Each value is the method's value minus the fp value of the same model, on the items both "
                     "scored; the fp row shows the absolute fp value.")
    elif baseline == "rtn":
        notes.append("Each value is the method's value minus RTN's at the same model and bits, on the items both "
                     "scored; the rtn row shows RTN's absolute value.")
    else:
        notes.append("fp: the full-precision reference, repeated under every bit configuration of its model.")
    if m.task in ITEMS:
        ci = ("±: half the width of the 95% bootstrap interval " + ("of the paired difference" if baseline else "")
              + f" (resampling whole {ITEMS[m.task].unit}s; see summary.csv / paired.csv for the bounds).")
        notes.append(ci.replace("interval  (", "interval ("))
        if baseline:
            notes.append("*: the interval excludes 0 (the difference is unlikely to be resampling noise).")
    notes.append("Bold: best of a column among the quantized rows (fp excluded). -: failed or missing cell "
                 "(see README.md); empty: not in the sweep.")
    return notes


def arrow(higher: bool | None, latex: bool) -> str:
    if higher is None:
        return ""
    sign = ("$\\uparrow$" if higher else "$\\downarrow$") if latex else ("↑" if higher else "↓")
    return f" ({sign} {'higher' if higher else 'lower'} is better)"


def md_cell(c: TableCell) -> str:
    text = "-" if c.dash else c.text + ("†" if c.dagger else "")
    text = f"**{text}**" if c.bold and text else text
    return text + (f" ±{c.pm}" if c.pm else "") + ("*" if c.mark else "")


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


def tex_cell(c: TableCell) -> str:
    if c.dash:
        return "--"
    text = tex(c.text)
    if re.fullmatch(r"[+-]?\d+(\.\d+)?", c.text):
        text = text.replace("-", "$-$", 1)
    text = f"\\textbf{{{text}}}" if c.bold and text else text
    text += "$^\\dagger$" if c.dagger else ""
    text += f"{{\\scriptsize\\,$\\pm${c.pm}}}" if c.pm else ""
    return text + ("$^{*}$" if c.mark else "")


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
    index = cell_index(cells)
    keys = [tuple(r) for r in ours[list(CELL_KEY)].itertuples(index=False)]
    ours = ours.assign(**{k: [index[key][k] for key in keys] for k in ("raw_variant", "tag", "dataset")})
    found = match(ours, paper).to_dict("records")
    found.sort(key=lambda r: (cell_order(*(r[k] for k in CELL_KEY), r["metric"]), r["paper"], r["prompts_or_dataset"]))
    rows = []
    for r in found:
        method = f"{r['method']} ({r['variant']})" if r["variant"] else r["method"]
        label = [r["model"], method, bits_label(r["method"], r["w_bits"], r["a_bits"]), r["task"], r["metric"]]
        rows.append((0, [TableCell(x) for x in label] + [
            TableCell(r["data"]), TableCell(r["prompts_or_dataset"]), TableCell(f"{r['paper']}: {r['source']}"),
            TableCell(fmt(r["value"], 1)), TableCell(fmt(r["published"], 1), dagger=r["checked"] != "yes"),
            TableCell(fmt(r["diff"], 1, signed=True))]))
    notes = ["Matched on the dataset too ('our data': its folder and split); for COCO the published number's "
             "detector boxes are in 'paper's dataset', ours are the cell's detections file."]
    if any(c.dagger for _, cells in rows for c in cells):
        notes.append("†: not checked against the paper itself (checked != yes in bench/data/paper_results.csv).")
    if not rows:
        notes = [f"No cell of this sweep matches a published number ({len(paper)} published rows in "
                 "bench/data/paper_results.csv; matched on model, method and variant (bench.paper.PAPER_NAMES), "
                 "bits, task, metric and dataset: the published rows are on SA-V, MOSE, LVOS and COCO val2017)."]
    head = ["model", "method", "bits", "task", "metric", "our data", "paper's dataset", "paper: source", "ours",
            "published", "ours - published"]
    return Table("Our numbers beside the published ones", [("", h) for h in head], rows, notes, align="l" * 8 + "rrr")


# -- the report folder ---------------------------------------------------------------------------
TABLE_VIEWS = {None: "", "fp": "_delta", "rtn": "_vs_rtn"}


def _baseline_has(cells: pd.DataFrame, m: Metric, baseline: str) -> bool:
    """Whether some cell of the baseline method on the metric's task has a value of it."""
    rows = cells[(cells["method"] == baseline) & (cells["task"] == m.task)]
    return any(isinstance(metrics, dict) and metrics.get(m.key) is not None for metrics in rows["metrics"])


def write_tables(cells: pd.DataFrame, folder: Path) -> list[str]:
    """Every metric table and its difference views (to FP, to RTN), md + tex; README lines."""
    lines = []
    for m in table_metrics(cells):
        links = []
        for baseline, suffix in TABLE_VIEWS.items():
            if baseline and not _baseline_has(cells, m, baseline):
                continue  # no difference to show (e.g. the latency task's fidelity: FP deploys nothing)
            t = metric_table(cells, m, baseline=baseline)
            (folder / f"{m.stem}{suffix}.md").write_text(to_markdown(t))
            (folder / f"{m.stem}{suffix}.tex").write_text(to_latex(t))
            what = {None: "", "fp": "difference to FP: ", "rtn": "difference to RTN: "}[baseline]
            links.append(f"{what}[md](tables/{m.stem}{suffix}.md), [tex](tables/{m.stem}{suffix}.tex)")
        lines.append(f"- {m.task}: {m.label}{arrow(m.higher, latex=False)}: " + "; ".join(links))
    known = {m.task for m in METRICS}
    lines += [f"- {task}: no table layout for this task; its values are in summary.csv"
              for task in sorted(set(cells["task"]) - known)]
    return lines


def claims_markdown(rows: list[dict[str, Any]]) -> str:
    """claims.md: per claim of the papers and place this sweep can check it, the paper's
    figure, ours with its 95% interval, and the verdict."""
    out = ["# The papers' claims on this sweep", "",
           "Each claim of `bench/data/paper_claims.csv`, checked wherever this sweep has both sides of it (same "
           "model, bits and task): ours is the paired difference on the items both cells scored, with its 95% "
           "bootstrap interval. Verdict: **reproduced** when the interval lies on the claim's side (for a gain: "
           "above 0; for 'drop at most x': below x), **contradicted** when it lies on the other side, "
           "**inconclusive** when it straddles. The papers' figures are mostly their best cases ('up to'): a "
           "reproduced direction with a smaller size says so in the numbers, not in the verdict. A model other "
           "than the paper's, or a proxy metric (our GT-box mIoU for the papers' detector-box mAP), is marked.", "",
           "| claim | paper | paper's figure | where (ours) | baseline | ours [95% interval] | n | verdict |",
           "|---|---|---:|---|---|---:|---:|---|"]
    for r in rows:
        figure = "" if r["paper_value"] is None else f"{r['paper_value']:g}" + (
            "%" if r["kind"] == "relative_gain_over" else "x" if r["kind"] == "ratio_at_least" else "")
        figure = {"drop_at_most": "drop <= ", "ratio_at_least": ">= "}.get(r["kind"], "+") + figure if figure else \
            "direction"
        if r["where"] is None:
            out.append(f"| {r['claim_id']}: {r['claim']} | {r['paper']} ({r['source']}) | {figure} | - | - | - | - | "
                       f"**{r['verdict']}** |")
            continue
        model, method, variant, w, a, task = r["where"]
        m = r["metric_used"]
        notes = ([] if model_matches(r, model) else [f"paper: {r['models']}"]) + (
            [f"proxy for {r['task']} {r['metric']}"] if r["proxy"] else [])
        where = f"{model} {bits_label(method, w, a)} {task} {m.key}" + (f" ({'; '.join(notes)})" if notes else "")
        if r["low"] is None:
            ours = "-" if r["ours"] is None else f"{r['ours']:.2f}"
        else:
            sign = "" if r["kind"] == "drop_at_most" else "+"
            ours = f"{r['ours']:{sign}.1f} [{r['low']:{sign}.1f}, {r['high']:{sign}.1f}]" + (
                "%" if r["kind"] == "relative_gain_over" else "")
        out.append(f"| {r['claim_id']}: {r['claim']} | {r['paper']} ({r['source']}) | {figure} | {where} | "
                   f"{r['baseline']} | {ours} | {r['n_items'] or ''} | **{r['verdict']}** |")
    return "\n".join(out) + "\n"


def readme(name: str, cells: pd.DataFrame, tables: list[str], plots: list[str], n_matches: int,
           claims: list[dict[str, Any]]) -> str:
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
            "All values, one row per cell and metric, with 95% intervals: [summary.csv](summary.csv). Every method "
            "cell against FP and RTN on the same items, with paired 95% intervals: [paired.csv](paired.csv).", "",
            "## Claims of the papers", "", claims_summary(claims), "", "## Plots", ""]
    out += plots or ["No accuracy task in this sweep: no plots.", ""]
    out += ["## Failed cells", ""]
    out += [f"- {cell_name(r)}: {r['error'] or 'status ' + r['status']}" for r in failed] or ["None."]
    out += ["", "## Missing cells", ""]
    out += [f"- {cell_name(dict(zip(CELL_KEY, k)))}" for k in missing] or ["None."]
    return "\n".join(out) + "\n"


def claims_summary(claims: list[dict[str, Any]]) -> str:
    counts = {v: sum(r["verdict"] == v for r in claims) for v in VERDICTS}
    found = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    return f"[claims.md](claims.md): {len(claims)} checks of {len({r['claim_id'] for r in claims})} claims: {found}."


def build_report(cells: pd.DataFrame, name: str, folder: Path) -> None:
    """Write every file of the report into `folder` (which exists and is empty)."""
    (folder / "tables").mkdir()
    (folder / "plots").mkdir()
    tables = write_tables(cells, folder / "tables")
    paper = paper_table(cells, load_paper(PAPER_CSV))
    (folder / "tables" / "paper.md").write_text(to_markdown(paper))
    (folder / "tables" / "paper.tex").write_text(to_latex(paper))
    plots = write_plots(cells, folder / "plots") + write_layer_plots(cells, folder / "plots")
    write_summary(long_form(cells), folder / "summary.csv")
    write_paired(paired_rows(cells), folder / "paired.csv")
    claims = evaluate_claims(cells, load_claims())
    (folder / "claims.md").write_text(claims_markdown(claims))
    (folder / "README.md").write_text(readme(name, cells, tables, plots, len(paper.rows), claims))


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

