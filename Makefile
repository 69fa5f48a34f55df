# The two commands of the README. Each sets up .venv first (tools/setup_env.sh; seconds when done).
.PHONY: demo test setup

setup:
	bash tools/setup_env.sh

demo: setup
	bash tools/run_demo.sh

test: setup
	.venv/bin/python -m pytest tests -q
