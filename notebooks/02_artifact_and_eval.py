# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Artifact and evaluation
#
# The int6 GPTQ-lite export (docs/quantization.md): the size ledger against the 16,000,000-byte rule and
# a compression report (zstd-22 vs rANS and the entropy bounds); then the evaluations of
# docs/evaluation.md: non-overlapping, stride-64 sliding window, and legal score-first TTT.
# Uses the run of `01_train` (same parameters → same run).

# %% tags=["parameters"]
preset: str = "tiny"                  # model family: tiny | small | gepa11 | baseline9
scale: str = "cpu"                    # cpu (2-core defaults) | quick (smoke test) | full (the preset as it is)
overrides: dict = {}                  # any other config field, e.g. {"model_dim": 192}
nproc: int = 1                        # processes per run (torchrun --nproc-per-node)
data_dir: str = "data/sotu_sp1024"    # the embedded dataset; data/fineweb10B_sp1024 for the real one
runs_root: str = "runs"               # content-addressed run directories: finished runs are reused
figures_dir: str = "figures"
steps: int = 1000                     # the run of 01_train
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
plan.evaluate(cfg, "artifact")
plan.evaluate(cfg, "stages", sliding=True, ttt=True)
run.stop_if_dry_run(plan, dry_run)  # dry_run: print them with their GPU-hours, run nothing more

# %%
import pandas as pd

from gepalib.findings import plots as P
from gepalib.quant import report as QR
from gepalib.quant.artifact import load_artifact

P.set_style()
run.ensure_data(data_dir)

# %%
rd = run.launch(cfg, nproc=nproc, runs_root=runs_root)
run.ensure_artifact(rd)

# %% [markdown]
# ## Size ledger and compression report

# %%
ledger = QR.size_ledger(run.artifact_bytes(rd), QR.code_bytes(cfg.quant.compressor))
print("\n".join(QR.kv_lines(ledger, "size.")))
report = QR.compression_report(load_artifact(rd.artifact), methods="fast")
pd.DataFrame(report["methods"]).T

# %%
pd.Series(report["bounds"])

# %% [markdown]
# ## Sliding window and legal TTT
# TTT uses the run's own settings (SGD, score-first, chunked).

# %%
rows = run.ensure_stages(rd, sliding=True, ttt=True, nproc=nproc)
print(f"ttt_gain_bpb:{run.ttt_gain(rows):+.5f}")
table = run.stage_table(rd)
table

# %%
fig = P.stage_ledger_figure(table, title=f"{rd.path.name}: val_bpb per stage ({cfg.train.steps} steps)")
P.save_figure(fig, "02_stage_ledger", figures_dir)
