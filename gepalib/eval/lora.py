"""Per-document low-rank adapters for TTT, attached to a GPT by forward hooks.

One adapter per **lane** (a document adapted side by side with others): for every adapted
linear y = x W^T the hooked output is

    y' = y + scale * (x A_l) B_l        A_l: [in, r], B_l: [r, out], lane l = batch row l

with scale = alpha / r (``ttt_lora_alpha`` > 0) or 1 (alpha = 0, as in PR #1530). Targets
(``ttt_lora_targets``): ``q``, ``k``, ``v``, ``proj`` (the attention output), ``up``,
``down`` (``mlp`` = both) of every block, and ``head``: the tied output layer, where the
delta joins the pre-softcap logits z = RMSNorm(x)/cap E_tok^T (the hook recomputes the
head from the last block's output, so ``head`` costs one more head matmul per token).

Initialisation (as the challenge's line): B = 0, so a fresh adapter changes nothing, and
A ~ U(-1/sqrt(in), 1/sqrt(in)) drawn once from a fixed seed and shared by every lane and
document: a document's adaptation depends on its own tokens only. :meth:`LoRA.reset`
restores that state at every document (``warm_start_a``: B only, A keeps what it learned).

The base model is never modified: :meth:`LoRA.attach` registers hooks, :meth:`LoRA.detach`
removes them, and the model is exactly what it was.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gepalib.model import rms_norm
from gepalib.validation import lora_targets

INIT_SEED = 0  # the fixed seed of A's initialisation
ADAM_EPS = 1e-10  # PR #1530's AdamW eps


def target_modules(model: nn.Module, targets: tuple[str, ...]) -> dict[str, nn.Module]:
    """{name: linear} of the adapted linears of every block ("head" is handled separately)."""
    where = {"q": ("attn", "q"), "k": ("attn", "k"), "v": ("attn", "v"), "proj": ("attn", "out"),
             "up": ("mlp", "up"), "down": ("mlp", "down")}
    out = {}
    for i, block in enumerate(model.blocks):
        for t in targets:
            if t in where:
                part, lin = where[t]
                out[f"blocks.{i}.{part}.{lin}"] = getattr(getattr(block, part), lin)
    return out


class LoRA(nn.Module):
    """Adapters for ``lanes`` documents on ``model`` (module docstring). Parameters
    ``A[name]`` [lanes, in, r] and ``B[name]`` [lanes, r, out] (fp32, on the model's device).
    :attr:`active` lists the lanes a forward pass carries, in order (None: all); the first k
    lanes are a view, any other choice a copy."""

    def __init__(self, model: nn.Module, targets: str | tuple[str, ...], rank: int, alpha: float, lanes: int,
                 warm_start_a: bool = False):
        super().__init__()
        names = lora_targets(targets) if isinstance(targets, str) else tuple(targets)
        self.__dict__["model"] = model  # a reference, not a submodule: parameters() are the adapters only
        self.rank, self.lanes, self.warm_start_a = int(rank), int(lanes), bool(warm_start_a)
        self.scale = float(alpha) / rank if alpha > 0 else 1.0
        self.linears = target_modules(model, names)
        shapes = {n: (m.in_features, m.out_features) for n, m in self.linears.items()}
        if "head" in names:
            shapes["head"] = (model.cfg.model_dim, model.cfg.vocab_size)
        device = next(model.parameters()).device
        g = torch.Generator().manual_seed(INIT_SEED)
        self._a0, self.A, self.B = {}, nn.ParameterDict(), nn.ParameterDict()
        for n, (fin, fout) in shapes.items():
            bound = 1.0 / math.sqrt(fin)
            self._a0[n] = (torch.rand(fin, self.rank, generator=g) * 2 - 1).mul_(bound).to(device)
            key = n.replace(".", "_")
            self.A[key] = nn.Parameter(self._a0[n].expand(self.lanes, fin, self.rank).clone())
            self.B[key] = nn.Parameter(torch.zeros(self.lanes, self.rank, fout, device=device))
        self.active: list[int] | None = None
        self._handles: list[Any] = []
        self._x_last: Tensor | None = None

    # -- state --------------------------------------------------------------------------
    @torch.no_grad()
    def reset(self) -> None:
        """Every lane back to a fresh adapter: B = 0 and (unless ``warm_start_a``) A = A0."""
        for n, a0 in self._a0.items():
            key = n.replace(".", "_")
            self.B[key].zero_()
            if not self.warm_start_a:
                self.A[key].copy_(a0.expand_as(self.A[key]))

    def make_optimizer(self, kind: str, lr: float, beta1: float, beta2: float, wd: float) -> torch.optim.Optimizer:
        """AdamW (eps 1e-10, decoupled weight decay) or SGD (momentum ``beta1``) over the adapters:
        elementwise updates, so every lane is optimized on its own document's gradient only."""
        params = list(self.parameters())
        if kind == "adamw":
            return torch.optim.AdamW(params, lr=lr, betas=(beta1, beta2), eps=ADAM_EPS, weight_decay=wd)
        if kind == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=beta1, weight_decay=wd)
        raise ValueError(f"ttt_lora_optimizer={kind!r}; choose adamw or sgd")

    def _lane(self, p: Tensor) -> Tensor:
        if self.active is None:
            return p
        if self.active == list(range(len(self.active))):
            return p[:len(self.active)]
        return p.index_select(0, torch.tensor(self.active, device=p.device))

    def delta(self, name: str, x: Tensor) -> Tensor:
        """scale * (x A) B for the active lanes, x [lanes, T, in]."""
        key = name.replace(".", "_")
        a, b = self._lane(self.A[key]), self._lane(self.B[key])
        return torch.matmul(torch.matmul(x, a.to(x.dtype)), b.to(x.dtype)) * self.scale

    # -- hooks --------------------------------------------------------------------------
    def attach(self) -> "LoRA":
        if self._handles:
            raise RuntimeError("LoRA adapters are attached already")
        for name, mod in self.linears.items():
            self._handles.append(mod.register_forward_hook(self._linear_hook(name)))
        if "head" in self._a0:
            self._handles.append(self.model.blocks[-1].register_forward_hook(self._capture))
            self._handles.append(self.model.register_forward_hook(self._head_hook))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self._x_last = [], None

    def __enter__(self) -> "LoRA":
        return self.attach()

    def __exit__(self, *exc) -> bool:
        self.detach()
        return False

    def _linear_hook(self, name: str):
        def hook(mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> Tensor:
            return out + self.delta(name, inp[0])
        return hook

    def _capture(self, mod: nn.Module, inp: Any, out: Tensor) -> None:
        self._x_last = out

    def _head_hook(self, mod: nn.Module, inp: Any, out: Tensor) -> Tensor:
        """Recompute the logits of the last block's output with the head delta (the model's own
        head: z = RMSNorm(x)/cap E_tok^T, logits = cap tanh(z)). Needs a call without targets."""
        if out.dim() != 3 or self._x_last is None:
            raise RuntimeError("the head adapter needs model(idx) without targets (logits out)")
        cap = self.model.cfg.logit_softcap
        h = rms_norm(self._x_last, 1.0 / cap)
        z = F.linear(h, self.model.tok_emb.weight.to(h.dtype)).float() + self.delta("head", h).float()
        self._x_last = None
        return cap * torch.tanh(z)


def token_nll(model: nn.Module, x: Tensor, y: Tensor, cache: Any = None) -> Tensor:
    """Per-token nll [B, T] through the model's logits (so that a head adapter applies); the
    same cross-entropy the model computes for ``reduction='none'``."""
    logits = model(x, cache=cache)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), reduction="none").view(y.shape)
