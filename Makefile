# `make run`: the embedded default study; `make test`: the test suite; `make gpu-check`: on a GPU
# machine, our training step and evaluation against open_clip_train's (docs/benchmarks.md).
# Each creates the environment from uv.lock when it is missing or out of date.

PYTHON ?= python3
UV := $(or $(shell command -v uv 2>/dev/null),.tools/bin/uv)
VENV := .venv
SNAKEMAKE := $(VENV)/bin/snakemake

export UV_PYTHON_DOWNLOADS := never
export NO_ALBUMENTATIONS_UPDATE := 1

PROFILE_HOME := $(or $(XDG_CONFIG_HOME),$(HOME)/.config)/snakemake

.PHONY: run test lint benchmarks gpu-check papers-ratio ladder ladder-x8 fidelity profiles clean

run: $(VENV)/.synced
	$(SNAKEMAKE) --profile profiles/local
	$(SNAKEMAKE) --profile profiles/local --report results/report.html
	@echo
	@echo "figure:   results/figures/fig2.pdf (and .png); every figure: results/studies/default/figures/"
	@echo "tables:   results/studies/default/tables/ (summary_intervals.csv: each cell with its 95% interval; comparisons.csv)"
	@echo "report:   results/report.html"
	@echo "database: results/studies/default/results.duckdb (views metrics_wide, cleaning_trajectories, study_summary; tables summary_intervals, comparisons)"

test: $(VENV)/.synced
	$(VENV)/bin/pytest

lint: $(VENV)/.synced
	$(SNAKEMAKE) --lint

benchmarks: $(VENV)/.synced
	$(VENV)/bin/python benchmarks/poison_manifest.py
	$(VENV)/bin/python benchmarks/loader.py
	$(VENV)/bin/python benchmarks/views.py

# The papers' regime (configs/papers_ratio.yaml, one to two hours on 2 cores) and its overlays
# measuring the claims its grid does not; the scale ladder (rungs at 6,000, 12,000 and 24,000
# pairs, each pretraining 4,500 steps, each resumable; 48,000 with `make ladder-x8`); the claims
# table, each claim drawn against the rungs: docs/fidelity.md. Each study's tables are kept in
# docs/fidelity/studies/ and the page is written from them, so rungs run in different sessions or
# on different machines add up and the page recomputes on a fresh clone.
RATIO := $(SNAKEMAKE) --profile profiles/local --configfile config.yaml configs/papers_ratio.yaml
LADDER := papers_ratio_x1 papers_ratio_x2 papers_ratio papers_ratio_attacks papers_ratio_robust papers_ratio_x8
KEPT := docs/fidelity/studies
# 24k-3000-steps: the preset as it was before it pretrained 4,500 steps (docs/results.md), kept.
RUNGS := 6k=$(KEPT)/papers_ratio_x1 12k=$(KEPT)/papers_ratio_x2 24k-3000-steps=$(KEPT)/papers_ratio_3000_steps \
	24k=$(KEPT)/papers_ratio,$(KEPT)/papers_ratio_attacks,$(KEPT)/papers_ratio_robust 48k=$(KEPT)/papers_ratio_x8

papers-ratio: $(VENV)/.synced
	$(RATIO)

ladder: $(VENV)/.synced
	$(RATIO)
	$(RATIO) configs/papers_ratio_attacks.yaml
	$(RATIO) configs/papers_ratio_robust.yaml
	$(RATIO) configs/papers_ratio_x1.yaml
	$(RATIO) configs/papers_ratio_x2.yaml
	$(MAKE) fidelity

ladder-x8: $(VENV)/.synced
	$(RATIO) configs/papers_ratio_x8.yaml
	$(MAKE) fidelity

fidelity: $(VENV)/.synced
	@for study in $(LADDER); do for table in summary detection; do \
		if [ -f results/studies/$$study/tables/$$table.csv ]; then \
			mkdir -p $(KEPT)/$$study/tables && cp results/studies/$$study/tables/$$table.csv $(KEPT)/$$study/tables/; \
		fi; done; done
	$(VENV)/bin/python -m cleanclip_core.fidelity $(RUNGS) --output docs/fidelity.md --figures docs/fidelity

gpu-check: $(VENV)/.synced
	$(VENV)/bin/python -m benchmarks.gpu_check

# --compile-bytecode: every job is a new Python process, and where PYTHONDONTWRITEBYTECODE is set
# each one would otherwise compile torch's and Snakemake's sources again (14.7 s vs 5.7 s to
# import torch and open_clip on a 2-core machine).
$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --compile-bytecode --python $(PYTHON)
	touch $@

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv

# One-time: `snakemake --profile slurm` (or local) finds this repository's profiles from anywhere.
profiles:
	mkdir -p $(PROFILE_HOME)
	@for name in local slurm; do \
		link=$(PROFILE_HOME)/$$name; \
		if [ -e $$link ] && [ ! -L $$link ]; then echo "error: $$link exists and is not a link; remove it or use --profile $(CURDIR)/profiles/$$name" >&2; exit 1; fi; \
		ln -sfn $(CURDIR)/profiles/$$name $$link && echo "$$link -> $(CURDIR)/profiles/$$name"; \
	done

clean:
	rm -rf results .snakemake
