"""Byte accounting for val_bpb (see docs/data.md).

Three lookup tables over token ids:

* ``base_bytes`` B[t]: UTF-8 length of piece(t) without one leading "▁";
  1 for byte pieces; 0 for control, unknown and unused ids.
* ``has_leading_space`` L[t]: piece(t) starts with "▁" (normal pieces only).
* ``is_boundary`` Z[t]: control, unknown, unused ids and every id >= the
  tokenizer's size (the model vocab may be larger than the tokenizer's).

For a target t_i with previous stream token p_i: bytes_i = B[t_i] + [L[t_i] and not Z[p_i]],
and val_bpb = sum(nll_i) / (ln 2 * sum(bytes_i)) with fp64 sums.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

SPACE = "\u2581"  # SentencePiece's whitespace marker "▁"


@dataclass(frozen=True)
class ByteLUTs:
    base_bytes: torch.Tensor  # int64 [V]
    has_leading_space: torch.Tensor  # bool [V]
    is_boundary: torch.Tensor  # bool [V]

    @property
    def vocab_size(self) -> int:
        return int(self.base_bytes.numel())

    def to(self, device: torch.device | str) -> "ByteLUTs":
        return ByteLUTs(self.base_bytes.to(device), self.has_leading_space.to(device), self.is_boundary.to(device))


def build_byte_luts(tokenizer_or_path, vocab_size: int) -> ByteLUTs:
    """The three tables for a SentencePiece model (processor or .model path) and model vocab size."""
    if isinstance(tokenizer_or_path, (str, os.PathLike)):
        from gepalib.data import load_tokenizer

        sp = load_tokenizer(tokenizer_or_path)
    else:
        sp = tokenizer_or_path
    n = int(sp.get_piece_size())
    if vocab_size < n:
        raise ValueError(f"model vocab_size {vocab_size} is smaller than the tokenizer's {n} pieces")
    base = torch.zeros(vocab_size, dtype=torch.int64)
    lead = torch.zeros(vocab_size, dtype=torch.bool)
    boundary = torch.ones(vocab_size, dtype=torch.bool)  # ids >= n stay boundary with 0 bytes
    for t in range(n):
        if sp.is_control(t) or sp.is_unknown(t) or sp.is_unused(t):
            continue
        boundary[t] = False
        if sp.is_byte(t):
            base[t] = 1
            continue
        piece = sp.id_to_piece(t)
        if piece.startswith(SPACE):
            lead[t] = True
            piece = piece[1:]
        base[t] = len(piece.encode("utf-8"))
    return ByteLUTs(base, lead, boundary)


def target_bytes(prev_ids: torch.Tensor, target_ids: torch.Tensor, luts: ByteLUTs) -> torch.Tensor:
    """Bytes of each target: B[t] + (L[t] and not Z[prev]); int64, same shape as ``target_ids``."""
    if prev_ids.shape != target_ids.shape:
        raise ValueError(f"prev_ids {tuple(prev_ids.shape)} and target_ids {tuple(target_ids.shape)} differ in shape")
    t, p = target_ids.long(), prev_ids.long()
    space = luts.has_leading_space[t] & ~luts.is_boundary[p]
    return luts.base_bytes[t] + space.long()


def stream_bytes(tokens: torch.Tensor, luts: ByteLUTs) -> int:
    """Total bytes of the targets tokens[1:] of a 1-D stream (each scored after its predecessor)."""
    tokens = tokens.reshape(-1)
    if tokens.numel() < 2:
        return 0
    return int(target_bytes(tokens[:-1], tokens[1:], luts).sum().item())


def bpb_from_sums(nll_sum_nats: float, byte_sum: float) -> float:
    """val_bpb = sum of natural-log NLL / (ln 2 * sum of bytes), in float64."""
    nll, nbytes = float(nll_sum_nats), float(byte_sum)
    if not nbytes > 0:
        raise ValueError(f"cannot compute bits per byte over {nbytes} bytes")
    return nll / (math.log(2.0) * nbytes)
