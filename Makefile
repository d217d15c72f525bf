# layerasync: `make demo` trains the embedded default; `make test` runs the suite.
# Both create (or reuse) a virtualenv in $(VENV) with everything needed, MPI included.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Numba caches compiled kernels next to the sources; keep one thread per rank by default.
export OMP_NUM_THREADS ?= 1

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): setup.cfg setup.py
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "layerasync needs Python 3.11 or newer; this is " + sys.version.split()[0] + " (set PYTHON=...)")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[mpi,plot,test]' mpich
	touch $@

demo: $(STAMP)
	$(VENV)/bin/layerasync demo

# The serial run includes tests/mpi at one rank; then the MPI tests on 2 ranks,
# and once more with MPICH's own asynchronous progress thread. `timeout` turns a
# hang into a failure; a failing rank aborts the job (tests/mpi/conftest.py).
MPIEXEC := $(VENV)/bin/mpiexec
MPI_TESTS := timeout 900 $(MPIEXEC) -n 2 $(PY) -m pytest -q -p no:cacheprovider tests/mpi

test: $(STAMP)
	$(PY) -m pytest -q tests
	$(MPI_TESTS)
	MPIR_CVAR_ASYNC_PROGRESS=1 LAYERASYNC_TEST_PROGRESS=mpi $(MPI_TESTS) -k "communication_setting or rank_valued"

clean:
	rm -rf $(VENV) build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
