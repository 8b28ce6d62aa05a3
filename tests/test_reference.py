"""The published numbers are stored exactly and are consistent with each other."""
import math

import pytest

from gepalib.findings import reference as R

MIB = 2**20


def test_headline_exact_values():
    h = R.HEADLINE
    assert h["val_bpb"] == 1.09826483 and h["val_loss"] == 1.854369
    assert h["float_bpb"] == 1.1153 and h["params"] == 27_030_107
    assert (h["model_bytes"], h["code_bytes"], h["artifact_bytes"]) == (14_907_461, 78_281, 14_985_742)
    assert (h["train_seconds"], h["eval_seconds"], h["ttt_chunks"], h["seed"]) == (10_011, 2_066, 1_893, 42)
    assert set(R.HEADLINE_SOURCES) == set(h), "every headline number needs a source"


def test_headline_internal_consistency():
    h = R.HEADLINE
    assert h["model_bytes"] + h["code_bytes"] == h["artifact_bytes"] <= h["artifact_limit_bytes"]
    assert h["trainable_ttt_params"] + h["frozen_ttt_params"] == h["params"]
    # "MB" is MiB: 14.29 total, 14.22 model only (docs/quantization.md)
    assert round(h["artifact_bytes"] / MIB, 2) == 14.29 and round(h["model_bytes"] / MIB, 2) == 14.22
    assert h["ttt_chunks"] == math.ceil(h["val_targets"] / 32768)
    assert h["ttt_steps"] == (h["ttt_chunks"] - 1) * 10
    # slow reference: count the legal-TTT sliding windows one by one (docs/evaluation.md)
    n = h["val_targets"]
    windows = sum(1 for ws in range(0, n, 64) if ws == 0 or min(ws + 2048, n) - ws >= 64)
    assert windows == h["sliding_windows"]
    # val_loss / (ln2 * val_bpb) is bytes per token, "about 2.436" (docs/data.md)
    assert round(h["val_loss"] / (math.log(2) * h["val_bpb"]), 3) == 2.436
    # TTT gains: float 1.1153 -> 1.0983 and the ~1.142 estimate -> 1.0983
    assert round(h["val_bpb"] - h["float_bpb"], 3) == h["ttt_gain_float_to_final"]
    assert round(h["val_bpb"] - h["int6_pre_ttt_bpb_estimate"], 3) == h["ttt_gain_quant_to_final"]


def test_trajectory_matches_log_and_headline():
    steps = [s for s, _ in R.TRAJECTORY]
    assert steps == sorted(steps) and len(set(steps)) == len(steps) == 20
    d = dict(R.TRAJECTORY)
    assert d[0] == 4.1043 and d[1000] == 1.3234 and d[7000] == 1.2264 and d[12000] == 1.2162
    assert d[19500] == 1.1250 and d[20000] == R.HEADLINE["float_bpb"]
    df = R.trajectory_df()
    assert list(df["step"]) == steps and list(df["val_bpb"]) == [b for _, b in R.TRAJECTORY]
    assert R.trajectory_phase(500) == "start" and R.trajectory_phase(1000) == "early"
    assert R.trajectory_phase(11000) == "plateau" and R.trajectory_phase(20000) == "warmdown"


def test_f1_table_is_the_trajectory_rounded():
    d = dict(R.TRAJECTORY)
    for p in R.F1_PHASES:
        assert p["steps"] == p["end"] - p["start"]
        assert round(d[p["end"]] - d[p["start"]], 3) == p["delta_bpb"]
        assert round(p["delta_bpb"] * 1e6 / p["steps"], 1) == p["rate_mbpb_per_kstep"]
    assert [p["rate_mbpb_per_kstep"] for p in R.F1_PHASES] == [-16.2, -2.0, -12.6]


def test_scaling_table_units_and_rows():
    rows = {r["steps"]: r for r in R.SCALING}
    assert sorted(rows) == [9000, 12000, 15000, 20000, 25000, 30000]
    for r in R.SCALING:
        assert r["peak"] + r["warmdown"] == r["steps"]
        if r["ttt_bpb_precise"] is not None:
            assert abs(r["ttt_bpb_precise"] - r["ttt_bpb"]) <= 0.0005 + 1e-12
        if r["float_bpb_precise"] is not None:
            assert abs(r["float_bpb_precise"] - r["float_bpb"]) <= 0.0005 + 1e-12
        if r["artifact_bytes"] is not None:  # which MiB figure is total vs model-only
            assert (round(r["artifact_bytes"] / MIB, 2) == r["artifact_mib"]) == r["artifact_mib_is_total"]
            assert r["artifact_bytes"] <= R.HEADLINE["artifact_limit_bytes"]
    assert rows[20000]["ttt_bpb_precise"] == R.HEADLINE["val_bpb"]
    # 25k: model-only MiB with ~78 KB of code matches the published 13.75
    assert round((rows[25000]["artifact_bytes"] - R.HEADLINE["code_bytes"]) / MIB, 2) == 13.75
    df = R.scaling_df()
    assert len(df) == 6 and df["artifact_bytes"].isna().sum() == 2
    assert abs(df["artifact_bytes_from_mib"].iloc[3] - R.HEADLINE["artifact_bytes"]) < 0.005 * MIB


def test_f2_and_f5_agree_with_scaling_table():
    rows = {r["steps"]: r for r in R.SCALING}
    for f in R.F2_ROWS:
        s = rows[f["steps"]]
        assert (f["float_bpb"], f["artifact_mib"]) == (s["float_bpb"], s["artifact_mib"])
        assert abs(round(s["ttt_bpb"] - s["float_bpb"], 3) - f["float_to_final"]) <= 0.001 + 1e-12
    for f in R.F5_ROWS:
        if f["base_steps"] in rows:
            assert (f["float_bpb"], f["final_bpb"]) == (rows[f["base_steps"]]["float_bpb"], rows[f["base_steps"]]["ttt_bpb"])
        assert round(f["final_bpb"] - f["float_bpb"], 3) == f["delta"]
        assert round(R.NAIVE_BASELINE_BPB - f["final_bpb"], 3) == f["total_gain"]
        assert round(100 * -f["delta"] / f["total_gain"]) == f["share_pct"]
    assert R.F5_ROWS[0]["float_bpb"] == R.F3_BASE["float_bpb"]
    assert R.NAIVE_BASELINE_BPB == 1.224


def test_f3_f4_tables():
    by_src = {r["source"]: r for r in R.F3_ROWS}
    assert by_src["PR #456"]["float_to_final"] == -0.007 and by_src["PR #461"]["float_to_final"] == -0.017
    assert by_src["PR #526"]["float_to_final"] == -0.018
    assert round(by_src["PR #461"]["float_to_final"] / by_src["PR #456"]["float_to_final"], 1) == R.F3_RATIO
    assert R.F4["frozen_blocks"] == 2 and round(R.F4["depth_fraction"], 2) == 0.18 and R.F4["ablation"] is None


@pytest.mark.parametrize("fn", ["headline_df", "trajectory_df", "scaling_df", "f1_df", "f2_df", "f3_df", "f5_df"])
def test_dataframes_are_fresh_copies(fn):
    df = getattr(R, fn)()
    assert len(df) > 0
    sentinel = "mutated" if isinstance(df.iloc[0, 0], str) else -999
    df.iloc[0, 0] = sentinel
    assert getattr(R, fn)().iloc[0, 0] != sentinel


def test_summary_lists_the_five_claims():
    s = R.summary()
    assert sorted(s) == ["F1", "F2", "F3", "F4", "F5"]
    assert s["F5"]["share_pct"] == [22, 18, 16, 13] and s["F3"]["ratio"] == 2.4


def test_published_evidence_rows_are_sourced_and_self_consistent():
    """Every evidence row names its PR in its source, relates to the claim in one of three ways,
    and its before/after numbers are the ones its text states (a typo in one shows up here)."""
    assert {r["finding"] for r in R.EVIDENCE} == {"F2", "F3", "F4", "F5"}
    for r in R.EVIDENCE:
        assert r["bears"] in ("supports", "contradicts", "context"), r
        assert f"PR #{r['pr']}" in r["source"], r
        for v in (r["before"], r["after"]):
            if v is not None:
                shown = f"{v:,}" if r["unit"] == "bytes" else f"{v}".lstrip("-")
                assert shown in r["what"] or f"{v:+}" in r["what"], (r["pr"], v)
    by_pr = {r["pr"]: r for r in R.EVIDENCE if r["finding"] == "F2"}
    # PR #1979's net change is 9,089 bytes, 0.06% of the 10-minute artifact
    d = by_pr[1979]["after"] - by_pr[1979]["before"]
    assert d == -9_089 and round(100 * d / by_pr[1979]["before"], 2) == -0.06
    f4 = {r["pr"]: r for r in R.EVIDENCE if r["finding"] == "F4"}
    assert round(f4[549]["after"] - f4[549]["before"], 4) == -0.0004
    f5 = {r["pr"]: r for r in R.EVIDENCE if r["finding"] == "F5"}
    assert round(f5[628]["after"], 3) == R.F5_ROWS[-1]["delta"]  # the 20k gain of the #628 table
    assert round(f5[668]["before"] - f5[668]["after"], 4) == 0.0123


@pytest.mark.parametrize("finding", ["F1", "F2", "F3", "F4", "F5"])
def test_evidence_df_per_finding(finding):
    df = R.evidence_df(finding)
    assert list(df.columns) == ["finding", "pr", "bears", "what", "before", "after", "unit", "source"]
    assert (df["finding"] == finding).all() and len(df) == sum(r["finding"] == finding for r in R.EVIDENCE)
    with pytest.raises(ValueError, match="unknown finding"):
        R.evidence_df("F9")
