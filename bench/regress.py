"""Regression check: a sweep's metrics against a committed reference, within stated tolerances.

    python -m bench.regress results/<sweep> --against results/reference/<name> [--as NEW=OLD,...]
    python -m bench.regress results/<sweep> --write-reference results/reference/<name>
        [--tolerance 'J&F=1.0,mIoU=0.5,default=1.0'] [--metrics 'J&F,mIoU,...']

Reads only the JSON records `results/<sweep>/*.json` (never a model, never torch). A reference
is the folder `results/reference/<name>/` holding `reference.json` (or `reference.yaml`):

    {"format": 1,
     "checked_metrics": ["F", "J", "J&F", "mIoU", "n", ...],   # only these are compared
     "tolerance": {"J&F": 1.0, "mIoU": 1.0, "n": 0, ...},      # absolute, per metric
     "default_tolerance": 1.0,                                 # checked metrics not in `tolerance`
     "cells": [{"model": "micro", "method": "rtn", "variant": "", "w_bits": 4, "a_bits": 4,
                "task": "instseg", "metrics": {"mIoU": 70.31, "n": 40, ...}}, ...],
     "made_from": {...}}                                       # provenance; not read by the check

A cell is identified by (model, method, variant, w_bits, a_bits, task), NOT by the cell id of
its record: that id hashes the whole resolved config (data paths, checkpoint folder, options),
so it changes when an unrelated field changes, while a reference must outlive such changes.
Metric values are compared as |ours - reference| <= tolerance; a null value in the reference
(a metric with no value, e.g. mIoU_small on a set without small objects) must be null in ours.
Timings (fps, *_s, ...) are never compared: a reference that lists one is malformed.

Check: exit 0 when every metric of every reference cell is within tolerance (a table of the
compared metrics is printed); exit 1 with one `FAIL` line per cell and metric out of
tolerance, and per reference cell that is missing or failed in the results. Cells of the
results that the reference lacks are warnings. `--as NEW=OLD` compares our records of method
NEW in place of the reference's OLD cells (our own OLD records are then set aside): a renamed
or reimplemented method is checked against the old method's reference.

Write: a reference of every ok record (failed ones are left out, with a warning), written
atomically; an existing reference's tolerances are kept unless `--tolerance` overrides them.
Bad input (missing folder, corrupt record, malformed reference) is one `error:` line, exit 2.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import BenchError
from bench.results import (
    CELL_KEY,
    DEFAULT_TOLERANCE,
    METRICS,
    cell_key,
    cell_name,
    cell_order,
    is_timing,
    load_records,
    numeric,
    tolerance,
    write_json_atomic,
)

FORMAT = 1
REFERENCE_NAMES = ("reference.json", "reference.yaml", "reference.yml")
Key = tuple  # (model, method, variant, w_bits, a_bits, task)
Number = int | float


@dataclass
class Reference:
    checked: list[str]
    tolerance: dict[str, float]
    default_tolerance: float
    cells: dict[Key, dict[str, Number | None]] = field(default_factory=dict)

    def tol(self, metric: str) -> float:
        return self.tolerance.get(metric, self.default_tolerance)


# -- our records --------------------------------------------------------------------------------
def load_results(folder: Path, rename: dict[str, str]) -> tuple[dict[Key, dict], list[str]]:
    """The records of `folder` by cell key (of two records of a cell: the ok one, then the
    newest), with methods renamed by `rename` (NEW -> OLD); notes on what was set aside."""
    records, _ = load_records(folder, key=cell_key)
    aside = {rec["method"] for rec in records if rec["method"] in rename.values() and rec["method"] not in rename}
    ours = {}
    for rec in records:
        if rec["method"] in aside:
            continue
        if rec["method"] in rename:
            rec = {**rec, "method": rename[rec["method"]], "ours_as": rec["method"]}
        ours[cell_key(rec)] = rec
    notes = [f"records of method {m} set aside: --as compares {', '.join(n for n, o in rename.items() if o == m)} "
             f"in its place" for m in sorted(aside)]
    return ours, notes


# -- the reference ------------------------------------------------------------------------------
def reference_file(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise BenchError(f"{path}: no such reference folder")
    found = [path / n for n in REFERENCE_NAMES if (path / n).is_file()]
    if len(found) != 1:
        what = "more than one of" if found else "no"
        raise BenchError(f"{path}: {what} {', '.join(REFERENCE_NAMES)} in this folder")
    return found[0]


def load_reference(path: Path) -> Reference:
    """Read and validate a reference; anything malformed is one BenchError naming the file."""
    file = reference_file(path)
    try:
        text = file.read_text(encoding="utf-8")
        doc = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as e:
        raise BenchError(f"{file}: malformed reference ({' '.join(str(e).split())[:200]})") from None
    try:
        return parse_reference(doc)
    except ValueError as e:
        raise BenchError(f"{file}: malformed reference ({e})") from None


def tolerance_value(v: Any, where: str) -> Number:
    if numeric(v) is None or v < 0:
        raise ValueError(f"{where}: expected a number >= 0, got {v!r}")
    return value(v)


def parse_reference(doc: Any) -> Reference:
    if not isinstance(doc, dict):
        raise ValueError("expected a mapping with format, checked_metrics, tolerance, default_tolerance, cells")
    missing = [k for k in ("format", "checked_metrics", "tolerance", "default_tolerance", "cells") if k not in doc]
    if missing:
        raise ValueError(f"missing key {missing[0]}")
    if doc["format"] != FORMAT:
        raise ValueError(f"format: expected {FORMAT}, got {doc['format']!r}")
    checked = doc["checked_metrics"]
    if not isinstance(checked, list) or not checked or not all(isinstance(m, str) and m for m in checked):
        raise ValueError("checked_metrics: expected a non-empty list of metric names")
    timings = [m for m in checked if is_timing(m)]
    if timings:
        raise ValueError(f"checked_metrics: {timings[0]} is a timing; timings are never compared")
    if not isinstance(doc["tolerance"], dict):
        raise ValueError("tolerance: expected a mapping metric -> absolute tolerance")
    tolerance = {str(k): tolerance_value(v, f"tolerance.{k}") for k, v in doc["tolerance"].items()}
    ref = Reference(list(checked), tolerance, tolerance_value(doc["default_tolerance"], "default_tolerance"))
    if not isinstance(doc["cells"], list):
        raise ValueError("cells: expected a list")
    for i, c in enumerate(doc["cells"]):
        key, metrics = parse_cell(c, f"cells[{i}]")
        if key in ref.cells:
            raise ValueError(f"cells[{i}]: {cell_name(dict(zip(CELL_KEY, key)))} appears twice")
        ref.cells[key] = metrics
    return ref


def parse_cell(c: Any, where: str) -> tuple[Key, dict[str, Number | None]]:
    if not isinstance(c, dict):
        raise ValueError(f"{where}: expected a mapping with {', '.join(CELL_KEY)}, metrics")
    bad = [k for k in ("model", "method", "task") if not isinstance(c.get(k), str) or not c.get(k)]
    bad += [k for k in ("w_bits", "a_bits") if c.get(k) is not None and type(c.get(k)) is not int]
    bad += [] if isinstance(c.get("variant", ""), str) else ["variant"]
    if bad or not isinstance(c.get("metrics"), dict):
        raise ValueError(f"{where}.{bad[0] if bad else 'metrics'}: missing or of the wrong type")
    for k, v in c["metrics"].items():
        if v is not None and numeric(v) is None:
            raise ValueError(f"{where}.metrics.{k}: expected a number or null, got {v!r}")
    key = (c["model"], c["method"], c.get("variant", ""), c.get("w_bits"), c.get("a_bits"), c["task"])
    return key, {str(k): value(v) for k, v in c["metrics"].items()}


# -- the check ----------------------------------------------------------------------------------
@dataclass
class Outcome:
    rows: list[list[str]] = field(default_factory=list)  # cell, metric, reference, ours, delta, tol, result
    fails: list[str] = field(default_factory=list)
    failed_cells: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    cells: int = 0

    def fail(self, cell: str, metric: str, msg: str) -> None:
        self.fails.append(f"FAIL {cell}{' ' + metric if metric else ''}: {msg}")
        self.failed_cells.add(cell)


def value(v: Any) -> Number | None:
    """A metric value as stored: an int stays an int (counts, bytes), non-finite is None."""
    x = numeric(v)
    return v if x is not None and isinstance(v, int) else x


def num(v: Number | None, signed: bool = False) -> str:
    """Six significant digits; a float keeps its decimal point (1.0, not 1)."""
    if v is None:
        return "null"
    if isinstance(v, int):
        return f"{v:+d}" if signed else str(v)
    text = f"{v:+.6g}" if signed else f"{v:.6g}"
    return text + ".0" if re.fullmatch(r"[+-]?\d+", text) else text


def compare(ref: Reference, ours: dict[Key, dict]) -> Outcome:
    out = Outcome()
    for key in sorted(ref.cells, key=lambda k: cell_order(*k)):
        rec = ours.get(key)
        name = cell_name(dict(zip(CELL_KEY, key))) + (f" [ours: {rec['ours_as']}]" if rec and "ours_as" in rec else "")
        if rec is None:
            out.fail(name, "", "missing from the results (the reference has it)")
            continue
        if rec["status"] != "ok":
            error = str(rec.get("error") or "").strip()
            out.fail(name, "", f"{rec['status']} in the results" + (f" ({error.splitlines()[0]})" if error else ""))
            continue
        out.cells += 1
        for metric in [m for m in ref.checked if m in ref.cells[key]]:
            compare_metric(out, name, metric, ref.cells[key][metric], rec.get("metrics") or {}, ref.tol(metric))
    for key in sorted(set(ours) - set(ref.cells), key=lambda k: cell_order(*k)):
        status = "" if ours[key]["status"] == "ok" else f"; {ours[key]['status']} in the results"
        out.warnings.append(f"warning: {cell_name(dict(zip(CELL_KEY, key)))}: not in the reference (not checked"
                            f"{status})")
    return out


def compare_metric(out: Outcome, name: str, metric: str, expected: Number | None, metrics: dict, tol: float) -> None:
    got = value(metrics.get(metric))
    row = [name, metric, num(expected), "-" if metric not in metrics else num(got), "", num(tol)]
    if metric not in metrics:
        msg = f"missing from the record (reference {num(expected)})"
    elif expected is None or got is None:
        msg = None if expected is got else f"{num(got)} vs reference {num(expected)}"
    else:
        delta = got - expected
        row[4] = num(delta, signed=True)
        ok = abs(delta) <= tol + 1e-9 * max(1.0, abs(expected))
        msg = None if ok else f"{num(got)} vs reference {num(expected)} (|delta| {num(abs(delta))} > tol {num(tol)})"
    out.rows.append(row + ["OK" if msg is None else "FAIL"])
    if msg is not None:
        out.fail(name, metric, msg)


def table(rows: list[list[str]]) -> str:
    head = ["cell", "metric", "reference", "ours", "delta", "tol", "result"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = []
    for r in [head, ["-" * w for w in widths], *rows]:
        cols = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cols).rstrip())
    return "\n".join(lines)


def check(results: Path, against: Path, rename: dict[str, str]) -> int:
    ref = load_reference(against)
    ours, notes = load_results(results, rename)
    out = compare(ref, ours)
    for line in notes + out.warnings:
        print(line if line.startswith("warning: ") else f"note: {line}", file=sys.stderr)
    if out.rows:
        print(table(out.rows))
    for line in out.fails:
        print(line)
    if out.fails:
        print(f"regress: {len(out.fails)} failures in {len(out.failed_cells)} of {len(ref.cells)} reference cells "
              f"of {against}")
        return 1
    print(f"regress: {len(out.rows)} metrics of {out.cells} cells within tolerance of {against}")
    return 0


# -- writing a reference ------------------------------------------------------------------------
def reference_doc(ours: dict[Key, dict], metrics: list[str] | None, tolerances: dict[str, float],
                  results: Path) -> tuple[dict[str, Any], list[str]]:
    """The reference of every ok record (and warnings for the cells left out)."""
    ok = {k: r for k, r in ours.items() if r["status"] == "ok"}
    left_out = [f"warning: {cell_name(dict(zip(CELL_KEY, k)))}: {ours[k]['status']} in the results; left out "
                "of the reference" for k in sorted(set(ours) - set(ok), key=lambda k: cell_order(*k))]
    if not ok:
        raise BenchError(f"{results}: no ok records to make a reference from")
    found = {m for r in ok.values() for m, v in (r.get("metrics") or {}).items()
             if v is None or numeric(v) is not None}
    checked = sorted(m for m in found if not is_timing(m)) if metrics is None else metrics
    unknown = [m for m in checked if m not in found]
    if unknown or not checked:
        raise BenchError(f"--metrics: {unknown[0] if unknown else '(none)'} is in no ok record of {results}")
    cells = []
    for key in sorted(ok, key=lambda k: cell_order(*k)):
        values = ok[key].get("metrics") or {}
        cells.append({**dict(zip(CELL_KEY, key)), "metrics": {m: value(values[m]) for m in checked if m in values}})
    def seen(get) -> list[str]:  # the distinct values of one field over the records
        return sorted({str(get(r)) for r in ok.values() if get(r)})

    made_from = {"results": str(results), "records": len(ok), "git_commits": seen(lambda r: r.get("git_commit")),
                 "torch": seen(lambda r: (r.get("versions") or {}).get("torch")),
                 "devices": seen(lambda r: (r.get("device") or {}).get("cpu") or (r.get("device") or {}).get("gpu")),
                 "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    default = tolerances.get("default", DEFAULT_TOLERANCE)
    known = {m.key for m in METRICS}
    tol = {m: tolerances.get(m, tolerance(m) if m in known else default) for m in checked}
    doc = {"format": FORMAT, "checked_metrics": checked, "tolerance": tol, "default_tolerance": default,
           "cells": cells, "made_from": made_from}
    return doc, left_out


def write_reference(results: Path, folder: Path, rename: dict[str, str], tolerance: dict[str, float],
                    metrics: list[str] | None) -> int:
    if folder.exists() and not folder.is_dir():
        raise BenchError(f"{folder}: exists and is not a folder")
    old = [folder / n for n in REFERENCE_NAMES if (folder / n).is_file()]
    if any(p.name != "reference.json" for p in old):
        raise BenchError(f"{old[-1]}: a YAML reference; edit it by hand or remove it to write reference.json")
    if old:  # an update keeps the stated tolerances unless --tolerance overrides them
        previous = load_reference(folder)
        tolerance = {**previous.tolerance, "default": previous.default_tolerance, **tolerance}
    ours, notes = load_results(results, rename)
    doc, left_out = reference_doc(ours, metrics, tolerance, results)
    for line in notes + left_out:
        print(line if line.startswith("warning: ") else f"note: {line}", file=sys.stderr)
    write_json_atomic(folder / "reference.json", doc)
    print(f"reference of {len(doc['cells'])} cells ({len(doc['checked_metrics'])} checked metrics: "
          f"{', '.join(doc['checked_metrics'])}) written to {folder / 'reference.json'}")
    return 0


# -- command line -------------------------------------------------------------------------------
def pairs(text: str, what: str) -> list[tuple[str, str]]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise argparse.ArgumentTypeError(f"expected {what}[,{what}], got {part!r}")
        out.append((key.strip(), value.strip()))
    return out


def parse_tolerance(text: str) -> dict[str, float]:
    out = {}
    for metric, given in pairs(text, "METRIC=TOL"):
        try:
            out[metric] = tolerance_value(float(given), metric)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{metric}: expected a tolerance >= 0, got {given!r}") from None
        if is_timing(metric):
            raise argparse.ArgumentTypeError(f"{metric} is a timing; timings are never compared")
    return out


def parse_rename(text: str) -> dict[str, str]:
    return dict(pairs(text, "NEW=OLD"))


def parse_metrics(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    timing = [m for m in names if is_timing(m)]
    if not names or timing:
        raise argparse.ArgumentTypeError(f"{timing[0]} is a timing; timings are never compared" if timing
                                         else "expected METRIC[,METRIC]")
    return sorted(set(names))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.regress", description=__doc__.split("A cell is")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="a sweep's results folder, e.g. results/regress (its *.json records are read)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--against", metavar="FOLDER", help="check against this reference (results/reference/<name>)")
    mode.add_argument("--write-reference", metavar="FOLDER", help="write FOLDER/reference.json from the ok records")
    p.add_argument("--as", dest="rename", metavar="NEW=OLD[,...]", type=parse_rename, action="append", default=[],
                   help="treat our records of method NEW as method OLD (our OLD records are set aside)")
    p.add_argument("--tolerance", metavar="METRIC=TOL[,...]", type=parse_tolerance, action="append", default=[],
                   help="with --write-reference: absolute tolerances; 'default=TOL' for metrics not listed "
                        f"(built-in: scores {tolerance('J&F'):g}, counts and bytes 0, other {DEFAULT_TOLERANCE:g})")
    p.add_argument("--metrics", metavar="METRIC[,...]", type=parse_metrics,
                   help="with --write-reference: the metrics to check (default: every numeric non-timing metric)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.against and (args.tolerance or args.metrics):
        p.error("--tolerance and --metrics go with --write-reference (a check uses the reference's own)")
    rename = {k: v for d in args.rename for k, v in d.items()}
    tolerance = {k: v for d in args.tolerance for k, v in d.items()}
    results = Path(args.results)
    try:
        if args.against:
            return check(results, Path(args.against), rename)
        return write_reference(results, Path(args.write_reference), rename, tolerance, args.metrics)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.filename or results}: {e.strerror}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
