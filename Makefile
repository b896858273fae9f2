# Each target creates its own virtual environment on first use; re-run `make clean` to start over.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test clean

$(BIN)/s2sd-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[train,cpu,milvus,dev]'
	touch $@

demo: $(BIN)/s2sd-installed  ## set up, then train S2SD on the bundled glyphs
	$(BIN)/s2sd train

test: $(BIN)/s2sd-installed  ## set up, then run the test suite
	$(BIN)/pytest

clean:
	rm -rf $(VENV) *.egg-info
