# Set-up and entry points. `make demo` and `make test` each set everything up first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
RUN    ?= runs/demo
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup demo test test-fast bench lint clean

# System packages (WordNet 3.0 from Debian), a virtualenv with torch + torchvision, the package.
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@if [ ! -f /usr/share/wordnet/data.noun ] || [ ! -f /usr/share/wordnet/index.sense ]; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq wordnet-base wordnet-sense-index; fi
	@# Headless Chromium lets the report test render the page. Outside CI the test skips without it; with CI set
	@# (CI runs `CI=true make test`) a missing browser fails set-up here and the test too, never a silent skip.
	@if [ ! -x /usr/bin/chromium ] && [ ! -x /usr/bin/chromium-headless-shell ]; then \
	  { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	    chromium-headless-shell >/dev/null 2>&1; } \
	  || if [ -n "$$CI" ]; then echo "error: could not install chromium-headless-shell (needed by CI)"; exit 1; \
	     else echo "note: chromium-headless-shell not installed; the report's browser test will be skipped"; fi; fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

# The main job on the built-in offline demo (tiny random models, 3 classes, about a minute on 2 cores).
demo: setup
	$(VENV)/bin/imagenet-plus run --config configs/demo.yaml --out $(RUN)

test: setup
	$(PY) -m pytest -q tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

bench: setup
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

lint: setup
	$(VENV)/bin/ruff check imagenet_plus tests benchmarks builder_script

clean:
	rm -rf $(VENV) runs .pytest_cache
