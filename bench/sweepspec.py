"""Sweep files: validation and expansion into cells.

A sweep file is YAML whose lists expand as a grid, model x method entry x (w_bits, a_bits) x
task (see sweeps/smoke.yaml for every key). Everything is checked before anything runs; a
mistake is one `BenchError` line naming the file, the key path and what is allowed.

`fp` is the reference row: it takes no bits, so the grid gives it one cell per model and
task (giving an `fp` entry its own `bits` is an error). A cell's variant label is its method's
(`Method.variant`, from the options), the same as from `bench.run`; an entry's `tag` is a free
label on top (e.g. the budget of a dev-set row).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import BenchError
from bench.cell import Cell, cell_id, resolve
from bench.data.vos import VOS_FORMATS
from bench.method import METHODS, Method
from bench.models import MODELS, checkpoint_path
from bench.results import as_record
from bench.tasks import DATA_FREE_TASKS, TASKS

EXECUTORS = ("debug", "local", "slurm")
TOP_KEYS = ("name", "models", "methods", "bits", "tasks", "data", "calibration", "training",
            "checkpoints", "device", "seed", "seeds", "executor")
METHOD_KEYS = ("name", "tag", "options", "bits", "models")
DATA_KEYS = ("davis_root", "coco_root", "split", "sequences", "max_frames", "max_images", "detections",
             "multimask", "vos_format", "track_later")
CALIB_KEYS = ("n", "dir")
EXECUTOR_KEYS = ("kind", "max_parallel", "timeout_min", "slurm")
SLURM_KEYS = ("partition", "time_min", "gpus_per_node", "cpus_per_task", "mem_gb", "array_parallelism",
              "additional_parameters")
ENV_RE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


@dataclass(frozen=True)
class SweepCell:
    """One cell of a sweep: what `bench.run` runs, its id and its place in the grid (`variant`:
    the method's label for its options)."""

    cell: Cell
    cell_id: str
    variant: str = ""
    # the method's whole resolved config (defaults included) as a record stores it: a record
    # made under other defaults is stale, not done (the id hashes only the options given)
    method_config: dict[str, Any] | None = None

    def labels(self) -> dict[str, Any]:
        c = self.cell
        return {"model": c.model, "method": c.method, "variant": self.variant, "tag": c.tag, "w_bits": c.w_bits,
                "a_bits": c.a_bits, "task": c.task, "seed": c.seed}


@dataclass
class Executor:
    kind: str = "local"
    max_parallel: int = 1
    timeout_min: float = 60.0
    slurm: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sweep:
    name: str
    path: Path
    cells: list[SweepCell]
    executor: Executor
    skipped: list[str]  # grid points dropped, with the reason
    warnings: list[str]  # unset variables, missing paths (errors in a real run)

    def missing_paths(self) -> list[str]:
        return [w for w in self.warnings if w.startswith(("missing", "unset"))]


class _Checker:
    """Type checks that raise one line: file, key path, expected."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.warnings: list[str] = []

    def fail(self, key: str, msg: str) -> BenchError:
        return BenchError(f"{self.path}: {key}: {msg}")

    def mapping(self, value: Any, key: str, allowed: tuple[str, ...]) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping with keys {', '.join(allowed)}, got {type(value).__name__}")
        for k in value:
            if k not in allowed:
                names = ", ".join(a for a in allowed if a) or "(none)"
                raise self.fail(f"{key}.{k}" if key else str(k), f"unknown key; allowed: {names}")
        return value

    def str_list(self, value: Any, key: str, allowed: list[str] | None = None) -> list[str]:
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(v, str) and v for v in items):
            raise self.fail(key, f"expected a name or a non-empty list of names, got {value!r}")
        for i, v in enumerate(items):
            if allowed is not None and v not in allowed:
                raise self.fail(f"{key}[{i}]", f"unknown {v!r}; allowed: {', '.join(allowed)}")
        return items

    def integer(self, value: Any, key: str, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"expected an integer >= {minimum}, got {value!r}")
        return value

    def number(self, value: Any, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise self.fail(key, f"expected a positive number, got {value!r}")
        return float(value)

    def text(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"expected a non-empty string, got {value!r}")
        return value

    def bits(self, value: Any, key: str) -> list[tuple[int | None, int | None]]:
        """[[w, a], ...] with each 2..8 or "fp"."""
        if not isinstance(value, list) or not value:
            raise self.fail(key, "expected a non-empty list of [w_bits, a_bits] pairs (2..8 or fp)")
        pairs = []
        for i, pair in enumerate(value):
            if not isinstance(pair, list) or len(pair) != 2:
                raise self.fail(f"{key}[{i}]", f"expected [w_bits, a_bits] (2..8 or fp), got {pair!r}")
            pairs.append(tuple(self._bit(b, f"{key}[{i}][{j}]") for j, b in enumerate(pair)))
        return pairs

    def _bit(self, b: Any, key: str) -> int | None:
        if b == "fp" or b is None:
            return None
        if isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 8:
            raise self.fail(key, f"bit width must be an integer in 2..8 or fp, got {b!r}")
        return b

    def expand(self, value: Any, key: str) -> str | None:
        """Environment variables in a path; an unset one leaves the value unset, with a warning."""
        if value is None:
            return None
        value = self.text(value, key)
        unset = [a or b for a, b in ENV_RE.findall(value) if (a or b) not in os.environ]
        if unset:
            self.warnings.append(f"unset environment variable ${unset[0]} in {key} ({value})")
            return None
        return os.path.expanduser(os.path.expandvars(value))


def load(path: str | Path) -> Sweep:
    """Parse, validate and expand a sweep file."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"sweep file not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise BenchError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    ck = _Checker(path)
    if not isinstance(doc, dict):
        raise BenchError(f"{path}: expected a mapping at the top level with keys {', '.join(TOP_KEYS)}")
    ck.mapping(doc, "", TOP_KEYS)
    for k in ("models", "methods", "tasks"):
        if k not in doc:
            raise ck.fail(k, "required key is missing")
    name = ck.text(doc.get("name", path.stem), "name")
    if not re.fullmatch(r"[\w.-]+", name):
        raise ck.fail("name", f"letters, digits, '.', '_' and '-' only, got {name!r}")
    models = ck.str_list(doc["models"], "models", list(MODELS))
    tasks = ck.str_list(doc["tasks"], "tasks", TASKS.names())
    grid_bits = ck.bits(doc["bits"], "bits") if "bits" in doc else None
    base = _base_cell_fields(doc, ck)
    seeds = _seeds(doc, ck, base.pop("seed", 0))
    entries = _method_entries(doc["methods"], ck, models)
    training = _training(doc.get("training"), entries, ck)
    cells, skipped, seen, labels = [], [], set(), {}
    for i, entry in enumerate(entries):
        key = f"methods[{i}]"
        options = {**{k: v for k, v in training.items() if k in _fields(entry["cls"])}, **entry["options"]}
        pairs = entry["bits"] or grid_bits
        if entry["name"] == "fp":
            pairs = [(None, None)]
        elif pairs is None:
            raise ck.fail(f"{key}.bits", "no bits: give `bits` at the top level or in the method entry")
        for w, a in pairs:
            try:
                method = Method.from_options(entry["name"], w, a, options, where=key)
            except BenchError as e:
                if entry["bits"] is not None or "w_bits/a_bits" not in str(e):
                    raise _option_error(ck, key, str(e), set(training) - set(entry["options"])) from None
                skipped.append(f"{entry['name']} W{w or 'fp'}A{a or 'fp'}: {e}")
                continue
            for model, seed, task in itertools.product(entry["models"] or models, seeds, tasks):
                if task not in MODELS[model].tasks:  # e.g. vos on a SAM (v1) model: no video path
                    note = f"{model} {task}: model family {MODELS[model].family} has no {task} task"
                    skipped += [] if note in skipped else [note]
                    continue
                cell = resolve(Cell(model=model, method=entry["name"], task=task, w_bits=w, a_bits=a,
                                    method_options=options, tag=entry["tag"], seed=seed, **base),
                               method.needs_data())
                cid = cell_id(cell)
                if cid in seen:
                    skipped.append(f"{model} {entry['name']} {task}: same cell as an earlier entry")
                    continue
                seen.add(cid)
                label = (model, entry["name"], method.variant, entry["tag"], w, a, task, seed)
                if label in labels:  # reports tell cells apart by their labels only
                    raise ck.fail(key, f"same method, variant and bits as {labels[label]} "
                                       f"({method.variant or 'default'}), other options (e.g. the scope): "
                                       "give one of them a `tag:`")
                labels[label] = key
                cells.append(SweepCell(cell, cid, method.variant, as_record(method.config.to_dict())))
    _check_paths(doc, base, models, tasks, ck)
    return Sweep(name, path, cells, _executor(doc.get("executor"), ck), skipped, ck.warnings)


def _seeds(doc: dict, ck: _Checker, seed: int) -> list[int]:
    """`seeds: [0, 1, 2]`: every cell once per seed (replicates that the report folds into one
    row with their spread); else the one `seed` (default 0)."""
    if "seeds" not in doc:
        return [seed]
    if "seed" in doc:
        raise ck.fail("seeds", "give either seed or seeds, not both")
    value = doc["seeds"]
    if not isinstance(value, list) or not value:
        raise ck.fail("seeds", f"expected a non-empty list of integers >= 0, got {value!r}")
    seeds = [ck.integer(v, f"seeds[{i}]") for i, v in enumerate(value)]
    if len(set(seeds)) != len(seeds):
        raise ck.fail("seeds", f"a seed is listed twice: {seeds}")
    return seeds


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls.Config)}


def _training(value: Any, entries: list[dict[str, Any]], ck: _Checker) -> dict[str, Any]:
    """`training:` budgets (`MethodConfig.budgets`: steps, iters, lr, ...) that reach every
    listed method whose config has the field: each key a budget of some listed method, each
    value of the type that field takes."""
    fields = {}
    for entry in entries:
        config = entry["cls"].Config
        hints = typing.get_type_hints(config)
        for f in dataclasses.fields(config):
            if f.name in config.budgets:
                fields.setdefault(f.name, (hints[f.name], f.type))
    training = ck.mapping(value, "training", tuple(sorted(fields)))
    for k, v in training.items():
        if not _type_ok(fields[k][0], v):
            raise ck.fail(f"training.{k}", f"expected {fields[k][1]}, got {v!r}")
    return training


def _type_ok(tp: Any, value: Any) -> bool:
    """Whether a YAML value fits a config field's annotation (int, float, bool, str, None,
    their unions, tuples); other annotations are left to the config's own checks."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(t, value) for t in typing.get_args(tp))
    if origin in (tuple, list):
        return isinstance(value, (list, tuple))
    checks = {type(None): lambda: value is None, bool: lambda: isinstance(value, bool),
              int: lambda: isinstance(value, int) and not isinstance(value, bool),
              float: lambda: isinstance(value, (int, float)) and not isinstance(value, bool),
              str: lambda: isinstance(value, str)}
    return checks[tp]() if tp in checks else True


def _option_error(ck: _Checker, key: str, msg: str, from_training: set[str]) -> BenchError:
    """A method's config refused its options: named after `training.<field>` when the field
    came from the `training:` block, else after the method entry."""
    msg = msg.removeprefix(f"{key}: ")
    field_, sep, rest = msg.partition(": ")
    if sep and field_ in from_training:
        return ck.fail(f"training.{field_}", rest)
    return ck.fail(key, msg)


def _method_entries(value: Any, ck: _Checker, models: list[str]) -> list[dict[str, Any]]:
    """The `methods:` list; an entry's `models:` (a subset of the sweep's) limits it to those."""
    if not isinstance(value, list) or not value:
        raise ck.fail("methods", "expected a non-empty list of method names or {name, tag, options, bits, models}")
    entries = []
    for i, item in enumerate(value):
        key = f"methods[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        if isinstance(item, dict) and "variant" in item:
            raise ck.fail(f"{key}.variant", "variant labels come from the method's options; "
                          "use `tag:` for a free label")
        item = ck.mapping(item, key, METHOD_KEYS)
        if "name" not in item:
            raise ck.fail(f"{key}.name", "required key is missing")
        name = ck.text(item["name"], f"{key}.name")
        if name not in METHODS:
            raise ck.fail(f"{key}.name", f"unknown method {name!r}; allowed: {', '.join(METHODS.names())}")
        if name == "fp" and "bits" in item:
            raise ck.fail(f"{key}.bits", "fp is the unquantized reference: it takes no bits")
        cls = METHODS.get(name)
        knobs = tuple(sorted(_fields(cls) - {"w_bits", "a_bits"}))
        options = ck.mapping(item.get("options"), f"{key}.options", knobs)
        entries.append({
            "name": name, "cls": cls, "options": options,
            "tag": ck.text(item["tag"], f"{key}.tag") if "tag" in item else "",
            "bits": ck.bits(item["bits"], f"{key}.bits") if "bits" in item else None,
            "models": ck.str_list(item["models"], f"{key}.models", models) if "models" in item else None,
        })
    return entries


def _base_cell_fields(doc: dict, ck: _Checker) -> dict[str, Any]:
    """Cell fields shared by the whole grid: data, calibration, checkpoints, device, seed."""
    data = ck.mapping(doc.get("data"), "data", DATA_KEYS)
    calib = ck.mapping(doc.get("calibration"), "calibration", CALIB_KEYS)
    out: dict[str, Any] = {
        "davis_root": ck.expand(data.get("davis_root"), "data.davis_root"),
        "coco_root": ck.expand(data.get("coco_root"), "data.coco_root"),
        "detections": ck.expand(data.get("detections"), "data.detections"),
        "calib_dir": ck.expand(calib.get("dir"), "calibration.dir"),
        "checkpoints": ck.expand(doc.get("checkpoints"), "checkpoints"),
    }
    if "split" in data:
        out["split"] = ck.text(data["split"], "data.split")
    if data.get("sequences") is not None:
        out["sequences"] = tuple(ck.str_list(data["sequences"], "data.sequences"))
    for k in ("max_frames", "max_images"):
        if data.get(k) is not None:
            out[k] = ck.integer(data[k], f"data.{k}", 1)
    for k in ("multimask", "track_later"):
        if k in data:
            if not isinstance(data[k], bool):
                raise ck.fail(f"data.{k}", f"expected true or false, got {data[k]!r}")
            out[k] = data[k]
    if "vos_format" in data:
        out["vos_format"] = ck.text(data["vos_format"], "data.vos_format")
        if out["vos_format"] not in VOS_FORMATS:
            raise ck.fail("data.vos_format", f"unknown {out['vos_format']!r}; allowed: {', '.join(VOS_FORMATS)}")
    if out.get("track_later") and out.get("vos_format", "davis") == "davis":
        raise ck.fail("data.track_later", "needs vos_format sav or mose (DAVIS 2017 scores frame-0 objects only)")
    if "n" in calib:
        out["calib_n"] = ck.integer(calib["n"], "calibration.n", 1)
    if doc.get("device") is not None:
        out["device"] = ck.text(doc["device"], "device")
        if not re.fullmatch(r"cpu|cuda(:\d+)?", out["device"]):
            raise ck.fail("device", f"expected cpu, cuda or cuda:N, got {out['device']!r}")
    if "seed" in doc:
        out["seed"] = ck.integer(doc["seed"], "seed")
    return out


def _check_paths(doc: dict, base: dict, models: list[str], tasks: list[str], ck: _Checker) -> None:
    """Missing checkpoints and dataset folders become warnings (errors in a real run)."""
    for key, field_ in (("data.davis_root", "davis_root"), ("data.coco_root", "coco_root"),
                        ("data.detections", "detections"), ("calibration.dir", "calib_dir")):
        if base.get(field_) and not Path(base[field_]).exists():
            ck.warnings.append(f"missing {key}: {base[field_]}")
    for model in models:
        if MODELS[model].builtin:
            continue
        try:
            path = checkpoint_path(model, base.get("checkpoints"))
        except BenchError as e:
            ck.warnings.append(f"missing checkpoints: {e}")
            continue
        if not path.is_file():
            ck.warnings.append(f"missing checkpoint for {model}: {path}")
    if not set(tasks) <= DATA_FREE_TASKS and base.get("davis_root") is None and base.get("coco_root") is None:
        ck.warnings.append("no data roots: the synthetic sets are used")


def _executor(value: Any, ck: _Checker) -> Executor:
    ex = ck.mapping(value, "executor", EXECUTOR_KEYS)
    out = Executor()
    if "kind" in ex:
        out.kind = ck.text(ex["kind"], "executor.kind")
        if out.kind not in EXECUTORS:
            raise ck.fail("executor.kind", f"unknown {out.kind!r}; allowed: {', '.join(EXECUTORS)}")
    if "max_parallel" in ex:
        out.max_parallel = ck.integer(ex["max_parallel"], "executor.max_parallel", 1)
    if "timeout_min" in ex:
        out.timeout_min = ck.number(ex["timeout_min"], "executor.timeout_min")
    slurm = ck.mapping(ex.get("slurm"), "executor.slurm", SLURM_KEYS)
    for k, v in slurm.items():
        key = f"executor.slurm.{k}"
        if k == "partition":
            ck.text(v, key)
        elif k == "additional_parameters":
            ck.mapping(v, key, tuple(v) if isinstance(v, dict) else ())
        else:
            ck.integer(v, key, 0 if k == "gpus_per_node" else 1)
    out.slurm = dict(slurm)
    return out
