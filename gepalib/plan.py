"""The trainer's plan: what a config needs from the process count and the data before
anything is built (every field itself is checked when the config is built, see
gepalib.validation)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gepalib.config import RunConfig
from gepalib.paths import resolve_path
from gepalib.datacache import verify_once


@dataclass(frozen=True)
class Plan:
    world_size: int
    accum: int  # micro-steps per optimizer step
    micro_tokens: int  # tokens per rank per micro-step
    seq_len: int
    eval_seq_len: int
    note: str = ""  # set when micro_tokens differs from the configured micro_batch_tokens

    def record(self) -> dict[str, Any]:
        """What config.json records next to the config when the plan changed the micro-batch
        (``{}`` when it runs as configured)."""
        if not self.note:
            return {}
        return {"world_size": self.world_size, "accum": self.accum, "micro_batch_tokens": self.micro_tokens,
                "note": self.note}


def make_plan(cfg: RunConfig, world_size: int) -> Plan:
    """Derive gradient accumulation for ``world_size`` processes.

    Each rank takes ``batch_tokens / world_size`` tokens per step, in whole sequences (else a
    ValueError). The config itself guarantees that ``micro_batch_tokens`` divides
    ``batch_tokens`` (gepalib.validation), so one process always runs as configured. With
    several, the micro-batch is ``micro_batch_tokens`` when it divides the per-process share;
    otherwise the largest whole number of sequences below it that does (e.g. ``tiny``'s 8192 on
    2 processes: 4096 per rank, one micro-step), ``note`` says so and :meth:`Plan.record` is
    written into config.json. The math is the same either way: the loss is averaged over the
    same tokens."""
    t = cfg.train
    per_rank_seqs, rem = divmod(t.batch_tokens, world_size * t.seq_len)
    if rem or per_rank_seqs == 0:
        raise ValueError(f"batch_tokens={t.batch_tokens} is not divisible by world_size*seq_len = {world_size}*"
                         f"{t.seq_len} = {world_size * t.seq_len}: every process needs a whole number of "
                         f"sequences per step (change batch_tokens, seq_len or the number of processes)")
    want = t.micro_batch_tokens // t.seq_len
    micro_seqs = max(d for d in range(1, min(want, per_rank_seqs) + 1) if per_rank_seqs % d == 0)
    micro = micro_seqs * t.seq_len
    accum = per_rank_seqs // micro_seqs
    note = "" if micro == t.micro_batch_tokens else (
        f"micro_batch_tokens={t.micro_batch_tokens} does not divide the {per_rank_seqs * t.seq_len} tokens per "
        f"process of batch_tokens={t.batch_tokens} on {world_size} process(es); using micro-batches of {micro} "
        f"tokens, {accum} per step")
    return Plan(world_size, accum, micro, t.seq_len, cfg.eval.eval_seq_len or t.seq_len, note)


def check_data_dir(cfg: RunConfig, plan: Plan, main: bool = True) -> dict[str, Any]:
    """Data directory, tokenizer, manifest agreement, token ids of the shards the run reads
    (:func:`gepalib.data.verify_dataset`, on the main process and once per dataset state:
    :func:`gepalib.datacache.verify_once`) and lengths; clear errors naming the directory."""
    data_dir = resolve_path(cfg.data.data_dir)
    info = verify_once(data_dir, cfg.model.vocab_size, cfg.data.tokenizer_file(), cfg.data.train_shards,
                       main=main)["check"]
    if info["train_tokens"] < plan.seq_len + 1:
        raise ValueError(f"{data_dir}: seq_len={plan.seq_len} is longer than the training data "
                         f"({info['train_tokens']} tokens)")
    if info["val_tokens"] < plan.eval_seq_len + 1:
        raise ValueError(f"{data_dir}: the validation set ({info['val_tokens']} tokens) is shorter than one "
                         f"window of {plan.eval_seq_len} + 1 tokens")
    return info
