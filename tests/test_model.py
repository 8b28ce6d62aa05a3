"""The GEPA model (docs/model.md): exact parameter counts, fixed names, each component against a slow
obvious reference written here, causality, init statistics, determinism, overfitting, `gepa info`."""
from __future__ import annotations

import argparse
import dataclasses
import math

import pytest
import torch

from gepalib import config as C
from gepalib.attention import NATIVE_GQA, sdpa
from gepalib.model import (CONTROL_PATTERNS, GPT, apply_rope, bigram_hash, rope_base_for, rope_cos_sin,
                           validate_config, xsa)
from gepalib.param_count import component_of, param_breakdown

# A small config with every feature on; n_enc = 2, so block 2 gets block 1's output,
# block 3 gets block 0's, block 4 gets none. rope_train_seq_len=8 makes NTK active at T > 8.
MINI = C.ModelConfig(vocab_size=64, num_layers=5, model_dim=32, num_heads=4, num_kv_heads=2, mlp_hidden=48,
                     rope_dims=4, rope_train_seq_len=8, bigram_buckets=31, bigram_dim=8, xsa_last_n=2,
                     ve_layers=(3, 4), ve_dim=8, embed_dtype="float32")


@pytest.fixture(scope="module")
def gepa11() -> GPT:
    torch.manual_seed(0)
    return GPT(C.get_preset("gepa11").model)


def perturbed(cfg: C.ModelConfig, seed: int = 0) -> GPT:
    """Model with every parameter moved off its init, so zero-init and unit gates matter."""
    torch.manual_seed(seed)
    m = GPT(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m


# ---------------------------------------------------------------------------
# Slow references (written from the formulas of docs/model.md)


def ref_rms(x):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + torch.finfo(x.dtype).eps)


def ref_rope(x, base, r):
    """x [..., T, hd]: rotate pairs (j, j + r/2), j < r/2, by angle t * base^(-2j/r)."""
    out = x.clone()
    half = r // 2
    for t in range(x.shape[-2]):
        for j in range(half):
            phi = t * base ** (-2 * j / r)
            u, w = x[..., t, j], x[..., t, j + half]
            out[..., t, j] = u * math.cos(phi) + w * math.sin(phi)
            out[..., t, j + half] = -u * math.sin(phi) + w * math.cos(phi)
    return out


def ref_hash(ids: list[int], buckets: int, variant: str) -> list[int]:
    out = []
    for t, cur in enumerate(ids):
        prev = ids[t - 1] if t > 0 else 0
        if variant == "add":
            out.append((1009 * prev + cur) % buckets)
        else:
            out.append(buckets - 1 if t == 0 else ((36313 * cur) ^ (27191 * prev)) % (buckets - 1))
    return out


def ref_smear(e, gate, idx=None, bos_id=None):
    g = torch.sigmoid(gate)
    out = torch.empty_like(e)
    for t in range(e.shape[1]):
        prev = e[:, t - 1] if t > 0 else torch.zeros_like(e[:, 0])
        if bos_id is not None:
            prev = torch.where((idx[:, t] == bos_id)[:, None], torch.zeros_like(prev), prev)
        out[:, t] = (1 - g) * e[:, t] + g * prev
    return out


def ref_xsa(y, v):
    """y [B,H,T,hd], v [B,Hkv,T,hd]; one (b, h, t) at a time."""
    out = y.clone()
    B, H, T, _ = y.shape
    rep = H // v.shape[1]
    for b in range(B):
        for h in range(H):
            for t in range(T):
                vh = v[b, h // rep, t]
                vh = vh / vh.norm()
                out[b, h, t] = y[b, h, t] - torch.dot(y[b, h, t], vh) * vh
    return out


def ref_attention(attn, cfg, h, ve, use_xsa):
    B, T, _ = h.shape
    H, Hkv, hd, r = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.rope_dims
    base = cfg.rope_base if T <= cfg.rope_train_seq_len else \
        cfg.rope_base * (T / cfg.rope_train_seq_len) ** (r / (r - 2))
    q, k, v = h @ attn.q.weight.T, h @ attn.k.weight.T, h @ attn.v.weight.T
    if ve is not None:
        v = v + ve
    mask = torch.ones(T, T).tril().bool()
    heads = []
    for hq in range(H):
        g = hq // (H // Hkv)
        qh, kh, vh = q[..., hq * hd:(hq + 1) * hd], k[..., g * hd:(g + 1) * hd], v[..., g * hd:(g + 1) * hd]
        if cfg.qk_norm:
            qh, kh = ref_rms(qh), ref_rms(kh)
        if r:
            qh, kh = ref_rope(qh, base, r), ref_rope(kh, base, r)
        qh = qh * attn.q_gain[hq]
        s = (qh @ kh.transpose(-1, -2)) / math.sqrt(hd)
        y = torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ vh
        if use_xsa:
            vn = vh / vh.norm(dim=-1, keepdim=True)
            y = y - (y * vn).sum(-1, keepdim=True) * vn
        heads.append(y)
    return torch.cat(heads, -1) @ attn.out.weight.T


def ref_mlp(mlp, cfg, h):
    u = h @ mlp.up.weight.T
    a = torch.where(u > 0, u, 0.5 * u if cfg.mlp_act == "leaky_relu2" else 0 * u) ** 2
    if cfg.mlp_act == "star_relu2":
        a = mlp.gamma * a + mlp.beta
    return a @ mlp.down.weight.T


def ref_forward(model: GPT, idx):
    cfg = model.cfg
    L, n_enc = cfg.num_layers, cfg.num_layers // 2
    E = model.tok_emb.weight.float()
    e = E[idx]
    if cfg.bigram:
        hsh = torch.tensor([ref_hash(row.tolist(), cfg.bigram_buckets, cfg.bigram_hash) for row in idx])
        big = model.bigram.embed.weight[hsh] @ model.bigram.proj.weight.T
        e = e + (big * model.bigram.scale if cfg.bigram_hash == "xor" else big)
    e = ref_rms(e)
    if cfg.smear:
        e = ref_smear(e, model.smear.gate, idx, cfg.bos_id if cfg.smear_bos_reset else None)
    x = x0 = e
    if cfg.ve_layers:
        ve = model.ve.scale * (model.ve.embed.weight[idx] @ model.ve.proj.weight.T)
    enc_out = {}
    for l, blk in enumerate(model.blocks):
        i = l - n_enc
        if i >= 0 and cfg.skip_mode != "none" and n_enc - 1 - i >= 0:
            skip = model.skip_weights[i] * enc_out[n_enc - 1 - i]
            if cfg.skip_mode == "gated":
                g = torch.sigmoid(model.skip_gates[i])
                x = g * x + (1 - g) * skip
            else:
                x = x + skip
        s = 1 / math.sqrt(l + 1) if cfg.ln_scale else 1.0
        x_in = blk.resid_mix[0] * x + blk.resid_mix[1] * x0 if cfg.resid_mix else x
        ve_l = model.ve.layer_scales[cfg.ve_layers.index(l)] * ve if l in cfg.ve_layers else None
        x = x_in + blk.attn_scale * ref_attention(blk.attn, cfg, ref_rms(x_in) * s, ve_l, l >= L - cfg.xsa_last_n)
        x = x + blk.mlp_scale * ref_mlp(blk.mlp, cfg, ref_rms(x) * s)
        if l < n_enc:
            enc_out[l] = x
    z = ref_rms(x) @ E.T
    return cfg.logit_softcap * torch.tanh(z / cfg.logit_softcap)


# ---------------------------------------------------------------------------
# Parameter counts and names


def test_gepa11_parameter_count_and_breakdown(gepa11):
    bd = param_breakdown(gepa11)
    assert bd["total"] == 27_030_107
    assert bd["blocks"] == 11 * 2_364_424 == 26_008_664
    assert bd["blocks.attn_matrices"] == 11 * (524_288 + 262_144)
    assert bd["blocks.mlp_matrices"] == 11 * 1_572_864
    assert bd["blocks.vectors"] == 11 * 5_128
    assert bd["tok_emb"] == 524_288
    assert bd["bigram"] == 327_680
    assert bd["smear"] + bd["skips"] == 5_632
    assert bd["value_embed"] == 163_843
    assert sum(v for k, v in bd.items() if k not in ("blocks", "total")) == bd["total"]
    assert component_of("module._orig_mod.blocks.3.attn.q.weight") == "blocks.attn_matrices"  # DDP/compile


def test_gepa11_xor_bigram_adds_one_scalar():
    with torch.device("meta"):  # shapes only
        m = GPT(C.get_preset("gepa11", bigram_hash="xor").model)
    assert param_breakdown(m)["total"] == 27_030_108
    assert m.bigram.scale.shape == ()


def test_baseline9_is_the_challenge_baseline_size():
    with torch.device("meta"):
        m = GPT(C.get_preset("baseline9").model)
    assert param_breakdown(m)["total"] == 17_059_912  # the naive baseline's logged model_params
    names = {n for n, _ in m.named_parameters()}
    assert not any(s in n for n in names for s in ("bigram", "smear", "ve.", "skip_gates", "gamma", "beta"))


def test_state_dict_names_and_shapes(gepa11):
    sd = {k: tuple(v.shape) for k, v in gepa11.state_dict().items()}
    d, kv, hid = 512, 256, 1536
    expect = {"tok_emb.weight": (1024, d), "bigram.embed.weight": (2048, 128), "bigram.proj.weight": (d, 128),
              "smear.gate": (d,), "skip_weights": (5, d), "skip_gates": (5, d), "ve.embed.weight": (1024, 128),
              "ve.proj.weight": (kv, 128), "ve.scale": (), "ve.layer_scales": (2,)}
    for i in range(11):
        expect.update({f"blocks.{i}.resid_mix": (2, d), f"blocks.{i}.attn_scale": (d,), f"blocks.{i}.mlp_scale": (d,),
                       f"blocks.{i}.attn.q.weight": (d, d), f"blocks.{i}.attn.k.weight": (kv, d),
                       f"blocks.{i}.attn.v.weight": (kv, d), f"blocks.{i}.attn.out.weight": (d, d),
                       f"blocks.{i}.attn.q_gain": (8,), f"blocks.{i}.mlp.up.weight": (hid, d),
                       f"blocks.{i}.mlp.down.weight": (d, hid), f"blocks.{i}.mlp.gamma": (hid,),
                       f"blocks.{i}.mlp.beta": (hid,)})
    assert sd == expect


def test_control_patterns_leave_only_gamma_beta_as_small_fp16(gepa11):
    """Among tensors of <= 65,536 elements, only γ and β miss the control list."""
    small = [n for n, p in gepa11.named_parameters() if p.numel() <= 65536]
    non_control = {n for n in small if not any(s in n for s in CONTROL_PATTERNS)}
    assert non_control == {f"blocks.{i}.mlp.{w}" for i in range(11) for w in ("gamma", "beta")}
    assert "bigram.proj.weight" in small  # exactly 65,536 elements, kept fp32 via "bigram"


def test_ttt_freeze_split_counts(gepa11):
    """Freezing blocks 0 and 1 leaves 22,301,259 trainable and 4,728,848 frozen."""
    frozen = sum(p.numel() for n, p in gepa11.named_parameters() if "blocks.0." in n or "blocks.1." in n)
    assert (27_030_107 - frozen, frozen) == (22_301_259, 4_728_848)


def test_gepa11_step0_loss_is_log_vocab(gepa11):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 1024, (1, 33), generator=g)
    loss = gepa11(x[:, :-1], x[:, 1:])
    assert loss.dtype == torch.float32 and abs(loss.item() - math.log(1024)) < 0.02  # run: 6.9300


# ---------------------------------------------------------------------------
# Components against references


def test_rope_matches_reference_and_ntk_formula():
    torch.manual_seed(0)
    cfg = dataclasses.replace(MINI, rope_dims=8, model_dim=64, num_heads=4)  # head_dim 16, 8 rotate
    x = torch.randn(2, 3, 10, 16)
    for T_train, base in ((16, 10000.0), (8, 10000.0 * (10 / 8) ** (8 / 6))):
        c = dataclasses.replace(cfg, rope_train_seq_len=T_train)
        assert rope_base_for(c, 10) == pytest.approx(base)
        got = apply_rope(x, *rope_cos_sin(c, 10, x.device))
        torch.testing.assert_close(got, ref_rope(x, base, 8), atol=1e-5, rtol=1e-5)
        assert torch.equal(got[..., 8:], x[..., 8:])  # unrotated dims pass through
    g11 = C.get_preset("gepa11").model
    assert rope_base_for(g11, 2048) == 10000.0  # inactive at the run's settings
    assert rope_base_for(dataclasses.replace(g11, rope_train_seq_len=1024), 2048) == pytest.approx(22082, abs=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eager_backwards_equal_autograd_bit_for_bit(dtype):
    """gepalib.eager's hand-written backwards (partial RoPE, relu^2) against autograd's own of
    the plain expressions: the same forward and gradients, bit for bit."""
    import torch.nn.functional as F

    from gepalib import eager

    torch.manual_seed(0)
    cfg = dataclasses.replace(MINI, rope_dims=8, model_dim=64, num_heads=4)
    cos, sin = rope_cos_sin(cfg, 10, torch.device("cpu"))
    cases = [(lambda t: eager.apply_rope(t, cos, sin), lambda t: eager._rotate(t, cos.to(t.dtype), sin.to(t.dtype), 1.0),
              (2, 3, 10, 16)),
             (eager.relu2, lambda t: F.relu(t).square(), (4, 10, 48))]
    for fast, plain, shape in cases:
        x = torch.randn(shape, dtype=dtype)
        g = torch.randn(shape, dtype=dtype)
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = fast(a), plain(b)
        assert ya.grad_fn is not None and "Backward" in type(ya.grad_fn).__name__
        ya.backward(g)
        yb.backward(g)
        assert torch.equal(ya, yb) and torch.equal(a.grad, b.grad)
        assert not torch.equal(a.grad, torch.zeros_like(a.grad))
    # the whole model: one loss and every gradient equal with and without the eager functions
    import gepalib.model as M

    x = torch.randint(0, MINI.vocab_size, (2, 12))
    grads = []
    for rope, relu2 in ((eager.apply_rope, eager.relu2),
                        (lambda t, c, s: eager._rotate(t, c.to(t.dtype), s.to(t.dtype), 1.0),
                         lambda t: F.relu(t).square())):
        M.apply_rope, M.relu2 = rope, relu2
        try:
            m = perturbed(MINI)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                loss = m(x, x)
            loss.backward()
        finally:
            M.apply_rope, M.relu2 = eager.apply_rope, eager.relu2
        grads.append([loss.detach()] + [p.grad for p in m.parameters()])
    assert all(torch.equal(u, v) for u, v in zip(*grads))


def test_logits_from_keeps_the_scored_rows_bit_equal():
    m = perturbed(MINI).eval()
    x = torch.randint(0, MINI.vocab_size, (3, 12))
    with torch.inference_mode():
        full, part = m(x, x, reduction="none"), m(x, x, reduction="none", logits_from=9)
        assert part.shape == (3, 3) and torch.equal(full[:, 9:], part)
        assert torch.equal(m(x)[:, 4:], m(x, logits_from=4))
    with pytest.raises(ValueError, match="logits_from"):
        m(x, logits_from=12)


def test_rope_scores_depend_only_on_relative_position():
    cfg = dataclasses.replace(MINI, rope_dims=8, model_dim=64, num_heads=4, rope_train_seq_len=64)
    cos, sin = rope_cos_sin(cfg, 20, torch.device("cpu"))
    q, k = torch.randn(16), torch.randn(16)
    qs, ks = apply_rope(q.expand(20, 16), cos, sin), apply_rope(k.expand(20, 16), cos, sin)
    assert torch.dot(qs[7], ks[3]).item() == pytest.approx(torch.dot(qs[15], ks[11]).item(), abs=1e-4)


def test_bigram_hash_values():
    ids = [5, 7, 1023, 1, 0, 999]
    add = bigram_hash(torch.tensor([ids]), 2048, "add")[0].tolist()
    assert add[:3] == [5, (1009 * 5 + 7) % 2048, (1009 * 7 + 1023) % 2048] == [5, 956, 1942]
    assert add == ref_hash(ids, 2048, "add")
    xor = bigram_hash(torch.tensor([ids]), 2048, "xor")[0].tolist()
    assert xor[0] == 2047 and xor[1] == ((36313 * 7) ^ (27191 * 5)) % 2047
    assert xor == ref_hash(ids, 2048, "xor")
    ids2 = torch.randint(0, 1024, (3, 50), generator=torch.Generator().manual_seed(0))
    for variant in ("add", "xor"):
        got = bigram_hash(ids2, 2048, variant)
        assert got.dtype == torch.int64
        assert got.tolist() == [ref_hash(r, 2048, variant) for r in ids2.tolist()]


def test_smear_gate_matches_reference():
    torch.manual_seed(0)
    m = perturbed(dataclasses.replace(MINI, smear_bos_reset=True))
    e = torch.randn(2, 9, 32)
    idx = torch.randint(2, 64, (2, 9))
    idx[0, 4] = idx[1, 0] = 1
    torch.testing.assert_close(m.smear(e, idx), ref_smear(e, m.smear.gate, idx, 1))
    m.smear.bos_reset = False
    torch.testing.assert_close(m.smear(e, idx), ref_smear(e, m.smear.gate))


def test_xsa_matches_reference_and_is_orthogonal_to_own_value():
    torch.manual_seed(0)
    y, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8)
    out = xsa(y, v)
    torch.testing.assert_close(out, ref_xsa(y, v), atol=1e-5, rtol=1e-5)
    own = v.repeat_interleave(2, 1)
    assert (out * own).sum(-1).abs().max() < 1e-5


@pytest.mark.parametrize("act", ["star_relu2", "relu2", "leaky_relu2"])
def test_mlp_variants_match_reference(act):
    cfg = dataclasses.replace(MINI, mlp_act=act)
    m = perturbed(cfg)
    h = torch.randn(2, 5, 32)
    torch.testing.assert_close(m.blocks[0].mlp(h), ref_mlp(m.blocks[0].mlp, cfg, h), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("changes", [
    {},  # everything on: additive bigram, gated skips, star-relu, XSA, VE, NTK active (T=12 > 8)
    {"bigram_hash": "xor", "smear_bos_reset": True, "skip_mode": "add", "mlp_act": "leaky_relu2"},
    {"bigram": False, "smear": False, "xsa_last_n": 0, "ve_layers": (), "skip_mode": "none", "ln_scale": False,
     "resid_mix": False, "qk_norm": False, "rope_dims": 8, "mlp_act": "relu2", "rope_train_seq_len": 64},
    {"rope_dims": 0, "xsa_last_n": 4, "ve_layers": (0,), "num_kv_heads": 4, "num_layers": 4},
    {"embed_dtype": "bfloat16", "bigram": False},  # bf16 table must not turn the CPU forward into bf16
])
def test_full_forward_matches_slow_reference(changes):
    """The whole model (incl. gated/additive U-Net skips and VE) against the formula-by-formula reference."""
    cfg = dataclasses.replace(MINI, **changes)
    m = perturbed(cfg)
    idx = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(3))
    idx[0, 5] = 1
    with torch.no_grad():
        torch.testing.assert_close(m(idx), ref_forward(m, idx), atol=2e-4, rtol=1e-4)


# ---------------------------------------------------------------------------
# Forward contract


def test_losses_logits_and_reduction():
    m = perturbed(MINI)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 64, (3, 11), generator=g)
    idx, tgt = x[:, :-1], x[:, 1:]
    logits = m(idx)
    assert logits.shape == (3, 10, 64) and logits.dtype == torch.float32
    assert logits.abs().max() < MINI.logit_softcap
    nll = m(idx, tgt, reduction="none")
    assert nll.shape == (3, 10) and nll.dtype == torch.float32
    ref = -torch.log_softmax(logits, -1).gather(-1, tgt[..., None])[..., 0]
    torch.testing.assert_close(nll, ref)
    torch.testing.assert_close(m(idx, tgt), nll.mean())
    with pytest.raises(ValueError, match="reduction"):
        m(idx, tgt, reduction="sum")
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        m(idx[0])


@pytest.mark.parametrize("preset", ["tiny", "small", "gepa11", "baseline9"])
def test_causality(preset):
    """Changing tokens at positions >= t never changes logits before t."""
    torch.manual_seed(0)
    cfg = C.get_preset(preset).model
    m = perturbed(cfg)  # off init: zero-init W_o/W_down would hide attention and MLP leaks
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, cfg.vocab_size, (2, 16), generator=g)
    t = 9
    idx2 = idx.clone()
    idx2[:, t:] = torch.randint(0, cfg.vocab_size, (2, 16 - t), generator=g)
    idx2[0, t] = cfg.bos_id
    with torch.no_grad():
        a, b = m(idx), m(idx2)
    torch.testing.assert_close(a[:, :t], b[:, :t], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, t:], b[:, t:])


@pytest.mark.parametrize("changes", [{"bigram_hash": "xor", "smear_bos_reset": True}, {"skip_mode": "add"}])
def test_causality_variants(changes):
    m = perturbed(dataclasses.replace(MINI, **changes))
    idx = torch.randint(0, 64, (2, 14), generator=torch.Generator().manual_seed(2))
    for t in (1, 6, 13):
        idx2 = idx.clone()
        idx2[:, t:] = (idx2[:, t:] + 7) % 64
        with torch.no_grad():
            torch.testing.assert_close(m(idx)[:, :t], m(idx2)[:, :t], atol=1e-6, rtol=0)


def test_scaled_rms_norm_matches_functional_in_bf16():
    """The scaled path (q_gain, LN scale, softcap) has F.rms_norm's numerics: eps is fp32's
    machine epsilon for bf16 inputs. bf16's own eps (2^-7) would shrink small-rms rows."""
    from gepalib.model import rms_norm

    g = torch.Generator().manual_seed(0)
    for rms in (1.0, 0.05, 0.01):
        x = (torch.randn(4, 7, 64, generator=g) * rms).to(torch.bfloat16)
        scale = torch.rand(4, 1, 1, generator=g) + 0.5
        want = torch.nn.functional.rms_norm(x.float(), (64,)) * scale
        got = rms_norm(x, scale)
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want, atol=0, rtol=2 ** -7)
        torch.testing.assert_close(rms_norm(x), torch.nn.functional.rms_norm(x, (64,)), atol=0, rtol=0)


def test_bf16_autocast_forward_on_cpu():
    m = perturbed(dataclasses.replace(MINI, embed_dtype="bfloat16"))
    assert m.tok_emb.weight.dtype == torch.bfloat16
    idx = torch.randint(0, 64, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = m(idx, idx)
        logits = m(idx)
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and logits.dtype == torch.float32
    loss.backward()
    assert m.tok_emb.weight.grad.dtype == torch.bfloat16
    with torch.no_grad():
        torch.testing.assert_close(logits, m(idx), atol=0.3, rtol=0.05)


@pytest.mark.skipif(not NATIVE_GQA, reason="SDPA has no enable_gqa before torch 2.5")
def test_native_gqa_matches_repeated_kv_heads():
    """The enable_gqa path (taken for flash attention on CUDA) serves query head h from KV head
    h // (H/Hkv), exactly as the repeat_interleave path that every other case takes."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, 9, 8, generator=g) for h in (6, 2, 2))
    native = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(sdpa(q, k, v), native, atol=1e-6, rtol=1e-5)
    want = torch.cat([sdpa(q[:, h:h + 1], k[:, h // 3:h // 3 + 1], v[:, h // 3:h // 3 + 1]) for h in range(6)], 1)
    torch.testing.assert_close(native, want, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------
# Initialisation


def _orthogonal_up_to(w: torch.Tensor, scale2: float) -> float:
    w = w.double()
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return (gram - scale2 * torch.eye(gram.shape[0], dtype=torch.double)).abs().max().item()


def test_init_statistics(gepa11):
    m = gepa11
    for i, b in enumerate(m.blocks):
        assert not b.attn.out.weight.any() and not b.mlp.down.weight.any(), f"block {i}: zero-init"
        for w in (b.attn.q.weight, b.attn.k.weight, b.attn.v.weight, b.mlp.up.weight):
            assert _orthogonal_up_to(w, 1.0) < 1e-4
        assert torch.equal(b.attn.q_gain, torch.full((8,), 1.5))
        assert torch.equal(b.resid_mix, torch.stack((torch.ones(512), torch.zeros(512))))
        assert b.attn_scale.eq(1).all() and b.mlp_scale.eq(1).all()
        assert b.mlp.gamma.eq(1).all() and b.mlp.beta.eq(0).all()
        assert b.ln_scale == pytest.approx(1 / math.sqrt(i + 1))
    # *.proj: orthogonal times 1/sqrt(2L) = 1/sqrt(22)
    assert _orthogonal_up_to(m.bigram.proj.weight, 1 / 22) < 1e-5
    assert _orthogonal_up_to(m.ve.proj.weight, 1 / 22) < 1e-5
    E = m.tok_emb.weight
    assert E.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for n, p in m.named_parameters() if n != "tok_emb.weight")
    assert abs(E.float().std().item() - 0.005) < 1e-4 and abs(E.float().mean().item()) < 1e-4
    assert abs(m.bigram.embed.weight.std().item() - 0.01) < 2e-4
    assert abs(m.ve.embed.weight.std().item() - 0.01) < 3e-4
    assert m.ve.scale.item() == pytest.approx(0.1) and torch.equal(m.ve.layer_scales, torch.ones(2))
    assert not m.smear.gate.any() and not m.skip_gates.any() and m.skip_weights.eq(1).all()


def test_xor_bigram_table_starts_at_zero_and_fp32_option():
    m = GPT(dataclasses.replace(MINI, bigram_hash="xor"))
    assert not m.bigram.embed.weight.any() and m.bigram.scale.item() == pytest.approx(0.05)
    assert m.tok_emb.weight.dtype == torch.float32


def test_same_seed_same_model_and_outputs():
    def build(seed):
        torch.manual_seed(seed)
        return GPT(C.get_preset("tiny").model)

    a, b, c = build(7), build(7), build(8)
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n
    assert not torch.equal(a.blocks[0].attn.q.weight, c.blocks[0].attn.q.weight)
    idx = torch.randint(0, 1024, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(a(idx, idx), b(idx, idx)) and torch.equal(a(idx), a(idx))


# ---------------------------------------------------------------------------
# Training sanity, validation, info


def test_tiny_overfits_one_batch():
    torch.manual_seed(0)
    cfg = C.get_preset("tiny").model
    m = GPT(cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (4, 33), generator=g)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = m(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(cfg.vocab_size), abs=0.05)
    assert losses[-1] < 0.4 * losses[0], losses[::5]
    # every feature received gradient
    for n, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("bad,match", [
    ({"mlp_act": "gelu"}, "mlp_act"), ({"num_kv_heads": 3}, "num_kv_heads"), ({"ve_layers": (5,)}, "ve_layers"),
    ({"rope_dims": 5}, "rope_dims"), ({"skip_mode": "concat"}, "skip_mode"), ({"bigram_hash": "mul"}, "bigram_hash"),
    ({"embed_dtype": "float16"}, "embed_dtype"), ({"xsa_last_n": 6}, "xsa_last_n"), ({"model_dim": 30}, "model_dim"),
])
def test_bad_config_raises_clear_error(bad, match):
    with pytest.raises(ValueError, match=match):
        validate_config(dataclasses.replace(MINI, **bad))


def test_presets_keep_every_feature_on_with_scaled_indices():
    for name in ("tiny", "small"):
        m = C.get_preset(name).model
        L = m.num_layers
        assert m.bigram and m.smear and m.resid_mix and m.ln_scale and m.qk_norm
        assert (m.skip_mode, m.mlp_act, m.bigram_hash) == ("gated", "star_relu2", "add")
        assert m.ve_layers == (L - 2, L - 1) and m.xsa_last_n == round(L / 3)
        assert m.rope_dims == m.head_dim // 4  # 16 of 64, scaled


def _run_info(argv):
    from gepalib.cli import info
    p = argparse.ArgumentParser()
    info.add_cli(p.add_subparsers(dest="command"))
    args = p.parse_args(["info", *argv])
    return args.func(args)


def test_info_prints_config_and_breakdown(capsys):
    assert _run_info(["tiny", "--mlp-act", "relu2", "--set", "bigram=false"]) == 0
    out = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    cfg = C.get_preset("tiny", mlp_act="relu2", bigram=False)
    assert out["model.mlp_act"] == "relu2" and out["model.bigram"] == "False"
    assert int(out["params"]) == sum(p.numel() for p in GPT(cfg.model).parameters())
    assert out["params.bigram"] == "0" and "train.steps" in out and "ttt.ttt_lr" in out
    assert out["layout.ve_blocks"] == str(list(cfg.model.ve_layers))


def test_info_fields_and_errors(capsys):
    assert _run_info(["--fields"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(C.FIELD_INDEX)
    assert "num_layers: section=model type=int default=11" in lines
    with pytest.raises(ValueError, match="preset"):
        _run_info([])
    with pytest.raises(KeyError):
        _run_info(["nope"])
