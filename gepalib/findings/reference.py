"""The submission's published numbers as data, with their sources.

Everything a notebook compares against lives here, once: the PR #628 headline,
the scaling table, the live-weight training trajectory, the tables behind the
five findings and the naive baseline. Values are copied exactly as the PRs give
them. Where a table shows a rounded value and a more precise one exists (the
"(1.1268)" style entries), both are kept: ``*_precise`` fields hold the precise
value or ``None``. Rounded-ness is recorded per column in :data:`ROUNDING`.

Plain Python structures are module constants (tuples of dicts, dicts); the
``*_df()`` functions return fresh pandas DataFrames of the same data.

Sources are given as "PR #N <document>" (the PRs are in openai/parameter-golf;
the #628 folder is records/track_non_record_16mb/2026-03-24_11L_GEPA_20kSteps_
PureInt6_LegalTTT/). "MB" in the PRs means MiB (2**20 bytes), see docs/quantization.md.
"""
from __future__ import annotations

from typing import Any

MIB = 2**20

SRC_628_README = "PR #628 README.md"
SRC_628_LOG = "PR #628 train.log"
SRC_628_SUBMISSION = "PR #628 submission.json / README Key Numbers"

# ---------------------------------------------------------------------------
# Headline (PR #628), checked against the artifact and evaluation rules
# (docs/quantization.md, docs/evaluation.md)

HEADLINE: dict[str, Any] = {
    "val_bpb": 1.09826483,  # final legal-TTT score (sliding window, stride 64)
    "val_loss": 1.854369,  # nats per token, same evaluation
    "float_bpb": 1.1153,  # live weights at step 20k, non-sliding (log, 4 decimals)
    "int6_pre_ttt_bpb_estimate": 1.142,  # "~1.142": an estimate, never measured in #628
    "ttt_gain_quant_to_final": -0.044,  # uses the unmeasured 1.142 estimate
    "ttt_gain_float_to_final": -0.017,  # 1.1153 -> 1.0983, rounded to 3 decimals
    "params": 27_030_107,
    "trainable_ttt_params": 22_301_259,  # freeze blocks 0-1 (docs/evaluation.md)
    "frozen_ttt_params": 4_728_848,
    "model_bytes": 14_907_461,  # zstd-22 compressed torch.save payload
    "code_bytes": 78_281,  # UTF-8 bytes of train_gpt.py
    "artifact_bytes": 14_985_742,  # model + code, the challenge size rule
    "artifact_limit_bytes": 16_000_000,  # decimal, repo README size rule
    "raw_payload_bytes": 27_530_604,
    "torch_save_bytes": 27_595_991,
    "steps": 20_000,
    "peak_steps": 12_000,
    "warmdown": 8_000,
    "train_seconds": 10_011,  # 4xA100-40GB
    "eval_seconds": 2_066,  # whole TTT eval: scoring 969k windows + 18,920 SGD steps
    "ttt_chunks": 1_893,
    "ttt_steps": 18_920,  # 1,892 trained chunks x 10 epochs
    "sliding_windows": 969_088,
    "val_targets": 62_021_632,  # 30,284 x 2048
    "seed": 42,
}

_LOG_S6 = SRC_628_LOG
_LOG_S4 = SRC_628_LOG + ", docs/quantization.md"
_LOG_S5 = SRC_628_LOG + ", docs/evaluation.md"
HEADLINE_SOURCES: dict[str, str] = {
    "val_bpb": _LOG_S6 + " (final legal-TTT eval; the PR title rounds it to 1.0983)",
    "val_loss": _LOG_S6 + " (final legal-TTT eval)",
    "float_bpb": _LOG_S6 + " (periodic val at step 20000, live weights)",
    "int6_pre_ttt_bpb_estimate": SRC_628_README + " (\"~1.142\": an estimate, not measured)",
    "ttt_gain_quant_to_final": "PR #628 description (\"-0.044 BPP gain\"; relative to the ~1.142 estimate)",
    "ttt_gain_float_to_final": SRC_628_README,
    "params": _LOG_S6 + " (as run; docs/choices.md explains the one-parameter difference)",
    "trainable_ttt_params": "PR #628 code: params not in blocks.0./blocks.1. (docs/evaluation.md)",
    "frozen_ttt_params": "PR #628 code: params in blocks.0./blocks.1. (docs/evaluation.md)",
    "model_bytes": _LOG_S4 + " (compressed int6+zstd-22 model)",
    "code_bytes": _LOG_S4 + " (UTF-8 bytes of train_gpt.py)",
    "artifact_bytes": SRC_628_SUBMISSION + " (14,985,742 bytes = 14.29 MB)",
    "artifact_limit_bytes": "openai/parameter-golf README (16,000,000-byte rule), docs/quantization.md",
    "raw_payload_bytes": _LOG_S4,
    "torch_save_bytes": _LOG_S4,
    "steps": SRC_628_README + " (12000 peak-LR + 8000 warmdown)",
    "peak_steps": SRC_628_README,
    "warmdown": SRC_628_README + " (WARMDOWN_ITERS=8000, matches the trajectory), docs/choices.md",
    "train_seconds": _LOG_S6,
    "eval_seconds": _LOG_S5 + " (whole TTT eval on 4xA100)",
    "ttt_chunks": _LOG_S5,
    "ttt_steps": "derived (docs/evaluation.md): (1893 - 1) trained chunks x 10 epochs",
    "sliding_windows": _LOG_S5,
    "val_targets": "derived (docs/data.md): floor((N-1)/2048)*2048",
    "seed": _LOG_S6,
}

# The naive baseline the F5 share is measured against (the challenge's
# original 9-layer baseline score, as used in the #628 README's Finding 5).
NAIVE_BASELINE_BPB = 1.224
NAIVE_BASELINE_SOURCE = SRC_628_README + " (Finding 5: 'total gain over naive baseline', 1.224)"

# ---------------------------------------------------------------------------
# Scaling table (PRs #628/#644/#668, #612 for 12k)
#
# `artifact_mib` is the table's "MB" (MiB, 2 decimals). `artifact_bytes` is the
# exact total where published. ⚠ For 25k and 30k the MiB figure matches the
# *model-only* size (bytes - code), not the total bytes: 14,496,936 B is 13.83
# MiB in total but 13.75 MiB without ~78 KB of code. For 12k and 20k it is the
# total. Compare like with like; `artifact_mib_is_total` records which is which
# (None = unknown, no byte count published).

SCALING: tuple[dict[str, Any], ...] = (
    dict(steps=9_000, peak=5_000, warmdown=4_000, float_bpb=1.135, float_bpb_precise=None,
         ttt_bpb=1.116, ttt_bpb_precise=1.1157, artifact_mib=14.94, artifact_bytes=None,
         artifact_mib_is_total=None, source=SRC_628_README + " (Scaling Table)"),
    dict(steps=12_000, peak=7_000, warmdown=5_000, float_bpb=1.127, float_bpb_precise=1.1268,
         ttt_bpb=1.108, ttt_bpb_precise=1.10788263, artifact_mib=14.79, artifact_bytes=15_510_640,
         artifact_mib_is_total=True, source="PR #612 train.log / submission.json; PR #628 README"),
    dict(steps=15_000, peak=9_000, warmdown=6_000, float_bpb=1.122, float_bpb_precise=None,
         ttt_bpb=1.104, ttt_bpb_precise=1.1035, artifact_mib=14.52, artifact_bytes=None,
         artifact_mib_is_total=None, source=SRC_628_README + " (Scaling Table)"),
    dict(steps=20_000, peak=12_000, warmdown=8_000, float_bpb=1.115, float_bpb_precise=1.1153,
         ttt_bpb=1.098, ttt_bpb_precise=1.09826483, artifact_mib=14.29, artifact_bytes=14_985_742,
         artifact_mib_is_total=True, source="PR #628 train.log / submission.json"),
    dict(steps=25_000, peak=12_000, warmdown=13_000, float_bpb=1.109, float_bpb_precise=1.1088,
         ttt_bpb=1.094, ttt_bpb_precise=1.094402, artifact_mib=13.75, artifact_bytes=14_496_936,
         artifact_mib_is_total=False, source="PR #644 train.log / submission.json"),
    dict(steps=30_000, peak=12_000, warmdown=18_000, float_bpb=1.104, float_bpb_precise=1.1043,
         ttt_bpb=1.092, ttt_bpb_precise=1.091973, artifact_mib=13.40, artifact_bytes=14_136_140,
         artifact_mib_is_total=False, source="PR #668 train.log / submission.json"),
)

# Other published points mentioned next to the scaling table (not comparable rows).
SCALING_NOTES: dict[str, Any] = {
    "int6_pre_ttt_bpb_30k": 1.1267,  # measured, non-sliding (PR #668)
    "gep_9k3k_bpb": 1.1153, "gep_9k3k_artifact_mib": 15.97,
    "pr598_7k_bpb": 1.1334,  # mixed int6/int8, YARN on: a different config
    "pr414_bpb": 1.1228, "pr414_steps": 7_051, "pr414_float_bpb": 1.142,
}

# ---------------------------------------------------------------------------
# Training trajectory: live-weight val_bpb, non-sliding, every value as logged
# (4 decimals) in PR #628 train.log periodic `step:N/20000 val_loss:... val_bpb:...`
# lines. Step 0 is the untrained model.

TRAJECTORY: tuple[tuple[int, float], ...] = (
    (0, 4.1043), (500, 1.3944), (1_000, 1.3234), (2_000, 1.2647), (3_000, 1.2469),
    (5_000, 1.2310), (7_000, 1.2264), (9_000, 1.2192), (10_000, 1.2169), (11_000, 1.2167),
    (12_000, 1.2162), (13_000, 1.2055), (14_000, 1.1991), (15_000, 1.1891), (16_000, 1.1809),
    (17_000, 1.1687), (18_000, 1.1541), (19_000, 1.1364), (19_500, 1.1250), (20_000, 1.1153),
)
TRAJECTORY_SOURCE = SRC_628_LOG + " (periodic val lines, live weights, 2048-token windows)"

# ---------------------------------------------------------------------------
# The five findings (PR #628 README "Research Contributions")

# F1: phase boundaries in steps; delta to 3 decimals, rate to 1 decimal, in
# mBPB per 1,000 steps (the README writes "BPB/kstep"; the unit is really mBPB).
F1_PHASES: tuple[dict[str, Any], ...] = (
    dict(phase="early", label="early peak-LR", start=1_000, end=7_000, steps=6_000,
         delta_bpb=-0.097, rate_mbpb_per_kstep=-16.2),
    dict(phase="plateau", label="late plateau", start=7_000, end=12_000, steps=5_000,
         delta_bpb=-0.010, rate_mbpb_per_kstep=-2.0),
    dict(phase="warmdown", label="warmdown", start=12_000, end=20_000, steps=8_000,
         delta_bpb=-0.101, rate_mbpb_per_kstep=-12.6),
)
F1_RATIO = 6.0  # "≈6x" the late-plateau rate (12.6/2.0 = 6.3 rounded; 6.18 from log values)
F1_SOURCE = SRC_628_README + " (Finding 1: Warmdown is a first-class variable)"

# F2: the four runs whose warmdown is 40-45% of the steps (9k..20k; 25k/30k keep
# the 12k peak and are not in the table). float_to_final = TTT bpb - float bpb;
# ⚠ for 15k the 3-decimal values give -0.018 (1.104 - 1.122) and the precise TTT
# value gives -0.0185 (1.1035 - 1.122), on the rounding edge of the table's -0.019.
F2_ROWS: tuple[dict[str, Any], ...] = (
    dict(steps=9_000, float_bpb=1.135, artifact_mib=14.94, float_to_final=-0.019),
    dict(steps=12_000, float_bpb=1.127, artifact_mib=14.79, float_to_final=-0.019),
    dict(steps=15_000, float_bpb=1.122, artifact_mib=14.52, float_to_final=-0.019),
    dict(steps=20_000, float_bpb=1.115, artifact_mib=14.29, float_to_final=-0.017),
)
F2_SOURCE = SRC_628_README + " (Finding 2: Better-trained models compress smaller)"

# F3: same 5.2k-step, 24.6M-param base model, float ≈ 1.161.
F3_BASE = dict(steps=5_200, params_millions=24.6, float_bpb=1.161)
F3_ROWS: tuple[dict[str, Any], ...] = (
    dict(optimizer="adamw", config="AdamW lr 5e-5, 1 epoch, no freeze", lr=5e-5, epochs=1,
         freeze_blocks=0, float_to_final=-0.007, source="PR #456"),
    dict(optimizer="sgd", config="SGD lr 0.002, momentum 0.9, 3 epochs, freeze 2", lr=0.002, epochs=3,
         freeze_blocks=2, float_to_final=-0.017, source="PR #461"),
    dict(optimizer="sgd", config="SGD, 30 epochs, freeze 2", lr=0.002, epochs=30,
         freeze_blocks=2, float_to_final=-0.018, source="PR #526"),
)
F3_RATIO = 2.4  # -0.017 / -0.007 = 2.43, PR #461 vs PR #456
F3_SOURCE = SRC_628_README + " (Finding 3: SGD >> AdamW for legal TTT)"

# F4: qualitative only; no isolated ablation was published.
F4: dict[str, Any] = {
    "frozen_blocks": 2,
    "num_layers": 11,
    "depth_fraction": 2 / 11,  # "~18% of depth"
    "trainable_params": HEADLINE["trainable_ttt_params"],
    "frozen_params": HEADLINE["frozen_ttt_params"],
    "ablation": None,  # the PRs report no freeze-N vs freeze-0 number
    "claim": "freezing the first blocks during TTT adapts better than adapting all blocks",
    # Context only, not a controlled comparison (different base, 3 epochs, cosine w/o warm-up):
    "pr549_freeze0_ttt_gain": -0.0025,
}
F4_SOURCE = SRC_628_README + " (Finding 4: Freezing early layers is active regularization)"

# F5: TTT share of the total gain over the naive baseline, from the table's
# 3-decimal values. ⚠ With the 4-decimal 20k values (1.1153 -> 1.09826) the
# share is 13.6%, which rounds to 14%, not 13%. The 5.2k row's -0.018 is the
# 30-epoch SGD result (PR #526), not PR #461's -0.017.
F5_ROWS: tuple[dict[str, Any], ...] = (
    dict(base_steps=5_200, float_bpb=1.161, final_bpb=1.143, delta=-0.018, total_gain=0.081, share_pct=22),
    dict(base_steps=9_000, float_bpb=1.135, final_bpb=1.116, delta=-0.019, total_gain=0.108, share_pct=18),
    dict(base_steps=12_000, float_bpb=1.127, final_bpb=1.108, delta=-0.019, total_gain=0.116, share_pct=16),
    dict(base_steps=20_000, float_bpb=1.115, final_bpb=1.098, delta=-0.017, total_gain=0.126, share_pct=13),
)
F5_SOURCE = SRC_628_README + " (Finding 5: After the right TTT family, invest in the base model)"

# Published evidence beyond PR #628 that bears on each finding: later PRs of
# openai/parameter-golf, each number as its PR gives it (record README, PR description or
# train log). ``bears`` says how it relates to the #628 claim: "supports", "contradicts"
# or "context" (a different quantizer, model or comparison; read it, do not test it).
EVIDENCE: tuple[dict[str, Any], ...] = (
    dict(finding="F2", pr=1979, bears="contradicts",
         what="std-based clip (sigma-multiple, 12.85 sigma for matrices) GPTQ + lrzip, same recipe trained "
              "10 -> 60 min: artifact 15,953,292 -> 15,944,203 B (-0.06%; 15,956,638 B at 30 min)",
         before=15_953_292, after=15_944_203, unit="bytes",
         source="PR #1979 README (Long-Train Artifact Scaling table)"),
    dict(finding="F2", pr=2008, bears="contradicts",
         what="the same recipe trained for 6 h: 15,926,271 B against 15,953,292 B at 10 minutes (PR #1979), within 0.17%",
         before=15_953_292, after=15_926_271, unit="bytes", source="PR #2008 README"),
    dict(finding="F2", pr=1394, bears="context",
         what="a matrix's standard deviation predicts its compression ratio under a fixed clip width (R^2 = 0.995)",
         before=None, after=0.995, unit="R^2", source="PR #1394 README (SDClip)"),
    dict(finding="F3", pr=1947, bears="supports",
         what="full-weight AdamW TTT (lr 0.001, wd 0.01, 3 epochs, 35.9M parameters) 1.0825 -> 1.1885 bpb, "
              "against SGD (lr 0.005) 1.0827 -> 1.0810",
         before=1.0825, after=1.1885, unit="bpb", source="PR #1947 README (records/track_10min_16mb/2026-04-29_qTTT_AdamW_T98_QK55)"),
    dict(finding="F3", pr=1045, bears="supports",
         what="AdamW TTT (lr 0.002, 3 epochs) 1.2804 bpb against 1.1509 without TTT (no SGD run)",
         before=1.1509, after=1.2804, unit="bpb", source="PR #1045 description"),
    dict(finding="F3", pr=442, bears="contradicts",
         what="AdamW TTT 1.1027 bpb against SGD TTT 1.1221 (closed PR)",
         before=1.1221, after=1.1027, unit="bpb", source="PR #442 description"),
    dict(finding="F3", pr=1626, bears="context",
         what="per-document LoRA TTT plus three global SGD phases: 1.07193 bpb (3-seed mean), TTT gain -0.01278; "
              "3 phases -0.00081 against 1 phase",
         before=None, after=1.07193, unit="bpb", source="PR #1626 README"),
    dict(finding="F3", pr=2135, bears="context",
         what="quantized phased LoRA TTT (rank 80, lr 8e-5, beta2 0.99, weight decay 2.0, one global phase): "
              "1.06909539 -> 1.05650768 bpb",
         before=1.06909539, after=1.05650768, unit="bpb", source="PR #2135 description"),
    dict(finding="F4", pr=549, bears="contradicts",
         what="legal TTT with 2 frozen blocks 1.1217 bpb, with 0 frozen 1.1213 (-0.0004; one seed, 1337)",
         before=1.1217, after=1.1213, unit="bpb",
         source="PR #549 README (records/track_10min_16mb/2026-03-23_LeakyReLU_LegalTTT_ParallelMuon, ablation)"),
    dict(finding="F4", pr=995, bears="contradicts",
         what="swept 0 / 1 / 2 frozen blocks and chose 0 (SGD lr 0.002, momentum 0.95, 4 epochs, 32K chunks): "
              "1.0362 bpb, 3-seed mean (per-depth scores not published)",
         before=None, after=1.0362, unit="bpb", source="PR #995 description"),
    dict(finding="F5", pr=628, bears="supports",
         what="TTT gain over the float model -0.019 / -0.019 / -0.019 / -0.017 bpb at 9k / 12k / 15k / 20k steps",
         before=-0.019, after=-0.017, unit="bpb", source=SRC_628_README + " (Scaling Table)"),
    dict(finding="F5", pr=668, bears="supports",
         what="30k steps: float 1.1043 -> TTT 1.0920 bpb, a gain of 0.0123 (PR #644 at 25k: 1.109 -> 1.094)",
         before=1.1043, after=1.0920, unit="bpb", source="PR #668 train.log; PR #644 train.log"),
)


def evidence_df(finding: str):
    """The published evidence for ``finding`` ("F1".."F5"): pr, bears, what, before, after, unit, source."""
    rows = [r for r in EVIDENCE if r["finding"] == finding]
    if not rows and finding not in ("F1", "F2", "F3", "F4", "F5"):
        raise ValueError(f"unknown finding {finding!r}: one of F1..F5")
    import pandas as pd

    return pd.DataFrame(rows, columns=["finding", "pr", "bears", "what", "before", "after", "unit", "source"])


# How each published column is rounded: number of decimals (or a short note).
ROUNDING: dict[str, Any] = {
    "trajectory.val_bpb": 4,
    "scaling.float_bpb": 3, "scaling.ttt_bpb": 3, "scaling.artifact_mib": 2,
    "scaling.*_precise": "as logged (4 to 8 decimals)",
    "f1.delta_bpb": 3, "f1.rate_mbpb_per_kstep": 1, "f1.ratio": "≈6 (integer)",
    "f2.float_bpb": 3, "f2.artifact_mib": 2, "f2.float_to_final": 3,
    "f3.float_to_final": 3, "f3.ratio": 1, "f3.base_float_bpb": "≈, 3 decimals",
    "f5.float_bpb": 3, "f5.final_bpb": 3, "f5.delta": 3, "f5.total_gain": 3, "f5.share_pct": 0,
    "headline.float_bpb": 4, "headline.ttt_gain_*": 3, "headline.int6_pre_ttt_bpb_estimate": "~, estimate",
}

# ---------------------------------------------------------------------------
# DataFrames (fresh copies; pandas imported lazily so the package core does not need it)


def _df(rows, **const):
    import pandas as pd

    df = pd.DataFrame([dict(r) for r in rows])
    for k, v in const.items():
        df[k] = v
    return df


def headline_df():
    """Headline numbers as a two-column (key, value) table with sources."""
    return _df([{"key": k, "value": v, "source": HEADLINE_SOURCES[k]} for k, v in HEADLINE.items()])


def trajectory_phase(step: int) -> str:
    """F1 phase containing ``step``: the phase whose [start, end) holds it (the last
    phase also holds its end); "start" before the first phase."""
    for p in F1_PHASES:
        if p["start"] <= step < p["end"]:
            return p["phase"]
    if step == F1_PHASES[-1]["end"]:
        return F1_PHASES[-1]["phase"]
    return "start" if step < F1_PHASES[0]["start"] else "after"


def trajectory_df():
    """Columns: step, val_bpb, phase (see :func:`trajectory_phase`), source."""
    rows = [{"step": s, "val_bpb": b, "phase": trajectory_phase(s)} for s, b in TRAJECTORY]
    return _df(rows, source=TRAJECTORY_SOURCE)


def scaling_df():
    """The scaling table, one row per run length; adds artifact_bytes_from_mib = MiB * 2**20 (±5 KiB)."""
    df = _df(SCALING)
    df["artifact_bytes"] = df["artifact_bytes"].astype("Int64")  # nullable: unknown for 9k/15k
    df["artifact_bytes_from_mib"] = (df["artifact_mib"] * MIB).round().astype("int64")
    return df


def f1_df():
    return _df(F1_PHASES, source=F1_SOURCE)


def f2_df():
    """F2 rows; ``artifact_bytes_approx`` converts the 2-decimal MiB (±5 KiB)."""
    df = _df(F2_ROWS, source=F2_SOURCE)
    df["artifact_bytes_approx"] = (df["artifact_mib"] * MIB).round().astype("int64")
    return df


def f3_df():
    return _df(F3_ROWS, base_float_bpb=F3_BASE["float_bpb"], base_steps=F3_BASE["steps"])


def f5_df():
    return _df(F5_ROWS, baseline_bpb=NAIVE_BASELINE_BPB, source=F5_SOURCE)


def summary() -> dict[str, Any]:
    """The five published headline claims, as numbers (used by findings.md)."""
    return {
        "F1": {"warmdown_rate": F1_PHASES[2]["rate_mbpb_per_kstep"],
               "plateau_rate": F1_PHASES[1]["rate_mbpb_per_kstep"], "ratio": F1_RATIO},
        "F2": {"steps": [r["steps"] for r in F2_ROWS], "artifact_mib": [r["artifact_mib"] for r in F2_ROWS]},
        "F3": {"sgd": F3_ROWS[1]["float_to_final"], "adamw": F3_ROWS[0]["float_to_final"], "ratio": F3_RATIO},
        "F4": {"best_freeze": F4["frozen_blocks"], "ablation": F4["ablation"]},
        "F5": {"share_pct": [r["share_pct"] for r in F5_ROWS], "baseline_bpb": NAIVE_BASELINE_BPB},
    }


def mib(nbytes: float) -> float:
    """Bytes to MiB (the PRs' "MB")."""
    return float(nbytes) / MIB

