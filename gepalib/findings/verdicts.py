"""Verdicts on the five findings, by one rule (docs/study.md), with a magnitude line beside each.

Each ``verdict_fN`` returns a dict with the keys ``finding``, ``title``, ``agrees``
(bool), ``verdict``, ``ours``, ``published``, ``criterion``, ``rule``, ``text`` and the
numbers behind it: ``effect`` (our estimate), ``interval`` (two-sided, at ``level``),
``test`` (``paired t`` / ``slope t``), ``sd`` (of the per-seed differences, or residual
about a trend), ``mde`` (minimum detectable effect at 80% power for this n and sd),
``expected`` (the published effect scaled to our regime, or None where nothing was
published), ``n``, ``reason`` and ``magnitude`` (where the finding states one: the
measured ratio or slope with its interval, and whether the published value lies in it).

Every effect is oriented so that the finding's direction is negative. The rule (:data:`RULE`):

* **agrees**: the interval lies below 0, on the finding's side;
* **does not agree**: it lies above 0, or it holds 0 but excludes the expected effect
  computed from a published number;
* **inconclusive**: anything else, with the MDE; and whenever the experiment cannot decide:
  not in its finding's regime (the blockers of :mod:`gepalib.findings.calibration`), fewer
  than ``min_seeds`` (3) seeds or runs, or a TTT gain that is itself below noise.

Direction and magnitude are separate questions: a finding can agree in direction while its
published magnitude lies outside our interval (the magnitude line says so).

The effects and tests (arms that share a base model and scored tokens are paired):

* F1: per seed, warmdown rate − plateau rate (mBPB/kstep), paired t. Expected: (R − 1) × our
  plateau rate with R = 12.6 / 2.0 the published ratio (PR #628). Magnitude: the per-seed
  ratio warmdown / plateau against R.
* F2: slope of log(artifact size) on log(steps) over the ladder, slope t (df = runs − 2).
  Expected and magnitude: the published slope (PR #628's table).
* F3: per seed, SGD's − AdamW's TTT gain (bpb), paired t; both gains above noise. Expected:
  the published difference as a fraction of the published larger gain (PRs #461/#456), times
  our larger gain. Magnitude: the per-seed ratio of the gains against 2.4×.
* F4: per seed, the best freeze with ≥1 frozen block − freeze 0 (bpb), paired t at a
  Bonferroni level for the freezes tried (its interval is labelled with that level). The
  submission published no freezing ablation: no expected effect, no magnitude.
* F5: slope of the TTT share on log(total gain over the baseline), slope t. Expected: the
  published slope relative to the published mean share (PR #628, 22% → 13%), times our mean
  share; magnitude: the relative slopes. Beside it, the TTT gain's own trend (a share of a
  constant gain falls as the total grows).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.stats import t as t_dist

from gepalib.findings import reference as R
from gepalib.findings.analysis import compressibility, phase_rates, ttt_gain_by_optimizer, ttt_share
from gepalib.findings.calibration import gain_blockers
from gepalib.findings.stats import (ALPHA, POWER, as_1d, compare_paired, level_text, ratio_interval,
                                    significance_text, slope_effect)

AGREES = "agrees"
DISAGREES = "does not agree"
INCONCLUSIVE = "inconclusive"
VERDICTS = (AGREES, DISAGREES, INCONCLUSIVE)
MIN_SEEDS = 3
MIN_GAIN = 0.001  # 1 mBPB: a TTT gain below this is not ranked

RULE = ("agrees if the interval lies below 0 (the finding's side); does not agree if it lies above 0, or if it "
        "holds 0 but excludes the expected effect computed from a published number; otherwise inconclusive (with "
        "the MDE at 80% power); inconclusive too outside the finding's regime, with < 3 seeds or runs, or with a "
        "TTT gain below noise")


# ---------------------------------------------------------------------------
# The decision, shared by every finding


def judge(effect: float, interval: tuple[float, float], mde: float, expected: float | None = None,
          blockers: Sequence[str] = ()) -> tuple[str, str]:
    """(verdict, reason) by :data:`RULE` for an effect whose finding's direction is negative.

    ``expected`` is the effect a published number predicts here (None: nothing published;
    a value ≥ 0 is not in the finding's direction and is not used). ``blockers`` are reasons
    the experiment cannot decide; any makes it inconclusive.
    """
    if blockers:
        return INCONCLUSIVE, "; ".join(dict.fromkeys(blockers))
    lo, hi = interval
    if not all(math.isfinite(v) for v in (effect, lo, hi)):
        return INCONCLUSIVE, "no noise estimate (interval undefined)"
    if hi < 0:
        return AGREES, "the interval lies below 0, on the finding's side"
    if lo > 0:
        return DISAGREES, "the interval lies above 0, on the opposite side"
    has_expected = expected is not None and math.isfinite(expected) and expected < 0
    if has_expected and lo > expected:
        return DISAGREES, f"the interval holds 0 but excludes the published expected effect {expected:+.3g}"
    mde_txt = f"MDE {mde:.3g}" if math.isfinite(mde) else "MDE undefined"
    also = f" and the expected effect {expected:+.3g}" if has_expected else ""
    return INCONCLUSIVE, f"the interval holds 0{also} ({mde_txt})"


def magnitude(value: float, interval: tuple[float, float], level: float, published: float, what: str,
              source: str) -> dict[str, Any]:
    """The magnitude line: a measured ratio or slope with its interval, and whether the
    published value lies in it (None where the interval is undefined)."""
    lo, hi = interval
    ok = all(math.isfinite(v) for v in (value, lo, hi))
    inside = (lo <= published <= hi) if ok else None
    where = "n/a" if not ok else ("lies in it" if inside else "lies outside it")
    text = (f"{what}: ours {value:.3g} [{level_text(1 - level)} CI {lo:.3g}, {hi:.3g}]" if ok else
            f"{what}: ours {value:.3g}, no interval") + f"; published {published:.3g} ({source}) {where}"
    return {"what": what, "value": _num(value), "interval": [_num(lo), _num(hi)], "level": level,
            "published": published, "source": source, "published_in_interval": inside, "text": text}


def _regime(regime: Sequence[str]) -> list[str]:
    """Calibration blockers (gepalib.findings.calibration): the experiment is not in its regime."""
    return [f"not in the finding's regime: {r}" for r in regime]


def _blockers(regime: Sequence[str], *others: Sequence[str]) -> list[str]:
    """The regime's blockers, then the others that the regime did not already say."""
    out = _regime(regime)
    return out + [b for group in others for b in group if not any(b in r for r in regime)]


def _few(n: int, min_n: int, what: str = "seeds per setting") -> list[str]:
    return [f"n={n} < {min_n} {what}"] if n < min_n else []


def _num(x: float | None) -> float | None:  # None where undefined: the record stays strict JSON
    return float(x) if x is not None and math.isfinite(x) else None


def _stats_text(effect: float, interval: tuple[float, float], sd: float, mde: float, expected: float | None,
                n: int, unit: str, scale: float = 1.0, level: float = 1 - ALPHA) -> str:
    def f(v: float | None, sign: str = "+") -> str:
        return "n/a" if v is None or not math.isfinite(v) else f"{scale * v:{sign}.3g}"

    exp = f"expected {f(expected)}" if expected is not None else "no published expected effect"
    return (f"effect {f(effect)} {unit} [{level_text(1 - level)} CI {f(interval[0])}, {f(interval[1])}], "
            f"sd {f(sd, '')}, MDE {f(mde, '')}, {exp}, n={n}")


def _verdict(finding: str, title: str, verdict: str, reason: str, ours: str, published: str, criterion: str,
             *, effect: float, expected: float | None, interval: tuple[float, float], sd: float, mde: float, n: int,
             unit: str, test: str, level: float = 1 - ALPHA, mag: Mapping[str, Any] | None = None,
             **extra: Any) -> dict[str, Any]:
    text = f"{finding} ({title}): {verdict} ({reason}). Ours: {ours}. Submission: {published}."
    if mag is not None:
        text += f" Magnitude: {mag['text']}."
    return {"finding": finding, "title": title, "agrees": verdict == AGREES, "verdict": verdict, "ours": ours,
            "published": published, "criterion": criterion, "rule": RULE, "reason": reason, "effect": _num(effect),
            "expected": _num(expected), "interval": [_num(interval[0]), _num(interval[1])], "level": level,
            "test": test, "sd": _num(sd), "mde": _num(mde), "n": int(n), "unit": unit,
            "magnitude": dict(mag) if mag is not None else None, **extra,
            "text": text + f" Criterion: {criterion}."}


# ---------------------------------------------------------------------------
# F1 and F2


def _f1_rates(rates: Mapping[str, Any]) -> tuple[float, float, float]:
    ph = rates["phases"]
    if "plateau" not in ph or "warmdown" not in ph or "early" not in ph:
        raise ValueError(f"verdict_f1 needs 'early', 'plateau' and 'warmdown' phases, got {sorted(ph)}")
    return tuple(ph[k]["rate_mbpb_per_kstep"] for k in ("early", "plateau", "warmdown"))  # type: ignore


def f1_published_ratio() -> float:
    """The published warmdown / plateau rate ratio, 12.6 / 2.0 mBPB/kstep (PR #628)."""
    pr = {r["phase"]: r["rate_mbpb_per_kstep"] for r in R.F1_PHASES}
    return pr["warmdown"] / pr["plateau"]


def verdict_f1(rates: Mapping[str, Any] | Sequence[Mapping[str, Any]], *, alpha: float = ALPHA,
               power: float = POWER, min_seeds: int = MIN_SEEDS, regime: Sequence[str] = ()) -> dict[str, Any]:
    """F1 from :func:`phase_rates` of each seed's trajectory (one dict = one seed): the warmdown
    improves bpb faster per step than the late plateau (paired over seeds: the same run's phases)."""
    seeds = [rates] if isinstance(rates, Mapping) else list(rates)
    if not seeds:
        raise ValueError("verdict_f1: no phase rates")
    e, p, w = (np.array(v, dtype=float) for v in zip(*(_f1_rates(r) for r in seeds)))
    cmp = compare_paired(w, p, alpha, power)
    ratio_pub = f1_published_ratio()
    expected = (ratio_pub - 1) * float(p.mean())
    blockers = _blockers(regime, _few(len(seeds), min_seeds, "seeds"),
                         [f"the early phase does not improve bpb ({e.mean():+.1f} mBPB/kstep)"] if e.mean() >= 0 else [],
                         [f"the warmdown does not improve bpb ({w.mean():+.1f} mBPB/kstep)"] if w.mean() >= 0 else [])
    interval = (cmp["ci_low"], cmp["ci_high"])
    verdict, reason = judge(cmp["diff"], interval, cmp["mde"], expected, blockers)
    ri = ratio_interval(w, p, alpha)
    mag = magnitude(ri["ratio"], (ri["ci_low"], ri["ci_high"]), 1 - alpha, ratio_pub,
                    "warmdown / plateau rate", "PR #628: 12.6 vs 2.0 mBPB/kstep")
    unit = "mBPB/kstep"
    ours = (f"warmdown {w.mean():+.1f} vs plateau {p.mean():+.1f} mBPB/kstep ({ri['ratio']:.1f}×; per seed "
            + " / ".join(f"{x:.1f}" for x in ri["values"]) + f"); {significance_text(cmp, alpha)}; "
            + _stats_text(cmp["diff"], interval, cmp["sd"], cmp["mde"], expected, len(seeds), unit))
    published = f"warmdown −12.6 vs plateau −2.0 mBPB/kstep (≈{R.F1_RATIO:.0f}×)"
    criterion = (f"paired t over ≥{min_seeds} seeds of warmdown rate − plateau rate; expected (R − 1) × our plateau "
                 f"rate with the published R = {ratio_pub:.2f}; magnitude: the per-seed ratio against R")
    return _verdict("F1", "warmdown is a first-class variable", verdict, reason, ours, published, criterion,
                    effect=cmp["diff"], expected=expected, interval=interval, sd=cmp["sd"], mde=cmp["mde"],
                    n=len(seeds), unit=unit, test="paired t", level=1 - alpha, mag=mag,
                    differences=cmp["differences"])


def _elasticity(comp: Mapping[str, Any], alpha: float, power: float) -> dict[str, Any]:
    return slope_effect(np.log(comp["steps"]), np.log(comp["artifact_bytes"]), alpha, power)


def verdict_f2(comp: Mapping[str, Any], *, alpha: float = ALPHA, power: float = POWER,
               min_runs: int = MIN_SEEDS, regime: Sequence[str] = ()) -> dict[str, Any]:
    """F2 from :func:`compressibility`: the artifact shrinks with training length (the
    log-log slope of size on steps is negative)."""
    el = _elasticity(comp, alpha, power)
    expected = _elasticity(_published_f2(), alpha, power)["slope"]
    interval = (el["ci_low"], el["ci_high"])
    verdict, reason = judge(el["slope"], interval, el["mde"], expected,
                            _blockers(regime, _few(comp["n"], min_runs, "runs")))
    mag = magnitude(el["slope"], interval, 1 - alpha, expected, "log-log slope of size on steps",
                    "PR #628's 9k–20k table")
    rho = comp["spearman_steps"]
    ours = (f"artifact {comp['relative_change']:+.2%} from shortest to longest run "
            f"(ρ={rho:+.2f}, exact p={comp['spearman_p_steps']:.3g}, n={comp['n']}); "
            + _stats_text(el["slope"], interval, el["sd"], el["mde"], expected, comp["n"], "(log-log slope)"))
    pub = _published_f2()
    published = (f"{R.F2_ROWS[0]['artifact_mib']:.2f} → {R.F2_ROWS[-1]['artifact_mib']:.2f} MiB for "
                 f"{R.F2_ROWS[0]['steps'] // 1000}k → {R.F2_ROWS[-1]['steps'] // 1000}k steps "
                 f"({pub['relative_change']:+.2%}, ρ={pub['spearman_steps']:+.2f}, log-log slope {expected:+.3f})")
    criterion = (f"t interval (df = runs − 2, ≥{min_runs} runs) of the slope of log(artifact size) on "
                 f"log(steps); expected and magnitude: the published slope {expected:+.3f}")
    return _verdict("F2", "better-trained models compress smaller", verdict, reason, ours, published, criterion,
                    effect=el["slope"], expected=expected, interval=interval, sd=el["sd"], mde=el["mde"],
                    n=comp["n"], unit="log-log slope", test="slope t", level=1 - alpha, mag=mag)


# ---------------------------------------------------------------------------
# F3, F4, F5: test-time training


def verdict_f3(by_opt: Mapping[str, Any], *, alpha: float = ALPHA, power: float = POWER,
               min_gain: float = MIN_GAIN, min_seeds: int = MIN_SEEDS, regime: Sequence[str] = ()) -> dict[str, Any]:
    """F3 from :func:`ttt_gain_by_optimizer`: the numerator's (SGD's) TTT gain is larger than the
    denominator's (AdamW's); paired over seeds (both adapt the same base on the same tokens)."""
    num, den = by_opt["numerator"], by_opt["denominator"]
    per = by_opt["per_optimizer"]
    gn, gd = per[num]["mean"], per[den]["mean"]
    cmp = compare_paired(per[num]["values"], per[den]["values"], alpha, power)
    noise = gain_blockers({num: per[num]["values"], den: per[den]["values"]}, min_gain, alpha)
    pub = {r["optimizer"]: r["float_to_final"] for r in R.F3_ROWS if r["source"] in ("PR #456", "PR #461")}
    rel = (pub["sgd"] - pub["adamw"]) / abs(min(pub.values()))
    expected = rel * abs(min(gn, gd))
    n = cmp["n_a"]
    interval = (cmp["ci_low"], cmp["ci_high"])
    verdict, reason = judge(cmp["diff"], interval, cmp["mde"], expected,
                            _blockers(regime, _few(n, min_seeds), noise))
    ri = ratio_interval(per[num]["values"], per[den]["values"], alpha)
    mag = magnitude(ri["ratio"], (ri["ci_low"], ri["ci_high"]), 1 - alpha, pub["sgd"] / pub["adamw"],
                    f"{num} / {den} TTT gain", "PR #461 vs PR #456: −0.017 vs −0.007")
    small = "".join(f"; {b}" for b in noise if "too small" in b)
    ours = (f"{num} {gn:+.4f} vs {den} {gd:+.4f} bpb ({by_opt['ratio']:.2f}×; {significance_text(cmp, alpha)})"
            f"{small}; " + _stats_text(cmp["diff"], interval, cmp["sd"], cmp["mde"], expected, n, "mBPB", 1000))
    published = (f"sgd {R.F3_ROWS[1]['float_to_final']:+.3f} vs adamw {R.F3_ROWS[0]['float_to_final']:+.3f} bpb "
                 f"({R.F3_RATIO:.1f}×, one run each)")
    criterion = (f"paired t over ≥{min_seeds} seeds of {num}'s − {den}'s TTT gain; both gains ≥ "
                 f"{1000 * min_gain:g} mBPB with intervals below 0; expected {rel:.2f}× our larger gain (the "
                 f"published difference per larger gain); magnitude: the per-seed gain ratio against "
                 f"{pub['sgd'] / pub['adamw']:.2f}")
    return _verdict("F3", f"{num} beats {den} for legal TTT", verdict, reason, ours, published, criterion,
                    effect=cmp["diff"], expected=expected, interval=interval, sd=cmp["sd"], mde=cmp["mde"], n=n,
                    unit="bpb", test="paired t", level=1 - alpha, mag=mag, differences=cmp["differences"])


def verdict_f4(vs_frozen: Mapping[str, Any], *, alpha: float = ALPHA, power: float = POWER,
               min_gain: float = MIN_GAIN, min_seeds: int = MIN_SEEDS, regime: Sequence[str] = ()) -> dict[str, Any]:
    """F4 from :func:`ttt_gain_vs_frozen`: freezing ≥1 leading block gives a larger TTT gain than
    freezing none; paired over seeds, at a Bonferroni level for the freezes compared."""
    per = vs_frozen["per_freeze"]
    if 0 not in per or len(per) < 2:
        raise ValueError(f"verdict_f4 needs freeze-0 runs and at least one other freeze, got {sorted(per)}")
    best, frozen = vs_frozen["best_freeze"], vs_frozen["best_frozen"]
    m = len(per) - 1  # freezes compared with freeze 0: Bonferroni
    level = 1 - alpha / m
    cmp = compare_paired(per[frozen]["values"], per[0]["values"], alpha / m, power)
    noise = gain_blockers({f"best (freeze {best})": per[best]["values"]}, min_gain, alpha)
    n = cmp["n_a"]
    interval = (cmp["ci_low"], cmp["ci_high"])
    verdict, reason = judge(cmp["diff"], interval, cmp["mde"], None, _blockers(regime, _few(n, min_seeds), noise))
    gains = ", ".join(f"freeze {k}: {v['mean']:+.4f}" for k, v in sorted(per.items()))
    small = "".join(f"; {b}" for b in noise if "too small" in b)
    ours = (f"best freeze {best} ({gains}; freeze {frozen} vs 0: {significance_text(cmp, alpha / m)}){small}; "
            + _stats_text(cmp["diff"], interval, cmp["sd"], cmp["mde"], None, n, "mBPB", 1000, level))
    published = (f"freeze {R.F4['frozen_blocks']} of {R.F4['num_layers']} blocks "
                 f"(~{R.F4['depth_fraction']:.0%} of depth); qualitative, no ablation numbers")
    criterion = (f"paired t over ≥{min_seeds} seeds of the best freeze ≥1's − freeze 0's TTT gain, "
                 f"{level_text(alpha / m)} interval (Bonferroni over {m} freezes); the best gain ≥ "
                 f"{1000 * min_gain:g} mBPB with an interval below 0; the submission published no ablation, so "
                 f"there is no expected effect")
    return _verdict("F4", "freezing early blocks regularizes TTT", verdict, reason, ours, published, criterion,
                    effect=cmp["diff"], expected=None, interval=interval, sd=cmp["sd"], mde=cmp["mde"], n=n,
                    unit="bpb", test="paired t", level=level, differences=cmp["differences"])


def _share_slope(share: Mapping[str, Any], alpha: float, power: float) -> dict[str, Any]:
    return slope_effect(np.log(share["total_gain"]), share["share"], alpha, power)


def _trend_mean_interval(x: Any, y: Any, alpha: float) -> dict[str, Any]:
    """The mean of ``y`` with an interval from its scatter about a line in ``x`` (runs of a
    ladder differ by design; only the scatter about the trend is noise)."""
    y = as_1d(y, "y")
    n = y.size
    mean = float(y.mean())
    if n < 3:
        return {"mean": mean, "ci_high": math.nan, "ci_low": math.nan, "n": n}
    sd = slope_effect(x, y, alpha)["sd"]
    h = float(t_dist.ppf(1 - alpha / 2, n - 2)) * sd / math.sqrt(n)
    return {"mean": mean, "ci_low": mean - h, "ci_high": mean + h, "n": n}


def _f5_gain(share: Mapping[str, Any], gains: np.ndarray, min_gain: float, alpha: float,
             power: float) -> tuple[list[str], dict[str, Any] | None]:
    """(blockers, the gain's own trend): is the mean TTT gain above the noise about its trend?"""
    if np.ptp(share["total_gain"]) == 0:  # every run ends at the same bpb: no trend to fit
        return ["every run has the same total gain: no trend"], None
    x = np.log(share["total_gain"])
    mi = _trend_mean_interval(x, gains, alpha)
    helped = -mi["mean"]
    if helped < min_gain:
        out = [f"the mean TTT gain {1000 * helped:.2f} mBPB is below {1000 * min_gain:g} mBPB, too small to rank"]
    elif not math.isfinite(mi["ci_high"]):
        out = [f"the mean TTT gain {1000 * helped:.2f} mBPB has no noise estimate (n={mi['n']})"]
    elif not mi["ci_high"] < 0:
        out = [f"the mean TTT gain {1000 * helped:.2f} mBPB is below noise (its interval reaches 0)"]
    else:
        out = []
    return out, slope_effect(x, gains, alpha, power)


def verdict_f5(share: Mapping[str, Any], *, alpha: float = ALPHA, power: float = POWER,
               min_gain: float = MIN_GAIN, min_runs: int = MIN_SEEDS, regime: Sequence[str] = ()) -> dict[str, Any]:
    """F5 from :func:`ttt_share`: the TTT share falls as the base improves (the slope of share on
    log(total gain) is negative), TTT itself helps by more than noise; beside it, the trend of
    the TTT gain itself."""
    sv = share["share_vs_float"]
    if sv is None:
        raise ValueError("verdict_f5 needs at least 2 base models")
    n = int(np.asarray(share["share"]).size)
    gains = as_1d(share["delta"], "delta")
    noise, gain_trend = _f5_gain(share, gains, min_gain, alpha, power)
    nan = {"slope": math.nan, "ci_low": math.nan, "ci_high": math.nan, "sd": math.nan, "mde": math.nan}
    sl = _share_slope(share, alpha, power) if gain_trend is not None else nan
    pub = published_results()["F5"]
    pub_rel = _share_slope(pub, alpha, power)["slope"] / float(np.mean(pub["share"]))
    mean_share = float(np.mean(share["share"]))
    expected = pub_rel * mean_share
    blockers = _blockers(regime, _few(n, min_runs, "runs"), noise)
    if not blockers and mean_share <= 0:
        blockers.append("the mean TTT share is not positive")
    interval = (sl["ci_low"], sl["ci_high"])
    verdict, reason = judge(sl["slope"], interval, sl["mde"], expected, blockers)
    ms = mean_share if mean_share > 0 else math.nan
    mag = magnitude(sl["slope"] / ms, (interval[0] / ms, interval[1] / ms), 1 - alpha, pub_rel,
                    "share slope per mean share", "PR #628: 22% → 13%")
    order = np.argsort(-share["float_bpb"], kind="stable")  # worst base first
    digits = 0 if np.all(np.abs(share["share"]) >= 0.01) else 2
    shares = " → ".join(f"{100 * x:.{digits}f}%" for x in share["share"][order])
    ours = (f"share {shares} as float bpb goes {share['float_bpb'][order][0]:.3f} → "
            f"{share['float_bpb'][order][-1]:.3f} (ρ={sv['spearman']:+.2f}, baseline {share['baseline_bpb']:.3f})")
    if noise:
        ours += f"; {noise[0]}"
    ours += "; " + _stats_text(sl["slope"], interval, sl["sd"], sl["mde"], expected, n, "share per e-fold")
    trend = None
    if gain_trend is not None:
        trend = {k: _num(gain_trend[k]) for k in ("slope", "ci_low", "ci_high", "mde")}
        ours += (f"; the TTT gain itself {1000 * gain_trend['slope']:+.2f} mBPB per e-fold "
                 f"[{level_text(alpha)} CI {1000 * gain_trend['ci_low']:+.2f}, {1000 * gain_trend['ci_high']:+.2f}]"
                 if math.isfinite(gain_trend["ci_low"]) else "")
    published = (" → ".join(f"{r['share_pct']}%" for r in R.F5_ROWS)
                 + f" as float bpb goes {R.F5_ROWS[0]['float_bpb']:.3f} → {R.F5_ROWS[-1]['float_bpb']:.3f} "
                 f"(baseline {R.NAIVE_BASELINE_BPB})")
    criterion = (f"t interval (df = runs − 2, ≥{min_runs} runs) of the slope of the TTT share on log(total gain "
                 f"over the baseline); the mean TTT gain ≥ {1000 * min_gain:g} mBPB with an interval (from its "
                 f"scatter about its own trend) below 0; expected {pub_rel:+.2f}× our mean share (the published "
                 f"slope per mean share); the TTT gain's own trend reported beside it")
    return _verdict("F5", "TTT's share shrinks as the base improves", verdict, reason, ours, published, criterion,
                    effect=sl["slope"], expected=expected, interval=interval, sd=sl["sd"], mde=sl["mde"], n=n,
                    unit="share per e-fold of total gain", test="slope t", level=1 - alpha, mag=mag,
                    gain_trend=trend)


# ---------------------------------------------------------------------------
# Tables and the published numbers run through the same functions


def _published_f2() -> dict[str, Any]:
    rows = R.F2_ROWS
    return compressibility([r["steps"] for r in rows], [r["artifact_mib"] * R.MIB for r in rows],
                           [r["float_bpb"] for r in rows])


def published_results() -> dict[str, Any]:
    """Every finding computed from :mod:`gepalib.findings.reference`'s tables."""
    st, bp = zip(*R.TRAJECTORY)
    f3 = {"sgd": R.F3_ROWS[1]["float_to_final"], "adamw": R.F3_ROWS[0]["float_to_final"]}  # PR #461 vs #456
    f5 = R.F5_ROWS
    return {
        "F1": phase_rates(st, bp, total_steps=R.HEADLINE["steps"], warmdown=R.HEADLINE["warmdown"]),
        "F2": _published_f2(),
        "F3": ttt_gain_by_optimizer(f3),
        "F5": ttt_share([r["float_bpb"] for r in f5], [r["final_bpb"] for r in f5], R.NAIVE_BASELINE_BPB),
    }


__all__ = ["AGREES", "DISAGREES", "INCONCLUSIVE", "VERDICTS", "MIN_SEEDS", "MIN_GAIN", "RULE", "judge", "magnitude",
           "f1_published_ratio", "verdict_f1", "verdict_f2", "verdict_f3", "verdict_f4", "verdict_f5",
           "published_results"]
