# The two commands of the README. Each sets up .venv first (tools/setup_env.sh; seconds when done).
# `make lint` (also the first step of `make test`): ruff (lint and format check) and codespell, configured
# in pyproject.toml; .pre-commit-config.yaml runs the same on commit.
.PHONY: demo test setup lint

VENV_BIN := .venv/bin
# Test processes (pytest-xdist; each runs torch on one thread). Most of the suite is single-threaded Python
# (Dynamo tracing, mmengine's Runner, config parsing), so two workers use both cores of the 2-core machines.
TEST_WORKERS ?= 2

setup:
	bash tools/setup_env.sh

demo: setup
	bash tools/run_demo.sh

lint: setup
	$(VENV_BIN)/ruff check .
	$(VENV_BIN)/ruff format --check .
	$(VENV_BIN)/codespell

test: lint
	$(VENV_BIN)/python -m pytest tests -q -n $(TEST_WORKERS) --dist worksteal --durations=30
