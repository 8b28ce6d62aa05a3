"""Streaming evaluation: banded causal attention over the whole validation stream.

Definition (the "banded model"): run the GPT over the entire stream as one sequence,
except that at **every layer** token t attends to exactly the tokens t-W+1 .. t
(W = the window = eval seq len; fewer at the start of the stream). Everything else is the
model's own per-token computation: the bigram hash and SmearGate see the true previous
token(s); resid_mix/x0, skips, value embeddings and XSA are per token.

Differences from the sliding window (see docs/evaluation.md), where every window restarts:
* RoPE: attention scores depend only on relative offsets (< W, as in training), so it is
  the same rotation; positions are re-based per step to keep angles small.
* In a sliding window, the token at window position 0 has no predecessor (bigram hash
  restart, smear with e_{-1} = 0) and no earlier keys; here no token ever "starts" except
  the stream's first, so there is no fixed attention-sink position at the window start.
* Information propagates across layers: a token's layer-l state depends on tokens up to
  (l+1)(W-1) back (L(W-1)+2 including the bigram/smear inputs), whereas a sliding window
  sees at most its own W tokens. Each attention still sees exactly W-1 previous tokens.

Implementation: the model's own forward with a :class:`gepalib.attention.KVCache` (the last
W-1 keys and values per layer, the last two ids); the stream advances ``block`` tokens per
step. To run segments in parallel (``lanes``, and ranks), a segment starting at target a is
warmed up from token max(0, a - prefix); with the default prefix L(W-1)+2 (the receptive
field above) every scored token's result equals the sequential stream's in exact
arithmetic. Cost per scored token is about that of the non-overlapping evaluation (the
attention covers up to W + W/4 keys instead of <= W), plus the warm-up fraction.
"""
from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from gepalib import dist
from gepalib.attention import KVCache
from gepalib.eval.windows import (EvalResult, Sums, check_val_tokens, eval_mode, make_result, model_device,
                                  target_byte_counts)
from gepalib.progress import track


def exact_prefix(model: nn.Module, window: int) -> int:
    """Warm-up length that makes segmenting exact: L*(W-1) attention hops + 2 (bigram, smear)."""
    return len(model.blocks) * (window - 1) + 2


def auto_lanes(n_targets: int, prefix: int, max_lanes: int) -> int:
    """Most lanes (<= max_lanes) that keep the warm-up under ~1/4 of the scored tokens."""
    if prefix <= 0:
        return max(1, min(max_lanes, n_targets))
    return max(1, min(max_lanes, n_targets // (4 * prefix)))


def score_range(model: nn.Module, val_tokens: Tensor, luts_d, lo: int, hi: int, window: int, sums: Sums, *,
                lanes: int = 0, block: int = 0, prefix: int = -1, max_lanes: int = 32, autocast: str = "auto",
                token_losses: Tensor | None = None, progress: str = "off") -> None:
    """Score targets [lo, hi) with the banded model; add to ``sums`` (caller: eval/inference mode,
    ``val_tokens`` on the model's device, so that the loop never waits for an accelerator).

    The range is cut into ``lanes`` contiguous segments run side by side as a batch; each is
    warmed up over ``prefix`` earlier tokens (-1: :func:`exact_prefix`). ``progress``: rank 0's
    bar or log lines over the steps (gepalib.progress)."""
    if not lo < hi:
        return
    if window <= 0:
        raise ValueError(f"streaming window must be positive, got {window}")
    N = val_tokens.numel() - 1
    device = sums.t.device
    prefix = exact_prefix(model, window) if prefix < 0 else prefix
    block = window if block <= 0 else block
    n = hi - lo
    lanes = auto_lanes(n, prefix, max_lanes) if lanes <= 0 else min(lanes, n)
    base, rem = divmod(n, lanes)
    seg_lo = [lo + i * base + min(i, rem) for i in range(lanes)]
    seg_hi = [s + base + (1 if i < rem else 0) for i, s in enumerate(seg_lo)]
    start = [max(0, s - prefix) for s in seg_lo]
    length = max(h - s for s, h in zip(start, seg_hi))
    val = val_tokens.to(device)  # a no-op for the callers here
    start_t, lo_t, hi_t = (torch.tensor(v, device=device)[:, None] for v in (start, seg_lo, seg_hi))
    cache = KVCache(len(model.blocks), window)
    for j0 in track(range(0, length, block), "eval_streaming", unit="step", mode=progress):
        j1 = min(j0 + block, length)
        pos = start_t + torch.arange(j0, j1 + 1, device=device)[None, :]  # token positions incl. the last target
        seg = val[pos.clamp(max=N)].to(torch.int64)
        ids, tgt = seg[:, :-1], seg[:, 1:]
        with dist.autocast_context(device, autocast):
            nll = model(ids, tgt, reduction="none", cache=cache).float()
        t_idx = pos[:, :-1]  # target indices
        mask = (t_idx >= lo_t) & (t_idx < hi_t)
        sums.add(nll, target_byte_counts(ids, tgt, luts_d), mask)
        if token_losses is not None:
            token_losses[t_idx[mask]] = nll[mask]


def eval_streaming(model: nn.Module, val_tokens: Tensor, luts, window: int, *, lanes: int = 0, block: int = 0,
                   prefix: int = -1, max_lanes: int = 32, autocast: str = "auto",
                   return_token_losses: bool = False, progress: str = "auto") -> EvalResult:
    """Every target scored once by the banded model (module docstring). Targets are split
    contiguously across ranks, then into lanes; fp64 sums all-reduced. ``progress``: rank 0's bar
    or log lines (gepalib.progress; ``off``: none)."""
    t0 = time.perf_counter()
    check_val_tokens(val_tokens, getattr(model.cfg, "vocab_size", None))
    N = val_tokens.numel() - 1
    device = model_device(model)
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if dist.active() else (0, 1)
    lo, hi = dist.shard_range(N, rank, world)
    sums = Sums(device)
    losses = torch.zeros(N, dtype=torch.float32, device=device) if return_token_losses else None
    with eval_mode(model):
        score_range(model, val_tokens.to(device), luts.to(device), lo, hi, window, sums, lanes=lanes, block=block,
                    prefix=prefix, max_lanes=max_lanes, autocast=autocast, token_losses=losses,
                    progress=progress)
    nll_sum, tokens, nbytes = sums.reduced()
    if losses is not None:
        losses = dist.all_reduce_sum(losses).cpu()
    prefix_used = exact_prefix(model, window) if prefix < 0 else prefix
    return make_result(nll_sum, tokens, nbytes, time.perf_counter() - t0, token_losses=losses,
                       extra={"window": window, "prefix": prefix_used})
