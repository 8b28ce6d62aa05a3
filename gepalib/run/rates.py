"""The throughputs the bill prices with (:func:`load_rates`), for one GPU or one CPU process.

**GPU rates.** ``bench/results/gpu.json`` when it holds a GPU measurement
(``bench/gpu_check.py``, not ``--tiny``): its per-GPU training tokens/s (compiled when it
ran), evaluation tokens/s and TTT seconds per chunk. Otherwise the submission's 4xA100-40GB
run: 10,011 s for 20,000 steps of 786,432 tokens (500.6 ms/step, 392.8k tokens/s per GPU)
and 2,066 s for its TTT evaluation, whose forward-token work (969,088 windows of 2,048 tokens
scored, 18,920 SGD steps of 32,768 tokens at 3x a forward) gives ~465k forward tokens/s per
GPU for the (eager) evaluations. The trainer's periodic validation runs compiled: a forward
is a third of a training step's FLOPs, so 3x the training rate. With a measurement, the
evaluations take its non-overlapping rate and TTT its seconds per chunk. The rates are at
gepa11's size; other sizes scale by training FLOPs per token (:func:`flops_per_token`:
6 x matmul parameters + 6 L d T attention).

**CPU rates.** ``bench/results/speed_ledger.json`` (``bench/speed_ledger.py``, ``make bench``)
times one training process of one torch thread at a few model sizes (tiny, a size between,
small) and the evaluation modes on tiny. Training tokens/s at any size come from those
one-thread rows: log(tokens/s) is a straight line in log(FLOPs per token) between two
measured sizes, and the end segments extend beyond them (one measured size: tokens/s falls
as 1 / FLOPs). Evaluation forward tokens/s are the non-overlapping mode's, TTT training
tokens/s the TTT mode's (chunk tokens x epochs / training seconds per chunk), both measured
on the ledger's evaluation size and carried to other sizes by the ratio of the training curve
at the two sizes. The trainer's periodic validation is eager on a CPU: it runs at the
evaluation rate. A bill at these rates counts CPU process-hours, one thread each.

**Which** (``kind``): ``"gpu"`` or ``"cpu"`` forces one; ``"auto"`` takes the CPU rates when
no CUDA device is visible and the ledger reads (with one-thread training rows), else the GPU
rates (:func:`gepalib.run.bill.plan_rates` also keeps the GPU rates for a plan that trains a
preset the ledger did not measure). A ledger that is missing falls back to the GPU rates
silently, a corrupt one with a note in the rates' ``source``; nothing raises.
"""
from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gepalib.config import PRESETS, RunConfig, get_preset, override
from gepalib.findings.reference import HEADLINE
from gepalib.paths import project_root

SUBMISSION_GPUS = 4
RATE_KINDS = ("auto", "cpu", "gpu")


def flops_per_token(cfg: RunConfig) -> float:
    """Training FLOPs per token: 6 x the matmul parameters (tied head counted, lookup tables not)
    + 6 L d T for causal attention."""
    m, T = cfg.model, cfg.train.seq_len
    kv = m.num_kv_heads * m.head_dim
    block = 2 * m.model_dim * m.model_dim + 2 * m.model_dim * kv + 2 * m.model_dim * m.mlp_hidden
    n = m.num_layers * block + m.vocab_size * m.model_dim
    n += m.bigram_dim * m.model_dim if m.bigram else 0
    n += m.ve_dim * kv if m.ve_layers else 0
    return 6.0 * n + 6.0 * m.num_layers * m.model_dim * T


GEPA11_FLOPS = flops_per_token(get_preset("gepa11"))


@dataclass(frozen=True)
class Rates:
    """Throughputs of one GPU (or one CPU process) at the size ``ref`` (``ref_flops`` FLOPs per
    token); ``*_at(cfg)`` gives them at ``cfg``'s size. Without ``sizes`` they scale by FLOPs
    per token; with ``sizes`` ((name, FLOPs per token, training tokens/s) measured) by the
    log-log training curve through them."""

    source: str
    gpu: str  # what one unit-hour is an hour of
    train_tok_s: float  # training tokens / s
    val_tok_s: float  # the trainer's periodic validation (compiled on CUDA): tokens / s
    eval_tok_s: float  # evaluations of gepa eval / ensure_stages (eager): forward tokens / s
    ttt_train_tok_s: float  # TTT training tokens / s (one forward + backward each)
    unit: str = "GPU-h"  # the bill's unit
    per: str = "GPU"  # what each rate is per
    ref: str = "gepa11"
    ref_flops: float = GEPA11_FLOPS
    sizes: tuple[tuple[str, float, float], ...] = ()

    def train_curve(self, flops: float) -> float:
        """Training tokens/s at ``flops`` FLOPs per token."""
        if not self.sizes:
            return self.train_tok_s * self.ref_flops / flops
        pts = [(math.log(f), math.log(r)) for _, f, r in self.sizes]
        x = math.log(flops)
        if len(pts) == 1:
            return math.exp(pts[0][1] - (x - pts[0][0]))
        i = next((j for j in range(len(pts) - 2) if x <= pts[j + 1][0]), len(pts) - 2)
        (x0, y0), (x1, y1) = pts[i], pts[i + 1]
        return math.exp(y0 + (y1 - y0) / (x1 - x0) * (x - x0))

    def size_factor(self, cfg: RunConfig) -> float:
        """Rate at ``cfg``'s size over the rate at ``ref``'s."""
        f = flops_per_token(cfg)
        if not self.sizes:
            return self.ref_flops / f
        return self.train_curve(f) / self.train_curve(self.ref_flops)

    def train_tok_s_at(self, cfg: RunConfig) -> float:
        return self.train_curve(flops_per_token(cfg)) if self.sizes else self.train_tok_s * self.size_factor(cfg)

    def val_tok_s_at(self, cfg: RunConfig) -> float:
        return self.val_tok_s * self.size_factor(cfg)

    def eval_tok_s_at(self, cfg: RunConfig) -> float:
        return self.eval_tok_s * self.size_factor(cfg)

    def ttt_train_tok_s_at(self, cfg: RunConfig) -> float:
        return self.ttt_train_tok_s * self.size_factor(cfg)


# ---------------------------------------------------------------------------
# GPU rates


def submission_rates() -> Rates:
    step_s = HEADLINE["train_seconds"] / HEADLINE["steps"]
    train = 786_432 / step_s / SUBMISSION_GPUS
    score_work = HEADLINE["sliding_windows"] * 2048
    ttt_work = 3 * HEADLINE["ttt_steps"] * 32_768
    fwd = (score_work + ttt_work) / (HEADLINE["eval_seconds"] * SUBMISSION_GPUS)
    return Rates(f"the submission's 4xA100 run ({1000 * step_s:.1f} ms/step, TTT eval {HEADLINE['eval_seconds']} s)",
                 "A100-40GB", train, 3 * train, fwd, fwd / 3)


def gpu_rates(path: str | os.PathLike | None = None) -> Rates:
    """Rates from ``bench/results/gpu.json`` when it is a GPU measurement, else the submission's."""
    p = Path(path) if path else project_root() / "bench" / "results" / "gpu.json"
    try:
        res = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return submission_rates()
    parts = res.get("parts") or {}
    train = parts.get("train") or {}  # the layout before the check's parts were split
    runs = {"compiled": parts.get("train_compiled") or train.get("compiled"),
            "eager": parts.get("train_eager") or train.get("eager")}
    kind = "compiled" if runs["compiled"] else "eager"
    run = runs[kind]
    if res.get("tiny", True) or not run or not run.get("tokens_per_s"):
        return submission_rates()
    sub = submission_rates()
    ev = parts.get("eval") or {}
    modes = ev.get("modes") or {}
    val = modes.get("nonoverlapping", {}).get("tokens_per_s")
    ttt = modes.get("ttt", {})
    chunk, epochs = ev.get("chunk_tokens"), ev.get("ttt_epochs")
    ttt_rate = chunk * epochs / ttt["train_s_per_chunk"] if ttt.get("train_s_per_chunk") and chunk and epochs else None
    micro = run.get("micro_batch_tokens") or train.get("micro_batch_tokens", 98_304)
    return Rates(f"{p.name}: {res.get('device_name', 'GPU')} ({kind}, {run['ms_per_step_median']:.1f} ms per "
                 f"{micro:,}-token micro-step)", res.get("device_name", "GPU"),
                 float(run["tokens_per_s"]), 3 * float(run["tokens_per_s"]), float(val or sub.eval_tok_s),
                 float(ttt_rate or sub.ttt_train_tok_s))


# ---------------------------------------------------------------------------
# CPU rates


def default_ledger() -> Path:
    return project_root() / "bench" / "results" / "speed_ledger.json"


def _recipe(name: str, shape: dict[str, Any], seq_len: int) -> RunConfig:
    """The preset a ledger size is built on: its own, or (a size that is no preset, such as
    the ledger's "mid") the preset of its sequence length and vocabulary nearest in width."""
    if name in PRESETS:
        return PRESETS[name]
    return min(PRESETS.values(), key=lambda c: (c.train.seq_len != seq_len, c.model.vocab_size != shape["vocab_size"],
                                                abs(math.log(c.model.model_dim / shape["model_dim"]))))


def ledger_config(row: dict[str, Any]) -> RunConfig:
    """The config a ledger training row timed: its recipe with the row's ``shape`` and
    ``seq_len`` (XSA and the value embeddings kept on as many last layers as the recipe has)."""
    shape, seq = {k: int(v) for k, v in row["shape"].items()}, int(row["seq_len"])
    base = _recipe(str(row["preset"]), shape, seq)
    L, m = shape["num_layers"], base.model
    ve = tuple(range(max(0, L - len(m.ve_layers)), L)) if m.ve_layers else ()
    return override(base, **shape, seq_len=seq, xsa_last_n=min(m.xsa_last_n, L), ve_layers=ve)


def _machine(res: dict[str, Any]) -> str:
    m = res.get("machine") or {}
    bits = [str(m["machine"]) if m.get("machine") else "", f"{m['cpu_count']} CPUs" if m.get("cpu_count") else "",
            str(m.get("platform") or ""), f"torch {m['torch']}" if m.get("torch") else ""]
    return ", ".join(b for b in bits if b) or "unknown machine"


def _eval_rates(res: dict[str, Any], sizes: dict[str, tuple[float, float]]) -> tuple[str, float, float, float, str]:
    """(reference size, its FLOPs/token, eval forward tok/s, TTT train tok/s, note) of the ledger's eval part."""
    ev = res.get("eval") or {}
    modes = ev.get("modes") or {}
    name = str(ev.get("preset") or min(sizes, key=lambda k: sizes[k][0]))
    flops = sizes[name][0] if name in sizes else flops_per_token(get_preset(name))
    non, ttt = modes.get("nonoverlapping") or {}, modes.get("ttt") or {}
    if non.get("seconds") and non.get("tokens"):
        fwd = float(non["tokens"]) / float(non["seconds"])
        note = "evaluation and TTT on " + name
    else:  # no eval part: a forward is a third of a training step
        fwd, note = None, "no eval part: evaluation at 3x, TTT at 1x the training rate"
    if fwd and ttt.get("train_s_per_chunk") and ttt.get("chunk_tokens") and ttt.get("epochs"):
        ttt_rate = float(ttt["chunk_tokens"]) * float(ttt["epochs"]) / float(ttt["train_s_per_chunk"])
    else:
        ttt_rate = None
    return name, flops, fwd or 0.0, ttt_rate or 0.0, note


def ledger_rates(path: str | os.PathLike | None = None) -> Rates:
    """One CPU process's rates (one torch thread) from the speed ledger; raises (OSError,
    ValueError, KeyError, TypeError) on a missing or unusable one."""
    p = Path(path) if path else default_ledger()
    res = json.loads(p.read_text(encoding="utf-8"))
    rows = [r for r in res.get("train") or [] if r.get("threads") == 1]
    if not rows:
        raise ValueError("no one-thread training rows")
    per: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        rate = 1e6 / float(r["gepalib"]["us_per_token"])
        if not rate > 0 or math.isinf(rate):
            raise ValueError(f"{r['preset']}: bad us_per_token")
        per.setdefault(str(r["preset"]), []).append((flops_per_token(ledger_config(r)), rate))
    measured = {k: (v[0][0], math.exp(statistics.fmean(math.log(x) for _, x in v))) for k, v in per.items()}
    if len({f for f, _ in measured.values()}) < len(measured):
        raise ValueError("two measured sizes with the same FLOPs per token")
    sizes = tuple(sorted(((k, f, r) for k, (f, r) in measured.items()), key=lambda s: s[1]))
    ref, ref_flops, fwd, ttt, note = _eval_rates(res, measured)
    base = Rates("", "", 1.0, 1.0, 1.0, 1.0, sizes=sizes)
    train = base.train_curve(ref_flops)
    fwd, ttt = fwd or 3 * train, ttt or train
    listed = " / ".join(f"{k} {r:,.0f}" for k, _, r in sizes)
    quick = ", a --quick smoke run" if res.get("quick") else ""
    source = (f"{p.name} of {_machine(res)} (started {res.get('started', '?')}{quick}): 1-thread training "
              f"tok/s {listed}; {note}")
    return Rates(source, "1 thread each", train, fwd, fwd, ttt, unit="CPU process-h", per="process (1 thread)",
                 ref=ref, ref_flops=ref_flops, sizes=sizes)


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def load_rates(path: str | os.PathLike | None = None, *, kind: str = "auto",
               ledger: str | os.PathLike | None = None) -> Rates:
    """The rates of ``kind`` (auto | cpu | gpu). ``path`` is the GPU results file (naming one
    asks for the GPU rates), ``ledger`` the CPU speed ledger (default
    ``bench/results/speed_ledger.json``). A missing or corrupt ledger gives the GPU rates."""
    if kind not in RATE_KINDS:
        raise ValueError(f"unknown rates kind {kind!r}; choose one of {', '.join(RATE_KINDS)}")
    if kind == "gpu" or (kind == "auto" and (path is not None or cuda_available())):
        return gpu_rates(path)
    lp = Path(ledger) if ledger else default_ledger()
    try:
        return ledger_rates(lp)
    except FileNotFoundError:
        r = gpu_rates(path)
        return r if kind == "auto" else replace(r, source=f"{r.source} (no CPU ledger at {lp})")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ZeroDivisionError) as e:
        r = gpu_rates(path)
        return replace(r, source=f"{r.source} (the CPU ledger {lp.name} is unusable: {type(e).__name__}: {e})")
