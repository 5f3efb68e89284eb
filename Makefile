# pydet developer entry points. `make test` and `make demo` do all the set-up on a fresh machine.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# The CPU wheel that installs offline here; only installed when no torch is present.
TORCH_SPEC ?= torch==2.13.0
NPROC := $(shell nproc 2>/dev/null || echo 2)
export MAX_JOBS ?= $(NPROC)

.PHONY: deps build test pytest cuda-check cmake-build demo bench clean

deps:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install $(TORCH_SPEC)
	@$(PYTHON) -c "import torch, sys; v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); \
		sys.exit(0 if v >= (2, 6) else 'pydet needs torch >= 2.6, found ' + torch.__version__)"

# Editable build: the extension is compiled in place (ninja, incremental), so tests run the tree.
build: deps
	$(PIP) install --no-build-isolation --no-deps -e .
	$(PIP) install --no-build-isolation -e ".[test,video,coco,export]"

cuda-check:
	bash tools/cuda_check.sh

cmake-build: deps
	cmake -S . -B cmake-build -G Ninja -DCMAKE_BUILD_TYPE=Release \
		-DCMAKE_PREFIX_PATH="$$($(PYTHON) -c 'import torch; print(torch.utils.cmake_prefix_path)')"
	cmake --build cmake-build -j $(NPROC)
	cd cmake-build && ctest --output-on-failure

pytest:
	$(PYTHON) -m pytest tests benchmarks -q --benchmark-disable

test: build
	@if command -v nvcc >/dev/null 2>&1; then $(MAKE) cuda-check; else echo "nvcc not found: skipping the CUDA compile check"; fi
	$(MAKE) cmake-build
	$(MAKE) pytest

demo: build
	$(PYTHON) -m pydet.demo

bench: build
	$(PYTHON) -m pytest benchmarks -q --benchmark-only

clean:
	rm -rf build cmake-build .cuda-check pydet/_C*.so *.egg-info
