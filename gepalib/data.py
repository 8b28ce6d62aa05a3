"""The challenge's token shards and the two loaders built on them (see docs/data.md).

Shard format: a 1024-byte header of 256 little-endian int32 (magic 20240520,
version 1, token count N, the rest 0), then N little-endian uint16 token ids.
A file is rejected unless its size is exactly 1024 + 2N.

* :func:`load_val_tokens` -- all val shards in sorted order, truncated to
  ``floor((N-1)/seq_len)*seq_len + 1`` tokens.
* :class:`TrainLoader` -- the train stream: sorted shards read in order, wrapping
  to the first after the last; per micro-step the stream yields ``W*(T+1)``
  contiguous tokens and rank r takes ``[r(T+1), (r+1)(T+1))``. With a data seed
  (``data_seed >= 0``) the same windows of ``W*(T+1)`` tokens are visited in a
  seeded random order, a new permutation per pass over the stream.

Everything memory-maps; nothing loads a whole dataset into RAM.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gepalib.errors import DataError
from gepalib.fsio import atomic_write_bytes, file_sha256

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
MAX_SHARD_TOKENS = 2**31 - 1  # the header stores N as int32
SPLITS = ("train", "val")


class ShardError(DataError):
    """A shard file is malformed (the message names the file and the problem)."""


# ---------------------------------------------------------------------------
# Shard files


def write_shard(path: str | os.PathLike, tokens: Any) -> None:
    """Write ``tokens`` (1-D ints in [0, 65535]) as a challenge shard, atomically."""
    path = Path(path)
    arr = tokens.detach().cpu().numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"{path}: tokens must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype != np.uint16:
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{path}: tokens must be integers, got dtype {arr.dtype}")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise ValueError(f"{path}: token ids must lie in [0, 65535] for uint16 shards, got [{lo}, {hi}]")
    if arr.size > MAX_SHARD_TOKENS:
        raise ValueError(f"{path}: {arr.size} tokens do not fit in one shard (max {MAX_SHARD_TOKENS})")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, arr.size
    atomic_write_bytes(path, header.tobytes() + arr.astype(TOKEN_DTYPE, copy=False).tobytes())


def read_shard_header(path: str | os.PathLike) -> int:
    """Check magic, version and exact size; return the token count N."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"shard {path} does not exist")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ShardError(f"shard {path}: truncated header ({size} bytes, expected at least {HEADER_BYTES})")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if int(header[0]) != MAGIC:
        raise ShardError(f"shard {path}: bad magic {int(header[0])} (expected {MAGIC}); not a challenge shard")
    if int(header[1]) != VERSION:
        raise ShardError(f"shard {path}: unsupported version {int(header[1])} (expected {VERSION})")
    n = int(header[2])
    if n < 0:
        raise ShardError(f"shard {path}: negative token count {n} in header")
    expected = HEADER_BYTES + 2 * n
    if size != expected:
        raise ShardError(
            f"shard {path}: file is {size} bytes but the header says {n} tokens "
            f"(expected exactly {expected} bytes; truncated or corrupt)"
        )
    return n


def read_shard(path: str | os.PathLike, vocab_size: int | None = None) -> np.ndarray:
    """Memory-map a shard's tokens (uint16). With ``vocab_size``, every token must be < it."""
    n = read_shard_header(path)
    if n == 0:
        return np.zeros(0, dtype=TOKEN_DTYPE)
    toks = np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(n,))
    if vocab_size is not None:
        hi = int(toks.max())
        if hi >= vocab_size:
            at = int(np.argmax(toks >= vocab_size))
            raise ShardError(f"shard {path}: token id {hi} >= vocab_size {vocab_size} (first at position {at})")
    return toks


def list_shards(data_dir: str | os.PathLike, split: str, limit: int = 0) -> list[Path]:
    """``*_{split}_NNNNNN.bin`` in ``data_dir``, sorted by name; ``limit`` > 0 keeps the first N."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"data directory {data_dir} does not exist; run `gepa data prepare` (embedded corpus) "
            f"or `gepa data download` (FineWeb)"
        )
    pat = re.compile(rf"^.+_{split}_\d{{6}}\.bin$")
    files = sorted(p for p in data_dir.iterdir() if pat.match(p.name) and p.is_file())
    if limit < 0:
        raise ValueError(f"shard limit must be >= 0, got {limit}")
    if limit:
        if limit > len(files):
            raise ValueError(f"{data_dir}: asked for the first {limit} {split} shards but only {len(files)} exist")
        files = files[:limit]
    return files


# ---------------------------------------------------------------------------
# Validation tokens


def val_keep(n_tokens: int, seq_len: int, max_targets: int = 0) -> int:
    """Tokens kept by the validation truncation rule (optionally capped at ``max_targets`` targets)."""
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    keep = ((n_tokens - 1) // seq_len) * seq_len + 1 if n_tokens > 0 else 0
    if max_targets > 0:
        keep = min(keep, (max_targets // seq_len) * seq_len + 1)
    return keep


def load_val_tokens(data_dir: str | os.PathLike, seq_len: int, vocab_size: int | None = None,
                    max_targets: int = 0) -> torch.Tensor:
    """All val shards concatenated in sorted order and truncated (docs/data.md); int64, 1-D."""
    shards = list_shards(data_dir, "val")
    if not shards:
        raise FileNotFoundError(f"no validation shards (*_val_NNNNNN.bin) in {data_dir}")
    counts = [read_shard_header(p) for p in shards]
    total = sum(counts)
    keep = val_keep(total, seq_len, max_targets)
    if keep < seq_len + 1:
        why = f" (max_targets={max_targets})" if max_targets > 0 and total >= seq_len + 1 else ""
        raise ValueError(
            f"{data_dir}: validation needs at least seq_len+1 = {seq_len + 1} tokens{why}, "
            f"but the val shards hold {total}"
        )
    out = np.empty(keep, dtype=np.int64)
    filled = 0
    for p in shards:
        if filled == keep:
            break
        toks = read_shard(p, vocab_size)
        take = min(len(toks), keep - filled)
        out[filled:filled + take] = toks[:take]
        filled += take
    return torch.from_numpy(out)


# ---------------------------------------------------------------------------
# Training stream


class TrainLoader:
    """The deterministic train token stream (docs/data.md), sliced per rank.

    The stream is the infinite concatenation shard0, shard1, ..., shardK-1,
    shard0, ... (sorted names, first ``train_shards`` if > 0). Each
    :meth:`next_batch` consumes ``world_size*(T+1)`` tokens; this rank keeps
    ``[rank*(T+1), (rank+1)*(T+1))``. The position (shard index, offset) is the
    whole state, so :meth:`state_dict` / :meth:`load_state_dict` resume exactly.

    ``data_seed >= 0`` shuffles the order and nothing else: the stream is cut into
    ``floor(N / (world_size*(T+1)))`` windows of one micro-step each (the tail of
    fewer tokens is skipped), visited in the order of
    ``numpy.random.default_rng([data_seed, pass]).permutation``; the number of
    micro-batches drawn is the state. ``-1`` (the default) is the submission's order.
    """

    def __init__(self, data_dir: str | os.PathLike, rank: int = 0, world_size: int = 1,
                 vocab_size: int | None = None, train_shards: int = 0, data_seed: int = -1):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
        self.data_dir = Path(data_dir)
        self.rank, self.world_size, self.vocab_size = rank, world_size, vocab_size
        self.files = list_shards(self.data_dir, "train", train_shards)
        if not self.files:
            raise FileNotFoundError(f"no training shards (*_train_NNNNNN.bin) in {self.data_dir}")
        self.counts = [read_shard_header(p) for p in self.files]  # fail early on a bad header
        if sum(self.counts) == 0:
            raise ValueError(f"{self.data_dir}: the training shards hold no tokens")
        self.shard, self.pos = 0, 0  # next token to read: self.files[shard][pos]
        self.tokens_read = 0  # stream tokens consumed so far (all ranks' slices)
        self._cache: tuple[int, np.ndarray] | None = None
        if data_seed < -1:
            raise ValueError(f"data_seed must be -1 (the submission's order) or >= 0, got {data_seed}")
        self.data_seed = int(data_seed)
        self.batches = 0  # micro-batches drawn (the state of the shuffled order)
        self._perm: tuple[int, np.ndarray] | None = None  # (pass, window order) of the shuffled order

    def _tokens(self, i: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != i:
            self._cache = (i, read_shard(self.files[i], self.vocab_size))
        return self._cache[1]

    def _advance(self, n: int, out: np.ndarray | None = None) -> None:
        """Move n tokens along the stream, copying them into ``out`` if given."""
        done = 0
        while done < n:
            avail = self.counts[self.shard] - self.pos
            if avail <= 0:
                self.shard, self.pos = (self.shard + 1) % len(self.files), 0
                continue
            k = min(avail, n - done)
            if out is not None:
                out[done:done + k] = self._tokens(self.shard)[self.pos:self.pos + k]
            self.pos += k
            done += k
        self.tokens_read += n

    def next_batch(self, tokens_per_rank: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) int64 of shape (T/seq_len, seq_len) for this rank; y is x shifted by one."""
        T = int(tokens_per_rank)
        if T <= 0 or seq_len <= 0 or T % seq_len:
            raise ValueError(f"tokens_per_rank ({T}) must be a positive multiple of seq_len ({seq_len})")
        span = T + 1
        buf = np.empty(span, dtype=np.int64)
        if self.data_seed >= 0:
            self._shuffled(span, buf)
        else:
            self._advance(self.rank * span)
            self._advance(span, buf)
            self._advance((self.world_size - 1 - self.rank) * span)
        t = torch.from_numpy(buf)
        return t[:-1].view(-1, seq_len), t[1:].view(-1, seq_len)

    def _shuffled(self, span: int, out: np.ndarray) -> None:
        """This rank's slice of the next window in the seeded order, copied into ``out``."""
        window = self.world_size * span
        n_windows = sum(self.counts) // window
        if n_windows == 0:
            raise ValueError(f"{self.data_dir}: the training shards hold {sum(self.counts)} tokens, fewer than one "
                             f"micro-step window of {window}; data_seed >= 0 needs at least one")
        epoch, i = divmod(self.batches, n_windows)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.data_seed, epoch]).permutation(n_windows))
        self.shard, self.pos = self._locate(int(self._perm[1][i]) * window + self.rank * span)
        self._advance(span, out)
        self.tokens_read += window - span  # the stream consumed the whole window (all ranks' slices)
        self.batches += 1

    def _locate(self, offset: int) -> tuple[int, int]:
        """(shard, position) of token ``offset`` of the concatenated shards."""
        for shard, n in enumerate(self.counts):
            if offset < n:
                return shard, offset
            offset -= n
        raise IndexError(f"stream offset beyond the training shards ({sum(self.counts)} tokens)")

    def state_dict(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "pos": self.pos,
            "tokens_read": self.tokens_read,
            "files": [p.name for p in self.files],
            "world_size": self.world_size,
            "data_seed": self.data_seed,
            "batches": self.batches,
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        names = [p.name for p in self.files]
        if list(d.get("files", [])) != names:
            raise ValueError(
                f"train loader state was saved for shards {d.get('files')} but {self.data_dir} has {names}; "
                f"resume needs the same training shards"
            )
        shard, pos = int(d["shard"]), int(d["pos"])
        if not (0 <= shard < len(self.files) and 0 <= pos <= self.counts[shard]):
            raise ValueError(f"train loader state out of range: shard={shard} pos={pos}")
        seed = int(d.get("data_seed", -1))
        if seed != self.data_seed:
            raise ValueError(f"train loader state was saved with data_seed={seed} but this run has "
                             f"data_seed={self.data_seed}; resume needs the same data order")
        self.shard, self.pos, self.tokens_read = shard, pos, int(d.get("tokens_read", 0))
        self.batches = int(d.get("batches", 0))


# ---------------------------------------------------------------------------
# Tokenizer and whole-directory checks


def load_tokenizer(path: str | os.PathLike):
    """Load a SentencePiece model, with a clear error if it is missing or corrupt."""
    import sentencepiece as spm

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer {path} does not exist")
    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(str(path))
    except Exception as e:  # sentencepiece raises OSError/RuntimeError with a C++ message
        raise DataError(f"tokenizer {path} is not a valid SentencePiece model ({e})") from None
    return sp


def validate_data_dir(data_dir: str | os.PathLike, vocab_size: int, tokenizer_path: str | os.PathLike | None = None,
                      deep: bool = False) -> dict[str, Any]:
    """Check a dataset directory; return its manifest (or, without a manifest.json, one synthesized
    from the check alone: ``check["manifest"]`` is then ``"none"``) with a ``check`` summary.

    Always: directory, train/val shards present, every header and exact size,
    tokenizer loads and has ``vocab_size`` pieces and, when there is a manifest.json,
    the files it lists with their sizes, no shard it does not list and each split's
    shards and token total (:func:`check_manifest_shards`). With ``deep``: also every
    token < vocab_size and the manifest's sha256 sums.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"data directory {data_dir} does not exist; run `gepa data prepare` (embedded corpus) "
            f"or `gepa data download` (FineWeb)"
        )
    shards = {s: list_shards(data_dir, s) for s in SPLITS}
    for s in SPLITS:
        if not shards[s]:
            raise FileNotFoundError(
                f"{data_dir}: no {s} shards (*_{s}_NNNNNN.bin); run `gepa data prepare --out {data_dir}`"
            )
    tok_path = Path(tokenizer_path) if tokenizer_path else data_dir / "tokenizer.model"
    if not tok_path.is_file():
        raise FileNotFoundError(f"{data_dir}: tokenizer {tok_path} is missing")
    sp = load_tokenizer(tok_path)
    if sp.get_piece_size() != vocab_size:
        raise ValueError(f"tokenizer {tok_path} has {sp.get_piece_size()} pieces but vocab_size is {vocab_size}")
    tokens = {s: sum(read_shard_header(p) if not deep else len(read_shard(p, vocab_size)) for p in shards[s])
              for s in SPLITS}
    manifest = read_manifest(data_dir)
    if manifest:
        check_manifest_files(data_dir, manifest, sha256=deep)
        check_manifest_shards(data_dir, manifest, shards)
    manifest["check"] = {
        "data_dir": str(data_dir),
        "tokenizer": str(tok_path),
        "vocab_size": vocab_size,
        "train_shards": len(shards["train"]),
        "val_shards": len(shards["val"]),
        "train_tokens": tokens["train"],
        "val_tokens": tokens["val"],
        "deep": deep,
        "manifest": "manifest.json" if manifest else "none",  # none: nothing to check the files against
    }
    return manifest


def read_manifest(data_dir: str | os.PathLike) -> dict[str, Any]:
    """``<data_dir>/manifest.json`` as a dict ({} when there is none)."""
    mpath = Path(data_dir) / "manifest.json"
    if not mpath.is_file():
        return {}
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{mpath}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{mpath}: expected a JSON object, got {type(manifest).__name__}")
    return manifest


def check_manifest_shards(data_dir: str | os.PathLike, manifest: dict[str, Any],
                          shards: dict[str, list[Path]]) -> None:
    """The shards found on disk agree with the manifest: each is listed in ``files`` (a stray
    shard would be read by training), each split holds the shards and the token total that
    ``splits.<split>`` records. ``shards`` maps a split to the shard files to check."""
    data_dir = Path(data_dir)
    rebuild = "remove it or rebuild the dataset (`gepa data prepare --force`, `gepa data download`)"
    files = manifest.get("files")
    if isinstance(files, dict):
        stray = [p.name for s in SPLITS for p in shards.get(s, []) if p.name not in files]
        if stray:
            more = f" (and {len(stray) - 1} more)" if len(stray) > 1 else ""
            raise DataError(f"{data_dir}: shard {stray[0]}{more} is not listed in manifest.json, but training "
                            f"would read it; {rebuild}")
    for s in SPLITS:
        st = (manifest.get("splits") or {}).get(s)
        if not isinstance(st, dict):
            continue
        listed = [str(n) for n in st.get("shards") or []]
        unlisted = sorted({p.name for p in shards.get(s, [])} - set(listed)) if "shards" in st else []
        if unlisted:
            raise DataError(f"{data_dir}: {s} shard {unlisted[0]} is not in manifest.json's splits.{s}.shards; "
                            f"{rebuild}")
        if "tokens" in st and listed:
            held = sum(read_shard_header(data_dir / n) for n in listed)
            if held != int(st["tokens"]):
                raise DataError(f"{data_dir}: the {s} shards hold {held} tokens but manifest.json records "
                                f"{st['tokens']} (splits.{s}.tokens); a shard or the manifest was changed")


def verify_dataset(data_dir: str | os.PathLike, vocab_size: int, tokenizer_path: str | os.PathLike | None = None,
                   train_shards: int = 0) -> dict[str, Any]:
    """Everything a run checks before its first step: :func:`validate_data_dir` (headers, sizes,
    tokenizer, manifest agreement), then every token id < ``vocab_size`` in the shards the run
    reads (all val shards and the first ``train_shards`` train shards; 0 = all), one numpy max
    over each memory-mapped shard. Returns the manifest with its ``check`` summary."""
    m = validate_data_dir(data_dir, vocab_size, tokenizer_path)
    used = [*list_shards(data_dir, "val"), *list_shards(data_dir, "train", train_shards)]
    for p in used:
        read_shard(p, vocab_size)  # raises ShardError naming the shard, the id and its position
    m["check"]["tokens_checked_shards"] = len(used)
    return m


def sha256_file(path: str | os.PathLike) -> str:
    """The file's sha256 hex digest (:func:`gepalib.fsio.file_sha256` without the size)."""
    return file_sha256(path)[0]


def check_manifest_files(data_dir: str | os.PathLike, manifest: dict[str, Any], sha256: bool = True) -> None:
    """Every file listed in ``manifest["files"]`` exists with its recorded size (and sha256)."""
    data_dir = Path(data_dir)
    for name, meta in (manifest.get("files") or {}).items():
        p = data_dir / name
        if not p.is_file():
            raise DataError(f"{data_dir}: {name} is listed in manifest.json but missing")
        if "bytes" in meta and p.stat().st_size != int(meta["bytes"]):
            raise DataError(f"{p}: size {p.stat().st_size} != {meta['bytes']} recorded in manifest.json")
        if sha256 and meta.get("sha256") and sha256_file(p) != meta["sha256"]:
            raise DataError(f"{p}: sha256 differs from manifest.json (file changed or corrupt)")
