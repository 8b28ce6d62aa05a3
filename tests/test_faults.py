"""Fault injection: every stage killed or failed, then the invariants checked.

Each stage -- prepare, train, checkpoint, quantize, eval, TTT, reproduce -- runs as a real
``gepa`` process (forked from a warm fork server, so a run costs its work, not an interpreter
start) and is killed (SIGKILL to its whole process tree at a seeded random moment, or at a
seeded random one of its atomic writes via ``GEPA_FAULT_AT_WRITE``) or failed (an injected
ENOSPC/EROFS, NaN weights). Afterwards:

* the run resumes (the same command again) or fails with one clear line, never a traceback;
* no file is half-written: every JSON parses strictly, every checkpoint and weights file
  verifies its checksum, the artifact validates, no ``*.tmp`` is left, the lock is free;
* a failed stage records no result (its failure, when summary.json can be written);
* the recovered training result is bit-identical to the uninterrupted one (CPU, quick scale).

The counts of injected faults and invariant checks are printed at the end.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch

from gepalib import checkpoint as ckpt
from gepalib.config import override
from gepalib.faults import WRITE_ENV
from gepalib.fsio import loads_strict, verify_file
from gepalib.quant.artifact import load_artifact_state_dict
from gepalib.run.supervise import _descendants
from gepalib.rundir import RunDir, is_finished
from gepalib.runlock import RunLock

pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[1]
RNG = random.Random(20260101)
COUNT = {"faults": 0, "checks": 0, "runs": 0, "stale_build_dirs": 0}
_CTX = mp.get_context("forkserver")
_CTX.set_forkserver_preload(["torch", "torch._dynamo", "sentencepiece", "gepalib.cli", "gepalib.train",
                             "gepalib.run.pipeline", "gepalib.run.notebooks", "gepalib.prepare"])


def check(cond: bool, what: str) -> None:
    COUNT["checks"] += 1
    assert cond, what


@pytest.fixture(scope="module", autouse=True)
def report_counts(request):
    yield
    line = (f"fault injection: {COUNT['faults']} faults injected, {COUNT['checks']} invariant checks, "
            f"{COUNT['runs']} gepa processes" + (f"; prepare left {COUNT['stale_build_dirs']} hidden build "
                                                 f"dir(s) of killed builds" if COUNT["stale_build_dirs"] else ""))
    cap = request.config.pluginmanager.get_plugin("capturemanager")
    if cap is None:
        print(line)
        return
    with cap.global_and_fixture_disabled():  # shown in the session's output, -q or not
        print("\n" + line, flush=True)


# ---------------------------------------------------------------------------
# Running `gepa` in a process of its own


def _child(argv: list[str], env: dict[str, str], cwd: str, log: str) -> None:
    """The forked process: its own session (so its whole tree can be killed), output into ``log``,
    then ``gepa argv``; the paths of its atomic writes go to ``log + '.writes'``."""
    os.setsid()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(env)
    os.chdir(cwd)
    torch.set_num_threads(1)
    from gepalib import cli, faults

    writes: list[str] = []
    hook = faults.on_write

    def counted(path):
        writes.append(str(path))
        hook(path)

    faults.on_write = counted
    try:
        rc = cli.main(argv)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 2
    except BaseException:  # noqa: BLE001 -- a traceback is itself a failed invariant
        traceback.print_exc()
        rc = 99
    Path(log + ".writes").write_text("\n".join(writes))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def kill_tree(pid: int) -> None:
    """SIGSTOP the process and every descendant (none can fork any more), then SIGKILL them all.
    torchrun's workers and Jupyter kernels run in sessions of their own: a group kill misses them."""
    seen: set[int] = set()
    for _ in range(3):
        new = [q for q in [pid, *_descendants(pid)] if q not in seen]
        if not new:
            break
        for q in new:
            try:
                os.kill(q, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        seen.update(new)
    for q in seen:
        try:
            os.kill(q, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Run:
    def __init__(self, rc: int | None, out: str, writes: list[str], killed: bool, wall: float):
        self.rc, self.out, self.writes, self.killed, self.wall = rc, out, writes, killed, wall

    def error_lines(self) -> list[str]:
        return [ln for ln in self.out.splitlines() if ln.startswith("gepa ") and ": error:" in ln]


def gepa(tmp: Path, argv: list[str], *, env: dict[str, str] | None = None, kill_after: float | None = None,
         kill_when=None, timeout: float = 600) -> Run:
    """``gepa argv`` in a forked process; SIGKILLed (the whole tree) after ``kill_after`` seconds,
    or once ``kill_when()`` is true, if it is still running then."""
    COUNT["runs"] += 1
    log = tmp / f"gepa-{COUNT['runs']:03d}.log"
    p = _CTX.Process(target=_child, args=(argv, env or {}, str(REPO), str(log)))
    t0 = time.monotonic()
    p.start()
    killed = False
    if kill_when is not None:
        while p.is_alive() and not kill_when() and time.monotonic() - t0 < timeout:
            time.sleep(0.05)
    p.join(kill_after if kill_after is not None else (0 if kill_when is not None else timeout))
    if p.is_alive():
        if kill_after is None and kill_when is None:
            kill_tree(p.pid)
            p.join()
            pytest.fail(f"gepa {' '.join(argv)} did not finish in {timeout} s; log:\n{log.read_text()}")
        kill_tree(p.pid)
        p.join()
        killed = True
        COUNT["faults"] += 1
    out = log.read_text(errors="replace") if log.exists() else ""
    w = Path(str(log) + ".writes")
    writes = w.read_text().splitlines() if w.exists() else []
    check("Traceback" not in out, f"gepa {' '.join(argv)} printed a traceback:\n{out}")
    return Run(p.exitcode, out, writes, killed, time.monotonic() - t0)


def kill_at_random(tmp: Path, argv: list[str], wall: float, fresh=None, tries: int = 6) -> Run:
    """``gepa argv`` SIGKILLed at a seeded random moment of a run that takes about ``wall``
    seconds; a run that ends before it (the machine's load varies) is tried again, each time
    after ``fresh()`` (which puts the state back) and with a shorter window."""
    for i in range(tries):
        if fresh is not None:
            fresh()
        r = gepa(tmp, argv, kill_after=RNG.uniform(0.05, 0.95) * wall * 0.7 ** i)
        if r.killed:
            return r
        wall = min(wall, r.wall)
    pytest.fail(f"gepa {' '.join(argv)} always ended before a kill in [0, {wall:.2f}] s")


def fault_run(tmp: Path, argv: list[str], k: int, what: str = "kill") -> Run:
    """``gepa argv`` with its ``k``-th atomic write killed (SIGKILL) or failed (``enospc``, ...)."""
    COUNT["faults"] += 1
    return gepa(tmp, argv, env={WRITE_ENV: f"{k}:{what}"})


# ---------------------------------------------------------------------------
# Invariants


def check_files(root: Path, *, settled: bool) -> None:
    """Nothing half-written under ``root``: strict JSON, whole metrics rows, checkpoints and
    weights that verify, artifacts that validate; with ``settled`` (after a run that ended on
    its own) no temp file and a free lock."""
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        if p.name.endswith(".tmp"):
            check(not settled, f"temp file left behind: {p}")
        elif p.suffix in (".json", ".ipynb"):
            try:
                loads_strict(p.read_text(encoding="utf-8"), str(p))
                ok = True
            except ValueError:
                ok = False
            check(ok, f"{p} is not strict JSON")
        elif p.name == "metrics.jsonl":
            lines = p.read_text().split("\n")
            whole = lines[:-1] if not settled else lines
            check(all(_strict(ln) for ln in whole if ln.strip()), f"{p}: a bad row")
        elif ckpt.CKPT_RE.match(p.name):
            check(ckpt.verify_checkpoint(p) == (True, None), f"{p} does not verify")
        elif p.name in ("model_ema.pt", "model_live.pt"):
            check(verify_file(p), f"{p} has no checksum or does not verify")
        elif p.name.endswith(".gpz"):
            load_artifact_state_dict(p)  # raises on any damage
            check(True, "artifact validates")
        elif p.name == "run.lock" and settled:
            with RunLock(p.parent, "test"):
                check(True, "lock free")


def _strict(line: str) -> bool:
    try:
        loads_strict(line)
        return True
    except ValueError:
        return False


def check_failed_cleanly(r: Run, what: str, rc: int | None = None) -> None:
    """A fault that is not a kill: non-zero exit (``rc`` when given: the exit code of its class,
    see the README's "Exit codes") with one clear error line naming ``what``."""
    check(r.rc not in (0, None) and not r.killed, f"exit {r.rc}, expected a failure:\n{r.out}")
    check(rc is None or r.rc == rc, f"exit {r.rc}, expected {rc}:\n{r.out}")
    errs = r.error_lines()
    check(len(errs) == 1 and what in errs[0], f"expected one error line with {what!r}, got {errs}:\n{r.out}")


def same_training(a: Path, b: Path) -> None:
    for f in ("model_ema.pt", "model_live.pt"):
        x, y = torch.load(a / f, weights_only=True), torch.load(b / f, weights_only=True)
        check(set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x), f"{f} differs from the uninterrupted run")
    keys = ("ms_per_step", "tok_per_s", "train_time_s", "eval_s")
    rows = [[{k: v for k, v in r.items() if k not in keys} for r in RunDir(d).read_metrics()] for d in (a, b)]
    check(rows[0] == rows[1], "metrics.jsonl differs from the uninterrupted run")
    sa, sb = RunDir(a).stages(), RunDir(b).stages()
    check(all(sa[s]["val_bpb"] == sb[s]["val_bpb"] for s in ("float_live", "float_ema")), "final bpb differs")


def stage_rows(rd: Path) -> dict[str, float]:
    return {k: v["val_bpb"] for k, v in RunDir(rd).stages().items()}


# ---------------------------------------------------------------------------
# Fixtures: the quick-scale config and the uninterrupted references


def quick_cfg(data_dir: Path):
    from gepalib import run

    base = run.base_config("tiny", "quick", str(data_dir))
    return override(run.with_length(base, 8, 0.5, val_every=4), checkpoint_every=2, keep_checkpoints=2,
                    train_shards=1, ttt_chunk_tokens=256)


@pytest.fixture(scope="module")
def ref(sotu_data_dir, tmp_path_factory):
    """The uninterrupted train -> quantize -> eval (sliding) -> eval (TTT) pipeline."""
    tmp = tmp_path_factory.mktemp("faults_ref")
    cfg_path = tmp / "quick.json"
    cfg_path.write_text(quick_cfg(sotu_data_dir).to_json())
    rd = tmp / "run"
    train = ["train", "--config", str(cfg_path), "--run-dir", str(rd)]
    t = gepa(tmp, train)
    assert t.rc == 0, t.out
    q = gepa(tmp, ["quantize", str(rd), "--report", "none"])
    assert q.rc == 0, q.out
    e = gepa(tmp, ["eval", str(rd), "--sliding"])
    assert e.rc == 0, e.out
    tt = gepa(tmp, ["eval", str(rd), "--ttt"])
    assert tt.rc == 0, tt.out
    check_files(rd, settled=True)
    return {"tmp": tmp, "train": train, "rd": rd, "cfg": cfg_path, "train_run": t, "q": q, "e": e, "ttt": tt}


def train_argv(ref, rd: Path) -> list[str]:
    return ["train", "--config", str(ref["cfg"]), "--run-dir", str(rd)]


def copy_trained(ref, dst: Path, *, quantized: bool) -> Path:
    """The reference run as training left it (and, with ``quantized``, with its artifact and
    int6_roundtrip row): stage rows of later evaluations removed."""
    shutil.copytree(ref["rd"], dst)
    rd = RunDir(dst)
    s = rd.read_summary()
    keep = ("float_live", "float_ema") + (("int6_roundtrip",) if quantized else ())
    s["stages"] = {k: v for k, v in s["stages"].items() if k in keep}
    if not quantized:
        for k in ("artifact", "size"):
            s.pop(k, None)
        rd.artifact.unlink()
    from gepalib.fsio import atomic_write_json

    atomic_write_json(rd.summary, s)
    return dst


# ---------------------------------------------------------------------------
# train and checkpoint


def test_train_killed_at_random_moments_resumes_bit_identical(ref, tmp_path):
    rd = tmp_path / "run"
    argv = train_argv(ref, rd)
    wall = ref["train_run"].wall
    for _ in range(3):  # killed three times in a row, then left to finish
        kill_at_random(tmp_path, argv, wall, fresh=lambda: shutil.rmtree(rd, ignore_errors=True) if
                       rd.exists() and is_finished(RunDir(rd)) else None)  # it ended first: start over
        if rd.exists():
            check_files(rd, settled=False)
    r = gepa(tmp_path, argv)
    check(r.rc == 0, r.out)
    check_files(rd, settled=True)
    same_training(rd, ref["rd"])


def test_checkpoint_and_weights_writes_killed_or_failed(ref, tmp_path):
    """SIGKILL at seeded random atomic writes (checkpoints, weights, summary, metrics), and ENOSPC /
    EROFS injected at others: each run then resumes to the uninterrupted result."""
    writes = ref["train_run"].writes
    ck = [i + 1 for i, w in enumerate(writes) if ckpt.CKPT_RE.match(Path(w).name)]
    other = [i + 1 for i in range(len(writes)) if i + 1 not in ck]
    cases = [(k, "kill") for k in RNG.sample(ck, 3) + RNG.sample(other, 1)]
    cases += [(RNG.choice(ck), "enospc"), (RNG.choice(other), "erofs")]
    for n, (k, what) in enumerate(cases):
        rd = tmp_path / f"run{n}"
        argv = train_argv(ref, rd)
        r = fault_run(tmp_path, argv, k, what)
        name = Path(writes[k - 1]).name
        if what == "kill":
            check(r.rc == -signal.SIGKILL, f"write {k} ({name}): exit {r.rc}")
        else:
            reason = {"enospc": "no space left on device", "erofs": "read-only file system"}[what]
            check_failed_cleanly(r, f"cannot write {rd}", rc=4)
            check(f"{name}: {reason}" in r.error_lines()[0], r.out)
            s = RunDir(rd).read_summary()  # the failure is recorded (summary.json is writable again)
            check(s["train"]["status"] == "failed" and reason in s["train"]["error"], str(s))
            check(not {"float_live", "float_ema"} & set(s.get("stages", {})), "a failed run recorded a result")
        check_files(rd, settled=False)
        r = gepa(tmp_path, argv)
        check(r.rc == 0, r.out)
        check_files(rd, settled=True)
        same_training(rd, ref["rd"])


def test_two_trainers_on_one_run_dir(ref, tmp_path):
    """Two `gepa train` processes started on one run dir: one trains, the other fails at once
    naming it; the run is the uninterrupted one (no row twice, one header)."""
    rd = tmp_path / "run"
    argv = train_argv(ref, rd)
    COUNT["faults"] += 1
    procs, logs = [], []
    for i in range(2):
        COUNT["runs"] += 1
        logs.append(tmp_path / f"race{i}.log")
        procs.append(_CTX.Process(target=_child, args=(argv, {}, str(REPO), str(logs[-1]))))
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)
    rcs = sorted(p.exitcode for p in procs)
    outs = [lg.read_text() for lg in logs]
    check(rcs == [0, 4], f"exit codes {rcs}: {outs}")  # 4: I/O or lock
    loser = outs[[p.exitcode for p in procs].index(4)]
    check("is in use by `gepa train` (pid" in loser, loser)
    check((rd / "train.log").read_text().count("==== gepalib train") == 1, "two headers in train.log")
    check_files(rd, settled=True)
    same_training(rd, ref["rd"])


# ---------------------------------------------------------------------------
# quantize, eval, TTT


def test_quantize_killed_or_failed(ref, tmp_path):
    want = ref["rd"] / "final_model.int6.gpz"
    n_writes = len(ref["q"].writes)
    for n in range(4):
        rd = tmp_path / f"run{n}"
        argv = ["quantize", str(rd), "--report", "none"]

        def fresh() -> None:
            shutil.rmtree(rd, ignore_errors=True)
            copy_trained(ref, rd, quantized=False)
        if n < 2:
            r = kill_at_random(tmp_path, argv, ref["q"].wall, fresh)
        else:
            fresh()
            r = fault_run(tmp_path, argv, RNG.randint(1, n_writes), "kill" if n == 2 else "enospc")
        if n == 3:
            check_failed_cleanly(r, "no space left on device", rc=4)
            s = RunDir(rd).read_summary()
            check("int6_roundtrip" not in s["stages"], "a failed quantize recorded a result")
            check("quantize" in s.get("failures", {}) or "summary.json" in r.error_lines()[0], str(s))
        check_files(rd, settled=False)
        r = gepa(tmp_path, argv)
        check(r.rc == 0, r.out)
        check_files(rd, settled=True)
        check((rd / "final_model.int6.gpz").read_bytes() == want.read_bytes(), "artifact differs")
        check(stage_rows(rd)["int6_roundtrip"] == stage_rows(ref["rd"])["int6_roundtrip"], "roundtrip differs")
        check("quantize" not in RunDir(rd).read_summary().get("failures", {}), "stale failure")


@pytest.mark.parametrize("stage", ["eval", "ttt"])
def test_eval_and_ttt_killed_or_failed(ref, tmp_path, stage):
    flag, name, r0 = ("--sliding", "int6_sliding", ref["e"]) if stage == "eval" else ("--ttt", "int6_sliding_ttt",
                                                                                       ref["ttt"])
    want = stage_rows(ref["rd"])[name]
    for n in range(3):
        rd = tmp_path / f"run{n}"
        argv = ["eval", str(rd), flag]

        def fresh() -> None:
            shutil.rmtree(rd, ignore_errors=True)
            copy_trained(ref, rd, quantized=True)
        if n < 2:
            r = kill_at_random(tmp_path, argv, r0.wall, fresh)
        else:  # the stage row's write fails (the roundtrip row was written first)
            fresh()
            r = fault_run(tmp_path, argv, 2, "enospc")
            check_failed_cleanly(r, "no space left on device", rc=4)
            s = RunDir(rd).read_summary()
            check(name not in s["stages"], f"a failed {name} was recorded as a result")
            check(name in s.get("failures", {}), f"the failure of {name} is not recorded: {s.get('failures')}")
        check_files(rd, settled=False)
        r = gepa(tmp_path, argv)
        check(r.rc == 0, r.out)
        check_files(rd, settled=True)
        check(stage_rows(rd)[name] == want, f"{name} differs from the uninterrupted evaluation")
        check(name not in RunDir(rd).read_summary().get("failures", {}), "stale failure")


def test_nan_weights_fail_evaluation_and_ttt(ref, tmp_path):
    """NaN EMA weights (checksummed, so only their values are wrong): `gepa eval --weights ema --ttt`
    fails before TTT runs, the stage is recorded as failed, not as a result; summary.json stays
    strict JSON."""
    from gepalib.fsio import atomic_torch_save

    rd = copy_trained(ref, tmp_path / "run", quantized=True)
    sd = torch.load(rd / "model_ema.pt", weights_only=True)
    sd["blocks.0.attn.q.weight"] = torch.full_like(sd["blocks.0.attn.q.weight"], float("nan"))
    atomic_torch_save(sd, rd / "model_ema.pt", checksum=True)
    before = RunDir(rd).stages()["float_ema"]
    COUNT["faults"] += 1
    r = gepa(tmp_path, ["eval", str(rd), "--weights", "ema", "--ttt"])
    check_failed_cleanly(r, "non-finite values", rc=1)
    check("ttt_chunk" not in r.out and "stage:" not in r.out, "TTT (or a stage) ran on NaN weights")
    s = RunDir(rd).read_summary()
    check(s["stages"]["float_ema"] == before and "float_ema_sliding_ttt" not in s["stages"], "a result recorded")
    check(s["failures"]["float_ema"]["error_type"] == "NonFiniteResult", str(s.get("failures")))
    check_files(rd, settled=True)
    COUNT["faults"] += 1  # the artifact was made from the weights before the NaNs: stale, refused
    before = RunDir(rd).stages()
    r = gepa(tmp_path, ["eval", str(rd)])
    check_failed_cleanly(r, "final_model.int6.gpz is stale: model_ema.pt has changed since the artifact was made "
                            "from it", rc=3)
    check(f"rerun `gepa quantize {rd}`" in r.error_lines()[0] and "stage:" not in r.out, r.out)
    s = RunDir(rd).read_summary()
    check(s["stages"] == before and s["failures"]["int6_roundtrip"]["error_type"] == "StaleArtifact", str(s))
    COUNT["faults"] += 1
    r = gepa(tmp_path, ["quantize", str(rd), "--report", "none"])
    check_failed_cleanly(r, "non-finite values", rc=1)


def test_torchrun_eval_on_a_held_run_dir_fails_on_every_rank(ref, tmp_path):
    """Rank 0 cannot take the lock: both ranks exit at once (no rank left waiting in a collective)."""
    from gepalib.run.launch import _child_env

    rd = copy_trained(ref, tmp_path / "run", quantized=True)
    COUNT["faults"] += 1
    with RunLock(rd, "train"):
        t0 = time.monotonic()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "gepalib", "eval", str(rd)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_child_env({"OMP_NUM_THREADS": "1"}))
        COUNT["runs"] += 1
    check(r.returncode != 0, r.stdout + r.stderr)
    check(f"is in use by `gepa train` (pid {os.getpid()}" in r.stderr, r.stderr)
    check(time.monotonic() - t0 < 240, "the ranks did not fail at once")
    check_files(rd, settled=True)


# ---------------------------------------------------------------------------
# Bad input: refused in one line with its class's exit code, before anything is written


def test_bad_values_are_refused_before_the_run_dir_exists(ref, tmp_path):
    """Batch sizes docs/training.md rejects and an eval stride longer than the window, as
    `gepa train` and `gepa eval` flags; a changed EMA file under an artifact; a changed val shard."""
    cases = [
        (["--batch-tokens", "12288", "--micro-batch-tokens", "8192"], "is not a multiple of micro_batch_tokens=8192"),
        (["--micro-batch-tokens", "1024"], "micro_batch_tokens=1024 is larger than batch_tokens=512"),
        (["--eval-stride", "100000"], "eval_stride=100000 is larger than the evaluation sequence length 64"),
    ]
    for n, (flags, what) in enumerate(cases):
        COUNT["faults"] += 1
        rd = tmp_path / f"run{n}"
        r = gepa(tmp_path, train_argv(ref, rd) + flags)
        check_failed_cleanly(r, what, rc=2)
        check(not rd.exists(), f"{rd} was created")
    rd = copy_trained(ref, tmp_path / "trained", quantized=True)
    COUNT["faults"] += 1
    r = gepa(tmp_path, ["eval", str(rd), "--eval-stride", "100000"])
    check_failed_cleanly(r, "eval_stride=100000 is larger than", rc=2)
    with open(rd / "model_ema.pt", "r+b") as f:  # the EMA file changed in place: its checksum, and the artifact's
        f.seek(-4, os.SEEK_END)                  # record of its source, no longer match
        last = f.read(4)
        f.seek(-4, os.SEEK_END)
        f.write(bytes(b ^ 0xFF for b in last))
    COUNT["faults"] += 1
    r = gepa(tmp_path, ["eval", str(rd), "--sliding"])
    check_failed_cleanly(r, "is stale: model_ema.pt has changed", rc=3)
    check("int6_sliding" not in RunDir(rd).stages(), "a stale artifact was evaluated")
    data = Path(json.loads((rd / "config.json").read_text())["data"]["data_dir"])
    if not data.is_absolute():
        data = REPO / data
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    val = sorted(copy.glob("*_val_*.bin"))[0]
    with open(val, "r+b") as f:  # same size, other tokens
        f.seek(2048)
        f.write(b"\x05\x00\x06\x00")
    rd2 = copy_trained(ref, tmp_path / "trained2", quantized=True)
    COUNT["faults"] += 1
    r = gepa(tmp_path, ["eval", str(rd2), "--data-dir", str(copy)])
    check_failed_cleanly(r, f"{val.name}: sha256 differs from manifest.json", rc=3)
    check_files(rd2, settled=True)


def test_bad_dataset_input_is_refused_in_one_line(sotu_data_dir, tmp_path):
    """`gepa data prepare` with --val-docs below 1 or a vocabulary SentencePiece cannot build;
    `gepa data check` on a dataset whose manifest.json was deleted (not `status: ok`)."""
    from gepalib.corpus import sotu_documents

    _, train, _ = sotu_documents(2000, 1_250_000, 1337)
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in train[:30]))
    out = tmp_path / "ds"
    for flags, what in ((["--val-docs", "-3"], "the validation split needs at least one document"),
                        (["--val-docs", "0"], "the validation split needs at least one document"),
                        (["--vocab-size", "7"], "vocab_size=7 is too small for this corpus")):
        COUNT["faults"] += 1
        r = gepa(tmp_path, ["data", "prepare", "--source", "jsonl", str(src), "--out", str(out), *flags])
        check_failed_cleanly(r, what, rc=2)
        check(sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("gepa-")) == ["docs.jsonl"],
              "a refused prepare left files behind")
    d = tmp_path / "no_manifest"
    shutil.copytree(sotu_data_dir, d)
    (d / "manifest.json").unlink()
    COUNT["faults"] += 1
    r = gepa(tmp_path, ["data", "check", str(d)])
    check(r.rc == 0 and "status: no-manifest" in r.out and "status: ok" not in r.out, r.out)
    COUNT["faults"] += 1
    (d / "manifest.json").write_text("{ not json")
    r = gepa(tmp_path, ["data", "check", str(d)])
    check_failed_cleanly(r, "manifest.json: not valid JSON", rc=3)


# ---------------------------------------------------------------------------
# prepare and reproduce


def test_prepare_killed_at_random_moments(tmp_path):
    from gepalib.data import check_manifest_files, read_manifest
    from gepalib.corpus import sotu_documents

    val, train, _ = sotu_documents(4000, 1_250_000, 1337)
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in (val[:8] + train[:72])))
    argv = ["data", "prepare", "--source", "jsonl", str(src), "--vocab-size", "512", "--shard-tokens", "20000"]
    ref = gepa(tmp_path, argv + ["--out", str(tmp_path / "ref")])
    assert ref.rc == 0, ref.out
    want = read_manifest(tmp_path / "ref")["files"]
    out = tmp_path / "data"
    for _ in range(2):
        kill_at_random(tmp_path, argv + ["--out", str(out)], ref.wall, fresh=lambda: shutil.rmtree(out, True))
        if out.exists():  # the dataset appears whole (built aside, renamed into place) or not at all
            check_manifest_files(out, read_manifest(out), sha256=True)
            check(True, "dataset whole")
        check(not [p for p in tmp_path.iterdir() if p.name.startswith(".data.") and p.is_file()],
              "a half-written file next to the dataset")
    r = gepa(tmp_path, argv + ["--out", str(out)])
    check(r.rc == 0, r.out)
    check_manifest_files(out, read_manifest(out), sha256=True)
    check(read_manifest(out)["files"] == want, "the dataset differs from the uninterrupted build")
    check_files(out, settled=True)
    # (a killed build leaves its hidden build directory next to the dataset; counted, not refused)
    COUNT["stale_build_dirs"] = len([p for p in tmp_path.iterdir() if p.name.startswith(".data.build-")])


def test_reproduce_one_notebook_failed_then_killed_then_finished(sotu_data_dir, tmp_path):
    """`gepa reproduce --quick --notebooks 00_quickstart`: the trainer it launches (under torchrun,
    from the notebook's kernel) fails at a random write; then the whole tree is SIGKILLed at a
    random moment; then it runs to the end. The notebook's run dir ends complete and whole."""
    runs = tmp_path / "runs"
    argv = ["reproduce", "--quick", "--notebooks", "00_quickstart", "--out", str(tmp_path / "nb"),
            "--figures", str(tmp_path / "fig"), "--runs-root", str(runs), "--data-dir", str(sotu_data_dir)]
    r = fault_run(tmp_path, argv, RNG.randint(3, 6), "enospc")
    check(r.rc == 5 and "notebook:00_quickstart status:failed" in r.out, r.out)  # 5: a notebook failed
    check("no space left on device" in r.out, r.out)
    (rd,) = runs.glob("tiny-*")
    check(RunDir(rd).read_summary().get("train", {}).get("status") != "complete", "a failed run recorded as done")
    check_files(rd, settled=False)
    started = time.monotonic()
    delay = RNG.uniform(0.5, 4.0)

    def training_again() -> bool:  # the resumed trainer is at work, plus a random delay
        log = rd / "train.log"
        return log.exists() and log.read_text().count("==== gepalib train") >= 2 and \
            time.monotonic() - started > delay
    gepa(tmp_path, argv, kill_when=training_again)
    check_files(rd, settled=False)
    r = gepa(tmp_path, argv)
    check(r.rc == 0 and "notebook:00_quickstart status:ok" in r.out, r.out)
    s = RunDir(rd).read_summary()
    check(s["train"]["status"] == "complete" and {"int6_roundtrip", "int6_sliding"} <= set(s["stages"]), str(s))
    check_files(rd, settled=True)
    check_files(tmp_path / "nb", settled=True)
