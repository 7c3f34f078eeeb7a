# The README's two commands: `make demo` (set up, run the main job) and `make test` (set up, run the tests).
# Both are idempotent: setup re-runs only when pyproject.toml or constraints.txt change.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup dataset demo test lint bench-workloads bench-compression bench-hardware bench-envs bench-galen bench-search bench-methods bench-targets bench-study

setup: $(STAMP) dataset

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-compile -c constraints.txt -e ".[dev,openvino]"
	@# Byte-compiled once here, in parallel: where PYTHONDONTWRITEBYTECODE is set (this project's machines and CI), every
	@# process (each search, each Ray worker and actor) otherwise compiled ray, torch and rllib again (import 13 s -> 6.5 s).
	@# Test folders are skipped; a package file in a newer Python's syntax fails to compile and is left as it is.
	$(BIN)/python -m compileall -qq -j 0 -x '/tests?/' $(VENV)/lib || true
	touch $@

# Fashion-MNIST from Debian's package when we may install it; otherwise galen tries the other sources.
dataset:
	@if [ -d $(FMNIST_DIR) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else echo "note: $(FMNIST_DIR) missing (sudo apt-get install dataset-fashion-mnist); galen will try --data-dir or a download"; fi

demo: setup
	$(BIN)/galen demo

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .

bench-workloads: setup
	$(BIN)/python -m bench.workloads

bench-compression: setup
	$(BIN)/python -m bench.compression

bench-hardware: setup
	$(BIN)/python -m bench.hardware

bench-envs: setup
	$(BIN)/python -m bench.envs

# Galen's experiment on this CPU (hours; resumable: re-run continues where it stopped)
bench-galen: setup
	$(BIN)/python -m bench.galen

# Search quality (issue 20): SAC against random search, TPE and uniform policies (hours; resumable), then the proxy's fidelity
bench-search: setup
	$(BIN)/python -m bench.search
	$(BIN)/python -m bench.search.fidelity

# Every search method on ResNet-56 at the search benchmark's two budgets, 3 seeds, 80 episodes (issue 24; many hours,
# resumable; runs shared with bench-search are not run again); then the accuracy predictor replayed over the archives
bench-methods: setup
	$(BIN)/python -m bench.search --plan "resnet56:0.4,0.33" --methods sac,ppo,random,tpe,gp-bo,nsga2,two-stage,random-apq,sac-drop,sac-drop-needed,uniform --seeds 3 --episodes 80 --results methods
	$(BIN)/python -m bench.search.predictor

# Is a policy specific to its target (issue 23): one search per target, every best policy re-measured on every target
bench-targets: setup
	$(BIN)/python -m bench.targets --predictor-policies 50

# galen study on Ray Tune: 2 methods x 2 seeds on ResNet-20, 1 and 2 trials at once (issue 22)
bench-study: setup
	$(BIN)/python -m bench.study
