"""torchrun launches of ``-m gepalib train`` on CPU (gloo): 2 processes, and 2 "nodes" on loopback.

The global batch is fixed in tokens, so 1 process (accumulation 2) and 2 processes
(accumulation 1) train the same math: the same token slices, gradients averaged
g0/2 + g1/2 vs (g0 + g1)/2 (exact in binary floating point), Muon's round-robin
orthogonalisation summed into one flat buffer. With the same intra-op thread count
(torchrun sets OMP_NUM_THREADS=1) the losses agree to float tolerance; on this
machine they are bit-identical.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gepalib.config import get_preset, override
from gepalib.rundir import RunDir
from gepalib.train import TIMING_KEYS, train

REPO = Path(__file__).resolve().parents[1]
MICRO = dict(num_layers=2, model_dim=64, num_heads=2, num_kv_heads=1, mlp_hidden=128, ve_layers=(1,),
             xsa_last_n=1, bigram_buckets=256, bigram_dim=16, ve_dim=16, rope_dims=8, seq_len=64,
             batch_tokens=512, micro_batch_tokens=256, val_tokens=2048, steps=16, warmdown=8,
             muon_momentum_warmup=8, val_every=8, log_every=4, checkpoint_every=8, progress="log")


def cli_flags(data_dir) -> list[str]:
    out = ["--preset", "tiny", "--data-dir", str(data_dir)]
    for k, v in MICRO.items():
        out += [f"--{k.replace('_', '-')}", ",".join(map(str, v)) if isinstance(v, tuple) else str(v)]
    return out


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    e.pop("CI", None)
    return e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def curve(rd: RunDir) -> list[tuple]:
    return [(r["step"], r.get("train_loss"), r.get("val_bpb"), r.get("val_bpb_ema")) for r in rd.read_metrics()]


def assert_same_curve(a: list[tuple], b: list[tuple], tol: float = 1e-5):
    assert [r[0] for r in a] == [r[0] for r in b]
    for ra, rb in zip(a, b):
        for x, y in zip(ra[1:], rb[1:]):
            assert (x is None) == (y is None)
            if x is not None:
                assert abs(x - y) <= tol * max(1.0, abs(x)), (ra, rb)


@pytest.fixture(scope="module")
def one_process_curve(sotu_data_dir, tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rd = RunDir(tmp_path_factory.mktemp("dist") / "one")
        train(override(get_preset("tiny"), data_dir=str(sotu_data_dir), **MICRO), rd.path)
    finally:
        torch.set_num_threads(n)
    return curve(rd)


@pytest.fixture(scope="module")
def two_process_run(sotu_data_dir, tmp_path_factory):
    rd = RunDir(tmp_path_factory.mktemp("dist") / "two")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "gepalib", "train", "--run-dir", str(rd.path)] + cli_flags(sotu_data_dir)
    p = subprocess.run(cmd, env=env(), cwd=REPO, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return rd, p


def test_two_processes_match_one_process(two_process_run, one_process_curve):
    rd, p = two_process_run
    env_json = rd.read_summary()["train"]
    assert env_json["world_size"] == 2 and env_json["accum"] == 1 and env_json["steps"] == 16
    assert_same_curve(curve(rd), one_process_curve)
    # rank 0 alone writes the log
    assert p.stdout.count("step:4/16 train_loss:") == 1
    assert rd.log.read_text().count("step:4/16 train_loss:") == 1


def two_nodes(run_dirs, data_dir) -> tuple[list[int], list[str]]:
    """Two torchrun agents (one process each, ``run_dirs[i]`` on "node" i) meeting through c10d
    rendezvous on 127.0.0.1. Returns their exit codes and outputs."""
    port = free_port()
    procs = []
    for run_dir in run_dirs:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"gepa-test-{port}",
               "-m", "gepalib", "train", "--run-dir", str(run_dir)] + cli_flags(data_dir)
        procs.append(subprocess.Popen(cmd, env=env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outs = []
    try:
        for pr in procs:
            outs.append(pr.communicate(timeout=240)[0])
    finally:
        for pr in procs:
            if pr.poll() is None:
                pr.kill()
    return [pr.returncode for pr in procs], outs


def test_two_node_loopback_c10d_rendezvous(two_process_run, sotu_data_dir, tmp_path):
    """Two torchrun agents (one process each) meeting through c10d rendezvous on 127.0.0.1."""
    rd = RunDir(tmp_path / "nodes")
    rcs, outs = two_nodes([rd.path, rd.path], sotu_data_dir)
    assert rcs == [0, 0], "\n".join(o[-3000:] for o in outs)
    s = rd.read_summary()["train"]
    assert s["status"] == "complete" and s["world_size"] == 2
    assert_same_curve(curve(rd), curve(two_process_run[0]))
    assert [k for k in TIMING_KEYS if k in rd.read_metrics()[1]]  # timing is logged (but not compared)


SHUTDOWN_SCRIPT = r'''
import sys, torch
from gepalib import dist
dist.init("cpu")
torch.optim.SGD([torch.nn.Parameter(torch.ones(3))], lr=0.1)  # imports torch._dynamo, which pins the group
for _ in range(50):
    dist.all_reduce_sum(torch.ones(1000))
dist.shutdown()
'''


def test_shutdown_exits_cleanly(tmp_path):
    """Regression: once any torch.optim optimizer exists (it imports torch._dynamo, which keeps
    references to the default group), destroy_process_group alone left gloo's worker threads
    running, and about 40% of 2-process runs aborted at interpreter exit with "terminate called
    without an active exception". Six launches all exit 0 with dist.shutdown()."""
    script = tmp_path / "shutdown.py"
    script.write_text(SHUTDOWN_SCRIPT)
    for attempt in range(6):
        port = free_port()
        procs = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  env=dict(env(), RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r),
                                           MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)))
                 for r in range(2)]
        logs = [p.communicate(timeout=120)[0].decode() for p in procs]
        assert [p.returncode for p in procs] == [0, 0], f"attempt {attempt}:\n" + "\n".join(logs)


def test_ranks_that_see_different_checkpoints_refuse_to_resume(two_process_run, sotu_data_dir, tmp_path):
    """Two "nodes" whose run directories differ (a run dir not on a shared filesystem): one sees
    a step-8 checkpoint, the other none. Both fail with a clear message instead of hanging."""
    import shutil

    seen = tmp_path / "node0"
    shutil.copytree(two_process_run[0].path, seen)
    for name in ("summary.json", "model_ema.pt", "model_live.pt", "checkpoints/step_000016.pt"):
        (seen / name).unlink()  # as if interrupted after the step-8 checkpoint
    rcs, outs = two_nodes([seen, tmp_path / "node1"], sotu_data_dir)
    assert all(rc != 0 for rc in rcs), "\n".join(o[-2000:] for o in outs)
    assert all("ranks disagree on where to resume" in o for o in outs), "\n".join(o[-2000:] for o in outs)
