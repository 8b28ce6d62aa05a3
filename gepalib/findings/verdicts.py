"""Verdicts on the five findings, computed from the numbers with a stated statistical criterion.

Each ``verdict_fN`` returns a dict with the keys ``finding``, ``title``, ``agrees``
(bool), ``verdict``, ``ours``, ``published``, ``criterion``, ``text`` and the numbers
behind it: ``effect`` (our estimate), ``expected`` (the published effect scaled to our
regime), ``interval`` (its two-sided 95% interval), ``sd`` (seed-to-seed, or residual
about a trend), ``mde`` (minimum detectable effect at 80% power, alpha 0.05, for this n
and sd), ``n`` (seeds per setting, or runs in a trend) and ``reason``.

Every effect is oriented so that the published direction is negative. The rule:

* **agrees**: the interval lies entirely below 0 (the published direction, detected).
* **does not agree**: only where the experiment could have seen the published effect:
  MDE < |expected| and the interval excludes the expected effect (lies above it,
  possibly on the opposite side of 0).
* **inconclusive (underpowered)**: everything else: the calibration says the experiment
  is not in its finding's regime (``regime``: the blockers of
  :mod:`gepalib.findings.calibration`), fewer than ``min_seeds`` (3) seeds
  or runs, a TTT gain that is itself below noise (its interval reaches 0, or it is under
  ``min_gain``, 1 mBPB), MDE ≥ |expected|, or an interval holding both 0 and the expected effect.

The effects, with what "scaled to our regime" means for each:

* F1: Welch on per-seed rates, warmdown rate − ``threshold`` × plateau rate (mBPB/kstep).
  Expected: the published value of that difference as a fraction of the published
  early-phase rate (0.53 for threshold 2), times our early-phase rate.
* F2: slope of log(artifact size) on log(steps) over the ladder (an elasticity, unit-free):
  expected = the published elasticity.
* F3: Welch on per-seed TTT gains, SGD − AdamW (bpb). Expected: the published difference as
  a fraction of the published larger gain (0.59), times our larger gain.
* F4: Welch on per-seed TTT gains, the best freeze with ≥1 frozen block − freeze 0, with a
  Bonferroni-corrected level for the number of freezes tried. The submission published no
  ablation: expected = ``expected_rel`` (25%) of our best gain.
* F5: slope of the TTT share on log(total gain over the baseline) over the ladder. Expected:
  the published slope relative to the published mean share, times our mean share. The runs
  of a ladder differ by design, so the noise of their mean TTT gain is the gains' scatter
  about their own trend.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy.stats import t as t_dist

from gepalib.findings import reference as R
from gepalib.findings.analysis import compressibility, phase_rates, ttt_gain_by_optimizer, ttt_share
from gepalib.findings.stats import (ALPHA, POWER, as_1d, compare_settings, mean_interval, significance_text,
                                    slope_effect)

AGREES = "agrees"
DISAGREES = "does not agree"
INCONCLUSIVE = "inconclusive (underpowered)"
VERDICTS = (AGREES, DISAGREES, INCONCLUSIVE)
MIN_SEEDS = 3
MIN_GAIN = 0.001  # 1 mBPB: a TTT gain below this is not ranked
F4_EXPECTED_REL = 0.25

_RULE = ("agrees if the 95% interval excludes 0 in the published direction; does not agree only if "
         "MDE (80% power) < the expected effect and the interval excludes it; otherwise inconclusive")


# ---------------------------------------------------------------------------
# The decision, shared by every finding


def judge(effect: float, interval: tuple[float, float], mde: float, expected: float,
          blockers: Sequence[str] = (), *, direction_ok: bool = True) -> tuple[str, str]:
    """(verdict, reason) for an effect whose published direction is negative (``expected`` < 0).

    ``blockers`` are reasons the experiment cannot decide (too few seeds, TTT gain
    below noise); any makes it inconclusive. ``direction_ok`` False vetoes "agrees"
    (e.g. F1's warmdown did not improve bpb at all).
    """
    if blockers:
        return INCONCLUSIVE, "; ".join(blockers)
    lo, hi = interval
    if not all(math.isfinite(v) for v in (effect, lo, hi, mde, expected)):
        return INCONCLUSIVE, "no noise estimate (interval or MDE undefined)"
    if expected >= 0:
        return INCONCLUSIVE, f"the expected effect {expected:+.3g} is not in the published direction"
    if hi < 0 and direction_ok:
        return AGREES, "the interval excludes 0 in the published direction"
    if mde >= -expected:
        return INCONCLUSIVE, f"MDE {mde:.3g} ≥ |expected| {-expected:.3g}: the experiment could not see the effect"
    if lo > expected:
        side = " and lies on the opposite side of 0" if lo > 0 else ""
        return DISAGREES, f"powered (MDE {mde:.3g} < |expected| {-expected:.3g}) and the interval excludes " \
                          f"the expected effect{side}"
    return INCONCLUSIVE, "the interval holds both 0 and the expected effect"


def _gain_noise(gains: Any, min_gain: float, alpha: float, what: str,
                mi: Mapping[str, Any] | None = None) -> tuple[Mapping[str, Any], list[str]]:
    """Is a TTT gain (final − base, negative = helped) above noise? (its interval, blockers).

    ``mi`` is a precomputed :func:`mean_interval`-like dict (mean, ci_high, n); by
    default the t interval of the mean of ``gains``.
    """
    mi = mean_interval(gains, alpha) if mi is None else mi
    helped = -mi["mean"]
    out = []
    if helped < min_gain:
        out.append(f"{what} TTT gain {1000 * helped:.2f} mBPB is below {1000 * min_gain:g} mBPB, too small to rank")
    elif not math.isfinite(mi["ci_high"]):
        out.append(f"{what} TTT gain {1000 * helped:.2f} mBPB has no noise estimate (n={mi['n']})")
    elif not mi["ci_high"] < 0:
        out.append(f"{what} TTT gain {1000 * helped:.2f} mBPB is below noise (its interval reaches 0)")
    return mi, out


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


def _regime(regime: Sequence[str]) -> list[str]:
    """Calibration blockers (gepalib.findings.calibration): the experiment is not in its regime."""
    return [f"not in the finding's regime: {r}" for r in regime]


def _few(n: int, min_n: int, what: str = "seeds per setting") -> list[str]:
    return [f"n={n} < {min_n} {what}"] if n < min_n else []


def _stats_text(effect: float, interval: tuple[float, float], sd: float, mde: float, expected: float, n: int,
                unit: str, scale: float = 1.0) -> str:
    def f(v: float, sign: str = "+") -> str:
        return "n/a" if not math.isfinite(v) else f"{scale * v:{sign}.3g}"

    return (f"effect {f(effect)} {unit} [95% CI {f(interval[0])}, {f(interval[1])}], sd {f(sd, '')}, "
            f"MDE {f(mde, '')}, expected {f(expected)}, n={n}")


def _verdict(finding: str, title: str, verdict: str, reason: str, ours: str, published: str, criterion: str,
             *, effect: float, expected: float, interval: tuple[float, float], sd: float, mde: float, n: int,
             unit: str) -> dict[str, Any]:
    def num(x: float) -> float | None:  # None where undefined: the record stays strict JSON
        return float(x) if math.isfinite(x) else None

    return {"finding": finding, "title": title, "agrees": verdict == AGREES, "verdict": verdict, "ours": ours,
            "published": published, "criterion": criterion, "reason": reason, "effect": num(effect),
            "expected": num(expected), "interval": [num(interval[0]), num(interval[1])], "sd": num(sd),
            "mde": num(mde), "n": int(n), "unit": unit,
            "text": f"{finding} ({title}): {verdict} ({reason}). Ours: {ours}. Submission: {published}. "
                    f"Criterion: {criterion}."}


# ---------------------------------------------------------------------------
# F1 and F2


def _f1_effect(rates: Mapping[str, Any], threshold: float) -> tuple[float, float, float]:
    ph = rates["phases"]
    if "plateau" not in ph or "warmdown" not in ph or "early" not in ph:
        raise ValueError(f"verdict_f1 needs 'early', 'plateau' and 'warmdown' phases, got {sorted(ph)}")
    return tuple(ph[k]["rate_mbpb_per_kstep"] for k in ("early", "plateau", "warmdown"))  # type: ignore


def verdict_f1(rates: Mapping[str, Any] | Sequence[Mapping[str, Any]], threshold: float = 2.0, *,
               alpha: float = ALPHA, power: float = POWER, min_seeds: int = MIN_SEEDS,
               regime: Sequence[str] = ()) -> dict[str, Any]:
    """F1 from :func:`phase_rates` of each seed's trajectory (one dict = one seed): the
    warmdown improves bpb ≥ ``threshold``× faster per step than the late plateau."""
    seeds = [rates] if isinstance(rates, Mapping) else list(rates)
    if not seeds:
        raise ValueError("verdict_f1: no phase rates")
    e, p, w = (np.array(v, dtype=float) for v in zip(*(_f1_effect(r, threshold) for r in seeds)))
    cmp = compare_settings(w, threshold * p, alpha, power)
    pe, pp, pw = _f1_effect(published_results()["F1"], threshold)
    rel = (pw - threshold * pp) / pe
    expected = rel * float(e.mean())
    blockers = _regime(regime) + _few(len(seeds), min_seeds, "seeds") + (
        [f"the early phase does not improve bpb ({e.mean():+.1f} mBPB/kstep)"] if e.mean() >= 0 else [])
    interval = (cmp["ci_low"], cmp["ci_high"])
    verdict, reason = judge(cmp["diff"], interval, cmp["mde"], expected, blockers,
                            direction_ok=w.mean() < 0)
    ratio = seeds[0]["warmdown_to_plateau_ratio"] if len(seeds) == 1 else (
        w.mean() / p.mean() if p.mean() != 0 else math.nan)
    unit = "mBPB/kstep"
    ours = (f"warmdown {w.mean():+.1f} vs plateau {p.mean():+.1f} mBPB/kstep ({ratio:.1f}×); "
            + _stats_text(cmp["diff"], interval, cmp["sd"], cmp["mde"], expected, len(seeds), unit))
    pr = {r["phase"]: r["rate_mbpb_per_kstep"] for r in R.F1_PHASES}
    published = f"warmdown {pr['warmdown']:+.1f} vs plateau {pr['plateau']:+.1f} mBPB/kstep (≈{R.F1_RATIO:.0f}×)"
    criterion = (f"Welch over ≥{min_seeds} seeds of warmdown rate − {threshold:g}× plateau rate; expected "
                 f"{rel:.2f}× our early-phase rate (the published ratio); " + _RULE)
    return _verdict("F1", "warmdown is a first-class variable", verdict, reason, ours, published, criterion,
                    effect=cmp["diff"], expected=expected, interval=interval, sd=cmp["sd"], mde=cmp["mde"],
                    n=len(seeds), unit=unit)


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
                            _regime(regime) + _few(comp["n"], min_runs, "runs"))
    rho = comp["spearman_steps"]
    ours = (f"artifact {comp['relative_change']:+.2%} from shortest to longest run "
            f"(ρ={rho:+.2f}, exact p={comp['spearman_p_steps']:.3g}, n={comp['n']}); "
            + _stats_text(el["slope"], interval, el["sd"], el["mde"], expected, comp["n"], "(log-log slope)"))
    pub = _published_f2()
    published = (f"{R.F2_ROWS[0]['artifact_mib']:.2f} → {R.F2_ROWS[-1]['artifact_mib']:.2f} MiB for "
                 f"{R.F2_ROWS[0]['steps'] // 1000}k → {R.F2_ROWS[-1]['steps'] // 1000}k steps "
                 f"({pub['relative_change']:+.2%}, ρ={pub['spearman_steps']:+.2f}, log-log slope {expected:+.3f})")
    criterion = (f"t interval (df = runs − 2, ≥{min_runs} runs) of the slope of log(artifact size) on "
                 f"log(steps); expected the published slope {expected:+.3f}; " + _RULE)
    return _verdict("F2", "better-trained models compress smaller", verdict, reason, ours, published, criterion,
                    effect=el["slope"], expected=expected, interval=interval, sd=el["sd"], mde=el["mde"],
                    n=comp["n"], unit="log-log slope")


# ---------------------------------------------------------------------------
# F3, F4, F5: test-time training


def verdict_f3(by_opt: Mapping[str, Any], *, alpha: float = ALPHA, power: float = POWER,
               min_gain: float = MIN_GAIN, min_seeds: int = MIN_SEEDS, regime: Sequence[str] = ()) -> dict[str, Any]:
    """F3 from :func:`ttt_gain_by_optimizer`: the numerator's (SGD's) TTT gain is larger
    than the denominator's (AdamW's)."""
    num, den = by_opt["numerator"], by_opt["denominator"]
    per = by_opt["per_optimizer"]
    gn, gd = per[num]["mean"], per[den]["mean"]
    cmp = compare_settings(per[num]["values"], per[den]["values"], alpha, power)
    winner = num if gn <= gd else den
    mi, noise = _gain_noise(per[winner]["values"], min_gain, alpha, f"the larger ({winner})")
    pub = {r["optimizer"]: r["float_to_final"] for r in R.F3_ROWS if r["source"] in ("PR #456", "PR #461")}
    rel = (pub["sgd"] - pub["adamw"]) / abs(min(pub.values()))
    expected = rel * abs(min(gn, gd))
    n = min(cmp["n_a"], cmp["n_b"])
    interval = (cmp["ci_low"], cmp["ci_high"])
    blockers = _regime(regime) + _few(n, min_seeds) + noise
    verdict, reason = judge(cmp["diff"], interval, cmp["mde"], expected, blockers)
    small = f"; {noise[0]}" if noise and "too small" in noise[0] else ""
    ours = (f"{num} {gn:+.4f} vs {den} {gd:+.4f} bpb ({by_opt['ratio']:.2f}×; {significance_text(cmp, alpha)})"
            f"{small}; " + _stats_text(cmp["diff"], interval, cmp["sd"], cmp["mde"], expected, n, "mBPB", 1000))
    published = (f"sgd {R.F3_ROWS[1]['float_to_final']:+.3f} vs adamw {R.F3_ROWS[0]['float_to_final']:+.3f} bpb "
                 f"({R.F3_RATIO:.1f}×, one run each)")
    criterion = (f"Welch over ≥{min_seeds} seeds of {num}'s − {den}'s TTT gain; the larger gain must be ≥ "
                 f"{1000 * min_gain:g} mBPB with an interval below 0; expected {rel:.2f}× our larger gain; " + _RULE)
    return _verdict("F3", f"{num} beats {den} for legal TTT", verdict, reason, ours, published, criterion,
                    effect=cmp["diff"], expected=expected, interval=interval, sd=cmp["sd"], mde=cmp["mde"], n=n,
                    unit="bpb")


def verdict_f4(vs_frozen: Mapping[str, Any], *, alpha: float = ALPHA, power: float = POWER,
               min_gain: float = MIN_GAIN, min_seeds: int = MIN_SEEDS,
               expected_rel: float = F4_EXPECTED_REL, regime: Sequence[str] = ()) -> dict[str, Any]:
    """F4 from :func:`ttt_gain_vs_frozen`: freezing ≥1 leading block gives a larger TTT gain than
    freezing none."""
    per = vs_frozen["per_freeze"]
    if 0 not in per or len(per) < 2:
        raise ValueError(f"verdict_f4 needs freeze-0 runs and at least one other freeze, got {sorted(per)}")
    best, frozen = vs_frozen["best_freeze"], vs_frozen["best_frozen"]
    m = len(per) - 1  # freezes compared with freeze 0: Bonferroni
    cmp = compare_settings(per[frozen]["values"], per[0]["values"], alpha / m, power)
    mi, noise = _gain_noise(per[best]["values"], min_gain, alpha, f"the best (freeze {best})")
    expected = -expected_rel * abs(per[best]["mean"])
    n = min(cmp["n_a"], cmp["n_b"])
    interval = (cmp["ci_low"], cmp["ci_high"])
    blockers = _regime(regime) + _few(n, min_seeds) + noise
    verdict, reason = judge(cmp["diff"], interval, cmp["mde"], expected, blockers)
    gains = ", ".join(f"freeze {k}: {v['mean']:+.4f}" for k, v in sorted(per.items()))
    small = f"; {noise[0]}" if noise and "too small" in noise[0] else ""
    ours = (f"best freeze {best} ({gains}; freeze {frozen} vs 0: {significance_text(cmp, alpha / m)}){small}; "
            + _stats_text(cmp["diff"], interval, cmp["sd"], cmp["mde"], expected, n, "mBPB", 1000))
    published = (f"freeze {R.F4['frozen_blocks']} of {R.F4['num_layers']} blocks "
                 f"(~{R.F4['depth_fraction']:.0%} of depth); qualitative, no ablation numbers")
    criterion = (f"Welch over ≥{min_seeds} seeds of the best freeze ≥1's − freeze 0's TTT gain at level α/{m} "
                 f"(Bonferroni); the best gain must be ≥ {1000 * min_gain:g} mBPB with an interval below 0; "
                 f"no published effect: expected {expected_rel:.0%} of our best gain; " + _RULE)
    return _verdict("F4", "freezing early blocks regularizes TTT", verdict, reason, ours, published, criterion,
                    effect=cmp["diff"], expected=expected, interval=interval, sd=cmp["sd"], mde=cmp["mde"], n=n,
                    unit="bpb")


def _share_slope(share: Mapping[str, Any], alpha: float, power: float) -> dict[str, Any]:
    return slope_effect(np.log(share["total_gain"]), share["share"], alpha, power)


def verdict_f5(share: Mapping[str, Any], *, alpha: float = ALPHA, power: float = POWER,
               min_gain: float = MIN_GAIN, min_runs: int = MIN_SEEDS, regime: Sequence[str] = ()) -> dict[str, Any]:
    """F5 from :func:`ttt_share`: the TTT share falls as the base improves (the slope of share on
    log(total gain) is negative), and TTT itself helps by more than noise."""
    sv = share["share_vs_float"]
    if sv is None:
        raise ValueError("verdict_f5 needs at least 2 base models")
    n = int(np.asarray(share["share"]).size)
    gains = as_1d(share["delta"], "delta")
    if np.ptp(share["total_gain"]) == 0:  # every run ends at the same bpb: no trend to fit
        sl = {"slope": math.nan, "ci_low": math.nan, "ci_high": math.nan, "sd": math.nan, "mde": math.nan}
        mi, noise = _gain_noise(gains, min_gain, alpha, "the mean", {"mean": float(gains.mean()),
                                                                     "ci_high": math.nan, "n": n})
        noise.append("every run has the same total gain: no trend")
    else:
        mi, noise = _gain_noise(gains, min_gain, alpha, "the mean",
                                _trend_mean_interval(np.log(share["total_gain"]), gains, alpha))
        sl = _share_slope(share, alpha, power)
    pub = published_results()["F5"]
    pub_rel = _share_slope(pub, alpha, power)["slope"] / float(np.mean(pub["share"]))
    mean_share = float(np.mean(share["share"]))
    expected = pub_rel * mean_share
    blockers = _regime(regime) + _few(n, min_runs, "runs") + noise
    if not blockers and mean_share <= 0:
        blockers.append("the mean TTT share is not positive")
    interval = (sl["ci_low"], sl["ci_high"])
    verdict, reason = judge(sl["slope"], interval, sl["mde"], expected, blockers)
    order = np.argsort(-share["float_bpb"], kind="stable")  # worst base first
    digits = 0 if np.all(np.abs(share["share"]) >= 0.01) else 2
    shares = " → ".join(f"{100 * x:.{digits}f}%" for x in share["share"][order])
    ours = (f"share {shares} as float bpb goes {share['float_bpb'][order][0]:.3f} → "
            f"{share['float_bpb'][order][-1]:.3f} (ρ={sv['spearman']:+.2f}, baseline {share['baseline_bpb']:.3f})")
    if noise:
        ours += f"; {noise[0]}"
    ours += "; " + _stats_text(sl["slope"], interval, sl["sd"], sl["mde"], expected, n, "share per e-fold")
    published = (" → ".join(f"{r['share_pct']}%" for r in R.F5_ROWS)
                 + f" as float bpb goes {R.F5_ROWS[0]['float_bpb']:.3f} → {R.F5_ROWS[-1]['float_bpb']:.3f} "
                 f"(baseline {R.NAIVE_BASELINE_BPB})")
    criterion = (f"t interval (df = runs − 2, ≥{min_runs} runs) of the slope of the TTT share on log(total gain "
                 f"over the baseline); the mean TTT gain must be ≥ {1000 * min_gain:g} mBPB with an interval "
                 f"(from its scatter about its own trend) below 0; expected {pub_rel:+.2f}× our mean share (the published slope per mean share); " + _RULE)
    return _verdict("F5", "TTT's share shrinks as the base improves", verdict, reason, ours, published, criterion,
                    effect=sl["slope"], expected=expected, interval=interval, sd=sl["sd"], mde=sl["mde"], n=n,
                    unit="share per e-fold of total gain")


# ---------------------------------------------------------------------------
# Tables and the published numbers run through the same functions


def _fmt_stats(v: Mapping[str, Any]) -> str:
    if "interval" not in v:
        return ""
    def f(x: Any, fmt: str = "+.3g") -> str:
        return "n/a" if x is None or not math.isfinite(x) else format(x, fmt)

    lo, hi = v["interval"]
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{f(v['effect'])}, no interval, n={v['n']}"
    return f"{f(v['effect'])} [{f(lo)}, {f(hi)}], MDE {f(v['mde'], '.3g')} vs expected {f(v['expected'])}, n={v['n']}"


def findings_markdown(verdicts: Iterable[Mapping[str, Any]]) -> str:
    """A markdown table of verdicts: finding, the submission's number, ours, the effect with its
    95% interval, MDE and n, and the verdict."""
    def cell(x: str) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| Finding | Submission | Ours | Effect [95% CI], MDE, n | Verdict |", "|---|---|---|---|---|"]
    for v in verdicts:
        lines.append(f"| {v['finding']}: {cell(v['title'])} | {cell(v['published'])} | {cell(v['ours'])} "
                     f"| {cell(_fmt_stats(v))} | **{v['verdict']}** |")
    return "\n".join(lines) + "\n"


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


__all__ = ["AGREES", "DISAGREES", "INCONCLUSIVE", "VERDICTS", "MIN_SEEDS", "MIN_GAIN", "F4_EXPECTED_REL", "judge",
           "verdict_f1", "verdict_f2", "verdict_f3", "verdict_f4", "verdict_f5", "findings_markdown",
           "published_results"]
