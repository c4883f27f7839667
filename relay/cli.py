"""`relay …`: serve, check, and the operator's view into the log."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from relay import __version__, completion, datadir, logs, progress, sinks
from relay.config import (
    COMMON_OPTIONS,
    RELAY_OPTIONS,
    ConfigError,
    Option,
    Settings,
    load_settings,
)
from relay.events import Unparseable, parse_body
from relay.queue import admin, fsck
from relay.queue.backend import LogUnavailable
from relay.rules import (
    Rule,
    format_verdicts,
    rules_from_notification_xml,
    rules_to_toml,
    sink_ref_id,
)
from relay.sinks import redact

if TYPE_CHECKING:
    from relay.app import Config
    from relay.queue.backend import LogBackend

# relay.app (the server, the admin API, the delivery loop) and the modules that import it
# are imported by the commands that use them: `relay serve` locks its data directory first.

EXIT_OK, EXIT_UNHEALTHY, EXIT_CONFIG, EXIT_DAMAGED = 0, 1, 2, 3
EXIT_CODES = """exit status:
  0  done; everything checked is healthy
  1  a sink unreachable (check), a check that failed (audit verify), a body still unreadable
     (quarantine retry), no event matched (trace), an operator error (no such dead letter,
     another relay holds the data directory, the replicated log not answering at start)
  2  a configuration error, named with its variable
  3  the log is damaged (fsck; serve with RELAY_ON_DAMAGE=refuse)"""
T = TypeVar("T")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_worker"]:  # started by `relay serve` (relay/processes), not by people
        return _worker(*argv[1:])
    try:
        with contextlib.ExitStack() as stack:
            early = _data_dir_lock(argv)
            if early is not None:
                stack.enter_context(early.held())
            parser = _parser()
            args = parser.parse_args(argv)
            if not hasattr(args, "run"):
                parser.print_help()
                return EXIT_CONFIG
            return int(args.run(args) or 0)
    except ConfigError as exc:
        print(f"relay: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (admin.AdminError, datadir.DataDirInUse, LogUnavailable) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return EXIT_UNHEALTHY
    except fsck.LogDamaged as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return EXIT_DAMAGED


def _data_dir_lock(argv: Sequence[str]) -> datadir.DataDirLock | None:
    """`relay serve` locks an existing data directory before the rest of the relay is
    imported (a second or more on a busy machine), so a second relay on it is turned away
    at once; the relay then shares this lock. None for other commands, for a directory
    not made yet (nobody holds it; the relay locks it once its configuration is known to
    be valid, which touches nothing otherwise) and for a configuration the command itself
    will report."""
    if list(argv[:1]) != ["serve"]:
        return None
    try:
        data_dir = Path(load_settings(os.environ).data_dir)
    except ConfigError:
        return None
    return datadir.DataDirLock(data_dir) if data_dir.is_dir() else None


def _parser() -> argparse.ArgumentParser:
    from relay import audit

    p = argparse.ArgumentParser(
        prog="relay",
        description="s3-notify-relay",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=__version__)
    sub = p.add_subparsers(metavar="command")

    sub.add_parser("serve", help="run the relay").set_defaults(run=cmd_serve)
    check = sub.add_parser(
        "check", help="validate the configuration, print it (secrets redacted), probe each sink"
    )
    check.add_argument(
        "--print-ddl", action="store_true",
        help="print the CREATE TABLE statements of the SQL sinks and exit",
    )  # fmt: skip
    _json_flag(check)
    check.set_defaults(run=cmd_check)
    sub.add_parser(
        "config-reference", help="print every configuration key as Markdown"
    ).set_defaults(run=cmd_config_reference)
    sub.add_parser(
        "reload", help="make the running relay re-read its rules and TLS files (SIGHUP)"
    ).set_defaults(run=cmd_reload)

    f = sub.add_parser("fsck", help="check the log's integrity (run with the relay stopped)")
    f.add_argument(
        "--repair", action="store_true",
        help="copy every readable row into a new log; the damaged file is kept",
    )  # fmt: skip
    f.set_defaults(run=cmd_fsck)

    queue = sub.add_parser("queue", help="the log").add_subparsers(metavar="action")
    stats_cmd = queue.add_parser("stats", help="events, cursors and backlog per sink")
    _json_flag(stats_cmd)
    stats_cmd.set_defaults(run=cmd_queue_stats)

    sinks_cmd = sub.add_parser("sinks", help="sinks in the log").add_subparsers(metavar="action")
    forget = sinks_cmd.add_parser(
        "forget", help="remove what the log keeps for a sink that is no longer configured"
    )
    forget.add_argument("name", help="the sink, <type>:<id> (see `relay queue stats`)")
    forget.set_defaults(run=cmd_sinks_forget)

    dlq = sub.add_parser("dlq", help="dead letters").add_subparsers(metavar="action")
    d = dlq.add_parser("list", help="dead letters with their last error and state")
    _dead_letter_filters(d)
    d.add_argument("--limit", type=int, default=100)
    _json_flag(d)
    d.set_defaults(run=cmd_dlq_list)
    d = dlq.add_parser("show")
    d.add_argument("id", type=int)
    d.set_defaults(run=cmd_dlq_show)
    for name, fn, what in (
        ("retry", cmd_dlq_retry, "queue dead letters for redelivery (after fixing the cause)"),
        ("purge", cmd_dlq_purge, "drop dead letters"),
    ):
        d = dlq.add_parser(name, help=what)
        d.add_argument("id", type=int, nargs="?")
        _dead_letter_filters(d)
        d.add_argument("--all", action="store_true", help="every dead letter the filters select")
        d.add_argument(
            "--dry-run", action="store_true", help="say how many and where; change nothing"
        )
        if name == "retry":
            d.add_argument(
                "--to", metavar="SINK",
                help="deliver them to this sink (any configured one; default: the sink each "
                "one failed at)",
            )  # fmt: skip
        d.set_defaults(run=fn)

    quarantine = sub.add_parser("quarantine", help="unreadable bodies").add_subparsers(
        metavar="action"
    )
    q = quarantine.add_parser("list")
    q.add_argument("--limit", type=int, default=100)
    _json_flag(q)
    q.set_defaults(run=cmd_quarantine_list)
    q = quarantine.add_parser("show")
    q.add_argument("id", type=int)
    q.set_defaults(run=cmd_quarantine_show)
    q = quarantine.add_parser("retry")
    q.add_argument("id", type=int, nargs="?")
    q.add_argument("--all", action="store_true")
    q.set_defaults(run=cmd_quarantine_retry)

    r = sub.add_parser("replay", help="deliver events from the log to a sink again")
    r.add_argument("--sink", required=True)
    r.add_argument("--since", help="RFC 3339 time or a duration ago (2h); default: all")
    r.add_argument("--until", help="RFC 3339 time or a duration ago; default: now")
    r.add_argument("--bucket")
    r.add_argument("--prefix")
    r.add_argument("--ignore-rules", action="store_true", help="also events the rules keep away")
    r.set_defaults(run=cmd_replay)
    audit.add_parser(sub)  # relay audit verify (relay/audit.py)

    t = sub.add_parser(
        "tail", help="print the events going into a running relay's log, as they arrive"
    )
    t.add_argument("--bucket", action="append", default=[], help="only this bucket (repeat)")
    t.add_argument("--prefix", help="only keys starting with this")
    t.add_argument(
        "--event", action="append", default=[],
        help="only these events, wildcards allowed (s3:ObjectCreated:*); repeat for several",
    )  # fmt: skip
    t.add_argument(
        "--after", type=int, help="start after this seq: events already in the log first"
    )
    t.add_argument(
        "--url", help="the relay (default: http://127.0.0.1 on the port of RELAY_LISTEN)"
    )
    t.add_argument(
        "--token", help="an admin token (default: the first of RELAY_ADMIN_TOKENS, which "
        "keeps it out of the process list)",
    )  # fmt: skip
    t.add_argument("--json", action="store_true", help="one JSON object per event")
    t.add_argument("--count", type=int, help="exit after this many events")
    t.set_defaults(run=cmd_tail)

    tr = sub.add_parser(
        "trace", help="where is my event: per sink, delivered, waiting, parked, … and why",
        description="Where the events the query names are, per configured sink: delivered "
        "(by when), waiting (behind how many), parked (behind which failing event), retrying, "
        "dead-lettered, queued again, stale, filtered (by which rule condition) or shed.",
        epilog="exit status: 0 when an event matched, 1 when none did (what the log knows of "
        "it is printed), 2 on a configuration error.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    tr.add_argument(
        "query", metavar="EVENT",
        help="an event id (32 hex digits), a seq, or bucket/key (the decoded key: every event "
        "of the object, the newest --limit)",
    )  # fmt: skip
    tr.add_argument(
        "--since", help="only events received then or later: RFC 3339 time or a duration ago "
        "(2h); a search by object reads the log from there (default: all of it)",
    )  # fmt: skip
    tr.add_argument("--limit", type=int, default=20, help="events of an object shown, newest")
    _json_flag(tr)
    tr.set_defaults(run=cmd_trace)

    rules = sub.add_parser("rules", help="routing rules").add_subparsers(metavar="action")
    t = rules.add_parser("test", help="which sinks an event body would reach, and why")
    t.add_argument("event_file")
    t.add_argument("--source", default="default")
    _json_flag(t)
    t.set_defaults(run=cmd_rules_test)
    i = rules.add_parser("import", help="S3 NotificationConfiguration XML → rules TOML")
    i.add_argument("xml_file")
    i.add_argument(
        "--sink", action="append", default=[],
        help="send configurations whose target is not a relay sink (a Ceph topic, an AWS "
        "queue) to this sink; repeat for several",
    )  # fmt: skip
    i.set_defaults(run=cmd_rules_import)
    c = sub.add_parser(
        "completion", help="print a shell completion script (eval it, or source it from rc)"
    )
    c.add_argument("shell", choices=("bash", "zsh"))
    c.set_defaults(run=cmd_completion)
    return p


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON (for scripts), not text")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    return str(value)


def _dead_letter_filters(p: argparse.ArgumentParser) -> None:
    """The filters of `relay dlq list|retry|purge`; given together, all must hold."""
    p.add_argument("--sink", help="dead letters of this sink")
    p.add_argument("--bucket")
    p.add_argument("--prefix", help="of the object key")
    p.add_argument(
        "--since", help="dead-lettered at or after: RFC 3339 time or a duration ago (2h)"
    )
    p.add_argument("--until", help="dead-lettered before: RFC 3339 time or a duration ago")
    p.add_argument("--error", help="whose last error contains this text (any case)")


def _config() -> Config:
    from relay import app

    return app.load_config(os.environ)


def _db(config: Config) -> Path:
    from relay import app

    return Path(config.settings.data_dir) / app.DB_NAME


# -- serve / check ------------------------------------------------------------------------------


def _worker(role: str, index: str, channel_fd: str, supervisor: str, run_dir: str) -> int:
    from relay import app
    from relay.processes import workers

    workers.die_with(int(supervisor))
    config = app.load_config(os.environ)
    logs.setup(config.settings.log_format, config.settings.log_level)
    if role == "ingest":
        work = workers.ingest_worker(config, int(index), int(channel_fd), Path(run_dir))
    else:
        work = workers.delivery_worker(config, Path(run_dir))
    with _runner() as runner:
        runner.run(work)
    return EXIT_OK


def _runner() -> asyncio.Runner:
    try:
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        return asyncio.Runner()


def cmd_serve(args: argparse.Namespace) -> int:
    from relay import app

    config = _config()
    logs.setup(config.settings.log_format, config.settings.log_level)
    with _runner() as runner:
        runner.run(app.serve(config))
    return EXIT_OK  # a damaged log surfaces as fsck.LogDamaged, handled in main()


def cmd_check(args: argparse.Namespace) -> int:
    from relay import app

    config = _config()
    if args.print_ddl:
        for spec in config.specs:
            module = sinks.module(spec.type)
            if hasattr(module, "ddl"):
                print(f"-- {spec.name}\n{module.ddl(spec)}")
        return EXIT_OK
    outputs = app.build_sinks(config)
    if args.json:
        return _check_json(config, outputs)
    print("relay settings:")
    for option in RELAY_OPTIONS:
        value = getattr(config.settings, option.key, None)
        if option.key == "listen":
            value = f"{config.settings.listen_host}:{config.settings.listen_port}"
        shown = "***" if option.secret and value else _show(value)
        print(f"  RELAY_{option.env} = {shown}")
    log_info = _log_backend(config.settings)
    print("log: " + ", ".join(f"{k} {v}" for k, v in log_info.items()))
    healthy = True
    for spec, sink in zip(config.specs, outputs):
        print(f"sink {spec.name}:")
        # a value that is not a secret itself may hold one (a password in a URL)
        hide = redact.for_spec(spec)
        for key, value in spec.redacted().items():
            if value not in ("", None, ()) and key not in ("enable", "comment"):
                print(f"  {key} = {hide(_show(value))}")
        health = asyncio.run(_probe(sink))
        healthy &= health.ok
        print(f"  reachable: {'yes' if health.ok else 'NO'} ({hide(health.detail)})")
    print(f"rules: {len(config.router.rules)}")
    for warning in config.warnings:
        print(f"warning: {warning}")
    return EXIT_OK if healthy else EXIT_UNHEALTHY


def _log_backend(settings: Settings) -> dict[str, Any]:
    """Which log the relay keeps, and where (no credentials: RELAY_LOG refuses them)."""
    if settings.log == "sqlite":
        return {"backend": "sqlite", "path": str(Path(settings.data_dir) / "relay.db")}
    return {
        "backend": "jetstream", "servers": settings.log, "stream": f"{settings.log_name}_events",
        "replicas": settings.log_replicas,
        "auth": "user/password" if settings.log_username else "token" if settings.log_token
        else "credentials file" if settings.log_credentials_file else "none",
    }  # fmt: skip


def _check_json(config: Config, outputs: Sequence[Any]) -> int:
    settings = {}
    for option in RELAY_OPTIONS:
        value = getattr(config.settings, option.key, None)
        if option.key == "listen":
            value = f"{config.settings.listen_host}:{config.settings.listen_port}"
        settings[f"RELAY_{option.env}"] = "***" if option.secret and value else value
    out: list[dict[str, Any]] = []
    for spec, sink in zip(config.specs, outputs):
        hide = redact.for_spec(spec)
        health = asyncio.run(_probe(sink))
        options = {k: hide(_show(v)) for k, v in spec.redacted().items() if v not in ("", None, ())}
        out.append({"name": spec.name, "options": options, "reachable": health.ok,
                    "detail": hide(health.detail)})  # fmt: skip
    _print_json({"settings": settings, "log": _log_backend(config.settings), "sinks": out,
                 "rules": len(config.router.rules), "warnings": config.warnings})  # fmt: skip
    return EXIT_OK if all(s["reachable"] for s in out) else EXIT_UNHEALTHY


def cmd_completion(args: argparse.Namespace) -> int:
    print(completion.script(_parser(), args.shell))
    return EXIT_OK


async def _probe(sink: Any) -> Any:
    from relay.sinks.base import Health

    try:
        return await asyncio.wait_for(sink.health(), 10)
    except Exception as exc:
        return Health(False, f"{type(exc).__name__}: {exc}")
    finally:
        try:
            await asyncio.wait_for(sink.close(), 5)
        except Exception:
            pass


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def cmd_reload(args: argparse.Namespace) -> int:
    config = _config()  # the new rules are checked here too: a bad file is reported now
    pidfile = Path(config.settings.data_dir) / datadir.PID_NAME
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError):
        raise admin.AdminError(f"no running relay found ({pidfile})") from None
    print(f"reload signal sent to the relay (pid {pid}); its log says what was reloaded")
    return EXIT_OK


def cmd_config_reference(args: argparse.Namespace) -> int:
    print(config_reference())
    return EXIT_OK


def config_reference() -> str:
    def table(prefix: str, options: Sequence[Option], suffix: str = "") -> list[str]:
        rows = ["| variable | default | meaning |", "|---|---|---|"]
        for o in options:
            default = _show(o.default) if o.default not in ("", (), None) else ""
            if o.kind == "size" and isinstance(o.default, int) and o.default:
                default = _size(o.default)
            if o.kind == "duration" and o.default:
                default = f"{o.default:g}s"
            flags = " Required." if o.required else ""
            flags += " Secret: never shown." if o.secret else ""
            rows.append(f"| `{prefix}{o.env}{suffix}` | {default} | {o.doc}{flags} |")
        return rows

    out = ["### Relay settings", "", *table("RELAY_", RELAY_OPTIONS), ""]
    out += ["### Keys every sink accepts", "",
            "`RUSTFS_NOTIFY_<TYPE>_<KEY>_<ID>` or `MINIO_NOTIFY_<TYPE>_<KEY>[_<ID>]`.", "",
            *table("…_", COMMON_OPTIONS, "_<ID>"), ""]  # fmt: skip
    declared = sinks.declared_options()
    for sink_type in sorted(declared):
        options = declared[sink_type]
        module = sinks.module(sink_type)
        doc = (module.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        out += [f"### Sink `{sink_type}`", "", doc, ""]
        out += [*table(f"RUSTFS_NOTIFY_{sink_type.upper()}_", options, "_<ID>"), ""]
    return "\n".join(out)


def _size(n: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


# -- the log ------------------------------------------------------------------------------------


def _operate(config: Config, action: Callable[[LogBackend], Awaitable[T]]) -> T:
    from relay import app

    return asyncio.run(app.operate(config.settings, action))


def cmd_queue_stats(args: argparse.Namespace) -> int:
    config = _config()
    names = [spec.name for spec in config.specs]

    async def read(log: LogBackend) -> tuple[Any, ...]:
        return log.events, *await asyncio.gather(
            log.sink_stats(names), log.dead_letter_counts(), log.quarantine_count(),
            log.orphans(),
        )  # fmt: skip

    events, per_sink, dead, quarantined, orphans = _operate(config, read)
    if args.json:
        sinks_out = [{**dataclasses.asdict(s), "dead_letters": dead.get(s.sink, 0)}
                     for s in per_sink]  # fmt: skip
        _print_json({"events": events, "quarantined": quarantined, "sinks": sinks_out,
                     "orphaned": orphans})  # fmt: skip
        return EXIT_OK
    print(f"events in log: {events}")
    print(f"quarantined bodies: {quarantined}")
    print(f"{'sink':<28} {'cursor':>10} {'pending':>10} {'oldest pending':>16} "
          f"{'dead':>8} {'parked':>8}")  # fmt: skip
    now = time.time()
    for s in per_sink:
        age = f"{now - s.oldest:.1f}s" if s.oldest else "-"
        print(f"{s.sink:<28} {s.cursor:>10} {s.pending:>10} {age:>16} "
              f"{dead.get(s.sink, 0):>8} {s.parked:>8}")  # fmt: skip
    if orphans:
        print("orphaned sinks (no longer configured; pin nothing; `relay sinks forget NAME`):")
        for o in orphans:
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(o.orphaned_at))
            print(f"  {o.sink:<26} cursor {o.cursor}, dead letters {o.dead_letters}, "
                  f"redeliveries {o.redeliveries}, since {since}")  # fmt: skip
    return EXIT_OK


def cmd_sinks_forget(args: argparse.Namespace) -> int:
    config = _config()
    if args.name in {spec.name for spec in config.specs}:
        raise admin.AdminError(
            f"{args.name} is configured: remove it from the configuration (and restart) first"
        )
    counts = _operate(config, lambda log: log.forget(args.name))
    if not counts["cursor"]:
        raise admin.AdminError(f"the log holds nothing for a sink named {args.name}")
    print(f"forgot {args.name}: {counts['dead_letters']} dead letters, "
          f"{counts['redeliveries']} redeliveries, {counts['retries']} retry schedules, "
          f"{counts['missed']} markers; the events they pinned go at the next pruning")  # fmt: skip
    return EXIT_OK


def cmd_fsck(args: argparse.Namespace) -> int:
    config = _config()
    if config.settings.log != "sqlite":
        raise admin.AdminError(
            "relay fsck checks the SQLite log; with RELAY_LOG=nats:// the NATS servers keep "
            "the stream whole (its replicas, Raft): check them with `nats stream report`"
        )
    path = _db(config)
    if not path.exists():
        raise admin.AdminError(f"no log at {path} (is RELAY_DATA_DIR right?)")
    if not args.repair:
        return _fsck(config, path, repair=False)
    # a repair swaps the log file: no relay may have it open, nor start meanwhile
    with datadir.DataDirLock(config.settings.data_dir).held():
        return _fsck(config, path, repair=True)


def _fsck(config: Config, path: Path, repair: bool) -> int:
    problems = fsck.check(path)
    if not problems:
        print(f"{path}: ok")
        return EXIT_OK
    print(f"{path}: damaged")
    for problem in problems[:20]:
        print(f"  {problem}")
    if not repair:
        print("run `relay fsck --repair` to copy every readable row into a new log")
        return EXIT_DAMAGED
    sinks = [s.name for s in config.specs]
    bars: dict[str, progress.Bar] = {}

    def meter(table: str, done: int, total: int) -> None:
        if table not in bars:
            bars[table] = progress.Bar(f"  {table}", "keys")
        bars[table](done, total)

    def line(text: str) -> None:
        for bar in bars.values():
            bar.close()
        print(f"  {text}")

    report = fsck.repair(path, sinks, progress=line, meter=meter)
    print(f"repaired: {report.copied.get('events', 0)} events copied, up to seq "
          f"{report.highest_seq}; gaps below it: {report.lost_ranges.get('events', [])} "
          "(pruned events leave gaps too); events after it may be lost if the end of the "
          f"file was damaged; damaged file kept at {report.damaged_copy}")  # fmt: skip
    return EXIT_OK


def cmd_dlq_list(args: argparse.Namespace) -> int:
    which = _dead_letter_filter(args)
    rows = _operate(_config(), lambda log: log.dead_letters(which, args.limit))
    if args.json:
        _print_json([{**dataclasses.asdict(d), "state": d.state} for d in rows])
        return EXIT_OK
    for d in rows:
        print(f"{d.id:>6}  {_time(d.at)}  {d.sink:<24} seq={d.seq:<8} attempts={d.attempts:<3} "
              f"{d.event_name} {d.bucket}/{d.key}  {d.state}  error: {d.error}")  # fmt: skip
    print(f"{len(rows)} dead letter(s)")
    return EXIT_OK


def cmd_dlq_show(args: argparse.Namespace) -> int:
    print(json.dumps(_operate(_config(), lambda log: log.dead_letter(args.id)), indent=2))
    return EXIT_OK


def _dead_letter_filter(args: argparse.Namespace) -> admin.DeadLetterFilter:
    now = time.time()
    return admin.DeadLetterFilter(
        id=getattr(args, "id", None), sink=args.sink, bucket=args.bucket, prefix=args.prefix,
        since=_when(args.since, now) if args.since else None,
        until=_when(args.until, now) if args.until else None, error=args.error,
    )  # fmt: skip


def _selection(args: argparse.Namespace) -> admin.DeadLetterFilter:
    which = _dead_letter_filter(args)
    if not which.narrows and not args.all:
        raise admin.AdminError(
            "name a dead letter id, filters (--sink, --bucket, --prefix, --since, --until, "
            "--error) or --all"
        )
    return which


def cmd_dlq_retry(args: argparse.Namespace) -> int:
    which = _selection(args)
    config = _config()
    to = _sink_named(config, args.to) if args.to else None
    router = config.router
    if args.dry_run:
        plan = _operate(config, lambda log: log.plan_dead_letter_retry(which, to))
        per_sink = plan.by_sink()
        where = ", ".join(f"{n} to {sink}" for sink, n in per_sink.items())
        print(f"dry run: {sum(per_sink.values())} dead letter(s) would be queued for "
              f"redelivery{f' ({where})' if where else ''}; nothing was changed")  # fmt: skip
        return EXIT_OK
    with progress.Bar("dlq retry", "dead letters") as bar:
        n = _operate(config, lambda log: log.retry_dead_letters(
            which, to, lambda sink, e: router.matches(sink, e.event), bar
        ))  # fmt: skip
    print(f"{n} dead letter(s) queued for redelivery{f' to {to}' if to else ''}")
    return EXIT_OK


def cmd_dlq_purge(args: argparse.Namespace) -> int:
    which = _selection(args)
    if args.dry_run:
        n = len(_operate(_config(), lambda log: log.dead_letters(which)))
        print(f"dry run: {n} dead letter(s) would be purged; nothing was changed")
        return EXIT_OK
    n = _operate(_config(), lambda log: log.purge_dead_letters(which))
    print(f"{n} dead letter(s) purged")
    return EXIT_OK


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    rows = _operate(_config(), lambda log: log.quarantined(args.limit))
    if args.json:
        keys = ("id", "received_at", "source", "reason", "size")
        _print_json([dict(zip(keys, row)) for row in rows])
        return EXIT_OK
    for qid, at, source, reason, size in rows:
        print(f"{qid:>6}  {_time(at)}  source={source:<16} {size:>8} bytes  {reason}")
    print(f"{len(rows)} quarantined bod{'y' if len(rows) == 1 else 'ies'}")
    return EXIT_OK


def cmd_quarantine_show(args: argparse.Namespace) -> int:
    print(json.dumps(_operate(_config(), lambda log: log.quarantined_body(args.id)), indent=2))
    return EXIT_OK


def cmd_quarantine_retry(args: argparse.Namespace) -> int:
    if args.id is None and not args.all:
        raise admin.AdminError("name a quarantined body id, or --all")
    from relay import ingest

    config = _config()
    select = ingest.ingest_filter(config.settings)
    results = _operate(
        config, lambda log: log.retry_quarantine(args.id, select.split if select else None)
    )
    for r in results:
        print(f"{r.id:>6}  {'ingested' if r.ok else 'kept'}: {r.detail}")
    return EXIT_OK if all(r.ok for r in results) else EXIT_UNHEALTHY


def cmd_replay(args: argparse.Namespace) -> int:
    config = _config()
    sink = _sink_named(config, args.sink)
    now = time.time()
    since = _when(args.since, now) if args.since else 0.0
    until = _when(args.until, now) if args.until else now + 1
    router = config.router

    def accept(entry: Any) -> bool:
        return bool(args.ignore_rules) or router.matches(sink, entry.event)

    with progress.Bar("replay", "events") as bar:
        _, n = _operate(config, lambda log: log.replay(
            sink, since, until, args.bucket, args.prefix, accept, bar
        ))  # fmt: skip
    print(f"{n} event(s) queued for redelivery to {sink}")
    return EXIT_OK


def cmd_tail(args: argparse.Namespace) -> int:
    from relay import tail

    config = _config()
    token = args.token or next(iter(config.settings.admin_tokens), "")
    if not token:
        raise admin.AdminError("give an admin token: --token, or RELAY_ADMIN_TOKENS")
    url = args.url or f"http://127.0.0.1:{config.settings.listen_port}"
    query = [("bucket", b) for b in args.bucket] + [("event", e) for e in args.event]
    if args.prefix:
        query.append(("prefix", args.prefix))
    try:
        return asyncio.run(
            tail.follow(url, token, query, args.after, args.json, args.count, sys.stdout,
                        sys.stderr)
        )  # fmt: skip
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_trace(args: argparse.Namespace) -> int:
    from relay.queue import trace

    config = _config()
    since = _when(args.since, time.time()) if args.since else None
    query = trace.TraceQuery.parse(args.query, since, max(1, args.limit))
    routing = _routing(config)
    found = _operate(config, lambda log: log.trace(query, routing))
    if args.json:
        _print_json(msgspec.to_builtins(found))
    else:
        print(format_trace(found), end="")
    return EXIT_OK if found.events else EXIT_UNHEALTHY


def _routing(config: Config) -> Any:
    """What a trace needs of the configuration: the sinks, their rules and their STALE (an
    `auto` one is the sink's own default, so the sinks are made, not connected)."""
    from relay import app
    from relay.delivery.dispatcher import Policy
    from relay.queue import trace

    outputs = app.build_sinks(config)
    stale = {s.name: Policy.from_spec(s, o).stale for s, o in zip(config.specs, outputs)}
    return trace.Routing([s.name for s in config.specs], config.router.why_not_to, stale)


def format_trace(found: Any) -> str:
    """A block per event, a line per sink."""
    lines: list[str] = []
    for e in found.events:
        path = "/" if e.source == "default" else f"/{e.source}"
        size = f", {e.size} bytes" if e.size is not None else ""
        lines += [
            f"seq {e.seq}  {e.event_name}  {e.bucket}/{e.key}",
            f"  received {_time(e.received_at)} on POST {path} ({e.dialect}), event id "
            f"{e.event_id}{size}",
            "  duplicates of it: not counted by the log (a sender's retry is answered and not "
            "stored)",
        ]
        width = max((len(s.sink) for s in e.sinks), default=0)
        for s in e.sinks:
            lines.append(f"  {s.sink:<{width}}  {s.state:<13}  {s.detail}")
        if not e.sinks:
            lines.append("  (no sink is configured)")
        lines.append("")
    if found.more:
        lines.append(f"{found.more} older event(s) of the object not shown (--limit, --since)")
    lines += found.notes
    return "\n".join(lines) + "\n" if lines else ""


def cmd_rules_test(args: argparse.Namespace) -> int:
    config = _config()
    body = Path(args.event_file).read_bytes()
    try:
        parsed = parse_body(body, {}, args.source)
    except Unparseable as exc:
        print(f"relay: {args.event_file}: not an event the relay can read: {exc.reason}",
              file=sys.stderr)  # fmt: skip
        return EXIT_UNHEALTHY
    names = [s.name for s in config.specs]
    if args.json:
        _print_json([
            {"event_name": e.event_name, "bucket": e.bucket, "key": e.key,
             "sinks": config.router.sinks_for(e), "rules": config.router.explain(e)}
            for e in parsed.events
        ])  # fmt: skip
        return EXIT_OK
    for event in parsed.events:
        verdicts = config.router.explain(event)
        print(format_verdicts(event, verdicts, config.router.sinks_for(event)))
    if not names:
        print("(no sink is configured)")
    return EXIT_OK


def cmd_rules_import(args: argparse.Namespace) -> int:
    text = Path(args.xml_file).read_text("utf-8")
    rules = rules_from_notification_xml(text, source_name=args.xml_file)
    if args.sink:
        # The XML names the store's own targets (Ceph topic ARNs): the relay's sink takes
        # their place; ARNs of relay sinks (arn:rustfs:sqs::…, arn:minio:sqs::…) stay.
        def retarget(rule: Rule) -> Rule:
            kept = tuple(ref for ref in rule.sinks if sink_ref_id(ref) is not None)
            return dataclasses.replace(rule, sinks=kept + tuple(args.sink))

        rules = [retarget(rule) for rule in rules]
    print(rules_to_toml(rules), end="")
    return EXIT_OK


def _sink_named(config: Config, name: str) -> str:
    """A configured sink by name, in any case."""
    names = [s.name for s in config.specs]
    sink = next((n for n in names if n.lower() == name.lower()), None)
    if sink is None:
        raise admin.AdminError(f"no sink {name!r} (configured: {', '.join(names) or 'none'})")
    return sink


def _time(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _when(text: str, now: float) -> float:
    return admin.parse_when(text, now)


if __name__ == "__main__":
    sys.exit(main())
