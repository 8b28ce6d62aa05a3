# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 11 · F2: better-trained models compress smaller
#
# The submission's artifact shrinks from 14.94 MiB (9k steps) to 14.29 MiB (20k): longer
# training with a long warmdown leaves weights that zstd compresses better. We quantize every
# rung of the training-length ladder and fit size against steps (`findings.compressibility`).

# %% tags=["parameters"]
preset = "tiny"                # model family: tiny | small | gepa11 | baseline9
scale = "cpu"                  # cpu (2-core defaults) | quick (smoke test) | full (the preset as it is)
overrides = {}                 # any other config field, e.g. {"model_dim": 192}
nproc = 1                      # processes per run (torchrun --nproc-per-node)
data_dir = "data/sotu_sp1024"  # the embedded dataset; data/fineweb10B_sp1024 for the real one
runs_root = "runs"             # content-addressed run directories: finished runs are reused
figures_dir = "figures"
ladder_steps = [100, 200, 300, 400]  # training lengths (one run each, shared by 10, 11 and 14)
warmdown_frac = 0.4            # the submission: 8,000 of 20,000 steps
ladder_warmdown: "Optional[list[int]]" = None  # warmdown steps per rung instead of the fraction (full scale: 4k/5k/6k/8k)
val_every = 20                 # validation interval in steps, the same for every run
seed = 42
dry_run = False                # True: print the runs, their torchrun commands and GPU-hours; train nothing

# %%
from gepalib import run
from gepalib import findings as F
from gepalib.findings import plots as P
from gepalib.findings import reference as R
from gepalib.findings.report import save_finding
from gepalib.run.params import check_parameters

check_parameters(globals())  # a misspelt or mistyped parameter fails here, naming it
plan = run.plan_notebook("11_compressibility", globals())  # every run and evaluation below
run.stop_if_dry_run(plan, dry_run)  # dry_run: print them with their GPU-hours, run nothing more

# %%
P.set_style()
run.ensure_data(data_dir)
base = run.base_config(preset, scale, data_dir, overrides)

# %%
cfgs = plan.configs  # = run.ladder_configs(base, ladder_steps, warmdown_frac, seeds=[seed],
#                                      val_every=val_every, warmdowns=ladder_warmdown)
rds = run.launch_many(cfgs, nproc=nproc, runs_root=runs_root)
for rd in rds:
    run.ensure_artifact(rd)
df = run.load_runs(rds)[["name", "steps", "warmdown", "float_live_bpb", "float_ema_bpb", "artifact_bytes"]]
df

# %%
comp = F.compressibility(df["steps"], df["artifact_bytes"], df["float_live_bpb"])
fig = P.compressibility_figure(df["steps"], df["artifact_bytes"], comp)
P.save_figure(fig, "F2_compressibility", figures_dir)
R.f2_df()

# %% [markdown]
# ## Verdict (computed)
# The slope of log(artifact size) on log(steps) over the ladder, with its 95% interval and minimum
# detectable effect against the published slope; fewer than 3 rungs, or an MDE above the published
# slope, give "inconclusive (underpowered)".

# %%
verdict = F.verdict_f2(comp)
save_finding(verdict, figures_dir, scale=scale, preset=preset, steps=df["steps"].tolist(),
             artifact_bytes=df["artifact_bytes"].tolist(), float_bpb=df["float_live_bpb"].tolist())
print(verdict["text"])
