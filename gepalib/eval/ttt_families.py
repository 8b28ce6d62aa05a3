"""The TTT families (``ttt_family``) as adapters of the one score-first loop of
:func:`gepalib.eval.ttt.run_ttt` (docs/evaluation.md).

The loop cuts the targets into the segments an adapter names, scores segment k, and only then
calls ``adapter.learn(k, lo, hi)``, which may train on scored targets only (every target
< hi). An adapter is a small class (:class:`Adapter`), registered by name in
:data:`FAMILIES`:

* ``segments()``: the target ranges [lo, hi) scored in turn; they tile [0, N).
* ``context``: how the loop scores a segment: ``"stream"`` (the current weights over the
  stream: sliding windows by first scored target, or the banded model) or ``"document"``
  (gepalib.eval.doc_ttt: each document with its own LoRA adapter, score-first per chunk).
* ``prepare()``: once, before segment 0 (which parameters need gradients, the optimizer).
* ``reset(k, lo)``: before segment k is scored; True when the weights were just restored.
* ``lr(k)``: the learning rate the segment's row reports.
* ``learn(k, lo, hi)``: after segment k is scored, never after the last; returns the losses
  of its optimizer steps.
* ``trained_params()``: how many base parameters it trains.

The loop owns the rest: scoring, the sums, the hooks, timing, the per-segment rows, logging
and putting the weights and gradient flags back. A new family is an Adapter subclass, a line
in FAMILIES and its name in gepalib.validation.TTT_FAMILIES (a test checks that the two agree
and runs the legality tests on every registered family).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from gepalib.config import EvalConfig, TTTConfig
from gepalib.eval.phased import doc_starts, phase_segments, prefix_train_seqs
from gepalib.eval.ttt_train import make_optimizer, train_steps, trainable_named_params
from gepalib.eval.windows import Sums


@dataclass
class TTTRun:
    """What the loop hands its adapter and scorer: the model, the stream on the model's device,
    the settings, the running sums and the caller's hooks and log."""

    model: nn.Module
    val: Tensor  # the validation tokens, on the model's device
    n_targets: int
    seq_len: int
    tcfg: TTTConfig
    ecfg: EvalConfig
    device: torch.device
    luts: Any  # the byte tables, on the model's device
    sums: Sums
    losses: Tensor | None  # per-target losses, when the caller asked for them
    autocast: str
    hooks: Any
    fwd: nn.Module  # the module that computes the training loss (gepalib.eval.ttt_train.ttt_forward)
    log: Callable[[str], None] | None
    log_every: int
    t0: float
    snapshot: dict[str, Tensor] | None = None  # the pre-TTT weights, when restore or a reset needs them


# ---------------------------------------------------------------------------
# Chunks of the ``full`` family (pure planning)


def n_chunks_for(n_targets: int, chunk_tokens: int) -> int:
    if chunk_tokens <= 0:
        raise ValueError(f"ttt_chunk_tokens must be positive, got {chunk_tokens}")
    return -(-int(n_targets) // int(chunk_tokens))


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


class DocIndex:
    """Document ids of token positions: doc(j) = number of BOS tokens at positions <= j."""

    def __init__(self, val_tokens: Tensor, bos_id: int):
        self.bos_pos = np.flatnonzero(val_tokens.detach().cpu().numpy() == bos_id)

    def doc(self, j: int) -> int:
        return int(np.searchsorted(self.bos_pos, j, side="right"))


# ---------------------------------------------------------------------------
# The adapters


class Adapter:
    """The interface (module docstring) and its defaults: no reset, nothing learned, and the base
    weights outside the frozen blocks (``params``) trained by :meth:`train` through one optimizer,
    created once so that its state carries over. A family names its segments and LR."""

    context = "stream"
    needs_snapshot = False  # the loop keeps the pre-TTT weights even when it does not restore them

    def __init__(self, run: TTTRun):
        self.run = run
        self.params = [p for _, p in trainable_named_params(run.model, run.tcfg.ttt_freeze_blocks)]
        self.opt: torch.optim.Optimizer | None = None

    def segments(self) -> list[tuple[int, int]]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Gradients for ``params`` only, and in the document context none while scoring (its LoRA
        adapters train with gradients on: the base needs them only inside :meth:`train`)."""
        ids = {id(p) for p in self.params}
        for p in self.run.model.parameters():
            p.requires_grad_(id(p) in ids and self.context == "stream")
        self.opt = make_optimizer(self.params, self.run.tcfg) if self.params else None

    def reset(self, k: int, lo: int) -> bool:
        return False

    def lr(self, k: int) -> float:
        raise NotImplementedError

    def learn(self, k: int, lo: int, hi: int) -> list[float]:
        return []

    def trained_params(self) -> int:
        return sum(p.numel() for p in self.params)

    def train(self, k: int, seqs: list[tuple[int, int]], lr: float, tcfg: TTTConfig) -> list[float]:
        """The training pass (gepalib.eval.ttt_train.train_steps) over ``seqs`` for segment k;
        ``tcfg`` gives the epochs."""
        r = self.run
        for p in self.params:
            p.requires_grad_(True)
        try:
            return train_steps(r.model, r.val, seqs, self.params, self.opt, lr, tcfg, r.device, r.autocast, k,
                               r.hooks, r.fwd)
        finally:
            for p in self.params:
                p.requires_grad_(self.context == "stream")


class Full(Adapter):
    """The submission's: chunks of ``ttt_chunk_tokens``; after chunk k, ``ttt_epochs`` passes over
    its aligned sequences at the chunk's LR (:func:`ttt_lr`). ``ttt_reset_per_doc``: before a
    chunk whose first target token lies in another document than the first sequence trained on
    since the last reset, the pre-TTT weights and a fresh optimizer come back."""

    def __init__(self, run: TTTRun):
        super().__init__(run)
        t = run.tcfg
        self.n = n_chunks_for(run.n_targets, t.ttt_chunk_tokens)
        self.needs_snapshot = t.ttt_reset_per_doc
        self.docs = DocIndex(run.val, run.model.cfg.bos_id) if t.ttt_reset_per_doc else None
        self.adapted_from: int | None = None  # first input token position trained on since the last reset

    def segments(self) -> list[tuple[int, int]]:
        return [chunk_bounds(c, self.run.n_targets, self.run.tcfg.ttt_chunk_tokens) for c in range(self.n)]

    def reset(self, k: int, lo: int) -> bool:
        if self.docs is None or self.adapted_from is None or self.docs.doc(self.adapted_from) == self.docs.doc(lo + 1):
            return False
        self.run.model.load_state_dict(self.run.snapshot)  # the pre-TTT weights, and a fresh optimizer
        self.opt = make_optimizer(self.params, self.run.tcfg)
        self.adapted_from = None
        return True

    def lr(self, k: int) -> float:
        t = self.run.tcfg
        return ttt_lr(k, self.n, t.ttt_lr, t.ttt_warmup_div)

    def learn(self, k: int, lo: int, hi: int) -> list[float]:
        t = self.run.tcfg
        seqs = chunk_train_seqs(k, self.run.n_targets, t.ttt_chunk_tokens, self.run.seq_len) if t.ttt_epochs else []
        if not seqs:
            return []
        losses = self.train(k, seqs, self.lr(k), t)
        if self.adapted_from is None:
            self.adapted_from = seqs[0][0]
        return losses


class Phased(Adapter):
    """Segments end at the ``ttt_phase_docs`` boundaries (gepalib.eval.phased); after each one
    but the last, ``ttt_phase_epochs`` passes over the whole scored prefix [0, hi) at the
    constant ``ttt_phase_lr``."""

    def __init__(self, run: TTTRun):
        super().__init__(run)
        t = run.tcfg
        self.segs = phase_segments(t.ttt_phase_docs, doc_starts(run.val, run.model.cfg.bos_id), run.n_targets)
        self.phase_cfg = dataclasses.replace(t, ttt_epochs=t.ttt_phase_epochs)

    def segments(self) -> list[tuple[int, int]]:
        return [(lo, hi) for lo, hi, _ in self.segs]

    def lr(self, k: int) -> float:
        return self.run.tcfg.ttt_phase_lr

    def learn(self, k: int, lo: int, hi: int) -> list[float]:
        seqs = prefix_train_seqs(hi, self.run.seq_len)
        if not seqs or self.phase_cfg.ttt_epochs == 0:
            return []
        return self.train(k, seqs, self.run.tcfg.ttt_phase_lr, self.phase_cfg)


class LoraDoc(Adapter):
    """Per-document LoRA only: the whole stream is one segment, scored document by document
    (each document adapts its own LoRA adapter score-first, gepalib.eval.doc_ttt); the base
    weights stay frozen."""

    context = "document"

    def __init__(self, run: TTTRun):
        super().__init__(run)  # (which checks ttt_freeze_blocks, as for every family)
        self.params = []

    def segments(self) -> list[tuple[int, int]]:
        return [(0, self.run.n_targets)]

    def lr(self, k: int) -> float:
        return self.run.tcfg.ttt_lora_lr


class PhasedLoraDoc(Phased):
    """The phases of ``phased`` around per-document LoRA scoring: the base's pass over the
    scored prefix runs with the adapters detached."""

    context = "document"

    def lr(self, k: int) -> float:
        return self.run.tcfg.ttt_lora_lr


FAMILIES: dict[str, type[Adapter]] = {
    "full": Full,
    "lora_doc": LoraDoc,
    "phased": Phased,
    "phased+lora_doc": PhasedLoraDoc,
}
