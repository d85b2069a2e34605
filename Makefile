# fhirhub: `make run` serves the hub with demo data; `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install run test lint typecheck bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/fhirhub db upgrade
	$(BIN)/fhirhub load examples/demo-clinic
	@echo "make run: FHIRHUB_AUTH=off -- the demo serves without tokens, on loopback only (see README: Security)"
	FHIRHUB_AUTH=off $(BIN)/fhirhub serve --host 127.0.0.1 --port 8080

lint: install
	$(BIN)/ruff check hub tests bench

typecheck: install
	$(BIN)/mypy

test: install lint typecheck
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
