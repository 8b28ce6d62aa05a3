"""Helpers shared by the benchmarks in bench/ (not a benchmark itself).

* :func:`matmul_params` and :func:`flops_per_token` -- model FLOPs for MFU;
* :class:`PlainGPT` -- a nanoGPT-style GPT (pre-LN, learned positions, GELU MLP, tied
  head) of the same shape as a gepalib preset, the baseline the benchmarks race against;
* :func:`synthetic_data_dir` -- random train/val shards in the challenge's format plus a
  SentencePiece tokenizer trained on synthetic text (so the trainer's data checks pass and
  ``build_byte_luts`` gives a byte table), made without network or prepared data;
* :func:`write_result` and :func:`markdown_table`.
"""
from __future__ import annotations

import math
import os
import platform
import random
import sys
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

# ---------------------------------------------------------------------------
# FLOPs


LOOKUP_ONLY = ("bigram.embed.", "ve.embed.", "wpe.", "resid_mix", "skip_")


def matmul_params(model: nn.Module) -> int:
    """Parameters used as matmul weights: every 2-D weight except lookup-only tables
    (the tied token embedding counts: it is the output head)."""
    return sum(p.numel() for n, p in model.named_parameters()
               if p.ndim == 2 and not any(s in n for s in LOOKUP_ONLY))


def flops_per_token(n_matmul: int, layers: int, d: int, seq_len: int, causal: bool = True) -> float:
    """Training FLOPs per token: 6 N (forward + backward matmuls) plus attention scores and
    mixing, 6 L d T with a causal mask (half of the PaLM convention's 12 L d T)."""
    return 6.0 * n_matmul + (6.0 if causal else 12.0) * layers * d * seq_len


# ---------------------------------------------------------------------------
# The plain baseline: a nanoGPT-style GPT of the same shape


class PlainBlock(nn.Module):
    def __init__(self, d: int, heads: int, kv_heads: int, hidden: int):
        super().__init__()
        self.h, self.hkv, self.hd = heads, kv_heads, d // heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q = nn.Linear(d, d, bias=False)
        self.kv = nn.Linear(d, 2 * kv_heads * self.hd, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.fc = nn.Linear(d, hidden, bias=False)
        self.fc_out = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        B, T, d = x.shape
        h = self.ln1(x)
        q = self.q(h).view(B, T, self.h, self.hd).transpose(1, 2)
        k, v = self.kv(h).view(B, T, 2, self.hkv, self.hd).permute(2, 0, 3, 1, 4)
        rep = self.h // self.hkv
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, d)
        x = x + self.proj(y)
        return x + self.fc_out(F.gelu(self.fc(self.ln2(x))))


class PlainGPT(nn.Module):
    """Same d, layers, heads, KV heads, MLP width, vocab and sequence length as the preset."""

    def __init__(self, vocab: int, d: int, layers: int, heads: int, kv_heads: int, hidden: int, seq_len: int):
        super().__init__()
        self.cfg = type("Cfg", (), {"vocab_size": vocab})()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(seq_len, d)
        self.blocks = nn.ModuleList(PlainBlock(d, heads, kv_heads, hidden) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        for n, p in self.named_parameters():
            if p.ndim == 2:
                std = 0.02 / math.sqrt(2 * layers) if n.endswith(("proj.weight", "fc_out.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, idx, targets=None, reduction="mean"):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for b in self.blocks:
            x = b(x)
        logits = F.linear(self.ln_f(x), self.wte.weight).float()
        if targets is None:
            return logits
        nll = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)
        return nll if reduction == "mean" else nll.view(targets.shape)


def plain_for(cfg) -> PlainGPT:
    m, t = cfg.model, cfg.train
    return PlainGPT(m.vocab_size, m.model_dim, m.num_layers, m.num_heads, m.num_kv_heads, m.mlp_hidden, t.seq_len)


def plain_adamw(model: nn.Module, lr: float = 3e-3) -> torch.optim.Optimizer:
    """nanoGPT's AdamW: betas 0.9/0.95, weight decay 0.1 on 2-D weights only."""
    decay = [p for p in model.parameters() if p.ndim == 2]
    other = [p for p in model.parameters() if p.ndim != 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95))


# ---------------------------------------------------------------------------
# Synthetic data


SYLLABLES = [a + b for a in "bcdfghjklmnprstvwz" for b in "aeiou"]


def synthetic_text(n_sentences: int = 4000, seed: int = 0) -> list[str]:
    """Sentences of made-up words: enough distinct substrings for a 1024-piece BPE."""
    rng = random.Random(seed)
    words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(3000)]
    return [" ".join(rng.choice(words) for _ in range(30)) for _ in range(n_sentences)]


def phrase_stream(n_tokens: int, vocab_size: int, rng: Any, phrases: Any) -> Any:
    """Random phrases of ``phrases`` (rows) back to back: a stream a model learns quickly."""
    k = -(-n_tokens // phrases.shape[1])
    return phrases[rng.integers(0, len(phrases), size=k)].reshape(-1)[:n_tokens]


def synthetic_data_dir(out: str | os.PathLike, vocab_size: int = 1024, train_tokens: int = 1 << 20,
                       val_tokens: int = 1 << 16, seed: int = 0, tokenizer: bool = True) -> Path:
    """Train and val shards (``synth_{train,val}_000000.bin``, written by gepalib.data.write_shard)
    holding random 8-token phrases from one table of 4096 (token ids Zipf-distributed), so the
    loss falls within a few steps; and (``tokenizer``) a ``tokenizer.model`` of ``vocab_size``
    pieces trained by gepalib.prepare.train_tokenizer on :func:`synthetic_text` (needs
    sentencepiece). The tokens are no encoding of that text: the tokenizer only supplies the
    byte table (gepalib.bpb.build_byte_luts) and satisfies the trainer's data checks."""
    import numpy as np  # here, not at import: the GPU check's preflight runs without it

    from gepalib.data import write_shard

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab_size + 1)
    ids = rng.permutation(vocab_size)
    phrases = ids[rng.choice(vocab_size, size=(4096, 8), p=p / p.sum())]
    write_shard(out / "synth_train_000000.bin", phrase_stream(train_tokens, vocab_size, rng, phrases))
    write_shard(out / "synth_val_000000.bin", phrase_stream(val_tokens, vocab_size, rng, phrases))
    if tokenizer:
        from gepalib.prepare import train_tokenizer

        model, _ = train_tokenizer(synthetic_text(seed=seed), vocab_size)
        (out / "tokenizer.model").write_bytes(model)
    return out


def synthetic_luts(vocab_size: int = 1024, seed: int = 0):
    """A tokenizer-free byte table (ids 0-2 are boundaries with 0 bytes, the rest 1-6 bytes,
    a third with a leading space), for when sentencepiece is missing."""
    from gepalib.bpb import ByteLUTs

    g = torch.Generator().manual_seed(seed)
    base = torch.randint(1, 7, (vocab_size,), generator=g)
    lead = torch.rand(vocab_size, generator=g) < 1 / 3
    boundary = torch.zeros(vocab_size, dtype=torch.bool)
    boundary[:3] = True
    base[:3], lead[:3] = 0, False
    return ByteLUTs(base.long(), lead, boundary)


# ---------------------------------------------------------------------------
# Output


def machine_info() -> dict[str, Any]:
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def write_result(path: str | os.PathLike, obj: Any) -> Path:
    """Atomic JSON write (paths, tensors and numpy scalars through gepalib.fsio.json_default)."""
    from gepalib.fsio import atomic_write_json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, obj)
    return path


def fmt(v: Any, spec: str = ".4g") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def markdown_table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
