"""Process-group plumbing: one code path with or without torchrun.

nccl on CUDA, gloo on CPU. Under torchrun the usual ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``/``MASTER_ADDR`` variables are set and we join the group; without
them we run as a single process and every collective is a no-op. The model
never imports this module.
"""
from __future__ import annotations

import gc
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def device_type(name: str = "auto") -> str:
    """The device type a ``device`` setting (auto | cpu | cuda) means here: ``auto`` is cuda when
    CUDA is available, else cpu; the others as given."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` picks cuda:<local_rank> when CUDA is available, else cpu."""
    name = device_type(name)
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device=cuda requested but CUDA is not available")
        cuda_settings()
        return torch.device("cuda", local_rank)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {name!r} (auto | cpu | cuda)")


def cuda_settings() -> None:
    """The submission's CUDA math settings, for every CUDA code path (training, evaluation, TTT):
    TF32 for fp32 matmuls and convolutions, and SDPA pinned to flash attention by leaving out
    cuDNN attention (the dispatcher's order is then flash, memory-efficient, math). Unlike the
    submission, memory-efficient and math stay enabled as fallbacks for the calls flash cannot
    take (the banded masks of streaming evaluation, fp32 inputs without autocast)."""
    set_tf32()
    torch.backends.cuda.enable_flash_sdp(True)
    if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
        torch.backends.cuda.enable_cudnn_sdp(False)


def set_tf32() -> str:
    """TF32 for fp32 matmuls and convolutions: torch's ``fp32_precision`` API where it exists
    (torch >= 2.9), else the legacy ``allow_tf32`` flags. Returns which one was used."""
    matmul, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and conv is not None and hasattr(conv, "fp32_precision"):
        matmul.fp32_precision = "tf32"
        conv.fp32_precision = "tf32"
        return "fp32_precision"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return "allow_tf32"


def init(device: str = "auto") -> DistInfo:
    """Join the process group if launched by torchrun, else run single-process."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the active process group; ``(0, 1)`` in a single process."""
    if active():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum across ranks (no-op single-process). Returns ``t``."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(dist.get_world_size())
    return t


def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    if active():
        dist.broadcast(t, src=src)
    return t


def barrier() -> None:
    if active():
        dist.barrier()


def shutdown(barrier: bool = True) -> None:
    """Leave the process group cleanly.

    Once any ``torch.optim`` optimizer has been built, ``torch._dynamo`` is imported and
    keeps references to the default group, so ``destroy_process_group`` no longer frees it
    and gloo's worker threads outlive it. A thread still releasing its last collective
    when the interpreter finalises aborts the process ("terminate called without an
    active exception": about 40% of 2-process runs with torch 2.13). A barrier, then a
    ``gc.collect()`` while the interpreter is fully alive, lets every rank's workers
    finish first: 0 aborts in 75 runs here (tests/test_distributed.py::test_shutdown_exits_cleanly).

    Pass ``barrier=False`` on an error path: a rank that failed alone must not wait for
    peers that will never arrive (torchrun then stops them)."""
    if dist.is_available() and dist.is_initialized():
        if barrier and dist.get_world_size() > 1:
            dist.barrier()
        gc.collect()
        dist.destroy_process_group()


def autocast_context(device: torch.device, mode: str = "auto"):
    """bf16 autocast on CUDA by default; fp32 (no autocast) on CPU by default."""
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" else "none"
    if mode == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if mode == "none":
        return torch.autocast(device_type=device.type, enabled=False)
    raise ValueError(f"unknown autocast mode {mode!r} (auto | bf16 | none)")


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous split of ``range(n)`` across ranks (first ranks get the remainder)."""
    base, rem = divmod(n, world)
    start = rank * base + min(rank, rem)
    return start, start + base + (1 if rank < rem else 0)


# ---------------------------------------------------------------------------
# Replicas: the same weights on every rank; gradients averaged in buckets


def tensor_checksums(tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """int64 [len(tensors), 2]: per tensor, the sum of its bytes read as int16 words, and the
    same sum weighted by (position mod 251) + 1. Exact integer arithmetic (|sum| < 2^55 for
    any tensor below 2^31 elements), so equal tensors give equal checksums on every device and
    rank; a flipped bit or two swapped values change them."""
    rows = []
    for t in tensors.values():
        t = t.detach().reshape(-1)
        if t.dtype == torch.bool or t.element_size() == 1:
            w16 = t.to(torch.int16)
        else:
            w16 = t.contiguous().view(torch.int16)
        v = w16.to(torch.int64)
        pos = torch.arange(v.numel(), device=v.device, dtype=torch.int64) % 251 + 1
        rows.append(torch.stack([v.sum(), (v * pos).sum()]))
    if not rows:
        return torch.zeros((0, 2), dtype=torch.int64)
    return torch.stack(rows)


def check_replicas(tensors: Mapping[str, torch.Tensor], what: str = "the weights") -> None:
    """Raise RuntimeError on every rank when the ranks' ``tensors`` differ (no-op in one process):
    their :func:`tensor_checksums` are all-reduced with MIN and MAX, which agree only when every
    rank holds the same values. The message names the first tensors that differ."""
    if not active():
        return
    names = list(tensors)
    c = tensor_checksums(tensors)
    if c.numel() == 0:
        return
    lo, hi = c.clone(), c.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    bad = [names[i] for i in (lo != hi).any(1).nonzero().flatten().tolist()]
    if bad:
        raise RuntimeError(f"the {dist.get_world_size()} processes disagree on {what}: {len(bad)} of {len(names)} "
                           f"tensors differ ({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}); every rank "
                           f"must build the same model (same config, seed and code on every node)")


def _fp32_mean_hook(group, bucket):
    """DDP communication hook: each bucket summed in fp32 (bf16 gradients upcast first, as
    the flat all-reduce did), divided by the world size, cast back to the bucket's dtype."""
    buf = bucket.buffer()
    t = buf if buf.dtype == torch.float32 else buf.float()
    world = dist.get_world_size(group)
    fut = dist.all_reduce(t, group=group, async_op=True).get_future()

    def mean(f):
        out = f.value()[0].div_(world)
        return out if out.dtype == buf.dtype else out.to(buf.dtype)

    return fut.then(mean)


def data_parallel(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` (possibly torch.compile'd) in DistributedDataParallel, as the submission ran:
    gradients averaged in ~25 MB buckets launched while the backward still runs (under
    torch.compile dynamo splits the graph at the buckets so the overlap survives), each bucket
    in fp32 (:func:`_fp32_mean_hook`). The caller sets ``require_backward_grad_sync`` so that
    only the last micro-step of an accumulated step communicates. Every parameter must get a
    gradient each step (no ``find_unused_parameters``)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    ddp = DDP(module, device_ids=ids, broadcast_buffers=False)
    ddp.register_comm_hook(None, _fp32_mean_hook)
    return ddp


def reduce_grads(params: list[torch.nn.Parameter], extras: torch.Tensor, *, mean: bool = True) -> torch.Tensor:
    """Average (``mean=False``: sum) ``params``' gradients across ranks with one flat fp32
    all-reduce (the trainer passes none when DDP averaged them during the backward) and the
    ``extras`` vector in its own dtype; returns the reduced extras. TTT sums: each rank's loss is
    already weighted by its share of the batch."""
    if not active():
        return extras
    reduce = all_reduce_mean if mean else all_reduce_sum
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        reduce(flat)
        off = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[off:off + n].view_as(g))
            off += n
    return reduce(extras.clone())
