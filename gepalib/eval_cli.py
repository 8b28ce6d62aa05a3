"""``gepa eval RUN_DIR``: score a run's weights and record the stage ledger (SPEC §1, §5).

    gepa eval runs/tiny --sliding --ttt                      # int6 artifact: roundtrip, sliding, TTT
    gepa eval runs/tiny --streaming --weights ema            # float EMA weights
    gepa eval runs/tiny --ttt --ttt-optimizer adamw --ttt-epochs 1 --ttt-lr 5e-5 --ttt-freeze-blocks 0
    torchrun --nproc_per_node 4 -m gepalib eval runs/gepa11 --sliding --ttt

The non-overlapping evaluation always runs (stage ``int6_roundtrip`` for the artifact,
``float_ema`` / ``float_live`` for the float weights); ``--sliding``, ``--ttt`` and
``--streaming`` add ``<w>_sliding``, ``<w>_sliding_ttt`` (``<w>_streaming_ttt`` with
``--ttt-scoring streaming``) and ``<w>_streaming``. When an override changes what a stage
measures relative to the run's config, the stage name carries it, e.g.
``int6_sliding_ttt[adamw,e1,f0,lr5e-05]``, and every row stores its settings. Rank 0 writes.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch

from gepalib import dist
from gepalib.config import RunConfig, override, resolve_path
from gepalib.eval.windows import EvalResult
from gepalib.rundir import RunDir, format_ledger

WEIGHTS = ("artifact", "ema", "live")
STAGE_BASE = {"artifact": "int6", "ema": "float_ema", "live": "float_live"}
ROUNDTRIP_STAGE = {"artifact": "int6_roundtrip", "ema": "float_ema", "live": "float_live"}
# Overrides that must not change (they define the weights being loaded).
FROZEN_SECTIONS = ("model", "quant")

# What each stage's number depends on (besides the weights).
COMMON_FIELDS = ("val_tokens", "eval_seq_len")
SLIDING_FIELDS = COMMON_FIELDS + ("eval_stride", "tail_rescore")
STREAM_FIELDS = COMMON_FIELDS + ("stream_prefix",)
TTT_FIELDS = ("ttt_optimizer", "ttt_epochs", "ttt_freeze_blocks", "ttt_lr", "ttt_chunk_tokens", "ttt_momentum",
              "ttt_grad_clip", "ttt_warmup_div", "ttt_adam_beta1", "ttt_adam_beta2", "ttt_adam_wd",
              "ttt_reset_per_doc", "ttt_scoring") + SLIDING_FIELDS + ("stream_prefix",)
SHORT = {"ttt_epochs": "e", "ttt_freeze_blocks": "f", "ttt_lr": "lr", "ttt_chunk_tokens": "c", "eval_stride": "s",
         "val_tokens": "v", "eval_seq_len": "w", "ttt_momentum": "m", "ttt_grad_clip": "clip",
         "ttt_warmup_div": "wd", "stream_prefix": "pre"}


def _get(cfg: RunConfig, name: str) -> Any:
    for sec in ("data", "eval", "ttt", "train"):
        s = getattr(cfg, sec)
        if hasattr(s, name):
            return getattr(s, name)
    raise KeyError(name)


def settings_of(cfg: RunConfig, fields: tuple[str, ...]) -> dict[str, Any]:
    return {f: _get(cfg, f) for f in fields}


def stage_name(base: str, run_cfg: RunConfig, cfg: RunConfig, fields: tuple[str, ...]) -> str:
    """``base`` plus a bracketed tag of the settings in ``fields`` that differ from the run's config."""
    tags = []
    for f in fields:
        v, v0 = _get(cfg, f), _get(run_cfg, f)
        if v == v0:
            continue
        if f == "ttt_optimizer" or f == "ttt_scoring":
            tags.append(str(v))
        elif f == "ttt_reset_per_doc":
            tags.append("docreset" if v else "nodocreset")
        elif f == "tail_rescore":
            tags.append("rescore" if v else "norescore")
        elif f in SHORT:
            tags.append(f"{SHORT[f]}{v:g}" if isinstance(v, float) else f"{SHORT[f]}{v}")
        else:
            tags.append(f"{f}={v}")
    return f"{base}[{','.join(tags)}]" if tags else base


def load_weights(rd: RunDir, weights: str) -> dict[str, torch.Tensor]:
    """The state dict of the run's int6 artifact (validated container, no pickle) or of its
    float EMA/live weights (torch.load with weights_only=True)."""
    if weights == "artifact":
        if not rd.artifact.exists():
            raise FileNotFoundError(f"{rd.artifact} does not exist; create it with `gepa quantize {rd.path}` "
                                    f"(or evaluate the float weights with --weights ema)")
        from gepalib.quant.artifact import load_artifact_state_dict

        return load_artifact_state_dict(rd.artifact)
    path = rd.ema_weights if weights == "ema" else rd.live_weights
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (has `gepa train` finished for {rd.path}?)")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file or a non-tensor payload
        raise ValueError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    return sd


def build_model(cfg: RunConfig, sd: dict[str, torch.Tensor], src: str, device: torch.device):
    from gepalib.model import GPT

    model = GPT(cfg.model)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "mismatch"
        raise ValueError(f"{src}: weights do not fit the run's model config ({first} ...)") from None
    return model.to(device).eval()


def evaluate_run(run_dir, *, sliding: bool = False, ttt: bool = False, streaming: bool = False,
                 weights: str = "artifact", record: bool = True, log=print, **overrides: Any) -> dict[str, EvalResult]:
    """Python API behind ``gepa eval``: returns {stage name: EvalResult} and (rank 0,
    ``record=True``) writes the rows into the run's summary.json stage ledger."""
    from gepalib.bpb import build_byte_luts
    from gepalib.data import load_val_tokens
    from gepalib.eval.windows import eval_nonoverlapping, eval_sliding
    from gepalib.eval.streaming import eval_streaming
    from gepalib.eval.ttt import run_ttt

    if weights not in WEIGHTS:
        raise ValueError(f"--weights {weights!r}; choose one of {WEIGHTS}")
    rd = RunDir(resolve_path(run_dir))
    run_cfg = rd.load_config()
    from gepalib.config import FIELD_INDEX

    bad = sorted(k for k in overrides if FIELD_INDEX.get(k, ("?",))[0] in FROZEN_SECTIONS)
    if bad:
        raise ValueError(f"cannot override {', '.join(bad)} when evaluating a trained run (they define its weights)")
    cfg = override(run_cfg, **overrides) if overrides else run_cfg
    info = dist.init(cfg.train.device)
    main = info.is_main
    say = (log if (main and log is not None) else (lambda *_: None))
    device, autocast = info.device, cfg.train.autocast
    seq_len = cfg.eval.eval_seq_len or cfg.train.seq_len

    sd = load_weights(rd, weights)
    src = str(rd.artifact if weights == "artifact" else (rd.ema_weights if weights == "ema" else rd.live_weights))
    model = build_model(cfg, sd, src, device)
    del sd
    data_dir = resolve_path(cfg.data.data_dir)
    val_tokens = load_val_tokens(data_dir, seq_len, cfg.model.vocab_size, max_targets=cfg.data.val_tokens)
    luts = build_byte_luts(cfg.data.tokenizer_file(), cfg.model.vocab_size)
    say(f"eval_run:{rd.path} weights:{weights} device:{device} world_size:{info.world_size} seq_len:{seq_len} "
        f"val_targets:{val_tokens.numel() - 1}")

    results: dict[str, EvalResult] = {}
    base = STAGE_BASE[weights]

    def done(name: str, r: EvalResult, fields: tuple[str, ...], **extra: Any) -> None:
        results[name] = r
        say(f"stage:{name} val_bpb:{r.val_bpb:.8f} val_loss:{r.val_loss:.6f} tokens:{r.tokens} bytes:{r.bytes} "
            f"seconds:{r.seconds:.2f}")
        if record and main:
            rd.record_stage(name, **r.as_row(), weights=weights, world_size=info.world_size, source="eval",
                            settings=settings_of(cfg, fields), **extra)

    ec = cfg.eval
    r = eval_nonoverlapping(model, val_tokens, luts, seq_len, ec.eval_batch_seqs, autocast=autocast)
    done(stage_name(ROUNDTRIP_STAGE[weights], run_cfg, cfg, COMMON_FIELDS), r, COMMON_FIELDS)
    if sliding:
        r = eval_sliding(model, val_tokens, luts, seq_len, ec.eval_stride, ec.eval_batch_seqs,
                         tail_rescore=ec.tail_rescore, autocast=autocast)
        done(stage_name(f"{base}_sliding", run_cfg, cfg, SLIDING_FIELDS), r, SLIDING_FIELDS)
    if streaming:
        r = eval_streaming(model, val_tokens, luts, seq_len, lanes=ec.stream_lanes, block=ec.stream_block,
                           prefix=ec.stream_prefix, max_lanes=max(1, ec.eval_batch_seqs), autocast=autocast)
        done(stage_name(f"{base}_streaming", run_cfg, cfg, STREAM_FIELDS), r, STREAM_FIELDS)
    if ttt:
        tc = cfg.ttt
        n_chunks = -(-(val_tokens.numel() - 1) // tc.ttt_chunk_tokens)
        r = run_ttt(model, val_tokens, luts, seq_len, tc, ec, autocast=autocast, log=say,
                    log_every=max(1, n_chunks // 20))
        kind = "sliding" if tc.ttt_scoring == "sliding" else "streaming"
        # the scoring mode is in the base name already
        fields = tuple(f for f in TTT_FIELDS if f != "ttt_scoring")
        chunks = r.extra["chunks"]
        done(stage_name(f"{base}_{kind}_ttt", run_cfg, cfg, fields), r, TTT_FIELDS,
             chunks=len(chunks), trainable_params=r.extra["trainable_params"],
             score_seconds=sum(c["score_seconds"] for c in chunks),
             train_seconds=sum(c["train_seconds"] for c in chunks))
    dist.barrier()
    if main and record:
        say(format_ledger(rd.stages()))
    return results


# ---------------------------------------------------------------------------
# CLI


def _configure(p: argparse.ArgumentParser) -> None:
    from gepalib.cli import add_override_args

    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (config.json + weights)")
    p.add_argument("--sliding", action="store_true", help="also run the stride-64 sliding-window evaluation")
    p.add_argument("--ttt", action="store_true", help="also run legal score-first TTT (SPEC §5)")
    p.add_argument("--streaming", action="store_true", help="also run the banded-attention streaming evaluation")
    p.add_argument("--weights", choices=WEIGHTS, default="artifact",
                   help="int6 artifact (default), or the float EMA / live weights")
    p.add_argument("--no-record", action="store_true", help="do not write the stage ledger")
    add_override_args(p)


def run_cli(args: argparse.Namespace) -> int:
    from gepalib.cli import collect_overrides

    t0 = time.perf_counter()
    evaluate_run(args.run_dir, sliding=args.sliding, ttt=args.ttt, streaming=args.streaming, weights=args.weights,
                 record=not args.no_record, log=lambda s: print(s, flush=True), **collect_overrides(args))
    if not dist.active() or torch.distributed.get_rank() == 0:
        print(f"eval_total_seconds:{time.perf_counter() - t0:.1f}", flush=True)
    dist.shutdown()
    return 0


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a run (non-overlapping, sliding, TTT, streaming)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _configure(p)
    p.set_defaults(func=run_cli)


def main(argv: list[str] | None = None) -> int:
    from gepalib.cli import main as cli_main

    return cli_main(["eval", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
