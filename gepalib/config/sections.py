"""The configuration's frozen dataclasses: one per section, and :class:`RunConfig` holding them.

One name per field everywhere: the Python field ``steps`` is ``--steps`` on the CLI and
``steps`` in a papermill parameters cell. Field names are unique across all sections (checked
by :data:`gepalib.config.overrides.FIELD_INDEX`), so flat overrides are unambiguous. The comment
ending a field's line is its help (:func:`gepalib.config.overrides.field_help` reads it).

Every value is checked when it is built: each section's ``__post_init__`` (and
``RunConfig``'s, for checks across sections) runs :mod:`gepalib.validation`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gepalib.paths import resolve_path
from gepalib.validation import (check_data, check_eval, check_model, check_quant, check_run, check_train,
                                check_ttt)


@dataclass(frozen=True)
class DataConfig:
    """Where the tokenized data lives (the challenge's shard format, see docs/data.md)."""

    data_dir: str = "data/sotu_sp1024"  # holds *_train_*.bin, *_val_*.bin, tokenizer.model, manifest.json
    tokenizer_path: str = ""  # "" means <data_dir>/tokenizer.model
    train_shards: int = 0  # use only the first N train shards in sorted order (0 = all; the run used 80)
    val_tokens: int = 0  # cap on validation targets for quick evals (0 = the whole val set, truncated)

    def __post_init__(self) -> None:
        check_data(self)

    def tokenizer_file(self) -> Path:
        if self.tokenizer_path:
            return resolve_path(self.tokenizer_path)
        return resolve_path(self.data_dir) / "tokenizer.model"


@dataclass(frozen=True)
class ModelConfig:
    """The GEPA GPT (see docs/model.md). Every feature has a switch for ablations."""

    vocab_size: int = 1024
    num_layers: int = 11
    model_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 4
    mlp_hidden: int = 1536
    mlp_act: str = "star_relu2"  # star_relu2 | relu2 | leaky_relu2
    logit_softcap: float = 30.0
    tok_emb_std: float = 0.005
    embed_dtype: str = "bfloat16"  # bfloat16 (as run) | float32
    qk_norm: bool = True
    qk_gain_init: float = 1.5
    rope_dims: int = 16  # rotated dims per head (partial RoPE); = head_dim for full RoPE
    rope_base: float = 10000.0
    rope_train_seq_len: int = 2048  # NTK rescaling activates only for seq len > this
    ln_scale: bool = True  # multiply normalised block inputs by 1/sqrt(l+1)
    resid_mix: bool = True  # learned mix with x0 at every block input
    skip_mode: str = "gated"  # gated (convex mix, as run) | add (merged records) | none
    bigram: bool = True
    bigram_hash: str = "add"  # add (as run, see docs/choices.md) | xor (code default, trained-free scale)
    bigram_buckets: int = 2048
    bigram_dim: int = 128
    smear: bool = True
    smear_bos_reset: bool = False  # never mix a document's first token with the previous doc
    bos_id: int = 1
    xsa_last_n: int = 4  # exclusive self-attention on the last N layers (0 = off)
    ve_layers: tuple[int, ...] = (9, 10)  # value-embedding layers (empty = off)
    ve_dim: int = 128

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    def __post_init__(self) -> None:
        check_model(self)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and run control (see docs/training.md)."""

    steps: int = 20000
    warmdown: int = 8000  # linear decay to zero over the last `warmdown` steps
    lr_schedule: str = "linear"  # linear (as run) | cosine (experiment)
    lr_warmup: int = 0  # optional LR warm-up steps (the run had none)
    batch_tokens: int = 786432  # global tokens per optimizer step
    micro_batch_tokens: int = 98304  # tokens per rank per micro-step; accumulation is derived
    seq_len: int = 2048
    seed: int = 42
    data_seed: int = -1  # train data order: -1 the submission's (shards in sequence); >= 0 a seeded shuffle of batch windows
    embed_lr: float = 0.035
    matrix_lr: float = 0.025
    scalar_lr: float = 0.025
    decoder_lr_mult: float = 2.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    adam_wd: float = 0.04
    muon_wd: float = 0.04
    muon_momentum: float = 0.99
    muon_momentum_start: float = 0.92
    muon_momentum_warmup: int = 1500
    muon_ns_steps: int = 5
    # auto (bf16 on CUDA and on CPUs with native bf16, fp32 on other CPUs, which emulate bf16
    # matmuls) | bf16 (the submission) | fp32; resolved by the trainer (gepalib.muon.resolve_ns_dtype)
    muon_ns_dtype: str = "auto"
    grad_clip: float = 0.3
    ema_decay: float = 0.997
    val_every: int = 500
    log_every: int = 50
    checkpoint_every: int = 1000
    max_wallclock: float = 0.0  # seconds; 0 = no cap
    compile: bool = False
    compile_warmup: int = 0  # compile warm-up steps, fully undone afterwards (the run: 20)
    autocast: str = "auto"  # auto (bf16 on cuda, none on cpu) | bf16 | none
    device: str = "auto"  # auto | cpu | cuda
    progress: str = "auto"  # auto (tqdm bar on a TTY, not under CI) | bar | log
    keep_checkpoints: int = 2  # newest training checkpoints kept in <run>/checkpoints (0 = all)

    def __post_init__(self) -> None:
        check_train(self)


@dataclass(frozen=True)
class QuantConfig:
    """int6 GPTQ-lite export (see docs/quantization.md)."""

    quant_mode: str = "faithful"  # faithful (one percentile per tensor) | per_row | gptq (full-Hessian GPTQ) | sdclip (k std per row)
    quant_embed: bool = True
    passthrough_numel: int = 65536
    compressor: str = "zstd"  # zstd (as run) | lzma | brotli | rans (adaptive entropy coder) | none
    zstd_level: int = 22
    packing: str = "none"  # none | shuffle | pack6 | shuffle_pack6
    gptq_calib_batches: int = 8  # gptq: training micro-batches whose Linear inputs give the Hessians
    gptq_block_size: int = 128  # gptq: columns per lazy-update block
    gptq_damp: float = 0.01  # gptq: added to the Hessian's diagonal, as a fraction of its mean
    gptq_act_order: bool = False  # gptq: quantize columns in order of decreasing Hessian diagonal
    gptq_tied_head: bool = False  # gptq: also GPTQ tok_emb, with the output head's input Hessian
    clip_sigmas: float = 12.85  # sdclip: each row's clip is this many of its standard deviations (PR #1979's matrices)

    def __post_init__(self) -> None:
        check_quant(self)


@dataclass(frozen=True)
class EvalConfig:
    """Validation scoring (see docs/evaluation.md)."""

    eval_seq_len: int = 0  # 0 = train seq_len
    eval_stride: int = 64
    eval_batch_seqs: int = 32
    tail_rescore: bool = True  # replicate the submission's re-scoring of the final targets
    stream_lanes: int = 0  # streaming eval: parallel stream segments per rank (0 = auto)
    stream_block: int = 0  # streaming eval: tokens advanced per step (0 = the window)
    stream_prefix: int = -1  # streaming warm-up tokens per segment (-1 = exact: L*(W-1)+2)
    val_ema: bool = False  # periodic validation also scores the EMA (the submission: live only; the final one always does)

    def __post_init__(self) -> None:
        check_eval(self)


@dataclass(frozen=True)
class TTTConfig:
    """Legal score-first test-time training (see docs/evaluation.md)."""

    ttt_optimizer: str = "sgd"  # sgd | adamw
    ttt_lr: float = 0.002
    ttt_momentum: float = 0.9
    ttt_epochs: int = 10
    ttt_chunk_tokens: int = 32768
    ttt_freeze_blocks: int = 2
    ttt_grad_clip: float = 1.0
    ttt_warmup_div: int = 20  # warm-up over floor(n_chunks / div) chunks (5%)
    ttt_batch_seqs: int = 32
    ttt_adam_beta1: float = 0.9
    ttt_adam_beta2: float = 0.999
    ttt_adam_wd: float = 0.0
    ttt_reset_per_doc: bool = False
    ttt_scoring: str = "sliding"  # sliding | streaming
    ttt_family: str = "full"  # full | lora_doc | phased | phased+lora_doc (docs/evaluation.md)
    ttt_lora_rank: int = 96  # adapter rank r (A: in x r, B: r x out)
    ttt_lora_alpha: float = 0.0  # adapter scale alpha/rank; 0: scale 1
    ttt_lora_targets: str = "q,k,v,proj,mlp,head"  # q k v proj (attn out) up down mlp (=up,down) head
    ttt_lora_optimizer: str = "adamw"  # adamw | sgd (momentum ttt_lora_beta1)
    ttt_lora_lr: float = 0.0001  # adapter learning rate
    ttt_lora_beta1: float = 0.0  # AdamW beta1 (SGD: momentum)
    ttt_lora_beta2: float = 0.999  # AdamW beta2
    ttt_lora_wd: float = 0.5  # adapter weight decay (AdamW: decoupled)
    ttt_lora_chunk_tokens: int = 64  # targets per scored-then-trained chunk of a document
    ttt_lora_batch_docs: int = 64  # documents adapted side by side (one adapter each)
    ttt_lora_steps: int = 1  # optimizer steps per chunk (0: document-local scoring, no adaptation)
    ttt_lora_warm_start_a: bool = False  # keep A across documents, reset only B (not isolated)
    ttt_phase_docs: tuple[int, ...] = ()  # phase boundaries in documents, e.g. (2000,) or (667, 1333, 2000)
    ttt_phase_lr: float = 0.001  # LR of the global pass over the scored prefix (ttt_optimizer)
    ttt_phase_epochs: int = 1  # passes over the scored prefix at each phase boundary
    ttt_compile: bool = True  # CUDA with triton: TTT's training forward runs torch.compile'd; eager elsewhere

    def __post_init__(self) -> None:
        check_ttt(self)


SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "quant": QuantConfig,
    "eval": EvalConfig,
    "ttt": TTTConfig,
}


@dataclass(frozen=True)
class RunConfig:
    preset: str = "gepa11"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ttt: TTTConfig = field(default_factory=TTTConfig)

    def __post_init__(self) -> None:
        check_run(self)  # each section checked itself when it was built

    # -- serialisation ----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        kw: dict[str, Any] = {"preset": d.get("preset", "custom")}
        for name, klass in SECTIONS.items():
            sec = dict(d.get(name, {}))
            known = {f.name: f for f in fields(klass)}
            unknown = set(sec) - set(known)
            if unknown:
                raise ValueError(f"config section '{name}': unknown field(s) {sorted(unknown)}")
            for k, v in sec.items():
                if isinstance(v, list):
                    sec[k] = tuple(v)
            kw[name] = klass(**sec)
        return cls(**kw)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False)


def load_config(path: str | os.PathLike) -> RunConfig:
    with open(path, encoding="utf-8") as f:
        return RunConfig.from_dict(json.load(f))
