"""Run a sweep: every cell of a grid, through submitit, with records that are never lost.

    python -m bench.sweep sweeps/smoke.yaml [--dry-run] [--executor debug|local|slurm]
        [--max-parallel N] [--only method=rtn,model=micro] [--rerun-failed | --force]

Each cell's record is `results/<sweep>/<cell-id>.json` (the id hashes the cell's resolved
config), written atomically by the worker as soon as the cell ends. Cells of one model that
share data run as one job, so the model is built and the calibration data read once. A rerun
skips cells whose record says ok and runs the failed and missing ones (`--rerun-failed`: only
the failed ones; `--force`: all). A job that dies (killed, timed out, cancelled) leaves a
failed record, with the reason and the tail of its log, for each of its cells that had none.
Exit status: 0 all ok, 1 some cells failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import BenchError
from bench.record import environment
from bench.results import (
    HEADLINE,
    bits_label,
    cell_value,
    label_with_unit,
    try_read,
    variant_label,
    write_json_atomic,
)
from bench.sweepspec import EXECUTORS, Sweep, SweepCell, load

POLL_S = 0.5


# -- the worker side (runs in the job) ---------------------------------------------------------
def run_group(cells: list[SweepCell], results_dir: str, sweep: str, run_id: str, threads: int | None = None
              ) -> list[str]:
    """Run cells that share a model in one process; write each record as soon as it ends.
    `threads`: this job's share of the cores (torch and OpenMP threads), when jobs run side
    by side: two jobs of default threads on the same cores spin against each other."""
    if threads:
        import torch

        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)  # for what it starts
        torch.set_num_threads(threads)
    from bench.run import SharedWork, run_cell

    statuses = []
    with tempfile.TemporaryDirectory() as tmp:
        shared = SharedWork(Path(tmp))
        for sc in cells:
            try:
                record = run_cell(sc.cell, work_dir=Path(tmp) / sc.cell_id, shared=shared)
            except Exception as e:  # bad input found late (a missing file): the cell fails alone
                record = failed_record(sc, f"{type(e).__name__}: {e}", traceback.format_exc())
            record.update(cell_id=sc.cell_id, sweep=sweep, run_id=run_id, variant=sc.variant)
            write_record(Path(results_dir), sc.cell_id, record)
            statuses.append(record["status"])
    return statuses


def failed_record(sc: SweepCell, error: str, log: str) -> dict[str, Any]:
    return {**sc.labels(), "status": "failed", "error": error, "log_tail": log[-4000:], "metrics": {},
            "config": {"cell": sc.cell.__dict__}, "timings": {}, **environment(sc.cell.device or "cpu")}


def write_record(folder: Path, cell_id: str, record: dict[str, Any]) -> None:
    write_json_atomic(folder / f"{cell_id}.json", record)


def read_record(folder: Path, cell_id: str) -> dict[str, Any] | None:
    return try_read(folder / f"{cell_id}.json")


# -- the sweep side ----------------------------------------------------------------------------
def select(sweep: Sweep, only: list[tuple[str, str]], folder: Path, mode: str) -> tuple[list, list]:
    """(cells to run, cells skipped with the reason) after `--only` and the records on disk."""
    todo, skipped = [], []
    for sc in sweep.cells:
        labels = {k: "fp" if v is None else str(v) for k, v in sc.labels().items()}
        if only and not all(any(labels.get(k) == v for kk, v in only if kk == k) for k, _ in only):
            continue
        record = read_record(folder, sc.cell_id) or {}
        status = record.get("status")
        stored = (record.get("config") or {}).get("method")
        # a setting the record lacks (or no longer known) is not compared: a field added later
        # defaults to what came before it
        changed = sorted(k for k in set(stored or {}) & set(sc.method_config or {})
                         if stored[k] != sc.method_config[k])
        if status == "ok" and changed:
            print(f"{sc.cell_id} ({sc.cell.method} {sc.variant or 'default'} {sc.cell.task}): its record was "
                  f"made under other method settings ({', '.join(changed)}): stale", file=sys.stderr)
            status = "stale"
        if mode == "force" or (mode == "failed" and status == "failed") or (mode == "missing" and status != "ok"):
            todo.append(sc)
        else:
            skipped.append((sc, "done" if status == "ok" else f"status {status or 'missing'}"))
    return todo, skipped


def groups_of(cells: list[SweepCell], parts: int = 1) -> list[list[SweepCell]]:
    """Cells that share the model build and calibration data (all but method, bits, task),
    one job each; with fewer groups than `parts` parallel slots, groups are split so that
    every slot has work (each part then builds its own model)."""
    shared: dict[tuple, list[SweepCell]] = {}
    for sc in cells:
        c = sc.cell
        key = (c.model, c.checkpoints, c.random_init, c.device, c.seed, c.davis_root, c.coco_root,
               c.calib_dir, c.calib_n)
        shared.setdefault(key, []).append(sc)
    groups = list(shared.values())
    while groups and len(groups) < parts and max(len(g) for g in groups) > 1:
        g = max(groups, key=len)
        groups.remove(g)
        groups += [g[: len(g) // 2], g[len(g) // 2 :]]
    return groups


ONLY_KEYS = ("model", "method", "variant", "tag", "w_bits", "a_bits", "task", "seed")


def parse_only(text: str) -> list[tuple[str, str]]:
    pairs = []
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or key not in ONLY_KEYS:
            raise argparse.ArgumentTypeError(
                f"--only: expected KEY=VALUE[,KEY=VALUE] with KEY in {', '.join(ONLY_KEYS)}; got {part!r}")
        pairs.append((key, value))
    return pairs


def executor_for(sweep: Sweep, kind: str, folder: Path):
    """A submitit executor for `local` or `slurm` (cluster named explicitly: submitit would
    pick Slurm whenever `srun` is on PATH)."""
    import submitit

    if kind == "local":  # fractional minutes allowed; no USR2 warning before the kill (cells do not resume)
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=sweep.executor.timeout_min, signal_delay_s=0)
        return ex
    ex = submitit.AutoExecutor(folder=folder, cluster=kind)
    timeout = max(2, int(round(sweep.executor.timeout_min)))  # < 2 min: submitit's USR2 fires at once
    s = sweep.executor.slurm
    params: dict[str, Any] = {"timeout_min": int(s.get("time_min", timeout)), "slurm_partition": s.get("partition"),
                              "slurm_array_parallelism": s.get("array_parallelism", sweep.executor.max_parallel),
                              "nodes": 1, "tasks_per_node": 1, "slurm_job_name": f"bench-{sweep.name}"}
    for key, name in (("gpus_per_node", "gpus_per_node"), ("cpus_per_task", "cpus_per_task"), ("mem_gb", "mem_gb")):
        if key in s:
            params[name] = s[key]
    if s.get("additional_parameters"):
        params["slurm_additional_parameters"] = dict(s["additional_parameters"])
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return ex


def job_threads(sweep: Sweep, kind: str, max_parallel: int) -> int | None:
    """Threads per job: local jobs split this machine's cores evenly; a Slurm job uses the
    cores it asked for (`cpus_per_task`); None leaves torch's default."""
    if kind == "local":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, cores // max(1, max_parallel))
    return sweep.executor.slurm.get("cpus_per_task")


class Progress:
    """One live line: done / running / failed / skipped and ETA (tqdm), over the cells to run."""

    def __init__(self, total: int, skipped: int, folder: Path, run_id: str) -> None:
        from tqdm import tqdm

        self.folder, self.run_id, self.skipped = folder, run_id, skipped
        self.ended: dict[str, str] = {}
        self.text, self.live = "", sys.stderr.isatty()
        self.bar = tqdm(total=total, desc="sweep", unit="cell", file=sys.stderr, dynamic_ncols=True)

    def poll(self, cells: list[SweepCell], running: int) -> None:
        for sc in cells:
            if sc.cell_id not in self.ended:
                rec = read_record(self.folder, sc.cell_id)
                if rec is not None and rec.get("run_id") == self.run_id:
                    self.ended[sc.cell_id] = rec.get("status", "failed")
                    self.bar.update(1)
        failed = sum(s != "ok" for s in self.ended.values())
        text = f"done {len(self.ended) - failed}, running {running}, failed {failed}, skipped {self.skipped}"
        if text != self.text or self.live:  # a log file gets a line per change, a terminal a ticking clock
            self.text = text
            self.bar.set_postfix_str(text, refresh=True)

    def close(self) -> None:
        self.bar.close()


def run_jobs(sweep: Sweep, groups: list[list[SweepCell]], kind: str, folder: Path, run_id: str,
             max_parallel: int, progress: Progress) -> None:
    """Run the groups on `kind`. When a job dies, the cell it was running gets a failed record
    with the reason and the rest of its group goes back in the queue as a new job."""
    all_cells = [sc for g in groups for sc in g]
    if kind == "debug":
        for g in groups:
            progress.poll(all_cells, 1)
            run_group(g, str(folder), sweep.name, run_id)
        progress.poll(all_cells, 0)
        return
    ex = executor_for(sweep, kind, folder / ".submitit" / run_id)
    threads = job_threads(sweep, kind, max_parallel)
    pending, running, started = list(groups), [], {}
    if kind == "slurm":  # one job array; Slurm throttles it (array_parallelism)
        n = len(pending)
        jobs = ex.map_array(run_group, pending, [str(folder)] * n, [sweep.name] * n, [run_id] * n, [threads] * n)
        running, pending = list(zip(jobs, pending)), []
        started.update((j.job_id, time.monotonic()) for j in jobs)
    try:
        while pending or running:
            while pending and len(running) < max_parallel:
                g = pending.pop(0)
                running.append((ex.submit(run_group, g, str(folder), sweep.name, run_id, threads), g))
                started[running[-1][0].job_id] = time.monotonic()
            for job, g in [r for r in running if r[0].done()]:
                running.remove((job, g))
                minutes = (time.monotonic() - started[job.job_id]) / 60
                timed_out = kind == "local" and minutes >= sweep.executor.timeout_min
                why = (f"timeout: the job ran past {sweep.executor.timeout_min:g} min and was killed; "
                       if timed_out else "")
                rest = settle(job, g, folder, sweep.name, run_id, why)
                if rest:
                    pending.append(rest)
            progress.poll(all_cells, len(running))
            time.sleep(POLL_S)
    except BaseException:  # Ctrl-C, SIGTERM (see main): the jobs stop with the sweep
        stop_jobs([job for job, _ in running])
        if running:
            print(f"\nstopped: cancelled {len(running)} running job(s); their running cells have no record "
                  "and the next run of the same command does them", file=sys.stderr)
        raise
    progress.poll(all_cells, 0)


def stop_jobs(jobs: list) -> None:
    """Cancel jobs. submitit cancels a local job with SIGINT to its controller process, which
    then stops its tasks; a sweep started in the background of a script inherits SIGINT
    ignored and so do the controllers, so a controller still alive after one shared grace
    period is killed with its tasks (its child processes)."""
    for job in jobs:
        job.cancel(check=False)
    controllers = [c for c in (getattr(job, "_process", None) for job in jobs) if c is not None]  # local jobs
    deadline = time.monotonic() + 5
    for controller in controllers:
        try:
            controller.wait(timeout=max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            for pid in _child_pids(controller.pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            controller.kill()
            controller.wait()


def _child_pids(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def settle(job, group: list[SweepCell], folder: Path, sweep: str, run_id: str, why: str = "") -> list[SweepCell]:
    """After a job ends: the first of its cells without a record of this run (the one it was
    running: cells run in order) gets a failed record; returns the cells it never reached."""
    unfinished = [sc for sc in group if (read_record(folder, sc.cell_id) or {}).get("run_id") != run_id]
    if not unfinished:
        return []
    try:
        job.result()
        reason = why + "the job ended without writing this cell's record"
    except Exception as e:
        reason = why + f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"
    culprit = unfinished[0]
    record = failed_record(culprit, reason, _log_tail(job))
    record.update(cell_id=culprit.cell_id, sweep=sweep, run_id=run_id, variant=culprit.variant, job_id=job.job_id)
    write_record(folder, culprit.cell_id, record)
    return unfinished[1:]


def _log_tail(job) -> str:
    parts = []
    for read in (job.stdout, job.stderr):
        try:
            parts.append(read() or "")
        except Exception:  # the log may not exist for a job that never started
            pass
    return "\n".join(parts)[-4000:]


def print_plan(sweep: Sweep, todo: list[SweepCell], skipped: list, out: Callable[[str], None]) -> None:
    out(f"sweep {sweep.name}: {len(sweep.cells)} cells, {len(todo)} to run, {len(skipped)} skipped "
        f"({sweep.path})")
    for sc in todo:
        lab = sc.labels()
        out(f"  run   {sc.cell_id}  {_label(lab)}")
    for sc, why in skipped:
        out(f"  skip  {sc.cell_id}  {_label(sc.labels())}  ({why})")
    for line in sweep.skipped:
        out(f"  grid  dropped: {line}")
    for w in sweep.warnings:
        out(f"  warning: {w}")


def _label(lab: dict[str, Any]) -> str:
    bits = "" if lab["method"] == "fp" else f" W{lab['w_bits'] or 'fp'}A{lab['a_bits'] or 'fp'}"
    variant = " ".join(filter(None, [lab["variant"], f"tag {lab['tag']}" if lab.get("tag") else ""]))
    variant = f" [{variant}]" if variant else ""
    seed = f" seed {lab['seed']}" if lab.get("seed") else ""
    return f"{lab['model']} {lab['method']}{variant}{bits} {lab['task']}{seed}"


def results_table(cells: list[SweepCell], folder: Path) -> list[str]:
    """A Markdown glance at the sweep: one row per model x method x variant x bits, the
    headline metric of each task in its unit; failed or missing cells are '-'."""
    tasks = [t for t in HEADLINE if any(sc.cell.task == t for sc in cells)]
    rows: dict[tuple, dict[str, str]] = {}
    for sc in cells:
        c = sc.cell
        label = variant_label({"variant": sc.variant, "tag": c.tag})
        key = (c.model, c.method + (f" ({label})" if label else ""), bits_label(c.method, c.w_bits, c.a_bits))
        rec = read_record(folder, sc.cell_id) or {}
        m = HEADLINE.get(c.task)
        value = cell_value({"status": rec.get("status"), "metrics": rec.get("metrics") or {}}, m) if m else None
        rows.setdefault(key, {})
        if value is not None:
            rows[key][c.task] = f"{value:.{m.digits}f}"
    head = [f"{t} {label_with_unit(HEADLINE[t])}" for t in tasks]
    lines = ["| model | method | bits | " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * len(tasks)]
    lines += ["| " + " | ".join(key) + " | " + " | ".join(vals.get(t, "-") for t in tasks) + " |"
              for key, vals in rows.items()]
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", help="sweep YAML file (e.g. sweeps/smoke.yaml)")
    p.add_argument("--dry-run", action="store_true", help="print the cells and warnings; run nothing")
    p.add_argument("--executor", choices=EXECUTORS, help="override the file's executor.kind")
    p.add_argument("--max-parallel", type=int, help="local: jobs at a time (default: the file's, else 1)")
    p.add_argument("--results", default="results", help="results root (default results/)")
    p.add_argument("--only", type=parse_only, default=[], help="filter, e.g. method=rtn,model=micro")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--rerun-failed", action="store_true", help="run only cells whose record failed")
    mode.add_argument("--force", action="store_true", help="run every selected cell again")
    return p


def _exit_on_signal(signum, _frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        sweep = load(args.sweep)
        if args.max_parallel is not None and args.max_parallel < 1:
            raise BenchError(f"--max-parallel: must be >= 1, got {args.max_parallel}")
        folder = Path(args.results) / sweep.name
        mode = "force" if args.force else "failed" if args.rerun_failed else "missing"
        todo, skipped = select(sweep, args.only, folder, mode)
        if args.dry_run:
            print_plan(sweep, todo, skipped, print)
            return 0
        if sweep.missing_paths():
            raise BenchError(sweep.missing_paths()[0])
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for w in sweep.warnings:
        print(f"warning: {w}", file=sys.stderr)
    kind = args.executor or sweep.executor.kind
    max_parallel = args.max_parallel or sweep.executor.max_parallel
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    progress = Progress(len(todo), len(skipped), folder, run_id)
    on_term = signal.signal(signal.SIGTERM, _exit_on_signal)  # a SIGTERM cancels the jobs too
    try:
        groups = groups_of(todo, max_parallel if kind == "local" else 1)
        run_jobs(sweep, groups, kind, folder, run_id, max_parallel, progress)
    finally:
        signal.signal(signal.SIGTERM, on_term)
        progress.close()
    print("\n".join(results_table(sweep.cells, folder)))
    statuses = [(read_record(folder, sc.cell_id) or {}).get("status") for sc in todo]
    failed = sum(s != "ok" for s in statuses)
    print(f"sweep {sweep.name}: {len(todo) - failed} ok, {failed} failed, {len(skipped)} skipped; "
          f"records in {folder}/", file=sys.stderr)
    print(f"tables and plots: python -m bench.report {folder}", file=sys.stderr)
    if failed:
        print(f"rerun the failed cells: python -m bench.sweep {args.sweep} --rerun-failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
