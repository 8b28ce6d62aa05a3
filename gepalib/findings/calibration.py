"""Is an experiment in its finding's regime? Pure checks, one per finding, run before the verdict.

A CPU experiment can only show a finding where the mechanism behind it operates: a
warmdown can only beat a plateau that exists, a training-length ladder only says something
about compression once the weights have stopped growing, and a TTT comparison needs a TTT
gain above noise over enough chunks. Each function here measures that from the runs'
numbers and returns a dict with ``in_regime`` (bool), ``blockers`` (why not, one line
each; empty when in regime) and the numbers behind it. A verdict computed outside its
regime is "inconclusive": pass ``blockers`` on to the ``verdict_fN`` function.

* :func:`f1_calibration`: the constant-LR curve plateaus (its smoothed improvement rate
  falls below a third of the early rate) before the design's plateau phase starts.
* :func:`growth_end` / :func:`f2_calibration`: where the weights' growth phase ends (their
  relative growth rate below 5% of its peak), and whether the ladder's shortest rung is past it.
* :func:`ttt_calibration` / :func:`ttt_regime`: enough chunks and scored targets (counted in the
  TTT results that ran), and every compared arm's TTT gain above noise.
* :func:`choose_setting`: the best setting of a sweep (on held-out data), per group.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from gepalib.findings.analysis import detect_plateau, trajectory
from gepalib.findings.stats import as_1d, mean_interval

MIN_TTT_CHUNKS = 32
MIN_TTT_TARGETS = 131_072
MIN_TTT_GAIN = 0.001  # bpb: a gain under 1 mBPB cannot rank settings


def window_rates(steps: Any, values: Any, window: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(centres, rates): the least-squares slope (per step) through each ``window`` consecutive
    points, at the window's mean step."""
    s, v = trajectory(steps, values)
    if s.size < window:
        return np.empty(0), np.empty(0)
    centres, rates = [], []
    for k in range(s.size - window + 1):
        x, y = s[k:k + window], v[k:k + window]
        centres.append(float(x.mean()))
        rates.append(float(np.polyfit(x, y, 1)[0]))
    return np.asarray(centres), np.asarray(rates)


def f1_calibration(steps: Any, bpb: Any, *, plateau_start: float, warmdown_start: float, ratio: float = 1 / 3,
                   window: int = 5) -> dict[str, Any]:
    """F1's regime from a curve trained at **constant** LR (or the peak-LR part of a run).

    The plateau is :func:`detect_plateau`'s step (the smoothed rate below ``ratio`` × the
    early rate). In regime when it exists and lies at or before ``plateau_start`` (the step
    where the design's plateau phase begins), so the phase measured as "plateau" is one.
    Also returns the early and late rates (mBPB/kstep: the first window's and the mean rate
    over [plateau_start, warmdown_start]) and their ratio."""
    s, b = trajectory(steps, bpb)
    keep = s > 0
    s, b = s[keep], b[keep]
    plateau = detect_plateau(s, b, ratio, window=window)
    centres, rates = window_rates(s, b, window)
    early = -1000.0 * 1000.0 * float(rates[0]) if rates.size else math.nan  # mBPB per kstep, improvement > 0
    late_mask = (s >= plateau_start) & (s <= warmdown_start)
    late = (-1e6 * float(np.polyfit(s[late_mask], b[late_mask], 1)[0])) if late_mask.sum() >= 3 else math.nan
    blockers = []
    if plateau is None:
        blockers.append(f"the constant-LR curve never falls below {ratio:.2g}× its early improvement rate "
                        f"within {int(s.max()) if s.size else 0} steps: no plateau to compare the warmdown with")
    elif plateau > plateau_start:
        blockers.append(f"the plateau starts at step {plateau}, after the design's plateau phase begins "
                        f"({plateau_start:g}): lengthen the peak phase")
    return {"in_regime": not blockers, "blockers": blockers, "plateau_step": plateau, "ratio": ratio,
            "early_rate_mbpb_per_kstep": early, "late_rate_mbpb_per_kstep": late,
            "late_to_early": late / early if early and math.isfinite(late) else math.nan,
            "plateau_start": float(plateau_start), "warmdown_start": float(warmdown_start),
            "rate_centres": centres.tolist(), "rates_mbpb_per_kstep": (-1e6 * rates).tolist()}


def growth_end(steps: Any, rms: Any, ratio: float = 0.05, window: int = 3) -> int | None:
    """The step where the weights' growth phase ends: the smoothed relative growth rate
    d ln(rms)/d step (a least-squares line through each ``window`` consecutive evaluations)
    falls below ``ratio`` × its peak and stays below for the rest of the curve (a peak followed
    by a decay counts as ended). None while it is still above at the end, or with too few
    points (``window`` + 1)."""
    if not 0 < ratio < 1 or window < 2:
        raise ValueError(f"growth_end: need 0 < ratio < 1 and window >= 2, got {ratio}, {window}")
    s, r = trajectory(steps, rms)
    if s.size < window + 1 or np.any(r <= 0):
        return None
    centres, rates = window_rates(s, np.log(r), window)
    k0 = int(np.argmax(rates))
    if rates[k0] <= 0:
        return int(s[0])  # never grows
    below = rates < ratio * rates[k0]
    for k in range(k0 + 1, rates.size):
        if below[k:].all():
            return int(round(centres[k]))
    return None


def f2_calibration(steps: Any, rms: Any, ladder_steps: Sequence[int], *, ratio: float = 0.05,
                   window: int = 3) -> dict[str, Any]:
    """F2's regime: the weight RMS (of a constant-LR run as long as the longest rung, or of the
    longest rung) has left its growth phase (:func:`growth_end`) at or before the ladder's
    shortest rung ends. Also returns ``drift``: the relative change of the RMS from the
    shortest rung's length to the end of the curve (what growth is left across the ladder)."""
    end = growth_end(steps, rms, ratio, window)
    shortest = min(int(x) for x in ladder_steps)
    s, r = trajectory(steps, rms)
    at = float(np.interp(shortest, s, r))
    drift = float(r[-1] / at - 1.0) if at > 0 else math.nan
    blockers = []
    if end is None:
        blockers.append(f"the weight RMS still grows at more than {ratio:.0%} of its peak relative rate at the end "
                        f"of the curve: every rung is in the weight-growth phase")
    elif end > shortest:
        blockers.append(f"the weight RMS grows until step {end}, after the shortest rung ({shortest}): "
                        f"drop or lengthen the short rungs")
    return {"in_regime": not blockers, "blockers": blockers, "growth_end_step": end, "shortest_rung": shortest,
            "ratio": ratio, "drift": drift}


def gain_blockers(gains: Mapping[str, Any], min_gain: float = MIN_TTT_GAIN, alpha: float = 0.05) -> list[str]:
    """Why the TTT gains of ``gains`` ({arm: per-seed gains, TTT bpb − base bpb, negative =
    helped}) cannot be ranked: one line per arm whose mean gain is under ``min_gain`` or whose
    t interval reaches 0 (the same words wherever they are checked, so they are said once)."""
    out = []
    for name, values in gains.items():
        g = as_1d(list(values) if not np.isscalar(values) else values, f"gains[{name!r}]")
        mi = mean_interval(g, alpha)
        helped = -mi["mean"]
        what = f"the {name} TTT gain" if name else "the TTT gain"
        if helped < min_gain:
            out.append(f"{what} {1000 * helped:.2f} mBPB is below {1000 * min_gain:g} mBPB, too small to rank")
        elif g.size > 1 and not (math.isfinite(mi["ci_high"]) and mi["ci_high"] < 0):
            out.append(f"{what} {1000 * helped:.2f} mBPB is not above noise (its interval reaches 0)")
    return out


def ttt_calibration(n_chunks: int, targets: int, gains: Iterable[float] | Mapping[str, Any], *,
                    min_chunks: int = MIN_TTT_CHUNKS, min_targets: int = MIN_TTT_TARGETS,
                    min_gain: float = MIN_TTT_GAIN, alpha: float = 0.05) -> dict[str, Any]:
    """F3/F4/F5's regime: at least ``min_chunks`` chunks and ``min_targets`` scored targets,
    and every arm's mean TTT gain (``gains``: {arm: per-seed gains}, or one arm's gains; TTT
    bpb − base bpb, negative = helped) at least ``min_gain`` with an interval that excludes 0.
    Pass the counts of what ran (:func:`ttt_regime` reads them off the TTT results)."""
    named = isinstance(gains, Mapping)
    arms = dict(gains) if named else {"": list(gains)}
    blockers = []
    if n_chunks < min_chunks:
        blockers.append(f"{n_chunks} TTT chunks < {min_chunks}: score-first TTT helps only the chunks after the "
                        f"first, and too few of them")
    if targets < min_targets:
        blockers.append(f"{targets:,} scored targets < {min_targets:,}")
    blockers += gain_blockers(arms, min_gain, alpha)
    per = {}
    for name, values in arms.items():
        mi = mean_interval(as_1d(list(values), f"gains[{name!r}]"), alpha)
        per[name] = {"gain_mbpb": -1000 * mi["mean"], "gain_interval_mbpb": [-1000 * mi["ci_high"], -1000 * mi["ci_low"]],
                     "n": int(mi["n"])}
    weakest = min(per, key=lambda k: per[k]["gain_mbpb"])
    return {"in_regime": not blockers, "blockers": blockers, "n_chunks": int(n_chunks), "targets": int(targets),
            **per[weakest], "weakest_arm": weakest if named else None, "arms": per if named else None}


def ttt_regime(ttt_rows: Iterable[Mapping[str, Any]], gains: Iterable[float] | Mapping[str, Any],
               **kw: Any) -> dict[str, Any]:
    """:func:`ttt_calibration` from what ran: the chunk and scored-target counts of the TTT
    results themselves (each ``ensure_stages(...)["ttt"]`` row: ``chunks``, ``tokens``), the
    smallest over the runs, never the parameters the notebook asked for."""
    rows = list(ttt_rows)
    if not rows:
        raise ValueError("ttt_regime: no TTT results")
    for r in rows:
        if "chunks" not in r or "tokens" not in r:
            raise ValueError(f"ttt_regime: a TTT result without its chunk/target counts: {sorted(r)}")
    return ttt_calibration(min(int(r["chunks"]) for r in rows), min(int(r["tokens"]) for r in rows), gains, **kw)


def choose_setting(rows: Sequence[Mapping[str, Any]], by: str | None = None, key: str = "val_bpb") -> dict[str, Any]:
    """The best (lowest ``key``) row of a sweep, or per value of ``by`` ({value: row})."""
    if not rows:
        raise ValueError("choose_setting: no sweep rows")
    if by is None:
        return dict(min(rows, key=lambda r: r[key]))
    out: dict[Any, dict[str, Any]] = {}
    for r in rows:
        g = r[by]
        if g not in out or r[key] < out[g][key]:
            out[g] = dict(r)
    return out


def regime_summary(cal: Mapping[str, Any]) -> str:
    """One line: "in regime" or "NOT in regime: <reasons>"."""
    return "in regime" if cal["in_regime"] else "NOT in regime: " + "; ".join(cal["blockers"])


__all__ = ["MIN_TTT_CHUNKS", "MIN_TTT_GAIN", "MIN_TTT_TARGETS", "choose_setting", "f1_calibration",
           "f2_calibration", "growth_end", "regime_summary", "ttt_calibration", "window_rates"]
