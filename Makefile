# mpigrad: `make help` lists the targets.
#
# Everything runs in .venv, where mpigrad is installed from this tree as a wheel (not
# editable), so the tests exercise what users install. MPI comes from the MPICH wheel (the
# `mpich` extra), whose mpiexec sits in .venv/bin: no system MPI is needed.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= mpich,test,cuda,lint
BIN := $(abspath $(VENV))/bin
PY := $(BIN)/python
MPIEXEC := $(BIN)/mpiexec

MPI_SIZES ?= 2 3 4
# Seconds per test, serial and MPI (pytest-timeout, thread method).
TEST_TIMEOUT ?= 300
# Seconds per mpiexec run: MPIEXEC_TIMEOUT, then coreutils timeout.
MPI_RUN_TIMEOUT ?= 1200
PYTEST_ARGS ?=
DEMO ?= examples/pipeline_mlp.py
DEMO_NP ?= 4
BENCH_NP ?= 2
# The CPU wheel in /opt/wheels; any other version pulls gigabytes.
TORCH_VERSION := 2.13.0

# `make test` checks that pytest imports the installed mpigrad (tests/conftest.py).
export MPIGRAD_TEST_INSTALLED := 1

# mpiexec with a hard limit: MPICH's launcher kills every rank after MPIEXEC_TIMEOUT, and
# coreutils timeout kills the launcher if that fails. stdin is /dev/null: CI has none.
# $(call mpirun,NP,COMMAND...)
mpirun = MPIEXEC_TIMEOUT=$(MPI_RUN_TIMEOUT) timeout -k 10 $$(( $(MPI_RUN_TIMEOUT) + 30 )) \
	$(MPIEXEC) -n $(1) $(2) < /dev/null

# pytest, with a clear word for exit 5 (it collected no test), which must not pass.
# $(call pytest,ARGS...)
pytest = echo "== pytest $(1)"; status=0; $(BIN)/pytest $(1) || status=$$?; \
	if [ $$status -eq 5 ]; then echo "error: pytest collected no tests: $(1)" >&2; fi; \
	exit $$status

# Reinstall when a source file, a source folder (a file added or removed) or the packaging
# changes. find does not follow mpigrad/kernels, so kernels/ is listed itself.
SOURCES := setup.cfg pyproject.toml README.md LICENSE \
	$(shell find mpigrad/ kernels/ -name __pycache__ -prune -o \( -type d -o -name '*.py' \) -print \
	  2>/dev/null)
STAMP := $(VENV)/.mpigrad-installed

.PHONY: help venv test test-serial test-mpi test-slurm demo lint bench torch clean

help:
	@echo "make demo         venv, then $(DEMO) under mpiexec -n $(DEMO_NP)"
	@echo "make test         serial suite (tests/), then tests/mpi/ under mpiexec -n $(MPI_SIZES)"
	@echo "make test-serial  pytest tests/ (tests/mpi/ included, on one rank)"
	@echo "make test-mpi     tests/mpi/ under mpiexec -n N for N in MPI_SIZES ($(MPI_SIZES))"
	@echo "make test-slurm   slurm/*.sbatch submitted to a one-node Slurm on localhost (root)"
	@echo "make lint         ruff check"
	@echo "make bench        each benchmarks/*.py --quick under mpiexec -n $(BENCH_NP) (installs the bench extra)"
	@echo "make torch        torch==$(TORCH_VERSION) into the venv, the benchmarks' baseline"
	@echo "make venv         $(VENV) with mpigrad[$(EXTRAS)] installed from this tree"
	@echo "make clean        remove the venv and build outputs"

venv: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(SOURCES) | $(PY)
	rm -rf build  # setuptools would ship modules left there from deleted sources
	$(PY) -m pip install ".[$(EXTRAS)]"
	cd / && $(PY) $(CURDIR)/.ci/check_install.py
	touch $@

test: test-serial test-mpi

PYTEST_OPTS = -q -ra --timeout=$(TEST_TIMEOUT) --timeout-method=thread $(PYTEST_ARGS)

test-serial: venv
	@$(call pytest,tests/ $(PYTEST_OPTS))

# Each rank runs pytest; see tests/mpi/conftest.py for how a failing or hung rank ends the run.
# No cache plugin: the ranks would race on .pytest_cache.
test-mpi: venv
	@for n in $(MPI_SIZES); do \
	  echo "== tests/mpi under mpiexec -n $$n"; \
	  status=0; \
	  $(call mpirun,$$n,$(BIN)/pytest tests/mpi -p no:cacheprovider $(PYTEST_OPTS)) || status=$$?; \
	  case $$status in \
	    0) ;; \
	    5) echo "error: pytest collected no tests under mpiexec -n $$n" >&2; exit 5 ;; \
	    124|137) echo "error: mpiexec -n $$n killed after $(MPI_RUN_TIMEOUT) s" >&2; exit $$status ;; \
	    *) echo "error: tests/mpi failed under mpiexec -n $$n (exit $$status)" >&2; exit $$status ;; \
	  esac; \
	done

# The batch scripts run for real: slurm/test-local.sh starts a one-node Slurm on localhost
# (slurm/local-cluster.sh: Debian's packages, needs root), submits tests.sbatch and
# examples.sbatch (and scaling.sbatch --quick) on SLURM_TEST_NP tasks, checks them and stops it.
SLURM_TEST_NP ?= 2
# Seconds to wait for all the jobs.
SLURM_TEST_WAIT ?= 900

test-slurm: venv
	PYTHON=$(PY) PYTEST=$(BIN)/pytest MPIEXEC=$(MPIEXEC) SLURM_TEST_NP=$(SLURM_TEST_NP) \
	  SLURM_TEST_WAIT=$(SLURM_TEST_WAIT) slurm/test-local.sh

demo: venv
	@test -f "$(DEMO)" || { echo "make demo: $(DEMO) does not exist (DEMO=path/to/script.py names another)" >&2; exit 1; }
	$(call mpirun,$(DEMO_NP),$(PY) $(DEMO))

lint: venv
	$(BIN)/ruff check .

$(VENV)/.bench-installed: $(STAMP)
	rm -rf build
	$(PY) -m pip install ".[$(EXTRAS),bench]"
	touch $@

# Benchmarks are SPMD scripts in the style of mpi4py's demo/osu_bw.py: rank 0 prints.
bench: $(VENV)/.bench-installed
	@shopt -s nullglob; scripts=(benchmarks/*.py); \
	if [ $${#scripts[@]} -eq 0 ]; then echo "make bench: no benchmarks/*.py" >&2; exit 1; fi; \
	for script in "$${scripts[@]}"; do \
	  echo "== $$script --quick under mpiexec -n $(BENCH_NP)"; \
	  $(call mpirun,$(BENCH_NP),$(PY) $$script --quick); \
	done

torch: venv
	$(PY) -m pip install "torch==$(TORCH_VERSION)"

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis .ruff_cache
	find . -path ./.git -prune -o \( -name __pycache__ -o -name '*.nbi' -o -name '*.nbc' \) -print \
	  | xargs rm -rf
