"""The benchmarks' own checks: the speed ledger's and the feature-cost bench's smoke runs, the
plain baseline's shape and run_all's list of benchmarks (the GPU check's: tests/test_gpu_check.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import feature_costs, run_all, speed_ledger  # noqa: E402


def test_speed_ledger_smoke(tmp_path, capsys):
    out = tmp_path / "ledger.json"
    assert speed_ledger.main(["--quick", "--presets", "tiny", "--tokens", "512", "--reps", "1", "--threads", "1,2",
                              "--eval-targets", "1024", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    row, row2 = r["train"]
    assert (row["threads"], row2["threads"]) == (1, 2) and "ratio_per_matrix_ns" in row
    assert row["preset"] == "tiny" and row["tokens_per_step"] == 512 and row["muon_ns_dtype"] in ("bf16", "fp32")
    assert row["ratio"] > 0 and row["cpu_ratio"] > 0 and len(row["gepalib"]["step_s"]) == 1
    assert row["shape"]["num_layers"] == 4 and row["shape"]["model_dim"] == 128
    assert set(r["eval"]["modes"]) == {"nonoverlapping", "sliding64", "streaming", "ttt"}
    assert row["ttt_train"]["cpu_us_per_token"] > 0 and row["ttt_train_cpu_ratio"] > 0
    printed = capsys.readouterr().out
    assert "| TTT training pass (512 tok, 1 thr, SGD) | tiny |" in printed
    assert "| train step (512 tok, 1 thr, NS " in printed and "| eval ttt | tiny |" in printed


def test_feature_costs_smoke(tmp_path, capsys):
    out = tmp_path / "feature_costs.json"
    assert feature_costs.main(["--quick", "--presets", "tiny", "--batch", "1", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    (row,) = r["presets"]
    assert row["preset"] == "tiny" and row["tokens_per_step"] == 256 and row["reps"] == 2 and row["warmup"] == 1
    from gepalib.config import get_preset

    names = [v["variant"] for v in row["variants"]]
    assert names == [n for n, _, _ in feature_costs.variants_for(get_preset("tiny").model)]
    assert {"default", "no_bigram", "no_smear", "no_value_embed", "no_xsa", "skip_add", "skip_none", "no_resid_mix",
            "no_ln_scale", "no_qk_norm", "no_rope", "rope_full", "mlp_relu2", "embed_bfloat16", "all_off",
            "plain_gpt"} == set(names)
    for v in row["variants"]:
        assert len(v["cpu_us_per_token"]) == 2 and min(v["cpu_us_per_token"]) > 0 and v["median_us_per_token"] > 0
        assert v["params"] > 0 and ("cost_us_per_token" in v) == (v["variant"] != "default")
    by = {v["variant"]: v for v in row["variants"]}
    assert by["no_bigram"]["params"] < by["default"]["params"] == by["no_xsa"]["params"]
    top = row["profile"]["top"]
    assert len(top) == 10 and all(t["self_cpu_us"] > 0 for t in top) and 0 < sum(t["share"] for t in top) <= 1
    printed = capsys.readouterr().out
    assert "| no_bigram | bigram=False |" in printed and "| aten::" in printed


def test_plain_baseline_has_the_preset_shape():
    from bench.common import plain_for
    from gepalib.config import get_preset

    for preset in ("tiny", "small"):
        cfg = get_preset(preset)
        m, plain = cfg.model, plain_for(cfg)
        assert len(plain.blocks) == m.num_layers and plain.wte.weight.shape == (m.vocab_size, m.model_dim)
        assert plain.wpe.weight.shape[0] == cfg.train.seq_len
        b = plain.blocks[0]
        assert (b.h, b.hkv, b.fc.out_features) == (m.num_heads, m.num_kv_heads, m.mlp_hidden)


def test_run_all_lists_every_benchmark(capsys):
    scripts = {p.name for p in (REPO / "bench").glob("*.py")} - {"common.py", "run_all.py"}
    assert {s for s, _, _ in run_all.BENCHMARKS.values()} == scripts
    for script, _, _ in run_all.BENCHMARKS.values():  # run_all passes --out to each
        assert '"--out"' in (REPO / "bench" / script).read_text()
    assert run_all.main(["--list", "--quick", "--only", "speed_ledger,gpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("results/quick/" in ln for ln in lines)
    assert any("gpu_check.py" in ln and ("--tiny" in ln) != run_all.cuda_available() for ln in lines)
    with pytest.raises(SystemExit):
        run_all.main(["--only", "nope"])