# `make run`: the embedded default study; `make test`: the test suite.
# Both create the environment from uv.lock when it is missing or out of date.

PYTHON ?= python3
UV := $(or $(shell command -v uv 2>/dev/null),.tools/bin/uv)
VENV := .venv
SNAKEMAKE := $(VENV)/bin/snakemake

export UV_PYTHON_DOWNLOADS := never
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: run test lint benchmarks clean

run: $(VENV)/.synced
	$(SNAKEMAKE) --profile profiles/local
	$(SNAKEMAKE) --profile profiles/local --report results/report.html
	@echo
	@echo "figure:   results/figures/fig2.pdf (and .png; trajectories.pdf beside it)"
	@echo "table:    results/tables/best_accuracy.csv"
	@echo "report:   results/report.html"
	@echo "database: results/results.duckdb (views metrics_wide, cleaning_trajectories, best_accuracy_at_low_asr)"

test: $(VENV)/.synced
	$(VENV)/bin/pytest

lint: $(VENV)/.synced
	$(SNAKEMAKE) --lint

benchmarks: $(VENV)/.synced
	$(VENV)/bin/python benchmarks/poison_manifest.py
	$(VENV)/bin/python benchmarks/loader.py

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PYTHON)
	touch $@

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv

clean:
	rm -rf results .snakemake
