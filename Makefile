# The two commands of the README. Each sets up .venv first (tools/setup_env.sh; seconds when done).
# `make lint` (also the first step of `make test`): ruff (lint and format check) and codespell, configured
# in pyproject.toml; .pre-commit-config.yaml runs the same on commit.
.PHONY: demo test setup lint

VENV_BIN := .venv/bin

setup:
	bash tools/setup_env.sh

demo: setup
	bash tools/run_demo.sh

lint: setup
	$(VENV_BIN)/ruff check .
	$(VENV_BIN)/ruff format --check .
	$(VENV_BIN)/codespell

test: lint
	$(VENV_BIN)/python -m pytest tests -q --durations=30
