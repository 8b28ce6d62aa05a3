"""The five findings of the submission (SPEC §6) as pure functions.

Numbers in, numbers/dicts out; no I/O, no plotting. The same functions turn
the published tables (:mod:`gepalib.findings.reference`) into the published derived
numbers and turn our own runs into ours, so the two are computed alike.

Conventions:

* bpb differences are ``later - earlier``: negative means better, as in the
  submission's tables (ΔBPB -0.101, float→final -0.017).
* Rates are in mBPB per 1,000 steps (the README's "BPB/kstep").
* A "gain" of test-time training is ``final - base`` (negative = TTT helped).

Verdicts are computed from the numbers, never written by hand. Each
``verdict_fN`` returns ``{"finding", "title", "agrees", "verdict", "ours",
"published", "criterion", "text"}`` where ``verdict`` is "agrees" or "does not
agree at this scale". Criteria (defaults):

* F1 agrees if the warmdown improves bpb and does so at least ``threshold``
  (2×) faster per step than the late plateau (or the plateau did not improve).
* F2 agrees if the artifact shrinks with training length: Spearman ρ(steps, size) < 0.
* F3 agrees if SGD's mean TTT gain is larger (more negative) than AdamW's.
* F4 agrees if the best freeze has ≥ 1 frozen block and beats freeze 0.
* F5 agrees if the TTT share falls as the base improves: Spearman ρ(float bpb, share) > 0.
* F3, F4 and F5 compare TTT gains, so they also need TTT to help: the winner's (F3, F4)
  or the mean (F5) gain must be at least ``min_gain`` (1 mBPB). Below that the ranking is
  noise and the verdict is "does not agree at this scale", saying why.

Where seeds > 1 the verdicts add a Welch t-test p-value (:func:`compare_settings`);
significance is reported, it does not flip the verdict.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Iterable, Mapping

import numpy as np

AGREES = "agrees"
DISAGREES = "does not agree at this scale"

# Fractions that reproduce the submission's F1 boundaries for 20k steps / 8k
# warmdown: early starts at 5% of the run (1k), the plateau at 7/12 of the
# peak-LR phase (7k), the warmdown at steps - warmdown (12k).
EARLY_START_FRAC = 0.05
PLATEAU_START_FRAC = 7 / 12


# ---------------------------------------------------------------------------
# Input helpers


def _as_1d(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1) if np.ndim(x) else np.asarray([x], dtype=np.float64)
    if a.size == 0:
        raise ValueError(f"{name}: empty")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: contains NaN or inf: {a.tolist()}")
    return a


def _paired(x: Any, y: Any, xname: str, yname: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_1d(x, xname), _as_1d(y, yname)
    if a.shape != b.shape:
        raise ValueError(f"{xname} and {yname} differ in length ({a.size} vs {b.size})")
    return a, b


def trajectory(steps: Any, bpb: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (step, bpb) curve: finite, same length, sorted by step, no repeated step."""
    s, b = _paired(steps, bpb, "steps", "bpb")
    order = np.argsort(s, kind="stable")
    s, b = s[order], b[order]
    if np.any(np.diff(s) == 0):
        dup = s[1:][np.diff(s) == 0]
        raise ValueError(f"steps: repeated step(s) {sorted(set(dup.astype(int).tolist()))}")
    return s, b


def trajectory_from_metrics(metrics: Any, column: str = "val_bpb") -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the rows of a metrics.jsonl table where ``column`` was logged.

    ``metrics`` is a pandas DataFrame or a list of dicts (``RunDir.read_metrics()``).
    Rows without the column (or with null) are skipped; a step logged twice
    (e.g. after a resume) keeps its last value.
    """
    rows = metrics.to_dict("records") if hasattr(metrics, "to_dict") else list(metrics)
    last: dict[int, float] = {}
    for r in rows:
        v = r.get(column)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        if "step" not in r:
            raise ValueError(f"metrics row without 'step': {r}")
        last[int(r["step"])] = float(v)
    if not last:
        raise ValueError(f"metrics: no row has a value for {column!r}")
    steps = sorted(last)
    return np.asarray(steps, dtype=np.float64), np.asarray([last[s] for s in steps])


# ---------------------------------------------------------------------------
# Statistics


def compare_settings(a: Any, b: Any) -> dict[str, Any]:
    """Mean/std/n of two settings' values (one per seed) and a Welch t-test.

    ``diff = mean_a - mean_b``. std uses ddof=1 (NaN for n = 1). The p-value is
    two-sided Welch (unequal variances). It is NaN when either side has n = 1
    (no variance estimate) — ``note`` says so. Two samples that are both
    constant give p = 1 if they are equal and p = 0 if not (the limit of the
    test as the spread goes to zero).
    """
    from scipy import stats

    xa, xb = _as_1d(a, "a"), _as_1d(b, "b")
    na, nb = xa.size, xb.size
    sa = float(np.std(xa, ddof=1)) if na > 1 else math.nan
    sb = float(np.std(xb, ddof=1)) if nb > 1 else math.nan
    out: dict[str, Any] = {
        "n_a": na, "n_b": nb, "mean_a": float(xa.mean()), "mean_b": float(xb.mean()),
        "std_a": sa, "std_b": sb, "diff": float(xa.mean() - xb.mean()),
        "t": math.nan, "p_value": math.nan, "test": "welch", "note": "",
    }
    if na < 2 or nb < 2:
        out["note"] = f"n={na} vs n={nb}: a single seed has no variance estimate, p-value undefined"
        return out
    if sa == 0.0 and sb == 0.0:
        equal = out["mean_a"] == out["mean_b"]
        out.update(t=0.0 if equal else math.copysign(math.inf, out["diff"]), p_value=1.0 if equal else 0.0,
                   note="both samples constant" + (" and equal" if equal else ", different means"))
        return out
    res = stats.ttest_ind(xa, xb, equal_var=False)
    out["t"], out["p_value"] = float(res.statistic), float(res.pvalue)
    return out


def significance_text(cmp: Mapping[str, Any], alpha: float = 0.05) -> str:
    """One clause describing a :func:`compare_settings` result, e.g. "Welch p=0.012, n=3 vs 3"."""
    if math.isnan(cmp["p_value"]):
        return f"n={cmp['n_a']} vs {cmp['n_b']}: no p-value (needs ≥2 seeds per setting)"
    sig = "significant" if cmp["p_value"] < alpha else "not significant"
    return f"Welch p={cmp['p_value']:.3g}, n={cmp['n_a']} vs {cmp['n_b']}, {sig} at α={alpha:g}"


def rank_correlation(x: Any, y: Any) -> dict[str, float]:
    """Spearman ρ with a two-sided p-value, plus Pearson r with its p-value.

    For n ≤ 8 the Spearman p-value is exact (all n! orderings of y); above
    that, scipy's t approximation. With n = 4 the smallest possible exact
    p-value is 1/12, so four points can show a direction but not significance.
    Constant input gives NaN correlations.
    """
    from scipy import stats

    a, b = _paired(x, y, "x", "y")
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


def _group(values: Any, name: str) -> dict[str, Any]:
    v = _as_1d(values, name)
    return {"mean": float(v.mean()), "std": float(np.std(v, ddof=1)) if v.size > 1 else math.nan,
            "n": int(v.size), "values": v.tolist()}


# ---------------------------------------------------------------------------
# F1: per-phase improvement rates


def phase_boundaries(total_steps: int, warmdown: int, *, early_start_frac: float = EARLY_START_FRAC,
                     plateau_start_frac: float = PLATEAU_START_FRAC) -> dict[str, tuple[float, float]]:
    """F1 phases for a run of ``total_steps`` whose last ``warmdown`` steps decay the LR.

    early = [early_start_frac·steps, plateau start), plateau = [plateau_start_frac·peak,
    peak), warmdown = [peak, steps], with peak = steps - warmdown. The defaults give
    the submission's 1k / 7k / 12k / 20k for 20,000 steps and 8,000 warmdown.
    """
    if total_steps <= 0 or not 0 < warmdown < total_steps:
        raise ValueError(f"need 0 < warmdown < total_steps, got steps={total_steps} warmdown={warmdown}")
    peak = total_steps - warmdown
    early = early_start_frac * total_steps
    plateau = plateau_start_frac * peak
    if not 0 <= early < plateau < peak:
        raise ValueError(f"phase boundaries out of order: early start {early:g}, plateau start {plateau:g}, "
                         f"warmdown start {peak:g} (steps={total_steps}, warmdown={warmdown})")
    return {"early": (early, plateau), "plateau": (plateau, float(peak)), "warmdown": (float(peak), float(total_steps))}


def infer_phases(eval_steps: Any, total_steps: int, warmdown: int, **fracs: float) -> dict[str, tuple[int, int]]:
    """:func:`phase_boundaries` snapped to the steps where bpb was evaluated.

    Each boundary moves to the nearest evaluated step > 0 (step 0 is the
    untrained model; ties go to the earlier step). Evaluate at multiples of a
    step that divides the boundaries to avoid snapping (for ``tiny``: 30).
    Raises ValueError if snapping merges two boundaries (too few evaluations).
    """
    wanted = phase_boundaries(total_steps, warmdown, **fracs)
    ev = np.unique(_as_1d(eval_steps, "eval_steps"))
    ev = ev[ev > 0]
    if ev.size == 0:
        raise ValueError("infer_phases: no evaluation after step 0")

    def snap(b: float) -> int:
        return int(ev[int(np.argmin(np.abs(ev - b)))])  # argmin takes the first (earlier) on ties

    bounds = [wanted["early"][0], wanted["plateau"][0], wanted["warmdown"][0], wanted["warmdown"][1]]
    snapped = [snap(b) for b in bounds]
    if len(set(snapped)) < 4:
        raise ValueError(f"infer_phases: boundaries {[round(b) for b in bounds]} snap to {snapped} on the "
                         f"evaluated steps {ev.astype(int).tolist()}; evaluate more often (smaller val_every)")
    names = ["early", "plateau", "warmdown"]
    return {n: (snapped[i], snapped[i + 1]) for i, n in enumerate(names)}


def phase_rates(steps: Any, bpb: Any, phases: Mapping[str, tuple[float, float]] | None = None, *,
                total_steps: int | None = None, warmdown: int | None = None,
                delta_decimals: int | None = None) -> dict[str, Any]:
    """F1: bpb change and rate (mBPB per 1,000 steps) in each training phase.

    ``phases`` maps a name to (start, end) steps, which must be evaluated
    steps. Without it, phases are :func:`infer_phases` for ``total_steps`` and
    ``warmdown``. ``delta_decimals`` rounds each Δ before the rate, as the
    published table did (3 decimals). Returns::

        {"phases": {name: {start, end, steps, start_bpb, end_bpb, delta_bpb,
                           rate_mbpb_per_kstep}},
         "warmdown_to_plateau_ratio": warmdown rate / plateau rate}

    The ratio is NaN without "plateau" and "warmdown" phases, ±inf when the
    plateau rate is exactly 0, and negative when the plateau got worse.
    """
    s, b = trajectory(steps, bpb)
    if phases is None:
        if total_steps is None or warmdown is None:
            raise ValueError("phase_rates: give phases=... or total_steps and warmdown to infer them")
        phases = infer_phases(s, total_steps, warmdown)
    at = dict(zip(s.tolist(), b.tolist()))
    out: dict[str, dict[str, float]] = {}
    for name, (lo, hi) in phases.items():
        for edge in (lo, hi):
            if float(edge) not in at:
                raise ValueError(f"phase {name!r}: step {edge:g} was not evaluated; evaluated steps are "
                                 f"{s.astype(int).tolist()} (use infer_phases to snap)")
        if not hi > lo:
            raise ValueError(f"phase {name!r}: end {hi:g} must be after start {lo:g}")
        delta = at[float(hi)] - at[float(lo)]
        if delta_decimals is not None:
            delta = round(delta, delta_decimals)
        out[name] = {"start": int(lo), "end": int(hi), "steps": int(hi - lo), "start_bpb": at[float(lo)],
                     "end_bpb": at[float(hi)], "delta_bpb": delta,
                     "rate_mbpb_per_kstep": 1000.0 * delta / (hi - lo) * 1000.0}
    ratio = math.nan
    if "plateau" in out and "warmdown" in out:
        w, p = out["warmdown"]["rate_mbpb_per_kstep"], out["plateau"]["rate_mbpb_per_kstep"]
        ratio = w / p if p != 0 else (math.copysign(math.inf, -w) if w != 0 else math.nan)
    return {"phases": out, "warmdown_to_plateau_ratio": ratio}


def phase_table(rates: Mapping[str, Any]):
    """:func:`phase_rates` output as a DataFrame (one row per phase)."""
    import pandas as pd

    return pd.DataFrame([{"phase": k, **v} for k, v in rates["phases"].items()])


# ---------------------------------------------------------------------------
# F2: artifact size vs training length


def compressibility(steps: Any, artifact_bytes: Any, float_bpb: Any = None) -> dict[str, Any]:
    """F2: how the artifact size moves with training length (and with float bpb).

    Returns the least-squares slope in bytes per 1,000 steps, the relative
    size change from the shortest to the longest run, and
    :func:`rank_correlation` of size vs steps (``*_steps``) and, when
    ``float_bpb`` is given, of size vs float bpb (``*_float``; positive means
    better-trained models are smaller). Units of ``artifact_bytes`` carry
    through (pass MiB and the slope is MiB per kstep).
    """
    s, a = _paired(steps, artifact_bytes, "steps", "artifact_bytes")
    if s.size < 2 or np.ptp(s) == 0:
        raise ValueError(f"compressibility: need ≥2 runs of different length, got steps {s.tolist()}")
    order = np.argsort(s, kind="stable")
    s, a = s[order], a[order]
    slope, intercept = np.polyfit(s / 1000.0, a, 1)
    out: dict[str, Any] = {"n": int(s.size), "slope_bytes_per_kstep": float(slope), "intercept": float(intercept),
                           "first_bytes": float(a[0]), "last_bytes": float(a[-1]),
                           "relative_change": float((a[-1] - a[0]) / a[0])}
    for k, v in rank_correlation(s, a).items():
        if k != "n":
            out[f"{k}_steps"] = v
    if float_bpb is not None:
        f = _as_1d(float_bpb, "float_bpb")
        if f.shape != order.shape:
            raise ValueError(f"float_bpb has {f.size} values for {s.size} runs")
        for k, v in rank_correlation(f[order], a).items():
            if k != "n":
                out[f"{k}_float"] = v
    return out


# ---------------------------------------------------------------------------
# F3 / F4 / F5: test-time training


def ttt_gain(base_bpb: Any, final_bpb: Any) -> np.ndarray:
    """TTT gain per run: ``final - base`` (negative = TTT helped)."""
    base, final = _paired(base_bpb, final_bpb, "base_bpb", "final_bpb")
    return final - base


def ttt_gain_by_optimizer(gains: Mapping[str, Any], numerator: str = "sgd",
                          denominator: str = "adamw") -> dict[str, Any]:
    """F3: TTT gain per optimizer and the ratio of two of them.

    ``gains`` maps an optimizer name to its gain(s), one per seed (a scalar is
    one seed). ``ratio = mean(numerator) / mean(denominator)``: the published
    −0.017 / −0.007 = 2.4×. ``comparison`` is :func:`compare_settings`
    (numerator vs denominator; ``diff`` < 0 means the numerator gains more).
    """
    for k in (numerator, denominator):
        if k not in gains:
            raise ValueError(f"ttt_gain_by_optimizer: no gains for {k!r}; have {sorted(gains)}")
    per = {k: _group(v, f"gains[{k!r}]") for k, v in gains.items()}
    den = per[denominator]["mean"]
    ratio = per[numerator]["mean"] / den if den != 0 else math.nan
    return {"per_optimizer": per, "numerator": numerator, "denominator": denominator, "ratio": ratio,
            "comparison": compare_settings(gains[numerator], gains[denominator])}


def ttt_gain_vs_frozen(frozen_blocks: Any, gains: Any) -> dict[str, Any]:
    """F4: TTT gain per number of frozen leading blocks.

    ``frozen_blocks[i]`` and ``gains[i]`` describe one run (repeat a freeze
    value for several seeds). The best freeze has the most negative mean gain
    (ties: fewer frozen blocks). ``best_vs_freeze0`` = best mean − freeze-0
    mean (NaN without freeze-0 runs); ``comparison`` is
    :func:`compare_settings` of best vs freeze 0 when both exist and differ.
    """
    k, g = _paired(frozen_blocks, gains, "frozen_blocks", "gains")
    if np.any(k < 0) or np.any(k != np.round(k)):
        raise ValueError(f"frozen_blocks must be non-negative integers, got {k.tolist()}")
    per = {int(f): _group(g[k == f], f"gains[freeze={int(f)}]") for f in np.unique(k)}
    best = min(per, key=lambda f: (per[f]["mean"], f))
    out: dict[str, Any] = {"per_freeze": per, "best_freeze": best, "best_gain": per[best]["mean"],
                           "gain_freeze0": per[0]["mean"] if 0 in per else math.nan,
                           "best_vs_freeze0": per[best]["mean"] - per[0]["mean"] if 0 in per else math.nan,
                           "comparison": None}
    if 0 in per and best != 0:
        out["comparison"] = compare_settings(per[best]["values"], per[0]["values"])
    return out


def ttt_share(float_bpb: Any, final_bpb: Any, baseline_bpb: float | None = None) -> dict[str, Any]:
    """F5: TTT's share of the total gain over a naive baseline.

    delta = final − float, total_gain = baseline − final,
    share = (float − final) / (baseline − final). The published baseline is
    1.224 (``reference.NAIVE_BASELINE_BPB``); small-scale runs must pass a
    baseline measured at their own scale. ``share_vs_float`` is
    :func:`rank_correlation` of float bpb vs share (positive: the share falls
    as the base improves; needs ≥2 bases).
    """
    if baseline_bpb is None:
        from gepalib.findings.reference import NAIVE_BASELINE_BPB as baseline_bpb
    f, fin = _paired(float_bpb, final_bpb, "float_bpb", "final_bpb")
    total = baseline_bpb - fin
    if np.any(total <= 0):
        raise ValueError(f"ttt_share: baseline {baseline_bpb:g} must be worse (higher) than every final bpb "
                         f"{fin.tolist()}; at small scale measure a baseline at the same scale")
    out: dict[str, Any] = {"baseline_bpb": float(baseline_bpb), "float_bpb": f, "final_bpb": fin,
                           "delta": fin - f, "total_gain": total, "share": (f - fin) / total}
    out["share_vs_float"] = rank_correlation(f, out["share"]) if f.size >= 2 else None
    return out


# ---------------------------------------------------------------------------
# Verdicts


def _verdict(finding: str, title: str, agrees: bool, ours: str, published: str, criterion: str) -> dict[str, Any]:
    v = AGREES if agrees else DISAGREES
    return {"finding": finding, "title": title, "agrees": bool(agrees), "verdict": v, "ours": ours,
            "published": published, "criterion": criterion,
            "text": f"{finding} ({title}): {v}. Ours: {ours}. Submission: {published}. Criterion: {criterion}."}


def _published_f1() -> str:
    from gepalib.findings import reference as R

    p = {r["phase"]: r["rate_mbpb_per_kstep"] for r in R.F1_PHASES}
    return f"warmdown {p['warmdown']:+.1f} vs plateau {p['plateau']:+.1f} mBPB/kstep (≈{R.F1_RATIO:.0f}×)"


def verdict_f1(rates: Mapping[str, Any], threshold: float = 2.0) -> dict[str, Any]:
    """F1 verdict from :func:`phase_rates`: the warmdown must improve bpb at least
    ``threshold``× faster than the late plateau (or the plateau must not improve)."""
    ph = rates["phases"]
    if "plateau" not in ph or "warmdown" not in ph:
        raise ValueError(f"verdict_f1 needs 'plateau' and 'warmdown' phases, got {sorted(ph)}")
    w, p = ph["warmdown"]["rate_mbpb_per_kstep"], ph["plateau"]["rate_mbpb_per_kstep"]
    r = rates["warmdown_to_plateau_ratio"]
    agrees = w < 0 and (p >= 0 or r >= threshold)
    ours = f"warmdown {w:+.1f} vs plateau {p:+.1f} mBPB/kstep ({r:.1f}×)"
    return _verdict("F1", "warmdown is a first-class variable", agrees, ours, _published_f1(),
                    f"warmdown improves ≥{threshold:g}× faster per step than the late plateau")


def verdict_f2(comp: Mapping[str, Any]) -> dict[str, Any]:
    """F2 verdict from :func:`compressibility`: Spearman ρ(steps, artifact size) < 0."""
    from gepalib.findings import reference as R

    rho = comp["spearman_steps"]
    agrees = not math.isnan(rho) and rho < 0
    ours = (f"artifact {comp['relative_change']:+.2%} from shortest to longest run "
            f"(ρ={rho:+.2f}, exact p={comp['spearman_p_steps']:.3g}, n={comp['n']})")
    pub = _published_f2()
    published = (f"{R.F2_ROWS[0]['artifact_mib']:.2f} → {R.F2_ROWS[-1]['artifact_mib']:.2f} MiB for "
                 f"{R.F2_ROWS[0]['steps'] // 1000}k → {R.F2_ROWS[-1]['steps'] // 1000}k steps "
                 f"({pub['relative_change']:+.2%}, ρ={pub['spearman_steps']:+.2f})")
    return _verdict("F2", "better-trained models compress smaller", agrees, ours, published,
                    "artifact size decreases with training length (Spearman ρ < 0)")


def _too_small(gain: float, min_gain: float) -> str:
    """'' when a TTT improvement of ``gain`` bpb (positive = helped) is at least ``min_gain``,
    else the clause the verdict text adds."""
    if gain >= min_gain:
        return ""
    return f"; the TTT gain {1000 * gain:.2f} mBPB is below {1000 * min_gain:g} mBPB, too small to rank"


def verdict_f3(by_opt: Mapping[str, Any], alpha: float = 0.05, min_gain: float = 0.001) -> dict[str, Any]:
    """F3 verdict from :func:`ttt_gain_by_optimizer`: the numerator's (SGD's) mean
    gain is more negative than the denominator's (AdamW's), and it is at least ``min_gain``."""
    from gepalib.findings import reference as R

    num, den = by_opt["numerator"], by_opt["denominator"]
    gn, gd = by_opt["per_optimizer"][num]["mean"], by_opt["per_optimizer"][den]["mean"]
    small = _too_small(-gn, min_gain)
    agrees = gn < gd and not small
    ours = (f"{num} {gn:+.4f} vs {den} {gd:+.4f} bpb ({by_opt['ratio']:.2f}×; "
            f"{significance_text(by_opt['comparison'], alpha)}){small}")
    published = (f"sgd {R.F3_ROWS[1]['float_to_final']:+.3f} vs adamw {R.F3_ROWS[0]['float_to_final']:+.3f} bpb "
                 f"({R.F3_RATIO:.1f}×, one run each)")
    return _verdict("F3", f"{num} beats {den} for legal TTT", agrees, ours, published,
                    f"{num}'s mean TTT gain is larger than {den}'s and ≥ {1000 * min_gain:g} mBPB")


def verdict_f4(vs_frozen: Mapping[str, Any], alpha: float = 0.05, min_gain: float = 0.001) -> dict[str, Any]:
    """F4 verdict from :func:`ttt_gain_vs_frozen`: freezing ≥1 block beats freeze 0, with a
    best gain of at least ``min_gain``."""
    from gepalib.findings import reference as R

    per = vs_frozen["per_freeze"]
    if 0 not in per or len(per) < 2:
        raise ValueError(f"verdict_f4 needs freeze-0 runs and at least one other freeze, got {sorted(per)}")
    best = vs_frozen["best_freeze"]
    small = _too_small(-per[best]["mean"], min_gain)
    agrees = best >= 1 and vs_frozen["best_vs_freeze0"] < 0 and not small
    gains = ", ".join(f"freeze {k}: {v['mean']:+.4f}" for k, v in sorted(per.items()))
    sig = significance_text(vs_frozen["comparison"], alpha) if vs_frozen["comparison"] else "best is freeze 0"
    ours = f"best freeze {best} ({gains}; {sig}){small}"
    published = (f"freeze {R.F4['frozen_blocks']} of {R.F4['num_layers']} blocks "
                 f"(~{R.F4['depth_fraction']:.0%} of depth); qualitative, no ablation numbers")
    return _verdict("F4", "freezing early blocks regularizes TTT", agrees, ours, published,
                    f"the best freeze has ≥1 frozen block, a larger gain than freeze 0, and ≥ "
                    f"{1000 * min_gain:g} mBPB")


def verdict_f5(share: Mapping[str, Any], min_gain: float = 0.001) -> dict[str, Any]:
    """F5 verdict from :func:`ttt_share`: Spearman ρ(float bpb, share) > 0, and TTT must
    actually help: the mean TTT gain must be at least ``min_gain`` bpb (1 mBPB), else a
    trend in shares that are all ~0 is noise and the verdict is "does not agree"."""
    from gepalib.findings import reference as R

    sv = share["share_vs_float"]
    if sv is None:
        raise ValueError("verdict_f5 needs at least 2 base models")
    order = np.argsort(-share["float_bpb"], kind="stable")  # worst base first
    digits = 0 if np.all(np.abs(share["share"]) >= 0.01) else 2
    shares = " → ".join(f"{100 * x:.{digits}f}%" for x in share["share"][order])
    mean_gain = float(np.mean(-np.asarray(share["delta"], dtype=float)))
    helps = mean_gain >= min_gain
    agrees = helps and not math.isnan(sv["spearman"]) and sv["spearman"] > 0
    ours = (f"share {shares} as float bpb goes {share['float_bpb'][order][0]:.3f} → "
            f"{share['float_bpb'][order][-1]:.3f} (ρ={sv['spearman']:+.2f}, baseline {share['baseline_bpb']:.3f})")
    if not helps:
        ours += f"; mean TTT gain {1000 * mean_gain:.2f} mBPB is below {1000 * min_gain:g} mBPB, too small to rank"
    published = (" → ".join(f"{r['share_pct']}%" for r in R.F5_ROWS)
                 + f" as float bpb goes {R.F5_ROWS[0]['float_bpb']:.3f} → {R.F5_ROWS[-1]['float_bpb']:.3f} "
                 f"(baseline {R.NAIVE_BASELINE_BPB})")
    return _verdict("F5", "TTT's share shrinks as the base improves", agrees, ours, published,
                    f"the TTT share decreases as the base improves (Spearman ρ(float bpb, share) > 0) "
                    f"and TTT gains ≥ {1000 * min_gain:g} mBPB on average")


def findings_markdown(verdicts: Iterable[Mapping[str, Any]]) -> str:
    """A markdown table of verdicts: finding, the submission's number, ours, verdict."""
    def cell(x: str) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| Finding | Submission | Ours | Verdict |", "|---|---|---|---|"]
    for v in verdicts:
        lines.append(f"| {v['finding']}: {cell(v['title'])} | {cell(v['published'])} | {cell(v['ours'])} "
                     f"| **{v['verdict']}** |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# The published numbers run through the same functions


def _published_f2() -> dict[str, Any]:
    from gepalib.findings import reference as R

    rows = R.F2_ROWS
    return compressibility([r["steps"] for r in rows], [r["artifact_mib"] * R.MIB for r in rows],
                           [r["float_bpb"] for r in rows])


def published_results() -> dict[str, Any]:
    """Every finding computed from :mod:`gepalib.findings.reference`'s tables."""
    from gepalib.findings import reference as R

    st, bp = zip(*R.TRAJECTORY)
    f3 = {"sgd": R.F3_ROWS[1]["float_to_final"], "adamw": R.F3_ROWS[0]["float_to_final"]}  # PR #461 vs #456
    f5 = R.F5_ROWS
    return {
        "F1": phase_rates(st, bp, total_steps=R.HEADLINE["steps"], warmdown=R.HEADLINE["warmdown"]),
        "F2": _published_f2(),
        "F3": ttt_gain_by_optimizer(f3),
        "F5": ttt_share([r["float_bpb"] for r in f5], [r["final_bpb"] for r in f5], R.NAIVE_BASELINE_BPB),
    }


__all__ = [
    "AGREES", "DISAGREES", "trajectory", "trajectory_from_metrics", "compare_settings", "significance_text",
    "rank_correlation", "phase_boundaries", "infer_phases", "phase_rates", "phase_table", "compressibility",
    "ttt_gain", "ttt_gain_by_optimizer", "ttt_gain_vs_frozen", "ttt_share", "verdict_f1", "verdict_f2",
    "verdict_f3", "verdict_f4", "verdict_f5", "findings_markdown", "published_results",
]
