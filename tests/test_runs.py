"""gepalib.run: the torchrun launcher, run identity, stage reuse, loading into pandas."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import torch

from gepalib import muon, run, rundir
from gepalib.run.supervise import _alive
from gepalib.config import get_preset, override
from gepalib.rundir import RunDir

pytestmark = pytest.mark.timeout(300)


def quick_cfg(data_dir: Path, **kv):
    """The 'quick' scale: a 56k-parameter model, 4 steps."""
    base = run.base_config("tiny", "quick", str(data_dir))
    return override(run.with_length(base, kv.pop("steps", 4), 0.5, val_every=2), **kv)


# ---------------------------------------------------------------------------
# Identity (no processes)


def test_run_key_covers_what_decides_the_weights(tmp_path):
    cfg = get_preset("tiny")
    assert run.run_key(cfg) == run.run_key(get_preset("tiny"))
    # display/bookkeeping and stage settings do not change the run
    for kv in ({"progress": "bar"}, {"keep_checkpoints": 5}, {"checkpoint_every": 7},
               {"ttt_optimizer": "adamw"}, {"eval_stride": 32}, {"ttt_freeze_blocks": 0}):
        assert run.run_key(override(cfg, **kv)) == run.run_key(cfg), kv
    # anything that changes the weights or the artifact does
    for kv in ({"steps": 601}, {"seed": 1}, {"model_dim": 64}, {"val_tokens": 4096}, {"val_every": 50},
               {"compressor": "lzma"}, {"quant_mode": "per_row"}, {"data_dir": "data/other"}):
        assert run.run_key(override(cfg, **kv)) != run.run_key(cfg), kv
    # the same data directory spelled relative or absolute is the same run
    from gepalib.paths import resolve_path

    absolute = override(cfg, data_dir=str(resolve_path(cfg.data.data_dir)))
    assert run.run_key(absolute) == run.run_key(cfg)
    d = run.default_run_dir(cfg, tmp_path)
    assert d.parent == tmp_path and d.name == f"tiny-{run.run_key(cfg)}"
    assert run.identity_diff(cfg, override(cfg, steps=601)) == ["steps (600 -> 601)"]


def test_identity_hashes_are_stable(monkeypatch):
    """Run-directory names and checkpoint fingerprints written by earlier versions stay valid:
    these are the hashes the code gave before the one identity definition replaced three.
    The run hashes changed once more when the quant section gained the full-GPTQ fields
    (gptq_*): content-addressed run directories made before that are trained again, while
    checkpoints still resume (the resume view has no quant fields). gepa11's also changed when
    its preset took the submission's compile recipe (compile=True, compile_warmup=20). Both
    hashes changed when the train section gained ``muon_ns_dtype`` (it changes the trajectory,
    so checkpoints of earlier versions do not resume into a run that could differ).
    ``muon_ns_dtype`` then became ``auto`` by default, and the identity holds the precision it
    resolves to: where that is bf16 (CUDA, CPUs with native bf16) every hash is the one the
    explicit bf16 default gave, so those run dirs and checkpoints stay valid; on other CPUs
    "auto" is fp32, a different trajectory and so a different hash (the fp32 pin below).
    ``data_seed`` enters the identity only where it shuffles: its default (-1) is the order every
    earlier run had, so their hashes stay; a data seed gives another run."""
    for preset, run_hash, resume_hash in (("tiny", "758c6b0271d8541f", "6c9e4d2b4b22b01f"),
                                          ("gepa11", "3ac25d5c2685bb9a", "a65dc8c0c54b44aa")):
        cfg = override(get_preset(preset), data_dir="/data/sotu_sp1024")
        for c in (cfg, override(cfg, muon_ns_dtype="bf16")):  # "auto" resolved on CUDA is the bf16 run
            monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
            assert rundir.identity_hash(c) == run_hash, preset
            assert rundir.identity_hash(c, resume=True) == resume_hash, preset
        assert rundir.identity_hash(override(cfg, data_seed=0)) != run_hash
        assert rundir.identity_hash(override(cfg, data_seed=0), resume=True) != resume_hash
    cpu = override(get_preset("tiny"), data_dir="/data/sotu_sp1024", device="cpu")
    monkeypatch.setattr(muon, "cpu_has_native_bf16", lambda: False)
    assert rundir.identity_hash(cpu) == rundir.identity_hash(override(cpu, muon_ns_dtype="fp32"))
    assert rundir.identity_hash(cpu) != rundir.identity_hash(override(cpu, muon_ns_dtype="bf16"))
    monkeypatch.setattr(muon, "cpu_has_native_bf16", lambda: True)
    assert rundir.identity_hash(cpu) == rundir.identity_hash(override(cpu, muon_ns_dtype="bf16"))


def test_resume_identity_is_the_training_trajectory():
    cfg = get_preset("tiny")
    same = rundir.identity_hash(cfg, resume=True)
    # cadence, the wall-clock cap and the quantizer may change when a checkpoint is resumed ...
    for kv in ({"log_every": 7}, {"val_every": 3}, {"max_wallclock": 60.0}, {"compressor": "lzma"},
               {"progress": "bar"}, {"checkpoint_every": 9}, {"ttt_lr": 1e-3}):
        assert rundir.identity_hash(override(cfg, **kv), resume=True) == same, kv
        assert rundir.identity_diff(cfg, override(cfg, **kv), resume=True) == [], kv
    # ... though all but the bookkeeping ones make it a different run directory
    for kv in ({"log_every": 7}, {"val_every": 3}, {"max_wallclock": 60.0}, {"compressor": "lzma"}):
        assert rundir.identity_hash(override(cfg, **kv)) != rundir.identity_hash(cfg), kv
    for kv in ({"matrix_lr": 0.03}, {"seed": 2}, {"model_dim": 64}, {"train_shards": 1}):
        assert rundir.identity_hash(override(cfg, **kv), resume=True) != same, kv
    assert rundir.identity_diff(cfg, override(cfg, matrix_lr=0.03), resume=True) == ["matrix_lr (0.025 -> 0.03)"]
    # the field lists name real train fields (a renamed field would silently join the identity)
    train_fields = set(cfg.to_dict()["train"])
    assert set(rundir.BOOKKEEPING_FIELDS) | set(rundir.RESUMABLE_FIELDS) <= train_fields
    assert set(rundir.identity(cfg)) == set(rundir.IDENTITY_SECTIONS)
    assert set(rundir.identity(cfg, resume=True)) == {"data", "model", "train"}


def test_ladder_and_baseline_configs():
    base = run.base_config("tiny", "cpu")
    cfgs = run.ladder_configs(base, [100, 300], warmdown_frac=0.4, seeds=[1, 2], val_every=15)
    assert [(c.train.steps, c.train.warmdown, c.train.val_every, c.train.seed) for c in cfgs] == \
        [(100, 40, 15, 1), (100, 40, 15, 2), (300, 120, 15, 1), (300, 120, 15, 2)]
    assert len({run.run_key(c) for c in cfgs}) == 4
    b = run.baseline_config(cfgs[0])
    assert b.preset == "tiny_baseline" and b.model.rope_dims == b.model.head_dim
    assert (b.model.bigram, b.model.smear, b.model.xsa_last_n, b.model.ve_layers, b.model.skip_mode) == \
        (False, False, 0, (), "add")
    assert b.train == cfgs[0].train
    with pytest.raises(ValueError, match="unknown scale"):
        run.base_config("tiny", "huge")
    with pytest.raises(ValueError, match="warmdown_frac"):
        run.with_length(base, 10, 1.5, 5)
    with pytest.raises(ValueError, match="val_every"):
        run.with_length(base, 10, 0.4, 0)


def test_ladder_with_explicit_warmdowns_is_the_submissions_table():
    """The submission's ladder: 9k/12k/15k/20k were run with 4k/5k/6k/8k warmdown steps; 0.4 of each would give
    3,600 and 4,800 for the first two rungs."""
    base = run.base_config("tiny", "cpu")
    ladder, wds = [9000, 12000, 15000, 20000], [4000, 5000, 6000, 8000]
    cfgs = run.ladder_configs(base, ladder, 0.4, seeds=[42], val_every=500, warmdowns=wds)
    assert [(c.train.steps, c.train.warmdown) for c in cfgs] == list(zip(ladder, wds))
    assert [c.train.warmdown for c in run.ladder_configs(base, ladder, 0.4)] == [3600, 4800, 6000, 8000]
    # the longest rung is the same run in the ladder and in the single-rung notebooks (10, 12, 13)
    longest = run.longest_rung_configs(base, [15000, 20000, 9000], 0.4, [42, 43], 500, [6000, 8000, 4000])
    assert [(c.train.steps, c.train.warmdown, c.train.seed) for c in longest] == [(20000, 8000, 42), (20000, 8000, 43)]
    assert run.run_key(longest[0]) == run.run_key(cfgs[-1])
    with pytest.raises(ValueError, match="2 warmdowns for 4 ladder steps"):
        run.ladder_configs(base, ladder, 0.4, warmdowns=[1, 2])
    with pytest.raises(ValueError, match="warmdown must be in"):
        run.with_length(base, 10, 0.4, 5, warmdown=11)


def test_torchrun_command_and_bad_nproc(tmp_path):
    cmd = run.torchrun_command(["gepalib", "train", "--run-dir", "x"], 2, tmp_path)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert cmd[cmd.index("--nproc-per-node") + 1] == "2" and "--standalone" in cmd
    assert cmd[cmd.index("--log-dir") + 1] == str(tmp_path)
    assert cmd[-5:] == ["-m", "gepalib", "train", "--run-dir", "x"]
    with pytest.raises(ValueError, match="nproc"):
        run.torchrun_command(["gepalib", "train"], 0, tmp_path)


def test_ensure_data_names_the_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no dataset there.*gepa data"):
        run.ensure_data(tmp_path / "nothing_here")


# ---------------------------------------------------------------------------
# Process plumbing


def test_interrupt_kills_the_whole_process_tree(tmp_path):
    """KeyboardInterrupt while streaming: the launcher and a child in its own session
    (as torchrun starts its workers) are both gone afterwards, and the interrupt propagates."""
    script = ("import subprocess, sys, time\n"
              "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True)\n"
              "print(c.pid, flush=True)\n"
              "time.sleep(120)\n")
    seen: list[int] = []

    def on_line(line: str) -> None:
        seen.append(int(line))
        raise KeyboardInterrupt

    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run.run_streamed([sys.executable, "-c", script], console_log=tmp_path / "c.log", stream=False,
                          on_line=on_line, kill_grace=1.0)
    assert time.monotonic() - t0 < 30
    assert len(seen) == 1
    deadline = time.monotonic() + 5
    while _alive(seen[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(seen[0]), "the grandchild in its own session survived the interrupt"
    assert "sleep(120)" in (tmp_path / "c.log").read_text()  # the command line is logged


def test_run_streamed_returns_exit_code_and_tail(tmp_path, capsys):
    code = "import sys\nfor i in range(100): print('line', i)\nsys.exit(3)"
    rc, tail = run.run_streamed([sys.executable, "-c", code], console_log=tmp_path / "c.log")
    assert rc == 3
    assert tail.splitlines() == [f"line {i}" for i in range(100 - run.TAIL_LINES, 100)]
    assert "line 0\n" in capsys.readouterr().out  # streamed live
    assert (tmp_path / "c.log").read_text().count("line ") == 100


# ---------------------------------------------------------------------------
# Real launches (quick scale)


@pytest.fixture(scope="module")
def two_proc_run(tmp_path_factory, sotu_data_dir):
    root = tmp_path_factory.mktemp("runs")
    cfg = quick_cfg(sotu_data_dir)
    rd = run.launch(cfg, nproc=2, runs_root=root, stream=False)
    return cfg, rd, root


def test_two_process_gloo_run_completes(two_proc_run):
    cfg, rd, root = two_proc_run
    assert rd.path == run.default_run_dir(cfg, root)
    assert run.is_finished(rd)
    s = rd.read_summary()["train"]
    assert s["world_size"] == 2 and s["steps"] == 4
    assert [m["step"] for m in rd.read_metrics() if "val_bpb" in m] == [0, 2, 4]
    # every rank's output was kept by torchrun, rank 0's console too
    rank_dirs = {p.parent.name for p in (rd.path / "logs" / "torchrun").glob("**/stdout.log")}
    assert rank_dirs == {"0", "1"}
    console = (rd.path / "logs" / "console.log").read_text()
    assert "final steps:4" in console and "[default" not in console


def test_second_launch_is_reused_and_changed_config_is_not(two_proc_run, sotu_data_dir, capsys):
    cfg, rd, root = two_proc_run
    before = rd.summary.stat().st_mtime_ns
    again = run.launch(cfg, nproc=2, runs_root=root)
    assert again.path == rd.path and rd.summary.stat().st_mtime_ns == before
    assert "reusing finished run" in capsys.readouterr().out
    # bookkeeping-only changes reuse the same run as well
    assert run.launch(override(cfg, progress="bar"), runs_root=root, stream=False).path == rd.path
    # a changed config trains a new run in a new directory
    changed = override(cfg, steps=3)
    rd2 = run.launch(changed, nproc=1, runs_root=root, stream=False)
    assert rd2.path != rd.path and run.is_finished(rd2)
    assert rd2.read_summary()["train"]["steps"] == 3 and rd2.read_summary()["train"]["world_size"] == 1
    # an explicit run_dir holding a different config is refused, naming the difference
    with pytest.raises(ValueError, match=r"different config \(steps \(4 -> 3\)"):
        run.launch(changed, run_dir=rd.path, stream=False)


def test_failing_run_raises_with_its_log_tail(tmp_path, sotu_data_dir):
    cfg = quick_cfg(sotu_data_dir)
    with pytest.raises(run.RunFailed) as ei:
        run.launch(cfg, nproc=1, runs_root=tmp_path, stream=False, env={"GEPA_INJECT_NAN_AT_STEP": "2"})
    e = ei.value
    assert e.returncode == 1 and e.run_dir == run.default_run_dir(cfg, tmp_path)
    assert "non-finite train loss" in e.log_tail and "non-finite train loss" in str(e)
    assert not run.is_finished(RunDir(e.run_dir))


def test_ensure_stages_records_and_reuses_stage_rows(two_proc_run):
    _, rd, _ = two_proc_run
    rows = run.ensure_stages(rd, sliding=True, ttt=True, stream=False)
    assert set(rows) == {"roundtrip", "sliding", "ttt"}
    assert rows["roundtrip"]["name"] == "int6_roundtrip" and rows["ttt"]["name"] == "int6_sliding_ttt"
    assert rd.artifact.exists() and run.artifact_bytes(rd) == rd.artifact.stat().st_size
    stamp = rd.stages()["int6_sliding_ttt"]["recorded_at"]
    assert run.ensure_stages(rd, sliding=True, ttt=True, stream=False) == rows  # reused, not recomputed
    assert rd.stages()["int6_sliding_ttt"]["recorded_at"] == stamp
    # other TTT settings (evaluated by `gepa eval` under torchrun): a new row, named by what differs
    adam = run.ensure_stages(rd, sliding=True, ttt=True, stream=False, nproc=2, ttt_optimizer="adamw", ttt_lr=5e-5)
    assert adam["ttt"]["name"].startswith("int6_sliding_ttt[") and "adamw" in adam["ttt"]["name"]
    assert adam["ttt"]["settings"]["ttt_optimizer"] == "adamw" and adam["ttt"]["world_size"] == 2
    assert adam["sliding"] == rows["sliding"]
    assert rd.stages()["int6_sliding_ttt"]["recorded_at"] == stamp
    assert run.ttt_gain(rows) == pytest.approx(rows["ttt"]["val_bpb"] - rows["sliding"]["val_bpb"])
    assert run.stage_bpb(rd, "int6_sliding_ttt", adam) == adam["ttt"]["val_bpb"]
    assert run.stage_bpb(rd, "float_live") == rd.stages()["float_live"]["val_bpb"]
    with pytest.raises(ValueError, match="no stage 'float_nope'"):
        run.stage_bpb(rd, "float_nope")
    with pytest.raises(ValueError, match="eval/ttt fields"):
        run.ensure_stages(rd, steps=3)


def test_load_runs_and_metrics(two_proc_run):
    cfg, rd, root = two_proc_run
    df = run.load_runs(root)
    assert len(df) >= 1
    row = df.set_index("run_dir").loc[str(rd.path)]
    assert row["steps"] == 4 and row["model_dim"] == cfg.model.model_dim and row["preset"] == "tiny"
    assert row["run_key"] == run.run_key(cfg)
    assert row["train_status"] == "complete"
    assert row["float_live_bpb"] == pytest.approx(rd.stages()["float_live"]["val_bpb"])
    assert run.load_runs(str(root / "tiny-*")).shape[0] == df.shape[0]
    assert run.load_runs([rd]).shape[0] == 1
    m = run.load_metrics(rd)
    assert list(m["step"]) == [r["step"] for r in rd.read_metrics()]
    assert (m["run"] == rd.path.name).all()
    steps, mean, per = run.mean_trajectory([rd, rd])
    assert list(steps) == [0, 2, 4] and per.shape == (2, 3) and (mean == per[0]).all()
    with pytest.raises(FileNotFoundError):
        run.load_runs(root / "does-not-exist")


# ---------------------------------------------------------------------------
# Strict JSON and whole files (no processes)


def test_json_is_strict_everywhere(tmp_path):
    """NaN/inf is refused where JSON is written (naming where it is), never written as a bare NaN;
    a summary.json an older version wrote with NaN reads with that stage as a failure."""
    import json
    import math

    from gepalib.fsio import atomic_write_json, loads_strict
    from gepalib.faults import NonFiniteResult
    from gepalib.trainlog import append_metrics

    with pytest.raises(ValueError, match=r"non-finite number at stages\.float_ema\.val_bpb"):
        atomic_write_json(tmp_path / "s.json", {"stages": {"float_ema": {"val_bpb": float("nan")}}})
    assert not list(tmp_path.iterdir())
    rd = RunDir(tmp_path)
    with pytest.raises(ValueError, match="non-finite number at val_bpb"):
        append_metrics(rd, {"step": 3, "val_bpb": float("inf")})
    with pytest.raises(NonFiniteResult, match="stage int6_sliding: val_bpb=nan"):
        rd.record_stage("int6_sliding", val_bpb=float("nan"), val_loss=1.0, tokens=1, bytes=1, seconds=0.0)
    with pytest.raises(ValueError, match="NaN"):
        loads_strict('{"a": NaN}')
    assert json.loads(get_preset("tiny").to_json())  # config.json too
    # written by an older version: the NaN row is no result, the file is rewritten strict
    rd.summary.write_text('{"stages": {"float_ema": {"val_bpb": NaN, "val_loss": 7.0, "tokens": 1, "bytes": 1, '
                          '"seconds": 0}, "float_live": {"val_bpb": 3.0, "val_loss": 7.0}}, "train": {"x": Infinity}}')
    s = rd.read_summary()
    assert set(s["stages"]) == {"float_live"} and "older version" in s["failures"]["float_ema"]["error"]
    assert s["train"]["x"] is None
    rd.record_stage("float_ema", val_bpb=3.5, val_loss=7.1, tokens=1, bytes=1, seconds=0.0)
    s = loads_strict(rd.summary.read_text())
    assert math.isfinite(s["stages"]["float_ema"]["val_bpb"]) and "float_ema" not in s["failures"]


def test_a_torn_last_metrics_row_is_left_out(tmp_path):
    """A kill during an append leaves at most a torn last line: it is dropped (and the resume
    rewrites the file); a bad line elsewhere is an error naming file and line."""
    rd = RunDir(tmp_path)
    rd.metrics.write_text('{"step": 0}\n{"step": 1}\n{"step": 2, "val_b')
    assert [r["step"] for r in rd.read_metrics()] == [0, 1]
    rd.metrics.write_text('{"step": 0}\n{"step": 1\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: not a JSON row"):
        rd.read_metrics()


def test_checksummed_writes_verify_and_a_failed_write_names_its_path(tmp_path, monkeypatch):
    import errno
    import os

    from gepalib import fsio

    p = tmp_path / "w.pt"
    digest = fsio.atomic_torch_save({"a": torch.ones(3)}, p, checksum=True)
    assert fsio.verify_file(p) and fsio.file_sha256(p)[0] == digest
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(fsio.DamagedFile, match=r"w\.pt: sha256 mismatch \(\d+ bytes, \d+ written \(truncated\)"):
        fsio.verify_file(p)
    (tmp_path / "plain").write_bytes(b"x")
    assert fsio.verify_file(tmp_path / "plain") is False  # written without a checksum: nothing to verify
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, b: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(fsio.WriteFailed) as ei:
        fsio.atomic_write_json(tmp_path / "x.json", {"a": 1})
    monkeypatch.setattr(os, "write", real)
    assert str(ei.value) == f"cannot write {tmp_path / 'x.json'}: no space left on device"
    assert ei.value.errno == errno.ENOSPC
    assert sorted(q.name for q in tmp_path.iterdir()) == ["plain", "w.pt", "w.pt.sha256.json"]
