# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 13 · F4: freezing early blocks regularizes TTT
#
# The submission freezes the first 2 of 11 blocks during TTT and adapts the rest; it reports
# no ablation. We measure the SGD TTT gain for several numbers of frozen leading blocks on
# each seed's base model.

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
seeds = [42, 43]
sgd = {"ttt_optimizer": "sgd", "ttt_lr": 0.002, "ttt_momentum": 0.9, "ttt_epochs": 3,
       "ttt_freeze_blocks": 1}  # PR #461: SGD 0.002, 3 epochs, freeze 2 of 11 (~18%: 1 of tiny's 6)
ttt_val_tokens: "Optional[int]" = 32768  # val targets the TTT evaluations score (8 chunks); None: the run's own
freeze_blocks = [0, 1, 2, 3]    # frozen leading blocks to compare
dry_run = False                # True: print the runs, their torchrun commands and GPU-hours; train nothing

# %%
from gepalib import run
from gepalib import findings as F
from gepalib.findings import plots as P
from gepalib.findings.report import save_finding
from gepalib.run.params import check_parameters

check_parameters(globals())  # a misspelt or mistyped parameter fails here, naming it
plan = run.plan_notebook("13_freezing", globals())  # every run and evaluation below
run.stop_if_dry_run(plan, dry_run)  # dry_run: print them with their GPU-hours, run nothing more

# %%
P.set_style()
run.ensure_data(data_dir)
base = run.base_config(preset, scale, data_dir, overrides)

# %%
cfgs = plan.configs  # = run.longest_rung_configs(base, ladder_steps, warmdown_frac, seeds, val_every,
#                                            ladder_warmdown)
rds = run.launch_many(cfgs, nproc=nproc, runs_root=runs_root)
frozen, gains = [], []
for k in freeze_blocks:
    for rd in rds:
        r = run.ensure_stages(rd, sliding=True, ttt=True, nproc=nproc, val_tokens=ttt_val_tokens,
                          **{**sgd, "ttt_freeze_blocks": k})
        frozen.append(k)
        gains.append(run.ttt_gain(r))
list(zip(frozen, gains))

# %%
vs_frozen = F.ttt_gain_vs_frozen(frozen, gains)
fig = P.freezing_figure(vs_frozen, num_layers=base.model.num_layers)
P.save_figure(fig, "F4_freezing", figures_dir)

# %% [markdown]
# ## Verdict (computed)
# Welch over the seeds' TTT gains (best freeze ≥ 1 − freeze 0, Bonferroni over the freezes tried),
# with its 95% interval and minimum detectable effect. The submission published no ablation, so the
# expected effect is a stated fraction of our best gain (`F.F4_EXPECTED_REL`).

# %%
verdict = F.verdict_f4(vs_frozen)
save_finding(verdict, figures_dir, scale=scale, preset=preset, seeds=seeds, frozen=frozen, gains=gains,
             num_layers=base.model.num_layers)
print(verdict["text"])
