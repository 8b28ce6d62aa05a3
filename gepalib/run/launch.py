"""Launch runs under torchrun from Python (the notebooks' launcher) and reuse what exists.

    from gepalib import run
    rd = run.launch(run.base_config("tiny", "cpu"), nproc=2)   # trains, or reuses a finished run
    run.ensure_artifact(rd)                                    # int6 artifact (reused if present)
    run.ensure_stages(rd, sliding=True, ttt=True)              # stage rows (reused if recorded)

**Launching.** :func:`launch` runs ``python -m torch.distributed.run --standalone
--nproc-per-node N -m gepalib train --run-dir DIR --config CONFIG.json`` with the
caller's own interpreter, in its own session (process group), supervised by
:mod:`gepalib.run.supervise`. Rank 0's output is streamed live, line by line; torchrun keeps
every rank's stdout/stderr under ``DIR/logs/torchrun/`` and the streamed console under
``DIR/logs/console.log``; the trainer writes ``DIR/train.log`` itself. A non-zero exit raises :class:`RunFailed`
carrying the tail of the log; interrupting (KeyboardInterrupt) sends SIGTERM to the
whole group (the trainer checkpoints on SIGTERM, so relaunching resumes), SIGKILL
after a grace period, and re-raises.

**Reuse.** The default directory is ``<runs_root>/<preset>-<identity_hash>``
(:func:`gepalib.rundir.identity_hash`); a finished run (summary.json ``train.status ==
"complete"`` and the EMA weights on disk) of the same identity is reused instead of
retrained; an unfinished one is resumed by the trainer from its last checkpoint. The
artifact is reused when it is newer than the EMA weights, a stage row when one with the
same settings is in the ledger (see docs/runs.md).

**Threads.** Every launched process gets ``OMP_NUM_THREADS`` set explicitly (``threads``,
default :func:`default_threads`), so a run's intra-op thread count never depends on how it
was started (torchrun itself sets 1 only for ``nproc > 1``; a notebook kernel or a shell may
export anything); the trainer records it in ``env.json`` with the CPU model and its kernel
ISA. A fixed seed, thread count, machine and software reproduce a run bit for bit; another
CPU model dispatches other BLAS and ATen kernels (AVX2 vs AVX-512, vendor code paths), which
changes the last bits of every step and so the run's numbers (by 1e-5 to 1e-3 bpb at CPU scale).
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch

import gepalib
from gepalib.config import FIELD_INDEX, RunConfig
from gepalib.paths import project_root, resolve_path
from gepalib.fsio import atomic_write_text
from gepalib.rundir import RunDir, as_rundir, default_run_dir, identity_diff, is_finished
from gepalib.run.pipeline import evaluate_run, quantize_run
# (KILL_GRACE_S, TAIL_LINES: gepalib.run re-exports them from here; tests patch run_streamed here)
from gepalib.run.supervise import KILL_GRACE_S, TAIL_LINES, rank_error_tails, run_streamed  # noqa: F401
from gepalib.run.stages import find_stage, stage_config, stage_kinds, stage_settings

MAX_DEFAULT_THREADS = 8  # a small model gains nothing from more intra-op threads


class RunFailed(RuntimeError):
    """A launched process exited non-zero; ``log_tail`` holds the end of its output."""

    def __init__(self, msg: str, *, returncode: int, run_dir: Path | None, log_tail: str):
        super().__init__(msg)
        self.returncode, self.run_dir, self.log_tail = returncode, run_dir, log_tail


# ---------------------------------------------------------------------------
# Intra-op threads


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _positive_int(v: Any) -> int | None:
    try:
        n = int(str(v).strip())
    except ValueError:
        return None
    return n if n >= 1 else None


def default_threads(nproc: int = 1) -> int:
    """Intra-op threads per process when none is given: the caller's ``OMP_NUM_THREADS`` when
    it is a positive integer, else ``min(usable cores, 8) // nproc``, at least 1."""
    return _positive_int(os.environ.get("OMP_NUM_THREADS", "")) or \
        max(1, min(usable_cores(), MAX_DEFAULT_THREADS) // max(1, int(nproc)))


def resolve_threads(threads: int | None, nproc: int = 1, env: dict[str, str] | None = None) -> int:
    """``threads`` when given (a positive integer), else ``env``'s ``OMP_NUM_THREADS``, else
    :func:`default_threads`."""
    if threads is None:
        return _positive_int((env or {}).get("OMP_NUM_THREADS", "")) or default_threads(nproc)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    return threads


@contextlib.contextmanager
def intra_op_threads(threads: int | None) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(threads)`` (None: as it is), then restore."""
    before = torch.get_num_threads()
    n = before if threads is None else resolve_threads(threads)
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------
# The torchrun command, its environment, and one supervised launch


def _child_env(extra: dict[str, str] | None = None, threads: int | None = None) -> dict[str, str]:
    """The caller's environment, plus: gepalib importable, the same project root, unbuffered
    output, (unless set) ``OMP_WAIT_POLICY=PASSIVE`` -- with the default busy-waiting, torch's
    OpenMP threads slow a small model down 4-100x as soon as other processes share the cores --
    and ``OMP_NUM_THREADS=threads`` when given."""
    env = dict(os.environ)
    pkg_root = str(Path(gepalib.__file__).resolve().parents[1])  # the directory holding gepalib/
    pp = env.get("PYTHONPATH", "")
    if pkg_root not in pp.split(os.pathsep):
        env["PYTHONPATH"] = pkg_root + (os.pathsep + pp if pp else "")
    env.setdefault("GEPA_HOME", str(project_root()))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads crawl on a shared CPU
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(resolve_threads(threads))
    return env


def torchrun_command(module_args: Sequence[str], nproc: int, log_dir: Path) -> list[str]:
    """``python -m torch.distributed.run`` for ``-m <module_args...>`` on one node.

    Every rank's stdout+stderr is teed into ``log_dir``; the console shows local rank 0."""
    if int(nproc) < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(int(nproc)),
            "--log-dir", str(log_dir), "--redirects", "3", "--tee", "3", "--local-ranks-filter", "0",
            "-m", *module_args]



def _run_torchrun(module_args: Sequence[str], *, nproc: int, rd: RunDir, what: str, stream: bool,
                  env: dict[str, str] | None, threads: int) -> None:
    log_dir = rd.path / "logs" / "torchrun"
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = torchrun_command(module_args, nproc, log_dir)
    t0 = time.time()
    rc, tail = run_streamed(cmd, console_log=rd.path / "logs" / "console.log", stream=stream,
                            env=_child_env(env, threads), cwd=str(project_root()))
    if rc != 0:
        ranks = rank_error_tails(log_dir, t0 - 1)
        log_tail = tail + ("\n" + ranks if ranks and ranks not in tail else "")
        raise RunFailed(f"{what} failed (exit code {rc}) for {rd.path}; last lines of its log:\n{log_tail}",
                        returncode=rc, run_dir=rd.path, log_tail=log_tail)


# ---------------------------------------------------------------------------
# Training


def launch(cfg: RunConfig, run_dir: str | os.PathLike | None = None, *, nproc: int = 1,
           runs_root: str | os.PathLike = "runs", reuse: bool = True, stream: bool = True,
           env: dict[str, str] | None = None, threads: int | None = None) -> RunDir:
    """Train ``cfg`` under torchrun with ``nproc`` processes, or reuse the finished run.

    ``run_dir`` defaults to :func:`default_run_dir`. An explicit ``run_dir`` that holds a
    run of a different identity raises ValueError (naming the differing fields).
    ``reuse=False`` retrains from scratch (``--no-resume``). ``env`` adds environment
    variables for the trainer (e.g. the test hooks of gepalib.train). ``threads``: intra-op
    threads of each process (:func:`resolve_threads`; recorded in env.json). Returns the RunDir.
    """
    if not isinstance(cfg, RunConfig):
        raise TypeError(f"launch expects a RunConfig, got {type(cfg).__name__}")
    threads = resolve_threads(threads, nproc, env)
    rd = RunDir(resolve_path(run_dir) if run_dir is not None else default_run_dir(cfg, runs_root))
    if rd.exists():
        old = rd.load_config()
        diff = identity_diff(old, cfg)
        if diff:
            raise ValueError(f"run dir {rd.path} holds a run with a different config ({'; '.join(diff[:8])}); "
                             f"leave run_dir unset for a content-addressed directory, or pick a new one")
        if reuse and is_finished(rd):
            s = rd.read_summary().get("train", {})
            if stream:
                print(f"reusing finished run {rd.path} (steps:{s.get('steps')} "
                      f"float_live_bpb:{rd.stages().get('float_live', {}).get('val_bpb', float('nan')):.4f})",
                      flush=True)
            return rd
    rd.path.mkdir(parents=True, exist_ok=True)
    cfg_path = rd.path / "logs" / "launch_config.json"
    atomic_write_text(cfg_path, cfg.to_json() + "\n")
    args = ["gepalib", "train", "--run-dir", str(rd.path), "--config", str(cfg_path)]
    if not reuse:
        args.append("--no-resume")
    if stream:
        print(f"launching {rd.path.name}: nproc:{nproc} threads:{threads} steps:{cfg.train.steps} "
              f"preset:{cfg.preset}", flush=True)
    _run_torchrun(args, nproc=nproc, rd=rd, what="training", stream=stream, env=env, threads=threads)
    if not is_finished(rd):
        raise RunFailed(f"training of {rd.path} exited 0 but the run is not complete "
                        f"(summary train.status={rd.read_summary().get('train', {}).get('status')!r})",
                        returncode=0, run_dir=rd.path, log_tail="")
    return rd


def launch_many(cfgs: Iterable[RunConfig], **kw: Any) -> list[RunDir]:
    """:func:`launch` each config in turn (finished ones are reused)."""
    return [launch(c, **kw) for c in cfgs]


# ---------------------------------------------------------------------------
# After training: the artifact and the stage rows, reused when they exist


def _run_gepa(args: Sequence[str], rd: RunDir, *, nproc: int, what: str, stream: bool,
              threads: int | None) -> None:
    """``gepa <args>`` under torchrun with ``nproc`` processes of ``threads`` threads."""
    _run_torchrun(["gepalib", *args], nproc=nproc, rd=rd, what=what, stream=stream, env=None,
                  threads=resolve_threads(threads, nproc))


def _quiet(*_: Any) -> None:
    pass


def ensure_artifact(run: RunDir | str | os.PathLike, *, force: bool = False, report: str = "none",
                    stream: bool = True, threads: int | None = None) -> RunDir:
    """Write the run's int6 artifact and its ``int6_roundtrip`` stage in-process
    (:func:`gepalib.run.pipeline.quantize_run`), unless an artifact newer than the EMA
    weights exists already (``force`` rewrites it). ``report``: none | fast | full
    compression report stored in summary.json. ``threads``: torch's intra-op threads
    meanwhile (None: this process's setting)."""
    rd = as_rundir(run)
    if not is_finished(rd):
        raise ValueError(f"{rd.path}: training has not finished; nothing to quantize")
    if (not force and rd.artifact.exists()
            and rd.artifact.stat().st_mtime >= rd.ema_weights.stat().st_mtime):
        if stream:
            print(f"reusing artifact {rd.artifact} ({rd.artifact.stat().st_size:,} bytes)", flush=True)
        return rd
    with intra_op_threads(threads):
        quantize_run(rd.path, report=report, evaluate=True,
                     log=(lambda s: print(s, flush=True)) if stream else _quiet)
    return rd


def ensure_stages(run: RunDir | str | os.PathLike, *, sliding: bool = True, ttt: bool = False,
                  streaming: bool = False, nproc: int = 1,
                  stream: bool = True, force: bool = False, threads: int | None = None,
                  **overrides: Any) -> dict[str, dict[str, Any]]:
    """Score the run's int6 artifact (quantizing first if needed) and return its stage rows
    ``{"roundtrip": row, "sliding": row, "streaming": row, "ttt": row}`` (the ones asked for), each with its
    ``name`` in the ledger. Rows already recorded with the same settings are reused.

    ``overrides`` are eval/ttt fields (e.g. ``ttt_optimizer="adamw", ttt_freeze_blocks=0``)
    and ``val_tokens``; a value of None means the run's own setting. One process runs
    in-process; ``nproc > 1`` runs ``gepa eval`` under torchrun. ``threads``: intra-op threads
    (in-process, None keeps this process's setting; under torchrun see :func:`resolve_threads`).
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    rd = ensure_artifact(run, stream=stream, threads=threads)
    run_cfg = rd.load_config()
    cfg = stage_config(rd, **overrides)
    kinds = stage_kinds(cfg)
    wanted = ["roundtrip"] + (["sliding"] if sliding else []) + (["streaming"] if streaming else []) + \
        (["ttt"] if ttt else [])
    settings = {k: stage_settings(cfg, kinds[k][1]) for k in wanted}
    found = {k: None if force else find_stage(rd, kinds[k][0], settings[k]) for k in wanted}
    missing = [k for k in wanted if found[k] is None]
    if missing:
        need_sliding, need_ttt, need_stream = "sliding" in missing, "ttt" in missing, "streaming" in missing
        # everything that differs from the run's own config, so the stage rows carry it
        diff = {k: v for k, v in _flat(cfg).items() if _flat(run_cfg)[k] != v}
        if nproc > 1:
            args = ["eval", str(rd.path)] + (["--sliding"] if need_sliding else []) + \
                (["--streaming"] if need_stream else []) + (["--ttt"] if need_ttt else [])
            for k, v in diff.items():
                args += ["--" + k.replace("_", "-"), _cli_value(v)]
            _run_gepa(args, rd, nproc=nproc, what="evaluation", stream=stream, threads=threads)
        else:
            with intra_op_threads(threads):
                evaluate_run(rd.path, sliding=need_sliding, ttt=need_ttt, streaming=need_stream, weights="artifact",
                             log=(lambda s: print(s, flush=True)) if stream else _quiet, **diff)
        for k in wanted:  # re-read all: the evaluation re-records the round-trip row too
            found[k] = find_stage(rd, kinds[k][0], settings[k])
            if found[k] is None:
                raise RunFailed(f"evaluation of {rd.path} recorded no {kinds[k][0]} row with settings {settings[k]}",
                                returncode=0, run_dir=rd.path, log_tail="")
    elif stream:
        print(f"reusing stage rows of {rd.path.name}: " + ", ".join(
            f"{found[k]['name']} {found[k]['val_bpb']:.4f}" for k in wanted), flush=True)
    return {k: found[k] for k in wanted}


def _flat(cfg: RunConfig) -> dict[str, Any]:
    d = cfg.to_dict()
    return {k: d[sec][k] for k, (sec, _) in FIELD_INDEX.items() if sec in ("eval", "ttt")} | \
        {"val_tokens": d["data"]["val_tokens"]}


def _cli_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (tuple, list)):
        return ",".join(map(str, v))
    return repr(v) if isinstance(v, float) else str(v)
