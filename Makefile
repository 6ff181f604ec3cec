# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv, install selfsup into it, then run. On a machine without
# nvidia-smi, torch is pinned to the CPU wheel through constraints/cpu.txt so that
# no CUDA packages are downloaded; set CONSTRAINTS= to install an unpinned torch.
#
# `make test` (what CI runs) also installs the `dali` and `triton` extras (nvidia-dali, about 1 GB; its
# CPU-only mode runs here) and builds the real ffcv in .venv-ffcv (.ci/ffcv-setup.sh, which
# apt-installs OpenCV and libjpeg-turbo headers) for the .beton interoperability tests.
# Tests marked `gpu` need a CUDA device: `make test-gpu` runs them.
PYTHON ?= python3
VENV ?= .venv
FFCV_VENV ?= .venv-ffcv
CONSTRAINTS ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,constraints/cpu.txt)
PIP_ARGS = $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
# Optional packages must be there (a missing one fails instead of skipping); the packaging
# test installs the wheel into a fresh venv with the same torch pin.
TEST_ENV = SELFSUP_FFCV_PYTHON=$(abspath $(FFCV_VENV))/bin/python SELFSUP_REQUIRE_FFCV=1 \
	SELFSUP_REQUIRE_DALI=1 SELFSUP_REQUIRE_TRITON=1 \
	SELFSUP_PIP_CONSTRAINTS=$(if $(CONSTRAINTS),$(abspath $(CONSTRAINTS)))

.PHONY: install install-test demo test test-gpu lint clean whole-path profile-docs

$(VENV)/.installed: setup.py $(wildcard constraints/*.txt)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q $(PIP_ARGS) -e '.[dev]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(VENV)/bin/pip install -q $(PIP_ARGS) -e '.[dev,dali,triton]'
	touch $@

$(FFCV_VENV)/.ready: .ci/ffcv-setup.sh
	FFCV_VENV=$(FFCV_VENV) bash .ci/ffcv-setup.sh
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test $(FFCV_VENV)/.ready

demo: install
	$(VENV)/bin/selfsup pretrain

test: install-test
	$(TEST_ENV) $(VENV)/bin/python -m pytest -q -m 'not gpu'

# The whole path on the built-in data: pretrain, k-NN, linear probe, fine-tuning on 10% of
# the labels (pretrained and from random init), distillation; prints the README's table.
whole-path: install
	$(VENV)/bin/python benchmarks/whole_path.py --out runs/whole-path-$(shell date +%Y%m%d-%H%M%S)

# The README's two profiles (the demo, a 224 px SimCLR config from JPEG photos) into docs/.
profile-docs: install
	$(VENV)/bin/python benchmarks/profile_docs.py --docs docs

test-gpu: install-test
	$(VENV)/bin/python -m pytest -q -m gpu

lint: install
	$(VENV)/bin/ruff check selfsup tests benchmarks
	$(VENV)/bin/ruff format --check selfsup tests benchmarks

clean:
	rm -rf $(VENV) $(FFCV_VENV) runs .pytest_cache
