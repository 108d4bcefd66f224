# The two commands a newcomer needs: `make run` and `make test` (see README.md).
.PHONY: setup run test lint

setup:
	bash .ci/setup

run: setup
	.venv/bin/appliance up

# Two xdist workers, a test module per unit of work, the longest modules first
# (tests/conftest.py): the provisioning module runs beside the rest.
test: setup
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -n 2 --dist loadgroup --no-loadscope-reorder

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
