# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 14 · F5: TTT's share of the gain shrinks as the base improves
#
# Share = (base − final) / (baseline − final). The submission: 22% at 5.2k steps down to 13%
# at 20k against the naive baseline 1.224. We evaluate every ladder rung with TTT and
# measure a same-scale naive baseline: the same model with the GEPA features off
# (`run.baseline_config`) and a short training budget (`baseline_steps`). With `share_base =
# "int6_streaming"` the TTT gain is isolated from quantization and the scoring; set
# `"float_live"` for the submission's float→final definition.

# %% tags=["parameters"]
from typing import Optional
preset: str = "tiny"                  # model family: tiny | small | gepa11 | baseline9
scale: str = "cpu"                    # cpu (2-core defaults) | quick (smoke test) | full (the preset as it is)
overrides: dict = {}                  # any other config field, e.g. {"model_dim": 192}
nproc: int = 1                        # processes per run (torchrun --nproc-per-node)
data_dir: str = "data/sotu_sp1024"    # the embedded dataset; data/fineweb10B_sp1024 for the real one
runs_root: str = "runs"               # content-addressed run directories: finished runs are reused
figures_dir: str = "figures"
ladder_steps: list[int] = [450, 600, 750, 1000]  # training lengths (shared by 10-16); the longest is the base model
warmdown_frac: float = 0.4            # the submission: 8,000 of 20,000 steps (used where ladder_warmdown is None)
ladder_warmdown: Optional[list[int]] = [200, 250, 300, 400]  # per rung, as the submission's 4k/5k/6k/8k of 9k/12k/15k/20k
val_every: int = 25                   # validation interval in steps, the same for every run
seed: int = 42
sgd: dict = {"ttt_optimizer": "sgd", "ttt_lr": 0.002, "ttt_momentum": 0.9, "ttt_epochs": 3, "ttt_freeze_blocks": 1,
             "ttt_chunk_tokens": 4096}  # PR #461's SGD: where the held-out sweep starts (as 12's, so runs are shared)
sweep_lrs: dict = {"sgd": [0.005, 0.01, 0.02, 0.04]}  # SGD's LRs tried on the held-out slice (as 12's); {}: no sweep
sweep_chunk_tokens: list[int] = [2048, 4096]  # tried at SGD's best LR (as 12's)
sweep_epochs: list[int] = [1, 3]      # then tried at the best chunk size (as 12's)
ttt_val_tokens: Optional[int] = 131072  # scored val targets (32 chunks of 4,096); None: the run's own
ttt_scoring: str = "streaming"        # streaming (cheap on a CPU) | sliding (as the submission)
share_base: str = "int6_streaming"    # int6_streaming (with streaming TTT) | int6_sliding | float_live | float_ema | int6_roundtrip
baseline_bpb: Optional[float] = None  # None: measure a same-scale baseline; 1.224 at full scale
baseline_steps: int = 450             # training steps of the same-scale baseline (the shortest rung)
dry_run: bool = False                 # True: print the runs, their torchrun commands and GPU-hours; train nothing

# %% tags=["plan"]
from gepalib import run

run.check_parameters(globals())  # a misspelt or mistyped parameter fails here, naming it
plan = run.Plan(nproc=nproc, runs_root=runs_root, findings=["F5"])  # every run and evaluation below
base = run.base_config(preset, scale, data_dir, overrides)
cfgs = plan.train(run.ladder_configs(base, ladder_steps, warmdown_frac, seeds=[seed], val_every=val_every,
                                     warmdowns=ladder_warmdown))
stream = ttt_scoring == "streaming"
for c in cfgs:  # priced at sgd's settings; the sweep below may retune them
    plan.evaluate(c, "stages", sliding=not stream, streaming=stream, ttt=True, label="ttt", val_tokens=ttt_val_tokens,
                  **sgd, ttt_scoring=ttt_scoring)
bcfg = None
if baseline_bpb is None:  # the same-scale naive baseline: GEPA's features off, a short budget
    bcfg = plan.train(run.baseline_config(run.with_length(base, baseline_steps, warmdown_frac, val_every, seed=seed)),
                      name="baseline")
    plan.evaluate(bcfg, "stages", sliding=not stream, streaming=stream, label="baseline", val_tokens=ttt_val_tokens)
run.stop_if_dry_run(plan, dry_run)  # dry_run: print them with their GPU-hours, run nothing more

# %%
from gepalib import findings as F
from gepalib.findings import calplots as C
from gepalib.findings import plots as P
from gepalib.findings import reference as R
from gepalib.findings.report import save_finding
from gepalib.run import study

P.set_style()
run.ensure_data(data_dir)
rds = run.launch_many(cfgs, nproc=nproc, runs_root=runs_root)
longest_rd = rds[max(range(len(cfgs)), key=lambda i: cfgs[i].train.steps)]

# %% [markdown]
# ## Calibration: SGD's settings from the held-out sweep (shared with 12 and 13), and the regime

# %%
tuned, sweep_rows = study.tune_ttt(longest_rd, {"sgd": sgd}, sweep_lrs, chunk_tokens=sweep_chunk_tokens,
                                   epochs=sweep_epochs, scored=ttt_val_tokens)
ttt = {**tuned["sgd"], "ttt_scoring": ttt_scoring}
if sweep_rows:
    fig = C.ttt_sweep_figure(sweep_rows, {"sgd": F.choose_setting(sweep_rows)},
                             title="F5 calibration — held-out TTT sweep (SGD)")
    P.save_figure(fig, "F5_calibration", figures_dir)
rows = [run.ensure_stages(rd, sliding=not stream, streaming=stream, ttt=True, nproc=nproc, val_tokens=ttt_val_tokens,
                          **ttt) for rd in rds]
cal = F.ttt_regime([r["ttt"] for r in rows], [run.ttt_gain(r) for r in rows])  # the counts of what ran
print(F.regime_summary(cal))
float_bpb = [run.stage_bpb(rd, share_base, r) for rd, r in zip(rds, rows)]
final_bpb = [r["ttt"]["val_bpb"] for r in rows]
list(zip(ladder_steps, float_bpb, final_bpb))

# %%
if bcfg is not None:
    brd = run.launch(bcfg, nproc=nproc, runs_root=runs_root)
    baseline = run.stage_bpb(brd, share_base, run.ensure_stages(brd, sliding=not stream, streaming=stream,
                                                             nproc=nproc, val_tokens=ttt_val_tokens))
else:
    baseline = float(baseline_bpb)
share = F.ttt_share(float_bpb, final_bpb, baseline)
fig = P.ttt_share_figure(share, point_labels=[f"{c.train.steps}" for c in cfgs], base=share_base)
P.save_figure(fig, "F5_ttt_share", figures_dir)
R.f5_df()

# %% [markdown]
# Published evidence from later PRs that bears on this finding (each number as its PR gives it).

# %%
R.evidence_df("F5")

# %% [markdown]
# ## Verdict (computed)
# The slope of the TTT share on log(total gain) over the ladder, with its 95% interval and minimum
# detectable effect; the expected effect is the published slope (PR #628, 22% → 13%) relative to
# its mean share, times ours, and the magnitude line compares the relative slopes. Beside it, the
# TTT gain's own trend: a share of a constant gain falls as the total grows, so a falling share
# says most where the gain itself falls too.
# The rule, the same for every finding (docs/study.md): **agrees** if the interval lies below 0,
# on the finding's side; **does not agree** if it lies above 0, or holds 0 but excludes the
# expected effect computed from a published number; otherwise **inconclusive**, with the MDE
# (and inconclusive too outside the regime, with fewer than 3 seeds or a TTT gain below noise).

# %%
verdict = F.verdict_f5(share, regime=cal["blockers"])
save_finding(verdict, figures_dir, scale=scale, preset=preset, steps=[c.train.steps for c in cfgs],
             settings=ttt, calibration=cal, runs=run.relative_paths(rds),
             float_bpb=float_bpb, final_bpb=final_bpb, baseline_bpb=baseline, share_base=share_base,
             share=share["share"].tolist())
print(verdict["text"])
