"""The dataset's token-id scan runs once per dataset state (gepalib.datacache): cached by the
manifest's hash and the shards' sizes and mtimes, redone when a shard changes, never cached
for shards written within the mtime-granularity window, skipped on non-main processes."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
from conftest import make_tiny_shards

from gepalib import datacache
from gepalib.data import ShardError, read_shard, write_shard


def _age(d, seconds: float = 60.0) -> None:
    old = time.time() - seconds
    for p in d.glob("*.bin"):
        os.utime(p, (old, old))


def test_the_scan_is_cached_and_redone_when_a_shard_changes(tmp_path, sotu_data_dir, monkeypatch):
    d = make_tiny_shards(tmp_path / "d", sotu_data_dir / "tokenizer.model")
    scans = []
    real = datacache.verify_dataset
    monkeypatch.setattr(datacache, "verify_dataset", lambda *a, **k: scans.append(1) or real(*a, **k))
    _age(d, 10.0)
    monkeypatch.setattr(datacache, "SETTLE_S", 30.0)
    assert datacache.verify_once(d, 1024)["check"]["tokens_checked"] == "scanned"
    assert not (d / datacache.CACHE_NAME).exists()  # shards younger than SETTLE_S: not cached (mtime tick)
    monkeypatch.setattr(datacache, "SETTLE_S", 2.0)
    assert datacache.verify_once(d, 1024)["check"]["tokens_checked"] == "scanned"
    assert (d / datacache.CACHE_NAME).is_file()
    assert datacache.verify_once(d, 1024)["check"]["tokens_checked"] == "cached" and len(scans) == 2
    # another vocabulary or shard count is another key
    assert datacache.verify_once(d, 1024, train_shards=1)["check"]["tokens_checked"] == "scanned"
    # a shard rewritten with an id out of range (same size): its mtime changes, the scan runs and fails
    shard = sorted(d.glob("*_train_*.bin"))[0]
    toks = read_shard(shard).astype(np.int64)
    toks[5] = 2000
    write_shard(shard, toks)
    with pytest.raises(ShardError):
        datacache.verify_once(d, 1024)


def test_other_processes_skip_the_scan(tmp_path, sotu_data_dir, monkeypatch):
    d = make_tiny_shards(tmp_path / "d", sotu_data_dir / "tokenizer.model")
    monkeypatch.setattr(datacache, "verify_dataset", lambda *a, **k: pytest.fail("scanned on a non-main rank"))
    info = datacache.verify_once(d, 1024, main=False)["check"]
    assert info["tokens_checked"] == "main process" and info["train_tokens"] > 0
