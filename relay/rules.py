"""Routing rules: which sinks an event goes to.

S3 `NotificationConfiguration` semantics (event names with `:*` wildcards, one prefix and one
suffix on the decoded key) plus the relay's and Ceph's extra filters (buckets, source labels,
key regex, metadata, tags, size range). Rules come from the environment, a TOML file or an
S3 NotificationConfiguration XML document; `Router` compiles them once so that `matches()`,
which the dispatcher calls for every event and sink, is a handful of set look-ups and string
comparisons.

No rules at all → every event goes to every sink. Once rules exist, a sink receives an event
only if a rule that targets it (names it, or names no sinks) matches the event.
"""

from __future__ import annotations

import re
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay.config import ConfigError, parse_list, parse_size
from relay.events import Event, canonical_event_name

__all__ = [
    "Router",
    "Rule",
    "RuleVerdict",
    "format_verdicts",
    "parse_size",
    "resolve_sink_ref",
    "rules_from_env",
    "rules_from_notification_xml",
    "rules_from_toml",
    "rules_to_toml",
]


@dataclass(frozen=True, slots=True)
class Rule:
    """One routing rule, as configured (patterns and sink references are kept as written)."""

    name: str
    events: tuple[str, ...] = ()  # "s3:ObjectCreated:*", "ObjectRemoved:Delete"; empty = all
    prefix: str = ""  # on the decoded key (Event.key)
    suffix: str = ""
    buckets: tuple[str, ...] = ()  # empty = every bucket
    sources: tuple[str, ...] = ()  # Event.source labels; empty = every source
    key_regex: str | None = None  # Python re, search() on the decoded key
    metadata: tuple[tuple[str, str], ...] = ()  # all must be present with that value
    tags: tuple[tuple[str, str], ...] = ()  # all must match
    min_size: int | None = None  # inclusive
    max_size: int | None = None  # inclusive
    sinks: tuple[str, ...] = ()  # sink ids ("webhook:primary") or ARNs; empty = every sink


@dataclass(frozen=True, slots=True)
class RuleVerdict:
    """What one rule says about one event (for `relay rules test`)."""

    name: str
    matched: bool
    why: str  # the first failing filter, or what matched
    sinks: tuple[str, ...]  # the configured sinks this rule reaches (resolved, sorted)


# --------------------------------------------------------------------------------------------
# Event-name patterns

# Families that are one thing under two names (Ceph ↔ AWS/RustFS lifecycle events).
_EXPIRATION = ("s3:LifecycleExpiration:", "s3:ObjectLifecycle:Expiration:")
_TRANSITION = ("s3:LifecycleTransition:", "s3:ObjectLifecycle:Transition:")
_TRANSITION_SINGLE = "s3:LifecycleTransition"  # AWS/RustFS: a single name, no sub-types

# Second components of every event name the senders document (reference/senders.md §6);
# a pattern outside these is most likely a typo, so the Router warns about it.
_KNOWN_FAMILIES = frozenset(
    {
        "ObjectAccessed",
        "ObjectCreated",
        "ObjectRemoved",
        "ObjectTagging",
        "ObjectAcl",
        "ObjectRestore",
        "ObjectTransition",
        "ObjectLifecycle",
        "ObjectSynced",
        "Replication",
        "Scanner",
        "LifecycleExpiration",
        "LifecycleTransition",
        "LifecycleDelMarkerExpiration",
        "IntelligentTiering",
        "BucketCreated",
        "BucketRemoved",
        "ReducedRedundancyLostObject",
        "TestEvent",
        "UnknownEvent",
    }
)


@dataclass(frozen=True, slots=True)
class _EventSet:
    """A compiled list of event patterns: every name, or exact names plus name prefixes."""

    everything: bool
    exact: frozenset[str]
    prefixes: tuple[str, ...]

    def match(self, name: str) -> bool:
        return self.everything or name in self.exact or name.startswith(self.prefixes)

    def intersects(self, other: _EventSet) -> bool:
        """Whether some event name can match both sets (AWS's overlap test)."""
        if self.everything or other.everything:
            return True
        if self.exact & other.exact:
            return True
        if any(name.startswith(other.prefixes) for name in self.exact):
            return True
        if any(name.startswith(self.prefixes) for name in other.exact):
            return True
        return any(
            a.startswith(b) or b.startswith(a) for a in self.prefixes for b in other.prefixes
        )


def _pattern_error(pattern: str) -> str | None:
    """Why an event pattern is not valid, or None."""
    canon = canonical_event_name(pattern)
    if canon == "s3:":
        return "an event pattern is empty"
    if canon == "s3:*":
        return None
    if "*" in canon[:-1] or (canon.endswith("*") and not canon.endswith(":*")):
        return (
            f"event pattern {_q(pattern)} is not valid: '*' may only stand for a whole last "
            'part, as in "s3:ObjectCreated:*"'
        )
    return None


def _compile_events(patterns: Iterable[str]) -> _EventSet:
    patterns = tuple(patterns)
    if not patterns:
        return _EventSet(True, frozenset(), ())
    exact: set[str] = set()
    prefixes: set[str] = set()
    for pattern in patterns:
        canon = canonical_event_name(pattern)
        if canon == "s3:*":
            return _EventSet(True, frozenset(), ())
        if canon.endswith(":*"):
            # "s3:ObjectCreated:" — also matches "s3:BucketCreated:*", a single event name
            # that ends in ":*", literally.
            family = canon[:-1]
            prefixes.add(family)
            if family in _EXPIRATION:
                prefixes.update(_EXPIRATION)
            elif family in _TRANSITION:
                prefixes.update(_TRANSITION)
                exact.add(_TRANSITION_SINGLE)
            elif family == "s3:ObjectLifecycle:":
                # Ceph's whole lifecycle family is AWS's expiration and transition together.
                prefixes.update(_EXPIRATION)
                prefixes.update(_TRANSITION)
                exact.add(_TRANSITION_SINGLE)
        else:
            exact.add(canon)
            if canon == _TRANSITION_SINGLE:
                prefixes.update(_TRANSITION)
    # A prefix covered by a shorter one adds nothing.
    kept = tuple(
        sorted(p for p in prefixes if not any(p != q and p.startswith(q) for q in prefixes))
    )
    return _EventSet(False, frozenset(exact), kept)


EventSet = _EventSet  # the compiled form, for sinks that take event patterns


def compile_event_patterns(patterns: Sequence[str], variable: str) -> _EventSet | None:
    """Event patterns as rules read them (wildcards, aliases, lifecycle families) for a sink
    option such as DELETE_ON. None for an empty list (matches nothing, unlike a rule's
    empty EVENTS); ConfigError naming `variable` for a pattern that is not valid."""
    for pattern in patterns:
        error = _pattern_error(pattern)
        if error:
            raise ConfigError(f"{variable}: {error}")
    return _compile_events(patterns) if patterns else None


def _unknown_family(pattern: str) -> bool:
    canon = canonical_event_name(pattern)
    if canon == "s3:*":
        return False
    return canon.split(":")[1] not in _KNOWN_FAMILIES


# --------------------------------------------------------------------------------------------
# Sink references

# MinIO's ARN type for PostgreSQL targets is "postgresql"; the relay's sink type is "postgres".
_TYPE_ALIASES = {"postgresql": "postgres"}


def _sink_ref_to_id(ref: str) -> str | None:
    """`webhook:primary` or a RustFS/MinIO queue ARN → "<type>:<id>" (lower-case); else None."""
    ref = ref.strip()
    if ref.lower().startswith("arn:"):
        parts = ref.split(":")
        if len(parts) != 6 or parts[1].lower() not in ("rustfs", "minio"):
            return None
        if parts[2].lower() != "sqs" or not parts[4] or not parts[5]:
            return None
        return f"{parts[5].lower()}:{parts[4].lower()}"
    kind, sep, ident = ref.partition(":")
    if not sep or not kind or not ident:
        return None
    return f"{kind.lower()}:{ident.lower()}"


def sink_ref_id(ref: str) -> str | None:
    """`<type>:<id>` a sink reference names (an id or a RustFS/MinIO ARN); None for any
    other ARN (a Ceph topic, an AWS queue)."""
    return _sink_ref_to_id(ref)


def resolve_sink_ref(ref: str, sink_ids: Sequence[str]) -> str | None:
    """The configured sink id a rule's sink reference means, or None.

    `webhook:PRIMARY`, `arn:rustfs:sqs::primary:webhook` and `arn:minio:sqs::PRIMARY:webhook`
    all resolve to a configured `webhook:primary` (ids compare case-insensitively). Any other
    kind of ARN (a Ceph topic, an AWS queue) and any sink that is not configured give None.
    """
    wanted = _sink_ref_to_id(ref)
    if wanted is None:
        return None
    by_lower = {sid.lower(): sid for sid in sink_ids}
    if wanted in by_lower:
        return by_lower[wanted]
    kind, _, ident = wanted.partition(":")
    alias = _TYPE_ALIASES.get(kind)
    if alias is not None:
        return by_lower.get(f"{alias}:{ident}")
    return None


# --------------------------------------------------------------------------------------------
# Compiled rules

_META_PREFIX = "x-amz-meta-"


def _meta_keys(key: str) -> tuple[str, str]:
    """A metadata key and its other spelling (with or without "x-amz-meta-"), lower-case.

    Ceph's S3Metadata filters name `x-amz-meta-color`; senders disagree on whether the
    user-metadata keys they report keep that prefix. Either spelling finds either.
    """
    key = key.lower()
    if key.startswith(_META_PREFIX) and len(key) > len(_META_PREFIX):
        return key, key[len(_META_PREFIX) :]
    return key, _META_PREFIX + key


class Failed:
    """One condition of a rule that an event fails. Every one a rule can fail is made when
    the rule is compiled, so a check that fails (most do: most events are not for most
    sinks) allocates nothing; `_CompiledRule.describe` words it for an operator."""

    __slots__ = ("index", "kind")

    def __init__(self, kind: str, index: int = 0) -> None:
        self.kind = kind  # which condition: "event", "bucket", …, "tag_differs"
        self.index = index  # which metadata pair or tag of the rule

    def __repr__(self) -> str:
        return f"Failed({self.kind!r}, {self.index})"


_EVENT = Failed("event")
_BUCKET = Failed("bucket")
_SOURCE = Failed("source")
_PREFIX = Failed("prefix")
_SUFFIX = Failed("suffix")
_KEY_REGEX = Failed("key_regex")
_SIZE_UNKNOWN = Failed("size_unknown")
_BELOW_MIN = Failed("below_min")
_ABOVE_MAX = Failed("above_max")

# A compiled rule's checks: the first condition the event fails, None when it matches.
Check = Callable[[Event], Failed | None]


class _CompiledRule:
    """A rule with everything precomputed; `check` is the hot path, the one place its
    conditions are tested (routing and explaining both use it)."""

    __slots__ = (
        "buckets",
        "check",
        "event_set",
        "metadata",
        "regex",
        "rule",
        "sinks",
        "sources",
        "tags",
    )

    def __init__(self, rule: Rule, sinks: tuple[str, ...]) -> None:
        self.rule = rule
        self.sinks = sinks
        for pattern in rule.events:
            problem = _pattern_error(pattern)
            if problem:
                raise ConfigError(f'rule "{rule.name}": {problem}')
        self.event_set = _compile_events(rule.events)
        self.buckets = frozenset(rule.buckets) if rule.buckets else None
        # Source labels are path labels; accept them written with or without the leading "/".
        self.sources = (
            frozenset(s for src in rule.sources for s in (src.lstrip("/"), "/" + src.lstrip("/")))
            if rule.sources
            else None
        )
        if rule.key_regex is not None:
            try:
                self.regex: re.Pattern[str] | None = re.compile(rule.key_regex)
            except re.error as exc:
                raise ConfigError(
                    f'rule "{rule.name}": key_regex {_q(rule.key_regex)} is not a valid '
                    f"regular expression: {exc}"
                ) from None
        else:
            self.regex = None
        self.metadata = tuple(
            (*_meta_keys(k), v, Failed("metadata_missing", i), Failed("metadata_differs", i))
            for i, (k, v) in enumerate(rule.metadata)
        )
        self.tags = tuple(
            (k, v, Failed("tag_missing", i), Failed("tag_differs", i))
            for i, (k, v) in enumerate(rule.tags)
        )
        self.check = self._build_check()

    def _build_check(self) -> Check:
        # One closure per rule, holding only the checks this rule has, in local variables.
        rule = self.rule
        events = self.event_set
        all_events = events.everything
        exact = events.exact
        families = events.prefixes
        buckets = self.buckets
        sources = self.sources
        prefix = rule.prefix
        suffix = rule.suffix
        search = self.regex.search if self.regex is not None else None
        min_size = rule.min_size
        max_size = rule.max_size
        sized = min_size is not None or max_size is not None
        lo = min_size if min_size is not None else float("-inf")
        hi = max_size if max_size is not None else float("inf")
        metadata = self.metadata
        tags = self.tags
        keyed = bool(prefix or suffix or search is not None)

        def key_fails(key: str) -> Failed | None:
            if prefix and not key.startswith(prefix):
                return _PREFIX
            if suffix and not key.endswith(suffix):
                return _SUFFIX
            if search is not None and search(key) is None:
                return _KEY_REGEX
            return None

        def check(event: Event) -> Failed | None:
            if not all_events:
                name = event.event_name
                if name not in exact and not name.startswith(families):
                    return _EVENT
            if buckets is not None and event.bucket not in buckets:
                return _BUCKET
            if sources is not None and event.source not in sources:
                return _SOURCE
            if keyed:
                if event.objects:  # a multi-object request: any of its objects
                    first = None
                    for key in event.objects:
                        failed = key_fails(key)
                        if failed is None:
                            break
                        first = first or failed
                    else:
                        return first  # the first object's, as `describe` words it
                else:
                    failed = key_fails(event.key)
                    if failed is not None:
                        return failed
            if sized:
                size = event.size
                if size is None:
                    return _SIZE_UNKNOWN
                if size < lo:
                    return _BELOW_MIN
                if size > hi:
                    return _ABOVE_MAX
            if metadata:
                got = event.metadata
                for key1, key2, want, missing, differs in metadata:
                    value = got.get(key1)
                    if value is None:
                        value = got.get(key2)
                    if value != want:
                        return missing if value is None else differs
            if tags:
                got = event.tags
                for tag, want, missing, differs in tags:
                    value = got.get(tag)
                    if value != want:
                        return missing if value is None else differs
            return None

        return check

    def describe(self, failed: Failed, event: Event) -> str:
        """What `check` found, in an operator's words."""
        rule, kind = self.rule, failed.kind
        if kind == "event":
            return f"event {_q(event.event_name)} does not match events {_qlist(rule.events)}"
        if kind == "bucket":
            return f"bucket {_q(event.bucket)} is not in buckets {_qlist(rule.buckets)}"
        if kind == "source":
            return f"source {_q(event.source)} is not in sources {_qlist(rule.sources)}"
        if kind in ("prefix", "suffix", "key_regex"):
            key = event.objects[0] if event.objects else event.key
            pattern = {"prefix": rule.prefix, "suffix": rule.suffix}.get(kind, rule.key_regex)
            text = f"{kind} {_q(pattern or '')} does not match key {_q(key)}"
            if event.objects:
                return f"none of the objects {_qlist(list(event.objects))} matches: {text}"
            return text
        if kind == "size_unknown":
            return "size is unknown (the sender gave none) and the rule has a size filter"
        if kind == "below_min":
            return f"size {event.size} is below min_size {rule.min_size}"
        if kind == "above_max":
            return f"size {event.size} is above max_size {rule.max_size}"
        if kind.startswith("metadata"):
            written, want = rule.metadata[failed.index]
            key1, key2 = self.metadata[failed.index][:2]
            value = event.metadata.get(key1)
            value = event.metadata.get(key2) if value is None else value
            if value is None:
                return f"metadata {_q(written)} is missing (rule wants {_q(want)})"
            return f"metadata {_q(written)} is {_q(value)}, rule wants {_q(want)}"
        tag, want = rule.tags[failed.index]
        value = event.tags.get(tag)
        if value is None:
            return f"tag {_q(tag)} is missing (rule wants {_q(want)})"
        return f"tag {_q(tag)} is {_q(value)}, rule wants {_q(want)}"

    def why_not(self, event: Event) -> str | None:
        """The first failing condition, worded; None when the rule matches."""
        failed = self.check(event)
        return None if failed is None else self.describe(failed, event)

    def why_yes(self) -> str:
        rule = self.rule
        parts = []
        if rule.events:
            parts.append(f"events {_qlist(rule.events)}")
        if rule.buckets:
            parts.append(f"buckets {_qlist(rule.buckets)}")
        if rule.sources:
            parts.append(f"sources {_qlist(rule.sources)}")
        if rule.prefix:
            parts.append(f"prefix {_q(rule.prefix)}")
        if rule.suffix:
            parts.append(f"suffix {_q(rule.suffix)}")
        if rule.key_regex is not None:
            parts.append(f"key_regex {_q(rule.key_regex)}")
        if rule.min_size is not None:
            parts.append(f"min_size {rule.min_size}")
        if rule.max_size is not None:
            parts.append(f"max_size {rule.max_size}")
        parts.extend(f"metadata {_q(k)}={_q(v)}" for k, v in rule.metadata)
        parts.extend(f"tag {_q(k)}={_q(v)}" for k, v in rule.tags)
        if not parts:
            return "no filters: matches every event"
        return "matches " + ", ".join(parts)


class Router:
    """Compiled rules for a set of configured sinks."""

    def __init__(self, rules: Sequence[Rule], sink_ids: Sequence[str]) -> None:
        self.rules = tuple(rules)
        self.sink_ids = tuple(sink_ids)
        self.warnings: list[str] = []
        all_sinks = tuple(sorted(set(self.sink_ids)))

        compiled: list[_CompiledRule] = []
        seen_names: set[str] = set()
        for rule in self.rules:
            if rule.name in seen_names:
                self.warnings.append(f'rule "{rule.name}" is defined more than once')
            seen_names.add(rule.name)
            if rule.sinks:
                resolved: set[str] = set()
                for ref in rule.sinks:
                    sid = resolve_sink_ref(ref, self.sink_ids)
                    if sid is not None:
                        resolved.add(sid)
                    elif _sink_ref_to_id(ref) is None:
                        self.warnings.append(
                            f'rule "{rule.name}" names {_q(ref)}, which is not a relay sink '
                            "(write <type>:<id>, arn:rustfs:sqs::<id>:<type> or "
                            "arn:minio:sqs::<id>:<type>); the rule ignores it"
                        )
                    else:
                        self.warnings.append(
                            f'rule "{rule.name}" names sink {_q(ref)}, which is not configured'
                        )
                targets = tuple(sorted(resolved))
            else:
                targets = all_sinks
            for pattern in rule.events:
                if _pattern_error(pattern) is None and _unknown_family(pattern):
                    self.warnings.append(
                        f'rule "{rule.name}": event {_q(pattern)} is not an event name any '
                        "supported store sends"
                    )
            compiled.append(_CompiledRule(rule, targets))
        self._compiled = tuple(compiled)

        # Per sink: the checks of the rules that target it. None = no rules, route all.
        self._no_rules = not compiled
        by_sink: dict[str, list[Check]] = {sid: [] for sid in all_sinks}
        for comp in compiled:
            for sid in comp.sinks:
                by_sink[sid].append(comp.check)
        self._by_sink: dict[str, tuple[Check, ...]] = {
            sid: tuple(checks) for sid, checks in by_sink.items()
        }
        # A sink id the router was not told about is reached only by rules that name no sinks.
        self._unlisted = tuple(c.check for c in compiled if not c.rule.sinks)

        for sid in self.unrouted_sinks():
            self.warnings.append(
                f'sink "{sid}" is not reached by any rule; it will receive no events '
                "(name it in a rule's sinks, or add a rule without sinks)"
            )

    def matches(self, sink_id: str, event: Event) -> bool:
        """Whether `event` goes to `sink_id`. Called per event per sink: keep it cheap."""
        if self._no_rules:
            return True
        for check in self._by_sink.get(sink_id, self._unlisted):
            if check(event) is None:
                return True
        return False

    def sinks_for(self, event: Event) -> list[str]:
        """Every configured sink the event goes to, sorted."""
        if self._no_rules:
            return sorted(set(self.sink_ids))
        reached: set[str] = set()
        for comp in self._compiled:
            if comp.check(event) is None:
                reached.update(comp.sinks)
        return sorted(reached)

    def why_not_to(self, sink_id: str, event: Event) -> list[str] | None:
        """Why `event` does not go to `sink_id`: the first failing condition of each rule
        that targets the sink, in rule order (`rule "images": suffix ".jpg" does not match
        key "x.pdf"`); None when it goes there."""
        if self._no_rules:
            return None
        known = sink_id in self._by_sink
        reasons = []
        for comp in self._compiled:
            if (sink_id in comp.sinks) if known else not comp.rule.sinks:
                failed = comp.check(event)
                if failed is None:
                    return None
                reasons.append(f"rule {_q(comp.rule.name)}: {comp.describe(failed, event)}")
        return reasons or [f"no rule sends events to {sink_id}"]

    def explain(self, event: Event) -> list[RuleVerdict]:
        """One verdict per rule, in rule order."""
        verdicts = []
        for comp in self._compiled:
            failed = comp.check(event)
            failure = None if failed is None else comp.describe(failed, event)
            verdicts.append(
                RuleVerdict(
                    name=comp.rule.name,
                    matched=failure is None,
                    why=failure if failure is not None else comp.why_yes(),
                    sinks=comp.sinks,
                )
            )
        return verdicts

    def unrouted_sinks(self) -> list[str]:
        """Configured sinks that no rule targets (empty when there are no rules)."""
        if self._no_rules:
            return []
        return sorted(sid for sid, checks in self._by_sink.items() if not checks)


def format_verdicts(event: Event, verdicts: Sequence[RuleVerdict], sinks: Sequence[str]) -> str:
    """Human text for `relay rules test`: the event, each rule's verdict, the sinks reached."""
    size = "unknown" if event.size is None else str(event.size)
    lines = [
        f"event   {event.event_name}",
        f"bucket  {_q(event.bucket)}",
        f"key     {_q(event.key)}",
        f"size    {size}",
        f"source  {_q(event.source)}",
        "",
    ]
    if not verdicts:
        lines.append("no rules configured: every event goes to every sink")
    else:
        width = max(len(v.name) for v in verdicts)
        for verdict in verdicts:
            if verdict.matched:
                reach = ", ".join(verdict.sinks) if verdict.sinks else "(no configured sink)"
                lines.append(f"  {verdict.name:<{width}}  MATCH     -> {reach}")
            else:
                lines.append(f"  {verdict.name:<{width}}  no match")
            lines.append(f"  {'':<{width}}  {verdict.why}")
    lines.append("")
    lines.append("sinks: " + (", ".join(sinks) if sinks else "none (the event goes nowhere)"))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Shared value parsing and validation


def _check_pairs(pairs: Iterable[tuple[str, str]], what: str, *, fold: bool) -> None:
    seen: set[str] = set()
    for key, _ in pairs:
        if not key:
            raise ValueError(f"a {what} name is empty")
        folded = key.lower() if fold else key
        if folded in seen:
            raise ValueError(f"{what} {_q(key)} is given twice")
        seen.add(folded)


def _check_sizes(rule: Rule) -> str | None:
    if rule.min_size is not None and rule.max_size is not None and rule.min_size > rule.max_size:
        return f"min_size {rule.min_size} is greater than max_size {rule.max_size}"
    return None


def _check_regex(pattern: str) -> str | None:
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"{_q(pattern)} is not a valid regular expression: {exc}"
    return None


def _check_events(patterns: Iterable[str]) -> str | None:
    for pattern in patterns:
        problem = _pattern_error(pattern)
        if problem:
            return problem
    return None


def _q(text: str) -> str:
    """Quote a value for a message: "like this", with quotes and control characters escaped."""
    return '"' + _escape(text) + '"'


def _qlist(items: Iterable[str]) -> str:
    return "[" + ", ".join(_q(item) for item in items) + "]"


def _escape(text: str) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    return "".join(out)


_SHORT_ESCAPES = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


# --------------------------------------------------------------------------------------------
# Environment

_ENV_PREFIX = "RELAY_RULE_"
_ENV_FIELDS = (
    "EVENTS",
    "PREFIX",
    "SUFFIX",
    "BUCKETS",
    "SOURCES",
    "SINKS",
    "KEY_REGEX",
    "METADATA",
    "TAGS",
    "MIN_SIZE",
    "MAX_SIZE",
)
# Longest first, so that "_KEY_REGEX" wins over any shorter field that is its suffix.
_ENV_FIELDS_BY_LENGTH = sorted(_ENV_FIELDS, key=len, reverse=True)


def _parse_pairs_text(text: str, what: str, *, fold: bool) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in parse_list(text):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{_q(item)} is not key=value (write k=v,k2=v2)")
        pairs.append((key.strip(), value.strip()))
    _check_pairs(pairs, what, fold=fold)
    return tuple(pairs)


def rules_from_env(env: Mapping[str, str]) -> list[Rule]:
    """`RELAY_RULE_<NAME>_<FIELD>` variables → rules, sorted by name.

    NAME may contain underscores (`RELAY_RULE_NEW_IMAGES_PREFIX` is rule `new_images`); it is
    lower-cased. Every error names the variable.
    """
    fields: dict[str, dict[str, tuple[str, str]]] = {}  # rule → FIELD → (variable, value)
    for var in sorted(env):
        if not var.startswith(_ENV_PREFIX):
            continue
        rest = var[len(_ENV_PREFIX) :]
        for field in _ENV_FIELDS_BY_LENGTH:
            if rest.endswith("_" + field):
                name = rest[: -len(field) - 1].lower()
                break
        else:
            raise ConfigError(
                f"{var}: unknown rule field (expected RELAY_RULE_<NAME>_<FIELD> with FIELD one "
                f"of {', '.join(_ENV_FIELDS)})"
            )
        if not name.strip("_"):
            raise ConfigError(f"{var}: the rule name is missing (RELAY_RULE_<NAME>_{field})")
        fields.setdefault(name, {})[field] = (var, env[var])

    rules = []
    for name in sorted(fields):
        values: dict[str, Any] = {}
        for field, (var, raw) in fields[name].items():
            try:
                values[field.lower()] = _env_value(field, raw)
            except ValueError as exc:
                raise ConfigError(f"{var}: {exc}") from None
        rule = Rule(name=name, **values)
        problem = _check_sizes(rule)
        if problem:
            names = " / ".join(fields[name][f][0] for f in ("MIN_SIZE", "MAX_SIZE"))
            raise ConfigError(f"{names}: {problem}")
        rules.append(rule)
    return rules


def _env_value(field: str, raw: str) -> Any:
    if field in ("EVENTS", "BUCKETS", "SOURCES", "SINKS"):
        items = parse_list(raw)
        if field == "EVENTS":
            problem = _check_events(items)
            if problem:
                raise ValueError(problem)
        return items
    if field in ("PREFIX", "SUFFIX"):
        return raw
    if field == "KEY_REGEX":
        if not raw:
            return None
        problem = _check_regex(raw)
        if problem:
            raise ValueError(problem)
        return raw
    if field == "METADATA":
        return _parse_pairs_text(raw, "metadata", fold=True)
    if field == "TAGS":
        return _parse_pairs_text(raw, "tag", fold=False)
    # MIN_SIZE, MAX_SIZE
    if not raw.strip():
        return None
    return parse_size(raw)


# --------------------------------------------------------------------------------------------
# TOML

_TOML_KEYS = (
    "events",
    "prefix",
    "suffix",
    "buckets",
    "sources",
    "sinks",
    "key_regex",
    "metadata",
    "tags",
    "min_size",
    "max_size",
)


def rules_from_toml(path: str | Path) -> list[Rule]:
    """`[rules.<name>]` tables of a TOML file → rules, in file order."""
    where = str(path)
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the rules file: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not valid UTF-8: {exc}") from None
    return _rules_from_document(document, where)


def _rules_from_document(document: dict[str, Any], where: str) -> list[Rule]:
    for key in document:
        if key != "rules":
            raise ConfigError(
                f"{where}: unknown top-level key {_q(key)} (rules go in [rules.<name>] tables)"
            )
    tables = document.get("rules", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{where}: 'rules' must be a table of [rules.<name>] tables")
    rules = []
    for name, table in tables.items():
        context = f'{where}: rule "{name}"'
        if not name.strip():
            raise ConfigError(f"{where}: a rule has an empty name")
        if not isinstance(table, dict):
            raise ConfigError(f"{context}: must be a table ([rules.{_toml_key(name)}])")
        try:
            rules.append(_rule_from_table(name, table))
        except ValueError as exc:
            raise ConfigError(f"{context}: {exc}") from None
    return rules


def _rule_from_table(name: str, table: dict[str, Any]) -> Rule:
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in _TOML_KEYS:
            raise ValueError(f"unknown key {_q(key)} (known: {', '.join(_TOML_KEYS)})")
        if key in ("events", "buckets", "sources", "sinks"):
            values[key] = _toml_list(key, value)
        elif key in ("prefix", "suffix", "key_regex"):
            if not isinstance(value, str):
                raise ValueError(f"{key} must be a string")
            values[key] = value
        elif key in ("metadata", "tags"):
            if not isinstance(value, dict):
                raise ValueError(f'{key} must be a table, e.g. {key} = {{ color = "red" }}')
            pairs = []
            for k, v in value.items():
                if not isinstance(v, str):
                    raise ValueError(f"{key} {_q(k)} must be a string")
                pairs.append((k, v))
            _check_pairs(pairs, "metadata" if key == "metadata" else "tag", fold=key == "metadata")
            values[key] = tuple(pairs)
        else:  # min_size, max_size
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise ValueError(f"{key} must be a number of bytes or a size like 8MiB")
            if isinstance(value, str):
                try:
                    value = parse_size(value)
                except ValueError as exc:
                    raise ValueError(f"{key}: {exc}") from None
            if value < 0:
                raise ValueError(f"{key} must not be negative")
            values[key] = value
    rule = Rule(name=name, **values)
    problem = _check_events(rule.events)
    if problem:
        raise ValueError(problem)
    if rule.key_regex is not None:
        problem = _check_regex(rule.key_regex)
        if problem:
            raise ValueError(f"key_regex {problem}")
    problem = _check_sizes(rule)
    if problem:
        raise ValueError(problem)
    return rule


def _toml_list(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return parse_list(value)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{key} must be a list of strings")
    return tuple(item.strip() for item in value if item.strip())


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_str(key)


def _toml_str(text: str) -> str:
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        raise ValueError(f"{text!r} contains a lone surrogate and cannot be written as TOML")
    return _q(text)


def rules_to_toml(rules: Sequence[Rule]) -> str:
    """Rules as a TOML document that `rules_from_toml` reads back to the same rules."""
    blocks = []
    for rule in rules:
        lines = [f"[rules.{_toml_key(rule.name)}]"]
        for key in ("events", "buckets", "sources"):
            items = getattr(rule, key)
            if items:
                lines.append(f"{key} = [{', '.join(_toml_str(i) for i in items)}]")
        for key in ("prefix", "suffix"):
            if getattr(rule, key):
                lines.append(f"{key} = {_toml_str(getattr(rule, key))}")
        if rule.key_regex is not None:
            lines.append(f"key_regex = {_toml_str(rule.key_regex)}")
        for key in ("metadata", "tags"):
            pairs = getattr(rule, key)
            if pairs:
                inner = ", ".join(f"{_toml_key(k)} = {_toml_str(v)}" for k, v in pairs)
                lines.append(f"{key} = {{ {inner} }}")
        for key in ("min_size", "max_size"):
            if getattr(rule, key) is not None:
                lines.append(f"{key} = {getattr(rule, key)}")
        if rule.sinks:
            lines.append(f"sinks = [{', '.join(_toml_str(s) for s in rule.sinks)}]")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n" if blocks else "[rules]\n"


# --------------------------------------------------------------------------------------------
# S3 NotificationConfiguration XML

_CONFIG_KINDS = {
    "QueueConfiguration": "Queue",
    "TopicConfiguration": "Topic",
    "CloudFunctionConfiguration": "CloudFunction",
    # The current AWS name for CloudFunctionConfiguration; its ARN element is CloudFunction.
    "LambdaFunctionConfiguration": "CloudFunction",
}
# Ceph: a TopicConfiguration without Event elements means ObjectCreated + ObjectRemoved.
_CEPH_DEFAULT_EVENTS = ("s3:ObjectCreated:*", "s3:ObjectRemoved:*")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if _local(child.tag) == name]


def _text(element: ET.Element) -> str:
    return element.text or ""


def rules_from_notification_xml(text: str, *, source_name: str = "notification.xml") -> list[Rule]:
    """An S3 `NotificationConfiguration` document → one rule per configuration.

    Handles AWS, MinIO and RustFS documents (with or without the S3 namespace) and Ceph's
    extensions (`regex` key filter, `S3Metadata` and `S3Tags` filters). Errors name
    `source_name` and the configuration's Id.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise ConfigError(f"{source_name}: DOCTYPE and ENTITY declarations are not accepted")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ConfigError(f"{source_name}: not well-formed XML: {exc}") from None
    if _local(root.tag) != "NotificationConfiguration":
        raise ConfigError(
            f"{source_name}: the root element is <{_local(root.tag)}>, "
            "expected <NotificationConfiguration>"
        )

    explicit_ids = {
        _text(ids[0]).strip()
        for child in root
        if (ids := _children(child, "Id")) and _text(ids[0]).strip()
    }
    rules: list[Rule] = []
    counter = 0
    for child in root:
        kind = _local(child.tag)
        if kind == "EventBridgeConfiguration":
            continue  # AWS-only destination; nothing for the relay to route
        if kind not in _CONFIG_KINDS:
            raise ConfigError(
                f"{source_name}: unknown element <{kind}> (expected QueueConfiguration, "
                "TopicConfiguration or CloudFunctionConfiguration)"
            )
        ids = _children(child, "Id")
        name = _text(ids[0]).strip() if ids else ""
        if not name:
            while True:
                counter += 1
                name = f"rule-{counter}"
                if name not in explicit_ids:
                    break
        elif any(rule.name == name for rule in rules):
            raise ConfigError(f'{source_name}: two configurations have the Id "{name}"')
        context = f'{source_name}: {kind} "{name}"'
        try:
            rules.append(_rule_from_configuration(child, kind, name))
        except ValueError as exc:
            raise ConfigError(f"{context}: {exc}") from None

    _check_overlaps(rules, source_name)
    return rules


def _rule_from_configuration(element: ET.Element, kind: str, name: str) -> Rule:
    arn_tag = _CONFIG_KINDS[kind]
    known = {"Id", "Event", "Filter", arn_tag, "InvocationRole"}
    for child in element:
        tag = _local(child.tag)
        if tag not in known:
            raise ValueError(f"unknown element <{tag}>")
    if len(_children(element, "Id")) > 1:
        raise ValueError("more than one Id")

    arns = [_text(e).strip() for e in _children(element, arn_tag)]
    if len(arns) != 1 or not arns[0]:
        raise ValueError(f"needs exactly one <{arn_tag}> ARN")

    events = tuple(_text(e).strip() for e in _children(element, "Event"))
    if not events:
        if kind != "TopicConfiguration":
            raise ValueError("has no <Event>; name at least one, e.g. s3:ObjectCreated:*")
        events = _CEPH_DEFAULT_EVENTS
    problem = _check_events(events)
    if problem:
        raise ValueError(problem)

    filters = _children(element, "Filter")
    if len(filters) > 1:
        raise ValueError("more than one <Filter>")
    prefix = suffix = ""
    regex: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    if filters:
        seen_parts: set[str] = set()
        for part in filters[0]:
            tag = _local(part.tag)
            if tag not in ("S3Key", "S3Metadata", "S3Tags"):
                raise ValueError(f"unknown filter <{tag}> (expected S3Key, S3Metadata, S3Tags)")
            if tag in seen_parts:
                raise ValueError(f"more than one <{tag}> in the filter")
            seen_parts.add(tag)
        for part in _children(filters[0], "S3Key"):
            prefix, suffix, regex = _key_filter(part, prefix, suffix, regex)
        metadata = _kv_filter(filters[0], "S3Metadata", "metadata", fold=True)
        tags = _kv_filter(filters[0], "S3Tags", "tag", fold=False)
    return Rule(
        name=name,
        events=events,
        prefix=prefix,
        suffix=suffix,
        key_regex=regex,
        metadata=metadata,
        tags=tags,
        sinks=(arns[0],),
    )


def _filter_rules(element: ET.Element) -> list[tuple[str, str]]:
    pairs = []
    for rule in element:
        if _local(rule.tag) != "FilterRule":
            raise ValueError(f"unknown element <{_local(rule.tag)}> in a filter")
        names = _children(rule, "Name")
        values = _children(rule, "Value")
        if len(names) != 1 or not _text(names[0]).strip():
            raise ValueError("a FilterRule needs one <Name>")
        rule_name = _text(names[0]).strip()
        if len(values) != 1:
            raise ValueError(f"FilterRule {_q(rule_name)} needs one <Value>")
        # Ceph (Squid and later) has negative filters: <Type>OUT</Type>. Rules cannot say that.
        for type_element in _children(rule, "Type"):
            if _text(type_element).strip().upper() not in ("", "IN"):
                raise ValueError(
                    f"FilterRule {_q(rule_name)} has Type {_q(_text(type_element).strip())}; "
                    "only IN (the default) is supported"
                )
        pairs.append((rule_name, _text(values[0])))
    return pairs


def _key_filter(
    element: ET.Element, prefix: str, suffix: str, regex: str | None
) -> tuple[str, str, str | None]:
    seen: set[str] = set()
    for rule_name, value in _filter_rules(element):
        kind = rule_name.lower()
        if kind not in ("prefix", "suffix", "regex"):
            raise ValueError(
                f"unknown FilterRule name {_q(rule_name)} (expected prefix, suffix or regex)"
            )
        if kind in seen:
            raise ValueError(f"two {kind} rules in one filter")
        seen.add(kind)
        if kind == "prefix":
            prefix = value
        elif kind == "suffix":
            suffix = value
        else:
            # Ceph matches the whole key (std::regex_match); Rule.key_regex is a search().
            problem = _check_regex(value) or _check_regex(rf"^(?:{value})\Z")
            if problem:
                raise ValueError(f"regex {problem}")
            regex = rf"^(?:{value})\Z"
    return prefix, suffix, regex


def _kv_filter(
    filter_element: ET.Element, tag: str, what: str, *, fold: bool
) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for part in _children(filter_element, tag):
        pairs.extend(_filter_rules(part))
    _check_pairs(pairs, what, fold=fold)
    return tuple(pairs)


def _check_overlaps(rules: Sequence[Rule], source_name: str) -> None:
    """AWS rejects two configurations that can both fire for one object and event type."""
    compiled = [_compile_events(rule.events) for rule in rules]
    for i, first in enumerate(rules):
        for j in range(i + 1, len(rules)):
            second = rules[j]
            if not compiled[i].intersects(compiled[j]):
                continue
            if not (
                first.prefix.startswith(second.prefix) or second.prefix.startswith(first.prefix)
            ):
                continue
            if not (first.suffix.endswith(second.suffix) or second.suffix.endswith(first.suffix)):
                continue
            raise ConfigError(
                f'{source_name}: configurations "{first.name}" and "{second.name}" overlap: '
                "they share an event type and their prefix and suffix filters overlap "
                f"(prefixes {_q(first.prefix)} / {_q(second.prefix)}, suffixes "
                f"{_q(first.suffix)} / {_q(second.suffix)}); S3 rejects this, give them "
                "disjoint events, prefixes or suffixes"
            )
