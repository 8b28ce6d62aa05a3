"""The GPU check's other parts (bench/gpu_check.py): the SDPA kernel of the model's attention,
int6 quantization and its round trip, the evaluations (non-overlapping, sliding, streaming,
legal TTT) and the compile probes (Newton-Schulz, validation, TTT)."""
from __future__ import annotations

import time
from dataclasses import asdict

import torch

from bench.gpu.parts import Check, median
from bench.gpu.preflight import observe_compile
from gepalib.config import override
from gepalib.model import GPT


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def part_sdpa(chk: Check, res: dict) -> dict:
    """A forward+backward of the model at the training shape (2 sequences) with SDPA restricted to
    flash: the kernel the training parts run (any other would have raised here)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from gepalib import dist

    torch.manual_seed(0)
    model = GPT(chk.cfg.model).to(chk.dev)
    x = torch.randint(0, chk.cfg.model.vocab_size, (2, chk.T), device=chk.dev)
    out = {"shape": [2, chk.T]}
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), dist.autocast_context(chk.dev, chk.autocast):
            model(x, x).backward()
        chk.sync()
        out.update(kernel="flash", ok=True)
    except RuntimeError as e:
        out.update(kernel="not flash", ok=False, error=f"{type(e).__name__}: {str(e)[:400]}")
    res["checks"]["model_attention_runs_flash"] = out["ok"]
    return out


def part_quant(chk: Check, res: dict) -> dict:
    from gepalib.data import load_val_tokens
    from gepalib.eval.windows import eval_nonoverlapping
    from gepalib.quant.artifact import load_artifact_state_dict, save_artifact
    from gepalib.quant.gptq import dequantize, quantize_state_dict

    if chk.pre["imports"].get("zstandard"):
        compressor, note = "zstd", f"zstd level {chk.args.zstd_level} (the submission: 22; see bench/compression.py)"
    else:
        compressor = "none"
        note = "zstandard is not installed: artifact stored uncompressed (lzma -9 takes minutes at this size)"
        res["skipped"]["zstd"] = note
    cfg = override(chk.cfg, compressor=compressor, zstd_level=chk.args.zstd_level)
    source, sd = "ema of a training part", chk.weights
    if sd is None:
        source = "fresh init (no training part ran)"
        torch.manual_seed(0)
        sd = GPT(cfg.model).state_dict()
    t0 = time.perf_counter()
    qm = quantize_state_dict(sd, cfg.quant)
    t_quant = time.perf_counter() - t0
    path = chk.work / "final_model.int6.gpz"
    info = save_artifact(qm, path, cfg.quant, meta={"preset": cfg.preset, "model": asdict(cfg.model)})
    t0 = time.perf_counter()
    back = load_artifact_state_dict(path)
    t_load = time.perf_counter() - t0
    deq = dequantize(qm)
    exact = set(back) == set(deq) and all(torch.equal(back[n], deq[n]) for n in deq)
    val = load_val_tokens(chk.data_dir, chk.T, cfg.model.vocab_size, max_targets=chk.sizes.quant_eval_seqs * chk.T)
    models = {}
    for kind, weights in (("float", sd), ("int6", back)):
        model = GPT(cfg.model)
        model.load_state_dict(weights)
        models[kind] = model.to(chk.dev)
    bpb = {k: eval_nonoverlapping(m, val, chk.luts, chk.T, cfg.eval.eval_batch_seqs, autocast=chk.autocast).val_bpb
           for k, m in models.items()}
    chk.eval_model = models["int6"]
    res["checks"]["artifact_reload_equals_dequantized"] = exact
    res["checks"]["roundtrip_bpb_finite"] = all(_finite(v) for v in bpb.values())
    return {"source": source, "compressor": compressor, "note": note, "file_bytes": info.file_bytes,
            "raw_bytes": info.raw_bytes, "quantize_s": t_quant, "encode_s": info.encode_seconds, "load_s": t_load,
            "eval_sequences": (val.numel() - 1) // chk.T, "float_bpb": bpb["float"], "int6_bpb": bpb["int6"],
            "int6_gap_bpb": bpb["int6"] - bpb["float"]}


def _eval_modes(chk: Check, model) -> dict:
    from gepalib.eval.streaming import eval_streaming
    from gepalib.eval.ttt import run_ttt
    from gepalib.eval.windows import eval_nonoverlapping, eval_sliding

    cfg, T, ac = chk.cfg, chk.T, chk.autocast
    bs, stride = cfg.eval.eval_batch_seqs, cfg.eval.eval_stride
    return {
        "nonoverlapping": lambda v: eval_nonoverlapping(model, v, chk.luts, T, bs, autocast=ac),
        "sliding": lambda v: eval_sliding(model, v, chk.luts, T, stride, bs, tail_rescore=False, autocast=ac),
        "streaming": lambda v: eval_streaming(model, v, chk.luts, T, max_lanes=bs, autocast=ac),
        # throughput probe: on a few chunks the exact warm-up (L(W-1)+2 tokens a lane) leaves one
        # lane; on the whole val set every rank runs eval_batch_seqs lanes. Prefix 0: bpb approximate.
        "streaming_lanes": lambda v: eval_streaming(model, v, chk.luts, T, lanes=bs, prefix=0, autocast=ac),
        "ttt": lambda v: run_ttt(model, v, chk.luts, T, cfg.ttt, cfg.eval, autocast=ac),
    }


def part_eval(chk: Check, res: dict) -> dict:
    """Each mode in its own try: one failing mode keeps the others' numbers."""
    from gepalib.data import load_val_tokens

    cfg, T = chk.cfg, chk.T
    model, source = chk.eval_model, "int6 artifact of part quant"
    if model is None:
        torch.manual_seed(0)
        model, source = GPT(cfg.model).to(chk.dev), "fresh init (part quant did not run)"
    C = cfg.ttt.ttt_chunk_tokens
    val = load_val_tokens(chk.data_dir, T, cfg.model.vocab_size, max_targets=chk.sizes.eval_chunks * C)
    out: dict = {"source": source, "targets": val.numel() - 1, "chunk_tokens": C, "ttt_epochs": cfg.ttt.ttt_epochs,
                 "stride": cfg.eval.eval_stride, "autocast": chk.autocast, "modes": {}, "mode_errors": {}}
    for name, fn in _eval_modes(chk, model).items():
        try:
            if name != "ttt":
                fn(val[: 2 * T + 1])  # warm-up: kernels, allocator
            chk.sync()
            r = fn(val)
            chk.sync()
        except Exception as e:  # noqa: BLE001
            out["mode_errors"][name] = f"{type(e).__name__}: {str(e)[:400]}"
            if chk.cuda:
                torch.cuda.empty_cache()
            continue
        row = {"bpb": r.val_bpb, "tokens": r.tokens, "seconds": r.seconds, "tokens_per_s": r.tokens / r.seconds}
        if name == "ttt":
            ch = r.extra["chunks"]
            steady = ch[1:] if len(ch) > 1 else ch  # chunk 0 carries the warm-up
            trained = [c for c in steady if c["train_loss_first"] is not None] or \
                      [c for c in ch if c["train_loss_first"] is not None]
            row.update(chunks=len(ch), score_s_per_chunk=median([c["score_seconds"] for c in steady]),
                       train_s_per_chunk=median([c["train_seconds"] for c in trained]),
                       chunk_bpb=[c["bpb"] for c in ch], compiled=False)
        out["modes"][name] = row
    m = out["modes"]
    if "streaming" in m and "sliding" in m:
        out["streaming_minus_sliding_bpb"] = m["streaming"]["bpb"] - m["sliding"]["bpb"]
    res["checks"]["eval_bpb_finite"] = bool(m) and all(_finite(r["bpb"]) for r in m.values())
    res["checks"]["eval_modes_all_ran"] = not out["mode_errors"]
    return out


def part_compile_probe(chk: Check, res: dict) -> dict:
    """fullgraph=True, graph breaks, recompiles and compile seconds of Newton-Schulz (the largest
    hidden matrix), validation (eval-mode forward at the eval batch) and TTT (a training
    forward+backward at the TTT batch). On the CPU the aot_eager backend: graph capture observed,
    no code generated (no C++ toolchain needed)."""
    from gepalib import dist
    from gepalib.muon import _newton_schulz

    backend = "inductor" if chk.cuda else "aot_eager"
    cfg, T, dev = chk.cfg, chk.T, chk.dev
    torch.manual_seed(0)
    model = GPT(cfg.model).to(dev)
    W = max((p for p in model.parameters() if p.ndim == 2), key=lambda p: p.numel())
    G = torch.randn(W.shape, device=dev)
    bs_eval = min(cfg.eval.eval_batch_seqs, 8)
    xe = torch.randint(0, cfg.model.vocab_size, (bs_eval, T), device=dev)
    xt = torch.randint(0, cfg.model.vocab_size, (cfg.ttt.ttt_batch_seqs, T), device=dev)

    def val_call(f):
        model.eval()
        with torch.inference_mode(), dist.autocast_context(dev, chk.autocast):
            return f(xe, xe)

    def ttt_call(f):
        model.train()
        with dist.autocast_context(dev, chk.autocast):
            f(xt, xt).backward()
        model.zero_grad(set_to_none=True)

    probes = {"newton_schulz": (_newton_schulz, lambda f: f(G, 5, 1e-7)), "validation": (model, val_call),
              "ttt": (model, ttt_call)}
    out: dict = {"backend": backend, "eval_batch_seqs": bs_eval, "ttt_batch_seqs": cfg.ttt.ttt_batch_seqs}
    for name, (fn, call) in probes.items():
        try:
            out[name] = observe_compile(fn, call, backend=backend, sync=chk.sync)
        except Exception as e:  # noqa: BLE001
            out[name] = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
    out["note"] = "gepalib runs TTT eagerly; the ttt probe says what compiling its training pass would cost"
    res["checks"]["compile_probes_ran"] = all("error" not in out[n] for n in probes)
    return out
