"""Muon, the submission's optimizer for 2-D weight matrices (see docs/training.md).

Nesterov momentum, 5 Newton-Schulz steps in bf16 (:func:`zeropower_newton_schulz`, every
operation in the submission's order; :func:`newton_schulz_batched` for a stack of same-shape
matrices), shape scale sqrt(max(1, rows/cols)), decoupled weight decay scaled with the LR, the
update rounded to bf16. With a process group active the orthogonalisation is sharded
round-robin (parameter index mod world size) and the flat bf16 update buffer is summed across
ranks; in one process the same code path runs with world size 1, so the math is identical.
:func:`resolve_ns_dtype` picks the Newton-Schulz precision for a device (``muon_ns_dtype``).
"""
from __future__ import annotations

import functools
import importlib.util
import math

import torch
import torch.distributed as dist
from torch import Tensor


NS_COEFFS = (3.4445, -4.7750, 2.0315)  # (a, b, c) of the submission's quintic iteration
NS_DTYPES = ("auto", "bf16", "fp32")  # muon_ns_dtype's values; "auto" is resolved by resolve_ns_dtype


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (the AVX512-BF16 or AMX-BF16 flag in /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.partition(":")[2].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_ns_dtype(value: str, device_type: str, native_bf16: bool | None = None) -> str:
    """The Newton-Schulz precision a run uses: ``bf16``/``fp32`` as given; ``auto`` is the
    submission's bf16 on CUDA and on CPUs with native bf16 matmuls (AVX512-BF16/AMX: measured
    faster than fp32 for the presets' matrices, see docs/performance.md), fp32 on other CPUs
    (which emulate bf16 products, many times slower). ``native_bf16`` defaults to this CPU's flags."""
    if value not in NS_DTYPES:
        raise ValueError(f"muon_ns_dtype must be one of {', '.join(NS_DTYPES)}, got {value!r}")
    if value != "auto":
        return value
    if device_type == "cuda":
        return "bf16"
    return "bf16" if (cpu_has_native_bf16() if native_bf16 is None else native_bf16) else "fp32"


# ---------------------------------------------------------------------------
# Muon


@torch.no_grad()
def zeropower_newton_schulz(G: Tensor, steps: int = 5, eps: float = 1e-7, dtype: str = "bf16") -> Tensor:
    """Approximate polar factor U V^T of a 2-D matrix, in bf16 (Muon's orthogonalisation).

    X = G/(||G||_F + eps), transposed so rows <= cols; then ``steps`` times
    A = X X^T, X <- aX + (bA + cA^2) X. These coefficients do not converge to 1:
    singular values end up roughly in [0.7, 1.2]. Returns bf16, shape of G.

    Every operation is the submission's, in its order: in bf16 ``b*A + c*A@A`` is
    ``b*A + (c*A) @ A`` (``*`` and ``@`` bind equally, left to right), which rounds
    differently from ``c * (A @ A)``. On CUDA the iteration runs torch.compile'd, as the
    submission's (~40 eager kernels a matrix become a few fused ones; one graph per matrix
    shape); on the CPU it runs eagerly (:func:`newton_schulz_fn`). ``dtype="fp32"`` runs the same
    operations in float32 (the result is then rounded to bf16 like the bf16 one): CPUs emulate
    bf16 matmuls, ~10x slower than fp32 for these shapes.
    """
    if G.ndim != 2:
        raise ValueError(f"Newton-Schulz needs a 2-D matrix, got shape {tuple(G.shape)}")
    if dtype not in ("bf16", "fp32"):
        raise ValueError(f"Newton-Schulz dtype must be bf16 or fp32, got {dtype!r}")
    if dtype == "fp32":
        return _newton_schulz_fp32(G, steps, eps).bfloat16()
    return newton_schulz_fn(G.device.type)(G, steps, eps)


def _newton_schulz_fp32(G: Tensor, steps: int, eps: float) -> Tensor:
    return _newton_schulz(G, steps, eps, torch.float32)


def _newton_schulz(G: Tensor, steps: int, eps: float, dtype: torch.dtype = torch.bfloat16) -> Tensor:
    a, b, c = NS_COEFFS
    X = G.to(dtype)
    X = X / (X.norm() + eps)
    transposed = G.size(0) > G.size(1)
    if transposed:
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        B = b * A + (c * A) @ A  # the submission's `c * A @ A`, evaluated left to right
        X = a * X + B @ X
    return X.T if transposed else X


@torch.no_grad()
def newton_schulz_batched(G: Tensor, steps: int = 5, eps: float = 1e-7, dtype: str = "bf16") -> Tensor:
    """:func:`zeropower_newton_schulz` of each matrix of a (B, rows, cols) stack, as batched
    products (one per operation of the iteration for the whole stack, not one per matrix): each
    matrix normalised by its own Frobenius norm, the same operations in the same order. Returns
    bf16, shape of G."""
    if G.ndim != 3:
        raise ValueError(f"batched Newton-Schulz needs a (B, rows, cols) stack, got shape {tuple(G.shape)}")
    if dtype not in ("bf16", "fp32"):
        raise ValueError(f"Newton-Schulz dtype must be bf16 or fp32, got {dtype!r}")
    a, b, c = NS_COEFFS
    X = G.to(torch.float32 if dtype == "fp32" else torch.bfloat16)
    X = X / (torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True) + eps)
    transposed = G.size(-2) > G.size(-1)
    if transposed:
        X = X.mT
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + (c * A) @ A  # as in _newton_schulz
        X = a * X + B @ X
    return (X.mT if transposed else X).bfloat16()


_NS_COMPILED = None


def newton_schulz_fn(device_type: str):
    """The Newton-Schulz iteration for tensors on ``device_type``: torch.compile'd (fullgraph,
    static shapes) on CUDA when triton is there, else the eager function."""
    global _NS_COMPILED
    if device_type != "cuda" or importlib.util.find_spec("triton") is None:
        return _newton_schulz
    if _NS_COMPILED is None:
        _NS_COMPILED = torch.compile(_newton_schulz, dynamic=False, fullgraph=True)
    return _NS_COMPILED


def muon_shape_scale(rows: int, cols: int) -> float:
    """sqrt(max(1, rows/cols)): sqrt(3) for W_up, 2 for the bigram projection, else 1."""
    return math.sqrt(max(1.0, rows / cols))


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz, for 2-D weight matrices.

    Per matrix with gradient G:  buf <- mu*buf + G;  U = G + mu*buf (Nesterov) or buf;
    U <- NS5(U) * sqrt(max(1, rows/cols)) rounded to bf16;  p <- p*(1 - lr*wd) - lr*U.

    The momentum buffers are kept on every rank (cheap, and it makes optimizer
    state rank-independent, so rank 0 alone can checkpoint it); only the
    Newton-Schulz work is split round-robin across ranks.
    """

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, ns_steps: int = 5, ns_dtype: str = "bf16",
                 ns_batched: bool | None = None):
        if lr < 0 or not 0.0 <= momentum < 1.0 or weight_decay < 0 or ns_steps < 1:
            raise ValueError(f"Muon: bad hyper-parameters lr={lr} momentum={momentum} "
                             f"weight_decay={weight_decay} ns_steps={ns_steps}")
        if ns_dtype not in ("bf16", "fp32"):
            raise ValueError(f"Muon: ns_dtype must be bf16 or fp32, got {ns_dtype!r}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        ns_steps=ns_steps, ns_dtype=ns_dtype)
        super().__init__(params, defaults)
        self.ns_batched = ns_batched  # None: batched on the CPU, per matrix on CUDA (_orthogonalised)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon only takes 2-D matrices, got shape {tuple(p.shape)}")

    def _orthogonalised(self, group: dict, updates: list[Tensor], device_type: str):
        """(index, NS5(update) in bf16) for each update: batched over same-shape matrices on the
        CPU (one product per iteration step for all of them; bit-equal to the per-matrix
        iteration there, tests/test_optim.py), one matrix at a time (the submission's compiled
        graph per shape) on CUDA or with ``ns_batched=False``."""
        steps, dtype = group["ns_steps"], group.get("ns_dtype", "bf16")
        batched = self.ns_batched if self.ns_batched is not None else device_type != "cuda"
        if not batched:
            for i, u in enumerate(updates):
                yield i, zeropower_newton_schulz(u, steps=steps, dtype=dtype)
            return
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, u in enumerate(updates):
            by_shape.setdefault(tuple(u.shape), []).append(i)
        for idx in by_shape.values():
            out = newton_schulz_batched(torch.stack([updates[i] for i in idx]), steps, dtype=dtype)
            yield from zip(idx, out.unbind(0))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        world = dist.get_world_size() if distributed else 1
        rank = dist.get_rank() if distributed else 0
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            # 1. momentum on every rank (identical grads after the all-reduce)
            updates = []
            for p in params:
                g = p.grad.float() if p.grad.dtype != torch.float32 else p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g, dtype=torch.float32)
                buf = state["momentum_buffer"]
                buf.mul_(mu).add_(g)
                updates.append(g.add(buf, alpha=mu) if group["nesterov"] else buf)
            # 2-3. orthogonalise my share into a flat bf16 buffer, sum across ranks
            sizes = [p.numel() for p in params]
            flat = torch.zeros(sum(sizes), dtype=torch.bfloat16, device=params[0].device)
            offsets = [sum(sizes[:i]) for i in range(len(sizes))]
            mine = [i for i in range(len(params)) if i % world == rank]
            for idx, o in self._orthogonalised(group, [updates[i] for i in mine], params[0].device.type):
                i = mine[idx]
                o = o * muon_shape_scale(params[i].size(0), params[i].size(1))
                flat[offsets[i]:offsets[i] + sizes[i]] = o.reshape(-1)
            if distributed:
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            # 4. decoupled weight decay, then the bf16-rounded update
            offset = 0
            for p, n in zip(params, sizes):
                u = flat[offset:offset + n].view_as(p).to(p.dtype)
                if wd:
                    p.mul_(1.0 - lr * wd)
                p.add_(u, alpha=-lr)
                offset += n
        return loss
