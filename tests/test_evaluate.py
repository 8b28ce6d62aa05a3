"""Non-overlapping and sliding-window evaluation (bits per byte, the submission's sliding window).

Everything is checked against slow obvious references written here: one model call per
target on exactly the context that target gets, and per-token byte counts read straight
from the tokenizer's pieces.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gepalib.bpb import build_byte_luts
from gepalib.config import get_preset, override
from gepalib.eval.windows import eval_nonoverlapping, eval_sliding, plan_sliding_windows
from gepalib.model import GPT

SPACE = "\u2581"


def tiny_model(seed: int = 0, **kw) -> GPT:
    """A 2-layer model with every feature on and non-trivial random weights (the zero-init
    output projections would otherwise make attention invisible)."""
    cfg = override(get_preset("tiny"), num_layers=2, model_dim=64, num_heads=2, num_kv_heads=1, mlp_hidden=128,
                   rope_dims=8, bigram_dim=16, ve_dim=16, ve_layers=(1,), xsa_last_n=1, seq_len=64, **kw)
    torch.manual_seed(seed)
    m = GPT(cfg.model)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 1.0 / math.sqrt(p.size(1))).mul_(2.0)
            else:
                p.add_(0.3 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def sp(sotu_data_dir):
    from gepalib.data import load_tokenizer

    return load_tokenizer(sotu_data_dir / "tokenizer.model")


def stream(n_targets: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 1024, (n_targets + 1,), generator=g)


def ref_bytes(sp, prev: int, tgt: int) -> int:
    """The byte count read from the tokenizer directly (no LUT)."""
    def boundary(t):
        return t >= sp.get_piece_size() or sp.is_control(t) or sp.is_unknown(t) or sp.is_unused(t)
    if boundary(tgt):
        return 0
    if sp.is_byte(tgt):
        return 1
    piece = sp.id_to_piece(tgt)
    lead = piece.startswith(SPACE)
    return len(piece[1:].encode("utf-8") if lead else piece.encode("utf-8")) + int(lead and not boundary(prev))


@torch.no_grad()
def ref_nll(model, ctx: torch.Tensor, tgt: int) -> float:
    """nll of tgt after exactly ctx (positions 0..len(ctx)-1), one model call."""
    logits = model(ctx[None].long())[0, -1].double()
    return float(torch.logsumexp(logits, 0) - logits[tgt])


def ref_sliding(model, sp, val: torch.Tensor, T: int, stride: int, tail_rescore: bool):
    """Slow reference of the sliding window: enumerate windows with plain loops, score each target on the
    exact context its window gives it."""
    N = val.numel() - 1
    nll, nbytes, count, first = 0.0, 0, 0, {}
    covered = 0
    for ws in range(0, N, stride):
        e = min(ws + T, N)
        wlen = e - ws
        if not (wlen >= stride or ws == 0):
            continue
        s = 0 if ws == 0 else wlen - stride
        lo = ws + s
        if not tail_rescore:
            lo = max(lo, covered)
        for i in range(lo, e):
            l = ref_nll(model, val[ws:i + 1], int(val[i + 1]))
            nll += l
            nbytes += ref_bytes(sp, int(val[i]), int(val[i + 1]))
            count += 1
            first.setdefault(i, l)
        covered = max(covered, e)
    return nll, count, nbytes, first


def test_full_size_window_plan_counts():
    """The full-size plan: N = 62,021,632, window 2048, stride 64 -> 969,088 windows, N + 1,984 scored."""
    N = 62_021_632
    p = plan_sliding_windows(N, 2048, 64, tail_rescore=True)
    assert p.n_windows == 969_088
    assert p.scored_tokens == N + 1_984
    assert int((p.score_hi - p.score_lo).min()) == 64 and int(p.length.max()) == 2048
    # the 31 windows starting after N - 2048 all re-score the final 64 targets
    tail = p.start > N - 2048
    assert int(tail.sum()) == 31 and np.all(p.score_lo[tail] == N - 64) and np.all(p.score_hi[tail] == N)
    # every target after the first 2048 sees >= 1,985 input tokens of context the first time it
    # is scored (the tail re-scores give the last 64 targets less and less)
    first = ~tail
    assert int((p.score_lo - p.start + 1)[first][1:].min()) == 1_985
    assert int((p.score_lo - p.start + 1)[tail].min()) == 1
    q = plan_sliding_windows(N, 2048, 64, tail_rescore=False)
    assert q.scored_tokens == N and q.n_windows == 969_088 - 31
    assert int((q.score_lo - q.start + 1)[1:].min()) == 1_985


@pytest.mark.parametrize("N,T,stride", [(96, 32, 8), (100, 32, 8), (257, 64, 16), (64, 64, 64), (40, 64, 16),
                                        (1000, 256, 64), (33, 16, 5)])
def test_window_plan_matches_loop_reference(N, T, stride):
    for tail in (True, False):
        p = plan_sliding_windows(N, T, stride, tail)
        ref, covered = [], 0
        for ws in range(0, N, stride):
            e = min(ws + T, N)
            if not (e - ws >= stride or ws == 0):
                continue
            lo = ws if ws == 0 else e - stride
            if not tail:
                lo = max(lo, covered)
                if lo >= e:
                    covered = max(covered, e)
                    continue
            ref.append((ws, e - ws, lo))
            covered = max(covered, e)
        got = list(zip(p.start.tolist(), p.length.tolist(), p.score_lo.tolist()))
        assert got == ref
        counts = np.zeros(N, dtype=np.int64)
        for lo, hi in zip(p.score_lo, p.score_hi):
            counts[lo:hi] += 1
        assert counts.min() >= 1
        if not tail:
            assert counts.max() == 1


def test_plan_rejects_bad_geometry():
    with pytest.raises(ValueError, match="stride"):
        plan_sliding_windows(100, 32, 0)
    with pytest.raises(ValueError, match="stride"):
        plan_sliding_windows(100, 32, 33)
    with pytest.raises(ValueError, match="unscored"):
        plan_sliding_windows(100, 32, 32)  # 100 = 3*32 + 4: the 4 last targets have no window


def test_nonoverlapping_matches_per_token_reference(luts, sp):
    model = tiny_model()
    T = 16
    val = stream(3 * T)
    r = eval_nonoverlapping(model, val, luts, T, batch_seqs=2, return_token_losses=True)
    nll = nbytes = 0.0
    for i in range(3 * T):
        ws = (i // T) * T
        l = ref_nll(model, val[ws:i + 1], int(val[i + 1]))
        assert abs(r.token_losses[i].item() - l) < 1e-4
        nll += l
        nbytes += ref_bytes(sp, int(val[i]), int(val[i + 1]))
    assert r.tokens == 3 * T and r.bytes == nbytes
    assert r.val_loss == pytest.approx(nll / (3 * T), rel=1e-5)
    assert r.val_bpb == pytest.approx(nll / (math.log(2) * nbytes), rel=1e-5)


@pytest.mark.parametrize("tail", [True, False])
def test_sliding_matches_per_token_reference(luts, sp, tail):
    model = tiny_model()
    T, stride, N = 16, 4, 50  # N not a multiple of the stride: tail windows of mixed lengths
    val = stream(N, seed=2)
    r = eval_sliding(model, val, luts, T, stride, batch_seqs=3, tail_rescore=tail, return_token_losses=True)
    nll, count, nbytes, first = ref_sliding(model, sp, val, T, stride, tail)
    assert r.tokens == count and r.bytes == nbytes
    assert (r.tokens > N) == tail
    assert r.val_loss == pytest.approx(nll / count, rel=1e-5)
    assert r.val_bpb == pytest.approx(nll / (math.log(2) * nbytes), rel=1e-5)
    got = r.token_losses.double()
    want = torch.tensor([first[i] for i in range(N)], dtype=torch.float64)
    assert torch.allclose(got, want, atol=1e-4, rtol=0)


def test_stride_equal_window_is_nonoverlapping(luts):
    model = tiny_model(seed=3)
    T = 32
    val = stream(4 * T, seed=4)
    a = eval_nonoverlapping(model, val, luts, T, batch_seqs=4, return_token_losses=True)
    b = eval_sliding(model, val, luts, T, stride=T, batch_seqs=4, return_token_losses=True)
    assert (a.tokens, a.bytes) == (b.tokens, b.bytes)
    assert torch.equal(a.token_losses, b.token_losses)
    assert a.val_bpb == pytest.approx(b.val_bpb, rel=1e-12)


def test_bf16_autocast_agrees_with_fp32(luts):
    """CPU bf16 autocast (the CUDA default) against fp32, with grouped KV heads and a bf16 table."""
    model = tiny_model(seed=6, embed_dtype="bfloat16")  # 2 query heads per KV head
    val = stream(200, seed=7)
    for run in (lambda ac: eval_sliding(model, val, luts, 32, 8, 4, autocast=ac, return_token_losses=True),
                lambda ac: eval_nonoverlapping(model, val[:193], luts, 32, 4, autocast=ac, return_token_losses=True)):
        a, b = run("none"), run("bf16")
        assert (a.tokens, a.bytes) == (b.tokens, b.bytes)
        assert b.val_bpb == pytest.approx(a.val_bpb, rel=5e-3)
        assert (a.token_losses - b.token_losses).abs().mean().item() < 0.02 * a.token_losses.mean().item()


def test_eval_restores_mode_and_is_deterministic(luts):
    model = tiny_model()
    model.train()
    val = stream(64)
    a = eval_sliding(model, val, luts, 32, 8, batch_seqs=5)
    assert model.training
    b = eval_sliding(model, val, luts, 32, 8, batch_seqs=5)
    assert a.val_bpb == b.val_bpb and a.val_loss == b.val_loss
    model.eval()
    eval_nonoverlapping(model, val, luts, 32)
    assert not model.training


def test_bad_inputs_raise_clear_errors(luts):
    model = tiny_model()
    with pytest.raises(ValueError, match="k\\*seq_len"):
        eval_nonoverlapping(model, stream(65), luts, 32)
    with pytest.raises(ValueError, match="vocab"):
        eval_nonoverlapping(model, torch.full((33,), 5000), luts, 32)
    with pytest.raises(ValueError, match="1-D"):
        eval_sliding(model, stream(64).view(1, -1), luts, 32)


DOCS = [
    "The State of the Union is strong, and our people are working.",
    "  Leading spaces vanish; double  spaces inside    do too.",
    "Numbers 1,234.56 and 2025 -- plus \"quotes\" and a final dot.",
    "a",
]
MULTIBYTE_DOC = "Dashes \u2014 and \u201ccurly quotes\u201d take three bytes each."


def _doc_stream(sp, docs):
    ids, texts = [], []
    for d in docs:
        enc = sp.encode(d)
        assert not any(sp.is_unknown(t) for t in enc), f"test text not representable: {d!r}"
        ids += [1] + enc
        texts.append(sp.decode(enc))
    return torch.tensor(ids + [1]), texts  # a trailing BOS: a target with 0 bytes


def _check_doc_bytes(tok_path):
    from gepalib.data import load_tokenizer

    sp = load_tokenizer(tok_path)
    luts = build_byte_luts(tok_path, 1024)
    model = tiny_model()
    docs = list(DOCS)
    if not any(sp.is_unknown(t) for t in sp.encode(MULTIBYTE_DOC)):  # the official tokenizer has these
        docs.append(MULTIBYTE_DOC)
    val, texts = _doc_stream(sp, docs)
    assert val.tolist().count(1) == len(docs) + 1
    want = sum(len(t.encode("utf-8")) for t in texts)
    r = eval_sliding(model, val, luts, 16, 4, tail_rescore=False)
    assert r.bytes == want
    assert r.tokens == val.numel() - 1
    # the same stream as one non-overlapping window
    r2 = eval_nonoverlapping(model, val, luts, val.numel() - 1)
    assert r2.bytes == want
    # a bare "▁" right after BOS adds no byte; after a normal token it is one space
    bare = sp.piece_to_id(SPACE)
    if sp.id_to_piece(bare) == SPACE:
        word = sp.encode("the")
        after_bos = torch.tensor([1, bare] + word)
        r3 = eval_nonoverlapping(model, after_bos, luts, after_bos.numel() - 1)
        assert r3.bytes == len("the".encode()) == len(sp.decode([bare] + word).encode())
        mid = torch.tensor([1] + word + [bare] + word)
        r4 = eval_nonoverlapping(model, mid, luts, mid.numel() - 1)
        assert r4.bytes == 2 * len("the") + 1


def test_doc_bytes_equal_utf8_length_sotu(sotu_data_dir):
    _check_doc_bytes(sotu_data_dir / "tokenizer.model")


def test_doc_bytes_equal_utf8_length_official(official_tokenizer_path):
    _check_doc_bytes(official_tokenizer_path)


# ---------------------------------------------------------------------------
# `gepa eval RUN_DIR`


@pytest.fixture()
def run_dir(tmp_path, sotu_data_dir):
    from gepalib.rundir import RunDir
    from gepalib.fsio import atomic_torch_save, atomic_write_text

    cfg = override(get_preset("tiny"), num_layers=2, model_dim=64, num_heads=2, num_kv_heads=1, mlp_hidden=128,
                   rope_dims=8, bigram_dim=16, ve_dim=16, ve_layers=(1,), xsa_last_n=1, seq_len=64,
                   data_dir=str(sotu_data_dir), val_tokens=1024, eval_stride=32, ttt_chunk_tokens=256,
                   ttt_epochs=1, device="cpu")
    rd = RunDir(tmp_path / "run")
    atomic_write_text(rd.config, cfg.to_json())
    m = tiny_model(seed=5)
    atomic_torch_save(m.state_dict(), rd.ema_weights)
    return rd, cfg, m


def test_eval_cli_records_stages(run_dir, capsys):
    from gepalib.quant.artifact import save_artifact
    from gepalib.cli import main
    from gepalib.quant.gptq import quantize_state_dict

    rd, cfg, m = run_dir
    assert main(["eval", str(rd.path)]) == 2  # no artifact yet
    err = capsys.readouterr().err
    assert "final_model.int6.gpz does not exist" in err and "gepa quantize" in err
    save_artifact(quantize_state_dict(m.state_dict(), cfg.quant), rd.artifact, cfg.quant)
    assert main(["eval", str(rd.path), "--sliding", "--ttt", "--streaming"]) == 0
    out = capsys.readouterr().out
    st = rd.stages()
    assert {"int6_roundtrip", "int6_sliding", "int6_sliding_ttt", "int6_streaming"} <= set(st)
    assert "stage:int6_sliding val_bpb:" in out and "int6_sliding_ttt" in out
    assert st["int6_roundtrip"]["tokens"] == 1024 and st["int6_sliding"]["tokens"] > 1024
    assert st["int6_sliding_ttt"]["settings"]["ttt_epochs"] == 1 and st["int6_sliding_ttt"]["chunks"] == 4
    # overrides that change what TTT measures get their own row; the default row stays
    assert main(["eval", str(rd.path), "--ttt", "--ttt-optimizer", "adamw", "--ttt-epochs", "2",
                 "--ttt-freeze-blocks", "0", "--ttt-lr", "1e-4"]) == 0
    st = rd.stages()
    name = "int6_sliding_ttt[adamw,e2,f0,lr0.0001]"
    assert name in st and st[name]["settings"]["ttt_optimizer"] == "adamw"
    assert st[name]["val_bpb"] != st["int6_sliding_ttt"]["val_bpb"]
    # float weights and a model override that would not fit them
    assert main(["eval", str(rd.path), "--weights", "ema", "--no-record"]) == 0
    assert "float_ema" not in rd.stages()
    assert main(["eval", str(rd.path), "--model-dim", "128"]) == 2
    assert "cannot override model_dim" in capsys.readouterr().err


@pytest.mark.parametrize("tail", [True, False])
def test_sliding_head_on_scored_positions_only_changes_no_number(luts, tail, monkeypatch):
    """The sliding evaluator runs the LM head only from each batch's first scored position
    (GPT.forward's ``logits_from``); the scores must be bit-equal to the full head's."""
    model = tiny_model(seed=8)
    T, stride, N = 32, 8, 300
    val = stream(N, seed=9)
    calls = []
    real = GPT.forward

    def spy(self, *a, **kw):
        calls.append(kw.get("logits_from", 0))
        return real(self, *a, **kw)

    monkeypatch.setattr(GPT, "forward", spy)
    fast = eval_sliding(model, val, luts, T, stride, batch_seqs=5, tail_rescore=tail, return_token_losses=True)
    assert max(calls) == T - stride and calls[0] == 0  # the first batch holds window 0 (scores all)

    def full_head(self, idx, targets=None, reduction="mean", cache=None, logits_from=0):
        out = real(self, idx, targets, reduction, cache)
        return out[:, logits_from:]

    monkeypatch.setattr(GPT, "forward", full_head)
    slow = eval_sliding(model, val, luts, T, stride, batch_seqs=5, tail_rescore=tail, return_token_losses=True)
    assert (fast.tokens, fast.bytes) == (slow.tokens, slow.bytes)
    assert fast.val_loss == slow.val_loss and fast.val_bpb == slow.val_bpb
    assert torch.equal(fast.token_losses, slow.token_losses)
