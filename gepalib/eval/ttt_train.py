"""The training pass of the TTT families that adapt the base weights (``full``, ``phased``,
``phased+lora_doc``; see gepalib.eval.ttt and docs/evaluation.md).

:func:`train_steps` runs ``ttt_epochs`` passes over a list of aligned sequences (target ranges
[a, a+n): inputs val[a:a+n], targets val[a+1:a+n+1]), one optimizer step per batch of
``ttt_batch_seqs`` consecutive sequences, on the batch's mean cross-entropy: every rank takes
a contiguous share of the batch, weights its loss by its share of the batch's tokens, and the
gradients are summed across ranks (the same global mean for any world size). Then a
global-norm clip at ``ttt_grad_clip`` over the trainable parameters and one step of SGD
(momentum, no dampening/Nesterov/wd) or AdamW. Parameters named ``blocks.{i}.*`` with
i < ``ttt_freeze_blocks`` are frozen. A family creates the optimizer once, so that its state
carries over between segments (gepalib.eval.ttt_families.Adapter).
"""
from __future__ import annotations

import importlib.util

import torch
from torch import Tensor, nn

from gepalib import dist
from gepalib.config import TTTConfig
from gepalib.eval.windows import model_device
from gepalib.validation import TTT_OPTIMIZERS


def is_frozen(name: str, freeze_blocks: int) -> bool:
    """A parameter is frozen when its name contains ``blocks.<i>.`` for i < freeze_blocks.
    Matched on whole name components, so wrapper prefixes (``_orig_mod.`` of torch.compile,
    ``module.`` of DDP) still freeze and ``blocks.1.`` never matches ``blocks.11.``."""
    return any(f".blocks.{i}." in f".{name}" for i in range(freeze_blocks))


def trainable_named_params(model: nn.Module, freeze_blocks: int) -> list[tuple[str, nn.Parameter]]:
    """Parameters TTT adapts: all except those of blocks 0 .. freeze_blocks-1."""
    nb = len(getattr(model, "blocks", []))
    if freeze_blocks < 0 or (nb and freeze_blocks > nb):
        raise ValueError(f"ttt_freeze_blocks={freeze_blocks} must be in [0, {nb}]")
    return [(n, p) for n, p in model.named_parameters() if not is_frozen(n, freeze_blocks)]


def make_optimizer(params: list[nn.Parameter], tcfg: TTTConfig) -> torch.optim.Optimizer:
    """``ttt_optimizer``: SGD (``ttt_momentum``, no dampening/Nesterov/weight decay) or AdamW."""
    if tcfg.ttt_optimizer == "sgd":
        return torch.optim.SGD(params, lr=tcfg.ttt_lr, momentum=tcfg.ttt_momentum, dampening=0.0,
                               nesterov=False, weight_decay=0.0)
    if tcfg.ttt_optimizer == "adamw":
        return torch.optim.AdamW(params, lr=tcfg.ttt_lr, betas=(tcfg.ttt_adam_beta1, tcfg.ttt_adam_beta2),
                                 weight_decay=tcfg.ttt_adam_wd)
    raise ValueError(f"ttt_optimizer={tcfg.ttt_optimizer!r}; choose one of {TTT_OPTIMIZERS}")


def ttt_forward(model: nn.Module, enabled: bool, device_type: str | None = None) -> nn.Module:
    """What TTT's training pass calls for its loss: ``model`` torch.compile'd (static shapes: one
    graph per batch shape, i.e. the full batch and a chunk's last one) on CUDA when ``enabled``
    (``ttt_compile``) and triton is there; else ``model`` itself (the CPU runs eager). The compiled
    module shares ``model``'s parameters, so the optimizer and the scoring see the same weights."""
    device_type = device_type or model_device(model).type
    if not enabled or device_type != "cuda" or importlib.util.find_spec("triton") is None:
        return model
    return torch.compile(model, dynamic=False)


def train_steps(model: nn.Module, val_tokens: Tensor, seqs: list[tuple[int, int]], params: list[nn.Parameter],
                opt: torch.optim.Optimizer, lr: float, tcfg: TTTConfig, device: torch.device, autocast: str,
                chunk: int, hooks, fwd: nn.Module | None = None) -> list[float]:
    """``ttt_epochs`` passes over ``seqs`` (module docstring); returns each step's mean loss. The
    losses and gradient norms stay on the device until the pass ends (one host sync per call;
    ``hooks.on_step`` sees each step's norm then). ``fwd``: the module that computes the loss
    (:func:`ttt_forward`; default ``model``)."""
    fwd = model if fwd is None else fwd
    rank, world = dist.rank_world()
    for g in opt.param_groups:
        g["lr"] = lr
    steps: list[tuple[int, int, Tensor, Tensor]] = []  # (epoch, batch, loss, grad norm) on the device
    model.train()
    for ep in range(tcfg.ttt_epochs):
        for b, b0 in enumerate(range(0, len(seqs), tcfg.ttt_batch_seqs)):
            batch = seqs[b0: b0 + tcfg.ttt_batch_seqs]
            lo, hi = dist.shard_range(len(batch), rank, world)
            mine = batch[lo:hi]
            if hooks is not None:
                hooks.on_train(chunk, ep, b, [(a, a + n) for a, n in mine])
            for p in params:
                p.grad = torch.zeros_like(p)
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            if mine:
                x = torch.stack([val_tokens[a: a + n] for a, n in mine]).to(device=device, dtype=torch.int64)
                y = torch.stack([val_tokens[a + 1: a + n + 1] for a, n in mine]).to(device=device, dtype=torch.int64)
                with dist.autocast_context(device, autocast):
                    loss = fwd(x, y)
                w = x.numel() / sum(n for _, n in batch)  # this rank's share of the batch's tokens
                (loss.float() * w).backward()
                loss_sum += loss.detach().double() * w
            loss_sum = dist.reduce_grads(params, loss_sum, mean=False)  # the global sums, one flat all-reduce
            if tcfg.ttt_grad_clip > 0:
                gn = torch.nn.utils.clip_grad_norm_(params, tcfg.ttt_grad_clip)
            else:
                gn = torch.linalg.vector_norm(torch.stack([p.grad.float().norm() for p in params]))
            opt.step()
            steps.append((ep, b, loss_sum, gn.detach().double()))
    for p in params:
        p.grad = None
    model.eval()
    # the pass's one host sync: every step's loss and gradient norm read back together
    values = torch.stack([v for *_, ls, gn in steps for v in (ls, gn)]).tolist() if steps else []
    if hooks is not None:
        for (ep, b, _, _), gn in zip(steps, values[1::2]):
            hooks.on_step(chunk, ep, b, lr, gn)
    return values[0::2]

