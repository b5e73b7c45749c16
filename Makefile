# Two commands on a fresh machine: `make demo` (the main job on real data), `make test`.
# Both create .venv on first use; a second call skips what is already installed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= runs/demo

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements/cpu.txt
	$(PY) -m pip install -q -e ".[dev]"
	# recbole is installed only for the MovieLens-100K files its wheel ships; never imported.
	$(PY) -m pip install -q --no-deps recbole==1.2.1
	touch $(STAMP)

# The main job, quick form: MovieLens-100K by month, DeepFM, seed 1: incremental, replay,
# distillation and FINED; prints the summary table and writes $(DEMO)/report.md. A finished
# demo is kept (run again, it only rewrites the report). The full job:
#   fined run configs/movielens100k.yaml
demo: setup
	$(VENV)/bin/fined run configs/movielens100k.yaml --quick --out $(DEMO)

# The type check of src/ (mypy, configured in pyproject.toml), then the tests. pytest exits 5
# when it collects no test: make treats that, like any failure, as an error.
test: setup
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

# Every benchmark (about an hour on 2 cores); figures and machines in benchmarks/README.md.
bench: setup
	for b in prepare_throughput throughput movielens_accuracy knowledge scaling; do \
		$(PY) benchmarks/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
