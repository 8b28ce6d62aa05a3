"""Reproducible numbers: a fixed seed on a fixed machine with a fixed intra-op thread count gives
the same losses, weights, stage ledger and artifact bytes, whether the run is trained in-process
or launched under torchrun by gepalib.run.launch (which pins the thread count of its children
and records it, with the CPU and its kernel ISA, in env.json)."""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pytest
import torch

from gepalib import run
from gepalib.rundir import RunDir
from gepalib.run.pipeline import quantize_run
from gepalib.train import TIMING_KEYS, train

L = importlib.import_module("gepalib.run.launch")  # the module (gepalib.run.launch is also the function)
pytestmark = pytest.mark.timeout(600)


def quick_cfg(data_dir: Path):
    """The 'quick' scale, 6 steps with a warmdown, validated every 3 steps (EMA on)."""
    return run.with_length(run.base_config("tiny", "quick", str(data_dir)), 6, 0.5, 3, seed=7)


def numbers(rd: RunDir) -> dict:
    """Everything a run measured, less wall-clock timings."""
    rows = [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in rd.read_metrics()]
    stages = {name: {k: row[k] for k in ("val_bpb", "val_loss", "tokens", "bytes")}
              for name, row in rd.stages().items()}
    return {"metrics": rows, "stages": stages}


def same_tensors(a: Path, b: Path) -> bool:
    sa, sb = torch.load(a), torch.load(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def train_and_quantize(cfg, path: Path) -> RunDir:
    train(cfg, path)  # in this process: the test suite's one intra-op thread
    quantize_run(path, report="none", evaluate=True, log=lambda *_: None)
    return RunDir(path)


@pytest.fixture(scope="module")
def direct_runs(sotu_data_dir, tmp_path_factory):
    assert torch.get_num_threads() == 1  # tests/conftest.py
    cfg = quick_cfg(sotu_data_dir)
    root = tmp_path_factory.mktemp("det")
    return cfg, [train_and_quantize(cfg, root / name) for name in ("a", "b")]


def test_two_runs_with_the_same_seed_and_threads_are_identical(direct_runs):
    _, (a, b) = direct_runs
    na = numbers(a)
    assert [m["step"] for m in na["metrics"] if "val_bpb" in m] == [0, 3, 6]
    assert {"float_live", "float_ema", "int6_roundtrip"} <= set(na["stages"])
    assert na == numbers(b)
    assert same_tensors(a.ema_weights, b.ema_weights) and same_tensors(a.live_weights, b.live_weights)
    assert a.artifact.read_bytes() == b.artifact.read_bytes()


def test_launch_matches_the_direct_run_at_the_same_thread_count(direct_runs, tmp_path):
    cfg, (a, _) = direct_runs
    rd = run.launch(cfg, nproc=1, runs_root=tmp_path, stream=False, threads=1)
    run.ensure_artifact(rd, stream=False, threads=1)
    assert numbers(rd) == numbers(a)
    assert same_tensors(rd.ema_weights, a.ema_weights)
    assert rd.artifact.read_bytes() == a.artifact.read_bytes()
    # env.json says what it takes to reproduce the run
    env = json.loads(rd.env.read_text())
    assert env["torch_threads"] == 1 and env["numerics_env"]["OMP_NUM_THREADS"] == "1"
    assert env["torch"] == torch.__version__ and env["world_size"] == 1
    cpu = env["cpu"]
    assert cpu["model"] and env["device_name"] == cpu["model"]
    assert cpu["kernel_isa"] == torch.backends.cpu.get_cpu_capability()
    assert 1 <= cpu["usable_cores"] <= cpu["cores"]


def test_launch_pins_the_thread_count_of_its_children(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(L, "usable_cores", lambda: 16)
    assert [L.default_threads(n) for n in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    monkeypatch.setattr(L, "usable_cores", lambda: 2)
    assert [L.default_threads(n) for n in (1, 2)] == [2, 1]
    # the caller's OMP_NUM_THREADS wins over the default when it is a positive integer
    for bad in ("", "0", "-2", "two"):
        monkeypatch.setenv("OMP_NUM_THREADS", bad)
        assert L.default_threads(1) == 2, bad
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert L.default_threads(2) == 3
    # an explicit count beats the launch env, which beats the caller's environment
    assert L.resolve_threads(None, 1, {"OMP_NUM_THREADS": "5"}) == 5
    assert L.resolve_threads(4, 1, {"OMP_NUM_THREADS": "5"}) == 4
    assert L.resolve_threads(None, 1, None) == 3
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            L.resolve_threads(bad)
    # every child gets it explicitly, whatever the caller's environment says
    env = L._child_env({"X": "1"}, 2)
    assert env["OMP_NUM_THREADS"] == "2" and env["X"] == "1"
    assert os.environ["OMP_NUM_THREADS"] == "3"


def test_in_process_stages_run_with_the_asked_threads_and_restore_them():
    before = torch.get_num_threads()
    with L.intra_op_threads(2) as n:
        assert n == 2 and torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with L.intra_op_threads(None) as n:
        assert n == before == torch.get_num_threads()
    with pytest.raises(ValueError):
        with L.intra_op_threads(0):
            pass
    assert torch.get_num_threads() == before


def test_the_data_seed_changes_the_batches_and_nothing_else(sotu_data_dir, tmp_path):
    """Same init seed, two data orders: the same model at step 0 (same weights, same
    validation), different training batches (different losses from the first step)."""
    from gepalib.config import override

    base = run.with_length(run.base_config("tiny", "quick", str(sotu_data_dir)), 2, 0.5, 1, seed=7, vary_data=False)
    assert base.train.data_seed == -1 and run.with_length(base, 2, 0.5, 1, seed=7).train.data_seed == 7
    rows = {}
    for name, cfg in (("sub", base), ("shuf", override(base, data_seed=5))):
        train(cfg, tmp_path / name)
        rows[name] = RunDir(tmp_path / name).read_metrics()
        cfg_json = json.loads((tmp_path / name / "config.json").read_text())
        assert cfg_json["train"]["data_seed"] == cfg.train.data_seed  # part of what ran
    a, b = rows["sub"], rows["shuf"]
    v0 = [[m[k] for k in ("val_bpb", "val_loss") if k in m] for rs in (a, b) for m in rs if m["step"] == 0]
    assert v0[0] and v0[0] == v0[-1]  # same init: identical step-0 validation
    la = [m["train_loss"] for m in a if "train_loss" in m]
    lb = [m["train_loss"] for m in b if "train_loss" in m]
    assert la and len(la) == len(lb) and la[0] != lb[0]  # different first batch
