"""The submission's parameter groups and step schedules (see docs/training.md).

* :func:`build_optimizers` -- the parameter-group table (:func:`param_groups`) and its
  optimizers: AdamW for embeddings and vectors, :class:`gepalib.muon.Muon` for the matrices.
* :func:`lr_multiplier`, :func:`muon_momentum` -- the step schedules.

Every param group carries ``name`` (its group, :data:`GROUPS`) and ``base_lr``; the trainer
sets ``lr = base_lr * lr_multiplier(step)`` before each step (:func:`set_lr`).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gepalib.config import TrainConfig
from gepalib.muon import Muon, resolve_ns_dtype


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
