# pydet developer entry points. `make test` and `make demo` do all the set-up on a fresh machine.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# The CPU wheel that installs offline here; only installed when no torch is present.
TORCH_SPEC ?= torch==2.13.0
NPROC := $(shell nproc 2>/dev/null || echo 2)
export MAX_JOBS ?= $(NPROC)

EXTRAS ?= test,video,coco,export
# `make test` runs each stage through `timed` and prints the seconds per stage before pytest, so that
# pytest's own summary (with its time) stays the last line.
STAGE_TIMES := .make-test-times
timed = @start=$$(date +%s); $(MAKE) --no-print-directory $(1) && echo "$(1) $$(( $$(date +%s) - start ))" >> $(STAGE_TIMES)

.PHONY: deps build test test-export pytest cuda-check cuda-check-if-nvcc cpp-test cmake-build demo bench clean

deps:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install $(TORCH_SPEC)
	@$(PYTHON) -c "import torch, sys; v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); \
		sys.exit(0 if v >= (2, 6) else 'pydet needs torch >= 2.6, found ' + torch.__version__)"

# Editable build: the extension is compiled in place (ninja, incremental), so tests run the tree.
# One pip call: a second editable install would compile every source again.
build: deps
	$(PIP) install --no-build-isolation -e ".[$(EXTRAS)]"

cuda-check:
	bash tools/cuda_check.sh

cuda-check-if-nvcc:
	@if command -v nvcc >/dev/null 2>&1; then $(MAKE) --no-print-directory cuda-check; \
	else echo "nvcc not found: skipping the CUDA compile check"; fi

TORCH_CMAKE = -DCMAKE_PREFIX_PATH="$$($(PYTHON) -c 'import torch; print(torch.utils.cmake_prefix_path)')"

# libpydet_ops for C++ (libtorch) users, built by CMake from csrc/, and the C++ test against it.
cmake-build: deps
	cmake -S . -B cmake-build -G Ninja -DCMAKE_BUILD_TYPE=Release $(TORCH_CMAKE)
	cmake --build cmake-build -j $(NPROC)
	cd cmake-build && ctest --output-on-failure

# The C++ test against the extension that `make build` compiled (the sources are not compiled again).
cpp-test: deps
	cmake -S . -B cmake-test -G Ninja -DCMAKE_BUILD_TYPE=Release $(TORCH_CMAKE) \
		-DPYDET_OPS_LIBRARY="$$($(PYTHON) -c 'import pydet._C as m; print(m.__file__)')"
	cmake --build cmake-test -j $(NPROC)
	cd cmake-test && ctest --output-on-failure

# Benchmarks run once each as tests, except those that compile or export a full-size model first (test-export).
pytest:
	$(PYTHON) -m pytest tests benchmarks -q --benchmark-disable -m "not full_export and not compiles"

# The full-size deployment checks (R50, V-39, YOLOv7 exports; AOTInductor packages in a fresh process) and the
# deployment benchmarks' compiled paths, run once each.
test-export: build
	$(PYTHON) -m pytest tests/deploy benchmarks -q --benchmark-disable -m "full_export or compiles"

# Every source is compiled once: the extension by pip, the .cu files by the CUDA check.
test:
	@rm -f $(STAGE_TIMES)
	$(call timed,build)
	$(call timed,cuda-check-if-nvcc)
	$(call timed,cpp-test)
	@echo "make test: seconds per stage (pytest reports its own)"; \
	awk '{ printf "  %-20s %5d s\n", $$1, $$2 }' $(STAGE_TIMES)
	$(MAKE) --no-print-directory pytest

demo: build
	$(PYTHON) -m pydet.demo

bench: build
	$(PYTHON) -m pytest benchmarks -q --benchmark-only

clean:
	rm -rf build cmake-build cmake-test .cuda-check pydet/_C*.so *.egg-info $(STAGE_TIMES)
