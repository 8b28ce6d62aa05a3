"""The bill before the run: what each notebook records it trains and evaluates (its plan cell,
gepalib.run.plans), what is reused, and the GPU-hours of the rest (gepalib.run.bill,
``gepa reproduce --plan``)."""
from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from gepalib import run
from gepalib.config import get_preset
from gepalib.fsio import atomic_write_json
from gepalib.run import bill as B
from gepalib.run import notebooks as NB
from gepalib.run import plans as PL
from gepalib.run import rates as R
from gepalib.rundir import RunDir, default_run_dir

REPO = Path(__file__).resolve().parents[1]
NB_DIR = REPO / "notebooks"
GPU_YAMLS = sorted(NB_DIR.glob("*.gpu.yaml"))
TRAIN_LINE = re.compile(r"^  train (\S+) steps (\d+) \(warmdown (\d+)\) seed (\d+)  nproc (\d+)  \[([^\]]+)\]")


def yaml_name(path: Path) -> str:
    return path.name.removesuffix(".gpu.yaml")


def expected_runs(name: str, p: dict) -> list[tuple[int, int, int]]:
    """(steps, warmdown, seed) of the training runs a notebook makes with the full-scale parameters,
    worked out from the YAML itself (not from the registry)."""
    ls, lw = p.get("ladder_steps"), p.get("ladder_warmdown")
    if name in ("00_quickstart", "01_train", "02_artifact_and_eval"):
        return [(p["steps"], round(p.get("warmdown_frac", 0.4) * p["steps"]), p.get("seed", 42))]
    longest = max(range(len(ls)), key=lambda i: ls[i])
    if name in ("10_warmdown", "12_sgd_vs_adamw", "13_freezing", "15_ttt_families"):
        return [(ls[longest], lw[longest], s) for s in p["seeds"]]
    runs = [(s, w, p["seed"]) for s, w in zip(ls, lw)]
    if name == "14_ttt_share" and p.get("baseline_bpb") is None:
        runs.append((p["baseline_steps"], round(p["warmdown_frac"] * p["baseline_steps"]), p["seed"]))
    return runs


def expected_evals(name: str, p: dict) -> int:
    """Evaluation lines: one int6 artifact per evaluated run, then each evaluation call."""
    n_runs = len(expected_runs(name, p))
    return {"00_quickstart": 2, "01_train": 0, "02_artifact_and_eval": 2, "10_warmdown": 0,
            "11_compressibility": n_runs * (2 if p.get("sdclip_sigmas", 12.85) else 1), "12_sgd_vs_adamw": n_runs * 3,
            "13_freezing": n_runs * (1 + len(p.get("freeze_blocks", []))), "14_ttt_share": 2 * n_runs,
            "15_ttt_families": n_runs * (1 + len(p.get("families", {}))) + len(p.get("families", {}))
            * min(p.get("cost_seeds", 1), n_runs),
            "16_quantizers": n_runs}[name]


@pytest.mark.parametrize("path", GPU_YAMLS, ids=yaml_name)
def test_plan_of_every_gpu_yaml_lists_what_the_notebook_launches(path, tmp_path, capsys):
    """``gepa reproduce --plan --parameters X.gpu.yaml`` lists the full-scale runs (steps,
    warmdown, seed, nproc, the torchrun command) and evaluations of the notebook, all new in an
    empty runs root, and a positive bill; nothing is written."""
    from gepalib.cli import main

    name, p = yaml_name(path), yaml.safe_load(path.read_text())
    assert main(["reproduce", "--plan", "--parameters", str(path), "--notebooks", name,
                 "--runs-root", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    trains = [TRAIN_LINE.match(ln).groups() for ln in out.splitlines() if TRAIN_LINE.match(ln)]
    assert [(int(s), int(w), int(seed)) for _, s, w, seed, _, _ in trains] == expected_runs(name, p)
    assert {(pre, int(n), st) for pre, _, _, _, n, st in trains} == {("gepa11", p["nproc"], "new")}
    assert out.count(f"--nproc-per-node {p['nproc']} ") == len(trains)
    assert sum(1 for ln in out.splitlines() if ln.startswith("  eval ")) == expected_evals(name, p)
    total = re.search(r"^total: (\d+) runs to train \(0 reused or shared\), (\d+) evaluations; ([\d.]+) GPU-h",
                      out, re.M)
    assert total and int(total.group(1)) == len(trains) and float(total.group(3)) > 10.0
    assert not (tmp_path / "runs").exists()  # planning writes nothing


def test_the_bill_of_the_submission_run_is_its_own_cost():
    """gepa11 at full scale, priced with the submission's rates: its 20,000 steps cost what the
    submission took (10,011 s on 4 A100s) plus the 20 warm-up steps; validation is priced apart."""
    rates = B.submission_rates()
    cfg = run.with_length(run.base_config("gepa11", "full", "data/fineweb10B_sp1024"), 20000, 0.4, 500)
    gpu_s, detail = B.price_training(cfg, 0, rates)
    train_s = 20020 * 786432 / rates.train_tok_s
    assert train_s == pytest.approx(4 * 10011 * 20020 / 20000, rel=1e-9)
    # val_ema=False (the default, as the submission): step 0 (live = EMA), 39 periodic (live
    # only), the final (both)
    passes = 1 + 39 + 2
    assert gpu_s == pytest.approx(train_s + passes * 62_021_632 / rates.val_tok_s, rel=1e-9)
    assert "20020 steps" in detail and f"{passes} validation passes" in detail
    # with the EMA in periodic validation too: two passes each
    from gepalib.config import override

    more, _ = B.price_training(override(cfg, val_ema=True), 0, rates)
    assert more == pytest.approx(train_s + (1 + 39 * 2 + 2) * 62_021_632 / rates.val_tok_s, rel=1e-9)
    # a resumed run pays for the steps left (and the warm-up again)
    half, _ = B.price_training(cfg, 10000, rates)
    assert half < gpu_s / 2 + 0.05 * gpu_s


def test_flops_per_token_matches_the_bench_count():
    """The bill scales by the same FLOPs per token as bench/common.py counts on the real models."""
    from bench.common import flops_per_token, matmul_params
    from gepalib.model import GPT

    for preset in ("gepa11", "tiny", "baseline9"):
        cfg = get_preset(preset)
        m = cfg.model
        want = flops_per_token(matmul_params(GPT(m)), m.num_layers, m.model_dim, cfg.train.seq_len)
        assert B.flops_per_token(cfg) == pytest.approx(want, rel=1e-12), preset


def test_measured_gpu_results_replace_the_submission_rates(tmp_path):
    # the committed bench/results/gpu.json is a CPU --tiny run: not a GPU measurement
    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps({"tiny": True, "parts": {"train": {"eager": {"tokens_per_s": 5.0}}}}))
    assert B.load_rates(tiny) == B.submission_rates()
    assert B.load_rates(tmp_path / "missing.json") == B.submission_rates()
    gpu = tmp_path / "gpu.json"
    gpu.write_text(json.dumps({
        "tiny": False, "device_name": "NVIDIA H100 80GB HBM3",
        "parts": {"train": {"micro_batch_tokens": 98304,
                            "eager": {"tokens_per_s": 4e5, "ms_per_step_median": 245.0},
                            "compiled": {"tokens_per_s": 8e5, "ms_per_step_median": 122.9}},
                  "eval": {"chunk_tokens": 32768, "ttt_epochs": 10, "stride": 64,
                           "modes": {"nonoverlapping": {"tokens_per_s": 2e6},
                                     "ttt": {"train_s_per_chunk": 0.5, "score_s_per_chunk": 0.1}}}}}))
    r = B.load_rates(gpu)
    assert (r.gpu, r.train_tok_s, r.val_tok_s, r.eval_tok_s) == ("NVIDIA H100 80GB HBM3", 8e5, 2.4e6, 2e6)
    assert r.ttt_train_tok_s == pytest.approx(32768 * 10 / 0.5) and "compiled" in r.source
    # the check's current layout: one part per training run; only the eager one ran here
    res = json.loads(gpu.read_text())
    res["parts"]["train_eager"] = {**res["parts"].pop("train")["eager"], "micro_batch_tokens": 49152}
    gpu.write_text(json.dumps(res))
    r = B.load_rates(gpu)
    assert r.train_tok_s == 4e5 and "eager" in r.source and "49,152-token" in r.source


def _quick(steps: int, seed: int = 42, data_dir: str | None = None):
    return run.with_length(run.base_config("tiny", "quick", data_dir), steps, 0.4, 2, seed=seed)


def test_finished_runs_are_reused_interrupted_ones_resumed_and_shared_ones_priced_once(tmp_path, sotu_data_dir):
    root = tmp_path / "runs"
    params = {"scale": "quick", "ladder_steps": [10, 20], "ladder_warmdown": None, "seeds": [42, 43], "val_every": 2,
              "runs_root": str(root), "data_dir": str(sotu_data_dir), "constant_steps": 0,
              "sweep_lrs": {}}  # evaluations are priced from the validation shards
    finished, partial = _quick(20, 42, str(sotu_data_dir)), _quick(20, 43, str(sotu_data_dir))
    rd = RunDir(default_run_dir(finished, root))
    rd.path.mkdir(parents=True)
    atomic_write_json(rd.config, finished.to_dict())
    atomic_write_json(rd.summary, {"train": {"status": "complete"}})
    rd.ema_weights.write_bytes(b"x")
    rd2 = RunDir(default_run_dir(partial, root))
    (rd2.checkpoints).mkdir(parents=True)
    atomic_write_json(rd2.config, partial.to_dict())
    (rd2.checkpoints / "step_000015.pt").write_bytes(b"x")
    common = {k: v for k, v in params.items() if k not in ("runs_root", "data_dir", "constant_steps", "sweep_lrs")}
    where = {"budget": "study", "runs_root": str(root), "data_dir": str(sotu_data_dir)}
    plans = run.record_plans(["10_warmdown"], parameters={**common, "constant_steps": 0}, **where) + \
        run.record_plans(["13_freezing"], parameters={**common, "sweep_lrs": {}, "freeze_blocks": [0, 1]}, **where)
    assert [c.train.seed for c in plans[0].configs] == [42, 43] and plans[0].configs == plans[1].configs
    b = run.price_plans(plans)
    trains = [i for i in b["items"] if i.what == "train"]
    assert [i.status for i in trains] == ["reused (finished)", "resume from step 15",
                                          "shared with 10_warmdown", "shared with 10_warmdown"]
    assert trains[0].gpu_s == 0 and trains[0].command == [] and trains[1].gpu_s > 0
    assert "5 steps" in trains[1].detail  # 20 - 15
    assert b["train_runs"] == 1 and b["reused_runs"] == 3
    # the finished run has no artifact or stage rows yet: its evaluations are all new
    evals = [i for i in b["items"] if i.what == "eval" and str(rd.path) == i.run_dir]
    assert evals and all(i.status == "new" and i.gpu_s > 0 for i in evals)
    text = run.format_bill(b)
    assert "[reused (finished)]" in text and "[resume from step 15]" in text and text.splitlines()[-2].startswith(
        "total: 1 runs to train (3 reused or shared)")


def test_the_listed_command_is_the_one_launch_runs(tmp_path, monkeypatch):
    """bill.train_command is exactly the torchrun command gepalib.run.launch executes."""
    launch_mod = __import__("gepalib.run.launch", fromlist=["run_streamed"])
    seen = {}

    def fake(cmd, **kw):
        seen["cmd"] = list(cmd)
        return 0, ""

    monkeypatch.setattr(launch_mod, "run_streamed", fake)
    cfg = _quick(4)
    with pytest.raises(run.RunFailed, match="not complete"):
        run.launch(cfg, nproc=2, runs_root=tmp_path, stream=False)
    assert seen["cmd"] == B.train_command(default_run_dir(cfg, tmp_path), 2)


CONFIG_BUILDERS = ("ladder_configs", "longest_rung_configs", "with_length", "baseline_config", "base_config")


def test_every_notebook_plans_in_one_cell_and_launches_what_it_planned():
    """Each notebook's cell tagged plan (its first code cell) records the runs with plan.train
    and ends with run.stop_if_dry_run(plan, dry_run); no later cell builds a config or plans:
    the runs the plan lists are the runs the notebook launches, whatever the parameters."""
    import jupytext

    for name in NB.notebook_names():
        cells = [c for c in jupytext.read(NB_DIR / f"{name}.py").cells if c.cell_type == "code"]
        plan_cells = [i for i, c in enumerate(cells) if "plan" in c.metadata.get("tags", [])]
        assert plan_cells == [1], f"{name}: the first code cell after the parameters must be the only plan cell"
        src = cells[1].source
        assert "run.Plan(" in src and "plan.train(" in src, name
        assert src.rstrip().splitlines()[-1].startswith("run.stop_if_dry_run(plan, dry_run)"), name
        for c in cells[2:]:
            for node in ast.walk(ast.parse(c.source)):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (
                        node.func.attr in CONFIG_BUILDERS or node.func.attr in ("train", "evaluate")
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "plan"):
                    pytest.fail(f"{name}.py: a cell after the plan cell calls {node.func.attr}")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["00_quickstart", "14_ttt_share"])
def test_a_dry_run_notebook_prints_its_bill_and_launches_nothing(name, tmp_path):
    """Executed by papermill with its gpu.yaml parameters and dry_run: the plan cell prints the
    bill and stops the notebook (DryRun, one line); no later cell ran and nothing was written."""
    import papermill as pm

    given = {**yaml.safe_load((NB_DIR / f"{name}.gpu.yaml").read_text()), "dry_run": True,
             "runs_root": str(tmp_path / "runs")}
    with pytest.raises(pm.PapermillExecutionError) as e:
        NB.execute_notebook(name, tmp_path / "out", given, echo=False)
    assert e.value.ename == "DryRun" and "set dry_run = False" in e.value.evalue
    nb = nbformat.read(tmp_path / "out" / f"{name}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    plan_cell = next(c for c in code if "plan" in c.metadata.get("tags", []))
    text = "".join(o.get("text", "") for o in plan_cell.outputs)
    assert text.startswith("this notebook:\n")  # the kernel does not know the notebook's file name
    assert "GPU-h" in text and "train gepa11 steps" in text
    assert all(c.execution_count is None for c in code[code.index(plan_cell) + 1:])  # the later cells did not run
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------
# CPU rates from bench/results/speed_ledger.json

SHAPE_KEYS = ("num_layers", "model_dim", "num_heads", "num_kv_heads", "mlp_hidden", "vocab_size")
# the sizes bench/speed_ledger.py measures: tiny, small and "mid" (small's recipe, 6 x 192)
MID = {"num_layers": 6, "model_dim": 192, "mlp_hidden": 576, "xsa_last_n": 2, "ve_layers": (4, 5)}
LEDGER_US = {"tiny": 100.0, "mid": 400.0, "small": 1000.0}  # 1-thread us per token: 10k, 2.5k, 1k tok/s


def _row(size: str, us: float, threads: int = 1) -> dict:
    cfg = get_preset("small", **MID) if size == "mid" else get_preset(size)
    return {"preset": size, "threads": threads, "seq_len": cfg.train.seq_len, "tokens_per_step": 4096,
            "shape": {k: getattr(cfg.model, k) for k in SHAPE_KEYS},
            "gepalib": {"us_per_token": us, "cpu_us_per_token": us * 0.9, "params": 1}}


def _ledger(tmp_path, sizes=("tiny", "mid", "small")) -> Path:
    res = {"bench": "speed_ledger", "quick": False, "started": "2031-02-03T04:05:06",
           "machine": {"machine": "x86_64", "cpu_count": 2, "platform": "Linux-test", "torch": "2.x"},
           "train": [_row(s, LEDGER_US[s]) for s in sizes] + [_row("tiny", 10.0, threads=2)],  # 2 threads: ignored
           "eval": {"preset": "tiny", "seq_len": 256, "targets": 8192,
                    "modes": {"nonoverlapping": {"seconds": 0.25, "tokens": 8192},
                              "sliding64": {"seconds": 1.0, "tokens": 8192},
                              "streaming": {"seconds": 0.4, "tokens": 8192},
                              "ttt": {"chunk_tokens": 4096, "chunks": 2, "epochs": 3, "seconds": 2.5,
                                      "tokens": 8384, "train_s_per_chunk": 1.5, "score_s_per_chunk": 0.5}}}}
    p = tmp_path / "speed_ledger.json"
    p.write_text(json.dumps(res))
    return p


@pytest.fixture
def no_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _fpt(cfg) -> float:
    """FLOPs per token, counted here from the shape (independently of the bill's function)."""
    m, T = cfg.model, cfg.train.seq_len
    kv = m.num_kv_heads * (m.model_dim // m.num_heads)
    n = m.num_layers * (2 * m.model_dim ** 2 + 2 * m.model_dim * kv + 2 * m.model_dim * m.mlp_hidden)
    n += m.vocab_size * m.model_dim + (m.bigram_dim * m.model_dim if m.bigram else 0)
    n += m.ve_dim * kv if m.ve_layers else 0
    return 6 * n + 6 * m.num_layers * m.model_dim * T


def test_cpu_rates_interpolate_the_ledgers_sizes_log_log(tmp_path, no_cuda):
    """At a measured size the training rate is the measured one; between two sizes it lies on
    the straight line of log(tokens/s) against log(FLOPs/token); beyond them the end segment
    goes on. Evaluation and TTT are measured on tiny and follow the same curve's ratio."""
    r = B.load_rates(ledger=_ledger(tmp_path))
    assert r.unit == "CPU process-h" and r.gpu == "1 thread each" and r.ref == "tiny"
    sizes = {"tiny": get_preset("tiny"), "mid": get_preset("small", **MID), "small": get_preset("small")}
    f = {k: _fpt(c) for k, c in sizes.items()}
    assert [(n, fl) for n, fl, _ in r.sizes] == [(k, pytest.approx(f[k], rel=1e-12)) for k in ("tiny", "mid", "small")]
    for k, cfg in sizes.items():
        assert r.train_tok_s_at(cfg) == pytest.approx(1e6 / LEDGER_US[k], rel=1e-9), k
    between = get_preset("tiny", num_layers=6, model_dim=160)  # tiny < it < mid
    fb = _fpt(between)
    assert f["tiny"] < fb < f["mid"]
    t = (math.log(fb) - math.log(f["tiny"])) / (math.log(f["mid"]) - math.log(f["tiny"]))
    want = math.exp((1 - t) * math.log(1e4) + t * math.log(2.5e3))
    assert r.train_tok_s_at(between) == pytest.approx(want, rel=1e-9) and 2.5e3 < want < 1e4
    # beyond small: the mid-small segment's slope goes on
    big = get_preset("gepa11")
    slope = (math.log(1e3) - math.log(2.5e3)) / (math.log(f["small"]) - math.log(f["mid"]))
    assert r.train_tok_s_at(big) == pytest.approx(1e3 * (_fpt(big) / f["small"]) ** slope, rel=1e-9)
    # evaluation (non-overlapping 8192 tokens in 0.25 s) and TTT (4096 x 3 epochs in 1.5 s) on tiny;
    # the trainer's periodic validation is eager on a CPU: the evaluation rate
    assert r.eval_tok_s == pytest.approx(8192 / 0.25) and r.val_tok_s == r.eval_tok_s
    assert r.ttt_train_tok_s == pytest.approx(4096 * 3 / 1.5) and r.train_tok_s == pytest.approx(1e4)
    assert r.eval_tok_s_at(sizes["small"]) == pytest.approx(8192 / 0.25 * 1e3 / 1e4, rel=1e-9)
    assert r.ttt_train_tok_s_at(between) == pytest.approx(4096 * 3 / 1.5 * want / 1e4, rel=1e-9)


def test_the_cpu_bill_prices_steps_at_the_measured_rate(tmp_path, no_cuda):
    """A CPU plan's training costs steps x batch tokens / the 1-thread rate at its size, its
    periodic validation passes x targets / the evaluation rate; the bill says CPU
    process-hours and names the ledger, its machine, date and sizes."""
    r = B.load_rates(ledger=_ledger(tmp_path, sizes=("tiny", "small")))
    cfg = run.with_length(run.base_config("small", "cpu", str(tmp_path / "fineweb10B_sp1024")), 40, 0.4, 20)
    n, _ = B.val_targets(cfg)
    gpu_s, detail = B.price_training(cfg, 0, r)
    steps, tokens = cfg.train.steps + (cfg.train.compile_warmup if cfg.train.compile else 0), cfg.train.batch_tokens
    passes = 1 + 1 + 2  # step 0, step 20, the end (live and EMA)
    assert gpu_s == pytest.approx(steps * tokens / 1e3 + passes * n / (8192 / 0.25 * 1e3 / 1e4), rel=1e-9)
    assert f"{passes} validation passes" in detail and "CPU process-h" in detail and "GPU" not in detail
    # a plan of two tiny runs, through the bill
    params = {"scale": "cpu", "steps": 30, "val_every": 10, "runs_root": str(tmp_path / "runs"),
              "data_dir": str(tmp_path / "none"), "preset": "tiny"}
    plan = run.Plan(runs_root=params["runs_root"])  # what 01_train's plan cell records with these parameters
    plan.train(run.with_length(run.base_config("tiny", "cpu", params["data_dir"]), 30, 0.4, 10, seed=42))
    bill = run.price_plans([plan], r)
    (item,) = [i for i in bill["items"] if i.what == "train"]
    assert item.gpu_s == pytest.approx(30 * 4096 / 1e4, rel=1e-9)  # tiny's shape, 4096-token batches; no val shards
    text = B.format_bill(bill)
    total, rates_line = text.splitlines()[-2:]
    wall = B._hours(bill["wall_hours"] * 3600)
    assert total.endswith(f"{bill['gpu_hours']:.2f} CPU process-h (1 thread each), wall {wall}")
    assert "GPU" not in text
    assert rates_line.startswith("rates: speed_ledger.json of x86_64, 2 CPUs")
    assert "started 2031-02-03T04:05:06" in rates_line
    assert "tiny 10,000 / small 1,000" in rates_line and "per process (1 thread)" in rates_line


def test_a_corrupt_or_missing_ledger_or_cuda_gives_the_gpu_rates(tmp_path, monkeypatch, no_cuda):
    """Without a usable ledger the rates are the GPU ones (a note in the source, no error);
    with a CUDA device they are the GPU ones too; kind forces either."""
    sub = B.submission_rates()
    assert B.load_rates(ledger=tmp_path / "missing.json") == sub
    bad = tmp_path / "bad.json"
    for text in ("{not json", json.dumps({"train": []}), json.dumps({"train": [{"threads": 1, "preset": "tiny"}]}),
                 json.dumps({"train": [{**_row("tiny", 100.0), "gepalib": {"us_per_token": 0}}]}),
                 json.dumps([1, 2])):
        bad.write_text(text)
        r = B.load_rates(ledger=bad)
        assert (r.train_tok_s, r.unit, r.sizes) == (sub.train_tok_s, "GPU-h", ()), text
        assert r.source.startswith(sub.source) and "bad.json is unusable" in r.source
    good = _ledger(tmp_path)
    assert B.load_rates(ledger=good).unit == "CPU process-h"
    assert B.load_rates(ledger=good, kind="gpu") == sub
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert B.load_rates(ledger=good) == sub
    assert B.load_rates(ledger=good, kind="cpu").unit == "CPU process-h"
    with pytest.raises(ValueError, match="rates kind"):
        B.load_rates(kind="tpu")


def test_auto_prices_a_gpu_preset_plan_at_gpu_rates_and_the_flag_forces_cpu(tmp_path, monkeypatch, no_cuda, capsys):
    """Under auto a plan of gepa11 runs (the gpu.yaml parameters) keeps the GPU rates on a CPU
    machine; ``--rates cpu`` prices it at this CPU's; a tiny plan gets the CPU rates."""
    from gepalib.cli import main

    monkeypatch.setattr(R, "default_ledger", lambda: _ledger(tmp_path))
    gpu_yaml = str(NB_DIR / "01_train.gpu.yaml")
    common = ["reproduce", "--plan", "--notebooks", "01_train", "--runs-root", str(tmp_path / "runs")]
    assert main(common + ["--parameters", gpu_yaml]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^total: .* GPU-h \(A100-40GB\)", out, re.M) and "a size the CPU ledger did not measure" in out
    assert main(common + ["--parameters", gpu_yaml, "--rates", "cpu"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^total: .* CPU process-h \(1 thread each\)", out, re.M)
    assert main(common + ["--quick"]) == 0
    assert "CPU process-h (1 thread each)" in capsys.readouterr().out
    assert main(common + ["--quick", "--rates", "gpu"]) == 0
    assert "GPU-h (A100-40GB)" in capsys.readouterr().out
    # the study's baseline runs are of tiny's family: still a CPU plan; one gepa11 run makes it a GPU one
    tiny = get_preset("tiny")
    cpu_plan = PL.Plan(nproc=1, configs=[tiny], extra={"baseline": run.baseline_config(tiny)}, notebook="x")
    assert B.plan_rates([cpu_plan]).unit == "CPU process-h"
    gpu_plan = PL.Plan(nproc=8, configs=[get_preset("gepa11")], notebook="y")
    assert B.plan_rates([cpu_plan, gpu_plan]).unit == "GPU-h"
    assert B.plan_rates([cpu_plan, gpu_plan], "cpu").unit == "CPU process-h"
