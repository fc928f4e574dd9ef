# mpigrad: `make help` lists the targets.
#
# Everything runs in .venv, where mpigrad is installed from this tree as a wheel (not
# editable), so the tests exercise what users install. MPI comes from the MPICH wheel (the
# `mpich` extra), whose mpiexec sits in .venv/bin: no system MPI is needed. Another Python
# gets a venv of its own: `make test PYTHON=python3.10 VENV=.venv-3.10`. `make test-openmpi`
# runs tests/mpi on Debian's Open MPI instead, in .venv-openmpi.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV ?= .venv
# examples: scikit-learn, whose digits examples/data_parallel.py trains on (make test runs it).
EXTRAS ?= mpich,test,cuda,lint,examples
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
# make bench also runs bench_p2p at 8 B with ranks bound to cores (Open MPI: --bind-to core)
BENCH_BIND ?= -bind-to core
# The CPU wheel in /opt/wheels; any other version pulls gigabytes.
TORCH_VERSION := 2.13.0

# `make test` checks that pytest imports the installed mpigrad (tests/conftest.py).
export MPIGRAD_TEST_INSTALLED := 1

# mpiexec with a hard limit: the launcher kills every rank after MPIEXEC_TIMEOUT (MPICH's
# exits 255 then, Open MPI's 110), and coreutils timeout kills the launcher if that fails.
# stdin is /dev/null: CI has none.
# $(call mpirun,NP,COMMAND...) runs $(MPIEXEC); $(call mpirun_with,MPIEXEC [OPTIONS],NP,COMMAND...)
mpirun_with = MPIEXEC_TIMEOUT=$(MPI_RUN_TIMEOUT) timeout -k 10 $$(( $(MPI_RUN_TIMEOUT) + 30 )) \
	$(1) -n $(2) $(3) < /dev/null
mpirun = $(call mpirun_with,$(MPIEXEC),$(1),$(2))

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

# make test-openmpi: Debian's Open MPI (apt-get as root where OPENMPI_MPICC is missing),
# mpi4py built against it and mpigrad without the mpich extra, in a venv of its own.
OPENMPI_VENV ?= .venv-openmpi
OPENMPI_EXTRAS ?= test
OPENMPI_PACKAGES ?= openmpi-bin libopenmpi-dev
# Debian's names for Open MPI's wrappers; plain mpicc and mpiexec follow update-alternatives.
OPENMPI_MPICC ?= mpicc.openmpi
OPENMPI_MPIEXEC ?= mpiexec.openmpi
# auto: the UCX PML where it works here, else Open MPI's default (ob1) with a note; ucx; default.
OPENMPI_PML ?= auto
OMPI_BIN := $(abspath $(OPENMPI_VENV))/bin
OMPI_STAMP := $(OPENMPI_VENV)/.mpigrad-installed
# Open MPI's mpiexec refuses more ranks than cores without --oversubscribe, and root without
# --allow-run-as-root.
OMPI_MPIEXEC = $(OPENMPI_MPIEXEC) --oversubscribe \
	$(if $(filter 0,$(shell id -u)),--allow-run-as-root)
# Open MPI 4.1 picks UCX only for InfiniBand/RoCE devices (pml_ucx_tls, pml_ucx_devices); "any"
# lets it run over shared memory and TCP too.
OMPI_UCX := --mca pml ucx --mca pml_ucx_tls any --mca pml_ucx_devices any

.PHONY: help venv test test-serial test-mpi test-slurm test-openmpi venv-openmpi \
	openmpi-packages demo lint bench torch clean

help:
	@echo "make demo         venv, then $(DEMO) under mpiexec -n $(DEMO_NP)"
	@echo "make test         serial suite (tests/), then tests/mpi/ under mpiexec -n $(MPI_SIZES)"
	@echo "make test-serial  pytest tests/ (tests/mpi/ included, on one rank)"
	@echo "make test-mpi     tests/mpi/ under mpiexec -n N for N in MPI_SIZES ($(MPI_SIZES))"
	@echo "make test-slurm   slurm/*.sbatch submitted to a one-node Slurm on localhost (root)"
	@echo "make test-openmpi tests/mpi/ on Debian's Open MPI, in $(OPENMPI_VENV) (apt-get as root if missing)"
	@echo "make lint         ruff check and ruff format --check"
	@echo "make bench        each benchmarks/bench_*.py --quick under mpiexec -n $(BENCH_NP), and bench_p2p at 8 B bound to cores (installs the bench extra); records and plots in benchmarks/results/; exits 1 if one failed or missed a target beyond its noise"
	@echo "make torch        torch==$(TORCH_VERSION) into the venv, the benchmarks' baseline"
	@echo "make venv         $(VENV) with mpigrad[$(EXTRAS)] installed from this tree"
	@echo "make venv-openmpi $(OPENMPI_VENV): mpi4py built against Open MPI, mpigrad[$(OPENMPI_EXTRAS)]"
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
# No cache plugin: the ranks would race on .pytest_cache. No colour: Open MPI gives the ranks a
# terminal for stdout even when its own is a pipe.
# $(call mpi_suite,MPIEXEC [OPTIONS],BIN): tests/mpi with BIN/pytest at each of MPI_SIZES.
mpi_suite = for n in $(MPI_SIZES); do \
	  echo "== tests/mpi under $(1) -n $$n"; \
	  status=0; \
	  $(call mpirun_with,$(1),$$n,$(2)/pytest tests/mpi -p no:cacheprovider --color=no $(PYTEST_OPTS)) \
	    || status=$$?; \
	  case $$status in \
	    0) ;; \
	    5) echo "error: pytest collected no tests under mpiexec -n $$n" >&2; exit 5 ;; \
	    124|137) echo "error: mpiexec -n $$n killed after $(MPI_RUN_TIMEOUT) s" >&2; exit $$status ;; \
	    110) echo "error: Open MPI's mpiexec -n $$n timed out after $(MPI_RUN_TIMEOUT) s" \
	      "(MPIEXEC_TIMEOUT)" >&2; exit $$status ;; \
	    *) echo "error: tests/mpi failed under mpiexec -n $$n (exit $$status)" >&2; exit $$status ;; \
	  esac; \
	done

test-mpi: venv
	@$(call mpi_suite,$(MPIEXEC),$(BIN))

# The batch scripts run for real: slurm/test-local.sh starts a one-node Slurm on localhost
# (slurm/local-cluster.sh: Debian's packages, needs root), submits tests.sbatch and
# examples.sbatch (and scaling.sbatch --quick) on SLURM_TEST_NP tasks, checks them and stops it.
SLURM_TEST_NP ?= 2
# Seconds to wait for all the jobs.
SLURM_TEST_WAIT ?= 900

test-slurm: venv
	PYTHON=$(PY) PYTEST=$(BIN)/pytest MPIEXEC=$(MPIEXEC) SLURM_TEST_NP=$(SLURM_TEST_NP) \
	  SLURM_TEST_WAIT=$(SLURM_TEST_WAIT) slurm/test-local.sh

# Installed: mpiexec, and mpicc that finds mpi.h (openmpi-bin has the wrappers, libopenmpi-dev
# the headers).
openmpi-packages:
	@if command -v $(OPENMPI_MPIEXEC) > /dev/null \
	    && echo '#include <mpi.h>' | $(OPENMPI_MPICC) -E -x c - > /dev/null 2>&1; then \
	  exit 0; \
	fi; \
	if [ "$$(id -u)" -ne 0 ] || ! command -v apt-get > /dev/null; then \
	  echo "error: no $(OPENMPI_MPIEXEC), or no $(OPENMPI_MPICC) with mpi.h: install" \
	    "$(OPENMPI_PACKAGES) (make does it with apt-get as root), or name Open MPI's" \
	    "wrappers with OPENMPI_MPICC= and OPENMPI_MPIEXEC=" >&2; \
	  exit 1; \
	fi; \
	echo "== apt-get install $(OPENMPI_PACKAGES)"; \
	export DEBIAN_FRONTEND=noninteractive; \
	log=$$(mktemp); \
	{ apt-get update -qq && apt-get install -y -qq --no-install-recommends $(OPENMPI_PACKAGES); } \
	  > "$$log" 2>&1 || { tail -n 20 "$$log" >&2; rm -f "$$log"; exit 1; }; \
	rm -f "$$log"

$(OMPI_BIN)/python: | openmpi-packages
	$(PYTHON) -m venv $(OPENMPI_VENV)

# mpi4py first, built from source against Open MPI (about 4 minutes; no wheel cache, which
# might hold one built against another MPI), so that mpigrad's requirement finds it there.
venv-openmpi: $(OMPI_STAMP)

$(OMPI_STAMP): $(SOURCES) | $(OMPI_BIN)/python
	rm -rf build
	env MPICC=$(OPENMPI_MPICC) $(OMPI_BIN)/python -m pip install --no-cache-dir \
	  --no-binary mpi4py "mpi4py>=4.0"
	$(OMPI_BIN)/python -m pip install ".[$(OPENMPI_EXTRAS)]"
	@library=$$($(OMPI_BIN)/python -c \
	  'from mpi4py import MPI; print(MPI.Get_library_version().rstrip("\0").splitlines()[0])'); \
	echo "mpi4py runs on $$library"; \
	case "$$library" in \
	  "Open MPI"*) ;; \
	  *) echo "error: mpi4py in $(OPENMPI_VENV) is not built against Open MPI" >&2; exit 1 ;; \
	esac
	cd / && $(OMPI_BIN)/python $(CURDIR)/.ci/check_install.py
	touch $@

# tests/mpi under Open MPI's mpiexec; see OPENMPI_PML for UCX and OMPI_MPIEXEC for the options.
test-openmpi: $(OMPI_STAMP)
	@mpiexec="$(OMPI_MPIEXEC)"; \
	case "$(OPENMPI_PML)" in \
	  ucx) mpiexec="$$mpiexec $(OMPI_UCX)" ;; \
	  default) ;; \
	  auto) \
	    probe=$$(MPIEXEC_TIMEOUT=60 timeout -k 10 90 $$mpiexec $(OMPI_UCX) -n 2 $(OMPI_BIN)/python \
	      -c "from mpi4py import MPI; MPI.COMM_WORLD.Barrier()" < /dev/null 2>&1) \
	      && status=0 || status=$$?; \
	    if [ $$status -eq 0 ]; then \
	      echo "Open MPI's UCX PML works here: tests/mpi runs on it"; \
	      mpiexec="$$mpiexec $(OMPI_UCX)"; \
	    else \
	      echo "$$probe" | tail -n 15; \
	      echo "note: Open MPI's UCX PML does not work here (a 2-rank probe exited $$status," \
	        "output above): tests/mpi runs on its default PML instead"; \
	    fi ;; \
	  *) echo "error: OPENMPI_PML is auto, ucx or default, not $(OPENMPI_PML)" >&2; exit 2 ;; \
	esac; \
	$(call mpi_suite,$$mpiexec,$(OMPI_BIN))

demo: venv
	@test -f "$(DEMO)" || { echo "make demo: $(DEMO) does not exist (DEMO=path/to/script.py names another)" >&2; exit 1; }
	$(call mpirun,$(DEMO_NP),$(PY) $(DEMO))

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

$(VENV)/.bench-installed: $(STAMP)
	rm -rf build
	$(PY) -m pip install ".[$(EXTRAS),bench]"
	touch $@

# Benchmarks are SPMD scripts in the style of mpi4py's demo/osu_bw.py: rank 0 prints a table,
# appends JSON records to benchmarks/results/<script>.jsonl and writes its plot there
# (benchmarks/README.md). benchmarks/_common.py is their harness, not a benchmark.
bench: $(VENV)/.bench-installed
	@shopt -s nullglob; scripts=(benchmarks/bench_*.py); \
	if [ $${#scripts[@]} -eq 0 ]; then echo "make bench: no benchmarks/bench_*.py" >&2; exit 1; fi; \
	failed=(); for script in "$${scripts[@]}"; do \
	  echo "== $$script --quick under mpiexec -n $(BENCH_NP)"; \
	  $(call mpirun,$(BENCH_NP),$(PY) $$script --quick --fail-missed) || failed+=("$$script"); \
	done; \
	echo "== benchmarks/bench_engine.py --cases mlp --threads 2 --quick"; \
	$(PY) benchmarks/bench_engine.py --cases mlp --threads 2 --quick --fail-missed \
	  || failed+=("bench_engine.py --threads 2"); \
	echo "== benchmarks/bench_p2p.py at 8 B, ranks bound to cores ($(BENCH_BIND))"; \
	$(call mpirun_with,$(MPIEXEC) $(BENCH_BIND),2,$(PY) benchmarks/bench_p2p.py --sizes 8 \
	  --no-plot --fail-missed) || failed+=("bench_p2p.py $(BENCH_BIND)"); \
	echo "make bench: JSON records appended to benchmarks/results/bench_*.jsonl;" \
	  "plots in benchmarks/results/bench_*.png (see benchmarks/README.md)"; \
	if [ $${#failed[@]} -gt 0 ]; then \
	  echo "make bench: failed, or missed a target by more than its noise: $${failed[*]}" >&2; \
	  exit 1; fi

torch: venv
	$(PY) -m pip install "torch==$(TORCH_VERSION)"

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis .ruff_cache
	find . -path ./.git -prune -o \( -name __pycache__ -o -name '*.nbi' -o -name '*.nbc' \) -print \
	  | xargs rm -rf
