# The two commands of the README. Both are idempotent.
.PHONY: setup run test lint quick study study-pilot report

setup:
	bash scripts/setup.sh

run: setup  ## the default study on Fashion-MNIST, offline
	WANDB_MODE=$${WANDB_MODE:-offline} .venv/bin/python run.py $(ARGS)

test: setup lint  ## lint, then the whole test suite (on two workers, except the tests that time code or use both cores)
	WANDB_MODE=offline bash scripts/test.sh $(ARGS)

lint: setup  ## no tracked file over 1 MB outside docs/; ruff (lint, formatting); import direction and circles
	bash scripts/check_large_files.sh
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports --no-cache
	.venv/bin/python scripts/check_imports.py

quick: setup  ## the tests not marked slow (the edit loop)
	WANDB_MODE=offline .venv/bin/python -m pytest -m "not slow" $(ARGS)

# `make study`: every lesson's primary comparison (conf/study/all.yaml) over STUDY_SEEDS seeds.
# STUDY_SEEDS defaults to what the power analysis says the store in results/ needs
# (`python -m analysis.power --store results --study all --max`: run `make study-pilot`, 3 seeds,
# first), capped at STUDY_MAX_SEEDS; 3 when results/ has no pilot to plan from.
# `make study STUDY_SEEDS=8` sets it. Wall times of both: docs/results.md, "The lesson study"
# (3 seeds) and "The powered lesson study" (12 seeds).
STUDY_MAX_SEEDS ?= 12
STUDY_SEEDS ?= $(shell n=$$(.venv/bin/python -m analysis.power --store results --study all --max 2>/dev/null) \
	&& [ "$$n" -ge 1 ] 2>/dev/null && echo $$(( n < 3 ? 3 : n )) || echo 3)

study: setup  ## every lesson on Fashion-MNIST, powered number of seeds, then the report
	@n=$(STUDY_SEEDS); if [ $$n -gt $(STUDY_MAX_SEEDS) ]; then \
		echo "study: the power analysis asks for $$n seeds; running $(STUDY_MAX_SEEDS) (STUDY_MAX_SEEDS)"; \
		n=$(STUDY_MAX_SEEDS); fi; \
	echo "study: $$n seeds"; \
	WANDB_MODE=$${WANDB_MODE:-offline} .venv/bin/python run.py -m study=all seed=$$(seq -s, 0 $$((n - 1))) $(ARGS)
	.venv/bin/python -m analysis.report

study-pilot: setup  ## the same with 3 seeds: the pilot the power analysis plans from
	$(MAKE) study STUDY_SEEDS=3

report: setup  ## figures, tables and verdicts from results/
	.venv/bin/python -m analysis.report $(ARGS)
