"""Documents and phases of the validation stream: pure planning for the TTT families.

Conventions (those of gepalib.eval.windows): target i is ``val[i+1]`` predicted from
``val[:i+1]``. A **document** starts at position 0 and at every later position p with
``val[p] == bos_id``; document k covers token positions [s_k, s_{k+1}) and owns the targets
with the same indices, i.e. the targets whose input token val[i] lies in it. Its last target
predicts the next document's BOS token from this document's text only, so scoring every
document with document-local context scores every target of the stream exactly once.

A **phase boundary** of b documents (``ttt_phase_docs``) is the target index s_b: the
documents before it are the prefix [0, s_b) that a phased family scores first and then
trains on (see docs/evaluation.md).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor


def doc_starts(val_tokens: Tensor, bos_id: int) -> np.ndarray:
    """First target index of every document: 0 and every p in (0, N) with val[p] == bos_id."""
    ids = val_tokens.detach().cpu().numpy() if isinstance(val_tokens, torch.Tensor) else np.asarray(val_tokens)
    n_targets = ids.size - 1
    bos = np.flatnonzero(ids[:n_targets] == bos_id)
    return np.concatenate(([0], bos[bos > 0])).astype(np.int64)


def doc_ranges(starts: np.ndarray, n_targets: int) -> list[tuple[int, int]]:
    """Target range [lo, hi) of every document."""
    ends = np.append(starts[1:], n_targets)
    return [(int(a), int(b)) for a, b in zip(starts, ends)]


def phase_boundaries(phase_docs: Sequence[int], n_docs: int) -> list[int]:
    """The boundaries (in documents) that fall inside the stream: 0 < b < n_docs, increasing.
    A boundary at or beyond the last document has nothing left to score after it."""
    return [int(b) for b in phase_docs if 0 < int(b) < n_docs]


def phase_segments(phase_docs: Sequence[int], starts: np.ndarray, n_targets: int) -> list[tuple[int, int, int]]:
    """The scoring segments of a phased family as (lo, hi, docs scored at hi) target ranges:
    [0, s_b1), [s_b1, s_b2), ..., [s_bm, N); the last one's docs count is len(starts)."""
    bounds = phase_boundaries(phase_docs, len(starts))
    lo = [0] + [int(starts[b]) for b in bounds]
    hi = lo[1:] + [int(n_targets)]
    return [(a, b, d) for a, b, d in zip(lo, hi, bounds + [len(starts)])]


def prefix_train_seqs(prefix_hi: int, seq_len: int) -> list[tuple[int, int]]:
    """Training sequences over the scored prefix, targets [0, prefix_hi): (a, seq_len) for
    a = 0, T, 2T, ... with a + T <= prefix_hi (inputs val[a:a+T], targets val[a+1:a+T+1]; a
    remainder shorter than T is not trained on). They run across document boundaries, as
    training batches do."""
    return [(a, seq_len) for a in range(0, int(prefix_hi) - seq_len + 1, seq_len)]


def doc_chunks(lo: int, hi: int, chunk_tokens: int) -> list[tuple[int, int]]:
    """A document's targets [lo, hi) cut into consecutive chunks of ``chunk_tokens`` (the last shorter)."""
    return [(a, min(a + chunk_tokens, hi)) for a in range(lo, hi, chunk_tokens)]


def doc_batches(docs: Sequence[int], batch_docs: int) -> list[list[int]]:
    """Consecutive documents in batches of at most ``batch_docs`` (one adapter each)."""
    docs = list(docs)
    return [docs[i:i + batch_docs] for i in range(0, len(docs), batch_docs)]
