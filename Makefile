# The two commands a newcomer needs: `make run` and `make test` (see README.md).
.PHONY: setup run test lint

setup:
	bash .ci/setup

run: setup
	.venv/bin/appliance up

test: setup
	.venv/bin/ruff check .
	.venv/bin/python -m pytest

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
