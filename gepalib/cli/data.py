"""`gepa data ...`: prepare, download and check datasets (see docs/data.md).

    gepa data prepare                                 # embedded State of the Union corpus -> data/sotu_sp1024
    gepa data prepare --source jsonl docs.jsonl      # your documents -> data/docs_sp1024 (or --out DIR)
    gepa data download --variant sp1024 --train-shards 80   # FineWeb -> data/fineweb10B_sp1024
    gepa data check data/sotu_sp1024 --deep
"""
from __future__ import annotations

import argparse
from pathlib import Path

from gepalib.config import resolve_path
from gepalib.data import validate_data_dir
from gepalib.download import download_fineweb
from gepalib.prepare import prepare_jsonl, prepare_sotu, summary_lines


def cmd_prepare(args: argparse.Namespace) -> int:
    common = {"shard_tokens": args.shard_tokens, "vocab_size": args.vocab_size, "force": args.force}
    if args.source == "sotu":
        if args.file:
            raise ValueError("--source sotu takes no FILE (did you mean --source jsonl FILE?)")
        m = prepare_sotu(args.out or "data/sotu_sp1024", **common)
    else:
        if not args.file:
            raise ValueError("--source jsonl needs a FILE (one JSON object with a 'text' field per line)")
        out = args.out or f"data/{jsonl_dataset_name(args.file, args.vocab_size)}"
        m = prepare_jsonl(args.file, out, val_docs=args.val_docs, **common)
    print("\n".join(summary_lines(m)))
    return 0


def jsonl_dataset_name(file: str, vocab_size: int) -> str:
    """Default dataset directory name for a JSONL file: ``docs.jsonl`` -> ``docs_sp1024``."""
    stem = Path(file).name
    for suffix in (".gz", ".jsonl", ".json"):
        stem = stem.removesuffix(suffix)
    return f"{stem or 'jsonl'}_sp{vocab_size}"


def cmd_download(args: argparse.Namespace) -> int:
    out = args.out or f"data/fineweb10B_{args.variant}"
    download_fineweb(out, variant=args.variant, train_shards=args.train_shards, repo_id=args.repo_id,
                     revision=args.revision)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    m = validate_data_dir(resolve_path(args.dir), args.vocab_size, deep=args.deep)
    for k, v in m["check"].items():
        print(f"{k}: {v}")
    for split in ("train", "val"):
        st = (m.get("splits") or {}).get(split) or {}
        if "bytes_per_token" in st:
            print(f"{split}_bytes_per_token: {st['bytes_per_token']}")
    print("status: ok")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="prepare, download or check a tokenized dataset",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True

    pp = dsub.add_parser("prepare", help="tokenize the embedded corpus (default) or a JSONL file")
    pp.add_argument("--source", choices=["sotu", "jsonl"], default="sotu")
    pp.add_argument("file", nargs="?", metavar="FILE", help="JSONL file (with --source jsonl)")
    pp.add_argument("--out", default="", metavar="DIR", help="output directory (default data/sotu_sp1024; jsonl: data/<file stem>_sp<vocab>)")
    pp.add_argument("--shard-tokens", type=int, default=1_000_000, metavar="N", help="tokens per shard")
    pp.add_argument("--vocab-size", type=int, default=1024, metavar="V", help="BPE vocabulary size")
    pp.add_argument("--val-docs", type=int, default=0, metavar="N",
                    help="jsonl: the first N documents are val (default 10%%)")
    pp.add_argument("--force", action="store_true", help="rebuild even if a matching dataset exists")
    pp.set_defaults(func=cmd_prepare)

    pd = dsub.add_parser("download", help="download challenge FineWeb shards from the Hugging Face Hub")
    pd.add_argument("--variant", default="sp1024", help="tokenizer variant (sp1024 is the one the run used)")
    pd.add_argument("--train-shards", type=int, default=80, metavar="N", help="first N train shards (the run: 80)")
    pd.add_argument("--out", default="", metavar="DIR", help="output directory (default data/fineweb10B_<variant>)")
    pd.add_argument("--repo-id", default="willdepueoai/parameter-golf")
    pd.add_argument("--revision", default=None)
    pd.set_defaults(func=cmd_download)

    pc = dsub.add_parser("check", help="validate a dataset directory")
    pc.add_argument("dir", metavar="DIR")
    pc.add_argument("--vocab-size", type=int, default=1024, metavar="V")
    pc.add_argument("--deep", action="store_true", help="also check every token id and the sha256 sums")
    pc.set_defaults(func=cmd_check)
