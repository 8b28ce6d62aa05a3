"""The study's machinery: Muon's fp32 Newton-Schulz, the streaming stage kind, the held-out TTT
sweep, parallel pretraining and the three budgets."""
from __future__ import annotations

import json

import pytest
import torch

from gepalib import run
from gepalib.config import get_preset, override
from gepalib.muon import Muon, zeropower_newton_schulz
from gepalib.run import notebooks as NB
from gepalib.run import study
from gepalib.run.params import parameter_defaults, parameters_cell
from gepalib.run.stages import ttt_gain


def test_newton_schulz_fp32_is_the_same_iteration_in_float32():
    g = torch.randn(96, 32, generator=torch.Generator().manual_seed(0))
    out = zeropower_newton_schulz(g, 5, dtype="fp32")
    assert out.dtype == torch.bfloat16 and out.shape == g.shape
    # the reference: the same five steps written out in float32, rounded to bf16 once at the end
    a, b, c = (3.4445, -4.7750, 2.0315)
    x = (g / (g.norm() + 1e-7)).T
    for _ in range(5):
        A = x @ x.T
        x = a * x + (b * A + (c * A) @ A) @ x
    assert torch.equal(out, x.T.bfloat16())
    bf = zeropower_newton_schulz(g, 5)  # the submission's bf16: close, not equal
    assert (out.float() - bf.float()).abs().max() < 0.05 * bf.float().abs().max()
    with pytest.raises(ValueError, match="bf16 or fp32"):
        zeropower_newton_schulz(g, 5, dtype="fp16")


def test_muon_ns_dtype_is_a_validated_config_field():
    p = torch.nn.Parameter(torch.randn(16, 8))
    p.grad = torch.randn(16, 8)
    Muon([p], lr=0.01, ns_dtype="fp32").step()
    with pytest.raises(ValueError, match="ns_dtype"):
        Muon([p], ns_dtype="fp16")
    assert get_preset("tiny").train.muon_ns_dtype == "auto"  # resolved by the device (test_optim)
    assert run.base_config("tiny", "cpu").train.muon_ns_dtype == "fp32"
    with pytest.raises(ValueError, match="muon_ns_dtype"):
        override(get_preset("tiny"), muon_ns_dtype="fp16")


def test_ttt_gain_uses_the_same_scoring():
    rows = {"sliding": {"val_bpb": 1.50}, "streaming": {"val_bpb": 1.49},
            "ttt": {"val_bpb": 1.48, "settings": {"ttt_scoring": "streaming"}}}
    assert ttt_gain(rows) == pytest.approx(-0.01)
    rows["ttt"]["settings"]["ttt_scoring"] = "sliding"
    assert ttt_gain(rows) == pytest.approx(-0.02)
    with pytest.raises(ValueError):
        ttt_gain({"streaming": {"val_bpb": 1.0}, "ttt": {"val_bpb": 1.0, "settings": {"ttt_scoring": "sliding"}}})


def notebook_defaults(name: str) -> dict:
    return parameter_defaults(parameters_cell(NB.notebooks_dir() / f"{name}.ipynb"))


@pytest.mark.parametrize("budget", ["demo", "quick"])
def test_budget_parameters_are_notebook_parameters(budget, tmp_path):
    for name in NB.notebook_names():
        given = NB.budget_parameters(name, budget)
        assert given, (name, budget)  # every notebook has its reduced values beside it
        unknown = set(given) - set(notebook_defaults(name))
        assert not unknown, (name, unknown)
    assert NB.budget_parameters("10_warmdown", "study") == {}
    with pytest.raises(ValueError):
        NB.budget_parameters("10_warmdown", "huge")
    # a budget file naming a parameter the notebook does not declare is refused, naming the file
    for f in ("10_warmdown.ipynb", f"10_warmdown.{budget}.yaml"):
        (tmp_path / f).write_bytes((NB.notebooks_dir() / f).read_bytes())
    with open(tmp_path / f"10_warmdown.{budget}.yaml", "a") as fh:
        fh.write("seedz: [1]\n")
    with pytest.raises(ValueError, match=r"10_warmdown\.\w+\.yaml: unknown notebook parameter 'seedz' "
                                         r"\(did you mean 'seeds'\?\)"):
        NB.budget_parameters("10_warmdown", budget, tmp_path)
    assert NB.budget_parameters("10_warmdown", budget, tmp_path / "none") == {}  # no file: the notebook's own


def test_study_parameters_are_the_calibrated_regime():
    """The notebooks' own parameters are the study: >= 3 seeds, >= 4 rungs, >= 131,072 TTT targets
    in >= 32 chunks, and the same ladder everywhere (so the runs are shared)."""
    ladders = set()
    for name in ("10_warmdown", "11_compressibility", "12_sgd_vs_adamw", "13_freezing", "14_ttt_share",
                 "15_ttt_families", "16_quantizers"):
        p = notebook_defaults(name)
        ladders.add((tuple(p["ladder_steps"]), tuple(p["ladder_warmdown"]), p["val_every"]))
        if "seeds" in p:
            assert len(p["seeds"]) >= 3, name
        if "ttt_val_tokens" in p:
            assert p["ttt_val_tokens"] >= 131_072, name
        if "sgd" in p:
            assert p["ttt_val_tokens"] // max(p["sweep_chunk_tokens"] + [p["sgd"]["ttt_chunk_tokens"]]) >= 32
            assert p["ttt_val_tokens"] <= study.HELDOUT_OFFSET
    assert len(ladders) == 1 and len(next(iter(ladders))[0]) >= 4


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, sotu_data_dir):
    cfg = run.with_length(run.base_config("tiny", "quick", str(sotu_data_dir)), 6, 0.5, 3, seed=5)
    root = tmp_path_factory.mktemp("study_runs")
    rd = study.pretrain([cfg, cfg], workers=2, runs_root=str(root), log=None)[0]
    return rd


def test_pretrain_trains_once_and_reuses(quick_run, tmp_path):
    assert run.is_finished(quick_run)
    cfg = quick_run.load_config()
    again = study.pretrain([cfg], runs_root=str(quick_run.path.parent), log=None)
    assert again[0].path == quick_run.path


def test_ttt_sweep_on_held_out_data_is_cached(quick_run):
    settings = [{"ttt_lr": 0.01, "ttt_chunk_tokens": 512, "ttt_epochs": 1},
                {"ttt_lr": 0.001, "ttt_chunk_tokens": 512, "ttt_epochs": 1}]
    rows = study.ttt_sweep(quick_run, settings, offset=200_000, targets=2048, log=None)
    assert [r["ttt_lr"] for r in rows] == [0.01, 0.001]
    assert all(r["chunks"] == 4 and r["gain"] == pytest.approx(r["val_bpb"] - r["base_bpb"]) for r in rows)
    cache = json.loads((quick_run.path / study.SWEEP_FILE).read_text())
    assert len(cache) == 3  # the base and two settings
    again = study.ttt_sweep(quick_run, settings, offset=200_000, targets=2048, log=None)
    assert again == rows
    # the slice must not contain a scored target
    with pytest.raises(ValueError, match="overlaps the scored targets"):
        study.ttt_sweep(quick_run, settings, offset=512, targets=2048, log=None)
    with pytest.raises(ValueError, match="overlaps"):
        study.ttt_sweep(quick_run, settings, offset=200_000, targets=2048, scored=300_000, log=None)
    with pytest.raises(ValueError, match="only set ttt fields"):
        study.ttt_sweep(quick_run, [{"steps": 3}], offset=200_000, targets=2048, log=None)


def test_tune_ttt_is_a_coordinate_search(quick_run):
    start = {"sgd": {"ttt_optimizer": "sgd", "ttt_lr": 0.002, "ttt_chunk_tokens": 512, "ttt_epochs": 1},
             "adamw": {"ttt_optimizer": "adamw", "ttt_lr": 1e-4}}
    tuned, rows = study.tune_ttt(quick_run, start, {"sgd": [0.003, 0.03], "adamw": [1e-4, 1e-3]},
                                 chunk_tokens=[256, 512], offset=200_000, targets=2048, log=None)
    sgd_lr = [r for r in rows if r["name"] == "sgd" and "ttt_chunk_tokens" in r and r["ttt_chunk_tokens"] == 512]
    best_lr = min((r for r in rows[:2]), key=lambda r: r["val_bpb"])["ttt_lr"]
    assert tuned["sgd"]["ttt_lr"] == best_lr and sgd_lr
    chunk_rows = rows[2:4]
    assert {r["ttt_chunk_tokens"] for r in chunk_rows} == {256, 512}
    assert tuned["sgd"]["ttt_chunk_tokens"] == min(chunk_rows, key=lambda r: r["val_bpb"])["ttt_chunk_tokens"]
    # AdamW at SGD's chunk size and epochs: only the optimizer and its LR differ
    assert tuned["adamw"]["ttt_chunk_tokens"] == tuned["sgd"]["ttt_chunk_tokens"]
    assert tuned["adamw"]["ttt_epochs"] == tuned["sgd"]["ttt_epochs"]
    assert tuned["adamw"]["ttt_lr"] == min(rows[4:], key=lambda r: r["val_bpb"])["ttt_lr"]


def test_artifact_mechanism(quick_run):
    m = study.artifact_mechanism(quick_run)
    assert 0 < m["code_entropy_bits"] <= 6 and 0 <= m["zero_code_frac"] <= 1
    assert m["weight_rms"] > 0 and m["artifact_bytes"] == quick_run.artifact.stat().st_size
    assert len(m["scales"]) > 0 and m["steps"] == 6


def test_relative_paths(quick_run, tmp_path):
    from gepalib.paths import project_root

    inside = project_root() / "runs" / "x"
    assert run.relative_paths([inside]) == ["runs/x"]
    assert run.relative_paths([quick_run])[0] == str(quick_run.path.resolve())  # outside: absolute
