"""Legal score-first TTT (docs/evaluation.md): planning numbers, the step schedule against the
submission's loop, and for every registered family: score-before-train, causality, restoration;
resets."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from conftest import run_two_ranks
import torch

from gepalib.config import get_preset, override
from gepalib.eval.windows import eval_sliding, plan_sliding_windows
from gepalib.model import GPT
from gepalib.eval.ttt import (FAMILIES, TTTHooks, chunk_bounds, chunk_train_seqs, n_chunks_for, run_ttt,
                              trainable_named_params, ttt_lr, ttt_warmup_chunks, windows_by_chunk)
from gepalib.validation import TTT_FAMILIES

T, STRIDE, C = 32, 8, 64  # window, stride, chunk: 64 targets per chunk = 8 windows, 2 training sequences


def tiny_cfg(**kw):
    base = dict(num_layers=2, model_dim=64, num_heads=2, num_kv_heads=1, mlp_hidden=128, rope_dims=8,
                bigram_dim=16, ve_dim=16, ve_layers=(1,), xsa_last_n=1, seq_len=T, eval_stride=STRIDE,
                eval_batch_seqs=4, ttt_chunk_tokens=C, ttt_epochs=3, ttt_freeze_blocks=1, ttt_lr=0.05,
                ttt_warmup_div=4, ttt_batch_seqs=1)
    base.update(kw)
    return override(get_preset("tiny"), **base)


def tiny_model(cfg, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    m = GPT(cfg.model)
    with torch.no_grad():
        for _, p in m.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 1.0 / math.sqrt(p.size(1)))
            else:
                p.add_(0.2 * torch.randn_like(p))
    return m


def stream(n_targets: int, seed: int = 1, vocab: int = 64) -> torch.Tensor:
    """A small-vocabulary stream so that a few TTT steps visibly change the scores."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, vocab, (n_targets + 1,), generator=g)


# ---------------------------------------------------------------------------
# Pure planning: the submission's numbers for the full-size geometry


def test_full_size_chunk_plan_and_lr():
    N, W, S, CC = 62_021_632, 2048, 64, 32_768
    plan = plan_sliding_windows(N, W, S, tail_rescore=True)
    chunks = windows_by_chunk(plan, CC)
    assert n_chunks_for(N, CC) == len(chunks) == 1_893
    assert sum(len(c) for c in chunks) == plan.n_windows == 969_088
    lo, hi = chunk_bounds(1_892, N, CC)
    assert hi - lo == 24_576
    # no window straddles two chunks (64 divides C), every chunk scores exactly its own targets
    assert np.all((plan.score_hi - 1) // CC == plan.score_lo // CC)
    scored = [int((plan.score_hi[w] - plan.score_lo[w]).sum()) for w in (chunks[0], chunks[1], chunks[-1])]
    assert scored == [CC, CC, 24_576 + 1_984]
    seqs = chunk_train_seqs(0, N, CC, W)
    assert seqs == [(2048 * k, 2048) for k in range(16)]
    assert len(chunk_train_seqs(1_891, N, CC, W)) == 16 and len(chunk_train_seqs(1_892, N, CC, W)) == 12
    # LR: w = floor(1893/20) = 94 warm-up chunks, then cosine to zero at the last chunk
    assert ttt_lr(0, 1_893, 0.002, 20) == pytest.approx(0.002 / 94)
    assert ttt_lr(93, 1_893, 0.002, 20) == pytest.approx(0.002)
    assert ttt_lr(94, 1_893, 0.002, 20) == pytest.approx(0.002)
    assert ttt_lr(94 + 899, 1_893, 0.002, 20) == pytest.approx(0.001)  # halfway through 1798 cosine chunks
    assert ttt_lr(1_892, 1_893, 0.002, 20) == pytest.approx(0.0, abs=1e-18)


def test_full_size_trainable_count():
    """Freezing blocks 0 and 1 of the 27,030,107-param model leaves 22,301,259 trainable."""
    with torch.device("meta"):
        m = GPT(get_preset("gepa11").model)
    named = trainable_named_params(m, 2)
    assert sum(p.numel() for _, p in named) == 22_301_259
    assert sum(p.numel() for p in m.parameters()) - sum(p.numel() for _, p in named) == 4_728_848
    assert not any(n.startswith(("blocks.0.", "blocks.1.")) for n, _ in named)
    assert any(n.startswith("blocks.10.") for n, _ in named)


# ---------------------------------------------------------------------------
# Behaviour on a tiny model


class Recorder(TTTHooks):
    """Tracks what was scored and asserts that no step ever sees an unscored target."""

    def __init__(self, n_targets):
        self.scored = np.zeros(n_targets, dtype=bool)
        self.events = []
        self.trained_targets = 0

    def on_score(self, chunk, ranges):
        for lo, hi in ranges:
            self.scored[lo:hi] = True
        self.events.append(("score", chunk))

    def on_train(self, chunk, epoch, batch, ranges):
        for lo, hi in ranges:
            assert self.scored[lo:hi].all(), f"chunk {chunk} epoch {epoch} trains on unscored targets [{lo},{hi})"
            self.trained_targets += hi - lo
        self.events.append(("train", chunk))

    def on_reset(self, chunk):
        self.events.append(("reset", chunk))


# ---------------------------------------------------------------------------
# Every registered family (gepalib.eval.ttt_families.FAMILIES) runs the tests below: score-first,
# every target scored once and in order, causal bit for bit, the model handed back as it came. A
# new family needs a case here (its settings on the tiny model) and cannot skip them.

LORA = dict(ttt_lora_rank=4, ttt_lora_lr=0.01, ttt_lora_chunk_tokens=24, ttt_lora_batch_docs=2, ttt_lora_steps=2)
FAMILY_CASES = {
    "full": {},
    "lora_doc": dict(ttt_family="lora_doc", **LORA),
    "phased": dict(ttt_family="phased", ttt_phase_docs=(1, 3), ttt_phase_lr=0.05),
    "phased+lora_doc": dict(ttt_family="phased+lora_doc", ttt_phase_docs=(1, 3), ttt_phase_lr=0.05, **LORA),
}
REGISTERED = sorted(FAMILIES)
DOC_STARTS = (0, 70, 130, 200)  # BOS positions: documents of 70, 60, 70 and 56 targets in 4 * C


def family_cfg(family, **kw):
    if family not in FAMILY_CASES:
        pytest.fail(f"ttt_family {family!r} is registered but has no case in tests/test_ttt.py FAMILY_CASES")
    return tiny_cfg(**{**FAMILY_CASES[family], **kw})


def without_learning(cfg):
    return override(cfg, ttt_lora_steps=0, ttt_epochs=0, ttt_phase_epochs=0)


def doc_val(seed, n_targets=4 * C):
    val = stream(n_targets, seed=seed)
    val[list(DOC_STARTS)] = 1
    return val


def test_the_registry_is_the_configs_choice():
    """FAMILIES (the loop's adapters) and gepalib.validation.TTT_FAMILIES (the config's choices) agree,
    and every family has a case for the tests below."""
    assert set(FAMILIES) == set(TTT_FAMILIES) == set(FAMILY_CASES)
    assert all(FAMILIES[f].context in ("stream", "document") for f in FAMILIES)


class OrderRecorder(Recorder):
    """Recorder that also counts each target's scores and checks their order: ascending over the
    stream, or (per-document families) ascending within each document; and the segments' ends."""

    def __init__(self, n_targets, per_doc):
        super().__init__(n_targets)
        self.count = np.zeros(n_targets, dtype=np.int64)
        self.per_doc, self.next_lo = per_doc, {}
        self.rows = []

    def on_score(self, chunk, ranges):
        for lo, hi in ranges:
            assert not self.count[lo:hi].any(), f"targets [{lo},{hi}) scored twice"
            key = int(np.searchsorted(DOC_STARTS, lo, side="right")) if self.per_doc else 0
            assert lo >= self.next_lo.get(key, 0), f"targets [{lo},{hi}) scored out of order"
            self.next_lo[key] = hi
            self.count[lo:hi] += 1
        super().on_score(chunk, ranges)

    def on_chunk_end(self, chunk, row):
        # a segment ends once its targets are all scored: they are the first ones of the stream
        done = sum(r["tokens"] for r in self.rows) + row["tokens"]
        assert chunk == len(self.rows) and self.count[:done].all() and not self.count[done:].any()
        self.rows.append(row)


@pytest.mark.parametrize("scoring", ["sliding", "streaming"])
@pytest.mark.parametrize("family", REGISTERED)
def test_every_family_is_score_first(luts, family, scoring):
    """No step sees an unscored target; every target is scored once, in order; the family adapts."""
    cfg = family_cfg(family, ttt_scoring=scoring, tail_rescore=False, ttt_epochs=2)
    model = tiny_model(cfg)
    N = 4 * C
    val = doc_val(seed=5)
    rec = OrderRecorder(N, per_doc=FAMILIES[family].context == "document")
    r = run_ttt(model, val, luts, T, cfg.ttt, cfg.eval, hooks=rec, return_token_losses=True)
    assert (rec.count == 1).all() and r.tokens == N  # every target scored exactly once
    assert rec.rows == r.extra["chunks"] and sum(row["tokens"] for row in rec.rows) == N
    assert rec.trained_targets > 0
    assert rec.events[0][0] == "score" and ("train", 0) in rec.events
    plain = run_ttt(model, val, luts, T, without_learning(cfg).ttt, cfg.eval, return_token_losses=True)
    assert not torch.allclose(r.token_losses, plain.token_losses, atol=1e-4)  # the family adapted


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("family", REGISTERED)
def test_every_family_is_causal_bit_exact(luts, family, optimizer):
    """X and X' differ only at token positions >= p (the same documents): every loss of a target
    before p is identical."""
    lr = dict(ttt_lr=0.05) if optimizer == "sgd" else dict(ttt_lr=3e-3, ttt_phase_lr=3e-3)
    cfg = family_cfg(family, ttt_optimizer=optimizer, ttt_lora_optimizer=optimizer, ttt_epochs=3, **lr)
    model = tiny_model(cfg)
    N = 4 * C
    val = doc_val(seed=7)
    base = run_ttt(model, val, luts, T, cfg.ttt, cfg.eval, return_token_losses=True).token_losses
    plain = run_ttt(model, val, luts, T, without_learning(cfg).ttt, cfg.eval, return_token_losses=True).token_losses
    assert not torch.equal(base[C:], plain[C:])  # TTT really changed the later scores
    ps = (C + 1, C + 2, 2 * C, 2 * C + 1, 2 * C + 37, 3 * C + 1) if optimizer == "sgd" else (C + 1, 2 * C + 1)
    for p in ps:  # chunk c's first target token is val[cC+1]; target i is val[i+1]
        alt = val.clone()
        g = torch.Generator().manual_seed(p)
        alt[p:] = torch.randint(4, 64, (N + 1 - p,), generator=g)
        alt[[d for d in DOC_STARTS if d >= p]] = 1
        got = run_ttt(model, alt, luts, T, cfg.ttt, cfg.eval, return_token_losses=True).token_losses
        assert torch.equal(got[:p - 1], base[:p - 1]), f"targets before token {p} changed"
        assert not torch.equal(got[p - 1:], base[p - 1:])


@pytest.mark.parametrize("family", REGISTERED)
def test_every_family_hands_the_model_back(luts, family):
    """restore=True: the weights, the gradient flags and the train/eval mode come back as they
    were. restore=False: the frozen blocks (ttt_freeze_blocks=1) never move; the base weights
    move exactly when the family trains them."""
    cfg = family_cfg(family, ttt_epochs=2)
    model = tiny_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = [n for n, _ in model.named_parameters()]
    off = set(names[::3])  # some parameters come in without gradients
    for n, p in model.named_parameters():
        p.requires_grad_(n not in off)
    val = doc_val(seed=9)
    for training in (True, False):
        model.train(training)
        run_ttt(model, val, luts, T, cfg.ttt, cfg.eval)
        assert model.training == training
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
        assert [p.requires_grad for p in model.parameters()] == [n not in off for n in names]
        assert all(p.grad is None for p in model.parameters())
    for p in model.parameters():
        p.requires_grad_(True)
    r = run_ttt(model, val, luts, T, cfg.ttt, cfg.eval, restore=False)
    after = model.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert all(p.requires_grad for p in model.parameters()) and all(p.grad is None for p in model.parameters())
    assert not any(k.startswith("blocks.0.") for k in moved)
    numel = {n: p.numel() for n, p in model.named_parameters()}
    base_trained = sum(numel.values()) - r.extra["frozen_params"]
    if base_trained:
        assert "tok_emb.weight" in moved and any(k.startswith("blocks.1.") for k in moved)
        assert r.extra["frozen_params"] == sum(v for n, v in numel.items() if n.startswith("blocks.0."))
    else:
        assert moved == []


def test_epochs_zero_equals_sliding(luts):
    cfg = tiny_cfg(ttt_epochs=0)
    model = tiny_model(cfg)
    val = stream(5 * C + 24)
    s = eval_sliding(model, val, luts, T, STRIDE, cfg.eval.eval_batch_seqs, return_token_losses=True)
    r = run_ttt(model, val, luts, T, cfg.ttt, cfg.eval, return_token_losses=True)
    assert (r.tokens, r.bytes) == (s.tokens, s.bytes)
    assert torch.equal(r.token_losses, s.token_losses)  # each target's first score, bit for bit
    # the tail re-scores are batched with different padding than in eval_sliding: fp32 noise only
    assert r.val_bpb == pytest.approx(s.val_bpb, rel=1e-7)
    assert len(r.extra["chunks"]) == 6


def test_ttt_scores_before_training_and_adapts(luts):
    cfg = tiny_cfg()
    model = tiny_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    val = stream(4 * C)
    rec = Recorder(val.numel() - 1)
    r = run_ttt(model, val, luts, T, cfg.ttt, cfg.eval, hooks=rec)
    assert rec.scored.all()
    # score(c) precedes train(c) (3 epochs x 2 one-sequence batches); the last chunk is scored, never trained
    assert rec.events == [e for c in range(4) for e in ([("score", c)] + [("train", c)] * 3 * 2 * (c < 3))]
    assert rec.trained_targets == 3 * 3 * C
    s = eval_sliding(model, val, luts, T, STRIDE, 4)
    assert r.val_bpb < s.val_bpb - 1e-3  # TTT on a 60-token vocabulary must help
    assert r.extra["chunks"][0]["bpb"] == pytest.approx(
        eval_sliding(model, val[:C + 1], luts, T, STRIDE, 4, tail_rescore=False).val_bpb, rel=1e-6)
    # restore=True: the caller's weights come back untouched
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_is_frozen_matches_whole_name_components():
    from gepalib.eval.ttt import is_frozen

    for name in ("blocks.0.attn.c_q.weight", "blocks.1.mlp_scale", "_orig_mod.blocks.1.attn_scale",
                 "module.blocks.0.resid_mix"):
        assert is_frozen(name, 2), name
    for name in ("blocks.2.attn.c_q.weight", "blocks.11.attn.c_q.weight", "blocks.10.mlp_scale",
                 "tok_emb.weight", "myblocks.0.x", "skip_gates"):
        assert not is_frozen(name, 2), name
    assert not is_frozen("blocks.0.attn.c_q.weight", 0)


def test_reset_per_doc(luts):
    cfg = tiny_cfg(ttt_reset_per_doc=True, ttt_epochs=2)
    model = tiny_model(cfg)
    N = 6 * C
    val = stream(N, seed=3)
    # no BOS anywhere: per-doc reset changes nothing
    a = run_ttt(model, val, luts, T, cfg.ttt, cfg.eval, return_token_losses=True)
    b = run_ttt(model, val, luts, T, override(cfg, ttt_reset_per_doc=False).ttt, cfg.eval, return_token_losses=True)
    assert torch.equal(a.token_losses, b.token_losses)
    # documents start at token positions 0, 150 and 300 (chunk c's first target token is val[64c+1])
    val[[0, 150, 300]] = 1
    resets = []

    class H(TTTHooks):
        def on_reset(self, chunk):
            resets.append(chunk)

    r = run_ttt(model, val, luts, T, cfg.ttt, cfg.eval, hooks=H(), return_token_losses=True)
    # chunk 3 (first target token 193) is in doc 2, trained since on chunk 0 (doc 1) -> reset;
    # chunk 4 (token 257) is in doc 2, trained since reset on chunk 3 (start 192, doc 2) -> no reset;
    # chunk 5 (token 321) is in doc 3 -> reset
    assert resets == [3, 5]
    assert [row["reset"] for row in r.extra["chunks"]] == [c in (3, 5) for c in range(6)]
    # after a reset, chunk 3 is scored by the pristine weights: equal to the plain sliding losses
    plain = eval_sliding(model, val, luts, T, STRIDE, 4, return_token_losses=True).token_losses
    assert torch.equal(r.token_losses[3 * C:4 * C], plain[3 * C:4 * C])
    assert not torch.equal(r.token_losses[4 * C:5 * C], plain[4 * C:5 * C])


# ---------------------------------------------------------------------------
# The step schedule and the weights against the submission's loop, written plainly


def reference_ttt(model, val, cfg):
    """One process, SGD: per chunk, score its windows one at a time (each target's first score
    kept), then (not for the last chunk) ttt_epochs passes with one clipped SGD step per batch of
    ttt_batch_seqs of the chunk's floor(len/T) aligned sequences -- none for a chunk shorter than
    T -- at the chunk's LR, warm-up over max(n_chunks // div, 1) chunks. Returns the losses and
    the steps as (chunk, epoch, batch, lr, target ranges)."""
    t, C = cfg.ttt, cfg.ttt.ttt_chunk_tokens
    model = copy.deepcopy(model)
    N = val.numel() - 1
    n_chunks = -(-N // C)
    w = max(n_chunks // t.ttt_warmup_div, 1)
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(not any(name.startswith(f"blocks.{i}.") for i in range(t.ttt_freeze_blocks)))
        params += [p] if p.requires_grad else []
    opt = torch.optim.SGD(params, lr=t.ttt_lr, momentum=t.ttt_momentum)
    plan = plan_sliding_windows(N, T, cfg.eval.eval_stride, cfg.eval.tail_rescore)
    losses, steps = torch.full((N,), float("nan")), []
    for c in range(n_chunks):
        lo, hi = c * C, min((c + 1) * C, N)
        model.eval()
        with torch.no_grad():
            for i in range(plan.n_windows):
                a, n, s = int(plan.start[i]), int(plan.length[i]), int(plan.score_lo[i])
                if s // C == c:
                    nll = model(val[a:a + n][None], val[a + 1:a + n + 1][None], reduction="none")[0]
                    for j in range(s, a + n):
                        if math.isnan(losses[j]):
                            losses[j] = nll[j - a]
        n_seqs = (hi - lo) // T
        if c == n_chunks - 1 or n_seqs == 0:
            continue
        lr = t.ttt_lr * (c + 1) / w if c < w else \
            t.ttt_lr * 0.5 * (1 + math.cos(math.pi * (c - w) / max(n_chunks - 1 - w, 1)))
        for g in opt.param_groups:
            g["lr"] = lr
        model.train()
        for ep in range(t.ttt_epochs):
            for b, k0 in enumerate(range(0, n_seqs, t.ttt_batch_seqs)):
                k1 = min(k0 + t.ttt_batch_seqs, n_seqs)
                x = val[lo + k0 * T: lo + k1 * T].view(-1, T)
                y = val[lo + k0 * T + 1: lo + k1 * T + 1].view(-1, T)
                opt.zero_grad()
                model(x, y).backward()
                if t.ttt_grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, t.ttt_grad_clip)
                opt.step()
                steps.append((c, ep, b, lr, [(lo + k * T, lo + (k + 1) * T) for k in range(k0, k1)]))
    return losses, steps


class StepLog(TTTHooks):
    def __init__(self):
        self.steps = []

    def on_train(self, chunk, epoch, batch, ranges):
        self.steps.append([chunk, epoch, batch, None, ranges])

    def on_step(self, chunk, epoch, batch, lr, grad_norm):
        # called once the chunk's steps are read back (one host sync per chunk), in step order
        todo = [s for s in self.steps if s[3] is None]
        assert todo and todo[0][:3] == [chunk, epoch, batch] and math.isfinite(grad_norm)
        todo[0][3] = lr


@pytest.mark.parametrize("case", [
    # 6 chunks (< 20: warm-up over one chunk) of 4 sequences in batches of 3 and 1
    dict(ttt_chunk_tokens=128, ttt_batch_seqs=3, ttt_warmup_div=20, n=5 * 128 + 40),
    # warm-up over 3 of 7 chunks; 100-token chunks: 3 sequences, a 4-token remainder not trained on;
    # no clipping (it would hide a wrongly scaled gradient)
    dict(ttt_chunk_tokens=100, ttt_batch_seqs=2, ttt_warmup_div=2, ttt_grad_clip=0.0, n=6 * 100 + 50),
    # chunks shorter than seq_len are scored, never trained on: plain sliding scores
    dict(ttt_chunk_tokens=24, ttt_batch_seqs=2, ttt_warmup_div=20, n=6 * 24),
])
def test_steps_and_weights_match_the_submissions_loop(luts, case):
    case = dict(case)
    n = case.pop("n")
    cfg = tiny_cfg(ttt_epochs=2, ttt_lr=0.03, **case)
    model = tiny_model(cfg, seed=3)
    val = stream(n, seed=4)
    want_losses, want_steps = reference_ttt(model, val, cfg)
    log = StepLog()
    r = run_ttt(model, val, luts, T, cfg.ttt, cfg.eval, hooks=log, return_token_losses=True)
    assert [s[:3] + [s[4]] for s in log.steps] == [list(s[:3]) + [s[4]] for s in want_steps]
    assert [s[3] for s in log.steps] == pytest.approx([s[3] for s in want_steps], rel=1e-12)
    lr_of = {s[0]: s[3] for s in want_steps}
    assert all(row["lr"] == pytest.approx(lr_of[row["chunk"]], rel=1e-12)
               for row in r.extra["chunks"] if row["chunk"] in lr_of)
    assert torch.allclose(r.token_losses, want_losses, atol=2e-5, rtol=0)
    if not want_steps:
        s = eval_sliding(model, val, luts, T, STRIDE, 4, return_token_losses=True)
        assert torch.equal(r.token_losses, s.token_losses)
    else:
        assert not torch.allclose(r.token_losses, eval_sliding(model, val, luts, T, STRIDE, 4,
                                                               return_token_losses=True).token_losses, atol=1e-3)


def test_lr_schedule_for_few_chunks():
    """Fewer than warmup_div chunks still warm up over one chunk (the submission's max(., 1))."""
    assert ttt_warmup_chunks(5, 20) == 1 and ttt_warmup_chunks(1_893, 20) == 94 and ttt_warmup_chunks(5, 0) == 0
    lrs = [ttt_lr(c, 6, 0.01, 20) for c in range(6)]
    assert lrs == pytest.approx([0.01, 0.01] + [0.005 * (1 + math.cos(math.pi * k / 4)) for k in (1, 2, 3, 4)])
    assert ttt_lr(0, 1, 0.01, 20) == 0.01
    assert chunk_train_seqs(0, 100, 24, 32) == [] and chunk_train_seqs(1, 300, 100, 32) == [(100, 32), (132, 32), (164, 32)]


def test_streaming_scoring_option(luts):
    from gepalib.eval.streaming import eval_streaming

    cfg = tiny_cfg(ttt_scoring="streaming", ttt_epochs=0)
    model = tiny_model(cfg)
    val = stream(3 * C)
    r = run_ttt(model, val, luts, T, cfg.ttt, cfg.eval, return_token_losses=True)
    s = eval_streaming(model, val, luts, T, return_token_losses=True)
    assert (r.tokens, r.bytes) == (s.tokens, s.bytes) == (3 * C, s.bytes)
    assert torch.allclose(r.token_losses, s.token_losses, atol=1e-5, rtol=0)
    rec = Recorder(3 * C)
    r2 = run_ttt(model, val, luts, T, override(cfg, ttt_epochs=2).ttt, cfg.eval, hooks=rec)
    assert rec.trained_targets == 2 * 2 * C and r2.val_bpb != r.val_bpb


def test_bad_ttt_settings(luts):
    cfg = tiny_cfg()
    model = tiny_model(cfg)
    val = stream(2 * C)
    for kw, msg in ((dict(ttt_optimizer="lion"), "ttt_optimizer"), (dict(ttt_scoring="x"), "ttt_scoring"),
                    (dict(ttt_freeze_blocks=5), "ttt_freeze_blocks"), (dict(ttt_chunk_tokens=0), "ttt_chunk_tokens")):
        with pytest.raises(ValueError, match=msg):  # from the config itself, or from run_ttt
            c2 = override(cfg, **kw)
            run_ttt(model, val, luts, T, c2.ttt, c2.eval)


# ---------------------------------------------------------------------------
# Two processes (gloo) give the single-process numbers

DIST_SCRIPT = r'''
import json, sys, torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(1)
from test_ttt import tiny_cfg, tiny_model, stream, C, T, STRIDE
from gepalib import dist
from gepalib.bpb import build_byte_luts
from gepalib.eval.windows import eval_nonoverlapping, eval_sliding
from gepalib.eval.streaming import eval_streaming
from gepalib.eval.ttt import run_ttt
info = dist.init("cpu")
luts = build_byte_luts(sys.argv[2], 1024)
cfg = tiny_cfg(ttt_batch_seqs=1, ttt_epochs=2)
split = tiny_cfg(ttt_batch_seqs=3, ttt_chunk_tokens=96, ttt_epochs=2, ttt_grad_clip=0.0)
model = tiny_model(cfg)
val = stream(3 * C + 32)
res = {
    "nonoverlap": eval_nonoverlapping(model, val[:3 * C + 1], luts, T, 2, return_token_losses=True),
    "sliding": eval_sliding(model, val, luts, T, STRIDE, 3, return_token_losses=True),
    "streaming": eval_streaming(model, val, luts, T, lanes=2, return_token_losses=True),
    "ttt": run_ttt(model, val, luts, T, cfg.ttt, cfg.eval, return_token_losses=True),
    # batches of 3 of a chunk's 3 sequences: 2 on rank 0, 1 on rank 1 (unequal shares)
    "ttt_split": run_ttt(model, val, luts, T, split.ttt, split.eval, return_token_losses=True),
}
if info.rank == 0:
    torch.save({k: {"bpb": r.val_bpb, "loss": r.val_loss, "tokens": r.tokens, "bytes": r.bytes,
                    "losses": r.token_losses} for k, r in res.items()}, sys.argv[3])
dist.shutdown()
'''


def test_two_processes_match_single_process(tmp_path, luts, sotu_data_dir):
    from gepalib.eval.streaming import eval_streaming
    from gepalib.eval.windows import eval_nonoverlapping

    got = run_two_ranks(DIST_SCRIPT, tmp_path, sotu_data_dir / "tokenizer.model")

    cfg = tiny_cfg(ttt_batch_seqs=1, ttt_epochs=2)
    split = tiny_cfg(ttt_batch_seqs=3, ttt_chunk_tokens=96, ttt_epochs=2, ttt_grad_clip=0.0)
    model = tiny_model(cfg)
    val = stream(3 * C + 32)
    want = {
        "nonoverlap": eval_nonoverlapping(model, val[:3 * C + 1], luts, T, 2, return_token_losses=True),
        "sliding": eval_sliding(model, val, luts, T, STRIDE, 3, return_token_losses=True),
        "streaming": eval_streaming(model, val, luts, T, lanes=2, return_token_losses=True),
        "ttt": run_ttt(model, val, luts, T, cfg.ttt, cfg.eval, return_token_losses=True),
        "ttt_split": run_ttt(model, val, luts, T, split.ttt, split.eval, return_token_losses=True),
    }
    for k, w in want.items():
        g = got[k]
        assert (g["tokens"], g["bytes"]) == (w.tokens, w.bytes), k
        assert g["bpb"] == pytest.approx(w.val_bpb, rel=1e-6), k
        assert torch.allclose(g["losses"], w.token_losses, atol=1e-5, rtol=0), k


def test_ttt_training_reads_the_device_once_per_chunk(luts, monkeypatch):
    """The steps' losses and gradient norms are read back together when a chunk's training ends
    (one host sync per chunk on a GPU), not twice per step."""
    import inspect

    from gepalib.eval import ttt_train

    cfg = tiny_cfg(ttt_epochs=2, ttt_lr=0.03, ttt_chunk_tokens=128, ttt_batch_seqs=1, ttt_warmup_div=20)
    model, val = tiny_model(cfg, seed=3), stream(5 * 128 + 40, seed=4)
    reads: list[int] = []
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        orig = getattr(torch.Tensor, name)

        def counted(self, *a, _orig=orig, **k):
            caller = inspect.currentframe().f_back
            if caller.f_code.co_name == "train_steps" and caller.f_code.co_filename == ttt_train.__file__:
                reads.append(caller.f_lineno)
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    log = StepLog()
    r = run_ttt(model, val, luts, T, cfg.ttt, cfg.eval, hooks=log)
    trained = [c for c in r.extra["chunks"] if c["train_loss_first"] is not None]
    steps_per_chunk = len(log.steps) // len(trained)
    assert steps_per_chunk >= 4 and len(reads) == len(trained), (reads, len(log.steps))


def test_ttt_forward_is_compiled_only_on_cuda_with_triton(monkeypatch):
    """ttt_compile: eager on the CPU (and where triton is missing or the field is off); on CUDA
    with triton, torch.compile with static shapes. Decided by configuration, no GPU needed."""
    from gepalib.eval import ttt_train as ttt_mod

    model = tiny_model(tiny_cfg())
    assert ttt_mod.ttt_forward(model, True) is model  # this CPU
    calls = []
    monkeypatch.setattr(ttt_mod.torch, "compile", lambda m, **kw: calls.append(kw) or ("compiled", m))
    monkeypatch.setattr(ttt_mod.importlib.util, "find_spec", lambda name: None)
    assert ttt_mod.ttt_forward(model, True, "cuda") is model and not calls  # no triton: eager
    monkeypatch.setattr(ttt_mod.importlib.util, "find_spec", lambda name: object())
    assert ttt_mod.ttt_forward(model, False, "cuda") is model and not calls  # ttt_compile=false
    assert ttt_mod.ttt_forward(model, True, "cuda") == ("compiled", model) and calls == [{"dynamic": False}]
    assert ttt_mod.ttt_forward(model, True, "cpu") is model


def test_ttt_training_pass_calls_what_ttt_forward_returns(luts, monkeypatch):
    """run_ttt computes every training loss through ttt_forward's module (the compiled one on
    CUDA), and a wrapper that only counts changes no number."""
    from gepalib.eval import ttt as ttt_mod

    cfg = tiny_cfg(ttt_epochs=2, ttt_lr=0.03, ttt_chunk_tokens=128, ttt_batch_seqs=3, ttt_warmup_div=20)
    val = stream(5 * 128 + 40, seed=4)
    want = run_ttt(tiny_model(cfg, seed=3), val, luts, T, cfg.ttt, cfg.eval)
    calls = []

    class Counting(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, y):
            calls.append(tuple(x.shape))
            return self.inner(x, y)

    monkeypatch.setattr(ttt_mod, "ttt_forward", lambda m, enabled, device_type=None: Counting(m))
    log = StepLog()
    got = run_ttt(tiny_model(cfg, seed=3), val, luts, T, cfg.ttt, cfg.eval, hooks=log)
    assert got.val_bpb == want.val_bpb and len(calls) == len(log.steps) > 0
