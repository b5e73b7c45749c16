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

# Until the continual protocol lands (`fined run`), the demo prepares MovieLens-100K by month,
# describes it, and trains DeepFM on the months before 1998-03 to test on the two after.
demo: setup
	$(VENV)/bin/fined data prepare --dataset movielens100k --out $(DEMO)/data
	$(VENV)/bin/fined data describe $(DEMO)/data
	rm -rf $(DEMO)/deepfm
	$(VENV)/bin/fined train --data $(DEMO)/data --model deepfm --train-periods 0:1998-02 \
		--valid tail:0.1 --test 1998-03:1998-04 --out $(DEMO)/deepfm

# pytest exits 5 when it collects no test: make treats that, like any failure, as an error.
test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
