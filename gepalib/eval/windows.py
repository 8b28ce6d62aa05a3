"""Validation scoring in bits per byte (see docs/data.md for the byte rule, docs/evaluation.md).

Conventions used throughout (and by gepalib.eval.ttt / gepalib.eval.streaming):

* ``val_tokens`` is a 1-D int64 tensor of N+1 tokens; **target i** (0 <= i < N) is
  ``val_tokens[i+1]`` predicted from ``val_tokens[:i+1]``; its "previous token" for the
  byte count is ``val_tokens[i]``.
* Every scored target contributes its fp32 nll (natural log) and
  ``bytes_i = B[t_i] + [L[t_i] and not Z[p_i]]`` (gepalib.bpb.target_bytes); the loss,
  token and byte sums are accumulated in fp64 and all-reduced across ranks, and
  ``val_bpb = sum nll / (ln 2 * sum bytes)``.

Two evaluators live here:

* :func:`eval_nonoverlapping` -- consecutive windows of ``seq_len`` (the periodic
  validation of training and the "int6 roundtrip" stage).
* :func:`eval_sliding` -- windows of ``seq_len`` every ``stride`` tokens, each
  scoring only its last ``stride`` targets (the first window scores all of its targets),
  planned by :func:`plan_sliding_windows`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from gepalib import dist
from gepalib.progress import track

LN2 = math.log(2.0)


# ---------------------------------------------------------------------------
# Results


@dataclass
class EvalResult:
    """One evaluation: mean nll (nats/token), bits per byte, counts and wall time.

    ``token_losses`` (optional, float32 [N], CPU) holds each target's nll from the first
    window that scored it (every evaluator here scores every target at least once); ``extra`` holds evaluator-specific stats
    (e.g. TTT's per-chunk rows)."""

    val_loss: float
    val_bpb: float
    tokens: int
    bytes: int
    seconds: float
    token_losses: Tensor | None = field(default=None, repr=False)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def as_row(self) -> dict[str, Any]:
        """The fields RunDir.record_stage takes."""
        return {"val_bpb": self.val_bpb, "val_loss": self.val_loss, "tokens": self.tokens,
                "bytes": self.bytes, "seconds": self.seconds}

    def log_line(self, prefix: str = "") -> str:
        p = f"{prefix}_" if prefix else ""
        return (f"{p}val_loss:{self.val_loss:.6f} {p}val_bpb:{self.val_bpb:.8f} {p}tokens:{self.tokens} "
                f"{p}bytes:{self.bytes} {p}seconds:{self.seconds:.2f}")


class Sums:
    """fp64 accumulators of (nll, tokens, bytes) on one device; all-reduced by :meth:`result`."""

    def __init__(self, device: torch.device):
        self.t = torch.zeros(3, dtype=torch.float64, device=device)

    def add(self, nll: Tensor, nbytes: Tensor, mask: Tensor | None = None) -> None:
        """nll: fp32 per-token losses; nbytes: their int64 byte counts; only the entries where
        the bool ``mask`` holds count (selected arithmetically: no host sync on an accelerator)."""
        if mask is None:
            self.t[0] += nll.double().sum()
            self.t[1] += nll.numel()
            self.t[2] += nbytes.double().sum()
        else:
            self.t[0] += torch.where(mask, nll.double(), 0.0).sum()
            self.t[1] += mask.sum()
            self.t[2] += torch.where(mask, nbytes.double(), 0.0).sum()

    def reduced(self) -> tuple[float, int, int]:
        t = dist.all_reduce_sum(self.t.clone())
        return float(t[0].item()), int(round(t[1].item())), int(round(t[2].item()))


def make_result(nll_sum: float, tokens: int, nbytes: int, seconds: float, **kw: Any) -> EvalResult:
    """val_loss = sum nll / tokens, val_bpb = sum nll / (ln 2 * sum bytes)."""
    if tokens <= 0:
        raise ValueError("evaluation scored no tokens (empty validation set?)")
    if nbytes <= 0:
        raise ValueError(f"evaluation scored {tokens} tokens carrying 0 bytes; cannot compute bpb")
    return EvalResult(val_loss=nll_sum / tokens, val_bpb=nll_sum / (LN2 * nbytes), tokens=tokens,
                      bytes=nbytes, seconds=seconds, **kw)


# ---------------------------------------------------------------------------
# Small shared helpers


def model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        raise ValueError("model has no parameters") from None


def check_val_tokens(val_tokens: Tensor, vocab_size: int | None = None) -> None:
    if not isinstance(val_tokens, torch.Tensor) or val_tokens.dim() != 1:
        raise ValueError("val_tokens must be a 1-D integer tensor (N+1 tokens for N targets)")
    if val_tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"val_tokens must hold integer token ids, got dtype {val_tokens.dtype}")
    if val_tokens.numel() < 2:
        raise ValueError(f"val_tokens has {val_tokens.numel()} token(s); need at least 2 (one target)")
    if vocab_size is not None and val_tokens.numel():
        lo, hi = int(val_tokens.min()), int(val_tokens.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"val_tokens ids span [{lo}, {hi}] outside the model vocab [0, {vocab_size})")


def target_byte_counts(prev: Tensor, tgt: Tensor, luts) -> Tensor:
    """int64 bytes per target (the byte rule of docs/data.md), via gepalib.bpb."""
    from gepalib.bpb import target_bytes

    return target_bytes(prev, tgt, luts).long()


class eval_mode:
    """Context: model.eval() + torch.inference_mode(), restoring the train/eval flag after."""

    def __init__(self, model: nn.Module, inference: bool = True):
        self.model, self.inference = model, inference

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        self.ctx = torch.inference_mode() if self.inference else torch.no_grad()
        self.ctx.__enter__()
        return self.model

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)
        self.model.train(self.was_training)
        return False


def _vocab(model: nn.Module) -> int | None:
    cfg = getattr(model, "cfg", None)
    return getattr(cfg, "vocab_size", None)


# ---------------------------------------------------------------------------
# Non-overlapping evaluation


def eval_nonoverlapping(model: nn.Module, val_tokens: Tensor, luts, seq_len: int, batch_seqs: int = 32, *,
                        autocast: str = "auto", return_token_losses: bool = False,
                        progress: str = "auto") -> EvalResult:
    """Score val_tokens (length k*seq_len + 1) as k consecutive windows of seq_len.

    Window j feeds ``val[j*T : (j+1)*T]`` (positions restart at 0) and scores all T targets.
    Windows are split contiguously across ranks when a process group is active; the fp64 sums
    are all-reduced. Runs under eval mode + inference mode, restoring the model's mode after.
    ``progress``: rank 0's bar or log lines (gepalib.progress; ``off``: none).
    """
    t0 = time.perf_counter()
    check_val_tokens(val_tokens, _vocab(model))
    if seq_len <= 0 or batch_seqs <= 0:
        raise ValueError(f"seq_len and batch_seqs must be positive, got {seq_len}, {batch_seqs}")
    n = val_tokens.numel() - 1
    if n % seq_len:
        raise ValueError(f"non-overlapping eval needs len(val_tokens) = k*seq_len + 1; got {n + 1} tokens "
                         f"for seq_len {seq_len} (load_val_tokens truncates correctly for this seq_len)")
    n_seqs = n // seq_len
    device = model_device(model)
    luts_d = luts.to(device)
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if dist.active() else (0, 1)
    lo, hi = dist.shard_range(n_seqs, rank, world)
    sums = Sums(device)
    losses = torch.zeros(n, dtype=torch.float32, device=device) if return_token_losses else None
    val = val_tokens.to(device)  # once: a copy per batch would wait for the device every time
    with eval_mode(model):
        for b0 in track(range(lo, hi, batch_seqs), "eval_nonoverlapping", mode=progress):
            b1 = min(b0 + batch_seqs, hi)
            chunk = val[b0 * seq_len: b1 * seq_len + 1].to(torch.int64)
            x = chunk[:-1].view(b1 - b0, seq_len)
            y = chunk[1:].view(b1 - b0, seq_len)
            with dist.autocast_context(device, autocast):
                nll = model(x, y, reduction="none").float()
            sums.add(nll, target_byte_counts(x, y, luts_d))
            if losses is not None:
                losses[b0 * seq_len: b1 * seq_len] = nll.reshape(-1)
    nll_sum, tokens, nbytes = sums.reduced()
    if losses is not None:
        losses = dist.all_reduce_sum(losses).cpu()
    return make_result(nll_sum, tokens, nbytes, time.perf_counter() - t0, token_losses=losses)


# ---------------------------------------------------------------------------
# Sliding-window planning (pure, no model)


@dataclass(frozen=True)
class WindowPlan:
    """Sliding windows over N targets. Arrays are int64 numpy, one entry per window.

    Window w feeds ``val[start : start+length]`` (positions 0..length-1) and scores targets
    ``[score_lo, score_hi)`` (absolute target indices), i.e. window positions
    ``[score_lo-start, length)``. ``fresh_lo >= score_lo`` is the first of them that no earlier
    window scored (== score_hi for a pure re-score)."""

    n_targets: int
    seq_len: int
    stride: int
    tail_rescore: bool
    start: np.ndarray
    length: np.ndarray
    score_lo: np.ndarray
    fresh_lo: np.ndarray

    @property
    def score_hi(self) -> np.ndarray:
        return self.start + self.length

    @property
    def n_windows(self) -> int:
        return int(self.start.size)

    @property
    def scored_tokens(self) -> int:
        return int((self.score_hi - self.score_lo).sum())


def plan_sliding_windows(n_targets: int, seq_len: int, stride: int = 64, tail_rescore: bool = True) -> WindowPlan:
    """The submission's sliding-window plan.

    Starts ws = 0, stride, 2*stride, ... < N; a start is kept when ``min(ws+T, N) - ws >= stride``
    or ws = 0. A kept window has length ``wlen = min(ws+T, N) - ws`` and scores window positions
    ``[s, wlen)`` with s = 0 for ws = 0 and s = wlen - stride otherwise.

    ``tail_rescore=True`` is the submission's behaviour: the windows that reach the end of the
    stream all re-score its last ``stride`` targets (31 extra windows at N = 62,021,632,
    T = 2048, stride 64: N + 1,984 scored tokens). ``tail_rescore=False`` clips every window's
    scored range to the targets no earlier window scored and drops windows left with none, so
    each target is scored exactly once (with the most context any window gives it).
    """
    N, T = int(n_targets), int(seq_len)
    if N <= 0:
        raise ValueError(f"sliding window needs at least one target, got N={N}")
    if T <= 0 or stride <= 0 or stride > T:
        raise ValueError(f"need 0 < stride <= seq_len, got stride={stride}, seq_len={T}")
    ws = np.arange(0, N, stride, dtype=np.int64)
    wlen = np.minimum(ws + T, N) - ws
    keep = (wlen >= stride) | (ws == 0)
    ws, wlen = ws[keep], wlen[keep]
    s = np.where(ws == 0, 0, wlen - stride)
    lo = ws + s
    hi = ws + wlen
    covered = np.concatenate(([0], np.maximum.accumulate(hi)[:-1]))  # targets [0, covered) scored before w
    fresh = np.maximum(lo, covered)
    if int(hi.max()) != N or np.any(lo > covered):
        gap = int(np.argmax(lo > covered)) if np.any(lo > covered) else -1
        raise ValueError(f"sliding windows (seq_len={T}, stride={stride}) leave targets of N={N} unscored "
                         f"(first gap at window {gap}); use stride <= seq_len/2 or N a multiple of stride")
    if not tail_rescore:
        nonempty = fresh < hi
        ws, wlen, hi, fresh = ws[nonempty], wlen[nonempty], hi[nonempty], fresh[nonempty]
        lo = fresh
    return WindowPlan(N, T, int(stride), bool(tail_rescore), ws, wlen, lo.copy(), fresh.copy())


# ---------------------------------------------------------------------------
# Window scoring (shared with TTT)


def score_windows(model: nn.Module, val_tokens: Tensor, luts_d, plan: WindowPlan, windows: np.ndarray,
                  batch_seqs: int, sums: Sums, *, autocast: str = "auto",
                  token_losses: Tensor | None = None, progress: str = "off") -> None:
    """Score the given window indices of ``plan`` in batches; add to ``sums``.

    Short windows are right-padded (repeating the stream's last token) to the batch's longest;
    causality makes the padding invisible to the scored positions. The caller provides
    eval/inference mode and ``val_tokens`` on the model's device (moved once, so the loop never
    waits for an accelerator). ``token_losses`` (float32 [N], same device) receives fresh
    targets' nll. ``progress``: rank 0's bar or log lines over the batches (gepalib.progress)."""
    device = sums.t.device
    val = val_tokens.to(device)  # a no-op for the callers here
    lens_np = plan.length[windows]

    def on_device(a: np.ndarray) -> Tensor:
        return torch.as_tensor(a, device=device)[:, None]

    starts, lens = on_device(plan.start[windows]), on_device(lens_np)
    s_lo_np = plan.score_lo[windows] - plan.start[windows]
    s_lo, f_lo = on_device(plan.score_lo[windows]) - starts, on_device(plan.fresh_lo[windows]) - starts
    for b0 in track(range(0, len(windows), batch_seqs), "eval_sliding", mode=progress):
        b1 = min(b0 + batch_seqs, len(windows))
        L = int(lens_np[b0:b1].max())
        pos = torch.arange(L + 1, device=device)[None, :]
        seg = val[(starts[b0:b1] + pos).clamp_(max=plan.n_targets)].to(torch.int64)
        x, y, pos = seg[:, :-1], seg[:, 1:], pos[:, :-1]
        k = int(s_lo_np[b0:b1].min())  # the head runs only from the batch's first scored position
        with dist.autocast_context(device, autocast):
            nll = model(x, y, reduction="none", logits_from=k).float()
        x, y, pos = x[:, k:], y[:, k:], pos[:, k:]
        # scored positions: [score_lo - start, length)
        mask = (pos >= s_lo[b0:b1]) & (pos < lens[b0:b1])
        sums.add(nll, target_byte_counts(x, y, luts_d), mask)
        if token_losses is not None:
            fmask = (pos >= f_lo[b0:b1]) & (pos < lens[b0:b1])
            token_losses[(starts[b0:b1] + pos)[fmask]] = nll[fmask]


def my_windows(n_windows: int) -> np.ndarray:
    """This rank's contiguous share of ``range(n_windows)``."""
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if dist.active() else (0, 1)
    lo, hi = dist.shard_range(n_windows, rank, world)
    return np.arange(lo, hi, dtype=np.int64)


def eval_sliding(model: nn.Module, val_tokens: Tensor, luts, seq_len: int, stride: int = 64, batch_seqs: int = 32,
                 *, tail_rescore: bool = True, autocast: str = "auto",
                 return_token_losses: bool = False, progress: str = "auto") -> EvalResult:
    """Sliding-window evaluation (see :func:`plan_sliding_windows`).

    Windows are split contiguously across ranks, batched ``batch_seqs`` at a time, under eval
    mode + inference mode (bf16 autocast on CUDA by default); fp64 sums are all-reduced.
    ``progress``: rank 0's bar or log lines (gepalib.progress; ``off``: none)."""
    t0 = time.perf_counter()
    check_val_tokens(val_tokens, _vocab(model))
    if batch_seqs <= 0:
        raise ValueError(f"batch_seqs must be positive, got {batch_seqs}")
    plan = plan_sliding_windows(val_tokens.numel() - 1, seq_len, stride, tail_rescore)
    device = model_device(model)
    sums = Sums(device)
    losses = torch.zeros(plan.n_targets, dtype=torch.float32, device=device) if return_token_losses else None
    with eval_mode(model):
        score_windows(model, val_tokens.to(device), luts.to(device), plan, my_windows(plan.n_windows), batch_seqs,
                      sums, autocast=autocast, token_losses=losses, progress=progress)
    nll_sum, tokens, nbytes = sums.reduced()
    if losses is not None:
        losses = dist.all_reduce_sum(losses).cpu()
    return make_result(nll_sum, tokens, nbytes, time.perf_counter() - t0, token_losses=losses,
                       extra={"windows": plan.n_windows, "stride": stride, "tail_rescore": tail_rescore})
