"""Progress of long loops (gepalib.progress): rank 0 only, plain greppable lines off a terminal,
results unchanged; the evaluators report through it."""
from __future__ import annotations

import pytest
import torch

from gepalib import progress as PR
from gepalib.config import get_preset, override
from gepalib.eval.streaming import eval_streaming
from gepalib.eval.windows import eval_nonoverlapping, eval_sliding
from gepalib.model import GPT


def test_plain_lines_every_interval_and_at_the_end(capsys):
    assert list(PR.track(range(3), "eval_sliding", mode="log", every_s=0)) == [0, 1, 2]
    assert capsys.readouterr().out.splitlines() == [
        "progress:eval_sliding batch:1/3 elapsed:0s eta:0s", "progress:eval_sliding batch:2/3 elapsed:0s eta:0s",
        "progress:eval_sliding batch:3/3 elapsed:0s", "progress:eval_sliding batch:3/3 elapsed:0s"]
    assert list(PR.track(iter("ab"), "ttt", unit="chunk", mode="log")) == ["a", "b"]
    assert capsys.readouterr().out == "", "a loop shorter than the interval prints nothing"
    assert PR.progress_line("quantize", "tensor", 5, None, 12.4) == "progress:quantize tensor:5/? elapsed:12s"


def test_modes_and_ranks(monkeypatch):
    from tqdm import tqdm

    items = range(4)
    assert PR.track(items, "x", mode="off") is items
    bar = PR.track(items, "x", mode="bar")
    assert isinstance(bar, tqdm) and list(bar) == [0, 1, 2, 3]
    monkeypatch.setenv("CI", "1")
    assert not isinstance(PR.track(items, "x", mode="auto"), tqdm)  # under CI: plain lines
    monkeypatch.setenv("RANK", "1")
    assert PR.track(items, "x", mode="bar") is items  # only rank 0 reports
    with pytest.raises(ValueError, match="progress='loud'"):
        PR.track(items, "x", mode="loud")


def test_evaluators_report_progress_and_score_the_same(luts, monkeypatch, capsys):
    cfg = override(get_preset("tiny"), num_layers=2, model_dim=64, num_heads=2, num_kv_heads=1, mlp_hidden=128,
                   rope_dims=8, bigram_dim=16, ve_dim=16, ve_layers=(1,), xsa_last_n=1, seq_len=64)
    torch.manual_seed(0)
    model = GPT(cfg.model).eval()
    val = torch.randint(4, 1024, (4 * 64 + 1,))
    quiet = [eval_nonoverlapping(model, val, luts, 64, 2, progress="off"),
             eval_sliding(model, val, luts, 64, 32, 2, progress="off"),
             eval_streaming(model, val, luts, 64, lanes=2, block=32, progress="off")]
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(PR, "LOG_EVERY_S", 0.0)
    shown = [eval_nonoverlapping(model, val, luts, 64, 2, progress="log"),
             eval_sliding(model, val, luts, 64, 32, 2, progress="log"),
             eval_streaming(model, val, luts, 64, lanes=2, block=32, progress="log")]
    out = capsys.readouterr().out
    assert "progress:eval_nonoverlapping batch:1/2 " in out and "progress:eval_nonoverlapping batch:2/2 " in out
    assert "progress:eval_sliding batch:4/4 " in out and "progress:eval_streaming step:" in out
    assert [r.val_bpb for r in shown] == [r.val_bpb for r in quiet]


def test_ttt_and_quantize_report_progress(luts, monkeypatch, capsys):
    from gepalib.eval.ttt import run_ttt
    from gepalib.quant.gptq import dequantize, quantize_state_dict

    cfg = override(get_preset("tiny"), num_layers=2, model_dim=64, num_heads=2, num_kv_heads=1, mlp_hidden=128,
                   rope_dims=8, bigram_dim=16, ve_dim=16, ve_layers=(1,), xsa_last_n=1, seq_len=32, eval_stride=8,
                   eval_batch_seqs=4, ttt_chunk_tokens=64, ttt_epochs=1, ttt_freeze_blocks=1, ttt_batch_seqs=1)
    torch.manual_seed(0)
    model = GPT(cfg.model)
    val = torch.randint(4, 1024, (3 * 64 + 1,))
    quiet = run_ttt(model, val, luts, 32, cfg.ttt, cfg.eval, progress="off")
    q_quiet = quantize_state_dict(model.state_dict(), cfg.quant, progress="off")
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(PR, "LOG_EVERY_S", 0.0)
    shown = run_ttt(model, val, luts, 32, cfg.ttt, cfg.eval, progress="log")
    q_shown = quantize_state_dict(model.state_dict(), cfg.quant, progress="log")
    out = capsys.readouterr().out
    assert "progress:ttt chunk:1/3 " in out and "progress:ttt chunk:3/3 " in out
    n = len(model.state_dict())
    assert f"progress:quantize tensor:{n}/{n} " in out
    assert shown.val_bpb == quiet.val_bpb
    assert all(torch.equal(a, b) for a, b in zip(dequantize(q_shown).values(), dequantize(q_quiet).values()))
