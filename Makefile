# `make demo`: install everything, fetch data, train the default base once (cached), run the
# default search on x86-host and write the Pareto report to reports/demo/.
# `make test`: install everything, lint and type-check (`make lint`), and run the whole test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements-pip.lock requirements.lock pyproject.toml | sha1sum | cut -c1-12)
# pip-compile's flags for both lock files (`make lock`)
LOCK_FLAGS := --quiet --generate-hashes --allow-unsafe --no-emit-index-url --no-emit-find-links
DEMO_OUT := reports/demo

.PHONY: install demo lint test clean system-packages lock

install: system-packages $(STAMP)

# Debian packages: the aarch64 cross g++ (runners/hardware/cross_build.py links device libraries with it),
# qemu-aarch64 (tests/test_cross_build.py runs a cross-built library under emulation) and chromium
# (tests/test_smoke_search.py renders reports in it, headless, through playwright)
system-packages:
	@command -v aarch64-linux-gnu-g++ >/dev/null && command -v qemu-aarch64 >/dev/null && command -v chromium >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++-aarch64-linux-gnu qemu-user chromium; } || \
	  echo "warning: could not install g++-aarch64-linux-gnu qemu-user chromium (not root?): aarch64 builds and browser tests will say so"

# every file pip installs must match a sha256 in the lock (--require-hashes), pip itself included
$(STAMP): requirements-pip.lock requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-pip.lock
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

demo: install
	@if [ -f $(DEMO_OUT)/run.json ]; then resume=--resume; fi; \
	time $(BIN)/search run --profile x86-host --out $(DEMO_OUT) $$resume

# ruff on every Python file; mypy on the package as installed (edgesearch.search, ...): mypy does not
# follow setuptools' editable-install hook, so the folders are linked under build/typecheck/edgesearch/
# (mypy_path in pyproject.toml; its cache in build/mypy-cache makes a rerun take about a second)
PACKAGE_DIRS := common search spaces runners reports
lint: install
	$(BIN)/ruff check .
	mkdir -p build/typecheck/edgesearch
	for dir in $(PACKAGE_DIRS); do ln -sfn ../../../$$dir build/typecheck/edgesearch/$$dir; done
	$(BIN)/mypy -p edgesearch

test: install lint
	$(BIN)/python -m pytest

# `make lock`: pin again from pyproject.toml (its extras `test` included) with the sha256 of every file
# of each pinned version; pip-compile keeps the versions already in requirements.lock unless
# pyproject.toml asks for others. pip-tools runs in a scratch virtual environment under build/.
lock:
	rm -rf build/lockenv && $(PYTHON) -m venv build/lockenv
	build/lockenv/bin/python -m pip install --quiet pip==26.3 pip-tools==7.6.2
	build/lockenv/bin/pip-compile $(LOCK_FLAGS) --extra test --strip-extras --output-file requirements.lock pyproject.toml
	echo "pip==26.3" | build/lockenv/bin/pip-compile $(LOCK_FLAGS) --output-file requirements-pip.lock -

clean:
	rm -rf $(VENV) .pytest_cache
