"""Statistics behind the verdicts: multi-seed comparisons, intervals, power, trends.

Every comparison reports the same things: the effect (a difference of means or a
regression slope), its seed-to-seed (or residual) standard deviation, a two-sided
``1 - alpha`` interval and the minimum detectable effect (MDE): the smallest true
effect the experiment finds at level ``alpha`` with probability ``power``, for its
n and its spread. The MDE is exact for the t statistic: the δ that gives
P(|T| > t_crit) = power with T noncentral-t(df, δ / se).

* :func:`compare_paired`: two arms measured on the same base model and the same scored
  tokens per seed; the paired t test of the per-seed differences (``scipy.stats.ttest_rel``).
  The study's comparisons are all of this kind: the machine's arithmetic and the seed move
  both arms together, and only the differences are noise.
* :func:`compare_settings`: two settings with independent values (different runs); Welch's t
  (unequal variances, Welch–Satterthwaite degrees of freedom).
* :func:`ratio_interval`: the per-seed ratio of two arms (a magnitude: "6×", "2.4×") with the
  t interval of its mean.
* :func:`mean_interval`: one setting; the t interval of its mean (is a TTT gain above noise?).
* :func:`slope_effect`: a least-squares slope with its t interval (a trend over runs).
* :func:`rank_correlation`: Spearman ρ with an exact permutation p-value for n ≤ 8.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Mapping

import numpy as np
from scipy import optimize, stats

ALPHA = 0.05
POWER = 0.8


# ---------------------------------------------------------------------------
# Input helpers


def as_1d(x: Any, name: str) -> np.ndarray:
    """``x`` as a non-empty, finite float64 vector (a scalar is one value)."""
    a = np.asarray(x, dtype=np.float64).reshape(-1) if np.ndim(x) else np.asarray([x], dtype=np.float64)
    if a.size == 0:
        raise ValueError(f"{name}: empty")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: contains NaN or inf: {a.tolist()}")
    return a


def paired(x: Any, y: Any, xname: str, yname: str) -> tuple[np.ndarray, np.ndarray]:
    """Two :func:`as_1d` vectors of the same length."""
    a, b = as_1d(x, xname), as_1d(y, yname)
    if a.shape != b.shape:
        raise ValueError(f"{xname} and {yname} differ in length ({a.size} vs {b.size})")
    return a, b


def group(values: Any, name: str) -> dict[str, Any]:
    """mean, std (ddof=1; NaN for one value), n and the values of one setting."""
    v = as_1d(values, name)
    return {"mean": float(v.mean()), "std": float(np.std(v, ddof=1)) if v.size > 1 else math.nan,
            "n": int(v.size), "values": v.tolist()}


# ---------------------------------------------------------------------------
# Power


def min_detectable_effect(se: float, df: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest |effect| a two-sided t test (level ``alpha``) detects with probability ``power``.

    ``se`` is the standard error of the effect, ``df`` the t statistic's degrees of
    freedom. Solves P(|T| > t_{1-alpha/2, df}) = power for T ~ noncentral t(df, δ/se)
    (about (t_{1-alpha/2} + t_{power})·se). NaN without a variance estimate (df ≤ 0 or
    se NaN); 0 when the spread is exactly 0.
    """
    if not (df > 0 and math.isfinite(se)):
        return math.nan
    if se == 0:
        return 0.0
    tc = stats.t.ppf(1 - alpha / 2, df)

    def gap(nc: float) -> float:
        lower = stats.nct.cdf(-tc, df, nc)  # the wrong-sign rejections: tiny, NaN where scipy underflows
        return float(stats.nct.sf(tc, df, nc)) + (float(lower) if np.isfinite(lower) else 0.0) - power

    hi = tc + stats.norm.ppf(power) + 1.0
    while gap(hi) < 0:
        hi *= 2
    return float(optimize.brentq(gap, 0.0, hi, xtol=1e-10)) * se


def _t_half_width(se: float, df: float, alpha: float) -> float:
    """Half width of a two-sided ``1 - alpha`` t interval: t_{1-alpha/2, df}·se."""
    return float(stats.t.ppf(1 - alpha / 2, df)) * se


# ---------------------------------------------------------------------------
# Two settings, one value per seed


def compare_settings(a: Any, b: Any, alpha: float = ALPHA, power: float = POWER) -> dict[str, Any]:
    """Mean/std/n of two settings' values (one per seed), Welch's t test, interval and MDE.

    ``diff = mean_a - mean_b``; ``se`` = sqrt(s_a²/n_a + s_b²/n_b) with ddof=1 stds
    (NaN for n = 1); ``df`` is Welch–Satterthwaite; ``ci_low``/``ci_high`` the
    two-sided ``1 - alpha`` t interval of ``diff``; ``mde`` :func:`min_detectable_effect`;
    ``sd`` the pooled seed-to-seed standard deviation sqrt((s_a² + s_b²)/2). The
    p-value is two-sided. Without a variance estimate (n = 1 on either side) p, the
    interval and the MDE are NaN and ``note`` says why. Two constant samples give
    p = 1 if equal and 0 if not, a zero-width interval and MDE 0 (the limit as the
    spread goes to zero).
    """
    xa, xb = as_1d(a, "a"), as_1d(b, "b")
    na, nb = xa.size, xb.size
    sa = float(np.std(xa, ddof=1)) if na > 1 else math.nan
    sb = float(np.std(xb, ddof=1)) if nb > 1 else math.nan
    diff = float(xa.mean() - xb.mean())
    out: dict[str, Any] = {
        "n_a": na, "n_b": nb, "mean_a": float(xa.mean()), "mean_b": float(xb.mean()),
        "std_a": sa, "std_b": sb, "diff": diff, "sd": math.sqrt((sa**2 + sb**2) / 2),
        "se": math.nan, "df": math.nan, "ci_low": math.nan, "ci_high": math.nan, "mde": math.nan,
        "alpha": alpha, "power": power, "t": math.nan, "p_value": math.nan, "test": "welch", "note": "",
    }
    if na < 2 or nb < 2:
        out["note"] = f"n={na} vs n={nb}: a single seed has no variance estimate, p-value undefined"
        return out
    va, vb = sa**2 / na, sb**2 / nb
    se = math.sqrt(va + vb)
    if se == 0.0:
        equal = out["mean_a"] == out["mean_b"]
        out.update(se=0.0, df=float(na + nb - 2), ci_low=diff, ci_high=diff, mde=0.0,
                   t=0.0 if equal else math.copysign(math.inf, diff), p_value=1.0 if equal else 0.0,
                   note="both samples constant" + (" and equal" if equal else ", different means"))
        return out
    res = stats.ttest_ind(xa, xb, equal_var=False)  # Welch; res.df is Welch–Satterthwaite
    df = float(res.df)
    ci = res.confidence_interval(1 - alpha)
    lo, hi = float(ci.low), float(ci.high)
    out.update(se=se, df=df, ci_low=lo, ci_high=hi, mde=min_detectable_effect(se, df, alpha, power),
               t=float(res.statistic), p_value=float(res.pvalue))
    return out


def compare_paired(a: Any, b: Any, alpha: float = ALPHA, power: float = POWER) -> dict[str, Any]:
    """Paired comparison of two arms, ``a[i]`` and ``b[i]`` measured on the same seed's base model
    and scored tokens: the t test of the differences ``d = a - b`` (``scipy.stats.ttest_rel``).

    The keys are :func:`compare_settings`' (``diff`` = mean(d), ``ci_low``/``ci_high`` its
    two-sided ``1 - alpha`` interval, df = n - 1, ``mde`` for se = sd(d)/sqrt(n)) with
    ``sd`` the standard deviation of the differences, ``differences`` the per-seed values and
    ``test`` = "paired". With one pair there is no noise estimate (NaN interval, p and MDE);
    constant differences give a zero-width interval and MDE 0.
    """
    xa, xb = paired(a, b, "a", "b")
    d = xa - xb
    n = d.size
    sd = float(np.std(d, ddof=1)) if n > 1 else math.nan
    diff = float(d.mean())
    out: dict[str, Any] = {
        "n_a": n, "n_b": n, "mean_a": float(xa.mean()), "mean_b": float(xb.mean()),
        "std_a": float(np.std(xa, ddof=1)) if n > 1 else math.nan,
        "std_b": float(np.std(xb, ddof=1)) if n > 1 else math.nan, "diff": diff, "sd": sd,
        "se": math.nan, "df": float(n - 1), "ci_low": math.nan, "ci_high": math.nan, "mde": math.nan,
        "alpha": alpha, "power": power, "t": math.nan, "p_value": math.nan, "test": "paired", "note": "",
        "differences": d.tolist(),
    }
    if n < 2:
        out["note"] = "one pair: no variance estimate, p-value undefined"
        return out
    se = sd / math.sqrt(n)
    if se == 0.0:
        out.update(se=0.0, ci_low=diff, ci_high=diff, mde=0.0, t=0.0 if diff == 0 else math.copysign(math.inf, diff),
                   p_value=1.0 if diff == 0 else 0.0, note="constant differences")
        return out
    res = stats.ttest_rel(xa, xb)
    ci = res.confidence_interval(1 - alpha)
    out.update(se=se, ci_low=float(ci.low), ci_high=float(ci.high), mde=min_detectable_effect(se, n - 1, alpha, power),
               t=float(res.statistic), p_value=float(res.pvalue))
    return out


def ratio_interval(num: Any, den: Any, alpha: float = ALPHA) -> dict[str, Any]:
    """The per-seed ratio ``num[i] / den[i]`` of two paired arms: its mean and the two-sided
    ``1 - alpha`` t interval of that mean (``level`` = 1 - alpha). A zero denominator makes the
    ratio undefined (NaN, with a note)."""
    a, b = paired(num, den, "num", "den")
    if np.any(b == 0):
        return {"ratio": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": int(a.size), "values": [],
                "level": 1 - alpha, "note": "a zero denominator: the ratio is undefined"}
    r = a / b
    mi = mean_interval(r, alpha)
    return {"ratio": mi["mean"], "ci_low": mi["ci_low"], "ci_high": mi["ci_high"], "n": mi["n"],
            "values": r.tolist(), "level": 1 - alpha, "note": ""}


def mean_interval(values: Any, alpha: float = ALPHA, power: float = POWER) -> dict[str, Any]:
    """One setting: mean, sd, n, the t interval of the mean and the MDE of a one-sample test.

    NaN interval/MDE for a single value; zero width for constant values.
    """
    v = as_1d(values, "values")
    n = v.size
    mean = float(v.mean())
    sd = float(np.std(v, ddof=1)) if n > 1 else math.nan
    se = sd / math.sqrt(n) if n > 1 else math.nan
    if n < 2:
        lo, hi = math.nan, math.nan
    elif se == 0:
        lo, hi = mean, mean
    else:
        ci = stats.ttest_1samp(v, 0.0).confidence_interval(1 - alpha)
        lo, hi = float(ci.low), float(ci.high)
    return {"mean": mean, "sd": sd, "n": n, "se": se, "df": float(n - 1), "ci_low": lo, "ci_high": hi,
            "mde": min_detectable_effect(se, n - 1, alpha, power) if n > 1 else math.nan}


# ---------------------------------------------------------------------------
# Trends over runs


def slope_effect(x: Any, y: Any, alpha: float = ALPHA, power: float = POWER) -> dict[str, Any]:
    """Least-squares slope of ``y`` on ``x`` with its t interval (df = n - 2) and MDE.

    ``sd`` is the residual standard deviation about the line (the runs' noise);
    ``se`` = sd / sqrt(Σ(x - x̄)²). With n = 2 the line is exact and there is no
    noise estimate: interval and MDE are NaN.
    """
    a, b = paired(x, y, "x", "y")
    n = a.size
    if n < 2 or np.ptp(a) == 0:
        raise ValueError(f"slope_effect: need ≥2 distinct x values, got {a.tolist()}")
    fit = stats.linregress(a, b)
    slope, intercept = float(fit.slope), float(fit.intercept)
    out: dict[str, Any] = {"n": int(n), "slope": slope, "intercept": intercept, "sd": math.nan,
                           "se": math.nan, "df": float(n - 2), "ci_low": math.nan, "ci_high": math.nan,
                           "mde": math.nan, "alpha": alpha, "power": power}
    if n > 2:
        se = float(fit.stderr)
        sd = se * float(math.sqrt(np.sum((a - a.mean()) ** 2)))
        h = _t_half_width(se, n - 2, alpha) if se > 0 else 0.0
        out.update(sd=sd, se=se, ci_low=slope - h, ci_high=slope + h,
                   mde=min_detectable_effect(se, n - 2, alpha, power))
    return out


# ---------------------------------------------------------------------------
# Text and rank correlation


def significance_text(cmp: Mapping[str, Any], alpha: float = ALPHA) -> str:
    """One clause describing a :func:`compare_settings` or :func:`compare_paired` result, e.g.
    "Welch p=0.012, n=3 vs 3" or "paired t p=0.004, n=3 pairs"."""
    is_paired = cmp.get("test") == "paired"
    n = f"n={cmp['n_a']} pairs" if is_paired else f"n={cmp['n_a']} vs {cmp['n_b']}"
    if math.isnan(cmp["p_value"]):
        return f"{n}: no p-value (needs ≥2 seeds per setting)"
    sig = "significant" if cmp["p_value"] < alpha else "not significant"
    return f"{'paired t' if is_paired else 'Welch'} p={cmp['p_value']:.3g}, {n}, {sig} at α={alpha:g}"


def level_text(alpha: float) -> str:
    """The confidence level of a two-sided ``1 - alpha`` interval as a label: "95%", "97.5%"."""
    return f"{100 * (1 - alpha):.4g}%"


def rank_correlation(x: Any, y: Any) -> dict[str, float]:
    """Spearman ρ with a two-sided p-value, plus Pearson r with its p-value.

    For n ≤ 8 the Spearman p-value is exact (all n! orderings of y); above
    that, scipy's t approximation. With n = 4 the smallest possible exact
    p-value is 1/12, so four points can show a direction but not significance.
    Constant input gives NaN correlations.
    """
    a, b = paired(x, y, "x", "y")
    n = a.size
    if n < 2:
        raise ValueError("rank_correlation: need at least 2 points")
    nan = {"n": n, "spearman": math.nan, "spearman_p": math.nan, "pearson": math.nan, "pearson_p": math.nan}
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return nan
    ra, rb = stats.rankdata(a), stats.rankdata(b)
    rho = float(np.corrcoef(ra, rb)[0, 1])
    if n <= 8:
        perms = np.array(list(itertools.permutations(rb)))  # (n!, n)
        rc = ra - ra.mean()
        pc = perms - perms.mean(axis=1, keepdims=True)
        rhos = (pc @ rc) / (np.linalg.norm(pc, axis=1) * np.linalg.norm(rc))
        p_s = float(np.mean(np.abs(rhos) >= abs(rho) - 1e-12))
    else:
        p_s = float(stats.spearmanr(a, b).pvalue)
    r = float(np.corrcoef(a, b)[0, 1])
    p_r = float(stats.pearsonr(a, b).pvalue) if n >= 3 else math.nan
    return {"n": n, "spearman": rho, "spearman_p": p_s, "pearson": r, "pearson_p": p_r}


__all__ = ["ALPHA", "POWER", "as_1d", "paired", "group", "min_detectable_effect", "compare_settings",
           "compare_paired", "ratio_interval", "mean_interval", "slope_effect", "significance_text", "level_text",
           "rank_correlation"]
