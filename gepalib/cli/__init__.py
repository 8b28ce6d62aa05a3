"""The ``gepa`` command line.

Each subcommand family lives in ``gepalib/cli/<name>.py`` and registers itself through
``add_cli(subparsers)``; this file assembles them and holds the one error handler.
Config fields are exposed as flat flags (``--steps 100 --model-dim 128``), the same
names as in Python and papermill.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import os
import signal
import sys

from gepalib import dist
from gepalib import errors as E
from gepalib.paths import user_path
from gepalib.cli.common import add_override_args, collect_overrides  # noqa: F401
from gepalib.download import DownloadError
from gepalib.faults import NonFiniteLoss, NonFiniteResult, TrainInterrupted
from gepalib.fsio import WriteFailed, os_reason
from gepalib.runlock import RunDirLocked

# Modules that contribute subcommands, in help order.
CLI_MODULES = ["gepalib.cli.data", "gepalib.cli.train", "gepalib.cli.quant", "gepalib.cli.eval", "gepalib.cli.reproduce",
               "gepalib.cli.info"]
# Expected failures: one clear line on stderr and an exit code, no traceback.
USER_ERRORS = (FileNotFoundError, ValueError, KeyError, TypeError)
# Arguments that are paths (relative ones are taken from the current directory, see user_paths).
PATH_ARGS = ("run_dir", "config", "file", "dir", "out", "figures", "runs_root", "data_dir", "parameters",
             "notebooks_dir")
PATH_FIELDS = ("data_dir", "tokenizer_path")  # config fields: stored relative to the checkout when under it


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gepa", description="gepalib: the GEPA Parameter Golf reproduction",
                                epilog="Paths you type are taken from the current directory; the defaults\n"
                                       "(data/sotu_sp1024, runs/, figures/) live in the project root: the\n"
                                       "checkout, or $GEPA_HOME when set (see docs/runs.md).\n\n"
                                       + E.exit_codes_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in CLI_MODULES:
        importlib.import_module(mod).add_cli(sub)
    return p


def report_error(args: argparse.Namespace, e: BaseException) -> int | None:
    """Print an expected failure as one line and return its exit code (gepalib.errors.EXIT_CODES);
    None for anything else (a bug: its traceback is kept).

    1 a non-finite training loss or evaluation; 2 a usage or config error; 3 a data error
    (:class:`~gepalib.errors.DataError`: damaged or inconsistent shards, manifest, tokenizer,
    checkpoints, weights, artifact); 4 I/O or lock (a failed write, a run dir in use, the hub
    unreachable); 128 + N a training run stopped by signal N (it left a checkpoint)."""
    command = " ".join(v for v in (args.command, getattr(args, "data_command", None)) if v)
    rank0 = os.environ.get("RANK", "0") == "0"
    if isinstance(e, TrainInterrupted):
        if rank0:
            print(f"gepa {command}: {e}", file=sys.stderr, flush=True)
        return 128 + int(e.signum)
    code = exit_code(e)
    if code is None:
        return None
    if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):  # ENOSPC, EROFS, EACCES, ...
        msg = str(e) if isinstance(e, WriteFailed) else (f"{e.filename}: " if e.filename else "") + os_reason(e)
    else:
        msg = e.args[0] if (isinstance(e, KeyError) and e.args) else str(e)
    if rank0 or not isinstance(e, (NonFiniteLoss, NonFiniteResult, RunDirLocked)):  # every rank has these; one says it
        print(f"gepa {command}: error: {msg}", file=sys.stderr, flush=True)
    return code


def exit_code(e: BaseException) -> int | None:
    """The exit code of an expected failure's class, None for an unexpected one."""
    if isinstance(e, (NonFiniteLoss, NonFiniteResult)):
        return E.NON_FINITE
    if isinstance(e, (RunDirLocked, DownloadError)) or (isinstance(e, OSError)
                                                         and not isinstance(e, FileNotFoundError)):
        return E.IO
    if isinstance(e, E.DataError):
        return E.DATA
    if isinstance(e, USER_ERRORS):
        return E.USAGE
    return None


def innermost_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)subcommand parser ``args`` were parsed by, e.g. ``gepa data check``'s."""
    while True:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        name = getattr(args, sub.dest, None) if sub is not None else None
        if name not in (sub.choices if sub is not None else {}):
            return parser
        parser = sub.choices[name]


def reject_unknown(parser: argparse.ArgumentParser, args: argparse.Namespace, extras: list[str]) -> None:
    """Exit 2 with the subcommand's usage and the closest flag it has, e.g.
    ``gepa train: error: unrecognized argument --stepz; did you mean --steps?``."""
    p = innermost_parser(parser, args)
    flags = sorted({o for a in p._actions for o in a.option_strings if o.startswith("--")})
    opt = next((x.split("=", 1)[0] for x in extras if x.startswith("-")), None)
    if opt is None:
        p.error(f"unrecognized arguments: {' '.join(extras)}")
    close = difflib.get_close_matches(opt, flags, n=1)
    p.error(f"unrecognized argument {opt}" + (f"; did you mean {close[0]}?" if close else f" (see {p.prog} --help)"))


def stdout_closed() -> int:
    """The reader of stdout went away (``gepa info --fields | head``): stop quietly, as a
    program killed by SIGPIPE would; point stdout at /dev/null so the exit flush cannot fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


def user_paths(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Make the relative paths the user typed absolute from the current directory, as any
    command-line tool does (``cd /tmp/x; gepa artifact art/x.gpz`` reads /tmp/x/art/x.gpz).
    Values left at their defaults (data/sotu_sp1024, runs, figures) stay rooted in the project
    (the checkout, or $GEPA_HOME), as the help says."""
    p = innermost_parser(parser, args)
    for dest in PATH_ARGS:
        v = getattr(args, dest, None)
        if isinstance(v, str) and v and v != p.get_default(dest):
            setattr(args, dest, str(user_path(v)))
    for name in PATH_FIELDS:
        v = getattr(args, "ov_" + name, None)
        if isinstance(v, str) and v:
            setattr(args, "ov_" + name, str(user_path(v, under_root=True)))
    sets = getattr(args, "ov_set", None) or []
    for i, item in enumerate(sets):
        k, eq, v = item.partition("=")
        if eq and k.strip() in PATH_FIELDS and v.strip():
            sets[i] = f"{k}={user_path(v.strip(), under_root=True)}"


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the subcommand, leave the process group (under torchrun) at the end."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        reject_unknown(parser, args, extras)
    user_paths(parser, args)
    rc = None
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows up here rather than at interpreter exit
    except BrokenPipeError:
        rc = stdout_closed()
    except KeyboardInterrupt:  # a second Ctrl-C during training, or one outside it
        print(f"gepa {args.command}: interrupted (SIGINT)", file=sys.stderr, flush=True)
        rc = 128 + signal.SIGINT
    except Exception as e:  # noqa: BLE001 -- expected failures become one line; the rest propagate
        rc = report_error(args, e)
        if rc is None:
            raise
    finally:
        dist.shutdown(barrier=rc == 0)  # no barrier after a failure: peers may never arrive
    return rc


if __name__ == "__main__":
    sys.exit(main())
