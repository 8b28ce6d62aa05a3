"""The submission's five findings as pure functions: trajectories, phase rates,
compressibility and test-time-training gains.

Numbers in, numbers/dicts out; no I/O, no plotting. The same functions turn
the published tables (:mod:`gepalib.findings.reference`) into the published derived
numbers and turn our own runs into ours, so the two are computed alike. The
statistics live in :mod:`gepalib.findings.stats`, the verdicts in
:mod:`gepalib.findings.verdicts`.

Conventions:

* bpb differences are ``later - earlier``: negative means better, as in the
  submission's tables (ΔBPB -0.101, float→final -0.017).
* Rates are in mBPB per 1,000 steps (the README's "BPB/kstep").
* A "gain" of test-time training is ``final - base`` (negative = TTT helped).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
from scipy.stats import t as t_dist

from gepalib.findings.reference import NAIVE_BASELINE_BPB
from gepalib.findings.stats import as_1d, compare_settings, group, paired, rank_correlation, slope_effect

# Fractions that reproduce the submission's F1 boundaries for 20k steps / 8k
# warmdown: early starts at 5% of the run (1k), the plateau at 7/12 of the
# peak-LR phase (7k), the warmdown at steps - warmdown (12k).
EARLY_START_FRAC = 0.05
PLATEAU_START_FRAC = 7 / 12


# ---------------------------------------------------------------------------
# Trajectories


def trajectory(steps: Any, bpb: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (step, bpb) curve: finite, same length, sorted by step, no repeated step."""
    s, b = paired(steps, bpb, "steps", "bpb")
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



def detect_plateau(steps: Any, bpb: Any, ratio: float = 1 / 3, *, window: int = 5, patience: int = 2,
                   start: float | None = None) -> int | None:
    """Calibrate F1: where a val_bpb curve trained at constant LR reaches its plateau.

    The improvement rate (−slope, bpb per step) is smoothed by a least-squares line
    through each ``window`` consecutive evaluations. The early rate is the first
    window's. Returns the step (rounded, interpolated between window centres) where
    the smoothed rate first falls below ``ratio`` × the early rate and stays below
    for ``patience`` further windows. None when the curve never gets there (e.g. a
    straight line), when it has fewer than ``window + patience`` evaluations, or when
    the early rate is not an improvement clearly above the noise: its t statistic, with
    the noise taken as the median scatter of the windows about their lines, must pass the
    99% two-sided critical value (a noisy flat curve has no plateau to find).

    Evaluations before ``start`` are ignored; by default step 0 (the untrained
    model, far off the curve) is dropped. For an exponential approach
    ``a + c·exp(−s/τ)`` the answer is ``s₀ + τ·ln(1/ratio)``, s₀ the first window's centre.
    """
    if not 0 < ratio < 1:
        raise ValueError(f"detect_plateau: ratio must be in (0, 1), got {ratio}")
    if window < 3 or patience < 0:
        raise ValueError(f"detect_plateau: need window ≥ 3 and patience ≥ 0, got {window}, {patience}")
    s, b = trajectory(steps, bpb)
    keep = s >= start if start is not None else s > 0
    s, b = s[keep], b[keep]
    if s.size < window + patience:
        return None
    centres, rates, resid_sd, sxx = [], [], [], []
    for k in range(s.size - window + 1):
        x, y = s[k:k + window], b[k:k + window]
        slope, icept = np.polyfit(x, y, 1)
        centres.append(float(x.mean()))
        rates.append(-float(slope))
        resid_sd.append(math.sqrt(float(np.sum((y - (slope * x + icept)) ** 2)) / (window - 2)))
        sxx.append(float(np.sum((x - x.mean()) ** 2)))
    noise = float(np.median(resid_sd))  # most windows are nearly straight: their scatter is the noise
    if rates[0] <= 0 or (noise > 0 and rates[0] * math.sqrt(sxx[0]) / noise < t_dist.ppf(0.995, window - 2)):
        return None
    thr = ratio * rates[0]
    below = np.asarray(rates) < thr
    for k in range(1, len(rates) - patience):
        if below[k:k + patience + 1].all() and not below[k - 1]:
            f = (rates[k - 1] - thr) / (rates[k - 1] - rates[k])  # linear between the two centres
            return int(round(centres[k - 1] + f * (centres[k] - centres[k - 1])))
    return None


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
    ev = np.unique(as_1d(eval_steps, "eval_steps"))
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

    Returns the runs sorted by length (``steps``, ``artifact_bytes``), the
    least-squares slope in bytes per 1,000 steps, the relative
    size change from the shortest to the longest run, and
    :func:`rank_correlation` of size vs steps (``*_steps``) and, when
    ``float_bpb`` is given, of size vs float bpb (``*_float``; positive means
    better-trained models are smaller). Units of ``artifact_bytes`` carry
    through (pass MiB and the slope is MiB per kstep).
    """
    s, a = paired(steps, artifact_bytes, "steps", "artifact_bytes")
    if s.size < 2 or np.ptp(s) == 0:
        raise ValueError(f"compressibility: need ≥2 runs of different length, got steps {s.tolist()}")
    order = np.argsort(s, kind="stable")
    s, a = s[order], a[order]
    slope, intercept = np.polyfit(s / 1000.0, a, 1)
    out: dict[str, Any] = {"n": int(s.size), "steps": s, "artifact_bytes": a,
                           "slope_bytes_per_kstep": float(slope), "intercept": float(intercept),
                           "first_bytes": float(a[0]), "last_bytes": float(a[-1]),
                           "relative_change": float((a[-1] - a[0]) / a[0])}
    for k, v in rank_correlation(s, a).items():
        if k != "n":
            out[f"{k}_steps"] = v
    if float_bpb is not None:
        f = as_1d(float_bpb, "float_bpb")
        if f.shape != order.shape:
            raise ValueError(f"float_bpb has {f.size} values for {s.size} runs")
        for k, v in rank_correlation(f[order], a).items():
            if k != "n":
                out[f"{k}_float"] = v
    return out


def size_vs_rms(artifact_bytes: Any, weight_rms: Any) -> dict[str, Any]:
    """F2's mechanism: the least-squares line of artifact size on the weights' RMS over runs,
    with R² (the share of the size's variance over the runs that the RMS explains)."""
    b, r = paired(artifact_bytes, weight_rms, "artifact_bytes", "weight_rms")
    fit = slope_effect(r, b)
    resid = b - (fit["slope"] * r + fit["intercept"])
    ss = float(np.sum((b - b.mean()) ** 2))
    return {**fit, "r2": 1.0 - float(np.sum(resid ** 2)) / ss if ss > 0 else math.nan,
            "weight_rms": r.tolist(), "artifact_bytes": b.tolist()}


def clip_rule_slopes(steps: Any, bytes_by_rule: Mapping[str, Any], alpha: float = 0.05) -> dict[str, Any]:
    """F2 under several clip rules: per rule, the log-log slope of artifact size on steps with its
    two-sided ``1 - alpha`` t interval (df = runs − 2) and the size change shortest → longest."""
    out = {}
    for rule, sizes in bytes_by_rule.items():
        s, a = paired(steps, sizes, "steps", f"bytes[{rule!r}]")
        order = np.argsort(s, kind="stable")
        fit = slope_effect(np.log(s[order]), np.log(a[order]), alpha)
        out[rule] = {**fit, "relative_change": float(a[order][-1] / a[order][0] - 1), "steps": s[order].tolist(),
                     "artifact_bytes": a[order].tolist()}
    return out


# ---------------------------------------------------------------------------
# F3 / F4 / F5: test-time training


def ttt_gain(base_bpb: Any, final_bpb: Any) -> np.ndarray:
    """TTT gain per run: ``final - base`` (negative = TTT helped)."""
    base, final = paired(base_bpb, final_bpb, "base_bpb", "final_bpb")
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
    per = {k: group(v, f"gains[{k!r}]") for k, v in gains.items()}
    den = per[denominator]["mean"]
    ratio = per[numerator]["mean"] / den if den != 0 else math.nan
    return {"per_optimizer": per, "numerator": numerator, "denominator": denominator, "ratio": ratio,
            "comparison": compare_settings(gains[numerator], gains[denominator])}


def ttt_gain_vs_frozen(frozen_blocks: Any, gains: Any) -> dict[str, Any]:
    """F4: TTT gain per number of frozen leading blocks.

    ``frozen_blocks[i]`` and ``gains[i]`` describe one run (repeat a freeze
    value for several seeds). The best freeze has the most negative mean gain
    (ties: fewer frozen blocks); ``best_frozen`` is the best with ≥1 frozen block.
    ``best_vs_freeze0`` = best mean − freeze-0 mean (NaN without freeze-0 runs);
    ``comparison`` is :func:`compare_settings` of ``best_frozen`` vs freeze 0 when
    both exist (None otherwise).
    """
    k, g = paired(frozen_blocks, gains, "frozen_blocks", "gains")
    if np.any(k < 0) or np.any(k != np.round(k)):
        raise ValueError(f"frozen_blocks must be non-negative integers, got {k.tolist()}")
    per = {int(f): group(g[k == f], f"gains[freeze={int(f)}]") for f in np.unique(k)}
    best = min(per, key=lambda f: (per[f]["mean"], f))
    frozen = [f for f in per if f >= 1]
    best_frozen = min(frozen, key=lambda f: (per[f]["mean"], f)) if frozen else None
    out: dict[str, Any] = {"per_freeze": per, "best_freeze": best, "best_gain": per[best]["mean"],
                           "best_frozen": best_frozen,
                           "gain_freeze0": per[0]["mean"] if 0 in per else math.nan,
                           "best_vs_freeze0": per[best]["mean"] - per[0]["mean"] if 0 in per else math.nan,
                           "comparison": None}
    if 0 in per and best_frozen is not None:
        out["comparison"] = compare_settings(per[best_frozen]["values"], per[0]["values"])
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
        baseline_bpb = NAIVE_BASELINE_BPB
    f, fin = paired(float_bpb, final_bpb, "float_bpb", "final_bpb")
    total = baseline_bpb - fin
    if np.any(total <= 0):
        raise ValueError(f"ttt_share: baseline {baseline_bpb:g} must be worse (higher) than every final bpb "
                         f"{fin.tolist()}; at small scale measure a baseline at the same scale")
    out: dict[str, Any] = {"baseline_bpb": float(baseline_bpb), "float_bpb": f, "final_bpb": fin,
                           "delta": fin - f, "total_gain": total, "share": (f - fin) / total}
    out["share_vs_float"] = rank_correlation(f, out["share"]) if f.size >= 2 else None
    return out


__all__ = [
    "EARLY_START_FRAC", "PLATEAU_START_FRAC", "trajectory", "trajectory_from_metrics", "detect_plateau",
    "phase_boundaries", "infer_phases", "phase_rates", "phase_table", "compressibility", "ttt_gain",
    "ttt_gain_by_optimizer", "ttt_gain_vs_frozen", "ttt_share",
]
