# layerasync: `make demo` trains the embedded default; `make test` runs the suite.
# Both create (or reuse) a virtualenv in $(VENV) with everything needed, MPI included.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Numba caches compiled kernels next to the sources; keep one thread per rank by default.
export OMP_NUM_THREADS ?= 1

.PHONY: demo test venv torch fuzz clean experiments exp-stability exp-convergence exp-bench \
	exp-timeline bench-pytorch bench-versions bench-stall bench-hide bench-replay bench-scale bench-conv

venv: $(STAMP)

$(STAMP): setup.cfg setup.py
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "layerasync needs Python 3.11 or newer; this is " + sys.version.split()[0] + " (set PYTHON=...)")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[mpi,plot,test]' mpich
	touch $@

demo: $(STAMP)
	$(VENV)/bin/layerasync demo

# PyTorch, the CPU build, for the cross-checks in the tests and for bench-pytorch;
# the package itself never needs it. `make test TORCH=1` (and CI, which sets CI=true)
# installs it first, and then a cross-check skipped for want of torch fails the run
# (tests/conftest.py). The +cpu local version pins the CPU build, so no index can
# hand pip a CUDA one; where pip's own indexes lack it, TORCH_INDEX=URL names
# PyTorch's CPU wheel index (see PyTorch's install page). The check after the
# install refuses a CUDA build either way.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
WANT_TORCH := $(filter-out 0 false,$(TORCH) $(CI))

torch: $(STAMP)
	$(PY) -c 'import torch' 2>/dev/null || $(PY) -m pip install --quiet torch==$(TORCH_VERSION)+cpu \
	  $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(PY) -c 'import sys, torch; sys.exit(f"torch {torch.__version__} is a CUDA build" if torch.version.cuda else 0)'

# The serial run includes tests/mpi at one rank; then the MPI tests at 2 ranks, at
# 4 (oversubscribing 2 cores: slower, and still exact), and at 2 once more with
# MPICH's own asynchronous progress thread. `timeout` turns a hang into a failure;
# a failing rank aborts the job (tests/mpi_support.py); LAYERASYNC_TEST_RANKS makes
# the run fail unless mpiexec really started that many ranks, and a run in which
# no test passes fails too (tests/conftest.py).
# Test modules are imported by path (importlib): tests/ and tests/mpi may hold
# files of the same name.
MPIEXEC := $(VENV)/bin/mpiexec
PYTEST := $(PY) -m pytest -q --import-mode=importlib
mpi_tests = LAYERASYNC_TEST_RANKS=$(1) timeout $(2) $(MPIEXEC) -n $(1) $(PYTEST) -p no:cacheprovider

test: $(STAMP) $(if $(WANT_TORCH),torch)
	$(PYTEST) tests
	$(call mpi_tests,2,900) tests/mpi
	$(call mpi_tests,4,900) tests/mpi
	MPIR_CVAR_ASYNC_PROGRESS=1 LAYERASYNC_TEST_PROGRESS=mpi $(call mpi_tests,2,900) tests/mpi \
	  -k "communication_setting or rank_valued"
	$(call mpi_tests,3,600) tests/mpi3

# The fuzzer of tests/test_fuzz.py, longer than in make test (60,000 cases: about
# 15 minutes here; docs/reliability.md).
fuzz: $(STAMP)
	LAYERASYNC_FUZZ_CASES=$${LAYERASYNC_FUZZ_CASES:-60000} $(PYTEST) -p no:cacheprovider tests/test_fuzz.py -k mutation

# Experiments: each writes its data and figures under $(OUT)/ and prints the
# table that docs/results.md quotes (with these commands).
OUT ?= out
PAPER_PROFILES ?= $(OUT)
BENCH_MODELS ?= lenet alexnet-mini resnet20
BENCH_FLAGS ?= --batch 64 --iterations 30 --rounds 3
LAYERASYNC := $(VENV)/bin/layerasync

experiments: exp-stability exp-convergence exp-bench exp-timeline

exp-stability: $(STAMP)
	$(PY) experiments/delay_stability.py

exp-convergence: $(STAMP)
	$(PY) experiments/convergence.py --ranks 2 --out $(OUT)/convergence

exp-bench: $(STAMP)
	mkdir -p $(OUT)/bench
	for m in $(BENCH_MODELS); do \
	  $(MPIEXEC) -n 2 $(LAYERASYNC) bench --model $$m $(BENCH_FLAGS) --csv $(OUT)/bench/$$m.csv || exit 1; \
	done

exp-timeline: $(STAMP)
	mkdir -p $(OUT)/timeline
	for s in sync async-layerwise; do \
	  $(MPIEXEC) -n 2 $(LAYERASYNC) train --solver lenet --synthetic --strategy $$s --set max_iter=12 \
	    --set display=0 --no-progress --quiet --trace $(OUT)/timeline/$$s.json || exit 1; \
	  $(LAYERASYNC) plot timeline $(OUT)/timeline/$$s.json || exit 1; \
	done

# Our compute against PyTorch's on the CPU (docs/performance.md).
BENCH_PYTORCH_FLAGS ?=
bench-pytorch: torch
	mkdir -p $(OUT)
	$(PY) benchmarks/vs_pytorch.py --json $(OUT)/vs_pytorch.json $(BENCH_PYTORCH_FLAGS) \
	  | tee $(OUT)/vs_pytorch.md

# Convolution algorithms per 3x3 layer shape of resnet20 and resnet50: im2col,
# Winograd F(2x2) and F(4x4), PyTorch; one thread (docs/performance.md).
bench-conv: torch
	$(PY) benchmarks/conv_algorithms.py

# Two revisions side by side (default: the last commit against the working
# checkout's HEAD): BEFORE=rev AFTER=rev VERSIONS_FLAGS='--model alexnet-mini'.
BEFORE ?= HEAD~1
AFTER ?= HEAD
VERSIONS_FLAGS ?=
bench-versions: $(STAMP)
	$(PY) benchmarks/versions.py --before $(BEFORE) --after $(AFTER) $(VERSIONS_FLAGS)

# What the stall watchdog costs an allreduce (docs/reliability.md).
bench-stall: $(STAMP)
	OMP_NUM_THREADS=1 $(MPIEXEC) -n 2 $(PY) benchmarks/stall_cost.py $(STALL_FLAGS)

# The headline comparison (docs/results.md): our strategies against PyTorch DDP on
# the emulated two-host cluster (root; brought up at 150 Mbit/s if none is up).
HIDE_FLAGS ?=
bench-hide: torch
	mkdir -p $(OUT)
	$(PY) benchmarks/hide.py --json $(OUT)/hide.json $(HIDE_FLAGS) | tee $(OUT)/hide.md

# Compute replay against real compute, every strategy, 2 ranks on the emulated link (as root).
bench-replay: $(STAMP)
	mkdir -p $(OUT)
	$(PY) benchmarks/replay_fidelity.py $(REPLAY_FLAGS) | tee $(OUT)/replay_fidelity.md

# Every strategy and the parameter servers at 2..16 ranks, compute replayed (as root; long).
bench-scale: $(STAMP)
	mkdir -p $(OUT)
	$(PY) benchmarks/scale.py --csv $(OUT)/scale.csv $(SCALE_FLAGS) | tee $(OUT)/scale.md

# The simulator against bench-scale's rows, from its profiles and sweeps.
bench-validate: $(STAMP)
	$(PY) benchmarks/validate_sim.py --csv $(OUT)/scale.csv --plot $(OUT)/validate_sim.png \
		$(VALIDATE_FLAGS) | tee $(OUT)/validate_sim.md

# The paper's setups by the validated model: AlexNet and GoogLeNet on 8..1,024 nodes
# (profiles: layerasync time --json, see docs/simulator.md; PAPER_PROFILES their folder).
paper-tables: $(STAMP)
	mkdir -p $(OUT)
	$(PY) benchmarks/paper.py --profiles $(PAPER_PROFILES) --csv $(OUT)/paper.csv | tee $(OUT)/paper.md

clean:
	rm -rf $(VENV) build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
