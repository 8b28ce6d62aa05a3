# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 16 · Quantizers: GPTQ-lite, per-row GPTQ-lite and full GPTQ
#
# The submission rounds every weight to the nearest int6 code with one clip percentile per tensor
# (GPTQ-lite, `quant_mode=faithful`). `per_row` lets every row pick its percentile; `gptq` is
# full-Hessian GPTQ: each Linear's columns are quantized in turn and their rounding error is
# pushed onto the columns not yet quantized, weighted by the layer-input Hessian collected on
# training batches (docs/quantization.md). All three store the same int6 codes and fp16 scales,
# so every compressor applies to each. For every rung of the training-length ladder (the runs of
# notebooks 10, 11 and 14) we quantize with each mode, compress with zstd-22, brotli-11 and rANS,
# load the bytes back and score the weights: bytes against round-trip val_bpb.

# %% tags=["parameters"]
from typing import Optional
preset: str = "tiny"                  # model family: tiny | small | gepa11 | baseline9
scale: str = "cpu"                    # cpu (2-core defaults) | quick (smoke test) | full (the preset as it is)
overrides: dict = {}                  # any other config field, e.g. {"model_dim": 192}
nproc: int = 1                        # processes per run (torchrun --nproc-per-node)
data_dir: str = "data/sotu_sp1024"    # the embedded dataset; data/fineweb10B_sp1024 for the real one
runs_root: str = "runs"               # content-addressed run directories: finished runs are reused
figures_dir: str = "figures"
ladder_steps: list[int] = [450, 600, 750, 1000]  # training lengths (the ladder of notebooks 10-15)
warmdown_frac: float = 0.4            # used where ladder_warmdown is None
ladder_warmdown: Optional[list[int]] = [200, 250, 300, 400]  # per rung, as the submission's 4k/5k/6k/8k of 9k/12k/15k/20k
val_every: int = 25
seed: int = 42
quantizers: dict = {  # name -> quant fields (quant_mode and its settings)
    "faithful": {"quant_mode": "faithful"},  # GPTQ-lite as the submission ran it
    "per_row": {"quant_mode": "per_row"},
    "gptq": {"quant_mode": "gptq"},          # full GPTQ of every Linear; the embedding tables per_row
    "gptq+head": {"quant_mode": "gptq", "gptq_tied_head": True},  # and tok_emb as the output head
}
compressors: list[str] = ["zstd", "brotli", "rans"]  # zstd-22 (as run), brotli-11, rANS
quant_overrides: dict = {}            # quant fields for every mode, e.g. {"gptq_damp": 0.05, "gptq_calib_batches": 16}
frontier_bytes: str = "model_bytes"   # model_bytes (the artifact) | total_bytes (+ the code bytes, the challenge's rule)
dry_run: bool = False                 # True: print the runs, their torchrun commands and GPU-hours; train nothing

# %% tags=["plan"]
from gepalib import run

run.check_parameters(globals())  # a misspelt or mistyped parameter fails here, naming it
plan = run.Plan(nproc=nproc, runs_root=runs_root)  # every run and evaluation below
base = run.base_config(preset, scale, data_dir, overrides)
cfgs = plan.train(run.ladder_configs(base, ladder_steps, warmdown_frac, seeds=[seed], val_every=val_every,
                                     warmdowns=ladder_warmdown))
for c in cfgs:  # every quantizer x compressor on every rung
    plan.evaluate(c, "quantizers", modes=list(quantizers), compressors=compressors)
run.stop_if_dry_run(plan, dry_run)  # dry_run: print them with their GPU-hours, run nothing more

# %%
import pandas as pd

from gepalib.findings import plots as P
from gepalib.run import quantizers as Q

P.set_style()
run.ensure_data(data_dir)
rds = run.launch_many(cfgs, nproc=nproc, runs_root=runs_root)
rows = [r for rd in rds for r in Q.compare_quantizers(rd, quantizers, compressors, **quant_overrides)]
df = pd.DataFrame(rows)[["steps", "quantizer", "compressor", "model_bytes", "total_bytes", "fits", "val_bpb",
                         "quant_gap_bpb", "calib_seconds", "quantize_seconds", "compress_seconds"]]
df

# %% [markdown]
# ## Bytes and round-trip val_bpb per quantizer
# Columns: bytes per compressor; the round-trip val_bpb does not depend on the (lossless) compressor.

# %%
wide = df.pivot_table(index=["steps", "quantizer"], columns="compressor", values="model_bytes")
wide["val_bpb"] = df.groupby(["steps", "quantizer"])["val_bpb"].first()
wide["quant_gap_bpb"] = df.groupby(["steps", "quantizer"])["quant_gap_bpb"].first()
wide["quantize_s"] = df.groupby(["steps", "quantizer"])[["calib_seconds", "quantize_seconds"]].first().sum(axis=1)
wide

# %% [markdown]
# ## The bpb-vs-bytes frontier
# Every (rung, quantizer, compressor) point; the line joins the points no other point beats on both
# bytes and val_bpb. On small models the code bytes (~0.1 MB, more for rANS's decoder) outweigh the
# artifact, so the default axis is the artifact's bytes; `frontier_bytes="total_bytes"` plots the
# challenge's sum.

# %%
fig, (ax,) = P.new_figure(width=6.4, height=4.4, title=f"int6 round trip: val_bpb against {frontier_bytes}")
marks = {"zstd": "o", "brotli": "s", "rans": "^", "lzma": "D", "none": "x"}
colors = dict(zip(quantizers, ["C0", "C1", "C2", "C3", "C4", "C5"]))
for (mode, comp), g in df.groupby(["quantizer", "compressor"]):
    ax.scatter(g[frontier_bytes] / 1e6, g["val_bpb"], marker=marks.get(comp, "o"), color=colors.get(mode, "k"),
               label=f"{mode} / {comp}", s=28, alpha=0.85)
front = pd.DataFrame(Q.frontier(rows, x=frontier_bytes))
ax.step(front[frontier_bytes] / 1e6, front["val_bpb"], where="post", color="0.3", lw=1.0, ls="--", label="frontier")
for s, g in df.groupby("steps"):
    ax.annotate(f"{s} steps", (g[frontier_bytes].min() / 1e6, g["val_bpb"].max()), fontsize=7, color="0.35")
ax.set_xlabel({"model_bytes": "artifact bytes", "total_bytes": "total bytes (code + artifact)"}[frontier_bytes]
              + ", MB")
ax.set_ylabel("round-trip val_bpb")
ax.legend(fontsize=6, ncol=2)
P.save_figure(fig, "16_quantizers", figures_dir)

# %%
last = df[df["steps"] == df["steps"].max()]
by_mode = last.groupby("quantizer", sort=False)["val_bpb"].first()
gain = {m: by_mode["faithful"] - by_mode[m] for m in by_mode.index} if "faithful" in by_mode else {}
print(f"longest rung ({last['steps'].iloc[0]} steps): val_bpb " +
      " ".join(f"{m}:{v:.5f}" for m, v in by_mode.items()) +
      ("  gain over faithful (bpb): " + " ".join(f"{m}:{v:+.5f}" for m, v in gain.items()) if gain else ""))
front[["steps", "quantizer", "compressor", "model_bytes", "total_bytes", "val_bpb"]]
