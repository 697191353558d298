# kdsweep: the two commands a new user needs. Both create (or reuse) .venv and COMET's .venv-comet
# with the pinned dependencies first (scripts/setup-venv.sh: torch first, then requirements/lock.txt,
# requirements/comet.txt).
SHELL := /bin/bash
VENV ?= .venv
CORES ?= 2
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# Nothing is downloaded from the Hugging Face hub by the demo or the tests.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: venv demo test lint clean-demo

venv:
	scripts/setup-venv.sh $(VENV)

demo: venv  ## the embedded demo, end to end, on the CPU: results/demo/report.md
	$(OFFLINE) snakemake --cores $(CORES) --configfile config/demo.yaml

# COMET's tests run under COMET's own interpreter (its environment caps numpy < 2, transformers < 5),
# without tests/conftest.py (--confcutdir). Both suites run even when the first fails; the target
# fails when either does. PYTEST_ARGS go to the main suite, COMET_PYTEST_ARGS to COMET's
# (e.g. `make test PYTEST_ARGS=tests/core COMET_PYTEST_ARGS=--co`).
test: venv  ## the test suite (unit + Snakemake integration), offline
	status=0; \
	$(OFFLINE) python -m pytest -ra $(PYTEST_ARGS) || status=$$?; \
	$(OFFLINE) PYTHONPATH=src:tests $(VENV)-comet/bin/python -m pytest -ra --confcutdir tests/comet \
	  -p no:cacheprovider $(or $(COMET_PYTEST_ARGS),tests/comet) || status=$$?; \
	exit $$status

lint: venv
	snakemake --lint --configfile config/demo.yaml
	snakefmt --check Snakefile workflow/
	ruff check src tests benchmarks scripts && ruff format --check src tests benchmarks scripts
	python scripts/sync-envs.py --check

clean-demo:
	rm -rf results/demo
