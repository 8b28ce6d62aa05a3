# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 10 · F1: warmdown is a first-class variable
#
# The submission's 20k-step trajectory improves −16.2 mBPB/kstep early, −2.0 on the late
# plateau and −12.6 in the warmdown (≈6× the plateau). The finding is about a run whose
# constant-LR phase has *plateaued*: only then is "the warmdown gains more than the plateau"
# a statement about the schedule. So we first **calibrate**: one run of the longest rung's
# length at constant LR shows where this scale plateaus (`F.f1_calibration`: the smoothed
# improvement rate falls below a third of the early rate), and the design's plateau phase must
# start after it. Then each seed trains the design (peak LR, then a linear warmdown of 40%),
# and the per-phase rates are compared as the submission did (`F.phase_rates`).

# %% tags=["parameters"]
from typing import Optional
preset: str = "tiny"                  # model family: tiny | small | gepa11 | baseline9
scale: str = "cpu"                    # cpu (2-core defaults) | quick (smoke test) | full (the preset as it is)
overrides: dict = {}                  # any other config field, e.g. {"model_dim": 192}
nproc: int = 1                        # processes per run (torchrun --nproc-per-node)
data_dir: str = "data/sotu_sp1024"    # the embedded dataset; data/fineweb10B_sp1024 for the real one
runs_root: str = "runs"               # content-addressed run directories: finished runs are reused
figures_dir: str = "figures"
ladder_steps: list[int] = [450, 600, 750, 1000]  # training lengths (shared by 10-16); the longest is F1's design
warmdown_frac: float = 0.4            # the submission: 8,000 of 20,000 steps (used where ladder_warmdown is None)
ladder_warmdown: Optional[list[int]] = [200, 250, 300, 400]  # per rung, as the submission's 4k/5k/6k/8k of 9k/12k/15k/20k
val_every: int = 25                   # validation interval in steps, the same for every run
seeds: list[int] = [42, 43, 44]
constant_steps: int = 1000            # calibration: the longest rung's length at constant LR (seed: the first of seeds); 0: skip
dry_run: bool = False                 # True: print the runs, their torchrun commands and GPU-hours; train nothing

# %% tags=["plan"]
from gepalib import run

run.check_parameters(globals())  # a misspelt or mistyped parameter fails here, naming it
plan = run.Plan(nproc=nproc, runs_root=runs_root, findings=["F1"])  # every run and evaluation below
base = run.base_config(preset, scale, data_dir, overrides)
cfgs = plan.train(run.longest_rung_configs(base, ladder_steps, warmdown_frac, seeds, val_every, ladder_warmdown))
const = plan.train(run.with_length(base, constant_steps, 0.0, val_every, seed=seeds[0], warmdown=0),
                   name="constant") if constant_steps else None
run.stop_if_dry_run(plan, dry_run)  # dry_run: print them with their GPU-hours, run nothing more

# %%
from gepalib import findings as F
from gepalib.findings import calplots as C
from gepalib.findings import plots as P
from gepalib.findings import reference as R
from gepalib.findings.report import save_finding

P.set_style()
run.ensure_data(data_dir)
longest, warmdown = cfgs[0].train.steps, cfgs[0].train.warmdown
rds = run.launch_many(cfgs, nproc=nproc, runs_root=runs_root)
const_rd = run.launch(const, nproc=nproc, runs_root=runs_root) if const else None
steps, bpb, per_seed = run.mean_trajectory(rds, "val_bpb")

# %% [markdown]
# ## Calibration: does this scale plateau at constant LR, and before the plateau phase?
# The phases are the submission's, scaled to the run (`F.phase_boundaries`): early from 5% of
# the steps, plateau from 58% of the peak phase, then the warmdown. Without a constant-LR run
# (`constant_steps = 0`) the peak-LR part of the seed-mean curve is used.

# %%
phases = F.phase_boundaries(longest, warmdown)
if const_rd is not None:
    cs, cb = run.mean_trajectory([const_rd], "val_bpb")[:2]
else:
    cs, cb = steps[steps <= longest - warmdown], bpb[steps <= longest - warmdown]
cal = F.f1_calibration(cs, cb, plateau_start=phases["plateau"][0], warmdown_start=phases["warmdown"][0])
print(F.regime_summary(cal))
print(f"plateau_detected_step:{cal['plateau_step']} plateau_phase_start:{phases['plateau'][0]:.0f} "
      f"early_rate:{cal['early_rate_mbpb_per_kstep']:.1f} late_rate:{cal['late_rate_mbpb_per_kstep']:.1f} mBPB/kstep")
fig = C.f1_calibration_figure((cs, cb), (steps, bpb), cal, label=f"design (mean of {len(seeds)} seeds)")
P.save_figure(fig, "F1_calibration", figures_dir)

# %% [markdown]
# ## Per-phase rates
# At the end of the constant-LR run the warmdown's effect is also visible directly: the same
# number of steps with and without the warmdown.

# %%
rates = F.phase_rates(steps, bpb, total_steps=longest, warmdown=warmdown)
seed_rates = [F.phase_rates(steps, v, total_steps=longest, warmdown=warmdown) for v in per_seed]
seed_ratios = [r["warmdown_to_plateau_ratio"] for r in seed_rates]
print("per-seed warmdown/plateau ratios:", [round(r, 2) for r in seed_ratios])
if const_rd is not None and const_rd.load_config().train.steps == longest:
    print(f"final val_bpb: constant LR {cb[-1]:.4f}, with warmdown {bpb[-1]:.4f} "
          f"({1000 * (bpb[-1] - cb[-1]):+.1f} mBPB)")
F.phase_table(rates)

# %% [markdown]
# The published phases, for comparison:

# %%
R.f1_df()

# %%
fig = P.warmdown_figure(steps, bpb, rates, label=f"ours (mean of {len(seeds)} seeds)")
P.save_figure(fig, "F1_warmdown", figures_dir)

# %% [markdown]
# ## Verdict (computed)
# Direction: a paired t test over the seeds of (warmdown rate − plateau rate), both phases of the
# same run, with its 95% interval and minimum detectable effect; the expected effect is the
# published ratio (12.6 / 2.0 mBPB/kstep, PR #628) applied to our plateau rate. Magnitude, a
# separate line: the per-seed ratio warmdown / plateau with its interval, against 6.3×.
# The rule, the same for every finding (docs/study.md): **agrees** if the interval lies below 0,
# on the finding's side; **does not agree** if it lies above 0, or holds 0 but excludes the
# expected effect computed from a published number; otherwise **inconclusive**, with the MDE
# (and inconclusive too outside the regime, with fewer than 3 seeds or a TTT gain below noise).

# %%
verdict = F.verdict_f1(seed_rates, regime=cal["blockers"])
save_finding(verdict, figures_dir, scale=scale, preset=preset, steps=longest, warmdown=warmdown, seeds=seeds,
             per_seed_ratio=seed_ratios, calibration={k: v for k, v in cal.items() if not k.startswith("rate")},
             runs=run.relative_paths(rds + ([const_rd] if const_rd is not None else [])))
print(verdict["text"])
