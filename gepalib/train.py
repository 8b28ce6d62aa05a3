"""The distributed trainer (SPEC §3, train stream of SPEC §1).

One entry point for notebooks, the CLI and torchrun::

    train(cfg, "runs/x")                                  # in-process, 1 process
    python -m gepalib.train --preset tiny --run-dir runs/x --steps 200
    torchrun --nproc-per-node 2 -m gepalib.train --preset tiny --run-dir runs/x
    gepa train --preset tiny --run-dir runs/x [--no-resume]

One optimizer step = A micro-steps of ``micro_batch_tokens`` per rank, A =
batch_tokens / (world_size * micro_batch_tokens); the loss is scaled by 1/A and
gradients are averaged across ranks (one flat all-reduce), so 1, 2, 4 or 8
processes train the same math. Then: global-norm clip, lr = base_lr * f(step)
on every group, Muon momentum warm-up, optimizer steps, EMA update.

Run directory (gepalib.rundir.RunDir): config.json, env.json, metrics.jsonl,
train.log (rank 0, ``key:value`` lines), checkpoints/, model_ema.pt,
model_live.pt, summary.json (``train`` section + stages float_live/float_ema).

Test hooks (environment variables, read when ``train`` starts):
  GEPA_INJECT_NAN_AT_STEP=k  multiply the loss of step k (1-based) by NaN
  GEPA_SIGNAL_AT_STEP=k      the process sends itself SIGTERM during step k
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import gepalib
from gepalib import checkpoint as ckpt
from gepalib import dist
from gepalib.config import RunConfig, get_preset, load_config, override, resolve_path
from gepalib.optim import build_optimizers, format_group_table, set_lr
from gepalib.rundir import RunDir
from gepalib.fsio import atomic_torch_save, atomic_write_json, atomic_write_text

NAN_ENV = "GEPA_INJECT_NAN_AT_STEP"
SIGNAL_ENV = "GEPA_SIGNAL_AT_STEP"
# Fields that change only cadence/bookkeeping, not the trajectory: a run dir may be resumed
# with different values. Everything else in data/model/train must match to resume.
RUNTIME_FIELDS = ("val_every", "log_every", "checkpoint_every", "max_wallclock", "progress", "keep_checkpoints")
TIMING_KEYS = ("ms_per_step", "tok_per_s", "train_time_s", "eval_s")


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN/inf; the run stopped before applying that step."""


class TrainInterrupted(RuntimeError):
    """SIGTERM/SIGINT arrived; a checkpoint was written and the run stopped cleanly."""

    def __init__(self, msg: str, signum: int, step: int):
        super().__init__(msg)
        self.signum, self.step = signum, step


# ---------------------------------------------------------------------------
# Config checks (all before any training)


@dataclass(frozen=True)
class Plan:
    world_size: int
    accum: int  # micro-steps per optimizer step
    micro_tokens: int  # tokens per rank per micro-step
    seq_len: int
    eval_seq_len: int


def make_plan(cfg: RunConfig, world_size: int) -> Plan:
    """Derive gradient accumulation; raise ValueError for a config that cannot work."""
    t = cfg.train
    for name in ("steps", "batch_tokens", "micro_batch_tokens", "seq_len"):
        if getattr(t, name) <= 0:
            raise ValueError(f"train config: {name} must be positive, got {getattr(t, name)}")
    if t.warmdown < 0 or t.lr_warmup < 0 or t.compile_warmup < 0:
        raise ValueError("train config: warmdown, lr_warmup and compile_warmup must be >= 0")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ValueError(f"train config: ema_decay must be in [0, 1), got {t.ema_decay}")
    if t.micro_batch_tokens % t.seq_len:
        raise ValueError(f"micro_batch_tokens={t.micro_batch_tokens} is not a multiple of seq_len={t.seq_len}")
    per_micro = world_size * t.micro_batch_tokens
    if t.batch_tokens % per_micro:
        raise ValueError(f"batch_tokens={t.batch_tokens} is not divisible by world_size*micro_batch_tokens = "
                         f"{world_size}*{t.micro_batch_tokens} = {per_micro}; gradient accumulation must be an "
                         f"integer >= 1 (change batch_tokens, micro_batch_tokens or the number of processes)")
    if t.progress not in ("auto", "bar", "log"):
        raise ValueError(f"progress={t.progress!r}; choose auto | bar | log")
    from gepalib.model import validate_config

    validate_config(cfg.model)
    return Plan(world_size, t.batch_tokens // per_micro, t.micro_batch_tokens, t.seq_len,
                cfg.eval.eval_seq_len or t.seq_len)


def check_data(cfg: RunConfig, plan: Plan) -> dict[str, Any]:
    """Data directory, tokenizer and lengths (clear errors naming the directory)."""
    from gepalib.data import validate_data_dir

    data_dir = resolve_path(cfg.data.data_dir)
    info = validate_data_dir(data_dir, cfg.model.vocab_size, cfg.data.tokenizer_file())["check"]
    if info["train_tokens"] < plan.seq_len + 1:
        raise ValueError(f"{data_dir}: seq_len={plan.seq_len} is longer than the training data "
                         f"({info['train_tokens']} tokens)")
    if info["val_tokens"] < plan.eval_seq_len + 1:
        raise ValueError(f"{data_dir}: the validation set ({info['val_tokens']} tokens) is shorter than one "
                         f"window of {plan.eval_seq_len} + 1 tokens")
    return info


def train_fingerprint(cfg: RunConfig) -> str:
    """Hash of everything that determines the training trajectory (data, model, train minus cadence)."""
    import hashlib

    d = {k: cfg.to_dict()[k] for k in ("data", "model", "train")}
    for f in RUNTIME_FIELDS:
        d["train"].pop(f, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def config_diff(a: RunConfig, b: RunConfig) -> list[str]:
    """Flat field names whose values differ between two configs (data/model/train sections)."""
    out = []
    for sec in ("data", "model", "train"):
        da, db = a.to_dict()[sec], b.to_dict()[sec]
        out += [f"{k} ({da.get(k)!r} -> {db.get(k)!r})" for k in sorted(set(da) | set(db))
                if da.get(k) != db.get(k) and k not in RUNTIME_FIELDS]
    return out


# ---------------------------------------------------------------------------
# EMA


class EMA:
    """fp32 shadow of every state-dict tensor: ema <- d*ema + (1-d)*theta after each step (SPEC §3)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        sd = model.state_dict()
        self.names = [k for k, v in sd.items() if v.is_floating_point()]
        self.shadow = {k: v.detach().float().clone() for k, v in sd.items()}
        self._live = [sd[k] for k in self.names]  # views of the live tensors
        self._dtypes = {k: v.dtype for k, v in sd.items()}

    @torch.no_grad()
    def update(self) -> None:
        ema = [self.shadow[k] for k in self.names]
        live = [t if t.dtype == torch.float32 else t.float() for t in self._live]
        torch._foreach_mul_(ema, self.decay)
        torch._foreach_add_(ema, live, alpha=1.0 - self.decay)

    def export(self) -> dict[str, torch.Tensor]:
        """EMA weights cast to each tensor's dtype (E_tok back to bf16), on CPU."""
        return {k: v.to(self._dtypes[k]).cpu() for k, v in self.shadow.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in self.shadow.items()}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        if set(sd) != set(self.shadow):
            raise ValueError("EMA state does not match the model's state-dict keys")
        for k, v in sd.items():
            self.shadow[k].copy_(v)


# ---------------------------------------------------------------------------
# Logging


class Logger:
    """rank-0 ``train.log`` (append) + stdout, or tqdm bar with log lines written above it."""

    def __init__(self, rd: RunDir, is_main: bool, total: int, start: int, progress: str):
        self.is_main, self.bar = is_main, None
        self.f = open(rd.log, "a", encoding="utf-8") if is_main else None
        if is_main and use_progress_bar(progress):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, file=sys.stderr)

    def line(self, msg: str, echo: bool = True) -> None:
        if not self.is_main:
            return
        self.f.write(msg + "\n")
        self.f.flush()
        if echo:
            if self.bar is not None:
                self.bar.write(msg)
            else:
                print(msg, flush=True)

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def step(self, msg: str, postfix: str = "") -> None:
        """A step line: file + (bar postfix or stdout)."""
        if self.bar is not None:
            self.line(msg, echo=False)
            if postfix:
                self.bar.set_postfix_str(postfix)
        else:
            self.line(msg)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.f is not None:
            self.f.close()


def use_progress_bar(progress: str) -> bool:
    """``auto``: a bar only on a TTY and not under CI (papermill/Jupyter stderr is not a TTY)."""
    if progress == "bar":
        return True
    if progress == "log":
        return False
    return bool(sys.stderr.isatty()) and not os.environ.get("CI")


def git_commit() -> str | None:
    root = Path(gepalib.__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(info: dist.DistInfo, plan: Plan) -> dict[str, Any]:
    dev = info.device
    return {
        "gepalib": gepalib.__version__, "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__, "platform": platform.platform(), "hostname": socket.gethostname(),
        "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor(),
        "cuda": torch.version.cuda, "world_size": info.world_size, "accum": plan.accum,
        "torch_threads": torch.get_num_threads(), "git_commit": git_commit(), "argv": list(sys.argv),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def append_metrics(rd: RunDir, row: dict[str, Any]) -> None:
    with open(rd.metrics, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")


def truncate_metrics(rd: RunDir, last_step: int) -> None:
    """Drop metric rows logged after ``last_step`` (they are re-logged after a resume)."""
    rows = [r for r in rd.read_metrics() if r.get("step", 0) <= last_step]
    atomic_write_text(rd.metrics, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def check_same_resume_point(latest: Path | None, complete: bool, rd: RunDir, dev: torch.device) -> None:
    """Every rank must resume from the same checkpoint (or agree the run is complete). Ranks on
    nodes that do not share the run directory's filesystem would otherwise start from different
    steps and hang in a collective."""
    if not dist.active():
        return
    s = float(ckpt.CKPT_RE.match(latest.name).group(1)) if latest is not None else -1.0
    c = float(complete)
    t = dist.all_reduce_sum(torch.tensor([1.0, s, s * s, c], dtype=torch.float64, device=dev)).tolist()
    # W * sum(s^2) == (sum s)^2 iff every rank has the same s; sum(c) is 0 or W iff all agree
    if t[0] * t[2] != t[1] * t[1] or t[3] not in (0.0, t[0]):
        raise ValueError(f"ranks disagree on where to resume in {rd.path} (this rank: checkpoint "
                         f"{latest.name if latest else 'none'}, complete={complete}); the run directory "
                         f"must be on a filesystem that every node shares")


# ---------------------------------------------------------------------------
# Signals


class StopFlag:
    """Set by SIGTERM/SIGINT; a second SIGINT interrupts immediately."""

    def __init__(self):
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False


# ---------------------------------------------------------------------------
# One optimizer step


def _env_int(name: str) -> int:
    v = os.environ.get(name, "").strip()
    return int(v) if v else -1


def reduce_grads(params: list[torch.nn.Parameter], extras: torch.Tensor) -> torch.Tensor:
    """Average gradients across ranks with one flat fp32 all-reduce; ``extras`` ride along (averaged)."""
    if not dist.active():
        return extras
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [extras.float()])
    dist.all_reduce_mean(flat)
    off = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[off:off + n].view_as(g))
        off += n
    return flat[off:]


# ---------------------------------------------------------------------------
# The trainer


def train(cfg: RunConfig, run_dir: str | os.PathLike, *, resume: bool = True) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` (resuming from its newest checkpoint when ``resume``).

    Works in-process (one process) and under torchrun (joins the process group).
    Returns the run's summary (``train`` section and the ``stages`` ledger).
    Raises ValueError/FileNotFoundError before training for bad configs or data,
    NonFiniteLoss on a NaN/inf loss, TrainInterrupted after SIGTERM/SIGINT.
    """
    from gepalib.bpb import build_byte_luts
    from gepalib.data import TrainLoader, load_val_tokens
    from gepalib.eval.windows import eval_nonoverlapping
    from gepalib.model import GPT

    info = dist.init(cfg.train.device)
    tc, dev, main = cfg.train, info.device, info.is_main
    plan = make_plan(cfg, info.world_size)
    data_info = check_data(cfg, plan)
    rd = RunDir(resolve_path(run_dir))
    fp = train_fingerprint(cfg)

    # -- run directory: refuse a different config, or start over -------------
    if rd.exists() and resume:
        old = rd.load_config()
        if train_fingerprint(old) != fp:
            diff = "; ".join(config_diff(old, cfg)[:8])
            raise ValueError(f"run dir {rd.path} was created with a different config ({diff}); "
                             f"use a new --run-dir, or --no-resume to overwrite it")
    summary = rd.read_summary() if resume else {}
    complete = bool(resume and summary.get("train", {}).get("status") == "complete" and rd.ema_weights.exists()
                    and summary["train"].get("fingerprint") == fp)
    latest = ckpt.latest_checkpoint(rd.checkpoints) if resume else None
    check_same_resume_point(latest, complete, rd, dev)
    if complete:
        if main:
            print(f"run {rd.path} already complete (steps:{summary['train']['steps']}); nothing to do", flush=True)
        return summary
    dist.barrier()
    if main:
        rd.path.mkdir(parents=True, exist_ok=True)
        if not resume:
            for p in (rd.metrics, rd.log, rd.summary, rd.ema_weights, rd.live_weights):
                p.unlink(missing_ok=True)
            shutil.rmtree(rd.checkpoints, ignore_errors=True)
        atomic_write_json(rd.config, cfg.to_dict())
        atomic_write_json(rd.env, {**environment(info, plan), "data": data_info})
    dist.barrier()

    # -- data, model, optimizers ----------------------------------------------
    val_tokens = load_val_tokens(resolve_path(cfg.data.data_dir), plan.eval_seq_len, cfg.model.vocab_size,
                                 max_targets=cfg.data.val_tokens)
    luts = build_byte_luts(cfg.data.tokenizer_file(), cfg.model.vocab_size)
    loader = TrainLoader(resolve_path(cfg.data.data_dir), info.rank, info.world_size, cfg.model.vocab_size,
                         cfg.data.train_shards)
    random.seed(tc.seed)
    np.random.seed(tc.seed)
    torch.manual_seed(tc.seed)
    model = GPT(cfg.model)  # init on CPU: identical on every rank and device
    model = model.to(dev)
    eval_model = copy.deepcopy(model)  # holds EMA weights for evaluation
    params = list(model.parameters())
    n_params = sum(p.numel() for p in params)
    optimizers, table = build_optimizers(model, tc)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    fwd = torch.compile(model, dynamic=False) if tc.compile else model
    amp = lambda: dist.autocast_context(dev, tc.autocast)  # noqa: E731
    nan_at, signal_at = _env_int(NAN_ENV), _env_int(SIGNAL_ENV)

    def train_step(step: int, stop: StopFlag, hooks: bool = True) -> tuple[float, bool, str | None]:
        """Micro-steps, gradient all-reduce, clip, optimizer steps. ``step`` is 0-based.
        Returns (global mean loss, stop requested on any rank, None or what was non-finite);
        nothing is updated when the loss or the gradient norm is non-finite."""
        loss_sum = torch.zeros((), device=dev)
        for _ in range(plan.accum):
            x, y = loader.next_batch(plan.micro_tokens, plan.seq_len)
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            with amp():
                loss = fwd(x, y)
            if hooks and step + 1 == nan_at:
                loss = loss * float("nan")
            (loss / plan.accum).backward()
            loss_sum += loss.detach()
        if hooks and step + 1 == signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
        extras = torch.stack([loss_sum / plan.accum, torch.tensor(float(stop.signum > 0), device=dev)])
        loss_v, stop_v = reduce_grads(params, extras).tolist()
        if not math.isfinite(loss_v):
            return loss_v, stop_v > 0, f"non-finite train loss ({loss_v})"
        grads = [p for p in params if p.grad is not None]
        if tc.grad_clip > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(grads, tc.grad_clip)
        else:  # the same check without clipping (the reduced grads are identical on every rank)
            gnorm = torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(g.grad, dtype=torch.float32) for g in grads]))
        if not math.isfinite(gnorm.item()):
            return loss_v, stop_v > 0, f"non-finite gradient norm ({gnorm.item()}) at a finite loss ({loss_v:.4f})"
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        return loss_v, stop_v > 0, None

    # -- compile warm-up, fully undone (weights, optimizer state, loader, RNG) --
    warm_signum = 0
    if tc.compile_warmup > 0:
        snap = (copy.deepcopy(model.state_dict()), [copy.deepcopy(o.state_dict()) for o in optimizers],
                loader.state_dict(), ckpt.capture_rng())
        with StopFlag() as warm_stop:  # a signal during warm-up stops the run after its first real step
            for s in range(tc.compile_warmup):
                set_lr(optimizers, s, tc)
                train_step(s, warm_stop, hooks=False)
        warm_signum = warm_stop.signum
        model.load_state_dict(snap[0])
        for o, st in zip(optimizers, snap[1]):
            o.load_state_dict(st)
        loader.load_state_dict(snap[2])
        ckpt.restore_rng(snap[3])
        model.zero_grad(set_to_none=True)
        del snap

    ema = EMA(model, tc.ema_decay)
    step, train_time = 0, 0.0

    # -- resume ---------------------------------------------------------------
    if latest is not None:
        # Load on the CPU: the RNG states must stay CPU tensors (torch.set_rng_state rejects a
        # CUDA tensor), and load_state_dict moves model, EMA and optimizer state to their devices.
        ck = ckpt.load_checkpoint(latest, map_location="cpu")
        if ck.get("fingerprint") != fp:
            raise ValueError(f"checkpoint {latest} belongs to a different config (fingerprint "
                             f"{ck.get('fingerprint')} != {fp}); use --no-resume or a new --run-dir")
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        if len(ck["optimizers"]) != len(optimizers):
            raise ValueError(f"checkpoint {latest}: {len(ck['optimizers'])} optimizer states, expected "
                             f"{len(optimizers)}")
        for o, st in zip(optimizers, ck["optimizers"]):
            o.load_state_dict(st)
        loader.load_state_dict(ck["loader"])
        ckpt.restore_rng(ck["rng"])
        step, train_time = int(ck["step"]), float(ck["train_time"])
        del ck
    if main and resume:  # without a checkpoint nothing logged so far survives (not even step 0)
        truncate_metrics(rd, step if latest is not None else -1)
    dist.barrier()

    log = Logger(rd, main, tc.steps, step, tc.progress)
    try:
        log.line(f"==== gepalib train {'resume' if step else 'start'} step:{step}/{tc.steps} "
                 f"time:{time.strftime('%Y-%m-%dT%H:%M:%S')}")
        log.line(f"run_dir:{rd.path} preset:{cfg.preset} fingerprint:{fp} git:{git_commit()} host:{socket.gethostname()}")
        log.line(f"torch:{torch.__version__} device:{dev} world_size:{info.world_size} accum:{plan.accum} "
                 f"micro_batch_tokens:{plan.micro_tokens} batch_tokens:{tc.batch_tokens} seq_len:{plan.seq_len} "
                 f"autocast:{tc.autocast} compile:{tc.compile}")
        log.line(f"params:{n_params} data_dir:{data_info['data_dir']} train_tokens:{data_info['train_tokens']} "
                 f"val_targets:{val_tokens.numel() - 1}")
        for ln in format_group_table(table).splitlines():
            log.line("group " + ln, echo=False)
        if latest is not None:
            log.line(f"resumed_from:{latest}")

        def evaluate(s: int) -> dict[str, Any]:
            t0 = time.perf_counter()
            bs = cfg.eval.eval_batch_seqs
            live = eval_nonoverlapping(model, val_tokens, luts, plan.eval_seq_len, bs, autocast=tc.autocast)
            if s == 0 and latest is None:
                emar = live  # the EMA equals the initial weights exactly
            else:
                eval_model.load_state_dict(ema.export())
                emar = eval_nonoverlapping(eval_model, val_tokens, luts, plan.eval_seq_len, bs, autocast=tc.autocast)
            row = {"val_loss": live.val_loss, "val_bpb": live.val_bpb, "val_loss_ema": emar.val_loss,
                   "val_bpb_ema": emar.val_bpb, "eval_s": time.perf_counter() - t0}
            log.line(f"step:{s}/{tc.steps} val_loss:{live.val_loss:.4f} val_bpb:{live.val_bpb:.4f} "
                     f"val_loss_ema:{emar.val_loss:.4f} val_bpb_ema:{emar.val_bpb:.4f} eval_s:{row['eval_s']:.1f}")
            return {"step": s, "row": row, "live": live, "ema": emar}

        def save(s: int) -> Path | None:
            path = None
            if main:
                state = {"fingerprint": fp, "model": {k: v.cpu() for k, v in model.state_dict().items()},
                         "ema": ema.state_dict(), "optimizers": [o.state_dict() for o in optimizers],
                         "loader": loader.state_dict(), "rng": ckpt.capture_rng(), "train_time": train_time}
                path = ckpt.save_checkpoint(rd.checkpoints, s, state, keep=tc.keep_checkpoints)
                log.line(f"step:{s}/{tc.steps} checkpoint:{path}", echo=False)
            dist.barrier()
            return path

        last_eval = None
        if step == 0:
            last_eval = evaluate(0)
            if main:
                append_metrics(rd, {"step": 0, "tokens": 0, "lr": set_lr(optimizers, 0, tc), **last_eval["row"]})

        # -- the loop -----------------------------------------------------------------
        stop = StopFlag()
        stop.signum = warm_signum
        t_log, n_log = 0.0, 0
        with stop:
            while step < tc.steps:
                t0 = time.perf_counter()
                f = set_lr(optimizers, step, tc, train_time)
                loss, stop_req, bad = train_step(step, stop)
                if bad:
                    last = ckpt.latest_checkpoint(rd.checkpoints)
                    msg = (f"{bad} at step {step + 1}/{tc.steps}; stopped before "
                           f"applying it. Last good checkpoint: {last if last else 'none written yet'}")
                    kind = "non_finite_loss" if not math.isfinite(loss) else "non_finite_grad"
                    log.line(f"step:{step + 1}/{tc.steps} error:{kind} loss:{loss}")
                    log.line(msg)
                    if main:
                        rd.update_summary(train={"status": "failed", "error": msg, "fingerprint": fp})
                    raise NonFiniteLoss(msg)
                ema.update()
                step += 1
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                dt = time.perf_counter() - t0
                train_time += dt
                if tc.max_wallclock > 0 and info.is_distributed:  # every rank must see the same clock
                    train_time = float(dist.broadcast(torch.tensor([train_time], dtype=torch.float64, device=dev))[0])
                t_log += dt
                n_log += 1
                log.tick()
                time_up = tc.max_wallclock > 0 and train_time >= tc.max_wallclock
                final = step == tc.steps or time_up
                do_val = final or (tc.val_every > 0 and step % tc.val_every == 0)
                do_log = do_val or step == 1 or (tc.log_every > 0 and step % tc.log_every == 0)
                if do_log:
                    ms = 1000.0 * t_log / n_log
                    tok_s = tc.batch_tokens / (ms / 1000.0)
                    log.step(f"step:{step}/{tc.steps} train_loss:{loss:.4f} lr_mult:{f:.4f} step_ms:{ms:.1f} "
                             f"tok_s:{tok_s:.0f} train_time:{train_time:.1f}s", postfix=f"loss {loss:.4f}")
                    row = {"step": step, "tokens": step * tc.batch_tokens, "lr": f, "train_loss": loss,
                           "ms_per_step": ms, "tok_per_s": tok_s, "train_time_s": train_time}
                    if do_val:
                        last_eval = evaluate(step)
                        row.update(last_eval["row"])
                    if main:
                        append_metrics(rd, row)
                    t_log, n_log = 0.0, 0
                path = None
                if final or (tc.checkpoint_every > 0 and step % tc.checkpoint_every == 0) or stop_req:
                    path = save(step)
                if stop_req and not final:
                    signum = stop.signum or signal.SIGTERM
                    msg = (f"stopped by signal {signal.Signals(signum).name} after step {step}/{tc.steps}; "
                           f"checkpoint {path or rd.checkpoints} written; rerun the same command to resume")
                    log.line(f"step:{step}/{tc.steps} interrupted:{signal.Signals(signum).name}")
                    log.line(msg)
                    if main:
                        rd.update_summary(train={"status": "interrupted", "step": step, "fingerprint": fp})
                    raise TrainInterrupted(msg, signum, step)
                if time_up:
                    log.line(f"step:{step}/{tc.steps} wallclock_cap:{tc.max_wallclock}s reached")
                    break

        # -- final: stages, weights, summary ------------------------------------
        if last_eval is None or last_eval["step"] != step:
            last_eval = evaluate(step)
        result = {"status": "complete", "steps": step, "tokens": step * tc.batch_tokens,
                  "train_seconds": train_time, "params": n_params, "world_size": info.world_size,
                  "accum": plan.accum, "fingerprint": fp, "device": str(dev),
                  "final_val_bpb": last_eval["live"].val_bpb, "final_val_bpb_ema": last_eval["ema"].val_bpb}
        if main:
            atomic_torch_save(ema.export(), rd.ema_weights)
            atomic_torch_save({k: v.cpu() for k, v in model.state_dict().items()}, rd.live_weights)
            rd.record_stage("float_live", **last_eval["live"].as_row(), source="train")
            rd.record_stage("float_ema", **last_eval["ema"].as_row(), source="train")
            summary = rd.update_summary(train=result)
            log.line(f"final steps:{step} train_time:{train_time:.1f}s float_live_bpb:{last_eval['live'].val_bpb:.6f} "
                     f"float_ema_bpb:{last_eval['ema'].val_bpb:.6f}")
        else:
            summary = {"train": result, "stages": {"float_live": last_eval["live"].as_row(),
                                                   "float_ema": last_eval["ema"].as_row()}}
        dist.barrier()
        return summary
    finally:
        log.close()


# ---------------------------------------------------------------------------
# CLI: `gepa train` and `python -m gepalib.train` (also under torchrun)


def _configure(p: argparse.ArgumentParser) -> None:
    from gepalib.cli import add_override_args

    p.add_argument("--preset", default=None, help="config preset: gepa11 | baseline9 | tiny | small")
    p.add_argument("--config", default=None, help="start from this config.json instead of a preset")
    p.add_argument("--run-dir", required=True, help="run directory (created; resumed if it has checkpoints)")
    p.add_argument("--no-resume", action="store_true",
                   help="start over: delete the run dir's checkpoints, metrics and logs")
    add_override_args(p)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    from gepalib.cli import collect_overrides

    if args.config and args.preset:
        raise ValueError("pass either --preset or --config, not both")
    if not (args.config or args.preset):
        raise ValueError("pass --preset (gepa11 | baseline9 | tiny | small) or --config path/to/config.json")
    cfg = load_config(args.config) if args.config else get_preset(args.preset)
    ov = collect_overrides(args)
    return override(cfg, **ov) if ov else cfg


def run_cli(args: argparse.Namespace) -> int:
    """Handler shared by ``gepa train`` and ``python -m gepalib.train``."""
    cfg = config_from_args(args)
    rank0 = os.environ.get("RANK", "0") == "0"
    try:
        train(cfg, args.run_dir, resume=not args.no_resume)
    except NonFiniteLoss as e:
        if rank0:
            print(f"gepa train: error: {e}", file=sys.stderr, flush=True)
        return 1
    except TrainInterrupted as e:
        if rank0:
            print(f"gepa train: {e}", file=sys.stderr, flush=True)
        return 128 + int(e.signum)
    return 0


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model (works under torchrun)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _configure(p)
    p.set_defaults(func=run_cli)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gepalib.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _configure(p)
    args = p.parse_args(argv)
    rc = None
    try:
        rc = run_cli(args)
        return rc
    except (FileNotFoundError, ValueError, KeyError, TypeError) as e:
        msg = e.args[0] if (isinstance(e, KeyError) and e.args) else str(e)
        print(f"gepa train: error: {msg}", file=sys.stderr, flush=True)
        return 2
    finally:
        dist.shutdown(barrier=rc == 0)  # no barrier after a failure: peers may never arrive


if __name__ == "__main__":
    sys.exit(main())
