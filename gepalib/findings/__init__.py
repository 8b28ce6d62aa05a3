"""The submission's five findings: pure analysis functions, verdicts, reference numbers, plots.

``from gepalib import findings as F`` gives the analysis API (``F.phase_rates``,
``F.verdict_f1``, ...); figures live in :mod:`gepalib.findings.plots`, the published
numbers in :mod:`gepalib.findings.reference`.
"""
from gepalib.findings.analysis import *  # noqa: F401,F403
from gepalib.findings.analysis import __all__  # noqa: F401
