"""Experiment plans shared by the notebooks, so that their runs coincide and are reused.

    base = run.base_config("tiny", "cpu")                        # a preset at a named scale
    cfgs = run.ladder_configs(base, [100, 200, 400], seeds=[1, 2])  # the training-length ladder
    run.ensure_data("data/sotu_sp1024")                           # build the embedded dataset if missing
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from gepalib.config import RunConfig, get_preset, override
from gepalib.paths import resolve_path
from gepalib.data import validate_data_dir
from gepalib.prepare import prepare_sotu

# Named scales: config overrides applied on top of a preset.
#   full  -- the preset as it is (GPUs; with gepa11 this is the submission)
#   cpu   -- the notebooks' defaults on a 2-core CPU (the calibrated study): smaller batches,
#            a capped validation set, an EMA horizon of ~10 steps (tiny's 0.99 averages over
#            ~100), TTT chunks that give many chunks, the int6 passthrough threshold scaled
#            with the model (gepa11 keeps tensors of <= 65,536 values in float: its control
#            vectors and the 512x128 bigram projection; tiny's 128x128 matrices would all stay
#            float at that threshold), Muon's Newton-Schulz in fp32 (CPUs emulate bf16
#            matmuls: 0.38 s vs 0.03 s a step for tiny's matrices) and Muon's weight decay
#            scaled to the run length: weights relax to their decay equilibrium over ~1/(lr*wd)
#            steps; the submission's shortest ladder rung (9k steps) saw lr*wd*steps = 9 of
#            those, a 450-step rung at wd 0.3 sees 3.4 (at 0.04 it would see 0.45: still growing)
#   quick -- a 2-layer, 32-wide model for smoke runs and the test-suite
SCALES: dict[str, dict[str, Any]] = {
    "full": {},
    "cpu": {"batch_tokens": 4096, "micro_batch_tokens": 4096, "val_tokens": 16384, "ema_decay": 0.9,
            "muon_ns_dtype": "fp32", "muon_wd": 0.3,
            "muon_momentum_warmup": 50, "ttt_chunk_tokens": 4096, "passthrough_numel": 4096, "progress": "log",
            "checkpoint_every": 0, "keep_checkpoints": 1},
    "quick": {"num_layers": 2, "model_dim": 32, "num_heads": 2, "num_kv_heads": 1, "mlp_hidden": 64,
              "rope_dims": 8, "rope_train_seq_len": 64, "bigram_buckets": 64, "bigram_dim": 8, "xsa_last_n": 1,
              "ve_layers": (1,), "ve_dim": 8, "seq_len": 64, "batch_tokens": 512, "micro_batch_tokens": 256,
              "val_tokens": 1024, "ema_decay": 0.5, "muon_momentum_warmup": 5, "eval_batch_seqs": 16,
              "ttt_chunk_tokens": 256, "ttt_epochs": 1, "ttt_batch_seqs": 8, "passthrough_numel": 256,
              "progress": "log", "checkpoint_every": 0, "keep_checkpoints": 1},
}


def scale_overrides(scale: str) -> dict[str, Any]:
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {sorted(SCALES)}")
    return dict(SCALES[scale])


def base_config(preset: str, scale: str = "full", data_dir: str | None = None,
                overrides: dict[str, Any] | None = None) -> RunConfig:
    """``get_preset(preset)`` with :data:`SCALES` ``[scale]``, ``data_dir`` and ``overrides`` applied."""
    kv = scale_overrides(scale)
    if data_dir:
        kv["data_dir"] = data_dir
    kv.update(overrides or {})
    return get_preset(preset, **kv)


def with_length(cfg: RunConfig, steps: int, warmdown_frac: float, val_every: int, seed: int | None = None,
                warmdown: int | None = None, vary_data: bool = True) -> RunConfig:
    """``cfg`` trained for ``steps`` with the last ``warmdown`` steps (default
    ``round(warmdown_frac*steps)``) as warmdown, validated (and logged) every ``val_every``
    steps and at the end. A ``seed`` sets the initialisation and, with ``vary_data`` (the
    study's setting), the data order too (``data_seed = seed``), so seeds differ in both."""
    if steps <= 0 or val_every <= 0:
        raise ValueError(f"steps and val_every must be positive, got {steps}, {val_every}")
    if not 0.0 <= warmdown_frac <= 1.0:
        raise ValueError(f"warmdown_frac must be in [0, 1], got {warmdown_frac}")
    if warmdown is None:
        warmdown = round(warmdown_frac * steps)
    elif not 0 <= warmdown <= steps:
        raise ValueError(f"warmdown must be in [0, steps={steps}], got {warmdown}")
    kv: dict[str, Any] = {"steps": int(steps), "warmdown": int(warmdown),
                          "val_every": int(val_every), "log_every": int(val_every)}
    if seed is not None:
        kv["seed"] = int(seed)
        if vary_data:
            kv["data_seed"] = int(seed)
    return override(cfg, **kv)


def ladder_configs(cfg: RunConfig, steps: Sequence[int], warmdown_frac: float = 0.4,
                   seeds: Sequence[int] = (42,), val_every: int = 1,
                   warmdowns: Sequence[int] | None = None) -> list[RunConfig]:
    """One run per (length, seed): the training-length ladder shared by F1, F2 and F5. Every
    rung validates at the same interval, so the longest rung's curve has the resolution F1
    needs and a short rung costs evaluations in proportion to its length. ``warmdowns`` gives
    each rung's warmdown in steps (the submission's ladder: 4,000 / 5,000 / 6,000 / 8,000 for
    9k / 12k / 15k / 20k, not a fixed fraction); ``None`` uses ``warmdown_frac`` of each."""
    if not steps:
        raise ValueError("ladder_configs: no steps given")
    if warmdowns is not None and len(warmdowns) != len(steps):
        raise ValueError(f"ladder_configs: {len(warmdowns)} warmdowns for {len(steps)} ladder steps")
    wds = list(warmdowns) if warmdowns is not None else [None] * len(steps)
    return [with_length(cfg, s, warmdown_frac, val_every, seed, warmdown=w)
            for s, w in zip(steps, wds) for seed in seeds]


def longest_rung_configs(cfg: RunConfig, steps: Sequence[int], warmdown_frac: float = 0.4,
                         seeds: Sequence[int] = (42,), val_every: int = 1,
                         warmdowns: Sequence[int] | None = None) -> list[RunConfig]:
    """The ladder's longest rung, one run per seed (the base models of F1, F3 and F4); the same
    configs as that rung of :func:`ladder_configs`, so the runs are shared."""
    ladder = ladder_configs(cfg, steps, warmdown_frac, seeds, val_every, warmdowns)
    i = max(range(len(steps)), key=lambda j: steps[j])
    return ladder[i * len(seeds):(i + 1) * len(seeds)]


# The submission's naive-baseline switches (the baseline9 preset's feature flags), applied to any scale.
BASELINE_SWITCHES: dict[str, Any] = {"mlp_act": "relu2", "ln_scale": False, "skip_mode": "add", "bigram": False,
                                     "smear": False, "xsa_last_n": 0, "ve_layers": ()}


def baseline_config(cfg: RunConfig) -> RunConfig:
    """``cfg`` with the GEPA features switched off (:data:`BASELINE_SWITCHES`, full RoPE): the
    same-scale stand-in for the challenge's naive baseline that F5's TTT share is measured against."""
    return override(cfg, preset=f"{cfg.preset}_baseline", rope_dims=cfg.model.head_dim, **BASELINE_SWITCHES)


def ensure_data(data_dir: str | os.PathLike = "data/sotu_sp1024", vocab_size: int = 1024) -> Path:
    """Make sure ``data_dir`` holds a dataset: check it if it exists; build it if it is the
    embedded State of the Union set (``.../sotu_sp1024``); else say how to get it."""
    p = resolve_path(data_dir)
    if (p / "manifest.json").exists() or any(p.glob("*_val_*.bin")):
        validate_data_dir(p, vocab_size)
        return p
    if p.name == "sotu_sp1024":
        prepare_sotu(p, vocab_size=vocab_size, progress=False)
        return p
    raise FileNotFoundError(f"{p}: no dataset there; build the embedded one with `gepa data prepare`, or download "
                            f"FineWeb with `gepa data download --variant sp1024` "
                            f"(then data_dir=data/fineweb10B_sp1024)")
