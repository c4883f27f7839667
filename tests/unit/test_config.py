from __future__ import annotations

import pytest

from relay import sinks
from relay.app import load_config
from relay.config import (
    ConfigError,
    load_settings,
    load_sinks,
    parse_bool,
    parse_duration,
    parse_size,
)
from relay.delivery.dispatcher import Policy

OPTIONS = sinks.declared_options()


@pytest.mark.parametrize(
    ("text", "value"),
    [("on", True), ("OFF", False), ("yes", True), ("No", False), ("1", True), ("0", False),
     ("true", True), ("False", False)],
)  # fmt: skip
def test_booleans_in_every_spelling(text: str, value: bool) -> None:
    assert parse_bool(text) is value


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("5s", 5), ("2m", 120), ("24h", 86400), ("7d", 604800), ("3", 3)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_sizes() -> None:
    assert parse_size("512KiB") == 512 * 1024
    assert parse_size("8MiB") == 8 * 1024**2
    assert parse_size("1GB") == 10**9
    assert parse_size("100") == 100


def test_defaults() -> None:
    s = load_settings({})
    assert (s.listen_host, s.listen_port) == ("0.0.0.0", 8080)
    assert s.sync == "full" and s.retention == 86400 and s.max_body == 1024 * 1024
    assert s.data_dir == "./relay-data"
    assert s.admin_sample_interval == 10.0


def test_bad_setting_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^RELAY_SYNC: 'fast' is not one of full, normal"):
        load_settings({"RELAY_SYNC": "fast"})
    with pytest.raises(ConfigError, match=r"^RELAY_RETENTION: "):
        load_settings({"RELAY_RETENTION": "forever"})
    with pytest.raises(ConfigError, match=r"^RELAY_LISTEN: "):
        load_settings({"RELAY_LISTEN": "8080"})
    with pytest.raises(ConfigError, match=r"^RELAY_TRUSTED_NETWORKS: 'tenpointo' is not a network"):
        load_settings({"RELAY_TRUSTED_NETWORKS": "10.0.0.0/8, tenpointo"})
    with pytest.raises(ConfigError, match=r"^RELAY_ADMIN_SAMPLE_INTERVAL: at least 100ms"):
        load_settings({"RELAY_ADMIN_SAMPLE_INTERVAL": "0"})
    assert load_settings({"RELAY_ADMIN_SAMPLE_INTERVAL": "1m"}).admin_sample_interval == 60.0


def test_rustfs_sink_ids_are_lower_cased_and_defaults_apply_to_every_instance() -> None:
    env = {
        "RUSTFS_NOTIFY_WEBHOOK_ENABLE_PRIMARY": "on",
        "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_PRIMARY": "http://127.0.0.1:9/a",
        "RUSTFS_NOTIFY_WEBHOOK_AUTH_TOKEN_PRIMARY": "t0k",
        "RUSTFS_NOTIFY_WEBHOOK_ENABLE_BACKUP": "on",
        "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_BACKUP": "http://127.0.0.1:9/b",
        "RUSTFS_NOTIFY_WEBHOOK_TIMEOUT": "3s",  # no id: a default for all instances
        "RUSTFS_NOTIFY_ENABLE": "true",  # the store's global switch: accepted
    }
    specs, warnings = load_sinks(env, OPTIONS)
    by_name = {s.name: s for s in specs}
    assert set(by_name) == {"webhook:primary", "webhook:backup"}
    assert by_name["webhook:primary"]["auth_token"] == "t0k"
    assert by_name["webhook:backup"]["timeout"] == 3.0
    assert by_name["webhook:primary"].redacted()["auth_token"] == "***"
    assert warnings == []


def test_minio_sink_without_id_is_underscore() -> None:
    specs, _ = load_sinks(
        {"MINIO_NOTIFY_WEBHOOK_ENABLE": "on", "MINIO_NOTIFY_WEBHOOK_ENDPOINT": "http://h/x"},
        OPTIONS,
    )
    assert [s.name for s in specs] == ["webhook:_"]


def test_same_sink_under_both_prefixes_is_an_error_naming_both() -> None:
    env = {
        "RUSTFS_NOTIFY_WEBHOOK_ENABLE_A": "on",
        "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_A": "http://h/1",
        "MINIO_NOTIFY_WEBHOOK_ENABLE_A": "on",
        "MINIO_NOTIFY_WEBHOOK_ENDPOINT_A": "http://h/2",
    }
    with pytest.raises(ConfigError) as exc:
        load_sinks(env, OPTIONS)
    assert "MINIO_NOTIFY_WEBHOOK_ENABLE_A" in str(exc.value)
    assert "RUSTFS_NOTIFY_WEBHOOK_ENABLE_A" in str(exc.value)


def test_unknown_key_and_missing_required_name_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^RUSTFS_NOTIFY_WEBHOOK_ENDPIONT_A: unknown key"):
        load_sinks(
            {"RUSTFS_NOTIFY_WEBHOOK_ENDPIONT_A": "x", "RUSTFS_NOTIFY_WEBHOOK_ENABLE_A": "on"},
            OPTIONS,
        )
    with pytest.raises(ConfigError, match=r"^RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_A: required"):
        load_sinks({"RUSTFS_NOTIFY_WEBHOOK_ENABLE_A": "on"}, OPTIONS)
    with pytest.raises(ConfigError, match=r"^RUSTFS_NOTIFY_WEBHOOK_BATCH_SIZE_A: "):
        load_sinks(
            {"RUSTFS_NOTIFY_WEBHOOK_ENABLE_A": "on", "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_A": "http://h",
             "RUSTFS_NOTIFY_WEBHOOK_BATCH_SIZE_A": "many"},
            OPTIONS,
        )  # fmt: skip


def test_sink_without_enable_is_not_created_and_says_so() -> None:
    specs, warnings = load_sinks({"RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_X": "http://h"}, OPTIONS)
    assert specs == []
    assert any("RUSTFS_NOTIFY_WEBHOOK_ENABLE_X" in w for w in warnings)


def test_disabled_sink_is_not_created() -> None:
    specs, _ = load_sinks(
        {"RUSTFS_NOTIFY_WEBHOOK_ENABLE_X": "off", "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_X": "http://h"},
        OPTIONS,
    )
    assert specs == []


def test_unknown_sink_type_is_a_warning_not_an_error() -> None:
    _, warnings = load_sinks({"RUSTFS_NOTIFY_PULSAR_ENABLE_X": "on"}, OPTIONS)
    assert any("RUSTFS_NOTIFY_PULSAR_ENABLE_X" in w for w in warnings)


def test_load_config_warns_about_open_ingest_and_no_sinks() -> None:
    config = load_config({})
    assert any("RELAY_AUTH_TOKENS" in w for w in config.warnings)
    assert any("no sink" in w for w in config.warnings)


def test_delivery_policy_of_a_sink_that_gives_format_its_own_values() -> None:
    """MinIO's Redis target takes FORMAT=namespace, which the common FORMAT does not know;
    the delivery policy reads only its own keys."""
    (spec,), _ = load_sinks(
        {"MINIO_NOTIFY_REDIS_ENABLE": "on", "MINIO_NOTIFY_REDIS_ADDRESS": "127.0.0.1:6379",
         "MINIO_NOTIFY_REDIS_KEY": "k", "MINIO_NOTIFY_REDIS_FORMAT": "namespace",
         "MINIO_NOTIFY_REDIS_CONCURRENCY": "3"},
        OPTIONS,
    )  # fmt: skip
    policy = Policy.from_spec(spec)
    assert (policy.concurrency, policy.batch_size) == (3, 1000)


def test_no_setting_is_read_from_the_environment_behind_the_declared_options() -> None:
    """Every setting goes through relay/config.py, so `relay check`, the reference and the
    errors know it: elsewhere the environment is only handed to load_settings/load_config."""
    import re
    from pathlib import Path

    direct = re.compile(r"os\.environ(\.get\(|\[)|os\.getenv\(")
    root = Path(__file__).parents[2] / "relay"
    found = [
        f"{path.relative_to(root)}:{n}"
        for path in root.rglob("*.py")
        if path.name != "config.py"
        for n, text in enumerate(path.read_text().splitlines(), 1)
        if direct.search(text)
    ]
    assert found == []


def test_a_relay_variable_the_relay_does_not_read_is_warned_about() -> None:
    from relay.app import load_config

    env = {"RELAY_ADMIN_TOKEN": "x" * 20, "RELAY_RULE_A_PREFIX": "p/", "RELAY_RULE_A_SINKS": "*",
           "RELAY_LISTEN": "127.0.0.1:0", "RUSTFS_NOTIFY_FILE_ENABLE_L": "on",
           "RUSTFS_NOTIFY_FILE_PATH_L": "events.ndjson"}  # fmt: skip
    warnings = load_config(env).warnings
    assert [w for w in warnings if "not a relay setting" in w] == [
        "RELAY_ADMIN_TOKEN: not a relay setting; ignored (did you mean RELAY_ADMIN_TOKENS?)"
    ]
    assert "x" * 20 not in " ".join(warnings)  # the value, possibly a secret, is not shown
