"""The benchmarks' own checks: the GPU check end to end on CPU (--tiny), its pure parts
(peak table, projections, loss comparison, keeping a GPU result), the speed ledger's smoke
run and run_all's list of benchmarks."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import gpu_check, run_all, speed_ledger  # noqa: E402


def test_gpu_check_tiny_runs_every_part_on_cpu(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--tiny", "--device", "cpu", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["device"] == "cpu (--tiny)" and r["tiny"] is True and r["torch"]
    assert r["errors"] == {}
    assert set(r["parts"]) == {"train", "resume", "quant", "eval"}
    assert "compile" in r["skipped"]  # off on CPU by default
    assert r["checks"] and all(r["checks"].values()), r["checks"]
    for name in ("resume_next_loss_matches", "resume_final_weights_match", "resume_starts_at_checkpoint",
                 "artifact_reload_equals_dequantized", "roundtrip_bpb_finite", "eval_bpb_finite"):
        assert r["checks"][name] is True

    tr = r["parts"]["train"]["eager"]
    assert tr["steps"] == gpu_check.TINY.steps and len(tr["losses"]) == tr["steps"]
    assert tr["tokens_per_s"] > 0 and tr["mfu"] is None and tr["peak_mem_bytes"] is None
    assert tr["losses"][-1] < tr["losses"][0]  # the synthetic phrases are learnable

    rs = r["parts"]["resume"]
    assert rs["resumed_at"] == rs["checkpoint_step"] == gpu_check.TINY.resume_stop_at
    assert rs["bitwise_equal_losses"] and rs["final_weights_max_abs_diff"] == 0.0  # fp32 on CPU: exact

    q = r["parts"]["quant"]
    assert q["compressor"] in ("zstd", "none") and q["file_bytes"] > 0
    assert 0 < q["int6_bpb"] < 10 and abs(q["int6_gap_bpb"]) < 0.5

    ev = r["parts"]["eval"]
    assert set(ev["modes"]) == {"nonoverlapping", "sliding", "streaming", "streaming_lanes", "ttt"}
    for m in ev["modes"].values():
        assert m["tokens"] >= ev["targets"] and m["tokens_per_s"] > 0 and math.isfinite(m["bpb"])
    assert ev["modes"]["ttt"]["chunks"] == gpu_check.TINY.eval_chunks
    assert math.isfinite(ev["streaming_minus_sliding_bpb"])

    pr = r["projection"]
    assert {"4gpu", "8gpu", "ttt_eval", "note"} <= set(pr)
    assert pr["4gpu"]["submission_4xA100"] == 500.6 and pr["8gpu"]["submission_8xH100"] == 83.0
    assert pr["ttt_eval"]["submission_8xH100_s"] == 409.0
    assert "eval ttt" in capsys.readouterr().out


def test_tiny_run_keeps_a_gpu_result(tmp_path):
    out = tmp_path / "gpu.json"
    gpu = {"bench": "gpu_check", "device": "NVIDIA H200", "tiny": False}
    out.write_text(json.dumps(gpu))
    assert gpu_check.main(["--tiny", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == gpu
    assert gpu_check.keep_existing(out, tiny=True) and not gpu_check.keep_existing(out, tiny=False)
    out.write_text(json.dumps({"device": "cpu (--tiny)", "tiny": True}))
    assert not gpu_check.keep_existing(out, tiny=True)


def test_full_check_needs_a_gpu(tmp_path):
    assert gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "g.json")]) == 2
    assert not (tmp_path / "g.json").exists()


@pytest.mark.parametrize("name,tflops", [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H200", 989.0),
                                         ("NVIDIA H100 PCIe", 756.0), ("NVIDIA A100-SXM4-80GB", 312.0),
                                         ("NVIDIA A100 80GB PCIe", 312.0), ("Tesla T4", None), ("cpu", None)])
def test_peak_bf16_table(name, tflops):
    peak = gpu_check.peak_bf16_flops(name)
    assert peak == (None if tflops is None else tflops * 1e12)


def test_projections():
    train = {"eager": {"ms_per_step_median": 100.0}, "compiled": {"ms_per_step_median": 60.0}}
    ttt = {"score_s_per_chunk": 0.2, "train_s_per_chunk": 0.3}
    p = gpu_check.projections({"train": train, "eval": {"modes": {"ttt": ttt}}})
    assert p["train_source"] == "compiled"
    assert p["per_gpu_tokens_per_s"] == pytest.approx(98_304 / 0.060)
    assert p["A100_equivalents"] == pytest.approx(98_304 / 0.060 / (1.57e6 / 4))
    assert p["H100_equivalents"] == pytest.approx(0.083 / 0.060)  # same micro-batch per GPU
    assert p["4gpu"]["accum"] == 2 and p["4gpu"]["ms_per_step"] == 120.0  # 786,432 / (4 x 98,304)
    assert p["8gpu"]["accum"] == 1 and p["8gpu"]["ms_per_step"] == 60.0
    assert p["8gpu"]["full_run_s"] == pytest.approx(20_000 * 0.060)
    assert p["8gpu"]["tokens_per_s"] == pytest.approx(786_432 / 0.060)
    assert p["4gpu"]["submission_full_run_s"] == pytest.approx(20_000 * 0.5006)
    one = 1893 * 0.2 + 1892 * 0.3  # the last chunk is scored, never trained on
    assert p["ttt_eval"]["one_gpu_s"] == pytest.approx(one) and p["ttt_eval"]["ideal_8gpu_s"] == pytest.approx(one / 8)
    assert gpu_check.projections({}) == {}
    assert set(gpu_check.projections({"train": {"eager": train["eager"]}})) == {
        "train_source", "per_gpu_tokens_per_s", "A100_equivalents", "H100_equivalents", "4gpu", "8gpu"}


def test_compare_losses():
    ok = gpu_check.compare_losses([6.9, 6.5, 6.1], [6.9 + 1e-4, 6.52, 6.1], cuda=True)
    assert ok["first_loss_match"] and ok["loss_max_abs_diff_all_steps"] == pytest.approx(0.02)
    assert not gpu_check.compare_losses([6.9, 6.5], [6.95, 6.5], cuda=True)["first_loss_match"]
    assert not gpu_check.compare_losses([6.9], [6.9 + 1e-2], cuda=False)["first_loss_match"]


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
    printed = capsys.readouterr().out
    assert "| train step (512 tok, 1 thr, NS " in printed and "| eval ttt | tiny |" in printed


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


def test_missing_wheels_are_skipped_and_a_failing_part_is_recorded(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_check, "have", lambda m: m not in ("zstandard", "sentencepiece"))

    def broken(chk, res):
        raise RuntimeError("boom")
    monkeypatch.setattr(gpu_check, "part_eval", broken)
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--tiny", "--device", "cpu", "--parts", "train,quant,eval", "--out", str(out)]) == 1
    r = json.loads(out.read_text())
    assert "sentencepiece" in r["skipped"]["train"] and "zstandard" in r["skipped"]["zstd"]
    assert r["luts"].startswith("synthetic")
    q = r["parts"]["quant"]
    assert q["compressor"] == "none" and q["source"].startswith("fresh init") and math.isfinite(q["int6_bpb"])
    assert set(r["parts"]) == {"quant"} and r["errors"]["eval"].startswith("RuntimeError: boom")


def test_a_compiler_failure_keeps_the_eager_numbers(monkeypatch, tmp_path):
    real = gpu_check.train_run

    def no_compiler(chk, name, **kw):
        if kw.get("compile"):
            raise RuntimeError("no compiler")
        return real(chk, name, **kw)
    monkeypatch.setattr(gpu_check, "train_run", no_compiler)
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--tiny", "--device", "cpu", "--compile", "on", "--parts", "train",
                           "--out", str(out)]) == 1
    r = json.loads(out.read_text())
    assert r["errors"]["compile"].startswith("RuntimeError: no compiler")
    assert "eager" in r["parts"]["train"] and "compiled" not in r["parts"]["train"]
    assert r["projection"]["train_source"] == "eager"
