"""Findings records: what the findings notebooks store, and the ``findings.md`` table.

Each findings notebook computes its verdict with :mod:`gepalib.findings` and stores it
with :func:`save_finding` as ``<figures>/finding_F<n>.json``; :func:`write_findings_md`
tabulates them (the submission's number, ours, the verdict) into ``<figures>/findings.md``.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from gepalib.paths import resolve_path
from gepalib.findings.stats import ALPHA, level_text
from gepalib.findings.verdicts import RULE
from gepalib.fsio import atomic_write_json, atomic_write_text

# The submission's five findings; any other record (E1, E2: the challenge's later TTT families,
# gepalib.findings.families; a new notebook's E<n>) is tabulated "beyond the submission".
FINDINGS = ("F1", "F2", "F3", "F4", "F5")


def _fmt_stats(v: Mapping[str, Any]) -> str:
    if "interval" not in v:
        return ""
    def f(x: Any, fmt: str = "+.3g") -> str:
        return "n/a" if x is None or not math.isfinite(x) else format(x, fmt)

    lo, hi = v["interval"]
    test = v.get("test", "")
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{test} {f(v['effect'])}, no interval, n={v['n']}".strip()
    level = level_text(1 - v.get("level", 1 - ALPHA))
    exp = f"expected {f(v['expected'])}" if v.get("expected") is not None else "no published expected effect"
    return f"{test} {f(v['effect'])} [{level} CI {f(lo)}, {f(hi)}], MDE {f(v['mde'], '.3g')}, {exp}, n={v['n']}".strip()


def findings_markdown(verdicts: Iterable[Mapping[str, Any]]) -> str:
    """A markdown table of verdicts: finding, the submission's number, ours, the effect with its
    interval (labelled with its level), MDE and n, the magnitude line, and the verdict."""
    def cell(x: str) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| Finding | Submission | Ours | Effect [CI], MDE, n | Magnitude | Verdict |",
             "|---|---|---|---|---|---|"]
    for v in verdicts:
        mag = (v.get("magnitude") or {}).get("text", "—")
        lines.append(f"| {v['finding']}: {cell(v['title'])} | {cell(v['published'])} | {cell(v['ours'])} "
                     f"| {cell(_fmt_stats(v))} | {cell(mag)} | **{v['verdict']}** |")
    return "\n".join(lines) + "\n"


def save_finding(verdict: dict[str, Any], figures_dir: str | os.PathLike = "figures", **extra: Any) -> Path:
    """Store a ``gepalib.findings.verdict_fN`` result (plus JSON-able ``extra``: the
    notebook's parameters, the numbers behind it) as ``<figures_dir>/finding_<F>.json``."""
    for k in ("finding", "verdict", "ours", "published"):
        if k not in verdict:
            raise ValueError(f"save_finding: not a findings verdict (missing {k!r}): {sorted(verdict)}")
    path = resolve_path(figures_dir) / f"finding_{verdict['finding']}.json"
    atomic_write_json(path, {**dict(verdict), "extra": _json_numbers(extra)})
    return path


def _json_numbers(x: Any) -> Any:
    """``x`` with every non-finite float (an interval undefined for two runs, say) as None, the
    way the verdict records store an undefined number: findings JSON stays strict."""
    if isinstance(x, Mapping):
        return {k: _json_numbers(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_numbers(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def load_findings(figures_dir: str | os.PathLike = "figures") -> dict[str, dict[str, Any]]:
    """{finding id: record} for every ``finding_F*.json`` and ``finding_E*.json`` in ``figures_dir``."""
    out = {}
    d = resolve_path(figures_dir)
    for p in sorted([*d.glob("finding_F*.json"), *d.glob("finding_E*.json")]):
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{p}: unreadable findings record ({e})") from None
        if not isinstance(rec, dict) or "finding" not in rec:
            raise ValueError(f"{p}: not a findings record")
        out[rec["finding"]] = rec
    return out


_CAL_KEYS = {"plateau_step": "plateau detected at step", "plateau_start": "plateau phase starts at",
             "late_to_early": "late/early rate", "growth_end_step": "weight RMS stops growing at step",
             "shortest_rung": "shortest rung", "n_chunks": "TTT chunks", "targets": "scored targets",
             "gain_mbpb": "TTT gain (mBPB)"}


def calibration_line(rec: dict[str, Any]) -> str | None:
    """One markdown bullet: is the record's experiment in its finding's regime, with the numbers
    (from ``extra.calibration``, a :mod:`gepalib.findings.calibration` result); None without one."""
    cal = (rec.get("extra") or {}).get("calibration")
    if not isinstance(cal, dict) or "in_regime" not in cal:
        return None
    nums = []
    for k, label in _CAL_KEYS.items():
        v = cal.get(k)
        if v is None or isinstance(v, (list, dict)):
            continue
        nums.append(f"{label} {v:.2f}" if isinstance(v, float) and not float(v).is_integer() else f"{label} {v:g}"
                    if isinstance(v, (int, float)) else f"{label} {v}")
    head = "in regime" if cal["in_regime"] else "**not in regime**: " + "; ".join(cal.get("blockers", []))
    return f"- **{rec['finding']}**: {head} ({', '.join(nums)})"


def machine_line(recs: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Where the numbers came from: the CPU (model, vendor family/model/stepping), the ISA torch's
    kernels ran, the BLAS/oneDNN builds, torch and the threads, read from ``env.json`` of the
    first run a record names (``extra.runs``); None when no run's env.json can be read."""
    for rec in recs.values():
        for path in (rec.get("extra") or {}).get("runs") or []:
            try:
                env = json.loads((resolve_path(path) / "env.json").read_text(encoding="utf-8"))
            except (OSError, TypeError, json.JSONDecodeError):
                continue
            cpu = env.get("cpu") or {}
            libs = "; ".join(cpu.get("libraries") or []) or "n/a"
            return (f"Machine (env.json of {path}): {cpu.get('model', env.get('device_name', '?'))} "
                    f"({cpu.get('vendor', '?')} {cpu.get('family_model_stepping', '?')}), {cpu.get('usable_cores', '?')} "
                    f"usable cores, torch {env.get('torch', '?')} kernels {cpu.get('kernel_isa', '?')}, {libs}, "
                    f"{env.get('torch_threads', '?')} thread(s) per process, world size {env.get('world_size', '?')}.")
    return None


def write_findings_md(figures_dir: str | os.PathLike = "figures", *, notebook_rows: Sequence[dict] = (),
                      note: str = "", sources: Mapping[str, str] | None = None) -> Path:
    """``<figures_dir>/findings.md``: the five findings (submission, ours, verdict), which are
    missing (with the notebook that computes each, from ``sources``: {finding id: notebook}),
    every other record beyond the submission, and (when given) how each notebook fared."""
    recs, sources = load_findings(figures_dir), dict(sources or {})
    lines = ["# The five findings, reproduced", ""]
    if note:
        lines += [note, ""]
    if (machine := machine_line(recs)) is not None:
        lines += [machine, ""]
    lines += [f"Verdict rule (every row): {RULE}. Direction and magnitude are separate: the Magnitude column "
              f"gives the measured ratio or slope with its interval and whether the published value lies in it.", ""]
    lines.append(findings_markdown([recs[f] for f in FINDINGS if f in recs]).rstrip("\n"))
    missing = [f + (f" ({sources[f]})" if f in sources else "") for f in FINDINGS if f not in recs]
    if missing:
        lines += ["", "Not computed: " + ", ".join(missing) + "."]
    others = sorted(f for f in recs if f not in FINDINGS)
    if others:
        lines += ["", "## Beyond the submission", "", findings_markdown([recs[e] for e in others]).rstrip("\n")]
    ordered = [f for f in FINDINGS if f in recs] + others
    cal = [ln for f in ordered if (ln := calibration_line(recs[f]))]
    if cal:
        lines += ["", "Calibration (each experiment checked against its finding's regime before the verdict):", *cal]
    crit = [f"- **{f}**: {recs[f]['criterion']}" for f in ordered if recs[f].get("criterion")]
    if crit:
        lines += ["", "Verdict criteria (computed by `gepalib.findings`):", *crit]
    if notebook_rows:
        lines += ["", "| notebook | status | seconds |", "|---|---|---|"]
        lines += [f"| {r['notebook']} | {r['status']} | {r['seconds']:.0f} |" for r in notebook_rows]
    path = resolve_path(figures_dir) / "findings.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
