"""Two of the model's element-wise steps with a hand-written backward, for eager mode.

Autograd's generic backward of ``relu(u).square()`` takes four passes over the MLP's hidden
activations (``r.pow(1)``, ``2 *``, ``* grad``, the ReLU mask), and that of partial RoPE on
slices of q and k zero-fills and copies a full-size gradient per slice and then sums them. The
functions here compute the same numbers in fewer passes: every non-zero gradient entry is
bit-equal to autograd's (the same products, rounded once each; ``2 * r`` is exact), and so is the
forward. Only the sign of an exact zero may differ.

Under ``torch.compile`` (CUDA) the model keeps the plain expressions, which the compiler fuses
itself; these functions are the eager path's (the CPU's, and any device without compile).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _compiling() -> bool:
    return torch.compiler.is_compiling()


class _Relu2(torch.autograd.Function):
    """a = relu(u)^2; du = (r + r) * da with r = relu(u) (zero where u <= 0, as ReLU's mask)."""

    @staticmethod
    def forward(ctx, u: Tensor) -> Tensor:
        r = F.relu(u)
        ctx.save_for_backward(r)
        return r.square()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (r,) = ctx.saved_tensors
        return torch.add(r, r).mul_(grad)


def relu2(u: Tensor) -> Tensor:
    """relu(u)^2 (its backward in two passes in eager mode)."""
    if _compiling() or not torch.is_grad_enabled() or not u.requires_grad:
        return F.relu(u).square()
    return _Relu2.apply(u)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor, sign: float) -> Tensor:
    """u' = u cos + w sin, w' = w cos - u sin (sign +1; the inverse rotation with -1)."""
    half = cos.size(-1)
    u, w, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
    if sign > 0:
        return torch.cat((u * cos + w * sin, w * cos - u * sin, rest), dim=-1)
    return torch.cat((u * cos - w * sin, u * sin + w * cos, rest), dim=-1)


class _Rope(torch.autograd.Function):
    """Partial RoPE; the backward is the inverse rotation of the gradient (no per-slice buffers)."""

    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin, 1.0)

    @staticmethod
    def backward(ctx, grad: Tensor):
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, sin, -1.0), None, None


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first 2*cos.size(-1) dims of x [..., T, hd]: u'=u cos+w sin, w'=-u sin+w cos
    (cos, sin [T, r/2], cast to x's dtype)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    if _compiling() or not torch.is_grad_enabled() or not x.requires_grad:
        return _rotate(x, cos, sin, 1.0)
    return _Rope.apply(x, cos, sin)
