"""``gepa quantize RUN_DIR`` and ``gepa artifact FILE`` (see docs/quantization.md).

    gepa quantize runs/tiny                               # faithful int6 + zstd-22, then the roundtrip eval
    gepa quantize runs/tiny --compressor rans --report full
    gepa quantize runs/tiny --quant-mode per_row --no-eval
    gepa artifact runs/tiny/final_model.int6.gpz          # header, size ledger, compression report

Quantizer flags are config fields: --quant-mode faithful|per_row, --quant-embed true|false,
--passthrough-numel N, --compressor zstd|lzma|brotli|rans|none, --zstd-level N,
--packing none|shuffle|pack6|shuffle_pack6 (rans: none|shuffle); any other field too.

``gepa quantize`` reads the run's config.json and EMA weights (model_ema.pt,
``torch.load(weights_only=True)``), writes ``final_model.int6.gpz`` atomically,
stores the artifact facts, the size ledger and the compression report in
summary.json (keys ``artifact``, ``size``, ``compression``), then loads the
artifact back, dequantizes it into ``GPT(cfg.model)`` and records the
non-overlapping val_bpb as stage ``int6_roundtrip`` (with the float EMA number
and the quantization gap when stage ``float_ema`` exists). Quant settings that
change the weights (quant_mode, quant_embed, passthrough_numel) and differ from
the run's config tag the stage name, e.g. ``int6_roundtrip[per_row]``.
Output lines are greppable ``key:value`` pairs.
"""
from __future__ import annotations

import argparse
import time

from gepalib.cli.common import DEFAULTS_NOTE, add_override_args, add_parser, collect_overrides
from gepalib.run.pipeline import REPORTS, describe_artifact, quantize_run


def _say(s: str) -> None:
    print(s, flush=True)


def cmd_quantize(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    quantize_run(args.run_dir, report=args.report, evaluate=not args.no_eval, log=_say, **collect_overrides(args))
    print(f"quantize_total_seconds:{time.perf_counter() - t0:.1f}", flush=True)
    return 0


def cmd_artifact(args: argparse.Namespace) -> int:
    describe_artifact(args.file, report=args.report, log=_say)
    return 0


QUANTIZE_EPILOG = """\
examples:
  gepa quantize runs/tiny                              # faithful int6 + zstd-22, then the roundtrip eval
  gepa quantize runs/tiny --compressor rans --report full
  gepa quantize runs/tiny --quant-mode per_row --no-eval

Writes <run>/final_model.int6.gpz, stores the artifact facts, size ledger and compression
report in summary.json and records stage int6_roundtrip (tagged, e.g. int6_roundtrip[per_row],
when a quant field differs from the run's config). Any config field works as a flag; the
quantizer's are listed above.
"""
ARTIFACT_EPILOG = """\
example:
  gepa artifact runs/tiny/final_model.int6.gpz
"""


def add_cli(subparsers) -> None:
    p = add_parser(subparsers, "quantize", help="int6 GPTQ-lite artifact of a run's EMA weights + roundtrip eval",
                   description="Quantize a run's EMA weights to the int6 artifact and score it "
                               "(see docs/quantization.md).", epilog=QUANTIZE_EPILOG + "\n" + DEFAULTS_NOTE)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (config.json + model_ema.pt)")
    p.add_argument("--report", choices=REPORTS, default="fast",
                   help="compression report: fast (zstd + rans), full (every codec/packing; minutes), none")
    p.add_argument("--no-eval", action="store_true", help="skip the roundtrip val_bpb evaluation")
    add_override_args(p, sections=("quant",))
    p.set_defaults(func=cmd_quantize)

    p = add_parser(subparsers, "artifact", help="show an int6 artifact: header, size ledger, compression report",
                   description="Show an int6 artifact: its header, size ledger and compression report.",
                   epilog=ARTIFACT_EPILOG)
    p.add_argument("file", metavar="FILE", help="an artifact written by `gepa quantize`")
    p.add_argument("--report", choices=REPORTS, default="fast", help="compression report (default fast)")
    p.set_defaults(func=cmd_artifact)
