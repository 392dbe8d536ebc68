# Two set-up commands for a fresh machine (Python 3.11 + pip): `make demo` and `make test`.
# Each creates .venv/ and installs what it needs; later runs reuse it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml .ci/constraints.txt | cksum | cut -d' ' -f1)

PHONY_BENCH := bench bench-search bench-peers bench-ties bench-throughput bench-scale bench-overhead bench-selection bench-small-data \
	bench-images bench-recipes bench-llm bench-workers bench-mo
.PHONY: demo test test-fast lint $(PHONY_BENCH) install peers \
	system-deps clean

install: $(STAMP)

$(STAMP): pyproject.toml .ci/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch and torchvision first, alone, as a matching pair from this machine's disk (before anything can ask for
	# another torch): PyPI's torchvision for the CPU-only torch 2.13.0 does not import ('torchvision::nms does not
	# exist'), and timm needs torchvision.
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -c .ci/constraints.txt -e ".[demo,test]"
	# Syne Tune, only to check MO-ASHA's promotions against its MOASHA (tests/search/test_moasha.py): without its
	# dependencies, which would pull other versions of what finesweep pins; dill is what its trial module imports.
	$(BIN)/pip install --quiet --no-deps syne-tune==0.16.0 dill==0.4.1
	rm -f $(VENV)/.installed-* && touch $@

# The other libraries benchmarks/search_efficiency.py --peers compares with, each in its own environment: their
# pins (numpy < 2, pandas < 3, gpytorch 1.13, Syne Tune 0.14) clash with finesweep's. Every package is pinned in the
# requirements file and installed without resolution, so nothing can pull another torch.
PEERS_STAMP := .venv-peers/.installed-$(shell cat benchmarks/peers/requirements-peers.txt | cksum | cut -d' ' -f1)
NEPS_STAMP := .venv-neps/.installed-$(shell cat benchmarks/peers/requirements-neps.txt | cksum | cut -d' ' -f1)
peers: $(PEERS_STAMP) $(NEPS_STAMP)  ## the peers' environments: Syne Tune, DEHB, SMAC3 (.venv-peers), NePS (.venv-neps)

$(PEERS_STAMP): benchmarks/peers/requirements-peers.txt
	$(PYTHON) -m venv .venv-peers
	.venv-peers/bin/pip install --quiet --no-deps -r benchmarks/peers/requirements-peers.txt
	rm -f .venv-peers/.installed-* && touch $@

$(NEPS_STAMP): benchmarks/peers/requirements-neps.txt
	$(PYTHON) -m venv .venv-neps
	.venv-neps/bin/pip install --quiet torch==2.14.1
	.venv-neps/bin/pip install --quiet --no-deps -r benchmarks/peers/requirements-neps.txt
	rm -f .venv-neps/.installed-* && touch $@

demo: install  ## fine-tune MiniLM on tweet sentiment: 14 TPE trials over strategies, ASHA, 3-6 min on 2 CPU cores
	$(BIN)/finesweep run demo

# Debian packages the tests start for real: PostgreSQL (an MLflow server's backend) and Chromium with its
# driver (the browser tests; kaleido draws the report's PNGs with it). Installed as root when missing.
SYSTEM_PACKAGES := postgresql chromium chromium-driver
system-deps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v chromium >/dev/null \
	    || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	  else echo "the tests need Debian's $(SYSTEM_PACKAGES): sudo apt-get install $(SYSTEM_PACKAGES)" >&2; exit 1; fi; \
	fi

test: install peers system-deps lint  ## lint, types, then the whole suite, real servers included (35-45 min on 2 cores after install)
	$(BIN)/python -m pytest

lint: install  ## ruff and mypy --strict (the strict flags are in pyproject.toml)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src

test-fast: install  ## unit tests only
	$(BIN)/python -m pytest -m "not slow"

# Every benchmark prints a markdown table (the README's Performance section shows them); ~60 min in all on 2 cores.
bench: bench-search bench-ties bench-throughput bench-scale bench-overhead bench-selection bench-small-data \
	bench-images bench-recipes bench-llm bench-workers bench-mo

bench-search: install  ## the default (GP+ASHA) vs TPE+ASHA, random, TPE, random+ASHA and hand-written Optuna on LCBench (~45 min)
	$(BIN)/python benchmarks/search_efficiency.py

bench-peers: install peers  ## the same table with Syne Tune, DEHB, SMAC3 and NePS, and the prior experiment
	$(BIN)/python benchmarks/search_efficiency.py --peers --priors

bench-mo: install  ## multi-objective on LCBench (accuracy vs runtime): MO-ASHA + MOTPE vs random, NSGA-II, MOTPE (~8 min)
	$(BIN)/python benchmarks/multiobjective.py

bench-selection: install  ## how often each model-selection procedure picks worse than the recipe (simulated, ~5 s)
	$(BIN)/python benchmarks/selection_noise.py

bench-small-data: install  ## a real 400-tweet sweep: recipe as trial 0, 5-fold finalists, the verdict (~7 min)
	$(BIN)/python benchmarks/small_data.py

bench-images: install  ## images/s of an image trial vs a bare PyTorch loop over the same arrays (~3 min, 1 thread)
	$(BIN)/python benchmarks/image_throughput.py --clock cpu --threads 1

bench-recipes: install  ## the vision and NER recipes end to end on real digits / generated CoNLL (~25 min)
	$(BIN)/python benchmarks/task_recipes.py --trials 8

bench-ties: install  ## ASHA's ties broken by val/loss vs Ray's rule, on a real MiniLM sweep (~9 min)
	$(BIN)/python benchmarks/asha_ties.py

bench-throughput: install  ## one MiniLM trial's samples/s through finesweep vs a hand-written PyTorch loop
	$(BIN)/python benchmarks/trial_throughput.py

bench-scale: install  ## 100, 300 and 1,000 sleeping trials, 32 at a time: finesweep vs hand-written Ray Tune
	$(BIN)/python benchmarks/scale.py

bench-overhead: install  ## finesweep's whole run vs hand-written scripts: 16 synthetic trials, then 8 real MiniLM trials
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/overhead.py --real

clean:
	rm -rf $(VENV) .venv-peers .venv-neps

bench-workers: install  ## one trial's samples/s on 1 and 2 workers; ASHA's stop -> the workers' resources free (~5 min)
	$(BIN)/python benchmarks/workers.py

bench-llm: install  ## sweeps/llm_lora.yaml on a tiny Llama: wall-clock, perplexity, steps ASHA saved, tokens/s vs a bare loop (~10 min)
	$(BIN)/python benchmarks/llm_lora.py
