"""Figures for the five findings: our measurement next to the published numbers.

One style (:func:`set_style`), one colour per source (:data:`COLORS`: ours,
published), one figure helper per finding, each returning a matplotlib Figure
whose panels read "ours" / "submission (PR #628)". The numbers come from
:mod:`gepalib.findings` results and :mod:`gepalib.findings.reference`; this
module computes nothing it has to be trusted on.

:func:`save_figure` lays every figure out so that no tick or axis label is cut
(constrained layout, then a tight bounding box) and writes PNG and PDF atomically
with no timestamps or version strings in the metadata, so re-running a notebook
gives identical bytes.
Headless processes (no display, no Jupyter) use the Agg backend.
"""
from __future__ import annotations

import io
import os
import re
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

if ("MPLBACKEND" not in os.environ and not os.environ.get("DISPLAY")
        and "matplotlib.pyplot" not in sys.modules and "ipykernel" not in sys.modules):
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gepalib.paths import resolve_path  # noqa: E402
from gepalib.findings import reference as R  # noqa: E402
from gepalib.findings.analysis import trajectory, trajectory_from_metrics  # noqa: E402
from gepalib.findings.stats import mean_interval  # noqa: E402
from gepalib.findings.verdicts import published_results  # noqa: E402
from gepalib.fsio import atomic_write_bytes  # noqa: E402

# Colour-blind-safe (seaborn "colorblind" palette entries), fixed so every figure agrees.
COLORS = {"ours": "#0173b2", "published": "#de8f05", "fit": "#555555"}
PHASE_COLORS = {"early": "#029e73", "plateau": "#cc78bc", "warmdown": "#56b4e9"}
PUBLISHED_LABEL = "submission (PR #628)"

# PNG: drop the "Software" key; PDF: drop CreationDate, Producer and Creator (they carry the
# time and the matplotlib version), so the bytes do not change across versions either.
_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None, "Creator": None},
             "svg": {"Date": None, "Creator": None}}


def set_style() -> None:
    """The gepalib look: seaborn whitegrid, colour-blind palette, compact fonts, fixed DPI."""
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", palette="colorblind", font="DejaVu Sans", rc={
        "figure.dpi": 100, "savefig.dpi": 150, "figure.figsize": (6.4, 4.0),
        "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
        "legend.fontsize": 9, "legend.frameon": False, "axes.spines.top": False, "axes.spines.right": False,
        "svg.hashsalt": "gepalib", "pdf.compression": 6,
    })


def new_figure(ncols: int = 1, *, title: str | None = None, width: float = 4.6, height: float = 3.6):
    """A figure with ``ncols`` side-by-side panels (constrained layout)."""
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), layout="constrained", squeeze=False)
    if title:
        fig.suptitle(title, fontsize=12)
    return fig, list(axes[0])


def _kfmt(ax, axis: str = "x") -> None:
    """Tick labels in thousands of steps ("12k") when the axis goes past 2,000."""
    from matplotlib.ticker import FuncFormatter

    lo, hi = getattr(ax, f"get_{axis}lim")()
    if max(abs(lo), abs(hi)) >= 2000:
        getattr(ax, f"{axis}axis").set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g}k"))


# ---------------------------------------------------------------------------
# F1: trajectory with phase shading


def shade_phases(ax, phases: Mapping[str, tuple[float, float]]) -> None:
    """Shade each phase's [start, end] and label it at the top of the axes."""
    for name, (lo, hi) in phases.items():
        ax.axvspan(lo, hi, color=PHASE_COLORS.get(name, "#bbbbbb"), alpha=0.15, lw=0)
        ax.text((lo + hi) / 2, 0.98, name, transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=8)


def plot_trajectory(ax, steps: Any, bpb: Any, *, phases: Mapping[str, tuple[float, float]] | None = None,
                    color: str = COLORS["ours"], label: str | None = None, zoom_from: float | None = None) -> None:
    """val_bpb vs step; ``zoom_from`` sets the y-range from that step on (hides the step-0 value)."""
    s, b = trajectory(steps, bpb)
    if phases:
        shade_phases(ax, phases)
    ax.plot(s, b, marker="o", ms=3, color=color, label=label)
    if zoom_from is not None and np.any(s >= zoom_from):
        sel = b[s >= zoom_from]
        pad = 0.08 * (sel.max() - sel.min() or abs(sel.max()) * 0.01 or 1.0)
        ax.set_ylim(sel.min() - pad, sel.max() + 3 * pad)
    ax.set_xlabel("step")
    ax.set_ylabel("val_bpb (live weights)")
    _kfmt(ax)


def _phase_spans(rates: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    return {k: (v["start"], v["end"]) for k, v in rates["phases"].items()}


def _relative_rates(rates: Mapping[str, Any]) -> dict[str, float]:
    p = rates["phases"]["plateau"]["rate_mbpb_per_kstep"]
    return {k: (v["rate_mbpb_per_kstep"] / p if p else np.nan) for k, v in rates["phases"].items()}


def warmdown_figure(steps: Any, bpb: Any, rates: Mapping[str, Any], *, label: str = "ours") -> plt.Figure:
    """F1: our trajectory, the published one, and each phase's rate as a multiple of the plateau rate.

    ``rates`` is :func:`gepalib.findings.phase_rates` of (steps, bpb).
    """
    pub = published_results()["F1"]
    ps, pb = zip(*R.TRAJECTORY)
    fig, (a, b, c) = new_figure(3, title="F1 — warmdown is a first-class variable")
    plot_trajectory(a, steps, bpb, phases=_phase_spans(rates), color=COLORS["ours"],
                    zoom_from=min(v["start"] for v in rates["phases"].values()))
    a.set_title(f"{label}: warmdown/plateau = {rates['warmdown_to_plateau_ratio']:.1f}×")
    plot_trajectory(b, ps, pb, phases=_phase_spans(pub), color=COLORS["published"], zoom_from=R.F1_PHASES[0]["start"])
    b.set_title(f"{PUBLISHED_LABEL}: {pub['warmdown_to_plateau_ratio']:.1f}×")
    ours_rel, pub_rel = _relative_rates(rates), _relative_rates(pub)
    names = list(pub_rel)
    x = np.arange(len(names))
    c.bar(x - 0.2, [ours_rel.get(n, np.nan) for n in names], 0.4, color=COLORS["ours"], label=label)
    c.bar(x + 0.2, [pub_rel[n] for n in names], 0.4, color=COLORS["published"], label=PUBLISHED_LABEL)
    c.set_xticks(x, names)
    c.axhline(1.0, color=COLORS["fit"], lw=0.8, ls="--")
    c.set_ylabel("rate / plateau rate")
    c.set_title("improvement rate per phase")
    c.legend()
    return fig


# ---------------------------------------------------------------------------
# F2: artifact size vs training length


def _size_panel(ax, steps: np.ndarray, size: np.ndarray, *, unit: str, color: str, title: str) -> None:
    ax.plot(steps, size, marker="o", color=color)
    if steps.size >= 2 and np.ptp(steps) > 0:
        k, c0 = np.polyfit(steps, size, 1)
        xs = np.array([steps.min(), steps.max()])
        ax.plot(xs, k * xs + c0, ls="--", lw=1, color=COLORS["fit"], label=f"fit: {1000 * k:+.3g} {unit}/kstep")
        ax.legend()
    ax.set_xlabel("training steps")
    ax.set_ylabel(f"artifact size ({unit})")
    ax.set_title(title)
    _kfmt(ax)


def compressibility_figure(steps: Any, artifact_bytes: Any, comp: Mapping[str, Any] | None = None,
                           *, label: str = "ours") -> plt.Figure:
    """F2: our artifact size (KB) vs steps next to the published MiB vs steps (9k..20k).

    ``comp`` (:func:`gepalib.findings.compressibility`) adds ρ to the title.
    """
    s, a = trajectory(steps, artifact_bytes)
    fig, (left, right) = new_figure(2, title="F2 — better-trained models compress smaller")
    t = label if comp is None else f"{label}: ρ={comp['spearman_steps']:+.2f}, {comp['relative_change']:+.1%}"
    _size_panel(left, s, a / 1000.0, unit="KB", color=COLORS["ours"], title=t)
    pub = published_results()["F2"]
    ps = np.array([r["steps"] for r in R.F2_ROWS], float)
    pm = np.array([r["artifact_mib"] for r in R.F2_ROWS], float)
    _size_panel(right, ps, pm, unit="MiB", color=COLORS["published"],
                title=f"{PUBLISHED_LABEL}: ρ={pub['spearman_steps']:+.2f}, {pub['relative_change']:+.1%}")
    return fig


# ---------------------------------------------------------------------------
# F3: TTT gain by optimizer


def ci_half_width(values: Sequence[float], alpha: float = 0.05) -> float:
    """Half width of the two-sided ``1 - alpha`` t interval of the mean of ``values`` (an error
    bar; 0 for a single value)."""
    mi = mean_interval(values, alpha)
    return float(mi["ci_high"] - mi["mean"]) if np.isfinite(mi["ci_high"]) else 0.0


def optimizer_figure(by_opt: Mapping[str, Any], *, label: str = "ours") -> plt.Figure:
    """F3: mean TTT gain per optimizer in mBPB (bars with the 95% t interval of the mean, one dot per seed), ours and the
    published ones on separate axes (they differ by orders of magnitude), each titled with its
    ratio of the larger gain to the smaller."""
    pub = published_results()["F3"]
    names = [by_opt["numerator"], by_opt["denominator"]]
    names += [k for k in by_opt["per_optimizer"] if k not in names]
    fig, axes = new_figure(2, title="F3 — TTT gain by optimizer", width=4.2)
    x = np.arange(len(names))
    for ax, res, color, lab in ((axes[0], by_opt, COLORS["ours"], label),
                                (axes[1], pub, COLORS["published"], PUBLISHED_LABEL)):
        per = res["per_optimizer"]
        means = [1000 * per[n]["mean"] if n in per else np.nan for n in names]
        errs = [1000 * ci_half_width(per[n]["values"]) if n in per else 0.0 for n in names]
        ax.bar(x, means, 0.6, yerr=errs if any(errs) else None, color=color, capsize=3)
        for i, n in enumerate(names):
            if n in per and per[n]["n"] > 1:
                ax.scatter(np.full(per[n]["n"], x[i]), 1000 * np.asarray(per[n]["values"]), s=10, color="black",
                           zorder=3)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(x, names)
        ax.set_title(f"{lab}: {res['ratio']:.2f}×")
        ax.set_ylabel("TTT gain (mBPB; ±95% CI)")
    return fig


# ---------------------------------------------------------------------------
# F4: TTT gain vs frozen blocks


def freezing_figure(vs_frozen: Mapping[str, Any], *, label: str = "ours", num_layers: int | None = None) -> plt.Figure:
    """F4: mean TTT gain per number of frozen leading blocks (95% t interval of the mean, seed dots).

    The submission published no ablation, only its choice (freeze 2 of 11),
    which is drawn as a marker line and stated in the title.
    """
    per = vs_frozen["per_freeze"]
    ks = np.array(sorted(per), float)
    means = np.array([per[int(k)]["mean"] for k in ks])
    errs = np.array([ci_half_width(per[int(k)]["values"]) for k in ks])
    fig, (ax,) = new_figure(1, title="F4 — TTT gain vs frozen blocks", width=5.6)
    ax.errorbar(ks, means, yerr=errs, marker="o", capsize=3, color=COLORS["ours"],
                label=f"{label}" + (f" ({num_layers} layers)" if num_layers else ""))
    for k in ks:
        v = per[int(k)]
        if v["n"] > 1:
            ax.scatter(np.full(v["n"], k), v["values"], s=10, color="black", zorder=3)
    ax.axvline(R.F4["frozen_blocks"], color=COLORS["published"], ls="--",
               label=f"{PUBLISHED_LABEL}: freeze {R.F4['frozen_blocks']} of {R.F4['num_layers']} (no ablation)")
    ax.scatter([vs_frozen["best_freeze"]], [vs_frozen["best_gain"]], marker="*", s=120, color=COLORS["ours"],
               zorder=4, label=f"our best: freeze {vs_frozen['best_freeze']}")
    ax.set_xticks(ks)
    ax.set_xlabel("frozen leading blocks during TTT")
    ax.set_ylabel("TTT gain, final − base (bpb; ±95% CI)")
    ax.legend()
    return fig


# ---------------------------------------------------------------------------
# F5: TTT share vs base quality


def _share_panel(ax, float_bpb: np.ndarray, share: np.ndarray, *, color: str, title: str,
                 labels: Sequence[str] | None = None, xlabel: str = "base (float) val_bpb  →  better") -> None:
    order = np.argsort(-float_bpb, kind="stable")
    ax.plot(float_bpb[order], 100 * share[order], marker="o", color=color)
    for i in order if labels is not None else ():
        ax.annotate(labels[i], (float_bpb[i], 100 * share[i]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.invert_xaxis()  # better base to the right
    ax.set_xlabel(xlabel)
    ax.set_ylabel("TTT share of total gain (%)")
    ax.set_title(title)


def ttt_share_figure(share: Mapping[str, Any], *, label: str = "ours", point_labels: Sequence[str] | None = None,
                     base: str = "float") -> plt.Figure:
    """F5: TTT share vs base bpb, ours (own baseline) next to the published (baseline 1.224);
    ``base`` names the stage our base bpb is (e.g. "int6_streaming"), for the x-axis."""
    pub = published_results()["F5"]
    fig, (left, right) = new_figure(2, title="F5 — TTT's share of the total gain")
    _share_panel(left, np.asarray(share["float_bpb"]), np.asarray(share["share"]), color=COLORS["ours"],
                 title=f"{label} (baseline {share['baseline_bpb']:.3f})", labels=point_labels,
                 xlabel=f"base ({base}) val_bpb  →  better")
    _share_panel(right, pub["float_bpb"], pub["share"], color=COLORS["published"],
                 title=f"{PUBLISHED_LABEL} (baseline {pub['baseline_bpb']:.3f})",
                 labels=[f"{r['base_steps'] / 1000:g}k" for r in R.F5_ROWS])
    return fig


# ---------------------------------------------------------------------------
# Training curves (the training notebook)


def training_curves_figure(metrics: Any, *, title: str = "training") -> plt.Figure:
    """train_loss and val_bpb (live, and EMA when logged) vs step from metrics.jsonl rows."""
    fig, (a, b) = new_figure(2, title=title)
    s, loss = trajectory_from_metrics(metrics, "train_loss")
    a.plot(s, loss, color=COLORS["ours"], lw=1)
    a.set_xlabel("step")
    a.set_ylabel("train loss (nats/token)")
    _kfmt(a)
    s, v = trajectory_from_metrics(metrics, "val_bpb")
    b.plot(s, v, marker="o", ms=3, color=COLORS["ours"], label="live")
    try:
        se, ve = trajectory_from_metrics(metrics, "val_bpb_ema")
        b.plot(se, ve, marker="s", ms=3, color=COLORS["published"], label="EMA")
    except ValueError:
        pass  # the EMA was not evaluated in this run
    b.set_xlabel("step")
    b.set_ylabel("val_bpb")
    b.legend()
    _kfmt(b)
    return fig


# ---------------------------------------------------------------------------
# Stage ledger (the artifact-and-evaluation notebook)


def stage_ledger_figure(table: Any, *, title: str = "stage ledger: val_bpb per stage") -> plt.Figure:
    """Horizontal bars of val_bpb per stage (a :func:`gepalib.run.stage_table` DataFrame or a
    list of ``{"stage", "val_bpb"}`` rows), each labelled with its value; the first stage on top."""
    rows = table.to_dict("records") if hasattr(table, "to_dict") else list(table)
    rows = [r for r in rows if r.get("val_bpb") is not None and np.isfinite(r["val_bpb"])]
    if not rows:
        raise ValueError("stage_ledger_figure: no stage with a val_bpb")
    names = [str(r["stage"]) for r in rows]
    vals = np.array([float(r["val_bpb"]) for r in rows])
    fig, (ax,) = new_figure(1, title=title, width=6.4, height=0.45 * len(rows) + 1.4)
    y = np.arange(len(rows))[::-1]
    bars = ax.barh(y, vals, color=COLORS["ours"], height=0.6)
    ax.bar_label(bars, labels=[f"{v:.4f}" for v in vals], padding=3, fontsize=8)
    ax.set_yticks(y, names)
    span = float(vals.max() - vals.min()) or 0.01 * float(vals.max()) or 1.0
    ax.set_xlim(vals.min() - 0.5 * span, vals.max() + 0.35 * span)  # room for the value labels
    ax.set_xlabel("val_bpb (lower is better)")
    ax.grid(axis="y", visible=False)
    return fig


# ---------------------------------------------------------------------------
# Saving

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def fit_layout(fig: plt.Figure) -> None:
    """Give a figure without a layout engine a constrained layout (so its axes make room for
    tick and axis labels) and draw it once so the layout is computed."""
    if fig.get_layout_engine() is None:
        fig.set_layout_engine("constrained")
    fig.canvas.draw()


def save_figure(fig: plt.Figure, name: str, out_dir: str | os.PathLike = "figures",
                formats: Sequence[str] = ("png", "pdf"), *, dpi: float | None = None, close: bool = False) -> list[Path]:
    """Write ``<out_dir>/<name>.<fmt>`` for each format, atomically, with stable metadata.

    The figure is laid out first (:func:`fit_layout`) and saved with a tight bounding
    box, so labels that stick out of the canvas are kept, not clipped. Relative ``out_dir`` resolves under the project root (``$GEPA_HOME`` or the
    checkout, see :func:`gepalib.paths.resolve_path`). Returns the paths written.
    """
    if not _NAME_RE.match(name) or name.lower().endswith(tuple(f".{f}" for f in _METADATA)):
        raise ValueError(f"save_figure: bad figure name {name!r} (letters, digits, _ . -; no extension, no '/')")
    unknown = [f for f in formats if f not in _METADATA]
    if unknown:
        raise ValueError(f"save_figure: unsupported format(s) {unknown}; choose from {sorted(_METADATA)}")
    out = resolve_path(out_dir)
    fit_layout(fig)
    paths = []
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=dpi, metadata=_METADATA[fmt], bbox_inches="tight", pad_inches=0.05)
        path = out / f"{name}.{fmt}"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    if close:
        plt.close(fig)
    return paths
