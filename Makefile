# The two commands of the README. Both are idempotent.
.PHONY: setup run test bench

setup:
	bash scripts/setup.sh

run: setup  ## the default study on Fashion-MNIST, offline
	WANDB_MODE=$${WANDB_MODE:-offline} .venv/bin/python run.py $(ARGS)

test: setup  ## the whole test suite
	WANDB_MODE=offline .venv/bin/python -m pytest $(ARGS)
