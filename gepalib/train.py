"""The distributed trainer (see docs/training.md).

One trainer for notebooks, the CLI and torchrun::

    train(cfg, "runs/x")                                  # in-process, 1 process
    gepa train --preset tiny --run-dir runs/x [--no-resume]
    torchrun --nproc-per-node 2 -m gepalib train --preset tiny --run-dir runs/x

    t = Trainer(cfg, "runs/x")                            # or one step at a time
    r = t.step()                                          # r.loss, r.seconds, ...
    t.close()

One optimizer step = A micro-steps of ``micro_batch_tokens`` per rank, A =
batch_tokens / (world_size * micro_batch_tokens); the loss is scaled by 1/A and
gradients are averaged across ranks (one flat all-reduce), so 1, 2, 4 or 8
processes train the same math. Then: global-norm clip, lr = base_lr * f(step)
on every group, Muon momentum warm-up, optimizer steps, EMA update.

A step waits for the device once (loss, gradient norm, stop flag and clock read together,
after the optimizers' kernels are queued; batches reach CUDA through pinned memory). Several processes check that they built the same weights,
then train under DDP (fp32 buckets reduced during the backward). ``compile``: torch.compile,
and on CUDA compiled periodic validation. The run
directory's files (config.json, metrics.jsonl, train.log, checkpoints/, weights,
summary.json): docs/runs.md. Stopping early and its test hooks: gepalib.faults. Evaluation,
checkpoints and the run loop around the steps: gepalib.trainloop.
"""
from __future__ import annotations

import copy
import importlib.util
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gepalib import checkpoint as ckpt
from gepalib import dist
from gepalib.bpb import build_byte_luts
from gepalib.config import RunConfig, override
from gepalib.data import TrainLoader, load_val_tokens
from gepalib.ema import EMA
from gepalib.dist import reduce_grads  # module-level name: the failure tests hook it here
from gepalib.faults import FaultHooks, NonFiniteLoss, StopFlag
from gepalib.model import GPT
from gepalib.muon import resolve_ns_dtype
from gepalib.optim import build_optimizers, format_group_table, set_lr
from gepalib.paths import resolve_path
from gepalib.plan import check_data_dir, make_plan
from gepalib.rundir import RunDir, identity_hash
from gepalib.runlock import lock_run_dir
from gepalib.trainloop import RunLoop
from gepalib.trainlog import Logger, environment, truncate_metrics, write_header

TIMING_KEYS = ("ms_per_step", "tok_per_s", "train_time_s", "eval_s")


@dataclass(frozen=True)
class StepResult:
    loss: float  # global mean train loss of the step
    lr_mult: float  # f(step) the step used
    seconds: float  # wall time of the step
    stop_requested: bool  # a SIGTERM/SIGINT arrived on some rank


# ---------------------------------------------------------------------------
# The trainer


class Trainer(RunLoop):
    """One run in one run directory.

    Building it does everything before the first step: the plan and data checks, the run
    directory (a different config there is refused; ``resume=False`` starts over), data,
    model, optimizers, the fully undone compile warm-up, EMA and the resume from the newest
    checkpoint. :meth:`step` takes one optimizer step; from :class:`gepalib.trainloop.RunLoop`,
    :meth:`evaluate` scores the live and EMA weights, :meth:`save` writes a checkpoint,
    :meth:`run` trains to the end (cadence, logging, final stages) and returns the summary. A run dir that already holds the
    finished run is not retrained: ``complete`` is its summary and :meth:`run` returns it.
    """

    def __init__(self, cfg: RunConfig, run_dir: str | os.PathLike, *, resume: bool = True,
                 faults: FaultHooks | None = None):
        self.info = dist.init(cfg.train.device)
        self.dev, self.main = self.info.device, self.info.is_main
        # Muon's Newton-Schulz precision for this device, recorded resolved in config.json and train.log
        cfg = override(cfg, muon_ns_dtype=resolve_ns_dtype(cfg.train.muon_ns_dtype, self.dev.type))
        self.cfg, tc = cfg, cfg.train
        self.plan = make_plan(cfg, self.info.world_size)
        self.data_info = check_data_dir(cfg, self.plan, main=self.main)
        self.rd = RunDir(resolve_path(run_dir))
        self.fingerprint = identity_hash(cfg, resume=True)
        self.faults = FaultHooks.from_env() if faults is None else faults
        self.log: Logger | None = None
        self.failed = ""  # set by a non-finite step (see _fail)
        self.host_wait_s = 0.0  # the last step's wait at its one sync (the GPU check reports it)
        self._pinned: dict[int, torch.Tensor] = {}  # CUDA: a pinned batch buffer per micro-step
        self.notes: list[str] = []  # resume warnings, for train.log once it is open
        # the one writer of the run dir from here on (a second trainer, quantize or eval fails at once)
        self.lock = lock_run_dir(self.rd.path, "train", is_main=self.main, device=self.dev)
        try:
            self.complete = self._open_run_dir(resume)
            if self.complete is not None:
                self.close()
                return
            self._build()
            self.train_time, self._tail, self._t_clock = 0.0, 0.0, 0.0  # the clock: see step()
            warm_signum = self._compile_warmup() if tc.compile_warmup > 0 else 0
            self.stop = StopFlag(warm_signum)  # a signal during warm-up stops the run after its first real step
            self.ema = EMA(self.model, tc.ema_decay)
            self.steps_done, self.train_time, self._tail = 0, 0.0, 0.0
            if self.resumed_from is not None:
                self._resume(self.resumed_from)
            if self.main and resume:  # without a checkpoint nothing logged so far survives (not even step 0)
                truncate_metrics(self.rd, self.steps_done if self.resumed_from is not None else -1)
            dist.barrier()
            self._open_log()
        except BaseException as e:
            if isinstance(e, OSError):  # a full or read-only disk: recorded when summary.json can be written
                self._record_failed(f"{e} (before step {getattr(self, 'steps_done', 0) + 1})")
            self.close()
            raise

    # -- construction -----------------------------------------------------------
    def _open_run_dir(self, resume: bool) -> dict[str, Any] | None:
        """Refuse a different config, find the resume point (a checkpoint that verifies), write
        config.json and env.json. Returns the summary when the run dir holds this finished run."""
        complete, self.resumed_from, self.notes = ckpt.open_for_training(
            self.rd, self.cfg, self.fingerprint, resume, main=self.main, device=self.dev,
            env=lambda: {**environment(self.info, self.plan.accum), "data": self.data_info}, plan=self.plan.record())
        return complete

    def _build(self) -> None:
        """Validation tokens, byte tables, train loader, seeded model init, optimizers."""
        cfg, tc, dev = self.cfg, self.cfg.train, self.dev
        data_dir = resolve_path(cfg.data.data_dir)
        self.val_tokens = load_val_tokens(data_dir, self.plan.eval_seq_len, cfg.model.vocab_size,
                                          max_targets=cfg.data.val_tokens)
        self.luts = build_byte_luts(cfg.data.tokenizer_file(), cfg.model.vocab_size)
        # token ids were checked once by check_data_dir: no max() over each new shard while training
        self.loader = TrainLoader(data_dir, self.info.rank, self.info.world_size, None, cfg.data.train_shards,
                                  cfg.train.data_seed)
        random.seed(tc.seed)
        np.random.seed(tc.seed)
        torch.manual_seed(tc.seed)
        self.model = GPT(cfg.model).to(dev)  # init on CPU: identical on every rank and device
        self.eval_model = copy.deepcopy(self.model)  # holds EMA weights for evaluation
        self.params = list(self.model.parameters())
        self.n_params = sum(p.numel() for p in self.params)
        self.optimizers, self.group_table = build_optimizers(self.model, tc)
        # (TF32 and the flash SDPA pin: gepalib.dist.cuda_settings, run when a CUDA device is picked)
        self.compiled = self._compiled(self.model) if tc.compile else None
        self.fwd = self.model if self.compiled is None else self.compiled
        graphs = self.compiled is not None and dev.type == "cuda"  # compiled validation on CUDA only
        self.eval_live = self.compiled if graphs else self.model
        self.eval_ema = self._compiled(self.eval_model) if graphs else self.eval_model
        self.ddp = None
        if self.info.is_distributed:  # checked before DDP, which would copy rank 0's weights over a mismatch
            dist.check_replicas(self.model.state_dict(), "the initial weights")
            self.ddp = self.fwd = dist.data_parallel(self.fwd, dev)

    def _compiled(self, module: torch.nn.Module) -> torch.nn.Module | None:
        """torch.compile(module), or None (eager, said in train.log) where inductor cannot run."""
        if self.dev.type == "cuda" and importlib.util.find_spec("triton") is None:
            if not any("triton" in n for n in self.notes):
                self.notes.append("compile: triton is not installed, so the model runs eagerly")
            return None
        return torch.compile(module, dynamic=False)

    def _compile_warmup(self) -> int:
        """``compile_warmup`` real steps (no fault hooks), then weights, optimizer state, loader and
        RNG put back exactly. Returns the signal that arrived meanwhile (0: none)."""
        tc = self.cfg.train
        snap = (copy.deepcopy(self.model.state_dict()), [copy.deepcopy(o.state_dict()) for o in self.optimizers],
                self.loader.state_dict(), ckpt.capture_rng())
        with StopFlag() as warm_stop:
            for s in range(tc.compile_warmup):
                set_lr(self.optimizers, s, tc)
                self._update(s, warm_stop, None, None)
        self.model.load_state_dict(snap[0])
        for o, st in zip(self.optimizers, snap[1]):
            o.load_state_dict(st)
        self.loader.load_state_dict(snap[2])
        ckpt.restore_rng(snap[3])
        self.model.zero_grad(set_to_none=True)
        return warm_stop.signum

    def _resume(self, path: Path) -> None:
        # Load on the CPU: the RNG states must stay CPU tensors (torch.set_rng_state rejects a
        # CUDA tensor), and load_state_dict moves model, EMA and optimizer state to their devices.
        # (Its checksum was verified when it was chosen.)
        ck = ckpt.load_checkpoint(path, map_location="cpu", verify=False)
        if ck.get("fingerprint") != self.fingerprint:
            raise ValueError(f"checkpoint {path} belongs to a different config (fingerprint "
                             f"{ck.get('fingerprint')} != {self.fingerprint}); use --no-resume or a new --run-dir")
        self.model.load_state_dict(ck["model"])
        self.ema.load_state_dict(ck["ema"])
        if len(ck["optimizers"]) != len(self.optimizers):
            raise ValueError(f"checkpoint {path}: {len(ck['optimizers'])} optimizer states, expected "
                             f"{len(self.optimizers)}")
        for o, st in zip(self.optimizers, ck["optimizers"]):
            o.load_state_dict(st)
        self.loader.load_state_dict(ck["loader"])
        ckpt.restore_rng(ck["rng"])
        self.steps_done, self.train_time = int(ck["step"]), float(ck["train_time"])

    def _open_log(self) -> None:
        self.log = Logger(self.rd, self.main, self.cfg.train.steps, self.steps_done, self.cfg.train.progress)
        write_header(self.log, self, format_group_table(self.group_table))

    # -- one step -----------------------------------------------------------------
    def _update(self, step: int, stop: StopFlag, faults: FaultHooks | None,
                t0: float | None) -> tuple[float, bool, float, str | None]:
        """Micro-steps, gradient averaging, clip, optimizer steps at 0-based ``step``. Its one host
        sync reads the mean loss, the stop flags, the clock (``train_time`` + this step's time since
        ``t0``, averaged over ranks) and the gradient norm, after the optimizers' kernels are queued
        (no bubble on the device). Returns (loss, stop requested on any rank, clock, None or what
        was non-finite); a non-finite step has reached the live weights in memory by then, so
        :meth:`step` fails the trainer: nothing of it is saved, the last checkpoint stays good."""
        plan, dev, tc = self.plan, self.dev, self.cfg.train
        loss_sum = torch.zeros((), device=dev)
        for i in range(plan.accum):
            if self.ddp is not None:  # DDP reduces the gradients during the last micro-step's backward
                self.ddp.require_backward_grad_sync = i == plan.accum - 1
            x, y = self._to_device(i, *self.loader.next_batch(plan.micro_tokens, plan.seq_len))
            with dist.autocast_context(dev, tc.autocast):
                loss = self.fwd(x, y)
            if faults is not None:
                loss = faults.on_loss(step, loss)
            (loss / plan.accum).backward()
            loss_sum += loss.detach()
        if faults is not None:
            faults.after_backward(step)
        self._t_clock = time.perf_counter()
        clock = 0.0 if t0 is None else self.train_time + self._tail + (self._t_clock - t0)
        host = torch.tensor([float(stop.signum > 0), clock], dtype=torch.float64)
        extras = torch.cat([(loss_sum / plan.accum).double().view(1), host.to(dev, non_blocking=True)])
        extras = reduce_grads(self.params if self.ddp is None else [], extras)
        grads = [p for p in self.params if p.grad is not None]
        if tc.grad_clip > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(grads, tc.grad_clip)
        else:  # the same check without clipping (the reduced grads are identical on every rank)
            gnorm = torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(g.grad, dtype=torch.float32) for g in grads]))
        read = torch.cat([extras, gnorm.double().view(1)])  # computed before the optimizers change anything
        for opt in self.optimizers:
            opt.step()
        self.model.zero_grad(set_to_none=True)
        t_wait = time.perf_counter()
        loss_v, stop_v, clock, gnorm_v = read.tolist()  # the sync, with the optimizers' kernels already queued
        self.host_wait_s = time.perf_counter() - t_wait
        loss_v = float(np.float32(loss_v))  # the fp32 mean, as averaged in fp32
        if not math.isfinite(loss_v):
            return loss_v, stop_v > 0, clock, f"non-finite train loss ({loss_v})"
        if not math.isfinite(gnorm_v):
            return loss_v, stop_v > 0, clock, f"non-finite gradient norm ({gnorm_v}) at a finite loss ({loss_v:.4f})"
        return loss_v, stop_v > 0, clock, None

    def _to_device(self, i: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Micro-step ``i``'s batch on the device. On CUDA through a pinned buffer per micro-step
        and an asynchronous copy: the buffer is refilled a step later, after the step's sync has
        waited for its copy."""
        if self.dev.type != "cuda":
            return x.to(self.dev), y.to(self.dev)
        buf = self._pinned.get(i)
        if buf is None or buf.shape[1:] != x.shape:
            buf = self._pinned[i] = torch.empty((2, *x.shape), dtype=x.dtype, pin_memory=True)
        buf[0].copy_(x)
        buf[1].copy_(y)
        both = buf.to(self.dev, non_blocking=True)
        return both[0], both[1]

    def step(self) -> StepResult:
        """One optimizer step and the EMA update. Raises NonFiniteLoss (nothing applied, the
        failure recorded in train.log and summary.json) on a NaN/inf loss or gradient norm.
        ``train_time`` is the clock agreed at the step's sync (the same on every rank); the rest of
        the step (queueing the optimizers) counts into the next step's clock."""
        if self.complete is not None:
            raise RuntimeError(f"run {self.rd.path} is already complete; nothing to step")
        if self.failed:
            raise RuntimeError(f"run {self.rd.path} failed ({self.failed}); resume from its last checkpoint")
        tc = self.cfg.train
        t0 = time.perf_counter()
        f = set_lr(self.optimizers, self.steps_done, tc, self.train_time)
        loss, stop_req, clock, bad = self._update(self.steps_done, self.stop, self.faults, t0)
        if bad:
            self._fail(bad, loss)
        self.ema.update()
        self.steps_done += 1
        self.train_time = clock
        t1 = time.perf_counter()
        self._tail = t1 - self._t_clock
        return StepResult(loss, f, t1 - t0, stop_req)

    @property
    def elapsed(self) -> float:
        """Training seconds so far: ``train_time`` plus the last step's tail (see :meth:`step`)."""
        return self.train_time + self._tail

    def _fail(self, what: str, loss: float) -> None:
        n, total = self.steps_done + 1, self.cfg.train.steps
        last = ckpt.latest_checkpoint(self.rd.checkpoints)
        msg = f"{what} at step {n}/{total}; stopped, nothing of that step saved. Last good checkpoint: " \
              f"{last if last else 'none written yet'}"
        self.failed = msg  # the live weights in memory took the step: no save() or step() from here
        kind = "non_finite_loss" if not math.isfinite(loss) else "non_finite_grad"
        self.log.line(f"step:{n}/{total} error:{kind} loss:{loss}")
        self.log.line(msg)
        self._record_failed(msg)
        raise NonFiniteLoss(msg)

    def _record_failed(self, msg: str) -> None:
        if self.main:  # when summary.json can be written (the failure may be a full or read-only disk)
            self.rd.try_update_summary(train={"status": "failed", "error": msg, "fingerprint": self.fingerprint})

    def close(self) -> None:
        """Close train.log and the progress bar and release the run dir (run() does; call it
        after stepping by hand, or use the Trainer as a context manager)."""
        if self.log is not None:
            self.log.close()
        if getattr(self, "lock", None) is not None:
            self.lock.release()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def train(cfg: RunConfig, run_dir: str | os.PathLike, *, resume: bool = True) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` (resuming from its newest checkpoint when ``resume``).

    Works in-process (one process) and under torchrun (joins the process group).
    Returns the run's summary (``train`` section and the ``stages`` ledger).
    Raises ValueError/FileNotFoundError before training for bad configs or data,
    NonFiniteLoss on a NaN/inf loss, TrainInterrupted after SIGTERM/SIGINT.
    """
    return Trainer(cfg, run_dir, resume=resume).run()


if __name__ == "__main__":  # the old entry point: fail loudly rather than train nothing
    raise SystemExit("`python -m gepalib.train` is gone: run `gepa train ...` or `python -m gepalib train ...` "
                     "(also under torchrun)")
