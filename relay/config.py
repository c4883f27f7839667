"""Environment → typed settings. Every error names the variable it comes from.

Relay-wide settings are `RELAY_*`. Sinks are declared the way the stores declare their own
targets (`RUSTFS_NOTIFY_<TYPE>_<KEY>_<ID>`, `MINIO_NOTIFY_<TYPE>_<KEY>[_<ID>]`), so an
operator can move a target block from the store to the relay unchanged. Each sink module
declares its options (`OPTIONS`) next to the code that uses them; this module only reads them.
"""

from __future__ import annotations

import builtins
import difflib
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

import msgspec


class ConfigError(Exception):
    """An invalid configuration; the message names the variable (or file) and what to do."""


# ---------------------------------------------------------------------------------------------
# Value conversions (one spelling everywhere, see the README's "Conventions")

_TRUE = {"on", "true", "yes", "1", "enable", "enabled"}
_FALSE = {"off", "false", "no", "0", "disable", "disabled", ""}


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (use on/off, true/false, yes/no or 1/0)")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds. `500ms`, `5s`, `2m`, `24h`, `7d`; a bare number means seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (use 500ms, 5s, 2m, 24h, 7d)")
    unit = (match.group(2) or "s").lower()
    return float(match.group(1)) * _DURATION_UNITS[unit]


def parse_durations(text: str) -> tuple[float, ...]:
    return tuple(parse_duration(item) for item in parse_list(text))


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE_HINT = "use 512KiB, 8MiB or a number of bytes"


def parse_size(text: str) -> int:
    """Bytes. `512KiB`, `8MiB`, `1GiB`; `KB/MB/GB` are powers of 10; a bare number is bytes."""
    found = _SIZE_RE.match(text)
    if found is None:
        raise ValueError(f'"{text}" is not a size ({_SIZE_HINT})')
    number, unit = found.groups()
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f'"{text}" is not a size ({_SIZE_HINT})')
    value = Fraction(number) * factor
    if value.denominator != 1:
        raise ValueError(f'"{text}" is not a whole number of bytes')
    return int(value)


def parse_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None


def parse_number(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def parse_start(text: str) -> str | float:
    """A sink's START: `latest`, `earliest` or an RFC 3339 time (as unix seconds)."""
    word = text.strip().lower()
    if word in ("latest", "earliest"):
        return word
    try:
        stamp = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not latest, earliest or an RFC 3339 time") from None
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()


def parse_networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for item in parse_list(text):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not a network (use CIDR, e.g. 10.0.0.0/8)") from None
    return tuple(networks)


_PARSERS: dict[str, Any] = {
    "str": str,
    "int": parse_int,
    "number": parse_number,
    "bool": parse_bool,
    "duration": parse_duration,
    "durations": parse_durations,
    "size": parse_size,
    "list": parse_list,
    "networks": parse_networks,
}


@dataclass(frozen=True)
class Option:
    """One configuration key, documented where it is declared (the README reference is made
    from these declarations by `relay config-reference`)."""

    key: str  # lower-case key, e.g. "auth_token"; the env name is its upper-case form
    kind: str  # str | int | number | bool | duration(s) | size | list | networks | choice
    default: Any
    doc: str
    secret: bool = False
    required: bool = False
    choices: tuple[str, ...] = ()
    env_key: str = ""  # env spelling when it differs from key.upper() (MinIO has a few)
    aliases: tuple[str, ...] = ()  # another store's env spelling of the same key

    @property
    def env(self) -> str:
        return self.env_key or self.key.upper()

    def convert(self, text: str, variable: str) -> Any:
        try:
            if self.kind == "choice":
                value = text.strip().lower()
                if value not in self.choices:
                    raise ValueError(f"{text!r} is not one of {', '.join(self.choices)}")
                return value
            return _PARSERS[self.kind](text)
        except ValueError as exc:
            raise ConfigError(f"{variable}: {exc}") from None


def redact(option: Option, value: Any) -> Any:
    if option.secret and value:
        return "***"
    return value


# ---------------------------------------------------------------------------------------------
# Relay-wide settings

RELAY_OPTIONS: tuple[Option, ...] = (
    Option("listen", "str", "0.0.0.0:8080", "Address the ingest server listens on (host:port)."),
    Option("data_dir", "str", "./relay-data", "Directory holding the SQLite log (relay.db)."),
    Option(
        "sync",
        "choice",
        "full",
        "`full`: fsync every commit before the 2xx (survives power loss). `normal`: no fsync "
        "per commit; on power loss (never on a process crash) the events since the last "
        "checkpoint — up to a few MiB of log — roll back.",
        choices=("full", "normal"),
    ),
    Option(
        "auth_tokens",
        "list",
        (),
        "Accepted ingest tokens (comma-separated, several for "
        "rotation). Empty: ingest is open (a warning is logged).",
        secret=True,
    ),
    Option(
        "ingest_signing_secrets",
        "list",
        (),
        "Standard Webhooks secrets (`whsec_…`) of senders that sign: a request with a valid "
        "`webhook-signature` needs no token, one with an invalid signature gets 401.",
        secret=True,
    ),
    Option(
        "ingest_events",
        "list",
        (),
        "Event names the relay stores (comma-separated patterns with the rules' wildcards, "
        "e.g. `s3:ObjectCreated:*,s3:ObjectRemoved:*`). Any other event is answered 200 as "
        "if stored, so the sender does not resend it, and only counted in "
        "relay_events_filtered_total. Empty: every event. The stores' own subscription "
        "filters come first: an `s3:*` subscription still costs the store a request per GET.",
    ),
    Option(
        "admin_tokens",
        "list",
        (),
        "Tokens of the admin API, status page and live tail under `/admin/` on the ingest "
        "port (comma-separated, several for rotation; sent as `Authorization: Bearer`). "
        "Ingest tokens do not open it. Empty: `/admin/` does not exist (404).",
        secret=True,
    ),
    Option(
        "admin_sample_interval",
        "duration",
        10.0,
        "How often the relay samples itself for the status page's charts (ingest rate, and "
        "per sink delivered/s and backlog). Each series keeps 360 samples: the last hour at "
        "10s.",
    ),
    Option(
        "tls_cert",
        "str",
        "",
        "PEM certificate (chain) of the ingest server: HTTPS "
        "when set. Reloaded when the file changes.",
    ),
    Option("tls_key", "str", "", "PEM key of RELAY_TLS_CERT."),
    Option(
        "tls_client_ca",
        "str",
        "",
        "PEM CA bundle: when set, ingest requires a client certificate signed by it (mutual TLS).",
    ),
    Option(
        "trusted_networks",
        "networks",
        (),
        "CIDRs whose requests need no token (Ceph RGW cannot send one).",
    ),
    Option("max_body", "size", 1024 * 1024, "Largest request body accepted; larger → 413."),
    Option(
        "request_timeout",
        "duration",
        15.0,
        "A connection that completes no request for "
        "this long is closed, and a body must arrive within it (→ 408): slow clients "
        "cannot hold connections.",
    ),
    Option(
        "max_events",
        "int",
        5_000_000,
        "High-water mark of events in the log; over it "
        "ingest answers 503 + Retry-After (the stores keep the event and retry).",
    ),
    Option("max_bytes", "size", 8 * 1024**3, "High-water mark of the log's size on disk."),
    Option(
        "min_free_bytes",
        "size",
        256 * 1024**2,
        "Low-water mark of free disk space under the data dir; under it ingest answers 503.",
    ),
    Option(
        "retention",
        "duration",
        24 * 3600.0,
        "How long delivered events stay in the log, for replay. Also the dedup window.",
    ),
    Option(
        "on_damage",
        "choice",
        "refuse",
        "When the log file is damaged at start: `refuse` "
        "(exit 3 with a message; repair with `relay fsck --repair`) or `set-aside` (move the "
        "damaged file aside, start a new log, log an error).",
        choices=("refuse", "set-aside"),
    ),
    Option(
        "log_check",
        "choice",
        "auto",
        "When the integrity check of the log runs. `start`: every page is read before the "
        "relay listens; damage stops it (exit 3, or see RELAY_ON_DAMAGE). `background`: the "
        "relay serves at once and checks meanwhile; damage found then makes ingest answer "
        "503 + Retry-After (the stores keep the events) and /readyz `log_damaged`, sinks go "
        "on delivering what can be read, until the relay is stopped and `relay fsck --repair` "
        "run (RELAY_ON_DAMAGE acts at start only). `auto`: `start` while the log file is at "
        "most 256 MiB, `background` above, since the check reads every page: ~1.7 s per "
        "million events queued.",
        choices=("auto", "start", "background"),
    ),
    Option("rules_file", "str", "", "TOML file of routing rules (see Rules)."),
    Option(
        "expected_principals",
        "list",
        (),
        "Access keys (principals) expected to act on the buckets: the audit trail sinks "
        'mark other principals\' events `"unexpected_principal": true` and count them in '
        "relay_unexpected_principal_total. Empty: no event is marked.",
    ),
    Option(
        "workers",
        "str",
        "auto",
        "Ingest processes, beside one delivery process and a supervisor that restarts any "
        "that dies; `auto`: the CPUs the relay may use (its affinity and cgroup CPU limit), "
        "at most 8; `1`: everything in one process.",
    ),
    Option(
        "shutdown_timeout",
        "duration",
        10.0,
        "On SIGTERM, how long in-flight batches may "
        "take before the relay exits (undelivered events stay in the log).",
    ),
    Option(
        "log",
        "str",
        "sqlite",
        "Where the log lives. `sqlite`: one file in RELAY_DATA_DIR, one relay (the default). "
        "`nats://h1:4222,nats://h2:4222,…` (`tls://` for TLS): a replicated NATS JetStream "
        "stream, any number of relay replicas, each with its own RELAY_DATA_DIR (see "
        "Choosing the log).",
    ),
    Option(
        "log_replicas",
        "int",
        3,
        "With RELAY_LOG=nats://: the replicas of the stream and key-value buckets (1-5; 3 "
        "survives the loss of one server).",
    ),
    Option(
        "log_duplicate_window",
        "duration",
        120.0,
        "With RELAY_LOG=nats://: the stream's duplicate window (`Nats-Msg-Id`); each id in "
        "it costs the servers memory. Past it, an event id still in the stream is refused "
        "as a duplicate all the same (one subject per id).",
    ),
    Option(
        "log_dedup",
        "choice",
        "stream",
        "With RELAY_LOG=nats://: how long an event id is refused a second time. `stream`: for "
        "as long as the event is in the stream (one subject per id; the servers keep an index "
        "entry per event in memory, bench part 6 measures it). `window`: only inside "
        "RELAY_LOG_DUPLICATE_WINDOW (less server memory; a sender's retry after the window is "
        "stored and delivered again, with the same event id).",
        choices=("stream", "window"),
    ),
    Option(
        "log_lease",
        "duration",
        10.0,
        "With RELAY_LOG=nats://: how long a replica's hold on a sink lasts without being "
        "renewed: the bound on a dead replica's sinks being taken over.",
    ),
    Option(
        "log_publish_timeout",
        "duration",
        5.0,
        "With RELAY_LOG=nats://: how long ingest waits for the stream's acknowledgement "
        "before answering 503 + Retry-After.",
    ),
    Option(
        "log_name",
        "str",
        "relay",
        "With RELAY_LOG=nats://: the prefix of the stream and bucket names (relays sharing "
        "one log share it).",
    ),
    Option(
        "log_username", "str", "", "With RELAY_LOG=nats://: user name (with RELAY_LOG_PASSWORD)."
    ),
    Option("log_password", "str", "", "Password of RELAY_LOG_USERNAME.", secret=True),
    Option("log_token", "str", "", "With RELAY_LOG=nats://: authentication token.", secret=True),
    Option(
        "log_credentials_file", "str", "", "With RELAY_LOG=nats://: a `.creds` file (JWT + NKey)."
    ),
    Option("log_tls_ca", "str", "", "With RELAY_LOG=nats://: PEM CA bundle of the servers."),
    Option("log_tls_client_cert", "str", "", "PEM client certificate for mutual TLS (RELAY_LOG)."),
    Option("log_tls_client_key", "str", "", "PEM key of RELAY_LOG_TLS_CLIENT_CERT."),
    Option(
        "log_format",
        "choice",
        "json",
        "`json` (one object per line) or `text`.",
        choices=("json", "text"),
    ),
    Option(
        "log_level",
        "choice",
        "info",
        "debug, info, warning or error.",
        choices=("debug", "info", "warning", "error"),
    ),
)


@dataclass(frozen=True)
class Settings:
    listen_host: str
    listen_port: int
    data_dir: str
    sync: str
    auth_tokens: tuple[str, ...]
    tls_cert: str
    tls_key: str
    tls_client_ca: str
    ingest_signing_secrets: tuple[str, ...]
    ingest_events: tuple[str, ...]
    admin_tokens: tuple[str, ...]
    admin_sample_interval: float
    trusted_networks: tuple[Any, ...]
    max_body: int
    request_timeout: float
    max_events: int
    max_bytes: int
    min_free_bytes: int
    retention: float
    on_damage: str
    log_check: str
    rules_file: str
    expected_principals: tuple[str, ...]
    workers: int
    shutdown_timeout: float
    log: str
    log_replicas: int
    log_duplicate_window: float
    log_dedup: str
    log_lease: float
    log_publish_timeout: float
    log_name: str
    log_username: str
    log_password: str
    log_token: str
    log_credentials_file: str
    log_tls_ca: str
    log_tls_client_cert: str
    log_tls_client_key: str
    log_format: str
    log_level: str


def load_settings(env: Mapping[str, str]) -> Settings:
    values: dict[str, Any] = {}
    for option in RELAY_OPTIONS:
        variable = "RELAY_" + option.env
        raw = env.get(variable)
        values[option.key] = option.default if raw is None else option.convert(raw, variable)
    values["workers"] = _workers(values["workers"])
    if values["admin_sample_interval"] < 0.1:  # 0 would sample in a busy loop
        raise ConfigError("RELAY_ADMIN_SAMPLE_INTERVAL: at least 100ms")
    values["log"] = _log(values["log"])
    _check_replicated_log(values)
    listen = values.pop("listen")
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"RELAY_LISTEN: {listen!r} is not host:port (e.g. 0.0.0.0:8080)")
    return Settings(listen_host=host.strip("[]") or "0.0.0.0", listen_port=int(port), **values)


def log_servers(text: str) -> tuple[str, ...]:
    """RELAY_LOG's NATS server URLs; () for the embedded log."""
    return () if text == "sqlite" else tuple(text.split(","))


def _log(text: str) -> str:
    """RELAY_LOG checked and normalised: `sqlite`, or comma-separated nats:// / tls:// URLs."""
    word = text.strip()
    if word.lower() in ("", "sqlite"):
        return "sqlite"
    urls = []
    for item in word.split(","):
        item = item.strip()
        parts = urlsplit(item)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme not in ("nats", "tls") or not parts.hostname or port is None:
            shown = f"{parts.scheme}://{parts.hostname}:{port}" if parts.hostname else "an entry"
            raise ConfigError(
                f"RELAY_LOG: {shown} is not nats://host:port or tls://host:port "
                "(or `sqlite` for the embedded log)"
            )
        if parts.username or parts.password:
            raise ConfigError(
                "RELAY_LOG: credentials go in RELAY_LOG_USERNAME/RELAY_LOG_PASSWORD or "
                "RELAY_LOG_TOKEN, not in the URL"
            )
        urls.append(f"{parts.scheme}://{parts.hostname}:{port}")
    return ",".join(urls)


def _check_replicated_log(values: Mapping[str, Any]) -> None:
    if not 1 <= values["log_replicas"] <= 5:
        raise ConfigError(f"RELAY_LOG_REPLICAS: {values['log_replicas']} is not between 1 and 5")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", values["log_name"]):
        raise ConfigError(
            f"RELAY_LOG_NAME: {values['log_name']!r} is not 1-32 letters, digits, _ or -"
        )
    if values["log_duplicate_window"] <= 0:
        raise ConfigError("RELAY_LOG_DUPLICATE_WINDOW: must be more than 0")
    if values["log_lease"] < 1:
        raise ConfigError("RELAY_LOG_LEASE: must be at least 1s")
    if values["log_publish_timeout"] <= 0:
        raise ConfigError("RELAY_LOG_PUBLISH_TIMEOUT: must be more than 0")
    if bool(values["log_username"]) != bool(values["log_password"]):
        raise ConfigError("RELAY_LOG_USERNAME and RELAY_LOG_PASSWORD: set both or neither")
    ways = [k for k in ("log_password", "log_token", "log_credentials_file") if values[k]]
    if len(ways) > 1:
        names = " and ".join("RELAY_" + k.upper() for k in ways)
        raise ConfigError(f"{names}: choose one way to authenticate")
    for key in ("log_credentials_file", "log_tls_ca", "log_tls_client_cert", "log_tls_client_key"):
        if values[key] and not Path(values[key]).is_file():
            raise ConfigError(f"RELAY_{key.upper()}: {values[key]} is not a readable file")
    if bool(values["log_tls_client_cert"]) != bool(values["log_tls_client_key"]):
        raise ConfigError("RELAY_LOG_TLS_CLIENT_CERT and RELAY_LOG_TLS_CLIENT_KEY: set both")


MAX_WORKERS = 8  # past this the one delivery process and the write lock are the limit


def _workers(text: str) -> int:
    if text.strip().lower() == "auto":
        from relay.processes.cpus import usable_cpus

        return min(usable_cpus(), MAX_WORKERS)
    try:
        workers = int(text)
    except ValueError:
        raise ConfigError(f"RELAY_WORKERS: {text!r} is not `auto` or a number") from None
    if not 1 <= workers <= 64:
        raise ConfigError(f"RELAY_WORKERS: {workers} is not between 1 and 64")
    return workers


def unknown_settings(env: Mapping[str, str]) -> list[str]:
    """Warnings for RELAY_* variables the relay does not read (a misspelt RELAY_ADMIN_TOKENS
    would otherwise leave the admin API off without a word). Not errors: a shell may
    export RELAY_* of its own."""
    known = {"RELAY_" + o.env for o in RELAY_OPTIONS}
    out = []
    for variable in sorted(env):
        if not variable.startswith("RELAY_") or variable in known:
            continue
        if variable.startswith("RELAY_RULE_"):  # rules (relay/rules.py) check their own
            continue
        close = difflib.get_close_matches(variable, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        out.append(f"{variable}: not a relay setting; ignored{hint}")
    return out


# ---------------------------------------------------------------------------------------------
# Sinks from RUSTFS_NOTIFY_* / MINIO_NOTIFY_*

# Sink keys are declared once, as the typed fields of a msgspec Struct: SinkConfig holds
# the keys every sink takes, each sink subclasses it with its own (and may redeclare a
# common key to give it its own meaning, as MinIO's SQL and Redis targets do with FORMAT).
# The field's type says how the env text is read (bool, int, str, tuple[str, ...] for a
# list, Literal[...] for a choice, Duration, Size); `Key` says the rest. OPTIONS, the
# reference, `relay check` and every error message come from these declarations.


@dataclass(frozen=True)
class Key:
    """What a sink key's type does not say: its documentation and how it is spelt in env."""

    doc: str
    secret: bool = False
    required: bool = False
    env_key: str = ""  # env spelling when it differs from the field name upper-cased
    aliases: tuple[str, ...] = ()  # another store's env spelling of the same key


@dataclass(frozen=True)
class _Unit:
    kind: str


Duration = Annotated[float, _Unit("duration")]  # seconds, from `500ms`, `5s`, `2m`, …
Durations = Annotated[tuple[float, ...], _Unit("durations")]  # from `5s,30s,5m`
Size = Annotated[int, _Unit("size")]  # bytes, from `512KiB`, `8MiB`, …


class SinkConfig(msgspec.Struct, kw_only=True, frozen=True):
    """The keys every sink takes: the relay's delivery policy, plus the stores' own
    bookkeeping keys (accepted so a target block moves over unchanged; the relay's log
    replaces their queue)."""

    enable: Annotated[bool, Key("Creates the sink (`on`).")] = False
    comment: Annotated[str, Key("Free text, ignored.")] = ""
    queue_dir: Annotated[
        str, Key("Accepted for compatibility and ignored: the relay's log is the queue.")
    ] = ""
    queue_limit: Annotated[int, Key("Accepted for compatibility and ignored.")] = 0
    format: Annotated[
        Literal["minio", "records", "cloudevents", "envelope", "raw"],
        Key(
            "Payload shape: `minio` ({EventName, Key, Records}), `records` ({Records}), "
            "`cloudevents` (CloudEvents 1.0 JSON), `envelope` (a flat projection for event "
            "buses), `raw` (the record as received)."
        ),
    ] = "minio"
    batch_size: Annotated[int, Key("Most events handed to the sink at once.")] = 100
    batch_bytes: Annotated[Size, Key("Most record bytes handed to the sink at once.")] = 4 * 1024**2
    batch_wait: Annotated[Duration, Key("How long a partial batch may wait for more events.")] = 0.0
    concurrency: Annotated[
        int,
        Key(
            "Events of a batch in flight at once; events of one (bucket, key) always leave "
            "in order."
        ),
    ] = 4
    timeout: Annotated[Duration, Key("Per-request timeout.")] = 10.0
    max_attempts: Annotated[
        int,
        Key(
            "Attempts before an event that keeps failing with a retryable error is "
            "dead-lettered; 0 = never (an outage never fills the DLQ), or with RETRY_SCHEDULE "
            "its steps + 1."
        ),
    ] = 0
    max_age: Annotated[
        Duration, Key("Age after which a failing event is dead-lettered; 0 = never.")
    ] = 0.0
    backoff_max: Annotated[
        Duration,
        Key(
            "Longest wait between attempts (exponential backoff with full jitter, persisted "
            "across restarts)."
        ),
    ] = 30.0
    retry_schedule: Annotated[
        Durations,
        Key(
            "The waits between attempts of a failing event, in order (e.g. "
            "`5s,30s,5m,30m,2h,5h,10h`), followed as written instead of the exponential "
            "backoff: the event is dead-lettered when the attempt after the last step fails "
            "(a MAX_ATTEMPTS beyond that repeats the last step)."
        ),
    ] = ()
    rate_limit: Annotated[
        float,
        Key(
            "Most events per second handed to the sink (0 = no limit), so draining a backlog "
            "does not flatten the target; bursts up to RATE_BURST."
        ),
    ] = 0.0
    rate_burst: Annotated[
        int, Key("Events that may go at once under RATE_LIMIT; 0 = one second's worth.")
    ] = 0
    pause_after: Annotated[
        Duration,
        Key(
            "A sink that keeps failing this long without a single delivery is paused (logged, "
            "relay_sink_paused, kept across restarts) until an operator resumes it; 0 = never."
        ),
    ] = 0.0
    max_parked: Annotated[
        int,
        Key(
            "Most events waiting behind a failing event of their own object (parked) while "
            "the sink's other objects go on; past it the sink holds at the next failing "
            "event until parked objects drain."
        ),
    ] = 10_000
    max_backlog: Annotated[
        int,
        Key(
            "Most events the sink may leave undelivered past its cursor; 0 = no bound of its "
            "own (the log's RELAY_MAX_EVENTS still holds). What happens past it: ON_FULL."
        ),
    ] = 0
    max_backlog_bytes: Annotated[
        Size,
        Key(
            "Most bytes of events the sink may leave undelivered (estimated from the log's "
            "average size per event); 0 = no bound of its own."
        ),
    ] = 0
    max_backlog_age: Annotated[
        Duration,
        Key("Oldest the sink's first undelivered event may be; 0 = no bound of its own."),
    ] = 0.0
    on_full: Annotated[
        Literal["block", "shed"],
        Key(
            "Past a MAX_BACKLOG* bound: `block` (lossless) makes ingest answer 503 + "
            "Retry-After, naming this sink, until it is back under; `shed` lets the sink's "
            "oldest undelivered events go (it no longer holds retention for them) and sends it, "
            "in order, one `relay:MissedEvents` marker with their count, seq and time range, "
            "then carries on."
        ),
    ] = "block"
    start: Annotated[
        str,
        Key(
            "Where a new sink (or one configured again after it was removed) starts: `latest` "
            "(what arrives from now on), `earliest` (the oldest event the log holds; a sink "
            "configured again resumes from its old cursor) or an RFC 3339 time. A range "
            "retention pruned, or skipped while the sink was removed, is announced by a "
            "`relay:MissedEvents` marker, never skipped in silence."
        ),
    ] = "latest"
    stale: Annotated[
        Literal["auto", "deliver", "flag", "drop"],
        Key(
            "An event older (by its sequencer) than one the sink already has of the same "
            "object: `deliver` it as it is, `flag` it (a field of the payload, `Relay-Stale: "
            "true` on webhooks) or `drop` it (counted, not sent). `auto`: `drop` for a SQL "
            "table in namespace format, whose rows must never go back in time, `flag` "
            "elsewhere."
        ),
    ] = "auto"


@cache
def options_of(config: type[SinkConfig]) -> tuple[Option, ...]:
    """The Options a SinkConfig class declares (its fields, the common ones first)."""
    hints = get_type_hints(config, include_extras=True)
    options = []
    for f in msgspec.structs.fields(config):
        base, *extras = get_args(hints[f.name]) or (hints[f.name],)
        while get_origin(base) is Annotated:  # Duration/Size inside Annotated[..., Key]
            base, *more = get_args(base)
            extras += more
        key = next((m for m in extras if isinstance(m, Key)), None)
        if key is None:
            raise TypeError(f"{config.__name__}.{f.name} has no Key(...) declaration")
        unit = next((m.kind for m in extras if isinstance(m, _Unit)), None)
        choices: tuple[str, ...] = ()
        if unit is not None:
            kind = unit
        elif get_origin(base) is Literal:
            kind, choices = "choice", tuple(get_args(base))
        else:
            kind = {bool: "bool", int: "int", str: "str", float: "number"}.get(base, "list")
        option = Option(f.name, kind, f.default, key.doc, key.secret, key.required, choices,
                        key.env_key, key.aliases)  # fmt: skip
        options.append(option)
    return tuple(options)


COMMON_OPTIONS: tuple[Option, ...] = options_of(SinkConfig)

ENV_PREFIXES = ("RUSTFS_NOTIFY_", "MINIO_NOTIFY_")
# Store-wide switches that are not targets; accepted silently.
_STORE_SWITCHES = {"ENABLE", "TARGET_STREAM_CONCURRENCY", "SEND_CONCURRENCY"}


@dataclass(frozen=True)
class SinkSpec:
    """A configured sink: its type, its id and its option values (env strings converted)."""

    type: str
    id: str
    options: dict[str, Any]
    variables: dict[str, str] = field(default_factory=dict)  # option key → env var it came from
    declared: tuple[Option, ...] = ()
    # the relay-wide settings, for the few a sink reads (RELAY_EXPECTED_PRINCIPALS)
    relay: Settings | None = None

    @property
    def name(self) -> str:
        return f"{self.type}:{self.id}"

    def __getitem__(self, key: str) -> Any:
        return self.options[key]

    def variable(self, key: str) -> str:
        default = f"{ENV_PREFIXES[0]}{self.type.upper()}_{key.upper()}_{self.id.upper()}"
        return self.variables.get(key) or default

    def redacted(self) -> dict[str, Any]:
        return {o.key: redact(o, self.options.get(o.key)) for o in self.declared}

    def typed(self, config: builtins.type[C]) -> C:
        """The option values as the sink's own SinkConfig class, or as a base of it
        (SinkConfig, for the delivery policy). A key the sink redeclared with other values
        (FORMAT: `namespace` on the SQL sinks, `ndjson` on the audit trails) is not the
        base's key: the base reads its own default for it."""
        wanted = {o.key: o for o in options_of(config)}
        values = {
            key: value
            for key, value in self.options.items()
            if not _redeclared(wanted.get(key), self.option(key))
        }
        return msgspec.convert(values, config)

    def option(self, key: str) -> Option | None:
        return next((o for o in self.declared if o.key == key), None)

    @property
    def secrets(self) -> tuple[str, ...]:
        """The keys declared secret (their values are never shown)."""
        return tuple(o.key for o in self.declared if o.secret)


C = TypeVar("C", bound=SinkConfig)


def _redeclared(wanted: Option | None, declared: Option | None) -> bool:
    return (
        wanted is not None
        and declared is not None
        and (wanted.kind, wanted.choices) != (declared.kind, declared.choices)
    )


def sink_options(own: Sequence[Option]) -> tuple[Option, ...]:
    """COMMON_OPTIONS plus a sink's own; a sink may redeclare a common key to give it its
    own meaning (MinIO's SQL and Redis targets use FORMAT for namespace/access)."""
    mine = {o.key for o in own}
    return (*(o for o in COMMON_OPTIONS if o.key not in mine), *own)


@dataclass
class _Instance:
    prefix: str
    type: str
    id: str
    raw: dict[str, tuple[str, str]] = field(default_factory=dict)  # key → (value, variable)


def load_sinks(
    env: Mapping[str, str],
    types: Mapping[str, Sequence[Option]],
    settings: Settings | None = None,
) -> tuple[list[SinkSpec], list[str]]:
    """Sinks declared in env. `types` maps a sink type to its own options (COMMON_OPTIONS are
    added). Returns (specs, warnings)."""
    warnings: list[str] = []
    by_upper = sorted(((t.upper(), t) for t in types), key=lambda p: -len(p[0]))
    instances: dict[tuple[str, str, str], _Instance] = {}
    defaults: dict[tuple[str, str], dict[str, tuple[str, str]]] = {}

    for variable in sorted(env):
        prefix = next((p for p in ENV_PREFIXES if variable.startswith(p)), None)
        if prefix is None:
            continue
        rest = variable[len(prefix) :]
        type_name = next((t for up, t in by_upper if rest.startswith(up + "_")), None)
        if type_name is None:
            if rest not in _STORE_SWITCHES:
                warnings.append(f"{variable}: no sink type of that name in the relay; ignored")
            continue
        options = sink_options(types[type_name])
        key, instance_id = _split_key(rest[len(type_name) + 1 :], options)
        if key is None:
            known = ", ".join(o.env for o in options)
            raise ConfigError(f"{variable}: unknown key for a {type_name} sink (known: {known})")
        value = (env[variable], variable)
        if instance_id is None:
            if prefix == "MINIO_NOTIFY_":
                instance_id = "_"  # MinIO: a key without an id configures the target "_"
            else:
                # RustFS: a key without an id is a default for every instance of the type
                defaults.setdefault((prefix, type_name), {})[key] = value
                continue
        ident = instance_id.lower()
        inst = instances.setdefault((prefix, type_name, ident), _Instance(prefix, type_name, ident))
        inst.raw[key] = value

    specs: dict[str, SinkSpec] = {}
    origin: dict[str, str] = {}
    for (prefix, type_name, ident), inst in sorted(instances.items()):
        raw = {**defaults.get((prefix, type_name), {}), **inst.raw}
        if "enable" not in inst.raw:
            some = next(iter(inst.raw.values()))[1]
            warnings.append(
                f"{some}: the {type_name} sink {ident!r} has no "
                f"{prefix}{type_name.upper()}_ENABLE{'' if ident == '_' else '_' + ident.upper()}"
                " and is not created"
            )
            continue
        spec = _make_spec(type_name, ident, raw, sink_options(types[type_name]), settings)
        if not spec.options["enable"]:
            continue
        enable_var = raw["enable"][1]
        if spec.name in specs:
            raise ConfigError(
                f"{origin[spec.name]} and {enable_var} both define the sink {spec.name}; "
                "keep one of them"
            )
        specs[spec.name] = spec
        origin[spec.name] = enable_var
    return list(specs.values()), warnings


def _split_key(rest: str, options: Sequence[Option]) -> tuple[str | None, str | None]:
    """`AUTH_TOKEN_PRIMARY` → ("auth_token", "PRIMARY"); the longest known key wins."""
    spellings = [(env, o) for o in options for env in (o.env, *o.aliases)]
    for env, option in sorted(spellings, key=lambda pair: -len(pair[0])):
        if rest == env:
            return option.key, None
        if rest.startswith(env + "_") and len(rest) > len(env) + 1:
            return option.key, rest[len(env) + 1 :]
    return None, None


def _make_spec(
    type_name: str,
    ident: str,
    raw: dict[str, tuple[str, str]],
    options: Sequence[Option],
    settings: Settings | None = None,
) -> SinkSpec:
    values: dict[str, Any] = {}
    variables: dict[str, str] = {}
    for option in options:
        if option.key in raw:
            text, variable = raw[option.key]
            values[option.key] = option.convert(text, variable)
            variables[option.key] = variable
        else:
            values[option.key] = option.default
    spec = SinkSpec(type_name, ident, values, variables, tuple(options), settings)
    if values["enable"]:
        for option in options:
            if option.required and not values[option.key]:
                raise ConfigError(f"{spec.variable(option.key)}: required for the sink {spec.name}")
        for key in ("batch_size", "concurrency", "max_parked"):
            if values[key] < 1:
                raise ConfigError(f"{spec.variable(key)}: must be at least 1")
        for key in ("rate_limit", "rate_burst", "pause_after"):
            if values[key] < 0:
                raise ConfigError(f"{spec.variable(key)}: must not be negative")
        if "start" in values:
            try:
                parse_start(values["start"])
            except ValueError as exc:
                raise ConfigError(f"{spec.variable('start')}: {exc}") from None
    return spec
