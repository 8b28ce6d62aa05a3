"""Per-document score-first scoring: the ``"document"`` context of the TTT loop (families
``lora_doc`` and ``phased+lora_doc``, gepalib.eval.ttt_families).

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
batched arithmetic is per row. The loop hands :class:`DocScorer` one segment at a time (the
whole stream for ``lora_doc``; for ``phased+lora_doc`` the segments ending at the
``ttt_phase_docs`` boundaries, after each of which the family's pass over the scored prefix
trains the base weights, with the adapters detached). With several processes each rank
scores a contiguous share of every segment's documents.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gepalib import dist
from gepalib.attention import KVCache
from gepalib.eval.lora import LoRA, token_nll
from gepalib.eval.phased import doc_batches, doc_chunks, doc_ranges, doc_starts
from gepalib.eval.windows import target_byte_counts


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


class DocScorer:
    """The loop's scorer for ``context = "document"`` families: :meth:`score` scores a segment's
    documents (module docstring) and adds them to ``run.sums`` (and ``run.losses``). The loop
    owns the model's state: eval mode, the base weights' gradient flags, their restoration."""

    fresh = True  # every document starts from a fresh adapter: each segment row says reset

    def __init__(self, run: Any, segments: list[tuple[int, int]]):
        t = run.tcfg
        self.run, self.n_segments = run, len(segments)
        self.starts = doc_starts(run.val, run.model.cfg.bos_id)
        self.docs = doc_ranges(self.starts, run.n_targets)
        self.lanes = max(1, min(t.ttt_lora_batch_docs, len(self.docs)))
        self.lora = LoRA(run.model, t.ttt_lora_targets, t.ttt_lora_rank, t.ttt_lora_alpha, self.lanes,
                         t.ttt_lora_warm_start_a)
        self.train_on = t.ttt_lora_steps > 0 and t.ttt_lora_lr > 0
        self.step = self.batch = 0  # lockstep steps and document batches so far (the hooks' numbering)
        self.adapt_s = 0.0
        self.seen: list[tuple[int, int, int]] = []  # (first document, end document, end target) per segment

    def score(self, k: int, lo: int, hi: int) -> None:
        """Segment k = targets [lo, hi): this rank's contiguous share of its documents, longest
        first, in batches of ``lanes``."""
        d_lo, d_hi = (int(d) for d in np.searchsorted(self.starts, [lo, hi]))
        self.seen.append((d_lo, d_hi, hi))
        rank, world = dist.rank_world()
        a, b = dist.shard_range(d_hi - d_lo, rank, world)
        docs = self.docs
        mine = sorted(range(d_lo + a, d_lo + b), key=lambda d: docs[d][0] - docs[d][1])  # longest first, stable
        batches = doc_batches(mine, self.lanes)
        log = self.run.log
        for bi, batch in enumerate(batches):
            self._run_batch([docs[d] for d in batch])
            if log is not None and (bi % max(1, self.run.log_every) == 0 or bi == len(batches) - 1):
                nll, _, nb = (float(v) for v in self.run.sums.t)  # this rank's running sums
                log(f"ttt_batch:{bi + 1}/{len(batches)} segment:{k + 1}/{self.n_segments} running_bpb_local:"
                    f"{nll / (math.log(2) * max(nb, 1)):.6f} elapsed_s:{time.perf_counter() - self.run.t0:.1f}")

    def row(self, k: int) -> dict[str, Any]:
        d_lo, d_hi, _ = self.seen[k]
        return {"docs": d_hi - d_lo, "phase_docs": d_hi}

    def log_segment(self, k: int, row: dict[str, Any]) -> None:
        if self.run.log is not None and k < self.n_segments - 1:
            _, d_hi, hi = self.seen[k]
            self.run.log(f"ttt_phase:{k + 1}/{self.n_segments - 1} docs:{d_hi} prefix_targets:{hi} "
                         f"segment_bpb:{row['bpb']:.6f} train_s:{row['train_seconds']:.2f}")

    def extra(self) -> dict[str, Any]:
        return {"documents": len(self.docs), "lora_params_per_doc": sum(p[0].numel() for p in self.lora.parameters()),
                "lockstep_steps": self.step, "adapt_seconds": self.adapt_s,
                "phases": [{"docs": d, "prefix_targets": h} for _, d, h in self.seen[:-1]]}

    def _run_batch(self, docs: list[tuple[int, int]]) -> None:
        """One batch of documents, lane j = docs[j] (module docstring, steps 1-2)."""
        run, t, lora = self.run, self.run.tcfg, self.lora
        lora.reset()
        opt = lora.make_optimizer(t.ttt_lora_optimizer, t.ttt_lora_lr, t.ttt_lora_beta1, t.ttt_lora_beta2,
                                  t.ttt_lora_wd)
        if run.hooks is not None and hasattr(run.hooks, "on_docs"):
            run.hooks.on_docs(self.batch, list(docs))
        chunks = [doc_chunks(lo, hi, t.ttt_lora_chunk_tokens) for lo, hi in docs]
        cache = KVCache(len(run.model.blocks), run.seq_len) if t.ttt_scoring == "streaming" else None
        prev: list[int] = list(range(len(docs)))
        with lora:
            for ci in range(max(len(c) for c in chunks)):
                active = [j for j in range(len(docs)) if ci < len(chunks[j])]
                if cache is not None and active != prev:
                    _keep_rows(cache, [prev.index(j) for j in active])
                prev = active
                lora.active = None if len(active) == lora.lanes else active
                self._lockstep([docs[j] for j in active], [chunks[j][ci] for j in active],
                               [i for i, j in enumerate(active) if ci < len(chunks[j]) - 1], cache, opt)
                self.step += 1
        lora.active = None
        self.batch += 1

    def _lockstep(self, docs: list[tuple[int, int]], spans: list[tuple[int, int]], trains: list[int],
                  cache: KVCache | None, opt: torch.optim.Optimizer) -> None:
        """Chunk ``spans[i]`` of each active lane i (document ``docs[i]``): score it, then learn from
        it in the lanes ``trains`` (those with a chunk left)."""
        run = self.run
        if cache is not None:  # the chunk's own tokens, continuing the row's stream
            lanes = [(lo, lo, hi) for lo, hi in spans]
            width = max(hi - lo for lo, hi in spans)
        else:  # a window of up to seq_len document tokens ending at the chunk's end
            lanes = [(max(d[0], hi - run.seq_len), lo, hi) for d, (lo, hi) in zip(docs, spans)]
            width = max(s[2] - s[0] for s in lanes)
        bt = _Batch(run.val, lanes, width, run.device)
        trains = trains if self.train_on else []
        before = _cache_state(cache) if cache is not None else None
        with torch.set_grad_enabled(bool(trains)), dist.autocast_context(run.device, run.autocast):
            nll = token_nll(run.model, bt.x, bt.y, cache).float()
        after = _cache_state(cache) if cache is not None else None
        score = nll.detach()
        run.sums.add(score, target_byte_counts(bt.x, bt.y, run.luts), bt.mask)
        if run.losses is not None:
            run.losses[bt.t_idx[bt.mask]] = score[bt.mask]
        if run.hooks is not None:
            run.hooks.on_score(self.step, list(spans))
        if trains:
            self._learn(bt, nll, spans, trains, cache, before, opt)
        if cache is not None:
            _set_cache(cache, after, detach=True)

    def _learn(self, bt: _Batch, nll: Tensor, spans: list[tuple[int, int]], trains: list[int], cache: KVCache | None,
               before: tuple[list, Tensor | None] | None, opt: torch.optim.Optimizer) -> None:
        """``ttt_lora_steps`` optimizer steps on the just-scored chunk's mean nll of every lane in
        ``trains``; the first on the scoring pass's own graph, the others on fresh passes."""
        run, t = self.run, self.run.tcfg
        ta = time.perf_counter()
        w = torch.zeros(len(spans), 1, device=run.device)
        w[trains] = 1.0
        weight = torch.where(bt.mask, w / bt.count, 0.0)  # per-lane chunk mean, lanes that train
        for s in range(t.ttt_lora_steps):
            if s > 0:
                if cache is not None:
                    _set_cache(cache, before)
                with dist.autocast_context(run.device, run.autocast):
                    nll = token_nll(run.model, bt.x, bt.y, cache).float()
            if run.hooks is not None:
                run.hooks.on_train(self.step, s, self.batch, [spans[i] for i in trains])
            opt.zero_grad(set_to_none=True)
            (nll * weight).sum().backward()
            opt.step()
            if run.hooks is not None:
                gn = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.lora.parameters()]))
                run.hooks.on_step(self.step, s, self.batch, t.ttt_lora_lr, float(gn))
        self.adapt_s += time.perf_counter() - ta
