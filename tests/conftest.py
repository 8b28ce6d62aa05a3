"""Shared test fixtures.

* ``sotu_data_dir`` -- the embedded State of the Union dataset (default
  settings), prepared once per session into a temp dir, or the repo's
  ``data/sotu_sp1024`` when that is already a valid, matching build.
* ``official_tokenizer_path`` -- the challenge's fineweb_1024_bpe.model next to
  the repo (``../shared/tokenizers``); tests using it skip when it is absent.
* ``tiny_shards_dir`` -- small synthetic train/val shards plus a tokenizer,
  for fast loader tests (vocab 1024; shard sizes deliberately uneven).
"""
from __future__ import annotations

import os
import shutil

# OpenMP threads that spin-wait make small tensor ops many times slower when the two
# CPU cores are shared (pytest + torchrun children). Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_TOKENIZER = REPO.parent / "shared" / "tokenizers" / "fineweb_1024_bpe.model"

# Test shapes are tiny: intra-op threads gain nothing, and on a 2-core box shared with
# torchrun children OpenMP barriers make small ops many times slower. One thread here;
# subprocesses choose their own.
torch.set_num_threads(1)

TINY_TRAIN_SIZES = (5003, 2048, 3301)
TINY_VAL_SIZES = (1500, 777)


@pytest.fixture(scope="session")
def sotu_data_dir(tmp_path_factory) -> Path:
    from gepalib.prepare import find_prepared_sotu, prepare_sotu

    repo_copy = REPO / "data" / "sotu_sp1024"
    if repo_copy.is_dir() and find_prepared_sotu(repo_copy) is not None:
        return repo_copy
    out = tmp_path_factory.mktemp("sotu") / "sotu_sp1024"
    prepare_sotu(out, progress=False, verbose=False)
    return out


@pytest.fixture(scope="session")
def official_tokenizer_path() -> Path:
    if not OFFICIAL_TOKENIZER.is_file():
        pytest.skip(f"official tokenizer not found at {OFFICIAL_TOKENIZER}")
    return OFFICIAL_TOKENIZER


def make_tiny_shards(out: Path, tokenizer: Path, vocab_size: int = 1024, seed: int = 0) -> Path:
    """Random-token shards named like the challenge's, BOS at a few document starts."""
    from gepalib.data import write_shard

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, sizes in (("train", TINY_TRAIN_SIZES), ("val", TINY_VAL_SIZES)):
        for i, n in enumerate(sizes):
            toks = rng.integers(4, vocab_size, size=n, dtype=np.int64)
            toks[rng.integers(0, n, size=max(1, n // 500))] = 1
            toks[0] = 1
            write_shard(out / f"tiny_{split}_{i:06d}.bin", toks)
    shutil.copyfile(tokenizer, out / "tokenizer.model")
    return out


@pytest.fixture(scope="session")
def tiny_shards_dir(tmp_path_factory, sotu_data_dir) -> Path:
    return make_tiny_shards(tmp_path_factory.mktemp("tiny") / "tiny_sp1024", sotu_data_dir / "tokenizer.model")


@pytest.fixture(scope="session")
def luts(sotu_data_dir):
    """Byte-accounting tables of the embedded dataset's tokenizer (model vocab 1024)."""
    from gepalib.bpb import build_byte_luts

    return build_byte_luts(sotu_data_dir / "tokenizer.model", 1024)


def run_two_ranks(script_text: str, tmp_path: Path, tokenizer: Path, timeout: float = 240):
    """Run ``script_text`` as two gloo ranks (argv: tests dir, tokenizer, output file) and
    return what rank 0 saved with ``torch.save`` to the output file."""
    import socket
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(script_text)
    out = tmp_path / "res.pt"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = Path(__file__).resolve().parents[1]
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1", PYTHONPATH=str(repo))
        procs.append(subprocess.Popen([sys.executable, str(script), str(repo / "tests"), str(tokenizer), str(out)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    logs = [p.communicate(timeout=timeout)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    return torch.load(out, weights_only=True)
