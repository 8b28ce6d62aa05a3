"""bench/gpu_check.py on the CPU (--tiny): every part end to end, a simulated failing part and a
simulated missing package (in a fresh process, as on a lent GPU machine without zstandard), the
time budget, the fullgraph fallback, and the pure parts (plan, projections and their formulas)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import gpu_check  # noqa: E402
from bench.gpu import parts as gpu_parts, preflight as gpu_preflight, projection as gpu_projection  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def test_tiny_runs_every_part_on_cpu(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--tiny", "--device", "cpu", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["device"] == "cpu (--tiny)" and r["tiny"] is True and r["errors"] == {}
    assert r["preflight"]["imports"]["numpy"] and "zstandard" in r["preflight"]["imports"]
    assert r["status"] == {"sdpa": "skipped", "train_compiled": "skipped", "train_eager": "ok", "steps": "ok",
                           "resume": "ok", "quant": "ok", "eval": "ok", "compile_probe": "ok"}
    assert "off on CPU" in r["skipped"]["train_compiled"] and "CUDA only" in r["skipped"]["sdpa"]
    assert r["checks"] and all(r["checks"].values()), r["checks"]
    tr = r["parts"]["train_eager"]
    assert tr["steps"] == gpu_parts.TINY.steps and tr["tokens_per_s"] > 0 and tr["mfu"] is None
    assert tr["losses"][-1] < tr["losses"][0]  # the synthetic phrases are learnable
    split = r["parts"]["steps"]["split_ms"]
    assert set(split) == {"forward_backward", "all_reduce", "optimizer", "host_wait"}
    assert split["forward_backward"] > 0 and split["optimizer"] > 0 and split["host_wait"] >= 0
    rs = r["parts"]["resume"]
    assert rs["resumed_at"] == rs["checkpoint_step"] == gpu_parts.TINY.resume_stop_at
    assert rs["bitwise_equal_losses"] and rs["final_weights_max_abs_diff"] == 0.0  # fp32 on CPU: exact
    assert set(r["parts"]["eval"]["modes"]) == {"nonoverlapping", "sliding", "streaming", "streaming_lanes", "ttt"}
    for name in ("newton_schulz", "validation", "ttt"):
        c = r["parts"]["compile_probe"][name]
        assert c["fullgraph_held"] and c["graph_breaks"] == 0 and c["recompiles"] == 0 and c["compile_s"] > 0
    pr = r["projection"]
    assert "optimizer_ms" in pr["4gpu"]["formula"] and "1892 * train_s_per_chunk" in pr["ttt_eval"]["formula"]
    assert pr["8gpu"]["reference_8xH100_ms_per_step"] == 83.4 and "PR #549" in r["submission"]["8xH100"]["source"]
    assert set(r["seconds"]) >= {"train_eager", "eval"}
    assert "eval ttt" in capsys.readouterr().out


def test_a_failing_part_and_a_missing_package_keep_the_others(tmp_path):
    """The script as a lent GPU runs it, in its own process: zstandard made unimportable and part
    resume raising; the other parts still report and the JSON says why."""
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--tiny", "--device", "cpu", "--out", str(out),
           "--parts", "train_eager,resume,quant,eval", "--simulate-fail", "resume", "--simulate-missing", "zstandard"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 1, p.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["status"] == {"train_eager": "ok", "resume": "failed", "quant": "ok", "eval": "ok"}
    assert r["errors"]["resume"].startswith("RuntimeError: simulated failure of part resume")
    assert r["preflight"]["imports"]["zstandard"] is None and r["preflight"]["simulated_missing"] == ["zstandard"]
    assert "zstandard" in r["skipped"]["zstd"] and r["parts"]["quant"]["compressor"] == "none"
    assert math.isfinite(r["parts"]["quant"]["int6_bpb"]) and r["parts"]["eval"]["modes"]["ttt"]["chunks"] > 0
    assert "part resume failed" in p.stderr and "ERROR resume" in p.stdout


def test_the_budget_skips_the_remaining_parts(tmp_path):
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--tiny", "--device", "cpu", "--parts", "quant,eval", "--budget-s", "0",
                           "--out", str(out)]) == 1
    r = json.loads(out.read_text())
    assert r["status"] == {"quant": "skipped", "eval": "skipped"} and r["parts"] == {}
    assert r["skipped"]["quant"] == "budget of 0 s spent"


def test_a_fullgraph_failure_falls_back_to_the_default_compile(monkeypatch, tmp_path):
    calls = []
    real = gpu_parts.train_run

    def fake(chk, name, **kw):
        calls.append(name)
        if name == "compiled":
            raise RuntimeError("graph break under fullgraph")
        return real(chk, name, **{**kw, "compile": False})  # the eager trainer stands in for the compile
    monkeypatch.setattr(gpu_parts, "train_run", fake)
    out = tmp_path / "gpu.json"
    gpu_check.main(["--tiny", "--device", "cpu", "--compile", "on", "--parts", "train_compiled", "--out", str(out)])
    r = json.loads(out.read_text())
    c = r["parts"]["train_compiled"]
    assert calls == ["compiled", "compiled_fallback"] and r["status"]["train_compiled"] == "ok"
    assert c["fullgraph_held"] is False and "graph break under fullgraph" in c["fullgraph_error"]


def test_plan_parts_skips_exactly_what_needs_a_missing_package():
    pre = {"imports": {"numpy": "2", "sentencepiece": None, "triton": None}}
    run, skipped = gpu_preflight.plan_parts(list(gpu_check.PARTS), pre, cuda=True, compile_mode="auto")
    assert run == ["sdpa", "quant", "eval"]
    assert skipped["train_eager"] == "sentencepiece not installed"
    assert "triton" in skipped["compile_probe"]
    assert gpu_check.pick_parts("eval,train") == ["train_compiled", "train_eager", "steps", "eval"]
    with pytest.raises(SystemExit):
        gpu_check.pick_parts("nope")


@pytest.mark.parametrize("name,tflops", [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H200", 989.0),
                                         ("NVIDIA H100 PCIe", 756.0), ("NVIDIA A100-SXM4-80GB", 312.0),
                                         ("Tesla T4", None), ("cpu", None)])
def test_peak_bf16_table(name, tflops):
    assert gpu_parts.peak_bf16_flops(name) == (None if tflops is None else tflops * 1e12)


def test_projections_count_the_optimizer_once_per_step():
    comp = {"micro_batch_tokens": 98_304, "ms_per_step_median": 60.0}
    steps = {"split_ms": {"optimizer": 10.0}}
    ttt = {"score_s_per_chunk": 0.2, "train_s_per_chunk": 0.3}
    p = gpu_projection.projections({"train_compiled": comp, "steps": steps, "eval": {"modes": {"ttt": ttt}}})
    assert p["train_source"] == "train_compiled"
    assert p["per_gpu_tokens_per_s"] == pytest.approx(98_304 / 0.060)
    assert p["4gpu"]["accum"] == 2 and p["4gpu"]["ms_per_step"] == pytest.approx(2 * 50.0 + 10.0)
    assert p["8gpu"]["accum"] == 1 and p["8gpu"]["ms_per_step"] == pytest.approx(60.0)
    assert p["8gpu"]["full_run_s"] == pytest.approx(20_000 * 0.060)
    assert p["H100_equivalents"] == pytest.approx(0.0834 / 0.060)  # same micro-batch per GPU
    one = 1893 * 0.2 + 1892 * 0.3  # the last chunk is scored, never trained on
    assert p["ttt_eval"]["one_gpu_s"] == pytest.approx(one) and p["ttt_eval"]["ideal_8gpu_s"] == pytest.approx(one / 8)
    # without the step split the optimizer time is unknown: an upper bound, said so
    q = gpu_projection.projections({"train_eager": {"micro_batch_tokens": 49_152, "ms_per_step_median": 40.0}})
    assert q["4gpu"]["accum"] == 4 and q["4gpu"]["ms_per_step"] == 160.0 and "upper bound" in q["4gpu"]["formula"]
    assert gpu_projection.projections({}) == {}


def test_eager_micro_batch_fits_the_free_memory(monkeypatch):
    chk = type("C", (), {"cuda": True, "dev": None, "sizes": gpu_parts.GPU})()
    gib = 2**30
    for free, want in ((80 * gib, 98_304), (40 * gib, 49_152), (4 * gib, 6_144)):
        monkeypatch.setattr(gpu_parts.torch.cuda, "mem_get_info", lambda dev, f=free: (f, 80 * gib))
        m, why = gpu_parts.eager_micro_batch(chk)
        assert m == want and str(m) in why


def test_tiny_run_keeps_a_gpu_result(tmp_path):
    out = tmp_path / "gpu.json"
    gpu = {"bench": "gpu_check", "device": "NVIDIA H200", "tiny": False}
    out.write_text(json.dumps(gpu))
    assert gpu_check.main(["--tiny", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == gpu
    assert gpu_check.keep_existing(out, tiny=True) and not gpu_check.keep_existing(out, tiny=False)


def test_full_check_needs_a_gpu(tmp_path):
    assert gpu_check.main(["--device", "cpu", "--out", str(tmp_path / "g.json")]) == 2
    assert not (tmp_path / "g.json").exists()
