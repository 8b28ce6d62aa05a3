"""The calibrated study's machinery: a TTT sweep on held-out validation data, and training
many runs at once.

    from gepalib.run import study
    rows = study.ttt_sweep(rd, [{"ttt_optimizer": "sgd", "ttt_lr": lr} for lr in (0.005, 0.02)])
    study.pretrain(cfgs, workers=2)         # train the missing runs, two at a time

**Held-out TTT sweep.** The study scores the *first* ``val_tokens`` targets of the validation
set. Its TTT hyper-parameters (chunk size, epochs, each optimizer's LR) are chosen on a slice
the study never reports: :data:`HELDOUT_OFFSET` targets in (past every scored target), the
next :data:`HELDOUT_TARGETS`. :func:`ttt_sweep` scores that slice with the run's int6 artifact
once without TTT and once per setting with it (streaming scoring, in-process) and caches each
row in ``<run>/ttt_sweep.json`` (keyed by the slice and the full TTT settings), so a repeated
sweep is free. Each row has the setting, ``val_bpb``, ``base_bpb``, ``gain`` (TTT − base,
negative = helped), ``chunks`` and ``seconds``.

**Training several runs at once.** On a small CPU one process per core with one thread each
trains ~1.25× more steps per second than one two-thread process (tiny's matrices are too small
to use two threads well). :func:`pretrain` launches the configs that are not finished yet,
``workers`` at a time, each with ``cores // workers`` threads; the notebooks then reuse the
finished runs (content-addressed). Threads change no number on one machine (docs/runs.md).
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from gepalib.config import FIELD_INDEX, RunConfig, override
from gepalib.eval.streaming import eval_streaming
from gepalib.eval.ttt import n_chunks_for, run_ttt
from gepalib.fsio import atomic_write_json
from gepalib.paths import resolve_path
from gepalib.rundir import RunDir, as_rundir, default_run_dir, is_finished
from gepalib.run.launch import ensure_artifact, launch, usable_cores
from gepalib.run.pipeline import build_model, load_weights
from gepalib.bpb import build_byte_luts
from gepalib.data import load_val_tokens
from gepalib.quant.artifact import load_artifact
from gepalib.quant.gptq import QTensor, entropy_bits, symbol_counts

HELDOUT_OFFSET = 262_144  # targets: the study scores at most the first 262,144
HELDOUT_TARGETS = 65_536
SWEEP_FILE = "ttt_sweep.json"


def _ttt_fields(cfg: RunConfig) -> dict[str, Any]:
    d = cfg.to_dict()
    return {k: d["ttt"][k] for k, (sec, _) in FIELD_INDEX.items() if sec == "ttt"}


def _key(offset: int, targets: int, fields: Mapping[str, Any] | None) -> str:
    return json.dumps({"offset": offset, "targets": targets, "ttt": fields}, sort_keys=True)


def heldout_tokens(cfg: RunConfig, offset: int = HELDOUT_OFFSET, targets: int = HELDOUT_TARGETS):
    """Validation tokens [offset, offset + targets] (targets + 1 tokens: the slice's own first
    input) and the byte tables; ValueError if the validation set is shorter."""
    seq_len = cfg.eval.eval_seq_len or cfg.train.seq_len
    val = load_val_tokens(resolve_path(cfg.data.data_dir), seq_len, cfg.model.vocab_size)
    if val.numel() < offset + targets + 1:
        raise ValueError(f"held-out slice [{offset:,}, {offset + targets:,}) needs {offset + targets + 1:,} "
                         f"validation tokens; {cfg.data.data_dir} has {val.numel():,}")
    luts = build_byte_luts(cfg.data.tokenizer_file(), cfg.model.vocab_size)
    return val[offset:offset + targets + 1].clone(), luts


def ttt_sweep(run: RunDir | str, settings: Sequence[Mapping[str, Any]], *, offset: int = HELDOUT_OFFSET,
              targets: int = HELDOUT_TARGETS, scored: int | None = None, log: Any = print) -> list[dict[str, Any]]:
    """Score the held-out slice without TTT and with each of ``settings`` (ttt fields; the run's
    own for the rest; scoring is always streaming). ``scored``: how many leading targets the
    study reports (default the run's ``val_tokens``); the slice must lie past them (ValueError).
    Returns one row per setting, in order."""
    rd = ensure_artifact(as_rundir(run), stream=False)
    run_cfg = rd.load_config()
    scored = run_cfg.data.val_tokens if scored is None else scored
    if not scored or offset < scored:
        raise ValueError(f"held-out slice at {offset:,} overlaps the scored targets "
                         f"({'all of val' if not scored else f'the first {scored:,}'}): the sweep must not "
                         f"see what the study reports")
    path = rd.path / SWEEP_FILE
    cache: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    state: dict[str, Any] = {}

    def setup():
        if not state:
            sd = load_weights(rd, "artifact")
            state["model"] = build_model(run_cfg, sd, str(rd.artifact), torch.device("cpu"))
            state["val"], state["luts"] = heldout_tokens(run_cfg, offset, targets)
        return state["model"], state["val"], state["luts"]

    seq_len = run_cfg.eval.eval_seq_len or run_cfg.train.seq_len
    ec = run_cfg.eval
    base_key = _key(offset, targets, None)
    if base_key not in cache:
        model, val, luts = setup()
        r = eval_streaming(model, val, luts, seq_len, lanes=ec.stream_lanes, block=ec.stream_block,
                           prefix=ec.stream_prefix, max_lanes=max(1, ec.eval_batch_seqs))
        cache[base_key] = {"val_bpb": r.val_bpb, "seconds": r.seconds}
        atomic_write_json(path, cache)
    base = cache[base_key]["val_bpb"]
    rows = []
    for s in settings:
        bad = sorted(k for k in s if FIELD_INDEX.get(k, ("?",))[0] != "ttt")
        if bad:
            raise ValueError(f"ttt_sweep settings may only set ttt fields; got {bad}")
        cfg = override(run_cfg, **{**s, "ttt_scoring": "streaming"})
        key = _key(offset, targets, _ttt_fields(cfg))
        if key not in cache:
            model, val, luts = setup()
            t0 = time.perf_counter()
            r = run_ttt(model, val, luts, seq_len, cfg.ttt, cfg.eval, restore=True, progress="off")
            cache[key] = {"val_bpb": r.val_bpb, "seconds": time.perf_counter() - t0,
                          "chunks": len(r.extra["chunks"])}
            atomic_write_json(path, cache)
            if log:
                log(f"ttt_sweep:{rd.path.name} {json.dumps(dict(s), sort_keys=True)} val_bpb:{r.val_bpb:.6f} "
                    f"gain_mbpb:{1000 * (r.val_bpb - base):+.3f} seconds:{cache[key]['seconds']:.1f}")
        c = cache[key]
        chunks = c.get("chunks", n_chunks_for(targets, cfg.ttt.ttt_chunk_tokens))
        rows.append({**dict(s), "val_bpb": c["val_bpb"], "base_bpb": base, "gain": c["val_bpb"] - base,
                     "chunks": chunks, "seconds": c["seconds"], "offset": offset, "targets": targets})
    return rows


def best_settings(rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> dict[str, Any]:
    """``fields`` of the sweep row with the lowest held-out bpb."""
    if not rows:
        raise ValueError("best_settings: no sweep rows")
    best = min(rows, key=lambda r: r["val_bpb"])
    return {f: best[f] for f in fields if f in best}


def pretrain(cfgs: Sequence[RunConfig], *, workers: int | None = None, runs_root: str = "runs",
             log: Any = print) -> list[RunDir]:
    """Train the configs that are not finished yet, ``workers`` (default: the usable cores) at
    a time with ``cores // workers`` threads each; returns the run dirs in ``cfgs``' order.
    A failed run raises after the others have finished."""
    cores = usable_cores()
    workers = max(1, min(workers or cores, cores))
    uniq: dict[str, RunConfig] = {}
    for c in cfgs:
        uniq.setdefault(str(default_run_dir(c, runs_root)), c)
    todo = [c for p, c in uniq.items() if not is_finished(RunDir(resolve_path(p)))]
    if log and todo:
        log(f"pretrain: {len(todo)} of {len(uniq)} runs to train, {workers} at a time, "
            f"{max(1, cores // workers)} thread(s) each")
    errors = []
    with cf.ThreadPoolExecutor(max_workers=workers) as ex:
        futs = {ex.submit(launch, c, runs_root=runs_root, threads=max(1, cores // workers), stream=False): c
                for c in todo}
        for f in cf.as_completed(futs):
            try:
                rd = f.result()
                if log:
                    log(f"pretrain: finished {rd.path.name} (steps:{futs[f].train.steps} seed:{futs[f].train.seed})")
            except Exception as e:  # noqa: BLE001 -- let the other runs finish first
                errors.append(e)
    if errors:
        raise errors[0]
    return [RunDir(resolve_path(default_run_dir(c, runs_root))) for c in cfgs]


def tune_ttt(run: RunDir | str, start: Mapping[str, Mapping[str, Any]], lrs: Mapping[str, Sequence[float]], *,
             chunk_tokens: Sequence[int] = (), epochs: Sequence[int] = (), offset: int = HELDOUT_OFFSET,
             targets: int = HELDOUT_TARGETS, scored: int | None = None, log: Any = print) -> tuple[dict[str, dict[str, Any]], list[dict]]:
    """Each optimizer's TTT settings, chosen on the held-out slice (coordinate search):

    1. the first optimizer of ``start`` (SGD) over ``lrs[first]`` at its own chunk and epochs;
    2. at that LR, every ``chunk_tokens`` value, then every ``epochs`` value;
    3. every other optimizer over its ``lrs`` at the chosen chunk size and epochs (so the
       optimizers differ only in optimizer and LR: a controlled comparison).

    Returns ({name: start[name] with the chosen ttt_lr, ttt_chunk_tokens, ttt_epochs}, sweep rows
    with ``name``). An optimizer with no LRs keeps its start. Rows are cached (:func:`ttt_sweep`)."""
    names = list(start)
    if not names:
        raise ValueError("tune_ttt: no optimizers to tune")
    first = names[0]
    rows: list[dict[str, Any]] = []

    def sweep(name: str, settings: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = ttt_sweep(run, settings, offset=offset, targets=targets, scored=scored, log=log)
        for r in out:
            r["name"] = name
        rows.extend(out)
        return out

    rd = as_rundir(run)
    own = rd.load_config().ttt
    s0 = dict(start[first])
    s0.setdefault("ttt_chunk_tokens", own.ttt_chunk_tokens)
    s0.setdefault("ttt_epochs", own.ttt_epochs)
    best = dict(s0)
    if lrs.get(first):
        r = sweep(first, [{**s0, "ttt_lr": lr} for lr in lrs[first]])
        best["ttt_lr"] = min(r, key=lambda x: x["val_bpb"])["ttt_lr"]
    for field, values in (("ttt_chunk_tokens", chunk_tokens), ("ttt_epochs", epochs)):
        if values:
            r = sweep(first, [{**best, field: v} for v in values])
            best[field] = min(r, key=lambda x: x["val_bpb"])[field]
    tuned = {first: best}
    shared = {"ttt_chunk_tokens": best["ttt_chunk_tokens"], "ttt_epochs": best["ttt_epochs"]}
    for name in names[1:]:
        s = {**dict(start[name]), **shared}
        if lrs.get(name):
            r = sweep(name, [{**s, "ttt_lr": lr} for lr in lrs[name]])
            s["ttt_lr"] = min(r, key=lambda x: x["val_bpb"])["ttt_lr"]
        tuned[name] = s
    return tuned, rows


def artifact_mechanism(run: RunDir | str, max_scales: int = 4096) -> dict[str, Any]:
    """What the int6 artifact of a run holds, for F2's mechanism: the empirical entropy of the
    int6 codes over every quantized matrix (bits/code), the fraction of zero codes, the per-row
    scales (up to ``max_scales`` of them, evenly spaced), the RMS of the dequantized matrices and
    the artifact's bytes."""
    rd = ensure_artifact(as_rundir(run), stream=False)
    qm = load_artifact(rd.artifact)
    counts, scales, sq, n = None, [], 0.0, 0
    for e in qm.entries.values():
        if not isinstance(e, QTensor):
            continue
        c = symbol_counts(e.q)
        counts = c if counts is None else counts + c
        s = e.scale.float()
        scales.append(s.numpy())
        w = e.q.float() * s[:, None]
        sq += float(w.double().square().sum())
        n += w.numel()
    if counts is None:
        raise ValueError(f"{rd.artifact}: no int6 tensors")
    sc = np.concatenate(scales)
    if sc.size > max_scales:
        sc = sc[np.linspace(0, sc.size - 1, max_scales).astype(int)]
    total = counts.sum()
    zero = float(counts[len(counts) // 2] / total) if len(counts) == 64 else float("nan")
    cfg = rd.load_config()
    return {"run": rd.path.name, "steps": cfg.train.steps, "warmdown": cfg.train.warmdown,
            "code_entropy_bits": entropy_bits(counts) / float(total), "zero_code_frac": zero, "scales": sc.tolist(),
            "scale_median": float(np.median(sc)), "weight_rms": (sq / n) ** 0.5,
            "artifact_bytes": rd.artifact.stat().st_size}
