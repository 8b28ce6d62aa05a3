"""How attention is computed: which keys each query sees, and the SDPA call with grouped KV heads.

* Causal (training, sliding windows, TTT): query t sees keys 0 .. t of its own sequence.
* Banded over a rolling :class:`KVCache` (streaming evaluation): one long stream is fed in
  consecutive pieces and at every layer query t sees exactly the keys t-W+1 .. t.

gepalib.model's Attention is the only user; it stays free of kernel choices.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# SDPA reads grouped KV heads natively (enable_gqa, torch >= 2.5) only in its flash kernel (CUDA,
# fp16/bf16, no mask); elsewhere that flag falls back to the slow math kernel, so k/v are repeated.
NATIVE_GQA = torch.__version__ >= (2, 5)


def sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Attention of q [B,H,Tq,hd] over k, v [B,Hkv,Tk,hd] (query head h uses KV head
    h // (H/Hkv)): causal without ``mask``, else where the bool ``mask`` [Tq,Tk] allows."""
    rep = q.size(1) // k.size(1)
    if rep > 1:
        if NATIVE_GQA and mask is None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)


class KVCache:
    """Streaming state: consecutive calls ``GPT.forward(idx, cache=c)`` continue one token stream
    per batch row, and at every layer the query at stream position t attends to the keys
    t-W+1 .. t (W = ``window``), i.e. banded attention. Holds the last two ids (the bigram hash
    and SmearGate look two tokens back) and, per layer, the last W-1 keys (normalised, before
    RoPE) and values. RoPE positions restart at 0 at the oldest cached key on every call: the
    scores depend only on offsets, and the angles stay small however long the stream."""

    def __init__(self, num_layers: int, window: int):
        if window <= 0:
            raise ValueError(f"KVCache window must be positive, got {window}")
        self.window, self.ids = window, None
        self.kv: list[tuple[Tensor, Tensor] | None] = [None] * num_layers
        self._masks: dict[tuple, list] = {}

    def past(self) -> int:
        """Cached positions (the same at every layer between calls)."""
        return 0 if self.kv[0] is None else self.kv[0][0].size(2)

    def with_past_ids(self, idx: Tensor) -> Tensor:
        """idx [B,T] after the (up to two) cached ids; caches the new last two."""
        ids = idx if self.ids is None else torch.cat((self.ids, idx), 1)
        self.ids = ids[:, -2:]
        return ids

    def extend(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Cached + new keys and values of ``layer`` [B,Hkv,P+T,hd]; keeps the last W-1."""
        if self.kv[layer] is not None:
            k, v = torch.cat((self.kv[layer][0], k), 2), torch.cat((self.kv[layer][1], v), 2)
        self.kv[layer] = (k[:, :, 1 - self.window:], v[:, :, 1 - self.window:]) if self.window > 1 else None
        return k, v

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Banded attention of the queries q [B,H,T,hd] of the last T of the n positions of
        k, v [B,Hkv,n,hd]: the query at p sees the key at j iff p-W < j <= p. Queries go in
        sub-blocks of max(64, W/4), each over only the keys it can reach (near W + sub of n)."""
        T, n = q.size(2), k.size(2)
        ys = [sdpa(q[:, :, q0:q1], k[:, :, k0:k1], v[:, :, k0:k1], mask)
              for q0, q1, k0, k1, mask in self._bands(T, n, q.device)]
        return ys[0] if len(ys) == 1 else torch.cat(ys, 2)

    def _bands(self, n_q: int, n_k: int, device: torch.device) -> list[tuple[int, int, int, int, Tensor]]:
        """(q0, q1, k0, k1, band mask) per query sub-block; the same for every layer of a call."""
        key = (n_q, n_k, device)
        if key not in self._masks:
            W, P, sub = self.window, n_k - n_q, max(64, self.window // 4)
            pos = torch.arange(n_k, device=device)
            self._masks[key] = []
            for q0 in range(0, n_q, sub):
                q1, k0 = min(q0 + sub, n_q), max(0, P + q0 - W + 1)
                offset = pos[P + q0:P + q1, None] - pos[None, k0:P + q1]  # query minus key position
                self._masks[key].append((q0, q1, k0, P + q1, (offset >= 0) & (offset < W)))
        return self._masks[key]
