"""Legal score-first test-time training (see docs/evaluation.md).

The validation targets are cut into chunks of C = ``ttt_chunk_tokens`` targets
(chunk c = targets [cC, min((c+1)C, N)); target i is val[i+1]). A sliding window
(:func:`gepalib.eval.windows.plan_sliding_windows`) belongs to the chunk of its first scored
target. For c = 0, 1, ...:

1. **Score** the chunk's windows with the current weights (eval + inference mode, windows
   split contiguously across ranks) and add to the fp64 loss/token/byte sums.
2. **Train** (not for the last chunk): ``ttt_epochs`` passes over the chunk's aligned
   sequences -- inputs val[cC+kT : cC+(k+1)T], targets shifted by one, k = 0..floor(len/T)-1
   (a remainder shorter than T is not trained on, nor is a chunk shorter than T, as in the
   submission). Each pass takes one optimizer step per batch of ``ttt_batch_seqs``
   consecutive sequences, on the batch's mean cross-entropy: every rank takes a contiguous
   share of the batch, weights its loss by its share of the batch's tokens, and the gradients
   are summed across ranks (the same global mean for any world size; the submission's ranks
   each batch their own share, which is the same steps while a chunk has at most
   ``ttt_batch_seqs`` sequences -- 16 of 32 at full scale -- and on one rank always). Then a
   global-norm clip at ``ttt_grad_clip`` over the trainable parameters and one step of SGD
   (momentum, no dampening/Nesterov/wd) or AdamW, created once so its state carries over.
   The chunk LR is :func:`ttt_lr`. Parameters named ``blocks.{i}.*`` with
   i < ``ttt_freeze_blocks`` are frozen.

Legality: every target trained on in chunk c lies in chunk c, and every target of chunk c
is scored by a window whose first scored target is <= it, i.e. a window of chunk <= c, so
it was graded before any step that sees it. The weights that score chunk c depend only on
tokens val[0 .. cC] -- strictly before chunk c's first target token val[cC+1].

``ttt_reset_per_doc``: a document starts at every token position j with val[j] == bos_id.
Before scoring chunk c, if the model has been trained since the last reset on a sequence
whose first input token lies in a different document than chunk c's first target token
val[cC+1], the pre-TTT weights and a fresh optimizer state are restored. So chunk c is
always scored by weights adapted only on the document that contains its first target
(reset granularity is the chunk: use a small ``ttt_chunk_tokens`` for document-level TTT).
The LR schedule keeps following the global chunk index.

``ttt_scoring="streaming"`` scores each chunk's targets [cC, min((c+1)C, N)) with the
banded-attention evaluator of gepalib.eval.streaming instead of its sliding windows.

**Families** (``ttt_family``; all score-first, see docs/evaluation.md):

* ``full``: the loop above (the submission's).
* ``phased``: the same loop over *phase segments* instead of chunks: the targets of the
  documents before each ``ttt_phase_docs`` boundary (gepalib.eval.phased) are scored with
  the current weights, then one global pass over the whole scored prefix [0, s_b)
  (``ttt_phase_epochs`` passes of aligned seq_len sequences, batches of ``ttt_batch_seqs``,
  constant LR ``ttt_phase_lr``, ``ttt_optimizer`` created once, ``ttt_freeze_blocks``,
  ``ttt_grad_clip``) updates the base weights before the next segment is scored. A
  sliding window belongs to the segment of its first scored target.
* ``lora_doc`` and ``phased+lora_doc``: per-document LoRA (gepalib.eval.doc_ttt); the
  phases of the latter use the same global pass, with the adapters detached.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from gepalib import dist
from gepalib.config import EvalConfig, TTTConfig
from gepalib.eval import streaming
from gepalib.eval.doc_ttt import run_doc_family
from gepalib.eval.phased import doc_starts, phase_segments, prefix_train_seqs
from gepalib.eval.windows import (EvalResult, Sums, WindowPlan, check_val_tokens, make_result, model_device,
                                  plan_sliding_windows, score_windows)
from gepalib.progress import track
from gepalib.validation import TTT_OPTIMIZERS, check_ttt


# ---------------------------------------------------------------------------
# Pure planning helpers


def n_chunks_for(n_targets: int, chunk_tokens: int) -> int:
    if chunk_tokens <= 0:
        raise ValueError(f"ttt_chunk_tokens must be positive, got {chunk_tokens}")
    return -(-int(n_targets) // int(chunk_tokens))


def chunk_of_windows(plan: WindowPlan, chunk_tokens: int) -> np.ndarray:
    """Chunk index of every window: floor(first scored target / C)."""
    return plan.score_lo // int(chunk_tokens)


def windows_by_chunk(plan: WindowPlan, chunk_tokens: int) -> list[np.ndarray]:
    """Window indices of each chunk (the plan's windows are in increasing start order)."""
    n = n_chunks_for(plan.n_targets, chunk_tokens)
    cw = chunk_of_windows(plan, chunk_tokens)
    bounds = np.searchsorted(cw, np.arange(n + 1), side="left")
    return [np.arange(bounds[c], bounds[c + 1], dtype=np.int64) for c in range(n)]


def windows_by_segment(plan: WindowPlan, bounds: list[int]) -> list[np.ndarray]:
    """Window indices of each segment [bounds[k], bounds[k+1]) (by first scored target)."""
    edges = np.searchsorted(plan.score_lo, np.asarray(bounds), side="left")
    return [np.arange(edges[k], edges[k + 1], dtype=np.int64) for k in range(len(bounds) - 1)]


def chunk_bounds(c: int, n_targets: int, chunk_tokens: int) -> tuple[int, int]:
    """Target range [lo, hi) of chunk c."""
    lo = c * chunk_tokens
    return lo, min(lo + chunk_tokens, n_targets)


def chunk_train_seqs(c: int, n_targets: int, chunk_tokens: int, seq_len: int) -> list[tuple[int, int]]:
    """The chunk's training sequences as target ranges [a, a+len): inputs val[a:a+len],
    targets val[a+1:a+len+1]. Aligned to the chunk start; a remainder < seq_len is dropped
    (so a chunk shorter than seq_len has none)."""
    lo, hi = chunk_bounds(c, n_targets, chunk_tokens)
    return [(lo + k * seq_len, seq_len) for k in range(max(hi - lo, 0) // seq_len)]


def ttt_warmup_chunks(n_chunks: int, warmup_div: int) -> int:
    """Warm-up chunks: max(floor(n_chunks / warmup_div), 1), as the submission (0: no warm-up)."""
    return max(n_chunks // warmup_div, 1) if warmup_div > 0 else 0


def ttt_lr(c: int, n_chunks: int, base_lr: float, warmup_div: int = 20) -> float:
    """Chunk LR: with w = :func:`ttt_warmup_chunks`, base*(c+1)/w for c < w, else
    base * 0.5 * (1 + cos(pi * (c - w) / (n_chunks - 1 - w)))."""
    w = ttt_warmup_chunks(n_chunks, warmup_div)
    if c < w:
        return base_lr * (c + 1) / w
    denom = n_chunks - 1 - w
    if denom <= 0:
        return base_lr
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * (c - w) / denom))


def is_frozen(name: str, freeze_blocks: int) -> bool:
    """A parameter is frozen when its name contains ``blocks.<i>.`` for i < freeze_blocks.
    Matched on whole name components, so wrapper prefixes (``_orig_mod.`` of torch.compile,
    ``module.`` of DDP) still freeze and ``blocks.1.`` never matches ``blocks.11.``."""
    return any(f".blocks.{i}." in f".{name}" for i in range(freeze_blocks))


def trainable_named_params(model: nn.Module, freeze_blocks: int) -> list[tuple[str, nn.Parameter]]:
    """Parameters TTT adapts: all except those of blocks 0 .. freeze_blocks-1."""
    nb = len(getattr(model, "blocks", []))
    if freeze_blocks < 0 or (nb and freeze_blocks > nb):
        raise ValueError(f"ttt_freeze_blocks={freeze_blocks} must be in [0, {nb}]")
    return [(n, p) for n, p in model.named_parameters() if not is_frozen(n, freeze_blocks)]


class DocIndex:
    """Document ids of token positions: doc(j) = number of BOS tokens at positions <= j."""

    def __init__(self, val_tokens: Tensor, bos_id: int):
        self.bos_pos = np.flatnonzero(val_tokens.numpy() == bos_id) if val_tokens.device.type == "cpu" \
            else np.flatnonzero(val_tokens.cpu().numpy() == bos_id)

    def doc(self, j: int) -> int:
        return int(np.searchsorted(self.bos_pos, j, side="right"))


# ---------------------------------------------------------------------------
# Hooks


class TTTHooks:
    """Instrumentation points of :func:`run_ttt` (all no-ops; subclass what you need).

    Target ranges are half-open [lo, hi) of absolute target indices, this rank's only."""

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
        """Per-chunk stats (global sums)."""


# ---------------------------------------------------------------------------
# The loop


def _make_optimizer(params: list[nn.Parameter], tcfg: TTTConfig) -> torch.optim.Optimizer:
    if tcfg.ttt_optimizer == "sgd":
        return torch.optim.SGD(params, lr=tcfg.ttt_lr, momentum=tcfg.ttt_momentum, dampening=0.0,
                               nesterov=False, weight_decay=0.0)
    if tcfg.ttt_optimizer == "adamw":
        return torch.optim.AdamW(params, lr=tcfg.ttt_lr, betas=(tcfg.ttt_adam_beta1, tcfg.ttt_adam_beta2),
                                 weight_decay=tcfg.ttt_adam_wd)
    raise ValueError(f"ttt_optimizer={tcfg.ttt_optimizer!r}; choose one of {TTT_OPTIMIZERS}")


def validate_ttt_config(tcfg: TTTConfig) -> None:
    """Raise ValueError naming the offending TTTConfig field (the checks live in gepalib.validation)."""
    check_ttt(tcfg)


def ttt_forward(model: nn.Module, enabled: bool, device_type: str | None = None) -> nn.Module:
    """What TTT's training pass calls for its loss: ``model`` torch.compile'd (static shapes: one
    graph per batch shape, i.e. the full batch and a chunk's last one) on CUDA when ``enabled``
    (``ttt_compile``) and triton is there; else ``model`` itself (the CPU runs eager). The compiled
    module shares ``model``'s parameters, so the optimizer and the scoring see the same weights."""
    device_type = device_type or model_device(model).type
    if not enabled or device_type != "cuda" or importlib.util.find_spec("triton") is None:
        return model
    return torch.compile(model, dynamic=False)


def _train_chunk(model: nn.Module, val_tokens: Tensor, seqs: list[tuple[int, int]], params: list[nn.Parameter],
                 opt: torch.optim.Optimizer, lr: float, tcfg: TTTConfig, device: torch.device, autocast: str,
                 chunk: int, hooks: TTTHooks | None, fwd: nn.Module | None = None) -> list[float]:
    """``ttt_epochs`` passes over the chunk's sequences, one optimizer step per batch of
    ``ttt_batch_seqs``; returns each step's mean loss. The losses and gradient norms stay on the
    device until the chunk ends (one host sync per chunk; hooks see each step's norm then).
    ``fwd``: the module that computes the loss (:func:`ttt_forward`; default ``model``)."""
    fwd = model if fwd is None else fwd
    rank, world = dist.rank_world()
    for g in opt.param_groups:
        g["lr"] = lr
    steps: list[tuple[int, int, Tensor, Tensor]] = []  # (epoch, batch, loss, grad norm) on the device
    model.train()
    for ep in range(tcfg.ttt_epochs):
        for b, b0 in enumerate(range(0, len(seqs), tcfg.ttt_batch_seqs)):
            batch = seqs[b0: b0 + tcfg.ttt_batch_seqs]
            lo, hi = dist.shard_range(len(batch), rank, world)
            mine = batch[lo:hi]
            if hooks is not None:
                hooks.on_train(chunk, ep, b, [(a, a + n) for a, n in mine])
            for p in params:
                p.grad = torch.zeros_like(p)
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            if mine:
                x = torch.stack([val_tokens[a: a + n] for a, n in mine]).to(device=device, dtype=torch.int64)
                y = torch.stack([val_tokens[a + 1: a + n + 1] for a, n in mine]).to(device=device, dtype=torch.int64)
                with dist.autocast_context(device, autocast):
                    loss = fwd(x, y)
                w = x.numel() / sum(n for _, n in batch)  # this rank's share of the batch's tokens
                (loss.float() * w).backward()
                loss_sum += loss.detach().double() * w
            loss_sum = dist.reduce_grads(params, loss_sum, mean=False)  # the global sums, one flat all-reduce
            if tcfg.ttt_grad_clip > 0:
                gn = torch.nn.utils.clip_grad_norm_(params, tcfg.ttt_grad_clip)
            else:
                gn = torch.linalg.vector_norm(torch.stack([p.grad.float().norm() for p in params]))
            opt.step()
            steps.append((ep, b, loss_sum, gn.detach().double()))
    for p in params:
        p.grad = None
    model.eval()
    # the chunk's one host sync: every step's loss and gradient norm read back together
    values = torch.stack([v for *_, ls, gn in steps for v in (ls, gn)]).tolist() if steps else []
    losses = values[0::2]
    if hooks is not None:
        for (ep, b, _, _), gn in zip(steps, values[1::2]):
            hooks.on_step(chunk, ep, b, lr, gn)
    return losses


def run_ttt(model: nn.Module, val_tokens: Tensor, luts, seq_len: int, tcfg: TTTConfig, ecfg: EvalConfig, *,
            hooks: TTTHooks | None = None, autocast: str = "auto", return_token_losses: bool = False,
            restore: bool = True, log: Callable[[str], None] | None = None, log_every: int = 100,
            progress: str = "auto") -> EvalResult:
    """Legal score-first TTT evaluation (module docstring). Returns the EvalResult of
    everything scored, with ``extra["chunks"]`` = per-chunk rows (lr, tokens, bytes, nll, bpb,
    train losses, seconds). ``restore=True`` puts the pre-TTT weights back afterwards. ``progress``:
    rank 0's bar or log lines over the chunks (gepalib.progress; ``off``: none)."""
    t0 = time.perf_counter()
    validate_ttt_config(tcfg)
    check_val_tokens(val_tokens, getattr(getattr(model, "cfg", None), "vocab_size", None))
    val_tokens = val_tokens.cpu()
    N = val_tokens.numel() - 1
    C = tcfg.ttt_chunk_tokens
    family = tcfg.ttt_family
    phased, doc_family = family == "phased", family in ("lora_doc", "phased+lora_doc")
    segs = phase_segments(tcfg.ttt_phase_docs, doc_starts(val_tokens, model.cfg.bos_id), N) if phased else None
    n_chunks = len(segs) if phased else n_chunks_for(N, C)
    device = model_device(model)
    luts_d = luts.to(device)
    val_d = val_tokens.to(device)  # once: copies per batch would wait for the device every time
    stride = ecfg.eval_stride
    batch_seqs = ecfg.eval_batch_seqs
    if tcfg.ttt_scoring == "sliding" and not doc_family:
        plan = plan_sliding_windows(N, seq_len, stride, ecfg.tail_rescore)
        chunk_windows = windows_by_segment(plan, [s[0] for s in segs] + [N]) if phased else windows_by_chunk(plan, C)
    else:
        plan, chunk_windows = None, None
    rank, world = dist.rank_world()
    fwd = ttt_forward(model, tcfg.ttt_compile, device.type)  # the training pass's loss (compiled on CUDA)

    named = trainable_named_params(model, tcfg.ttt_freeze_blocks)
    params = [p for _, p in named]
    trainable_ids = {id(p) for p in params}
    saved_req = {n: p.requires_grad for n, p in model.named_parameters()}
    for n, p in model.named_parameters():  # per-document families: the base is frozen but in phase passes
        p.requires_grad_(id(p) in trainable_ids and not doc_family)
    need_snapshot = restore or tcfg.ttt_reset_per_doc
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()} if need_snapshot else None
    opt = _make_optimizer(params, tcfg)
    docs = DocIndex(val_tokens, model.cfg.bos_id) if tcfg.ttt_reset_per_doc else None
    adapted_from: int | None = None  # first input token position trained on since the last reset
    was_training = model.training
    phase_cfg = dataclasses.replace(tcfg, ttt_epochs=tcfg.ttt_phase_epochs) if family.startswith("phased") else None

    def phase_step(k: int, prefix_hi: int) -> list[float]:
        """The global pass of the phased families over the scored prefix [0, prefix_hi)."""
        seqs = prefix_train_seqs(prefix_hi, seq_len)
        if not seqs or phase_cfg.ttt_epochs == 0:
            return []
        for p in params:
            p.requires_grad_(True)
        try:
            return _train_chunk(model, val_d, seqs, params, opt, tcfg.ttt_phase_lr, phase_cfg, device, autocast, k,
                                hooks, fwd)
        finally:
            for p in params:
                p.requires_grad_(not doc_family)

    sums = Sums(device)
    losses = torch.zeros(N, dtype=torch.float32, device=device) if return_token_losses else None
    rows: list[dict[str, Any]] = []
    doc_extra: dict[str, Any] = {}
    try:
        model.eval()
        if doc_family:
            rows, doc_extra = run_doc_family(model, val_d, luts_d, seq_len, tcfg, ecfg, sums, losses, hooks=hooks,
                                             autocast=autocast, phase_step=phase_step if phase_cfg else None,
                                             log=log, log_every=log_every)
        for c in track(range(0 if doc_family else n_chunks), "ttt", unit="chunk", mode=progress):
            lo_c, hi_c = segs[c][:2] if phased else chunk_bounds(c, N, C)
            reset = False
            if docs is not None and adapted_from is not None and docs.doc(adapted_from) != docs.doc(lo_c + 1):
                model.load_state_dict(snapshot)
                opt = _make_optimizer(params, tcfg)
                adapted_from, reset = None, True
                if hooks is not None:
                    hooks.on_reset(c)
            # 1. score
            ts = time.perf_counter()
            before = sums.t.clone()
            with torch.inference_mode():
                if plan is not None:
                    cw = chunk_windows[c]
                    a, b = dist.shard_range(len(cw), rank, world)
                    mine = cw[a:b]
                    score_windows(model, val_d, luts_d, plan, mine, batch_seqs, sums, autocast=autocast,
                                  token_losses=losses)
                    ranges = list(zip(plan.score_lo[mine].tolist(), plan.score_hi[mine].tolist()))
                else:
                    a, b = dist.shard_range(hi_c - lo_c, rank, world)
                    ranges = [(lo_c + a, lo_c + b)] if b > a else []
                    if b > a:
                        streaming.score_range(model, val_d, luts_d, lo_c + a, lo_c + b, seq_len, sums,
                                              lanes=ecfg.stream_lanes, block=ecfg.stream_block,
                                              prefix=ecfg.stream_prefix, max_lanes=max(1, batch_seqs),
                                              autocast=autocast, token_losses=losses)
            if hooks is not None:
                hooks.on_score(c, ranges)
            delta = dist.all_reduce_sum(sums.t - before)
            score_s = time.perf_counter() - ts
            # 2. train (never on the last chunk)
            lr = tcfg.ttt_phase_lr if phased else ttt_lr(c, n_chunks, tcfg.ttt_lr, tcfg.ttt_warmup_div)
            tt = time.perf_counter()
            train_losses: list[float] = []
            if phased and c < n_chunks - 1:
                train_losses = phase_step(c, hi_c)
            elif not phased and c < n_chunks - 1 and tcfg.ttt_epochs > 0:
                seqs = chunk_train_seqs(c, N, C, seq_len)
                if seqs:
                    train_losses = _train_chunk(model, val_d, seqs, params, opt, lr, tcfg, device, autocast,
                                                c, hooks, fwd)
                    if adapted_from is None:
                        adapted_from = seqs[0][0]
            train_s = time.perf_counter() - tt
            nll_c, tok_c, byt_c = float(delta[0]), int(round(float(delta[1]))), int(round(float(delta[2])))
            row = {"chunk": c, "lr": lr, "tokens": tok_c, "bytes": byt_c, "nll": nll_c,
                   "bpb": nll_c / (math.log(2) * byt_c) if byt_c else float("nan"),
                   "train_loss_first": train_losses[0] if train_losses else None,
                   "train_loss_last": train_losses[-1] if train_losses else None,
                   "reset": reset, "score_seconds": score_s, "train_seconds": train_s}
            rows.append(row)
            if hooks is not None:
                hooks.on_chunk_end(c, row)
            if c % max(1, log_every) == 0 or c == n_chunks - 1:  # collective: every rank, log or not
                run_nll, run_tok, run_byt = (float(x) for x in dist.all_reduce_sum(sums.t.clone()))
                if log is not None:
                    log(f"ttt_chunk:{c + 1}/{n_chunks} lr:{lr:.6g} chunk_bpb:{row['bpb']:.6f} "
                        f"running_bpb:{run_nll / (math.log(2) * run_byt):.6f} score_s:{score_s:.2f} "
                        f"train_s:{train_s:.2f} elapsed_s:{time.perf_counter() - t0:.1f}")
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(saved_req[n])
            p.grad = None
        if restore and snapshot is not None:
            model.load_state_dict(snapshot)
        model.train(was_training)
    nll_sum, tokens, nbytes = sums.reduced()
    if losses is not None:
        losses = dist.all_reduce_sum(losses).cpu()
    base_trained = 0 if family == "lora_doc" else sum(p.numel() for p in params)
    return make_result(nll_sum, tokens, nbytes, time.perf_counter() - t0, token_losses=losses,
                       extra={"chunks": rows, "n_chunks": len(rows), "family": family,
                              "trainable_params": base_trained + doc_extra.get("lora_params_per_doc", 0),
                              "frozen_params": sum(p.numel() for p in model.parameters()) - base_trained,
                              **doc_extra})
