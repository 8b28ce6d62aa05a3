#!/usr/bin/env python
"""Write notebooks/*.ipynb (output-free) and their full-scale notebooks/*.gpu.yaml.

    .venv/bin/python scripts/make_notebooks.py          # regenerate
    .venv/bin/python scripts/make_notebooks.py --check  # exit 1 if the committed files differ

The notebooks are thin: every computation is a gepalib call. Their parameters cells
share one vocabulary (preset, scale, overrides, nproc, data_dir, runs_root,
figures_dir, ladder_steps, warmdown_frac, val_every, seeds, TTT settings) with the same
defaults, so the runs they ask for coincide and are trained once (gepalib.runs is
content-addressed).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
import yaml
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"

# ---------------------------------------------------------------------------
# Parameters: CPU defaults (in the notebooks) and full scale (the .gpu.yaml files)

COMMON = '''preset = "tiny"                # model family: tiny | small | gepa11 | baseline9
scale = "cpu"                  # cpu (2-core defaults) | quick (smoke test) | full (the preset as it is)
overrides = {}                 # any other config field, e.g. {"model_dim": 192}
nproc = 1                      # processes per run (torchrun --nproc-per-node)
data_dir = "data/sotu_sp1024"  # the embedded dataset; data/fineweb10B_sp1024 for the real one
runs_root = "runs"             # content-addressed run directories: finished runs are reused
figures_dir = "figures"'''

LADDER = '''ladder_steps = [100, 200, 300, 400]  # training lengths (one run each, shared by 10, 11 and 14)
warmdown_frac = 0.4            # the submission: 8,000 of 20,000 steps
ladder_warmdown = None         # warmdown steps per rung instead of the fraction (full scale: 4k/5k/6k/8k)
val_every = 20                 # validation interval in steps, the same for every run'''

SGD = '''sgd = {"ttt_optimizer": "sgd", "ttt_lr": 0.002, "ttt_momentum": 0.9, "ttt_epochs": 3,
       "ttt_freeze_blocks": 1}  # PR #461: SGD 0.002, 3 epochs, freeze 2 of 11 (~18%: 1 of tiny's 6)'''

TTT_VAL = '''ttt_val_tokens = 32768          # val targets the TTT evaluations score (8 chunks); None: the run's own'''

ADAMW = '''adamw = {"ttt_optimizer": "adamw", "ttt_lr": 5e-05, "ttt_epochs": 1,
         "ttt_freeze_blocks": 0}  # PR #456: AdamW 5e-5, 1 epoch, nothing frozen'''

TTT14 = '''ttt = {"ttt_optimizer": "sgd", "ttt_lr": 0.002, "ttt_momentum": 0.9, "ttt_epochs": 3,
       "ttt_freeze_blocks": 1}  # the final TTT of every rung (= 12's sgd, so rows are shared)'''

FULL_COMMON = {"preset": "gepa11", "scale": "full", "overrides": {}, "nproc": 8,
               "data_dir": "data/fineweb10B_sp1024"}
FULL_LADDER = {"ladder_steps": [9000, 12000, 15000, 20000], "warmdown_frac": 0.4,
               "ladder_warmdown": [4000, 5000, 6000, 8000], "val_every": 500}  # SPEC §6 scaling table
FULL_SGD = {"sgd": {"ttt_optimizer": "sgd", "ttt_lr": 0.002, "ttt_momentum": 0.9, "ttt_epochs": 3,
                    "ttt_freeze_blocks": 2}}
FULL_ADAMW = {"adamw": {"ttt_optimizer": "adamw", "ttt_lr": 5e-05, "ttt_epochs": 1, "ttt_freeze_blocks": 0}}
# TTT comparisons at full scale score the first 8,388,608 val targets (256 chunks; the whole set
# takes ~35 min per TTT evaluation on 4 A100s); the setting travels with every stage row.
FULL_TTT_VAL = {"ttt_val_tokens": 8388608}

SETUP = '''from gepalib import findings as F
from gepalib.findings import plots as P
from gepalib.findings import reference as R
from gepalib import runs
from gepalib.reproduce import save_finding

P.set_style()
runs.ensure_data(data_dir)
base = runs.base_config(preset, scale, data_dir, overrides)'''


def params_cell(*blocks: str):
    c = new_code_cell("\n".join(blocks))
    c.metadata["tags"] = ["parameters"]
    return c


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str):
    return new_code_cell(text.strip("\n"))


# ---------------------------------------------------------------------------
# The notebooks

NOTEBOOKS: dict[str, dict] = {}

NOTEBOOKS["00_quickstart"] = {
    "cells": [
        md('''
# 00 · Quickstart: data → train → int6 artifact → stage ledger

The whole pipeline on the embedded State of the Union corpus in a few minutes on a CPU:
prepare the tokenized shards, train a `tiny` GEPA model under `torchrun`, export the
int6 + zstd-22 artifact (SPEC §4) and score it (SPEC §1, §5). Every step reuses what
already exists, so re-running this notebook is cheap.
'''),
        params_cell(COMMON, "steps = 100                    # training steps: the ladder's first rung",
                    "warmdown_frac = 0.4", "val_every = 20"),
        code(SETUP),
        md("## Train\nRank 0's output streams below; every rank's log is kept in `<run>/logs/`."),
        code('''cfg = runs.with_length(base, steps, warmdown_frac, val_every, seed=42)
rd = runs.launch(cfg, nproc=nproc, runs_root=runs_root)
rd'''),
        md("## Artifact and evaluation\nQuantize the EMA weights to int6, then score the artifact with "
           "non-overlapping windows and the stride-64 sliding window."),
        code('''rows = runs.evaluate(rd, sliding=True, nproc=nproc)
print(f"artifact_bytes:{runs.artifact_bytes(rd)}")'''),
        md("## Stage ledger\nfloat (live), float (EMA), int6 round-trip, int6 sliding: where the bits go."),
        code('''from gepalib.rundir import format_ledger

print(format_ledger(rd.stages()))
runs.stage_table(rd)'''),
    ],
    "gpu": {**FULL_COMMON, "steps": 20000, "val_every": 500},
}

NOTEBOOKS["01_train"] = {
    "cells": [
        md('''
# 01 · Train with torchrun

`gepalib.runs.launch` starts `python -m torch.distributed.run --nproc-per-node {nproc} -m gepalib.train`
with this notebook's interpreter. Rank 0 streams into the cell; all ranks' logs land in
`<run>/logs/torchrun/`; interrupting the cell stops the whole process group (the trainer
checkpoints, so launching again resumes). A finished run with the same config is reused.
'''),
        params_cell(COMMON, "steps = 400                    # training steps: the ladder's last rung",
                    "warmdown_frac = 0.4", "val_every = 20", "seed = 42"),
        code(SETUP),
        code('''cfg = runs.with_length(base, steps, warmdown_frac, val_every, seed=seed)
print(f"run_key:{runs.run_key(cfg)} steps:{cfg.train.steps} warmdown:{cfg.train.warmdown} "
      f"batch_tokens:{cfg.train.batch_tokens} seq_len:{cfg.train.seq_len}")
rd = runs.launch(cfg, nproc=nproc, runs_root=runs_root)'''),
        md("## Loss curve"),
        code('''metrics = runs.load_metrics(rd)
fig = P.training_curves_figure(metrics, title=f"{rd.path.name}: {cfg.train.steps} steps")
P.save_figure(fig, "01_training_curves", figures_dir)
metrics.dropna(subset=["val_bpb"])[["step", "train_loss", "val_bpb", "val_bpb_ema"]].tail(5)'''),
        md("## All runs so far"),
        code('''df = runs.load_runs(runs_root)
cols = [c for c in ("name", "preset", "steps", "warmdown", "seed", "train_status", "float_live_bpb",
                    "float_ema_bpb", "int6_sliding_bpb", "artifact_bytes") if c in df.columns]
df[cols]'''),
    ],
    "gpu": {**FULL_COMMON, "steps": 20000, "val_every": 500, "seed": 42},
}

NOTEBOOKS["02_artifact_and_eval"] = {
    "cells": [
        md('''
# 02 · Artifact and evaluation

The int6 GPTQ-lite export (SPEC §4): the size ledger against the 16,000,000-byte rule and
a compression report (zstd-22 vs rANS and the entropy bounds); then the evaluations of
SPEC §5: non-overlapping, stride-64 sliding window, and legal score-first TTT.
Uses the run of `01_train` (same parameters → same run).
'''),
        params_cell(COMMON, "steps = 400                    # the run of 01_train",
                    "warmdown_frac = 0.4", "val_every = 20", "seed = 42"),
        code(SETUP),
        code('''cfg = runs.with_length(base, steps, warmdown_frac, val_every, seed=seed)
rd = runs.launch(cfg, nproc=nproc, runs_root=runs_root)
runs.quantize(rd)'''),
        md("## Size ledger and compression report"),
        code('''from gepalib.quant import artifact as A

ledger = A.size_ledger(runs.artifact_bytes(rd), A.code_bytes(cfg.quant.compressor))
print("\\n".join(A.kv_lines(ledger, "size.")))
report = A.compression_report(A.load_artifact(rd.artifact), methods="fast")
import pandas as pd
pd.DataFrame(report["methods"]).T'''),
        code('''pd.Series(report["bounds"])'''),
        md("## Sliding window and legal TTT\nTTT uses the run's own settings (SGD, score-first, chunked)."),
        code('''rows = runs.evaluate(rd, sliding=True, ttt=True, nproc=nproc)
print(f"ttt_gain_bpb:{runs.ttt_gain(rows):+.5f}")
table = runs.stage_table(rd)
table'''),
        code('''ax = table.set_index("stage")["val_bpb"].plot.barh(figsize=(6, 3))
ax.set_xlabel("val_bpb")
ax.set_xlim(table["val_bpb"].min() - 0.05, table["val_bpb"].max() + 0.02)
P.save_figure(ax.figure, "02_stage_ledger", figures_dir)'''),
    ],
    "gpu": {**FULL_COMMON, "steps": 20000, "val_every": 500, "seed": 42},
}

NOTEBOOKS["10_warmdown"] = {
    "cells": [
        md('''
# 10 · F1: warmdown is a first-class variable

The submission's 20k-step trajectory improves −16.2 mBPB/kstep early, −2.0 on the late
plateau and −12.6 in the warmdown (≈6× the plateau). We train the longest rung of the
ladder (40% warmdown) with each seed, average the validation curves, and compute the same
per-phase rates with `gepalib.findings.phase_rates` (phase boundaries scaled to the run).
'''),
        params_cell(COMMON, LADDER, "seeds = [42, 43]"),
        code(SETUP),
        code('''cfgs = runs.longest_rung_configs(base, ladder_steps, warmdown_frac, seeds, val_every, ladder_warmdown)
longest = cfgs[0].train.steps
rds = runs.launch_many(cfgs, nproc=nproc, runs_root=runs_root)'''),
        code('''steps, bpb, per_seed = runs.mean_trajectory(rds, "val_bpb")
warmdown = cfgs[0].train.warmdown
rates = F.phase_rates(steps, bpb, total_steps=longest, warmdown=warmdown)
seed_ratios = [F.phase_rates(steps, v, total_steps=longest, warmdown=warmdown)["warmdown_to_plateau_ratio"]
               for v in per_seed]
print("per-seed warmdown/plateau ratios:", [round(r, 2) for r in seed_ratios])
F.phase_table(rates)'''),
        md("The published phases, for comparison:"),
        code('R.f1_df()'),
        code('''fig = P.warmdown_figure(steps, bpb, rates, label=f"ours (mean of {len(seeds)} seeds)")
P.save_figure(fig, "F1_warmdown", figures_dir)'''),
        md("## Verdict (computed)"),
        code('''verdict = F.verdict_f1(rates)
save_finding(verdict, figures_dir, scale=scale, preset=preset, steps=longest, warmdown=warmdown, seeds=seeds,
             per_seed_ratio=seed_ratios, runs=[str(r.path) for r in rds])
print(verdict["text"])'''),
    ],
    "gpu": {**FULL_COMMON, **FULL_LADDER, "seeds": [42]},
}

NOTEBOOKS["11_compressibility"] = {
    "cells": [
        md('''
# 11 · F2: better-trained models compress smaller

The submission's artifact shrinks from 14.94 MiB (9k steps) to 14.29 MiB (20k): longer
training with a long warmdown leaves weights that zstd compresses better. We quantize every
rung of the training-length ladder and fit size against steps (`findings.compressibility`).
'''),
        params_cell(COMMON, LADDER, "seed = 42"),
        code(SETUP),
        code('''cfgs = runs.ladder_configs(base, ladder_steps, warmdown_frac, seeds=[seed], val_every=val_every,
                           warmdowns=ladder_warmdown)
rds = runs.launch_many(cfgs, nproc=nproc, runs_root=runs_root)
for rd in rds:
    runs.quantize(rd)
df = runs.load_runs(rds)[["name", "steps", "warmdown", "float_live_bpb", "float_ema_bpb", "artifact_bytes"]]
df'''),
        code('''comp = F.compressibility(df["steps"], df["artifact_bytes"], df["float_live_bpb"])
fig = P.compressibility_figure(df["steps"], df["artifact_bytes"], comp)
P.save_figure(fig, "F2_compressibility", figures_dir)
R.f2_df()'''),
        md("## Verdict (computed)"),
        code('''verdict = F.verdict_f2(comp)
save_finding(verdict, figures_dir, scale=scale, preset=preset, steps=df["steps"].tolist(),
             artifact_bytes=df["artifact_bytes"].tolist(), float_bpb=df["float_live_bpb"].tolist())
print(verdict["text"])'''),
    ],
    "gpu": {**FULL_COMMON, **FULL_LADDER, "seed": 42},
}

NOTEBOOKS["12_sgd_vs_adamw"] = {
    "cells": [
        md('''
# 12 · F3: SGD beats AdamW for legal TTT

On the same base model the submission's line saw −0.017 bpb from SGD TTT (PR #461) and
−0.007 from AdamW (PR #456): 2.4×. We run both settings on each seed's base model (the
longest ladder rung) and compare the TTT gain (TTT bpb − sliding bpb of the same int6
weights) with a Welch t-test across seeds.
'''),
        params_cell(COMMON, LADDER, "seeds = [42, 43]", SGD, ADAMW, TTT_VAL),
        code(SETUP),
        code('''cfgs = runs.longest_rung_configs(base, ladder_steps, warmdown_frac, seeds, val_every, ladder_warmdown)
rds = runs.launch_many(cfgs, nproc=nproc, runs_root=runs_root)
settings = {"sgd": sgd, "adamw": adamw}
rows = {name: [runs.evaluate(rd, sliding=True, ttt=True, nproc=nproc, val_tokens=ttt_val_tokens, **kv)
               for rd in rds] for name, kv in settings.items()}
gains = {name: [runs.ttt_gain(r) for r in rs] for name, rs in rows.items()}
gains'''),
        code('''by_opt = F.ttt_gain_by_optimizer(gains, numerator="sgd", denominator="adamw")
fig = P.optimizer_figure(by_opt)
P.save_figure(fig, "F3_sgd_vs_adamw", figures_dir)
R.f3_df()'''),
        md("## Verdict (computed)"),
        code('''verdict = F.verdict_f3(by_opt)
save_finding(verdict, figures_dir, scale=scale, preset=preset, seeds=seeds, gains=gains, settings=settings)
print(verdict["text"])'''),
    ],
    "gpu": {**FULL_COMMON, **FULL_LADDER, "seeds": [42, 43], **FULL_SGD, **FULL_ADAMW, **FULL_TTT_VAL},
}

NOTEBOOKS["13_freezing"] = {
    "cells": [
        md('''
# 13 · F4: freezing early blocks regularizes TTT

The submission freezes the first 2 of 11 blocks during TTT and adapts the rest; it reports
no ablation. We measure the SGD TTT gain for several numbers of frozen leading blocks on
each seed's base model.
'''),
        params_cell(COMMON, LADDER, "seeds = [42, 43]", SGD, TTT_VAL,
                    "freeze_blocks = [0, 1, 2, 3]    # frozen leading blocks to compare"),
        code(SETUP),
        code('''cfgs = runs.longest_rung_configs(base, ladder_steps, warmdown_frac, seeds, val_every, ladder_warmdown)
rds = runs.launch_many(cfgs, nproc=nproc, runs_root=runs_root)
frozen, gains = [], []
for k in freeze_blocks:
    for rd in rds:
        r = runs.evaluate(rd, sliding=True, ttt=True, nproc=nproc, val_tokens=ttt_val_tokens,
                          **{**sgd, "ttt_freeze_blocks": k})
        frozen.append(k)
        gains.append(runs.ttt_gain(r))
list(zip(frozen, gains))'''),
        code('''vs_frozen = F.ttt_gain_vs_frozen(frozen, gains)
fig = P.freezing_figure(vs_frozen, num_layers=base.model.num_layers)
P.save_figure(fig, "F4_freezing", figures_dir)'''),
        md("## Verdict (computed)"),
        code('''verdict = F.verdict_f4(vs_frozen)
save_finding(verdict, figures_dir, scale=scale, preset=preset, seeds=seeds, frozen=frozen, gains=gains,
             num_layers=base.model.num_layers)
print(verdict["text"])'''),
    ],
    "gpu": {**FULL_COMMON, **FULL_LADDER, "seeds": [42, 43], **FULL_SGD, **FULL_TTT_VAL,
            "freeze_blocks": [0, 1, 2, 3, 4]},
}

NOTEBOOKS["14_ttt_share"] = {
    "cells": [
        md('''
# 14 · F5: TTT's share of the gain shrinks as the base improves

Share = (base − final) / (baseline − final). The submission: 22% at 5.2k steps down to 13%
at 20k against the naive baseline 1.224. We evaluate every ladder rung with TTT and
measure a same-scale naive baseline: the same model with the GEPA features off
(`runs.baseline_config`) and a short training budget (`baseline_steps`). With `share_base =
"int6_sliding"` the TTT gain is isolated from quantization and the sliding window; set
`"float_live"` for the submission's float→final definition.
'''),
        params_cell(COMMON, LADDER, "seed = 42", TTT14, TTT_VAL,
                    'share_base = "int6_sliding"    # int6_sliding | float_live | float_ema | int6_roundtrip\n'
                    'baseline_bpb = None            # None: measure a same-scale baseline; 1.224 at full scale\n'
                    'baseline_steps = 50            # training steps of the same-scale baseline'),
        code(SETUP),
        code('''cfgs = runs.ladder_configs(base, ladder_steps, warmdown_frac, seeds=[seed], val_every=val_every,
                           warmdowns=ladder_warmdown)
rds = runs.launch_many(cfgs, nproc=nproc, runs_root=runs_root)
rows = [runs.evaluate(rd, sliding=True, ttt=True, nproc=nproc, val_tokens=ttt_val_tokens, **ttt) for rd in rds]
float_bpb = [runs.stage_bpb(rd, share_base, r) for rd, r in zip(rds, rows)]
final_bpb = [r["ttt"]["val_bpb"] for r in rows]
list(zip(ladder_steps, float_bpb, final_bpb))'''),
        code('''if baseline_bpb is None:
    bcfg = runs.baseline_config(runs.with_length(base, baseline_steps, warmdown_frac, val_every, seed=seed))
    brd = runs.launch(bcfg, nproc=nproc, runs_root=runs_root)
    baseline = runs.stage_bpb(brd, share_base, runs.evaluate(brd, sliding=True, nproc=nproc,
                                                             val_tokens=ttt_val_tokens))
else:
    baseline = float(baseline_bpb)
share = F.ttt_share(float_bpb, final_bpb, baseline)
fig = P.ttt_share_figure(share, point_labels=[f"{c.train.steps}" for c in cfgs])
P.save_figure(fig, "F5_ttt_share", figures_dir)
R.f5_df()'''),
        md("## Verdict (computed)"),
        code('''verdict = F.verdict_f5(share)
save_finding(verdict, figures_dir, scale=scale, preset=preset, steps=[c.train.steps for c in cfgs],
             float_bpb=float_bpb, final_bpb=final_bpb, baseline_bpb=baseline, share_base=share_base,
             share=share["share"].tolist())
print(verdict["text"])'''),
    ],
    "gpu": {**FULL_COMMON, **FULL_LADDER, "seed": 42,
            "ttt": {"ttt_optimizer": "sgd", "ttt_lr": 0.002, "ttt_momentum": 0.9, "ttt_epochs": 10,
                    "ttt_freeze_blocks": 2},
            "ttt_val_tokens": None, "share_base": "float_live", "baseline_bpb": 1.224},
}


def build(name: str) -> nbformat.NotebookNode:
    nb = new_notebook(cells=NOTEBOOKS[name]["cells"])
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    for i, c in enumerate(nb.cells):
        c["id"] = f"{name[:2]}-{i:02d}"  # stable ids: regenerating gives identical files
    return nb


def render(name: str) -> tuple[str, str]:
    nb = build(name)
    nbformat.validate(nb)
    gpu = ("# Full-scale parameters for notebooks/%s.ipynb (GPUs, FineWeb):\n"
           "#   papermill notebooks/%s.ipynb out.ipynb -f notebooks/%s.gpu.yaml\n"
           "#   gepa reproduce --notebooks %s --parameters notebooks/%s.gpu.yaml\n" % ((name,) * 5))
    gpu += yaml.safe_dump(NOTEBOOKS[name]["gpu"], sort_keys=False)
    return nbformat.writes(nb) + "\n", gpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check that the files are up to date")
    args = ap.parse_args(argv)
    NB_DIR.mkdir(exist_ok=True)
    stale = []
    for name in NOTEBOOKS:
        text, gpu = render(name)
        for path, content in ((NB_DIR / f"{name}.ipynb", text), (NB_DIR / f"{name}.gpu.yaml", gpu)):
            if path.exists() and path.read_text(encoding="utf-8") == content:
                continue
            if args.check:
                stale.append(path.name)
            else:
                path.write_text(content, encoding="utf-8")
                print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("out of date (run scripts/make_notebooks.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
