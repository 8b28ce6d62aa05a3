"""Old home of ``gepa reproduce``'s Python API: now :mod:`gepalib.run.notebooks` and
:mod:`gepalib.findings.report` (kept while the notebooks and their test move there)."""
from gepalib.findings.report import FINDINGS, load_findings, save_finding, write_findings_md  # noqa: F401
from gepalib.run.notebooks import (KERNEL, NOTEBOOKS, QUICK_COMMON, QUICK_PARAMETERS, execute_notebook,  # noqa: F401
                                   load_parameters_file, notebooks_dir, reproduce)
