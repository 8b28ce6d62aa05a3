"""The token-id scan of a dataset, done once (see docs/data.md).

:func:`gepalib.data.verify_dataset` reads every shard a run uses to check that each token id is
below ``vocab_size``: minutes for the 80 FineWeb shards. :func:`verify_once` runs it on the main
process only and records that it passed in ``<data_dir>/.tokens_verified.json``, keyed on what
the scan depends on: the sha256 of manifest.json, ``vocab_size``, ``train_shards`` and each
scanned shard's name, size and mtime (nanoseconds). A later start with the same key skips the
scan; the cheap checks of :func:`gepalib.data.validate_data_dir` (headers, exact sizes,
tokenizer, manifest agreement) run every time, on every process.

What is safe when shards change: a rewritten, added or removed shard changes a size, an mtime or
the list, so the key differs and the scan runs again. A key is written only when every shard is
older than the scan by more than ``SETTLE_S``, so a write landing in the same coarse mtime tick
as the scan cannot hide behind an unchanged mtime. A read-only data directory just means the
scan runs at every start (the cache is an optimisation; a failed write is ignored).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from gepalib.data import list_shards, validate_data_dir, verify_dataset
from gepalib.fsio import file_sha256

CACHE_NAME = ".tokens_verified.json"
SETTLE_S = 2.0


def scan_key(data_dir: str | os.PathLike, vocab_size: int, train_shards: int = 0) -> tuple[dict[str, Any], float]:
    """The key of the token scan for these arguments, and the newest scanned shard's mtime (s)."""
    data_dir = Path(data_dir)
    mpath = data_dir / "manifest.json"
    manifest = file_sha256(mpath)[0] if mpath.is_file() else ""
    used = [*list_shards(data_dir, "val"), *list_shards(data_dir, "train", train_shards)]
    stats = [(p.name, p.stat()) for p in used]
    key = {"manifest_sha256": manifest, "vocab_size": int(vocab_size), "train_shards": int(train_shards),
           "shards": [[n, st.st_size, st.st_mtime_ns] for n, st in stats]}
    newest = max((st.st_mtime_ns for _, st in stats), default=0) / 1e9
    return key, newest


def _cached(path: Path, key: dict[str, Any]) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("key") == key
    except (OSError, ValueError, AttributeError):
        return False


def verify_once(data_dir: str | os.PathLike, vocab_size: int, tokenizer_path: str | os.PathLike | None = None,
                train_shards: int = 0, *, main: bool = True) -> dict[str, Any]:
    """:func:`gepalib.data.verify_dataset` where it has not passed for this key yet (main process),
    else :func:`gepalib.data.validate_data_dir`. Returns the manifest with its ``check`` summary;
    ``check["tokens_checked"]`` says whether the ids were scanned now ("scanned"), earlier ("cached")
    or by the main process ("main process")."""
    data_dir = Path(data_dir)
    if not main:
        m = validate_data_dir(data_dir, vocab_size, tokenizer_path)
        m["check"]["tokens_checked"] = "main process"
        return m
    path = data_dir / CACHE_NAME
    key, newest = scan_key(data_dir, vocab_size, train_shards)
    if _cached(path, key):
        m = validate_data_dir(data_dir, vocab_size, tokenizer_path)
        m["check"]["tokens_checked"] = "cached"
        return m
    started = time.time()
    m = verify_dataset(data_dir, vocab_size, tokenizer_path, train_shards)
    m["check"]["tokens_checked"] = "scanned"
    if newest < started - SETTLE_S:
        _write_cache(path, {"key": key, "scanned_at": started})
    return m


def _write_cache(path: Path, obj: dict[str, Any]) -> None:
    """Temp file + rename (a reader sees the old key or the new one), outside gepalib.fsio's
    atomic writes on purpose: a cache is no run output (the fault-injection tests count those
    writes, and a failed cache write only means the next start scans again)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(obj), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
