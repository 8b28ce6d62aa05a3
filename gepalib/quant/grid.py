"""The int6 grid and GPTQ-lite's scale search (see docs/quantization.md).

Codes are clamp(round(w / s), -32, 31) with one fp16 scale per row; a row's scale is one of
15 percentile candidates of its |w| divided by 31. GPTQ-lite picks the candidate with the
smallest reconstruction error, per tensor (``faithful``) or per row (``per_row``). The
lowest quantization layer: :mod:`gepalib.quant.gptq_full` and :mod:`gepalib.quant.gptq`
build on it.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

CANDIDATES: tuple[float, ...] = (0.990, 0.993, 0.995, 0.997, 0.998, 0.999, 0.9993, 0.9995, 0.9997,
                                 0.9999, 0.99993, 0.99995, 0.99997, 0.99999, 1.0)
QMIN, QMAX = -32, 31
CLIP_LEVEL = 31.0  # s = clip / 31
QUANTILE_MAX_NUMEL = 1 << 22  # rows per torch.quantile call are chunked to stay below its limit


def candidate_scales(w32: Tensor) -> Tensor:
    """fp32 per-row scales for every candidate, shape [len(CANDIDATES), rows]."""
    a = w32.abs()
    qs = torch.tensor(CANDIDATES[:-1], dtype=torch.float32)
    step = max(1, QUANTILE_MAX_NUMEL // max(a.shape[1], 1))  # torch.quantile caps its input size
    # linear interpolation; one call with all p's gives the same values as one call per p
    clips = torch.cat([torch.quantile(a[i:i + step], qs, dim=1) for i in range(0, a.shape[0], step)], dim=1)
    clips = torch.cat([clips, a.amax(dim=1)[None]], dim=0)  # p = 1.0: the row max
    return (clips / CLIP_LEVEL).clamp_min(1.0 / CLIP_LEVEL)


def quantize_rows(w32: Tensor, scale: Tensor) -> Tensor:
    """q = clamp(round(W / s_row), -32, 31) as float (exact small integers)."""
    return torch.clamp(torch.round(w32 / scale[:, None]), QMIN, QMAX)


def gptq_lite_faithful(w32: Tensor) -> tuple[Tensor, Tensor, int]:
    """The submission's search with one percentile per tensor -> (q int8, s fp16, candidate index)."""
    scales = candidate_scales(w32)
    best_err, best_q, best_c = math.inf, None, -1
    for c in range(len(CANDIDATES)):
        s = scales[c]
        q = quantize_rows(w32, s)
        err = float((w32 - q * s[:, None]).square().mean())
        if err < best_err:  # strict: ties keep the earlier candidate
            best_err, best_q, best_c = err, q, c
    return best_q.to(torch.int8), scales[best_c].to(torch.float16), best_c


def gptq_lite_per_row(w32: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Best candidate per row, searched with the stored fp16 scales -> (q, s fp16, choice uint8)."""
    scales16 = candidate_scales(w32).to(torch.float16).float()
    rows = w32.shape[0]
    best_err = torch.full((rows,), math.inf, dtype=torch.float64)
    best_q = torch.zeros_like(w32)
    best_s = torch.zeros(rows, dtype=torch.float32)
    choice = torch.zeros(rows, dtype=torch.uint8)
    for c in range(len(CANDIDATES)):
        s = scales16[c]
        q = quantize_rows(w32, s)
        err = (w32.double() - (q * s[:, None]).double()).square().mean(dim=1)
        better = err < best_err  # strict: ties keep the earlier candidate
        best_err = torch.where(better, err, best_err)
        best_q[better] = q[better]
        best_s[better] = s[better]
        choice[better] = c
    return best_q.to(torch.int8), best_s.to(torch.float16), choice


def sdclip_rows(w32: Tensor, clip_sigmas: float) -> tuple[Tensor, Tensor]:
    """A std-based clip (``quant_mode="sdclip"``, as PR #1979's GPTQ): each row's clip is
    ``clip_sigmas`` times the row's standard deviation (about its mean, ddof 0), its scale
    clip / 31 rounded to the stored fp16 (a zero row gets the smallest normal fp16), and the
    codes clamp(round(W / s16)) -> (q int8, s fp16). No search and no 1/31 floor: the clip
    follows the weights' spread whatever their size."""
    if not clip_sigmas > 0:
        raise ValueError(f"clip_sigmas must be > 0, got {clip_sigmas}")
    sd = w32.double().std(dim=1, correction=0)
    s16 = (clip_sigmas * sd / CLIP_LEVEL).to(torch.float16).clamp_min(torch.finfo(torch.float16).tiny)
    q = quantize_rows(w32, s16.float())
    return q.to(torch.int8), s16


__all__ = ["CANDIDATES", "QMIN", "QMAX", "CLIP_LEVEL", "QUANTILE_MAX_NUMEL", "candidate_scales", "quantize_rows",
           "gptq_lite_faithful", "gptq_lite_per_row", "sdclip_rows"]
