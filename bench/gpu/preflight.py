"""The GPU check's preflight and compile observation (bench/gpu_check.py).

:func:`preflight` runs before any part: which optional imports exist (with versions), the CUDA
features the parts rely on (bf16, the flash SDPA kernel on the model's attention shape, triton
for inductor) and the free GPU memory. :func:`plan_parts` turns that into the parts to run and,
for each skipped one, the reason. :func:`simulate_missing` makes chosen packages unimportable (the
CPU test of a machine without them). :func:`observe_compile` compiles a function, first with
``fullgraph=True``, and reports graphs, graph breaks, recompiles and compile seconds from
``torch._dynamo``'s counters (guarded: a torch without them gives ``None``, never a crash).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import time
from typing import Any, Callable

import torch

# Packages the check may touch; True = a part cannot run without it (see PART_NEEDS).
PACKAGES = ("numpy", "tqdm", "sentencepiece", "zstandard", "papermill", "jupytext", "scipy", "psutil",
            "pandas", "matplotlib", "yaml", "triton")
# What each part needs: data (numpy writes the synthetic shards), a tokenizer file for the
# trainer (sentencepiece); zstandard only changes the artifact's compressor (noted, not skipped).
PART_NEEDS = {
    "sdpa": (),
    "train_compiled": ("numpy", "sentencepiece"),
    "train_eager": ("numpy", "sentencepiece"),
    "steps": ("numpy", "sentencepiece"),
    "resume": ("numpy", "sentencepiece"),
    "quant": ("numpy",),
    "eval": ("numpy",),
    "compile_probe": (),
}


class _Blocker(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """A spec without an origin (what torch's own probes take for "not installed") whose loading
    raises ModuleNotFoundError, as an import of an absent package does."""

    def __init__(self, names: set[str]):
        self.names = names

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r} (simulated by --simulate-missing)",
                                  name=spec.name)

    def exec_module(self, module):  # never reached: create_module raises
        raise ModuleNotFoundError(module.__name__)


SIMULATED: list[str] = []  # packages made unimportable by simulate_missing (recorded in the JSON)


def simulate_missing(names: list[str]) -> None:
    """Make ``names`` unimportable in this process (they are dropped from sys.modules too): for a
    fresh process, as the CPU test runs the check."""
    if not names:
        return
    SIMULATED.extend(names)
    for n in list(sys.modules):
        if n.split(".")[0] in names:
            del sys.modules[n]
    sys.meta_path.insert(0, _Blocker(set(names)))


def _version(name: str) -> str | None:
    try:
        if importlib.util.find_spec(name) is None:
            return None
        mod = importlib.import_module(name)
    except Exception:  # noqa: BLE001 -- a broken install counts as missing
        return None
    return str(getattr(mod, "__version__", "present"))


def flash_sdpa_ok(dev: torch.device, heads: int, kv_heads: int, head_dim: int, seq: int) -> tuple[bool, str]:
    """One bf16 causal SDPA call (forward and backward) of the model's attention shape with every
    kernel but flash disabled: does flash take it?"""
    if dev.type != "cuda":
        return False, "not CUDA"
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError as e:
        return False, f"torch.nn.attention.sdpa_kernel unavailable ({e})"
    try:
        q = torch.randn(1, heads, seq, head_dim, device=dev, dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(1, kv_heads, seq, head_dim, device=dev, dtype=torch.bfloat16)
        v = torch.randn_like(k)
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            gqa = {"enable_gqa": True} if kv_heads != heads else {}
            torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, **gqa).sum().backward()
        torch.cuda.synchronize(dev)
        return True, "flash ran (other kernels disabled)"
    except Exception as e:  # noqa: BLE001
        return False, f"{type(e).__name__}: {str(e)[:300]}"


def preflight(dev: torch.device, model_cfg: Any, seq_len: int) -> dict[str, Any]:
    """Imports, CUDA features and free memory (printed by the caller, stored in the JSON)."""
    imports = {n: _version(n) for n in PACKAGES}
    out: dict[str, Any] = {"imports": imports, "missing": sorted(n for n, v in imports.items() if v is None),
                           "simulated_missing": list(SIMULATED)}
    cuda: dict[str, Any] = {"available": dev.type == "cuda"}
    if dev.type == "cuda":
        free, total = torch.cuda.mem_get_info(dev)
        cuda.update(free_bytes=free, total_bytes=total, bf16=torch.cuda.is_bf16_supported(),
                    triton=imports["triton"] is not None,
                    flash_sdp_enabled=torch.backends.cuda.flash_sdp_enabled())
        hd = model_cfg.model_dim // model_cfg.num_heads
        cuda["flash_sdpa"], cuda["flash_sdpa_note"] = flash_sdpa_ok(dev, model_cfg.num_heads, model_cfg.num_kv_heads,
                                                                    hd, min(seq_len, 2048))
    out["cuda"] = cuda
    return out


def plan_parts(parts: list[str], pre: dict[str, Any], cuda: bool, compile_mode: str) -> tuple[list[str], dict]:
    """(parts to run, {skipped part: reason}) from the preflight."""
    run, skipped = [], {}
    for p in parts:
        lack = [n for n in PART_NEEDS.get(p, ()) if pre["imports"].get(n) is None]
        if lack:
            skipped[p] = f"{', '.join(lack)} not installed"
        elif p == "train_compiled" and not (compile_mode == "on" or (compile_mode == "auto" and cuda)):
            skipped[p] = "torch.compile off on CPU by default (--compile on to force)"
        elif p in ("train_compiled", "compile_probe") and cuda and pre["imports"].get("triton") is None:
            skipped[p] = "triton is not installed: torch.compile (inductor) cannot run"
        elif p == "sdpa" and not cuda:
            skipped[p] = "SDPA kernel selection is checked on CUDA only"
        else:
            run.append(p)
    return run, skipped


# ---------------------------------------------------------------------------
# Compilation observed


def dynamo_counters() -> dict[str, Any] | None:
    """A plain copy of torch._dynamo's counters, or None where this torch has none."""
    try:
        from torch._dynamo.utils import counters
    except Exception:  # noqa: BLE001
        return None
    return {k: dict(v) for k, v in counters.items()}


def _graphs(c: dict | None) -> int | None:
    return None if c is None else int((c.get("stats") or {}).get("unique_graphs", 0))


def _breaks(c: dict | None) -> tuple[int | None, list[str]]:
    if c is None:
        return None, []
    gb = c.get("graph_break") or {}
    return int(sum(gb.values())), [str(k)[:200] for k in list(gb)[:5]]


def reset_dynamo() -> None:
    try:
        torch._dynamo.reset()
        from torch._dynamo.utils import counters
        counters.clear()
    except Exception:  # noqa: BLE001
        pass


def observe_compile(fn: Callable, call: Callable[[Callable], Any], *, backend: str = "inductor",
                    sync: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Compile ``fn`` with ``fullgraph=True`` (falling back to ``fullgraph=False`` when that fails),
    run ``call(compiled)`` twice. First call: compile seconds, graphs and graph breaks; the second,
    same-shape call must add no graph (any it adds is counted as a recompile)."""
    out: dict[str, Any] = {"backend": backend}
    for fullgraph in (True, False):
        reset_dynamo()
        compiled = torch.compile(fn, fullgraph=fullgraph, dynamic=False, backend=backend)
        t0 = time.perf_counter()
        try:
            call(compiled)
            sync()
        except Exception as e:  # noqa: BLE001
            if fullgraph:
                out["fullgraph_error"] = f"{type(e).__name__}: {str(e)[:400]}"
                continue
            raise
        out["fullgraph"] = fullgraph
        out["fullgraph_held"] = fullgraph
        out["compile_s"] = time.perf_counter() - t0
        first = dynamo_counters()
        t1 = time.perf_counter()
        call(compiled)
        sync()
        out["second_call_s"] = time.perf_counter() - t1
        second = dynamo_counters()
        out["graphs"] = _graphs(first)
        out["graph_breaks"], out["graph_break_reasons"] = _breaks(first)
        g1, g2 = _graphs(first), _graphs(second)
        out["recompiles"] = None if g1 is None or g2 is None else g2 - g1
        return out
    return out
