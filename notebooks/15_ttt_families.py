# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 15 · The challenge's TTT families on one base
#
# After the submission (full-model SGD TTT, PR #461 line) the challenge moved to **per-document
# LoRA TTT** (PR #1530: one low-rank adapter per document, reset at every document, base frozen)
# and then to **phased** TTT (PR #1610: after a prefix of documents is scored, one global SGD
# pass over that scored prefix updates the base weights). All of them are score-first; the
# families and their legality are described in docs/evaluation.md.
#
# We run every family on the same int6 base models (the ladder's longest rung, one per seed, as
# in 12 and 13) and the same validation targets, and compare the TTT gain (TTT bpb − the same
# scoring without TTT, same weights), the TTT wall time and the peak memory. `doc_local` is the reference for
# the per-document families: document-local scoring with no adaptation, which separates the cost
# of losing cross-document context from the gain of adapting.

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
seeds: list[int] = [42, 43, 44]
ttt_val_tokens: Optional[int] = 131072  # val targets every family scores (the study's regime); None: the run's own
ttt_scoring: str = "streaming"        # how every family scores: streaming (cheap on a CPU) | sliding (as the submission)
phase_docs: list[int] = [32, 64, 96]  # phase boundaries (in documents) of the phased families (three phases, as PR #1855)
families: dict = {
    # the submission's TTT (PR #461's SGD); with sweep_lrs its LR, chunk and epochs come from 12's held-out sweep
    "full": {"ttt_family": "full", "ttt_optimizer": "sgd", "ttt_lr": 0.002, "ttt_momentum": 0.9, "ttt_epochs": 3,
             "ttt_freeze_blocks": 1, "ttt_chunk_tokens": 4096},
    # PR #1530's shape (AdamW beta1 0, 64-target chunks, one step each) at tiny's scale: rank 8; with
    # family_sweeps the LR is chosen on the held-out slice
    "lora_doc": {"ttt_family": "lora_doc", "ttt_lora_rank": 8, "ttt_lora_lr": 0.01, "ttt_lora_chunk_tokens": 64,
                 "ttt_lora_batch_docs": 16},
    # PR #1610's global pass (SGD, momentum 0.9) over the scored prefix at each boundary; with
    # family_sweeps the LR is chosen on the held-out slice
    "phased": {"ttt_family": "phased", "ttt_phase_lr": 0.01, "ttt_phase_epochs": 2, "ttt_batch_seqs": 4,
               "ttt_freeze_blocks": 1},
    "phased+lora_doc": {"ttt_family": "phased+lora_doc", "ttt_lora_rank": 8, "ttt_lora_lr": 0.01,
                        "ttt_lora_chunk_tokens": 64, "ttt_lora_batch_docs": 16, "ttt_phase_lr": 0.01,
                        "ttt_phase_epochs": 2, "ttt_batch_seqs": 4, "ttt_freeze_blocks": 1},
    # reference: document-local scoring, no adaptation
    "doc_local": {"ttt_family": "lora_doc", "ttt_lora_steps": 0, "ttt_lora_chunk_tokens": 64,
                  "ttt_lora_batch_docs": 16},
}
sweep_lrs: dict = {"sgd": [0.005, 0.01, 0.02, 0.04]}  # the full family's SGD sweep (as 12's, cached); {}: as given
sweep_chunk_tokens: list[int] = [2048, 4096]  # (as 12's)
sweep_epochs: list[int] = [1, 3]      # (as 12's)
family_sweeps: dict = {"lora_doc": {"ttt_lora_lr": [0.003, 0.01, 0.03]},
                       "phased": {"ttt_phase_lr": [0.003, 0.01, 0.03]}}  # held-out sweeps; phased+lora_doc takes both; {}: as given
cost_seeds: int = 1                   # bases (the first ones) on which wall time and peak memory are measured
dry_run: bool = False                 # True: print the runs, their torchrun commands and GPU-hours; train nothing

# %% tags=["plan"]
from gepalib import run

run.check_parameters(globals())  # a misspelt or mistyped parameter fails here, naming it
plan = run.Plan(nproc=nproc, runs_root=runs_root, findings=["E1", "E2"])  # every run and evaluation below
base = run.base_config(preset, scale, data_dir, overrides)
cfgs = plan.train(run.longest_rung_configs(base, ladder_steps, warmdown_frac, seeds, val_every, ladder_warmdown))
settings = {name: {"ttt_scoring": ttt_scoring, **kv,
                   **({"ttt_phase_docs": tuple(phase_docs)} if kv["ttt_family"].startswith("phased") else {})}
            for name, kv in families.items()}
stream = ttt_scoring == "streaming"
for fam, kv in settings.items():  # priced at these settings; the held-out sweeps below may retune them
    for c in cfgs:
        plan.evaluate(c, "stages", sliding=not stream, streaming=stream, ttt=True, label=fam,
                      val_tokens=ttt_val_tokens, **kv)
for fam, kv in settings.items():  # the cost probes: each family's TTT once more on the first cost_seeds bases
    for c in cfgs[:cost_seeds]:
        plan.evaluate(c, "ttt_cost", ttt=True, label=f"{fam} (cost probe)", val_tokens=ttt_val_tokens, **kv)
run.stop_if_dry_run(plan, dry_run)  # dry_run: print them with their GPU-hours, run nothing more

# %%
from gepalib.findings import families as FA
from gepalib.findings import plots as P
from gepalib.findings.report import save_finding
from gepalib.run import study
from gepalib.run.ttt_cost import ttt_cost

P.set_style()
run.ensure_data(data_dir)
rds = run.launch_many(cfgs, nproc=nproc, runs_root=runs_root)

# %% [markdown]
# ## Calibration: every family's LR chosen on the held-out slice
# The full family takes 12's SGD sweep (cached); each per-document and phased family sweeps its
# own LR on the same held-out slice (targets 262,144 onwards, never scored here).

# %%
chosen = {}
if sweep_lrs:
    tuned, _ = study.tune_ttt(rds[0], {"sgd": families["full"]}, sweep_lrs, chunk_tokens=sweep_chunk_tokens,
                              epochs=sweep_epochs, scored=ttt_val_tokens)
    settings["full"] = {**settings["full"], **tuned["sgd"]}
for fam, grid in family_sweeps.items():
    for field, values in grid.items():
        extra = {"ttt_phase_docs": tuple(phase_docs)} if fam.startswith("phased") else {}
        sweep_rows = study.ttt_sweep(rds[0], [{**families[fam], **extra, field: v} for v in values],
                                     scored=ttt_val_tokens)
        chosen[(fam, field)] = min(sweep_rows, key=lambda r: r["val_bpb"])[field]
        print(f"{fam}: {field} held-out gains (mBPB):",
              {r[field]: round(1000 * r["gain"], 2) for r in sweep_rows}, "chosen", chosen[(fam, field)])
for (fam, field), v in chosen.items():  # the composite takes each part's choice
    for name in settings:
        if field in families[name] and (name == fam or name == "phased+lora_doc"):
            settings[name] = {**settings[name], field: v}

# %%
rows = {name: [run.ensure_stages(rd, sliding=not stream, streaming=stream, ttt=True, nproc=nproc,
                                 val_tokens=ttt_val_tokens, **kv)
               for rd in rds] for name, kv in settings.items()}
gains = {name: [run.ttt_gain(r) for r in rs] for name, rs in rows.items()}
{name: [f"{1000 * g:+.2f} mBPB" for g in gs] for name, gs in gains.items()}

# %% [markdown]
# ## Cost
# Wall time and peak memory of each family's TTT evaluation, measured again on the first
# `cost_seeds` base(s) in this process (gepalib.run.ttt_cost: on a CPU the growth of the peak
# resident set during the call, its high-water mark reset at the start; on a GPU
# `torch.cuda.max_memory_allocated`). The ledger's seconds come from the stage rows.

# %%
costs = {name: [ttt_cost(rd, val_tokens=ttt_val_tokens, **kv) for rd in rds[:cost_seeds]]
         for name, kv in settings.items()}
table = FA.family_table(gains, {n: [r["ttt"]["val_bpb"] for r in rs] for n, rs in rows.items()},
                        {n: [r["ttt"]["seconds"] for r in rs] for n, rs in rows.items()}, costs)
fig = FA.families_figure(table)
P.save_figure(fig, "E_ttt_families", figures_dir)
table

# %% [markdown]
# ## Verdicts (computed)
# E1: per-document LoRA against full-model SGD; E2: the phased pass on top of per-document LoRA.
# A paired t test over the seeds' TTT gains (every family adapts the same seed's base on the same
# scored tokens), with the 95% interval and minimum detectable effect; the expected effect is the
# published difference scaled to our gains (gepalib.findings.families). The rule (docs/study.md):
# agrees if the interval lies below 0; does not agree if it lies above 0 or excludes the expected
# effect; otherwise inconclusive, and inconclusive with fewer than 3 seeds or a gain below noise.

# %%
verdicts = [FA.verdict_family(gains, e) for e in ("E1", "E2")]
for v in verdicts:
    save_finding(v, figures_dir, scale=scale, preset=preset, seeds=seeds, gains=gains, settings=settings,
                 costs=costs, runs=run.relative_paths(rds))
print("\n".join(v["text"] for v in verdicts))
# Full-scale parameters for notebooks/15_ttt_families.ipynb (GPUs, FineWeb):
#   papermill notebooks/15_ttt_families.ipynb out.ipynb -f notebooks/15_ttt_families.gpu.yaml
#   gepa reproduce --notebooks 15_ttt_families --parameters notebooks/15_ttt_families.gpu.yaml
