"""Contexts of the rans coder: frequency tables and the row/column co-clustering.

A context is (row cluster, column cluster) of one int6 matrix: rows and columns
are co-clustered by their symbol histograms so that rows with a different
spread (or columns with outlier input channels) get their own distribution. Per
tensor the cheapest of a few cluster counts (K_rows, K_cols) is chosen by its
exact code length plus the cost of describing the models; (1, 1) is plain
per-tensor coding. :mod:`gepalib.quant.entropy` codes the symbols.

Symbols are ``q + 32`` in 0..63 (any integer array; the coder passes uint8).
"""
from __future__ import annotations

import numpy as np

ALPHABET = 64
OFFSET = 32
MAX_CLUSTERS = 16
FREQ_TOTAL = 65535  # u16 frequency tables
# (K_rows, K_cols) tried per tensor; (1, 1) is per-tensor coding.
CONFIGS = ((1, 1), (2, 1), (4, 1), (8, 1), (16, 1), (1, 2), (1, 4), (1, 8), (2, 2), (4, 4))
FIT_ITERS = 6
BLOCK = 1 << 22  # entries per histogram tile: bounds the working memory whatever the shape


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
#
# Histograms are built in tiles of at most BLOCK entries, so the clustering needs a
# few bytes per code whatever the matrix shape (a [64, 10^7] matrix would otherwise
# need a [10^7, 16, 64] int64 column histogram). Counts are exact integers and every
# per-item cost is the same dot product whatever block it falls in, so the result
# does not depend on the tiling.


def _tiles(rows: int, cols: int):
    """(row slice, column slice) tiles of at most BLOCK entries (at least one)."""
    block = BLOCK
    rstep = max(1, block // max(cols, 1))
    cstep = cols if cols <= block else block
    for r0 in range(0, rows, rstep):
        for c0 in range(0, cols, max(cstep, 1)):
            yield slice(r0, min(r0 + rstep, rows)), slice(c0, min(c0 + cstep, cols))


def _spread_init(u: np.ndarray, axis: int, k: int) -> np.ndarray:
    """Split rows (axis=1) or columns (axis=0) into k equal groups by mean |code|."""
    total = np.zeros(u.shape[1 - axis], dtype=np.int64)
    for rs, cs in _tiles(*u.shape):
        part = np.abs(u[rs, cs].astype(np.int16) - OFFSET).sum(axis=axis, dtype=np.int64)
        total[rs if axis == 1 else cs] += part
    spread = total / u.shape[axis]  # == mean(|u - 32|): integer sums are exact in float64
    order = np.argsort(spread, kind="stable")
    assign = np.empty(len(spread), dtype=np.int64)
    assign[order] = (np.arange(len(spread)) * k) // len(spread)
    return assign


def _joint_hist(u: np.ndarray, assign_other: np.ndarray, k_other: int, axis: int) -> np.ndarray:
    """Counts [n_items, k_other, 64]: items are rows (axis=0) or columns (axis=1)."""
    if axis == 1:
        u = u.T
    n_items = u.shape[0]
    size = n_items * k_other * ALPHABET
    hist = np.zeros(size, dtype=np.int64)
    for rs, cs in _tiles(*u.shape):
        item = np.arange(rs.start, rs.stop, dtype=np.int64)[:, None]
        idx = ((item * k_other + assign_other[None, cs]) * ALPHABET + u[rs, cs]).ravel()
        hist += np.bincount(idx, minlength=size)
    return hist.reshape(n_items, k_other, ALPHABET)


def _context_counts(u, ra, kr, ca, kc) -> np.ndarray:
    size = kr * kc * ALPHABET
    counts = np.zeros(size, dtype=np.int64)
    for rs, cs in _tiles(*u.shape):
        idx = ((ra[rs, None] * kc + ca[None, cs]) * ALPHABET + u[rs, cs]).ravel()
        counts += np.bincount(idx, minlength=size)
    return counts.reshape(kr * kc, ALPHABET)


def _reassign(u: np.ndarray, axis: int, assign: np.ndarray, k: int, other: np.ndarray, k_other: int,
              hist: np.ndarray | None = None) -> np.ndarray:
    """Move each row (axis=0) or column (axis=1) to the cluster whose (smoothed) model codes it
    cheapest; ``other`` is the other axis's clustering, ``hist`` its :func:`_joint_hist` if known.
    A histogram larger than BLOCK entries is never built whole: the items go in blocks."""
    n_items = u.shape[axis]
    if hist is None and n_items * k_other * ALPHABET <= BLOCK:
        hist = _joint_hist(u, other, k_other, axis)
    if hist is not None:
        table = np.stack([hist[assign == c].sum(axis=0) for c in range(k)])
    elif axis == 0:
        table = _context_counts(u, assign, k, other, k_other).reshape(k, k_other, ALPHABET)
    else:
        table = _context_counts(u, other, k_other, assign, k).reshape(k_other, k, ALPHABET).transpose(1, 0, 2)
    table = table.astype(np.float64)
    table += 1.0 / ALPHABET
    logp = np.log2(table / table.sum(axis=2, keepdims=True))
    if hist is not None:
        return np.argmin(-np.einsum("ics,kcs->ik", hist.astype(np.float64), logp), axis=1)
    out = np.empty(n_items, dtype=np.int64)
    step = max(1, BLOCK // (k_other * ALPHABET))  # items per block: each histogram block <= BLOCK
    for i0 in range(0, n_items, step):
        sl = slice(i0, min(i0 + step, n_items))
        h = _joint_hist(u[sl] if axis == 0 else u[:, sl], other, k_other, axis)
        out[sl] = np.argmin(-np.einsum("ics,kcs->ik", h.astype(np.float64), logp), axis=1)
    return out


def _compact(assign: np.ndarray) -> tuple[np.ndarray, int]:
    used, inv = np.unique(assign, return_inverse=True)
    return inv.astype(np.int64), len(used)


def effective_clusters(k_rows: int, k_cols: int, rows: int, cols: int) -> tuple[int, int]:
    """The cluster counts :func:`fit_contexts` really tries: at most one cluster per item, and an
    axis is clustered only when each of its items holds at least 64 codes (rows need >= 64
    columns, columns >= 64 rows). Sparser histograms cannot tell 64-symbol models apart, and
    the rule keeps the clustering work at a few operations per code whatever the shape."""
    return (min(k_rows, rows) if cols >= ALPHABET else 1), (min(k_cols, cols) if rows >= ALPHABET else 1)


def fit_contexts(u: np.ndarray, k_rows: int, k_cols: int, iters: int = FIT_ITERS):
    """Deterministic alternating co-clustering -> (row_assign, k_rows, col_assign, k_cols)."""
    rows, cols = u.shape
    k_rows, k_cols = effective_clusters(k_rows, k_cols, rows, cols)
    ra = _spread_init(u, 1, k_rows) if k_rows > 1 else np.zeros(rows, dtype=np.int64)
    ca = _spread_init(u, 0, k_cols) if k_cols > 1 else np.zeros(cols, dtype=np.int64)
    # with one cluster on the other axis the histograms never change: compute them once (if small)
    row_hist = _joint_hist(u, ca, 1, 0) if k_rows > 1 and k_cols == 1 and rows * ALPHABET <= BLOCK else None
    col_hist = _joint_hist(u, ra, 1, 1) if k_cols > 1 and k_rows == 1 and cols * ALPHABET <= BLOCK else None
    for _ in range(iters):
        changed = False
        if k_rows > 1:
            new = _reassign(u, 0, ra, k_rows, ca, k_cols, row_hist)
            changed |= bool((new != ra).any())
            ra = new
        if k_cols > 1:
            new = _reassign(u, 1, ca, k_cols, ra, k_rows, col_hist)
            changed |= bool((new != ca).any())
            ca = new
        if not changed:
            break
    if k_rows > 1:
        ra, k_rows = _compact(ra)
    if k_cols > 1:
        ca, k_cols = _compact(ca)
    return ra, k_rows, ca, k_cols


def _assign_bits(assign: np.ndarray, k: int) -> float:
    if k == 1:
        return 0.0
    c = np.bincount(assign, minlength=k).astype(np.float64)
    c = c[c > 0]
    return float(-(c * np.log2(c / c.sum())).sum())


def choose_contexts(u: np.ndarray, configs=CONFIGS):
    """Pick the (K_rows, K_cols) clustering with the smallest estimated size in bits."""
    best, tried = None, set()
    for kr, kc in configs:
        if kr > MAX_CLUSTERS or kc > MAX_CLUSTERS:
            raise ValueError(f"at most {MAX_CLUSTERS} clusters per axis")
        eff = effective_clusters(kr, kc, *u.shape)
        if eff in tried:  # the same fit again: same bits, and ties keep the first
            continue
        tried.add(eff)
        ra, kr2, ca, kc2 = fit_contexts(u, *eff)
        counts = _context_counts(u, ra, kr2, ca, kc2)
        bits = 16.0 + _assign_bits(ra, kr2) + _assign_bits(ca, kc2)
        for c in counts:
            b, table_bytes = _table_bits(c)
            bits += b + 8 * table_bytes
        if best is None or bits < best[0]:
            best = (bits, ra, kr2, ca, kc2)
    return best[1:]


