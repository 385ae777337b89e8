# The two commands of the README. Both are idempotent.
.PHONY: setup run test lint quick study report

setup:
	bash scripts/setup.sh

run: setup  ## the default study on Fashion-MNIST, offline
	WANDB_MODE=$${WANDB_MODE:-offline} .venv/bin/python run.py $(ARGS)

test: setup lint  ## lint, then the whole test suite
	WANDB_MODE=offline .venv/bin/python -m pytest $(ARGS)

lint: setup  ## ruff: lint and formatting, as pre-commit runs them
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

quick: setup  ## the tests not marked slow (the edit loop)
	WANDB_MODE=offline .venv/bin/python -m pytest -m "not slow" $(ARGS)

study: setup  ## every lesson on Fashion-MNIST, 3 seeds, then the report
	WANDB_MODE=$${WANDB_MODE:-offline} .venv/bin/python run.py -m study=all $(ARGS)
	.venv/bin/python -m analysis.report

report: setup  ## figures, tables and verdicts from results/
	.venv/bin/python -m analysis.report $(ARGS)
