# The README's two commands: `make demo` and `make test`. Both create/refresh .venv/.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.gepalib-installed
# CPU build of torch (a local wheel on our machines; an unpinned torch pulls CUDA).
# GPU users: `make TORCH_SPEC=torch venv` after installing their CUDA torch, see README.
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv demo study test bench bench-quick bench-gpu clean-runs

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[notebooks,dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gepa data prepare
	$(VENV)/bin/gepa reproduce

# The calibrated study of the five findings (the notebooks' own parameters): < 2 h on 2 cores.
study: $(STAMP)
	$(VENV)/bin/gepa data prepare
	$(VENV)/bin/gepa reproduce --study

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/run_all.py

bench-quick: $(STAMP)
	$(PY) bench/run_all.py --quick

# On a CUDA machine, with its own Python and CUDA torch (no .venv, nothing installed): a preflight,
# then parts; none starts after --budget-s 420 (a part under way runs to its end); writes bench/results/gpu.json after every
# part (elsewhere: make bench-gpu GPU_CHECK_ARGS="--out /path/gpu.json").
bench-gpu:
	PYTHONPATH=. $(PYTHON) bench/gpu_check.py $(GPU_CHECK_ARGS)

clean-runs:
	rm -rf runs/* figures/*; touch runs/.gitkeep figures/.gitkeep
