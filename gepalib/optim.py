"""Optimizers and schedules of the submission (see docs/training.md).

* :class:`Muon` -- Nesterov momentum, 5 Newton-Schulz steps in bf16, shape scale
  sqrt(max(1, rows/cols)), decoupled weight decay scaled with the LR, the update
  rounded to bf16. With a process group active the orthogonalisation is sharded
  round-robin (parameter index mod world size) and the flat bf16 update buffer is
  summed across ranks; in one process the same code path runs with world size 1,
  so the math is identical.
* :func:`build_optimizers` -- the submission's parameter-group table.
* :func:`lr_multiplier`, :func:`muon_momentum` -- the step schedules.

Every param group carries ``name`` (its group, :data:`GROUPS`) and ``base_lr``; the trainer
sets ``lr = base_lr * lr_multiplier(step)`` before each step (:func:`set_lr`).
"""
from __future__ import annotations

import functools
import importlib.util
import math
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from gepalib.config import TrainConfig

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


# ---------------------------------------------------------------------------
# Parameter groups (the submission's table; see docs/training.md)

GROUPS = ("embed", "matrix-enc", "matrix-dec", "bigram-proj", "scalar-enc", "scalar-dec",
          "scalar-other", "none")
# The control list: a 2-D tensor whose name matches one of these never goes to Muon.
MUON_EXCLUDE = ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weight", "skip_gates",
                "smear", "bigram", "ve.", "ve_shared", "ve_layer_scales")
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")


def group_of(name: str, p: Tensor, n_enc: int) -> str:
    """The optimizer group of one parameter, by its state-dict name.

    ``bigram.proj.weight`` is the separate bigram Muon although "bigram" is on the
    control list; ``bigram.scale`` (XOR variant) is never updated in training.
    """
    if name == "tok_emb.weight":
        return "embed"
    if name == "bigram.scale":
        return "none"
    if name == "bigram.proj.weight":
        return "bigram-proj"
    m = _BLOCK_RE.match(name)
    if m:
        side = "enc" if int(m.group(1)) < n_enc else "dec"
        is_matrix = p.ndim == 2 and not any(c in name for c in MUON_EXCLUDE)
        return f"matrix-{side}" if is_matrix else f"scalar-{side}"
    return "scalar-other"


@dataclass
class GroupRow:
    """One row of the group table: which tensors, which optimizer, which base LR."""

    group: str
    optimizer: str  # "adamw" | "muon" | "none"
    base_lr: float
    names: list[str]
    numel: int


def param_groups(model: nn.Module, tcfg: TrainConfig) -> dict[str, GroupRow]:
    """The group table for ``model`` (every parameter lands in exactly one row)."""
    n_enc = getattr(model, "n_enc", len(getattr(model, "blocks", [])) // 2)
    dec = tcfg.decoder_lr_mult
    spec = {
        "embed": ("adamw", tcfg.embed_lr),
        "matrix-enc": ("muon", tcfg.matrix_lr),
        "matrix-dec": ("muon", tcfg.matrix_lr * dec),
        "bigram-proj": ("muon", tcfg.matrix_lr),
        "scalar-enc": ("adamw", tcfg.scalar_lr),
        "scalar-dec": ("adamw", tcfg.scalar_lr * dec),
        "scalar-other": ("adamw", tcfg.scalar_lr),
        "none": ("none", 0.0),
    }
    table = {g: GroupRow(g, spec[g][0], spec[g][1], [], 0) for g in GROUPS}
    for name, p in model.named_parameters():
        row = table[group_of(name, p, n_enc)]
        row.names.append(name)
        row.numel += p.numel()
    return table


def build_optimizers(model: nn.Module, tcfg: TrainConfig) -> tuple[list[torch.optim.Optimizer], dict[str, GroupRow]]:
    """The submission's optimizers: [AdamW(embed), AdamW(scalar-enc/dec/other), Muon(matrix-enc/dec),
    Muon(bigram-proj)] (empty ones left out) and the group table.

    AdamW: betas (adam_beta1, adam_beta2), eps, decoupled wd ``adam_wd`` (scaled by lr),
    fused on CUDA. Muon: Nesterov, ``muon_wd``, ``muon_ns_steps``; momentum is set per
    step by the trainer (:func:`muon_momentum`); its Newton-Schulz precision is
    ``muon_ns_dtype`` resolved for the parameters' device (:func:`resolve_ns_dtype`). Each param
    group has ``name`` and ``base_lr``.
    """
    table = param_groups(model, tcfg)
    params = dict(model.named_parameters())
    fused = all(p.is_cuda for p in params.values())
    ns_dtype = resolve_ns_dtype(tcfg.muon_ns_dtype, "cuda" if fused and params else "cpu")

    def groups(*names: str) -> list[dict]:
        return [{"params": [params[n] for n in table[g].names], "name": g, "base_lr": table[g].base_lr,
                 "lr": table[g].base_lr} for g in names if table[g].names]

    def adamw(gs: list[dict]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(gs, lr=gs[0]["lr"], betas=(tcfg.adam_beta1, tcfg.adam_beta2),
                                 eps=tcfg.adam_eps, weight_decay=tcfg.adam_wd, fused=fused or None)

    def muon(gs: list[dict]) -> Muon:
        return Muon(gs, lr=gs[0]["lr"], momentum=tcfg.muon_momentum_start, nesterov=True,
                    weight_decay=tcfg.muon_wd, ns_steps=tcfg.muon_ns_steps, ns_dtype=ns_dtype)

    opts: list[torch.optim.Optimizer] = []
    for names, make in ((("embed",), adamw), (("scalar-enc", "scalar-dec", "scalar-other"), adamw),
                        (("matrix-enc", "matrix-dec"), muon), (("bigram-proj",), muon)):
        gs = groups(*names)
        if gs:
            opts.append(make(gs))
    return opts, table


def format_group_table(table: dict[str, GroupRow]) -> str:
    lines = [f"{'group':<14}{'optimizer':<10}{'base_lr':>9}{'tensors':>9}{'params':>12}"]
    for r in table.values():
        if r.names:
            lines.append(f"{r.group:<14}{r.optimizer:<10}{r.base_lr:>9.4f}{len(r.names):>9}{r.numel:>12,}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Schedules


def lr_multiplier(step: int, tcfg: TrainConfig, elapsed_s: float = 0.0) -> float:
    """The LR multiplier f(step): 1, then linear (or cosine) decay to 0 over the last ``warmdown`` steps.

    f(s) = 1 for s < S - W, (S - s)/W for S - W <= s < S (linear); the cosine option
    uses 0.5(1 + cos(pi (s - S + W)/W)) over the same window. An optional LR warm-up
    multiplies by (s+1)/lr_warmup for s < lr_warmup. With ``max_wallclock`` > 0 and
    ``elapsed_s`` given, the warmdown is also applied in wall-clock time (the window is
    the last warmdown/steps fraction of the budget) and the smaller factor wins.
    """
    S, W = tcfg.steps, tcfg.warmdown

    def shape(progress_left: float) -> float:  # progress_left = fraction of the warmdown window left
        progress_left = min(max(progress_left, 0.0), 1.0)
        if tcfg.lr_schedule == "linear":
            return progress_left
        return 0.5 * (1.0 + math.cos(math.pi * (1.0 - progress_left)))

    f = 1.0
    if W > 0 and step >= S - W:
        f = shape((S - step) / W)
    elif W <= 0 and step >= S:
        f = 0.0
    if tcfg.max_wallclock > 0 and elapsed_s > 0 and W > 0:
        budget_wd = tcfg.max_wallclock * min(W, S) / S
        left = tcfg.max_wallclock - elapsed_s
        if left < budget_wd:
            f = min(f, shape(left / budget_wd))
    if tcfg.lr_warmup > 0 and step < tcfg.lr_warmup:
        f *= (step + 1) / tcfg.lr_warmup
    return f


def muon_momentum(step: int, tcfg: TrainConfig) -> float:
    """mu_s = start + (end - start) * min(s / warmup, 1): 0.92 -> 0.99 over 1500 steps."""
    frac = min(step / tcfg.muon_momentum_warmup, 1.0) if tcfg.muon_momentum_warmup > 0 else 1.0
    return (1.0 - frac) * tcfg.muon_momentum_start + frac * tcfg.muon_momentum


def set_lr(optimizers: list[torch.optim.Optimizer], step: int, tcfg: TrainConfig,
           elapsed_s: float = 0.0) -> float:
    """Set lr = base_lr * f(step) on every group and the Muon momentum; return f(step)."""
    f = lr_multiplier(step, tcfg, elapsed_s)
    mu = muon_momentum(step, tcfg)
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * f
            if isinstance(opt, Muon):
                g["momentum"] = mu
    return f
