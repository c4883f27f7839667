"""RELAY_LOG and its keys: checked before anything touches a log, errors name the variable."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from relay.config import ConfigError, load_settings
from relay.queue.jetstream import state
from relay.queue.jetstream.log import sink_key, sink_of_key
from relay.queue.log import Missed, Settlement


def test_unset_or_sqlite_is_the_embedded_log() -> None:
    assert load_settings({}).log == "sqlite"
    assert load_settings({"RELAY_LOG": " SQLite "}).log == "sqlite"


def test_nats_urls_are_normalised() -> None:
    s = load_settings({"RELAY_LOG": "nats://h1:4222, tls://h2:4223"})
    assert s.log == "nats://h1:4222,tls://h2:4223"
    assert s.log_replicas == 3


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"RELAY_LOG": "http://h:4222"}, "RELAY_LOG"),
        ({"RELAY_LOG": "nats://h"}, "RELAY_LOG"),
        ({"RELAY_LOG": "nats://u:secret@h:4222"}, "RELAY_LOG"),
        ({"RELAY_LOG_REPLICAS": "7"}, "RELAY_LOG_REPLICAS"),
        ({"RELAY_LOG_NAME": "a.b"}, "RELAY_LOG_NAME"),
        ({"RELAY_LOG_LEASE": "100ms"}, "RELAY_LOG_LEASE"),
        ({"RELAY_LOG_USERNAME": "u"}, "RELAY_LOG_USERNAME"),
        ({"RELAY_LOG_TOKEN": "t", "RELAY_LOG_USERNAME": "u", "RELAY_LOG_PASSWORD": "p"},
         "RELAY_LOG_PASSWORD and RELAY_LOG_TOKEN"),
        ({"RELAY_LOG_TLS_CA": "/nonexistent/ca.pem"}, "RELAY_LOG_TLS_CA"),
    ],
)  # fmt: skip
def test_invalid_settings_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env)
    assert str(err.value).startswith(variable)
    assert "secret" not in str(err.value)


def test_relay_exits_non_zero_naming_the_variable_before_touching_a_log(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {"RELAY_LOG": "nats://127.0.0.1", "RELAY_DATA_DIR": str(tmp_path / "data"),
           "PATH": "/usr/bin:/bin"}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "relay", "serve"], env=env,
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode != 0
    assert "RELAY_LOG" in done.stderr
    assert not (tmp_path / "data").exists()


def test_relay_check_shows_the_backend_without_secrets() -> None:
    env = {"RELAY_LOG": "nats://127.0.0.1:4222", "RELAY_LOG_USERNAME": "relay",
           "RELAY_LOG_PASSWORD": "hunter2-secret", "PATH": "/usr/bin:/bin"}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "relay", "check", "--json"], env=env,
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    out = json.loads(done.stdout)
    assert out["log"] == {"backend": "jetstream", "servers": "nats://127.0.0.1:4222",
                          "stream": "relay_events", "replicas": 3, "auth": "user/password"}  # fmt: skip
    assert "hunter2" not in done.stdout + done.stderr


def test_sink_names_round_trip_as_keys() -> None:
    for name in ("webhook:primary", "kafka:a-b_c", "odd name/ü"):
        assert sink_of_key(sink_key(name)) == name
        assert all(c.isalnum() or c in "._-" for c in sink_key(name))


def test_a_settlement_applies_to_the_document_as_to_the_tables() -> None:
    doc = state.SinkDoc()
    state.apply(doc, Settlement("s", cursor=5, park=[7, 8],
                                retries=[(7, 1, 100.0, 105.0, "e1"), (4, 1, 90.0, 95.0, "x")]),
                100.0)  # fmt: skip
    assert doc.cursor == 5 and set(doc.queued) == {7, 8}
    assert doc.retries[7].attempts == 1 and 4 in doc.retries
    state.apply(doc, Settlement("s", cursor=6, retries=[(7, 2, 200.0, 210.0, "e2")]), 101.0)
    assert 4 not in doc.retries  # the cursor passed it
    assert doc.retries[7].first_at == 100.0 and doc.retries[7].attempts == 2  # kept first
    doc.queued[8].letters.append("s.s.8")
    finished = state.apply(doc, Settlement("s", done=[7, 8]), 102.0)
    assert finished == ["s.s.8"] and not doc.queued and not doc.retries
    state.apply(doc, Settlement("s", missed=Missed(10, 20, 3, 1.0, 2.0, "shed")), 103.0)
    state.apply(doc, Settlement("s", missed=Missed(21, 30, 2, 2.5, 3.0, "shed")), 103.0)
    assert [(m.first_seq, m.last_seq, m.count) for m in doc.markers] == [(10, 30, 5)]
    state.apply(doc, Settlement("s", markers_done=[doc.markers[0].id]), 104.0)
    assert doc.markers == []
    state.apply(doc, Settlement("s", cursor=3), 105.0)
    assert doc.cursor == 6  # never back


def test_fsck_says_it_is_for_the_sqlite_log() -> None:
    env = {"RELAY_LOG": "nats://127.0.0.1:4222", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "relay", "fsck"], env=env,
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode != 0 and "SQLite" in done.stderr
