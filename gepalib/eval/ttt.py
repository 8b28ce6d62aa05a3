"""Legal score-first test-time training: one loop, with the families as adapters
(gepalib.eval.ttt_families; see docs/evaluation.md).

Target i is val[i+1], predicted from val[:i+1]. :func:`run_ttt` takes the adapter of
``ttt_family`` from ``FAMILIES`` and its segments: target ranges [lo_k, hi_k) that tile
[0, N) in order (``full``: chunks of ``ttt_chunk_tokens``; the phased families: the targets
up to each ``ttt_phase_docs`` boundary; ``lora_doc``: the whole stream). For k = 0, 1, ...:

0. ``adapter.reset(k, lo_k)``: the family may put the pre-TTT weights back first (``full``
   with ``ttt_reset_per_doc``); the hooks' ``on_reset`` says so.
1. **Score** segment k with the current weights and add it to the fp64 loss/token/byte sums,
   in the adapter's ``context``:

   * ``"stream"`` (:class:`StreamScorer`): the segment's sliding windows
     (:func:`gepalib.eval.windows.plan_sliding_windows`; a window belongs to the segment of
     its first scored target) or, with ``ttt_scoring="streaming"``, the banded model over the
     segment's targets (gepalib.eval.streaming); eval and inference mode, the windows or the
     targets split contiguously across ranks. The hooks' ``on_score`` gets the ranges scored.
   * ``"document"`` (:class:`gepalib.eval.doc_ttt.DocScorer`): every document of the segment
     with its own LoRA adapter and document-local context, score-first chunk by chunk (its
     own ``on_score`` before each ``on_train``).

2. **Learn**, except after the last segment: ``adapter.learn(k, lo_k, hi_k)`` trains on
   targets below hi_k only (``full``: the chunk's aligned sequences; the phased families: the
   whole scored prefix; ``lora_doc``: nothing).
3. The segment's row (lr, tokens, bytes, nll, bpb, first and last training loss, reset,
   seconds spent scoring and training), the hooks' ``on_chunk_end``, the log line.

Afterwards the pre-TTT weights (``restore=True``), the gradient flags and the train/eval mode
are put back.

Legality, for any adapter: every target of segment k is scored by a window whose first
scored target is <= it, i.e. a window of a segment <= k (or, in the document context, within
segment k's own scoring), so it is graded before ``learn(k)`` runs, and ``learn(k)`` sees
targets below hi_k only: no target is trained on before it is scored. The weights that score
segment k were trained on targets below lo_k only, i.e. on tokens val[0 .. lo_k], strictly
before the segment's first target token val[lo_k+1]. The per-document adapters train on a
document's chunk only after scoring it. tests/test_ttt.py checks all of this, through the
hooks and by perturbing the stream, for every family in FAMILIES.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from gepalib import dist
from gepalib.config import EvalConfig, TTTConfig
from gepalib.eval import streaming
from gepalib.eval.doc_ttt import DocScorer
from gepalib.eval.ttt_families import (FAMILIES, Adapter, DocIndex, TTTRun, chunk_bounds, chunk_train_seqs,
                                       n_chunks_for, ttt_lr, ttt_warmup_chunks)
from gepalib.eval.ttt_train import is_frozen, make_optimizer, train_steps, trainable_named_params, ttt_forward
from gepalib.eval.windows import (EvalResult, Sums, WindowPlan, check_val_tokens, make_result, model_device,
                                  plan_sliding_windows, score_windows)
from gepalib.progress import track
from gepalib.validation import check_ttt

__all__ = ["FAMILIES", "Adapter", "DocIndex", "StreamScorer", "TTTHooks", "TTTRun", "chunk_bounds",
           "chunk_train_seqs", "is_frozen", "make_optimizer", "n_chunks_for", "run_ttt", "train_steps",
           "trainable_named_params", "ttt_forward", "ttt_lr", "ttt_warmup_chunks", "validate_ttt_config",
           "windows_by_chunk", "windows_by_segment"]


def validate_ttt_config(tcfg: TTTConfig) -> None:
    """Raise ValueError naming the offending TTTConfig field (the checks live in gepalib.validation)."""
    check_ttt(tcfg)


# ---------------------------------------------------------------------------
# Hooks


class TTTHooks:
    """Instrumentation points of :func:`run_ttt` (all no-ops; subclass what you need).

    Target ranges are half-open [lo, hi) of absolute target indices, this rank's only. ``chunk``
    is the loop's segment k, except that in the document context ``on_score``, ``on_train`` and
    ``on_step`` number the per-document scorer's lockstep steps (gepalib.eval.doc_ttt)."""

    def on_score(self, chunk: int, ranges: list[tuple[int, int]]) -> None:
        """Targets just scored (added to the sums) for ``chunk``."""

    def on_train(self, chunk: int, epoch: int, batch: int, ranges: list[tuple[int, int]]) -> None:
        """Targets whose loss feeds the optimizer step about to be computed (this rank's share
        of the epoch's ``batch``-th batch of the chunk's sequences)."""

    def on_step(self, chunk: int, epoch: int, batch: int, lr: float, grad_norm: float) -> None:
        """After the optimizer step (grad_norm before clipping)."""

    def on_reset(self, chunk: int) -> None:
        """Weights and optimizer state were just restored to their pre-TTT values."""

    def on_docs(self, batch: int, docs: list[tuple[int, int]]) -> None:
        """Per-document families: a batch of documents (target ranges) starts, each with a fresh adapter."""

    def on_chunk_end(self, chunk: int, row: dict[str, Any]) -> None:
        """The segment's row (global sums), once it is scored and learned from (every family)."""


# ---------------------------------------------------------------------------
# Scoring the stream


def windows_by_chunk(plan: WindowPlan, chunk_tokens: int) -> list[np.ndarray]:
    """Window indices of each chunk of ``chunk_tokens`` targets (by first scored target)."""
    n = plan.n_targets
    return windows_by_segment(plan, list(range(0, n, int(chunk_tokens))) + [n])


def windows_by_segment(plan: WindowPlan, bounds: list[int]) -> list[np.ndarray]:
    """Window indices of each segment [bounds[k], bounds[k+1]) (by first scored target)."""
    edges = np.searchsorted(plan.score_lo, np.asarray(bounds), side="left")
    return [np.arange(edges[k], edges[k + 1], dtype=np.int64) for k in range(len(bounds) - 1)]


class StreamScorer:
    """The scorer of ``context = "stream"`` (module docstring, step 1)."""

    fresh = False  # the weights carry over from segment to segment

    def __init__(self, run: TTTRun, segments: list[tuple[int, int]]):
        self.run, self.n_segments = run, len(segments)
        self.plan: WindowPlan | None = None
        if run.tcfg.ttt_scoring == "sliding":
            e = run.ecfg
            self.plan = plan_sliding_windows(run.n_targets, run.seq_len, e.eval_stride, e.tail_rescore)
            self.windows = windows_by_segment(self.plan, [lo for lo, _ in segments] + [run.n_targets])

    def score(self, k: int, lo: int, hi: int) -> None:
        run, e = self.run, self.run.ecfg
        rank, world = dist.rank_world()
        with torch.inference_mode():
            if self.plan is not None:
                cw = self.windows[k]
                a, b = dist.shard_range(len(cw), rank, world)
                mine = cw[a:b]
                score_windows(run.model, run.val, run.luts, self.plan, mine, e.eval_batch_seqs, run.sums,
                              autocast=run.autocast, token_losses=run.losses)
                ranges = list(zip(self.plan.score_lo[mine].tolist(), self.plan.score_hi[mine].tolist()))
            else:
                a, b = dist.shard_range(hi - lo, rank, world)
                ranges = [(lo + a, lo + b)] if b > a else []
                if b > a:
                    streaming.score_range(run.model, run.val, run.luts, lo + a, lo + b, run.seq_len, run.sums,
                                          lanes=e.stream_lanes, block=e.stream_block, prefix=e.stream_prefix,
                                          max_lanes=max(1, e.eval_batch_seqs), autocast=run.autocast,
                                          token_losses=run.losses)
        if run.hooks is not None:
            run.hooks.on_score(k, ranges)

    def row(self, k: int) -> dict[str, Any]:
        return {}

    def log_segment(self, k: int, row: dict[str, Any]) -> None:
        """Every ``log_every`` segments and at the last: the running bpb (a collective: every rank
        takes part, logging or not)."""
        run, n = self.run, self.n_segments
        if k % max(1, run.log_every) == 0 or k == n - 1:
            run_nll, _, run_byt = (float(x) for x in dist.all_reduce_sum(run.sums.t.clone()))
            if run.log is not None:
                run.log(f"ttt_chunk:{k + 1}/{n} lr:{row['lr']:.6g} chunk_bpb:{row['bpb']:.6f} "
                        f"running_bpb:{run_nll / (math.log(2) * run_byt):.6f} score_s:{row['score_seconds']:.2f} "
                        f"train_s:{row['train_seconds']:.2f} elapsed_s:{time.perf_counter() - run.t0:.1f}")

    def extra(self) -> dict[str, Any]:
        return {}


# ---------------------------------------------------------------------------
# The loop


def run_ttt(model: nn.Module, val_tokens: Tensor, luts, seq_len: int, tcfg: TTTConfig, ecfg: EvalConfig, *,
            hooks: TTTHooks | None = None, autocast: str = "auto", return_token_losses: bool = False,
            restore: bool = True, log: Callable[[str], None] | None = None, log_every: int = 100,
            progress: str = "auto") -> EvalResult:
    """Legal score-first TTT evaluation (module docstring). Returns the EvalResult of
    everything scored, with ``extra["chunks"]`` = the per-segment rows. ``restore=True`` puts the
    pre-TTT weights back afterwards. ``progress``: rank 0's bar or log lines over the segments
    (gepalib.progress; ``off``: none)."""
    t0 = time.perf_counter()
    validate_ttt_config(tcfg)
    check_val_tokens(val_tokens, getattr(getattr(model, "cfg", None), "vocab_size", None))
    device = model_device(model)
    n = val_tokens.numel() - 1
    run = TTTRun(model=model, val=val_tokens.cpu().to(device),  # once: copies per batch would wait for the device
                 n_targets=n, seq_len=seq_len, tcfg=tcfg, ecfg=ecfg, device=device, luts=luts.to(device),
                 sums=Sums(device), losses=torch.zeros(n, dtype=torch.float32, device=device) if return_token_losses else None,
                 autocast=autocast, hooks=hooks, fwd=ttt_forward(model, tcfg.ttt_compile, device.type),
                 log=log, log_every=log_every, t0=t0)
    adapter = FAMILIES[tcfg.ttt_family](run)
    segments = adapter.segments()
    scorer = (DocScorer if adapter.context == "document" else StreamScorer)(run, segments)
    saved_req = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    if restore or adapter.needs_snapshot:
        run.snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rows: list[dict[str, Any]] = []
    try:
        adapter.prepare()
        model.eval()
        for k in track(range(len(segments)), "ttt", unit="chunk", mode=progress):
            rows.append(_segment(run, adapter, scorer, k, *segments[k], len(segments)))
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(saved_req[n])
            p.grad = None
        if restore:
            model.load_state_dict(run.snapshot)
        model.train(was_training)
    return _result(run, adapter, scorer, rows)


def _segment(run: TTTRun, adapter: Adapter, scorer, k: int, lo: int, hi: int, n: int) -> dict[str, Any]:
    """Segment k of n = targets [lo, hi): reset, score, learn (not after the last), its row."""
    reset = adapter.reset(k, lo)
    if reset and run.hooks is not None:
        run.hooks.on_reset(k)
    ts = time.perf_counter()
    before = run.sums.t.clone()
    scorer.score(k, lo, hi)
    delta = dist.all_reduce_sum(run.sums.t - before)
    score_s = time.perf_counter() - ts
    lr = adapter.lr(k)
    tt = time.perf_counter()
    losses = adapter.learn(k, lo, hi) if k < n - 1 else []
    train_s = time.perf_counter() - tt
    nll, tokens, nbytes = float(delta[0]), int(round(float(delta[1]))), int(round(float(delta[2])))
    row = {"chunk": k, **scorer.row(k), "lr": lr, "tokens": tokens, "bytes": nbytes, "nll": nll,
           "bpb": nll / (math.log(2) * nbytes) if nbytes else float("nan"),
           "train_loss_first": losses[0] if losses else None, "train_loss_last": losses[-1] if losses else None,
           "reset": reset or scorer.fresh, "score_seconds": score_s, "train_seconds": train_s}
    if run.hooks is not None:
        run.hooks.on_chunk_end(k, row)
    scorer.log_segment(k, row)
    return row


def _result(run: TTTRun, adapter: Adapter, scorer, rows: list[dict[str, Any]]) -> EvalResult:
    nll_sum, tokens, nbytes = run.sums.reduced()
    losses = dist.all_reduce_sum(run.losses).cpu() if run.losses is not None else None
    base = adapter.trained_params()
    extra = scorer.extra()
    return make_result(nll_sum, tokens, nbytes, time.perf_counter() - run.t0, token_losses=losses,
                       extra={"chunks": rows, "n_chunks": len(rows), "family": run.tcfg.ttt_family,
                              "trainable_params": base + extra.get("lora_params_per_doc", 0),
                              "frozen_params": sum(p.numel() for p in run.model.parameters()) - base, **extra})
