"""The calibration checks (gepalib.findings.calibration) and how verdicts use them."""
from __future__ import annotations

import math

import numpy as np
import pytest

from gepalib import findings as F
from gepalib.findings import calibration as C

STEPS = np.arange(0, 1001, 25, dtype=float)


def exp_curve(tau: float, a: float = 1.5, c: float = 0.8, steps=STEPS):
    return a + c * np.exp(-steps / tau)


# ---------------------------------------------------------------------------
# F1


def test_f1_in_regime_when_the_plateau_comes_before_the_plateau_phase():
    cal = C.f1_calibration(STEPS, exp_curve(80.0), plateau_start=350, warmdown_start=600)
    assert cal["in_regime"] and cal["blockers"] == []
    # exponential approach: the rate falls to a third after tau*ln 3 (~88 steps) past the first window
    assert 75 <= cal["plateau_step"] <= 200
    assert cal["early_rate_mbpb_per_kstep"] > 0
    assert 0 < cal["late_to_early"] < 1 / 3
    assert len(cal["rate_centres"]) == len(cal["rates_mbpb_per_kstep"]) == STEPS.size - 1 - 4


def test_f1_not_in_regime_for_a_curve_that_keeps_improving():
    line = 2.0 - 0.0005 * STEPS
    cal = C.f1_calibration(STEPS, line, plateau_start=350, warmdown_start=600)
    assert not cal["in_regime"] and cal["plateau_step"] is None
    assert "never falls below" in cal["blockers"][0]


def test_f1_not_in_regime_when_the_plateau_comes_too_late():
    cal = C.f1_calibration(STEPS, exp_curve(300.0), plateau_start=200, warmdown_start=600)
    assert not cal["in_regime"] and cal["plateau_step"] > 200
    assert "lengthen the peak phase" in cal["blockers"][0]


# ---------------------------------------------------------------------------
# F2


def _ref_growth_end(steps, rms, ratio=0.05, window=3):
    """Slow reference: slopes of ln(rms) through each window by the normal equations."""
    ln = np.log(rms)
    cs, rs = [], []
    for k in range(len(steps) - window + 1):
        x, y = steps[k:k + window], ln[k:k + window]
        xm, ym = sum(x) / window, sum(y) / window
        rs.append(sum((a - xm) * (b - ym) for a, b in zip(x, y)) / sum((a - xm) ** 2 for a in x))
        cs.append(xm)
    k0 = rs.index(max(rs))
    for k in range(k0 + 1, len(rs)):
        if all(r < ratio * rs[k0] for r in rs[k:]):
            return int(round(cs[k]))
    return None


def test_growth_end_of_a_saturating_curve():
    tau = 130.0
    rms = 0.3 - 0.25 * np.exp(-STEPS / tau)
    end = C.growth_end(STEPS, rms)
    assert end == _ref_growth_end(list(STEPS), list(rms))
    # d ln rms / ds = (0.25/tau) e^{-s/tau} / rms(s): 5% of its value at s = 0 near s ~ tau ln(20 * 0.3/0.05) / ...
    assert 250 <= end <= 600


def test_growth_end_none_while_growing_and_a_peak_counts():
    exp_growth = 0.05 * np.exp(STEPS / 500.0)  # constant relative rate: never ends
    assert C.growth_end(STEPS, exp_growth) is None
    peak = np.where(STEPS <= 400, 0.1 + 0.001 * STEPS, 0.5 - 0.0002 * (STEPS - 400))
    end = C.growth_end(STEPS, peak)
    assert end == _ref_growth_end(list(STEPS), list(peak)) and 375 <= end <= 425
    assert C.growth_end([0, 25, 50], [0.1, 0.2, 0.3]) is None  # too short to tell
    with pytest.raises(ValueError):
        C.growth_end(STEPS, peak, ratio=0)


def test_f2_calibration_blockers():
    rms = 0.3 - 0.25 * np.exp(-STEPS / 60.0)
    ok = C.f2_calibration(STEPS, rms, [450, 600, 750, 1000])
    assert ok["in_regime"] and ok["growth_end_step"] <= 450
    assert ok["drift"] == pytest.approx(rms[-1] / np.interp(450, STEPS, rms) - 1)
    late = C.f2_calibration(STEPS, rms, [100, 200, 1000])
    assert not late["in_regime"] and "shortest rung (100)" in late["blockers"][0]
    growing = C.f2_calibration(STEPS, 0.05 * np.exp(STEPS / 500.0), [450])
    assert not growing["in_regime"] and "still grows" in growing["blockers"][0]


# ---------------------------------------------------------------------------
# TTT


def test_ttt_calibration():
    ok = C.ttt_calibration(32, 131_072, [-0.008, -0.007, -0.009])
    assert ok["in_regime"] and ok["gain_mbpb"] == pytest.approx(8.0)
    lo, hi = ok["gain_interval_mbpb"]
    assert lo < 8.0 < hi
    few = C.ttt_calibration(4, 16_384, [-0.0004, -0.0003, -0.0005])
    assert not few["in_regime"] and len(few["blockers"]) == 3  # chunks, targets, gain
    noisy = C.ttt_calibration(32, 131_072, [-0.010, 0.009, -0.004])
    assert not noisy["in_regime"] and "noise" in noisy["blockers"][0]


def test_ttt_regime_reads_what_ran_not_the_parameters():
    """The regime check counts chunks and targets in the TTT results: a run that scored fewer
    (another val_tokens, a larger chunk than the notebook asked for) fails it."""
    gains = {"sgd": [-0.008, -0.007, -0.009], "adamw": [-0.005, -0.006, -0.0055]}
    ran = [{"chunks": 32, "tokens": 131_072}] * 6
    assert C.ttt_regime(ran, gains)["in_regime"]
    # the notebook asked for 32 chunks of 4,096, but one run scored 16 chunks of 8,192
    short = C.ttt_regime(ran[:5] + [{"chunks": 16, "tokens": 131_072}], gains)
    assert not short["in_regime"] and short["n_chunks"] == 16 and "16 TTT chunks < 32" in short["blockers"][0]
    fewer = C.ttt_regime(ran[:5] + [{"chunks": 32, "tokens": 65_536}], gains)
    assert not fewer["in_regime"] and fewer["targets"] == 65_536
    with pytest.raises(ValueError, match="chunk/target counts"):
        C.ttt_regime([{"val_bpb": 1.0}], gains)
    with pytest.raises(ValueError, match="no TTT results"):
        C.ttt_regime([], gains)


def test_ttt_calibration_checks_every_arm():
    ok = C.ttt_calibration(32, 131_072, {"sgd": [-0.008, -0.007, -0.009], "adamw": [-0.005, -0.006, -0.0055]})
    assert ok["in_regime"] and ok["weakest_arm"] == "adamw" and ok["gain_mbpb"] == pytest.approx(5.5)
    assert set(ok["arms"]) == {"sgd", "adamw"}
    # the stronger arm is far above noise; the weaker one is not: out of regime
    weak = C.ttt_calibration(32, 131_072, {"sgd": [-0.020, -0.021, -0.019], "adamw": [-0.004, 0.003, -0.002]})
    assert not weak["in_regime"] and weak["blockers"] == [
        "the adamw TTT gain 1.00 mBPB is not above noise (its interval reaches 0)"]


def test_choose_setting():
    rows = [{"opt": "sgd", "lr": 0.01, "val_bpb": 1.50}, {"opt": "sgd", "lr": 0.02, "val_bpb": 1.49},
            {"opt": "adamw", "lr": 1e-3, "val_bpb": 1.495}, {"opt": "adamw", "lr": 3e-3, "val_bpb": 1.51}]
    assert C.choose_setting(rows)["lr"] == 0.02
    by = C.choose_setting(rows, by="opt")
    assert by["sgd"]["lr"] == 0.02 and by["adamw"]["lr"] == 1e-3
    with pytest.raises(ValueError):
        C.choose_setting([])


# ---------------------------------------------------------------------------
# Verdicts outside the regime


def _phase_rates(rate_wd: float, rate_plateau: float, rate_early: float = -50.0):
    return {"phases": {"early": {"rate_mbpb_per_kstep": rate_early}, "plateau": {"rate_mbpb_per_kstep": rate_plateau},
                       "warmdown": {"rate_mbpb_per_kstep": rate_wd}}, "warmdown_to_plateau_ratio": rate_wd / rate_plateau}


def test_a_clear_effect_outside_the_regime_is_inconclusive():
    seeds = [_phase_rates(-40.0 + d, -4.0 + d / 10) for d in (-1.0, 0.0, 1.0)]
    assert F.verdict_f1(seeds)["verdict"] == F.AGREES
    v = F.verdict_f1(seeds, regime=["no plateau"])
    assert v["verdict"] == F.INCONCLUSIVE and "not in the finding's regime: no plateau" in v["reason"]


def test_regime_reaches_every_ttt_verdict():
    by_opt = F.ttt_gain_by_optimizer({"sgd": [-0.010, -0.011, -0.012], "adamw": [-0.004, -0.005, -0.003]})
    assert F.verdict_f3(by_opt)["verdict"] == F.AGREES
    assert F.verdict_f3(by_opt, regime=["4 chunks"])["verdict"] == F.INCONCLUSIVE
    vs = F.ttt_gain_vs_frozen([0, 0, 0, 1, 1, 1], [-0.004, -0.005, -0.0045, -0.010, -0.011, -0.0105])
    assert F.verdict_f4(vs)["verdict"] == F.AGREES
    assert F.verdict_f4(vs, regime=["x"])["verdict"] == F.INCONCLUSIVE
