"""What each GEPA feature costs per token on this CPU: forward + backward of the default model
against the same model with exactly one feature switched off.

For each preset (``tiny``, ``small``; gepalib.config.get_preset) it builds the preset's GEPA
model (every feature on), one model per ModelConfig switch with only that switch at its "off"
value (or, for ``skip_mode``, ``rope_dims`` and ``mlp_act``, the other values gepalib.validation
accepts), the model with every one of those switches off together, and the plain nanoGPT-style
GPT of the same shape (bench/common.py's ``plain_for``). All of them see the same random batch
(the preset's seq_len; 16 sequences at tiny, 4 at small by default) and step in turn, the order
rotating every round so that each variant sees the same load, for ``--warmup`` rounds untimed
and ``--reps`` timed rounds. A step is ``model(idx, targets).backward()`` and a
``zero_grad(set_to_none=True)``, no optimizer.

Clock: this thread's CPU time (time.thread_time) with one torch thread (OMP_WAIT_POLICY passive),
which another job on the other core disturbs much less than wall time (wall time is recorded too).
Reported per variant: median CPU us per token, the spread of the repeats (min-max), the parameter
count, and the feature's cost = default - variant (us per token and % of the default step), with
the range of the per-round paired differences (default_i - variant_i): a cost whose range spans
zero is noise. Plus a torch.profiler table (top 10 ops by self CPU time) of the default model at
each preset, in the JSON.

``logit_softcap`` has no off value (validation requires > 0, and the tanh always runs);
``bigram_hash``, ``smear_bos_reset`` and ``leaky_relu2`` are alternatives, not off switches. At
tiny and small ``embed_dtype`` is already float32 (the off value), so its row is the as-run
bfloat16 table instead and its "cost" is what float32 saves.

    .venv/bin/python bench/feature_costs.py            # ~11 minutes on a busy 2-core box
    .venv/bin/python bench/feature_costs.py --quick    # smoke run (~45 s; tiny only: ~15 s)
    .venv/bin/python bench/feature_costs.py --presets tiny --reps 9
Writes bench/results/feature_costs.json and prints a markdown table per preset.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the torch import

import torch  # noqa: E402

from bench.common import RESULTS, machine_info, markdown_table, plain_for, write_result  # noqa: E402
from gepalib.config import get_preset, override  # noqa: E402
from gepalib.model import GPT  # noqa: E402

PRESETS = ("tiny", "small")
BATCH = {"tiny": 16, "small": 4}  # sequences per step (full run)
QUICK_BATCH = {"tiny": 2, "small": 1}


def variants_for(m) -> list[tuple[str, str, dict | None]]:
    """(name, what differs from the default, ModelConfig overrides; None = the plain GPT)."""
    emb_other = "bfloat16" if m.embed_dtype == "float32" else "float32"
    rows = [
        ("default", "every GEPA feature on (the preset)", {}),
        ("no_bigram", "bigram=False", {"bigram": False}),
        ("no_smear", "smear=False", {"smear": False}),
        ("no_value_embed", "ve_layers=()", {"ve_layers": ()}),
        ("no_xsa", "xsa_last_n=0", {"xsa_last_n": 0}),
        ("skip_add", "skip_mode=add (not gated)", {"skip_mode": "add"}),
        ("skip_none", "skip_mode=none", {"skip_mode": "none"}),
        ("no_resid_mix", "resid_mix=False", {"resid_mix": False}),
        ("no_ln_scale", "ln_scale=False", {"ln_scale": False}),
        ("no_qk_norm", "qk_norm=False", {"qk_norm": False}),
        ("no_rope", "rope_dims=0", {"rope_dims": 0}),
        ("rope_full", f"rope_dims={m.head_dim} (full, not {m.rope_dims})", {"rope_dims": m.head_dim}),
        ("mlp_relu2", "mlp_act=relu2 (no Star-ReLU gain/bias)", {"mlp_act": "relu2"}),
        (f"embed_{emb_other}", f"embed_dtype={emb_other} (default {m.embed_dtype})", {"embed_dtype": emb_other}),
    ]
    all_off = {"bigram": False, "smear": False, "ve_layers": (), "xsa_last_n": 0, "skip_mode": "none",
               "resid_mix": False, "ln_scale": False, "qk_norm": False, "rope_dims": 0, "mlp_act": "relu2"}
    rows.append(("all_off", "every off value above at once: bigram, smear, VE, XSA, resid_mix, ln_scale, qk_norm off, "
                            "skip_mode=none, rope_dims=0, relu2 (no positions at all)", all_off))
    rows.append(("plain_gpt", "bench/common.py plain_for: pre-LN, learned positions, GELU, tied head", None))
    return rows


NOT_SWITCHABLE = {
    "logit_softcap": "must be > 0 (gepalib.validation); the tanh always runs, so there is no off value",
    "bigram_hash": "add | xor: two variants of the bigram feature, not an off switch",
    "smear_bos_reset": "off by default: an addition, not a feature of the default to switch off",
    "mlp_act=leaky_relu2": "an alternative activation, not an off value",
}


def make_step(model: torch.nn.Module, idx: torch.Tensor, tgt: torch.Tensor):
    def step() -> tuple[float, float]:
        w0, c0 = time.perf_counter(), time.thread_time()
        loss = model(idx, tgt)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return time.thread_time() - c0, time.perf_counter() - w0
    return step


def profile_default(model: torch.nn.Module, idx, tgt, steps: int, top: int = 10) -> dict:
    """torch.profiler over ``steps`` forward+backward passes (after the bench's warm-up): the top
    ops by self CPU time, each with its share of the summed self CPU time of every op."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            model(idx, tgt).backward()
            model.zero_grad(set_to_none=True)
    ka = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ka)
    ranked = sorted(ka, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {"steps": steps, "total_self_cpu_us": total,
            "top": [{"op": e.key, "calls": e.count, "self_cpu_us": e.self_cpu_time_total,
                     "share": e.self_cpu_time_total / total if total else 0.0} for e in ranked],
            "table": ka.table(sort_by="self_cpu_time_total", row_limit=top)}


def measure(preset: str, batch: int, reps: int, warmup: int, profile_steps: int) -> dict:
    cfg = get_preset(preset)
    T = cfg.train.seq_len
    tokens = batch * T
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.model.vocab_size, (batch, T + 1), generator=g)
    idx, tgt = x[:, :-1], x[:, 1:]
    specs = variants_for(cfg.model)
    models, steps = {}, {}
    for name, _, kv in specs:
        torch.manual_seed(0)
        models[name] = plain_for(cfg) if kv is None else GPT(override(cfg, **kv).model)  # override validates
        steps[name] = make_step(models[name], idx, tgt)
    names = [n for n, _, _ in specs]
    cpu = {n: [] for n in names}
    wall = {n: [] for n in names}
    for r in range(warmup + reps):  # interleaved, the order rotating so no variant always follows the same one
        k = r % len(names)
        for n in names[k:] + names[:k]:
            c, w = steps[n]()
            if r >= warmup:
                cpu[n].append(c)
                wall[n].append(w)
    us = {n: [1e6 * s / tokens for s in cpu[n]] for n in names}
    base = statistics.median(us["default"])
    rows = []
    for name, what, kv in specs:
        med = statistics.median(us[name])
        paired = [d - v for d, v in zip(us["default"], us[name])]
        row = {"variant": name, "what": what, "overrides": kv,
               "params": sum(p.numel() for p in models[name].parameters()),
               "cpu_s": cpu[name], "wall_s": wall[name], "cpu_us_per_token": us[name],
               "median_us_per_token": med, "min_us_per_token": min(us[name]), "max_us_per_token": max(us[name]),
               "spread_pct": 100.0 * (max(us[name]) - min(us[name])) / med,
               "wall_median_us_per_token": 1e6 * statistics.median(wall[name]) / tokens}
        if name != "default":
            row["cost_us_per_token"] = base - med
            row["cost_pct"] = 100.0 * (base - med) / base
            row["paired_cost_min"], row["paired_cost_max"] = min(paired), max(paired)
            row["paired_cost_median"] = statistics.median(paired)
        rows.append(row)
    prof = profile_default(models["default"], idx, tgt, profile_steps)
    return {"preset": preset, "batch": batch, "seq_len": T, "tokens_per_step": tokens, "reps": reps,
            "warmup": warmup, "default_us_per_token": base,
            "shape": {k: getattr(cfg.model, k) for k in ("num_layers", "model_dim", "num_heads", "num_kv_heads",
                                                         "mlp_hidden", "vocab_size", "rope_dims", "xsa_last_n",
                                                         "ve_layers", "embed_dtype")},
            "variants": rows, "profile": prof}


def table(res: dict) -> str:
    rows = []
    for v in res["variants"]:
        cost = "-" if v["variant"] == "default" else (
            f"{v['cost_us_per_token']:+.1f} ({v['cost_pct']:+.1f}%) "
            f"[{v['paired_cost_min']:+.1f}, {v['paired_cost_max']:+.1f}]")
        rows.append((v["variant"], v["what"], f"{v['params']:,}", f"{v['median_us_per_token']:.1f}",
                     f"{v['min_us_per_token']:.1f}-{v['max_us_per_token']:.1f}", cost))
    return markdown_table(("variant", "differs from default", "params", "CPU us/token (median)",
                           "repeats min-max", "cost = default - variant, us/token (% of default) [paired range]"),
                          rows)


def profile_table(res: dict, n: int = 10) -> str:
    p = res["profile"]
    return markdown_table(("op", "calls", "self CPU ms", "share"),
                          [(t["op"], t["calls"], f"{t['self_cpu_us'] / 1e3:.1f}", f"{100 * t['share']:.1f}%")
                           for t in p["top"][:n]])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2 sequences at tiny, 1 at small, 1 warm-up, 2 repeats, 1 profiled step")
    ap.add_argument("--presets", default=",".join(PRESETS), help=f"comma list from {', '.join(PRESETS)}")
    ap.add_argument("--batch", type=int, default=0,
                    help="sequences per step at every preset (default tiny 16, small 4; quick 2 and 1)")
    ap.add_argument("--reps", type=int, default=0, help="timed rounds (default 9; quick 2)")
    ap.add_argument("--warmup", type=int, default=-1, help="untimed rounds first (default 2; quick 1)")
    ap.add_argument("--profile-steps", type=int, default=0, help="profiled passes of the default (default 3; quick 1)")
    ap.add_argument("--out", default=str(RESULTS / "feature_costs.json"))
    args = ap.parse_args(argv)
    presets = [p for p in args.presets.split(",") if p]
    unknown = sorted(set(presets) - set(PRESETS))
    if unknown:
        ap.error(f"unknown preset(s) {unknown}; choose from {list(PRESETS)}")
    torch.set_num_threads(1)
    reps = args.reps or (2 if args.quick else 9)
    warmup = args.warmup if args.warmup >= 0 else (1 if args.quick else 2)
    prof_steps = args.profile_steps or (1 if args.quick else 3)
    res = {"bench": "feature_costs", "quick": args.quick, "machine": machine_info(),
           "clock": "thread CPU time (time.thread_time), one torch thread",
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "not_switchable": NOT_SWITCHABLE,
           "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "presets": []}
    t0 = time.perf_counter()
    for p in presets:
        batch = args.batch or (QUICK_BATCH if args.quick else BATCH)[p]
        t1 = time.perf_counter()
        r = measure(p, batch, reps, warmup, prof_steps)
        r["wall_s"] = time.perf_counter() - t1
        res["presets"].append(r)
        print(f"\n{p}: {r['tokens_per_step']} tokens a step ({batch} x {r['seq_len']}), {reps} repeats after "
              f"{warmup} warm-up, {r['wall_s']:.0f} s", flush=True)
        print(table(r))
        print(f"\nprofile of the default at {p} ({prof_steps} passes), top ops by self CPU time:")
        print(profile_table(r))
    res["load_avg_1m_end"] = os.getloadavg()[0]
    res["wall_s"] = time.perf_counter() - t0
    out = write_result(args.out, res)
    print(f"\nload average (1 min): {res['machine']['load_avg_1m']:.2f} at start, {res['load_avg_1m_end']:.2f} at end "
          f"on {res['machine']['cpu_count']} CPUs; one torch thread, thread CPU time; wall {res['wall_s']:.0f} s")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
