"""Streaming (banded-attention) evaluation against a slow reference.

The reference is the model's own forward over the whole stream as one sequence, with its
causal attention replaced by an explicit band (token t attends to t-W+1 .. t at every
layer). The streaming evaluator (KV cache, blocks, parallel warmed-up lanes) must give
every target the same loss.
"""
from __future__ import annotations

import math
import types

import pytest
import torch
import torch.nn.functional as F

import gepalib.attention as attention_mod
from gepalib.bpb import stream_bytes
from gepalib.config import get_preset, override
from gepalib.attention import KVCache
from gepalib.model import GPT
from gepalib.eval.streaming import eval_streaming, exact_prefix


def tiny_model(seed: int = 0, **kw) -> GPT:
    cfg = override(get_preset("tiny"), num_layers=3, model_dim=64, num_heads=4, num_kv_heads=2, mlp_hidden=128,
                   rope_dims=8, bigram_dim=16, ve_dim=16, ve_layers=(1, 2), xsa_last_n=1, seq_len=64,
                   rope_train_seq_len=4096, **kw)  # no NTK rescaling in the long reference pass
    torch.manual_seed(seed)
    m = GPT(cfg.model)
    with torch.no_grad():
        for _, p in m.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 1.0 / math.sqrt(p.size(1))).mul_(2.0)
            else:
                p.add_(0.3 * torch.randn_like(p))
    return m.eval()


def stream(n_targets: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 1024, (n_targets + 1,), generator=g)


@torch.no_grad()
def banded_reference(model, val: torch.Tensor, window: int) -> torch.Tensor:
    """Per-target nll of the whole stream in one forward, attention restricted to a band."""
    real_sdpa = F.scaled_dot_product_attention

    def sdpa(q, k, v, attn_mask=None, is_causal=False, **kw):
        assert is_causal and attn_mask is None
        i = torch.arange(q.size(-2))
        band = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)
        return real_sdpa(q, k, v, attn_mask=band)

    shim = types.SimpleNamespace(**{k: getattr(F, k) for k in dir(F) if not k.startswith("__")})
    shim.scaled_dot_product_attention = sdpa
    saved = attention_mod.F
    attention_mod.F = shim
    try:
        return model(val[:-1][None], val[1:][None], reduction="none")[0]
    finally:
        attention_mod.F = saved


@pytest.mark.parametrize("variant", [{}, {"bigram_hash": "xor", "skip_mode": "add", "smear_bos_reset": True}])
def test_streaming_equals_banded_reference(luts, variant):
    model = tiny_model(**variant)
    N, W = 203, 16
    val = stream(N)
    val[[0, 50, 51, 120]] = 1  # some BOS tokens (matter for smear_bos_reset)
    ref = banded_reference(model, val, W)
    for lanes, block in ((1, 0), (1, 5), (3, 7), (4, 16), (7, 40)):
        r = eval_streaming(model, val, luts, W, lanes=lanes, block=block, return_token_losses=True)
        assert r.tokens == N and r.bytes == stream_bytes(val, luts)
        err = (r.token_losses - ref).abs().max().item()
        assert err < 1e-4, (lanes, block, err)
    assert exact_prefix(model, W) == 3 * (W - 1) + 2
    # a wider band: blocks are split into query sub-blocks of max(64, W/4) (several per block)
    ref100 = banded_reference(model, val, 100)
    for lanes, block in ((1, 150), (2, 0)):
        r = eval_streaming(model, val, luts, 100, lanes=lanes, block=block, prefix=-1, return_token_losses=True)
        assert (r.token_losses - ref100).abs().max().item() < 1e-4, (lanes, block)
    # too short a warm-up is no longer exact: the check above has teeth
    short = eval_streaming(model, val, luts, W, lanes=4, block=16, prefix=W - 1, return_token_losses=True)
    assert (short.token_losses - ref).abs().max().item() > 1e-3


def test_streaming_with_window_covering_stream_is_the_plain_forward(luts):
    model = tiny_model(seed=2)
    N = 130
    val = stream(N, seed=3)
    with torch.no_grad():
        full = model(val[:-1][None], val[1:][None], reduction="none")[0]
    r = eval_streaming(model, val, luts, N + 5, lanes=1, block=33, return_token_losses=True)
    assert (r.token_losses - full).abs().max().item() < 1e-4
    assert r.val_loss == pytest.approx(full.double().mean().item(), rel=1e-5)


def test_streaming_is_causal_and_restores_mode(luts):
    model = tiny_model(seed=4).train()
    N, W, p = 150, 16, 90
    val = stream(N, seed=5)
    a = eval_streaming(model, val, luts, W, lanes=3, block=8, return_token_losses=True)
    assert model.training
    alt = val.clone()
    alt[p:] = stream(N - p, seed=6)
    b = eval_streaming(model, alt, luts, W, lanes=3, block=8, return_token_losses=True)
    assert torch.equal(a.token_losses[:p - 1], b.token_losses[:p - 1])
    assert not torch.equal(a.token_losses[p - 1:], b.token_losses[p - 1:])


@pytest.mark.parametrize("embed_dtype", ["float32", "bfloat16"])
def test_streaming_logits_equal_plain_forward_over_each_window(luts, embed_dtype):
    """With one layer and no bigram/smear, a token's banded context is exactly its own last W
    tokens: the KV-cache forward must give every token the logits of the plain (causal, no
    cache) forward over that window, whatever the block size, lane and RoPE offsets. (A bf16
    table with no bigram would leave a bf16 residual stream if streaming skipped the model's
    own embedding path.)"""
    cfg = override(get_preset("tiny"), num_layers=1, model_dim=64, num_heads=4, num_kv_heads=2, mlp_hidden=128,
                   rope_dims=8, bigram=False, smear=False, ve_dim=16, ve_layers=(0,), xsa_last_n=1,
                   embed_dtype=embed_dtype, rope_train_seq_len=4096)
    torch.manual_seed(7)
    model = GPT(cfg.model).eval()
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn_like(p, dtype=torch.float32).mul_(2.0 / math.sqrt(p.size(1))))
            else:
                p.add_(0.3 * torch.randn_like(p))
    N, W = 75, 16
    lanes = torch.stack([stream(N, seed=8), stream(N, seed=9)])  # two independent streams
    with torch.no_grad():
        ref = torch.stack([torch.stack([model(s[max(0, t - W + 1):t + 1][None])[0, -1] for t in range(N)])
                           for s in lanes])  # [2, N, V]: slow and obvious
        for block in (1, 7, 16, 40):
            cache = KVCache(1, W)
            got = torch.cat([model(lanes[:, j:min(j + block, N)], cache=cache) for j in range(0, N, block)], 1)
            assert cache.past() == W - 1
            err = (got - ref).abs().max().item()
            assert err < 2e-4, (block, err)
        # the evaluator on top of it: every target's loss is the plain window forward's
        val = lanes[0]
        want = F.cross_entropy(ref[0], val[1:N + 1], reduction="none")
    r = eval_streaming(model, torch.cat((val, val[-1:])), luts, W, lanes=3, block=5, return_token_losses=True)
    assert (r.token_losses[:N] - want).abs().max().item() < 1e-4


def test_streaming_under_bf16_autocast_agrees_with_fp32(luts):
    model = tiny_model(seed=5)
    for p in model.parameters():  # milder weights: bf16 noise well below the scale of the losses
        p.data.mul_(0.5)
    val = stream(160, seed=11)
    a = eval_streaming(model, val, luts, 16, lanes=2, block=12, autocast="none", return_token_losses=True)
    b = eval_streaming(model, val, luts, 16, lanes=2, block=12, autocast="bf16", return_token_losses=True)
    assert (a.tokens, a.bytes) == (b.tokens, b.bytes)
    assert b.val_bpb == pytest.approx(a.val_bpb, rel=5e-3)
    assert (a.token_losses - b.token_losses).abs().mean().item() < 0.02 * a.token_losses.mean().item()
