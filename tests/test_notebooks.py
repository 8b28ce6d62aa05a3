"""The notebooks: py:percent sources paired with output-free .ipynb files (jupytext), annotated
parameters papermill can read, demo/quick/full-scale YAMLs that name real parameters (and agree
where notebooks share runs), and every notebook executed headlessly under papermill with its
smallest (``--quick``) parameters.

The executions share one runs root, so the ladder of quick runs is trained once and
reused by the notebooks after the first (content addressing in gepalib.run).
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

from gepalib import findings as F
from gepalib.findings import report
from gepalib.run import notebooks as NB
from gepalib.run.params import check_parameters, parameter_defaults, parameters_spec
from gepalib.run.params import parameters_cell as cell_source

REPO = Path(__file__).resolve().parents[1]
NB_DIR = REPO / "notebooks"
VERDICTS = set(F.VERDICTS)
NOTEBOOKS = NB.notebook_names()
FINDING = {"10_warmdown": "F1", "11_compressibility": "F2", "12_sgd_vs_adamw": "F3", "13_freezing": "F4",
           "14_ttt_share": "F5"}  # the record each findings notebook writes (its plan says so too)


def parameters_cell(nb) -> nbformat.NotebookNode:
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "exactly one cell must be tagged 'parameters'"
    return cells[0]


def parameter_names(nb) -> set[str]:
    return set(parameters_spec(parameters_cell(nb).source))


def cells_of(nb) -> list[tuple[str, str, tuple[str, ...]]]:
    """What a pair must agree on: each cell's type, source and tags (ids, execution metadata and
    jupytext's layout hints are noise)."""
    return [(c.cell_type, c.source.strip("\n"), tuple(c.get("metadata", {}).get("tags", []))) for c in nb.cells]


def test_every_notebook_is_a_jupytext_pair():
    assert len(NOTEBOOKS) == 10 and NOTEBOOKS == sorted(NOTEBOOKS)
    assert sorted(p.stem for p in NB_DIR.glob("*.ipynb")) == NOTEBOOKS
    assert sorted(p.stem for p in NB_DIR.glob("*.py")) == NOTEBOOKS
    for kind in ("gpu", "demo", "quick"):
        assert sorted(p.name.removesuffix(f".{kind}.yaml") for p in NB_DIR.glob(f"*.{kind}.yaml")) == NOTEBOOKS
    config = (NB_DIR / "jupytext.toml").read_text()
    assert 'formats = "ipynb,py:percent"' in config
    assert not (REPO / "scripts" / "make_notebooks.py").exists()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_pair_in_sync(name):
    """The .ipynb holds exactly the cells jupytext makes from the .py (run `jupytext --sync
    notebooks/*.py` after editing a source outside JupyterLab)."""
    py = NB_DIR / f"{name}.py"
    assert py.read_text(encoding="utf-8").startswith("# ---\n# jupyter:\n#   kernelspec:")
    from_py = jupytext.read(py, fmt="py:percent")
    ipynb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    assert cells_of(ipynb) == cells_of(from_py), f"{name}: .py and .ipynb differ; run jupytext --sync"
    assert ipynb.metadata["kernelspec"] == from_py.metadata["kernelspec"]
    assert "# %% tags=[\"parameters\"]" in py.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_output_free_with_parameters(name):
    path = NB_DIR / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for c in nb.cells:
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None, f"{path.name}: a code cell carries output"
    assert nb.metadata["kernelspec"]["name"] == "python3"
    names = parameter_names(nb)
    assert names == parameter_names(jupytext.read(NB_DIR / f"{name}.py"))
    assert {"preset", "scale", "nproc", "data_dir", "runs_root", "figures_dir"} <= names
    gpu = yaml.safe_load((NB_DIR / f"{name}.gpu.yaml").read_text())
    assert set(gpu) <= names, f"{name}.gpu.yaml sets unknown parameters {set(gpu) - names}"
    assert gpu["scale"] == "full" and gpu["preset"] == "gepa11"
    for budget in ("demo", "quick"):
        assert set(NB.budget_parameters(name, budget)) <= names


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_sources_use_the_current_api(name):
    text = (NB_DIR / f"{name}.py").read_text(encoding="utf-8")
    for old in ("from gepalib import runs", "gepalib.reproduce", "-m gepalib.train", "SPEC", "(issue"):
        assert old not in text, f"{name}.py still mentions {old!r}"
    for c in jupytext.read(NB_DIR / f"{name}.py").cells:  # every code cell parses
        if c.cell_type == "code":
            ast.parse(c.source)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_are_checked_first_and_the_shipped_values_pass(name):
    """The first code cell after the parameters cell is tagged plan and checks them; every
    parameter is annotated; the demo, quick and full-scale parameter sets have the declared kinds."""
    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    i = cells.index(parameters_cell(nb))
    assert "check_parameters(globals())" in cells[i + 1].source and "plan" in cells[i + 1].metadata["tags"]
    src = parameters_cell(nb).source
    tree = ast.parse(src)
    assert not [n for n in tree.body if isinstance(n, ast.Assign)], f"{name}: a parameter without its type"
    for given in (yaml.safe_load((NB_DIR / f"{name}.gpu.yaml").read_text()), NB.budget_parameters(name, "demo"),
                  NB.budget_parameters(name, "quick")):
        ns: dict = {}
        exec(src, ns)
        ns.update(given)
        exec("import os", ns)  # the plan cell's first import
        got = check_parameters(ns)
        assert {k: got[k] for k in given} == given


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_papermill_reads_every_parameter_as_declared(name, caplog):
    """papermill.inspect_notebook parses every line of the parameters cell (no "Unable to parse"
    warning), with the annotation as its type and the same default."""
    import papermill as pm

    src = parameters_cell(nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)).source
    with caplog.at_level("WARNING", logger="papermill"):
        found = pm.inspect_notebook(str(NB_DIR / f"{name}.ipynb"))
    assert not [r for r in caplog.records if "Unable to parse" in r.getMessage()]
    tree = ast.parse(src)
    want = {n.target.id: ast.unparse(n.annotation).strip("'\"") for n in tree.body if isinstance(n, ast.AnnAssign)}
    assert {k: v["inferred_type_name"] for k, v in found.items()} == want
    defaults = parameter_defaults(src)
    assert {k: ast.literal_eval(v["default"]) for k, v in found.items()} == defaults


def _effective(budget: str) -> dict[str, dict]:
    """Every notebook's parameters under a budget: its defaults, then the budget's file."""
    return {n: {**parameter_defaults(cell_source(NB_DIR / f"{n}.ipynb")), **NB.budget_parameters(n, budget)}
            for n in NOTEBOOKS}


@pytest.mark.parametrize("budget", ["demo", "study", "quick"])
def test_notebooks_that_share_runs_agree_on_their_settings(budget):
    """Under each budget the notebooks agree where they share runs: one ladder for every notebook
    that has one (so 11-16 reuse 10's runs), the training run of 01/02 is its longest rung, and the
    TTT notebooks with an SGD start (12-14) share it, its held-out sweep and the scored targets."""
    p = _effective(budget)
    ladder = {(tuple(q["ladder_steps"]), q["ladder_warmdown"] and tuple(q["ladder_warmdown"]), q["val_every"],
               q["warmdown_frac"], q["preset"], q["scale"]) for q in p.values() if "ladder_steps" in q}
    assert len(ladder) == 1, ladder
    ((steps, *_),) = ladder
    single = {(q["steps"], q["seed"], q["scale"]) for q in p.values() if "steps" in q and "seed" in q}
    assert single == {(max(steps), 42, next(iter(ladder))[5])}
    ttt = {json.dumps([q["sgd"], q["sweep_lrs"].get("sgd"), q["sweep_chunk_tokens"], q["sweep_epochs"],
                       q["ttt_val_tokens"], q["ttt_scoring"]]) for q in p.values() if "sgd" in q}
    assert len(ttt) == 1, ttt


def test_progress_echo_shows_the_runs_lines():
    import io

    sink = io.StringIO()
    echo = NB.ProgressEcho("10_warmdown", out=sink, step_every_s=3600)
    for chunk in ("launching tiny-abc: nproc:1 steps:100\nsome chatter\nstep:1/100 train_loss:6.9",
                  "\nstep:2/100 train_loss:6.8\nstep:20/100 val_loss:5.1 val_bpb:2.9\n",
                  "enc 10%|#\renc 100%|##########\n", "int6_roundtrip val_bpb:3.0\nint6_sliding:val_bpb:2.8\n"):
        echo.write(chunk)
    assert sink.getvalue().splitlines() == [
        "  10_warmdown | launching tiny-abc: nproc:1 steps:100",
        "  10_warmdown | step:1/100 train_loss:6.9",  # then no plain step line within the hour
        "  10_warmdown | step:20/100 val_loss:5.1 val_bpb:2.9",
        "  10_warmdown | int6_sliding:val_bpb:2.8"]
    every = io.StringIO()
    NB.ProgressEcho("x", all_lines=True, out=every).write("a\nb\npartial")
    assert every.getvalue() == "  x | a\n  x | b\n"


def test_findings_records_and_table(tmp_path):
    pub = F.published_results()
    with pytest.raises(ValueError, match="not a findings verdict"):
        report.save_finding({"finding": "F1"}, tmp_path)
    report.save_finding(F.verdict_f2(pub["F2"]), tmp_path, steps=[9000, 12000, 15000, 20000])
    report.save_finding(F.verdict_f5(pub["F5"]), tmp_path, fit={"ci": [float("nan"), 1.0], "r2": float("inf")})
    recs = report.load_findings(tmp_path)
    assert set(recs) == {"F2", "F5"} and recs["F2"]["extra"] == {"steps": [9000, 12000, 15000, 20000]}
    assert recs["F5"]["extra"] == {"fit": {"ci": [None, 1.0], "r2": None}}  # undefined numbers as null, strict JSON
    assert recs["F2"]["agrees"] and recs["F5"]["agrees"]  # the published trends agree with themselves
    assert len(recs["F2"]["interval"]) == 2 and recs["F2"]["n"] == 4 and recs["F2"]["mde"] > 0
    md = report.write_findings_md(tmp_path, notebook_rows=[{"notebook": "14_ttt_share", "status": "ok",
                                                            "seconds": 3.0}])
    text = md.read_text()
    assert text.count("| **agrees** |") == 2 and "Verdict rule (every row): agrees if the interval" in text
    assert "Magnitude" in text
    assert "Not computed: F1, F3, F4." in text
    assert "| 14_ttt_share | ok | 3 |" in text
    text = report.write_findings_md(tmp_path, sources={"F1": "10_warmdown", "F3": "12_sgd_vs_adamw"}).read_text()
    assert "Not computed: F1 (10_warmdown), F3 (12_sgd_vs_adamw), F4." in text  # the notebooks' plans name them
    # the TTT families' records get their own section
    from gepalib.findings import families as FA
    gains = {fam: [-1e-3, -1.2e-3, -0.9e-3] for fam in ("full", "lora_doc", "phased", "phased+lora_doc")}
    gains["lora_doc"] = [-20e-3, -19e-3, -21e-3]
    report.save_finding(FA.verdict_family(gains, "E1"), tmp_path)
    text = report.write_findings_md(tmp_path).read_text()
    assert "## Beyond the submission" in text and text.index("## Beyond") > text.index("F5")
    assert "E1" in text.split("## Beyond the submission")[1]
    # the machine the runs trained on, from a run's env.json
    run_dir = tmp_path / "runs" / "tiny-x"
    run_dir.mkdir(parents=True)
    (run_dir / "env.json").write_text(json.dumps({"torch": "2.13.0", "torch_threads": 1, "world_size": 1, "cpu": {
        "model": "Some CPU", "vendor": "GenuineIntel", "family_model_stepping": "6/167/1", "usable_cores": 2,
        "kernel_isa": "AVX512", "libraries": ["Intel(R) Math Kernel Library"]}}))
    report.save_finding(F.verdict_f2(pub["F2"]), tmp_path, runs=[str(run_dir)])
    text = report.write_findings_md(tmp_path).read_text()
    assert "Machine (env.json of" in text and "Some CPU (GenuineIntel 6/167/1)" in text and "AVX512" in text
    assert "torch 2.13.0" in text and "1 thread(s) per process" in text
    (tmp_path / "finding_F2.json").write_text("{not json")
    with pytest.raises(ValueError, match="finding_F2.json"):
        report.load_findings(tmp_path)


# ---------------------------------------------------------------------------
# Headless execution


@pytest.fixture(scope="module")
def nb_env(tmp_path_factory, sotu_data_dir):
    root = tmp_path_factory.mktemp("nb")
    return {"runs_root": str(root / "runs"), "figures_dir": str(root / "figures"), "out": root / "executed",
            "data_dir": str(sotu_data_dir)}


def quick_params(name: str, env: dict) -> dict:
    return NB.reproduce_parameters(name, "quick", data_dir=env["data_dir"], runs_root=env["runs_root"],
                                   figures=env["figures_dir"])


FIGURES = {"01_train": "01_training_curves", "02_artifact_and_eval": "02_stage_ledger", "10_warmdown": "F1_warmdown",
           "11_compressibility": "F2_compressibility", "12_sgd_vs_adamw": "F3_sgd_vs_adamw",
           "13_freezing": "F4_freezing", "14_ttt_share": "F5_ttt_share", "16_quantizers": "16_quantizers"}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, nb_env):
    out = NB.execute_notebook(name, nb_env["out"], quick_params(name, nb_env))
    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    # the source stays output-free
    src = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    assert all(c.outputs == [] for c in src.cells if c.cell_type == "code")
    fig_dir = Path(nb_env["figures_dir"])
    if name in FIGURES:
        for ext in ("png", "pdf"):
            assert (fig_dir / f"{FIGURES[name]}.{ext}").stat().st_size > 1000
    finding = FINDING.get(name)
    if finding:
        rec = json.loads((fig_dir / f"finding_{finding}.json").read_text())
        assert rec["verdict"] in VERDICTS and rec["finding"] == finding
        assert {"interval", "sd", "mde", "n", "criterion"} <= set(rec) and len(rec["interval"]) == 2
        # the printed verdict is the computed one
        printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
        assert rec["text"] in printed


@pytest.mark.timeout(300)
def test_failing_cell_fails_the_execution(nb_env, tmp_path):
    import papermill as pm

    params = {**quick_params("00_quickstart", nb_env), "preset": "no_such_preset"}
    with pytest.raises(pm.PapermillExecutionError, match="no_such_preset"):
        NB.execute_notebook("00_quickstart", tmp_path, params)


@pytest.mark.timeout(300)
def test_gepa_reproduce_cli_writes_findings_md(nb_env, capsys):
    """`gepa reproduce` on one findings notebook (its runs exist already: reused)."""
    from gepalib.cli import main

    rc = main(["reproduce", "--quick", "--notebooks", "11_compressibility", "--out", str(nb_env["out"]),
               "--figures", nb_env["figures_dir"], "--runs-root", nb_env["runs_root"], "--data-dir",
               nb_env["data_dir"]])
    assert rc == 0
    md = (Path(nb_env["figures_dir"]) / "findings.md").read_text()
    assert "| F2: better-trained models compress smaller |" in md
    assert "| 11_compressibility | ok |" in md
    assert "notebook:11_compressibility status:ok" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["reproduce", "--bogus"])
    assert main(["reproduce", "--notebooks", "99_nope", "--figures", nb_env["figures_dir"]]) == 2


# ---------------------------------------------------------------------------
# A notebook the package has never heard of

NEW_NOTEBOOK = '''# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 20 · A new finding: a tiny run has an int6 artifact

# %% tags=["parameters"]
preset: str = "tiny"
scale: str = "quick"
nproc: int = 1
data_dir: str = "data/sotu_sp1024"
runs_root: str = "runs"
figures_dir: str = "figures"
steps: int = 8                 # training steps
dry_run: bool = False

# %% tags=["plan"]
from gepalib import run

run.check_parameters(globals())
plan = run.Plan(nproc=nproc, runs_root=runs_root, findings=["E9"])
cfg = plan.train(run.with_length(run.base_config(preset, scale, data_dir), steps, 0.5, 2, seed=11))
plan.evaluate(cfg, "artifact")
run.stop_if_dry_run(plan, dry_run)

# %%
from gepalib.findings.report import save_finding

rd = run.launch(cfg, nproc=nproc, runs_root=runs_root)
size = run.artifact_bytes(run.ensure_artifact(rd))
save_finding({"finding": "E9", "title": "a tiny run has an int6 artifact", "ours": f"{size:,} bytes",
              "published": "-", "verdict": "agrees" if size > 0 else "does not agree"}, figures_dir)
'''


@pytest.mark.timeout(300)
def test_a_new_notebook_is_planned_priced_pretrained_and_run_with_no_package_edit(tmp_path, sotu_data_dir, capsys):
    """A findings notebook in its own folder (parameters, a plan cell with one tiny run and one
    evaluation, a quick.yaml): ``gepa reproduce --plan`` lists and prices it, ``gepa reproduce
    --notebooks NAME`` trains its run beforehand, executes it and tabulates its record."""
    from gepalib.cli import main

    folder = tmp_path / "nbs"
    folder.mkdir()
    (folder / "20_new_finding.py").write_text(NEW_NOTEBOOK)
    jupytext.write(jupytext.read(folder / "20_new_finding.py"), folder / "20_new_finding.ipynb")
    (folder / "20_new_finding.quick.yaml").write_text("steps: 6\n")
    common = ["--quick", "--notebooks-dir", str(folder), "--runs-root", str(tmp_path / "runs"),
              "--data-dir", str(sotu_data_dir)]
    assert main(["reproduce", "--plan", *common]) == 0
    out = capsys.readouterr().out
    assert "notebook 20_new_finding:" in out and "train tiny steps 6 (warmdown 3) seed 11  nproc 1  [new]" in out
    assert "eval  int6 artifact of tiny steps 6 seed 11" in out and not (tmp_path / "runs").exists()
    assert main(["reproduce", "--notebooks", "20_new_finding", *common, "--out", str(tmp_path / "out"),
                 "--figures", str(tmp_path / "fig")]) == 0
    out = capsys.readouterr().out
    assert "plan:20_new_finding runs:1 evals:1" in out and "pretrain: finished tiny-" in out
    assert "notebook:20_new_finding status:ok" in out and "reusing " in out  # the notebook found its run trained
    md = (tmp_path / "fig" / "findings.md").read_text()
    assert "| E9: a tiny run has an int6 artifact |" in md and "**agrees**" in md
    assert "| 20_new_finding | ok |" in md
