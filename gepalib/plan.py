"""The trainer's plan: what a config needs from the process count and the data before
anything is built (every field itself is checked when the config is built, see
gepalib.validation)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gepalib.config import RunConfig, resolve_path
from gepalib.data import validate_data_dir


@dataclass(frozen=True)
class Plan:
    world_size: int
    accum: int  # micro-steps per optimizer step
    micro_tokens: int  # tokens per rank per micro-step
    seq_len: int
    eval_seq_len: int


def make_plan(cfg: RunConfig, world_size: int) -> Plan:
    """Derive gradient accumulation; raise ValueError when it is not a whole number."""
    t = cfg.train
    per_micro = world_size * t.micro_batch_tokens
    if t.batch_tokens % per_micro:
        raise ValueError(f"batch_tokens={t.batch_tokens} is not divisible by world_size*micro_batch_tokens = "
                         f"{world_size}*{t.micro_batch_tokens} = {per_micro}; gradient accumulation must be an "
                         f"integer >= 1 (change batch_tokens, micro_batch_tokens or the number of processes)")
    return Plan(world_size, t.batch_tokens // per_micro, t.micro_batch_tokens, t.seq_len,
                cfg.eval.eval_seq_len or t.seq_len)


def check_data_dir(cfg: RunConfig, plan: Plan) -> dict[str, Any]:
    """Data directory, tokenizer and lengths (clear errors naming the directory)."""
    data_dir = resolve_path(cfg.data.data_dir)
    info = validate_data_dir(data_dir, cfg.model.vocab_size, cfg.data.tokenizer_file())["check"]
    if info["train_tokens"] < plan.seq_len + 1:
        raise ValueError(f"{data_dir}: seq_len={plan.seq_len} is longer than the training data "
                         f"({info['train_tokens']} tokens)")
    if info["val_tokens"] < plan.eval_seq_len + 1:
        raise ValueError(f"{data_dir}: the validation set ({info['val_tokens']} tokens) is shorter than one "
                         f"window of {plan.eval_seq_len} + 1 tokens")
    return info
