"""int6 per-row GPTQ-lite quantization of a state dict (see docs/quantization.md).

Pure functions: ``state dict -> QuantizedModel -> state dict``. The byte-level
artifact lives in :mod:`gepalib.quant.artifact` (header, validation, save/load) and
:mod:`gepalib.quant.container` (payload layout, packing, compressors).

Walk the state dict in order:

1. non-float tensors: kept as they are;
2. float tensors with ``numel <= passthrough_numel`` (65,536): kept as float --
   fp32 if the name contains one of :data:`gepalib.model.CONTROL_PATTERNS`,
   else fp16 with the original dtype remembered;
3. ``tok_emb.weight`` with ``quant_embed=False``: kept as fp16 (the code default);
4. everything else: int6 per-row GPTQ-lite. A tensor with ``ndim >= 2`` has rows
   ``shape[0]`` (trailing dims flattened); a large 1-D tensor is one row.

GPTQ-lite int6 for W (r x n, fp32) and the 15 candidates of :data:`CANDIDATES`:

    clip_i = p-quantile of |W_i| (torch.quantile, linear interpolation; the
             row max for p = 1)
    s_i    = max(clip_i / 31, 1/31)
    q      = clamp(round(W / s_i), -32, 31)           (no pre-clipping)
    err    = mean over the whole matrix of (W - q s)^2

``quant_mode="faithful"`` (the submission): one percentile per tensor, the
candidate with the smallest err, strict ``<`` so ties go to the first; the
search uses fp32 scales and the stored scales are their fp16 rounding.

``quant_mode="per_row"`` (an improvement, see docs/choices.md): every row picks its own
candidate. The search already uses the fp16-rounded scale that will be stored
(q = clamp(round(W / s16))), so the reconstruction error of every row is <= the
faithful one: for a fixed scale, clamp(round(.)) is the best integer code, and
the faithful candidate is among the ones tried.

``quant_mode="gptq"`` (full-Hessian GPTQ, :mod:`gepalib.quant.hessian`): the weight of
every Linear whose layer-input Hessian is given is quantized column by column with error
feedback; each row keeps the candidate with the smallest calibration output error. Stored
as per_row stores it. Tensors without a Hessian (the embedding tables) get per_row.

``quant_mode="sdclip"`` (a std-based clip, as PR #1979): no search; each row's clip is
``clip_sigmas`` (12.85) times its standard deviation, s = clip / 31 stored as fp16, no 1/31
floor (:func:`gepalib.quant.grid.sdclip_rows`). Stored without percentile or row choices.

Dequantization: W ~= q * s16 (in fp32), cast back to the original dtype.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Union

import numpy as np
import torch
from torch import Tensor

from gepalib.config import QuantConfig
from gepalib.progress import track
from gepalib.quant.grid import (CANDIDATES, CLIP_LEVEL, QMAX, QMIN, QUANTILE_MAX_NUMEL,  # noqa: F401 (re-exported)
                                 candidate_scales, gptq_lite_faithful, gptq_lite_per_row, quantize_rows,
                                 sdclip_rows)
from gepalib.quant.gptq_full import gptq_per_row

ALPHABET = QMAX - QMIN + 1  # 64 int6 symbols
QUANT_MODES = ("faithful", "per_row", "gptq", "sdclip")
EMBED_NAME = "tok_emb.weight"
HIST_BLOCK = 1 << 22  # entries per histogram block of the entropy bounds (bounded memory)

# dtype name <-> torch dtype for everything a state dict may hold.
TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "float64": torch.float64, "int8": torch.int8, "uint8": torch.uint8, "int16": torch.int16,
    "int32": torch.int32, "int64": torch.int64, "bool": torch.bool,
}


def dtype_name(dt: torch.dtype) -> str:
    for k, v in TORCH_DTYPES.items():
        if v == dt:
            return k
    raise ValueError(f"unsupported tensor dtype {dt}")


# ---------------------------------------------------------------------------
# Quantized form


@dataclass
class QTensor:
    """One int6 tensor: codes q (int8, [rows, cols]) and fp16 per-row scales."""

    q: Tensor  # int8 [rows, cols], values in [-32, 31]
    scale: Tensor  # float16 [rows]
    shape: tuple[int, ...]  # original shape
    dtype: str  # original dtype name (bfloat16 for E_tok, float32 otherwise)
    percentile: float | None = None  # faithful mode: the tensor's candidate
    row_choice: Tensor | None = None  # per_row mode: uint8 [rows], index into CANDIDATES
    mse: float | None = None  # reconstruction MSE vs the fp32 input (known at quantize time)

    @property
    def rows(self) -> int:
        return int(self.q.shape[0])

    @property
    def numel(self) -> int:
        return int(self.q.numel())


@dataclass
class PTensor:
    """One passthrough tensor: ``data`` in its stored dtype plus the original dtype."""

    data: Tensor
    dtype: str  # original dtype name

    @property
    def numel(self) -> int:
        return int(self.data.numel())


Entry = Union[QTensor, PTensor]


@dataclass
class QuantizedModel:
    """A quantized state dict: ``entries`` in state-dict order, plus the mode used."""

    entries: dict[str, Entry] = field(default_factory=dict)
    quant_mode: str = "faithful"
    meta: dict = field(default_factory=dict)  # free JSON stored in the artifact header

    def quantized(self) -> dict[str, QTensor]:
        return {k: e for k, e in self.entries.items() if isinstance(e, QTensor)}

    def passthrough(self) -> dict[str, PTensor]:
        return {k: e for k, e in self.entries.items() if isinstance(e, PTensor)}

    def num_params(self) -> int:
        return sum(e.numel for e in self.entries.values())


def dequantize_tensor(qt: QTensor) -> Tensor:
    """q * s16 in fp32, reshaped and cast to the original dtype."""
    w = qt.q.float() * qt.scale.float()[:, None]
    return w.reshape(qt.shape).to(TORCH_DTYPES[qt.dtype]).contiguous()


def reconstruction_mse(w32: Tensor, qt: QTensor) -> float:
    """Mean squared error of the fp32 reconstruction q * s16 against fp32 W (float64 math)."""
    rec = qt.q.double() * qt.scale.double()[:, None]
    return float((w32.double() - rec).square().mean())


# ---------------------------------------------------------------------------
# State dicts


def is_control(name: str) -> bool:
    from gepalib.model import CONTROL_PATTERNS

    return any(p in name for p in CONTROL_PATTERNS)


def _as_rows(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1) if t.dim() >= 2 else t.reshape(1, -1)


def quantize_tensor(name: str, t: Tensor, qcfg: QuantConfig, hessian: Tensor | None = None) -> Entry:
    """Apply the export rules (module docstring) to one tensor (``hessian``: its layer-input
    Hessian, used by quant_mode="gptq")."""
    t = t.detach().to("cpu").contiguous()
    dt = dtype_name(t.dtype)
    if not t.is_floating_point():
        return PTensor(t.clone(), dt)
    if t.numel() <= qcfg.passthrough_numel or t.numel() == 0:
        keep = torch.float32 if is_control(name) else torch.float16
        return PTensor(t.to(keep).clone(), dt)
    if name == EMBED_NAME and not qcfg.quant_embed:
        return PTensor(t.to(torch.float16).clone(), dt)
    w32 = _as_rows(t.float())
    if not torch.isfinite(w32).all():
        raise ValueError(f"tensor {name!r} has non-finite values; refusing to quantize")
    if qcfg.quant_mode == "faithful":
        q, s, c = gptq_lite_faithful(w32)
        qt = QTensor(q, s, tuple(t.shape), dt, percentile=CANDIDATES[c])
    elif qcfg.quant_mode == "sdclip":
        q, s = sdclip_rows(w32, qcfg.clip_sigmas)
        qt = QTensor(q, s, tuple(t.shape), dt)
    elif qcfg.quant_mode == "gptq" and hessian is not None:
        q, s, choice = gptq_per_row(w32, hessian, qcfg)
        qt = QTensor(q, s, tuple(t.shape), dt, row_choice=choice)
    else:
        q, s, choice = gptq_lite_per_row(w32)
        qt = QTensor(q, s, tuple(t.shape), dt, row_choice=choice)
    qt.mse = reconstruction_mse(w32, qt)
    return qt


def quantize_state_dict(sd: dict[str, Tensor], qcfg: QuantConfig,
                        hessians: dict[str, Tensor] | None = None, *, progress: str = "auto") -> QuantizedModel:
    """Quantize a (EMA) state dict. Pure; the input is not modified. quant_mode="gptq" needs
    ``hessians`` ({Linear weight name: layer-input Hessian},
    :func:`gepalib.quant.hessian.calibration_hessians`). ``progress``: rank 0's bar or log lines
    over the tensors (gepalib.progress; ``off``: none)."""
    if qcfg.quant_mode not in QUANT_MODES:
        raise ValueError(f"quant_mode must be one of {QUANT_MODES}, got {qcfg.quant_mode!r}")
    if qcfg.passthrough_numel < 0:
        raise ValueError(f"passthrough_numel must be >= 0, got {qcfg.passthrough_numel}")
    if qcfg.quant_mode == "gptq" and hessians is None:
        raise ValueError("quant_mode='gptq' needs the layer-input Hessians of the Linear weights "
                         "(gepalib.quant.hessian.calibration_hessians)")
    qm = QuantizedModel(quant_mode=qcfg.quant_mode)
    for name, t in track(sd.items(), "quantize", unit="tensor", mode=progress):
        if not isinstance(t, Tensor):
            raise TypeError(f"state dict entry {name!r} is a {type(t).__name__}, not a tensor")
        qm.entries[name] = quantize_tensor(name, t, qcfg, (hessians or {}).get(name))
    return qm


def dequantize(qm: QuantizedModel) -> dict[str, Tensor]:
    """Back to a state dict with the original dtypes (bf16 E_tok stays bf16)."""
    out: dict[str, Tensor] = {}
    for name, e in qm.entries.items():
        if isinstance(e, QTensor):
            out[name] = dequantize_tensor(e)
        else:
            out[name] = e.data.to(TORCH_DTYPES[e.dtype]).clone()
    return out


# ---------------------------------------------------------------------------
# Entropy bounds: how small could the int6 codes possibly get?


def symbol_counts(q: Tensor) -> np.ndarray:
    """Histogram of int6 codes over the 64 symbols (index = q + 32)."""
    flat = q.numpy().ravel()
    counts = np.zeros(ALPHABET, dtype=np.int64)
    for i in range(0, len(flat), HIST_BLOCK):  # bincount widens to int64: bound the temporary
        counts += np.bincount(flat[i:i + HIST_BLOCK].astype(np.int16) - QMIN, minlength=ALPHABET)
    return counts


def entropy_bits(counts: np.ndarray) -> float:
    """n * H(empirical distribution) in bits = sum -c log2(c / n)."""
    c = counts[counts > 0].astype(np.float64)
    n = c.sum()
    return float(-(c * np.log2(c / n)).sum()) if n else 0.0


def _row_bits(a: np.ndarray) -> float:
    """sum over the rows of codes ``a`` (int, 0..63) of n_row * H(row), in bits."""
    rows = a.shape[0]
    idx = (np.arange(rows, dtype=np.int64)[:, None] * ALPHABET + a).ravel()
    h = np.bincount(idx, minlength=rows * ALPHABET).reshape(rows, ALPHABET).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = h / h.sum(axis=1, keepdims=True)
        return float(-(np.where(h > 0, h * np.log2(p), 0.0)).sum())


def row_entropy_bits(q: Tensor) -> tuple[float, float]:
    """(sum over rows of n_row * H(row), cost of describing every row's histogram) in bits.

    The description cost is the two-part-code price of sending each row's exact
    histogram: log2 C(n + k - 1, k - 1) with k = the tensor's symbol range
    max - min + 1 (sent once per tensor, negligible). Rows are histogrammed in
    blocks of about HIST_BLOCK entries (one block for every gepa11 matrix), so a
    matrix with millions of short rows needs no [rows, 64] float table at once."""
    q8 = q.numpy()
    rows, n = q8.shape
    step = max(1, HIST_BLOCK // max(n, ALPHABET))
    bits = 0.0
    for r0 in range(0, rows, step):
        bits += _row_bits(q8[r0:r0 + step].astype(np.int64) - QMIN)
    k = int(q8.max()) - int(q8.min()) + 1 if q8.size else 1
    desc = rows * (math.lgamma(n + k) - math.lgamma(k) - math.lgamma(n + 1)) / math.log(2)
    return bits, desc


def entropy_bounds(qm: QuantizedModel) -> dict:
    """Per-tensor and per-row empirical entropy bounds of a quantized model, in bytes.

    per_tensor_bound = sum_t count_t * H(t) / 8 + scale bytes + passthrough bytes
                       (+ per-row choice bytes in per_row mode), the raw non-code bytes
    per_row_bound    = sum over rows of n * H(row) / 8 + description cost + the same raw bytes
    """
    code_bits = row_bits = desc_bits = 0.0
    scale_bytes = pass_bytes = choice_bytes = 0
    per_tensor = {}
    for name, e in qm.entries.items():
        if isinstance(e, QTensor):
            tb = entropy_bits(symbol_counts(e.q))
            rb, db = row_entropy_bits(e.q)
            code_bits += tb
            row_bits += rb
            desc_bits += db
            scale_bytes += 2 * e.rows
            choice_bytes += e.rows if e.row_choice is not None else 0
            per_tensor[name] = {"numel": e.numel, "bits_per_code": tb / max(e.numel, 1),
                                "row_bits_per_code": rb / max(e.numel, 1)}
        else:
            pass_bytes += e.data.numel() * e.data.element_size()
    other = scale_bytes + pass_bytes + choice_bytes
    n_codes = sum(e.numel for e in qm.quantized().values())
    return {
        "num_codes": n_codes,
        "code_entropy_bytes": code_bits / 8,
        "code_bits_per_symbol": code_bits / max(n_codes, 1),
        "row_entropy_bytes": row_bits / 8,
        "row_description_bytes": desc_bits / 8,
        "scale_bytes": scale_bytes,
        "passthrough_bytes": pass_bytes,
        "row_choice_bytes": choice_bytes,
        "per_tensor_bound_bytes": code_bits / 8 + other,
        "per_row_bound_bytes": (row_bits + desc_bits) / 8 + other,
        "tensors": per_tensor,
    }
