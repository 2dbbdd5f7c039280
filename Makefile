# Two commands on a fresh machine: `make serve` (the cluster on the embedded default
# model) and `make test`. Everything else is installed by these targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install serve generate test bench clean

install: $(VENV)/.installed

# torch first and pinned: the only version served here as a CPU build (any other
# resolves to a multi-GB CUDA build).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

serve: install
	$(BIN)/t2v serve

generate: install
	$(BIN)/t2v generate "红色的球在草地上弹跳" -o ball.mp4

# The tests also run Prometheus, ffprobe and Chromium: installed here when missing (as root).
test: install
	.ci/system-packages
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m bench.stage_split

clean:
	rm -rf $(VENV) .pytest_cache
