# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Train with torchrun
#
# `gepalib.run.launch` starts `python -m torch.distributed.run --nproc-per-node {nproc} -m gepalib train`
# with this notebook's interpreter. Rank 0 streams into the cell; all ranks' logs land in
# `<run>/logs/torchrun/`; interrupting the cell stops the whole process group (the trainer
# checkpoints, so launching again resumes). A finished run with the same config is reused.

# %% tags=["parameters"]
preset: str = "tiny"                  # model family: tiny | small | gepa11 | baseline9
scale: str = "cpu"                    # cpu (2-core defaults) | quick (smoke test) | full (the preset as it is)
overrides: dict = {}                  # any other config field, e.g. {"model_dim": 192}
nproc: int = 1                        # processes per run (torchrun --nproc-per-node)
data_dir: str = "data/sotu_sp1024"    # the embedded dataset; data/fineweb10B_sp1024 for the real one
runs_root: str = "runs"               # content-addressed run directories: finished runs are reused
figures_dir: str = "figures"
steps: int = 1000                     # training steps: the ladder's longest rung (its base model, seed 42)
warmdown_frac: float = 0.4
val_every: int = 25
seed: int = 42
dry_run: bool = False                 # True: print the runs, their torchrun commands and GPU-hours; train nothing

# %% tags=["plan"]
from gepalib import run

run.check_parameters(globals())  # a misspelt or mistyped parameter fails here, naming it
plan = run.Plan(nproc=nproc, runs_root=runs_root)  # every run and evaluation below
base = run.base_config(preset, scale, data_dir, overrides)
cfg = plan.train(run.with_length(base, steps, warmdown_frac, val_every, seed=seed, vary_data=False))
run.stop_if_dry_run(plan, dry_run)  # dry_run: print them with their GPU-hours, run nothing more

# %%
from gepalib.findings import plots as P

P.set_style()
run.ensure_data(data_dir)

# %%
print(f"run_key:{run.run_key(cfg)} steps:{cfg.train.steps} warmdown:{cfg.train.warmdown} "
      f"batch_tokens:{cfg.train.batch_tokens} seq_len:{cfg.train.seq_len}")
rd = run.launch(cfg, nproc=nproc, runs_root=runs_root)

# %% [markdown]
# ## Loss curve

# %%
metrics = run.load_metrics(rd)
fig = P.training_curves_figure(metrics, title=f"{rd.path.name}: {cfg.train.steps} steps")
P.save_figure(fig, "01_training_curves", figures_dir)
metrics.dropna(subset=["val_bpb"])[["step", "train_loss", "val_bpb", "val_bpb_ema"]].tail(5)

# %% [markdown]
# ## All runs so far

# %%
df = run.load_runs(runs_root)
cols = [c for c in ("name", "preset", "steps", "warmdown", "seed", "train_status", "float_live_bpb",
                    "float_ema_bpb", "int6_sliding_bpb", "artifact_bytes") if c in df.columns]
df[cols]
