"""The GPU check's projections and summary table (bench/gpu_check.py).

Projections use measured parts only; each carries its formula. The reference numbers:
``4xA100`` is the submission this project reproduces (its logs: 500.6 ms/step, TTT 2,066 s);
``8xH100`` is what openai/parameter-golf PR #549 (the LeakyReLU² + legal score-first TTT +
parallel Muon record) reports for its 3 seeds on 8xH100 80GB SXM: mean step_avg 83.4 ms
(83.3-83.4) and TTT ~409 s (408-410 s).
"""
from __future__ import annotations

SUBMISSION = {
    "4xA100": {"ms_per_step": 500.6, "tokens_per_s": 1.57e6, "ttt_eval_s": 2066.0,
               "source": "the reproduced submission's logs"},
    "8xH100": {"ms_per_step": 83.4, "tokens_per_s": 786432 / 0.0834, "ttt_eval_s": 409.0,
               "source": "openai/parameter-golf PR #549, reported 3-seed means (8xH100 80GB SXM)"},
}
SUBMISSION_PEAK_GIB_PER_GPU = 21.2  # 4xA100-40GB, 48 x 2048 tokens per GPU per micro-step
FULL_STEPS = 20_000
FULL_TTT_CHUNKS = 1_893
GLOBAL_BATCH = 786_432


def _train_source(parts: dict) -> tuple[str, dict] | None:
    for name in ("train_compiled", "train_eager"):
        if (parts.get(name) or {}).get("ms_per_step_median"):
            return name, parts[name]
    return None


def _step_projection(run: dict, opt_ms: float | None, g: int, ref: str) -> dict:
    micro, ms = run["micro_batch_tokens"], run["ms_per_step_median"]
    accum = max(1, GLOBAL_BATCH // (g * micro))
    if opt_ms is not None:  # the optimizer runs once per step, the micro-steps accum times
        step_ms = accum * (ms - opt_ms) + opt_ms
        formula = "accum * (ms_per_step - optimizer_ms) + optimizer_ms; accum = 786432 // (G * micro)"
    else:
        step_ms = accum * ms
        formula = "accum * ms_per_step (upper bound: optimizer counted accum times; part steps did not run)"
    return {"gpus": g, "accum": accum, "ms_per_step": step_ms, "formula": formula,
            "tokens_per_s": GLOBAL_BATCH / (step_ms / 1e3), "full_run_s": FULL_STEPS * step_ms / 1e3,
            "full_run_formula": f"{FULL_STEPS} * ms_per_step / 1000", "communication": "not included (one GPU)",
            f"reference_{ref}_ms_per_step": SUBMISSION[ref]["ms_per_step"],
            f"reference_{ref}_full_run_s": FULL_STEPS * SUBMISSION[ref]["ms_per_step"] / 1e3}


def projections(parts: dict, micro: int = 98_304) -> dict:
    """The full run and the full TTT evaluation from the measured per-GPU parts."""
    out: dict = {}
    src = _train_source(parts)
    if src:
        name, run = src
        opt = ((parts.get("steps") or {}).get("split_ms") or {}).get("optimizer")
        out["train_source"] = name
        per_gpu = run["micro_batch_tokens"] / (run["ms_per_step_median"] / 1e3)
        out["per_gpu_tokens_per_s"] = per_gpu
        out["per_gpu_tokens_per_s_formula"] = "micro_batch_tokens / (ms_per_step_median / 1000)"
        if run.get("peak_mem_bytes"):
            out["per_gpu_peak_mem_gib"] = run["peak_mem_bytes"] / 2**30
            out["submission_per_gpu_peak_mem_gib"] = SUBMISSION_PEAK_GIB_PER_GPU
        for g, ref in ((4, "4xA100"), (8, "8xH100")):  # this GPU in units of the references' GPUs
            out[f"{ref[2:]}_equivalents"] = per_gpu / (SUBMISSION[ref]["tokens_per_s"] / g)
        out["equivalents_formula"] = "per_gpu_tokens_per_s / (reference tokens_per_s / its GPU count)"
        for g, ref in ((4, "4xA100"), (8, "8xH100")):
            out[f"{g}gpu"] = _step_projection(run, opt, g, ref)
    ttt = ((parts.get("eval") or {}).get("modes") or {}).get("ttt")
    if ttt:
        one = FULL_TTT_CHUNKS * ttt["score_s_per_chunk"] + (FULL_TTT_CHUNKS - 1) * ttt["train_s_per_chunk"]
        out["ttt_eval"] = {"chunks": FULL_TTT_CHUNKS, "one_gpu_s": one, "ideal_4gpu_s": one / 4, "ideal_8gpu_s": one / 8,
                           "formula": f"{FULL_TTT_CHUNKS} * score_s_per_chunk + {FULL_TTT_CHUNKS - 1} * "
                                      "train_s_per_chunk (last chunk not trained on); ideal_G = one_gpu_s / G",
                           "reference_4xA100_s": SUBMISSION["4xA100"]["ttt_eval_s"],
                           "reference_8xH100_s": SUBMISSION["8xH100"]["ttt_eval_s"]}
    return out


def _train_rows(p: dict) -> list[tuple]:
    rows = []
    for kind in ("train_compiled", "train_eager"):
        r = p.get(kind)
        if r:
            extra = f"fullgraph {r['fullgraph_held']}" if "fullgraph_held" in r else f"micro {r['micro_batch_tokens']}"
            rows.append((kind, f"{r['ms_per_step_median']:.1f} ms/step", f"{r['tokens_per_s']:,.0f} tok/s",
                         f"MFU {r['mfu']:.1%}" if r.get("mfu") is not None else "MFU -",
                         f"peak {r['peak_mem_bytes'] / 2**30:.1f} GiB, {extra}" if r["peak_mem_bytes"] else extra))
    if p.get("steps"):
        s = p["steps"]["split_ms"]
        rows.append(("step split", f"fwd+bwd {s['forward_backward']:.1f} ms", f"all-reduce {s['all_reduce']:.2f} ms",
                     f"optimizer {s['optimizer']:.1f} ms", f"host wait {s['host_wait']:.2f} ms"))
    return rows


def summary_rows(res: dict) -> list[tuple]:
    p = res["parts"]
    rows = _train_rows(p)
    if p.get("resume"):
        r = p["resume"]
        rows.append(("resume", f"step {r['next_step']} |dloss| {r['next_loss_abs_diff']}",
                     f"weights {r['final_weights_max_abs_diff']:.2e}", f"bitwise {r['bitwise_equal_losses']}", ""))
    if p.get("quant"):
        r = p["quant"]
        rows.append(("int6", f"{r['compressor']} {r['file_bytes']:,} B", f"float {r['float_bpb']:.4f}",
                     f"int6 {r['int6_bpb']:.4f}", f"gap {r['int6_gap_bpb']:+.4f}"))
    for name, m in ((p.get("eval") or {}).get("modes") or {}).items():
        rows.append((f"eval {name}", f"{m['tokens_per_s']:,.0f} tok/s", f"bpb {m['bpb']:.4f}",
                     f"{m['tokens']} tokens", f"{m['seconds']:.2f} s"))
    for name, c in (p.get("compile_probe") or {}).items():
        if isinstance(c, dict) and "compile_s" in c:
            rows.append((f"compile {name}", f"fullgraph {c['fullgraph_held']}", f"{c['compile_s']:.1f} s",
                         f"breaks {c['graph_breaks']}", f"recompiles {c['recompiles']}"))
    pr = res.get("projection") or {}
    for g in ("4gpu", "8gpu"):
        if g in pr:
            ref = "4xA100" if g == "4gpu" else "8xH100"
            rows.append((f"full run {g}", f"{pr[g]['ms_per_step']:.1f} ms/step", f"{pr[g]['full_run_s']:,.0f} s",
                         f"reference {ref} {pr[g][f'reference_{ref}_ms_per_step']} ms/step", ""))
    if "ttt_eval" in pr:
        t = pr["ttt_eval"]
        rows.append(("full TTT eval", f"1 GPU {t['one_gpu_s']:,.0f} s", f"ideal 8 GPU {t['ideal_8gpu_s']:,.0f} s",
                     f"reference {t['reference_4xA100_s']:.0f} s / {t['reference_8xH100_s']:.0f} s", ""))
    return rows
