"""`gepa data ...`: prepare, download and check datasets (see docs/data.md).

    gepa data prepare                                 # embedded State of the Union corpus -> data/sotu_sp1024
    gepa data prepare --source jsonl docs.jsonl      # your documents -> data/docs_sp1024 (or --out DIR)
    gepa data download --variant sp1024 --train-shards 80   # FineWeb -> data/fineweb10B_sp1024
    gepa data check data/sotu_sp1024 --deep
"""
from __future__ import annotations

import argparse
from pathlib import Path

from gepalib.cli.common import add_parser
from gepalib.paths import resolve_path
from gepalib.data import validate_data_dir
from gepalib.download import download_fineweb
from gepalib.prepare import prepare_jsonl, prepare_sotu, summary_lines


def cmd_prepare(args: argparse.Namespace) -> int:
    common = {"shard_tokens": args.shard_tokens, "vocab_size": args.vocab_size, "force": args.force}
    if args.source == "sotu":
        if args.file:
            raise ValueError("--source sotu takes no FILE (did you mean --source jsonl FILE?)")
        if args.val_docs is not None:
            raise ValueError("--val-docs is for --source jsonl (the embedded corpus holds out whole speeches)")
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
    if m["check"].get("manifest") == "none":
        print(f"status: no-manifest (headers, sizes and the tokenizer were checked; {args.dir} has no "
              f"manifest.json to check the files, checksums and split totals against)")
    else:
        print("status: ok")
    return 0


EPILOG = """\
examples:
  gepa data prepare                                 # embedded corpus -> data/sotu_sp1024
  gepa data prepare --source jsonl docs.jsonl       # your documents -> data/docs_sp1024 (or --out DIR)
  gepa data download --variant sp1024 --train-shards 80   # FineWeb -> data/fineweb10B_sp1024
  gepa data check data/sotu_sp1024 --deep
"""
PREPARE_EPILOG = """\
examples:
  gepa data prepare
  gepa data prepare --source jsonl docs.jsonl --val-docs 100 --vocab-size 1024

The embedded corpus is the sotu package's State of the Union addresses; a JSONL file holds one
{"text": ...} object per line. A matching dataset that already exists is reused (--force
rebuilds it).
"""
DOWNLOAD_EPILOG = """\
example:
  gepa data download --variant sp1024 --train-shards 80

Resumable: shards already present and valid are kept.
"""
CHECK_EPILOG = """\
example:
  gepa data check data/sotu_sp1024 --deep           # also every token id and the sha256 sums

Checks every shard header and size, the tokenizer, and that the directory agrees with its
manifest.json: the files it lists with their sizes, no shard it does not list, each split's
shards and token total. The last line is "status: ok", or "status: no-manifest ..." for a
directory without a manifest.json (its shards and tokenizer are usable, but nothing records
what they should be).
"""


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = add_parser(sub, "data", help="prepare, download or check a tokenized dataset",
                   description="Prepare, download or check a tokenized dataset (see docs/data.md).", epilog=EPILOG)
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True

    pp = add_parser(dsub, "prepare", help="tokenize the embedded corpus (default) or a JSONL file",
                    description="Tokenize the embedded corpus (default) or a JSONL file into challenge shards.",
                    epilog=PREPARE_EPILOG)
    pp.add_argument("--source", choices=["sotu", "jsonl"], default="sotu",
                    help="sotu: the embedded corpus (default); jsonl: FILE")
    pp.add_argument("file", nargs="?", metavar="FILE", help="JSONL file (with --source jsonl)")
    pp.add_argument("--out", default="", metavar="DIR", help="output directory (default data/sotu_sp1024; jsonl: data/<file stem>_sp<vocab>)")
    pp.add_argument("--shard-tokens", type=int, default=1_000_000, metavar="N", help="tokens per shard")
    pp.add_argument("--vocab-size", type=int, default=1024, metavar="V", help="BPE vocabulary size")
    pp.add_argument("--val-docs", type=int, default=None, metavar="N",
                    help="jsonl: the first N >= 1 documents are val (default 10%%, at least one)")
    pp.add_argument("--force", action="store_true", help="rebuild even if a matching dataset exists")
    pp.set_defaults(func=cmd_prepare)

    pd = add_parser(dsub, "download", help="download challenge FineWeb shards from the Hugging Face Hub",
                    description="Download the challenge's FineWeb shards and tokenizer from the Hugging Face Hub.",
                    epilog=DOWNLOAD_EPILOG)
    pd.add_argument("--variant", default="sp1024", help="tokenizer variant (sp1024 is the one the run used)")
    pd.add_argument("--train-shards", type=int, default=80, metavar="N", help="first N train shards (the run: 80)")
    pd.add_argument("--out", default="", metavar="DIR", help="output directory (default data/fineweb10B_<variant>)")
    pd.add_argument("--repo-id", default="willdepueoai/parameter-golf")
    pd.add_argument("--revision", default=None)
    pd.set_defaults(func=cmd_download)

    pc = add_parser(dsub, "check", help="validate a dataset directory",
                    description="Validate a dataset directory before training on it.", epilog=CHECK_EPILOG)
    pc.add_argument("dir", metavar="DIR", help="a dataset directory (shards, tokenizer.model, manifest.json)")
    pc.add_argument("--vocab-size", type=int, default=1024, metavar="V", help="the tokenizer's size (default 1024)")
    pc.add_argument("--deep", action="store_true", help="also check every token id and the sha256 sums")
    pc.set_defaults(func=cmd_check)
