"""Download the challenge's FineWeb shards from the Hugging Face Hub (see docs/data.md).

Layout of the published dataset repo (``willdepueoai/parameter-golf``, a
*dataset* repo), all under ``datasets/``::

    datasets/manifest.json                                     # lists datasets and tokenizers
    datasets/datasets/fineweb10B_sp1024/fineweb_val_000000.bin
    datasets/datasets/fineweb10B_sp1024/fineweb_train_000000.bin ...
    datasets/tokenizers/fineweb_1024_bpe.model (+ .vocab)

The manifest's ``datasets`` entry named ``fineweb10B_<variant>`` gives
``stats.files_train`` / ``stats.files_val`` and a ``tokenizer_name`` whose
``tokenizers`` entry gives ``model_path`` (relative to ``datasets/``). We fetch
every val shard and the first ``train_shards`` train shards into one flat
directory (the layout :mod:`gepalib.data` reads), copy the tokenizer to
``tokenizer.model`` and write ``manifest.json``. Shards already present and
valid are kept (so an interrupted download resumes); every shard is validated
with :func:`gepalib.data.read_shard` before it is moved into place.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from gepalib.paths import resolve_path
from gepalib.data import ShardError, load_tokenizer, read_shard, sha256_file
from gepalib.fsio import atomic_write_json

DEFAULT_REPO_ID = "willdepueoai/parameter-golf"
REMOTE_ROOT = "datasets"
FORMAT = "gepalib-dataset"


class DownloadError(RuntimeError):
    """The hub could not be reached or did not serve what the manifest promises."""


def dataset_name(variant: str) -> str:
    if variant == "byte260" or (variant.startswith("sp") and variant[2:].isdigit()):
        return f"fineweb10B_{variant}"
    raise ValueError(f"unknown variant {variant!r}; expected sp<VOCAB> (e.g. sp1024) or byte260")


def _fetch(remote: str, staging: Path, repo_id: str, revision: str | None, endpoint: str | None,
           token: str | bool | None) -> Path:
    """Download one repo file (path relative to the repo root) into ``staging``; return its local path."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

    sub, _, name = remote.rpartition("/")
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=name, subfolder=sub or None, repo_type="dataset",
                                    revision=revision, local_dir=staging, endpoint=endpoint, token=token))
    except EntryNotFoundError:
        raise FileNotFoundError(f"{repo_id}: file {remote} not found on the hub") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"dataset repo {repo_id} not found on the hub") from None
    except (HfHubHTTPError, OSError) as e:
        where = endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        raise DownloadError(f"downloading {remote} from {repo_id} at {where} failed: {e}") from None


def _entry(items: list[dict[str, Any]], name: str, what: str) -> dict[str, Any]:
    for it in items:
        if isinstance(it, dict) and it.get("name") == name:
            return it
    known = sorted(str(it.get("name")) for it in items if isinstance(it, dict))
    raise ValueError(f"the hub manifest has no {what} named {name!r} (it lists: {', '.join(known) or 'none'})")


def _place(src: Path, dest: Path) -> None:
    """Move (or copy, across filesystems) ``src`` to ``dest`` atomically."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        os.replace(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def download_fineweb(out_dir: str | os.PathLike = "data/fineweb10B_sp1024", variant: str = "sp1024",
                     train_shards: int = 80, repo_id: str = DEFAULT_REPO_ID, *, revision: str | None = None,
                     endpoint: str | None = None, token: str | bool | None = None,
                     verbose: bool = True) -> dict[str, Any]:
    """Fetch all val shards and the first ``train_shards`` train shards; resumable; returns the manifest.

    ``endpoint`` defaults to ``$HF_ENDPOINT`` (read at call time) or huggingface.co.
    """
    if train_shards < 0:
        raise ValueError(f"train_shards must be >= 0, got {train_shards}")
    log = print if verbose else (lambda *a, **k: None)
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    name = dataset_name(variant)
    out = resolve_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = out / ".download"
    t0 = time.time()

    def fetch(remote: str) -> Path:
        return _fetch(remote, staging, repo_id, revision, endpoint, token)

    ds, tok, n_val = _remote_entries(fetch, repo_id, name, variant, train_shards)
    # Tokenizer first: its size bounds every shard's token ids.
    vocab_size, files = _fetch_tokenizer(fetch, out, ds, tok, repo_id)
    prefix = f"{REMOTE_ROOT}/{ds.get('path') or f'datasets/{name}'}"
    wanted = [f"fineweb_val_{i:06d}.bin" for i in range(n_val)]
    wanted += [f"fineweb_train_{i:06d}.bin" for i in range(train_shards)]
    tokens, fetched, kept = _fetch_shards(fetch, out, prefix, wanted, vocab_size, repo_id, files, log)
    shutil.rmtree(staging, ignore_errors=True)

    manifest = {
        "format": FORMAT,
        "version": 1,
        "name": out.name,
        "source": {"kind": "huggingface", "repo_id": repo_id, "revision": revision or "main",
                   "remote_root": REMOTE_ROOT, "variant": variant, "dataset": ds, "tokenizer": tok},
        "settings": {"train_shards": train_shards},
        "tokenizer": {"model": "tokenizer.model", "vocab_size": vocab_size},
        "splits": {
            "val": {"tokens": tokens["val"], "shards": [f for f in wanted if "_val_" in f]},
            "train": {"tokens": tokens["train"], "shards": [f for f in wanted if "_train_" in f]},
        },
        "files": {n: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for n, p in files.items()},
        "download": {"fetched": fetched, "kept": kept, "seconds": round(time.time() - t0, 3)},
    }
    atomic_write_json(out / "manifest.json", manifest)
    log(f"download: {out} ready: val_tokens:{tokens['val']} train_tokens:{tokens['train']} "
        f"fetched:{fetched} kept:{kept}")
    return manifest


def _remote_entries(fetch: Callable[[str], Path], repo_id: str, name: str, variant: str,
                    train_shards: int) -> tuple[dict[str, Any], dict[str, Any], int]:
    """The hub manifest's entries for dataset ``name`` and its tokenizer, and its number of val
    shards, checked against the ``train_shards`` asked for."""
    mpath = fetch(f"{REMOTE_ROOT}/manifest.json")
    try:
        remote = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{repo_id}: {REMOTE_ROOT}/manifest.json is not valid JSON ({e})") from None
    ds = _entry(remote.get("datasets") or [], name, "dataset")
    stats = ds.get("stats") or {}
    n_train, n_val = int(stats.get("files_train", 0)), int(stats.get("files_val", 0))
    if n_val <= 0:
        raise ValueError(f"{repo_id}: manifest entry {name} lists no val shards")
    if train_shards > n_train:
        raise ValueError(f"{variant} has only {n_train} training shards on {repo_id}, requested {train_shards}")
    tok = _entry(remote.get("tokenizers") or [], ds.get("tokenizer_name", ""), "tokenizer")
    return ds, tok, n_val


def _fetch_tokenizer(fetch: Callable[[str], Path], out: Path, ds: dict[str, Any], tok: dict[str, Any],
                     repo_id: str) -> tuple[int, dict[str, Path]]:
    """The SentencePiece model (and its .vocab, if listed) placed in ``out``, its size checked
    against the manifest's; returns (vocab size, {file name: path})."""
    model_rel = tok.get("model_path") or tok.get("path")
    if not model_rel or not str(model_rel).endswith(".model"):
        raise ValueError(f"{repo_id}: tokenizer entry {tok.get('name')!r} has no SentencePiece model_path")
    vocab_size = int(ds.get("vocab_size") or tok.get("vocab_size") or 0) or None
    files: dict[str, Path] = {}
    src = fetch(f"{REMOTE_ROOT}/{model_rel}")
    sp = load_tokenizer(src)
    if vocab_size is not None and sp.get_piece_size() != vocab_size:
        raise ValueError(f"{repo_id}: tokenizer {model_rel} has {sp.get_piece_size()} pieces, "
                         f"the manifest says {vocab_size}")
    vocab_size = sp.get_piece_size()
    _place(src, out / "tokenizer.model")
    files["tokenizer.model"] = out / "tokenizer.model"
    if tok.get("vocab_path"):
        _place(fetch(f"{REMOTE_ROOT}/{tok['vocab_path']}"), out / "tokenizer.vocab")
        files["tokenizer.vocab"] = out / "tokenizer.vocab"
    return vocab_size, files


def _fetch_shards(fetch: Callable[[str], Path], out: Path, prefix: str, wanted: list[str], vocab_size: int,
                  repo_id: str, files: dict[str, Path], log: Callable[..., None]) -> tuple[dict[str, int], int, int]:
    """Each ``wanted`` shard into ``out``: kept when present and valid, else fetched from
    ``prefix`` and validated before it is moved into place (added to ``files``). Returns
    (tokens per split, shards fetched, shards kept)."""
    tokens = {"val": 0, "train": 0}
    fetched = kept = 0
    for k, fname in enumerate(wanted, 1):
        dest = out / fname
        toks = None
        if dest.is_file():
            try:
                toks = read_shard(dest, vocab_size)
                kept += 1
                log(f"download: {fname} present and valid ({k}/{len(wanted)})")
            except (ShardError, FileNotFoundError) as e:
                log(f"download: {fname} is invalid, fetching again ({e})")
                dest.unlink()
        if toks is None:
            got = fetch(f"{prefix}/{fname}")
            try:
                toks = read_shard(got, vocab_size)
            except ShardError as e:
                got.unlink(missing_ok=True)
                raise ShardError(f"{repo_id}: {prefix}/{fname} as served is not a valid shard: {e}") from None
            _place(got, dest)
            fetched += 1
            log(f"download: {fname} ok ({k}/{len(wanted)})")
        tokens["val" if "_val_" in fname else "train"] += len(toks)
        del toks
        files[fname] = dest
    return tokens, fetched, kept
