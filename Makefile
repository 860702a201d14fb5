# drivetune: two set-up commands, `make demo` and `make test`, each bootstraps .venv on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
export OMP_NUM_THREADS := 1
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-fast venv clean results base prometheus

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps waymo-open-dataset-tf-2-12-0==1.6.7
	touch $(STAMP)

demo: $(STAMP)
	bash scripts/demo.sh

test: $(STAMP) prometheus
	$(BIN)/python -m pytest -q tests

# The fast loop while you work: tests/unit only (no Ray, no subprocess; about 2 minutes on 2 cores).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

# The Prometheus server tests/integration/test_prometheus.py scrapes with (Debian's package; CI runs as root on a fresh machine).
prometheus:
	command -v prometheus >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q --no-install-recommends prometheus; }

# The SMART-R1 Table-3-style ablation post-training the shipped base, and its data (long: about 80 min on 2 CPU cores) -> docs/results.md
results: $(STAMP)
	bash bench/results.sh

# The shipped base checkpoint base/micro (BC on 1,000 synthetic scenes, 600 steps: about 1.5 h on a busy 2-core machine; resumable)
base: $(STAMP)
	bash scripts/base.sh

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
