# Two entry points (see README): `make book` and `make test`.
# Both create the virtual environment on first use: torch 2.13.0 (CPU) first,
# then everything else held to constraints.txt.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.scnotes-installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# glibc returns large freed blocks to the OS and faults them in again on the next
# minibatch; raising the thresholds keeps them, ~2.5x faster VAE training on CPU.
export MALLOC_MMAP_THRESHOLD_ := 4294967296
export MALLOC_TRIM_THRESHOLD_ := 4294967296

.PHONY: setup book check-book test test-all bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[book,dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	bash scripts/install_r.sh
	touch $(STAMP)

book: setup
	$(BIN)/jupyter-book build -W -n --keep-going .
	@test -f _build/html/index.html && echo "book: _build/html/index.html"

# Open every built page in headless Chromium (Debian's chromium + chromium-driver):
# console errors, images, unrendered maths, broken links, stderr noise; screenshots
# in _build/check/. Run after `make book`.
check-book: setup
	command -v chromedriver >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver)
	$(BIN)/python scripts/check_book.py _build/html

test: setup
	$(BIN)/python -m pytest -n 2 tests

test-all: setup
	$(BIN)/python -m pytest -n 2 -m "" tests

bench: setup
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf _build .pytest_cache
