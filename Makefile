# The two commands of the README: `make run` and `make test`. Each does its own set-up.
VENV    ?= .venv
PY      := $(VENV)/bin/python
FLASK   := $(VENV)/bin/flask --app webapp
HTMX    := webapp/static/vendor/htmx.min.js
# htmx's morph swap, which keeps focus and open <details> when a polled section is refreshed.
IDIOMORPH := webapp/static/vendor/idiomorph-ext.min.js
PYTEST_ARGS ?=
# Test processes: the tests wait on SMTP servers, nodes and browsers more than on the CPU, so
# twice the cores keeps both busy. TEST_WORKERS=0 runs in this one process.
TEST_WORKERS ?= 4
# The real PostgreSQL that this machine runs; tests make and drop their own database on it.
export TEST_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/postgres

.PHONY: run test bench bench-scale setup schema clean

$(PY):
	python3 -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund

$(HTMX): node_modules/.package-lock.json
	mkdir -p $(dir $@)
	cp node_modules/htmx.org/dist/htmx.min.js $@

$(IDIOMORPH): node_modules/.package-lock.json
	mkdir -p $(dir $@)
	cp node_modules/idiomorph/dist/idiomorph-ext.min.js $@

setup: $(VENV)/.installed $(HTMX) $(IDIOMORPH)

# `demo` runs init itself, with the demo's own passwords, then seeds and serves. Its log is read
# at a terminal: text lines, unless MAILSENDER_LOG_FORMAT says otherwise.
run: setup
	MAILSENDER_LOG_FORMAT=$${MAILSENDER_LOG_FORMAT:-text} $(FLASK) demo

test: setup
	@tools/test-prerequisites
	$(PY) -m pytest -n $(TEST_WORKERS) --durations=15 $(PYTEST_ARGS)

# SQLite against a bare loop, and one and two node processes on PostgreSQL (TEST_DATABASE_URL);
# BENCH_ARGS='--count 2000' is quicker.
BENCH_ARGS ?=
bench: setup
	$(PY) -m tools.bench $(BENCH_ARGS)

# The window, the API and a claim with a million queued and a million sent; BENCH_ARGS='--rows 200000' is quicker.
bench-scale: setup
	$(PY) -m tools.bench_scale $(BENCH_ARGS)

# Rewrites the one initial migration from webapp/core/models.py (the schema has not shipped yet).
schema: setup
	$(PY) -m webapp.core.migrations.regenerate

clean:
	rm -rf $(VENV) node_modules webapp/static/vendor
