# Two commands for a fresh machine: `make repro` (install + run the pipeline
# on the bundled sample, offline) and `make test`.
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
PYTHON ?= python3
export PATH := $(BIN):$(PATH)
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: install check-gpu-install browser-deps repro test test-fast pr-report check-repro recipe sweep bench bench-families bench-features bench-load seeds scale clean

BASE ?= main

# `make install GPU=1` (or `make repro GPU=1`): TensorFlow with NVIDIA's CUDA wheels, same version,
# instead of tensorflow-cpu. `make check-gpu-install` resolves it without installing.
GPU ?= 0
TF_VERSION := $(shell sed -n 's/^tensorflow-cpu==//p' requirements.txt)
INSTALLED := $(VENV)/.installed$(if $(filter 1,$(GPU)),-gpu,)

install: $(INSTALLED)

$(INSTALLED): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
ifeq ($(GPU),1)
	$(BIN)/pip uninstall --quiet --yes tensorflow-cpu
	$(BIN)/pip install --quiet "tensorflow[and-cuda]==$(TF_VERSION)"
endif
	$(BIN)/pip install --quiet --no-deps -e .
	rm -f $(VENV)/.installed $(VENV)/.installed-gpu
	touch $@

check-gpu-install: install
	$(BIN)/python bench/gpu_install.py $(TF_VERSION)

repro: install
	dvc repro

# The web app's browser test: Debian's Chromium (root or sudo) and playwright-core from npm.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser-deps: tests/browser/node_modules/.installed

tests/browser/node_modules/.installed: tests/browser/package.json tests/browser/package-lock.json
	command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium)
	cd tests/browser && npm ci --no-audit --no-fund --silent
	touch $@

# Two test processes (pytest-xdist), each taking whole files (a module's fixtures are built once), in
# the order conftest.py gives them.
test: install browser-deps
	$(BIN)/pytest -n 2 --dist loadfile --no-loadscope-reorder

# The unit tier only (library functions on real inputs; no stages, training runs or servers).
test-fast: install
	$(BIN)/pytest -m unit

# Markdown for a pull-request comment: params/metrics diff against $(BASE).
pr-report: install
	$(BIN)/cxr pr-report --base $(BASE) --out reports/pr.md --plots-html reports/plots-diff
	@echo "wrote reports/pr.md"

# Reproduce HEAD from scratch in a temporary clone (every stage executes, 13 min here) and
# compare its quality metrics with the committed ones; exit 1 beyond their 95% intervals.
check-repro: install
	$(BIN)/cxr check-repro --fresh --base HEAD

# Speed and memory figures beside the usual alternatives; writes reports/bench.json.
# Needs a finished `make repro` (it reads the cache and the exported models).
bench: repro
	$(BIN)/python bench/run.py

# `cxr serve` under 32 concurrent clients sending real X-rays and hostile files; writes reports/load.json.
bench-load: repro
	$(BIN)/python bench/load.py

# An earlier project's setup (recipes/NAME.yaml) as a DVC experiment in the workspace: params.yaml
# and the results change (`dvc exp show` compares; `git checkout params.yaml dvc.lock` goes back).
# SET: more overrides, e.g. make recipe NAME=capstone SET="models.resnet50.weights=null"
NAME ?=
SET ?=
recipe: install
	$(BIN)/cxr recipe $(NAME) $(foreach s,$(SET),--set $(s))

# The backbone sweep: one queued DVC experiment per network family (recipes/sweep.yaml), started in
# the background (`dvc queue status` watches; `dvc exp show --sort-by
# metrics/train/candidate.json:val_decision_auroc` ranks them on validation). SET as for recipe, e.g.
# SET="models.candidate.weights=imagenet" where the internet is reachable.
sweep: install
	$(BIN)/cxr sweep $(foreach s,$(SET),--set $(s))
	$(BIN)/dvc queue start

# Training cost per network family on this CPU (what `make sweep` will take); writes reports/families.json.
bench-families: install
	$(BIN)/python bench/families.py

# A frozen-backbone epoch with and without the bottleneck feature cache; writes reports/features.json.
bench-features: repro
	$(BIN)/python bench/features.py

# Every variant of params.yaml and of bench/candidates.yaml on 3 patient splits (about an hour here);
# writes reports/seeds.json, which the report stage shows. Choose params on its validation column.
seeds: repro
	$(BIN)/python bench/seeds.py --candidates bench/candidates.yaml

# NIH's full size simulated: 112,120 linked 1024-px images in Kaggle's layout, the real stages at 224 px
# (official split, train@cnn for STEPS steps); writes reports/scale.json (~30 min, ~15 GB of disk).
STEPS ?= 50
scale: install
	$(BIN)/python bench/scale.py --steps $(STEPS)

clean:
	rm -rf $(VENV)
