# Two set-up-free entry points (README): `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/blm-gym: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

.venv: $(BIN)/blm-gym

demo: .venv
	SDL_VIDEODRIVER=dummy $(BIN)/blm-gym demo

test: .venv
	SDL_VIDEODRIVER=dummy $(BIN)/python -m pytest -q

bench: .venv
	$(BIN)/python benchmarks/sim_step.py

.PHONY: demo test bench .venv
