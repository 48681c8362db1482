# Set-up on a fresh machine is part of both targets: `make test`, `make bench`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fastgen-installed
NATIVE := CMakeLists.txt setup.py pyproject.toml $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cuh')
RESULTS := bench-results
# benchmarks/bench_<suite>.py, each run by `make bench` under both allocator settings
BENCH_SUITES := adain spectral_norm vq fid nerf gram models

.PHONY: install test bench cuda-check info

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: it is the CPU wheel on local disk, so no requirement below can pull
# another (multi-GB) torch; the extension then builds against it without build isolation.
$(STAMP): $(PY) $(NATIVE)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q "cmake>=3.26" ninja "setuptools>=69" wheel
	$(PY) -m pip install -q --no-build-isolation -e ".[test,bench]"
	touch $(STAMP)

install: $(STAMP)

test: install cuda-check
	$(PY) -m pytest tests -q -n 2

# Compiles every csrc/cuda/*.cu for sm_80 and sm_90 (torch-free kernels: no GPU needed).
cuda-check: install
	@if command -v nvcc >/dev/null 2>&1; then \
	  $(VENV)/bin/cmake -S . -B build/cuda-check -G Ninja -DFASTGEN_CUDA_CHECK_ONLY=ON \
	    -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja) -DCMAKE_CUDA_COMPILER=$$(command -v nvcc) >/dev/null \
	  && $(VENV)/bin/cmake --build build/cuda-check \
	  && echo "cuda-check: csrc/cuda/*.cu compiled for sm_80 and sm_90"; \
	else echo "cuda-check: SKIPPED: nvcc is not on PATH, the CUDA kernels were not compiled"; fi

# Each suite runs once per allocator setting (fresh multi-MiB allocations page-fault, and THP
# changes how much); one report reads every JSON, with the copy bandwidth measured in each run.
bench: install
	mkdir -p $(RESULTS)
	set -e; for suite in $(BENCH_SUITES); do \
	  $(PY) -m pytest benchmarks/bench_$$suite.py -q -p no:cacheprovider \
	    --benchmark-json=$(RESULTS)/$$suite-default.json; \
	  THP_MEM_ALLOC_ENABLE=1 $(PY) -m pytest benchmarks/bench_$$suite.py -q -p no:cacheprovider \
	    --benchmark-json=$(RESULTS)/$$suite-thp.json; \
	done
	$(PY) benchmarks/report.py --png $(RESULTS)/bench.png \
	  $(foreach suite,$(BENCH_SUITES),$(RESULTS)/$(suite)-default.json $(RESULTS)/$(suite)-thp.json)

info: install
	$(PY) -m fastgen info
