"""What ``gepa`` exits with: one class of failure per code, the same for every subcommand
(the table is printed in every ``--help`` and in the README's "Exit codes").

The command line's one error handler (``gepalib.cli.report_error``) maps an exception to its
code by class:

* :class:`DataError` (3): a file the command reads is damaged or disagrees with what was
  recorded about it -- a shard, a dataset's manifest, a tokenizer model, a checkpoint or
  weights file that fails its checksum, an artifact that does not validate or was made from
  weights that have changed since. A ``ValueError``, so code that catches ValueError still
  catches it.
* any other ValueError, KeyError, TypeError, FileNotFoundError (2): what was typed or
  configured is wrong (a flag, a config value, a path that does not exist).
* OSError, a busy run directory, an unreachable hub (4): the machine, not the input -- a
  full or read-only disk, a missing permission, another process writing the run dir, no
  network; the same command can succeed later.

This module imports nothing: every layer can raise these.
"""
from __future__ import annotations

OK, NON_FINITE, USAGE, DATA, IO, NOTEBOOK_FAILED = 0, 1, 2, 3, 4, 5

EXIT_CODES: tuple[tuple[str, str], ...] = (
    ("0", "done"),
    ("1", "a non-finite training loss or evaluation (nothing was recorded as a result)"),
    ("2", "usage or config error: a bad flag, value or path (nothing was written)"),
    ("3", "data error: a damaged or inconsistent shard, manifest, tokenizer, checkpoint, weights or artifact"),
    ("4", "I/O or lock: disk full, read-only, permission, run dir in use, hub unreachable (retry later)"),
    ("5", "gepa reproduce: a notebook failed (the others ran; each failure is listed)"),
    ("128+N", "stopped by signal N (training left a checkpoint: rerun the same command); 141 = stdout closed"),
)


def exit_codes_text() -> str:
    """The table for ``--help`` epilogs."""
    return "exit codes:\n" + "\n".join(f"  {code:<6} {what}" for code, what in EXIT_CODES)


class DataError(ValueError):
    """A file the command reads is damaged or inconsistent with its record (exit code 3)."""


class StaleArtifact(DataError):
    """The artifact was made from weights that have changed since (rerun ``gepa quantize``)."""
