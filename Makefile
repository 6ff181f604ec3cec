# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv, install selfsup into it, then run. On a machine without
# nvidia-smi, torch is pinned to the CPU wheel through constraints/cpu.txt so that
# no CUDA packages are downloaded; set CONSTRAINTS= to install an unpinned torch.
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,constraints/cpu.txt)
PIP_ARGS = $(if $(CONSTRAINTS),-c $(CONSTRAINTS))

.PHONY: install demo test lint clean

$(VENV)/.installed: setup.py $(wildcard constraints/*.txt)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q $(PIP_ARGS) -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/selfsup pretrain

test: install
	$(VENV)/bin/python -m pytest -q

lint: install
	$(VENV)/bin/ruff check selfsup tests benchmarks
	$(VENV)/bin/ruff format --check selfsup tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
