"""deploy/prometheus/alerts.yaml and deploy/grafana/s3-notify-relay.json use only metrics the
relay exports (relay/metrics.py: its counters, gauges and histograms, and the gauges its
LogCollector reads from a real log), counters where a rate is taken, and the dashboard shows
every metric there is."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from relay import metrics
from relay.app import LocalGate
from relay.processes.board import Board
from relay.queue.log import Log
from tests.deploy.support import DEPLOY, metric_names

ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
DASHBOARD = DEPLOY / "grafana" / "s3-notify-relay.json"
SINK_LABELLED = ("relay_sink_", "relay_deliveries_total", "relay_delivery_seconds",
                 "relay_retries_total", "relay_dead_letters")  # fmt: skip


@pytest.fixture(scope="module")
async def exported(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, str]]:
    """Every series name the relay can export → its metric family's type."""
    families = [f for obj in vars(metrics).values() if isinstance(obj, MetricWrapperBase)
                for f in obj.describe()]  # fmt: skip
    event_log = Log(Path(tmp_path_factory.mktemp("log")) / "relay.db")
    event_log.open()
    try:
        await event_log.init_cursors(["file:x"])
        event_log.set_sinks(["file:x"])
        gate = LocalGate(event_log, {})
        families += list(metrics.LogCollector(event_log, ["file:x"], gate).collect())
        board = Board(tmp_path_factory.mktemp("board"), create=True)
        families += list(metrics.WorkerCollector(board).collect())
        board.close()
    finally:
        await event_log.close()
    names: dict[str, str] = {}
    for family in families:
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
        for suffix in suffixes.get(family.type, [""]):
            names[family.name + suffix] = family.type
    assert len(names) > 15 and "relay_sink_pending" in names and "relay_retries_total" in names
    yield names


def _rated(expr: str) -> set[str]:
    """Metric names rate()/irate()/increase() are applied to."""
    return set(re.findall(r"\b(?:rate|irate|increase)\(\s*([A-Za-z_:][\w:]*)", expr))


def _check_expression(expr: str, exported: dict[str, str]) -> set[str]:
    names = metric_names(expr)
    assert names, f"no metric in {expr!r}"
    unknown = names - set(exported)
    assert not unknown, f"{expr!r}: {sorted(unknown)} not exported by relay/metrics.py"
    for name in _rated(expr):
        assert exported[name] in ("counter", "histogram"), f"{expr!r}: rate of the gauge {name}"
    return names


def test_names_are_extracted_from_promql() -> None:
    assert metric_names(
        'sum by (sink, outcome) (rate(relay_deliveries_total{sink=~"$sink", outcome="x"}'
        "[$__rate_interval])) > 0 and on (sink) relay_sink_up == bool 1e3"
    ) == {"relay_deliveries_total", "relay_sink_up"}
    assert metric_names(
        "histogram_quantile(0.99, sum by (le) (rate(relay_ingest_commit_seconds_bucket[5m])))"
    ) == {"relay_ingest_commit_seconds_bucket"}
    assert metric_names("predict_linear(relay_disk_free_bytes[1h], 4 * 3600) < 268435456") == {
        "relay_disk_free_bytes"
    }


def test_a_wrong_name_or_a_rated_gauge_is_caught(exported: dict[str, str]) -> None:
    with pytest.raises(AssertionError, match="relay_nope_total"):
        _check_expression("rate(relay_nope_total[5m]) > 0", exported)
    with pytest.raises(AssertionError, match="rate of the gauge"):
        _check_expression("increase(relay_dead_letters[15m]) > 0", exported)
    with pytest.raises(AssertionError, match="not exported"):
        _check_expression("relay_ingest_commit_seconds > 1", exported)  # a histogram's base name


def test_alert_rules(exported: dict[str, str]) -> None:
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    assert len({r["alert"] for r in rules}) == len(rules), "alert names are unique"
    used: set[str] = set()
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s")), rule["alert"]
        used |= _check_expression(rule["expr"], exported)
    exprs = {r["alert"]: r["expr"] for r in rules}
    assert "relay_sink_up == 0" in exprs["RelaySinkDown"]
    assert exprs["RelaySinkBacklogOld"] == "relay_sink_oldest_pending_seconds > 600"
    assert 'reason=~"log_full.*|disk_low|error"' in exprs["RelayIngestRefusing"]
    for name in ("relay_sink_up", "relay_sink_oldest_pending_seconds", "relay_dead_letters",
                 "relay_deliveries_total", "relay_quarantined", "relay_ingest_rejected_total",
                 "relay_backpressure", "relay_disk_free_bytes"):  # fmt: skip
        assert name in used, f"no alert on {name}"


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return found


def test_dashboard(exported: dict[str, str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    sink = variables["sink"]
    assert sink["type"] == "query" and sink["multi"] and sink["includeAll"]
    query = sink["query"]["query"] if isinstance(sink["query"], dict) else sink["query"]
    match = re.fullmatch(r"label_values\((\w+), sink\)", query)
    assert match and match.group(1) in exported
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    used: set[str] = set()
    boxes = []
    for panel in panels:
        grid = panel["gridPos"]
        boxes.append((panel["title"], grid["x"], grid["y"], grid["w"], grid["h"]))
        assert grid["x"] + grid["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = _check_expression(target["expr"], exported)
            used |= names
            if any(n.startswith(SINK_LABELLED) for n in names):
                assert 'sink=~"$sink"' in target["expr"], f"{panel['title']}: not filtered by $sink"
    for i, (title, x, y, w, h) in enumerate(boxes):
        for other, ox, oy, ow, oh in boxes[i + 1 :]:
            overlap = x < ox + ow and ox < x + w and y < oy + oh and oy < y + h
            assert not overlap, f"panels {title!r} and {other!r} overlap"
    families = {re.sub(r"_(bucket|count|sum)$", "", n) for n in exported}
    shown = {re.sub(r"_(bucket|count|sum)$", "", n) for n in used}
    assert families - shown == set(), "metrics without a panel"
