"""gepalib.findings: the published tables give the published derived numbers,
synthetic data give known answers, and verdicts follow the data."""
import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats

from gepalib import findings as F
from gepalib.findings import reference as R


def published_trajectory():
    s, b = zip(*R.TRAJECTORY)
    return np.array(s), np.array(b)


# ---------------------------------------------------------------------------
# F1


def test_f1_published_rates_and_ratio():
    s, b = published_trajectory()
    r = F.phase_rates(s, b, total_steps=20_000, warmdown=8_000)
    ph = r["phases"]
    assert [(ph[k]["start"], ph[k]["end"]) for k in ("early", "plateau", "warmdown")] == \
        [(1000, 7000), (7000, 12000), (12000, 20000)]
    assert [round(ph[k]["delta_bpb"], 3) for k in ph] == [-0.097, -0.010, -0.101]
    assert [round(ph[k]["rate_mbpb_per_kstep"], 1) for k in ph] == [-16.2, -2.0, -12.6]
    assert round(r["warmdown_to_plateau_ratio"]) == 6  # 6.18 from log values
    # with the table's rounding of Δ to 3 decimals: -0.097/6, -0.010/5, -0.101/8
    t = F.phase_rates(s, b, total_steps=20_000, warmdown=8_000, delta_decimals=3)
    rates = [t["phases"][k]["rate_mbpb_per_kstep"] for k in ("early", "plateau", "warmdown")]
    assert rates == pytest.approx([-97 / 6, -2.0, -101 / 8], abs=1e-9)
    assert t["warmdown_to_plateau_ratio"] == pytest.approx(6.3125) and round(t["warmdown_to_plateau_ratio"]) == 6


def test_f1_matches_slow_reference_on_random_curve():
    rng = np.random.default_rng(0)
    steps = np.arange(0, 1001, 50)
    bpb = 3 - np.cumsum(rng.uniform(0, 0.05, steps.size))
    phases = {"a": (100, 350), "b": (350, 600), "warmdown": (600, 1000), "plateau": (50, 100)}
    r = F.phase_rates(steps[::-1], bpb[::-1], phases)  # order of input does not matter
    for name, (lo, hi) in phases.items():
        i, j = list(steps).index(lo), list(steps).index(hi)
        want = (bpb[j] - bpb[i]) * 1000 / ((hi - lo) / 1000)
        assert r["phases"][name]["rate_mbpb_per_kstep"] == pytest.approx(want, rel=1e-12)
    assert r["warmdown_to_plateau_ratio"] == pytest.approx(
        r["phases"]["warmdown"]["rate_mbpb_per_kstep"] / r["phases"]["plateau"]["rate_mbpb_per_kstep"])


def test_f1_piecewise_linear_known_slopes():
    # slopes in bpb/step: -4e-3 early, -1e-4 plateau, -5e-4 warmdown -> -4000, -100, -500 mBPB/kstep
    steps = np.arange(0, 601, 30)
    slope = np.where(steps <= 210, -4e-3, np.where(steps <= 360, -1e-4, -5e-4))
    bpb = 3.0 + np.concatenate([[0.0], np.cumsum(slope[1:] * 30)])
    r = F.phase_rates(steps, bpb, total_steps=600, warmdown=240)
    got = {k: v["rate_mbpb_per_kstep"] for k, v in r["phases"].items()}
    assert got == pytest.approx({"early": -4000, "plateau": -100, "warmdown": -500}, rel=1e-9)
    assert r["warmdown_to_plateau_ratio"] == pytest.approx(5.0)
    assert r["phases"]["early"]["start"] == 30 and r["phases"]["warmdown"]["start"] == 360


def test_phase_boundaries_and_snapping():
    assert F.phase_boundaries(20_000, 8_000) == {"early": (1000, 7000), "plateau": (7000, 12000),
                                                 "warmdown": (12000, 20000)}
    assert F.infer_phases(range(0, 20_001, 500), 20_000, 8_000) == \
        {"early": (1000, 7000), "plateau": (7000, 12000), "warmdown": (12000, 20000)}
    # tiny (600 steps, warmdown 240) evaluated every 100 steps: 30->100, 210->200, 360->400
    assert F.infer_phases(range(0, 601, 100), 600, 240) == \
        {"early": (100, 200), "plateau": (200, 400), "warmdown": (400, 600)}
    with pytest.raises(ValueError, match="evaluate more often"):
        F.infer_phases([0, 300, 600], 600, 240)
    with pytest.raises(ValueError, match="warmdown"):
        F.phase_boundaries(100, 100)
    with pytest.raises(ValueError, match="step 7000 was not evaluated"):
        F.phase_rates([0, 1000, 8000, 12000], [4, 3, 2, 1], {"plateau": (7000, 12000)})
    with pytest.raises(ValueError, match="total_steps and warmdown"):
        F.phase_rates([0, 1], [2, 1])


def test_f1_ratio_edge_cases():
    flat_plateau = F.phase_rates([0, 1, 2, 3], [3, 3, 3, 2], {"plateau": (1, 2), "warmdown": (2, 3)})
    assert flat_plateau["warmdown_to_plateau_ratio"] == math.inf
    worse_plateau = F.phase_rates([0, 1, 2, 3], [3, 3, 3.5, 2], {"plateau": (1, 2), "warmdown": (2, 3)})
    assert worse_plateau["warmdown_to_plateau_ratio"] < 0
    assert math.isnan(F.phase_rates([0, 1], [2, 1], {"x": (0, 1)})["warmdown_to_plateau_ratio"])


def test_trajectory_validation_and_metrics_rows():
    with pytest.raises(ValueError, match="repeated step"):
        F.trajectory([0, 1, 1], [1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        F.trajectory([0, 1], [1, float("nan")])
    with pytest.raises(ValueError, match="differ in length"):
        F.trajectory([0, 1], [1])
    rows = [{"step": 0, "train_loss": 7.0, "val_bpb": 4.0}, {"step": 10, "train_loss": 6.0},
            {"step": 20, "train_loss": 5.0, "val_bpb": 3.0}, {"step": 20, "val_bpb": 2.9},  # resumed: last wins
            {"step": 30, "val_bpb": None}]
    s, v = F.trajectory_from_metrics(rows)
    assert s.tolist() == [0, 20] and v.tolist() == [4.0, 2.9]
    import pandas as pd

    s2, v2 = F.trajectory_from_metrics(pd.DataFrame(rows), "train_loss")
    assert s2.tolist() == [0, 10, 20] and v2.tolist() == [7.0, 6.0, 5.0]
    with pytest.raises(ValueError, match="val_bpb_ema"):
        F.trajectory_from_metrics(rows, "val_bpb_ema")


# ---------------------------------------------------------------------------
# Statistics


def welch_reference(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    return t, 2 * stats.t.sf(abs(t), df)


def test_compare_settings_welch_against_reference():
    a, b = [1.0, 1.3, 0.9, 1.2], [0.7, 0.8, 1.1]
    c = F.compare_settings(a, b)
    t, p = welch_reference(a, b)
    assert c["t"] == pytest.approx(t) and c["p_value"] == pytest.approx(p)
    assert c["diff"] == pytest.approx(np.mean(a) - np.mean(b))
    assert c["std_a"] == pytest.approx(np.std(a, ddof=1)) and (c["n_a"], c["n_b"]) == (4, 3)


def test_compare_settings_known_answers():
    assert F.compare_settings([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])["p_value"] == pytest.approx(1.0)
    assert F.compare_settings([5.0, 5.0], [5.0, 5.0])["p_value"] == 1.0
    assert F.compare_settings([5.0, 5.0], [6.0, 6.0])["p_value"] == 0.0
    far = F.compare_settings([0.0, 0.01, -0.01, 0.005], [10.0, 10.01, 9.99, 10.005])
    assert far["p_value"] < 1e-6 and far["diff"] == pytest.approx(-10.0)
    one = F.compare_settings([1.0], [1.0, 2.0])
    assert math.isnan(one["p_value"]) and math.isnan(one["std_a"]) and "single seed" in one["note"]
    assert "no p-value" in F.significance_text(one)
    assert "significant at" in F.significance_text(far)
    with pytest.raises(ValueError, match="empty"):
        F.compare_settings([], [1.0])


def test_rank_correlation_exact_p_values():
    def brute(x, y):  # slow reference: all orderings
        rx, ry = stats.rankdata(x), stats.rankdata(y)
        rho = np.corrcoef(rx, ry)[0, 1]
        rhos = [np.corrcoef(rx, p)[0, 1] for p in itertools.permutations(ry)]
        return rho, np.mean([abs(q) >= abs(rho) - 1e-12 for q in rhos])

    assert F.rank_correlation([1, 2, 3], [3, 2, 1])["spearman_p"] == pytest.approx(1 / 3)
    assert F.rank_correlation([1, 2, 3, 4], [4, 3, 2, 1])["spearman_p"] == pytest.approx(1 / 12)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=6), rng.normal(size=6)
    rc = F.rank_correlation(x, y)
    rho, p = brute(x, y)
    assert rc["spearman"] == pytest.approx(rho) and rc["spearman_p"] == pytest.approx(p)
    assert rc["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic)
    x, y = rng.normal(size=12), rng.normal(size=12)
    assert F.rank_correlation(x, y)["spearman_p"] == pytest.approx(stats.spearmanr(x, y).pvalue)
    assert math.isnan(F.rank_correlation([1, 2, 3], [5, 5, 5])["spearman"])


# ---------------------------------------------------------------------------
# F2


def test_f2_linear_synthetic_and_published():
    steps = [100, 200, 300, 400, 500]
    size = [1_000_000 - 500 * s for s in steps]
    c = F.compressibility(steps, size, float_bpb=[2.5, 2.4, 2.3, 2.2, 2.1])
    assert c["slope_bytes_per_kstep"] == pytest.approx(-500_000)
    assert c["spearman_steps"] == pytest.approx(-1.0) and c["spearman_p_steps"] == pytest.approx(2 / 120)
    assert c["spearman_float"] == pytest.approx(1.0) and c["pearson_steps"] == pytest.approx(-1.0)
    assert c["relative_change"] == pytest.approx((size[-1] - size[0]) / size[0])
    pub = F.published_results()["F2"]
    assert pub["spearman_steps"] == -1.0 and pub["spearman_float"] == 1.0
    assert pub["relative_change"] == pytest.approx((14.29 - 14.94) / 14.94)
    with pytest.raises(ValueError, match="different length"):
        F.compressibility([100, 100], [1, 2])


# ---------------------------------------------------------------------------
# F3 / F4 / F5


def test_f3_published_ratio_and_seeds():
    r = F.published_results()["F3"]
    assert round(r["ratio"], 1) == 2.4 and math.isnan(r["comparison"]["p_value"])
    g = F.ttt_gain_by_optimizer({"sgd": [-0.03, -0.031, -0.029], "adamw": [-0.01, -0.011, -0.009]})
    assert g["ratio"] == pytest.approx(3.0) and g["per_optimizer"]["sgd"]["n"] == 3
    assert g["comparison"]["p_value"] < 1e-3
    assert F.ttt_gain([1.2, 1.3], [1.18, 1.31]).tolist() == pytest.approx([-0.02, 0.01])
    with pytest.raises(ValueError, match="no gains for 'adamw'"):
        F.ttt_gain_by_optimizer({"sgd": [-0.01]})


def test_f4_gain_vs_frozen():
    k = [0, 0, 1, 1, 2, 2, 3]
    g = [-0.010, -0.012, -0.015, -0.017, -0.020, -0.018, -0.005]
    r = F.ttt_gain_vs_frozen(k, g)
    assert r["best_freeze"] == 2 and r["best_gain"] == pytest.approx(-0.019)
    assert r["best_vs_freeze0"] == pytest.approx(-0.019 + 0.011)
    assert r["per_freeze"][3]["n"] == 1 and math.isnan(r["per_freeze"][3]["std"])
    assert r["comparison"]["diff"] == pytest.approx(-0.008) and r["best_frozen"] == 2
    tie = F.ttt_gain_vs_frozen([0, 1, 2], [-0.01, -0.02, -0.02])
    assert tie["best_freeze"] == 1
    zero_best = F.ttt_gain_vs_frozen([0, 1, 2], [-0.03, -0.02, -0.01])  # freeze 0 wins: compare the best frozen
    assert zero_best["best_freeze"] == 0 and zero_best["best_frozen"] == 1
    assert zero_best["comparison"]["diff"] == pytest.approx(0.01)
    no0 = F.ttt_gain_vs_frozen([1, 2], [-0.01, -0.02])
    assert math.isnan(no0["best_vs_freeze0"]) and no0["comparison"] is None
    with pytest.raises(ValueError, match="non-negative integers"):
        F.ttt_gain_vs_frozen([0.5], [-0.01])


def test_f5_published_shares():
    r = F.published_results()["F5"]
    assert [round(100 * x) for x in r["share"]] == [22, 18, 16, 13]
    assert r["total_gain"].tolist() == pytest.approx([0.081, 0.108, 0.116, 0.126])
    assert r["delta"].tolist() == pytest.approx([-0.018, -0.019, -0.019, -0.017])
    assert r["share_vs_float"]["spearman"] == pytest.approx(1.0)
    # the 4-decimal 20k numbers give 13.6% -> 14% (documented in reference.F5_ROWS)
    assert round(100 * F.ttt_share([1.1153], [1.09826483])["share"][0]) == 14
    with pytest.raises(ValueError, match="baseline"):
        F.ttt_share([2.1], [2.0], 1.224)


# ---------------------------------------------------------------------------
# Power and intervals


def test_welch_interval_against_reference():
    a, b = [1.0, 1.3, 0.9, 1.2], [0.7, 0.8, 1.1]
    c = F.compare_settings(a, b)
    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 3
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)
    h = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert c["df"] == pytest.approx(df) and c["se"] == pytest.approx(math.sqrt(va + vb))
    assert (c["ci_low"], c["ci_high"]) == pytest.approx((c["diff"] - h, c["diff"] + h))
    # the interval excludes 0 exactly when p < 0.05
    assert (c["ci_low"] > 0 or c["ci_high"] < 0) == (c["p_value"] < 0.05)
    assert c["sd"] == pytest.approx(math.sqrt((np.var(a, ddof=1) + np.var(b, ddof=1)) / 2))
    const = F.compare_settings([5.0, 5.0, 5.0], [6.0, 6.0, 6.0])
    assert (const["ci_low"], const["ci_high"], const["mde"]) == (-1.0, -1.0, 0.0)
    one = F.compare_settings([1.0], [1.0, 2.0])
    assert math.isnan(one["ci_low"]) and math.isnan(one["mde"])


def test_mde_gives_the_stated_power():
    # large df: the normal approximation (z_0.975 + z_0.8)·se
    assert F.min_detectable_effect(1.0, 1e7) == pytest.approx(stats.norm.ppf(0.975) + stats.norm.ppf(0.8), rel=1e-4)
    assert F.min_detectable_effect(2.0, 1e7) == pytest.approx(2 * F.min_detectable_effect(1.0, 1e7))
    assert F.min_detectable_effect(1.0, 4) > F.min_detectable_effect(1.0, 40)  # fewer seeds, larger MDE
    assert math.isnan(F.min_detectable_effect(1.0, 0)) and F.min_detectable_effect(0.0, 4) == 0.0
    # Monte Carlo: 3 vs 3 seeds, sd 1, a true difference equal to the MDE of the pooled t test (df 4)
    # is detected at alpha 0.05 in 80% of experiments
    n, sims = 3, 40_000
    mde = F.min_detectable_effect(math.sqrt(2 / n), 2 * n - 2)
    rng = np.random.default_rng(0)
    a, b = rng.normal(mde, 1, (sims, n)), rng.normal(0, 1, (sims, n))
    sp = np.sqrt((a.var(axis=1, ddof=1) + b.var(axis=1, ddof=1)) / 2)
    t = (a.mean(axis=1) - b.mean(axis=1)) / (sp * math.sqrt(2 / n))
    assert np.mean(np.abs(t) > stats.t.ppf(0.975, 2 * n - 2)) == pytest.approx(0.8, abs=0.01)


def test_slope_effect_and_mean_interval_against_scipy():
    rng = np.random.default_rng(3)
    x = np.arange(6.0)
    y = 2 - 0.3 * x + rng.normal(0, 0.1, 6)
    se = F.slope_effect(x, y)
    ref = stats.linregress(x, y)
    assert se["slope"] == pytest.approx(ref.slope) and se["se"] == pytest.approx(ref.stderr)
    h = stats.t.ppf(0.975, 4) * ref.stderr
    assert (se["ci_low"], se["ci_high"]) == pytest.approx((ref.slope - h, ref.slope + h))
    assert math.isnan(F.slope_effect([1, 2], [3, 4])["ci_low"])  # two points: no noise estimate
    mi = F.mean_interval([1.0, 2.0, 3.0])
    lo, hi = stats.t.interval(0.95, 2, loc=2.0, scale=1 / math.sqrt(3))
    assert (mi["ci_low"], mi["ci_high"]) == pytest.approx((lo, hi)) and mi["sd"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------
# Plateau detection (calibrates F1 at a new scale)


STEPS = np.arange(0, 1001, 10.0)


def test_detect_plateau_on_an_exponential_approach():
    tau = 100.0
    bpb = 2.0 + np.exp(-STEPS / tau)
    # the first window (steps 10..50, step 0 dropped) is centred on 30; the rate falls to a third
    # of it tau·ln 3 later
    want = 30 + tau * math.log(3)
    assert F.detect_plateau(STEPS, bpb) == pytest.approx(want, abs=10)  # within one evaluation interval
    assert F.detect_plateau(STEPS, bpb, ratio=0.1) == pytest.approx(30 + tau * math.log(10), abs=10)
    assert F.detect_plateau(STEPS[::-1], bpb[::-1]) == F.detect_plateau(STEPS, bpb)  # order does not matter
    slow = 2.0 + np.exp(-STEPS / 200)
    assert F.detect_plateau(STEPS, slow) > F.detect_plateau(STEPS, bpb)


def test_detect_plateau_none_for_a_line_or_flat_noise():
    assert F.detect_plateau(STEPS, 3 - 0.001 * STEPS) is None  # constant rate: no plateau
    assert F.detect_plateau(STEPS, 3 + 0.001 * STEPS) is None  # getting worse: no early improvement
    flat = [F.detect_plateau(STEPS, 2 + np.random.default_rng(i).normal(0, 0.003, STEPS.size)) for i in range(50)]
    assert flat.count(None) >= 48, flat
    assert F.detect_plateau([0, 10, 20, 30], [3, 2, 1.5, 1.4]) is None  # too few evaluations
    with pytest.raises(ValueError, match="ratio"):
        F.detect_plateau(STEPS, STEPS, ratio=1.5)


def test_detect_plateau_is_robust_to_noise():
    want = 30 + 100 * math.log(3)
    found = [F.detect_plateau(STEPS, 2 + np.exp(-STEPS / 100) + np.random.default_rng(i).normal(0, 0.005, STEPS.size))
             for i in range(20)]
    assert all(f is not None and abs(f - want) <= 25 for f in found), found
    # the published trajectory at peak LR (0..12k): the rate drops to a third of its 500..5k value near 4k,
    # between the early phase and the late plateau
    s, b = published_trajectory()
    assert 3000 <= F.detect_plateau(s[s <= 12_000], b[s <= 12_000]) <= 7000


# ---------------------------------------------------------------------------
# Verdicts


def seed_rates(slopes_per_seed, total=600, warmdown=240):
    """phase_rates of piecewise-linear trajectories, one per seed: (early, plateau, warmdown) bpb/step."""
    steps = np.arange(0, total + 1, 30)
    out = []
    for e, p, w in slopes_per_seed:
        slope = np.where(steps <= 210, e, np.where(steps <= 360, p, w))
        bpb = 3.0 + np.concatenate([[0.0], np.cumsum(slope[1:] * 30)])
        out.append(F.phase_rates(steps, bpb, total_steps=total, warmdown=warmdown))
    return out


def test_verdict_records_its_statistics():
    v = F.verdict_f3(F.ttt_gain_by_optimizer({"sgd": [-0.030, -0.032, -0.029], "adamw": [-0.010, -0.011, -0.009]}))
    assert set(v) >= {"finding", "title", "agrees", "verdict", "ours", "published", "criterion", "rule", "text",
                      "interval", "level", "test", "sd", "mde", "n", "effect", "expected", "reason", "magnitude"}
    d = np.array([-0.020, -0.021, -0.020])  # the per-seed (paired) differences
    assert v["n"] == 3 and v["test"] == "paired t" and v["level"] == 0.95
    assert v["sd"] == pytest.approx(np.std(d, ddof=1)) and v["effect"] == pytest.approx(d.mean())
    assert v["differences"] == pytest.approx(d.tolist())
    lo, hi = v["interval"]
    assert lo < v["effect"] < hi < 0 and v["verdict"] == F.AGREES
    assert v["expected"] == pytest.approx((-0.017 + 0.007) / 0.017 * 0.0303333333)  # published, scaled by our gain
    assert "paired t" in v["criterion"] and v["rule"] == F.RULE and "95% CI" in v["ours"]
    m = v["magnitude"]
    assert m["published"] == pytest.approx(0.017 / 0.007) and m["value"] == pytest.approx(np.mean(
        np.array([-0.030, -0.032, -0.029]) / np.array([-0.010, -0.011, -0.009])))
    assert m["published_in_interval"] is False and "lies outside it" in m["text"] and "Magnitude:" in v["text"]


def test_published_numbers_through_the_verdicts():
    pub = F.published_results()
    v1, v2, v3, v5 = F.verdict_f1(pub["F1"]), F.verdict_f2(pub["F2"]), F.verdict_f3(pub["F3"]), F.verdict_f5(pub["F5"])
    # the trends over the four published runs are detected (their scatter about the trend is small)
    assert v2["agrees"] and v2["verdict"] == F.AGREES and v2["expected"] == pytest.approx(v2["effect"])
    assert v2["magnitude"]["published_in_interval"] is True
    assert v5["agrees"] and v5["interval"][1] < 0 and "22% → 18% → 16% → 13%" in v5["ours"]
    assert v5["magnitude"]["published_in_interval"] is True and v5["gain_trend"] is not None
    # one run per setting has no seed-to-seed spread: the published comparisons alone cannot decide
    for v in (v1, v3):
        assert v["verdict"] == F.INCONCLUSIVE and not v["agrees"] and v["n"] == 1 and "n=1 < 3" in v["reason"]
        assert v["interval"] == [None, None] and v["sd"] is None and v["mde"] is None  # strict JSON, no NaN
        json.dumps(v, allow_nan=False)
    assert "6.2×" in v1["ours"] and "-12.6" in v1["ours"] and "2.43×" in v3["ours"]
    assert v1["magnitude"]["published"] == pytest.approx(6.3)
    md = F.findings_markdown([v1, v2, v3, v5])
    assert md.count("\n") == 2 + 4 and md.count("| **agrees** |") == 2 and "Magnitude" in md
    assert md.count("| **inconclusive** |") == 2 and "MDE" in md and "slope t" in md


def test_paired_and_unpaired_tests_against_scipy():
    rng = np.random.default_rng(5)
    for n in (3, 5, 8):
        base = rng.normal(-0.01, 0.004, n)  # a shared per-seed component (base model, machine)
        a, b = base + rng.normal(-0.002, 0.0003, n), base + rng.normal(0.0, 0.0003, n)
        for alpha in (0.05, 0.025):
            p = F.compare_paired(a, b, alpha)
            ref = stats.ttest_rel(a, b)
            ci = ref.confidence_interval(1 - alpha)
            d = a - b
            se = np.std(d, ddof=1) / math.sqrt(n)
            h = stats.t.ppf(1 - alpha / 2, n - 1) * se  # the slow formula
            assert (p["ci_low"], p["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-12)
            assert (p["ci_low"], p["ci_high"]) == pytest.approx((d.mean() - h, d.mean() + h), rel=1e-12)
            assert p["p_value"] == pytest.approx(ref.pvalue, rel=1e-12) and p["df"] == n - 1
            assert p["mde"] == pytest.approx(F.min_detectable_effect(se, n - 1, alpha), rel=1e-12)
            u = F.compare_settings(a, b, alpha)
            w = stats.ttest_ind(a, b, equal_var=False)
            assert u["p_value"] == pytest.approx(w.pvalue, rel=1e-12) and u["test"] == "welch"
            # the shared component is noise to Welch, not to the paired test
            assert p["ci_high"] - p["ci_low"] < u["ci_high"] - u["ci_low"]
    one = F.compare_paired([1.0], [2.0])
    assert math.isnan(one["ci_low"]) and "one pair" in one["note"]
    const = F.compare_paired([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])
    assert (const["ci_low"], const["ci_high"], const["mde"]) == (0.5, 0.5, 0.0)
    with pytest.raises(ValueError, match="differ in length"):
        F.compare_paired([1.0, 2.0], [1.0])
    r = F.ratio_interval([-6.0, -6.6, -5.4], [-1.0, -1.1, -0.9])
    assert r["ratio"] == pytest.approx(6.0) and r["ci_low"] == pytest.approx(6.0) and r["ci_high"] == pytest.approx(6.0)
    assert math.isnan(F.ratio_interval([1.0, 2.0], [0.0, 1.0])["ratio"])
    assert F.level_text(0.05) == "95%" and F.level_text(0.025) == "97.5%"


def test_f3_three_outcomes():
    by = F.ttt_gain_by_optimizer
    clear = F.verdict_f3(by({"sgd": [-0.030, -0.031, -0.029], "adamw": [-0.010, -0.012, -0.009]}))
    assert clear["verdict"] == F.AGREES and clear["agrees"]
    opposite = F.verdict_f3(by({"sgd": [-0.010, -0.012, -0.009], "adamw": [-0.030, -0.031, -0.029]}))
    assert opposite["verdict"] == F.DISAGREES and not opposite["agrees"] and "opposite" in opposite["reason"]
    # SGD wins on average but the per-seed differences scatter across 0 and reach the expected effect
    noisy = F.verdict_f3(by({"sgd": [-0.030, -0.015, -0.028], "adamw": [-0.020, -0.022, -0.019]}))
    assert noisy["verdict"] == F.INCONCLUSIVE and "MDE" in noisy["reason"] and "expected" in noisy["reason"]
    # the interval holds 0 but excludes the published expected effect: does not agree
    short = F.verdict_f3(by({"sgd": [-0.0200, -0.0212, -0.0190], "adamw": [-0.0199, -0.0210, -0.0192]}))
    assert short["verdict"] == F.DISAGREES and "excludes the published expected effect" in short["reason"]
    # a clear effect on two seeds is still too few seeds
    two = F.verdict_f3(by({"sgd": [-0.030, -0.031], "adamw": [-0.010, -0.012]}))
    assert two["verdict"] == F.INCONCLUSIVE and "n=2 < 3" in two["reason"]
    assert F.verdict_f3(by({"sgd": [-0.030, -0.031], "adamw": [-0.010, -0.0102]}), min_seeds=2)["agrees"]
    # the right order but gains of ~0.3 mBPB (what the CPU demo measures): the TTT gain is below noise
    tiny = F.verdict_f3(by({"sgd": [-0.00031, -0.00030, -0.00032], "adamw": [-0.0003, -0.00028, -0.00029]}))
    assert tiny["verdict"] == F.INCONCLUSIVE and "too small to rank" in tiny["ours"]
    # with a smaller floor, a clear ordering of such gains counts
    assert F.verdict_f3(by({"sgd": [-0.00031, -0.00030, -0.00032], "adamw": [-0.0001, -0.00012, -0.00011]}),
                        min_gain=1e-4)["agrees"]
    # both arms must be above noise: a clear SGD gain against an AdamW gain that is noise
    weak = F.verdict_f3(by({"sgd": [-0.020, -0.021, -0.019], "adamw": [-0.004, 0.003, -0.002]}))
    assert weak["verdict"] == F.INCONCLUSIVE and "the adamw TTT gain" in weak["reason"] and "noise" in weak["reason"]


def test_f1_three_outcomes():
    rng = np.random.default_rng(0)

    def jitter(e, p, w, sd, n=3):
        return [(e, p + rng.normal(0, sd), w + rng.normal(0, sd)) for _ in range(n)]

    # warmdown 5x the plateau rate, small spread: agrees in direction; 6.3x outside its interval
    v = F.verdict_f1(seed_rates(jitter(-4e-3, -1e-4, -5e-4, 1e-5)))
    assert v["verdict"] == F.AGREES and v["n"] == 3 and v["interval"][1] < 0 and v["test"] == "paired t"
    assert v["magnitude"]["published_in_interval"] is False and 4 < v["magnitude"]["value"] < 6
    # the warmdown slower than the plateau: does not agree
    slower = F.verdict_f1(seed_rates(jitter(-4e-3, -5e-4, -3e-4, 1e-5)))
    assert slower["verdict"] == F.DISAGREES and "opposite" in slower["reason"]
    # the same rate everywhere after the early phase: the interval holds 0 and excludes (R - 1) x plateau
    same = F.verdict_f1(seed_rates(jitter(-4e-3, -5e-4, -5e-4, 1e-5)))
    assert same["verdict"] == F.DISAGREES and "(1.0×" in same["ours"] and "excludes" in same["reason"]
    assert same["expected"] == pytest.approx((12.6 / 2.0 - 1) * np.mean([r["phases"]["plateau"]["rate_mbpb_per_kstep"]
                                                                      for r in seed_rates([(-4e-3, -5e-4, -5e-4)])]),
                                             rel=0.05)
    # seed-to-seed spread as large as the rates themselves: inconclusive with its MDE
    noisy = F.verdict_f1(seed_rates([(-4e-3, -1e-4, -9e-4), (-4e-3, -1e-4, 2e-4), (-4e-3, -1e-4, -7e-4)]))
    assert noisy["verdict"] == F.INCONCLUSIVE and "MDE" in noisy["reason"] and "expected" in noisy["reason"]
    # one seed (a single dict): no spread
    one = F.verdict_f1(seed_rates([(-4e-3, -1e-4, -5e-4)])[0])
    assert one["verdict"] == F.INCONCLUSIVE and one["n"] == 1 and "(5.0×" in one["ours"]


def test_f2_three_outcomes():
    steps = [100, 200, 300, 400]
    wiggle = np.array([1.0, 1.001, 0.999, 1.0])
    shrink = F.verdict_f2(F.compressibility(steps, 500e3 * (np.array(steps) / 100) ** -0.05 * wiggle))
    grow = F.verdict_f2(F.compressibility(steps, 500e3 * (np.array(steps) / 100) ** 0.03 * wiggle))
    assert shrink["verdict"] == F.AGREES and grow["verdict"] == F.DISAGREES
    assert shrink["text"] != grow["text"] and shrink["n"] == 4 and "opposite" in grow["reason"]
    noisy = F.verdict_f2(F.compressibility(steps, [500e3, 560e3, 470e3, 530e3]))
    assert noisy["verdict"] == F.INCONCLUSIVE
    two = F.verdict_f2(F.compressibility([100, 200], [520e3, 500e3]))
    assert two["verdict"] == F.INCONCLUSIVE and "n=2 < 3 runs" in two["reason"]


def test_f4_three_outcomes():
    k = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    yes = F.verdict_f4(F.ttt_gain_vs_frozen(k, [-0.010, -0.011, -0.009, -0.020, -0.022, -0.019,
                                                -0.015, -0.016, -0.014]))
    assert yes["verdict"] == F.AGREES and "best freeze 1" in yes["ours"] and "Bonferroni over 2" in yes["criterion"]
    assert yes["level"] == pytest.approx(0.975) and "97.5% CI" in yes["ours"] and "95% CI" not in yes["ours"]
    assert yes["expected"] is None and yes["magnitude"] is None  # nothing published to compare with
    no = F.verdict_f4(F.ttt_gain_vs_frozen(k, [-0.030, -0.031, -0.029, -0.020, -0.022, -0.019,
                                               -0.015, -0.016, -0.014]))
    assert no["verdict"] == F.DISAGREES and "best freeze 0" in no["ours"]
    tiny = F.verdict_f4(F.ttt_gain_vs_frozen([0, 0, 0, 1, 1, 1], [-2e-4, -3e-4, -2e-4, -3e-4, -4e-4, -3e-4]))
    assert tiny["verdict"] == F.INCONCLUSIVE and "too small to rank" in tiny["ours"] and "best freeze 1" in tiny["ours"]
    with pytest.raises(ValueError, match="freeze-0"):
        F.verdict_f4(F.ttt_gain_vs_frozen([1, 2], [-0.01, -0.02]))
    # paired: a per-seed shift shared by both arms (the base model, the machine) is not noise
    shared = np.array([-0.010, -0.020, -0.015])
    paired = F.verdict_f4(F.ttt_gain_vs_frozen([0, 0, 0, 1, 1, 1], np.r_[shared, shared - 0.002 + [0, 1e-4, -1e-4]]))
    assert paired["verdict"] == F.AGREES and paired["effect"] == pytest.approx(-0.002)
    assert F.compare_settings(shared - 0.002, shared, 0.05)["ci_high"] > 0  # Welch would not see it


def test_f5_three_outcomes():
    base = [2.3, 2.2, 2.1, 2.0]
    falls = F.verdict_f5(F.ttt_share(base, [2.2, 2.12, 2.045, 1.98], baseline_bpb=2.5))  # gains 100, 80, 55, 20 mBPB
    assert falls["verdict"] == F.AGREES and "too small" not in falls["ours"]
    assert falls["gain_trend"]["slope"] > 0 and "the TTT gain itself" in falls["ours"]  # the gain shrinks too
    rises = F.verdict_f5(F.ttt_share(base, [2.29, 2.17, 2.04, 1.9], baseline_bpb=2.5))  # gains 10, 30, 60, 100
    assert rises["verdict"] == F.DISAGREES and "baseline 2.500" in rises["ours"]
    # shares fall as the base improves, but every TTT gain is ~0.2 mBPB: noise, not a finding
    tiny = F.verdict_f5(F.ttt_share(base, [2.2997, 2.1998, 2.0999, 1.9999], baseline_bpb=2.5))
    assert tiny["verdict"] == F.INCONCLUSIVE and "too small to rank" in tiny["ours"]
    assert F.verdict_f5(F.ttt_share(base, [2.2, 2.12, 2.045, 1.98], baseline_bpb=2.5), min_gain=0.2)["verdict"] \
        == F.INCONCLUSIVE
    three_runs_needed = F.verdict_f5(F.ttt_share(base[:2], [2.2, 2.12], baseline_bpb=2.5))
    assert three_runs_needed["verdict"] == F.INCONCLUSIVE
    same_final = F.verdict_f5(F.ttt_share(base, [1.9, 1.9, 1.9, 1.9], baseline_bpb=2.5))
    assert same_final["verdict"] == F.INCONCLUSIVE and "no trend" in same_final["reason"]


def test_judge_rule():
    assert F.judge(-1.0, (-1.5, -0.5), 0.3, -1.0)[0] == F.AGREES
    assert F.judge(-1.0, (-1.5, -0.5), 0.3, None)[0] == F.AGREES  # no published effect needed to agree
    assert F.judge(-0.2, (-0.3, -0.1), 0.1, -1.0)[0] == F.AGREES  # direction only; magnitude is another line
    assert F.judge(0.5, (0.2, 0.8), 0.3, None)[0] == F.DISAGREES  # the other side of 0
    assert F.judge(0.1, (-0.2, 0.4), 0.5, -1.0)[0] == F.DISAGREES  # holds 0, excludes the published -1
    assert F.judge(0.1, (-0.2, 0.4), 1.0, -1.0)[0] == F.DISAGREES  # no power gate: the interval decides
    assert F.judge(0.1, (-0.2, 0.4), 0.5, None)[0] == F.INCONCLUSIVE  # nothing published to exclude
    assert F.judge(0.1, (-0.2, 0.4), 0.5, 0.3)[0] == F.INCONCLUSIVE  # an expected effect on the wrong side is unused
    v, why = F.judge(-0.6, (-1.3, 0.1), 0.9, -1.0)
    assert v == F.INCONCLUSIVE and "MDE 0.9" in why  # holds both 0 and -1
    assert F.judge(-1.0, (-1.5, -0.5), 0.3, -1.0, ["n=2 < 3 seeds"]) == (F.INCONCLUSIVE, "n=2 < 3 seeds")
    assert F.judge(-1.0, (-1.5, -0.5), 0.3, -1.0, ["a", "a"]) == (F.INCONCLUSIVE, "a")
    assert F.judge(-1.0, (math.nan, math.nan), math.nan, -1.0)[0] == F.INCONCLUSIVE
    assert F.VERDICTS == ("agrees", "does not agree", "inconclusive")


# ---------------------------------------------------------------------------
# The scipy.stats calls against the hand formulas they replaced (written out slowly)


def _slow_welch(a, b, alpha):
    na, nb = len(a), len(b)
    ma, mb = sum(a) / na, sum(b) / nb
    sa2 = sum((v - ma) ** 2 for v in a) / (na - 1)
    sb2 = sum((v - mb) ** 2 for v in b) / (nb - 1)
    va, vb = sa2 / na, sb2 / nb
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    h = stats.t.ppf(1 - alpha / 2, df) * se
    d = ma - mb
    return {"diff": d, "se": se, "df": df, "ci_low": d - h, "ci_high": d + h, "t": d / se}


def _slow_slope(x, y, alpha):
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((u - mx) ** 2 for u in x)
    slope = sum((u - mx) * (v - my) for u, v in zip(x, y)) / sxx
    icept = my - slope * mx
    sd = math.sqrt(sum((v - (slope * u + icept)) ** 2 for u, v in zip(x, y)) / (n - 2))
    se = sd / math.sqrt(sxx)
    h = stats.t.ppf(1 - alpha / 2, n - 2) * se
    return {"slope": slope, "intercept": icept, "sd": sd, "se": se, "ci_low": slope - h, "ci_high": slope + h}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_stats_match_the_slow_formulas_and_scipy(seed, alpha):
    rng = np.random.default_rng(seed)
    na, nb = 2 + seed % 4, 3 + seed % 3
    a = list(rng.normal(1.0, 0.05 * (1 + seed), na))
    b = list(rng.normal(1.02, 0.03, nb))
    c, ref = F.compare_settings(a, b, alpha), _slow_welch(a, b, alpha)
    for k, v in ref.items():
        assert c[k] == pytest.approx(v, rel=1e-12, abs=1e-13), k
    sc = stats.ttest_ind(a, b, equal_var=False)
    assert c["p_value"] == pytest.approx(sc.pvalue, rel=1e-12) and c["df"] == pytest.approx(sc.df, rel=1e-12)
    assert c["mde"] == pytest.approx(F.min_detectable_effect(ref["se"], ref["df"], alpha), rel=1e-12)

    m = F.mean_interval(a, alpha)
    mean = sum(a) / na
    se = math.sqrt(sum((v - mean) ** 2 for v in a) / (na - 1) / na)
    h = stats.t.ppf(1 - alpha / 2, na - 1) * se
    assert (m["ci_low"], m["ci_high"], m["se"]) == pytest.approx((mean - h, mean + h, se), rel=1e-12)
    lo, hi = stats.t.interval(1 - alpha, na - 1, loc=mean, scale=se)
    assert (m["ci_low"], m["ci_high"]) == pytest.approx((lo, hi), rel=1e-12)

    x = list(np.arange(3 + seed, dtype=float) * (1 + seed))
    y = list(2.0 - 0.3 * np.asarray(x) + rng.normal(0, 0.1, len(x)))
    s, ref = F.slope_effect(x, y, alpha), _slow_slope(x, y, alpha)
    for k, v in ref.items():
        assert s[k] == pytest.approx(v, rel=1e-12, abs=1e-13), k
    lr = stats.linregress(x, y)
    assert (s["slope"], s["se"]) == pytest.approx((lr.slope, lr.stderr), rel=1e-12)


def test_stats_edge_cases_unchanged():
    assert (F.mean_interval([2.0, 2.0, 2.0])["ci_low"], F.mean_interval([2.0, 2.0, 2.0])["ci_high"]) == (2.0, 2.0)
    assert math.isnan(F.mean_interval([2.0])["ci_low"])
    exact = F.slope_effect([0.0, 1.0, 2.0], [1.0, 3.0, 5.0])
    assert exact["slope"] == pytest.approx(2.0) and exact["ci_high"] - exact["ci_low"] == pytest.approx(0.0, abs=1e-12)


def test_f2_mechanism_fits():
    rms = [0.20, 0.22, 0.25, 0.27]
    sizes = [400e3 + 1e6 * r + d for r, d in zip(rms, [100.0, -80.0, 50.0, -70.0])]
    fit = F.size_vs_rms(sizes, rms)
    lr = stats.linregress(rms, sizes)
    assert fit["slope"] == pytest.approx(lr.slope) and fit["r2"] == pytest.approx(lr.rvalue ** 2)
    assert 0.99 < fit["r2"] <= 1.0
    steps = [450, 1000, 600, 750]  # any order: sorted inside
    rules = F.clip_rule_slopes(steps, {"a": [500e3 * (s / 450) ** -0.1 for s in steps], "b": [480e3] * 4})
    assert rules["a"]["slope"] == pytest.approx(-0.1) and rules["a"]["steps"] == [450, 600, 750, 1000]
    assert rules["b"]["slope"] == pytest.approx(0.0, abs=1e-12) and rules["b"]["relative_change"] == 0.0
    assert rules["a"]["relative_change"] == pytest.approx((1000 / 450) ** -0.1 - 1)
