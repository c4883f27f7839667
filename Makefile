# Two commands on a fresh machine:
#   make serve   install into .venv and run the relay on its embedded SQLite log
#   make test    install into .venv, install and start every server the tests use, run them
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: serve test test-servers lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	RELAY_LOG_FORMAT=$${RELAY_LOG_FORMAT:-text} $(BIN)/relay serve

# What the tests talk to: the machine's servers (started if stopped), Ceph RGW (a real S3
# server and notification sender), Chromium (the status page's browser test), Prometheus
# with promtool (the alert rules and the dashboard's queries) and socat (the TLS front of the
# Kafka broker, which serves no TLS itself). Each is quiet and quick when already there.
test-servers:
	bash scripts/ensure-servers.sh
	bash scripts/install-ceph.sh
	bash scripts/install-browser.sh
	bash scripts/install-prometheus.sh
	bash scripts/apt-install.sh socat "the Kafka sink's TLS tests" socat

test: $(STAMP) test-servers
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
