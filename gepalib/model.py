"""The GEPA GPT (see docs/model.md), every feature behind a ModelConfig switch.

Forward pass (the one forward of training, evaluation, streaming and TTT):

    e  = RMSNorm(E_tok[ids] + Bigram(ids));  x0 = x = Smear(e)
    encoder blocks 0 .. L//2-1 push their outputs; decoder block L//2+i pops one
    (gated: x = g*x + (1-g)*(S_i*skip), g = sigmoid(G_i); add: x = x + S_i*skip)
    logits = softcap * tanh(RMSNorm(x) @ E_tok^T / softcap)

Block l:  x_in = m0*x + m1*x0
          x = x_in + a * Attn(RMSNorm(x_in) * 1/sqrt(l+1))
          x = x    + c * MLP(RMSNorm(x) * 1/sqrt(l+1))

Attention is causal; given a KVCache (gepalib.attention), the forward instead continues a stream
fed in consecutive pieces, each token attending to the last W tokens at every layer (streaming).
Parameter names (state-dict keys) are a fixed interface: the optimizer
grouping, the quantizer, TTT freezing and the parameter accounting (gepalib.param_count)
select tensors by them.
The module never moves itself to a device; autocast is the caller's choice.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gepalib.attention import KVCache, sdpa
from gepalib.config import ModelConfig
from gepalib.eager import apply_rope, relu2
from gepalib.param_count import param_breakdown  # noqa: F401 -- gepalib.cli.info imports it from here
from gepalib.validation import check_model

# Name substrings that mark small "control" tensors (quantizer keeps them fp32).
CONTROL_PATTERNS = ("resid_mix", "attn_scale", "mlp_scale", "q_gain", "skip_weights", "skip_gates",
                    "smear", "bigram", "ve.")

EMBED_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}

# BigramHash constants.
ADD_HASH_MULT = 1009
XOR_HASH_CUR, XOR_HASH_PREV = 36313, 27191
XOR_SCALE_INIT = 0.05
BIGRAM_EMB_STD = 0.01  # additive variant; the XOR table starts at zero
VE_EMB_STD = 0.01
VE_SCALE_INIT = 0.1


def rms_norm(x: Tensor, scale: Tensor | float | None = None) -> Tensor:
    """Parameter-free RMSNorm over the last dim, times an optional ``scale`` (a float, or a
    tensor broadcasting against x[..., :1]). The scale is applied to the per-row factor, which
    saves a full-size multiply. Same numerics as ``F.rms_norm``: the mean square is taken in
    at least fp32 and eps is the machine epsilon of that accumulation dtype (fp32's for bf16
    inputs, not bf16's 2^-7). The output keeps x's dtype: since torch 2.12 CUDA autocast runs
    ``F.rms_norm`` under its fp32 policy, which would turn a bf16 residual stream (and k) into
    fp32 where the submission's (older torch) kept them bf16."""
    if scale is None:
        out = F.rms_norm(x, (x.size(-1),))
        return out if out.dtype == x.dtype else out.to(x.dtype)
    acc = torch.promote_types(x.dtype, torch.float32)
    r = torch.rsqrt(x.to(acc).square().mean(-1, keepdim=True) + torch.finfo(acc).eps) * scale
    return x * r.to(x.dtype)


def validate_config(cfg: ModelConfig) -> None:
    """Raise ValueError naming the offending ModelConfig field (the checks live in gepalib.validation)."""
    check_model(cfg)


class CastedLinear(nn.Linear):
    """Bias-free linear whose (fp32) weight is cast to the input dtype at matmul time."""

    def __init__(self, in_features: int, out_features: int, zero_init: bool = False):
        super().__init__(in_features, out_features, bias=False)
        self.zero_init = zero_init

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype))


# ---------------------------------------------------------------------------
# Rotary embedding (partial RoPE with the inactive-at-2048 NTK rescaling)


def rope_base_for(cfg: ModelConfig, seq_len: int) -> float:
    """NTK base rescaling: base * (S/S_train)^(r/(r-2)) when S > S_train, else base."""
    if seq_len <= cfg.rope_train_seq_len:
        return cfg.rope_base
    r = cfg.rope_dims
    if r <= 2:
        raise ValueError(f"NTK RoPE rescaling needs rope_dims > 2 (got {r}) for seq_len {seq_len} > "
                         f"rope_train_seq_len {cfg.rope_train_seq_len}")
    return cfg.rope_base * (seq_len / cfg.rope_train_seq_len) ** (r / (r - 2))


def rope_cos_sin(cfg: ModelConfig, seq_len: int, device: torch.device,
                 n_pos: int | None = None) -> tuple[Tensor, Tensor]:
    """cos, sin of angle t*theta_j, theta_j = base^(-2j/r) with the base for windows of
    ``seq_len``, for positions t < n_pos (default seq_len); shapes [n_pos, r/2] (fp32)."""
    r = cfg.rope_dims
    base = rope_base_for(cfg, seq_len)
    theta = base ** (-torch.arange(0, r, 2, dtype=torch.float64, device=device) / r)
    n = seq_len if n_pos is None else n_pos
    ang = torch.arange(n, dtype=torch.float64, device=device)[:, None] * theta[None, :]
    return ang.cos().float(), ang.sin().float()


# ---------------------------------------------------------------------------
# Input-side components


def bigram_hash(idx: Tensor, buckets: int, variant: str) -> Tensor:
    """Bucket of each (previous, current) token pair; hashing restarts at position 0."""
    ids = idx.to(torch.int32)
    prev = F.pad(ids[:, :-1], (1, 0))  # id_{-1} = 0
    if variant == "add":
        return ((ADD_HASH_MULT * prev + ids) % buckets).long()
    if variant == "xor":
        h = torch.bitwise_xor(XOR_HASH_CUR * ids, XOR_HASH_PREV * prev) % (buckets - 1)
        h[:, 0] = buckets - 1
        return h.long()
    raise ValueError(f"unknown bigram_hash {variant!r}")


class BigramHash(nn.Module):
    """Hashed (previous, current) token-pair embedding projected to model_dim."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.buckets, self.variant = cfg.bigram_buckets, cfg.bigram_hash
        self.embed = nn.Embedding(cfg.bigram_buckets, cfg.bigram_dim)
        self.proj = CastedLinear(cfg.bigram_dim, cfg.model_dim)
        if self.variant == "xor":
            self.scale = nn.Parameter(torch.tensor(XOR_SCALE_INIT))

    def forward(self, idx: Tensor) -> Tensor:
        out = self.proj(self.embed(bigram_hash(idx, self.buckets, self.variant)))
        return out * self.scale.to(out.dtype) if self.variant == "xor" else out


class SmearGate(nn.Module):
    """e'_t = (1-g) e_t + g e_{t-1}, g = sigmoid(gate), e_{-1} = 0 (and at BOS when reset is on)."""

    def __init__(self, dim: int, bos_reset: bool = False, bos_id: int = 1):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(dim))
        self.bos_reset, self.bos_id = bos_reset, bos_id

    def forward(self, e: Tensor, idx: Tensor) -> Tensor:
        g = torch.sigmoid(self.gate).to(e.dtype)
        prev = F.pad(e[:, :-1], (0, 0, 1, 0))
        if self.bos_reset:
            prev = prev.masked_fill((idx == self.bos_id).unsqueeze(-1), 0.0)
        return torch.lerp(e, prev, g)  # (1-g) e + g prev


class ValueEmbedding(nn.Module):
    """Shared table + projection to kv_dim; layer k of ve_layers adds layer_scales[k] * ve to v."""

    def __init__(self, cfg: ModelConfig, kv_dim: int):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.ve_dim)
        self.proj = CastedLinear(cfg.ve_dim, kv_dim)
        self.scale = nn.Parameter(torch.tensor(VE_SCALE_INIT))
        self.layer_scales = nn.Parameter(torch.ones(len(cfg.ve_layers)))

    def forward(self, idx: Tensor) -> Tensor:
        """ve = scale * P_ve E_ve[ids] [B,T,kv_dim]; layer k of ve_layers adds layer_scales[k] * ve."""
        ve = self.proj(self.embed(idx))
        return ve * self.scale.to(ve.dtype)


# ---------------------------------------------------------------------------
# Block


def xsa(y: Tensor, v: Tensor) -> Tensor:
    """Exclusive self-attention: y [B,H,T,hd] minus its component along its own token's value
    v [B,Hkv,T,hd] (query head h is served by KV head h // (H/Hkv)). Computed in fp32, as the
    submission's (F.normalize runs in fp32 under autocast), so bf16 inputs give an fp32 result."""
    B, H, T, hd = y.shape
    Hkv = v.size(1)
    v = v.float().unsqueeze(2)  # [B,Hkv,1,T,hd]; .float() is a no-op for fp32
    y = y.float().view(B, Hkv, H // Hkv, T, hd)
    # (y . v_hat) v_hat = ((y . v) / |v|^2) v; the clamp plays F.normalize's eps role
    coef = (y * v).sum(-1, keepdim=True) / v.square().sum(-1, keepdim=True).clamp_min(1e-24)
    return torch.addcmul(y, coef, v, value=-1.0).view(B, H, T, hd)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        d, self.H, self.Hkv, self.hd = cfg.model_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        kv_dim = self.Hkv * self.hd
        self.q = CastedLinear(d, d)
        self.k = CastedLinear(d, kv_dim)
        self.v = CastedLinear(d, kv_dim)
        self.out = CastedLinear(d, d, zero_init=True)
        self.q_gain = nn.Parameter(torch.full((self.H,), cfg.qk_gain_init))
        self.layer, self.qk_norm = layer, cfg.qk_norm
        self.use_xsa = layer >= cfg.num_layers - cfg.xsa_last_n

    def forward(self, h: Tensor, rope: tuple[Tensor, Tensor] | None, ve: tuple[Tensor, Tensor] | None,
                cache: KVCache | None = None) -> Tensor:
        """h [B,T,d] (normalised, LN-scaled); rope = (cos, sin) for every key position (the
        queries are the last T); ve = (ve [B,T,kv_dim], layer scale) or None."""
        B, T, _ = h.shape
        q = self.q(h).view(B, T, self.H, self.hd).transpose(1, 2)
        k = self.k(h).view(B, T, self.Hkv, self.hd).transpose(1, 2)
        v = self.v(h)
        if ve is not None:
            v = torch.addcmul(v, ve[0].to(v.dtype), ve[1].to(v.dtype))
        v = v.view(B, T, self.Hkv, self.hd).transpose(1, 2)
        # q_gain is a per-head scalar and RoPE is linear, so gain*rope(norm(q)) = rope(norm(q)*gain):
        # fold it into q's per-row norm factor (one full-size multiply fewer).
        gain = self.q_gain.to(q.dtype)[:, None, None]
        if self.qk_norm:
            q, k = rms_norm(q, gain), rms_norm(k)
        else:
            q = q * gain
        if cache is not None:
            k, v = cache.extend(self.layer, k, v)  # cached + new keys/values
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos[-T:], sin[-T:]), apply_rope(k, cos, sin)
        y = sdpa(q, k, v) if cache is None else cache.attend(q, k, v)
        if self.use_xsa:
            y = xsa(y, v[:, :, -T:])
        return self.out(y.transpose(1, 2).reshape(B, T, self.H * self.hd))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.act = cfg.mlp_act
        self.up = CastedLinear(cfg.model_dim, cfg.mlp_hidden)
        self.down = CastedLinear(cfg.mlp_hidden, cfg.model_dim, zero_init=True)
        if self.act == "star_relu2":
            self.gamma = nn.Parameter(torch.ones(cfg.mlp_hidden))
            self.beta = nn.Parameter(torch.zeros(cfg.mlp_hidden))

    def forward(self, h: Tensor) -> Tensor:
        u = self.up(h)
        if self.act == "leaky_relu2":
            a = F.leaky_relu(u, 0.5).square()
        else:
            a = relu2(u)
        if self.act == "star_relu2":
            a = torch.addcmul(self.beta.to(a.dtype), a, self.gamma.to(a.dtype))  # gamma*a + beta
        return self.down(a)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        d = cfg.model_dim
        self.ln_scale = 1.0 / math.sqrt(layer + 1) if cfg.ln_scale else 1.0
        if cfg.resid_mix:
            self.resid_mix = nn.Parameter(torch.stack((torch.ones(d), torch.zeros(d))))
        self.attn_scale = nn.Parameter(torch.ones(d))
        self.mlp_scale = nn.Parameter(torch.ones(d))
        self.attn = Attention(cfg, layer)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, x0: Tensor, rope, ve, cache: KVCache | None = None) -> Tensor:
        if hasattr(self, "resid_mix"):
            m = self.resid_mix.to(x.dtype)
            x = torch.addcmul(m[0] * x, m[1], x0)
        s = self.ln_scale if self.ln_scale != 1.0 else None
        x = torch.addcmul(x, self.attn_scale.to(x.dtype), self.attn(rms_norm(x, s), rope, ve, cache))
        x = torch.addcmul(x, self.mlp_scale.to(x.dtype), self.mlp(rms_norm(x, s)))
        return x


# ---------------------------------------------------------------------------
# The model


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        validate_config(cfg)
        self.cfg = cfg
        d, L = cfg.model_dim, cfg.num_layers
        kv_dim = cfg.num_kv_heads * cfg.head_dim
        self.n_enc = L // 2
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        if cfg.bigram:
            self.bigram = BigramHash(cfg)
        if cfg.smear:
            self.smear = SmearGate(d, cfg.smear_bos_reset, cfg.bos_id)
        if cfg.skip_mode != "none":
            self.skip_weights = nn.Parameter(torch.ones(self.n_enc, d))
        if cfg.skip_mode == "gated":
            self.skip_gates = nn.Parameter(torch.zeros(self.n_enc, d))
        if cfg.ve_layers:
            self.ve = ValueEmbedding(cfg, kv_dim)
        self.ve_slot = {layer: k for k, layer in enumerate(cfg.ve_layers)}
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(L))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Init (docs/model.md): orthogonal linears, zero-init output projections, *.proj scaled by
        1/sqrt(2L), E_tok ~ N(0, tok_emb_std^2) stored in embed_dtype. Vectors keep their
        constructor values. (The submission's 'both dims >= 64' orthogonal rule covers all
        its linears; smaller presets use orthogonal init for every linear too.)"""
        cfg = self.cfg
        # LAPACK's QR with several threads is ~20x slower on a busy CPU; init single-threaded.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for name, mod in self.named_modules():
                if isinstance(mod, CastedLinear):
                    if mod.zero_init:
                        mod.weight.zero_()
                    else:
                        nn.init.orthogonal_(mod.weight)
                        if name.endswith(".proj"):
                            mod.weight.mul_(1.0 / math.sqrt(2 * cfg.num_layers))
        finally:
            torch.set_num_threads(threads)
        if cfg.bigram:
            if cfg.bigram_hash == "add":
                nn.init.normal_(self.bigram.embed.weight, std=BIGRAM_EMB_STD)
            else:
                self.bigram.embed.weight.zero_()
        if cfg.ve_layers:
            nn.init.normal_(self.ve.embed.weight, std=VE_EMB_STD)
        w = torch.empty_like(self.tok_emb.weight, dtype=torch.float32).normal_(std=cfg.tok_emb_std)
        self.tok_emb.weight.data = w.to(EMBED_DTYPES[cfg.embed_dtype])

    def embed(self, idx: Tensor) -> Tensor:
        """The input side: SmearGate(RMSNorm(E_tok[ids] + Bigram(ids))), [B,T,d]."""
        e = self.tok_emb(idx)
        if not torch.is_autocast_enabled(idx.device.type):
            e = e.float()  # bf16 table; compute in fp32 unless the caller autocasts
        if self.cfg.bigram:
            e = e + self.bigram(idx)
        e = rms_norm(e)
        return self.smear(e, idx) if self.cfg.smear else e

    def forward(self, idx: Tensor, targets: Tensor | None = None, reduction: str = "mean",
                cache: KVCache | None = None, logits_from: int = 0) -> Tensor:
        """idx int64 [B,T] -> soft-capped fp32 logits [B,T,V]; with targets: fp32 token-mean
        cross-entropy (reduction='mean') or per-token nll [B,T] (reduction='none').
        With ``cache``, idx continues the streams the cache holds (see KVCache).
        ``logits_from`` = k > 0: the head and the loss only at positions k .. T-1 (logits and nll
        [B,T-k]; targets are still [B,T]): the same numbers for those positions, a quarter of
        the head's work when a sliding window scores only its last quarter."""
        cfg = self.cfg
        if idx.dim() != 2:
            raise ValueError(f"GPT expects idx of shape [B, T], got {tuple(idx.shape)}")
        T = idx.size(1)
        if not 0 <= logits_from < T:
            raise ValueError(f"logits_from must be in [0, {T}) for T={T}, got {logits_from}")
        if cache is None:
            x = x0 = self.embed(idx)
            rope = rope_cos_sin(cfg, T, idx.device) if cfg.rope_dims else None
        else:  # the bigram hash and smear see earlier tokens; keys span cached + new positions
            x = x0 = self.embed(cache.with_past_ids(idx))[:, -T:]
            rope = rope_cos_sin(cfg, cache.window, idx.device, cache.past() + T) if cfg.rope_dims else None
        ve = self.ve(idx) if cfg.ve_layers else None

        skips: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            if i >= self.n_enc and skips:
                j = i - self.n_enc
                w = self.skip_weights[j].to(x.dtype)
                if cfg.skip_mode == "gated":
                    g = torch.sigmoid(self.skip_gates[j]).to(x.dtype)
                    x = torch.lerp(w * skips.pop(), x, g)  # g x + (1-g) (w skip)
                else:
                    x = torch.addcmul(x, w, skips.pop())
            slot = self.ve_slot.get(i)
            ve_i = None if slot is None else (ve, self.ve.layer_scales[slot])
            x = block(x, x0, rope, ve_i, cache)
            if i < self.n_enc and cfg.skip_mode != "none":
                skips.append(x)

        if logits_from:
            x = x[:, logits_from:]
            targets = None if targets is None else targets[:, logits_from:]
        h = rms_norm(x, 1.0 / cfg.logit_softcap)  # z/cap = (RMSNorm(x)/cap) E_tok^T
        z = F.linear(h, self.tok_emb.weight.to(h.dtype))
        # tanh in z's dtype (bf16 under autocast, as the submission), the loss in fp32
        logits = (cfg.logit_softcap * torch.tanh(z)).float()
        if targets is None:
            return logits
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        nll = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)
        return nll if reduction == "mean" else nll.view(targets.shape)
