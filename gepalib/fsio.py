"""Atomic, checked file writes: a temp file in the same directory, fsynced, then renamed.

A killed process never leaves a half-written file under the final name (only a
``.<name>.*.tmp`` that :func:`remove_stale_temps` sweeps). A write that fails (disk full,
read-only file system, permission) raises :class:`WriteFailed` naming the final path.
JSON is strict: NaN or infinity anywhere is refused (naming where it is), since
``json.dumps`` would otherwise write the bare ``NaN`` that strict parsers reject.

Files written with ``checksum=True`` get a sidecar ``<name>.sha256.json`` (sha256 and
size), written before the file is renamed into place, so every file under its final name
has a checksum to be checked against: :func:`verify_file` (see docs/runs.md).
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from gepalib import faults
from gepalib.errors import DataError

CHECKSUM_SUFFIX = ".sha256.json"
TMP_SUFFIX = ".tmp"
REASONS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
           errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
           errno.EPERM: "operation not permitted", errno.EIO: "input/output error"}


class WriteFailed(OSError):
    """Writing ``filename`` failed (``errno``: ENOSPC, EROFS, EACCES, ...)."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {os_reason(self)}"


class DamagedFile(DataError):
    """A file does not match the checksum recorded when it was written."""


def os_reason(e: OSError) -> str:
    """A short cause for an OSError: 'no space left on device', 'read-only file system', ..."""
    return REASONS.get(e.errno, e.strerror or str(e))


def write_failed(e: OSError, path: str | os.PathLike) -> WriteFailed:
    """``e`` as a :class:`WriteFailed` naming ``path`` (the file the caller meant to write)."""
    if isinstance(e, WriteFailed):
        return e
    return WriteFailed(e.errno, e.strerror or os.strerror(e.errno or 0), str(path))


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def checksum_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def _write_temp(path: Path, data: bytes | memoryview) -> str:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        try:
            view = memoryview(data).cast("B")
            while view:  # os.write may write less than asked (a nearly full disk): go on until it raises
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, _umask_mode())  # mkstemp creates 0600; give the usual permissions
    except BaseException:
        _unlink(tmp)
        raise
    return tmp


def _unlink(p: str | os.PathLike) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview, *, checksum: bool = False) -> str | None:
    """Write ``data`` to ``path`` atomically; with ``checksum`` also its sidecar (returns the sha256)."""
    path = Path(path)
    digest = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _write_temp(path, data)
        try:
            if checksum:
                digest = hashlib.sha256(data).hexdigest()
                side = json.dumps({"file": path.name, "sha256": digest, "bytes": len(data)}, sort_keys=True)
                _replace(_write_temp(checksum_path(path), side.encode()), checksum_path(path))
            faults.on_write(path)
            _replace(tmp, path)
        except BaseException:
            _unlink(tmp)
            raise
    except WriteFailed:
        raise
    except OSError as e:
        raise write_failed(e, path) from e
    _fsync_dir(path.parent)
    return digest


def _replace(tmp: str, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps_strict(obj: Any, **kw: Any) -> str:
    """``json.dumps`` that refuses NaN/inf, naming where it is (``stages.int6_roundtrip.val_bpb``)."""
    try:
        return json.dumps(obj, allow_nan=False, default=json_default, **kw)
    except ValueError as e:
        where = nonfinite_path(obj)
        if where is None:
            raise
        raise ValueError(f"non-finite number at {where} ({e}); JSON has no NaN or infinity") from None


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    try:
        text = dumps_strict(obj, indent=2, sort_keys=True)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    atomic_write_text(path, text + "\n")


def nonfinite_path(obj: Any, prefix: str = "") -> str | None:
    """The dotted key of the first NaN/inf float in ``obj`` (None when there is none)."""
    if isinstance(obj, float) or (hasattr(obj, "item") and not isinstance(obj, (str, bytes))
                                  and getattr(obj, "ndim", 1) == 0):
        try:
            v = float(obj)
        except (TypeError, ValueError):
            return None
        return (prefix or "<value>") if not math.isfinite(v) else None
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for k, v in items:
        hit = nonfinite_path(v, f"{prefix}.{k}" if prefix else str(k))
        if hit is not None:
            return hit
    return None


def loads_strict(text: str, source: str = "<json>") -> Any:
    """``json.loads`` that refuses the non-standard NaN/Infinity constants."""
    def bad(c: str) -> Any:
        raise ValueError(f"{source}: non-standard JSON constant {c}")

    return json.loads(text, parse_constant=bad)


def atomic_torch_save(obj: Any, path: str | os.PathLike, *, checksum: bool = False) -> str | None:
    """torch.save through a temp file (load such files with ``weights_only=True``); with
    ``checksum`` a sidecar sha256 too (returned). Serialized in memory first, so a full disk
    fails as a WriteFailed (ENOSPC) rather than torch's zip writer's position error."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getbuffer(), checksum=checksum)


def file_sha256(path: str | os.PathLike) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def verify_file(path: str | os.PathLike) -> bool:
    """Check ``path`` against its sidecar checksum: True when it matches, False when no
    checksum was recorded (a file written without one); raises :class:`DamagedFile` on a
    mismatch, naming the file, the sizes and the digests."""
    path = Path(path)
    side = checksum_path(path)
    if not side.exists():
        return False
    try:
        rec = loads_strict(side.read_text(encoding="utf-8"), str(side))
        want, want_n = str(rec["sha256"]), int(rec["bytes"])
    except (ValueError, KeyError, TypeError) as e:
        raise DamagedFile(f"{path}: its checksum file {side.name} is unreadable ({e})") from None
    got, n = file_sha256(path)
    if got != want:
        size = f"{n} bytes, {want_n} written" + (" (truncated)" if n < want_n else "") if n != want_n else \
            f"{n} bytes as written"
        raise DamagedFile(f"{path}: sha256 mismatch ({size}; sha256 {got[:16]}... recorded {want[:16]}...): "
                          f"the file is damaged or was changed after it was written")
    return True


def remove_stale_temps(d: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files an interrupted writer left in ``d`` (call it only while
    holding the directory's lock: a live writer's temp files look the same). Returns them."""
    d = Path(d)
    if not d.is_dir():
        return []
    gone = []
    for p in d.iterdir():
        if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX) and p.is_file():
            _unlink(p)
            gone.append(p)
    return gone


def json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")
