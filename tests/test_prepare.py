"""`gepa data prepare`: the embedded corpus and JSONL sources (docs/data.md)."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from gepalib import corpus
from gepalib import prepare as P
from gepalib.cli import main as gepa
from gepalib.data import list_shards, load_tokenizer, read_shard, sha256_file, validate_data_dir


def _stream(data_dir, split):
    return np.concatenate([read_shard(p) for p in list_shards(data_dir, split)]).astype(np.int64)


def test_sotu_manifest_and_shards(sotu_data_dir):
    m = json.loads((sotu_data_dir / "manifest.json").read_text())
    assert m["format"] == "gepalib-dataset" and m["source"]["kind"] == "sotu"
    val, train = m["splits"]["val"], m["splits"]["train"]
    assert val["tokens"] >= 300_000, "validation set must hold at least ~300k tokens"
    assert len(train["shards"]) >= 3, "train should span several shards"
    assert val["shards"] == ["sotu_val_000000.bin"] and train["shards"][0] == "sotu_train_000000.bin"
    for split, st in (("val", val), ("train", train)):
        toks = _stream(sotu_data_dir, split)
        assert len(toks) == st["tokens"]
        assert toks[0] == 1 and int((toks == 1).sum()) == st["documents"], "one BOS per document"
        assert not (toks == 2).any(), "no EOS"
        sizes = [len(read_shard(sotu_data_dir / n)) for n in st["shards"]]
        assert all(s == m["settings"]["shard_tokens"] for s in sizes[:-1]) and 0 < sizes[-1] <= sizes[0]
        assert st["bytes_per_token"] == pytest.approx(st["bytes"] / st["tokens"], abs=1e-6)
        assert 2.5 < st["bytes_per_token"] < 4.0
    for name, meta in m["files"].items():
        assert sha256_file(sotu_data_dir / name) == meta["sha256"]
    assert validate_data_dir(sotu_data_dir, 1024, deep=True)["check"]["val_tokens"] == val["tokens"]


def test_sotu_documents_are_val_first_and_held_out_by_speech(sotu_data_dir):
    val, train, source = corpus.sotu_documents(4000, 1_250_000, 1337)
    assert 0 < len(source["val_speeches"]) < source["speeches"]
    assert not set(val) & set(train)
    assert max(len(d) for d in val + train) < 4000 + 9000  # paragraphs are never split; the longest is ~8.4k
    # the shards hold exactly [BOS] + encode(doc) for the documents in this order, val first
    sp = load_tokenizer(sotu_data_dir / "tokenizer.model")
    for split, docs in (("val", val), ("train", train)):
        head = []
        for d in docs[:25]:
            head += [1] + sp.encode(d)
        assert _stream(sotu_data_dir, split)[: len(head)].tolist() == head


def test_tokenizer_builder_settings(sotu_data_dir):
    sp = load_tokenizer(sotu_data_dir / "tokenizer.model")
    assert sp.get_piece_size() == 1024
    assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert not any(sp.is_byte(i) for i in range(1024)), "byte_fallback must be off"
    assert sp.encode("1776", out_type=str) == ["1", "7", "7", "6"], "split_digits"
    assert not sp.encode("Congress", out_type=str)[0].startswith("\u2581"), "no dummy prefix"
    assert sp.encode("\uff21") == sp.encode("A"), "nmt_nfkc normalisation"
    vocab = (sotu_data_dir / "tokenizer.vocab").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == 1024 and vocab[1] == "<s>\t0"
    assert [ln.split("\t")[0] for ln in vocab] == [sp.id_to_piece(i) for i in range(1024)]


def test_prepare_is_deterministic_and_idempotent(tmp_path, sotu_data_dir):
    out = tmp_path / "again"
    m = P.prepare_sotu(out, progress=False, verbose=False)
    assert m["reused"] is False
    for name in m["files"]:  # byte-identical to the session's build (possibly made by another process)
        assert (out / name).read_bytes() == (sotu_data_dir / name).read_bytes(), name
    assert sorted(os.listdir(tmp_path)) == ["again"], "no temp build directories left behind"
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = P.prepare_sotu(out, progress=False, verbose=False)
    assert again["reused"] is True and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    assert P.find_prepared_sotu(out) is not None
    assert P.find_prepared_sotu(out, shard_tokens=123_456) is None, "other settings must not reuse it"
    with open(out / "sotu_train_000001.bin", "r+b") as f:  # same size, different content
        f.seek(5000)
        f.write(b"\xff\xff")
    assert P.find_prepared_sotu(out) is None, "a corrupted shard must not be reused"


def test_prepare_refuses_foreign_directory(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(ValueError, match="refusing to replace"):
        P.prepare_sotu(tmp_path, progress=False, verbose=False)
    assert (tmp_path / "mine.txt").read_text() == "precious"
    fineweb = tmp_path / "fw"  # a downloaded FineWeb directory is not ours to replace either
    fineweb.mkdir()
    (fineweb / "manifest.json").write_text(json.dumps({"format": "gepalib-dataset", "source": {"kind": "huggingface"}}))
    with pytest.raises(ValueError, match="refusing to replace"):
        P.prepare_sotu(fineweb, progress=False, verbose=False, force=True)


def _write_jsonl(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t, "id": len(t)}) + "\n")
    return path


@pytest.fixture(scope="module")
def small_texts():
    val, train, _ = corpus.sotu_documents(2000, 1_250_000, 1337)
    return train[:120]


def test_jsonl_source(tmp_path, small_texts):
    src = _write_jsonl(tmp_path / "docs.jsonl", small_texts)
    out = tmp_path / "ds"
    m = P.prepare_jsonl(src, out, val_docs=20, vocab_size=384, shard_tokens=20_000, progress=False, verbose=False)
    assert m["splits"]["val"]["documents"] == 20 and m["splits"]["train"]["documents"] == 100
    assert len(m["splits"]["train"]["shards"]) >= 3 and m["splits"]["train"]["shards"][0] == "docs_train_000000.bin"
    sp = load_tokenizer(out / "tokenizer.model")
    assert sp.get_piece_size() == 384
    for split, docs in (("val", small_texts[:20]), ("train", small_texts[20:])):
        ref = []
        for d in docs:
            ref += [1] + sp.encode(d)  # file order, documents may span shard boundaries
        assert _stream(out, split).tolist() == ref
    assert P.prepare_jsonl(src, out, val_docs=20, vocab_size=384, shard_tokens=20_000, progress=False,
                           verbose=False)["reused"] is True
    good = (out / "docs_train_000001.bin").read_bytes()
    with open(out / "docs_train_000001.bin", "r+b") as f:  # corrupt one shard: detected and rebuilt
        f.seek(3000)
        f.write(b"\xff\xff")
    assert P.prepare_jsonl(src, out, val_docs=20, vocab_size=384, shard_tokens=20_000, progress=False,
                           verbose=False)["reused"] is False
    assert (out / "docs_train_000001.bin").read_bytes() == good
    src.write_text(src.read_text() + json.dumps({"text": "One more document."}) + "\n")
    assert P.prepare_jsonl(src, out, val_docs=20, vocab_size=384, shard_tokens=20_000, progress=False,
                           verbose=False)["reused"] is False, "a changed source file must rebuild"


def test_jsonl_errors(tmp_path, small_texts):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: invalid JSON"):
        P.prepare_jsonl(bad, tmp_path / "o")
    bad.write_text('{"text": "fine"}\n{"body": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object with a string 'text' field"):
        P.prepare_jsonl(bad, tmp_path / "o")
    bad.write_bytes(b'{"text": "fine"}\n\n{"text": "caf\xe9"}\n')  # latin-1, not UTF-8
    with pytest.raises(ValueError, match=r"bad.jsonl:3: not valid UTF-8 \(invalid continuation byte: byte 0xe9 "
                                         r"at column 14\)"):
        P.prepare_jsonl(bad, tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        P.prepare_jsonl(tmp_path / "missing.jsonl", tmp_path / "o")
    src = _write_jsonl(tmp_path / "few.jsonl", small_texts[:3])
    with pytest.raises(ValueError, match="leaves no training documents"):
        P.prepare_jsonl(src, tmp_path / "o", val_docs=3)
    tiny = _write_jsonl(tmp_path / "tiny.jsonl", ["Hello there.", "General Kenobi.", "You are a bold one."])
    with pytest.raises(ValueError, match="too small for a 1024-piece"):
        P.prepare_jsonl(tiny, tmp_path / "o", val_docs=1, progress=False, verbose=False)
    assert not (tmp_path / "o").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.")], "failed builds clean up"
    with pytest.raises(ValueError, match="shard_tokens must be positive"):
        P.prepare_jsonl(src, tmp_path / "o", shard_tokens=0)


def test_cli_prepare_and_check(tmp_path, small_texts, capsys):
    src = _write_jsonl(tmp_path / "docs.jsonl", small_texts[:60])
    out = tmp_path / "cli"
    rc = gepa(["data", "prepare", "--source", "jsonl", str(src), "--out", str(out), "--vocab-size", "320",
               "--shard-tokens", "50000", "--val-docs", "6"])
    text = capsys.readouterr().out
    assert rc == 0
    for key in ("train.documents: 54", "val.documents: 6", "train.tokens:", "val.bytes_per_token:", "files: "):
        assert key in text
    assert gepa(["data", "check", str(out), "--vocab-size", "320", "--deep"]) == 0
    assert "status: ok" in capsys.readouterr().out
    assert gepa(["data", "check", str(out)]) == 2  # default vocab 1024 != 320
    assert "320 pieces but vocab_size is 1024" in capsys.readouterr().err
    assert gepa(["data", "prepare", "--source", "jsonl"]) == 2
    assert "needs a FILE" in capsys.readouterr().err
    assert gepa(["data", "check", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"text": "fine"}\n{"text": "Déjà vu"}\n'.encode("latin-1"))
    assert gepa(["data", "prepare", "--source", "jsonl", str(latin), "--out", str(tmp_path / "l")]) == 2
    assert capsys.readouterr().err.startswith(f"gepa data prepare: error: {latin}:2: not valid UTF-8 (")
    shutil.rmtree(out)


def test_cli_prepare_jsonl_default_out(tmp_path, small_texts, capsys, monkeypatch):
    """`gepa data prepare --source jsonl FILE` alone writes data/<file stem>_sp<vocab>/ (under GEPA_HOME)."""
    monkeypatch.setenv("GEPA_HOME", str(tmp_path))
    src = _write_jsonl(tmp_path / "my.docs.jsonl", small_texts[:30])
    assert gepa(["data", "prepare", "--source", "jsonl", str(src), "--vocab-size", "320",
                 "--shard-tokens", "50000", "--val-docs", "3"]) == 0
    assert "val.documents: 3" in capsys.readouterr().out
    assert (tmp_path / "data" / "my.docs_sp320" / "manifest.json").is_file()


@pytest.mark.parametrize("flags, msg", [
    (["--val-docs", "-3"], "val_docs=-3: the validation split needs at least one document"),
    (["--val-docs", "0"], "val_docs=0: the validation split needs at least one document"),
    (["--vocab-size", "7"], "vocab_size=7 is too small for this corpus: its characters (at character_coverage="
                            "0.999) and the 4 special pieces need at least "),
    (["--vocab-size", "3"], "vocab_size must be in [5, 65536]"),
    (["--vocab-size", "70000"], "vocab_size must be in [5, 65536]"),
])
def test_cli_prepare_refuses_impossible_splits_and_vocabularies(tmp_path, small_texts, capsys, flags, msg):
    """One line and exit 2, nothing written. On the original code --val-docs -3 and 0 silently
    held out the default 10%, and --vocab-size 7 ended in SentencePiece's traceback."""
    src = _write_jsonl(tmp_path / "docs.jsonl", small_texts[:30])
    out = tmp_path / "ds"
    assert gepa(["data", "prepare", "--source", "jsonl", str(src), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gepa data prepare: error: " + msg) and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl"], "nothing written, no build dir left"


def test_the_smallest_vocabulary_the_refusal_names_trains(tmp_path, small_texts):
    src = _write_jsonl(tmp_path / "docs.jsonl", small_texts[:30])
    with pytest.raises(ValueError, match=r"need at least (\d+); use a vocab_size of \1 or more") as e:
        P.prepare_jsonl(src, tmp_path / "a", vocab_size=7, progress=False, verbose=False)
    least = int(str(e.value).rsplit("of ", 1)[1].split()[0])
    with pytest.raises(ValueError, match=f"need at least {least};"):
        P.prepare_jsonl(src, tmp_path / "b", vocab_size=least - 1, progress=False, verbose=False)
    m = P.prepare_jsonl(src, tmp_path / "c", vocab_size=least, shard_tokens=50_000, progress=False, verbose=False)
    assert m["tokenizer"]["vocab_size"] == least
    assert m["splits"]["val"]["documents"] == 3, "without val_docs: the first 10%"
    assert gepa(["data", "prepare", "--val-docs", "5"]) == 2, "--val-docs is for --source jsonl"
