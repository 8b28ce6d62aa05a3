"""Compression report and size accounting of int6 artifacts (see docs/quantization.md).

* :func:`compression_report` -- payload bytes and times of every compressor and
  packing against the per-tensor and per-row entropy bounds;
* :func:`code_bytes` -- gepalib's "code bytes": the sources needed to load and run an artifact
  (:func:`code_files`);
* :func:`size_ledger` -- the challenge rule code bytes + model bytes <= 16,000,000;
* :func:`kv_lines` -- greppable ``key:value`` lines.

Nothing here is needed to load an artifact, so this module is not part of the code bytes.
"""
from __future__ import annotations

import ast
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from gepalib.quant.container import (BROTLI_QUALITY, LZMA_PRESET, PACKINGS, SIZE_LIMIT, check_declared,
                                     check_method, decode_payload, encode_payload, raw_payload,
                                     sections_of, tensor_table)
from gepalib.quant.gptq import QuantizedModel, entropy_bounds

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
    methods in parallel processes (one method per process).

    A model whose raw payload exceeds :data:`~gepalib.quant.container.MAX_RAW_BYTES`
    (no artifact can hold it) is refused before any work. Each process keeps one
    method's buffers alive at a time and the entropy coder and bounds work in
    bounded blocks, so the report costs a small multiple of the raw payload per
    worker, whatever the tensor shapes."""
    if isinstance(methods, str):
        if methods not in ("full", "fast"):
            raise ValueError(f"methods must be 'full', 'fast' or a list of (compressor, packing), got {methods!r}")
        pairs = REPORT_METHODS_FULL if methods == "full" else REPORT_METHODS_FAST
    else:
        pairs = [tuple(p) for p in methods]
    for comp, packing in pairs:
        check_method(comp, packing)
    sections = sections_of(tensor_table(qm))
    check_declared(sections)
    raw = raw_payload(qm)
    bounds = entropy_bounds(qm)
    jobs = [(raw, sections, comp, packing, zstd_level) for comp, packing in pairs]
    if workers > 1 and len(jobs) > 1:
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


# Loading and running an artifact imports these modules (the reader, the model and
# whatever they import at module level); the rans decoder adds RANS_MODULES.
LOAD_MODULES = ("gepalib.quant.artifact", "gepalib.model")
RANS_MODULES = ("gepalib.quant.entropy",)
ROOT = Path(__file__).resolve().parents[2]


def _module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for f in (base / "__init__.py", base.with_suffix(".py")):
        if f.is_file():
            return f
    return None


def _import_time_imports(tree: ast.AST, package: str) -> set[str]:
    """gepalib modules a module imports when it is imported: module-level (and class-level)
    import statements, not those inside functions or ``if TYPE_CHECKING:`` blocks."""
    out: set[str] = set()
    todo = list(ast.iter_child_nodes(tree))
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                mod = ".".join(parts + ([mod] if mod else []))
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}  # kept only where a module of that name exists
        else:
            todo += list(ast.iter_child_nodes(node))
    return {m for m in out if m.split(".")[0] == "gepalib"}


def code_files(compressor: str = "zstd") -> list[str]:
    """Repository-relative paths of every gepalib source file that importing LOAD_MODULES
    (plus RANS_MODULES for the rans compressor) executes, parent packages' ``__init__.py``
    included, found by following import statements from those modules."""
    todo = list(LOAD_MODULES) + (list(RANS_MODULES) if compressor == "rans" else [])
    seen: dict[str, Path] = {}
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b, a.b.c
            mod = ".".join(parts[:i])
            f = _module_file(mod)
            if f is None or mod in seen:
                continue
            seen[mod] = f
            package = mod if f.name == "__init__.py" else mod.rpartition(".")[0]
            todo += sorted(_import_time_imports(ast.parse(f.read_bytes()), package))
    return sorted(str(f.relative_to(ROOT)) for f in seen.values())


def code_bytes(compressor: str = "zstd") -> dict:
    """gepalib's "code bytes": UTF-8 bytes of the sources needed to load and run an artifact.

    The files are :func:`code_files`: the artifact reader (header, payload container,
    quantizer), the model and its config, and the package inits, plus the entropy coder
    when the artifact uses the rans compressor. Training, evaluation, TTT and this
    report are not counted (the challenge counts one script that does everything; see
    ``package_bytes`` for the whole package, for comparison)."""
    sizes = {}
    for f in code_files(compressor):
        b = (ROOT / f).read_bytes()
        b.decode("utf-8")  # must be UTF-8
        sizes[f] = len(b)
    package = sum(len(p.read_bytes()) for p in sorted((ROOT / "gepalib").rglob("*.py")))
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
