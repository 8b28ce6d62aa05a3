"""Streaming evaluation: banded causal attention over the whole validation stream.

Definition (the "banded model"): run the GPT over the entire stream as one sequence,
except that at **every layer** token t attends to exactly the tokens t-W+1 .. t
(W = the window = eval seq len; fewer at the start of the stream). Everything else is the
model's own per-token computation: the bigram hash and SmearGate see the true previous
token(s); resid_mix/x0, skips, value embeddings and XSA are per token.

Differences from the sliding window (SPEC §5), where every window restarts:
* RoPE: attention scores depend only on relative offsets (< W, as in training), so it is
  the same rotation; positions are re-based per step to keep angles small.
* In a sliding window, the token at window position 0 has no predecessor (bigram hash
  restart, smear with e_{-1} = 0) and no earlier keys; here no token ever "starts" except
  the stream's first, so there is no fixed attention-sink position at the window start.
* Information propagates across layers: a token's layer-l state depends on tokens up to
  (l+1)(W-1) back (L(W-1)+2 including the bigram/smear inputs), whereas a sliding window
  sees at most its own W tokens. Each attention still sees exactly W-1 previous tokens.

Implementation: a per-layer KV cache of the last W-1 keys (post-qk-norm, pre-RoPE) and
values; the stream advances ``block`` tokens per step, each attending to cache + block under
a band mask. To run segments in parallel (``lanes``, and ranks), a segment starting at
target a is warmed up from token max(0, a - prefix); with the default prefix L(W-1)+2 (the
receptive field above) every scored token's result equals the sequential stream's in exact
arithmetic. Cost per scored token is about that of the non-overlapping evaluation (the
attention covers up to 2W-1 keys instead of <= W), plus the warm-up fraction.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gepalib import dist
from gepalib.eval.windows import (EvalResult, Sums, check_val_tokens, eval_mode, make_result, model_device,
                              target_byte_counts)
from gepalib.model import apply_rope, rms_norm, rope_base_for, xsa


def exact_prefix(model: nn.Module, window: int) -> int:
    """Warm-up length that makes segmenting exact: L*(W-1) attention hops + 2 (bigram, smear)."""
    return len(model.blocks) * (window - 1) + 2


def _rope(cfg, n: int, window: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """cos/sin for positions 0..n-1 with the base the model uses for windows of ``window``."""
    r = cfg.rope_dims
    base = rope_base_for(cfg, window)
    theta = base ** (-torch.arange(0, r, 2, dtype=torch.float64, device=device) / r)
    ang = torch.arange(n, dtype=torch.float64, device=device)[:, None] * theta[None, :]
    return ang.cos().float(), ang.sin().float()


def _embed(model: nn.Module, ids: Tensor) -> Tensor:
    """The model's input side (tok_emb + bigram, RMSNorm, smear) over ids [B, T]."""
    cfg = model.cfg
    e = model.tok_emb(ids)
    if cfg.bigram:
        e = e + model.bigram(ids)
    e = rms_norm(e)
    if cfg.smear:
        e = model.smear(e, ids)
    return e


def _banded_attention(attn: nn.Module, h: Tensor, cache: list, ve: Tensor | None, window: int,
                      rope_cache: dict) -> Tensor:
    """attn's computation for a block h [B,T,d] attending to cache + block within the band."""
    B, T, _ = h.shape
    H, Hkv, hd = attn.H, attn.Hkv, attn.hd
    q = attn.q(h).view(B, T, H, hd).transpose(1, 2)
    k = attn.k(h).view(B, T, Hkv, hd).transpose(1, 2)
    v = attn.v(h)
    if ve is not None:
        v = v + ve.to(v.dtype)
    v = v.view(B, T, Hkv, hd).transpose(1, 2)
    if attn.qk_norm:
        q, k = rms_norm(q), rms_norm(k)
    kc, vc = cache
    if kc is not None:
        k_all, v_all = torch.cat((kc.to(k.dtype), k), 2), torch.cat((vc.to(v.dtype), v), 2)
    else:
        k_all, v_all = k, v
    P = k_all.size(2) - T
    n = P + T
    key = (P, T, str(h.device))
    if key not in rope_cache:
        cos, sin = _rope(rope_cache["cfg"], n, window, h.device)
        pos = torch.arange(n, device=h.device)
        # query sub-blocks [i0, i1) attend to keys [max(0, P+i0-W+1), P+i1): ~W + sub keys per query
        sub = max(64, window // 4)
        parts = []
        for i0 in range(0, T, sub):
            i1 = min(i0 + sub, T)
            k0 = max(0, P + i0 - window + 1)
            qpos = pos[P + i0:P + i1, None]
            kpos = pos[None, k0:P + i1]
            parts.append((i0, i1, k0, P + i1, (kpos <= qpos) & (kpos > qpos - window)))
        rope_cache[key] = (cos, sin, parts)
    cos, sin, parts = rope_cache[key]
    if rope_cache["cfg"].rope_dims:
        q = apply_rope(q, cos[P:], sin[P:])
        kr = apply_rope(k_all, cos, sin)
    else:
        kr = k_all
    q = q * attn.q_gain.to(q.dtype)[None, :, None, None]
    rep = H // Hkv
    kr, vr = (kr.repeat_interleave(rep, 1), v_all.repeat_interleave(rep, 1)) if rep > 1 else (kr, v_all)
    if len(parts) == 1:
        y = F.scaled_dot_product_attention(q, kr[:, :, parts[0][2]:], vr[:, :, parts[0][2]:], attn_mask=parts[0][4])
    else:
        y = torch.cat([F.scaled_dot_product_attention(q[:, :, i0:i1], kr[:, :, k0:k1], vr[:, :, k0:k1], attn_mask=m)
                       for i0, i1, k0, k1, m in parts], dim=2)
    if attn.use_xsa:
        y = xsa(y, v)
    keep = window - 1
    cache[0] = k_all[:, :, -keep:] if keep > 0 else None
    cache[1] = v_all[:, :, -keep:] if keep > 0 else None
    return attn.out(y.transpose(1, 2).reshape(B, T, H * hd))


def _step(model: nn.Module, ids_ext: Tensor, n_new: int, caches: list, window: int, rope_cache: dict) -> Tensor:
    """Advance the stream by the last ``n_new`` tokens of ids_ext (which carries up to 2 earlier
    tokens for the bigram/smear inputs); returns fp32 soft-capped logits [B, n_new, V]."""
    cfg = model.cfg
    e = _embed(model, ids_ext)[:, -n_new:]
    ids = ids_ext[:, -n_new:]
    x = x0 = e
    ve = model.ve(ids) if cfg.ve_layers else None
    skips: list[Tensor] = []
    n_enc = model.n_enc
    for i, block in enumerate(model.blocks):
        if i >= n_enc and skips:
            j = i - n_enc
            s = model.skip_weights[j].to(x.dtype) * skips.pop()
            if cfg.skip_mode == "gated":
                g = torch.sigmoid(model.skip_gates[j]).to(x.dtype)
                x = g * x + (1 - g) * s
            else:
                x = x + s
        slot = model.ve_slot.get(i)
        ve_i = None if slot is None else model.ve.layer_scales[slot].to(ve.dtype) * ve
        if hasattr(block, "resid_mix"):
            m = block.resid_mix.to(x.dtype)
            x = m[0] * x + m[1] * x0
        x = x + block.attn_scale.to(x.dtype) * _banded_attention(
            block.attn, rms_norm(x) * block.ln_scale, caches[i], ve_i, window, rope_cache)
        x = x + block.mlp_scale.to(x.dtype) * block.mlp(rms_norm(x) * block.ln_scale)
        if i < n_enc and cfg.skip_mode != "none":
            skips.append(x)
    h = rms_norm(x)
    z = F.linear(h, model.tok_emb.weight.to(h.dtype)).float()
    return cfg.logit_softcap * torch.tanh(z / cfg.logit_softcap)


def auto_lanes(n_targets: int, prefix: int, max_lanes: int) -> int:
    """Most lanes (<= max_lanes) that keep the warm-up under ~1/4 of the scored tokens."""
    if prefix <= 0:
        return max(1, min(max_lanes, n_targets))
    return max(1, min(max_lanes, n_targets // (4 * prefix)))


def score_range(model: nn.Module, val_tokens: Tensor, luts_d, lo: int, hi: int, window: int, sums: Sums, *,
                lanes: int = 0, block: int = 0, prefix: int = -1, max_lanes: int = 32, autocast: str = "auto",
                token_losses: Tensor | None = None) -> None:
    """Score targets [lo, hi) with the banded model; add to ``sums`` (caller: eval/inference mode).

    The range is cut into ``lanes`` contiguous segments run side by side as a batch; each is
    warmed up over ``prefix`` earlier tokens (-1: :func:`exact_prefix`)."""
    if not lo < hi:
        return
    if window <= 0:
        raise ValueError(f"streaming window must be positive, got {window}")
    N = val_tokens.numel() - 1
    device = sums.t.device
    prefix = exact_prefix(model, window) if prefix < 0 else prefix
    block = window if block <= 0 else block
    n = hi - lo
    lanes = auto_lanes(n, prefix, max_lanes) if lanes <= 0 else min(lanes, n)
    base, rem = divmod(n, lanes)
    seg_lo = [lo + i * base + min(i, rem) for i in range(lanes)]
    seg_hi = [s + base + (1 if i < rem else 0) for i, s in enumerate(seg_lo)]
    start = [max(0, s - prefix) for s in seg_lo]
    length = max(h - s for s, h in zip(start, seg_hi))
    start_t = torch.tensor(start, dtype=torch.int64)[:, None]
    lo_t = torch.tensor(seg_lo, device=device)[:, None]
    hi_t = torch.tensor(seg_hi, device=device)[:, None]
    caches = [[None, None] for _ in model.blocks]
    rope_cache = {"cfg": model.cfg}
    for j0 in range(0, length, block):
        j1 = min(j0 + block, length)
        e0 = max(0, j0 - 2)
        pos = start_t + torch.arange(e0, j1 + 1)[None, :]  # token positions incl. the last target
        seg = val_tokens[pos.clamp(max=N)].to(device=device, dtype=torch.int64)
        ids_ext, tgt = seg[:, :-1], seg[:, 1 + (j0 - e0):]
        with dist.autocast_context(device, autocast):
            logits = _step(model, ids_ext, j1 - j0, caches, window, rope_cache)
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1),
                              reduction="none").view(tgt.shape)
        t_idx = (start_t + torch.arange(j0, j1)[None, :]).to(device)  # target indices
        mask = (t_idx >= lo_t) & (t_idx < hi_t)
        prev = ids_ext[:, -(j1 - j0):]
        sums.add(nll[mask], target_byte_counts(prev, tgt, luts_d)[mask])
        if token_losses is not None:
            token_losses[t_idx[mask]] = nll[mask]


def eval_streaming(model: nn.Module, val_tokens: Tensor, luts, window: int, *, lanes: int = 0, block: int = 0,
                   prefix: int = -1, max_lanes: int = 32, autocast: str = "auto",
                   return_token_losses: bool = False) -> EvalResult:
    """Every target scored once by the banded model (module docstring). Targets are split
    contiguously across ranks, then into lanes; fp64 sums all-reduced."""
    t0 = time.perf_counter()
    check_val_tokens(val_tokens, getattr(model.cfg, "vocab_size", None))
    val_tokens = val_tokens.cpu()
    N = val_tokens.numel() - 1
    device = model_device(model)
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if dist.active() else (0, 1)
    lo, hi = dist.shard_range(N, rank, world)
    sums = Sums(device)
    losses = torch.zeros(N, dtype=torch.float32, device=device) if return_token_losses else None
    with eval_mode(model):
        score_range(model, val_tokens, luts.to(device), lo, hi, window, sums, lanes=lanes, block=block,
                    prefix=prefix, max_lanes=max_lanes, autocast=autocast, token_losses=losses)
    nll_sum, tokens, nbytes = sums.reduced()
    if losses is not None:
        losses = dist.all_reduce_sum(losses).cpu()
    prefix_used = exact_prefix(model, window) if prefix < 0 else prefix
    return make_result(nll_sum, tokens, nbytes, time.perf_counter() - t0, token_losses=losses,
                       extra={"window": window, "prefix": prefix_used})
