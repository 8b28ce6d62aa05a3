"""Calibration figures: the first plot of each findings notebook, showing that its experiment is in
the regime its finding is about (:mod:`gepalib.findings.calibration` computes the numbers)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from gepalib.findings.analysis import trajectory
from gepalib.findings.plots import COLORS, PHASE_COLORS, new_figure, plt


def _regime_title(cal: Mapping[str, Any]) -> str:
    return "in regime" if cal["in_regime"] else "NOT in regime"


def f1_calibration_figure(constant: tuple[Any, Any], design: tuple[Any, Any], cal: Mapping[str, Any], *,
                          label: str = "warmdown runs (mean)") -> plt.Figure:
    """F1: the constant-LR curve next to the design's (peak, then warmdown), the detected
    plateau and the phase boundaries; and the constant-LR curve's smoothed improvement rate
    with the plateau threshold (``cal`` is :func:`f1_calibration`)."""
    cs, cb = trajectory(*constant)
    ds, db = trajectory(*design)
    fig, (a, b) = new_figure(2, title=f"F1 calibration — {_regime_title(cal)}", width=5.2)
    z = cs > 0
    a.plot(cs[z], cb[z], color=COLORS["fit"], lw=1.4, label="constant LR")
    zd = ds > 0
    a.plot(ds[zd], db[zd], color=COLORS["ours"], lw=1.4, label=label)
    lo = np.nanpercentile(np.concatenate([cb[z], db[zd]]), 90)
    a.set_ylim(min(cb[z].min(), db[zd].min()) - 0.01, lo)
    for x, name, col in ((cal["plateau_start"], "plateau phase", PHASE_COLORS["plateau"]),
                         (cal["warmdown_start"], "warmdown", PHASE_COLORS["warmdown"])):
        a.axvline(x, color=col, lw=1.0, ls="--", label=f"{name} starts ({x:.0f})")
    if cal["plateau_step"] is not None:
        a.axvline(cal["plateau_step"], color="black", lw=1.0, ls=":", label=f"plateau detected ({cal['plateau_step']})")
    a.set_xlabel("step")
    a.set_ylabel("val bpb")
    a.legend(fontsize=8)
    a.set_title("val bpb (zoomed)")
    c, r = np.asarray(cal["rate_centres"]), np.asarray(cal["rates_mbpb_per_kstep"])
    pos = r > 0
    b.semilogy(c[pos], r[pos], color=COLORS["fit"], marker=".", lw=1.0, label="constant LR, smoothed")
    if np.isfinite(cal["early_rate_mbpb_per_kstep"]):
        b.axhline(cal["ratio"] * cal["early_rate_mbpb_per_kstep"], color="black", ls=":", lw=1.0,
                  label=f"{cal['ratio']:.2g} × early rate")
    b.set_xlabel("step")
    b.set_ylabel("improvement rate (mBPB/kstep)")
    b.set_title(f"late/early rate = {cal['late_to_early']:.2f}")
    b.legend(fontsize=8)
    return fig


def f2_calibration_figure(curves: Mapping[str, tuple[Any, Any]], cal: Mapping[str, Any],
                          ladder_steps: Sequence[int]) -> plt.Figure:
    """F2: weight RMS over training (one line per run), where its growth ends, and the rungs."""
    fig, (a,) = new_figure(1, title=f"F2 calibration — {_regime_title(cal)}", width=6.0)
    for i, (name, (s, v)) in enumerate(curves.items()):
        s, v = trajectory(s, v)
        a.plot(s, v, lw=1.3, label=name, color=COLORS["fit"] if i == 0 else None)
    if cal["growth_end_step"] is not None:
        a.axvline(cal["growth_end_step"], color="black", ls=":", lw=1.0,
                  label=f"growth ends ({cal['growth_end_step']})")
    for k, st in enumerate(sorted(ladder_steps)):
        a.axvline(st, color=COLORS["ours"], lw=0.8, ls="--", alpha=0.6, label="rung lengths" if k == 0 else None)
    a.set_xlabel("step")
    a.set_ylabel("RMS of the weight matrices")
    a.legend(fontsize=8)
    return fig


def f2_mechanism_figure(rows: Sequence[Mapping[str, Any]]) -> plt.Figure:
    """F2's mechanism per rung: int6 code entropy (bits/code), the per-row scale distribution,
    and the weight RMS, next to the artifact size (``rows`` from
    :func:`gepalib.run.study.artifact_mechanism`, each with ``steps``)."""
    rows = sorted(rows, key=lambda r: r["steps"])
    st = [r["steps"] for r in rows]
    fig, (a, b, c) = new_figure(3, title="F2 mechanism — what the ladder changes in the int6 codes", width=4.2)
    a.plot(st, [r["code_entropy_bits"] for r in rows], marker="o", color=COLORS["ours"])
    a.set_xlabel("steps")
    a.set_ylabel("int6 code entropy (bits/code)")
    a2 = a.twinx()
    a2.plot(st, [r["artifact_bytes"] / 1e3 for r in rows], marker="s", ls="--", color=COLORS["published"])
    a2.set_ylabel("artifact (kB)", color=COLORS["published"])
    a.set_title("entropy and size")
    b.boxplot([r["scales"] for r in rows], showfliers=False)
    b.set_xticks(range(1, len(st) + 1), [str(s) for s in st])
    b.set_xlabel("steps")
    b.set_ylabel("per-row int6 scale")
    b.set_title("row scales")
    c.plot(st, [r["weight_rms"] for r in rows], marker="o", color=COLORS["ours"])
    c.set_xlabel("steps")
    c.set_ylabel("RMS of the quantized matrices")
    c.set_title("weight RMS")
    return fig


def f2_clip_rules_figure(slopes: Mapping[str, Mapping[str, Any]], rms: Mapping[str, Any]) -> plt.Figure:
    """F2's mechanism, tested: size relative to the shortest rung against steps under each clip
    rule (:func:`gepalib.findings.analysis.clip_rule_slopes`, the log-log slope and its 95%
    interval in the legend), and size against weight RMS with its line and R²
    (:func:`~gepalib.findings.analysis.size_vs_rms`)."""
    fig, (a, b) = new_figure(2, title="F2 mechanism — two clip rules, and size vs weight RMS", width=5.2)
    for i, (rule, r) in enumerate(slopes.items()):
        st, by = np.asarray(r["steps"]), np.asarray(r["artifact_bytes"])
        a.plot(st, by / by[0], marker="o", color=f"C{i}",
               label=f"{rule}: slope {r['slope']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]")
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xlabel("training steps")
    a.set_ylabel("artifact bytes / shortest rung's")
    a.legend(fontsize=8)
    x, y = np.asarray(rms["weight_rms"]), np.asarray(rms["artifact_bytes"]) / 1000.0
    b.scatter(x, y, color=COLORS["ours"], zorder=3)
    xs = np.linspace(x.min(), x.max(), 20)
    b.plot(xs, (rms["slope"] * xs + rms["intercept"]) / 1000.0, color=COLORS["fit"], lw=1,
           label=f"R² = {rms['r2']:.2f}")
    b.set_xlabel("weight RMS (all matrices)")
    b.set_ylabel("artifact (KB, GPTQ-lite)")
    b.legend(fontsize=8)
    return fig


def ttt_sweep_figure(rows: Sequence[Mapping[str, Any]], chosen: Mapping[str, Mapping[str, Any]], *,
                     title: str = "TTT calibration — held-out sweep") -> plt.Figure:
    """The held-out TTT sweep: gain (mBPB) vs LR per optimizer at the shared chunk size and
    epochs, and the chunk-size / epoch points; the chosen setting per optimizer circled."""
    fig, (a, b) = new_figure(2, title=title, width=5.0)
    opts = sorted({r["ttt_optimizer"] for r in rows})
    for opt in opts:
        ch = chosen.get(opt, {})
        same = [r for r in rows if r["ttt_optimizer"] == opt and r.get("ttt_chunk_tokens") == ch.get("ttt_chunk_tokens")
                and r.get("ttt_epochs") == ch.get("ttt_epochs")]
        same = sorted(same, key=lambda r: r["ttt_lr"])
        if same:
            a.semilogx([r["ttt_lr"] for r in same], [1000 * r["gain"] for r in same], marker="o", label=opt)
        if ch:
            a.scatter([ch["ttt_lr"]], [1000 * ch["gain"]], s=120, facecolors="none", edgecolors="black", zorder=4)
    a.axhline(0, color="black", lw=0.8)
    a.set_xlabel("TTT learning rate")
    a.set_ylabel("held-out gain, TTT − base (mBPB)")
    a.set_title("learning rate")
    a.legend()
    first = rows[0]["ttt_optimizer"]  # the optimizer whose chunk size and epochs were swept
    other = [r for r in rows if r["ttt_optimizer"] == first]
    ch = chosen.get(first, {})
    pts = sorted({(r.get("ttt_chunk_tokens"), r.get("ttt_epochs")) for r in other
                  if r["ttt_lr"] == ch.get("ttt_lr")})
    labels = [f"c{c}\ne{e}" for c, e in pts]
    vals = [1000 * min(r["gain"] for r in other if (r.get("ttt_chunk_tokens"), r.get("ttt_epochs")) == p
                       and r["ttt_lr"] == ch.get("ttt_lr")) for p in pts]
    b.bar(range(len(pts)), vals, color=COLORS["ours"])
    b.set_xticks(range(len(pts)), labels)
    b.axhline(0, color="black", lw=0.8)
    b.set_ylabel("held-out gain (mBPB)")
    b.set_title(f"{first} at its best LR: chunk tokens and epochs")
    return fig
