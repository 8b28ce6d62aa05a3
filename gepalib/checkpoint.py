"""Resumable training checkpoints.

A checkpoint is one ``torch.save`` file ``checkpoints/step_NNNNNN.pt`` holding only
tensors and plain Python values, so it loads with ``weights_only=True`` (no pickle
code execution). It contains the model, the fp32 EMA shadow, every optimizer's
state, the train-loader position, all RNG states, the step, the elapsed training
time and the training-config fingerprint (``gepalib.rundir.identity_hash(cfg,
resume=True)``). Files are written atomically (temp + rename) with a sha256 sidecar
(``step_NNNNNN.pt.sha256.json``) and the newest ``keep`` are kept. A resume verifies the
checksum: a damaged checkpoint is reported, set aside as ``step_NNNNNN.pt.damaged`` and
the one before it used (none left: the run starts from step 0, saying so). (see docs/runs.md)
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from gepalib import dist
from gepalib.fsio import DamagedFile, atomic_torch_save, atomic_write_json, checksum_path, verify_file
from gepalib.rundir import RunDir, identity_diff, identity_hash, is_finished

CKPT_RE = re.compile(r"^step_(\d{6,})\.pt$")
FORMAT = "gepalib-train-ckpt-v1"


def checkpoint_path(ckpt_dir: str | os.PathLike, step: int) -> Path:
    return Path(ckpt_dir) / f"step_{step:06d}.pt"


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in ``ckpt_dir``, oldest first."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    out = [(int(m.group(1)), p) for p in d.iterdir() if (m := CKPT_RE.match(p.name))]
    return sorted(out)


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    ck = list_checkpoints(ckpt_dir)
    return ck[-1][1] if ck else None


def capture_rng() -> dict[str, Any]:
    """torch CPU/CUDA, python ``random`` and numpy global RNG states as weights_only-safe values."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "torch_cpu": torch.get_rng_state(),
        "python": _to_lists(random.getstate()),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`; accepts states loaded onto any device (they are moved
    back to the CPU, where the RNG setters require them)."""
    torch.set_rng_state(state["torch_cpu"].cpu())
    random.setstate(_to_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": n["key"].cpu().numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    if "torch_cuda" in state and torch.cuda.is_available():
        cuda_states = state["torch_cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([t.cpu() for t in cuda_states])


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def save_checkpoint(ckpt_dir: str | os.PathLike, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` (plus format tag and step) atomically with its checksum; prune to the
    newest ``keep`` files (each with its checksum)."""
    path = checkpoint_path(ckpt_dir, step)
    atomic_torch_save({"format": FORMAT, "step": int(step), **state}, path, checksum=True)
    if keep > 0:
        for _, old in list_checkpoints(ckpt_dir)[:-keep]:
            remove_checkpoint(old)
    return path


def remove_checkpoint(path: Path) -> None:
    for p in (path, checksum_path(path)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def verify_checkpoint(path: str | os.PathLike) -> tuple[bool, str | None]:
    """(usable, note): (True, None) when ``path`` matches its recorded checksum; (False, what is
    wrong) when it does not or cannot be read; (True, a warning) for a checkpoint written before
    checksums were recorded (no sidecar), which is loaded unverified rather than lost."""
    path = Path(path)
    try:
        if verify_file(path):
            return True, None
    except DamagedFile as e:
        return False, str(e)
    except OSError as e:
        return False, f"{path}: cannot be read ({e})"
    return True, f"{path}: no checksum recorded ({checksum_path(path).name} is missing); loading it unverified"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                    verify: bool = True) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (weights_only), its checksum
    verified first (``verify``; DamagedFile on a mismatch), with a clear error."""
    path = Path(path)
    if verify:
        ok, note = verify_checkpoint(path)
        if not ok:
            raise DamagedFile(f"checkpoint {note}")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); "
                         f"delete it to resume from an older one") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} is not a gepalib training checkpoint ({FORMAT})")
    return ck


def usable_checkpoint(ckpt_dir: str | os.PathLike) -> tuple[Path | None, list[tuple[Path, str]], str | None]:
    """(the newest checkpoint that verifies or None, (path, problem) of each newer damaged one
    (newest first), a warning about the chosen one or None). Reads only: :func:`set_aside`
    moves the damaged ones out of the way."""
    bad: list[tuple[Path, str]] = []
    for _, p in reversed(list_checkpoints(ckpt_dir)):
        ok, note = verify_checkpoint(p)
        if ok:
            return p, bad, note
        bad.append((p, note))
    return None, bad, None


def resume_point(ckpt_dir: str | os.PathLike) -> tuple[Path | None, list[Path], list[str]]:
    """:func:`usable_checkpoint` for a resume: (checkpoint or None, the damaged newer ones, the
    warning lines to show: each damaged file and why, what is used instead)."""
    path, bad, note = usable_checkpoint(ckpt_dir)
    notes = [f"warning: checkpoint {p.name} is damaged, not resuming from it: {why}" for p, why in bad]
    notes += [f"warning: {note}"] if note else []
    if bad:
        notes.append(f"resuming from {path.name} instead" if path is not None else
                     f"no usable checkpoint left in {ckpt_dir}: starting again from step 0")
    return path, [p for p, _ in bad], notes


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint to ``<name>.damaged`` (kept for inspection, no longer listed)."""
    dest = path.with_name(path.name + ".damaged")
    os.replace(path, dest)
    if checksum_path(path).exists():
        os.replace(checksum_path(path), checksum_path(dest))
    return dest


def check_same_resume_point(latest: Path | None, complete: bool, run_dir: Path, device: torch.device) -> None:
    """Every rank must resume from the same checkpoint (or agree the run is complete). Ranks on
    nodes that do not share the run directory's filesystem would otherwise start from different
    steps and hang in a collective."""
    if not dist.active():
        return
    s = float(CKPT_RE.match(latest.name).group(1)) if latest is not None else -1.0
    c = float(complete)
    t = dist.all_reduce_sum(torch.tensor([1.0, s, s * s, c], dtype=torch.float64, device=device)).tolist()
    # W * sum(s^2) == (sum s)^2 iff every rank has the same s; sum(c) is 0 or W iff all agree
    if t[0] * t[2] != t[1] * t[1] or t[3] not in (0.0, t[0]):
        raise ValueError(f"ranks disagree on where to resume in {run_dir} (this rank: checkpoint "
                         f"{latest.name if latest else 'none'}, complete={complete}); the run directory "
                         f"must be on a filesystem that every node shares")


def open_for_training(rd: RunDir, cfg: Any, fingerprint: str, resume: bool, *, main: bool, device: torch.device,
                      env: Callable[[], dict[str, Any]], plan: dict[str, Any] | None = None
                      ) -> tuple[dict[str, Any] | None, Path | None, list[str]]:
    """The trainer's first look at its run dir (the caller holds its lock): refuse a different
    config (``resume``); is the run already complete (its weights verifying)? else the newest
    checkpoint that verifies (the damaged ones reported and set aside); without ``resume`` start
    over; write config.json (with ``plan`` under key "plan" when given: the micro-batch the
    process count made the trainer use) and env.json (``env()``, rank 0). Returns (the summary
    when the run is complete else None, the checkpoint to resume from or None, the warnings)."""
    if rd.exists() and resume:
        old = rd.load_config()
        if identity_hash(old, resume=True) != fingerprint:
            diff = "; ".join(identity_diff(old, cfg, resume=True)[:8])
            raise ValueError(f"run dir {rd.path} was created with a different config ({diff}); "
                             f"use a new --run-dir, or --no-resume to overwrite it")
    summary = rd.read_summary() if resume else {}
    done = summary.get("train", {})
    # finished, and its weights verify (damaged ones are written again from the last checkpoint)
    complete = bool(resume and done.get("fingerprint") == fingerprint and is_finished(rd, verify=True))
    path, damaged, notes = resume_point(rd.checkpoints) if resume and not complete else (None, [], [])
    check_same_resume_point(path, complete, rd.path, device)
    if complete:
        if main:
            print(f"run {rd.path} already complete (steps:{done['steps']}); nothing to do", flush=True)
        return summary, None, notes
    dist.barrier()
    if main:
        for line in notes:
            print(line, flush=True)
        for p in damaged:  # kept as <name>.damaged for inspection, out of the resume path
            set_aside(p)
        rd.path.mkdir(parents=True, exist_ok=True)
        if not resume:
            rd.clear_training()
        atomic_write_json(rd.config, {**cfg.to_dict(), **({"plan": plan} if plan else {})})
        atomic_write_json(rd.env, env())
    dist.barrier()
    return None, path, notes
