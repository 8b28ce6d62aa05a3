"""The TTT families beyond the submission's (docs/evaluation.md): per-document LoRA (isolated
documents, reset at every document, batched lanes), phased global passes over the scored prefix,
their composition, the settings that name their stages, and `gepa eval --ttt-family`."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from conftest import run_two_ranks
import torch
import torch.nn.functional as F

from gepalib.config import override
from gepalib.eval import phased as PH
from gepalib.eval.lora import LoRA, token_nll
from gepalib.eval.streaming import eval_streaming
from gepalib.eval.ttt import FAMILIES, TTTHooks, run_ttt
from gepalib.eval.windows import eval_sliding
from test_ttt import C, STRIDE, T, tiny_cfg, tiny_model, stream

LORA = dict(ttt_family="lora_doc", ttt_lora_rank=4, ttt_lora_lr=0.02, ttt_lora_chunk_tokens=16,
            ttt_lora_batch_docs=2, ttt_lora_steps=1, ttt_lora_targets="q,k,v,proj,mlp,head")
BOS = (0, 60, 100, 170, 240)  # documents of 60, 40, 70, 70 and 16 targets in 4 * C


def doc_stream(seed: int = 11) -> torch.Tensor:
    val = stream(4 * C, seed=seed)
    val[list(BOS)] = 1
    return val


# ---------------------------------------------------------------------------
# Planning


def test_documents_phases_and_prefix_sequences():
    val = torch.tensor([1, 5, 6, 1, 7, 8, 9, 1, 4, 1])  # N = 9 targets; the final BOS is a target only
    starts = PH.doc_starts(val, 1)
    assert starts.tolist() == [0, 3, 7]
    assert PH.doc_ranges(starts, 9) == [(0, 3), (3, 7), (7, 9)]
    assert PH.doc_starts(torch.tensor([5, 6, 1, 7]), 1).tolist() == [0, 2]  # text before the first BOS: doc 0
    assert PH.phase_boundaries((1, 2, 3, 7), 3) == [1, 2]  # a boundary at/after the last document: nothing
    assert PH.phase_segments((1, 2), starts, 9) == [(0, 3, 1), (3, 7, 2), (7, 9, 3)]
    assert PH.phase_segments((), starts, 9) == [(0, 9, 3)]
    assert PH.prefix_train_seqs(100, 32) == [(0, 32), (32, 32), (64, 32)]
    assert PH.prefix_train_seqs(95, 32) == [(0, 32), (32, 32)] and PH.prefix_train_seqs(31, 32) == []
    assert PH.doc_chunks(10, 45, 16) == [(10, 26), (26, 42), (42, 45)]
    assert PH.doc_batches(range(3, 8), 2) == [[3, 4], [5, 6], [7]]


def test_config_checks_and_stage_names():
    from gepalib.run.stages import TTT_FIELDS, stage_name

    cfg = tiny_cfg()
    assert cfg.ttt.ttt_family == "full" and "ttt_family" in TTT_FIELDS and "ttt_phase_docs" in TTT_FIELDS
    for kw, msg in ((dict(ttt_family="lora"), "ttt_family"), (dict(ttt_family="phased"), "ttt_phase_docs"),
                    (dict(ttt_phase_docs=(4,)), "phased family"), (dict(ttt_lora_targets="q,o"), "ttt_lora_targets"),
                    (dict(ttt_family="lora_doc", ttt_reset_per_doc=True), "ttt_reset_per_doc"),
                    (dict(ttt_family="phased", ttt_phase_docs=(8, 4)), "strictly increasing"),
                    (dict(ttt_lora_rank=0), "ttt_lora_rank"), (dict(ttt_lora_optimizer="lion"), "ttt_lora_optimizer")):
        with pytest.raises(ValueError, match=msg):
            override(cfg, **kw)
    c2 = override(cfg, ttt_family="phased+lora_doc", ttt_phase_docs="8,32", ttt_lora_rank=8, ttt_lora_targets="q,v")
    assert c2.ttt.ttt_phase_docs == (8, 32)
    fields = tuple(f for f in TTT_FIELDS if f != "ttt_scoring")
    assert stage_name("int6_sliding_ttt", cfg, c2, fields) == "int6_sliding_ttt[phased+lora_doc,r8,lora=q-v,ph8-32]"
    assert stage_name("int6_sliding_ttt", cfg, override(cfg, ttt_family="lora_doc"), fields) == \
        "int6_sliding_ttt[lora_doc]"


# ---------------------------------------------------------------------------
# Adapters


def test_adapters_start_as_the_identity_and_leave_the_model_untouched():
    cfg = tiny_cfg()
    model = tiny_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = stream(3 * T, seed=2)[:3 * T].view(3, T), stream(3 * T, seed=3)[:3 * T].view(3, T)
    base = model(x, y, reduction="none")
    lora = LoRA(model, "q,k,v,proj,mlp,head", rank=4, alpha=8.0, lanes=3)
    assert lora.scale == 2.0 and not any(p is q for p in lora.parameters() for q in model.parameters())
    for n, a0 in lora._a0.items():  # A ~ U(-1/sqrt(in), 1/sqrt(in)), the same for every lane
        assert a0.abs().max() <= 1 / math.sqrt(a0.size(0)) and a0.std() > 0.3 / math.sqrt(a0.size(0))
        assert torch.equal(lora.A[n.replace(".", "_")][2], a0)
    with lora:
        assert torch.equal(token_nll(model, x, y), base)  # B = 0: bit for bit the base model
        with torch.no_grad():
            for b in lora.B.values():
                b.normal_(0, 0.1)
        moved = token_nll(model, x, y)
        x2 = x.clone()
        x2[1] = stream(T, seed=9)[:T]
        other = token_nll(model, x2, y)
    assert not torch.allclose(moved, base, atol=1e-3)
    assert torch.equal(other[0], moved[0]) and torch.equal(other[2], moved[2])  # lanes are independent
    lora.reset()
    assert all(not b.any() for b in lora.B.values())
    assert all(not m._forward_hooks for m in model.modules())  # detached: no hook left
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert torch.equal(model(x, y, reduction="none"), base)
    with pytest.raises(RuntimeError, match="without targets"):
        with lora:
            model(x, y)


# ---------------------------------------------------------------------------
# Per-document LoRA


class DocLog(TTTHooks):
    def __init__(self):
        self.batches, self.train = [], []

    def on_docs(self, batch, docs):
        self.batches.append(docs)

    def on_train(self, chunk, epoch, batch, ranges):
        self.train.append(ranges)


@pytest.mark.parametrize("scoring", ["sliding", "streaming"])
def test_lora_doc_documents_are_isolated(luts, scoring):
    """Two val streams that differ only inside document k: no score outside document k changes."""
    cfg = tiny_cfg(ttt_scoring=scoring, **LORA)
    model = tiny_model(cfg)
    val = doc_stream()
    docs = PH.doc_ranges(PH.doc_starts(val, 1), val.numel() - 1)
    log = DocLog()
    base = run_ttt(model, val, luts, T, cfg.ttt, cfg.eval, hooks=log, return_token_losses=True).token_losses
    assert log.batches == [[docs[2], docs[3]], [docs[0], docs[1]], [docs[4]]]  # longest first, fresh adapters
    assert all(lo >= d[0] and hi <= d[1] for r in log.train for lo, hi in r for d in docs if d[0] <= lo < d[1])
    frozen = run_ttt(model, val, luts, T, override(cfg, ttt_lora_steps=0).ttt, cfg.eval,
                     return_token_losses=True).token_losses
    assert not torch.allclose(base, frozen, atol=1e-3)  # the adapters did adapt
    for k in (0, 1, 2):  # the first lane, the second lane of a batch, a lane of the next batch
        lo, hi = docs[k]
        alt = val.clone()
        g = torch.Generator().manual_seed(100 + k)
        alt[lo + 1:hi] = torch.randint(4, 64, (hi - lo - 1,), generator=g)  # keep the BOS: same documents
        got = run_ttt(model, alt, luts, T, cfg.ttt, cfg.eval, return_token_losses=True).token_losses
        outside = torch.ones_like(base, dtype=torch.bool)
        outside[lo:hi] = False
        assert torch.allclose(got[outside], base[outside], atol=1e-6, rtol=0), f"document {k} leaked"
        assert not torch.allclose(got[lo:hi], base[lo:hi], atol=1e-3)


def test_lora_doc_without_steps_is_document_local_scoring(luts):
    """ttt_lora_steps=0: each chunk scored by a window of its own document (sliding), or the banded
    model over each document alone (streaming)."""
    cfg = tiny_cfg(**dict(LORA, ttt_lora_steps=0))
    model = tiny_model(cfg)
    val = doc_stream()
    N = val.numel() - 1
    docs = PH.doc_ranges(PH.doc_starts(val, 1), N)
    got = run_ttt(model, val, luts, T, cfg.ttt, cfg.eval, return_token_losses=True).token_losses
    want = torch.full((N,), float("nan"))
    with torch.no_grad():
        for lo, hi in docs:
            for a, b in PH.doc_chunks(lo, hi, 16):
                w0 = max(lo, b - T)
                nll = model(val[w0:b][None], val[w0 + 1:b + 1][None], reduction="none")[0]
                want[a:b] = nll[a - w0:]
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    sc = override(cfg, ttt_scoring="streaming")
    got = run_ttt(model, val, luts, T, sc.ttt, sc.eval, return_token_losses=True).token_losses
    for lo, hi in docs:
        alone = eval_streaming(model, val[lo:hi + 1], luts, T, lanes=1, return_token_losses=True).token_losses
        assert torch.allclose(got[lo:hi], alone, atol=1e-5, rtol=0)


class ManualLoRA:
    """A plain q/v adapter on one document at a time (the reference)."""

    def __init__(self, model, a0, scale):
        self.A = {n: a.clone().requires_grad_(True) for n, a in a0.items()}
        self.B = {n: torch.zeros(a.size(1), dict(model.named_modules())[n].out_features, requires_grad=True)
                  for n, a in a0.items()}
        self.handles = [dict(model.named_modules())[n].register_forward_hook(
            lambda m, i, o, n=n: o + i[0] @ self.A[n] @ self.B[n] * scale) for n in a0]

    def params(self):
        return list(self.A.values()) + list(self.B.values())

    def remove(self):
        for h in self.handles:
            h.remove()


def test_lora_doc_matches_a_plain_per_document_loop(luts):
    """Batched lanes (2 per batch, active-lane selection) = one document at a time, written plainly:
    score the chunk by its document-local window, then an AdamW step on the chunk's mean nll."""
    kw = dict(LORA, ttt_lora_targets="q,v", ttt_lora_alpha=8.0, ttt_lora_steps=2, ttt_lora_wd=0.1,
              ttt_lora_beta1=0.9)
    cfg = tiny_cfg(**kw)
    model = tiny_model(cfg, seed=4)
    val = doc_stream(seed=12)
    N = val.numel() - 1
    got = run_ttt(model, val, luts, T, cfg.ttt, cfg.eval, return_token_losses=True).token_losses
    a0 = LoRA(model, "q,v", 4, 8.0, 1)._a0
    ref = copy.deepcopy(model)
    for p in ref.parameters():
        p.requires_grad_(False)
    want = torch.full((N,), float("nan"))
    for lo, hi in PH.doc_ranges(PH.doc_starts(val, 1), N):
        ad = ManualLoRA(ref, a0, 2.0)
        opt = torch.optim.AdamW(ad.params(), lr=0.02, betas=(0.9, 0.999), eps=1e-10, weight_decay=0.1)
        chunks = PH.doc_chunks(lo, hi, 16)
        for i, (a, b) in enumerate(chunks):
            w0 = max(lo, b - T)
            x, y = val[w0:b][None], val[w0 + 1:b + 1][None]
            for step in range(2 if i < len(chunks) - 1 else 1):
                logits = ref(x)
                nll = F.cross_entropy(logits[0], y[0], reduction="none")[a - w0:]
                if step == 0:
                    want[a:b] = nll.detach()
                if i == len(chunks) - 1:
                    break
                opt.zero_grad()
                nll.mean().backward()
                opt.step()
        ad.remove()
    assert torch.allclose(got, want, atol=2e-5, rtol=0)
    one = run_ttt(model, val, luts, T, override(cfg, ttt_lora_batch_docs=1).ttt, cfg.eval,
                  return_token_losses=True).token_losses
    assert torch.allclose(one, got, atol=1e-6, rtol=0)


def test_warm_start_a_keeps_a_across_documents(luts):
    """Only B resets: a document's first chunk is still scored by the base model, later chunks
    depend on the documents before it (so warm start trades isolation for a learned A)."""
    cfg = tiny_cfg(**dict(LORA, ttt_lora_batch_docs=1, ttt_lora_warm_start_a=True, ttt_lora_lr=0.05))
    model = tiny_model(cfg)
    val = doc_stream()
    docs = PH.doc_ranges(PH.doc_starts(val, 1), val.numel() - 1)
    base = run_ttt(model, val, luts, T, cfg.ttt, cfg.eval, return_token_losses=True).token_losses
    frozen = run_ttt(model, val, luts, T, override(cfg, ttt_lora_steps=0).ttt, cfg.eval,
                     return_token_losses=True).token_losses
    alt = val.clone()
    alt[1:60] = torch.randint(4, 64, (59,), generator=torch.Generator().manual_seed(5))
    got = run_ttt(model, alt, luts, T, cfg.ttt, cfg.eval, return_token_losses=True).token_losses
    for lo, hi in docs[1:]:
        assert torch.allclose(base[lo:lo + 16], frozen[lo:lo + 16], atol=1e-6)  # B = 0 at every document
        assert torch.allclose(got[lo:lo + 16], base[lo:lo + 16], atol=1e-6)
    lo, hi = docs[1]  # adapted after document 0 (longest first: 2, 3, 0, 1, 4), on the A it left
    assert not torch.allclose(got[lo + 16:hi], base[lo + 16:hi], atol=1e-4)
    lo, hi = docs[2]  # adapted before it
    assert torch.allclose(got[lo:hi], base[lo:hi], atol=1e-6)


# ---------------------------------------------------------------------------
# Phased


def reference_prefix_sgd(model, val, cfg, prefix_hi):
    """SGD (momentum, clipping, frozen leading blocks) over the prefix's aligned sequences."""
    t = cfg.ttt
    model = copy.deepcopy(model)
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(not any(name.startswith(f"blocks.{i}.") for i in range(t.ttt_freeze_blocks)))
        params += [p] if p.requires_grad else []
    opt = torch.optim.SGD(params, lr=t.ttt_phase_lr, momentum=t.ttt_momentum)
    n = prefix_hi // T
    model.train()
    for _ in range(t.ttt_phase_epochs):
        for k0 in range(0, n, t.ttt_batch_seqs):
            k1 = min(k0 + t.ttt_batch_seqs, n)
            opt.zero_grad()
            model(val[k0 * T:k1 * T].view(-1, T), val[k0 * T + 1:k1 * T + 1].view(-1, T)).backward()
            torch.nn.utils.clip_grad_norm_(params, t.ttt_grad_clip)
            opt.step()
    return model.eval()


def test_phased_scores_the_prefix_then_trains_on_all_of_it(luts):
    cfg = tiny_cfg(ttt_family="phased", ttt_phase_docs=(2,), ttt_phase_lr=0.05, ttt_phase_epochs=2,
                   ttt_batch_seqs=2)
    model = tiny_model(cfg)
    val = stream(4 * C, seed=13)
    val[[0, 64, 128, 200]] = 1  # boundary after 2 documents: target 128 (a window edge: no window straddles it)
    P = 128
    r = run_ttt(model, val, luts, T, cfg.ttt, cfg.eval, return_token_losses=True)
    plain = eval_sliding(model, val, luts, T, STRIDE, 4, return_token_losses=True).token_losses
    assert torch.allclose(r.token_losses[:P], plain[:P], atol=1e-6, rtol=0)  # scored before any update
    after = reference_prefix_sgd(model, val, cfg, P)
    want = eval_sliding(after, val, luts, T, STRIDE, 4, return_token_losses=True).token_losses
    assert torch.allclose(r.token_losses[P:], want[P:], atol=2e-5, rtol=0)
    assert not torch.allclose(r.token_losses[P:], plain[P:], atol=1e-3)
    assert [row["chunk"] for row in r.extra["chunks"]] == [0, 1] and r.extra["chunks"][0]["lr"] == 0.05


def test_phased_lora_doc_shares_the_prefix(luts):
    """Before the boundary, the same run as lora_doc; after it, the base trained on the prefix
    (restoring the base and freezing block 0: tests/test_ttt.py, for every family)."""
    kw = dict(LORA, ttt_family="phased+lora_doc", ttt_phase_docs=(2,), ttt_phase_lr=0.05, ttt_freeze_blocks=1)
    cfg = tiny_cfg(**kw)
    model = tiny_model(cfg)
    val = doc_stream()
    P = BOS[2]
    r = run_ttt(model, val, luts, T, cfg.ttt, cfg.eval, return_token_losses=True)
    lora_only = run_ttt(model, val, luts, T, override(cfg, ttt_family="lora_doc", ttt_phase_docs=()).ttt, cfg.eval,
                        return_token_losses=True)
    assert torch.equal(r.token_losses[:P], lora_only.token_losses[:P])  # before the boundary: the same run
    assert not torch.allclose(r.token_losses[P:], lora_only.token_losses[P:], atol=1e-3)
    assert r.extra["phases"] == [{"docs": 2, "prefix_targets": P}] and r.extra["documents"] == 5
    assert [(row["docs"], row["phase_docs"], row["reset"]) for row in r.extra["chunks"]] == [(2, 2, True), (3, 5, True)]


# ---------------------------------------------------------------------------
# The command line


def test_gepa_eval_flags_reach_the_ttt_config(tmp_path):
    from gepalib.cli import build_parser
    from gepalib.cli.common import collect_overrides

    args = build_parser().parse_args(["eval", str(tmp_path), "--ttt", "--ttt-family", "phased+lora_doc",
                                      "--ttt-phase-docs", "8,32", "--ttt-lora-rank", "8",
                                      "--ttt-lora-targets", "q,v,head", "--ttt-lora-warm-start-a", "true"])
    ov = collect_overrides(args)
    assert ov == {"ttt_family": "phased+lora_doc", "ttt_phase_docs": (8, 32), "ttt_lora_rank": 8,
                  "ttt_lora_targets": "q,v,head", "ttt_lora_warm_start_a": True}
    t = override(tiny_cfg(), **ov).ttt
    assert (t.ttt_family, t.ttt_phase_docs, t.ttt_lora_warm_start_a) == ("phased+lora_doc", (8, 32), True)


def test_gepa_eval_runs_a_family_and_names_its_stage(tmp_path, sotu_data_dir, capsys):
    """`gepa eval RUN --ttt --ttt-family lora_doc`: the stage row carries the family in its name and settings."""
    import json

    from gepalib import run
    from gepalib.cli import main
    from gepalib.fsio import atomic_write_text
    from gepalib.model import GPT

    cfg = run.base_config("tiny", "quick", str(sotu_data_dir), {"val_tokens": 2048})
    atomic_write_text(tmp_path / "config.json", cfg.to_json())
    torch.manual_seed(0)
    torch.save(GPT(cfg.model).state_dict(), tmp_path / "model_ema.pt")
    assert main(["eval", str(tmp_path), "--ttt", "--weights", "ema", "--ttt-family", "lora_doc", "--ttt-lora-rank",
                 "4", "--ttt-lora-lr", "0.01", "--ttt-lora-chunk-tokens", "32"]) == 0
    stages = json.loads((tmp_path / "summary.json").read_text())["stages"]
    name = "float_ema_sliding_ttt[lora_doc,r4,llr0.01,lc32]"
    assert name in stages and f"stage:{name} val_bpb:" in capsys.readouterr().out
    row = stages[name]
    assert row["settings"]["ttt_family"] == "lora_doc" and row["settings"]["ttt_lora_rank"] == 4
    assert row["tokens"] == 2048 and row["val_bpb"] < stages["float_ema"]["val_bpb"]  # adapting helps the init


# ---------------------------------------------------------------------------
# The notebook's verdicts and cost probe


def test_family_verdicts_follow_the_findings_rule():
    import json

    from gepalib.findings import VERDICTS
    from gepalib.findings.families import family_table, verdict_family

    gains = {"full": [-0.010, -0.012, -0.011], "lora_doc": [-0.020, -0.022, -0.019],
             "phased+lora_doc": [-0.0245, -0.025, -0.0235]}
    e1, e2 = verdict_family(gains, "E1"), verdict_family(gains, "E2")
    assert e1["verdict"] == e2["verdict"] == "agrees" and e1["interval"][1] < 0
    assert e1["expected"] == pytest.approx(-0.25 * 0.020333, rel=1e-3)  # 25% of the larger gain
    assert e2["expected"] == pytest.approx(-0.180 * 0.020333, rel=1e-2)  # 18% of lora_doc's gain
    worse = {"full": [-0.0100, -0.0101, -0.0099], "lora_doc": [-0.0050, -0.0051, -0.0049]}  # powered, other side
    assert verdict_family(worse, "E1")["verdict"] == "does not agree"
    two = {k: v[:2] for k, v in gains.items()}
    assert verdict_family(two, "E1")["verdict"] == "inconclusive"
    flat = {k: [0.0, 0.0, 0.0] for k in gains}
    rec = verdict_family(flat, "E2")
    assert rec["verdict"] in VERDICTS and "below 1 mBPB" in rec["reason"] and "reference (lora_doc)" in rec["reason"]
    # paired: a per-seed shift that both families share is not noise
    shared = np.array([-0.020, -0.026, -0.023])
    e = verdict_family({"full": shared, "lora_doc": shared - 0.003 + [0, 2e-4, -2e-4]}, "E1")
    assert e["verdict"] == "agrees" and e["test"] == "paired t" and e["effect"] == pytest.approx(-0.003)
    from gepalib.findings.stats import compare_settings
    assert compare_settings(shared - 0.003, shared)["ci_high"] > 0  # Welch would call it noise
    json.dumps(rec, allow_nan=False)  # strict JSON: None where undefined
    costs = {"full": [{"seconds": 2.0, "peak_mib": 10.0, "memory_method": "rss_peak"}]}
    t = family_table(gains, {k: [1.0] * 3 for k in gains}, {k: [3.0] * 3 for k in gains}, costs)
    assert list(t.index) == list(gains) and t.loc["lora_doc", "gain_mbpb"] == pytest.approx(-20.333, rel=1e-4)
    assert t.loc["full", "peak_mib"] == 10.0 and math.isnan(t.loc["lora_doc", "peak_mib"])


def test_peak_memory_probe_sees_an_allocation():
    from gepalib.run.ttt_cost import PeakMemory

    with PeakMemory(torch.device("cpu")) as m:
        x = torch.ones(10_000_000)  # 38 MiB
        del x
    if m.method == "rss_peak":
        assert 30 < m.mib < 80
    else:
        assert m.mib >= 0 and m.method == "maxrss_delta"


# ---------------------------------------------------------------------------
# Two processes (gloo): each rank scores a share of every segment's documents; the phase pass is collective

DIST_SCRIPT = r'''
import sys, torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(1)
from test_ttt_families import family_cases, doc_stream, T
from test_ttt import tiny_cfg, tiny_model
from gepalib import dist
from gepalib.bpb import build_byte_luts
from gepalib.eval.ttt import run_ttt
info = dist.init("cpu")
luts = build_byte_luts(sys.argv[2], 1024)
out = {}
for name, cfg in family_cases().items():
    r = run_ttt(tiny_model(cfg), doc_stream(), luts, T, cfg.ttt, cfg.eval, return_token_losses=True)
    out[name] = {"bpb": r.val_bpb, "tokens": r.tokens, "bytes": r.bytes, "losses": r.token_losses}
if info.rank == 0:
    torch.save(out, sys.argv[3])
dist.shutdown()
'''


DIST_CASES = {  # every registered family, in two processes (full's own split: tests/test_ttt.py)
    "full": dict(ttt_batch_seqs=3, ttt_grad_clip=0.0),
    "lora_doc": dict(LORA, ttt_scoring="streaming"),
    "phased+lora_doc": dict(LORA, ttt_family="phased+lora_doc", ttt_phase_docs=(3,), ttt_phase_lr=0.05,
                            ttt_batch_seqs=3),
    "phased": dict(ttt_family="phased", ttt_phase_docs=(2, 3), ttt_phase_lr=0.05, ttt_batch_seqs=3),
}


def family_cases():
    missing = set(FAMILIES) - set(DIST_CASES)
    assert not missing, f"registered families without a two-process case: {sorted(missing)}"
    return {name: tiny_cfg(**DIST_CASES[name]) for name in sorted(FAMILIES)}


def test_two_processes_match_single_process(tmp_path, luts, sotu_data_dir):
    got = run_two_ranks(DIST_SCRIPT, tmp_path, sotu_data_dir / "tokenizer.model")
    for name, cfg in family_cases().items():
        w = run_ttt(tiny_model(cfg), doc_stream(), luts, T, cfg.ttt, cfg.eval, return_token_losses=True)
        g = got[name]
        assert (g["tokens"], g["bytes"]) == (w.tokens, w.bytes), name
        assert g["bpb"] == pytest.approx(w.val_bpb, rel=1e-6), name
        assert torch.allclose(g["losses"], w.token_losses, atol=1e-5, rtol=0), name
