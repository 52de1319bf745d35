# Two entry points that work on a fresh machine: `make demo` and `make test`.
# Both create .venv (seeing any torch already installed on the machine), install what
# they need, then run.  Without a GPU the kernel runs in Triton's interpreter on CPU.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test check bench-dry clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv --system-site-packages $(VENV)
	@# reuse an installed torch; else the CPU wheel without a GPU (plain `torch` would
	@# pull gigabytes of CUDA packages), the default build with one
	@if ! $(PY) -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch; \
	  else $(PY) -m pip install -q torch==2.13.0; fi; fi
	$(PY) -m pip install -q -e ".[test,bench,generate]"
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m fused_sampler demo
	$(PY) -m fused_sampler generate "ROMEO:"

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --durations=10
	$(PY) -m bench --dry-run --out $$(mktemp -d)/bench-dry.json

check: $(STAMP)
	$(PY) -m fused_sampler check

clean:
	rm -rf $(VENV) build *.egg-info
