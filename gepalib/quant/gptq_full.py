"""The full GPTQ recursion of one Linear weight given its input Hessian (``quant_mode="gptq"``).

The algorithm and its choices are described in :mod:`gepalib.quant.hessian` (which collects
the Hessians) and docs/quantization.md. Built on :mod:`gepalib.quant.grid` only, so
:mod:`gepalib.quant.gptq` can dispatch to it without an import circle.
"""
from __future__ import annotations

import torch
from torch import Tensor

from gepalib.config import QuantConfig
from gepalib.quant.grid import QMAX, QMIN, candidate_scales, gptq_lite_per_row

DAMP_RETRIES = 6  # a Hessian that is not positive definite after damping: damp x10, this many times


# ---------------------------------------------------------------------------
# The GPTQ recursion


def inverse_cholesky(h: Tensor, damp: float) -> Tensor:
    """Upper Cholesky factor U of (H + damp * mean(diag H) * I)^-1 (H with dead columns set to
    H_jj = 1), float64. If H is not positive definite after damping, the damping grows x10."""
    h = h.double().clone()
    dead = torch.diagonal(h) <= 0
    h[dead, :] = 0.0
    h[:, dead] = 0.0
    h[dead, dead] = 1.0
    mean_diag = float(torch.diagonal(h).mean())
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    for i in range(DAMP_RETRIES + 1):
        L, info = torch.linalg.cholesky_ex(h + (damp * 10.0 ** i) * mean_diag * eye)
        if int(info) == 0:
            U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if int(info) == 0:
                return U
    raise ValueError(f"Hessian is not positive definite even with damping {damp * 10.0 ** DAMP_RETRIES:g}")


def gptq_codes(w: Tensor, U: Tensor, scale: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """GPTQ codes of W [rows, cols] (float64) with per-row scales ``scale`` [rows] and the
    inverse-Hessian Cholesky factor U [cols, cols]; columns in the order given. Returns the
    codes (float64 integers in [-32, 31]) and each row's sum of e^2, which is its output error
    (w - q s) H' (w - q s)^T under the damped Hessian H' that U factors (each step's
    compensation is the exact optimum of that quadratic). Works on W transposed, so that a
    column is one contiguous row of memory."""
    Wt = w.double().T.contiguous()  # [cols, rows]
    s = scale.double()
    Qt = torch.empty_like(Wt)
    loss = torch.zeros(Wt.shape[1], dtype=torch.float64)
    cols = Wt.shape[0]
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        Ub = U[i1:i2, i1:i2]
        Et = torch.empty(i2 - i1, Wt.shape[1], dtype=Wt.dtype)
        for i in range(i2 - i1):
            col = Wt[i1 + i]
            q = torch.clamp(torch.round(col / s), QMIN, QMAX)
            Qt[i1 + i] = q
            e = (col - q * s) / Ub[i, i]
            Wt[i1 + i + 1:i2] -= Ub[i, i + 1:, None] * e[None, :]
            Et[i] = e
        loss += Et.square().sum(dim=0)
        Wt[i2:] -= U[i1:i2, i2:].T @ Et  # the block's error, applied to the later columns at once
    return Qt.T.contiguous(), loss


def output_error(w: Tensor, q: Tensor, scale: Tensor, h: Tensor) -> Tensor:
    """Per-row calibration output error d H d^T with d = w - q s (float64, [rows])."""
    d = w.double() - q.double() * scale.double()[:, None]
    return ((d @ h.double()) * d).sum(dim=1)


def gptq_per_row(w32: Tensor, h: Tensor, qcfg: QuantConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Full GPTQ of one Linear weight W [rows, cols] with its input Hessian H [cols, cols] ->
    (q int8, s fp16, choice uint8), the per_row storage.

    All 15 candidate scales run at once (rows are independent, so [15 * rows, cols] is 15
    separate runs); each row keeps the candidate with the smallest damped output error (the
    recursion's own sum of e^2; strict ``<``, ties to the earlier candidate). A row then keeps
    GPTQ-lite per_row's codes instead where those have the strictly smaller output error under
    the calibration Hessian itself, so no row does worse than per_row on the calibration data."""
    rows, cols = w32.shape
    if tuple(h.shape) != (cols, cols):
        raise ValueError(f"Hessian of shape {tuple(h.shape)} does not fit a weight with {cols} columns")
    h = h.double()
    scales16 = candidate_scales(w32).to(torch.float16).double()  # [K, rows]: the stored scales
    K = scales16.shape[0]
    perm = torch.argsort(torch.diagonal(h), descending=True, stable=True) if qcfg.gptq_act_order else None
    U = inverse_cholesky(h if perm is None else h[perm][:, perm], qcfg.gptq_damp)
    w64 = w32.double()
    qp, loss = gptq_codes((w64 if perm is None else w64[:, perm]).repeat(K, 1), U, scales16.reshape(-1),
                          qcfg.gptq_block_size)
    if perm is not None:
        qp[:, perm] = qp.clone()
    best = torch.argmin(loss.reshape(K, rows), dim=0)  # first minimum: ties keep the earlier candidate
    q_g = qp.reshape(K, rows, cols)[best, torch.arange(rows)]
    s_g = scales16[best, torch.arange(rows)]
    q_r, s_r, c_r = gptq_lite_per_row(w32)
    rtn = output_error(w64, q_r, s_r, h) < output_error(w64, q_g, s_g, h)
    q = torch.where(rtn[:, None], q_r.double(), q_g)
    s = torch.where(rtn, s_r.double(), s_g)
    choice = torch.where(rtn, c_r, best.to(torch.uint8))
    return q.to(torch.int8), s.to(torch.float16), choice


__all__ = ["DAMP_RETRIES", "inverse_cholesky", "gptq_codes", "output_error", "gptq_per_row"]
