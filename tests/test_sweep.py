"""Sweeps: validation of sweep files, expansion, the results store, reruns and faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bench import BenchError
from bench.data import synth
from bench.sweep import main as sweep_main
from bench.sweepspec import load
from tests.conftest import synth_set

REPO = Path(__file__).resolve().parents[1]
VALID = """
models: [micro]
methods: [fp, rtn]
bits: [[8, 8], [4, 4]]
tasks: [instseg]
"""

# (sweep text, what the one-line error must name besides the file)
MALFORMED = [
    ("models: [micro]\nmethods: [fp]\ntasks: [instseg\n", "not valid YAML"),
    ("- a\n- b\n", "expected a mapping at the top level"),
    (VALID + "colour: red\n", "colour: unknown key; allowed: name, models"),
    ("methods: [fp]\ntasks: [vos]\n", "models: required key is missing"),
    ("models: [micro]\ntasks: [vos]\n", "methods: required key is missing"),
    ("models: [micro]\nmethods: [fp]\n", "tasks: required key is missing"),
    (VALID.replace("[micro]", "[sam3-h]"), "models[0]: unknown 'sam3-h'; allowed: sam2.1-t"),
    (VALID.replace("[fp, rtn]", "[fp, gptq]"), "methods[1].name: unknown method 'gptq'; allowed: fp, rtn"),
    (VALID.replace("[instseg]", "[segment]"), "tasks[0]: unknown 'segment'; allowed: size, vos"),
    (VALID.replace("[[8, 8], [4, 4]]", "[[0, 8]]"), "bits[0][0]: bit width must be an integer in 2..8 or fp, got 0"),
    (VALID.replace("[[8, 8], [4, 4]]", "[[4, 9]]"), "bits[0][1]: bit width must be an integer in 2..8"),
    (VALID.replace("[[8, 8], [4, 4]]", "[4, 4]"), "bits[0]: expected [w_bits, a_bits]"),
    (VALID.replace("[[8, 8], [4, 4]]", "[['4', 4]]"), "bits[0][0]: bit width must be an integer"),
    (VALID.replace("[fp, rtn]", "[{name: fp, bits: [[4, 4]]}]"), "methods[0].bits: fp is the unquantized reference"),
    (VALID.replace("[fp, rtn]", "[{tag: x}]"), "methods[0].name: required key is missing"),
    (VALID.replace("[fp, rtn]", "[{name: rtn, variant: x}]"),
     "methods[0].variant: variant labels come from the method's options; use `tag:` for a free label"),
    (VALID.replace("[fp, rtn]", "[{name: rtn, option: {}}]"), "methods[0].option: unknown key; allowed: name"),
    (VALID.replace("[fp, rtn]", "[{name: rtn, options: {scope_preset: everything}}]"), "methods[0]:"),
    (VALID.replace("[fp, rtn]", "[{name: rtn, options: {granularity: group}}]"),
     "methods[0].options.granularity: unknown key; allowed: components"),
    (VALID.replace("[fp, rtn]", "[{name: rtn, options: [1, 2]}]"), "methods[0].options: expected a mapping"),
    (VALID + "data: {davis_root: 5}\n", "data.davis_root: expected a non-empty string, got 5"),
    (VALID + "data: {max_frames: 0}\n", "data.max_frames: expected an integer >= 1, got 0"),
    (VALID + "data: {vos_format: ytvos}\n", "data.vos_format: unknown 'ytvos'; allowed: davis, sav, mose"),
    (VALID + "data: {track_later: true}\n", "data.track_later: needs vos_format sav or mose"),
    (VALID + "data: {vos_format: sav, track_later: 1}\n", "data.track_later: expected true or false, got 1"),
    (VALID + "data: {frames: 4}\n", "data.frames: unknown key; allowed: davis_root"),
    (VALID + "calibration: {n: many}\n", "calibration.n: expected an integer >= 1, got 'many'"),
    (VALID + "device: tpu\n", "device: expected cpu, cuda or cuda:N, got 'tpu'"),
    (VALID + "executor: {kind: kubernetes}\n", "executor.kind: unknown 'kubernetes'; allowed: debug, local, slurm"),
    (VALID + "executor: {max_parallel: 0}\n", "executor.max_parallel: expected an integer >= 1, got 0"),
    (VALID + "executor: {timeout_min: -1}\n", "executor.timeout_min: expected a positive number, got -1"),
    (VALID + "executor: {slurm: {gpus: 1}}\n", "executor.slurm.gpus: unknown key; allowed: partition"),
    (VALID + "executor: {slurm: {cpus_per_task: two}}\n", "executor.slurm.cpus_per_task: expected an integer"),
    (VALID + "name: 'my sweep'\n", "name: letters, digits"),
    (VALID + "training: {optimizer: adam}\n", "training.optimizer: unknown key"),
    (VALID + "training: {steps: 10}\n", "training.steps: unknown key; allowed: (none)"),  # no listed method has it
    (VALID.replace("[fp, rtn]", "[fp, lsq]") + "training: {steps: many}\n",
     "training.steps: expected int, got 'many'"),
    (VALID.replace("[fp, rtn]", "[fp, lsq]") + "training: {steps: 1.5}\n", "training.steps: expected int, got 1.5"),
    (VALID.replace("[fp, rtn]", "[fp, lsq]") + "training: {steps: -1}\n",
     "training.steps: expected an integer >= 0, got -1"),
    (VALID.replace("[fp, rtn]", "[lsq, ptq4sam]") + "training: {iters: 10, steps: true}\n",
     "training.steps: expected int, got True"),
    ("models: [micro]\nmethods: [rtn]\ntasks: [instseg]\n", "methods[0].bits: no bits"),
    (VALID + "seed: 1\nseeds: [0, 1]\n", "seeds: give either seed or seeds, not both"),
    (VALID + "seeds: []\n", "seeds: expected a non-empty list of integers >= 0"),
    (VALID + "seeds: [0, -1]\n", "seeds[1]: expected an integer >= 0, got -1"),
    (VALID + "seeds: [2, 2]\n", "seeds: a seed is listed twice"),
    (VALID.replace("[fp, rtn]", "[fp, {name: rtn, models: [sam-b]}]"),
     "methods[1].models[0]: unknown 'sam-b'; allowed: micro"),
    (VALID.replace("[fp, rtn]", "[rtn, {name: rtn, options: {components: [mask_decoder]}}]"),
     "methods[1]: same method, variant and bits as methods[0] (default), other options (e.g. the scope): give"),
]


@pytest.mark.parametrize("text,expected", MALFORMED, ids=[f"bad{i:02d}" for i in range(len(MALFORMED))])
def test_malformed_sweep_files_are_one_line_errors(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(BenchError) as e:
        load(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and expected in msg and "\n" not in msg


def test_data_names_the_vos_format(tmp_path, monkeypatch):
    """`data: {vos_format: sav}` reaches every cell, with the format's default root (here the
    synthetic SA-V set); the same grid in another format is other cells."""
    monkeypatch.setenv("BENCH_SYNTH", str(tmp_path / "synth"))
    for var in ("BENCH_DAVIS", "BENCH_SAV", "BENCH_COCO"):
        monkeypatch.delenv(var, raising=False)
    path = tmp_path / "f.yaml"
    path.write_text(VALID.replace("[instseg]", "[vos]"))
    davis = load(path).cells
    path.write_text(VALID.replace("[instseg]", "[vos]") + "data: {vos_format: sav, track_later: true}\n")
    sav = load(path).cells
    assert {(c.cell.vos_format, c.cell.track_later, c.cell.davis_root) for c in sav} == {
        ("sav", True, str(tmp_path / "synth" / "sav"))}
    assert not {c.cell_id for c in davis} & {c.cell_id for c in sav}


def test_seeds_replicate_every_cell(tmp_path):
    path = tmp_path / "seeds.yaml"
    path.write_text(VALID)
    one = load(path)
    path.write_text(VALID + "seeds: [0, 1, 2]\n")
    three = load(path)
    assert len(three.cells) == 3 * len(one.cells)
    assert sorted({sc.cell.seed for sc in three.cells}) == [0, 1, 2]
    assert len({sc.cell_id for sc in three.cells}) == len(three.cells)  # each replicate its own record
    assert {sc.cell_id for sc in one.cells} == {sc.cell_id for sc in three.cells if sc.cell.seed == 0}


def test_cli_rejects_a_bad_file_with_exit_2_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(VALID.replace("[[8, 8], [4, 4]]", "[[0, 8]]"))
    assert sweep_main([str(path), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "bits[0][0]" in err[0]
    assert not (tmp_path / "results").exists()


def test_grid_expansion_ids_and_fp_reference(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("""
models: [micro, sam2.1-t]
methods:
  - fp
  - rtn
  - {name: rtn, tag: decoder-only, options: {components: [mask_decoder]}}
bits: [[8, 8], [4, fp], [fp, fp]]
tasks: [size, instseg]
""")
    sweep = load(path)
    # fp: one cell per model x task; rtn: (8,8), (4,fp) per entry; (fp,fp) dropped with a reason
    assert len(sweep.cells) == 2 * 2 * (1 + 2 + 2)
    assert len({c.cell_id for c in sweep.cells}) == len(sweep.cells)
    assert any("rtn Wfp" in s and "at least one bit width" in s for s in sweep.skipped)
    fp = [c for c in sweep.cells if c.cell.method == "fp"]
    assert all(c.cell.w_bits is None and c.cell.a_bits is None for c in fp)
    assert {(c.variant, c.cell.tag) for c in sweep.cells if c.cell.method == "rtn"} == {("", ""), ("", "decoder-only")}
    assert {c.labels()["tag"] for c in sweep.cells} == {"", "decoder-only"}
    assert sweep.name == "grid" and load(path).cells == sweep.cells  # ids are stable


def test_shipped_sweeps_validate_and_smoke_covers_the_shipped_methods():
    """(A new method is covered by the contract test once registered; smoke.yaml lists the
    shipped ones.) Every cell's variant is the one `bench.run` records for the same cell."""
    from bench.run import validate

    smoke = load(REPO / "sweeps" / "smoke.yaml")
    assert {c.cell.method for c in smoke.cells} == {"fp", "rtn", "lsq", "pact", "qsam2", "ptq4sam", "saqsam"}
    assert {c.cell.task for c in smoke.cells} == {"vos", "instseg"}
    assert {c.cell.method for c in smoke.cells if c.cell.model == "sam-micro"} == {"fp", "rtn", "ptq4sam"}
    assert {c.cell.task for c in smoke.cells if c.cell.model == "sam-micro"} == {"instseg"}
    assert len({(c.cell.w_bits, c.cell.a_bits) for c in smoke.cells if c.cell.method != "fp"}) == 2
    for path in sorted((REPO / "sweeps").glob("*.yaml")):
        cells = load(path).cells
        assert cells, path
        assert all(validate(c.cell).variant == c.variant for c in cells), path


def test_variant_labels_are_canonical_and_tags_make_other_cells(tmp_path):
    path = tmp_path / "labels.yaml"
    path.write_text("""
models: [micro]
methods:
  - {name: pact, options: {signed_clip: two_sided, alpha_l2: 0}}
  - {name: pact, options: {steps: 10, clip_frames: 3}}
  - {name: pact, tag: "200", options: {steps: 200}}
  - {name: qsam2, options: {lsc: false, steps: 0, vrc_ridge: 0.01}}
  - {name: ptq4sam, options: {recon: true, iters: 5, agq_taus: [1]}}
bits: [[4, 4]]
tasks: [instseg]
""")
    cells = load(path).cells
    assert [(c.variant, c.cell.tag) for c in cells] == [
        ("two-sided+no-l2", ""), ("", ""), ("", "200"), ("vrc-only+vrc_ridge=0.01", ""), ("L+agq_taus=[1]", "")]


def test_cell_ids_hash_the_resolved_data_roots(tmp_path, monkeypatch, capsys):
    """The same sweep on another dataset is other cells (its records are not reused); a size
    cell of a data-free method reads no data and keeps its id; the synthetic default is only a
    path at load time (nothing is generated)."""
    path = tmp_path / "roots.yaml"
    path.write_text("models: [micro]\nmethods: [fp, rtn]\nbits: [[4, fp]]\ntasks: [size, instseg]\n")
    monkeypatch.setenv("BENCH_SYNTH", str(tmp_path / "synth"))
    monkeypatch.delenv("BENCH_COCO", raising=False)
    ids = {}
    for name in ("A", "B", None):
        if name:
            monkeypatch.setenv("BENCH_DAVIS", str(tmp_path / name))
        else:
            monkeypatch.delenv("BENCH_DAVIS", raising=False)
        ids[name] = {(c.cell.method, c.cell.task): c for c in load(path).cells}
    assert not (tmp_path / "synth").exists()
    for key in [("fp", "instseg"), ("rtn", "instseg")]:
        assert len({ids[n][key].cell_id for n in ids}) == 3
    assert ids["A"][("fp", "instseg")].cell.davis_root == str(tmp_path / "A")
    assert ids[None][("fp", "instseg")].cell.coco_root == str(tmp_path / "synth" / "coco")
    for key in [("fp", "size"), ("rtn", "size")]:  # rtn W4Afp needs no calibration
        assert len({ids[n][key].cell_id for n in ids}) == 1 and ids["A"][key].cell.davis_root is None
    # A's records, as a finished run leaves them: under B only the size cells are done
    results = tmp_path / "results"
    (results / "roots").mkdir(parents=True)
    for sc in ids["A"].values():
        record = {**sc.labels(), "status": "ok", "cell_id": sc.cell_id, "metrics": {}}
        (results / "roots" / f"{sc.cell_id}.json").write_text(json.dumps(record))
    for name, to_run in (("A", 0), ("B", 2)):
        monkeypatch.setenv("BENCH_DAVIS", str(tmp_path / name))
        assert sweep_main([str(path), "--dry-run", "--results", str(results)]) == 0
        assert f"sweep roots: 4 cells, {to_run} to run" in capsys.readouterr().out


def test_dry_run_lists_cells_and_warns_about_missing_data(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("""
models: [sam2.1-t, sam2.1-s, sam2.1-b+, sam2.1-l, sam2-t, sam2-s, sam2-b+, sam2-l, micro]
methods: [fp, rtn]
bits: [[8, 8], [4, 4], [2, 8]]
tasks: [size, vos, instseg, coco-map]
checkpoints: ${BENCH_TEST_NO_SUCH_VARIABLE}/ckpt
data: {davis_root: /nonexistent/DAVIS}
""")
    env = {k: v for k, v in os.environ.items() if k != "BENCH_CHECKPOINTS"}
    out = subprocess.run([sys.executable, "-m", "bench.sweep", str(path), "--dry-run", "--results",
                          str(tmp_path / "results")], capture_output=True, text=True, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("sweep big: 144 cells, 144 to run")
    assert sum(line.startswith("  run ") for line in lines) == 144
    assert "warning: unset environment variable $BENCH_TEST_NO_SUCH_VARIABLE in checkpoints" in out.stdout
    assert "warning: missing data.davis_root: /nonexistent/DAVIS" in out.stdout
    assert not (tmp_path / "results").exists()
    # a real run stops before any cell, naming the missing path
    out = subprocess.run([sys.executable, "-m", "bench.sweep", str(path), "--results", str(tmp_path / "results")],
                         capture_output=True, text=True, cwd=REPO, env=env)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "BENCH_TEST_NO_SUCH_VARIABLE" in out.stderr and not (tmp_path / "results").exists()


# -- running -------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _micro(micro_weights):
    """Every sweep here runs on a random-weight micro checkpoint."""


SMALL = replace(synth.SynthConfig(), frames=6, clips_train=2, clips_val=2, images_train=4, images_val=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synth_set(tmp_path_factory, SMALL)


def small_sweep(tmp_path: Path, data: Path, methods: str, executor: str = "debug", extra: str = "") -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(f"""
name: s
models: [micro]
methods: {methods}
bits: [[4, 4]]
tasks: [instseg, vos]
data: {{davis_root: {data / 'davis'}, coco_root: {data / 'coco'}, max_frames: 4, max_images: 2}}
calibration: {{n: 4}}
device: cpu
executor: {{kind: {executor}, max_parallel: 2, timeout_min: 5}}
{extra}""")
    return path


def records(folder: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}


def test_debug_run_records_and_reruns(tmp_path, data, capsys):
    path = small_sweep(tmp_path, data, "[fp, rtn]")
    results = tmp_path / "results"
    assert sweep_main([str(path), "--results", str(results)]) == 0
    recs = records(results / "s")
    sweep = load(path)
    assert set(recs) == {c.cell_id for c in sweep.cells} and len(recs) == 4
    for cid, rec in recs.items():
        assert rec["status"] == "ok" and rec["cell_id"] == cid and rec["sweep"] == "s"
        assert {"config", "metrics", "timings", "versions", "git_commit", "device", "host", "date"} <= rec.keys()
        assert ("mIoU" if rec["task"] == "instseg" else "J&F") in rec["metrics"]
    out = capsys.readouterr()
    assert "4 ok, 0 failed, 0 skipped" in out.err and f"python -m bench.report {results / 's'}" in out.err
    # the closing table holds the records' headline metrics
    by = {(r["method"], r["task"]): r for r in recs.values()}
    rtn = by[("rtn", "vos")]
    row = (f"| micro | rtn | W{rtn['w_bits'] or 'fp'}A{rtn['a_bits'] or 'fp'} | {rtn['metrics']['J&F']:.1f} | "
           f"{by[('rtn', 'instseg')]['metrics']['mIoU']:.1f} |")
    assert row in out.out.splitlines() and "| model | method | bits | vos J&F | instseg mIoU |" in out.out
    # rerun: nothing to do
    assert sweep_main([str(path), "--results", str(results)]) == 0
    assert "0 ok, 0 failed, 4 skipped" in capsys.readouterr().err
    # the two tasks of a method share one quantized model (one process): rtn applies once
    rtn_recs = [r for r in recs.values() if r["method"] == "rtn"]
    assert sorted(r["timings"]["apply_reused"] for r in rtn_recs) == [False, True]
    # a lost record is run again, and only it; alone, it quantizes afresh, with the same scores
    victim = next(r["cell_id"] for r in rtn_recs if r["timings"]["apply_reused"])
    (results / "s" / f"{victim}.json").unlink()
    assert sweep_main([str(path), "--results", str(results)]) == 0
    assert "1 ok, 0 failed, 3 skipped" in capsys.readouterr().err
    def scores(m):  # the frame rate is a timing, not a score: it varies run to run
        return {k: v for k, v in m.items() if k != "fps"}
    assert scores(records(results / "s")[victim]["metrics"]) == scores(recs[victim]["metrics"])
    # filters and --force
    assert sweep_main([str(path), "--results", str(results), "--force", "--only", "method=rtn,task=vos"]) == 0
    assert "1 ok, 0 failed, 0 skipped" in capsys.readouterr().err


def test_a_record_made_under_other_method_defaults_is_stale_and_run_again(tmp_path, data, capsys):
    """The cell id hashes the options given, not the method's defaults: a record whose stored
    method settings differ from today's resolved ones is run again (and said so), not reused;
    a setting the record does not have (added later) is not compared."""
    path = small_sweep(tmp_path, data, "[rtn]")
    results = tmp_path / "results"
    assert sweep_main([str(path), "--results", str(results), "--only", "task=instseg"]) == 0
    capsys.readouterr()
    (cid,) = records(results / "s")
    rec_path = results / "s" / f"{cid}.json"
    rec = json.loads(rec_path.read_text())
    rec["config"]["method"].pop("w_bits")  # a field the old record lacks: not compared
    rec_path.write_text(json.dumps(rec))
    assert sweep_main([str(path), "--results", str(results), "--only", "task=instseg"]) == 0
    assert "0 ok, 0 failed, 1 skipped" in capsys.readouterr().err
    rec["config"]["method"]["scope_preset"] = "another"  # made under another default
    rec_path.write_text(json.dumps(rec))
    assert sweep_main([str(path), "--results", str(results), "--only", "task=instseg"]) == 0
    err = capsys.readouterr().err
    assert "made under other method settings (scope_preset): stale" in err and "1 ok, 0 failed, 0 skipped" in err
    assert json.loads(rec_path.read_text())["config"]["method"]["scope_preset"] != "another"


@pytest.mark.slow
def test_local_executor_faults_are_recorded_and_reruns_complete(tmp_path, data, monkeypatch, capsys):
    """A cell that raises, a worker killed with SIGKILL and a cell past its timeout, beside
    healthy cells, through submitit's local executor: a dead job's next cells still run."""
    monkeypatch.setenv("BENCH_PLUGINS", "tests.faulty_methods")
    monkeypatch.setenv("PYTHONPATH", f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    import importlib

    import methods
    if "boom" not in methods.METHODS:
        importlib.import_module("tests.faulty_methods")
    path = small_sweep(tmp_path, data, "[fp, rtn, boom, sigkill, sleepy]", executor="local")
    text = path.read_text().replace("tasks: [instseg, vos]", "tasks: [instseg]").replace("timeout_min: 5",
                                                                                         "timeout_min: 0.75")
    path.write_text(text)
    results = tmp_path / "results"
    assert sweep_main([str(path), "--results", str(results), "--max-parallel", "2"]) == 1
    by_method = {r["method"]: r for r in records(results / "s").values()}
    assert by_method["fp"]["status"] == by_method["rtn"]["status"] == "ok"
    boom = by_method["boom"]
    assert boom["status"] == "failed" and "boom: this method fails on purpose" in boom["error"]
    assert by_method["sigkill"]["status"] == "failed" and "job_id" in by_method["sigkill"]
    assert by_method["sleepy"]["status"] == "failed" and by_method["sleepy"]["error"].startswith("timeout")
    capsys.readouterr()
    # a rerun runs only the failed cells (which fail again); the healthy ones are untouched
    ok_before = {m: by_method[m]["run_id"] for m in ("fp", "rtn")}
    assert sweep_main([str(path), "--results", str(results), "--rerun-failed", "--only", "method=boom"]) == 1
    after = {r["method"]: r for r in records(results / "s").values()}
    assert {m: after[m]["run_id"] for m in ("fp", "rtn")} == ok_before
    assert after["boom"]["run_id"] != by_method["boom"]["run_id"]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.parametrize("sigint_ignored", [False, True])
def test_stopping_the_sweep_stops_its_local_jobs(tmp_path, data, sigint_ignored):
    """SIGTERM to a sweep on the local executor cancels its running jobs: no worker is left
    running (and writing records) after the sweep has exited; also when the sweep was started
    with SIGINT ignored (as `cmd &` in a script starts it), which submitit's cancel relies on."""
    import signal
    import time

    from bench.sweep import _child_pids

    path = small_sweep(tmp_path, data, "[sleepy]", executor="local")
    env = {**os.environ, "BENCH_PLUGINS": "tests.faulty_methods",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    results = tmp_path / "results"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.sweep", str(path), "--results", str(results)], cwd=REPO, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None)
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while len(workers) < 4 and time.monotonic() < deadline:  # 2 jobs: submitit's controllers + workers
        time.sleep(0.5)
        controllers = [int(p.name.split("_")[0]) for p in (results / "s" / ".submitit").glob("*/*_log.err")]
        workers = controllers + [c for pid in controllers for c in _child_pids(pid)]  # job id = controller pid
    assert len(workers) == 4 and all(_alive(pid) for pid in workers), workers
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "stopped: cancelled 2 running job(s)" in err, err
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(_alive(pid) for pid in workers)
    assert not list((results / "s").glob("*.json"))  # the cancelled cells have no record


@pytest.mark.slow
def test_killing_the_sweep_never_loses_or_truncates_a_record(tmp_path):
    """SIGKILL the sweep process at random moments, 20 times, rerunning it each time: every
    record on disk is always whole JSON, a written record never disappears or changes, and
    the last run completes what was missing."""
    import random
    import signal
    import time

    path = tmp_path / "k.yaml"
    path.write_text("""
models: [micro]
methods: [fp, rtn]
bits: [[2, fp], [3, fp], [4, fp], [5, fp], [6, fp], [8, fp]]
tasks: [size]
device: cpu
executor: {kind: debug}
""")
    folder = tmp_path / "results" / "k"
    cmd = [sys.executable, "-m", "bench.sweep", str(path), "--results", str(tmp_path / "results")]
    rng = random.Random(0)
    seen: dict[str, str] = {}
    for _ in range(20):
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 6.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        now = {p.stem: p.read_text() for p in folder.glob("*.json")} if folder.exists() else {}
        assert all(json.loads(text)["status"] == "ok" for text in now.values())
        assert all(now.get(cid) == text for cid, text in seen.items())  # nothing lost or rewritten
        seen = now
    assert 0 < len(seen)
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    final = records(folder)
    assert len(final) == 7 and all(r["status"] == "ok" for r in final.values())
    assert all(final[cid] == json.loads(text) for cid, text in seen.items())


def test_tasks_a_model_family_lacks_are_dropped_with_a_reason(tmp_path):
    """SAM (v1) has no video path: its vos cells are left out of the grid, each reason once."""
    path = tmp_path / "mixed.yaml"
    path.write_text("""
models: [micro, sam-b]
methods: [fp, rtn]
bits: [[4, 4]]
tasks: [vos, size]
""")
    sweep = load(path)
    assert sorted((c.cell.model, c.cell.task) for c in sweep.cells if c.cell.method == "rtn") == [
        ("micro", "size"), ("micro", "vos"), ("sam-b", "size")]
    assert [s for s in sweep.skipped if "sam-b" in s] == ["sam-b vos: model family sam has no vos task"]


def test_a_method_entry_can_name_its_models(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("""
models: [micro, sam-micro]
methods: [fp, {name: rtn, models: [sam-micro]}, {name: lsq, models: micro, options: {steps: 1}}]
bits: [[4, 4]]
tasks: [instseg]
""")
    cells = {(c.cell.model, c.cell.method) for c in load(path).cells}
    assert cells == {("micro", "fp"), ("sam-micro", "fp"), ("sam-micro", "rtn"), ("micro", "lsq")}
