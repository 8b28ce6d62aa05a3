"""The named presets: ``gepa11`` (the submission), ``baseline9`` (the naive baseline) and the CPU
presets ``tiny`` and ``small`` (the same family, every GEPA feature on, scaled layer indices)."""
from __future__ import annotations

from typing import Any

from gepalib.config.overrides import override
from gepalib.config.sections import DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig, TTTConfig

# The submission compiled (torch.compile, then 20 real steps undone before step 1): so does
# gepa11, on every device (on a CPU pass compile=false compile_warmup=0 for a quick look).
GEPA11 = RunConfig(preset="gepa11", data=DataConfig(data_dir="data/fineweb10B_sp1024", train_shards=80),
                   train=TrainConfig(compile=True, compile_warmup=20))

BASELINE9 = RunConfig(
    preset="baseline9",
    data=DataConfig(data_dir="data/fineweb10B_sp1024", train_shards=80),
    model=ModelConfig(
        num_layers=9,
        mlp_hidden=1024,
        mlp_act="relu2",
        rope_dims=64,
        ln_scale=False,
        skip_mode="add",
        bigram=False,
        smear=False,
        xsa_last_n=0,
        ve_layers=(),
        embed_dtype="float32",
    ),
)

# CPU presets: same family, every GEPA feature on, scaled layer indices
# (XSA on the last third, VE on the last two layers, skips across halves).
TINY = RunConfig(
    preset="tiny",
    # Sized with bench/model_throughput.py: fwd+bwd (fp32, all features on) runs at 0.43-0.49x
    # the speed of the 2-layer d=128 plain GPT quoted at ~32k tokens/s on 2 free cores, i.e.
    # ~14-15.5k tokens/s (the first guess, 6 layers, was ~12k). `small` is ~5x slower per token.
    model=ModelConfig(
        num_layers=4,
        model_dim=128,
        num_heads=4,
        num_kv_heads=2,
        mlp_hidden=384,
        rope_dims=8,
        rope_train_seq_len=256,
        bigram_buckets=1024,
        bigram_dim=32,
        xsa_last_n=1,
        ve_layers=(2, 3),
        ve_dim=32,
        embed_dtype="float32",
    ),
    train=TrainConfig(
        steps=600,
        warmdown=240,
        ema_decay=0.99,  # 0.997 averages over ~330 steps: too long a memory for a 600-step run
        batch_tokens=8192,
        micro_batch_tokens=8192,
        seq_len=256,
        val_every=100,
        log_every=20,
        checkpoint_every=200,
        muon_momentum_warmup=150,
        embed_lr=0.035,
    ),
    eval=EvalConfig(eval_stride=64, eval_batch_seqs=32),
    ttt=TTTConfig(ttt_chunk_tokens=8192, ttt_epochs=3, ttt_freeze_blocks=1),
)

SMALL = RunConfig(
    preset="small",
    model=ModelConfig(
        num_layers=8,
        model_dim=256,
        num_heads=4,
        num_kv_heads=2,
        mlp_hidden=768,
        rope_dims=16,
        rope_train_seq_len=512,
        bigram_buckets=2048,
        bigram_dim=64,
        xsa_last_n=3,
        ve_layers=(6, 7),
        ve_dim=64,
        embed_dtype="float32",
    ),
    train=TrainConfig(
        steps=1500,
        warmdown=600,
        ema_decay=0.995,
        batch_tokens=16384,
        micro_batch_tokens=16384,
        seq_len=512,
        val_every=250,
        log_every=25,
        checkpoint_every=250,
        muon_momentum_warmup=300,
    ),
    ttt=TTTConfig(ttt_chunk_tokens=16384, ttt_epochs=3, ttt_freeze_blocks=1),
)

PRESETS: dict[str, RunConfig] = {c.preset: c for c in (GEPA11, BASELINE9, TINY, SMALL)}


def get_preset(name: str, **overrides: Any) -> RunConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[name]
    return override(cfg, **overrides) if overrides else cfg
