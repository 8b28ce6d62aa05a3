"""Entropy coding of int6 codes with rANS (the ``rans`` compressor, issue 5).

zstd-22 sees bytes; it gets within ~1% of the per-tensor entropy of i.i.d.
int6 symbols. This coder sees the tensors: every int6 matrix is coded with
static categorical models under constriction's ANS coder (24-bit fixed point),
one model per *context*. A context is (row cluster, column cluster): rows and
columns of a matrix are co-clustered by their symbol histograms so that rows
with a different spread (or columns with outlier input channels) get their own
distribution. Per tensor the cheapest of a few cluster counts (K_rows, K_cols)
is chosen by its exact code length plus the cost of describing the models;
(1, 1) is plain per-tensor coding.

Payload layout (all integers little-endian)::

    u8   side codec           0 = stored, 1 = zstd, 2 = lzma, 3 = brotli (the smallest wins)
    u32  side length (compressed)      u32  side length (raw)
    ...  side bytes (compressed)
    u32  number of ANS words           ...  the words, u32 each

The raw side bytes are, for every code tensor in order: u8 K_rows, u8 K_cols,
K_rows>1: one u8 cluster id per row, K_cols>1: one u8 per column, then per
context (row-major): u8 lo, u8 hi and (hi-lo+1) u16 frequencies of the symbols
lo..hi (lo > hi marks an empty context; a one-symbol context codes no ANS bits). After the models follow the
``residual`` bytes the caller passes (scales, passthrough tensors).

Symbols are ``q + 32``. The ANS stack is filled in reverse (last tensor, last
context first) so decoding runs forward. Decoding checks every count and
range against the known shapes; the caller verifies the sha256 of the result.
"""
from __future__ import annotations

import lzma
import struct

import numpy as np
import zstandard

ALPHABET = 64
OFFSET = 32
MAX_CLUSTERS = 16
FREQ_TOTAL = 65535  # u16 frequency tables
# (K_rows, K_cols) tried per tensor; (1, 1) is per-tensor coding.
CONFIGS = ((1, 1), (2, 1), (4, 1), (8, 1), (16, 1), (1, 2), (1, 4), (1, 8), (2, 2), (4, 4))
FIT_ITERS = 6
SIDE_CODECS = {0: "stored", 1: "zstd", 2: "lzma", 3: "brotli"}


def _constriction():
    import constriction

    return constriction


# ---------------------------------------------------------------------------
# Frequency tables


def quantize_freqs(counts: np.ndarray) -> np.ndarray:
    """Integer frequencies in [0, FREQ_TOTAL], >= 1 wherever the count is > 0."""
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    if n == 0:
        return np.zeros_like(counts)
    f = (counts * FREQ_TOTAL) // n
    return np.where(counts > 0, np.maximum(f, 1), 0).astype(np.int64)


def _model(freqs: np.ndarray):
    """constriction categorical model over len(freqs) symbols (deterministic, perfect=False)."""
    p = freqs.astype(np.float64) / float(freqs.sum())
    return _constriction().stream.model.Categorical(p, perfect=False)


def _table_bits(counts: np.ndarray) -> tuple[float, int]:
    """(ideal code bits under the quantized table, raw bytes to describe the table)."""
    nz = np.nonzero(counts)[0]
    if len(nz) == 0:
        return 0.0, 2
    lo, hi = int(nz[0]), int(nz[-1])
    f = quantize_freqs(counts[lo:hi + 1])
    c = counts[lo:hi + 1]
    m = c > 0
    bits = float(-(c[m] * np.log2(f[m] / f.sum())).sum())
    return bits, 2 + 2 * (hi - lo + 1)


# ---------------------------------------------------------------------------
# Co-clustering of rows and columns


def _spread_init(u: np.ndarray, axis: int, k: int) -> np.ndarray:
    """Split rows (axis=1) or columns (axis=0) into k equal groups by mean |code|."""
    spread = np.abs(u.astype(np.int64) - OFFSET).mean(axis=axis)
    order = np.argsort(spread, kind="stable")
    assign = np.empty(len(spread), dtype=np.int64)
    assign[order] = (np.arange(len(spread)) * k) // len(spread)
    return assign


def _joint_hist(u: np.ndarray, assign_other: np.ndarray, k_other: int, axis: int) -> np.ndarray:
    """Counts [n_items, k_other, 64]: items are rows (axis=0) or columns (axis=1)."""
    if axis == 1:
        u = u.T
    n_items = u.shape[0]
    item = np.arange(n_items, dtype=np.int64)[:, None]
    idx = ((item * k_other + assign_other[None, :]) * ALPHABET + u).ravel()
    return np.bincount(idx, minlength=n_items * k_other * ALPHABET).reshape(n_items, k_other, ALPHABET)


def _reassign(hist: np.ndarray, assign: np.ndarray, k: int) -> np.ndarray:
    """Move each item to the cluster whose (smoothed) model codes it cheapest."""
    table = np.stack([hist[assign == c].sum(axis=0) for c in range(k)]).astype(np.float64)
    table += 1.0 / ALPHABET
    logp = np.log2(table / table.sum(axis=2, keepdims=True))
    cost = -np.einsum("ics,kcs->ik", hist.astype(np.float64), logp)
    return np.argmin(cost, axis=1)


def _compact(assign: np.ndarray) -> tuple[np.ndarray, int]:
    used, inv = np.unique(assign, return_inverse=True)
    return inv.astype(np.int64), len(used)


def fit_contexts(u: np.ndarray, k_rows: int, k_cols: int, iters: int = FIT_ITERS):
    """Deterministic alternating co-clustering -> (row_assign, k_rows, col_assign, k_cols)."""
    rows, cols = u.shape
    k_rows, k_cols = min(k_rows, rows), min(k_cols, cols)
    ra = _spread_init(u, 1, k_rows) if k_rows > 1 else np.zeros(rows, dtype=np.int64)
    ca = _spread_init(u, 0, k_cols) if k_cols > 1 else np.zeros(cols, dtype=np.int64)
    # with one cluster on the other axis the histograms never change: compute them once
    row_hist = _joint_hist(u, ca, 1, 0) if k_rows > 1 and k_cols == 1 else None
    col_hist = _joint_hist(u, ra, 1, 1) if k_cols > 1 and k_rows == 1 else None
    for _ in range(iters):
        changed = False
        if k_rows > 1:
            h = row_hist if row_hist is not None else _joint_hist(u, ca, k_cols, 0)
            new = _reassign(h, ra, k_rows)
            changed |= bool((new != ra).any())
            ra = new
        if k_cols > 1:
            h = col_hist if col_hist is not None else _joint_hist(u, ra, k_rows, 1)
            new = _reassign(h, ca, k_cols)
            changed |= bool((new != ca).any())
            ca = new
        if not changed:
            break
    ra, k_rows = _compact(ra)
    ca, k_cols = _compact(ca)
    return ra, k_rows, ca, k_cols


def _context_counts(u, ra, kr, ca, kc) -> np.ndarray:
    idx = ((ra[:, None] * kc + ca[None, :]) * ALPHABET + u).ravel()
    return np.bincount(idx, minlength=kr * kc * ALPHABET).reshape(kr * kc, ALPHABET)


def _assign_bits(assign: np.ndarray, k: int) -> float:
    if k == 1:
        return 0.0
    c = np.bincount(assign, minlength=k).astype(np.float64)
    c = c[c > 0]
    return float(-(c * np.log2(c / c.sum())).sum())


def choose_contexts(u: np.ndarray, configs=CONFIGS):
    """Pick the (K_rows, K_cols) clustering with the smallest estimated size in bits."""
    best = None
    for kr, kc in configs:
        if kr > MAX_CLUSTERS or kc > MAX_CLUSTERS:
            raise ValueError(f"at most {MAX_CLUSTERS} clusters per axis")
        ra, kr2, ca, kc2 = fit_contexts(u, kr, kc)
        counts = _context_counts(u, ra, kr2, ca, kc2)
        bits = 16.0 + _assign_bits(ra, kr2) + _assign_bits(ca, kc2)
        for c in counts:
            b, table_bytes = _table_bits(c)
            bits += b + 8 * table_bytes
        if best is None or bits < best[0]:
            best = (bits, ra, kr2, ca, kc2)
    return best[1:]


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


def encode(codes: list[np.ndarray], residual: bytes, level: int = 22, configs=CONFIGS) -> bytes:
    """rANS-code int6 matrices (int8 arrays [rows, cols], values in [-32, 31]) plus residual bytes."""
    side = bytearray()
    plan = []  # per tensor: list of (symbols - lo, freqs)
    for q in codes:
        if q.ndim != 2:
            raise ValueError(f"rans expects 2-D code matrices, got shape {q.shape}")
        u = q.astype(np.int64) + OFFSET
        if u.size and (u.min() < 0 or u.max() >= ALPHABET):
            raise ValueError("rans: int6 codes outside [-32, 31]")
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
            ri = np.nonzero(ra == r)[0]
            for c in range(kc):
                ci = np.nonzero(ca == c)[0]
                sym = u[np.ix_(ri, ci)].ravel()
                if sym.size == 0:
                    side += bytes([1, 0])
                    continue
                lo, hi = int(sym.min()), int(sym.max())
                f = quantize_freqs(np.bincount(sym - lo, minlength=hi - lo + 1))
                side += bytes([lo, hi]) + f.astype("<u2").tobytes()
                if hi > lo:  # a one-symbol context costs no bits (constriction rejects it anyway)
                    parts.append((sym - lo, f))
        plan.append(parts)
    side += residual
    coder = _constriction().stream.stack.AnsCoder()
    for parts in reversed(plan):
        for sym, f in reversed(parts):
            coder.encode_reverse(sym.astype(np.int32), _model(f))
    words = coder.get_compressed().astype("<u4")
    codec, blob = _compress_side(bytes(side), level)
    head = struct.pack("<BII", codec, len(blob), len(side))
    return head + blob + struct.pack("<I", len(words)) + words.tobytes()


def decode(payload: bytes, shapes: list[tuple[int, int]], residual_len: int) -> tuple[list[np.ndarray], bytes]:
    """Inverse of :func:`encode`; ``shapes`` and ``residual_len`` come from the validated header."""
    rd = _Reader(payload, "rans payload")
    codec, blob_len, side_len = struct.unpack("<BII", rd.take(9))
    max_side = residual_len + sum(2 + r + c + MAX_CLUSTERS ** 2 * (2 + 2 * ALPHABET) for r, c in shapes)
    if side_len > max_side:
        raise ValueError(f"rans payload: side data of {side_len} bytes exceeds the possible {max_side}")
    import brotli

    try:
        side_raw = _decompress_side(codec, rd.take(blob_len), side_len)
    except (zstandard.ZstdError, lzma.LZMAError, brotli.error) as e:
        raise ValueError(f"rans side data is corrupt ({e})") from None
    side = _Reader(side_raw, "rans side data")
    n_words = rd.u32()
    words = np.frombuffer(rd.take(4 * n_words), dtype="<u4").astype(np.uint32)
    if rd.pos != len(payload):
        raise ValueError(f"rans payload: {len(payload) - rd.pos} trailing bytes")

    plans = []
    for rows, cols in shapes:
        kr, kc = side.u8(), side.u8()
        if not (1 <= kr <= MAX_CLUSTERS and 1 <= kc <= MAX_CLUSTERS):
            raise ValueError(f"rans side data: bad cluster counts ({kr}, {kc})")
        ra = side.array(rows, "u1") if kr > 1 else np.zeros(rows, np.int64)
        ca = side.array(cols, "u1") if kc > 1 else np.zeros(cols, np.int64)
        if (ra.size and ra.max() >= kr) or (ca.size and ca.max() >= kc):
            raise ValueError("rans side data: cluster id out of range")
        parts = []
        for r in range(kr):
            ri = np.nonzero(ra == r)[0]
            for c in range(kc):
                ci = np.nonzero(ca == c)[0]
                lo, hi = side.u8(), side.u8()
                n = len(ri) * len(ci)
                if lo > hi:
                    if n:
                        raise ValueError("rans side data: empty model for a non-empty context")
                    continue
                if hi >= ALPHABET:
                    raise ValueError(f"rans side data: symbol range {lo}..{hi} outside the int6 alphabet")
                f = side.array(hi - lo + 1, "<u2")
                if n == 0 or f.sum() == 0:
                    raise ValueError("rans side data: model does not match its context")
                parts.append((ri, ci, lo, f))
        plans.append((rows, cols, parts))
    residual = side.take(residual_len)
    if side.pos != side_len:
        raise ValueError(f"rans side data: {side_len - side.pos} unexpected bytes")

    try:
        coder = _constriction().stream.stack.AnsCoder(words)
        out = []
        for rows, cols, parts in plans:
            u = np.zeros((rows, cols), dtype=np.int64)
            for ri, ci, lo, f in parts:
                if len(f) == 1:
                    u[np.ix_(ri, ci)] = lo
                    continue
                sym = coder.decode(_model(f), len(ri) * len(ci))
                u[np.ix_(ri, ci)] = np.asarray(sym, dtype=np.int64).reshape(len(ri), len(ci)) + lo
            out.append((u - OFFSET).astype(np.int8))
        empty = coder.is_empty()
    except (ValueError, RuntimeError, TypeError, OverflowError) as e:
        raise ValueError(f"rans payload: ANS stream is corrupt ({e})") from None
    if not empty:
        raise ValueError("rans payload: ANS stream has data left after the last symbol")
    return out, residual
