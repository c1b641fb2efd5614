# The whole interface a newcomer needs. Each target runs the idempotent bootstrap first.
#   make demo   deploy Qwen3-32B-FP8 on the imitations through a local Prefect server (the main job)
#   make test   lint (ruff), types (mypy), then every test (unit + integration against real docker,
#               Prefect and the imitations)
#   make lint   ruff check, ruff format --check and mypy alone (seconds)
#   make down   stop what `make demo` started
.PHONY: demo test lint down bootstrap

VENV ?= .venv
export VENV
PY := $(VENV)/bin/python

bootstrap:
	@bash deployments/bootstrap.sh

demo: bootstrap
	@bash deployments/demo.sh up

down:
	@bash deployments/demo.sh down

lint: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)
