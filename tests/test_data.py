"""Shard format, val truncation and the train stream (docs/data.md), against slow references."""
from __future__ import annotations

import json
import re
import shutil
import struct

import numpy as np
import pytest
import torch

from gepalib import data as D
from conftest import TINY_TRAIN_SIZES, TINY_VAL_SIZES, make_tiny_shards, run_two_ranks


# ---------------------------------------------------------------------------
# Shard files


def _raw_shard(path, header_ints, tokens=b""):
    hdr = list(header_ints) + [0] * (256 - len(header_ints))
    path.write_bytes(struct.pack("<256i", *hdr) + tokens)
    return path


@pytest.mark.parametrize("make", [list, lambda x: np.array(x, dtype=np.int64), lambda x: torch.tensor(x),
                                  lambda x: np.array(x, dtype=np.uint16)])
def test_shard_roundtrip_and_exact_layout(tmp_path, make):
    toks = [1, 0, 65535, 7, 1023, 2]
    p = tmp_path / "x_train_000000.bin"
    D.write_shard(p, make(toks))
    raw = p.read_bytes()
    assert len(raw) == 1024 + 2 * len(toks)
    header = struct.unpack("<256i", raw[:1024])
    assert header[:3] == (20240520, 1, len(toks)) and not any(header[3:])
    assert struct.unpack(f"<{len(toks)}H", raw[1024:]) == tuple(toks)
    got = D.read_shard(p)
    assert got.dtype == np.uint16 and got.tolist() == toks
    assert [f.name for f in tmp_path.iterdir()] == [p.name]  # no temp files left behind


def test_empty_shard(tmp_path):
    p = tmp_path / "e_val_000000.bin"
    D.write_shard(p, [])
    assert p.stat().st_size == 1024 and len(D.read_shard(p, vocab_size=4)) == 0


@pytest.mark.parametrize("bad, msg", [([-1, 2], "[0, 65535]"), ([65536], "[0, 65535]"), ([[1, 2]], "1-D"),
                                      (np.array([1.5]), "integers")])
def test_write_shard_rejects_bad_tokens(tmp_path, bad, msg):
    with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        D.write_shard(tmp_path / "b.bin", bad)
    assert not (tmp_path / "b.bin").exists()


def test_read_shard_errors_name_file_and_problem(tmp_path):
    good = struct.pack("<3H", 1, 2, 3)
    cases = {
        "magic": (_raw_shard(tmp_path / "m.bin", [20240521, 1, 3], good), "bad magic 20240521"),
        "version": (_raw_shard(tmp_path / "v.bin", [20240520, 2, 3], good), "unsupported version 2"),
        "truncated": (_raw_shard(tmp_path / "t.bin", [20240520, 1, 4], good), "truncated or corrupt"),
        "too long": (_raw_shard(tmp_path / "l.bin", [20240520, 1, 2], good), "expected exactly 1028 bytes"),
        "negative": (_raw_shard(tmp_path / "n.bin", [20240520, 1, -1], b""), "negative token count"),
    }
    (tmp_path / "h.bin").write_bytes(b"\0" * 100)
    cases["short header"] = (tmp_path / "h.bin", "truncated header")
    for what, (path, msg) in cases.items():
        with pytest.raises(D.ShardError) as e:
            D.read_shard(path)
        assert str(path) in str(e.value) and msg in str(e.value), what
    with pytest.raises(FileNotFoundError, match="nothere.bin"):
        D.read_shard(tmp_path / "nothere.bin")


def test_read_shard_vocab_check(tmp_path):
    p = tmp_path / "x_val_000000.bin"
    D.write_shard(p, [1, 5, 1024, 3, 2000])
    assert len(D.read_shard(p, vocab_size=2001)) == 5
    with pytest.raises(D.ShardError, match=r"token id 2000 >= vocab_size 1024 \(first at position 2\)") as e:
        D.read_shard(p, vocab_size=1024)
    assert str(p) in str(e.value)


def test_list_shards(tmp_path):
    for name in ["b_train_000001.bin", "b_train_000000.bin", "a_train_000002.bin", "b_val_000000.bin",
                 "b_train_000003.bin.tmp", "b_train_1.bin", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    names = [p.name for p in D.list_shards(tmp_path, "train")]
    assert names == ["a_train_000002.bin", "b_train_000000.bin", "b_train_000001.bin"]
    assert [p.name for p in D.list_shards(tmp_path, "train", limit=2)] == names[:2]
    assert [p.name for p in D.list_shards(tmp_path, "val")] == ["b_val_000000.bin"]
    with pytest.raises(ValueError, match="first 4 train shards but only 3"):
        D.list_shards(tmp_path, "train", limit=4)
    with pytest.raises(ValueError, match="split"):
        D.list_shards(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="gepa data prepare"):
        D.list_shards(tmp_path / "missing", "train")


# ---------------------------------------------------------------------------
# Validation tokens


def _all_tokens(data_dir, split):
    return np.concatenate([np.fromfile(p, dtype="<u2", offset=1024) for p in sorted(data_dir.glob(f"*_{split}_*.bin"))])


@pytest.mark.parametrize("seq_len", [1, 7, 64, 1000, 2276])
def test_val_truncation_rule(tiny_shards_dir, seq_len):
    ref = _all_tokens(tiny_shards_dir, "val").astype(np.int64)
    n = len(ref)
    assert n == sum(TINY_VAL_SIZES)
    keep = ((n - 1) // seq_len) * seq_len + 1
    got = D.load_val_tokens(tiny_shards_dir, seq_len, vocab_size=1024)
    assert got.dtype == torch.int64 and got.ndim == 1
    assert got.tolist() == ref[:keep].tolist()
    assert (len(got) - 1) % seq_len == 0


def test_val_max_targets(tiny_shards_dir):
    ref = _all_tokens(tiny_shards_dir, "val").astype(np.int64)
    got = D.load_val_tokens(tiny_shards_dir, 64, max_targets=1000)
    assert len(got) == (1000 // 64) * 64 + 1 and got.tolist() == ref[: len(got)].tolist()
    assert len(D.load_val_tokens(tiny_shards_dir, 64, max_targets=10**9)) == ((len(ref) - 1) // 64) * 64 + 1
    with pytest.raises(ValueError, match="max_targets=10"):
        D.load_val_tokens(tiny_shards_dir, 64, max_targets=10)
    with pytest.raises(ValueError, match="at least seq_len\\+1"):
        D.load_val_tokens(tiny_shards_dir, sum(TINY_VAL_SIZES))
    with pytest.raises(D.ShardError, match="vocab_size 100"):
        D.load_val_tokens(tiny_shards_dir, 64, vocab_size=100)


def test_val_spec_numbers():
    # docs/data.md: 62,021,633 kept tokens = 30,284 x 2048 + 1 (the full val set has a few more).
    assert D.val_keep(62_021_633 + 2047, 2048) == 62_021_633
    assert D.val_keep(62_021_633, 2048) == 62_021_633
    assert D.val_keep(62_021_632, 2048) == 62_021_633 - 2048


# ---------------------------------------------------------------------------
# Train stream


def _reference_batches(data_dir, W, T, seq_len, steps, limit=0):
    """Slow obvious reference: materialise the wrapped stream and slice it."""
    files = sorted(data_dir.glob("*_train_*.bin"))
    if limit:
        files = files[:limit]
    one = np.concatenate([np.fromfile(p, dtype="<u2", offset=1024) for p in files]).astype(np.int64)
    need = steps * W * (T + 1)
    stream = np.concatenate([one] * (need // len(one) + 1))
    out = []
    for s in range(steps):
        base = s * W * (T + 1)
        per_rank = []
        for r in range(W):
            chunk = stream[base + r * (T + 1): base + (r + 1) * (T + 1)]
            per_rank.append((chunk[:-1].reshape(-1, seq_len), chunk[1:].reshape(-1, seq_len)))
        out.append(per_rank)
    return out


@pytest.mark.parametrize("W", [1, 2, 4])
def test_train_loader_matches_reference_with_wraparound(tiny_shards_dir, W):
    T, seq_len = 512, 128
    total = sum(TINY_TRAIN_SIZES)
    steps = total // (W * (T + 1)) * 2 + 3  # wraps around at least once
    ref = _reference_batches(tiny_shards_dir, W, T, seq_len, steps)
    loaders = [D.TrainLoader(tiny_shards_dir, rank=r, world_size=W, vocab_size=1024) for r in range(W)]
    for s in range(steps):
        for r, ld in enumerate(loaders):
            x, y = ld.next_batch(T, seq_len)
            assert x.dtype == torch.int64 and x.shape == (T // seq_len, seq_len) == y.shape
            assert np.array_equal(x.numpy(), ref[s][r][0]) and np.array_equal(y.numpy(), ref[s][r][1]), (s, r)
    assert loaders[0].tokens_read == steps * W * (T + 1)


def test_world_sizes_share_one_global_order(tiny_shards_dir):
    T, seq_len = 256, 64
    for W in (2, 4):
        single = D.TrainLoader(tiny_shards_dir)
        ranks = [D.TrainLoader(tiny_shards_dir, rank=r, world_size=W) for r in range(W)]
        for _ in range(9):
            for ld in ranks:
                x, y = ld.next_batch(T, seq_len)
                x1, y1 = single.next_batch(T, seq_len)
                assert torch.equal(x, x1) and torch.equal(y, y1)


def test_wraparound_restarts_at_first_shard(tiny_shards_dir):
    first = D.read_shard(sorted(tiny_shards_dir.glob("*_train_*.bin"))[0]).astype(np.int64)
    total = sum(TINY_TRAIN_SIZES)
    ld = D.TrainLoader(tiny_shards_dir)
    ld._advance(total - 3)
    x, y = ld.next_batch(8, 8)
    stream = x[0].tolist() + [y[0, -1].item()]
    last = _all_tokens(tiny_shards_dir, "train")[-3:].tolist()
    assert stream == last + first[:6].tolist()


def test_train_shards_limit(tiny_shards_dir):
    T = 1000
    ref = _reference_batches(tiny_shards_dir, 1, T, 100, 12, limit=2)
    ld = D.TrainLoader(tiny_shards_dir, train_shards=2)
    for s in range(12):
        x, _ = ld.next_batch(T, 100)
        assert np.array_equal(x.numpy(), ref[s][0][0])


def test_state_dict_resume_is_exact(tiny_shards_dir):
    T, seq_len = 384, 128
    a = D.TrainLoader(tiny_shards_dir, rank=1, world_size=2)
    for _ in range(7):
        a.next_batch(T, seq_len)
    state = json.loads(json.dumps(a.state_dict()))  # must survive JSON
    b = D.TrainLoader(tiny_shards_dir, rank=1, world_size=2)
    b.load_state_dict(state)
    for _ in range(15):
        xa, ya = a.next_batch(T, seq_len)
        xb, yb = b.next_batch(T, seq_len)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert a.state_dict() == b.state_dict()
    other = D.TrainLoader(tiny_shards_dir, train_shards=2)
    with pytest.raises(ValueError, match="same training shards"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="out of range"):
        b.load_state_dict({**state, "pos": 10**9})


def test_train_loader_errors(tmp_path, tiny_shards_dir):
    ld = D.TrainLoader(tiny_shards_dir)
    with pytest.raises(ValueError, match="multiple of seq_len"):
        ld.next_batch(100, 64)
    with pytest.raises(ValueError, match="rank"):
        D.TrainLoader(tiny_shards_dir, rank=2, world_size=2)
    with pytest.raises(FileNotFoundError, match="no training shards"):
        D.TrainLoader(tmp_path)
    # a bad token is reported when the stream reaches its shard, naming the file
    bad = tmp_path / "bad"
    shutil.copytree(tiny_shards_dir, bad)
    D.write_shard(bad / "tiny_train_000001.bin", [5, 4000, 6])
    ld = D.TrainLoader(bad, vocab_size=1024)
    ld.next_batch(4000, 1000)
    with pytest.raises(D.ShardError, match="tiny_train_000001.bin: token id 4000"):
        ld.next_batch(4000, 1000)


# ---------------------------------------------------------------------------
# Tokenizer and directory checks


def test_load_tokenizer_errors(tmp_path, sotu_data_dir):
    assert D.load_tokenizer(sotu_data_dir / "tokenizer.model").get_piece_size() == 1024
    with pytest.raises(FileNotFoundError, match="nope.model"):
        D.load_tokenizer(tmp_path / "nope.model")
    (tmp_path / "bad.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(ValueError, match="bad.model is not a valid SentencePiece model"):
        D.load_tokenizer(tmp_path / "bad.model")


def test_validate_data_dir(tmp_path, tiny_shards_dir):
    m = D.validate_data_dir(tiny_shards_dir, 1024, deep=True)
    assert m["check"]["train_tokens"] == sum(TINY_TRAIN_SIZES) and m["check"]["val_shards"] == 2

    def fresh(name):
        return make_tiny_shards(tmp_path / name, tiny_shards_dir / "tokenizer.model")

    with pytest.raises(FileNotFoundError, match="gepa data prepare"):
        D.validate_data_dir(tmp_path / "absent", 1024)
    d = fresh("noval")
    for p in d.glob("*_val_*"):
        p.unlink()
    with pytest.raises(FileNotFoundError, match="no val shards"):
        D.validate_data_dir(d, 1024)
    d = fresh("notrain")
    for p in d.glob("*_train_*"):
        p.unlink()
    with pytest.raises(FileNotFoundError, match="no train shards"):
        D.validate_data_dir(d, 1024)
    d = fresh("notok")
    (d / "tokenizer.model").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer .*tokenizer.model is missing"):
        D.validate_data_dir(d, 1024)
    with pytest.raises(ValueError, match="has 1024 pieces but vocab_size is 2048"):
        D.validate_data_dir(tiny_shards_dir, 2048)
    d = fresh("badshard")
    with open(d / "tiny_train_000002.bin", "r+b") as f:
        f.truncate(2000)
    with pytest.raises(D.ShardError, match="tiny_train_000002.bin"):
        D.validate_data_dir(d, 1024)
    d = fresh("badtoken")
    D.write_shard(d / "tiny_val_000001.bin", [1, 1024])
    assert D.validate_data_dir(d, 1024)["check"]["val_tokens"] == 1502  # headers only by default
    with pytest.raises(D.ShardError, match="token id 1024"):
        D.validate_data_dir(d, 1024, deep=True)
    d = fresh("manifest")
    (d / "manifest.json").write_text(json.dumps({"files": {"tiny_val_000000.bin": {"bytes": 5}}}))
    with pytest.raises(ValueError, match="size .* != 5 recorded in manifest.json"):
        D.validate_data_dir(d, 1024)


# ---------------------------------------------------------------------------
# Manifest agreement, the pre-training token check and the plan


def _with_manifest(d):
    """Give a tiny-shards directory the manifest `gepa data prepare` would write for it."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": D.sha256_file(p)} for p in sorted(d.iterdir())}
    splits = {s: {"tokens": sum(D.read_shard_header(p) for p in D.list_shards(d, s)),
                  "shards": [p.name for p in D.list_shards(d, s)]} for s in D.SPLITS}
    (d / "manifest.json").write_text(json.dumps({"format": "gepalib-dataset", "files": files, "splits": splits}))
    return d


def test_shards_agree_with_the_manifest(tmp_path, tiny_shards_dir, capsys):
    from gepalib.cli import main

    d = _with_manifest(make_tiny_shards(tmp_path / "ok", tiny_shards_dir / "tokenizer.model"))
    assert D.validate_data_dir(d, 1024, deep=True)["check"]["train_shards"] == 3
    stray = make_tiny_shards(tmp_path / "stray", tiny_shards_dir / "tokenizer.model")
    _with_manifest(stray)
    D.write_shard(stray / "tiny_train_000003.bin", [1, 5, 6])  # not listed: the training glob would read it
    with pytest.raises(ValueError, match="tiny_train_000003.bin is not listed in manifest.json"):
        D.validate_data_dir(stray, 1024)
    assert main(["data", "check", str(stray), "--deep"]) == 3  # a data error (exit code 3)
    assert "tiny_train_000003.bin is not listed" in capsys.readouterr().err
    edited = _with_manifest(make_tiny_shards(tmp_path / "edited", tiny_shards_dir / "tokenizer.model"))
    m = json.loads((edited / "manifest.json").read_text())
    m["splits"]["val"]["tokens"] += 1000
    (edited / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match=r"val shards hold 2277 tokens but manifest.json records 3277"):
        D.validate_data_dir(edited, 1024)
    del m["files"]  # split lists alone also catch a stray shard
    m["splits"]["val"]["tokens"] -= 1000
    m["splits"]["train"]["shards"] = m["splits"]["train"]["shards"][:2]
    (edited / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="train shard tiny_train_000002.bin is not in manifest.json's "
                                         "splits.train.shards"):
        D.validate_data_dir(edited, 1024)
    (edited / "manifest.json").write_bytes(b"\xff{")
    with pytest.raises(ValueError, match="manifest.json: not valid JSON"):
        D.validate_data_dir(edited, 1024)


def test_out_of_range_token_fails_before_the_run_dir_exists(tmp_path, tiny_shards_dir):
    from gepalib.config import get_preset, override
    from gepalib.train import train

    d = make_tiny_shards(tmp_path / "bad", tiny_shards_dir / "tokenizer.model")
    toks = np.asarray(D.read_shard(d / "tiny_train_000002.bin")).astype(np.int64)
    toks[3000] = 1024
    D.write_shard(d / "tiny_train_000002.bin", toks)
    assert D.validate_data_dir(d, 1024)["check"]["train_tokens"] == sum(TINY_TRAIN_SIZES)  # headers only
    with pytest.raises(D.ShardError, match=r"tiny_train_000002.bin: token id 1024 >= vocab_size 1024 "
                                           r"\(first at position 3000\)"):
        D.verify_dataset(d, 1024)
    assert D.verify_dataset(d, 1024, train_shards=2)["check"]["tokens_checked_shards"] == 4  # shard 2 not read
    cfg = override(get_preset("tiny"), data_dir=str(d), seq_len=64, batch_tokens=256, micro_batch_tokens=256,
                   val_tokens=256, steps=2, warmdown=1, progress="log")
    with pytest.raises(D.ShardError, match="token id 1024"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists(), "the token check runs before anything is written"


def test_plan_derives_a_micro_batch_that_divides():
    from gepalib.config import get_preset, override
    from gepalib.plan import make_plan

    tiny = get_preset("tiny")  # batch 8192 = micro 8192, seq_len 256
    p1 = make_plan(tiny, 1)
    assert (p1.accum, p1.micro_tokens, p1.note, p1.record()) == (1, 8192, "", {})
    p2 = make_plan(tiny, 2)  # 4096 tokens per process: the configured 8192 cannot divide it
    assert (p2.accum, p2.micro_tokens) == (1, 4096)
    assert "micro_batch_tokens=8192 does not divide the 4096 tokens per process" in p2.note
    assert p2.record() == {"world_size": 2, "accum": 1, "micro_batch_tokens": 4096, "note": p2.note}
    g = get_preset("gepa11")  # 786432 per step, micro 98304, seq_len 2048
    assert [(make_plan(g, w).accum, make_plan(g, w).micro_tokens) for w in (1, 2, 8)] == \
        [(8, 98304), (4, 98304), (1, 98304)]
    p3 = make_plan(g, 3)  # 128 sequences per process: 48 does not divide, 32 does
    assert (p3.accum, p3.micro_tokens, p3.accum * p3.micro_tokens * 3) == (4, 65536, 786432) and p3.note
    odd = override(tiny, batch_tokens=33 * 256, micro_batch_tokens=11 * 256)  # 33 sequences, 11 per micro-step
    assert [(make_plan(odd, w).accum, make_plan(odd, w).micro_tokens) for w in (1, 3)] == [(3, 2816), (1, 2816)]
    with pytest.raises(ValueError, match=r"batch_tokens=8448 is not divisible by world_size\*seq_len = 2\*256"):
        make_plan(odd, 2)


@pytest.mark.parametrize("batch, micro, msg", [
    (12288, 8192, "batch_tokens=12288 is not a multiple of micro_batch_tokens=8192"),
    (8192, 16384, "micro_batch_tokens=16384 is larger than batch_tokens=8192"),
    (384, 256, "batch_tokens=384 is not a multiple of micro_batch_tokens=256"),
])
def test_batch_sizes_the_docs_reject_are_rejected_with_the_config(batch, micro, msg):
    """docs/training.md: accumulation = batch / (processes * micro) must be a whole number; for
    one process that is the config's own property, refused when the config is built (the
    original code reshaped these with a `plan:` note)."""
    from gepalib.config import get_preset, override

    with pytest.raises(ValueError, match=re.escape(msg)):
        override(get_preset("tiny"), batch_tokens=batch, micro_batch_tokens=micro)


TWO_RANK_TRAINER = r'''
import sys, torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(1)
from pathlib import Path
from gepalib import dist
from gepalib.config import get_preset, override
from gepalib.train import Trainer
cfg = override(get_preset("tiny"), data_dir=str(Path(sys.argv[2]).parent), seq_len=64, batch_tokens=512,
               micro_batch_tokens=512, val_tokens=256, steps=2, warmdown=1, progress="log")
with Trainer(cfg, Path(sys.argv[3]).parent / "run") as t:
    plan = [t.plan.accum, t.plan.micro_tokens]
if t.info.rank == 0:
    torch.save({"plan": plan}, sys.argv[3])
dist.shutdown()
'''


def test_two_processes_record_the_derived_micro_batch_in_config_json(tmp_path, tiny_shards_dir):
    """512 tokens a step on 2 processes: 256 each, below the configured 512-token micro-batch;
    the trainer uses 256, says so in train.log and records it in config.json (a config.json
    that still loads as the config it was given)."""
    from gepalib.config import load_config

    got = run_two_ranks(TWO_RANK_TRAINER, tmp_path, tiny_shards_dir / "tokenizer.model")
    assert got["plan"] == [1, 256]
    rd = tmp_path / "run"
    rec = json.loads((rd / "config.json").read_text())["plan"]
    assert (rec["world_size"], rec["accum"], rec["micro_batch_tokens"]) == (2, 1, 256)
    assert load_config(rd / "config.json").train.micro_batch_tokens == 512
    log = (rd / "train.log").read_text()
    assert "plan: micro_batch_tokens=512 does not divide the 256 tokens per process" in log
    assert "world_size:2 accum:1 micro_batch_tokens:256" in log


def test_a_dataset_without_its_manifest_says_so(tmp_path, tiny_shards_dir, capsys):
    """A deleted manifest.json: `gepa data check` reports status no-manifest (not ok) and a run
    on the directory says in train.log that there was nothing to check the files against.
    The original code reported `status: ok` and said nothing."""
    from gepalib.cli import main
    from gepalib.config import get_preset, override
    from gepalib.train import Trainer

    d = _with_manifest(make_tiny_shards(tmp_path / "d", tiny_shards_dir / "tokenizer.model"))
    assert main(["data", "check", str(d)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "status: ok" and "manifest: manifest.json" in out
    (d / "manifest.json").unlink()
    assert main(["data", "check", str(d)]) == 0  # the shards are usable: not an error
    out = capsys.readouterr().out.splitlines()
    assert "manifest: none" in out and "status: ok" not in out
    assert out[-1].startswith(f"status: no-manifest (headers, sizes and the tokenizer were checked; {d} has no "
                              f"manifest.json")
    cfg = override(get_preset("tiny"), data_dir=str(d), seq_len=64, batch_tokens=256, micro_batch_tokens=256,
                   val_tokens=256, steps=2, warmdown=1, progress="log")
    with Trainer(cfg, tmp_path / "run"):
        pass
    lines = [ln for ln in (tmp_path / "run" / "train.log").read_text().splitlines() if "manifest.json" in ln]
    assert lines == [f"data: {d} has no manifest.json; its shards were checked against their headers and the "
                     f"vocabulary only (`gepa data check` says status: no-manifest)"]
    assert json.loads((tmp_path / "run" / "env.json").read_text())["data"]["manifest"] == "none"


# ---------------------------------------------------------------------------
# The data-order seed


def _windows(tiny_shards_dir, W, T):
    """Every whole micro-step window of the concatenated train stream (the shuffled order's units)."""
    one = _all_tokens(tiny_shards_dir, "train")
    span = W * (T + 1)
    return [one[i * span:(i + 1) * span] for i in range(len(one) // span)]


@pytest.mark.parametrize("W", [1, 2])
def test_data_seed_visits_every_window_once_per_pass_in_a_seeded_order(tiny_shards_dir, W):
    T, seq_len = 512, 128
    windows = _windows(tiny_shards_dir, W, T)
    n = len(windows)
    loaders = [D.TrainLoader(tiny_shards_dir, rank=r, world_size=W, data_seed=7) for r in range(W)]
    seen = []
    for _ in range(2 * n):  # two passes
        got = []
        for r, ld in enumerate(loaders):
            x, y = ld.next_batch(T, seq_len)
            got.append(np.concatenate([x.reshape(-1).numpy(), y[-1, -1:].numpy()]))
            assert torch.equal(x.reshape(-1)[1:], y.reshape(-1)[:-1])
        flat = np.concatenate(got)
        seen.append(next(i for i, w in enumerate(windows) if np.array_equal(w, flat)))
    # slow reference: numpy's permutation per pass, seeded by (data_seed, pass)
    ref = [int(i) for p in range(2) for i in np.random.default_rng([7, p]).permutation(n)]
    assert seen == ref
    assert sorted(seen[:n]) == list(range(n)) and seen[:n] != seen[n:]
    assert loaders[0].tokens_read == 2 * n * W * (T + 1)


def test_data_seed_changes_the_order_not_the_tokens(tiny_shards_dir):
    T, seq_len = 256, 64
    def batches(seed, k=20):
        ld = D.TrainLoader(tiny_shards_dir, data_seed=seed)
        return [ld.next_batch(T, seq_len)[0] for _ in range(k)]
    a, a2, b, seq = batches(1), batches(1), batches(2), batches(-1)
    assert all(torch.equal(x, y) for x, y in zip(a, a2))  # deterministic
    assert not all(torch.equal(x, y) for x, y in zip(a, b))  # another seed, another order
    assert not all(torch.equal(x, y) for x, y in zip(a, seq))
    ref = _reference_batches(tiny_shards_dir, 1, T, seq_len, 20)  # -1 is the submission's order, unchanged
    assert all(np.array_equal(x.numpy(), r[0][0]) for x, r in zip(seq, ref))


def test_data_seed_resume_is_exact_and_checked(tiny_shards_dir):
    T, seq_len = 384, 128
    a = D.TrainLoader(tiny_shards_dir, rank=0, world_size=2, data_seed=3)
    for _ in range(11):
        a.next_batch(T, seq_len)
    state = json.loads(json.dumps(a.state_dict()))
    b = D.TrainLoader(tiny_shards_dir, rank=0, world_size=2, data_seed=3)
    b.load_state_dict(state)
    for _ in range(40):  # across a pass boundary
        assert torch.equal(a.next_batch(T, seq_len)[0], b.next_batch(T, seq_len)[0])
    with pytest.raises(ValueError, match="same data order"):
        D.TrainLoader(tiny_shards_dir, rank=0, world_size=2, data_seed=4).load_state_dict(state)
    with pytest.raises(ValueError, match="same data order"):
        D.TrainLoader(tiny_shards_dir, rank=0, world_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match="data_seed"):
        D.TrainLoader(tiny_shards_dir, data_seed=-2)
    with pytest.raises(ValueError, match="fewer than one"):
        D.TrainLoader(tiny_shards_dir, data_seed=0).next_batch(sum(TINY_TRAIN_SIZES), 1)
