# Two commands do all the set-up: `make demo` and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: demo test fuzz lint format bench clean

$(BIN)/dlcli: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/dlcli
	$(BIN)/dlcli train sample_configs/spirals_mlp.yaml   # runs/spirals_mlp.npz, or -2, -3 ... when it exists

test: lint
	$(BIN)/python -m pytest -q -n auto --durations=15

# The fuzz tests with a long budget (DLCLI_FUZZ_EXAMPLES examples per test, default 2000);
# `make test` runs the same tests with a small, derandomized one.
fuzz: $(BIN)/dlcli
	DLCLI_FUZZ=long $(BIN)/python -m pytest -q tests/test_fuzz.py --hypothesis-show-statistics

lint: $(BIN)/dlcli
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(BIN)/dlcli
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(BIN)/dlcli
	$(BIN)/python benchmarks/bench_table.py

clean:
	rm -rf $(VENV) runs .pytest_cache
