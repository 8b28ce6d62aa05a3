"""Entropy coding of int6 codes with rANS (the ``rans`` compressor; see docs/quantization.md).

zstd-22 sees bytes; it gets within ~1% of the per-tensor entropy of i.i.d.
int6 symbols. This coder sees the tensors: every int6 matrix is coded with
static categorical models under constriction's ANS coder (24-bit fixed point),
one model per *context*: (row cluster, column cluster), chosen per tensor by
:mod:`gepalib.quant.contexts`.

Payload layout (all integers little-endian)::

    u8   side codec           0 = stored, 1 = zstd, 2 = lzma, 3 = brotli (the smallest wins)
    u32  side length (compressed)      u32  side length (raw)
    ...  side bytes (compressed)
    u32  number of ANS words           ...  the words, u32 each

The raw side bytes are, for every code tensor in order: u8 K_rows, u8 K_cols,
K_rows>1: one u8 cluster id per row, K_cols>1: one u8 per column, then per
context (row-major): u8 lo, u8 hi and (hi-lo+1) u16 frequencies of the symbols
lo..hi (lo > hi marks an empty context; a one-symbol context codes no ANS bits).
After the models follow the ``residual`` bytes the caller passes (scales,
passthrough tensors).

Symbols are ``q + 32``. The ANS stack is filled in reverse (last tensor, last
context first) so decoding runs forward. Decoding checks every count and
range against the known shapes, and decompresses the side stream only when its
declared length fits what the encoder can write for those shapes
(:func:`max_side_bytes`); the caller verifies the sha256 of the result.
"""
from __future__ import annotations

import lzma
import struct

import numpy as np
import zstandard

from gepalib.quant.contexts import ALPHABET, CONFIGS, MAX_CLUSTERS, OFFSET, choose_contexts, quantize_freqs

CHUNK = 1 << 22  # symbols per bincount / ANS call: bounds the working memory
SIDE_CODECS = {0: "stored", 1: "zstd", 2: "lzma", 3: "brotli"}


def _constriction():
    import constriction

    return constriction


def _model(freqs: np.ndarray):
    """constriction categorical model over len(freqs) symbols (deterministic, perfect=False)."""
    p = freqs.astype(np.float64) / float(freqs.sum())
    return _constriction().stream.model.Categorical(p, perfect=False)


# ---------------------------------------------------------------------------
# Byte helpers


class _Reader:
    def __init__(self, data: bytes, what: str):
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(f"{self.what}: truncated (needed {n} bytes at offset {self.pos}, "
                             f"{len(self.data) - self.pos} left)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def array(self, n: int, dtype: str) -> np.ndarray:
        size = np.dtype(dtype).itemsize
        return np.frombuffer(self.take(n * size), dtype=dtype).astype(np.int64)


def _compress_side(raw: bytes, level: int) -> tuple[int, bytes]:
    import brotli

    options = [(0, raw), (1, zstandard.ZstdCompressor(level=level).compress(raw)),
               (2, lzma.compress(raw, preset=9)), (3, brotli.compress(raw, quality=11))]
    return min(options, key=lambda o: (len(o[1]), o[0]))


def _decompress_side(codec: int, blob: bytes, raw_len: int) -> bytes:
    if codec == 0:
        out = blob
    elif codec == 1:
        size = zstandard.frame_content_size(blob) if len(blob) >= 18 else -1
        if size not in (-1, raw_len):
            raise ValueError(f"rans side data: zstd frame says {size} bytes, expected {raw_len}")
        out = zstandard.ZstdDecompressor().stream_reader(blob).read(raw_len + 1)
    elif codec == 2:
        d = lzma.LZMADecompressor()
        out = d.decompress(blob, max_length=raw_len + 1)
        if not d.eof or d.unused_data:
            raise ValueError("rans side data: lzma stream is incomplete or has trailing bytes")
    elif codec == 3:
        import brotli

        d = brotli.Decompressor()
        out = d.process(blob, output_buffer_limit=raw_len + 1)
        if len(out) == raw_len and not d.is_finished():
            raise ValueError("rans side data: brotli stream is incomplete")
    else:
        raise ValueError(f"rans side data: unknown side codec {codec}")
    if len(out) != raw_len:
        raise ValueError(f"rans side data: decompressed to {len(out)} bytes, expected {raw_len}")
    return out


# ---------------------------------------------------------------------------
# Encode / decode


def _members(assign: np.ndarray, k: int, c: int):
    """Items of cluster ``c``: ascending indices, or a full slice when the axis has one cluster."""
    return slice(None) if k == 1 else np.nonzero(assign == c)[0]


def _sub(u: np.ndarray, ri, ci) -> tuple:
    """Index of the context (ri x ci) in u, row-major, for reading or writing."""
    return np.ix_(ri, ci) if not (isinstance(ri, slice) or isinstance(ci, slice)) else (ri, ci)


def _symbol_counts(sym: np.ndarray, n: int) -> np.ndarray:
    """np.bincount(sym, minlength=n) in chunks (bincount widens its input to int64)."""
    counts = np.zeros(n, dtype=np.int64)
    for i in range(0, len(sym), CHUNK):
        counts += np.bincount(sym[i:i + CHUNK], minlength=n)
    return counts


def encode(codes: list[np.ndarray], residual: bytes, level: int = 22, configs=CONFIGS) -> bytes:
    """rANS-code int6 matrices (int8 arrays [rows, cols], values in [-32, 31]) plus residual bytes."""
    side = bytearray()
    plan = []  # per tensor: list of (symbols - lo as uint8, freqs)
    for q in codes:
        if q.ndim != 2:
            raise ValueError(f"rans expects 2-D code matrices, got shape {q.shape}")
        u = q.astype(np.int16) + OFFSET
        if u.size and (u.min() < 0 or u.max() >= ALPHABET):
            raise ValueError("rans: int6 codes outside [-32, 31]")
        u = u.astype(np.uint8)
        if u.size == 0:
            ra, kr, ca, kc = np.zeros(q.shape[0], np.int64), 1, np.zeros(q.shape[1], np.int64), 1
        else:
            ra, kr, ca, kc = choose_contexts(u, configs)
        side += bytes([kr, kc])
        if kr > 1:
            side += ra.astype(np.uint8).tobytes()
        if kc > 1:
            side += ca.astype(np.uint8).tobytes()
        parts = []
        for r in range(kr):
            ri = _members(ra, kr, r)
            for c in range(kc):
                ci = _members(ca, kc, c)
                sym = u[_sub(u, ri, ci)].ravel()
                if sym.size == 0:
                    side += bytes([1, 0])
                    continue
                lo, hi = int(sym.min()), int(sym.max())
                sym = sym - np.uint8(lo)
                f = quantize_freqs(_symbol_counts(sym, hi - lo + 1))
                side += bytes([lo, hi]) + f.astype("<u2").tobytes()
                if hi > lo:  # a one-symbol context costs no bits (constriction rejects it anyway)
                    parts.append((sym, f))
        plan.append(parts)
    side += residual
    coder = _constriction().stream.stack.AnsCoder()
    for parts in reversed(plan):
        for sym, f in reversed(parts):
            model = _model(f)
            # encode_reverse of consecutive chunks, last chunk first == one call on the whole
            for i in reversed(range(0, len(sym), CHUNK)):
                coder.encode_reverse(sym[i:i + CHUNK].astype(np.int32), model)
    words = coder.get_compressed().astype("<u4")
    codec, blob = _compress_side(bytes(side), level)
    head = struct.pack("<BII", codec, len(blob), len(side))
    return head + blob + struct.pack("<I", len(words)) + words.tobytes()


def max_side_bytes(shapes: list[tuple[int, int]], residual_len: int) -> int:
    """The largest side stream :func:`encode` can write for these shapes: per tensor the two
    cluster counts, the cluster ids and, per context (at most min(16, rows) x min(16, cols)),
    lo, hi and up to 64 u16 frequencies; then the residual."""
    out = residual_len
    for r, c in shapes:
        contexts = min(MAX_CLUSTERS, r) * min(MAX_CLUSTERS, c) if r and c else 1
        out += 2 + r + c + contexts * (2 + 2 * ALPHABET)
    return out


def decode(payload: bytes, shapes: list[tuple[int, int]], residual_len: int,
           max_side: int | None = None) -> tuple[list[np.ndarray], bytes]:
    """Inverse of :func:`encode`; ``shapes`` and ``residual_len`` come from the validated header.

    The side stream is decompressed only when its declared length is at most what
    ``encode`` can write for these shapes and at most ``max_side`` (the caller's cap)."""
    side_raw, words = _read_payload(payload, shapes, residual_len, max_side)
    side = _Reader(side_raw, "rans side data")
    plans = [_read_models(side, rows, cols) for rows, cols in shapes]
    residual = side.take(residual_len)
    if side.pos != len(side_raw):
        raise ValueError(f"rans side data: {len(side_raw) - side.pos} unexpected bytes")
    return _decode_symbols(words, plans), residual


def _read_payload(payload: bytes, shapes: list[tuple[int, int]], residual_len: int,
                  max_side: int | None) -> tuple[bytes, np.ndarray]:
    """(the raw side bytes, the ANS words) of a payload, its lengths checked before anything is
    decompressed and nothing left over after the words."""
    rd = _Reader(payload, "rans payload")
    codec, blob_len, side_len = struct.unpack("<BII", rd.take(9))
    limit = max_side_bytes(shapes, residual_len)
    if max_side is not None:
        limit = min(limit, max_side)
    if side_len > limit:
        raise ValueError(f"rans payload: side data of {side_len} bytes exceeds the possible {limit}")
    import brotli

    try:
        side_raw = _decompress_side(codec, rd.take(blob_len), side_len)
    except (zstandard.ZstdError, lzma.LZMAError, brotli.error) as e:
        raise ValueError(f"rans side data is corrupt ({e})") from None
    n_words = rd.u32()
    words = np.frombuffer(rd.take(4 * n_words), dtype="<u4").astype(np.uint32)
    if rd.pos != len(payload):
        raise ValueError(f"rans payload: {len(payload) - rd.pos} trailing bytes")
    return side_raw, words


def _read_models(side: _Reader, rows: int, cols: int) -> tuple[int, int, list[tuple]]:
    """One tensor's contexts from the side stream: (rows, cols, [(row ids, column ids, context
    rows, context columns, lowest symbol, frequencies)]), each checked against the shape."""
    kr, kc = side.u8(), side.u8()
    if not (1 <= kr <= MAX_CLUSTERS and 1 <= kc <= MAX_CLUSTERS):
        raise ValueError(f"rans side data: bad cluster counts ({kr}, {kc})")
    ra = side.array(rows, "u1") if kr > 1 else np.zeros(rows, np.int64)
    ca = side.array(cols, "u1") if kc > 1 else np.zeros(cols, np.int64)
    if (ra.size and ra.max() >= kr) or (ca.size and ca.max() >= kc):
        raise ValueError("rans side data: cluster id out of range")
    parts = []
    for r in range(kr):
        ri = _members(ra, kr, r)
        for c in range(kc):
            ci = _members(ca, kc, c)
            lo, hi = side.u8(), side.u8()
            nr, nc = (rows if kr == 1 else len(ri)), (cols if kc == 1 else len(ci))
            n = nr * nc
            if lo > hi:
                if n:
                    raise ValueError("rans side data: empty model for a non-empty context")
                continue
            if hi >= ALPHABET:
                raise ValueError(f"rans side data: symbol range {lo}..{hi} outside the int6 alphabet")
            f = side.array(hi - lo + 1, "<u2")
            if n == 0 or f.sum() == 0:
                raise ValueError("rans side data: model does not match its context")
            parts.append((ri, ci, nr, nc, lo, f))
    return rows, cols, parts


def _decode_symbols(words: np.ndarray, plans: list[tuple[int, int, list[tuple]]]) -> list[np.ndarray]:
    """The int6 matrices from the ANS words, context by context as the models say; the stream
    must end exactly after the last symbol."""
    try:
        coder = _constriction().stream.stack.AnsCoder(words)
        out = []
        for rows, cols, parts in plans:
            u = np.zeros((rows, cols), dtype=np.uint8)
            for ri, ci, nr, nc, lo, f in parts:
                where, n = _sub(u, ri, ci), nr * nc
                if len(f) == 1:
                    u[where] = lo
                    continue
                model, vals = _model(f), np.empty(n, dtype=np.uint8)
                for i in range(0, n, CHUNK):  # chunked like the encoder: same symbols, bounded memory
                    vals[i:i + CHUNK] = np.asarray(coder.decode(model, min(CHUNK, n - i))) + lo
                u[where] = vals.reshape(nr, nc)
            out.append(u.view(np.int8) - np.int8(OFFSET))
        empty = coder.is_empty()
    except (ValueError, RuntimeError, TypeError, OverflowError) as e:
        raise ValueError(f"rans payload: ANS stream is corrupt ({e})") from None
    if not empty:
        raise ValueError("rans payload: ANS stream has data left after the last symbol")
    return out
