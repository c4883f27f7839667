"""The operator's commands against a real relay process and its log."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.support.bodies import minio_body
from tests.support.receiver import Receiver
from tests.support.relay_process import RelayProcess, free_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e
TOKEN = "cli-token-51d"
SECRET = "hunter2-webhook-secret"


def env(receiver: Receiver, **extra: str) -> dict[str, str]:
    return {
        "RELAY_AUTH_TOKENS": TOKEN,
        "RUSTFS_NOTIFY_WEBHOOK_ENABLE_MAIN": "on",
        "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_MAIN": receiver.url,
        "RUSTFS_NOTIFY_WEBHOOK_AUTH_TOKEN_MAIN": SECRET,
        "RUSTFS_NOTIFY_WEBHOOK_BACKOFF_MAX_MAIN": "300ms",
        **extra,
    }


async def post_all(relay: RelayProcess, bodies: list[bytes]) -> list[int]:
    statuses = []
    async with aiohttp.ClientSession() as session:
        for body in bodies:
            async with session.post(
                relay.url + "/cli", data=body, headers={"Authorization": f"Bearer {TOKEN}"}
            ) as response:
                statuses.append(response.status)
    return statuses


def relay_cli(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args], env=env, capture_output=True, text=True,
        timeout=60, cwd=cwd,
    )  # fmt: skip


def test_invalid_config_exits_2_naming_the_variable_and_touches_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    base = {"PATH": "/usr/bin:/bin", "RELAY_DATA_DIR": str(data)}
    for bad, variable in (
        ({"RELAY_SYNC": "sometimes"}, "RELAY_SYNC"),
        ({"RUSTFS_NOTIFY_WEBHOOK_ENABLE_X": "on"}, "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_X"),
        ({"RUSTFS_NOTIFY_WEBHOOK_ENABLE_X": "on", "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_X": "ftp://h"},
         "RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_X"),
        ({"RELAY_RULE_A_MIN_SIZE": "big"}, "RELAY_RULE_A_MIN_SIZE"),
    ):  # fmt: skip
        result = relay_cli({**base, **bad}, "serve", cwd=tmp_path)
        assert result.returncode == 2, result
        assert variable in result.stderr
        assert "Traceback" not in result.stderr
    assert not data.exists()


async def test_check_redacts_secrets_and_reports_reachability(
    tmp_path: Path, receiver: Receiver
) -> None:
    ok = relay_cli(RelayProcess(tmp_path, env(receiver)).env, "check", cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "sink webhook:main:" in ok.stdout and "reachable: yes" in ok.stdout
    dead_env = env(
        receiver, RUSTFS_NOTIFY_WEBHOOK_ENDPOINT_MAIN=f"http://127.0.0.1:{free_port()}/x"
    )
    down = relay_cli(RelayProcess(tmp_path, dead_env).env, "check", cwd=tmp_path)
    assert down.returncode == 1
    assert "reachable: NO" in down.stdout
    for result in (ok, down):
        assert SECRET not in result.stdout + result.stderr
        assert TOKEN not in result.stdout + result.stderr
        assert "auth_token = ***" in result.stdout


async def test_dlq_retry_and_replay_through_the_cli(
    receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    receiver.status = 400  # the receiver rejects everything: dead letters
    relay = await relay_factory(env(receiver)).start()
    assert await post_all(relay, [minio_body("b", f"k{n}", n) for n in range(3)]) == [200] * 3
    await eventually(lambda: "3 dead letter(s)" in relay.cli("dlq", "list").stdout)
    listed = relay.cli("dlq", "list").stdout
    assert "HTTP 400" in listed and "b/k0" in listed
    assert receiver.received == []

    receiver.status = 200  # the cause is fixed
    assert "3 dead letter(s) queued" in relay.cli("dlq", "retry", "--all").stdout
    # queued once: a second retry leaves those being retried alone
    assert "0 dead letter(s) queued" in relay.cli("dlq", "retry", "--all").stdout
    await receiver.wait_for(3)
    await eventually(lambda: "0 dead letter(s)" in relay.cli("dlq", "list").stdout)  # delivered

    replayed = relay.cli("replay", "--sink", "webhook:main", "--prefix", "k1").stdout
    assert "1 event(s) queued" in replayed
    got = await receiver.wait_for(4)
    assert [r.json()["Key"] for r in got].count("b/k1") == 2
    assert got[-1].headers["webhook-id"] == next(
        r.headers["webhook-id"] for r in got[:3] if r.json()["Key"] == "b/k1"
    )  # a replay carries the same event id, so the receiver can tell


async def test_rules_test_explains_routing(tmp_path: Path, receiver: Receiver) -> None:
    event_file = tmp_path / "event.json"
    event_file.write_bytes(minio_body("photos", "2024/cat 1.jpg", 1))
    rules = {
        "RELAY_RULE_JPG_SUFFIX": ".jpg",
        "RELAY_RULE_JPG_SINKS": "webhook:main",
        "RELAY_RULE_TXT_SUFFIX": ".txt",
        "RELAY_RULE_TXT_SINKS": "webhook:main",
    }
    result = relay_cli(
        RelayProcess(tmp_path, env(receiver, **rules)).env, "rules", "test", str(event_file),
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "webhook:main" in result.stdout
    assert "txt" in result.stdout and '".txt"' in result.stdout  # why the other rule missed


async def test_backpressure_answers_503_and_recovers(
    receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    receiver.status = 503
    relay = await relay_factory(env(receiver, RELAY_MAX_EVENTS="5", RELAY_RETENTION="0s")).start()
    statuses = await post_all(relay, [minio_body("b", f"k{n}", n) for n in range(5)])
    assert statuses == [200] * 5
    blocked = await post_all(relay, [minio_body("b", "k5", 5)])
    assert blocked == [503]
    async with aiohttp.ClientSession() as session:
        async with session.get(relay.url + "/readyz") as response:
            assert response.status == 503
            assert (await response.json())["reason"] == "log_full_events"
    receiver.status = 200  # the sink drains, retention prunes, ingest opens again
    await receiver.wait_for(5)

    async def accepted() -> bool:
        return await post_all(relay, [minio_body("b", "k5", 5)]) == [200]

    await eventually(accepted, timeout=30, interval=0.5)
    await receiver.wait_for(6)
    logs = relay.logs()
    assert logs.count('"backpressure on: ingest answers 503"') == 1  # a line per change
    assert '"backpressure off: ingest accepts again"' in logs
    body = json.loads(
        relay.cli("queue", "stats").stdout.split("\n")[0].replace("events in log: ", "")
    )
    assert body <= 6


async def test_quarantine_retry_ingests_bodies_that_now_parse(
    receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    relay = await relay_factory(env(receiver)).start()
    # A Ceph body cut short in transit: unreadable, so quarantined, not dropped.
    good = minio_body("q", "late.txt", 7)
    assert await post_all(relay, [good[:-5], b"\xff\xfe not even utf-8"]) == [202, 202]
    listed = relay.cli("quarantine", "list").stdout
    assert "2 quarantined bodies" in listed
    kept = relay.cli("quarantine", "retry", "--all", check=False)
    assert kept.returncode == 1 and kept.stdout.count("kept: still unreadable") == 2
    # An operator repairs the stored body (here: directly in the log) and retries it.
    db = relay.workdir / "data" / "relay.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE quarantine SET body = ? WHERE id = 1", (good,))
    retried = relay.cli("quarantine", "retry", "1")
    assert "ingested: 1 event(s) accepted" in retried.stdout
    got = await receiver.wait_for(1)
    assert got[0].json()["Key"] == "q/late.txt"
    assert "1 quarantined body" in relay.cli("quarantine", "list").stdout


async def test_check_warns_about_rules_naming_no_sink_and_matches_arn_case(
    tmp_path: Path, receiver: Receiver
) -> None:
    rules = {
        # RustFS lower-cases ids: an ARN written with the operator's case still routes
        "RELAY_RULE_A_SINKS": "arn:rustfs:sqs::MAIN:webhook",
        "RELAY_RULE_B_SINKS": "arn:rustfs:sqs::qatlas:webhook",  # no such sink
    }
    result = relay_cli(RelayProcess(tmp_path, env(receiver, **rules)).env, "check", cwd=tmp_path)
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    assert any("qatlas" in w for w in warnings), result.stdout
    assert not any("MAIN" in w or "webhook:main" in w for w in warnings), warnings


async def test_read_commands_speak_json_for_scripts(
    tmp_path: Path, receiver: Receiver, relay_factory: Callable[..., RelayProcess]
) -> None:
    receiver.status = 400  # one dead letter to list
    relay = await relay_factory(env(receiver)).start()
    assert await post_all(relay, [minio_body("photos", "a.jpg", 1)]) == [200]
    await eventually(lambda: json.loads(relay.cli("dlq", "list", "--json").stdout))
    (dead,) = json.loads(relay.cli("dlq", "list", "--json").stdout)
    assert (dead["sink"], dead["key"], dead["state"]) == ("webhook:main", "a.jpg", "waiting")
    stats = json.loads(relay.cli("queue", "stats", "--json").stdout)
    assert stats["events"] == 1 and stats["sinks"][0]["sink"] == "webhook:main"
    assert stats["sinks"][0]["dead_letters"] == 1
    assert json.loads(relay.cli("quarantine", "list", "--json").stdout) == []
    check = relay.cli("check", "--json", check=False)
    report = json.loads(check.stdout)
    assert check.returncode == 0 and report["sinks"][0]["reachable"] is True
    assert report["settings"]["RELAY_AUTH_TOKENS"] == "***"  # no secret, as in text
    event_file = tmp_path / "event.json"
    event_file.write_bytes(minio_body("photos", "b.jpg", 2))
    (routed,) = json.loads(relay.cli("rules", "test", str(event_file), "--json").stdout)
    assert routed["sinks"] == ["webhook:main"] and routed["key"] == "b.jpg"


def test_shell_completion_is_made_from_the_parser(tmp_path: Path) -> None:
    script = relay_cli({}, "completion", "bash", cwd=tmp_path).stdout
    words = subprocess.run(
        ["bash", "-c", f'{script}\nCOMP_WORDS=(relay dlq retry --d); COMP_CWORD=3; '
         '_relay_complete; echo "${COMPREPLY[@]}"'],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert words == ["--dry-run"]
    assert "bashcompinit" in relay_cli({}, "completion", "zsh", cwd=tmp_path).stdout
    assert "exit status:" in relay_cli({}, "--help", cwd=tmp_path).stdout
