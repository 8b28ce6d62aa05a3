"""The int6 artifact: a versioned, checksummed container without pickle (see docs/quantization.md).

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

The payload (raw layout, packing, compressors) is :mod:`gepalib.quant.container`.

Loading (:func:`load_artifact`) never unpickles and never executes anything:
it checks magic, version, lengths against the file size, the header checksum,
every header field -- the raw size the tensor table declares must equal
``raw_len`` and be at most :data:`~gepalib.quant.container.MAX_RAW_BYTES`, what a
16 MB artifact can plausibly hold -- the payload checksum, decompresses into a
buffer of exactly that declared size, checks the content checksum and then the
values (codes in [-32, 31], finite positive scales). Any failure is a ValueError
naming the file and what is wrong.
"""
from __future__ import annotations

import hashlib
import json
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
from gepalib.errors import DataError
from gepalib.fsio import atomic_write_bytes
from gepalib.quant.container import (BROTLI_QUALITY, COMPRESSORS, FLOAT_DTYPES, LZMA_PRESET, MAX_RAW_BYTES,
                                     NP_DTYPES, PACKINGS, SIZE_LIMIT, Section, bytes_to_tensor, check_declared,
                                     check_method, decode_payload, encode_payload, raw_payload, sections_of,
                                     split_sections, tensor_table)
from gepalib.quant.gptq import (CANDIDATES, QMAX, QMIN, QUANT_MODES, TORCH_DTYPES, PTensor, QTensor,
                                QuantizedModel, dequantize)

MAGIC = b"\x89GEPA6\r\n"
FORMAT_VERSION = 1
PREFIX = struct.Struct("<8sII32s")  # magic, version, header length, header sha256
MAX_HEADER_BYTES = 8 << 20
MAX_FILE_BYTES = PREFIX.size + MAX_HEADER_BYTES + MAX_RAW_BYTES  # payload_len <= MAX_RAW_BYTES too
MAX_TENSORS = 100_000
MAX_NDIM = 8


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
    check_method(qcfg.compressor, qcfg.packing)
    table = tensor_table(qm)
    sections = sections_of(table)
    check_declared(sections)  # before the raw payload is built
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


def _fail(src: str, msg: str) -> DataError:
    return DataError(f"{src}: {msg}")


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
            elif quant_mode == "sdclip":
                if t.get("percentile") is not None or t.get("row_choice") is not False:
                    raise _fail(src, f"{where}: sdclip mode has neither a percentile nor row choices")
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
        raise _fail(src, "header candidate percentiles differ from the quantizer's")
    if h["compressor"] not in COMPRESSORS or h["packing"] not in PACKINGS or not _is_int(h["level"]):
        raise _fail(src, f"unknown compressor/packing {h['compressor']!r}/{h['packing']!r}")
    try:
        check_method(h["compressor"], h["packing"])
    except ValueError as e:
        raise _fail(src, str(e)) from None
    for k in ("raw_len", "payload_len"):  # checked before the table: nothing is decompressed yet
        if not _is_int(h[k]) or not 0 <= h[k] <= MAX_RAW_BYTES:
            raise _fail(src, f"header {k}={h[k]!r} is out of range (max {MAX_RAW_BYTES}, more than a "
                             f"{SIZE_LIMIT}-byte artifact can plausibly hold)")
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
    chunk = {(s.tensor, s.role): b for s, b in zip(sections, split_sections(raw, sections))}
    qm = QuantizedModel(quant_mode=header["quant_mode"], meta=header["meta"])
    for t in table:
        name, shape = t["name"], tuple(t["shape"])
        if t["kind"] == "int6":
            r, c = t["rows"], t["cols"]
            q = bytes_to_tensor(chunk[name, "q"], "int8", (r, c), src)
            scale = bytes_to_tensor(chunk[name, "scale"], "float16", (r,), src)
            if q.numel() and (int(q.min()) < QMIN or int(q.max()) > QMAX):
                raise _fail(src, f"tensor {name!r}: int6 codes outside [{QMIN}, {QMAX}]")
            if not (torch.isfinite(scale).all() and (scale > 0).all()):
                raise _fail(src, f"tensor {name!r}: scales must be finite and positive")
            choice = None
            if t["row_choice"]:
                choice = bytes_to_tensor(chunk[name, "choice"], "uint8", (r,), src)
                if r and int(choice.max()) >= len(CANDIDATES):
                    raise _fail(src, f"tensor {name!r}: row choice index out of range")
            qm.entries[name] = QTensor(q, scale, shape, t["dtype"], percentile=t["percentile"], row_choice=choice)
        else:
            data = bytes_to_tensor(chunk[name, "raw"], t["stored"], shape, f"{src}: tensor {name!r}")
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
