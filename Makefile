# Two commands do all the set-up on a fresh machine:
#   make run    create .venv, install everything, build the index if missing or stale, serve on 127.0.0.1:8000
#   make test   create .venv, install everything, lint, type-check and run the tests
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test install build lint typecheck browser eval-gate clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, as the local CPU wheel: an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	# the service, plus what rag eval's chart and rag bench need, plus the tests' tools
	$(BIN)/pip install --quiet -e '.[dev,report,bench]'
	touch $(STAMP)

install: $(STAMP)

build: $(STAMP)
	$(BIN)/rag build

run: build
	$(BIN)/rag serve

lint: $(STAMP)
	$(BIN)/ruff check rag api tests
	$(BIN)/lint-imports   # the layering in pyproject.toml: no upward import, no cycle

typecheck: $(STAMP)
	$(BIN)/mypy

# Debian's Chromium for the chat page test; playwright drives it, no browser is downloaded
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }

test: lint typecheck browser
	$(BIN)/python -m pytest

# retrieval regression gate on the seed questions (CI runs it after the tests)
eval-gate: build
	$(BIN)/rag eval --gate-mode hybrid --min-recall-at-5 0.95 --min-mrr-at-10 0.85 --min-ndcg-at-10 0.90 --min-answer 0.90

clean:
	rm -rf $(VENV) index .pytest_cache .mypy_cache .ruff_cache
