"""Per-document score-first TTT: ``ttt_family`` ``lora_doc`` and ``phased+lora_doc``.

Documents (gepalib.eval.phased: each starts at a BOS token and owns the targets whose input
token it holds) are adapted independently, ``ttt_lora_batch_docs`` consecutive documents
side by side with one LoRA adapter each (gepalib.eval.lora): each rank's documents of a
segment (below), longest first, so that a batch holds documents of similar length and the
documents still running are always its first lanes. For a batch:

1. Every adapter is reset (B = 0, A = A0; ``ttt_lora_warm_start_a`` keeps A) and a fresh
   optimizer made (``ttt_lora_optimizer``, ``ttt_lora_lr``, betas, weight decay).
2. Each document's targets are cut into chunks of ``ttt_lora_chunk_tokens``; step c takes
   chunk c of every document that has one, in lockstep:
   a. **score** it with the current adapter, using document-local context only:
      ``ttt_scoring="sliding"``: a window of the document's tokens ending at the chunk's
      end, up to T = eval seq len long, positions from 0 (the document's BOS at 0 when it
      fits); ``"streaming"``: the banded model over the document (a KVCache per batch, one
      row per document: the keys of earlier chunks were computed with the adapter of
      their time);
   b. **train** (not on a document's last chunk): ``ttt_lora_steps`` optimizer steps on the
      chunk's mean nll, the loss summed over documents so that each adapter gets its own
      document's gradient; the base weights are frozen. The score of step a is the first
      forward pass's, computed before any step on the chunk.

So no document's score depends on another document's tokens (without warm start): the
adapters, their optimizer state and the scoring contexts are all per document, and the
batched arithmetic is per row. ``phased+lora_doc`` adds phases: the documents are scored
in segments ending at the ``ttt_phase_docs`` boundaries and, after each segment except the
last, ``phase_step`` (from gepalib.eval.ttt: a global pass of the base weights over the
whole scored prefix) runs with the adapters detached. With several processes each rank
scores a contiguous share of every segment's documents; the phase pass is collective.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch
from torch import Tensor, nn

from gepalib import dist
from gepalib.attention import KVCache
from gepalib.config import EvalConfig, TTTConfig
from gepalib.eval.lora import LoRA, token_nll
from gepalib.eval.phased import doc_batches, doc_chunks, doc_ranges, doc_starts, phase_segments
from gepalib.eval.windows import Sums, target_byte_counts

PhaseStep = Callable[[int, int], list]


def _cache_state(cache: KVCache) -> tuple[list, Tensor | None]:
    return list(cache.kv), cache.ids


def _set_cache(cache: KVCache, state: tuple[list, Tensor | None], detach: bool = False) -> None:
    kv, ids = state
    cache.kv = [None if e is None else ((e[0].detach(), e[1].detach()) if detach else e) for e in kv]
    cache.ids = ids


def _keep_rows(cache: KVCache, rows: list[int]) -> None:
    """Drop the cache rows of documents that have ended (``rows``: the rows to keep)."""
    def keep(t: Tensor) -> Tensor:
        return t[:len(rows)] if rows == list(range(len(rows))) else t.index_select(0, torch.tensor(rows, device=t.device))

    cache.kv = [None if e is None else (keep(e[0]), keep(e[1])) for e in cache.kv]
    if cache.ids is not None:
        cache.ids = keep(cache.ids)


class _Batch:
    """One lockstep step's inputs: ids/targets [lanes, L], the scored mask and target indices."""

    def __init__(self, val: Tensor, spans: list[tuple[int, int, int]], width: int, device: torch.device):
        # spans: (first input position, chunk lo, chunk hi) per lane; inputs val[w0 : hi]
        n_targets = val.numel() - 1
        w0 = torch.tensor([s[0] for s in spans], device=device)[:, None]
        clo = torch.tensor([s[1] for s in spans], device=device)[:, None]
        chi = torch.tensor([s[2] for s in spans], device=device)[:, None]
        pos = torch.arange(width + 1, device=device)[None, :]
        idx = w0 + pos
        seg = val[idx.clamp(max=n_targets)].to(torch.int64)
        real = idx[:, :-1] < chi  # positions of this lane's own tokens; the rest is padding (id 0)
        self.x = torch.where(real, seg[:, :-1], 0)
        self.y = torch.where(real, seg[:, 1:], 0)
        self.t_idx = idx[:, :-1]
        self.mask = real & (self.t_idx >= clo)
        self.count = (chi - clo).to(torch.float32)  # chunk targets per lane


def run_doc_family(model: nn.Module, val_d: Tensor, luts_d, seq_len: int, tcfg: TTTConfig, ecfg: EvalConfig,
                   sums: Sums, losses: Tensor | None, *, hooks: Any = None, autocast: str = "auto",
                   phase_step: PhaseStep | None = None, log: Callable[[str], None] | None = None,
                   log_every: int = 100) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score every target once, document by document (module docstring), adding to ``sums``
    (and ``losses``). The caller owns the model's state: eval mode, base weights frozen, and
    their restoration. Returns the per-segment rows and extra stats."""
    t0 = time.perf_counter()
    N = val_d.numel() - 1
    rank, world = dist.rank_world()
    device = sums.t.device
    starts = doc_starts(val_d, model.cfg.bos_id)
    docs = doc_ranges(starts, N)
    phased = tcfg.ttt_family.startswith("phased")
    segs = phase_segments(tcfg.ttt_phase_docs if phased else (), starts, N)
    streaming = tcfg.ttt_scoring == "streaming"
    lanes = max(1, min(tcfg.ttt_lora_batch_docs, len(docs)))
    lora = LoRA(model, tcfg.ttt_lora_targets, tcfg.ttt_lora_rank, tcfg.ttt_lora_alpha, lanes,
                tcfg.ttt_lora_warm_start_a)
    train_on = tcfg.ttt_lora_steps > 0 and tcfg.ttt_lora_lr > 0
    state = {"step": 0, "batch": 0, "adapt_s": 0.0}
    rows: list[dict[str, Any]] = []
    d_lo = 0
    for k, (lo, hi, d_hi) in enumerate(segs):
        ts = time.perf_counter()
        before = sums.t.clone()
        a, b = dist.shard_range(d_hi - d_lo, rank, world)
        mine = sorted(range(d_lo + a, d_lo + b), key=lambda d: docs[d][0] - docs[d][1])  # longest first, stable
        batches = doc_batches(mine, lanes)
        for bi, batch in enumerate(batches):
            _run_batch(model, lora, val_d, luts_d, [docs[d] for d in batch], seq_len, tcfg, streaming, train_on,
                       sums, losses, hooks, autocast, state, device)
            if log is not None and (bi % max(1, log_every) == 0 or bi == len(batches) - 1):
                nll, _, nb = (float(v) for v in sums.t)  # this rank's running sums
                log(f"ttt_batch:{bi + 1}/{len(batches)} segment:{k + 1}/{len(segs)} running_bpb_local:"
                    f"{nll / (math.log(2) * max(nb, 1)):.6f} elapsed_s:{time.perf_counter() - t0:.1f}")
        delta = dist.all_reduce_sum(sums.t - before)
        score_s = time.perf_counter() - ts
        tt = time.perf_counter()
        phase_losses = phase_step(k, hi) if (phase_step is not None and k < len(segs) - 1) else []
        train_s = time.perf_counter() - tt
        nll_c, tok_c, byt_c = float(delta[0]), int(round(float(delta[1]))), int(round(float(delta[2])))
        rows.append({"chunk": k, "docs": d_hi - d_lo, "phase_docs": d_hi, "lr": tcfg.ttt_lora_lr, "tokens": tok_c,
                     "bytes": byt_c, "nll": nll_c, "bpb": nll_c / (math.log(2) * byt_c) if byt_c else float("nan"),
                     "train_loss_first": phase_losses[0] if phase_losses else None,
                     "train_loss_last": phase_losses[-1] if phase_losses else None, "reset": True,
                     "score_seconds": score_s, "train_seconds": train_s})
        if log is not None and k < len(segs) - 1:
            log(f"ttt_phase:{k + 1}/{len(segs) - 1} docs:{d_hi} prefix_targets:{hi} segment_bpb:{rows[-1]['bpb']:.6f} "
                f"train_s:{train_s:.2f}")
        d_lo = d_hi
    extra = {"documents": len(docs), "lora_params_per_doc": sum(p[0].numel() for p in lora.parameters()),
             "lockstep_steps": state["step"], "adapt_seconds": state["adapt_s"],
             "phases": [{"docs": d, "prefix_targets": h} for (_, h, d) in segs[:-1]]}
    return rows, extra


def _run_batch(model: nn.Module, lora: LoRA, val_d: Tensor, luts_d, docs: list[tuple[int, int]], seq_len: int,
               tcfg: TTTConfig, streaming: bool, train_on: bool, sums: Sums, losses: Tensor | None, hooks: Any,
               autocast: str, state: dict[str, Any], device: torch.device) -> None:
    """One batch of documents, lane j = docs[j] (module docstring, steps 1-2)."""
    lora.reset()
    opt = lora.make_optimizer(tcfg.ttt_lora_optimizer, tcfg.ttt_lora_lr, tcfg.ttt_lora_beta1, tcfg.ttt_lora_beta2,
                              tcfg.ttt_lora_wd)
    if hooks is not None and hasattr(hooks, "on_docs"):
        hooks.on_docs(state["batch"], list(docs))
    chunks = [doc_chunks(lo, hi, tcfg.ttt_lora_chunk_tokens) for lo, hi in docs]
    cache = KVCache(len(model.blocks), seq_len) if streaming else None
    prev: list[int] = list(range(len(docs)))
    with lora:
        for ci in range(max(len(c) for c in chunks)):
            active = [j for j in range(len(docs)) if ci < len(chunks[j])]
            if cache is not None and active != prev:
                _keep_rows(cache, [prev.index(j) for j in active])
            prev = active
            lora.active = None if len(active) == lora.lanes else active
            if streaming:  # the chunk's own tokens, continuing the row's stream
                spans = [(chunks[j][ci][0], chunks[j][ci][0], chunks[j][ci][1]) for j in active]
                width = max(hi - lo for lo, hi in (chunks[j][ci] for j in active))
            else:  # a window of up to seq_len document tokens ending at the chunk's end
                spans = [(max(docs[j][0], chunks[j][ci][1] - seq_len),) + chunks[j][ci] for j in active]
                width = max(s[2] - s[0] for s in spans)
            bt = _Batch(val_d, spans, width, device)
            trains = [i for i, j in enumerate(active) if ci < len(chunks[j]) - 1] if train_on else []
            before = _cache_state(cache) if cache is not None else None
            with torch.set_grad_enabled(bool(trains)), dist.autocast_context(device, autocast):
                nll = token_nll(model, bt.x, bt.y, cache).float()
            after = _cache_state(cache) if cache is not None else None
            score = nll.detach()
            sums.add(score, target_byte_counts(bt.x, bt.y, luts_d), bt.mask)
            if losses is not None:
                losses[bt.t_idx[bt.mask]] = score[bt.mask]
            if hooks is not None:
                hooks.on_score(state["step"], [chunks[j][ci] for j in active])
            if trains:
                ta = time.perf_counter()
                w = torch.zeros(len(active), 1, device=device)
                w[trains] = 1.0
                weight = torch.where(bt.mask, w / bt.count, 0.0)  # per-lane chunk mean, lanes that train
                for s in range(tcfg.ttt_lora_steps):
                    if s > 0:
                        if cache is not None:
                            _set_cache(cache, before)
                        with dist.autocast_context(device, autocast):
                            nll = token_nll(model, bt.x, bt.y, cache).float()
                    if hooks is not None:
                        hooks.on_train(state["step"], s, state["batch"], [chunks[active[i]][ci] for i in trains])
                    opt.zero_grad(set_to_none=True)
                    (nll * weight).sum().backward()
                    opt.step()
                    if hooks is not None:
                        gn = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in lora.parameters()]))
                        hooks.on_step(state["step"], s, state["batch"], tcfg.ttt_lora_lr, float(gn))
                state["adapt_s"] += time.perf_counter() - ta
            if cache is not None:
                _set_cache(cache, after, detach=True)
            state["step"] += 1
    lora.active = None
    state["batch"] += 1
