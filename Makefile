# Set-up and entry points. Each target creates .venv if missing and installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean chromium

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cnn-tuner run

test: $(STAMP) chromium
	$(PY) -m pytest -q

# The inner loop, under 90 s on 2 cores: every test but the Ray end-to-end runs (`ray`), the few
# that take seconds each (`slow`) and the Chromium ones (tests/conftest.py lists the last two);
# needs no Chromium. `make test` runs them all.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not ray and not slow and not chromium"

# The report tests render the HTML in headless Chromium: Debian's package (no browser download),
# installed here when missing and this user can (root, or sudo without a password); otherwise one
# line says what to run.
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO=sudo; \
	  else SUDO=no; fi; \
	  if [ "$$SUDO" = no ] || ! command -v apt-get >/dev/null; then \
	    echo "make test: the report tests need Chromium; install it (Debian/Ubuntu: sudo apt-get install chromium), then run make test again" >&2; exit 2; fi; \
	  echo "make test: installing Debian's chromium for the report tests"; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The CPU benchmarks (benchmarks/*.py), one JSON line each, also collected in $(BENCH_OUT);
# 12 minutes on 2 quiet cores (20 when other work loads them; see BENCHMARKS.md). Optuna (the
# `optuna` extra, also in `dev`) is the baseline of two; pyinstrument (installed here) profiles
# the default run. gpu_throughput and gpu_packing need CUDA: run them by hand.
BENCH_OUT ?= runs/bench-cpu.jsonl
BENCH_CPU  = trial_overhead augment search_efficiency concurrency short_trials time_to_accuracy \
             profile_default memory_format

bench: $(STAMP)
	$(PY) -c 'import optuna' 2>/dev/null || $(PY) -m pip install -q 'optuna>=3.0'
	$(PY) -c 'import pyinstrument' 2>/dev/null || $(PY) -m pip install -q 'pyinstrument>=4'
	mkdir -p $(dir $(BENCH_OUT)) && : > $(BENCH_OUT)
	for b in $(BENCH_CPU); do \
	  $(PY) benchmarks/$$b.py >> $(BENCH_OUT) || exit 1; tail -n 1 $(BENCH_OUT); done

clean:
	rm -rf $(VENV) runs cnn-tuner-results .pytest_cache
