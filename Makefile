# One way to do each thing; the README and .ci/run call these targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install system-deps run test test-unit test-integration test-browser test-docker lint bench clean \
	bench-gpu-wheels bench-gpu bench-gpu-dry-run

install: $(STAMP)

# Idempotent: re-runs only when pyproject.toml changes or the venv is missing.
# torch and torchvision first, pinned to the builds this machine's pip serves from disk (see ../shared/NOTES.md).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 'setuptools<81' wheel
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[api,worker,local,dev]'
	$(PY) -c "import torch, clip, taming.modules.diffusionmodules.model, fastapi, celery" 
	touch $(STAMP)

# Debian packages the tests drive for real: redis-server, and Chromium for the browser tests.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

run: install
	$(VENV)/bin/artgen up

# Everything but tests/docker (marker `docker`), which has its own target below.
test: install system-deps
	$(PY) -m pytest -m "not docker" $(PYTEST_ARGS)

test-unit: install
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: install system-deps
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

test-browser: install system-deps
	$(PY) -m pytest tests/browser $(PYTEST_ARGS)

# The images built from the Dockerfiles and the compose stack run for real (root, Debian): installs and
# starts a Docker engine and Compose v2 when missing, builds stand-ins for the public base images
# (Docker Hub is out of reach here), then tests/docker. Figures: test-artifacts/docker-figures.json.
test-docker: install
	PYTHON=$(abspath $(PY)) bash tests/docker/bootstrap.sh
	$(PY) -m pytest tests/docker -m docker -p no:cacheprovider $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: install
	$(PY) bench/engine.py --model imagenet-16384 --random-weights --size 64 --cutn 8 --iterations 5

# The GPU run (BENCHMARKS.md, "GPU"). Here: the wheels the GPU machine lacks, for its Python 3.12, into
# .whl/ (git ignores it; it travels with the working tree). There: `make bench-gpu` installs them beside
# that machine's own torch and runs every stage of bench/gpu.py within 8 minutes, writing
# $(BENCH_GPU_OUT)/gpu.json, gpu.md and gpu-tests.log.
WHEELS := .whl
GPU_PYTHON ?= python3
GPU_SITE ?= /tmp/artgen-gpu-site
BENCH_GPU_OUT ?= bench

bench-gpu-wheels: install
	$(PY) bench/gpu_wheels.py --dest $(WHEELS)

# No venv and no `install` there: nothing can be downloaded on that machine.
bench-gpu:
	test -n "$$(ls $(WHEELS)/*.whl 2>/dev/null)" || { echo "no wheels in $(WHEELS)/: run make bench-gpu-wheels here and carry $(WHEELS)"; exit 2; }
	$(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $(GPU_SITE) $(WHEELS)/*.whl
	PYTHONPATH=$(GPU_SITE) PYTHONUNBUFFERED=1 $(GPU_PYTHON) bench/gpu.py --out-prefix $(BENCH_GPU_OUT)/gpu

# Every stage on this CPU with the tiny preset (under 3 minutes): bench/gpu-dry-run.json and .md.
bench-gpu-dry-run: install
	$(PY) bench/gpu.py --dry-run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
