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
# in 12 and 13) and the same validation targets, and compare the TTT gain (TTT bpb − sliding bpb
# of the same weights), the TTT wall time and the peak memory. `doc_local` is the reference for
# the per-document families: document-local scoring with no adaptation, which separates the cost
# of losing cross-document context from the gain of adapting.

# %% tags=["parameters"]
preset = "tiny"                # model family: tiny | small | gepa11 | baseline9
scale = "cpu"                  # cpu (2-core defaults) | quick (smoke test) | full (the preset as it is)
overrides = {}                 # any other config field, e.g. {"model_dim": 192}
nproc = 1                      # processes per run (torchrun --nproc-per-node)
data_dir = "data/sotu_sp1024"  # the embedded dataset; data/fineweb10B_sp1024 for the real one
runs_root = "runs"             # content-addressed run directories: finished runs are reused
figures_dir = "figures"
ladder_steps = [100, 200, 300, 400]  # training lengths; the longest is the base (shared with 10-14)
warmdown_frac = 0.4            # the submission: 8,000 of 20,000 steps
ladder_warmdown: "Optional[list[int]]" = None  # warmdown steps per rung instead of the fraction
val_every = 20                 # validation interval in steps, the same for every run
seeds = [42, 43]
ttt_val_tokens: "Optional[int]" = 16384  # val targets every family scores (15 SOTU documents); None: the run's own
ttt_scoring = "streaming"      # how every family scores: streaming (cheap on a CPU) | sliding (as the submission)
phase_docs = [5, 10]           # phase boundaries (in documents) of the phased families
families = {
    # the submission's TTT with PR #461's settings; 512-target chunks: 32 chunks of 16,384 targets
    "full": {"ttt_family": "full", "ttt_optimizer": "sgd", "ttt_lr": 0.002, "ttt_momentum": 0.9, "ttt_epochs": 3,
             "ttt_freeze_blocks": 1, "ttt_chunk_tokens": 512},
    # PR #1530's shape (AdamW beta1 0, 64-target chunks, one step each) at tiny's scale: rank 8; the LR
    # is the best of 1e-3 .. 3e-2 on seed 42's base (3e-2 diverges)
    "lora_doc": {"ttt_family": "lora_doc", "ttt_lora_rank": 8, "ttt_lora_lr": 0.01, "ttt_lora_chunk_tokens": 64,
                 "ttt_lora_batch_docs": 16},
    # PR #1610's global pass (SGD, momentum 0.9) over the scored prefix at each boundary; LR: the best
    # of 2e-3 .. 1e-1 on seed 42's base
    "phased": {"ttt_family": "phased", "ttt_phase_lr": 0.01, "ttt_phase_epochs": 2, "ttt_batch_seqs": 4,
               "ttt_freeze_blocks": 1},
    "phased+lora_doc": {"ttt_family": "phased+lora_doc", "ttt_lora_rank": 8, "ttt_lora_lr": 0.01,
                        "ttt_lora_chunk_tokens": 64, "ttt_lora_batch_docs": 16, "ttt_phase_lr": 0.01,
                        "ttt_phase_epochs": 2, "ttt_batch_seqs": 4, "ttt_freeze_blocks": 1},
    # reference: document-local scoring, no adaptation
    "doc_local": {"ttt_family": "lora_doc", "ttt_lora_steps": 0, "ttt_lora_chunk_tokens": 64,
                  "ttt_lora_batch_docs": 16},
}
cost_seeds = 1                 # bases (the first ones) on which wall time and peak memory are measured
dry_run = False                # True: print the runs, their torchrun commands and GPU-hours; train nothing

# %%
from gepalib import run
from gepalib.findings import families as FA
from gepalib.findings import plots as P
from gepalib.findings.report import save_finding
from gepalib.run.params import check_parameters
from gepalib.run.ttt_cost import ttt_cost

check_parameters(globals())  # a misspelt or mistyped parameter fails here, naming it
plan = run.plan_notebook("15_ttt_families", globals())  # every run and evaluation below
run.stop_if_dry_run(plan, dry_run)  # dry_run: print them with their GPU-hours, run nothing more

# %%
P.set_style()
run.ensure_data(data_dir)
base = run.base_config(preset, scale, data_dir, overrides)
settings = {name: {"ttt_scoring": ttt_scoring, **kv,
                   **({"ttt_phase_docs": tuple(phase_docs)} if kv["ttt_family"].startswith("phased") else {})}
            for name, kv in families.items()}

# %%
cfgs = plan.configs  # = run.longest_rung_configs(base, ladder_steps, warmdown_frac, seeds, val_every,
#                                            ladder_warmdown)
rds = run.launch_many(cfgs, nproc=nproc, runs_root=runs_root)
rows = {name: [run.ensure_stages(rd, sliding=True, ttt=True, nproc=nproc, val_tokens=ttt_val_tokens, **kv)
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
# Welch over the seeds' TTT gains, with the 95% interval and minimum detectable effect against
# the published difference scaled to our gains (gepalib.findings.families). Fewer than 3 seeds,
# a TTT gain below noise or an MDE above the expected effect give "inconclusive (underpowered)".

# %%
verdicts = [FA.verdict_family(gains, e) for e in ("E1", "E2")]
for v in verdicts:
    save_finding(v, figures_dir, scale=scale, preset=preset, seeds=seeds, gains=gains, settings=settings,
                 costs=costs)
print("\n".join(v["text"] for v in verdicts))
# Full-scale parameters for notebooks/15_ttt_families.ipynb (GPUs, FineWeb):
#   papermill notebooks/15_ttt_families.ipynb out.ipynb -f notebooks/15_ttt_families.gpu.yaml
#   gepa reproduce --notebooks 15_ttt_families --parameters notebooks/15_ttt_families.gpu.yaml
