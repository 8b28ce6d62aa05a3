"""The checks every config section runs when it is built.

:mod:`gepalib.config`'s frozen dataclasses call these from ``__post_init__``, so a
bad value fails where it is written -- ``override``, ``dataclasses.replace``,
``RunConfig.from_dict``, a CLI flag -- with a ValueError that names the field, and
before any run directory, log or checkpoint exists. The allowed values of the
string fields are listed here once. The batch sizes are checked here as far as they do not
depend on the number of processes (micro_batch_tokens divides batch_tokens); the per-process
split stays in the trainer's plan (``gepalib.plan.make_plan``).

This module imports nothing from gepalib: it sits below :mod:`gepalib.config`.
"""
from __future__ import annotations

import math
from typing import Any

MLP_ACTS = ("star_relu2", "relu2", "leaky_relu2")
SKIP_MODES = ("gated", "add", "none")
BIGRAM_HASHES = ("add", "xor")
EMBED_DTYPE_NAMES = ("bfloat16", "float32")
LR_SCHEDULES = ("linear", "cosine")
AUTOCAST_MODES = ("auto", "bf16", "none")
DEVICES = ("auto", "cpu", "cuda")
PROGRESS_MODES = ("auto", "bar", "log")
QUANT_MODES = ("faithful", "per_row", "gptq", "sdclip")
COMPRESSORS = ("zstd", "lzma", "brotli", "rans", "none")
PACKINGS = ("none", "shuffle", "pack6", "shuffle_pack6")
TTT_OPTIMIZERS = ("sgd", "adamw")
TTT_SCORINGS = ("sliding", "streaming")
TTT_FAMILIES = ("full", "lora_doc", "phased", "phased+lora_doc")
LORA_OPTIMIZERS = ("adamw", "sgd")
LORA_TARGETS = ("q", "k", "v", "proj", "up", "down", "mlp", "head")  # mlp = up and down


class Checks:
    """One section's checks; each failure raises ``ValueError("<Section>: <field>...")``."""

    def __init__(self, cfg: Any):
        self.cfg, self.section = cfg, type(cfg).__name__

    def require(self, ok: bool, msg: str) -> None:
        if not ok:
            raise ValueError(f"{self.section}: {msg}")

    def positive(self, *names: str) -> None:
        for n in names:
            v = getattr(self.cfg, n)
            self.require(0 < v < math.inf, f"{n} must be positive, got {v}")

    def non_negative(self, *names: str) -> None:
        for n in names:
            v = getattr(self.cfg, n)
            self.require(0 <= v < math.inf, f"{n} must be >= 0, got {v}")

    def unit(self, *names: str) -> None:
        """Each value in [0, 1): decays, momenta, Adam betas."""
        for n in names:
            v = getattr(self.cfg, n)
            self.require(0.0 <= v < 1.0, f"{n} must be in [0, 1), got {v}")

    def choice(self, name: str, choices: tuple[str, ...]) -> None:
        v = getattr(self.cfg, name)
        self.require(v in choices, f"{name}={v!r}; choose one of {choices}")


def check_data(d: Any) -> None:
    c = Checks(d)
    c.require(bool(d.data_dir), "data_dir must not be empty")
    c.non_negative("train_shards", "val_tokens")


def check_model(m: Any) -> None:
    c = Checks(m)
    c.positive("vocab_size", "num_layers", "model_dim", "num_heads", "num_kv_heads", "mlp_hidden")
    c.require(m.model_dim % m.num_heads == 0, f"model_dim={m.model_dim} is not divisible by num_heads={m.num_heads}")
    c.require(m.num_heads % m.num_kv_heads == 0,
              f"num_heads={m.num_heads} is not divisible by num_kv_heads={m.num_kv_heads}")
    c.require(0 <= m.rope_dims <= m.head_dim and m.rope_dims % 2 == 0,
              f"rope_dims={m.rope_dims} must be even and in [0, head_dim={m.head_dim}]")
    c.positive("rope_base", "rope_train_seq_len", "logit_softcap")
    c.non_negative("tok_emb_std")
    c.choice("mlp_act", MLP_ACTS)
    c.choice("skip_mode", SKIP_MODES)
    c.choice("bigram_hash", BIGRAM_HASHES)
    c.choice("embed_dtype", EMBED_DTYPE_NAMES)
    c.require(not m.bigram or (m.bigram_buckets >= 2 and m.bigram_dim > 0),
              f"bigram needs bigram_buckets >= 2 and bigram_dim > 0, got {m.bigram_buckets}, {m.bigram_dim}")
    c.require(0 <= m.bos_id < m.vocab_size, f"bos_id={m.bos_id} must be in [0, vocab_size={m.vocab_size})")
    c.require(0 <= m.xsa_last_n <= m.num_layers, f"xsa_last_n={m.xsa_last_n} must be in [0, num_layers={m.num_layers}]")
    c.require(len(set(m.ve_layers)) == len(m.ve_layers) and all(0 <= i < m.num_layers for i in m.ve_layers),
              f"ve_layers={m.ve_layers} must be distinct layer indices in [0, {m.num_layers})")
    c.require(not m.ve_layers or m.ve_dim > 0, f"ve_dim must be positive when ve_layers is set, got {m.ve_dim}")


def check_train(t: Any) -> None:
    c = Checks(t)
    c.positive("steps", "batch_tokens", "micro_batch_tokens", "seq_len", "adam_eps")
    c.non_negative("warmdown", "lr_warmup", "compile_warmup", "muon_momentum_warmup", "val_every", "log_every",
                   "checkpoint_every", "keep_checkpoints", "embed_lr", "matrix_lr", "scalar_lr", "decoder_lr_mult",
                   "adam_wd", "muon_wd", "grad_clip", "max_wallclock")
    c.require(t.warmdown <= t.steps, f"warmdown={t.warmdown} is larger than steps={t.steps} (the LR would start at "
                                     f"{t.steps}/{t.warmdown} of its peak); set warmdown <= steps")
    c.require(0 <= t.seed < 2**32, f"seed must be in [0, 2**32), got {t.seed}")
    c.require(-1 <= t.data_seed < 2**32, f"data_seed must be -1 (the submission's order) or in [0, 2**32), "
                                         f"got {t.data_seed}")
    c.unit("ema_decay", "adam_beta1", "adam_beta2", "muon_momentum", "muon_momentum_start")
    c.require(t.muon_ns_steps >= 1, f"muon_ns_steps must be >= 1, got {t.muon_ns_steps}")
    c.require(t.muon_ns_dtype in ("auto", "bf16", "fp32"),
              f"muon_ns_dtype must be auto, bf16 or fp32, got {t.muon_ns_dtype!r}")
    c.require(t.micro_batch_tokens % t.seq_len == 0,
              f"micro_batch_tokens={t.micro_batch_tokens} is not a multiple of seq_len={t.seq_len}")
    c.require(t.micro_batch_tokens <= t.batch_tokens,
              f"micro_batch_tokens={t.micro_batch_tokens} is larger than batch_tokens={t.batch_tokens}")
    c.require(t.batch_tokens % t.micro_batch_tokens == 0,
              f"batch_tokens={t.batch_tokens} is not a multiple of micro_batch_tokens={t.micro_batch_tokens}: "
              f"accumulation = batch_tokens / (processes * micro_batch_tokens) must be a whole number")
    c.choice("lr_schedule", LR_SCHEDULES)
    c.choice("autocast", AUTOCAST_MODES)
    c.choice("device", DEVICES)
    c.choice("progress", PROGRESS_MODES)


def check_quant(q: Any) -> None:
    c = Checks(q)
    c.choice("quant_mode", QUANT_MODES)
    c.choice("compressor", COMPRESSORS)
    c.choice("packing", PACKINGS)
    c.require(not (q.compressor == "rans" and "pack6" in q.packing),
              f"packing={q.packing!r}: the rans compressor codes int6 symbols itself; use packing none or shuffle")
    c.non_negative("passthrough_numel")
    c.positive("gptq_calib_batches", "gptq_block_size", "gptq_damp", "clip_sigmas")


def check_eval(e: Any) -> None:
    c = Checks(e)
    c.non_negative("eval_seq_len", "stream_lanes", "stream_block")
    c.positive("eval_stride", "eval_batch_seqs")
    c.require(e.stream_prefix >= -1, f"stream_prefix must be >= -1 (-1 = exact), got {e.stream_prefix}")


def check_ttt(t: Any) -> None:
    c = Checks(t)
    c.choice("ttt_optimizer", TTT_OPTIMIZERS)
    c.choice("ttt_scoring", TTT_SCORINGS)
    c.positive("ttt_chunk_tokens", "ttt_batch_seqs")
    c.non_negative("ttt_lr", "ttt_epochs", "ttt_freeze_blocks", "ttt_grad_clip", "ttt_warmup_div", "ttt_adam_wd")
    c.unit("ttt_momentum", "ttt_adam_beta1", "ttt_adam_beta2")
    c.choice("ttt_family", TTT_FAMILIES)
    c.choice("ttt_lora_optimizer", LORA_OPTIMIZERS)
    c.positive("ttt_lora_rank", "ttt_lora_chunk_tokens", "ttt_lora_batch_docs")
    c.non_negative("ttt_lora_alpha", "ttt_lora_lr", "ttt_lora_wd", "ttt_lora_steps", "ttt_phase_lr",
                   "ttt_phase_epochs")
    c.unit("ttt_lora_beta1", "ttt_lora_beta2")
    targets = lora_targets(t.ttt_lora_targets)
    c.require(bool(targets) and all(x in LORA_TARGETS for x in targets),
              f"ttt_lora_targets={t.ttt_lora_targets!r}: a comma-separated subset of {LORA_TARGETS}")
    pd = tuple(t.ttt_phase_docs)
    c.require(all(isinstance(b, int) and b > 0 for b in pd) and list(pd) == sorted(set(pd)),
              f"ttt_phase_docs={pd} must be strictly increasing positive document counts")
    phased = t.ttt_family.startswith("phased")
    c.require(phased == bool(pd), f"ttt_family={t.ttt_family!r} with ttt_phase_docs={pd}: phase boundaries "
                                  f"go with (and only with) a phased family")
    c.require(not (t.ttt_reset_per_doc and t.ttt_family != "full"),
              f"ttt_reset_per_doc is an option of ttt_family='full' (got {t.ttt_family!r})")


def lora_targets(spec: str) -> tuple[str, ...]:
    """``"q,k,v,mlp"`` -> the adapted linears' names, ``mlp`` expanded to ``up``, ``down``."""
    names = [x.strip() for x in str(spec).split(",") if x.strip()]
    out: list[str] = []
    for x in names:
        for y in (("up", "down") if x == "mlp" else (x,)):
            if y not in out:
                out.append(y)
    return tuple(out)


def check_run(cfg: Any) -> None:
    """Checks across sections (each section checked itself when it was built)."""
    nl, fb = cfg.model.num_layers, cfg.ttt.ttt_freeze_blocks
    c = Checks(cfg)
    c.require(fb <= nl, f"ttt_freeze_blocks={fb} must be in [0, num_layers={nl}]")
    e = cfg.eval
    t = e.eval_seq_len or cfg.train.seq_len
    c.require(e.eval_stride <= t, f"eval_stride={e.eval_stride} is larger than the evaluation sequence length {t} "
                                  f"(eval_seq_len, or seq_len when it is 0): a window scores at most its own tokens")
