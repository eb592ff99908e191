# repro-quorum: `make demo` runs a local rebuilder network, `make test` runs the whole suite.
# Both set themselves up on a fresh Debian machine: system packages (as root), a virtualenv, the package.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SYSTEM_PACKAGES := mosquitto bubblewrap mmdebstrap diffoscope dpkg-dev debhelper fakeroot \
	apt-utils build-essential chromium xz-utils ca-certificates gpgv gnupg python3-apt \
	apt-transport-in-toto in-toto
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint typecheck bench clean vectors

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/ensure-system-packages.sh
	scripts/ensure-system-packages.sh $(SYSTEM_PACKAGES)
	$(PYTHON) -m venv $(VENV)
	@echo "installing repro-quorum and its test tools into $(VENV) (about a minute the first time; log: $(VENV)/pip.log)"
	@: > $(VENV)/pip.log
	@scripts/pip-install-progress.sh $(VENV)/pip.log $(PY) --upgrade pip
	@scripts/pip-install-progress.sh $(VENV)/pip.log $(PY) -e '.[test]'
	@echo "    done"
	$(PY) scripts/link_apt_pkg.py
	touch $@

demo: setup
	$(PY) -m rqdemo $(if $(DEMO_ONCE),--once)

lint: setup
	$(VENV)/bin/ruff check verifier rebuilder coordinator rqdb rqdemo tests benchmarks scripts

typecheck: setup
	$(VENV)/bin/mypy

test: lint typecheck
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

test-fast: lint typecheck
	$(PY) -m pytest -q -ra -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(PY) -m benchmarks $(BENCH_ARGS)

vectors: setup
	$(PY) scripts/make_vectors.py tests/vectors

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
