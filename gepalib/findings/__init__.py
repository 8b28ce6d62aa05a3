"""The submission's five findings: analysis functions, statistics, verdicts, reference numbers, plots.

``from gepalib import findings as F`` gives the analysis API (``F.phase_rates``,
``F.compare_settings``, ``F.verdict_f1``, ...). The modules, one job each:

* :mod:`gepalib.findings.analysis`: trajectories, phase rates, plateau detection,
  compressibility, TTT gains and shares;
* :mod:`gepalib.findings.stats`: multi-seed comparisons (paired t, Welch), intervals, minimum
  detectable effects, trends and rank correlations;
* :mod:`gepalib.findings.verdicts`: the verdict on each finding, the findings table and
  the published numbers run through the same functions;
* :mod:`gepalib.findings.calibration`: is each experiment in its finding's regime (plateau,
  weight growth, TTT chunks and gain), and the best setting of a held-out sweep;
* :mod:`gepalib.findings.reference`: the published numbers; :mod:`gepalib.findings.plots` and
  :mod:`gepalib.findings.calplots`: figures.
"""
from gepalib.findings.analysis import (EARLY_START_FRAC, PLATEAU_START_FRAC, clip_rule_slopes, compressibility,
                                       detect_plateau, infer_phases, phase_boundaries, phase_rates, phase_table,
                                       size_vs_rms, trajectory, trajectory_from_metrics, ttt_gain,
                                       ttt_gain_by_optimizer, ttt_gain_vs_frozen, ttt_share)
from gepalib.findings.calibration import (choose_setting, f1_calibration, f2_calibration, gain_blockers, growth_end,
                                          regime_summary, ttt_calibration, ttt_regime)
from gepalib.findings.stats import (ALPHA, POWER, compare_paired, compare_settings, level_text, mean_interval,
                                    min_detectable_effect, rank_correlation, ratio_interval, significance_text,
                                    slope_effect)
from gepalib.findings.report import findings_markdown
from gepalib.findings.verdicts import (AGREES, DISAGREES, INCONCLUSIVE, MIN_GAIN, MIN_SEEDS, RULE, VERDICTS, judge,
                                       magnitude, published_results, verdict_f1, verdict_f2, verdict_f3, verdict_f4,
                                       verdict_f5)

__all__ = [
    # analysis
    "EARLY_START_FRAC", "PLATEAU_START_FRAC", "trajectory", "trajectory_from_metrics", "detect_plateau",
    "phase_boundaries", "infer_phases", "phase_rates", "phase_table", "compressibility", "size_vs_rms",
    "clip_rule_slopes", "ttt_gain",
    "ttt_gain_by_optimizer", "ttt_gain_vs_frozen", "ttt_share",
    # calibration
    "choose_setting", "f1_calibration", "f2_calibration", "gain_blockers", "growth_end", "regime_summary",
    "ttt_calibration", "ttt_regime",
    # stats
    "ALPHA", "POWER", "compare_paired", "compare_settings", "ratio_interval", "mean_interval",
    "min_detectable_effect", "slope_effect", "significance_text", "level_text", "rank_correlation",
    # verdicts
    "AGREES", "DISAGREES", "INCONCLUSIVE", "VERDICTS", "MIN_SEEDS", "MIN_GAIN", "RULE", "judge", "magnitude",
    "verdict_f1", "verdict_f2", "verdict_f3", "verdict_f4", "verdict_f5", "findings_markdown", "published_results",
]
