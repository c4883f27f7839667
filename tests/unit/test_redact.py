"""One redaction of secrets for every sink's error text (relay/sinks/redact.py)."""

from __future__ import annotations

from relay import sinks
from relay.config import load_sinks
from relay.sinks.redact import Redactor, for_spec


def test_declared_secrets_and_passwords_inside_other_values_are_masked() -> None:
    env = {
        "RUSTFS_NOTIFY_WEBHOOK_ENABLE_W": "on",
        "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_W": "https://hook-user:p%40ss-in-url@example.test/x",
        "RUSTFS_NOTIFY_WEBHOOK_AUTH_TOKEN_W": "tok-123456",
        "RUSTFS_NOTIFY_WEBHOOK_SIGNING_SECRET_W": "whsec_abcdefgh,whsec_zyxwvuts",
    }
    (spec,), _ = load_sinks(env, sinks.declared_options())
    redact = for_spec(spec)
    text = (
        "401 for Bearer tok-123456 at https://hook-user:p%40ss-in-url@example.test/x; "
        "secret whsec_zyxwvuts; password=p@ss-in-url"
    )
    shown = redact(text)
    for secret in ("tok-123456", "p%40ss-in-url", "p@ss-in-url", "whsec_zyxwvuts", "hook-user:"):
        assert secret not in shown, shown
    assert shown.startswith("401 for Bearer *** at https://***@example.test/x")


def test_a_short_secret_is_masked_as_a_word_only() -> None:
    redact = Redactor(["pw"])
    assert redact("user pw refused; upward") == "user *** refused; upward"


def test_the_password_of_a_go_mysql_dsn_is_masked() -> None:
    env = {
        "RUSTFS_NOTIFY_MYSQL_ENABLE_M": "on",
        "RUSTFS_NOTIFY_MYSQL_DSN_STRING_M": "relay:p@ss:w/rd@tcp(db.test:3306)/events?tls=true",
        "RUSTFS_NOTIFY_MYSQL_TABLE_M": "events",
    }
    (spec,), _ = load_sinks(env, sinks.declared_options())
    shown = for_spec(spec)("1045: Access denied for user 'relay' (password p@ss:w/rd)")
    assert "p@ss:w/rd" not in shown and shown.endswith("(password ***)")
