# Two commands on a fresh machine:
#   make serve   install into .venv and run the relay on its embedded SQLite log
#   make test    install into .venv and run every test (real servers on loopback)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: serve test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	RELAY_LOG_FORMAT=$${RELAY_LOG_FORMAT:-text} $(BIN)/relay serve

test: $(STAMP)
	$(BIN)/ruff check relay tests bench
	$(BIN)/ruff format --check relay tests bench
	$(BIN)/pytest $(PYTEST_ARGS)

# wrk drives the ingest parts; Ceph RGW is the audit bucket's server in the drain part
bench: $(STAMP)
	bash scripts/ensure-servers.sh
	bash scripts/install-wrk.sh
	bash scripts/install-ceph.sh
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) relay-data .pytest_cache
