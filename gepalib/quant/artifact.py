"""The int6 artifact: a versioned, checksummed container without pickle (SPEC §4, issue 5).

File layout (integers little-endian)::

    offset 0    8 bytes   magic b"\\x89GEPA6\\r\\n"
    offset 8    u32       format version (FORMAT_VERSION)
    offset 12   u32       header length H (<= MAX_HEADER_BYTES)
    offset 16   32 bytes  sha256 of the header bytes
    offset 48   H bytes   header: one UTF-8 JSON object
    offset 48+H           payload: exactly ``payload_len`` bytes, then end of file

Header keys: ``format`` ("gepalib-int6"), ``format_version``, ``quant_scheme``
("int6_per_row_gptq_lite"), ``quant_mode`` (faithful | per_row), ``candidates``
(the 15 percentiles), ``compressor`` (zstd | lzma | brotli | rans | none),
``level``, ``packing`` (none | shuffle | pack6 | shuffle_pack6), ``raw_len`` (the
canonical uncompressed payload), ``content_sha256`` (sha256 of the tensor table's
canonical JSON, a zero byte, then the raw payload: binds the layout to the data),
``payload_len`` and ``payload_sha256`` (the bytes on disk), ``tensors`` (the table below),
``library`` (versions, informational) and ``meta`` (free JSON, e.g. the model config).

Tensor table, in state-dict order; each entry has ``name``, ``kind``, ``shape``
(the original shape) and ``dtype`` (the original dtype):

* ``kind="int6"``: also ``rows``, ``cols`` (rows = shape[0], or 1 for a 1-D
  tensor), ``percentile`` (faithful mode; null in per_row mode) and
  ``row_choice`` (true in per_row mode);
* ``kind="raw"``: also ``stored`` (the dtype of the stored bytes).

Canonical raw payload = four groups, each in table order: the codes of every
int6 tensor (int8, rows*cols, row-major); their scales (fp16, rows); their
per-row candidate indices (uint8, rows; per_row mode only); the passthrough
tensors (the stored dtype's bytes, bf16 as its 16-bit pattern, bool as uint8
0/1). Like the submission's torch.save of separate dicts, codes are not
interleaved with floats, which byte compressors punish. The layout follows from
the table alone; nothing in it is an offset that could disagree.

Packing (a bijection on the raw payload, section by section): ``shuffle``
splits multi-byte sections into byte planes; ``pack6`` stores four int6 codes
(q+32) in three bytes (zero padded); ``shuffle_pack6`` does both. Compressors:
zstd (level ``zstd_level``), lzma preset 9, brotli quality 11, ``none`` (stored),
and ``rans`` (:mod:`gepalib.quant.entropy`: codes by rANS, everything else as a
zstd/lzma/brotli side stream; packing none or shuffle).

Loading (:func:`load_artifact`) never unpickles and never executes anything:
it checks magic, version, lengths against the file size, the header checksum,
every header field, the payload checksum, decompresses into a buffer whose size
the header fixes in advance, checks the content checksum and then the values
(codes in [-32, 31], finite positive scales). Any failure is a ValueError
naming the file and what is wrong.
"""
from __future__ import annotations

import hashlib
import json
import lzma
import math
import os
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import gepalib
from gepalib.config import QuantConfig
from gepalib.quant.gptq import (CANDIDATES, QMAX, QMIN, QUANT_MODES, TORCH_DTYPES, PTensor, QTensor,
                           QuantizedModel, dequantize, dtype_name, entropy_bounds)

MAGIC = b"\x89GEPA6\r\n"
FORMAT_VERSION = 1
PREFIX = struct.Struct("<8sII32s")  # magic, version, header length, header sha256
MAX_HEADER_BYTES = 8 << 20
MAX_RAW_BYTES = 1 << 30
MAX_FILE_BYTES = 1 << 30
MAX_TENSORS = 100_000
MAX_NDIM = 8
COMPRESSORS = ("zstd", "lzma", "brotli", "rans", "none")
PACKINGS = ("none", "shuffle", "pack6", "shuffle_pack6")
LZMA_PRESET = 9
BROTLI_QUALITY = 11
SIZE_LIMIT = 16_000_000  # challenge rule: code bytes + compressed model bytes (decimal)

# storage dtype name -> numpy little-endian dtype of its bytes
NP_DTYPES = {"float32": "<f4", "float16": "<f2", "bfloat16": "<u2", "float64": "<f8", "int8": "i1",
             "uint8": "u1", "int16": "<i2", "int32": "<i4", "int64": "<i8", "bool": "u1"}
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


# ---------------------------------------------------------------------------
# Sections of the canonical raw payload


@dataclass(frozen=True)
class Section:
    tensor: str
    role: str  # q | scale | choice | raw
    dtype: str  # storage dtype name
    shape: tuple[int, ...]  # q: (rows, cols); others: their element shape

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return np.dtype(NP_DTYPES[self.dtype]).itemsize

    @property
    def nbytes(self) -> int:
        return self.count * self.itemsize


ROLE_ORDER = ("q", "scale", "choice", "raw")


def sections_of(table: list[dict]) -> list[Section]:
    """Payload sections grouped by role (all codes, all scales, all row choices, all
    passthrough tensors), each group in table order. Grouping matters: zstd-22 on
    interleaved codes and floats is ~8% larger (measured on a gepa11-shaped model)."""
    out = []
    for t in table:
        if t["kind"] == "int6":
            r, c = t["rows"], t["cols"]
            out += [Section(t["name"], "q", "int8", (r, c)), Section(t["name"], "scale", "float16", (r,))]
            if t["row_choice"]:
                out.append(Section(t["name"], "choice", "uint8", (r,)))
        else:
            out.append(Section(t["name"], "raw", t["stored"], tuple(t["shape"])))
    return sorted(out, key=lambda s: ROLE_ORDER.index(s.role))  # stable: table order within a role


def _tensor_to_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous()
    name = dtype_name(t.dtype)
    if name == "bfloat16":
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    if name == "bool":
        return t.numpy().astype(np.uint8).tobytes()
    return t.numpy().astype(NP_DTYPES[name]).tobytes()


def _bytes_to_tensor(buf: bytes, dtype: str, shape: tuple[int, ...], what: str) -> torch.Tensor:
    a = np.frombuffer(buf, dtype=NP_DTYPES[dtype]).copy()
    if dtype == "bfloat16":
        t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    elif dtype == "bool":
        if a.size and a.max() > 1:
            raise ValueError(f"{what}: bool tensor holds values other than 0/1")
        t = torch.from_numpy(a.astype(np.bool_))
    else:
        t = torch.from_numpy(a.astype(a.dtype.newbyteorder("=")))
    return t.reshape(shape)


def tensor_table(qm: QuantizedModel) -> list[dict]:
    table = []
    for name, e in qm.entries.items():
        if isinstance(e, QTensor):
            table.append({"name": name, "kind": "int6", "shape": list(e.shape), "dtype": e.dtype,
                          "rows": e.rows, "cols": int(e.q.shape[1]), "percentile": e.percentile,
                          "row_choice": e.row_choice is not None})
        else:
            table.append({"name": name, "kind": "raw", "shape": list(e.data.shape), "dtype": e.dtype,
                          "stored": dtype_name(e.data.dtype)})
    return table


def _section_tensor(qm: QuantizedModel, s: Section) -> torch.Tensor:
    e = qm.entries[s.tensor]
    if s.role == "q":
        return e.q.to(torch.int8)
    if s.role == "scale":
        return e.scale.to(torch.float16)
    if s.role == "choice":
        return e.row_choice.to(torch.uint8)
    return e.data


def raw_payload(qm: QuantizedModel) -> bytes:
    """The canonical uncompressed payload (see the module docstring)."""
    return b"".join(_tensor_to_bytes(_section_tensor(qm, s)) for s in sections_of(tensor_table(qm)))


def _split(raw: bytes, sections: list[Section]) -> list[bytes]:
    out, pos = [], 0
    for s in sections:
        out.append(raw[pos:pos + s.nbytes])
        pos += s.nbytes
    return out


# ---------------------------------------------------------------------------
# Packing


def pack6(codes: bytes) -> bytes:
    """int8 codes in [-32, 31] -> 4 codes (q+32) per 3 bytes, zero padded."""
    u = (np.frombuffer(codes, dtype=np.int8).astype(np.int32) - QMIN).astype(np.uint32)
    u = np.concatenate([u, np.zeros((-len(u)) % 4, np.uint32)]).reshape(-1, 4)
    w = u[:, 0] | (u[:, 1] << 6) | (u[:, 2] << 12) | (u[:, 3] << 18)
    return np.stack([w & 0xFF, (w >> 8) & 0xFF, (w >> 16) & 0xFF], axis=1).astype(np.uint8).tobytes()


def unpack6(packed: bytes, count: int) -> bytes:
    b = np.frombuffer(packed, dtype=np.uint8).astype(np.uint32).reshape(-1, 3)
    w = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
    u = np.stack([(w >> s) & 63 for s in (0, 6, 12, 18)], axis=1).ravel()
    if u[count:].any():
        raise ValueError("pack6 padding is not zero")
    return (u[:count].astype(np.int32) + QMIN).astype(np.int8).tobytes()


def shuffle(b: bytes, itemsize: int) -> bytes:
    return np.frombuffer(b, dtype=np.uint8).reshape(-1, itemsize).T.tobytes()


def unshuffle(b: bytes, itemsize: int) -> bytes:
    return np.frombuffer(b, dtype=np.uint8).reshape(itemsize, -1).T.tobytes()


def _packed_size(s: Section, packing: str) -> int:
    if s.role == "q" and "pack6" in packing:
        return (s.count + 3) // 4 * 3
    return s.nbytes


def pack(raw: bytes, sections: list[Section], packing: str) -> bytes:
    if packing == "none":
        return raw
    out = []
    for s, b in zip(sections, _split(raw, sections)):
        if s.role == "q" and "pack6" in packing:
            b = pack6(b)
        elif "shuffle" in packing and s.itemsize > 1:
            b = shuffle(b, s.itemsize)
        out.append(b)
    return b"".join(out)


def unpack(packed: bytes, sections: list[Section], packing: str) -> bytes:
    if len(packed) != sum(_packed_size(s, packing) for s in sections):
        raise ValueError("packed payload has the wrong length")
    if packing == "none":
        return packed
    out, pos = [], 0
    for s in sections:
        n = _packed_size(s, packing)
        b = packed[pos:pos + n]
        pos += n
        if s.role == "q" and "pack6" in packing:
            b = unpack6(b, s.count)
        elif "shuffle" in packing and s.itemsize > 1:
            b = unshuffle(b, s.itemsize)
        out.append(b)
    return b"".join(out)


# ---------------------------------------------------------------------------
# Compressors


def _check_method(compressor: str, packing: str) -> None:
    if compressor not in COMPRESSORS:
        raise ValueError(f"compressor must be one of {COMPRESSORS}, got {compressor!r}")
    if packing not in PACKINGS:
        raise ValueError(f"packing must be one of {PACKINGS}, got {packing!r}")
    if compressor == "rans" and "pack6" in packing:
        raise ValueError("the rans compressor codes int6 symbols itself; use packing none or shuffle")


def _compress_bytes(data: bytes, compressor: str, level: int) -> bytes:
    if compressor == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=level).compress(data)
    if compressor == "lzma":
        return lzma.compress(data, preset=LZMA_PRESET)
    if compressor == "brotli":
        import brotli

        return brotli.compress(data, quality=BROTLI_QUALITY)
    return data


def _decompress_bytes(data: bytes, compressor: str, size: int) -> bytes:
    """Decompress into at most size+1 bytes; the result must be exactly ``size`` bytes."""
    if compressor == "zstd":
        import zstandard

        try:
            declared = zstandard.frame_content_size(data)
        except zstandard.ZstdError as e:
            raise ValueError(f"zstd frame header is invalid ({e})") from None
        if declared not in (-1, size):
            raise ValueError(f"zstd frame declares {declared} bytes, the header says {size}")
        try:
            with zstandard.ZstdDecompressor().stream_reader(data) as r:
                out = r.read(size + 1)
        except zstandard.ZstdError as e:
            raise ValueError(f"zstd stream is corrupt ({e})") from None
    elif compressor == "lzma":
        d = lzma.LZMADecompressor()
        try:
            out = d.decompress(data, max_length=size + 1)
        except lzma.LZMAError as e:
            raise ValueError(f"lzma stream is corrupt ({e})") from None
        if len(out) == size and (not d.eof or d.unused_data):
            raise ValueError("lzma stream is incomplete or has trailing bytes")
    elif compressor == "brotli":
        import brotli

        d = brotli.Decompressor()
        try:
            out = d.process(data, output_buffer_limit=size + 1)
        except brotli.error as e:
            raise ValueError(f"brotli stream is corrupt ({e})") from None
        if len(out) == size and not d.is_finished():
            raise ValueError("brotli stream is incomplete")
    else:
        out = data
    if len(out) > size:
        raise ValueError(f"payload decompresses to more than the {size} bytes the header says")
    if len(out) < size:
        raise ValueError(f"payload decompresses to {len(out)} bytes, the header says {size}")
    return out


def encode_payload(raw: bytes, sections: list[Section], compressor: str, packing: str, level: int,
                   rans_configs: tuple | None = None) -> bytes:
    """raw payload -> bytes on disk. ``rans_configs``: (K_rows, K_cols) pairs the rans coder may
    try (default :data:`gepalib.quant.entropy.CONFIGS`; ``((1, 1),)`` = per-tensor models only)."""
    _check_method(compressor, packing)
    if compressor != "rans":
        return _compress_bytes(pack(raw, sections, packing), compressor, level)
    from gepalib.quant import entropy

    chunks = _split(raw, sections)
    codes = [np.frombuffer(b, dtype=np.int8).reshape(s.shape) for s, b in zip(sections, chunks) if s.role == "q"]
    rest = [(s, b) for s, b in zip(sections, chunks) if s.role != "q"]
    residual = pack(b"".join(b for _, b in rest), [s for s, _ in rest], packing)
    return entropy.encode(codes, residual, level, configs=rans_configs or entropy.CONFIGS)


def decode_payload(payload: bytes, sections: list[Section], compressor: str, packing: str) -> bytes:
    """bytes on disk -> raw payload (length fixed by ``sections``)."""
    _check_method(compressor, packing)
    if compressor != "rans":
        size = sum(_packed_size(s, packing) for s in sections)
        return unpack(_decompress_bytes(payload, compressor, size), sections, packing)
    from gepalib.quant import entropy

    shapes = [s.shape for s in sections if s.role == "q"]
    rest = [s for s in sections if s.role != "q"]
    codes, residual = entropy.decode(payload, shapes, sum(s.nbytes for s in rest))
    rest_bytes = iter(_split(unpack(residual, rest, packing), rest))
    code_iter = iter(codes)
    return b"".join(next(code_iter).tobytes() if s.role == "q" else next(rest_bytes) for s in sections)


# ---------------------------------------------------------------------------
# Writing


@dataclass
class ArtifactInfo:
    path: str
    file_bytes: int  # what counts as "model bytes" in the size rule
    header_bytes: int
    payload_bytes: int
    raw_bytes: int
    compressor: str
    packing: str
    num_params: int
    encode_seconds: float
    file_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _level(qcfg: QuantConfig) -> int:
    return {"zstd": qcfg.zstd_level, "lzma": LZMA_PRESET, "brotli": BROTLI_QUALITY,
            "rans": qcfg.zstd_level, "none": 0}[qcfg.compressor]


def _library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"gepalib": gepalib.__version__, "numpy": np.__version__}
    for pkg in ("zstandard", "brotli", "constriction"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def content_sha256(table: list[dict], raw: bytes) -> str:
    h = hashlib.sha256(json.dumps(table, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    h.update(b"\0")
    h.update(raw)
    return h.hexdigest()


def artifact_bytes(qm: QuantizedModel, qcfg: QuantConfig, meta: dict | None = None,
                   verify: bool = True) -> bytes:
    """Serialize a QuantizedModel to artifact bytes (pure). ``verify`` re-reads them."""
    _check_method(qcfg.compressor, qcfg.packing)
    table = tensor_table(qm)
    sections = sections_of(table)
    raw = raw_payload(qm)
    assert len(raw) == sum(s.nbytes for s in sections)
    payload = encode_payload(raw, sections, qcfg.compressor, qcfg.packing, _level(qcfg))
    header = {
        "format": "gepalib-int6", "format_version": FORMAT_VERSION,
        "quant_scheme": "int6_per_row_gptq_lite", "quant_mode": qm.quant_mode,
        "candidates": list(CANDIDATES), "compressor": qcfg.compressor, "level": _level(qcfg),
        "packing": qcfg.packing, "raw_len": len(raw), "content_sha256": content_sha256(table, raw),
        "payload_len": len(payload), "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "tensors": table, "library": _library_versions(), "meta": dict(meta or qm.meta or {}),
    }
    hb = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(hb) > MAX_HEADER_BYTES:
        raise ValueError(f"artifact header would be {len(hb)} bytes (max {MAX_HEADER_BYTES})")
    data = PREFIX.pack(MAGIC, FORMAT_VERSION, len(hb), hashlib.sha256(hb).digest()) + hb + payload
    if verify:
        back, _ = artifact_from_bytes(data, "<new artifact>")
        if raw_payload(back) != raw:
            raise RuntimeError("artifact did not roundtrip byte-exactly (codec bug)")
    return data


def save_artifact(qm: QuantizedModel, path: str | os.PathLike, qcfg: QuantConfig,
                  meta: dict | None = None) -> ArtifactInfo:
    """Write the artifact atomically (temp file + rename) and return its sizes."""
    from gepalib.fsio import atomic_write_bytes

    t0 = time.perf_counter()
    data = artifact_bytes(qm, qcfg, meta)
    seconds = time.perf_counter() - t0
    atomic_write_bytes(path, data)
    hlen = PREFIX.unpack_from(data)[2]
    return ArtifactInfo(path=str(path), file_bytes=len(data), header_bytes=PREFIX.size + hlen,
                        payload_bytes=len(data) - PREFIX.size - hlen,
                        raw_bytes=sum(s.nbytes for s in sections_of(tensor_table(qm))),
                        compressor=qcfg.compressor, packing=qcfg.packing, num_params=qm.num_params(),
                        encode_seconds=seconds, file_sha256=hashlib.sha256(data).hexdigest())


# ---------------------------------------------------------------------------
# Reading and validation


def _fail(src: str, msg: str) -> ValueError:
    return ValueError(f"{src}: {msg}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _validate_table(table: Any, quant_mode: str, src: str) -> list[dict]:
    if not isinstance(table, list) or len(table) > MAX_TENSORS:
        raise _fail(src, f"header 'tensors' must be a list of at most {MAX_TENSORS} entries")
    seen = set()
    for i, t in enumerate(table):
        where = f"header tensor #{i}"
        if not isinstance(t, dict):
            raise _fail(src, f"{where} is not an object")
        name = t.get("name")
        if not isinstance(name, str) or not name or name in seen:
            raise _fail(src, f"{where} has a missing, empty or duplicate name {name!r}")
        seen.add(name)
        where = f"header tensor {name!r}"
        shape = t.get("shape")
        if (not isinstance(shape, list) or len(shape) > MAX_NDIM
                or not all(_is_int(d) and 0 <= d <= MAX_RAW_BYTES for d in shape)):
            raise _fail(src, f"{where}: bad shape {shape!r}")
        if t.get("dtype") not in TORCH_DTYPES:
            raise _fail(src, f"{where}: unknown dtype {t.get('dtype')!r}")
        numel = math.prod(shape)
        if numel > MAX_RAW_BYTES:
            raise _fail(src, f"{where}: shape {shape} is too large")
        kind = t.get("kind")
        if kind == "int6":
            keys = {"name", "kind", "shape", "dtype", "rows", "cols", "percentile", "row_choice"}
            rows, cols = t.get("rows"), t.get("cols")
            exp_rows = (shape[0] if len(shape) >= 2 else 1) if numel else None
            if not (_is_int(rows) and _is_int(cols)) or rows * cols != numel or (
                    exp_rows is not None and rows != exp_rows) or numel == 0:
                raise _fail(src, f"{where}: rows x cols = {rows} x {cols} does not match shape {shape}")
            if t["dtype"] not in FLOAT_DTYPES:
                raise _fail(src, f"{where}: int6 tensor with non-float dtype {t['dtype']}")
            if quant_mode == "faithful":
                if t.get("percentile") not in CANDIDATES or t.get("row_choice") is not False:
                    raise _fail(src, f"{where}: faithful mode needs a percentile from the candidates "
                                     f"and no row choices, got {t.get('percentile')!r}")
            elif t.get("percentile") is not None or t.get("row_choice") is not True:
                raise _fail(src, f"{where}: per_row mode needs row choices and no percentile")
        elif kind == "raw":
            keys = {"name", "kind", "shape", "dtype", "stored"}
            stored = t.get("stored")
            if stored not in NP_DTYPES:
                raise _fail(src, f"{where}: unknown stored dtype {stored!r}")
            if (t["dtype"] in FLOAT_DTYPES) != (stored in FLOAT_DTYPES) or (
                    t["dtype"] not in FLOAT_DTYPES and stored != t["dtype"]):
                raise _fail(src, f"{where}: stored dtype {stored} cannot hold a {t['dtype']} tensor")
        else:
            raise _fail(src, f"{where}: unknown kind {kind!r}")
        if set(t) != keys:
            raise _fail(src, f"{where}: unexpected or missing keys {sorted(set(t) ^ keys)}")
    return table


def _validate_header(h: Any, src: str) -> dict:
    if not isinstance(h, dict):
        raise _fail(src, "header is not a JSON object")
    need = {"format", "format_version", "quant_scheme", "quant_mode", "candidates", "compressor", "level",
            "packing", "raw_len", "content_sha256", "payload_len", "payload_sha256", "tensors", "library", "meta"}
    if set(h) != need:
        raise _fail(src, f"header keys differ from the format: {sorted(set(h) ^ need)}")
    if h["format"] != "gepalib-int6" or h["format_version"] != FORMAT_VERSION:
        raise _fail(src, f"header says format {h['format']!r} v{h['format_version']!r}")
    if h["quant_scheme"] != "int6_per_row_gptq_lite" or h["quant_mode"] not in QUANT_MODES:
        raise _fail(src, f"unknown quantization {h['quant_scheme']!r}/{h['quant_mode']!r}")
    if h["candidates"] != list(CANDIDATES):
        raise _fail(src, "header candidate percentiles differ from SPEC §4")
    if h["compressor"] not in COMPRESSORS or h["packing"] not in PACKINGS or not _is_int(h["level"]):
        raise _fail(src, f"unknown compressor/packing {h['compressor']!r}/{h['packing']!r}")
    try:
        _check_method(h["compressor"], h["packing"])
    except ValueError as e:
        raise _fail(src, str(e)) from None
    for k in ("raw_len", "payload_len"):
        if not _is_int(h[k]) or not 0 <= h[k] <= MAX_RAW_BYTES:
            raise _fail(src, f"header {k}={h[k]!r} is out of range (max {MAX_RAW_BYTES})")
    for k in ("content_sha256", "payload_sha256"):
        if not (isinstance(h[k], str) and len(h[k]) == 64 and all(c in "0123456789abcdef" for c in h[k])):
            raise _fail(src, f"header {k} is not a sha256 hex digest")
    if not isinstance(h["meta"], dict) or not isinstance(h["library"], dict):
        raise _fail(src, "header meta/library must be objects")
    table = _validate_table(h["tensors"], h["quant_mode"], src)
    total = sum(s.nbytes for s in sections_of(table))
    if total != h["raw_len"]:
        raise _fail(src, f"tensor table needs {total} raw bytes but header raw_len is {h['raw_len']}")
    return h


def _reject_constant(name: str):
    raise ValueError(f"non-finite JSON number {name}")


def parse_header(data: bytes, src: str = "<bytes>") -> tuple[dict, int]:
    """Check the fixed prefix and the header; returns (header, payload offset)."""
    if len(data) < PREFIX.size:
        if not MAGIC.startswith(bytes(data[:len(MAGIC)])):
            raise _fail(src, "not a gepalib artifact (bad magic bytes)")
        raise _fail(src, f"truncated: {len(data)} bytes, shorter than the {PREFIX.size}-byte prefix")
    magic, version, hlen, hsha = PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise _fail(src, "not a gepalib artifact (bad magic bytes)")
    if version != FORMAT_VERSION:
        raise _fail(src, f"unsupported artifact format version {version} (this gepalib reads "
                         f"version {FORMAT_VERSION})")
    if hlen > MAX_HEADER_BYTES:
        raise _fail(src, f"header length {hlen} exceeds the maximum {MAX_HEADER_BYTES}")
    if PREFIX.size + hlen > len(data):
        raise _fail(src, f"truncated: header needs {hlen} bytes, file has {len(data) - PREFIX.size} after the prefix")
    hb = bytes(data[PREFIX.size:PREFIX.size + hlen])
    if hashlib.sha256(hb).digest() != hsha:
        raise _fail(src, "header checksum mismatch (the file is corrupted)")
    try:
        header = json.loads(hb.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _fail(src, f"header is not valid JSON ({e})") from None
    return _validate_header(header, src), PREFIX.size + hlen


def artifact_from_bytes(data: bytes, src: str = "<bytes>") -> tuple[QuantizedModel, dict]:
    """Validate and decode artifact bytes -> (QuantizedModel, header)."""
    header, off = parse_header(data, src)
    end = off + header["payload_len"]
    if len(data) < end:
        raise _fail(src, f"truncated: payload needs {header['payload_len']} bytes, file has {len(data) - off}")
    if len(data) > end:
        raise _fail(src, f"{len(data) - end} unexpected bytes after the payload")
    payload = bytes(data[off:end])
    if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
        raise _fail(src, "payload checksum mismatch (the file is corrupted)")
    table = header["tensors"]
    sections = sections_of(table)
    try:
        raw = decode_payload(payload, sections, header["compressor"], header["packing"])
    except ValueError as e:
        raise _fail(src, str(e)) from None
    if len(raw) != header["raw_len"] or content_sha256(table, raw) != header["content_sha256"]:
        raise _fail(src, "content checksum mismatch: the tensor table does not describe the decoded "
                         "payload (header edited, corruption, or a different codec version)")
    return _build_model(raw, table, sections, header, src), header


def _build_model(raw: bytes, table: list[dict], sections: list[Section], header: dict, src: str) -> QuantizedModel:
    chunk = {(s.tensor, s.role): b for s, b in zip(sections, _split(raw, sections))}
    qm = QuantizedModel(quant_mode=header["quant_mode"], meta=header["meta"])
    for t in table:
        name, shape = t["name"], tuple(t["shape"])
        if t["kind"] == "int6":
            r, c = t["rows"], t["cols"]
            q = _bytes_to_tensor(chunk[name, "q"], "int8", (r, c), src)
            scale = _bytes_to_tensor(chunk[name, "scale"], "float16", (r,), src)
            if q.numel() and (int(q.min()) < QMIN or int(q.max()) > QMAX):
                raise _fail(src, f"tensor {name!r}: int6 codes outside [{QMIN}, {QMAX}]")
            if not (torch.isfinite(scale).all() and (scale > 0).all()):
                raise _fail(src, f"tensor {name!r}: scales must be finite and positive")
            choice = None
            if t["row_choice"]:
                choice = _bytes_to_tensor(chunk[name, "choice"], "uint8", (r,), src)
                if r and int(choice.max()) >= len(CANDIDATES):
                    raise _fail(src, f"tensor {name!r}: row choice index out of range")
            qm.entries[name] = QTensor(q, scale, shape, t["dtype"], percentile=t["percentile"], row_choice=choice)
        else:
            data = _bytes_to_tensor(chunk[name, "raw"], t["stored"], shape, f"{src}: tensor {name!r}")
            qm.entries[name] = PTensor(data, t["dtype"])
    return qm


def read_artifact_bytes(path: str | os.PathLike) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"artifact not found: {p}")
    size = p.stat().st_size
    if size > MAX_FILE_BYTES:
        raise _fail(str(p), f"file is {size} bytes, larger than the {MAX_FILE_BYTES}-byte limit")
    with open(p, "rb") as f:
        return f.read(MAX_FILE_BYTES + 1)


def load_artifact(path: str | os.PathLike) -> QuantizedModel:
    """Read and fully validate an artifact (never unpickles, never runs code)."""
    return artifact_from_bytes(read_artifact_bytes(path), str(path))[0]


def read_artifact_header(path: str | os.PathLike) -> dict:
    """The validated header of an artifact (payload not decoded)."""
    data = read_artifact_bytes(path)
    return parse_header(data, str(path))[0]


def load_artifact_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """load_artifact + dequantize: a state dict with the original dtypes."""
    return dequantize(load_artifact(path))


# ---------------------------------------------------------------------------
# Reports and size accounting


REPORT_METHODS_FULL = [(c, p) for c in ("zstd", "lzma", "brotli") for p in PACKINGS] + \
                      [("rans", "none"), ("rans", "shuffle")]
REPORT_METHODS_FAST = [("zstd", "none"), ("rans", "shuffle")]


def method_name(compressor: str, packing: str, zstd_level: int = 22) -> str:
    lvl = {"zstd": f"-{zstd_level}", "lzma": f"-{LZMA_PRESET}", "brotli": f"-{BROTLI_QUALITY}"}.get(compressor, "")
    return f"{compressor}{lvl}/{packing}"


def _measure(job: tuple) -> tuple[str, dict]:
    raw, sections, comp, packing, zstd_level = job
    t0 = time.perf_counter()
    payload = encode_payload(raw, sections, comp, packing, zstd_level)
    t1 = time.perf_counter()
    back = decode_payload(payload, sections, comp, packing)
    t2 = time.perf_counter()
    if back != raw:
        raise RuntimeError(f"{comp}/{packing} did not roundtrip")
    return method_name(comp, packing, zstd_level), {
        "compressor": comp, "packing": packing, "bytes": len(payload),
        "compress_seconds": t1 - t0, "decompress_seconds": t2 - t1}


def compression_report(qm: QuantizedModel, methods: str | list = "full", zstd_level: int = 22,
                       workers: int = 1) -> dict:
    """Raw bytes, compressed payload bytes and times per method, and both entropy bounds.

    ``methods``: "full" (zstd-22, lzma-9, brotli-11 x every packing, and rans),
    "fast" (zstd and rans only) or a list of (compressor, packing) pairs. Every
    payload is decoded again and checked byte-exact. ``workers > 1`` measures the
    methods in parallel processes (one method per process)."""
    if isinstance(methods, str):
        if methods not in ("full", "fast"):
            raise ValueError(f"methods must be 'full', 'fast' or a list of (compressor, packing), got {methods!r}")
        pairs = REPORT_METHODS_FULL if methods == "full" else REPORT_METHODS_FAST
    else:
        pairs = [tuple(p) for p in methods]
    for comp, packing in pairs:
        _check_method(comp, packing)
    sections = sections_of(tensor_table(qm))
    raw = raw_payload(qm)
    bounds = entropy_bounds(qm)
    jobs = [(raw, sections, comp, packing, zstd_level) for comp, packing in pairs]
    if workers > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as ex:
            rows = dict(ex.map(_measure, jobs))
    else:
        rows = dict(map(_measure, jobs))
    for r in rows.values():
        r["vs_per_tensor_bound"] = r["bytes"] / bounds["per_tensor_bound_bytes"] - 1.0
        r["vs_per_row_bound"] = r["bytes"] / bounds["per_row_bound_bytes"] - 1.0
    best = min(rows, key=lambda k: rows[k]["bytes"]) if rows else None
    return {"raw_bytes": len(raw), "num_params": qm.num_params(), "quant_mode": qm.quant_mode,
            "bounds": {k: v for k, v in bounds.items() if k != "tensors"},
            "methods": rows, "best": best}


CODE_FILES = ("gepalib/__init__.py", "gepalib/config.py", "gepalib/model.py", "gepalib/quant/__init__.py",
              "gepalib/quant/gptq.py", "gepalib/quant/artifact.py")


def code_bytes(compressor: str = "zstd") -> dict:
    """gepalib's "code bytes": UTF-8 bytes of the sources needed to load and run an artifact.

    The files are ``CODE_FILES`` (package init, config, model, quantizer, container)
    plus ``gepalib/entropy.py`` when the artifact uses the rans compressor. Training,
    evaluation and TTT code is not counted (the challenge counts one script that does
    everything; see ``package_bytes`` for the whole package, for comparison)."""
    root = Path(__file__).resolve().parents[2]
    files = list(CODE_FILES) + (["gepalib/quant/entropy.py"] if compressor == "rans" else [])
    sizes = {}
    for f in files:
        b = (root / f).read_bytes()
        b.decode("utf-8")  # must be UTF-8
        sizes[f] = len(b)
    package = sum(len(p.read_bytes()) for p in sorted((root / "gepalib").rglob("*.py")))
    return {"files": sizes, "total": sum(sizes.values()), "package_bytes": package,
            "definition": "UTF-8 bytes of the gepalib sources needed to load and run the artifact"}


def size_ledger(model_bytes: int, code_bytes: int | dict) -> dict:
    """Challenge size rule: code bytes + compressed model bytes <= 16,000,000 (decimal)."""
    cb = code_bytes["total"] if isinstance(code_bytes, dict) else int(code_bytes)
    total = int(model_bytes) + cb
    return {"model_bytes": int(model_bytes), "code_bytes": cb, "total_bytes": total,
            "limit_bytes": SIZE_LIMIT, "headroom_bytes": SIZE_LIMIT - total, "fits": total <= SIZE_LIMIT}


def kv_lines(d: dict, prefix: str = "") -> list[str]:
    """Flat ``key:value`` lines (greppable) for the scalar entries of a dict."""
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += kv_lines(v, f"{prefix}{k}.")
        elif isinstance(v, float):
            out.append(f"{prefix}{k}:{v:.6g}")
        elif isinstance(v, (int, str, bool)) or v is None:
            out.append(f"{prefix}{k}:{v}")
    return out
