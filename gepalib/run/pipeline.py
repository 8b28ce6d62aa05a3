"""After training: the int6 artifact and the evaluations of a run directory, in-process.

:func:`quantize_run` (behind ``gepa quantize``) reads the run's config.json and EMA weights
(model_ema.pt, ``torch.load(weights_only=True)``), writes ``final_model.int6.gpz``
atomically, stores the artifact facts, the size ledger and the compression report in
summary.json (keys ``artifact``, ``size``, ``compression``), then loads the artifact back,
dequantizes it into ``GPT(cfg.model)`` and records the non-overlapping val_bpb as stage
``int6_roundtrip`` (with the float EMA number and the quantization gap when stage
``float_ema`` exists). Quant settings that change the weights and differ from the run's
config tag the stage name, e.g. ``int6_roundtrip[per_row]`` (see docs/quantization.md).

:func:`evaluate_run` (behind ``gepa eval``) scores the artifact or the float weights:
the non-overlapping evaluation always, the sliding-window, streaming and score-first TTT
evaluations on request, each recorded as a stage row (rank 0 writes; see docs/evaluation.md).
The artifact records the sha256 of the weights it was made from; ``gepa eval`` refuses an
artifact whose weights have changed since (:class:`~gepalib.errors.StaleArtifact`), and both
commands check the val shards and the tokenizer against the dataset's manifest.json.

Both hold the run directory's lock while they run (one writer at a time, see
:class:`gepalib.runlock.RunLock`), check the float weights' checksums and finiteness before
using them, and never record a NaN/inf number: a stage that fails (non-finite result, full or
read-only disk) is recorded under ``failures`` in summary.json when it can be written, and
the error is raised (``gepa`` exits non-zero).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable

import torch

from gepalib import dist
from gepalib.bpb import build_byte_luts
from gepalib.config import FIELD_INDEX, RunConfig, override
from gepalib.paths import resolve_path
from gepalib.data import check_manifest_files, list_shards, load_val_tokens, read_manifest
from gepalib.errors import DataError, StaleArtifact
from gepalib.eval.streaming import eval_streaming
from gepalib.eval.ttt import run_ttt
from gepalib.eval.windows import EvalResult, eval_nonoverlapping, eval_sliding
from gepalib.faults import NonFiniteResult
from gepalib.fsio import DamagedFile, file_sha256, verify_file
from gepalib.model import GPT
from gepalib.quant import artifact as A
from gepalib.quant.gptq import quantize_state_dict
from gepalib.quant.hessian import calibration_hessians
from gepalib.quant.report import code_bytes, compression_report, kv_lines, size_ledger
from gepalib.rundir import RunDir, identity_hash
from gepalib.runlock import lock_run_dir
from gepalib.run.stages import (COMMON_FIELDS, ROUNDTRIP_STAGE, SLIDING_FIELDS, STAGE_BASE, STREAM_FIELDS, TTT_FIELDS,
                                WEIGHTS, format_ledger, roundtrip_stage_name, settings_of, stage_name)

REPORTS = ("none", "fast", "full")
# Sections an evaluation must not override: they define the weights being loaded.
FROZEN_SECTIONS = ("model", "quant")
Log = Callable[[str], Any]


# ---------------------------------------------------------------------------
# Weights


def load_weights(rd: RunDir, weights: str) -> dict[str, torch.Tensor]:
    """The state dict of the run's int6 artifact (validated container, no pickle) or of its
    float EMA/live weights (torch.load with weights_only=True; checksum verified, every value
    finite: DamagedFile / NonFiniteResult otherwise)."""
    if weights == "artifact":
        if not rd.artifact.exists():
            raise FileNotFoundError(f"{rd.artifact} does not exist; create it with `gepa quantize {rd.path}` "
                                    f"(or evaluate the float weights with --weights ema)")
        return A.load_artifact_state_dict(rd.artifact)
    path = rd.ema_weights if weights == "ema" else rd.live_weights
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (has `gepa train` finished for {rd.path}?)")
    try:
        if not verify_file(path):
            print(f"warning: {path} has no checksum (written before checksums were recorded); "
                  f"using it unverified", flush=True)
    except DamagedFile as e:
        raise DamagedFile(f"{e}; rerun `gepa train` with the run's flags to write it again from the last "
                          f"checkpoint") from None
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file or a non-tensor payload
        raise ValueError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    check_finite(sd, str(path))
    return sd


def check_finite(sd: dict[str, torch.Tensor], src: str) -> None:
    """NonFiniteResult naming the tensors of ``sd`` that hold NaN/inf: such weights have no score."""
    bad = {k: int((~torch.isfinite(v)).sum()) for k, v in sd.items() if v.is_floating_point()}
    bad = {k: n for k, n in bad.items() if n}
    if bad:
        first = ", ".join(f"{k} ({n})" for k, n in list(bad.items())[:3])
        raise NonFiniteResult(f"{src}: {sum(bad.values())} non-finite values in {len(bad)} tensor(s), e.g. {first}; "
                              f"these weights cannot be evaluated")


def check_result(name: str, r: EvalResult, src: str) -> EvalResult:
    """``r`` when its loss and bpb are finite; else NonFiniteResult (a failed stage, not a result)."""
    if not (math.isfinite(r.val_bpb) and math.isfinite(r.val_loss)):
        raise NonFiniteResult(f"stage {name} on {src}: val_bpb={r.val_bpb} val_loss={r.val_loss} is not finite; "
                              f"not recorded")
    return r


def _failed(rd: RunDir, stage: str, e: BaseException, **extra: Any) -> None:
    """Record ``e`` as stage ``stage``'s failure when summary.json can be written."""
    if isinstance(e, (NonFiniteResult, DamagedFile, StaleArtifact, OSError)):
        rd.try_record_failure(stage, str(e), error_type=type(e).__name__, **extra)


def build_model(cfg: RunConfig, sd: dict[str, torch.Tensor], src: str, device: torch.device) -> GPT:
    """``GPT(cfg.model)`` holding ``sd`` (strictly), on ``device``, in eval mode."""
    model = GPT(cfg.model)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "mismatch"
        raise ValueError(f"{src}: weights do not fit the run's model config ({first} ...)") from None
    return model.to(device).eval()


def _val_data(cfg: RunConfig, seq_len: int):
    check_eval_data(cfg)
    val = load_val_tokens(resolve_path(cfg.data.data_dir), seq_len, cfg.model.vocab_size,
                          max_targets=cfg.data.val_tokens)
    return val, build_byte_luts(cfg.data.tokenizer_file(), cfg.model.vocab_size)


def check_eval_data(cfg: RunConfig) -> None:
    """What an evaluation reads -- the val shards and the tokenizer -- against the sizes and
    sha256 sums the dataset's manifest.json records (DataError naming the file; no manifest,
    nothing to check against). A val shard the manifest does not list is refused too."""
    data_dir = resolve_path(cfg.data.data_dir)
    files = read_manifest(data_dir).get("files") if data_dir.is_dir() else None
    if not isinstance(files, dict):
        return
    used = [p.name for p in list_shards(data_dir, "val")]
    stray = [n for n in used if n not in files]
    if stray:
        raise DataError(f"{data_dir}: val shard {stray[0]} is not listed in manifest.json, but the evaluation "
                        f"would read it; remove it or rebuild the dataset")
    tok = cfg.data.tokenizer_file()
    if tok.parent == data_dir:
        used.append(tok.name)
    check_manifest_files(data_dir, {"files": {n: files[n] for n in used if n in files}}, sha256=True)


def check_artifact_source(rd: RunDir) -> None:
    """StaleArtifact when the weights the artifact was made from (its header's ``source``,
    model_ema.pt) no longer match the sha256 recorded when it was made. An artifact without
    that record (made before it was kept), or a run dir without the weights, is taken as it is."""
    if not rd.artifact.exists():
        return
    meta = A.read_artifact_header(rd.artifact)["meta"]
    name, want = meta.get("source"), meta.get("source_sha256")
    if not (isinstance(name, str) and isinstance(want, str)) or "/" in name or name in ("", ".", ".."):
        return
    src = rd.path / name
    if not src.is_file():
        return
    got, _ = file_sha256(src)
    if got != want:
        raise StaleArtifact(f"{rd.artifact} is stale: {name} has changed since the artifact was made from it "
                            f"(sha256 {got[:16]}..., recorded {want[:16]}...); rerun `gepa quantize {rd.path}`")


# ---------------------------------------------------------------------------
# Quantize


def quantize_run(run_dir: str | os.PathLike, *, report: str = "fast", evaluate: bool = True, log: Log = print,
                 **overrides: Any) -> dict:
    """Python API behind ``gepa quantize``; returns the summary entries it wrote."""
    if report not in REPORTS:
        raise ValueError(f"report must be one of {REPORTS}, got {report!r}")
    rd = RunDir(resolve_path(run_dir))
    run_cfg = rd.load_config()
    bad = sorted(k for k in overrides if FIELD_INDEX.get(k, ("?",))[0] == "model")
    if bad:
        raise ValueError(f"cannot override model fields ({', '.join(bad)}): they define the trained weights")
    cfg = override(run_cfg, **overrides) if overrides else run_cfg
    with lock_run_dir(rd.path, "quantize"):
        try:
            return _quantize(rd, run_cfg, cfg, report, evaluate, log)
        except Exception as e:
            _failed(rd, "quantize", e, source="quantize")
            raise


def _quantize(rd: RunDir, run_cfg: RunConfig, cfg: RunConfig, report: str, evaluate: bool, log: Log) -> dict:
    qcfg = cfg.quant
    sd = load_weights(rd, "ema")
    source_sha = file_sha256(rd.ema_weights)[0]  # what `gepa eval` checks the artifact's weights against
    hessians = calib = None
    if qcfg.quant_mode == "gptq":  # full GPTQ: layer-input Hessians from training batches (fp32)
        hessians, calib = calibration_hessians(cfg, sd, device=dist.pick_device(cfg.train.device), log=log)

    t0 = time.perf_counter()
    qm = quantize_state_dict(sd, qcfg, hessians=hessians)
    t_quant = time.perf_counter() - t0
    meta = {"preset": cfg.preset, "run_identity": identity_hash(cfg), "source": rd.ema_weights.name,
            "source_sha256": source_sha, "model": dataclasses.asdict(cfg.model), "quant": dataclasses.asdict(qcfg)}
    info = A.save_artifact(qm, rd.artifact, qcfg, meta=meta)
    mses = [e.mse for e in qm.quantized().values() if e.mse is not None]
    art = {**info.to_dict(), "quant_mode": qcfg.quant_mode, "quant_embed": qcfg.quant_embed,
           "source_sha256": source_sha, "quantize_seconds": t_quant, "mean_tensor_mse": sum(mses) / max(len(mses), 1),
           **({"calibration": calib} if calib is not None else {})}
    code = code_bytes(qcfg.compressor)
    ledger = size_ledger(info.file_bytes, code)
    out = {"artifact": art, "size": {**ledger, "code_files": code["files"]}}
    for line in kv_lines(art, "artifact_") + kv_lines(ledger, "size_"):
        log(line)
    if report != "none":
        rep = compression_report(qm, methods=report, zstd_level=qcfg.zstd_level)
        out["compression"] = rep
        _log_compression(rep, log, bounds_first=False)
    rd.update_summary(**out)
    rd.clear_failure("quantize")
    del sd
    if evaluate:
        out["stage"] = roundtrip_eval(rd, run_cfg, cfg, info, log)
    return out


def _log_compression(rep: dict, log: Log, *, bounds_first: bool) -> None:
    b = rep["bounds"]
    bounds = (f"bound_per_tensor_bytes:{b['per_tensor_bound_bytes']:.0f} bound_per_row_bytes:"
              f"{b['per_row_bound_bytes']:.0f} code_bits_per_symbol:{b['code_bits_per_symbol']:.4f}")
    if bounds_first:
        log(bounds)
    for name, r in rep["methods"].items():
        log(f"compress:{name} bytes:{r['bytes']} vs_per_tensor_bound:{r['vs_per_tensor_bound']:+.4%} "
            f"vs_per_row_bound:{r['vs_per_row_bound']:+.4%} seconds:{r['compress_seconds']:.2f}")
    if not bounds_first:
        log(bounds)


def roundtrip_eval(rd: RunDir, run_cfg: RunConfig, cfg: RunConfig, info: A.ArtifactInfo, log: Log = print) -> dict:
    """Artifact -> dequantize -> GPT(cfg.model) -> non-overlapping val_bpb (stage int6_roundtrip)."""
    device = dist.pick_device(cfg.train.device)
    sd = A.load_artifact_state_dict(rd.artifact)
    model = build_model(cfg, sd, str(rd.artifact), device)
    seq_len = cfg.eval.eval_seq_len or cfg.train.seq_len
    val, luts = _val_data(cfg, seq_len)
    name = roundtrip_stage_name(run_cfg, cfg)
    r = check_result(name, eval_nonoverlapping(model, val, luts, seq_len, cfg.eval.eval_batch_seqs,
                                               autocast=cfg.train.autocast), str(rd.artifact))
    extra: dict[str, Any] = {"weights": "artifact", "source": "quantize", "quant_mode": cfg.quant.quant_mode,
                             "compressor": cfg.quant.compressor, "packing": cfg.quant.packing,
                             "artifact_bytes": info.file_bytes, "artifact_sha256": info.file_sha256,
                             "settings": {"val_tokens": cfg.data.val_tokens, "eval_seq_len": cfg.eval.eval_seq_len}}
    float_row = rd.stages().get("float_ema")
    if float_row and float_row.get("tokens") == r.tokens:
        extra["float_ema_val_bpb"] = float_row["val_bpb"]
        extra["quant_gap_bpb"] = r.val_bpb - float_row["val_bpb"]
    rd.record_stage(name, **r.as_row(), **extra)
    log(f"stage:{name} val_bpb:{r.val_bpb:.8f} val_loss:{r.val_loss:.6f} tokens:{r.tokens} bytes:{r.bytes} "
        f"seconds:{r.seconds:.2f}" + (f" quant_gap_bpb:{extra['quant_gap_bpb']:+.6f}" if "quant_gap_bpb" in extra
                                      else ""))
    return {"name": name, **r.as_row(), **extra}


def describe_artifact(path: str | os.PathLike, report: str = "fast", log: Log = print) -> dict:
    """Python API behind ``gepa artifact``: header facts, size ledger, compression report."""
    if report not in REPORTS:
        raise ValueError(f"report must be one of {REPORTS}, got {report!r}")
    path = resolve_path(path)
    data = A.read_artifact_bytes(path)
    qm, h = A.artifact_from_bytes(data, str(path))  # validates everything
    n_int6 = sum(1 for t in h["tensors"] if t["kind"] == "int6")
    facts = {"path": str(path), "format_version": h["format_version"], "quant_mode": h["quant_mode"],
             "compressor": h["compressor"], "level": h["level"], "packing": h["packing"],
             "tensors": len(h["tensors"]), "int6_tensors": n_int6, "passthrough_tensors": len(h["tensors"]) - n_int6,
             "params": qm.num_params(), "raw_bytes": h["raw_len"], "payload_bytes": h["payload_len"],
             "file_bytes": len(data), "content_sha256": h["content_sha256"]}
    mq = h["meta"].get("quant")
    for line in kv_lines(facts, "artifact_") + (kv_lines(mq, "meta_quant_") if isinstance(mq, dict) else []):
        log(line)
    if isinstance(h["meta"].get("preset"), str):
        log(f"meta_preset:{h['meta']['preset']}")
    for k, v in h["library"].items():
        if isinstance(v, str):
            log(f"library_{k}:{v}")
    ledger = size_ledger(len(data), code_bytes(h["compressor"]))
    for line in kv_lines(ledger, "size_"):
        log(line)
    out = {"artifact": facts, "size": ledger, "header": h}
    if report != "none":
        rep = compression_report(qm, methods=report)
        out["compression"] = rep
        _log_compression(rep, log, bounds_first=True)
    return out


# ---------------------------------------------------------------------------
# Evaluate


def evaluate_run(run_dir: str | os.PathLike, *, sliding: bool = False, ttt: bool = False, streaming: bool = False,
                 weights: str = "artifact", record: bool = True, log: Log | None = print,
                 **overrides: Any) -> dict[str, EvalResult]:
    """Python API behind ``gepa eval``: returns {stage name: EvalResult} and (rank 0,
    ``record=True``) writes the rows into the run's summary.json stage ledger. Works
    in-process and under torchrun (joins the process group)."""
    if weights not in WEIGHTS:
        raise ValueError(f"--weights {weights!r}; choose one of {WEIGHTS}")
    rd = RunDir(resolve_path(run_dir))
    run_cfg = rd.load_config()
    bad = sorted(k for k in overrides if FIELD_INDEX.get(k, ("?",))[0] in FROZEN_SECTIONS)
    if bad:
        raise ValueError(f"cannot override {', '.join(bad)} when evaluating a trained run (they define its weights)")
    cfg = override(run_cfg, **overrides) if overrides else run_cfg
    info = dist.init(cfg.train.device)
    lock = lock_run_dir(rd.path, "eval", is_main=info.is_main, device=info.device) if record else None
    stage = {"name": stage_name(ROUNDTRIP_STAGE[weights], run_cfg, cfg, COMMON_FIELDS)}  # the one running
    try:
        return _evaluate(rd, run_cfg, cfg, info, stage, sliding=sliding, ttt=ttt, streaming=streaming,
                         weights=weights, record=record, log=log)
    except Exception as e:
        if record and info.is_main:
            _failed(rd, stage["name"], e, weights=weights, source="eval")
        raise
    finally:
        if lock is not None:
            lock.release()


def _evaluate(rd: RunDir, run_cfg: RunConfig, cfg: RunConfig, info: dist.DistInfo, stage: dict[str, str], *,
              sliding: bool, ttt: bool, streaming: bool, weights: str, record: bool,
              log: Log | None) -> dict[str, EvalResult]:
    main = info.is_main
    say = (log if (main and log is not None) else (lambda *_: None))
    device, autocast = info.device, cfg.train.autocast
    seq_len = cfg.eval.eval_seq_len or cfg.train.seq_len

    if weights == "artifact":
        check_artifact_source(rd)
    sd = load_weights(rd, weights)
    src = str(rd.artifact if weights == "artifact" else (rd.ema_weights if weights == "ema" else rd.live_weights))
    model = build_model(cfg, sd, src, device)
    del sd
    val_tokens, luts = _val_data(cfg, seq_len)
    say(f"eval_run:{rd.path} weights:{weights} device:{device} world_size:{info.world_size} seq_len:{seq_len} "
        f"val_targets:{val_tokens.numel() - 1}")

    results: dict[str, EvalResult] = {}
    base = STAGE_BASE[weights]

    def done(r: EvalResult, fields: tuple[str, ...], **extra: Any) -> None:
        name = stage["name"]
        results[name] = check_result(name, r, src)
        say(f"stage:{name} val_bpb:{r.val_bpb:.8f} val_loss:{r.val_loss:.6f} tokens:{r.tokens} bytes:{r.bytes} "
            f"seconds:{r.seconds:.2f}")
        if record and main:
            rd.record_stage(name, **r.as_row(), weights=weights, world_size=info.world_size, source="eval",
                            settings=settings_of(cfg, fields), **extra)

    ec = cfg.eval
    done(eval_nonoverlapping(model, val_tokens, luts, seq_len, ec.eval_batch_seqs, autocast=autocast), COMMON_FIELDS)
    if sliding:
        stage["name"] = stage_name(f"{base}_sliding", run_cfg, cfg, SLIDING_FIELDS)
        done(eval_sliding(model, val_tokens, luts, seq_len, ec.eval_stride, ec.eval_batch_seqs,
                          tail_rescore=ec.tail_rescore, autocast=autocast), SLIDING_FIELDS)
    if streaming:
        stage["name"] = stage_name(f"{base}_streaming", run_cfg, cfg, STREAM_FIELDS)
        done(eval_streaming(model, val_tokens, luts, seq_len, lanes=ec.stream_lanes, block=ec.stream_block,
                            prefix=ec.stream_prefix, max_lanes=max(1, ec.eval_batch_seqs), autocast=autocast),
             STREAM_FIELDS)
    if ttt:
        tc = cfg.ttt
        kind = "sliding" if tc.ttt_scoring == "sliding" else "streaming"
        # the scoring mode is in the base name already
        stage["name"] = stage_name(f"{base}_{kind}_ttt", run_cfg, cfg, tuple(f for f in TTT_FIELDS if f != "ttt_scoring"))
        n_chunks = -(-(val_tokens.numel() - 1) // tc.ttt_chunk_tokens)
        r = run_ttt(model, val_tokens, luts, seq_len, tc, ec, autocast=autocast, log=say,
                    log_every=max(1, n_chunks // 20))
        chunks = r.extra["chunks"]
        done(r, TTT_FIELDS, chunks=len(chunks), trainable_params=r.extra["trainable_params"],
             score_seconds=sum(c["score_seconds"] for c in chunks),
             train_seconds=sum(c["train_seconds"] for c in chunks))
    dist.barrier()
    if main and record:
        say(format_ledger(rd.stages()))
    return results
